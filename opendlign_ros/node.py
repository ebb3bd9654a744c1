"""
The ``opendlign`` ROS 2 node: open-vocabulary 3D detection on ``sensor_msgs/PointCloud2``.

Topics (relative, so namespaces and remapping apply):

* ``points`` (sub, ``sensor_msgs/PointCloud2``): input clouds, +z up (REP-103), metres.
* ``detections`` (pub, ``vision_msgs/Detection3DArray``): one message per processed cloud, with
  the cloud's header; label in ``results[0].hypothesis.class_id``.
* ``markers`` (pub, ``visualization_msgs/MarkerArray``): boxes and labels for RViz.
* ``diagnostics`` (pub, ``diagnostic_msgs/DiagnosticArray``): per-stage latency and counters.

Threading: the subscription callback only stores the newest cloud (counting the one it replaces
as superseded) and wakes the inference callback, which runs in its own mutually exclusive
callback group on a :class:`MultiThreadedExecutor`; parameter services stay responsive during
inference. A ``labels`` change is validated in the on-set callback without side effects, then its
text embeddings are built in a third callback group and the label-set reference is swapped in one
assignment: each detection reads the reference once, so it never mixes two label sets.
"""

from dataclasses import dataclass
import signal
import sys
import threading
import time
from typing import Any, List, Optional, Sequence

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from opendlign_ros import conversions, params

NODE_NAME = 'opendlign'
#: Executor threads: cloud intake, inference, label building, services/parameters.
NUM_THREADS = 4


@dataclass
class Counters:
    """Cloud counters reported on ``diagnostics`` (guarded by the node's lock)."""

    #: Clouds received on ``points``.
    received: int = 0
    #: Clouds turned into a ``detections`` message.
    processed: int = 0
    #: Clouds replaced by a newer one before inference could start on them.
    superseded: int = 0
    #: Malformed clouds (inconsistent layout, no finite point, over the size cap).
    rejected: int = 0
    #: Clouds on which the detector raised.
    failed: int = 0
    #: Clouds whose colour fields were unusable and ignored (the points were still used).
    colors_ignored: int = 0


