"""
rosbag2 input/output with ``rosbags`` (no ``rosbag2_py``): type store, writer, reader, topics.

Bags are rosbag2 folders (``metadata.yaml`` plus one ``.mcap`` or ``.db3`` file) that
``ros2 bag`` reads. Messages are stored as CDR bytes: rclpy messages are serialized with
``rclpy.serialization`` and messages built from the ``rosbags`` type store (e.g. ``tf2_msgs``,
which needs no installed package here) with the store's own CDR serializer, so both read back
bit-exact.

Readers never need a message's Python class: :func:`read_bag` yields raw bytes, so a bag that
also holds topics of types not installed here (a vendor lidar's packets next to ``/points``)
reads fine; only the tools that must build a publisher or decode a topic look its class up, with
:func:`message_classes`, which skips each unknown topic with one warning naming its type.
"""

import importlib
import logging
import os
from pathlib import Path
import struct
import sys
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)

CLOUD_TOPIC = '/points'
#: Per-cloud ground truth: the objects each cloud sees (same header stamp as the cloud).
GROUND_TRUTH_TOPIC = '/ground_truth'
#: Per-scene ground truth of a frames bag: every object of the scene, in the fixed frame.
GT_OBJECTS_TOPIC = '/ground_truth/objects'
TF_TOPIC = '/tf'
TF_STATIC_TOPIC = '/tf_static'
CLOUD_TYPE = 'sensor_msgs/msg/PointCloud2'
DETECTIONS_TYPE = 'vision_msgs/msg/Detection3DArray'
TF_TYPE = 'tf2_msgs/msg/TFMessage'
STORAGES = ('mcap', 'sqlite3')
#: Bag time of the first cloud written by ``bag_from_scenes``, nanoseconds.
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

    Kilted's store already holds ``tf2_msgs/msg/TFMessage`` and ``geometry_msgs``.

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


def message_classes(types: Mapping[str, str], what: str = 'skipping') -> Dict[str, type]:
    """
    Return the rclpy classes of the topics whose message type is installed here.

    Each topic whose type cannot be imported is left out with one warning naming the topic and
    its type (e.g. a vendor driver's custom message recorded next to the clouds).

    :param types: Topic -> message type (``'pkg/msg/Name'``).
    :param what: What happens to an unknown topic, for the warning (e.g. ``'not playing it'``).
    :return: Topic -> class, for the known topics only (in the order of ``types``).
    """
    classes: Dict[str, type] = {}
    for topic, msgtype in types.items():
        try:
            classes[topic] = message_class(msgtype)
        except ValueError as e:
            logger.warning('topic %s has message type %s, which is not installed here; %s '
                           '(%s)', topic, msgtype, what, e)
    return classes


def _storage_plugin(storage: str) -> Any:
    from rosbags.rosbag2 import StoragePlugin

    if storage not in STORAGES:
        raise ValueError(f'storage must be one of {STORAGES}, got {storage!r}')
    return StoragePlugin.MCAP if storage == 'mcap' else StoragePlugin.SQLITE3


def offered_qos(depth: int, latched: bool) -> Any:
    """
    Return an offered QoS profile to store with a topic in a bag.

    ``ros2 bag play`` (and :func:`opendlign_ros.bag_replay.play_bag`) republish a topic with the
    QoS its bag offers; a latched topic such as ``/tf_static`` stored without it is replayed
    VOLATILE, and a tf2 listener (TRANSIENT_LOCAL) then never receives it.

    :param depth: KEEP_LAST depth (>= 1).
    :param latched: TRANSIENT_LOCAL if true, else VOLATILE.
    :return: ``rosbags`` ``Qos``: KEEP_LAST ``depth``, RELIABLE, the durability; deadline,
        lifespan and lease unspecified (0: the middleware default), liveliness AUTOMATIC.
    :raises ValueError: If ``depth`` < 1.
    """
    from rosbags.interfaces import (
        Qos,
        QosDurability,
        QosHistory,
        QosLiveliness,
        QosReliability,
        QosTime,
    )

    if depth < 1:
        raise ValueError(f'depth must be >= 1, got {depth}')
    zero = QosTime(sec=0, nsec=0)
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability.RELIABLE,
               durability=QosDurability.TRANSIENT_LOCAL if latched else QosDurability.VOLATILE,
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def latched_qos() -> Any:
    """
    Return the offered QoS of ``/tf_static`` (``tf2_ros.StaticTransformBroadcaster``'s).

    :return: ``rosbags`` ``Qos``: KEEP_LAST 1, RELIABLE, TRANSIENT_LOCAL.
    """
    return offered_qos(1, latched=True)


