"""
Node tests about frames: target_frame with /tf, up_axis, empty clouds and label_info.

Real rclpy in-process nodes over Fast DDS; a stub detector that boxes all the points (in the
core's +z-up frame, as the real detector reports boxes) stands in for recognition, because these
tests are about where the numbers land, not what they are called.
"""

import math
import threading
import time
from typing import NamedTuple

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import TransformStamped
import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import FakeDetection, FakeResult, unique_domain_id, wait_until
from rosbags.typesys import Stores, get_typestore
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray, LabelInfo
from visualization_msgs.msg import MarkerArray

from opendlign_core.boxes import Box3D
from opendlign_core.pointcloud import to_z_up
from opendlign_core.transforms import transform_points
from opendlign_ros import bag_io, conversions
from opendlign_ros.node import DetectorNode, LabelIds
from opendlign_ros.tf_listener import TF_STATIC_QOS

pytestmark = pytest.mark.ros

TFMESSAGE_HASH = 'RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087'
LABELINFO_HASH = 'RIHS01_3d37df4015cdf660cc851c51897f2acd957e1ca6205ba0a99aebffb9406b0783'
#: A 0.2 m cube of points (its corners and centre) around optical-frame (0.3, 0.8, 2.5).
CENTRE_OPTICAL = np.array([0.3, 0.8, 2.5])
CUBE = np.array([[x, y, z] for x in (-0.1, 0.1) for y in (-0.1, 0.1) for z in (-0.1, 0.1)]
                + [[0.0, 0.0, 0.0]])
#: REP-103 camera_link -> optical rotation, rpy (-pi/2, 0, -pi/2).
OPTICAL = (-0.5, 0.5, -0.5, 0.5)
YAW = 0.4


class LabelSet:
    def __init__(self, labels):
        self.labels = tuple(labels)


class BoxAllDetector:
    """Boxes every finite point it gets, like the core: in the ``up_axis``-up frame, yaw 0.4."""

    def __init__(self, up_axis='z'):
        self.up_axis = up_axis
        self.calls = []
        self.transforms = []

    def encode_labels(self, labels):
        return LabelSet(labels)

    def detect(self, points, label_set, colors=None, transform=None):
        # Like the core: ``transform`` moves the points into the detection frame first.
        self.transforms.append(transform)
        if transform is not None:
            points = transform_points(points, transform)
        self.calls.append(np.array(points))
        work = to_z_up(np.asarray(points, np.float64), self.up_axis).astype(np.float64)
        box = Box3D(work.mean(axis=0), np.ptp(work, axis=0), YAW)
        det = FakeDetection(label_set.labels[0], 0.5, box, ((label_set.labels[0], 0.5),))
        return FakeResult((det,), num_points=len(points), num_clusters=1)


class Rig:
    """The detector node plus a probe node (same context) that publishes TF and records."""

    def __init__(self, detector, overrides):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=unique_domain_id())
        self.detector = detector
        self.node = DetectorNode(detector=detector, context=self.context, parameter_overrides=[
            Parameter(name, value=value) for name, value in overrides.items()])
        self.probe = rclpy.create_node('probe', context=self.context)
        self.lock = threading.Lock()
        self.received = {'detections': [], 'markers': [], 'label_info': [], 'diagnostics': []}
        self.probe.create_subscription(DiagnosticArray, 'diagnostics',
                                       lambda m: self._keep('diagnostics', m), 50)
        self.probe.create_subscription(Detection3DArray, 'detections',
                                       lambda m: self._keep('detections', m), 10)
        self.probe.create_subscription(MarkerArray, 'markers', lambda m: self._keep('markers', m),
                                       10)
        self.tf_pub = self.probe.create_publisher(TFMessage, '/tf', 100)
        self.tf_static_pub = self.probe.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
        self.executor = MultiThreadedExecutor(num_threads=6, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _keep(self, key, msg):
        with self.lock:
            self.received[key].append(msg)

    def messages(self, key):
        with self.lock:
            return list(self.received[key])

    def subscribe_label_info(self):
        qos = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                         durability=DurabilityPolicy.TRANSIENT_LOCAL)
        return self.probe.create_subscription(LabelInfo, 'label_info',
                                              lambda m: self._keep('label_info', m), qos)

    def close(self):
        self.executor.shutdown()
        self.spinner.join(5)
        self.probe.destroy_node()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def make_rig():
    rigs = []

    def make(detector=None, **overrides):
        base = {'labels': ['chair', 'table'], 'object_map.enabled': False}
        rig = Rig(detector or BoxAllDetector(), {**base, **overrides})
        rigs.append(rig)
        return rig
    yield make
    for rig in rigs:
        rig.close()




