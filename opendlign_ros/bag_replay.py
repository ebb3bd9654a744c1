"""
Replay and recording: publish a bag's raw messages, record topics' raw messages into a bag.

Playing publishes the stored CDR bytes unchanged (``Publisher.publish(bytes)``) on the bag's own
schedule, and recording subscribes with ``raw=True``, so a write -> play -> record round trip is
bit-exact. Each topic is republished with the QoS its bag offers (``offered_qos_profiles``):
``/tf_static`` written by ``bag from-scenes --mode frames`` goes out TRANSIENT_LOCAL, so a tf2
listener that starts late still gets it; topics without stored QoS go out RELIABLE, VOLATILE,
depth 10. Topics whose message type is not installed here are skipped with one warning each.

No ``/clock`` is published and ``use_sim_time`` is not needed: the bag's header stamps are
republished unchanged and consistently (clouds and ``/tf`` share one time line), and the node
looks its transforms up at the cloud's stamp, never at "now".
"""

import logging
import os
from pathlib import Path
import threading
import time
from typing import Any, Callable, Dict, Mapping, Optional, Sequence

from opendlign_ros.bag_io import BagWriter, bag_offered_qos, bag_topics, message_classes, read_bag

logger = logging.getLogger(__name__)

#: Longest wait of one executor pass in :class:`RosSession`, seconds. A pass returns as soon as a
#: callback is ready, so this only bounds how late a condition that no callback changes (a
#: deadline, a node process exiting) is noticed. Polling every 10 ms instead cost 61 ms of CPU
#: per second (rclpy rebuilds its wait set each pass), taken from the node under test on a
#: 2-core machine; at 0.1 s it is 7 ms per second (issue 13).
POLL_S = 0.1


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
            self.executor.spin_once(timeout_sec=POLL_S)

    def spin_for(self, seconds: float) -> None:
        """
        Process callbacks for ``seconds``.

        :param seconds: Duration; <= 0 returns at once.
        """
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.executor.spin_once(timeout_sec=min(left, POLL_S))

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


