"""Tests of opendlign_core.pointcloud: loaders (round trips for every format) and array helpers."""

import numpy as np
import pytest

from opendlign_core.pointcloud import (
    MESH_SAMPLE_POINTS,
    bounds,
    clean_points,
    load_point_cloud,
    load_point_colors,
    normalize_points,
    sample_points,
    to_z_up,
)


@pytest.fixture
def cloud():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 3)).astype(np.float32)


def test_npy_round_trip_drops_extra_columns(tmp_path, cloud):
    path = tmp_path / 'c.npy'
    np.save(path, np.concatenate([cloud, np.ones((50, 3), np.float32)], axis=1))
    out = load_point_cloud(path)
    assert out.dtype == np.float32 and out.shape == (50, 3)
    np.testing.assert_array_equal(out, cloud)


@pytest.mark.parametrize('key', ['points', 'xyz', 'anything'])
def test_npz_round_trip(tmp_path, cloud, key):
    path = tmp_path / 'c.npz'
    np.savez(path, **{key: cloud.astype(np.float64)})
    np.testing.assert_array_equal(load_point_cloud(path), cloud)


def test_npz_prefers_points_key_and_rejects_ambiguous(tmp_path, cloud):
    path = tmp_path / 'two.npz'
    np.savez(path, labels=np.zeros((50, 3)), points=cloud)
    np.testing.assert_array_equal(load_point_cloud(path), cloud)
    bad = tmp_path / 'bad.npz'
    np.savez(bad, a=cloud, b=cloud)
    with pytest.raises(ValueError, match='bad.npz'):
        load_point_cloud(bad)


@pytest.mark.parametrize('suffix, sep', [('.txt', ' '), ('.xyz', '\t'), ('.csv', ',')])
def test_text_round_trip(tmp_path, cloud, suffix, sep):
    path = tmp_path / f'c{suffix}'
    normals = np.zeros_like(cloud)
    np.savetxt(path, np.concatenate([cloud, normals], axis=1), delimiter=sep, fmt='%.9g')
    np.testing.assert_allclose(load_point_cloud(path), cloud, rtol=0, atol=1e-6)


def test_text_with_two_columns_is_rejected(tmp_path):
    path = tmp_path / 'flat.txt'
    path.write_text('1 2\n3 4\n')
    with pytest.raises(ValueError, match='columns'):
        load_point_cloud(path)


@pytest.mark.parametrize('suffix', ['.ply', '.pcd'])
def test_open3d_point_cloud_round_trip(tmp_path, cloud, suffix):
    import open3d as o3d

    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
    path = tmp_path / f'c{suffix}'
    assert o3d.io.write_point_cloud(str(path), pcd)
    np.testing.assert_allclose(load_point_cloud(path), cloud, atol=1e-6)


@pytest.mark.parametrize('suffix', ['.ply', '.pcd'])
def test_open3d_point_colors_round_trip(tmp_path, cloud, suffix):
    import open3d as o3d

    rgb = np.random.default_rng(1).integers(0, 256, (len(cloud), 3)).astype(np.uint8)
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(cloud.astype(np.float64)))
    path = tmp_path / f'plain{suffix}'
    assert o3d.io.write_point_cloud(str(path), pcd)
    assert load_point_colors(path) is None
    pcd.colors = o3d.utility.Vector3dVector(rgb / 255.0)
    path = tmp_path / f'c{suffix}'
    assert o3d.io.write_point_cloud(str(path), pcd)
    np.testing.assert_array_equal(load_point_colors(path), rgb)
    np.save(tmp_path / 'c.npy', cloud)
    assert load_point_colors(tmp_path / 'c.npy') is None
    with pytest.raises(FileNotFoundError):
        load_point_colors(tmp_path / 'missing.ply')


@pytest.mark.parametrize('suffix', ['.obj', '.off', '.ply'])
def test_mesh_is_surface_sampled(tmp_path, suffix):
    import trimesh

    box = trimesh.creation.box(extents=(2.0, 4.0, 6.0))
    path = tmp_path / f'box{suffix}'
    box.export(path)
    out = load_point_cloud(path)
    assert out.shape == (MESH_SAMPLE_POINTS, 3) and out.dtype == np.float32
    half = np.array([1.0, 2.0, 3.0])
    assert np.all(np.abs(out) <= half + 1e-5)
    # every sample lies on a face: at least one coordinate is at +-half
    on_face = np.isclose(np.abs(out), half, atol=1e-4).any(axis=1)
    assert on_face.all()
    np.testing.assert_array_equal(out, load_point_cloud(path))   # fixed seed