class BagWriter:
    """
    Write rclpy messages, ``rosbags`` messages or raw CDR bytes into a new rosbag2 folder.

    :param path: Bag folder to create (must not exist).
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :raises FileExistsError: If ``path`` exists.
    """

    def __init__(self, path: Path, storage: str = 'mcap') -> None:
        from rosbags.rosbag2 import Writer

        path = Path(path)
        if path.exists():
            raise FileExistsError(f'bag {str(path)!r} already exists')
        self.store = typestore()
        self._writer = Writer(path, version=9, storage_plugin=_storage_plugin(storage))
        self._writer.open()
        self._connections: Dict[str, Any] = {}

    def add_topic(self, topic: str, msgtype: str, offered_qos: Sequence[Any] = ()) -> None:
        """
        Declare a topic before its first message, e.g. to give it an offered QoS.

        :param topic: Topic name.
        :param msgtype: ``'pkg/msg/Name'`` (must be known to :attr:`store`).
        :param offered_qos: ``rosbags`` ``Qos`` profiles stored in the bag's metadata (see
            :func:`latched_qos`); empty: none, players use their defaults.
        :raises ValueError: If the topic is already declared.
        """
        if topic in self._connections:
            raise ValueError(f'topic {topic!r} is already in the bag')
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, typestore=self.store, offered_qos_profiles=list(offered_qos))

    def write(self, topic: str, msgtype: str, timestamp_ns: int, msg: Any) -> None:
        """
        Append one message.

        :param topic: Topic name (declared on first use if :meth:`add_topic` was not called).
        :param msgtype: ``'pkg/msg/Name'`` (must be known to :attr:`store`).
        :param timestamp_ns: Bag (log) time, nanoseconds.
        :param msg: An rclpy message, a message of :attr:`store`, or serialized CDR ``bytes``.
        """
        if topic not in self._connections:
            self.add_topic(topic, msgtype)
        if isinstance(msg, (bytes, bytearray, memoryview)):
            data = bytes(msg)
        elif hasattr(type(msg), '__msgtype__'):
            data = bytes(self.store.serialize_cdr(msg, msgtype))
        else:
            from rclpy.serialization import serialize_message

            data = serialize_message(msg)
        self._writer.write(self._connections[topic], int(timestamp_ns), data)

    def close(self) -> None:
        """Finish the bag (writes ``metadata.yaml``)."""
        self._writer.close()

    def __enter__(self) -> 'BagWriter':
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _check_bag(path: Path) -> Path:
    path = Path(path)
    if not (path / 'metadata.yaml').is_file():
        raise FileNotFoundError(f'no rosbag2 bag at {str(path)!r} (metadata.yaml missing)')
    return path


def read_bag(path: Path, topics: Optional[Sequence[str]] = None
             ) -> Iterable[Tuple[str, str, int, bytes]]:
    """
    Iterate a bag's messages in time order, undecoded (any message type reads).

    :param path: Bag folder.
    :param topics: Only these topics (``None``: all).
    :return: Iterator of ``(topic, msgtype, timestamp_ns, cdr_bytes)``.
    :raises FileNotFoundError: If the bag does not exist.
    """
    from rosbags.rosbag2 import Reader

    with Reader(_check_bag(path)) as reader:
        conns = [c for c in reader.connections if topics is None or c.topic in topics]
        for conn, timestamp, data in reader.messages(connections=conns):
            yield conn.topic, conn.msgtype, timestamp, bytes(data)


def bag_topics(path: Path) -> Dict[str, Tuple[str, int]]:
    """
    Return the topics of a bag.

    :param path: Bag folder.
    :return: Topic -> (message type, message count).
    :raises FileNotFoundError: If the bag does not exist.
    """
    from rosbags.rosbag2 import Reader

    with Reader(_check_bag(path)) as reader:
        return {c.topic: (c.msgtype, c.msgcount) for c in reader.connections}


def bag_offered_qos(path: Path) -> Dict[str, List[Any]]:
    """
    Return the QoS profiles each topic's publishers offered when the bag was recorded.

    :param path: Bag folder.
    :return: Topic -> list of ``rosbags`` ``Qos`` (empty when the bag stores none).
    :raises FileNotFoundError: If the bag does not exist.
    """
    from rosbags.rosbag2 import Reader

    with Reader(_check_bag(path)) as reader:
        return {c.topic: list(getattr(c.ext, 'offered_qos_profiles', None) or [])
                for c in reader.connections}


def deserialize(data: bytes, msgtype: str, store: Optional[Any] = None) -> Any:
    """
    Decode CDR bytes with the ``rosbags`` type store (no installed message package needed).

    :param data: CDR bytes.
    :param msgtype: ``'pkg/msg/Name'``.
    :param store: Type store (default: :func:`typestore`).
    :return: A ``rosbags`` message dataclass.
    """
    store = typestore() if store is None else store
    return store.deserialize_cdr(data, msgtype)


def stamp_key(stamp: Any) -> str:
    """
    Return the key that pairs a cloud with its detections and ground truth.

    :param stamp: ``builtin_interfaces/Time`` (rclpy's or a ``rosbags`` one).
    :return: ``'<sec>.<nanosec:09d>'``.
    """
    return f'{stamp.sec}.{stamp.nanosec:09d}'


def stamp_ns(stamp: Any) -> int:
    """
    Return a ``builtin_interfaces/Time`` in nanoseconds.

    :param stamp: The stamp (rclpy's or a ``rosbags`` one).
    :return: ``sec * 1e9 + nanosec``.
    """
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def time_msg(ns: int) -> Any:
    """
    Return an rclpy ``builtin_interfaces/Time``.

    :param ns: Nanoseconds (>= 0).
    :return: The message.
    """
    from builtin_interfaces.msg import Time

    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


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