class DetectorNode(Node):
    """
    Zero-shot 3D detector node: a thin shell around ``opendlign_core.detection.Detector``.

    :param detector: Object with ``encode_labels(labels)`` and
        ``detect(points, label_set, colors=None)``;
        ``None`` (always, outside control-flow unit tests) builds
        ``Detector.from_config(...)`` from the parameters.
    :param kwargs: Passed to :class:`rclpy.node.Node` (e.g. ``cli_args``,
        ``parameter_overrides``).
    :raises FileNotFoundError: If the weights file does not exist.
    :raises ValueError: If a parameter value is invalid.
    """

    def __init__(self, detector: Optional[Any] = None, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._settings = params.declare_parameters(self)
        self._shell = self._settings.shell
        if detector is None:
            from opendlign_core.detection import Detector
            detector = Detector.from_config(self._settings.detector)
        self._detector = detector
        self._label_set = detector.encode_labels(list(self._settings.labels))
        self._label_generation = 0
        self._label_error = ''

        self._lock = threading.Lock()
        self._latest: Optional[PointCloud2] = None
        self._latest_received = 0.0
        self._pending_labels: Optional[List[str]] = None
        self._counters = Counters()
        self._last_error = ''

        self._inference_group = MutuallyExclusiveCallbackGroup()
        self._intake_group = MutuallyExclusiveCallbackGroup()
        self._labels_group = MutuallyExclusiveCallbackGroup()
        self._inference_wake = self.create_guard_condition(
            self._on_inference, callback_group=self._inference_group)
        self._labels_wake = self.create_guard_condition(
            self._on_labels_requested, callback_group=self._labels_group)

        self._detections_pub = self.create_publisher(Detection3DArray, 'detections', 10)
        self._markers_pub = self.create_publisher(MarkerArray, 'markers', 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        reliability = (ReliabilityPolicy.BEST_EFFORT if self._shell.input_qos == 'sensor_data'
                       else ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        self._cloud_sub = self.create_subscription(
            PointCloud2, 'points', self._on_cloud, qos, callback_group=self._intake_group)

        self.add_on_set_parameters_callback(params.on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self.get_logger().info(
            f'ready: model {self._settings.detector.opendlign.model.model_name!r}, '
            f'{len(self._label_set.labels)} labels, input QoS {self._shell.input_qos}, '
            f'listening on {self._cloud_sub.topic_name}')

    @property
    def labels(self) -> Sequence[str]:
        """
        Return the labels of the label set detections currently use.

        :return: The labels, in score order.
        """
        return tuple(self._label_set.labels)

    @property
    def counters(self) -> Counters:
        """
        Return a snapshot of the cloud counters.

        :return: A copy of the counters.
        """
        with self._lock:
            return Counters(**vars(self._counters))

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._lock:
            self._counters.received += 1
            if self._latest is not None:
                self._counters.superseded += 1
            self._latest = msg
            self._latest_received = time.monotonic()
        self._inference_wake.trigger()

    def _on_inference(self) -> None:
        while True:
            with self._lock:
                msg, received = self._latest, self._latest_received
                self._latest = None
            if msg is None:
                return
            self._process(msg, received)

    def _process(self, msg: PointCloud2, received: float) -> None:
        start = time.perf_counter()
        colors = None
        try:
            if self._settings.detector.use_colors:
                points, colors, problem = conversions.cloud_with_colors_from_msg(
                    msg, max_points=self._shell.max_input_points)
            else:
                points, problem = conversions.cloud_from_msg(
                    msg, max_points=self._shell.max_input_points), ''
        except (TypeError, ValueError) as e:
            self._drop('rejected', f'malformed cloud dropped: {e}')
            return
        if problem:
            with self._lock:
                self._counters.colors_ignored += 1
            self.get_logger().warning(f'colour fields ignored, geometry used: {problem}',
                                      throttle_duration_sec=self._throttle())
        decode_ms = (time.perf_counter() - start) * 1e3
        label_set = self._label_set
        try:
            result = self._detector.detect(points, label_set, colors=colors)
        except Exception as e:  # noqa: BLE001 - one bad cloud must not stop the executor
            self._drop('failed', f'detection failed, cloud dropped: {type(e).__name__}: {e}')
            return
        self._publish(self._detections_pub, conversions.detections_to_msg(result, msg.header))
        if self.get_parameter('publish_markers').value:
            lifetime = self.get_parameter('marker_lifetime_sec').value
            self._publish(self._markers_pub,
                          conversions.markers_to_msg(result, msg.header, lifetime))
        with self._lock:
            self._counters.processed += 1
        timings = {'decode': decode_ms, **dict(result.timings_ms),
                   'total': (time.perf_counter() - start) * 1e3,
                   'latency': (time.monotonic() - received) * 1e3}
        self._publish_diagnostics(
            DiagnosticStatus.OK,
            f'{len(result.detections)} detections from {result.num_points} points', timings,
            {'detections': len(result.detections), 'clusters': result.num_clusters,
             'points': result.num_points})

    def _drop(self, counter: str, message: str) -> None:
        with self._lock:
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)
            self._last_error = message
        self.get_logger().warning(message, throttle_duration_sec=self._throttle())
        level = DiagnosticStatus.WARN if counter == 'rejected' else DiagnosticStatus.ERROR
        self._publish_diagnostics(level, message)

    def _on_parameters_set(self, parameters: List[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name == params.LABELS:
                with self._lock:
                    self._pending_labels = list(parameter.value)
                self._labels_wake.trigger()

    def _on_labels_requested(self) -> None:
        with self._lock:
            labels, self._pending_labels = self._pending_labels, None
        if labels is None:
            return
        start = time.perf_counter()
        try:
            label_set = self._detector.encode_labels(labels)
        except Exception as e:  # noqa: BLE001 - keep serving with the old label set
            self._label_error = f'{type(e).__name__}: {e}'
            self.get_logger().error(f'could not build label set, keeping the old one: '
                                    f'{self._label_error}')
            return
        # One reference assignment: a detection in flight keeps the set it already read.
        self._label_set = label_set
        self._label_generation += 1
        self._label_error = ''
        self.get_logger().info(
            f'label set {self._label_generation} active: {len(label_set.labels)} labels '
            f'(built in {(time.perf_counter() - start) * 1e3:.0f} ms)')

    def _publish_diagnostics(self, level: bytes, message: str, timings: Optional[dict] = None,
                             extra: Optional[dict] = None) -> None:
        with self._lock:
            values = dict(vars(self._counters))
            values['last_error'] = self._last_error
        values.update(extra or {})
        values['labels'] = len(self._label_set.labels)
        values['label_generation'] = self._label_generation
        values['label_error'] = self._label_error
        self._publish(self._diagnostics_pub, conversions.diagnostics_to_msg(
            self.get_clock().now().to_msg(), level, message, values, timings))

    def _publish(self, publisher: Any, msg: Any) -> None:
        try:
            publisher.publish(msg)
        except RCLError as e:
            # Transport errors (e.g. during shutdown or with an exhausted SHM segment).
            self.get_logger().warning(f'publish on {publisher.topic_name} failed: {e}',
                                      throttle_duration_sec=self._throttle())

    def _throttle(self) -> float:
        return float(self.get_parameter('log_throttle_sec').value)


def main(args: Optional[List[str]] = None) -> int:
    """
    Run the node until shutdown (``opendlign-detector`` console script).

    :param args: Command-line arguments (``--ros-args ...``); ``None`` uses ``sys.argv``.
    :return: Exit status: 0 after a normal shutdown, 1 if the node could not start.
    """
    rclpy.init(args=args)
    try:
        try:
            node = DetectorNode()
        except (KeyboardInterrupt, ExternalShutdownException):
            return 0  # stopped while loading the model or encoding the labels
        except (FileNotFoundError, ValueError, TypeError, ImportError, ParameterException,
                RuntimeError) as e:
            rclpy.logging.get_logger(NODE_NAME).fatal(
                f'cannot start: {type(e).__name__}: {e}')
            return 1
        executor = MultiThreadedExecutor(num_threads=NUM_THREADS)
        executor.add_node(node)
        try:
            executor.spin()
        except (KeyboardInterrupt, ExternalShutdownException):
            pass
        except Exception as e:  # noqa: BLE001 - only errors during a requested stop pass
            # A SIGTERM/SIGINT shuts the context down while the executor may be building its
            # next wait set (rclpy then raises RCLError 'context is not valid' instead of
            # ExternalShutdownException) or while a callback runs (the executor re-raises its
            # error). After the context is gone that is a normal stop; before, it is a bug.
            if rclpy.ok():
                raise
            rclpy.logging.get_logger(NODE_NAME).info(
                f'stopped; error during shutdown ignored: {type(e).__name__}: {e}')
        finally:
            # A second Ctrl-C (or a process-group SIGINT) must not interrupt the teardown.
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            executor.shutdown()
            node.destroy_node()
    finally:
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
