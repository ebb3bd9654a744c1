"""
3D boxes in a gravity-aligned frame: fitting, IoU and non-maximum suppression.

Frame convention: metres, +z up. A :class:`Box3D` is a cuboid with centre ``center``, edge lengths
``size`` along its own axes, and a rotation ``yaw`` (radians, counter-clockwise seen from above)
about +z. ``size[0]`` is the extent along the box's rotated x axis ``(cos yaw, sin yaw, 0)``.
Fitted boxes carry ``yaw`` in ``[-pi/4, pi/4)``; a box with yaw ``y`` and size ``(a, b, c)`` is the
same cuboid as yaw ``y + pi/2`` with size ``(b, a, c)``.
"""

from dataclasses import dataclass
import math
from typing import Sequence

import numpy as np
from scipy.spatial import ConvexHull, QhullError

from opendlign_core.pointcloud import bounds


@dataclass(frozen=True)
class Box3D:
    """
    A yaw-oriented 3D box.

    ``center`` is (3,) float64 metres, ``size`` (3,) float64 metres (all >= 0), ``yaw`` radians.
    """

    center: np.ndarray
    size: np.ndarray
    yaw: float = 0.0

    def __post_init__(self) -> None:
        center = np.asarray(self.center, dtype=np.float64).reshape(-1)
        size = np.asarray(self.size, dtype=np.float64).reshape(-1)
        if center.shape != (3,) or size.shape != (3,):
            raise ValueError(f'center and size must have 3 values, got {center.shape} and '
                             f'{size.shape}')
        if not (np.all(np.isfinite(center)) and np.all(np.isfinite(size))
                and math.isfinite(self.yaw)):
            raise ValueError(f'box values must be finite, got center={center}, size={size}, '
                             f'yaw={self.yaw}')
        if np.any(size < 0):
            raise ValueError(f'size must be >= 0, got {size}')
        center.setflags(write=False)
        size.setflags(write=False)
        object.__setattr__(self, 'center', center)
        object.__setattr__(self, 'size', size)
        object.__setattr__(self, 'yaw', float(self.yaw))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Box3D):
            return NotImplemented
        return (np.array_equal(self.center, other.center)
                and np.array_equal(self.size, other.size) and self.yaw == other.yaw)

    def __hash__(self) -> int:
        return hash((self.center.tobytes(), self.size.tobytes(), self.yaw))

    @property
    def volume(self) -> float:
        """
        Return the volume.

        :return: Cubic metres.
        """
        return float(np.prod(self.size))

    def footprint(self) -> np.ndarray:
        """
        Return the ground-plane rectangle.

        :return: (4, 2) float64 xy corners, counter-clockwise.
        """
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        hx, hy = self.size[0] / 2, self.size[1] / 2
        local = np.array([[-hx, -hy], [hx, -hy], [hx, hy], [-hx, hy]])
        rot = np.array([[c, -s], [s, c]])
        return local @ rot.T + self.center[:2]

    def corners(self) -> np.ndarray:
        """
        Return the eight corners.

        :return: (8, 3) float64; the bottom four (counter-clockwise) then the top four.
        """
        foot = self.footprint()
        z0 = self.center[2] - self.size[2] / 2
        z1 = self.center[2] + self.size[2] / 2
        return np.vstack([np.c_[foot, np.full(4, z0)], np.c_[foot, np.full(4, z1)]])

    def axis_aligned(self) -> 'Box3D':
        """
        Return the smallest axis-aligned box containing this one.

        :return: A box with ``yaw == 0``.
        """
        if self.yaw == 0.0:
            return self
        foot = self.footprint()
        lo, hi = foot.min(axis=0), foot.max(axis=0)
        return Box3D(np.r_[(lo + hi) / 2, self.center[2]], np.r_[hi - lo, self.size[2]], 0.0)

    def contains(self, points: np.ndarray) -> np.ndarray:
        """
        Test which points lie inside the box (boundary included).

        :param points: (N, 3) metres, same frame as the box.
        :return: (N,) bool.
        """
        pts = _check_points(points, 'points', allow_empty=True)
        d = pts - self.center
        c, s = math.cos(self.yaw), math.sin(self.yaw)
        local_x = d[:, 0] * c + d[:, 1] * s
        local_y = -d[:, 0] * s + d[:, 1] * c
        half = self.size / 2 + 1e-9
        return ((np.abs(local_x) <= half[0]) & (np.abs(local_y) <= half[1])
                & (np.abs(d[:, 2]) <= half[2]))

    def to_dict(self) -> dict:
        """
        Return a JSON-friendly dict.

        :return: ``{'center': [x, y, z], 'size': [dx, dy, dz], 'yaw': yaw}``.
        """
        return {'center': [float(v) for v in self.center], 'size': [float(v) for v in self.size],
                'yaw': self.yaw}

    @classmethod
    def from_dict(cls, data: dict) -> 'Box3D':
        """
        Build a box from :meth:`to_dict` output.

        :param data: Mapping with ``center``, ``size`` and optional ``yaw``.
        :return: The box.
        :raises ValueError: If keys are missing.
        """
        try:
            return cls(np.asarray(data['center'], float), np.asarray(data['size'], float),
                       float(data.get('yaw', 0.0)))
        except KeyError as e:
            raise ValueError(f'box dict needs center and size, got keys {sorted(data)}') from e

    @classmethod
    def from_min_max(cls, lo: Sequence[float], hi: Sequence[float]) -> 'Box3D':
        """
        Build an axis-aligned box from its corners.

        :param lo: (3,) minimum corner, metres.
        :param hi: (3,) maximum corner, metres.
        :return: The box.
        """
        lo_a, hi_a = np.asarray(lo, float), np.asarray(hi, float)
        return cls((lo_a + hi_a) / 2, hi_a - lo_a, 0.0)


