"""
rosbag2 tools without ``rosbag2_py``: write, play, record and evaluate bags with ``rosbags``.

Bags are rosbag2 folders (``metadata.yaml`` plus one ``.mcap`` or ``.db3`` file) that
``ros2 bag`` reads. Messages are stored as the CDR bytes rclpy produces
(``rclpy.serialization``); playing publishes those bytes unchanged (``Publisher.publish(bytes)``)
on the bag's own schedule, and recording subscribes with ``raw=True``, so a write -> play ->
record round trip is bit-exact.

Bags made by :func:`bag_from_scenes` carry the clouds on ``/points`` and, on ``/ground_truth``,
one ``vision_msgs/Detection3DArray`` per cloud with the same header stamp (label in
``class_id``, score 1): :func:`evaluate_bag` matches detections to ground truth by stamp. Bags of
per-frame clouds (``mode='frames'``) also carry, on ``/sensor_pose``, the depth camera's pose in
the scene frame at that stamp (``geometry_msgs/PoseStamped``, optical axes: x right, y down,
z forward).
"""

from dataclasses import dataclass, field
import importlib
import json
import logging
import math
import os
from pathlib import Path
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np

logger = logging.getLogger(__name__)

CLOUD_TOPIC = '/points'
GROUND_TRUTH_TOPIC = '/ground_truth'
SENSOR_POSE_TOPIC = '/sensor_pose'
POSE_TYPE = 'geometry_msgs/msg/PoseStamped'
CLOUD_TYPE = 'sensor_msgs/msg/PointCloud2'
DETECTIONS_TYPE = 'vision_msgs/msg/Detection3DArray'
STORAGES = ('mcap', 'sqlite3')
#: Bag time of the first message written by :func:`bag_from_scenes`, nanoseconds.
START_NS = 1_000_000_000


def _vision_msgs_dirs() -> List[Path]:
    dirs = [Path(__file__).resolve().parent.parent / 'ros_interfaces' / 'vision_msgs' / 'msg',
            Path(sys.prefix) / 'share' / 'vision_msgs' / 'msg']
    for prefix in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep):
        if prefix:
            dirs.append(Path(prefix) / 'share' / 'vision_msgs' / 'msg')
    return dirs


def typestore() -> Any:
    """
    Return a rosbags type store for ROS 2 Kilted plus the vision_msgs detection types.

    :return: ``rosbags`` ``Typestore`` knowing ``vision_msgs/msg/Detection3DArray`` and its parts.
    :raises FileNotFoundError: If no ``vision_msgs`` message definitions are found.
    """
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    for folder in _vision_msgs_dirs():
        if (folder / 'Detection3DArray.msg').is_file():
            types: Dict[str, Any] = {}
            for path in sorted(folder.glob('*.msg')):
                types.update(get_types_from_msg(path.read_text(), f'vision_msgs/msg/{path.stem}'))
            store.register(types)
            return store
    raise FileNotFoundError(
        f'vision_msgs .msg files not found in {[str(d) for d in _vision_msgs_dirs()]}')


def message_class(msgtype: str) -> type:
    """
    Import the rclpy message class of a type name.

    :param msgtype: ``'pkg/msg/Name'``.
    :return: The class.
    :raises ValueError: If the name is malformed or the package is not importable.
    """
    parts = msgtype.split('/')
    if len(parts) != 3 or parts[1] != 'msg':
        raise ValueError(f"message type must look like 'pkg/msg/Name', got {msgtype!r}")
    try:
        return getattr(importlib.import_module(f'{parts[0]}.msg'), parts[2])
    except (ImportError, AttributeError) as e:
        raise ValueError(f'message type {msgtype!r} is not available: {e}') from e


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    return StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3


