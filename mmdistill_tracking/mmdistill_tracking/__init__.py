"""Vehicle tracker, tracking_node and visualization."""