def reliable_qos(depth: int = 10) -> Any:
    """
    Return a RELIABLE, VOLATILE, KEEP_LAST profile.

    :param depth: History depth.
    :return: ``rclpy.qos.QoSProfile``.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy

    return QoSProfile(depth=depth, reliability=ReliabilityPolicy.RELIABLE)


def replay_qos(offered: Sequence[Any], count: int) -> Any:
    """
    Return the QoS to republish a topic with, from the profiles its bag offers.

    As ``ros2 bag play`` does, the topic goes out BEST_EFFORT if any recorded publisher offered
    it, and TRANSIENT_LOCAL only if every one did; a TRANSIENT_LOCAL topic keeps all of its
    ``count`` messages (at least the offered depth) for late subscribers, so several latched
    ``/tf_static`` messages all reach a tf2 listener that starts late.

    :param offered: ``rosbags`` ``Qos`` profiles from the bag (empty: none stored).
    :param count: Number of the topic's messages in the bag.
    :return: ``rclpy.qos.QoSProfile`` (RELIABLE, VOLATILE, depth 10 without stored profiles).
    """
    from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy

    if not offered:
        return reliable_qos()
    best_effort = any(q.reliability.name == 'BEST_EFFORT' for q in offered)
    latched = all(q.durability.name == 'TRANSIENT_LOCAL' for q in offered)
    depth = max([10] + [int(q.depth) for q in offered])
    if latched:
        depth = max([1, int(count)] + [int(q.depth) for q in offered])
    return QoSProfile(
        depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def play_bag(session: RosSession, path: Path, topics: Optional[Sequence[str]] = None,
             rate: float = 1.0, wait_for_subscribers: Sequence[str] = (),
             discovery_timeout: float = 30.0, require_subscribers: bool = True,
             on_publish: Optional[Callable[[str, bytes, float], None]] = None,
             remap: Optional[Mapping[str, str]] = None,
             warm_up: Optional[Callable[[Mapping[str, Any]], None]] = None,
             gate: Optional[Callable[[], Any]] = None, gate_timeout: float = 600.0,
             gate_topics: Optional[Sequence[str]] = None) -> int:
    """
    Publish a bag's raw messages with their original timing (scaled by ``rate``).

    Publications follow a monotonic schedule: message k goes out at
    ``start + (t_k - t_0) / rate``; the session keeps processing callbacks while waiting. With a
    ``gate``, the schedule is ignored instead: each message after the first goes out as soon as
    ``gate()`` is truthy (lock-step replay, e.g. one cloud at a time into a slow node); with
    ``gate_topics`` only those topics' messages (after the first of them) wait for the gate,
    the others go out at once in bag order (e.g. ``/tf`` between two clouds).

    Topics whose message type is not installed here are not played; each gets one warning
    naming its type.

    :param session: The publishing session.
    :param path: Bag folder.
    :param topics: Topics to play (``None``: all).
    :param rate: Playback speed factor (> 0).
    :param wait_for_subscribers: Topics that must have a subscriber before playback starts.
    :param discovery_timeout: Seconds to wait for those subscribers.
    :param require_subscribers: At the timeout, raise ``TimeoutError`` naming the topics still
        without a subscriber (true), or warn and play anyway (false).
    :param on_publish: Called with ``(topic, data, monotonic_time)`` after each publication.
    :param remap: Bag topic -> published topic.
    :param warm_up: Called with the topic -> publisher map once subscribers are found, before the
        schedule starts (e.g. to confirm end-to-end delivery).
    :param gate: Lock-step condition.
    :param gate_timeout: Seconds to wait for ``gate``.
    :param gate_topics: Topics gated by ``gate`` (``None``: all).
    :return: Number of messages published.
    :raises ValueError: If ``rate`` is not positive, a topic is missing from the bag, or no
        selected topic has a message type installed here.
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
    classes = message_classes({t: available[t][0] for t in selected}, 'not playing it')
    if not classes:
        raise ValueError(f'none of the topics {selected} can be played: their message types '
                         f'{sorted({available[t][0] for t in selected})} are not installed here')
    offered = bag_offered_qos(path)
    remap = dict(remap or {})
    publishers = {t: session.node.create_publisher(
        cls, remap.get(t, t), replay_qos(offered.get(t, []), available[t][1]))
        for t, cls in classes.items()}
    waiting = {t: publishers[t] for t in wait_for_subscribers if t in publishers}
    if waiting:
        # Start when every awaited topic has a subscriber, or at the timeout with a warning
        # naming those still without one: a topic nobody listens to must not stop playback.
        def all_subscribed() -> bool:
            return all(p.get_subscription_count() > 0 for p in waiting.values())

        try:
            session.spin_until(all_subscribed, discovery_timeout)
        except TimeoutError:
            lonely = sorted(t for t, p in waiting.items() if p.get_subscription_count() == 0)
            if require_subscribers:
                raise TimeoutError(f'no subscriber on {lonely} after {discovery_timeout:.0f} s'
                                   ) from None
            logger.warning('no subscriber on %s after %.0f s; playing anyway', lonely,
                           discovery_timeout)
    if warm_up is not None:
        warm_up(publishers)
    count = 0
    start = None
    first_ns = 0
    gated_before = False
    for topic, _, stamp_ns, data in read_bag(path, list(classes)):
        gated = gate is not None and (gate_topics is None or topic in gate_topics)
        if start is None:
            start, first_ns = time.monotonic(), stamp_ns
        elif gated and gated_before:
            session.spin_until(gate, gate_timeout)
        gated_before = gated_before or gated
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
    :param topics: Topic -> message type (``'pkg/msg/Name'``); topics of types not installed
        here are skipped with one warning each.
    :param storage: ``'mcap'`` or ``'sqlite3'``.
    :raises ValueError: If no topic has a message type installed here.
    """

    def __init__(self, session: RosSession, path: Path, topics: Mapping[str, str],
                 storage: str = 'mcap') -> None:
        classes = message_classes(topics, 'not recording it')
        if not classes:
            raise ValueError(f'none of the topics {sorted(topics)} can be recorded: their message '
                             f'types {sorted(set(topics.values()))} are not installed here')
        self.count = 0
        #: Topic -> message type of the topics being recorded.
        self.topics = {t: topics[t] for t in classes}
        self._session = session
        self._writer = BagWriter(path, storage)
        self._subs = [session.node.create_subscription(
            cls, topic, self._callback(topic, topics[topic]), reliable_qos(100), raw=True)
            for topic, cls in classes.items()]

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
