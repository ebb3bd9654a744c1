"""
Launch the opendlign detector node with a parameter file.

Usage (full ROS install):
``ros2 launch opendlign_ros detect.launch.py input_topic:=/camera/points``.
Pip-only environments have no ``launch`` package; the equivalent start is
``opendlign-detector --ros-args --params-file config/detect.yaml -r points:=/camera/points``.
"""

import os
import re
from typing import List

from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.conditions import IfCondition
from launch.launch_context import LaunchContext
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from launch import LaunchDescription

#: Launch arguments that override the parameter file only when given (non-empty).
OVERRIDES = ('device', 'model_name', 'weights_path', 'target_frame')


NODE_NAME = 'opendlign'


def node_key_matches(key: str, node_fqn: str) -> bool:
    """
    Tell whether a parameter-file key applies to a node, by rcl's rules.

    A key without a leading slash is absolute; ``/**`` matches any number of namespace tokens
    (none included) and ``/*`` exactly one.

    :param key: Top-level key of a ``--params-file`` YAML, e.g. ``'/**'`` or ``'opendlign'``.
    :param node_fqn: Fully qualified node name, e.g. ``'/robot1/opendlign'``.
    :return: True if the node receives the key's ``ros__parameters``.
    """
    key = key if key.startswith('/') else '/' + key
    pattern = ''.join(r'(/\w+)*' if part == '/**' else r'/\w+' if part == '/*'
                      else re.escape(part) for part in re.split(r'(/\*\*|/\*)', key))
    return re.fullmatch(pattern, node_fqn) is not None


def check_params_file(params_file: str, node_fqn: str) -> None:
    """
    Refuse a parameter file that the node would silently ignore.

    :param params_file: Path of the YAML parameter file.
    :param node_fqn: Fully qualified name the node will get.
    :raises FileNotFoundError: If the file does not exist.
    :raises RuntimeError: If no top-level key of the file applies to ``node_fqn``.
    """
    import yaml

    if not os.path.isfile(params_file):
        raise FileNotFoundError(f'params_file {params_file!r} does not exist')
    with open(params_file, encoding='utf-8') as f:
        data = yaml.safe_load(f)
    keys = [str(k) for k in data] if isinstance(data, dict) else []
    if not any(node_key_matches(k, node_fqn) for k in keys):
        raise RuntimeError(
            f'params_file {params_file!r} has no parameters for node {node_fqn} (top-level '
            f"keys: {keys}); key its block '/**:' or '/**/{NODE_NAME}:' so that it applies in "
            'any namespace')


def node_fqn(namespace: str, outer_namespace: str = '') -> str:
    """
    Return the fully qualified name the detector node gets.

    :param namespace: The ``namespace`` launch argument (relative or absolute).
    :param outer_namespace: A namespace pushed by an including launch file, which prefixes a
        relative ``namespace``.
    :return: E.g. ``'/robot1/opendlign'``.
    """
    full = namespace if namespace.startswith('/') else f'{outer_namespace}/{namespace}'
    return '/' + '/'.join([t for t in full.split('/') if t] + [NODE_NAME])


def _detector_node(context: LaunchContext) -> List[Node]:
    overrides = {name: LaunchConfiguration(name).perform(context) for name in OVERRIDES}
    overrides = {name: value for name, value in overrides.items() if value}
    namespace = LaunchConfiguration('namespace').perform(context)
    params_file = LaunchConfiguration('params_file').perform(context)
    outer = context.launch_configurations.get('ros_namespace', '') or ''
    check_params_file(params_file, node_fqn(namespace, outer))
    return [Node(
        package='opendlign_ros',
        executable='opendlign-detector',
        name=NODE_NAME,
        namespace=namespace,
        output='screen',
        emulate_tty=True,
        parameters=[params_file] + ([overrides] if overrides else []),
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
            description='Full path to the YAML file with the node parameters, keyed so that it '
                        'applies in any namespace (/**: ros__parameters: ..., or '
                        '/**/opendlign: ...); a file keyed opendlign: is ignored under a '
                        'namespace.'),
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
            'target_frame', default_value='',
            description='Frame to detect and publish in (e.g. odom), clouds transformed through '
                        "TF at their stamps; empty keeps the params file's value ('' there: "
                        "each cloud's own frame)."),
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