def _check_points(points: np.ndarray, name: str, allow_empty: bool = False) -> np.ndarray:
    pts = np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f'{name} must have shape (N, 3), got {pts.shape}')
    if not allow_empty and len(pts) == 0:
        raise ValueError(f'{name} must not be empty')
    if not np.all(np.isfinite(pts)):
        raise ValueError(f'{name} must be finite')
    return pts


def fit_aabb(points: np.ndarray) -> Box3D:
    """
    Fit the axis-aligned bounding box of a point set.

    :param points: (N, 3) metres, N >= 1, finite.
    :return: The box (``yaw == 0``).
    :raises ValueError: If ``points`` is empty, non-finite or not (N, 3).
    """
    pts = _check_points(points, 'points')
    return Box3D.from_min_max(*bounds(pts))


def _wrap_yaw(yaw: float, size_xy: np.ndarray) -> tuple[float, np.ndarray]:
    # Bring yaw into [-pi/4, pi/4) by quarter turns, swapping the footprint edges on odd turns.
    turns = math.floor((yaw + math.pi / 4) / (math.pi / 2))
    yaw -= turns * math.pi / 2
    if turns % 2:
        size_xy = size_xy[::-1].copy()
    return yaw, size_xy


def _hull_candidates(xy: np.ndarray) -> np.ndarray:
    """
    Drop points that cannot be convex-hull vertices (Akl-Toussaint prefilter).

    The extreme points along x, y, x + y and x - y span a convex polygon of input points; a point
    strictly inside it is strictly inside the hull, so the hull of the remaining points is the
    hull of all (same vertices). On a segmented object's footprint this keeps a few percent of
    the points, and qhull runs on those (issue 13: the box fit was 12 ms of a frame).

    :param xy: (N, 2) float64.
    :return: (M, 2) float64, the candidates in their input order (all points when N < 16 or
        the polygon is degenerate).
    """
    if len(xy) < 16:
        return xy
    x, y = xy[:, 0], xy[:, 1]
    s, d = x + y, x - y
    # Support points in counter-clockwise order of their directions (0, 45, ..., 315 degrees).
    order = [np.argmax(x), np.argmax(s), np.argmax(y), np.argmin(d),
             np.argmin(x), np.argmin(s), np.argmin(y), np.argmax(d)]
    poly = xy[[i for k, i in enumerate(order) if i != order[k - 1]]]
    if len(poly) < 3:
        return xy
    a, edge = poly, np.roll(poly, -1, axis=0) - poly
    # Strictly left of every edge of the counter-clockwise polygon = strictly inside it.
    inside = np.ones(len(xy), dtype=bool)
    for (ax, ay), (ex, ey) in zip(a, edge):
        inside &= ex * (y - ay) - ey * (x - ax) > 0
    return xy[~inside]