def _transform(parent, child, sec, translation, rotation):
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id = parent, child
    ts.header.stamp = Time(sec=sec)
    t, q = ts.transform.translation, ts.transform.rotation
    t.x, t.y, t.z = (float(v) for v in translation)
    q.x, q.y, q.z, q.w = (float(v) for v in rotation)
    return ts


def _cloud(points, frame, sec=11, nanosec=0):
    return conversions.cloud_to_msg(np.asarray(points, np.float32),
                                    Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id=frame))


def _position(det):
    p = det.bbox.center.position
    return np.array([p.x, p.y, p.z])


def _rotation(pose):
    q = pose.orientation
    return Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()


def test_cloud_is_detected_in_target_frame_at_its_stamp(make_rig):
    rig = make_rig(target_frame='/map', transform_timeout=5.0)
    rig.tf_static_pub.publish(TFMessage(transforms=[
        _transform('camera_link', 'camera_optical', 0, (0, 0, 0), OPTICAL)]))
    # The cloud arrives before its TF: the node waits (inference thread only) and retries.
    rig.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, '/camera_optical', sec=11))
    time.sleep(0.3)
    assert rig.node.counters.processed == 0
    yaw_90 = (0, 0, math.sqrt(0.5), math.sqrt(0.5))
    rig.tf_pub.publish(TFMessage(transforms=[
        _transform('map', 'camera_link', 10, (1, 2, 1.5), (0, 0, 0, 1)),
        _transform('map', 'camera_link', 12, (3, 2, 1.5), yaw_90)]))
    out = wait_until(lambda: rig.messages('detections'))[0]
    assert out.header.frame_id == 'map' and out.header.stamp == Time(sec=11)
    # optical (0.3, 0.8, 2.5) -> camera_link (2.5, -0.3, -0.8); at 11 s map <- camera_link is
    # halfway: translation (2, 2, 1.5), yaw 45 deg: x = (2.5 + 0.3) / sqrt 2, y = 2.2 / sqrt 2.
    expected = (2 + 2.8 * math.sqrt(0.5), 2 + 2.2 * math.sqrt(0.5), 1.5 - 0.8)
    np.testing.assert_allclose(_position(out.detections[0]), expected, atol=1e-5)
    assert out.detections[0].header.frame_id == 'map'
    # The detector got the optical-frame cloud with the map <- optical transform at 11 s.
    assert rig.detector.transforms[0].shape == (4, 4)
    np.testing.assert_allclose(rig.detector.calls[0].mean(axis=0), expected, atol=1e-5)
    # up_axis z: the box orientation is the detector's yaw about map +z.
    np.testing.assert_allclose(_rotation(out.detections[0].bbox.center),
                               Rotation.from_euler('z', YAW).as_matrix(), atol=1e-9)
    markers = wait_until(lambda: rig.messages('markers'))[0]
    assert all(m.header.frame_id == 'map' for m in markers.markers)
    counters = rig.node.counters
    assert (counters.processed, counters.no_transform) == (1, 0)


def test_cloud_without_transform_is_dropped_and_counted(make_rig):
    rig = make_rig(target_frame='map', transform_timeout=0.05)
    rig.tf_static_pub.publish(TFMessage(transforms=[
        _transform('camera_link', 'camera_optical', 0, (0, 0, 0), OPTICAL)]))
    rig.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, 'camera_optical'))
    wait_until(lambda: rig.node.counters.no_transform == 1)
    assert rig.node._last_error.startswith(
        'cloud dropped: no transform from [camera_optical] to [map] at 11.000000000')
    # A transform that exists but not at the cloud's stamp (extrapolation) is refused too.
    rig.tf_pub.publish(TFMessage(transforms=[
        _transform('map', 'camera_link', 20, (0, 0, 0), (0, 0, 0, 1)),
        _transform('map', 'camera_link', 21, (0, 0, 0), (0, 0, 0, 1))]))
    wait_until(lambda: rig.node._transforms.buffer.can_transform('map', 'camera_optical', 0))
    rig.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, 'camera_optical', sec=11))
    wait_until(lambda: rig.node.counters.no_transform == 2)
    assert 'extrapolation into the past' in rig.node._last_error
    time.sleep(0.2)
    assert rig.messages('detections') == [] and rig.detector.calls == []
    counters = rig.node.counters
    assert (counters.processed, counters.received, counters.rejected) == (0, 2, 0)


