"""Segmentation on hand-built rooms: structure removal, clustering, malformed input."""

import numpy as np
import pytest

from opendlign_core.config import SegmentationConfig
from opendlign_core.segmentation import (
    euclidean_clusters,
    segment_scene,
    to_z_up,
    up_rotation,
    voxelize,
)


def _room(rng, boxes):
    """Floor 4 x 4 m, two walls 2.5 m high, and solid boxes given as (lo, hi)."""
    parts = [np.c_[rng.uniform(0, 4, (20000, 2)), rng.normal(0, 0.003, 20000)],
             np.c_[rng.uniform(0, 4, 12000), rng.normal(0, 0.003, 12000),
                   rng.uniform(0, 2.5, 12000)],
             np.c_[rng.normal(4, 0.003, 12000), rng.uniform(0, 4, 12000),
                   rng.uniform(0, 2.5, 12000)]]
    labels = [np.full(20000, -1), np.full(12000, -1), np.full(12000, -1)]
    for k, (lo, hi) in enumerate(boxes):
        lo, hi = np.asarray(lo, float), np.asarray(hi, float)
        pts = rng.uniform(lo, hi, (3000, 3))
        # Push points onto the box surface so it looks like a scan.
        face = rng.integers(0, 3, 3000)
        side = rng.integers(0, 2, 3000)
        pts[np.arange(3000), face] = np.where(side, hi[face], lo[face])
        parts.append(pts)
        labels.append(np.full(3000, k))
    return np.vstack(parts).astype(np.float32), np.concatenate(labels)


def test_voxelize_centroids_and_inverse():
    pts = np.array([[0.01, 0.01, 0.01], [0.03, 0.01, 0.01], [0.5, 0.5, 0.5]])
    cent, inv, counts = voxelize(pts, 0.1)
    assert len(cent) == 2
    np.testing.assert_allclose(cent[inv[0]], [0.02, 0.01, 0.01])
    assert inv[0] == inv[1] != inv[2]
    assert counts.tolist() == [2, 1]


def test_euclidean_clusters_links_within_distance():
    pts = np.array([[0, 0, 0], [0.05, 0, 0], [0.1, 0, 0], [1, 0, 0]], float)
    comp = euclidean_clusters(pts, 0.06)
    assert comp[0] == comp[1] == comp[2] != comp[3]


def test_room_objects_found_and_structure_removed():
    rng = np.random.default_rng(0)
    boxes = [((1.0, 1.0, 0.0), (1.6, 1.5, 0.8)), ((2.5, 2.5, 0.0), (3.0, 3.2, 1.2)),
             ((0.5, 3.0, 0.0), (0.9, 3.4, 0.45))]
    pts, gt = _room(rng, boxes)
    res = segment_scene(pts)
    kinds = sorted(p.kind for p in res.planes)
    assert kinds == ['floor', 'wall', 'wall']
    assert len(res.clusters) == 3
    for k in range(3):
        lab = res.labels[gt == k]
        # One cluster per box; its bottom face (1/6 of the points) lies in the floor plane.
        values, counts = np.unique(lab[lab >= 0], return_counts=True)
        assert counts.max() / len(lab) > 0.75
    assert (res.labels[gt == -1] >= 0).mean() < 0.01
    # Clusters come by decreasing size and index the input.
    sizes = [len(c) for c in res.clusters]
    assert sizes == sorted(sizes, reverse=True)
    for k, c in enumerate(res.clusters):
        assert (res.labels[c] == k).all()


def test_table_top_is_not_floor():
    rng = np.random.default_rng(1)
    top = np.c_[rng.uniform(1, 2.5, (4000, 2)), np.full(4000, 0.75)]
    legs = np.c_[rng.uniform(1, 1.05, 500), rng.uniform(1, 1.05, 500), rng.uniform(0, 0.75, 500)]
    pts, _ = _room(rng, [])
    res = segment_scene(np.vstack([pts, top, legs]).astype(np.float32))
    assert len(res.clusters) == 1
    assert len(res.clusters[0]) >= 4000


@pytest.mark.parametrize('case', ['empty', 'plane', 'nan', 'inf_only'])
def test_malformed_inputs_give_clear_results(case):
    rng = np.random.default_rng(2)
    pts = {'empty': np.zeros((0, 3)),
           'plane': np.c_[rng.uniform(0, 5, (20000, 2)), np.zeros(20000)],
           'nan': np.vstack([_room(rng, [((1, 1, 0), (1.5, 1.5, 1))])[0],
                             np.full((100, 3), np.nan)]),
           'inf_only': np.full((10, 3), np.inf)}[case]
    res = segment_scene(pts)
    assert len(res.labels) == len(pts)
    if case == 'nan':
        assert len(res.clusters) == 1
        assert (res.labels[-100:] == -1).all()
    else:
        assert res.clusters == ()


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match='points'):
        segment_scene(np.zeros((5, 2)))
    with pytest.raises(TypeError, match='numeric'):
        segment_scene(np.array([['a', 'b', 'c']]))
    with pytest.raises(ValueError, match='voxel_size'):
        SegmentationConfig(voxel_size=0)


def test_huge_cloud_is_bounded():
    rng = np.random.default_rng(3)
    pts = rng.uniform(0, 6, (400_000, 3)).astype(np.float32)
    res = segment_scene(pts, SegmentationConfig(max_voxels=20_000))
    assert res.num_voxels <= 20_000


def test_up_axis_rotation():
    r = up_rotation('y')
    np.testing.assert_allclose(np.linalg.det(r), 1.0)
    np.testing.assert_allclose(to_z_up(np.array([[0, 1.0, 0]]), 'y'), [[0, 0, 1.0]])
    for axis, v in (('x', [1, 0, 0]), ('-x', [-1, 0, 0]), ('-y', [0, -1, 0]), ('-z', [0, 0, -1])):
        np.testing.assert_allclose(to_z_up(np.array([v], float), axis), [[0, 0, 1.0]], atol=1e-7)
    with pytest.raises(ValueError, match='up_axis'):
        up_rotation('w')