def fit_oriented_box(points: np.ndarray) -> Box3D:
    """
    Fit a yaw-oriented box: the minimum-area rectangle of the ground-plane footprint × z range.

    The rectangle is found by rotating calipers over the convex-hull edges of the xy points.
    Degenerate footprints (under 3 points, collinear points) fall back to the axis-aligned box.

    :param points: (N, 3) metres, +z up, N >= 1, finite.
    :return: The box, ``yaw`` in ``[-pi/4, pi/4)``.
    :raises ValueError: If ``points`` is empty, non-finite or not (N, 3).
    """
    pts = _check_points(points, 'points')
    z0, z1 = float(pts[:, 2].min()), float(pts[:, 2].max())
    xy = pts[:, :2]
    try:
        cand = _hull_candidates(xy)
        hull = cand[ConvexHull(cand).vertices] if len(cand) >= 3 else None
    except QhullError:
        hull = None
    if hull is None:
        return fit_aabb(pts)
    edges = np.roll(hull, -1, axis=0) - hull
    angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), math.pi / 2))
    c, s = np.cos(angles), np.sin(angles)
    # Hull coordinates in each candidate frame: (A, H).
    u = hull[:, 0][None] * c[:, None] + hull[:, 1][None] * s[:, None]
    v = -hull[:, 0][None] * s[:, None] + hull[:, 1][None] * c[:, None]
    areas = (u.max(1) - u.min(1)) * (v.max(1) - v.min(1))
    aabb_area = float(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1]))
    best = int(np.argmin(areas))
    if areas[best] >= aabb_area * (1 - 1e-9):
        return fit_aabb(pts)
    yaw = float(angles[best])
    cu = (u[best].max() + u[best].min()) / 2
    cv = (v[best].max() + v[best].min()) / 2
    size_xy = np.array([np.ptp(u[best]), np.ptp(v[best])])
    center_xy = np.array([cu * c[best] - cv * s[best], cu * s[best] + cv * c[best]])
    yaw, size_xy = _wrap_yaw(yaw, size_xy)
    return Box3D(np.r_[center_xy, (z0 + z1) / 2], np.r_[size_xy, z1 - z0], yaw)


def _clip_polygon(subject: np.ndarray, clip: np.ndarray) -> np.ndarray:
    # Sutherland-Hodgman clipping of a polygon by a convex counter-clockwise polygon.
    output = subject
    for i in range(len(clip)):
        if len(output) == 0:
            break
        a, b = clip[i], clip[(i + 1) % len(clip)]
        edge = b - a
        inp = output
        side = edge[0] * (inp[:, 1] - a[1]) - edge[1] * (inp[:, 0] - a[0])
        result = []
        n = len(inp)
        for j in range(n):
            cur, prev = inp[j], inp[j - 1]
            s_cur, s_prev = side[j], side[j - 1]
            if s_cur >= 0:
                if s_prev < 0:
                    t = s_prev / (s_prev - s_cur)
                    result.append(prev + t * (cur - prev))
                result.append(cur)
            elif s_prev >= 0:
                t = s_prev / (s_prev - s_cur)
                result.append(prev + t * (cur - prev))
        output = np.array(result) if result else np.zeros((0, 2))
    return output


