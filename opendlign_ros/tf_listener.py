"""
Transform sources for the detector node: tf2_ros when installed, else our own /tf listener.

Both backends answer ``lookup(target_frame, source_frame, stamp_ns, timeout_s)`` with the
(4, 4) float64 ``T_target<-source`` at ``stamp_ns`` or raise
:class:`opendlign_core.transforms.TransformError`; both wait on the wall clock and only block the
calling thread, while the transforms arrive on other threads:

* :class:`Tf2RosSource` (a full ROS install): ``tf2_ros.Buffer`` and
  ``tf2_ros.TransformListener(buffer, node)``, whose subscriptions sit in a reentrant callback
  group of the node and so run on the node's multi-threaded executor (``spin_thread=True`` is
  not used: it would add the node itself to a second, single-threaded executor);
* :class:`BufferListener` (pip-only machines, no tf2_ros on PyPI): a
  :class:`opendlign_core.transforms.TransformBuffer` fed by subscriptions on ``/tf`` (KEEP_LAST
  100, RELIABLE, VOLATILE) and ``/tf_static`` (KEEP_LAST 100, RELIABLE, TRANSIENT_LOCAL), the
  QoS of tf2_ros' listener, in their own callback group; it needs ``tf2_msgs`` (built by
  ``scripts/build_vision_msgs.sh`` on such machines).

As tf2_ros' buffer does, both forget dynamic transforms when the node's clock jumps back by more
than a second (a replayed bag looping with ``use_sim_time``).
"""

import time
from typing import Any, Optional

import numpy as np
from rclpy.callback_groups import CallbackGroup, MutuallyExclusiveCallbackGroup
from rclpy.clock import JumpThreshold
from rclpy.duration import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from opendlign_core.transforms import TransformBuffer, TransformError, matrix_from_pose

#: QoS of ``/tf`` (tf2_ros ``DynamicListenerQoS``).
TF_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
#: QoS of ``/tf_static`` (tf2_ros ``StaticListenerQoS``).
TF_STATIC_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                           reliability=ReliabilityPolicy.RELIABLE,
                           durability=DurabilityPolicy.TRANSIENT_LOCAL)
#: Poll period of the tf2_ros backend while it waits for a transform, seconds.
_POLL_S = 0.005


def stamp_ns(stamp: Any) -> int:
    """
    Convert a ``builtin_interfaces/Time`` into nanoseconds.

    :param stamp: Message with ``sec`` and ``nanosec``.
    :return: ``sec * 1e9 + nanosec``.
    """
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def matrix_from_msg(transform: Any) -> np.ndarray:
    """
    Convert a ``geometry_msgs/Transform`` into a homogeneous matrix.

    :param transform: Message with ``translation`` (x, y, z) and ``rotation`` (x, y, z, w).
    :return: (4, 4) float64 transform (child pose in the parent frame).
    :raises ValueError: If a value is not finite or the quaternion has zero norm.
    """
    t, q = transform.translation, transform.rotation
    return matrix_from_pose((t.x, t.y, t.z), (q.x, q.y, q.z, q.w))