class BagWriter:
    """
    Write rclpy messages or raw CDR bytes into a new rosbag2 folder.

    :param path: Bag folder to create (must not exist).
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :raises FileExistsError: If ``path`` exists.
    """

    def __init__(self, path: Path, storage: str = 'mcap') -> None:
        from rosbags.rosbag2 import Writer

        path = Path(path)
        if path.exists():
            raise FileExistsError(f'bag {str(path)!r} already exists')
        self._store = typestore()
        self._writer = Writer(path, version=9, storage_plugin=_storage_plugin(storage))
        self._writer.open()
        self._connections: Dict[str, Any] = {}

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any) -> None:
        """
        Append one message.

        :param topic: Topic name.
        :param msgtype: ``'pkg/msg/Name'`` (must be known to :func:`typestore`).
        :param timestamp_ns: Bag time, nanoseconds.
        :param msg: An rclpy message, or its serialized CDR ``bytes``.
        """
        from rclpy.serialization import serialize_message

        if topic not in self._connections:
            self._connections[topic] = self._writer.add_connection(
                topic, msgtype, typestore=self._store)
        data = msg if isinstance(msg, (bytes, bytearray, memoryview)) else serialize_message(msg)
        self._writer.write(self._connections[topic], int(timestamp_ns), bytes(data))

    def close(self) -> None:
        """Finish the bag (writes ``metadata.yaml``)."""
        self._writer.close()

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_bag(path: Path, topics: Optional[Sequence[str]] = None
             ) -> Iterable[Tuple[str, str, int, bytes]]:
    """
    Iterate a bag's messages in time order.

    :param path: Bag folder.
    :param topics: Only these topics (``None``: all).
    :return: Iterator of ``(topic, msgtype, timestamp_ns, cdr_bytes)``.
    :raises FileNotFoundError: If the bag does not exist.
    """
    from rosbags.rosbag2 import Reader

    path = Path(path)
    if not (path / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'no rosbag2 bag at {str(path)!r} (metadata.yaml missing)')
    with Reader(path) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, timestamp, data in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, timestamp, bytes(data)


def bag_topics(path: Path) -> Dict[str, Tuple[str, int]]:
    """
    Return the topics of a bag.

    :param path: Bag folder.
    :return: Topic -> (message type, message count).
    """
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def stamp_key(stamp: Any) -> str:
    """
    Return the key that pairs a cloud with its detections and ground truth.

    :param stamp: ``builtin_interfaces/Time``.
    :return: ``'<sec>.<nanosec:09d>'``.
    """
    return f'{stamp.sec}.{stamp.nanosec:09d}'


def _time_msg(ns: int) -> Any:
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


@dataclass(frozen=True)
class SceneBagSummary:
    """What :func:`bag_from_scenes` wrote."""

    path: Path
    clouds: int
    boxes: int
    points: int


