"""
Message <-> array plumbing for the detector node.

Only attribute copying lives here: the PointCloud2 byte decoding is
:func:`opendlign_core.pointcloud2.decode_xyz` / ``decode_xyz_rgb``, the frame algebra is
:mod:`opendlign_core.transforms`, and every number published comes from the core's
:class:`DetectionResult` or :class:`~opendlign_core.object_map.MapObject`.

Frames: the core's boxes are yaw boxes in its internal +z-up frame (the output frame rotated by
``DetectorConfig.up_axis``). The converters take ``frame_from_zup``, the (4, 4) transform from
that internal frame back to the output header's frame, and publish every centre and full
orientation in the header's frame; ``None`` means the two frames are the same (``up_axis`` z).
"""

import array
import math
from typing import Any, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

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
    LabelInfo,
    ObjectHypothesis,
    ObjectHypothesisWithPose,
    VisionClass,
)
from visualization_msgs.msg import Marker, MarkerArray

from opendlign_core.boxes import Box3D
from opendlign_core.pointcloud2 import FieldSpec, decode_xyz, decode_xyz_rgb, encode_xyz
from opendlign_core.transforms import pose_from_matrix, transform_points, yaw_box_matrix

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

    An empty cloud (``width * height == 0``) or one without a finite point is valid and gives
    no points.

    :param msg: The cloud.
    :param max_points: Reject clouds with more than this many points (``None``: no cap).
    :return: (N, 3) coordinates in ``msg.header.frame_id``, metres, N >= 0: float32, or float64
        when the cloud's coordinates are FLOAT64.
    :raises ValueError: If the message's layout is inconsistent (see
        :func:`opendlign_core.pointcloud2.decode_xyz`).
    """
    return decode_xyz(msg.data, fields_from_msg(msg.fields), msg.point_step, msg.width,
                      msg.height, msg.row_step, msg.is_bigendian, skip_nans=True,
                      max_points=max_points)


class ColoredCloud(NamedTuple):
    """A decoded cloud: finite points, their colours if usable, and why colours were not."""

    #: (N, 3) coordinates in the message's frame, metres, N >= 0 (float32, or float64 for
    #: FLOAT64 clouds).
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
    :return: Points (none for an empty or all non-finite cloud), colours (see
        :func:`opendlign_core.pointcloud2.decode_xyz_rgb` for the layouts read) and the colour
        problem.
    :raises ValueError: If the message's layout is inconsistent.
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


def box_pose(box: Any, frame_from_zup: Optional[np.ndarray] = None) -> Pose:
    """
    Return a core ``Box3D``'s centre pose in the output frame.

    :param box: Box with ``center`` (3,) metres and ``yaw`` radians about +z, in the core's
        +z-up frame.
    :param frame_from_zup: (4, 4) transform from that frame to the output frame; ``None`` if
        they are the same (the orientation is then a pure yaw).
    :return: The pose: centre and full orientation in the output frame.
    """
    if frame_from_zup is None:
        cx, cy, cz = (float(v) for v in box.center)
        return Pose(position=Point(x=cx, y=cy, z=cz),
                    orientation=yaw_to_quaternion(float(box.yaw)))
    return _pose(frame_from_zup @ yaw_box_matrix(box.center, float(box.yaw)))


def _pose(matrix: np.ndarray) -> Pose:
    (px, py, pz), (qx, qy, qz, qw) = pose_from_matrix(matrix)
    return Pose(position=Point(x=float(px), y=float(py), z=float(pz)),
                orientation=Quaternion(x=float(qx), y=float(qy), z=float(qz), w=float(qw)))


def _detection3d(header: Header, hypotheses: Sequence[Tuple[str, float]], pose: Pose,
                 size: Sequence[float], ident: str) -> Detection3D:
    sx, sy, sz = (float(v) for v in size)
    return Detection3D(
        header=header,
        results=[ObjectHypothesisWithPose(
            hypothesis=ObjectHypothesis(class_id=label, score=score),
            pose=PoseWithCovariance(pose=pose)) for label, score in hypotheses],
        bbox=BoundingBox3D(center=pose, size=Vector3(x=sx, y=sy, z=sz)),
        id=ident)


def _hypotheses(label: str, score: float, top_k: Iterable[Tuple[str, float]]
                ) -> List[Tuple[str, float]]:
    out = [(label, float(score))]
    out += [(str(k), float(v)) for k, v in top_k if k != label]
    return out


def detections_to_msg(result: Any, header: Header,
                      frame_from_zup: Optional[np.ndarray] = None) -> Detection3DArray:
    """
    Convert a core ``DetectionResult`` into ``vision_msgs/Detection3DArray``.

    Each detection's ``results`` start with its label (``class_id``) and score, followed by the
    other top-k labels, best first; each hypothesis' pose is the box centre. ``id`` is the
    detection's index in this message.

    :param result: ``DetectionResult`` with ``detections`` (label, score, box, top_k).
    :param header: Output header: the cloud's stamp and the frame the boxes are published in.
    :param frame_from_zup: (4, 4) transform from the core's +z-up frame to ``header.frame_id``
        (``None``: the same frame).
    :return: The message.
    """
    out = Detection3DArray(header=header)
    for index, det in enumerate(result.detections):
        out.detections.append(_detection3d(
            header, _hypotheses(det.label, det.score, det.top_k),
            box_pose(det.box, frame_from_zup), det.box.size, str(index)))
    return out


def objects_to_msg(objects: Sequence[Any], header: Header,
                   frame_from_zup: Optional[np.ndarray] = None) -> Detection3DArray:
    """
    Convert object-map entries into ``vision_msgs/Detection3DArray``.

    ``Detection3D.id`` is the object's persistent id; ``results`` are its fused label scores
    (its label first, then the rest of ``top_k``, best first).

    :param objects: :class:`~opendlign_core.object_map.MapObject` entries (id, box, label,
        score, top_k).
    :param header: Output header: the map frame and the stamp of the cloud that updated the map.
    :param frame_from_zup: (4, 4) transform from the map's +z-up frame to ``header.frame_id``
        (``None``: the same frame).
    :return: The message.
    """
    out = Detection3DArray(header=header)
    for obj in objects:
        out.detections.append(_detection3d(
            header, _hypotheses(obj.label, obj.score, obj.top_k),
            box_pose(obj.box, frame_from_zup), obj.box.size, str(obj.id)))
    return out


def label_info_to_msg(header: Header, class_map: Iterable[Tuple[int, str]],
                      threshold: float) -> LabelInfo:
    """
    Build ``vision_msgs/LabelInfo``.

    :param header: Header; its stamp versions the class map.
    :param class_map: ``(class_id, class_name)`` pairs, ids in 0..65535.
    :param threshold: Score threshold of the detector, in [0, 1].
    :return: The message.
    """
    return LabelInfo(header=header, threshold=float(threshold),
                     class_map=[VisionClass(class_id=int(i), class_name=str(n))
                                for i, n in class_map])


def box_from_msg(bbox: BoundingBox3D) -> Box3D:
    """
    Convert a ``vision_msgs/BoundingBox3D`` back into a core box.

    Only the rotation about +z is kept: exact for boxes published in a +z-up frame (our boxes
    have no roll or pitch there); boxes of a cloud published with another ``up_axis`` carry a
    full orientation that this does not recover.

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
                   text_height: float = 0.15,
                   frame_from_zup: Optional[np.ndarray] = None) -> MarkerArray:
    """
    Convert a core ``DetectionResult`` into RViz markers.

    The first marker is ``DELETEALL`` so boxes from the previous cloud disappear; then one
    translucent ``CUBE`` (namespace ``boxes``) and one ``TEXT_VIEW_FACING`` label with its score
    (namespace ``labels``, just above the box) per detection, with the detection's index as id.

    :param result: ``DetectionResult``.
    :param header: Output header (see :func:`detections_to_msg`).
    :param lifetime_s: Marker lifetime, seconds; 0 keeps them until the next DELETEALL.
    :param text_height: Height of the label text, metres.
    :param frame_from_zup: (4, 4) transform from the core's +z-up frame to ``header.frame_id``
        (``None``: the same frame).
    :return: The message.
    """
    items = [(index, det.box, det.label, f'{det.label} {det.score:.2f}')
             for index, det in enumerate(result.detections)]
    return _box_markers(items, header, lifetime_s, text_height, frame_from_zup)


