"""Tests of opendlign_core.projection: hand-computed grids, fast == loop reference, conventions."""

import math

import numpy as np
import pytest
import torch

from opendlign_core._reference import reference_contour_views
from opendlign_core.config import ProjectionConfig
from opendlign_core.projection import (
    _as_cloud_list,
    _contour_dense,
    _contour_voxels,
    _lut,
    _window_bits,
    project_depth_views,
    save_views_png,
    view_rotations,
    views_to_images,
)

# One view at azimuth 0, elevation 0: camera on +x looking towards -x, so image u (columns) is
# +y, image v (rows) is -z and depth grows towards -x: (a, b, c) = (y, -z, -x).
FRONT = dict(view_angles_deg=(0.0,), elevation_deg=0.0)
# p1 nearest (c=-1), p2 farthest (c=+1), p3 in the middle (c=0); a, b span [-1, 1] (s = 2).
THREE = np.array([[1.0, 0.0, 0.0], [-1.0, 1.0, 1.0], [0.0, -1.0, -1.0]], np.float32)


def _dense(points, config):
    dev = torch.device('cpu')
    idx, bins = _contour_voxels(_as_cloud_list(points, dev), config, dev)
    return _contour_dense(idx, bins, 1, config, dev)[0]


def test_hand_three_points_kernel_one():
    cfg = ProjectionConfig(resolution=8, depth_bins=4, densify_kernel=1, bilateral_kernel=1,
                           far_value=0.6, object_ratio=1.0, **FRONT)
    # scale = rho * R / s = 4: col = floor(4 + 4a), row = floor(4 + 4b), clipped to [0, 7];
    # bin = min(floor(4 (c + 1) / 2), 3); nearness 1 - 0.6 z / 3.
    # p1 (a, b, c) = (0, 0, -1) -> row 4, col 4, bin 0 -> D = 0
    # p2 (1, -1, 1)             -> row 0, col 7, bin 3 -> D = 1 - 0.4 = 0.6
    # p3 (-1, 1, 0)             -> row 7, col 0, bin 2 -> D = 1 - 0.6 = 0.4
    expected = np.ones((8, 8))
    expected[4, 4], expected[0, 7], expected[7, 0] = 0.0, 0.6, 0.4
    fast = project_depth_views(THREE, cfg)
    assert fast.shape == (1, 1, 8, 8) and fast.dtype == torch.float32
    np.testing.assert_allclose(fast[0, 0].numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(reference_contour_views(THREE, cfg)[0], expected, atol=1e-12)
    np.testing.assert_allclose(_dense(THREE, cfg)[0].numpy(), expected, atol=1e-6)


def test_hand_three_points_object_ratio_and_densify():
    cfg = ProjectionConfig(resolution=8, depth_bins=4, densify_kernel=3, bilateral_kernel=1,
                           far_value=0.6, object_ratio=0.5, **FRONT)
    # scale = 2: p1 -> (row 4, col 4), p2 -> (2, 6), p3 -> (6, 2). A 3x3x3 max-pool then a
    # squeeze = 1 - (max nearness over the 3x3 pixel neighbourhood).
    expected = np.ones((8, 8))
    expected[5:8, 1:4] = 0.4            # p3 (nearness 0.6)
    expected[1:4, 5:8] = 0.6            # p2 (nearness 0.4)
    expected[3:6, 3:6] = 0.0            # p1 (nearness 1) wins where it overlaps
    np.testing.assert_allclose(project_depth_views(THREE, cfg)[0, 0].numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(reference_contour_views(THREE, cfg)[0], expected, atol=1e-12)


def test_hand_single_point_bilateral():
    # sigma_s = sigma_r = 1/sqrt(2): spatial weight exp(-|d|^2), range weight exp(-dI^2).
    cfg = ProjectionConfig(resolution=8, depth_bins=4, densify_kernel=1, bilateral_kernel=3,
                           bilateral_sigma_spatial=1 / math.sqrt(2),
                           bilateral_sigma_range=1 / math.sqrt(2), **FRONT)
    e = math.exp
    # One point: s = 0 -> 1, so it lands at (row 4, col 4), bin 0, nearness 1.
    # Centre voxel (z=0): num = 1; den = 1 + e^-1 * (6 e^-1 + 12 e^-2 + 8 e^-3) (26 empty
    # neighbours, range weight e^-1; the one at z=-1 is outside and counts as empty).
    centre = 1.0 / (1.0 + e(-1) * (6 * e(-1) + 12 * e(-2) + 8 * e(-3)))
    # Voxel (z=1) below it is empty: num = e^-1 (distance 1) * e^-1 (range) * 1;
    # den = total spatial weight (1 + 2 e^-1)^3 minus e^-1 (1 - e^-1) for the point.
    total = (1 + 2 * e(-1)) ** 3
    below = e(-2) / (total - e(-1) * (1 - e(-1)))
    assert centre > below
    # Side pixel (row 4, col 5), z=0: the point is at distance 1: same value as `below`.
    expected = np.ones((8, 8))
    expected[4, 4] = 1.0 - centre
    for r, c in [(3, 4), (5, 4), (4, 3), (4, 5)]:
        expected[r, c] = 1.0 - below
    diag = e(-3) / (total - e(-2) * (1 - e(-1)))       # distance sqrt(2) at z=0
    for r, c in [(3, 3), (3, 5), (5, 3), (5, 5)]:
        expected[r, c] = 1.0 - diag
    point = np.zeros((1, 3), np.float32)
    np.testing.assert_allclose(project_depth_views(point, cfg)[0, 0].numpy(), expected,
                               atol=1e-6)
    np.testing.assert_allclose(reference_contour_views(point, cfg)[0], expected, atol=1e-12)
    np.testing.assert_allclose(_dense(point, cfg)[0].numpy(), expected, atol=1e-6)


@pytest.mark.parametrize('bins, res', [(4, 10), (8, 10), (10, 9), (13, 8)])
def test_fast_matches_reference_on_random_clouds(bins, res):
    rng = np.random.default_rng(bins)
    pts = rng.normal(size=(80, 3)).astype(np.float32) * [1.0, 0.6, 1.5]
    cfg = ProjectionConfig(resolution=res, depth_bins=bins, view_angles_deg=(30.0, 246.0),
                           elevation_deg=25.0, bilateral_sigma_spatial=1.3,
                           bilateral_sigma_range=0.15)
    ref = reference_contour_views(pts, cfg)
    fast = project_depth_views(pts, cfg)[0].numpy()    # table path for B <= 10, dense above
    np.testing.assert_allclose(fast, ref, atol=1e-5, rtol=0)
    assert ref.min() < 1e-6 and ref.max() > 0.25         # a real image, not a constant


def test_table_and_dense_paths_agree():
    rng = np.random.default_rng(3)
    pts = rng.uniform(-1, 1, size=(400, 3)).astype(np.float32)
    pts[:, 2] *= 0.3
    cfg = ProjectionConfig(resolution=40, depth_bins=6, view_angles_deg=(0.0, 100.0, 200.0))
    fast = project_depth_views(pts, cfg)[0]
    np.testing.assert_allclose(fast.numpy(), _dense(pts, cfg).numpy(), atol=1e-5, rtol=0)


def test_batch_equals_individual_and_inputs_equivalent():
    rng = np.random.default_rng(5)
    clouds = [rng.normal(size=(n, 3)).astype(np.float32) for n in (30, 200, 75)]
    cfg = ProjectionConfig(resolution=32)
    batch = project_depth_views(clouds, cfg)
    assert batch.shape == (3, 10, 32, 32)
    for i, c in enumerate(clouds):
        torch.testing.assert_close(batch[i], project_depth_views(c, cfg)[0], atol=1e-6, rtol=0)
    as_tensor = project_depth_views(torch.from_numpy(clouds[1]).double(), cfg, device='cpu')
    torch.testing.assert_close(as_tensor[0], batch[1], atol=1e-6, rtol=0)
    stacked = np.stack([clouds[0], clouds[0]])
    torch.testing.assert_close(project_depth_views(stacked, cfg, torch.device('cpu'))[1],
                               batch[0], atol=1e-6, rtol=0)


def _two_planes():
    """A near square (x = 1, y in [0, 1]) and a far one (x = -1, y in [-1, 0))."""
    g = np.linspace(0.0, 1.0, 25)
    y, z = np.meshgrid(g, g * 2 - 1)
    near = np.stack([np.ones(y.size), y.ravel(), z.ravel()], axis=1)
    far = np.stack([-np.ones(y.size), -y.ravel() - 1e-3, z.ravel()], axis=1)
    return np.concatenate([near, far]).astype(np.float32)


@pytest.mark.parametrize('method', ['contour', 'realistic'])
def test_value_range_background_and_polarity(method):
    cfg = ProjectionConfig(method=method, resolution=128, **FRONT)
    out = project_depth_views(_two_planes(), cfg)[0, 0]
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float(out[0, 0]) == 1.0 and float(out[-1, -1]) == 1.0     # background white
    right = out[48:80, 80:104]     # image right = +y = the near plane
    left = out[48:80, 24:48]       # the far plane
    assert float(right.max()) < float(left.min())                    # nearer is darker
    if method == 'contour':
        assert float(right.mean()) == pytest.approx(0.0, abs=1e-6)
        # the farthest bin borders empty space, which the bilateral filter mixes in a little
        assert float(left.mean()) == pytest.approx(cfg.far_value, abs=0.01)
    else:
        assert float(right.min()) == pytest.approx(0.0, abs=0.02)


def _l_shape():
    """A vertical bar along +z (x = y = 0, z in [0, 2]) and a foot along +y at z = 0."""
    t = np.linspace(0.0, 1.0, 200)
    bar = np.stack([np.zeros_like(t), np.zeros_like(t), 2 * t], axis=1)
    foot = np.stack([np.zeros_like(t), t, np.zeros_like(t)], axis=1)
    return np.concatenate([bar, foot]).astype(np.float32)


def test_rotation_convention_l_shape():
    # azimuth 0 (camera on +x): +y to the right, +z up -> the bar is at the left edge, the foot
    # runs right along the bottom. Azimuth 180 (camera on -x) mirrors it.
    cfg = ProjectionConfig(resolution=32, view_angles_deg=(0.0, 180.0), elevation_deg=0.0,
                           densify_kernel=1, bilateral_kernel=1, object_ratio=0.5)
    front, back = project_depth_views(_l_shape(), cfg)[0].numpy() < 0.9    # object pixels
    # s = max(1, 2) = 2, scale = 0.5 * 32 / 2 = 8: col = floor(16 + 8 (a - ctr_a)),
    # row = floor(16 + 8 (b - ctr_b)) with (a, b) = (y, -z) in front, (-y, -z) behind:
    # the bar is column 12 (front) / 20 (back), rows 8..24; the foot is row 24, columns 12..20.
    assert front[8:25, 12].all() and front[24, 12:21].all()
    assert not front[8:24, 13:].any() and not front[:, :12].any()
    assert back[8:25, 20].all() and back[24, 12:21].all()
    assert not back[8:24, :20].any() and not back[:, 21:].any()


def test_view_rotations_frames():
    rot = view_rotations(ProjectionConfig(view_angles_deg=(0.0, 90.0), elevation_deg=30.0))
    for r in rot:
        np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
        assert np.linalg.det(r) == pytest.approx(1.0)
    s, c = 0.5, math.sqrt(3) / 2
    np.testing.assert_allclose(rot[0], [[0, 1, 0], [s, 0, -c], [-c, 0, -s]], atol=1e-12)
    np.testing.assert_allclose(rot[1], [[-1, 0, 0], [0, s, -c], [0, -c, -s]], atol=1e-12)


def test_default_config_full_size_sanity():
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(2000, 3)).astype(np.float32)
    out = project_depth_views(pts)
    assert out.shape == (1, 10, 224, 224)
    assert float(out.min()) == 0.0 and float(out.max()) == 1.0
    # the object fills object_ratio of the larger image extent: columns 22..201 at most
    dark = (out[0] < 1.0).any(dim=1)
    assert not dark[:, :15].any() and not dark[:, 210:].any()


@pytest.mark.parametrize('bad, error, message', [
    (np.zeros((0, 3), np.float32), ValueError, r'points must have shape \(N, 3\)'),
    (np.full((5, 3), np.nan, np.float32), ValueError, 'points has 5 non-finite rows'),
    (np.zeros((5, 2), np.float32), ValueError, r'got \(5, 2\)'),
    (np.zeros((5, 3), np.int64), TypeError, 'floating-point array'),
    (torch.zeros(5, 3, dtype=torch.int32), TypeError, 'floating-point tensor'),
    ([], ValueError, 'empty sequence'),
    ('cloud.ply', TypeError, 'points must be'),
    ([np.zeros((4, 3), np.float32), np.zeros((4, 4), np.float32)], ValueError, r'points\[1\]'),
])
def test_bad_inputs(bad, error, message):
    with pytest.raises(error, match=message):
        project_depth_views(bad, ProjectionConfig(resolution=16))


def test_bad_config_type():
    with pytest.raises(TypeError, match='config must be a ProjectionConfig'):
        project_depth_views(np.zeros((3, 3), np.float32), {'resolution': 16})


def test_views_to_images_and_png(tmp_path):
    views = torch.rand(2, 3, 8, 8)
    images = views_to_images(views)
    assert images.shape == (2, 3, 3, 8, 8)
    for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        torch.testing.assert_close(images[:, :, c], (views - m) / s)
    with pytest.raises(TypeError, match='views'):
        views_to_images(np.zeros((3, 8, 8)))

    from PIL import Image

    path = save_views_png(views[0], tmp_path / 'sub' / 'views.png', ncols=2)
    img = np.asarray(Image.open(path))
    assert img.shape == (2 * 8 + 3 * 4, 2 * 8 + 3 * 4)
    expected = np.clip(views[0, 2].numpy() * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(img[16:24, 4:12], expected)     # view 2: row 1, column 0
    with pytest.raises(ValueError, match='views must be'):
        save_views_png(views, tmp_path / 'x.png')


def test_realistic_shape_and_range():
    rng = np.random.default_rng(1)
    clouds = [rng.normal(size=(500, 3)).astype(np.float32) for _ in range(2)]
    out = project_depth_views(clouds, ProjectionConfig(method='realistic', resolution=64))
    assert out.shape == (2, 10, 64, 64)
    assert float(out.min()) >= 0.0 and float(out.max()) == 1.0
    assert float(out.amin(dim=(2, 3)).max()) < 0.05       # every view has a near, dark spot


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs CUDA')
def test_cuda_matches_cpu():
    rng = np.random.default_rng(2)
    clouds = [rng.normal(size=(3000, 3)).astype(np.float32) for _ in range(3)]
    for cfg in (ProjectionConfig(), ProjectionConfig(depth_bins=12, resolution=64),
                ProjectionConfig(method='realistic')):
        cpu = project_depth_views(clouds, cfg)
        gpu = project_depth_views(clouds, cfg, device='cuda')
        assert gpu.device.type == 'cuda'
        torch.testing.assert_close(gpu.cpu(), cpu, atol=1e-4, rtol=0)


def test_line_seen_end_on_projects_to_one_pixel():
    # A line along x seen from +x: a = b = 0 for every point (s = 0 -> 1), so all points land in
    # pixel (4, 4); the nearest one (bin 0, nearness 1) wins.
    line = np.stack([np.linspace(-1, 1, 9), np.zeros(9), np.zeros(9)], axis=1).astype(np.float32)
    cfg = ProjectionConfig(resolution=8, depth_bins=4, densify_kernel=1, bilateral_kernel=1,
                           **FRONT)
    expected = np.ones((8, 8))
    expected[4, 4] = 0.0
    np.testing.assert_allclose(project_depth_views(line, cfg)[0, 0].numpy(), expected, atol=1e-6)


def test_num_threads_is_restored():
    before = torch.get_num_threads()
    cfg = ProjectionConfig(resolution=16, num_threads=1)
    project_depth_views(np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32), cfg)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match='num_threads'):
        ProjectionConfig(num_threads=-1)


