"""Shell unit tests of the node's control flow, in-process, with a test double detector."""

import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from ros_harness import FakeDetection, FakeResult, unique_domain_id
from std_msgs.msg import Header

from opendlign_core.boxes import Box3D
from opendlign_ros import conversions
from opendlign_ros.node import DetectorNode

pytestmark = pytest.mark.ros


class DoubleLabelSet:
    def __init__(self, labels):
        self.labels = tuple(labels)


class DoubleDetector:
    """Records calls; ``gate`` blocks detect(); ``fail_detect``/``fail_labels`` raise."""

    def __init__(self):
        self.calls = []
        self.colors = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_detect = False
        self.fail_labels = False
        self.labels_gate = threading.Event()
        self.labels_gate.set()

    def encode_labels(self, labels):
        self.labels_gate.wait(30)
        if self.fail_labels:
            raise RuntimeError('text encoder exploded')
        return DoubleLabelSet(labels)

    def detect(self, points, label_set, colors=None, transform=None):
        self.entered.set()
        self.gate.wait(10)
        self.calls.append((points.copy(), label_set))
        self.colors.append(None if colors is None else colors.copy())
        if self.fail_detect:
            raise RuntimeError('boom')
        top_k = tuple((label, 1.0 / len(label_set.labels)) for label in label_set.labels)
        det = FakeDetection(label_set.labels[0], 0.5, Box3D((0, 0, 0), (1, 1, 1)), top_k)
        return FakeResult((det,), num_points=len(points), num_clusters=1)


@pytest.fixture
def node_and_double():
    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    double = DoubleDetector()
    node = DetectorNode(detector=double, context=ctx, parameter_overrides=[
        Parameter('labels', value=['chair', 'table']),
        Parameter('object_map.enabled', value=False)])
    executor = MultiThreadedExecutor(num_threads=4, context=ctx)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    yield node, double
    double.gate.set()
    executor.shutdown()
    spinner.join(5)
    node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def _cloud(value):
    return conversions.cloud_to_msg(np.full((5, 3), value, np.float32), Header(frame_id='f'))


