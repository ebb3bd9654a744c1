"""Shell unit tests: message conversions, in-process with the real message classes."""

import array
import math

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticStatus
import numpy as np
import pytest
from ros_harness import FakeDetection, FakeResult
from std_msgs.msg import Header
from visualization_msgs.msg import Marker

from opendlign_core.boxes import Box3D
from opendlign_ros import conversions

pytestmark = pytest.mark.ros

HEADER = Header(stamp=Time(sec=7, nanosec=11), frame_id='lidar')


def _result():
    return FakeResult(detections=(
        FakeDetection('chair', 0.75, Box3D((1.0, 2.0, 0.5), (0.4, 0.5, 1.0), math.pi / 2),
                      (('chair', 0.75), ('table', 0.2), ('lamp', 0.05))),
        FakeDetection('unknown', 0.3, Box3D((-1.0, 0.0, 0.25), (1.0, 2.0, 0.5), 0.0),
                      (('sofa', 0.3),)),
    ))


def test_cloud_round_trip_through_message():
    points = np.random.default_rng(0).normal(size=(100, 3)).astype(np.float32)
    msg = conversions.cloud_to_msg(points, HEADER)
    assert isinstance(msg.data, array.array) and len(msg.data) == 1200
    assert (msg.height, msg.width, msg.point_step, msg.row_step) == (1, 100, 12, 1200)
    assert msg.is_dense and msg.header.frame_id == 'lidar'
    np.testing.assert_array_equal(conversions.cloud_from_msg(msg), points)


def test_cloud_from_msg_all_nan_is_empty_and_over_cap_is_rejected():
    msg = conversions.cloud_to_msg(np.full((4, 3), np.nan, np.float32), HEADER)
    assert not msg.is_dense
    assert conversions.cloud_from_msg(msg).shape == (0, 3)
    points, colors, problem = conversions.cloud_with_colors_from_msg(msg)
    assert points.shape == (0, 3) and colors is None and problem == ''
    msg = conversions.cloud_to_msg(np.zeros((4, 3), np.float32), HEADER)
    with pytest.raises(ValueError, match='over the cap max_points=3'):
        conversions.cloud_from_msg(msg, max_points=3)


def test_coloured_cloud_round_trip_and_colour_problems():
    rng = np.random.default_rng(1)
    points = rng.normal(size=(50, 3)).astype(np.float32)
    points[7] = np.nan
    rgb = rng.integers(0, 256, (50, 3)).astype(np.uint8)
    msg = conversions.cloud_to_msg(points, HEADER, rgb)
    assert msg.point_step == 16 and [f.name for f in msg.fields] == ['x', 'y', 'z', 'rgb']
    got = conversions.cloud_with_colors_from_msg(msg)
    keep = np.arange(50) != 7
    np.testing.assert_array_equal(got.points, points[keep])
    np.testing.assert_array_equal(got.colors, rgb[keep])
    assert got.color_problem == ''
    plain = conversions.cloud_with_colors_from_msg(conversions.cloud_to_msg(points, HEADER))
    assert plain.colors is None and plain.color_problem == '' and len(plain.points) == 49
    msg.row_step = 1  # broken geometry rejects the cloud, colours or not
    with pytest.raises(ValueError, match='row_step'):
        conversions.cloud_with_colors_from_msg(msg)
    odd = conversions.cloud_to_msg(points, HEADER, rgb)
    odd.fields[3].datatype = 1  # INT8
    got = conversions.cloud_with_colors_from_msg(odd)
    assert got.colors is None and "'rgb'" in got.color_problem
    np.testing.assert_array_equal(got.points, points[keep])


def test_yaw_to_quaternion():
    q = conversions.yaw_to_quaternion(math.pi / 2)
    assert (q.x, q.y) == (0.0, 0.0)
    assert q.z == pytest.approx(math.sqrt(0.5)) and q.w == pytest.approx(math.sqrt(0.5))
    assert conversions.yaw_to_quaternion(0.0).w == 1.0


def test_detections_to_msg():
    msg = conversions.detections_to_msg(_result(), HEADER)
    assert msg.header == HEADER and len(msg.detections) == 2
    first, second = msg.detections
    assert first.header == HEADER and first.id == '0'
    assert [(r.hypothesis.class_id, r.hypothesis.score) for r in first.results] == [
        ('chair', 0.75), ('table', 0.2), ('lamp', 0.05)]
    assert (first.bbox.center.position.x, first.bbox.center.position.y,
            first.bbox.center.position.z) == (1.0, 2.0, 0.5)
    assert (first.bbox.size.x, first.bbox.size.y, first.bbox.size.z) == (0.4, 0.5, 1.0)
    assert first.bbox.center.orientation.z == pytest.approx(math.sqrt(0.5))
    assert first.results[0].pose.pose == first.bbox.center
    # The reported label leads even when it is not among the top-k class names.
    assert [r.hypothesis.class_id for r in second.results] == ['unknown', 'sofa']


def test_markers_to_msg():
    msg = conversions.markers_to_msg(_result(), HEADER, lifetime_s=1.5)
    kinds = [(m.ns, m.id, m.type, m.action) for m in msg.markers]
    assert kinds[0][3] == Marker.DELETEALL
    assert kinds[1:] == [('boxes', 0, Marker.CUBE, Marker.ADD),
                         ('labels', 0, Marker.TEXT_VIEW_FACING, Marker.ADD),
                         ('boxes', 1, Marker.CUBE, Marker.ADD),
                         ('labels', 1, Marker.TEXT_VIEW_FACING, Marker.ADD)]
    box, text = msg.markers[1], msg.markers[2]
    assert (box.scale.x, box.scale.y, box.scale.z) == (0.4, 0.5, 1.0)
    assert box.lifetime.sec == 1 and box.lifetime.nanosec == 500_000_000
    assert text.text == 'chair 0.75' and text.pose.position.z == pytest.approx(0.5 + 0.5 + 0.15)
    assert box.color == conversions.label_color('chair', 0.5)
    assert all(m.header == HEADER for m in msg.markers)


def test_diagnostics_to_msg():
    msg = conversions.diagnostics_to_msg(Time(sec=3), DiagnosticStatus.WARN, 'dropped',
                                         {'rejected': 2, 'processed': 5},
                                         {'decode': 0.25, 'segment': 12.0})
    assert msg.header.stamp.sec == 3 and msg.status[0].level == DiagnosticStatus.WARN
    assert conversions.diagnostic_values(msg) == [
        ('rejected', '2'), ('processed', '5'), ('decode_ms', '0.250'), ('segment_ms', '12.000')]
