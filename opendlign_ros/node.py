"""
The ``opendlign`` ROS 2 node: open-vocabulary 3D detection on ``sensor_msgs/PointCloud2``.

Topics and services (relative, so namespaces and remapping apply):

* ``points`` (sub, ``sensor_msgs/PointCloud2``): input clouds, metres.
* ``/tf``, ``/tf_static`` (sub, ``tf2_msgs/TFMessage``, only with ``target_frame``): through
  tf2_ros when installed, else the node's own listener (:mod:`opendlign_ros.tf_listener`).
* ``detections`` (pub, ``vision_msgs/Detection3DArray``): one message per processed cloud, with
  the cloud's stamp and ``frame_id`` = ``target_frame`` (or the cloud's frame when it is empty);
  label in ``results[0].hypothesis.class_id``. An empty cloud (or one without a finite point)
  gives an empty array.
* ``markers`` (pub, ``visualization_msgs/MarkerArray``): boxes and labels for RViz.
* ``label_info`` (pub, ``vision_msgs/LabelInfo``, reliable, transient local, depth 1): class ids
  and names of the active label set, threshold = ``score_threshold``; republished on every
  label change. Ids are append-only: a label keeps its id across changes.
* ``objects`` (pub, ``vision_msgs/Detection3DArray``) and ``objects_markers`` (pub,
  ``MarkerArray``): the confirmed objects of the persistent object map, in the map frame
  (``target_frame`` or the cloud's frame), ``Detection3D.id`` = persistent object id,
  ``results`` = fused label scores; after each processed cloud (``object_map.enabled``),
  stamped like it, shortly after that cloud's ``detections``.
* ``~/clear_objects`` (service, ``std_srvs/Trigger``): empty the object map and publish it
  empty; map updates of clouds received before the request, and consolidations asked for
  before it, are dropped (never waited for), so the answer comes at once.
* ``~/consolidate_objects`` (service, ``std_srvs/Trigger``): detect on the map's fused cloud and
  rebuild the objects from it (:meth:`~opendlign_core.object_map.ObjectMap.consolidate`), then
  publish ``objects``; also every ``object_map.consolidate_every`` clouds when that is > 0.
* ``diagnostics`` (pub, ``diagnostic_msgs/DiagnosticArray``): per-stage latency, counters,
  segmentation warnings and dropped-cluster counts.

Frames: with ``target_frame`` set, each cloud is transformed into it at the cloud's stamp (the
detector applies the looked-up transform while it converts the cloud to its local float32
working frame; ``transform_ms`` on diagnostics is the lookup); a cloud whose transform does not
arrive within ``transform_timeout`` is dropped and counted as ``no_transform``, never processed
in another frame. The core detects in a
+z-up frame (``up_axis``); every published box is rotated back, centre and full orientation, into
the frame its header names.

Threading: the subscription callback only stores the newest cloud (counting the one it replaces
as superseded) and wakes the node's own inference thread, so the executor (single-threaded in
:func:`main`) never runs inference: parameter services, the TF subscriptions and the clear
service stay responsive during inference and while inference waits for a transform. A
``labels`` change is validated in the on-set callback without side effects, then its text
embeddings are built on a label thread and the label-set reference is swapped in one
assignment: each detection reads the reference once, so it never mixes two label sets. The
object map is updated on its own worker thread once a cloud's detections are out, in cloud order,
overlapping the next cloud's decoding and segmentation (at most :data:`MAP_BACKLOG` updates
wait; beyond that inference waits for the map, so no processed cloud is left out of it);
``map_update_ms`` and ``objects`` on diagnostics are those of the last finished update.
"""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
import os
import signal
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
import numpy as np
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header
from threadpoolctl import threadpool_limits
from vision_msgs.msg import Detection3DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from opendlign_core.pointcloud import up_rotation
from opendlign_core.transforms import TransformError, normalize_frame_id
from opendlign_ros import conversions, params, tf_listener

NODE_NAME = 'opendlign'
#: Longest wait of :meth:`DetectorNode.destroy_node` for the inference and label threads,
#: seconds (they are daemon threads; a longer transform wait or label build is abandoned).
SHUTDOWN_JOIN_S = 1.0
#: ``VisionClass.class_id`` of the "unknown" outcome (vision_msgs' UNLABELED).
UNLABELED_ID = 65535
#: Object-map updates that may wait for the map worker before inference waits for them.
MAP_BACKLOG = 2
#: QoS of ``label_info``: latched, as vision_msgs asks.
LABEL_INFO_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                            reliability=ReliabilityPolicy.RELIABLE,
                            durability=DurabilityPolicy.TRANSIENT_LOCAL)


