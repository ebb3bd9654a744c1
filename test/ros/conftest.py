"""Fixtures for the ROS shell tests (need rclpy and the vision_msgs interface package)."""

import os

import pytest

pytest.importorskip('rclpy', reason='needs the PyPI ros-* wheels or a ROS install')
pytest.importorskip('vision_msgs.msg', reason='run scripts/build_vision_msgs.sh first')

from opendlign_ros.node_process import FASTDDS_PROFILE, config_path  # noqa: E402

# In-process nodes use the same Fast DDS profile as the node processes they talk to.
os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(config_path(FASTDDS_PROFILE)))
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