def test_missing_file_and_bad_suffix(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.npy'):
        load_point_cloud(tmp_path / 'nope.npy')
    path = tmp_path / 'c.foo'
    path.write_text('1 2 3\n')
    with pytest.raises(ValueError, match=r'\.foo'):
        load_point_cloud(path)


def test_npy_wrong_shape(tmp_path):
    path = tmp_path / 'flat.npy'
    np.save(path, np.zeros((10, 2)))
    with pytest.raises(ValueError, match=r'\(10, 2\)'):
        load_point_cloud(path)


def test_clean_points_drops_non_finite_rows_in_order():
    pts = np.array([[0, 0, 0], [np.nan, 1, 1], [1, 2, 3], [np.inf, 0, 0], [4, 5, 6]], float)
    out = clean_points(pts)
    assert out.dtype == np.float64
    assert clean_points(pts.astype(np.float32)).dtype == np.float32
    np.testing.assert_array_equal(out, [[0, 0, 0], [1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize('pts, message', [
    (np.zeros((0, 3)), 'no finite row'),
    (np.full((4, 3), np.nan), 'no finite row'),
    (np.ones((5, 3)), 'degenerate'),
    (np.zeros((5, 2)), r'shape \(N, 3\)'),
])
def test_clean_points_rejects(pts, message):
    with pytest.raises(ValueError, match=message):
        clean_points(pts)


def test_clean_points_rejects_non_numeric():
    with pytest.raises(TypeError, match='points'):
        clean_points(np.array([['a', 'b', 'c']]))


def test_normalize_points_hand_case():
    out = normalize_points(np.array([[0, 0, 0], [2, 0, 0], [0, 2, 0]], np.float32))
    # bbox centre (1, 1, 0); centred points (-1,-1,0), (1,-1,0), (-1,1,0); radius sqrt(2)
    s = 1.0 / np.sqrt(2.0)
    np.testing.assert_allclose(out, [[-s, -s, 0], [s, -s, 0], [-s, s, 0]], atol=1e-7)
    with pytest.raises(ValueError, match='degenerate'):
        normalize_points(np.ones((3, 3)))


def test_sample_points_without_and_with_replacement(cloud):
    sub = sample_points(cloud, 20, seed=1)
    assert sub.shape == (20, 3)
    assert len({tuple(p) for p in sub}) == 20
    np.testing.assert_array_equal(sub, sample_points(cloud, 20, seed=1))
    sup = sample_points(cloud, 120, seed=1)
    assert sup.shape == (120, 3)
    assert {tuple(p) for p in cloud} == {tuple(p) for p in sup}
    with pytest.raises(ValueError, match='n must be >= 1'):
        sample_points(cloud, 0)
    with pytest.raises(TypeError, match='n must be an integer'):
        sample_points(cloud, 2.5)


def test_to_z_up():
    pts = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float32)
    np.testing.assert_allclose(to_z_up(pts, 'y'), [[0, 0, 1], [1, 0, 0], [0, -1, 0]], atol=1e-7)
    np.testing.assert_allclose(to_z_up(pts, '-y')[0], [0, 0, -1], atol=1e-7)
    np.testing.assert_allclose(to_z_up(pts, 'x')[1], [0, 0, 1], atol=1e-7)
    np.testing.assert_array_equal(to_z_up(pts, 'z'), pts)
    with pytest.raises(ValueError, match='up_axis'):
        to_z_up(pts, 'w')


# ---- double precision far from the origin (issue 10 item 2) ------------------------------------

UTM = np.array([[500000.123456789, 5000000.987654321, 12.345678901],
                [-500123.000001, -5000000.5, -0.000001],
                [500001.5, 5000002.25, 3.0]])
UTM_RGB = np.array([[255, 10, 20], [0, 200, 3], [7, 8, 9]], np.uint8)


def write_ply(path, points, colors=None, xyz_type='double'):
    """Write a binary little-endian PLY vertex list (optionally with uchar colours)."""
    kind = {'double': '<f8', 'float': '<f4'}[xyz_type]
    fields = [('x', kind), ('y', kind), ('z', kind)]
    props = [f'property {xyz_type} {n}' for n in 'xyz']
    if colors is not None:
        fields += [('red', 'u1'), ('green', 'u1'), ('blue', 'u1')]
        props += [f'property uchar {n}' for n in ('red', 'green', 'blue')]
    table = np.zeros(len(points), dtype=fields)
    for i, n in enumerate('xyz'):
        table[n] = points[:, i]
    if colors is not None:
        for i, n in enumerate(('red', 'green', 'blue')):
            table[n] = colors[:, i]
    header = '\n'.join(['ply', 'format binary_little_endian 1.0',
                        f'element vertex {len(points)}', *props, 'end_header']) + '\n'
    path.write_bytes(header.encode() + table.tobytes())


def write_pcl_pcd(path, points, colors):
    """Write a PCL-style binary PCD: double x y z, a 4-byte '_' padding field, packed rgb."""
    table = np.zeros(len(points), dtype=[('x', '<f8'), ('y', '<f8'), ('z', '<f8'),
                                         ('_', '<u4'), ('rgb', '<u4')])
    for i, n in enumerate('xyz'):
        table[n] = points[:, i]
    c = colors.astype(np.uint32)
    table['rgb'] = (c[:, 0] << 16) | (c[:, 1] << 8) | c[:, 2]
    header = '\n'.join([
        '# .PCD v0.7', 'VERSION 0.7', 'FIELDS x y z _ rgb', 'SIZE 8 8 8 4 4', 'TYPE F F F U U',
        'COUNT 1 1 1 1 1', f'WIDTH {len(points)}', 'HEIGHT 1', 'VIEWPOINT 0 0 0 1 0 0 0',
        f'POINTS {len(points)}', 'DATA binary']) + '\n'
    path.write_bytes(header.encode() + table.tobytes())


def test_double_ply_keeps_float64_exactly(tmp_path):
    write_ply(tmp_path / 'utm.ply', UTM, UTM_RGB)
    out = load_point_cloud(tmp_path / 'utm.ply')
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, UTM)
    np.testing.assert_array_equal(load_point_colors(tmp_path / 'utm.ply'), UTM_RGB)
    # A float PLY stays float32 (no pretend precision).
    write_ply(tmp_path / 'f.ply', np.full((3, 3), 1.5), xyz_type='float')
    out = load_point_cloud(tmp_path / 'f.ply')
    assert out.dtype == np.float32 and out.tolist() == [[1.5, 1.5, 1.5]] * 3


def test_pcl_double_pcd_with_padding_field_keeps_float64_and_colours(tmp_path):
    # open3d's legacy reader returned all zeros for this file.
    write_pcl_pcd(tmp_path / 'utm.pcd', UTM, UTM_RGB)
    out = load_point_cloud(tmp_path / 'utm.pcd')
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, UTM)
    np.testing.assert_array_equal(load_point_colors(tmp_path / 'utm.pcd'), UTM_RGB)


@pytest.mark.parametrize('values,dtype,expected', [
    (UTM, np.float64, np.float64),
    (UTM, np.float32, np.float32),
    ([[500000001, -5000000001, 7]], np.int64, np.float64),    # not exact in float32
    ([[500000001, -500000001, 7]], np.int32, np.float64),
    ([[1, -2, 3], [4, 5, -6]], np.int16, np.float32),
    ([[1.5, -2.25, 3.0]], np.float16, np.float32)])
def test_npy_keeps_what_float32_cannot_hold(tmp_path, values, dtype, expected):
    arr = np.asarray(values).astype(dtype)
    np.save(tmp_path / 'c.npy', arr)
    out = load_point_cloud(tmp_path / 'c.npy')
    assert out.dtype == expected
    np.testing.assert_array_equal(out, arr.astype(np.float64))
    np.savez(tmp_path / 'c.npz', points=arr)
    np.testing.assert_array_equal(load_point_cloud(tmp_path / 'c.npz'), out)


def test_text_table_far_from_origin_keeps_decimals(tmp_path):
    path = tmp_path / 'utm.xyz'
    path.write_text('500000.123456789 5000000.987654321 12.345678901\n'
                    '-500123.000001 -5000000.5 -0.000001\n'
                    '500001.5 5000002.25 3.0\n')
    out = load_point_cloud(path)
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, UTM)