def test_up_axis_boxes_are_published_in_the_header_frame(make_rig):
    rig = make_rig(detector=BoxAllDetector('-y'), up_axis='-y')
    rig.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, '/camera_optical'))
    out = wait_until(lambda: rig.messages('detections'))[0]
    assert out.header.frame_id == 'camera_optical'   # the leading '/' is stripped
    det = out.detections[0]
    # Before the fix this was (0.30, 2.50, -0.80): the box stayed in the rotated z-up frame.
    np.testing.assert_allclose(_position(det), CENTRE_OPTICAL, atol=1e-6)
    # -y up maps (x, y, z) to (x, z, -y), so back in the optical frame the box's z axis (up) is
    # optical -y and its x axis, (cos 0.4, sin 0.4, 0) in z-up, is (cos 0.4, 0, sin 0.4).
    rotation = _rotation(det.bbox.center)
    np.testing.assert_allclose(rotation[:, 2], (0, -1, 0), atol=1e-9)
    np.testing.assert_allclose(rotation[:, 0], (math.cos(YAW), 0, math.sin(YAW)), atol=1e-9)
    np.testing.assert_allclose(_rotation(det.results[0].pose.pose), rotation, atol=1e-12)
    # The 0.2 m box keeps its size; its label floats 0.1 + 0.15 m above it, i.e. towards -y.
    np.testing.assert_allclose((det.bbox.size.x, det.bbox.size.y, det.bbox.size.z),
                               (0.2, 0.2, 0.2), atol=1e-6)
    markers = wait_until(lambda: rig.messages('markers'))[0].markers
    cube = next(m for m in markers if m.ns == 'boxes')
    text = next(m for m in markers if m.ns == 'labels')
    assert cube.header.frame_id == text.header.frame_id == 'camera_optical'
    np.testing.assert_allclose(_rotation(cube.pose), rotation, atol=1e-12)
    p = text.pose.position
    np.testing.assert_allclose((p.x, p.y, p.z), (0.3, 0.8 - 0.25, 2.5), atol=1e-6)


def _empty_cloud(width, height, frame='camera_optical'):
    msg = PointCloud2(header=Header(stamp=Time(sec=7, nanosec=5), frame_id=frame),
                      width=width, height=height, point_step=12, row_step=12 * width,
                      fields=[PointField(name=n, offset=4 * i, datatype=7, count=1)
                              for i, n in enumerate('xyz')])
    msg.data = bytes(12 * width * height)
    return msg


def test_empty_and_all_nan_clouds_give_empty_detection_arrays(make_rig):
    rig = make_rig(target_frame='map', transform_timeout=0.05)
    nan_cloud = conversions.cloud_to_msg(np.full((6, 3), np.nan, np.float32),
                                         Header(stamp=Time(sec=7, nanosec=5),
                                                frame_id='camera_optical'))
    nan_cloud.height, nan_cloud.width, nan_cloud.row_step = 2, 3, 36   # organised 3 x 2
    for count, msg in enumerate((_empty_cloud(0, 1), _empty_cloud(5, 0), nan_cloud), start=1):
        rig.node._on_cloud(msg)
        wait_until(lambda: len(rig.messages('detections')) == count)
    for out in rig.messages('detections'):
        # No transform is needed for nothing: the frame is still target_frame.
        assert out.header.frame_id == 'map' and out.header.stamp == Time(sec=7, nanosec=5)
        assert out.detections == []
    counters = rig.node.counters
    assert (counters.processed, counters.empty, counters.rejected, counters.no_transform,
            counters.failed) == (3, 3, 0, 0, 0)
    assert rig.detector.calls == [] and rig.node._last_error == ''
    markers = wait_until(lambda: len(rig.messages('markers')) == 3 and rig.messages('markers'))
    assert [len(m.markers) for m in markers] == [1, 1, 1]


