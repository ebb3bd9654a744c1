"""Helpers for ROS tests: an in-process client node in its own context and domain."""

import itertools
import os
import time
from typing import Any, Callable, List, NamedTuple, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from vision_msgs.msg import Detection3DArray

from opendlign_ros import conversions

_counter = itertools.count()

#: Node parameter overrides for fast tests: the tiny random model and small depth maps.
TINY = {'model_name': 'OpenDlign-Tiny-Test', 'weights_path': '',
        'labels': ['chair', 'table', 'lamp'], 'projection.resolution': 64}


def assert_clean_stop(process: Any, log_path: Any) -> None:
    """
    Stop a node process and check it ended normally (0 or SIGTERM), showing its log if not.

    :param process: A running :class:`opendlign_ros.node_process.NodeProcess`.
    :param log_path: The file its output went to.
    """
    code = process.stop()
    assert code in (0, -15), f'exit {code}:\n' + open(log_path).read()[-4000:]


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, poll: float = 0.005) -> Any:
    """
    Poll ``predicate`` (callbacks run on another thread) until it is truthy.

    :param predicate: Condition.
    :param timeout: Seconds.
    :param poll: Seconds between polls.
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
        time.sleep(poll)


def unique_domain_id() -> int:
    """Return a ROS domain id unlikely to be used by a concurrent test process."""
    return 1 + (os.getpid() * 13 + next(_counter) * 7) % 100


class RosClient:
    """A node in a private context that talks to the detector: clouds in, detections out."""

    def __init__(self, domain_id: int, name: str = 'opendlign_test_client',
                 node_name: str = 'opendlign') -> None:
        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.detections: List[Detection3DArray] = []
        self.diagnostics: List[DiagnosticArray] = []
        self.points_pub = self.node.create_publisher(
            PointCloud2, 'points', QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE))
        self.det_sub = self.node.create_subscription(
            Detection3DArray, 'detections', self.detections.append, 10)
        self.diag_sub = self.node.create_subscription(
            DiagnosticArray, 'diagnostics', self.diagnostics.append, 50)
        self.params = AsyncParameterClient(self.node, node_name)

    def spin_until(self, predicate: Callable[[], Any], timeout: float,
                   every: Optional[Callable[[], None]] = None, period: float = 0.5) -> Any:
        """Spin until ``predicate()`` is truthy; call ``every()`` each ``period`` seconds."""
        deadline = time.monotonic() + timeout
        next_call = 0.0
        while time.monotonic() < deadline:
            if every is not None and time.monotonic() >= next_call:
                every()
                next_call = time.monotonic() + period
            self.executor.spin_once(timeout_sec=0.02)
            value = predicate()
            if value:
                return value
        raise TimeoutError(f'condition not met within {timeout} s')

    def wait_for_node(self, timeout: float = 90.0, process: Any = None) -> None:
        """Wait until the detector's subscription and publishers have matched ours."""
        def ready() -> bool:
            if process is not None and process.poll() is not None:
                raise RuntimeError(f'node exited with status {process.poll()}')
            return (self.points_pub.get_subscription_count() >= 1
                    and self.det_sub.get_publisher_count() >= 1
                    and self.diag_sub.get_publisher_count() >= 1)
        self.spin_until(ready, timeout)
        self.spin_until(lambda: self.params.services_are_ready(), timeout)

    def last_counters(self) -> dict:
        """Return the counters of the newest diagnostics message (ints where numeric)."""
        if not self.diagnostics:
            return {}
        values = dict(conversions.diagnostic_values(self.diagnostics[-1]))
        return {k: int(v) if v.lstrip('-').isdigit() else v for k, v in values.items()}

    def request(self, msg: PointCloud2, match: Callable[[Detection3DArray], bool],
                timeout: float = 60.0) -> Detection3DArray:
        """Publish ``msg`` every 0.5 s until a detection satisfying ``match`` arrives."""
        start = len(self.detections)

        def found() -> Optional[Detection3DArray]:
            return next((d for d in self.detections[start:] if match(d)), None)
        return self.spin_until(found, timeout, every=lambda: self.points_pub.publish(msg))

    def set_parameters(self, parameters: Sequence[Parameter], timeout: float = 10.0) -> list:
        """Call ``set_parameters`` on the detector and return the per-parameter results."""
        future = self.params.set_parameters(list(parameters))
        self.spin_until(future.done, timeout)
        return list(future.result().results)

    def close(self) -> None:
        """Destroy the node and shut the private context down."""
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


class FakeDetection(NamedTuple):
    """Shape of ``opendlign_core.detection.Detection`` for conversion and control-flow tests."""

    label: str
    score: float
    box: Any
    top_k: tuple
    point_indices: Any = None


class FakeResult(NamedTuple):
    """Shape of ``opendlign_core.detection.DetectionResult``."""

    detections: tuple
    timings_ms: dict = {'segment': 1.0, 'classify': 2.0}
    num_points: int = 0
    num_clusters: int = 0