def test_double_colours_beside_double_xyz(tmp_path):
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(UTM))
    cloud.point.colors = o3d.core.Tensor(np.array([[1.0, 0.5, 0.0], [0.2, 0.999, 0.001],
                                                   [0.0, 0.0, 1.0]]))
    path = tmp_path / 'c.ply'
    assert o3d.t.io.write_point_cloud(str(path), cloud)
    assert b'property double red' in path.read_bytes()[:400]
    np.testing.assert_array_equal(load_point_cloud(path), UTM)
    # rint(255 * value): 127.5 -> 128 (ties to even), 51.0, 254.745 -> 255, 0.255 -> 0.
    np.testing.assert_array_equal(load_point_colors(path),
                                  [[255, 128, 0], [51, 255, 0], [0, 0, 255]])


def test_clean_points_and_to_z_up_keep_float64_far_from_the_origin():
    # A 1 cm object at UTM-like coordinates: float32 would round x to a multiple of 0.5 m.
    shift = np.array([500000.0, 5000000.0, 0.0])
    obj = np.array([[0.0, 0.0, 0.0], [0.01, 0.0, 0.0], [0.0, 0.01, 0.02], [np.nan, 0, 0]])
    out = clean_points(obj + shift)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out - shift, obj[:3], rtol=0, atol=1e-9)
    up = to_z_up(out, 'y')
    assert up.dtype == np.float64
    np.testing.assert_allclose(up[2] - up[0], [0.0, -0.02, 0.01], atol=1e-9)
    assert clean_points(obj.astype(np.float32)).dtype == np.float32
    assert to_z_up(np.ones((2, 3), np.int64), 'z').dtype == np.float32


@pytest.mark.parametrize('dtype', [np.float32, np.float64, np.int64])
def test_bounds_are_the_per_axis_min_and_max(dtype):
    pts = np.array([[1, -2, 3], [-4, 5, 0], [2, 2, -7]], dtype=dtype)
    lo, hi = bounds(pts)
    assert lo.dtype == hi.dtype == dtype
    assert lo.tolist() == [-4, -2, -7] and hi.tolist() == [2, 5, 3]
    far = np.random.default_rng(0).normal(5e6, 1.0, (1000, 3))
    np.testing.assert_array_equal(bounds(far)[0], far.min(axis=0))
    with pytest.raises(ValueError, match='N >= 1'):
        bounds(np.zeros((0, 3)))
