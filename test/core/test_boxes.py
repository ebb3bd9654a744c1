"""Tests of box fitting, IoU and NMS with hand-computed values."""

import math

import numpy as np
import pytest

from opendlign_core.boxes import (
    Box3D,
    _hull_candidates,
    fit_aabb,
    fit_oriented_box,
    iou_aligned,
    iou_aligned_matrix,
    iou_oriented,
    iou_oriented_matrix,
    nms_3d,
)


def _cube(center, size, yaw=0.0):
    return Box3D(np.asarray(center, float), np.asarray(size, float), yaw)


def test_fit_aabb_exact():
    pts = np.array([[0, 0, 0], [2, 1, 0.5], [1, -1, 3]], float)
    box = fit_aabb(pts)
    np.testing.assert_allclose(box.center, [1, 0, 1.5])
    np.testing.assert_allclose(box.size, [2, 2, 3])
    assert box.yaw == 0.0


def test_fit_oriented_recovers_rotated_rectangle():
    rng = np.random.default_rng(0)
    local = rng.uniform(-1, 1, size=(2000, 3)) * [2.0, 0.5, 0.4]
    yaw = 0.5
    c, s = math.cos(yaw), math.sin(yaw)
    pts = local @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [3, -1, 0.4]
    pts = np.vstack([pts, np.array([[2, .5, 0], [-2, .5, 0], [2, -.5, 0], [-2, -.5, 0]])
                     @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T + [3, -1, 0.4]])
    box = fit_oriented_box(pts)
    assert box.yaw == pytest.approx(yaw, abs=1e-6)
    np.testing.assert_allclose(box.size[:2], [4.0, 1.0], atol=1e-6)
    np.testing.assert_allclose(box.center[:2], [3, -1], atol=1e-6)
    assert box.contains(pts).all()


def test_fit_oriented_wraps_yaw_and_swaps_sizes():
    yaw = 1.2  # beyond pi/4: reported as yaw - pi/2 with swapped edges
    c, s = math.cos(yaw), math.sin(yaw)
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-0.25, 0.25) for z in (0, 1)])
    pts = corners * [1, 1, 1] @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    box = fit_oriented_box(pts)
    assert -math.pi / 4 <= box.yaw < math.pi / 4
    assert box.yaw == pytest.approx(yaw - math.pi / 2, abs=1e-9)
    np.testing.assert_allclose(box.size, [0.5, 2.0, 1.0], atol=1e-9)
    assert iou_oriented(box, _cube([0, 0, 0.5], [2, 0.5, 1], yaw)) == pytest.approx(1.0)


def _clouds_for_hulls():
    rng = np.random.default_rng(11)
    yaw = 0.4
    rot = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    grid = np.stack(np.meshgrid(np.arange(40.0), np.arange(25.0)), -1).reshape(-1, 2) * 0.02
    angle = rng.uniform(0, 2 * math.pi, 300)
    return {
        'filled rotated rectangle': rng.uniform([-1, -0.3], [1, 0.3], (5000, 2)) @ rot.T,
        'gaussian blob far out': rng.normal(0, 0.4, (4000, 2)) + [512345.6, -98765.4],
        'points on a circle': np.stack([np.cos(angle), np.sin(angle)], 1),
        'axis-aligned grid (tied extremes)': grid,
        'collinear': np.stack([np.linspace(0, 1, 50), np.linspace(0, 2, 50)], 1),
        'few points': rng.normal(0, 1, (5, 2)),
    }


@pytest.mark.parametrize('name', list(_clouds_for_hulls()))
def test_hull_prefilter_keeps_every_hull_vertex_and_the_same_box(name):
    from scipy.spatial import ConvexHull, QhullError
    xy = _clouds_for_hulls()[name]
    cand = _hull_candidates(xy)
    assert len(cand) <= len(xy)
    try:
        full = {tuple(p) for p in xy[ConvexHull(xy).vertices]}
    except QhullError:      # collinear: no 2-D hull, the box fit falls back to the AABB
        full = None
    if full is not None:
        assert {tuple(p) for p in cand[ConvexHull(cand).vertices]} == full
    if name == 'filled rotated rectangle':
        assert len(cand) < 0.1 * len(xy)
    pts = np.c_[xy, np.linspace(0.0, 1.0, len(xy))]
    box = fit_oriented_box(pts)
    # The reference: the same rotating calipers over the hull of all points.
    if full is not None:
        hull = xy[ConvexHull(xy).vertices]
        edges = np.roll(hull, -1, axis=0) - hull
        angles = np.unique(np.mod(np.arctan2(edges[:, 1], edges[:, 0]), math.pi / 2))
        c, s = np.cos(angles), np.sin(angles)
        u, v = hull @ np.stack([c, s]), hull @ np.stack([-s, c])
        areas = np.ptp(u, axis=0) * np.ptp(v, axis=0)
        np.testing.assert_allclose(box.size[0] * box.size[1],
                                   min(areas.min(), np.ptp(xy[:, 0]) * np.ptp(xy[:, 1])),
                                   rtol=1e-9)


