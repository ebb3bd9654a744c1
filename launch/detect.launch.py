"""
Launch the opendlign detector node with a parameter file.

Usage (full ROS install):
``ros2 launch opendlign_ros detect.launch.py input_topic:=/camera/points``.
Pip-only environments have no ``launch`` package; the equivalent start is
``opendlign-detector --ros-args --params-file config/detect.yaml -r points:=/camera/points``.
"""

import os
from typing import List

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

#: Launch arguments that override the parameter file only when given (non-empty).
OVERRIDES = ('device', 'model_name', 'weights_path')


def _detector_node(context: LaunchContext) -> List[Node]:
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    overrides = {name: value for name, value in overrides.items() if value}
    return [Node(
        package='opendlign_ros',
        executable='opendlign-detector',
        name='opendlign',
        namespace=LaunchConfiguration('namespace'),
        output='screen',
        emulate_tty=True,
        parameters=[LaunchConfiguration('params_file')] + ([overrides] if overrides else []),
        remappings=[('points', LaunchConfiguration('input_topic'))],
    )]


def generate_launch_description() -> LaunchDescription:
    """
    Describe the detector node and its launch arguments.

    :return: The launch description.
    """
    share = get_package_share_directory('opendlign_ros')
    large_messages = LaunchConfiguration('large_messages')

    return LaunchDescription([
        DeclareLaunchArgument(
            'params_file', default_value=os.path.join(share, 'config', 'detect.yaml'),
            description='Full path to the YAML file with the node parameters '
                        '(opendlign: ros__parameters: ...).'),
        DeclareLaunchArgument(
            'namespace', default_value='',
            description='Namespace of the node and its topics.'),
        DeclareLaunchArgument(
            'input_topic', default_value='points',
            description='sensor_msgs/PointCloud2 topic to detect objects in (z-up, metres).'),
        DeclareLaunchArgument(
            'device', default_value='',
            description="Torch device of the model, e.g. 'cpu' or 'cuda:0'; empty keeps the "
                        "params file's value."),
        DeclareLaunchArgument(
            'model_name', default_value='',
            description='open_clip architecture name (ignored when weights_path is an export); '
                        "empty keeps the params file's value."),
        DeclareLaunchArgument(
            'weights_path', default_value='',
            description="Path of the exported OpenDlign weights (.safetensors); empty keeps the "
                        "params file's value."),
        DeclareLaunchArgument(
            'large_messages', default_value='true',
            description='Use the shipped Fast DDS profile with a 64 MB shared-memory segment, '
                        'needed for clouds above ~0.5 MB with Fast DDS.'),
        SetEnvironmentVariable(
            'FASTDDS_DEFAULT_PROFILES_FILE',
            os.path.join(share, 'config', 'fastdds_large_msgs.xml'),
            condition=IfCondition(large_messages)),
        OpaqueFunction(function=_detector_node),
    ])