def bag_from_scenes(scene_dirs: Sequence[Path], out: Path, storage: str = 'mcap',
                    mode: str = 'scene', rate: Optional[float] = None,
                    frame_id: str = 'map', frame_step: int = 1) -> SceneBagSummary:
    """
    Write ScanNet-format scenes as a bag of clouds with per-cloud ground-truth boxes.

    :param scene_dirs: Scene folders (or roots holding scene folders) in ScanNet's layout.
    :param out: Bag folder to create.
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :param mode: ``'scene'``: one cloud per scene (the whole aligned mesh vertices, with their
        colours as a packed ``rgb`` field) with every annotated ScanNet-18 box (the semantic
        reading ``scannet18_semantic``: real bins in our synthetic scenes, the benchmark mapping
        in real scans); ``'frames'``:
        one cloud per exported depth frame (no colour), back-projected with the frame's camera
        pose and the scene's axis alignment into the scene frame (so consecutive frames overlap
        where they see the same surfaces), with the boxes of the instances it sees
        (>= ``MIN_BOX_POINTS`` pixels; box fitted to those points; every box of the scene if the
        frame has no instance image), and the camera pose on ``/sensor_pose``.
    :param rate: Clouds per second of bag time (default 1 for scenes, 5 for frames).
    :param frame_id: ``header.frame_id`` of every message (the aligned, z-up scene frame).
    :param frame_step: Use every ``frame_step``-th frame (``'frames'`` mode).
    :return: A summary.
    :raises ValueError: If no scene is found, ``mode`` is unknown or ``rate`` is not positive.
    :raises FileNotFoundError: In ``'frames'`` mode, if a scene has no exported frames.
    """
    from std_msgs.msg import Header

    from opendlign_core import scannet
    from opendlign_ros import conversions

    if mode not in ('scene', 'frames'):
        raise ValueError(f"mode must be 'scene' or 'frames', got {mode!r}")
    rate = (1.0 if mode == 'scene' else 5.0) if rate is None else float(rate)
    if not rate > 0:
        raise ValueError(f'rate must be > 0, got {rate}')
    if frame_step < 1:
        raise ValueError(f'frame_step must be >= 1, got {frame_step}')
    folders = [d for root in scene_dirs for d in scannet.list_scenes(Path(root))]
    if not folders:
        raise ValueError(f'no ScanNet scene folders in {[str(d) for d in scene_dirs]}')
    if mode == 'frames':
        for folder in folders:
            kfile = folder / 'frames' / 'intrinsic' / 'intrinsic_depth.txt'
            if not kfile.is_file():
                raise FileNotFoundError(f'scene {str(folder)!r} has no exported frames '
                                        f'({kfile.name} not found)')
    period_ns = int(round(1e9 / rate))
    clouds = boxes = points_total = 0
    with BagWriter(Path(out), storage) as writer:
        for folder in folders:
            scene = scannet.read_scannet_scene(folder)
            for points, colors, gt, pose in _scene_clouds(scene, folder, mode, frame_step):
                t = START_NS + clouds * period_ns
                header = Header(stamp=_time_msg(t), frame_id=frame_id)
                writer.write(CLOUD_TOPIC, CLOUD_TYPE, t,
                             conversions.cloud_to_msg(points, header, colors))
                writer.write(GROUND_TRUTH_TOPIC, DETECTIONS_TYPE, t,
                             conversions.boxes_to_msg(gt, header))
                if pose is not None:
                    writer.write(SENSOR_POSE_TOPIC, POSE_TYPE, t, pose_to_msg(pose, header))
                clouds += 1
                boxes += len(gt)
                points_total += len(points)
    logger.info('wrote %d clouds (%d boxes) to %s', clouds, boxes, out)
    return SceneBagSummary(Path(out), clouds, boxes, points_total)


def pose_to_msg(pose: np.ndarray, header: Any) -> Any:
    """
    Return a ``geometry_msgs/PoseStamped`` for a rigid transform.

    :param pose: (4, 4) sensor-to-``header.frame_id`` transform, metres.
    :param header: ``std_msgs/Header`` of the message.
    :return: The message (orientation as a unit quaternion with ``w >= 0``).
    :raises ValueError: If ``pose`` is not (4, 4) or its rotation block is not a rotation.
    """
    from geometry_msgs.msg import Point, Pose, PoseStamped, Quaternion
    from scipy.spatial.transform import Rotation

    m = np.asarray(pose, dtype=np.float64)
    if m.shape != (4, 4) or not np.isfinite(m).all():
        raise ValueError(f'pose must be a finite (4, 4) matrix, got shape {m.shape}')
    r = m[:3, :3]
    if not (np.allclose(r @ r.T, np.eye(3), atol=1e-5) and np.linalg.det(r) > 0):
        raise ValueError('pose rotation block is not a rotation matrix')
    x, y, z, w = Rotation.from_matrix(r).as_quat()
    if w < 0:
        x, y, z, w = -x, -y, -z, -w
    t = m[:3, 3]
    return PoseStamped(header=header, pose=Pose(
        position=Point(x=float(t[0]), y=float(t[1]), z=float(t[2])),
        orientation=Quaternion(x=float(x), y=float(y), z=float(z), w=float(w))))