class BufferListener:
    """
    Our pure-Python tf2 listener: ``/tf`` and ``/tf_static`` into a ``TransformBuffer``.

    :param node: Node to create the subscriptions on.
    :param buffer: Buffer to fill (a new one by default).
    :param callback_group: Group of the TF subscriptions (a new mutually exclusive one by
        default), so that they run while another callback waits for a transform.
    :raises ImportError: If ``tf2_msgs`` is not installed.
    """

    backend = 'opendlign'

    def __init__(self, node: Node, buffer: Optional[TransformBuffer] = None,
                 callback_group: Optional[CallbackGroup] = None) -> None:
        from tf2_msgs.msg import TFMessage

        self.buffer = buffer if buffer is not None else TransformBuffer()
        self._node = node
        self._bad = 0
        group = callback_group or MutuallyExclusiveCallbackGroup()
        self._subs = [
            node.create_subscription(TFMessage, '/tf', lambda m: self._on_tf(m, False), TF_QOS,
                                     callback_group=group),
            node.create_subscription(TFMessage, '/tf_static', lambda m: self._on_tf(m, True),
                                     TF_STATIC_QOS, callback_group=group),
        ]
        self._jump = node.get_clock().create_jump_callback(
            JumpThreshold(min_forward=None, min_backward=Duration(seconds=-1)),
            post_callback=lambda _jump: self.buffer.clear(dynamic_only=True))

    @property
    def num_invalid(self) -> int:
        """
        Return how many received transforms were ignored as invalid.

        :return: The count.
        """
        return self._bad

    def lookup(self, target_frame: str, source_frame: str, stamp: int,
               timeout_s: float) -> np.ndarray:
        """
        Return ``T_target<-source`` at ``stamp``, waiting up to ``timeout_s`` seconds.

        :param target_frame: Target frame.
        :param source_frame: Source frame.
        :param stamp: Time in nanoseconds (0 = latest).
        :param timeout_s: Longest wait, seconds.
        :return: (4, 4) float64 transform.
        :raises TransformError: If it is not available in time.
        """
        return self.buffer.wait_for(target_frame, source_frame, stamp, timeout_s)

    def close(self) -> None:
        """Destroy the subscriptions."""
        for sub in self._subs:
            self._node.destroy_subscription(sub)
        self._subs = []
        self._jump.unregister()

    def _on_tf(self, msg: Any, static: bool) -> None:
        for ts in msg.transforms:
            t, q = ts.transform.translation, ts.transform.rotation
            try:
                self.buffer.set_transform(ts.header.frame_id, ts.child_frame_id,
                                          stamp_ns(ts.header.stamp), (t.x, t.y, t.z),
                                          (q.x, q.y, q.z, q.w), static=static)
            except (TypeError, ValueError) as e:
                self._bad += 1
                self._node.get_logger().warning(
                    f'ignored transform [{ts.header.frame_id}] -> [{ts.child_frame_id}] on '
                    f'{"/tf_static" if static else "/tf"}: {e}', throttle_duration_sec=5.0)


class Tf2RosSource:
    """
    tf2_ros backend: ``tf2_ros.Buffer`` plus a ``TransformListener`` on the node.

    :param node: Node the listener subscribes with; it must be spun by a multi-threaded
        executor so that TF arrives while another callback waits in :meth:`lookup`.
    :raises ImportError: If ``tf2_ros`` is not installed.
    """

    backend = 'tf2_ros'

    def __init__(self, node: Node) -> None:
        import tf2_ros

        self._tf2_ros = tf2_ros
        self.buffer = tf2_ros.Buffer(node=node)
        self._listener = tf2_ros.TransformListener(self.buffer, node)

    def lookup(self, target_frame: str, source_frame: str, stamp: int,
               timeout_s: float) -> np.ndarray:
        """
        Return ``T_target<-source`` at ``stamp``, waiting up to ``timeout_s`` seconds.

        The wait polls ``can_transform`` on the wall clock rather than passing the timeout to
        tf2_ros, whose wait runs on the node's clock and never ends while a simulated clock is
        paused.

        :param target_frame: Target frame.
        :param source_frame: Source frame.
        :param stamp: Time in nanoseconds (0 = latest).
        :param timeout_s: Longest wait, seconds.
        :return: (4, 4) float64 transform.
        :raises TransformError: With tf2's reason, if it is not available in time.
        """
        from rclpy.time import Time

        when = Time(nanoseconds=stamp)
        deadline = time.monotonic() + timeout_s
        while (not self.buffer.can_transform(target_frame, source_frame, when)
               and time.monotonic() < deadline):
            time.sleep(_POLL_S)
        try:
            ts = self.buffer.lookup_transform(target_frame, source_frame, when)
        except self._tf2_ros.TransformException as e:
            raise TransformError(str(e)) from e
        return matrix_from_msg(ts.transform)

    def close(self) -> None:
        """Destroy the listener's subscriptions."""
        unregister = getattr(self._listener, 'unregister', None)
        if unregister is not None:
            unregister()


def create_transform_source(node: Node, callback_group: Optional[CallbackGroup] = None,
                            prefer_tf2_ros: bool = True) -> Any:
    """
    Return the best available transform source.

    :param node: The node.
    :param callback_group: Callback group of our own listener's subscriptions.
    :param prefer_tf2_ros: Use tf2_ros when it imports.
    :return: A :class:`Tf2RosSource` or a :class:`BufferListener` (``backend`` names it).
    :raises ImportError: If neither tf2_ros nor tf2_msgs is installed.
    """
    if prefer_tf2_ros:
        try:
            return Tf2RosSource(node)
        except ImportError:
            pass
    try:
        return BufferListener(node, callback_group=callback_group)
    except ImportError as e:
        raise ImportError('target_frame needs tf2_ros or tf2_msgs; neither is installed (on a '
                          'pip-only machine run scripts/build_vision_msgs.sh)') from e