def test_fit_oriented_degenerate_falls_back():
    pts = np.array([[0, 0, 0], [1, 1, 0], [2, 2, 1]], float)  # collinear footprint
    box = fit_oriented_box(pts)
    assert box.yaw == 0.0
    np.testing.assert_allclose(box.size, [2, 2, 1])
    single = fit_oriented_box(np.array([[1.0, 2.0, 3.0]]))
    np.testing.assert_allclose(single.size, 0)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match='points'):
        fit_aabb(np.zeros((0, 3)))
    with pytest.raises(ValueError, match='finite'):
        fit_oriented_box(np.array([[np.nan, 0, 0]]))
    with pytest.raises(ValueError, match='size'):
        Box3D(np.zeros(3), np.array([1, -1, 1.0]))


def test_iou_hand_computed():
    a = _cube([0, 0, 0], [2, 2, 2])
    b = _cube([1, 0, 0], [2, 2, 2])  # overlap 1*2*2 = 4; union 8+8-4 = 12
    assert iou_aligned(a, b) == pytest.approx(4 / 12)
    assert iou_oriented(a, b) == pytest.approx(4 / 12)
    c = _cube([0, 0, 0.75], [2, 2, 1])  # z overlap [0.25, 1] -> inter 3, union 8 + 4 - 3
    assert iou_oriented(a, c) == pytest.approx(3 / 9)
    assert iou_oriented(a, _cube([5, 0, 0], [1, 1, 1])) == 0.0


def test_iou_oriented_rotated_square():
    a = _cube([0, 0, 0], [2, 2, 1])
    b = _cube([0, 0, 0], [2, 2, 1], math.pi / 4)
    # Octagon of a square and its 45-degree copy: area 8 (sqrt 2 - 1) * ... = 8 * (sqrt2 - 1)
    inter = 8 * (math.sqrt(2) - 1)
    assert iou_oriented(a, b) == pytest.approx(inter / (8 - inter))
    # Axis-aligned IoU uses the hull of the rotated box (side 2 sqrt 2).
    assert iou_aligned(a, b) == pytest.approx(4 / 8)


def test_iou_matrices_match_scalar():
    rng = np.random.default_rng(1)
    boxes = [_cube(rng.uniform(-1, 1, 3), rng.uniform(0.2, 2, 3), rng.uniform(-0.7, 0.7))
             for _ in range(6)]
    m_o = iou_oriented_matrix(boxes, boxes)
    m_a = iou_aligned_matrix(boxes, boxes)
    np.testing.assert_allclose(np.diag(m_o), 1.0)
    np.testing.assert_allclose(m_o, m_o.T, atol=1e-12)
    for i in range(6):
        for j in range(6):
            assert m_a[i, j] == pytest.approx(iou_aligned(boxes[i], boxes[j]))
    # Oriented IoU of two boxes that share yaw equals the IoU in their common frame.
    a = _cube([0, 0, 0], [2, 1, 1], 0.3)
    b = _cube([0.5 * math.cos(0.3), 0.5 * math.sin(0.3), 0], [2, 1, 1], 0.3)
    assert iou_oriented(a, b) == pytest.approx(1.5 / 2.5)


def test_nms_classwise_and_ties():
    a = _cube([0, 0, 0], [1, 1, 1])
    b = _cube([0.1, 0, 0], [1, 1, 1])
    c = _cube([3, 0, 0], [1, 1, 1])
    kept = nms_3d([a, b, c], [0.9, 0.8, 0.5], 0.25)
    assert kept.tolist() == [0, 2]
    kept = nms_3d([a, b, c], [0.9, 0.8, 0.5], 0.25, labels=['x', 'y', 'x'])
    assert kept.tolist() == [0, 1, 2]
    kept = nms_3d([a, b], [0.5, 0.5], 0.25)  # tie keeps the earlier box
    assert kept.tolist() == [0]
    assert nms_3d([], [], 0.5).tolist() == []
    with pytest.raises(ValueError, match='iou_threshold'):
        nms_3d([a], [1.0], 0.0)


def test_box_dict_round_trip_and_corners():
    box = _cube([1, 2, 3], [2, 4, 6], 0.2)
    again = Box3D.from_dict(box.to_dict())
    assert again == box
    corners = box.corners()
    assert corners.shape == (8, 3)
    assert box.contains(corners).all()
    np.testing.assert_allclose(corners.mean(axis=0), box.center)