def _polygon_area(poly: np.ndarray) -> float:
    if len(poly) < 3:
        return 0.0
    x, y = poly[:, 0], poly[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def _height_overlap(a: Box3D, b: Box3D) -> float:
    lo = max(a.center[2] - a.size[2] / 2, b.center[2] - b.size[2] / 2)
    hi = min(a.center[2] + a.size[2] / 2, b.center[2] + b.size[2] / 2)
    return max(0.0, hi - lo)


def iou_oriented(a: Box3D, b: Box3D) -> float:
    """
    Compute the 3D IoU of two yaw-oriented boxes.

    Intersection = area of the clipped ground-plane rectangles × height overlap.

    :param a: First box.
    :param b: Second box.
    :return: IoU in [0, 1]; 0 when both volumes are 0.
    """
    dz = _height_overlap(a, b)
    if dz <= 0:
        return 0.0
    # Cheap reject on circumscribed circles.
    ra = 0.5 * math.hypot(a.size[0], a.size[1])
    rb = 0.5 * math.hypot(b.size[0], b.size[1])
    if math.hypot(*(a.center[:2] - b.center[:2])) > ra + rb:
        return 0.0
    inter = _polygon_area(_clip_polygon(a.footprint(), b.footprint())) * dz
    union = a.volume + b.volume - inter
    return float(inter / union) if union > 0 else 0.0


def iou_aligned(a: Box3D, b: Box3D) -> float:
    """
    Compute the 3D IoU of the axis-aligned hulls of two boxes (ScanNet benchmark convention).

    :param a: First box (its yaw is replaced by its axis-aligned hull).
    :param b: Second box.
    :return: IoU in [0, 1].
    """
    return float(iou_aligned_matrix([a], [b])[0, 0])


def _min_max(boxes: Sequence[Box3D]) -> tuple[np.ndarray, np.ndarray]:
    if len(boxes) == 0:
        return np.zeros((0, 3)), np.zeros((0, 3))
    aligned = [b.axis_aligned() for b in boxes]
    centers = np.array([b.center for b in aligned])
    sizes = np.array([b.size for b in aligned])
    return centers - sizes / 2, centers + sizes / 2


def iou_aligned_matrix(boxes_a: Sequence[Box3D], boxes_b: Sequence[Box3D]) -> np.ndarray:
    """
    Compute pairwise axis-aligned 3D IoU.

    :param boxes_a: M boxes.
    :param boxes_b: K boxes.
    :return: (M, K) float64.
    """
    lo_a, hi_a = _min_max(boxes_a)
    lo_b, hi_b = _min_max(boxes_b)
    overlap = np.minimum(hi_a[:, None], hi_b[None]) - np.maximum(lo_a[:, None], lo_b[None])
    inter = np.clip(overlap, 0, None).prod(axis=2)
    vol_a = (hi_a - lo_a).prod(axis=1)
    vol_b = (hi_b - lo_b).prod(axis=1)
    union = vol_a[:, None] + vol_b[None] - inter
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def iou_oriented_matrix(boxes_a: Sequence[Box3D], boxes_b: Sequence[Box3D]) -> np.ndarray:
    """
    Compute pairwise oriented 3D IoU.

    :param boxes_a: M boxes.
    :param boxes_b: K boxes.
    :return: (M, K) float64.
    """
    out = np.zeros((len(boxes_a), len(boxes_b)))
    for i, a in enumerate(boxes_a):
        for j, b in enumerate(boxes_b):
            out[i, j] = iou_oriented(a, b)
    return out


def nms_3d(boxes: Sequence[Box3D], scores: Sequence[float], iou_threshold: float,
           labels: Sequence[str] | None = None, oriented: bool = True) -> np.ndarray:
    """
    Greedy 3D non-maximum suppression, optionally class-wise.

    A box is suppressed when its IoU with an already kept box (of the same label, if ``labels`` is
    given) exceeds ``iou_threshold``. Ties in score keep the earlier box.

    :param boxes: N boxes.
    :param scores: (N,) ranking scores.
    :param iou_threshold: Suppression threshold in (0, 1].
    :param labels: Optional N labels; boxes of different labels never suppress each other.
    :param oriented: Use oriented IoU (else axis-aligned).
    :return: (K,) int64 indices of the kept boxes, by decreasing score.
    :raises ValueError: On length mismatch or a threshold outside (0, 1].
    """
    scores_a = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(scores_a) != len(boxes):
        raise ValueError(f'scores has {len(scores_a)} values for {len(boxes)} boxes')
    if labels is not None and len(labels) != len(boxes):
        raise ValueError(f'labels has {len(labels)} values for {len(boxes)} boxes')
    if not 0 < iou_threshold <= 1:
        raise ValueError(f'iou_threshold must be in (0, 1], got {iou_threshold}')
    order = np.argsort(-scores_a, kind='stable')
    iou = iou_oriented if oriented else iou_aligned
    kept: list[int] = []
    for i in order:
        if all((labels is not None and labels[i] != labels[k])
               or iou(boxes[i], boxes[k]) <= iou_threshold for k in kept):
            kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)
