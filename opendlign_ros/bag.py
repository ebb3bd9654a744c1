"""
rosbag2 tools without ``rosbag2_py``: one import for the bag modules.

- :mod:`opendlign_ros.bag_io`: type store, writer, reader, topic listing.
- :mod:`opendlign_ros.bag_scenes`: ScanNet-format scenes -> bags (scene and robot-style frames
  layouts) and reading their ground truth and transforms back.
- :mod:`opendlign_ros.bag_replay`: :class:`RosSession`, :func:`play_bag`, :class:`BagRecorder`.
- :mod:`opendlign_ros.bag_eval`: evaluate a bag with the real detector node.
"""

from opendlign_ros.bag_eval import (
    EvalReport,
    evaluate_bag,
    fixed_frame,
    predictions_from_msg,
    score_replay,
)
from opendlign_ros.bag_io import (
    CLOUD_TOPIC,
    CLOUD_TYPE,
    DETECTIONS_TYPE,
    GROUND_TRUTH_TOPIC,
    GT_OBJECTS_TOPIC,
    START_NS,
    STORAGES,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    BagWriter,
    bag_offered_qos,
    bag_topics,
    cloud_stamp_key,
    deserialize,
    latched_qos,
    message_class,
    message_classes,
    offered_qos,
    read_bag,
    stamp_key,
    stamp_ns,
    time_msg,
    typestore,
)
from opendlign_ros.bag_replay import (
    BagRecorder,
    RosSession,
    discover_types,
    play_bag,
    reliable_qos,
    replay_qos,
    stop_on_signal,
)
from opendlign_ros.bag_scenes import (
    CAMERA_LINK,
    OPTICAL_FRAME,
    SCENE_SPACING,
    SceneBagSummary,
    StampedTransform,
    bag_from_scenes,
    ground_truth_frame,
    interpolate_pose,
    link_from_optical,
    read_ground_truth,
    read_transforms,
    tf_message,
)

__all__ = [
    'BagRecorder', 'BagWriter', 'CAMERA_LINK', 'CLOUD_TOPIC', 'CLOUD_TYPE', 'DETECTIONS_TYPE',
    'EvalReport', 'GROUND_TRUTH_TOPIC', 'GT_OBJECTS_TOPIC', 'OPTICAL_FRAME', 'RosSession',
    'SCENE_SPACING', 'START_NS', 'STORAGES', 'SceneBagSummary', 'StampedTransform',
    'TF_STATIC_TOPIC', 'TF_TOPIC', 'TF_TYPE', 'bag_from_scenes', 'bag_offered_qos', 'bag_topics',
    'cloud_stamp_key', 'deserialize', 'discover_types', 'evaluate_bag', 'fixed_frame',
    'ground_truth_frame', 'interpolate_pose', 'latched_qos', 'link_from_optical', 'message_class',
    'message_classes', 'offered_qos', 'play_bag', 'predictions_from_msg', 'read_bag',
    'read_ground_truth', 'read_transforms', 'reliable_qos', 'replay_qos', 'score_replay',
    'stamp_key', 'stamp_ns', 'stop_on_signal', 'tf_message', 'time_msg', 'typestore',
]
