"""
Message <-> array plumbing for the detector node.

Only attribute copying lives here: the PointCloud2 byte decoding is
:func:`opendlign_core.pointcloud2.decode_xyz` / ``decode_xyz_rgb``, and every number published
comes from the core's
:class:`DetectionResult`. Boxes are in the cloud's frame (REP-103, +z up, metres), so each output
message carries the input cloud's header.
"""

import array
import math
from typing import Any, Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple

from builtin_interfaces.msg import Duration, Time
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import Point, Pose, PoseWithCovariance, Quaternion, Vector3
import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import ColorRGBA, Header
from vision_msgs.msg import (
    BoundingBox3D,
    Detection3D,
    Detection3DArray,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
)
from visualization_msgs.msg import Marker, MarkerArray

from opendlign_core.boxes import Box3D
from opendlign_core.pointcloud2 import FieldSpec, decode_xyz, decode_xyz_rgb, encode_xyz

#: ``DiagnosticStatus.name`` of the detector's status.
DIAGNOSTIC_NAME = 'opendlign: detector'


def fields_from_msg(fields: Iterable[PointField]) -> Tuple[FieldSpec, ...]:
    """
    Copy ``sensor_msgs/PointField`` entries into core field specs.

    :param fields: The message's ``fields``.
    :return: One :class:`FieldSpec` per field, in message order.
    """
    return tuple(FieldSpec(f.name, f.offset, f.datatype, f.count) for f in fields)


def cloud_from_msg(msg: PointCloud2, max_points: Optional[int] = None) -> np.ndarray:
    """
    Decode a PointCloud2 into finite x, y, z coordinates.

    :param msg: The cloud.
    :param max_points: Reject clouds with more than this many points (``None``: no cap).
    :return: (N, 3) float32 coordinates in ``msg.header.frame_id``, metres, N >= 1.
    :raises ValueError: If the message's layout is inconsistent (see
        :func:`opendlign_core.pointcloud2.decode_xyz`) or no point is finite.
    """
    points = decode_xyz(msg.data, fields_from_msg(msg.fields), msg.point_step, msg.width,
                        msg.height, msg.row_step, msg.is_bigendian, skip_nans=True,
                        max_points=max_points)
    if len(points) == 0:
        raise ValueError(f'cloud has no finite points (width={msg.width}, height={msg.height})')
    return points


class ColoredCloud(NamedTuple):
    """A decoded cloud: finite points, their colours if usable, and why colours were not."""

    #: (N, 3) float32 coordinates in the message's frame, metres, N >= 1.
    points: np.ndarray
    #: (N, 3) uint8 RGB of the same rows, or None.
    colors: Optional[np.ndarray]
    #: Why the message's colour fields were ignored ('' when it has none or they were read).
    color_problem: str


def cloud_with_colors_from_msg(msg: PointCloud2, max_points: Optional[int] = None
                               ) -> ColoredCloud:
    """
    Decode a PointCloud2 into finite x, y, z coordinates and, when it has them, colours.

    Colour is optional: a cloud whose colour fields are unusable (e.g. an ``rgb`` field of a
    non-32-bit type) keeps its points, with ``colors`` None and the reason in
    ``color_problem``; only geometry problems reject the cloud.

    :param msg: The cloud.
    :param max_points: Reject clouds with more than this many points (``None``: no cap).
    :return: Points, colours (see :func:`opendlign_core.pointcloud2.decode_xyz_rgb` for the
        layouts read) and the colour problem.
    :raises ValueError: If the message's layout is inconsistent or no point is finite.
    """
    args = (msg.data, fields_from_msg(msg.fields), msg.point_step, msg.width, msg.height,
            msg.row_step, msg.is_bigendian)
    try:
        points, colors = decode_xyz_rgb(*args, skip_nans=True, max_points=max_points)
        problem = ''
    except ValueError as e:
        # The same checks without colour: raises again when the geometry itself is bad.
        points = decode_xyz(*args, skip_nans=True, max_points=max_points)
        colors, problem = None, str(e)
    if len(points) == 0:
        raise ValueError(f'cloud has no finite points (width={msg.width}, height={msg.height})')
    return ColoredCloud(points, colors, problem)


