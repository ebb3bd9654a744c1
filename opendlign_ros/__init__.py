"""
ROS 2 shell of OpenDlign: the detector node, its parameters, message conversions and bag tools.

Importing this package does not import rclpy; the submodules that need it import it themselves.
"""