def _wait(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError('condition not met')
        time.sleep(0.005)


def test_slow_detector_always_gets_the_newest_cloud(node_and_double):
    node, double = node_and_double
    double.gate.clear()
    node._on_cloud(_cloud(1.0))
    double.entered.wait(5)
    for value in (2.0, 3.0, 4.0):      # arrive while the detector is busy
        node._on_cloud(_cloud(value))
    double.gate.set()
    _wait(lambda: node.counters.processed == 2)
    assert [float(c[0][0, 0]) for c in double.calls] == [1.0, 4.0]
    counters = node.counters
    assert (counters.received, counters.superseded, counters.rejected) == (4, 2, 0)


def test_failures_are_counted_and_the_node_keeps_going(node_and_double):
    node, double = node_and_double
    bad = _cloud(1.0)
    bad.row_step = 1
    node._on_cloud(bad)
    _wait(lambda: node.counters.rejected == 1)
    double.fail_detect = True
    node._on_cloud(_cloud(2.0))
    _wait(lambda: node.counters.failed == 1)
    double.fail_detect = False
    node._on_cloud(_cloud(3.0))
    _wait(lambda: node.counters.processed == 1)
    assert (node.counters.rejected, node.counters.failed) == (1, 1)


def test_parameter_service_answers_during_inference(node_and_double):
    node, double = node_and_double
    double.gate.clear()
    node._on_cloud(_cloud(1.0))
    double.entered.wait(5)
    start = time.monotonic()
    result = node.set_parameters([Parameter('publish_markers', value=False)])[0]
    assert result.successful and time.monotonic() - start < 0.1
    double.gate.set()


def test_label_swap_is_atomic_per_detection(node_and_double):
    node, double = node_and_double
    double.gate.clear()
    node._on_cloud(_cloud(1.0))
    double.entered.wait(5)
    # Change labels while a detection is running: it keeps the set it started with.
    assert node.set_parameters([Parameter('labels', value=['mug', 'plate'])])[0].successful
    _wait(lambda: node.labels == ('mug', 'plate'))
    double.gate.set()
    _wait(lambda: node.counters.processed == 1)
    node._on_cloud(_cloud(2.0))
    _wait(lambda: node.counters.processed == 2)
    assert [c[1].labels for c in double.calls] == [('chair', 'table'), ('mug', 'plate')]


def test_rejected_or_failed_label_sets_keep_the_old_one(node_and_double):
    node, double = node_and_double
    result = node.set_parameters([Parameter('labels', value=['mug', ' '])])[0]
    assert not result.successful and 'blank' in result.reason
    assert node.get_parameter('labels').value == ['chair', 'table']
    double.fail_labels = True
    assert node.set_parameters([Parameter('labels', value=['mug'])])[0].successful
    _wait(lambda: node._label_error != '')
    assert node.labels == ('chair', 'table') and 'exploded' in node._label_error


def test_colours_reach_the_detector_and_bad_colour_fields_keep_the_points(node_and_double):
    node, double = node_and_double
    rgb = np.array([[255, 128, 1]] * 5, np.uint8)
    colored = conversions.cloud_to_msg(np.full((5, 3), 1.0, np.float32), Header(frame_id='f'),
                                       rgb)
    node._on_cloud(colored)
    _wait(lambda: node.counters.processed == 1)
    np.testing.assert_array_equal(double.colors[0], rgb)
    # An rgb field of a type no convention uses: the points are still detected on.
    odd = conversions.cloud_to_msg(np.full((5, 3), 2.0, np.float32), Header(frame_id='f'), rgb)
    odd.fields[3].datatype = 2  # UINT8
    node._on_cloud(odd)
    _wait(lambda: node.counters.processed == 2)
    assert double.colors[1] is None and float(double.calls[1][0][0, 0]) == 2.0
    assert (node.counters.colors_ignored, node.counters.rejected) == (1, 0)
    node._on_cloud(_cloud(3.0))
    _wait(lambda: node.counters.processed == 3)
    assert double.colors[2] is None


def test_configure_process_shortens_the_gil_switch_interval_and_limits_blas():
    import sys

    from threadpoolctl import threadpool_info

    from opendlign_ros.node import GIL_SWITCH_INTERVAL_S, configure_process

    before = sys.getswitchinterval()
    blas_before = max((i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'),
                      default=1)
    try:
        configure_process()
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S) == 0.0005
        blas = [i for i in threadpool_info() if i['user_api'] == 'blas']
        assert blas and all(i['num_threads'] == 1 for i in blas)
    finally:
        sys.setswitchinterval(before)
        from threadpoolctl import threadpool_limits
        threadpool_limits(limits=blas_before, user_api='blas')


def _unspun_node():
    # A node with a DoubleDetector in its own context, not spun: for tests that stop it.
    ctx = Context()
    rclpy.init(context=ctx, domain_id=unique_domain_id())
    double = DoubleDetector()
    node = DetectorNode(detector=double, context=ctx, parameter_overrides=[
        Parameter('labels', value=['chair']), Parameter('object_map.enabled', value=False)])
    return ctx, node, double


def test_destroy_node_does_not_wait_for_a_long_label_build_or_cloud():
    from opendlign_ros.node import SHUTDOWN_JOIN_S
    ctx, node, double = _unspun_node()
    try:
        # A label build and a detection that would each take 30 s (a huge label list, a cloud
        # waiting for a transform): a stop abandons them after SHUTDOWN_JOIN_S each.
        double.labels_gate.clear()
        double.gate.clear()
        assert node.set_parameters([Parameter('labels', value=['mug'])])[0].successful
        node._on_cloud(_cloud(1.0))
        double.entered.wait(5)
        start = time.monotonic()
        node.destroy_node()
        assert time.monotonic() - start < 2 * SHUTDOWN_JOIN_S + 1.0
    finally:
        double.labels_gate.set()
        double.gate.set()
        rclpy.try_shutdown(context=ctx)


def test_a_cloud_finishing_after_a_signal_stops_the_context_is_dropped_quietly(capfd):
    # SIGTERM with a cloud in flight: rclpy's signal handler shuts the rcl context down (the
    # node's handles stay), then the detection ends and its publishes are refused. That is a
    # normal stop: no 'publish failed' warning, which could not reach /rosout either.
    ctx, node, double = _unspun_node()
    try:
        double.gate.clear()
        node._on_cloud(_cloud(1.0))
        assert double.entered.wait(5)
        capfd.readouterr()
        ctx.handle.shutdown()   # what the signal handler does
        double.gate.set()
        _wait(lambda: node._counters.processed == 1)
        err = capfd.readouterr().err
        assert 'publish on' not in err and 'Failed to publish' not in err
    finally:
        double.gate.set()
        node.destroy_node()
        rclpy.try_shutdown(context=ctx)