def _scene_clouds(scene: Any, folder: Path, mode: str, frame_step: int
                  ) -> Iterable[Tuple[np.ndarray, Optional[np.ndarray], List[Tuple[str, Any]],
                                      Optional[np.ndarray]]]:
    # (points, colours or None, ground truth, sensor pose or None) per cloud; depth frames
    # carry no colour.
    from opendlign_core import scannet
    from opendlign_core.boxes import fit_aabb

    objects = [i for i in scene.instances if i.scannet18_semantic and i.box is not None]
    if mode == 'scene':
        yield scene.points, scene.colors, [(i.scannet18_semantic, i.box) for i in objects], None
        return
    align = scene.axis_alignment
    for index, frame in enumerate(scannet.read_frames(folder)):
        if index % frame_step:
            continue
        pose = align @ frame.pose     # camera -> scan -> scene (aligned) frame
        pts = frame.points().astype(np.float64)
        pts = (pts @ align[:3, :3].T + align[:3, 3]).astype(np.float32)
        gt = []
        if frame.instance is not None:
            ids = frame.instance[frame.depth > 0]
            for inst in objects:
                seen = pts[ids == inst.object_id]
                if len(seen) >= scannet.MIN_BOX_POINTS:
                    gt.append((inst.scannet18_semantic, fit_aabb(seen)))
        else:
            gt = [(i.scannet18_semantic, i.box) for i in objects]
        if len(pts):
            yield pts, None, gt, pose


class RosSession:
    """
    A private rclpy context with one node and a single-threaded executor.

    :param name: Node name.
    :param domain_id: ``ROS_DOMAIN_ID``; ``None`` uses the environment's.
    """

    def __init__(self, name: str, domain_id: Optional[int] = None) -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        _default_environment()
        self.context = Context()
        kwargs = {} if domain_id is None else {'domain_id': int(domain_id)}
        rclpy.init(context=self.context, **kwargs)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin_until(self, predicate: Callable[[], Any], timeout: float) -> Any:
        """
        Process callbacks until ``predicate()`` is truthy.

        :param predicate: Condition.
        :param timeout: Seconds.
        :return: The predicate's value.
        :raises TimeoutError: If it is still false after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f'condition not met within {timeout:.1f} s')
            self.executor.spin_once(timeout_sec=0.01)

    def spin_for(self, seconds: float) -> None:
        """
        Process callbacks for ``seconds``.

        :param seconds: Duration; <= 0 returns at once.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, 0.01))

    def close(self) -> None:
        """Destroy the node and shut the context down."""
        import rclpy

        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)

    def __enter__(self) -> 'RosSession':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _default_environment() -> None:
    # Tools stay on this machine unless the user chose otherwise, and carry large clouds.
    from opendlign_ros.node_process import FASTDDS_PROFILE, config_path

    os.environ.setdefault('ROS_AUTOMATIC_DISCOVERY_RANGE', 'LOCALHOST')
    os.environ.setdefault('FASTDDS_DEFAULT_PROFILES_FILE', str(config_path(FASTDDS_PROFILE)))


def _reliable_qos(depth: int = 10) -> Any:
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def play_bag(session: RosSession, path: Path, topics: Optional[Sequence[str]] = None,
             rate: float = 1.0, wait_for_subscribers: Sequence[str] = (),
             discovery_timeout: float = 30.0,
             on_publish: Optional[Callable[[str, bytes, float], None]] = None,
             remap: Optional[Mapping[str, str]] = None,
             warm_up: Optional[Callable[[Mapping[str, Any]], None]] = None,
             gate: Optional[Callable[[], Any]] = None, gate_timeout: float = 600.0) -> int:
    """
    Publish a bag's raw messages with their original timing (scaled by ``rate``).

    Publications follow a monotonic schedule: message k goes out at
    ``start + (t_k - t_0) / rate``; the session keeps processing callbacks while waiting. With a
    ``gate``, the schedule is ignored instead: each message after the first goes out as soon as
    ``gate()`` is truthy (lock-step replay, e.g. one cloud at a time into a slow node).

    :param session: The publishing session.
    :param path: Bag folder.
    :param topics: Topics to play (``None``: all).
    :param rate: Playback speed factor (> 0).
    :param wait_for_subscribers: Topics that must have a subscriber before playback starts.
    :param discovery_timeout: Seconds to wait for those subscribers.
    :param on_publish: Called with ``(topic, data, monotonic_time)`` after each publication.
    :param remap: Bag topic -> published topic.
    :param warm_up: Called with the topic -> publisher map once subscribers are found, before the
        schedule starts (e.g. to confirm end-to-end delivery).
    :param gate: Lock-step condition checked before every message but the first.
    :param gate_timeout: Seconds to wait for ``gate``.
    :return: Number of messages published.
    :raises ValueError: If ``rate`` is not positive or a topic is missing from the bag.
    :raises TimeoutError: If a required subscriber does not appear, or ``gate`` stays false.
    """
    from rclpy._rclpy_pybind11 import RCLError

    if not rate > 0:
        raise ValueError(f'rate must be > 0, got {rate}')
    available = bag_topics(path)
    selected = list(available) if topics is None else list(topics)
    missing = [t for t in selected if t not in available]
    if missing:
        raise ValueError(f'topics {missing} not in bag; it has {sorted(available)}')
    remap = dict(remap or {})
    publishers = {t: session.node.create_publisher(message_class(available[t][0]),
                                                   remap.get(t, t), _reliable_qos())
                  for t in selected}
    for topic in wait_for_subscribers:
        pub = publishers[topic]
        session.spin_until(lambda p=pub: p.get_subscription_count() > 0, discovery_timeout)
    if warm_up is not None:
        warm_up(publishers)
    count = 0
    start = None
    first_ns = 0
    for topic, _, stamp_ns, data in read_bag(path, selected):
        if start is None:
            start, first_ns = time.monotonic(), stamp_ns
        elif gate is not None:
            session.spin_until(gate, gate_timeout)
        if gate is None:
            session.spin_for(start + (stamp_ns - first_ns) / 1e9 / rate - time.monotonic())
        try:
            publishers[topic].publish(data)
        except RCLError as e:
            logger.warning('publish on %s failed: %s', topic, e)
            continue
        count += 1
        if on_publish is not None:
            on_publish(topic, data, time.monotonic())
    return count