def test_label_info_is_latched_and_republished_with_append_only_ids(make_rig):
    rig = make_rig(score_threshold=0.25)
    rig.subscribe_label_info()
    first = wait_until(lambda: rig.messages('label_info'))[0]
    assert [(c.class_id, c.class_name) for c in first.class_map] == [(0, 'chair'), (1, 'table')]
    assert first.threshold == pytest.approx(0.25)
    assert rig.node.set_parameters([Parameter('labels', value=['table', 'mug'])])[0].successful
    second = wait_until(
        lambda: len(rig.messages('label_info')) == 2 and rig.messages('label_info'))[1]
    assert [(c.class_id, c.class_name) for c in second.class_map] == [(1, 'table'), (2, 'mug')]
    stamp = (second.header.stamp.sec, second.header.stamp.nanosec)
    assert stamp >= (first.header.stamp.sec, first.header.stamp.nanosec)
    assert rig.node.set_parameters([Parameter('labels', value=['chair', 'lamp'])])[0].successful
    wait_until(lambda: rig.node.labels == ('chair', 'lamp'))
    # A subscriber joining now gets only the latest class map (depth 1).
    late = []
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
    rig.probe.create_subscription(LabelInfo, 'label_info', late.append, qos)
    wait_until(lambda: late)
    time.sleep(0.2)
    assert [[(c.class_id, c.class_name) for c in m.class_map] for m in late] == [
        [(0, 'chair'), (3, 'lamp')]]


def test_unknown_label_is_the_unlabeled_class(make_rig):
    rig = make_rig(unknown_threshold=0.3, unknown_label='unknown')
    rig.subscribe_label_info()
    info = wait_until(lambda: rig.messages('label_info'))[0]
    assert [(c.class_id, c.class_name) for c in info.class_map] == [
        (0, 'chair'), (1, 'table'), (65535, 'unknown')]


def test_interface_type_hashes_match_upstream(make_rig):
    rig = make_rig()
    infos = rig.probe.get_publishers_info_by_topic('/label_info')
    assert [str(i.topic_type_hash) for i in infos] == [LABELINFO_HASH]
    infos = rig.probe.get_publishers_info_by_topic('/tf')
    assert [str(i.topic_type_hash) for i in infos] == [TFMESSAGE_HASH]
    # The same from the .msg files offline: ours (vision_msgs) and upstream's (rosbags' Kilted
    # store carries tf2_msgs).
    assert bag_io.typestore().hash_rihs01('vision_msgs/msg/LabelInfo') == LABELINFO_HASH
    kilted = get_typestore(Stores.ROS2_KILTED)
    assert kilted.hash_rihs01('tf2_msgs/msg/TFMessage') == TFMESSAGE_HASH


class WarningDetector(BoxAllDetector):
    """Reports what the segmentation reports (contract F) along with its detection."""

    def detect(self, points, label_set, colors=None, transform=None):
        result = super().detect(points, label_set, colors, transform)
        return WarnedResult(result.detections, num_points=result.num_points,
                            warnings=('no floor plane found in a room-sized cloud (6.1 x 5.2 m)',),
                            dropped_clusters={'too_small': 12, 'too_large': 1})


class WarnedResult(NamedTuple):
    detections: tuple
    timings_ms: dict = {'segment': 1.0}
    num_points: int = 0
    num_clusters: int = 1
    warnings: tuple = ()
    dropped_clusters: dict = {}


def test_segmentation_warnings_and_dropped_clusters_reach_diagnostics(make_rig):
    rig = make_rig(detector=WarningDetector())
    rig.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, 'camera_optical'))
    diag = wait_until(lambda: rig.messages('diagnostics'))[-1]
    status = diag.status[0]
    assert status.level == DiagnosticStatus.WARN
    assert 'no floor plane found' in status.message
    values = dict(conversions.diagnostic_values(diag))
    assert values['warnings'] == 'no floor plane found in a room-sized cloud (6.1 x 5.2 m)'
    assert (values['dropped_too_small'], values['dropped_too_large']) == ('12', '1')
    assert rig.node.counters.processed == 1
    # Without warnings the level is OK and the warnings value is empty.
    rig2 = make_rig()
    rig2.node._on_cloud(_cloud(CENTRE_OPTICAL + CUBE, 'camera_optical'))
    diag = wait_until(lambda: rig2.messages('diagnostics'))[-1]
    assert diag.status[0].level == DiagnosticStatus.OK
    assert dict(conversions.diagnostic_values(diag))['warnings'] == ''


def test_label_ids_are_append_only_and_bounded():
    ids = LabelIds()
    assert ids.assign(['chair', 'table']) == [(0, 'chair'), (1, 'table')]
    assert ids.assign(['table', 'mug', 'chair']) == [(1, 'table'), (2, 'mug'), (0, 'chair')]
    many = [f'l{i}' for i in range(65535 - 3)]
    assert ids.assign(many)[-1] == (65534, many[-1])
    with pytest.raises(ValueError, match='class ids exhausted'):
        ids.assign(['one more'])
    assert ids.assign(['mug']) == [(2, 'mug')]