@dataclass
class Counters:
    """Cloud counters reported on ``diagnostics`` (guarded by the node's lock)."""

    #: Clouds received on ``points``.
    received: int = 0
    #: Clouds turned into a ``detections`` message (empty clouds included).
    processed: int = 0
    #: Clouds replaced by a newer one before inference could start on them.
    superseded: int = 0
    #: Malformed clouds (inconsistent layout, over the size cap).
    rejected: int = 0
    #: Clouds on which the detector raised.
    failed: int = 0
    #: Clouds whose colour fields were unusable and ignored (the points were still used).
    colors_ignored: int = 0
    #: Clouds dropped because their transform to ``target_frame`` was not available in time.
    no_transform: int = 0
    #: Processed clouds without any finite point (width or height 0, or all NaN).
    empty: int = 0


class LabelIds:
    """
    Append-only ``label -> VisionClass.class_id`` numbering: a label keeps its id forever.

    Ids run from 0; 65535 is reserved for the "UNLABELED" (unknown) class.
    """

    def __init__(self) -> None:
        self._ids: Dict[str, int] = {}

    def assign(self, labels: Sequence[str]) -> List[Tuple[int, str]]:
        """
        Return the class ids of ``labels``, numbering new labels with the next free ids.

        :param labels: The label set, in order.
        :return: ``(class_id, label)`` pairs in the order of ``labels``.
        :raises ValueError: If the ids would pass 65534 (nothing is assigned then).
        """
        new = [label for label in dict.fromkeys(labels) if label not in self._ids]
        if len(self._ids) + len(new) > UNLABELED_ID:
            raise ValueError(f'class ids exhausted: {len(self._ids)} labels numbered so far, '
                             f'{len(new)} new ones do not fit below {UNLABELED_ID}')
        for label in new:
            self._ids[label] = len(self._ids)
        return [(self._ids[label], label) for label in labels]


