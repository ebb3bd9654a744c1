"""Tests of training/robot_views.py: ray-cast robot views, sensor noise, clutter, balancing."""

import numpy as np
import pytest
import trimesh

from training import robot_views as rv


def _cube():
    m = trimesh.creation.box((1.0, 1.0, 1.0))  # centred at the origin, faces at +-0.5
    return np.asarray(m.vertices), np.asarray(m.faces)


def test_raycast_cube_from_plus_x_sees_only_the_plus_x_face():
    v, f = _cube()
    p = rv.raycast_view(v, f, np.array([3.0, 0.0, 0.0]))
    assert p.dtype == np.float32 and len(p) > 1000
    np.testing.assert_allclose(p[:, 0], 0.5, atol=1e-5)
    assert np.abs(p[:, 1:]).max() <= 0.5 + 1e-5
    # pitch 1/577.59 rad at 2.5 m: the 1 m face is ~231 rays wide, capped at 192 per image side
    # of the bounding sphere (tan half angle 0.866/2.87): 1 m / (2 * 2.5 * 0.3015 / 192) = 127
    side = 1.0 / (2 * 2.5 * (np.sqrt(3) / 2 / np.sqrt(9 - 0.75)) / 192)
    assert abs(np.sqrt(len(p)) - side) < 3


def test_raycast_noise_is_seeded_and_on_the_face():
    v, f = _cube()
    a = rv.raycast_view(v, f, np.array([3.0, 0.0, 0.0]), np.random.default_rng(0))
    b = rv.raycast_view(v, f, np.array([3.0, 0.0, 0.0]), np.random.default_rng(0))
    assert np.array_equal(a, b)
    # sigma(z = 2.5 m) = 1.2 + 1.9 * 2.1 ** 2 = 9.58 mm; 1 % random drop-out
    sigma = 0.0012 + 0.0019 * 2.1 ** 2
    assert abs(np.std(a[:, 0]) - sigma) < 0.15 * sigma
    assert np.abs(a[:, 0] - 0.5).max() < 6 * sigma
    exact = rv.raycast_view(v, f, np.array([3.0, 0.0, 0.0]))
    assert 0.97 * len(exact) < len(a) < len(exact)


def test_raycast_rejects_empty_mesh():
    with pytest.raises(ValueError, match='vertices/faces'):
        rv.raycast_view(np.zeros((0, 3)), np.zeros((0, 3), int), np.array([3.0, 0, 0]))


def test_kinect_noise_range_and_incidence():
    rng = np.random.default_rng(0)
    eye, fwd = np.zeros(3), np.array([1.0, 0.0, 0.0])
    pts = np.array([[0.2, 0, 0], [1.0, 0, 0], [5.0, 0, 0], [1.0, 0, 0]])
    normals = np.array([[1.0, 0, 0], [1.0, 0, 0], [1.0, 0, 0], [0.0, 1.0, 0]])  # last: grazing
    out = rv.kinect_noise(np.repeat(pts, 200, 0), np.repeat(normals, 200, 0), eye, fwd, rng)
    # only the second point survives (too near, too far, 90 deg incidence), minus ~1 %
    assert 190 <= len(out) <= 200
    np.testing.assert_allclose(out[:, 0].mean(), 1.0, atol=0.001)
    # 1 mm quantisation of depth
    np.testing.assert_allclose(out[:, 0] * 1000, np.round(out[:, 0] * 1000), atol=1e-6)


def test_robot_viewpoint_ranges():
    pts = np.array([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.8]])
    rng = np.random.default_rng(3)
    for _ in range(50):
        eye = rv.robot_viewpoint(pts, rng)
        d = np.hypot(eye[0], eye[1])
        assert 0.8 <= d <= 3.5 and 0.4 <= eye[2] <= 1.6


def test_balanced_weights():
    np.testing.assert_allclose(rv.balanced_weights(['a', 'a', 'a', 'b'], 1.0),
                               [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    np.testing.assert_allclose(rv.balanced_weights(['a', 'b', 'b', 'b', 'b'], 0.5),
                               np.array([1, .5, .5, .5, .5]) / 3)
    np.testing.assert_allclose(rv.balanced_weights(['a', 'a', 'b'], 0.0), [1 / 3] * 3)
    with pytest.raises(ValueError, match='power'):
        rv.balanced_weights(['a'], 2.0)
    with pytest.raises(ValueError, match='labels'):
        rv.balanced_weights([])


def test_synonym_groups():
    g = rv.synonym_groups('chair|seat')
    assert g['sofa'] == ('sofa', 'couch', 'settee')
    assert g['garbage bin'][:2] == ('garbage bin', 'trash can')
    assert g['chair'] == ('chair', 'seat')


def _slab():
    rng = np.random.default_rng(0)
    return rng.uniform([-0.5, -0.25, 0.0], [0.5, 0.25, 1.0], (1000, 3)).astype(np.float32)


def test_floor_and_wall_and_neighbour_geometry():
    p, rng = _slab(), np.random.default_rng(1)
    floor = rv.floor_remnant(p, rng, 0.1, 0.2)
    assert floor.shape == (100, 3) and np.abs(floor[:, 2] - p[:, 2].min()).max() < 0.03
    assert floor[:, 0].min() >= p[:, 0].min() - 0.2 and floor[:, 0].max() <= p[:, 0].max() + 0.2
    # camera on -y: the wall stands 5 cm behind the far side y = 0.25
    wall = rv.wall_fragment(p, np.array([0.0, -3.0, 1.0]), rng, 0.05, 0.05)
    assert wall.shape == (50, 3)
    np.testing.assert_allclose(wall[:, 1].mean(), p[:, 1].max() + 0.05, atol=0.005)
    assert np.abs(wall[:, 0]).max() <= np.abs(p[:, 0]).max() + 1e-6
    other = _slab() + [5.0, 5.0, 2.0]
    n = rv.neighbour_points(p, other, rng, 0.2, 0.1)
    assert 0 < len(n) <= 200
    lo, hi = p.min(0) - 0.1 - 1e-5, p.max(0) + 0.1 + 1e-5
    assert np.all((n >= lo) & (n <= hi))
    assert abs(n[:, 2].min() - p[:, 2].min()) < 0.05  # placed on the same floor


def test_occlusion_cut_and_clutter():
    p = _slab()
    cut = rv.occlusion_cut(p, np.random.default_rng(0), 0.3)
    assert 0.6 * len(p) < len(cut) < 0.8 * len(p)
    assert len(rv.occlusion_cut(p[:10], np.random.default_rng(0), 0.3)) == 10  # min_keep
    same = rv.add_clutter(p, np.array([0, -3.0, 1]), np.random.default_rng(0), prob=0.0)
    assert np.array_equal(same, p)
    a = rv.add_clutter(p, np.array([0, -3.0, 1]), np.random.default_rng(4), other=p, prob=1.0)
    b = rv.add_clutter(p, np.array([0, -3.0, 1]), np.random.default_rng(4), other=p, prob=1.0)
    assert np.array_equal(a, b) and len(a) != len(p)
