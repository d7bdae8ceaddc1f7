"""Shared ROS helpers: numpy <-> message conversions, approximate-time synchronizer, rosbag2 I/O."""