class DetectorNode(Node):
    """
    Zero-shot 3D detector node: a thin shell around ``opendlign_core.detection.Detector``.

    :param detector: Object with ``encode_labels(labels)`` and
        ``detect(points, label_set, colors=None)`` (and ``classifier``, the object map's scorer,
        when ``object_map.enabled``); ``None`` (always, outside control-flow unit tests) builds
        ``Detector.from_config(...)`` from the parameters.
    :param kwargs: Passed to :class:`rclpy.node.Node` (e.g. ``cli_args``,
        ``parameter_overrides``).
    :raises FileNotFoundError: If the weights file does not exist.
    :raises ValueError: If a parameter value is invalid.
    :raises ImportError: If ``target_frame`` is set and neither tf2_ros nor tf2_msgs is
        installed.
    """

    def __init__(self, detector: Optional[Any] = None, **kwargs: Any) -> None:
        super().__init__(NODE_NAME, **kwargs)
        self._settings = params.declare_parameters(self)
        self._shell = self._settings.shell
        if detector is None:
            from opendlign_core.detection import Detector
            detector = Detector.from_config(self._settings.detector)
        self._detector = detector
        self._label_ids = LabelIds()
        self._class_map = self._label_ids.assign(list(self._settings.labels))
        self._label_set = detector.encode_labels(list(self._settings.labels))
        self._label_generation = 0
        self._label_error = ''

        self._lock = threading.Lock()
        self._latest: Optional[PointCloud2] = None
        self._latest_received = 0.0
        self._latest_epoch = 0
        self._pending_labels: Optional[List[str]] = None
        self._counters = Counters()
        self._last_error = ''

        # The core detects in a +z-up frame: p_zup = R p. Boxes go back with R^T.
        self._target_frame = normalize_frame_id(self._shell.target_frame)
        up_axis = self._settings.detector.up_axis
        self._zup_from_frame: Optional[np.ndarray] = None
        self._frame_from_zup: Optional[np.ndarray] = None
        if up_axis != 'z':
            self._zup_from_frame = np.eye(4)
            self._zup_from_frame[:3, :3] = up_rotation(up_axis)
            self._frame_from_zup = self._zup_from_frame.T.copy()

        self._intake_group = MutuallyExclusiveCallbackGroup()
        self._tf_group = MutuallyExclusiveCallbackGroup()
        self._transforms: Any = None
        if self._target_frame:
            self._transforms = tf_listener.create_transform_source(
                self, callback_group=self._tf_group)

        self._object_map: Any = None
        self._map_frame = ''
        self._map_worker: Optional[ThreadPoolExecutor] = None
        self._map_pending: deque = deque()
        self._map_last: Dict[str, float] = {}
        # ~/clear_objects bumps the epoch; map work from clouds received before (or a
        # consolidation asked for before) is then dropped instead of waited for, so the
        # executor never waits on the map thread for more than one map change.
        self._map_epoch = 0
        self._map_epoch_lock = threading.Lock()
        self._consolidation_queued = False
        if self._settings.object_map_enabled:
            from opendlign_core.object_map import ObjectMap
            self._object_map = ObjectMap(getattr(detector, 'classifier', None), self._label_set,
                                         self._settings.object_map)
            self._map_worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix='object_map')

        # Inference and label building run on the node's own threads, not as executor
        # callbacks: rclpy's MultiThreadedExecutor hands callbacks to its pool with a delay
        # (a 4 MB cloud echoed back: 51 ms round trip vs 8 ms with a single-threaded executor,
        # both with the node's 0.5 ms GIL switch interval), and a single-threaded executor
        # must not be blocked by them (TF would stop while inference waits for a transform).
        # Both are daemon threads that destroy_node() waits for only SHUTDOWN_JOIN_S: a stop
        # must not wait for a 20 s label rebuild or a 10 s transform_timeout.
        self._stopping = False
        #: Names of the threads destroy_node() stopped waiting for (still in a long call).
        self.abandoned_threads: Tuple[str, ...] = ()
        self._cloud_ready = threading.Condition(self._lock)
        self._labels_ready = threading.Condition(self._lock)
        self._inference_thread = threading.Thread(
            target=self._worker_loop, name='inference', daemon=True,
            args=(self._cloud_ready, self._take_cloud, lambda work: self._process(*work),
                  lambda error: self._drop('failed', f'cloud dropped: {error}')))
        self._labels_thread = threading.Thread(
            target=self._worker_loop, name='labels', daemon=True,
            args=(self._labels_ready, self._take_labels, self._build_labels,
                  lambda error: self.get_logger().error(f'label set not built: {error}')))

        self._detections_pub = self.create_publisher(Detection3DArray, 'detections', 10)
        self._markers_pub = self.create_publisher(MarkerArray, 'markers', 10)
        self._diagnostics_pub = self.create_publisher(DiagnosticArray, 'diagnostics', 10)
        self._label_info_pub = self.create_publisher(LabelInfo, 'label_info', LABEL_INFO_QOS)
        self._objects_pub = self.create_publisher(Detection3DArray, 'objects', 10)
        self._objects_markers_pub = self.create_publisher(MarkerArray, 'objects_markers', 10)
        from std_srvs.srv import Trigger
        self._clear_srv = self.create_service(Trigger, '~/clear_objects', self._on_clear_objects)
        self._consolidate_srv = self.create_service(Trigger, '~/consolidate_objects',
                                                    self._on_consolidate_objects)
        self._map_header: Optional[Header] = None
        reliability = (ReliabilityPolicy.BEST_EFFORT if self._shell.input_qos == 'sensor_data'
                       else ReliabilityPolicy.RELIABLE)
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=reliability)
        self._cloud_sub = self.create_subscription(
            PointCloud2, 'points', self._on_cloud, qos, callback_group=self._intake_group)

        self.add_on_set_parameters_callback(params.on_set_parameters)
        self.add_post_set_parameters_callback(self._on_parameters_set)
        self._publish_label_info()
        frame = (f'target_frame {self._target_frame!r} (TF: {self._transforms.backend})'
                 if self._target_frame else "each cloud's own frame")
        self.get_logger().info(
            f'ready: model {self._settings.detector.opendlign.model.model_name!r} '
            f'({_weights_text(self._settings.detector.opendlign.model)}), '
            f'{len(self._label_set.labels)} labels, input QoS {self._shell.input_qos}, '
            f'publishing in {frame}, object map '
            f'{"on" if self._object_map is not None else "off"}, '
            f'listening on {self._cloud_sub.topic_name}')
        self._inference_thread.start()
        self._labels_thread.start()

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

    @property
    def object_map(self) -> Any:
        """
        Return the object map (``None`` when ``object_map.enabled`` is false).

        :return: The :class:`opendlign_core.object_map.ObjectMap`.
        """
        return self._object_map

    def wait_for_object_map(self, timeout: Optional[float] = None) -> None:
        """
        Wait until every object-map update submitted so far has finished.

        :param timeout: Longest wait, seconds (``None``: no limit).
        :raises TimeoutError: If an update is still running after ``timeout``.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        for future in list(self._map_pending):
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            future.exception(timeout=left)

    def destroy_node(self) -> None:
        """Finish the current cloud and queued label/map work, stop TF, destroy the node."""
        with self._lock:
            self._stopping = True
            self._cloud_ready.notify_all()
            self._labels_ready.notify_all()
        for thread in (self._inference_thread, self._labels_thread):
            if thread.is_alive():
                thread.join(SHUTDOWN_JOIN_S)
        self.abandoned_threads = tuple(t.name for t in (self._inference_thread,
                                                        self._labels_thread) if t.is_alive())
        if self._map_worker is not None:
            # Queued updates and consolidations are dropped; a running one finishes.
            self._map_worker.shutdown(wait=True, cancel_futures=True)
            self._map_worker = None
        if self._transforms is not None:
            self._transforms.close()
            self._transforms = None
        super().destroy_node()

    def _on_cloud(self, msg: PointCloud2) -> None:
        with self._lock:
            self._counters.received += 1
            if self._latest is not None:
                self._counters.superseded += 1
            self._latest = msg
            self._latest_received = time.monotonic()
            self._latest_epoch = self._map_epoch
            self._cloud_ready.notify()

    def _worker_loop(self, ready: threading.Condition, take: Callable[[], Any],
                     handle: Callable[[Any], None], on_error: Callable[[str], None]) -> None:
        # Body of the inference and label threads: wait on ``ready`` until ``take()`` (called
        # with the lock held) gives work, handle it outside the lock, until destroy_node().
        while True:
            with self._lock:
                while (work := take()) is None and not self._stopping:
                    ready.wait()
                if self._stopping:
                    return
            try:
                handle(work)
            except Exception as e:  # noqa: BLE001 - the thread must outlive any one job
                if self._stopping or not self.context.ok():
                    return
                on_error(f'{type(e).__name__}: {e}')

    def _take_cloud(self) -> Optional[Tuple[PointCloud2, float, int]]:
        if self._latest is None:
            return None
        work = (self._latest, self._latest_received, self._latest_epoch)
        self._latest = None
        return work

    def _take_labels(self) -> Optional[List[str]]:
        labels, self._pending_labels = self._pending_labels, None
        return labels

    def _process(self, msg: PointCloud2, received: float, epoch: int) -> None:
        start = time.perf_counter()
        cloud_frame = normalize_frame_id(msg.header.frame_id)
        header = Header(stamp=msg.header.stamp, frame_id=self._target_frame or cloud_frame)
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
        timings = {'decode': (time.perf_counter() - start) * 1e3}
        if len(points) == 0:
            self._publish_empty(header, start, received, timings, msg)
            return
        sensor_pose = np.eye(4)
        if self._target_frame:
            t0 = time.perf_counter()
            try:
                sensor_pose = self._transforms.lookup(
                    self._target_frame, cloud_frame, tf_listener.stamp_ns(msg.header.stamp),
                    float(self.get_parameter('transform_timeout').value))
            except TransformError as e:
                stamp = msg.header.stamp
                self._drop('no_transform',
                           f'cloud dropped: no transform from [{cloud_frame}] to '
                           f'[{self._target_frame}] at {stamp.sec}.{stamp.nanosec:09d}: {e}')
                return
            timings['transform'] = (time.perf_counter() - t0) * 1e3
        label_set = self._label_set
        try:
            # The cloud is moved into target_frame inside the detector, on its way to the
            # float32 working frame (no float64 moved copy of the cloud).
            result = self._detector.detect(points, label_set, colors=colors,
                                           transform=sensor_pose if self._target_frame else None)
        except Exception as e:  # noqa: BLE001 - one bad cloud must not stop the executor
            self._drop('failed', f'detection failed, cloud dropped: {type(e).__name__}: {e}')
            return
        self._publish(self._detections_pub, conversions.detections_to_msg(
            result, header, self._frame_from_zup))
        if self.get_parameter('publish_markers').value:
            lifetime = self.get_parameter('marker_lifetime_sec').value
            self._publish(self._markers_pub, conversions.markers_to_msg(
                result, header, lifetime, frame_from_zup=self._frame_from_zup))
        extra: Dict[str, Any] = {'detections': len(result.detections),
                                 'clusters': result.num_clusters, 'points': result.num_points}
        if self._map_worker is not None:
            self._submit_map_update(result, points, sensor_pose, header, epoch)
            with self._lock:
                last = dict(self._map_last)
            if last:
                timings['map_update'] = last['map_update']
                extra['objects'] = int(last['objects'])
        with self._lock:
            self._counters.processed += 1
        warnings = tuple(getattr(result, 'warnings', ()) or ())
        for name, count in dict(getattr(result, 'dropped_clusters', {}) or {}).items():
            extra[f'dropped_{name}'] = count
        extra['warnings'] = '; '.join(warnings)
        for warning in warnings:
            self.get_logger().warning(f'segmentation: {warning}',
                                      throttle_duration_sec=self._throttle())
        timings.update(dict(result.timings_ms))
        timings['total'] = (time.perf_counter() - start) * 1e3
        timings['latency'] = (time.monotonic() - received) * 1e3
        summary = f'{len(result.detections)} detections from {result.num_points} points'
        self._publish_diagnostics(
            DiagnosticStatus.WARN if warnings else DiagnosticStatus.OK,
            summary + (f'; {warnings[0]}' if warnings else ''), timings, extra)

    def _publish_empty(self, header: Header, start: float, received: float,
                       timings: Dict[str, float], msg: PointCloud2) -> None:
        empty = Detection3DArray(header=header)
        self._publish(self._detections_pub, empty)
        if self.get_parameter('publish_markers').value:
            self._publish(self._markers_pub, conversions.delete_all_markers(header))
        with self._lock:
            self._counters.processed += 1
            self._counters.empty += 1
        timings['total'] = (time.perf_counter() - start) * 1e3
        timings['latency'] = (time.monotonic() - received) * 1e3
        self._publish_diagnostics(
            DiagnosticStatus.OK,
            f'empty cloud ({msg.width} x {msg.height}, no finite point): no detections',
            timings, {'detections': 0, 'clusters': 0, 'points': 0})

    def _submit_map_update(self, result: Any, points: np.ndarray, sensor_pose: np.ndarray,
                           header: Header, epoch: int) -> None:
        # Runs on the inference thread: queue the update, waiting only past MAP_BACKLOG.
        while self._map_pending and self._map_pending[0].done():
            self._map_pending.popleft()
        while len(self._map_pending) >= MAP_BACKLOG:
            self._map_pending.popleft().exception()
        if self._map_worker is None:
            return
        future: Future = self._map_worker.submit(self._map_job, result, points, sensor_pose,
                                                 header, epoch)
        self._map_pending.append(future)

    def _map_job(self, result: Any, points: np.ndarray, sensor_pose: np.ndarray,
                 header: Header, epoch: int) -> None:
        t0 = time.perf_counter()
        try:
            with self._map_epoch_lock:
                if epoch != self._map_epoch:
                    return   # the map was cleared after this cloud arrived
                self._update_map(result, points, sensor_pose, header)
            if self._object_map.consolidation_due():
                try:
                    self._consolidate(epoch)
                except Exception as e:  # noqa: BLE001 - the streaming map is still good
                    self.get_logger().error(f'object map consolidation failed: '
                                            f'{type(e).__name__}: {e}',
                                            throttle_duration_sec=self._throttle())
            count = self._publish_objects(header, epoch)
            if count is None:
                return
        except Exception as e:  # noqa: BLE001 - the detections are already out
            message = f'object map update failed: {type(e).__name__}: {e}'
            with self._lock:
                self._last_error = message
            self.get_logger().error(message, throttle_duration_sec=self._throttle())
            return
        with self._lock:
            self._map_last = {'map_update': (time.perf_counter() - t0) * 1e3, 'objects': count}

    def _update_map(self, result: Any, points: np.ndarray, sensor_pose: np.ndarray,
                    header: Header) -> None:
        # Runs on the map thread with the epoch lock held.
        if self._map_frame != header.frame_id:
            if self._map_frame:
                self.get_logger().warning(
                    f'cloud frame changed from [{self._map_frame}] to [{header.frame_id}]: '
                    'object map cleared (set target_frame to a fixed frame to map a moving '
                    'sensor)')
                self._object_map.clear()
            self._map_frame = header.frame_id
        # The map works in the detector's +z-up version of the map frame; ``points`` are the
        # cloud as received (sensor frame), of which the map moves only what it keeps.
        map_from_sensor = sensor_pose
        if self._zup_from_frame is not None:
            map_from_sensor = self._zup_from_frame @ sensor_pose
        self._object_map.update_from_frame(result, points, map_from_sensor,
                                           tf_listener.stamp_ns(header.stamp) * 1e-9,
                                           points_in_sensor_frame=True)
        self._map_header = header

    def _consolidate(self, epoch: int) -> Optional[int]:
        # Runs on the map thread: scene-mode detection on the fused cloud (+z-up map frame, so
        # the detector's up_axis rotation is undone by the transform), then the rebuild, unless
        # the map was cleared in between (None then). The detection runs without the epoch
        # lock, so a clear never waits for it.
        with self._map_epoch_lock:
            if epoch != self._map_epoch:
                return None
            fused = self._object_map.fused_cloud()
            header = self._map_header
        if len(fused) == 0 or header is None:
            return len(self._object_map.objects(confirmed_only=True))
        result = self._detector.detect(fused, self._label_set, transform=self._frame_from_zup)
        with self._map_epoch_lock:
            if epoch != self._map_epoch:
                return None
            self._object_map.consolidate(result, fused,
                                         tf_listener.stamp_ns(header.stamp) * 1e-9)
        return len(self._object_map.objects(confirmed_only=True))

    def _on_consolidate_objects(self, request: Any, response: Any) -> Any:
        # Queues the consolidation behind the pending map updates and answers at once: waiting
        # here would stop the (single-threaded) executor, so TF, parameters and clouds, for
        # the ~1 s it takes. The rebuilt objects are published when it is done.
        response.success = False
        if self._object_map is None or self._map_worker is None:
            response.message = 'object map is disabled (object_map.enabled is false)'
            return response
        if self._object_map.config.fused_points_per_frame == 0:
            response.message = ('the object map keeps no fused cloud '
                                '(object_map.fused_points_per_frame is 0)')
            return response
        with self._lock:
            processed = self._counters.processed
            queued = self._consolidation_queued
            self._consolidation_queued = processed > 0 or queued
        if processed == 0:
            response.message = 'nothing to consolidate: no cloud processed yet'
            return response
        response.success = True
        if queued:
            # One waiting consolidation serves every request made before it starts (each is a
            # scene-mode detection, ~1 s: a burst of requests must not stall the map).
            response.message = ('a consolidation is already queued; objects are published '
                                'when it is done')
            return response
        self._map_worker.submit(self._consolidate_job, self._map_epoch)
        response.message = 'consolidation queued; objects are published when it is done'
        return response

    def _consolidate_job(self, epoch: int) -> None:
        start = time.perf_counter()
        with self._lock:
            self._consolidation_queued = False   # requests from now on need another run
        try:
            count = self._consolidate(epoch)
            header = self._map_header
            if count is not None and header is not None:
                count = self._publish_objects(header, epoch)
        except Exception as e:  # noqa: BLE001 - the map thread must keep serving
            self.get_logger().error(f'object map consolidation failed: {type(e).__name__}: {e}')
            return
        if count is None:
            self.get_logger().info('object map: consolidation dropped: the map was cleared')
        elif header is None:
            self.get_logger().info('object map: nothing to consolidate: no cloud since the '
                                   'map was cleared')
        else:
            self.get_logger().info(f'object map: consolidated: {count} objects '
                                   f'({(time.perf_counter() - start) * 1e3:.0f} ms)')

    def _publish_objects(self, header: Header, epoch: Optional[int] = None) -> Optional[int]:
        # Snapshot and publish under the epoch lock, so an objects message of the old map
        # never follows the empty one of a clear; None (nothing published) when ``epoch`` is
        # given and the map was cleared since. Callers holding the lock use _publish_snapshot.
        with self._map_epoch_lock:
            if epoch is not None and epoch != self._map_epoch:
                return None
            return self._publish_snapshot(header)

    def _publish_snapshot(self, header: Header) -> int:
        objects = self._object_map.objects(confirmed_only=True)
        self._publish(self._objects_pub, conversions.objects_to_msg(
            objects, header, self._frame_from_zup))
        if self.get_parameter('publish_markers').value:
            self._publish(self._objects_markers_pub, conversions.object_markers_to_msg(
                objects, header, frame_from_zup=self._frame_from_zup))
        return len(objects)

    def _on_clear_objects(self, request: Any, response: Any) -> Any:
        if self._object_map is None:
            response.success = False
            response.message = 'object map is disabled (object_map.enabled is false)'
            return response
        # Map work from clouds received (and consolidations asked for) before the request
        # belongs to the old map: the new epoch drops it. This waits for at most one running
        # map change (an update, ~10 ms), never for a detection.
        with self._map_epoch_lock:
            with self._lock:
                self._map_epoch += 1
            count = len(self._object_map)
            confirmed = len(self._object_map.objects(confirmed_only=True))
            self._object_map.clear()
            self._map_header = None   # the next cloud stamps the new map
            if self._map_frame:
                self._publish_snapshot(Header(stamp=self.get_clock().now().to_msg(),
                                              frame_id=self._map_frame))
        response.success = True
        response.message = f'cleared {count} objects ({confirmed} confirmed)'
        self.get_logger().info(f'object map: {response.message}')
        return response

    def _drop(self, counter: str, message: str) -> None:
        with self._lock:
            setattr(self._counters, counter, getattr(self._counters, counter) + 1)
            self._last_error = message
        self.get_logger().warning(message, throttle_duration_sec=self._throttle())
        level = (DiagnosticStatus.WARN if counter in ('rejected', 'no_transform')
                 else DiagnosticStatus.ERROR)
        self._publish_diagnostics(level, message)

    def _on_parameters_set(self, parameters: List[Parameter]) -> None:
        for parameter in parameters:
            if parameter.name == params.LABELS:
                with self._lock:
                    self._pending_labels = list(parameter.value)
                    self._labels_ready.notify()

    def _build_labels(self, labels: List[str]) -> None:
        start = time.perf_counter()
        try:
            label_set = self._detector.encode_labels(labels)
            class_map = self._label_ids.assign(list(label_set.labels))
        except Exception as e:  # noqa: BLE001 - keep serving with the old label set
            self._label_error = f'{type(e).__name__}: {e}'
            self.get_logger().error(f'could not build label set, keeping the old one: '
                                    f'{self._label_error}')
            return
        # One reference assignment: a detection in flight keeps the set it already read.
        self._label_set = label_set
        self._class_map = class_map
        self._label_generation += 1
        self._label_error = ''
        self._publish_label_info()
        if self._object_map is not None:
            try:
                self._object_map.set_label_set(label_set)
            except Exception as e:  # noqa: BLE001 - the detector already uses the new set
                self.get_logger().error(f'object map could not re-score its objects: '
                                        f'{type(e).__name__}: {e}')
            else:
                if self._map_frame:
                    self._publish_objects(Header(stamp=self.get_clock().now().to_msg(),
                                                 frame_id=self._map_frame))
        self.get_logger().info(
            f'label set {self._label_generation} active: {len(label_set.labels)} labels '
            f'(built in {(time.perf_counter() - start) * 1e3:.0f} ms)')

    def _publish_label_info(self) -> None:
        config = self._settings.detector
        class_map = list(self._class_map)
        if config.unknown_threshold > 0:
            class_map.append((UNLABELED_ID, config.unknown_label))
        header = Header(stamp=self.get_clock().now().to_msg(), frame_id='')
        self._publish(self._label_info_pub, conversions.label_info_to_msg(
            header, class_map, config.score_threshold))

    def _publish_diagnostics(self, level: bytes, message: str, timings: Optional[dict] = None,
                             extra: Optional[dict] = None) -> None:
        with self._lock:
            values = dict(vars(self._counters))
            values['last_error'] = self._last_error
        values.update(extra or {})
        values['labels'] = len(self._label_set.labels)
        values['label_generation'] = self._label_generation
        values['label_error'] = self._label_error
        values['target_frame'] = self._target_frame
        if self._transforms is not None:
            values['tf_backend'] = self._transforms.backend
        self._publish(self._diagnostics_pub, conversions.diagnostics_to_msg(
            self.get_clock().now().to_msg(), level, message, values, timings))

    def _publish(self, publisher: Any, msg: Any) -> None:
        try:
            publisher.publish(msg)
        except RCLError as e:
            # Transport errors (e.g. with an exhausted SHM segment). After SIGINT/SIGTERM the
            # signal handler has shut the context down while a cloud or map job may still be
            # finishing: its publishes are refused, which is part of a normal stop (and a
            # warning could not reach /rosout any more either).
            if self._stopping or not self.context.ok():
                return
            self.get_logger().warning(f'publish on {publisher.topic_name} failed: {e}',
                                      throttle_duration_sec=self._throttle())

    def _throttle(self) -> float:
        return float(self.get_parameter('log_throttle_sec').value)


def _weights_text(model_config: Any) -> str:
    # Users must see which weights they run (the core's INFO line does not reach /rosout).
    from opendlign_core.model import resolve_weights_path

    path = resolve_weights_path(model_config)
    return f'weights {path}' if path is not None else 'RANDOM weights: labels mean nothing'


#: Longest wait of the node process's executor before it re-checks for a shutdown, seconds.
SPIN_TIMEOUT_S = 0.5

#: Python's GIL switch interval in the node process, seconds (CPython's default is 0.005).
GIL_SWITCH_INTERVAL_S = 0.0005


def configure_process() -> None:
    """
    Set the process-wide threading knobs of a node process (called by :func:`main` only).

    * One BLAS thread for NumPy/SciPy: their products here are small (N x 3 by 3 x 3, box
      fits, association matrices), and OpenBLAS worker threads spinning beside the inference
      threads and other processes made them up to 10x slower (measured on 2 cores). torch keeps
      its own intra-op threads.
    * GIL switch interval :data:`GIL_SWITCH_INTERVAL_S`: the object-map thread and the executor
      threads release the GIL around every NumPy/SciPy/DDS call and then waited up to the
      default 5 ms for the inference thread to hand it back (CPython's convoy effect): a map
      update of 12 ms CPU took up to 2.3 s, and clouds waited to be taken. On 35 train-split
      depth frames, lock-step (``opendlign bag eval --lockstep``), 5 ms -> 0.5 ms: end-to-end
      p50 260 -> 216-223 ms, p90 470-540 -> 285-309, p99 770-880 -> 360-370; longest map update
      570-680 -> 105-122 ms. 1 ms did half as well; 0.2 ms no better than 0.5 ms.
    """
    threadpool_limits(limits=1, user_api='blas')
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def main(args: Optional[List[str]] = None) -> int:
    """
    Run the node until shutdown (``opendlign-detector`` console script).

    :param args: Command-line arguments (``--ros-args ...``); ``None`` uses ``sys.argv``.
    :return: Exit status: 0 after a normal shutdown, 1 if the node could not start.
    """
    configure_process()
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
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        # spin() waits without a timeout; a shutdown whose wake-up the wait missed then left
        # the process running after SIGTERM (seen once in 5 stops by a user). An empty timer
        # wakes the executor every SPIN_TIMEOUT_S, and spin() re-checks the context after each
        # wake-up, so a stop always lands. (spin_once(timeout) in a loop did the same but
        # rebuilt the wait set on every call: node p50 about 20 ms slower.)
        node.create_timer(SPIN_TIMEOUT_S, lambda: None,
                          callback_group=MutuallyExclusiveCallbackGroup())
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
    if node.abandoned_threads:
        # A daemon thread still inside torch (a long label build) would abort the interpreter's
        # teardown ("terminate called without an active exception", exit -6): everything is
        # shut down already, so leave without it.
        rclpy.logging.get_logger(NODE_NAME).info(
            f'stopped; abandoned: {", ".join(node.abandoned_threads)}')
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == '__main__':
    sys.exit(main())
