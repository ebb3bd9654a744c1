"""Shell unit tests of the transform sources (our /tf listener and the tf2_ros adapter)."""

import math
import sys
import time
import types

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from ros_harness import unique_domain_id
from tf2_msgs.msg import TFMessage

from opendlign_core.transforms import TransformError
from opendlign_ros import tf_listener

pytestmark = pytest.mark.ros


@pytest.fixture
def node():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    n = rclpy.create_node('tf_test', context=ctx)
    yield n
    n.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _ts(parent, child, sec, nanosec, translation, rotation):
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.header.stamp = Time(sec=sec, nanosec=nanosec)
    t, q = ts.transform.translation, ts.transform.rotation
    t.x, t.y, t.z = translation
    q.x, q.y, q.z, q.w = rotation
    return ts


def test_stamp_ns_and_matrix_from_msg():
    assert tf_listener.stamp_ns(Time(sec=3, nanosec=5)) == 3_000_000_005
    ts = _ts('a', 'b', 0, 0, (1.0, 2.0, 3.0), (0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5)))
    m = tf_listener.matrix_from_msg(ts.transform)
    np.testing.assert_allclose(m @ [1, 0, 0, 1], [1, 3, 3, 1], atol=1e-12)


def test_buffer_listener_feeds_the_buffer_and_skips_bad_transforms(node):
    listener = tf_listener.BufferListener(node)
    assert listener.backend == 'opendlign'
    listener._on_tf(TFMessage(transforms=[
        _ts('/odom', 'base', 1, 0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
        _ts('odom', 'base', 1, 500_000_000, (1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0)),
        _ts('odom', 'broken', 1, 0, (0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0))]), False)
    listener._on_tf(TFMessage(transforms=[
        _ts('base', 'cam', 0, 0, (0.0, 0.0, 2.0), (0.0, 0.0, 0.0, 1.0))]), True)
    assert listener.num_invalid == 1
    t = listener.lookup('odom', 'cam', 1_250_000_000, 0.0)
    np.testing.assert_allclose(t[:3, 3], (0.5, 0.0, 2.0), atol=1e-12)
    start = time.monotonic()
    with pytest.raises(TransformError, match='future'):
        listener.lookup('odom', 'cam', 2_000_000_000, 0.1)
    assert 0.1 <= time.monotonic() - start < 1.0
    # The tf2_ros default (0 = latest) and the static-only edge.
    np.testing.assert_allclose(listener.lookup('base', 'cam', 0, 0.0)[:3, 3], (0, 0, 2))
    listener.close()


def test_without_tf2_ros_our_listener_is_used(node):
    if 'tf2_ros' in sys.modules or _importable('tf2_ros'):
        pytest.skip('tf2_ros is installed here')
    source = tf_listener.create_transform_source(node)
    assert isinstance(source, tf_listener.BufferListener)
    source.close()


def _importable(name):
    try:
        __import__(name)
    except ImportError:
        return False
    return True


class FakeTf2Buffer:
    """The two tf2_ros.Buffer calls the adapter makes; the transform appears after 3 polls."""

    def __init__(self, node=None):
        self.polls = 0

    def can_transform(self, target, source, when):
        self.polls += 1
        return self.polls > 3

    def lookup_transform(self, target, source, when):
        if source == 'nowhere':
            raise FakeTf2Module.LookupException(f'"{source}" passed to lookupTransform does '
                                                'not exist')
        self.when = when
        return _ts(target, source, 0, 0, (1.0, 2.0, 3.0), (0.0, 0.0, 0.0, 1.0))


class FakeTf2Module(types.ModuleType):
    class TransformException(Exception):
        pass

    class LookupException(TransformException):
        pass

    Buffer = FakeTf2Buffer

    class TransformListener:
        def __init__(self, buffer, node, spin_thread=False):
            # Our executor spins the node; a second executor would take the node away from it.
            assert not spin_thread
            self.unregistered = False

        def unregister(self):
            self.unregistered = True


def test_tf2_ros_adapter_maps_calls_and_errors(node, monkeypatch):
    monkeypatch.setitem(sys.modules, 'tf2_ros', FakeTf2Module('tf2_ros'))
    source = tf_listener.create_transform_source(node)
    assert isinstance(source, tf_listener.Tf2RosSource) and source.backend == 'tf2_ros'
    t = source.lookup('map', 'cam', 5_000_000_007, 1.0)
    np.testing.assert_allclose(t[:3, 3], (1, 2, 3))
    assert source.buffer.polls == 4 and source.buffer.when.nanoseconds == 5_000_000_007
    with pytest.raises(TransformError, match='"nowhere" passed to lookupTransform'):
        source.lookup('map', 'nowhere', 0, 0.0)
    source.close()
    assert source._listener.unregistered


def test_clock_jumping_back_clears_dynamic_transforms():
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter
    from rosgraph_msgs.msg import Clock

    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    n = rclpy.create_node('tf_sim', context=ctx, parameter_overrides=[
        Parameter('use_sim_time', value=True)])
    executor = SingleThreadedExecutor(context=ctx)
    executor.add_node(n)
    try:
        listener = tf_listener.BufferListener(n)
        clock_pub = n.create_publisher(Clock, '/clock', 10)
        clock_pub.publish(Clock(clock=Time(sec=100)))
        deadline = time.monotonic() + 10
        while n.get_clock().now().nanoseconds != 100 * 10**9 and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        listener._on_tf(TFMessage(transforms=[
            _ts('odom', 'base', 100, 0, (1.0, 0.0, 0.0), (0.0, 0.0, 0.0, 1.0))]), False)
        listener._on_tf(TFMessage(transforms=[
            _ts('base', 'cam', 0, 0, (0.0, 0.0, 1.0), (0.0, 0.0, 0.0, 1.0))]), True)
        assert listener.buffer.frames() == ('base', 'cam', 'odom')
        # A bag loops: the clock goes back 60 s; the dynamic edge goes, the static one stays.
        clock_pub.publish(Clock(clock=Time(sec=40)))
        while listener.buffer.frames() != ('base', 'cam') and time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.05)
        assert listener.buffer.frames() == ('base', 'cam')
        listener.close()
    finally:
        executor.shutdown()
        n.destroy_node()
        rclpy.try_shutdown(context=ctx)