class BagRecorder:
    """
    Record topics' raw CDR bytes into a new bag, as received.

    :param session: The subscribing session.
    :param path: Bag folder to create.
    :param topics: Topic -> message type (``'pkg/msg/Name'``).
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    """

    def __init__(self, session: RosSession, path: Path, topics: Mapping[str, str],
                 storage: str = 'mcap') -> None:
        self.count = 0
        self._session = session
        self._writer = BagWriter(path, storage)
        self._subs = [session.node.create_subscription(
            message_class(msgtype), topic, self._callback(topic, msgtype), _reliable_qos(100),
            raw=True) for topic, msgtype in topics.items()]

    def _callback(self, topic: str, msgtype: str) -> Callable[[bytes], None]:
        def record(data: bytes) -> None:
            self._writer.write(topic, msgtype, self._session.node.get_clock().now().nanoseconds,
                               data)
            self.count += 1
        return record

    def close(self) -> None:
        """Stop recording and finish the bag."""
        for sub in self._subs:
            self._session.node.destroy_subscription(sub)
        self._writer.close()


def discover_types(session: RosSession, topics: Sequence[str], timeout: float = 10.0
                   ) -> Dict[str, str]:
    """
    Wait until each topic is on the graph and return its message type.

    :param session: The session.
    :param topics: Fully qualified topic names.
    :param timeout: Seconds.
    :return: Topic -> message type.
    :raises TimeoutError: If a topic does not appear.
    """
    found: Dict[str, str] = {}

    def all_found() -> bool:
        for name, types in session.node.get_topic_names_and_types():
            if name in topics and types:
                found[name] = types[0]
        return all(t in found for t in topics)
    try:
        session.spin_until(all_found, timeout)
    except TimeoutError:
        raise TimeoutError(f'topics {sorted(set(topics) - set(found))} did not appear within '
                           f'{timeout} s') from None
    return found


# ---------------------------------------------------------------------------------------------
# Evaluation


@dataclass
class EvalReport:
    """Results of :func:`evaluate_bag`."""

    clouds_sent: int = 0
    clouds_answered: int = 0
    latencies_ms: List[float] = field(default_factory=list)
    node_counters: Dict[str, str] = field(default_factory=dict)
    ap: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mean_ap: Dict[str, float] = field(default_factory=dict)
    markdown: str = ''
    files: List[str] = field(default_factory=list)

    @property
    def clouds_dropped(self) -> int:
        """
        Return clouds that got no detections message.

        :return: ``clouds_sent - clouds_answered``.
        """
        return self.clouds_sent - self.clouds_answered

    def latency_percentiles(self) -> Dict[str, float]:
        """
        Return end-to-end latency percentiles (publish -> detections received).

        :return: ``p50``, ``p90``, ``p99``, ``max`` in milliseconds (NaN without data).
        """
        if not self.latencies_ms:
            return {k: math.nan for k in ('p50', 'p90', 'p99', 'max')}
        lat = np.asarray(self.latencies_ms)
        return {'p50': float(np.percentile(lat, 50)), 'p90': float(np.percentile(lat, 90)),
                'p99': float(np.percentile(lat, 99)), 'max': float(lat.max())}