@pytest.mark.parametrize('kernel', [1, 3, 5, 7, 9])
@pytest.mark.parametrize('op', ['or', 'and'])
def test_window_bits_matches_a_plain_window(kernel, op):
    # The log-step window equals the plain OR/AND over the kernel x kernel window with zero
    # padding, for uint8 and int16 masks.
    rng = np.random.default_rng(7)
    for dtype in (np.uint8, np.int16):
        masks = rng.integers(0, 256, (2, 9, 11)).astype(dtype)
        masks[masks < 60] = 0
        half = kernel // 2
        pad = np.pad(masks, ((0, 0), (half, half), (half, half)))
        combine = np.bitwise_or if op == 'or' else np.bitwise_and
        want = pad[:, 0:9, 0:11].copy()
        for dy in range(kernel):
            for dx in range(kernel):
                want = combine(want, pad[:, dy:dy + 9, dx:dx + 11])
        got = _window_bits(torch.from_numpy(masks), kernel, op)
        assert got.dtype == torch.from_numpy(masks).dtype
        np.testing.assert_array_equal(got.numpy(), want)


def test_lut_indexes_with_narrow_dtypes():
    table = torch.tensor([0.5, 1.5, 2.5, 3.5])
    index = torch.tensor([[3, 0], [1, 1]], dtype=torch.uint8)
    np.testing.assert_array_equal(_lut(table, index).numpy(), [[3.5, 0.5], [1.5, 1.5]])
    np.testing.assert_array_equal(_lut(table, index.to(torch.int16)).numpy(),
                                  [[3.5, 0.5], [1.5, 1.5]])