def cloud_to_msg(points: np.ndarray, header: Header,
                 colors: Optional[np.ndarray] = None) -> PointCloud2:
    """
    Build an unorganised float32 PointCloud2 (``height == 1``).

    :param points: (N, 3) coordinates, metres, in ``header.frame_id``.
    :param header: Header to copy.
    :param colors: Optional (N, 3) integer RGB, 0-255, written as a packed ``rgb`` field.
    :return: The message (x, y, z FLOAT32 at offsets 0, 4, 8, then ``rgb`` at 12 with colours,
        little-endian).
    """
    data, fields, point_step, row_step = encode_xyz(points, colors=colors)
    msg = PointCloud2()
    msg.header = header
    msg.height = 1
    msg.width = int(len(points))
    msg.fields = [PointField(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count)
                  for f in fields]
    msg.is_bigendian = False
    msg.point_step = point_step
    msg.row_step = row_step
    # array.array assignment is a buffer copy; a NumPy array would be copied element-wise.
    msg.data = array.array('B', data)
    msg.is_dense = bool(np.isfinite(points).all())
    return msg


def yaw_to_quaternion(yaw: float) -> Quaternion:
    """
    Return the rotation about +z by ``yaw`` radians.

    :param yaw: Counter-clockwise angle seen from above, radians.
    :return: Unit quaternion ``(0, 0, sin(yaw/2), cos(yaw/2))``.
    """
    return Quaternion(x=0.0, y=0.0, z=math.sin(yaw / 2.0), w=math.cos(yaw / 2.0))


def box_pose(box: Any) -> Pose:
    """
    Return a core ``Box3D``'s centre pose.

    :param box: Box with ``center`` (3,) metres and ``yaw`` radians about +z.
    :return: The pose.
    """
    cx, cy, cz = (float(v) for v in box.center)
    return Pose(position=Point(x=cx, y=cy, z=cz), orientation=yaw_to_quaternion(float(box.yaw)))


def detections_to_msg(result: Any, header: Header) -> Detection3DArray:
    """
    Convert a core ``DetectionResult`` into ``vision_msgs/Detection3DArray``.

    Each detection's ``results`` start with its label (``class_id``) and score, followed by the
    other top-k labels, best first; each hypothesis' pose is the box centre. ``id`` is the
    detection's index in this message.

    :param result: ``DetectionResult`` with ``detections`` (label, score, box, top_k).
    :param header: The input cloud's header (stamp and frame are copied).
    :return: The message.
    """
    out = Detection3DArray(header=header)
    for index, det in enumerate(result.detections):
        pose = box_pose(det.box)
        sx, sy, sz = (float(v) for v in det.box.size)
        hypotheses = [(det.label, float(det.score))]
        hypotheses += [(label, float(score)) for label, score in det.top_k if label != det.label]
        out.detections.append(Detection3D(
            header=header,
            results=[ObjectHypothesisWithPose(
                hypothesis=ObjectHypothesis(class_id=label, score=score),
                pose=PoseWithCovariance(pose=pose)) for label, score in hypotheses],
            bbox=BoundingBox3D(center=pose, size=Vector3(x=sx, y=sy, z=sz)),
            id=str(index)))
    return out


def box_from_msg(bbox: BoundingBox3D) -> Box3D:
    """
    Convert a ``vision_msgs/BoundingBox3D`` back into a core box.

    Only the rotation about +z is kept (our boxes have no roll or pitch).

    :param bbox: The message.
    :return: Box with centre and size in metres and ``yaw = 2 atan2(q.z, q.w)``.
    """
    p, q, s = bbox.center.position, bbox.center.orientation, bbox.size
    return Box3D((p.x, p.y, p.z), (s.x, s.y, s.z), 2.0 * math.atan2(q.z, q.w))


def boxes_to_msg(boxes: Sequence[Tuple[str, Box3D]], header: Header) -> Detection3DArray:
    """
    Convert labelled boxes (e.g. ground truth) into a ``Detection3DArray`` with score 1.

    :param boxes: ``(label, box)`` pairs.
    :param header: Header to copy.
    :return: The message.
    """
    dets = tuple(_Labelled(label, 1.0, box, ()) for label, box in boxes)
    return detections_to_msg(_Result(dets), header)


class _Labelled(NamedTuple):
    label: str
    score: float
    box: Box3D
    top_k: tuple