def read_ground_truth(path: Path) -> Dict[str, List[Any]]:
    """
    Read the ground-truth boxes of a bag written by :func:`bag_from_scenes`.

    :param path: Bag folder.
    :return: Stamp key (:func:`stamp_key`) -> ``det_eval.GtBox`` list; empty without ground truth.
    """
    from rclpy.serialization import deserialize_message
    from vision_msgs.msg import Detection3DArray

    from opendlign_core.det_eval import GtBox
    from opendlign_ros import conversions

    if GROUND_TRUTH_TOPIC not in bag_topics(path):
        return {}
    gts: Dict[str, List[Any]] = {}
    for _, _, _, data in read_bag(path, [GROUND_TRUTH_TOPIC]):
        msg = deserialize_message(data, Detection3DArray)
        gts[stamp_key(msg.header.stamp)] = [
            GtBox(d.results[0].hypothesis.class_id, conversions.box_from_msg(d.bbox))
            for d in msg.detections if d.results]
    return gts


def evaluate_bag(path: Path, out_dir: Path, params_file: Optional[Path] = None,
                 rate: float = 1.0, overrides: Optional[Mapping[str, Any]] = None,
                 labels: Optional[Sequence[str]] = None, domain_id: Optional[int] = None,
                 startup_timeout: float = 300.0, node_log: Optional[Path] = None,
                 lockstep: bool = False) -> EvalReport:
    """
    Replay a bag into a real detector node process and score what comes back.

    The node starts as users start it (own process, ``--params-file``), on a private domain with
    loopback-only discovery and the large-message Fast DDS profile. Clouds are replayed with
    their original timing scaled by ``rate``; each ``detections`` message is matched to its cloud
    by header stamp. Clouds without an answer (superseded while the node was busy, or rejected)
    count as dropped and as missed detections. With ``lockstep`` the timing is ignored: each
    cloud is published once the node has answered (or rejected) the previous one, so none is
    superseded however slow the model is.

    :param path: Bag with ``/points`` (and optionally ``/ground_truth``).
    :param out_dir: Folder for ``report.md``, ``results.json``, ``detections.json`` (stamp key ->
        detections with label, score and box in the cloud's frame), ``pr.png``, ``latency.png``.
    :param params_file: Node parameter file (default: the shipped ``detect.yaml``).
    :param rate: Playback speed factor.
    :param overrides: Extra node parameters.
    :param labels: Node labels; default: the ground-truth classes of the bag (if any).
    :param domain_id: ROS domain (default: derived from the process id).
    :param startup_timeout: Seconds allowed for the node to load its model.
    :param node_log: File for the node's output (default: ``out_dir/node.log``).
    :param lockstep: Replay one cloud at a time instead of on the bag's schedule.
    :return: The report (also written to ``out_dir``).
    :raises ValueError: If the bag has no ``/points`` topic.
    :raises RuntimeError: If the node exits early.
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from vision_msgs.msg import Detection3DArray

    from opendlign_core import det_eval
    from opendlign_ros import conversions
    from opendlign_ros.node_process import NodeProcess, ros_environment

    topics = bag_topics(path)
    if topics.get(CLOUD_TOPIC, ('',))[0] != CLOUD_TYPE:
        raise ValueError(f'bag {str(path)!r} has no {CLOUD_TOPIC} {CLOUD_TYPE} topic; '
                         f'topics: {topics}')
    gts = read_ground_truth(path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = sorted({g.label for boxes in gts.values() for g in boxes})
    node_overrides = dict(overrides or {})
    if labels is not None or classes:
        node_overrides['labels'] = list(labels if labels is not None else classes)
    domain = (os.getpid() % 90) + 10 if domain_id is None else int(domain_id)
    report = EvalReport()
    sent: Dict[str, float] = {}
    answers: Dict[str, Tuple[float, Any]] = {}
    last_diag: List[Any] = []
    problems: List[float] = []      # monotonic arrival times of non-OK diagnostics
    last_sent: List[str] = []
    log_path = node_log or out_dir / 'node.log'
    env = ros_environment(domain)
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = env['FASTDDS_DEFAULT_PROFILES_FILE']
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    with open(log_path, 'w') as log, \
            NodeProcess(env, params_file, node_overrides, log=log) as process, \
            RosSession('opendlign_bag_eval', domain) as session:
        def on_detections(msg: Detection3DArray) -> None:
            answers.setdefault(stamp_key(msg.header.stamp), (time.monotonic(), msg))

        det_sub = session.node.create_subscription(
            Detection3DArray, 'detections', on_detections, _reliable_qos(100))
        def on_diagnostics(msg: DiagnosticArray) -> None:
            last_diag.insert(0, msg)
            if msg.status and msg.status[0].level != DiagnosticStatus.OK:
                problems.append(time.monotonic())

        session.node.create_subscription(DiagnosticArray, 'diagnostics', on_diagnostics,
                                         _reliable_qos(100))

        def node_alive() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f'node exited with status {process.poll()}; see {log_path}')
            return False

        def on_publish(topic: str, data: bytes, now: float) -> None:
            sent[cloud_stamp_key(data)] = now
            last_sent[:] = [cloud_stamp_key(data)]

        def previous_done() -> bool:
            # Answered, or the node reported a rejected/failed cloud since it was sent.
            node_alive()
            key = last_sent[0]
            return key in answers or bool(problems and problems[-1] > sent[key])

        def warm_up(publishers: Mapping[str, Any]) -> None:
            # Best-effort delivery starts only once both ends have matched: publish a cloud the
            # node rejects cheaply (all NaN) until its diagnostics acknowledge it.
            from rclpy.serialization import serialize_message
            from std_msgs.msg import Header

            probe = serialize_message(conversions.cloud_to_msg(
                np.full((1, 3), np.nan, np.float32), Header(frame_id='warm_up')))
            session.spin_until(lambda: node_alive() or det_sub.get_publisher_count() > 0,
                               startup_timeout)
            deadline = time.monotonic() + 30.0
            while not last_diag:
                if time.monotonic() > deadline:
                    raise TimeoutError('the node did not acknowledge the warm-up cloud')
                publishers[CLOUD_TOPIC].publish(probe)
                session.spin_for(0.25)
                node_alive()
            session.spin_for(1.0)       # let late probe rejections arrive before timing starts

        report.clouds_sent = play_bag(session, path, [CLOUD_TOPIC], rate,
                                      wait_for_subscribers=[CLOUD_TOPIC],
                                      discovery_timeout=startup_timeout, on_publish=on_publish,
                                      warm_up=warm_up,
                                      gate=previous_done if lockstep else None)
        if lockstep and last_sent:
            session.spin_until(previous_done, startup_timeout)
        # Drain: wait until every cloud is answered or answers stop coming (for longer than
        # 10 s and three times the slowest answer so far).
        last_count, last_change = -1, time.monotonic()
        while len(set(sent) & set(answers)) < len(sent):
            session.spin_for(0.05)
            node_alive()
            slowest = max((t - sent[k] for k, (t, _) in answers.items() if k in sent),
                          default=0.0)
            if len(answers) != last_count:
                last_count, last_change = len(answers), time.monotonic()
            elif time.monotonic() - last_change > max(10.0, 3.0 * slowest):
                break
        session.spin_for(0.3)
        if last_diag:
            report.node_counters = dict(conversions.diagnostic_values(last_diag[0]))

    answered = {k: v for k, v in answers.items() if k in sent}
    report.clouds_answered = len(answered)
    report.latencies_ms = sorted((t - sent[k]) * 1e3 for k, (t, _) in answered.items())
    preds = {k: [det_eval.PredBox(d.results[0].hypothesis.class_id,
                                  d.results[0].hypothesis.score,
                                  conversions.box_from_msg(d.bbox))
                 for d in msg.detections if d.results]
             for k, (_, msg) in answered.items()}
    lines = [f'# Bag evaluation: `{Path(path).name}`', '',
             f'- clouds sent: {report.clouds_sent}, answered: {report.clouds_answered}, '
             f'dropped: {report.clouds_dropped} '
             + ('(lock-step replay)' if lockstep else f'(playback rate x{rate:g})')]
    pct = report.latency_percentiles()
    lines.append('- end-to-end latency (publish -> detections received), ms: '
                 + ', '.join(f'{k} {v:.1f}' for k, v in pct.items()))
    if report.node_counters:
        keys = ('received', 'processed', 'superseded', 'rejected', 'failed')
        lines.append('- node counters: ' + ', '.join(
            f'{k} {report.node_counters.get(k, "?")}' for k in keys)
            + ' (received and rejected include the warm-up cloud(s))')
    if gts:
        result = det_eval.evaluate_detections({k: preds.get(k, []) for k in gts}, gts,
                                              thresholds=(0.25, 0.5), classes=classes)
        report.ap = {f'AP{int(t * 100)}': {c: result.ap[t][c] for c in classes}
                     for t in result.thresholds}
        report.mean_ap = {f'AP{int(t * 100)}': result.mean_ap[t] for t in result.thresholds}
        lines += ['', '## Detection AP (axis-aligned IoU, percent)', '',
                  det_eval.format_markdown(result)]
        det_eval.plot_pr(result, out_dir / 'pr.png')
        report.files.append(str(out_dir / 'pr.png'))
    _plot_latency(report.latencies_ms, out_dir / 'latency.png')
    report.files.append(str(out_dir / 'latency.png'))
    report.markdown = '\n'.join(lines) + '\n'
    (out_dir / 'report.md').write_text(report.markdown)
    (out_dir / 'results.json').write_text(json.dumps({
        'bag': str(path), 'rate': rate, 'lockstep': lockstep, 'clouds_sent': report.clouds_sent,
        'clouds_answered': report.clouds_answered, 'clouds_dropped': report.clouds_dropped,
        'latency_ms': pct, 'node_counters': report.node_counters, 'ap': report.ap,
        'mean_ap': report.mean_ap}, indent=2, allow_nan=True))
    (out_dir / 'detections.json').write_text(json.dumps({
        key: [{'label': d.label, 'score': round(float(d.score), 6),
               'center': [round(float(v), 4) for v in d.box.center],
               'size': [round(float(v), 4) for v in d.box.size],
               'yaw': round(float(d.box.yaw), 4)} for d in boxes]
        for key, boxes in sorted(preds.items())}, indent=1))
    report.files += [str(out_dir / 'report.md'), str(out_dir / 'results.json'),
                     str(out_dir / 'detections.json')]
    return report


def cloud_stamp_key(data: bytes) -> str:
    """
    Return the stamp key of a serialized message that starts with a ``std_msgs/Header``.

    :param data: CDR bytes (4-byte encapsulation header, then ``stamp.sec`` int32 and
        ``stamp.nanosec`` uint32, both 4-byte aligned).
    :return: :func:`stamp_key` of the header's stamp.
    :raises ValueError: If ``data`` is too short or not CDR.
    """
    if len(data) < 12 or data[0] != 0 or data[1] not in (0, 1):
        raise ValueError(f'not a CDR message with a header ({len(data)} bytes)')
    sec, nanosec = struct.unpack_from('<iI' if data[1] == 1 else '>iI', data, 4)
    return f'{sec}.{nanosec:09d}'


def _plot_latency(latencies_ms: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if latencies_ms:
        ax.hist(latencies_ms, bins=min(50, max(5, len(latencies_ms) // 2)))
    ax.set_xlabel('end-to-end latency (ms)')
    ax.set_ylabel('clouds')
    ax.set_title('publish -> detections received')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def stop_on_signal() -> threading.Event:
    """
    Return an event set by SIGINT/SIGTERM (for record/play loops in the CLI).

    :return: The event.
    """
    import signal

    event = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: event.set())
    return event