def object_markers_to_msg(objects: Sequence[Any], header: Header, lifetime_s: float = 0.0,
                          text_height: float = 0.15,
                          frame_from_zup: Optional[np.ndarray] = None) -> MarkerArray:
    """
    Convert object-map entries into RViz markers (as :func:`markers_to_msg`).

    The text shows label, score and the persistent id; marker ids are the objects' positions in
    ``objects``.

    :param objects: :class:`~opendlign_core.object_map.MapObject` entries.
    :param header: Output header (the map frame).
    :param lifetime_s: Marker lifetime, seconds; 0 keeps them until the next DELETEALL.
    :param text_height: Height of the label text, metres.
    :param frame_from_zup: (4, 4) transform from the map's +z-up frame to ``header.frame_id``.
    :return: The message.
    """
    items = [(index, obj.box, obj.label, f'{obj.label} {obj.score:.2f} [{obj.id}]')
             for index, obj in enumerate(objects)]
    return _box_markers(items, header, lifetime_s, text_height, frame_from_zup)


def delete_all_markers(header: Header) -> MarkerArray:
    """
    Return a marker array that only removes the previous markers (for an empty cloud).

    :param header: Output header.
    :return: One ``DELETEALL`` marker.
    """
    return MarkerArray(markers=[Marker(header=header, action=Marker.DELETEALL)])


def _box_markers(items: Sequence[Tuple[int, Any, str, str]], header: Header, lifetime_s: float,
                 text_height: float, frame_from_zup: Optional[np.ndarray]) -> MarkerArray:
    lifetime = Duration(sec=int(lifetime_s), nanosec=int(round((lifetime_s % 1.0) * 1e9)))
    markers = [Marker(header=header, action=Marker.DELETEALL)]
    for index, box, label, text in items:
        pose = box_pose(box, frame_from_zup)
        sx, sy, sz = (float(v) for v in box.size)
        markers.append(Marker(
            header=header, ns='boxes', id=index, type=Marker.CUBE, action=Marker.ADD, pose=pose,
            scale=Vector3(x=max(sx, 1e-3), y=max(sy, 1e-3), z=max(sz, 1e-3)),
            color=label_color(label), lifetime=lifetime))
        # Just above the box's top face, "above" being +z of the core's gravity-aligned frame.
        above = np.array([[0.0, 0.0, sz / 2.0 + text_height]])
        to_frame = yaw_box_matrix(box.center, float(box.yaw))
        if frame_from_zup is not None:
            to_frame = frame_from_zup @ to_frame
        tx, ty, tz = (float(v) for v in transform_points(above, to_frame)[0])
        text_pose = Pose(position=Point(x=tx, y=ty, z=tz), orientation=Quaternion(w=1.0))
        markers.append(Marker(
            header=header, ns='labels', id=index, type=Marker.TEXT_VIEW_FACING,
            action=Marker.ADD, pose=text_pose, scale=Vector3(z=float(text_height)),
            color=ColorRGBA(r=1.0, g=1.0, b=1.0, a=1.0), text=text, lifetime=lifetime))
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