class _Result(NamedTuple):
    detections: tuple


def label_color(label: str, alpha: float = 0.5) -> ColorRGBA:
    """
    Return a stable colour for a label (same label, same colour, across runs).

    :param label: Label text.
    :param alpha: Opacity in [0, 1].
    :return: RGBA in [0, 1].
    """
    # A string hash that does not depend on PYTHONHASHSEED.
    h = sum((i + 1) * ord(c) for i, c in enumerate(label)) % 360 / 360.0
    r, g, b = (0.5 + 0.5 * math.cos(2 * math.pi * (h + k / 3.0)) for k in range(3))
    return ColorRGBA(r=r, g=g, b=b, a=float(alpha))


def markers_to_msg(result: Any, header: Header, lifetime_s: float = 0.0,
                   text_height: float = 0.15) -> MarkerArray:
    """
    Convert a core ``DetectionResult`` into RViz markers.

    The first marker is ``DELETEALL`` so boxes from the previous cloud disappear; then one
    translucent ``CUBE`` (namespace ``boxes``) and one ``TEXT_VIEW_FACING`` label with its score
    (namespace ``labels``, just above the box) per detection, with the detection's index as id.

    :param result: ``DetectionResult``.
    :param header: The input cloud's header.
    :param lifetime_s: Marker lifetime, seconds; 0 keeps them until the next DELETEALL.
    :param text_height: Height of the label text, metres.
    :return: The message.
    """
    lifetime = Duration(sec=int(lifetime_s), nanosec=int(round((lifetime_s % 1.0) * 1e9)))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for index, det in enumerate(result.detections):
        pose = box_pose(det.box)
        sx, sy, sz = (float(v) for v in det.box.size)
        markers.append(Marker(
            header=header, ns='boxes', id=index, type=Marker.CUBE, action=Marker.ADD, pose=pose,
            scale=Vector3(x=max(sx, 1e-3), y=max(sy, 1e-3), z=max(sz, 1e-3)),
            color=label_color(det.label), lifetime=lifetime))
        text_pose = Pose(position=Point(x=pose.position.x, y=pose.position.y,
                                        z=pose.position.z + sz / 2.0 + text_height),
                         orientation=Quaternion(w=1.0))
        markers.append(Marker(
            header=header, ns='labels', id=index, type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD, pose=text_pose, scale=Vector3(z=float(text_height)),
            color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0), text=f'{det.label} {det.score:.2f}',
            lifetime=lifetime))
    return MarkerArray(markers=markers)


def diagnostics_to_msg(stamp: Time, level: bytes, message: str,
                       values: Mapping[str, Any],
                       timings_ms: Optional[Mapping[str, float]] = None,
                       hardware_id: str = 'opendlign') -> DiagnosticArray:
    """
    Build the node's ``diagnostic_msgs/DiagnosticArray``.

    :param stamp: Publication time.
    :param level: ``DiagnosticStatus.OK``, ``WARN`` or ``ERROR`` (one byte).
    :param message: One-line summary.
    :param values: Counters and state, reported as ``key: str(value)``.
    :param timings_ms: Per-stage latency of the last cloud, milliseconds; reported as
        ``<stage>_ms`` with three decimals.
    :param hardware_id: ``DiagnosticStatus.hardware_id``.
    :return: The message with one status named :data:`DIAGNOSTIC_NAME`.
    """
    pairs = [KeyValue(key=str(k), value=str(v)) for k, v in values.items()]
    for stage, ms in (timings_ms or {}).items():
        pairs.append(KeyValue(key=f'{stage}_ms', value=f'{float(ms):.3f}'))
    status = DiagnosticStatus(level=level, name=DIAGNOSTIC_NAME, message=message,
                              hardware_id=hardware_id, values=pairs)
    return DiagnosticArray(header=Header(stamp=stamp), status=[status])


def diagnostic_values(msg: DiagnosticArray) -> Sequence[Tuple[str, str]]:
    """
    Return the ``(key, value)`` pairs of the detector status in a diagnostics message.

    :param msg: A message published by the node.
    :return: The pairs, empty if the status is absent.
    """
    for status in msg.status:
        if status.name == DIAGNOSTIC_NAME:
            return [(kv.key, kv.value) for kv in status.values]
    return []
