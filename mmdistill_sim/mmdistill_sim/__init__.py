"""Physically grounded multimodal driving simulator (ROS-free core) and the live sim_node."""
