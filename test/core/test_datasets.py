"""Tests of the released depth-map reader and the point-cloud folder reader."""

import numpy as np
import pytest

from opendlign_core.datasets import (
    DepthMapDataset,
    PointCloudFolder,
    dataset_labels,
    default_templates,
    parse_depth_map_name,
    reduce_channels,
)


def _views(value, shape=(10, 8, 8), channels=3):
    v = np.full(shape, value, np.float32)
    return np.repeat(v[..., None], channels, axis=-1)


def _write(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / name, array)


@pytest.fixture
def released(tmp_path):
    folder = tmp_path / 'modelnet40' / 'depth_map'
    # deliberately out of index order and with an underscore class name
    _write(folder, '10+flower_pot_dm.npy', _views(0.3))
    _write(folder, '2+airplane_dm.npy', _views(0.1))
    _write(folder, '7+airplane_dm.npy', _views(0.2))
    (folder / 'notes.txt').write_text('ignored')
    return tmp_path


def test_class_lists_from_spec():
    assert len(dataset_labels('modelnet40')) == 40
    assert dataset_labels('modelnet40')[15] == 'flower pot'
    assert dataset_labels('scanobjectnn') == (
        'bag', 'bin', 'box', 'cabinet', 'chair', 'desk', 'display', 'door', 'shelf', 'table',
        'bed', 'pillow', 'sink', 'sofa', 'toilet')
    omni = dataset_labels('OmniObject3D')
    assert len(omni) == len(set(omni)) == 216
    assert 'ornament' in omni and 'ornaments' in omni
    assert (omni[0], omni[-1]) == ('dumpling', 'pomegranate')
    with pytest.raises(ValueError, match='no bundled class list'):
        dataset_labels('ModelNet40')
    assert default_templates('scanobjectnn') == 'depth-scanobjectnn'
    assert default_templates('modelnet40') == 'depth'


def test_parse_names():
    assert parse_depth_map_name('1009+flower_pot_dm.npy') == (1009, 'flower pot')
    assert parse_depth_map_name('/a/b/0+hammer_dm.npy') == (0, 'hammer')
    assert parse_depth_map_name('3+a+b_dm.npy') == (3, 'a+b')
    with pytest.raises(ValueError, match="has no '\\+'"):
        parse_depth_map_name('12_chair_dm.npy')
    with pytest.raises(ValueError, match='does not end in'):
        parse_depth_map_name('1+chair.npy')
    with pytest.raises(ValueError, match='non-integer index'):
        parse_depth_map_name('x+chair_dm.npy')
    with pytest.raises(ValueError, match='empty class'):
        parse_depth_map_name('1+_dm.npy')


def test_released_reader(released):
    ds = DepthMapDataset.from_root(released, 'modelnet40')
    assert ds.name == 'modelnet40' and len(ds.labels) == 40
    assert [s.path.name for s in ds.samples] == [
        '2+airplane_dm.npy', '7+airplane_dm.npy', '10+flower_pot_dm.npy']
    np.testing.assert_array_equal(ds.targets, [0, 0, 15])
    views, target = ds[2]
    assert views.shape == (10, 8, 8) and views.dtype == np.float32 and target == 15
    assert views[0, 0, 0] == pytest.approx(0.3)
    batches = list(ds.batches(2))
    assert [b[0].shape for b in batches] == [(2, 10, 8, 8), (1, 10, 8, 8)]
    np.testing.assert_array_equal(batches[0][1], [0, 0])
    np.testing.assert_allclose(batches[0][0][:, 0, 0, 0], [0.1, 0.2])


def test_other_folder_uses_sorted_labels_and_limit(tmp_path):
    folder = tmp_path / 'toy' / 'depth_map'
    for i, label in enumerate(['zebra', 'apple', 'mango', 'apple', 'zebra', 'mango']):
        _write(folder, f'{i}+{label}_dm.npy', _views(0.5))
    ds = DepthMapDataset.from_root(tmp_path, 'toy')
    assert ds.labels == ('apple', 'mango', 'zebra')
    np.testing.assert_array_equal(ds.targets, [2, 0, 1, 0, 2, 1])
    sub = DepthMapDataset(folder, limit=3)
    assert [s.path.name.split('+')[0] for s in sub.samples] == ['0', '2', '5']
    assert sub.labels == ds.labels
    with pytest.raises(ValueError, match='limit must be'):
        DepthMapDataset(folder, limit=0)


def test_memory_mapped(released, monkeypatch):
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get('mmap_mode'))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, 'load', spy)
    DepthMapDataset.from_root(released, 'modelnet40').load_views(0)
    assert calls == ['r']


def test_reader_errors(tmp_path, released):
    with pytest.raises(FileNotFoundError, match="datasets under .*: \\['modelnet40'\\]"):
        DepthMapDataset.from_root(released, 'scanobjectnn')
    with pytest.raises(FileNotFoundError, match='does not exist'):
        DepthMapDataset(tmp_path / 'nope')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(FileNotFoundError, match='holds no'):
        DepthMapDataset(tmp_path / 'empty')
    _write(released / 'modelnet40' / 'depth_map', '11+spaceship_dm.npy', _views(0.1))
    with pytest.raises(ValueError, match="\\['spaceship'\\] are not in the class list"):
        DepthMapDataset.from_root(released, 'modelnet40')

    bad = tmp_path / 'bad' / 'depth_map'
    _write(bad, '0+cup_dm.npy', np.zeros((10, 8, 8, 2), np.float32))
    _write(bad, '1+cup_dm.npy', _views(0.5, shape=(10, 8, 8)))
    _write(bad, '2+cup_dm.npy', _views(0.5, shape=(10, 4, 4)))
    _write(bad, '3+cup_dm.npy', np.zeros((10, 8, 8, 3), np.uint8))
    nan = _views(0.5)
    nan[0, 0, 0] = np.nan
    _write(bad, '4+cup_dm.npy', nan)
    (bad / '5+cup_dm.npy').write_bytes(b'not a numpy file')
    ds = DepthMapDataset(bad)
    with pytest.raises(ValueError, match=r'has shape \(10, 8, 8, 2\)'):
        ds.load_views(0)
    ds.load_views(1)
    with pytest.raises(ValueError, match='other files have'):
        ds.load_views(2)
    with pytest.raises(ValueError, match='dtype uint8'):
        ds.load_views(3)
    with pytest.raises(ValueError, match='non-finite'):
        ds.load_views(4)
    with pytest.raises(ValueError, match='could not read'):
        ds.load_views(5)
    with pytest.raises(ValueError, match='batch_size'):
        next(ds.batches(0))


def test_reduce_channels():
    same = _views(0.25, shape=(2, 3, 3))
    np.testing.assert_array_equal(reduce_channels(same), np.full((2, 3, 3), 0.25, np.float32))
    diff = np.stack([np.full((2, 3, 3), x, np.float32) for x in (0.0, 0.3, 0.6)], axis=-1)
    np.testing.assert_allclose(reduce_channels(diff), 0.3, rtol=1e-6)
    np.testing.assert_allclose(reduce_channels(diff, 'mean'), 0.3, rtol=1e-6)
    np.testing.assert_array_equal(reduce_channels(diff, 'first'), 0.0)
    with pytest.raises(ValueError, match='channels differ by up to 0.6'):
        reduce_channels(diff, 'strict')
    assert reduce_channels(np.zeros((2, 3, 3)), 'strict').shape == (2, 3, 3)
    assert reduce_channels(np.zeros((2, 3, 3, 1))).shape == (2, 3, 3)
    with pytest.raises(ValueError, match='mode must be'):
        reduce_channels(same, 'avg')
    with pytest.raises(ValueError, match='must have shape'):
        reduce_channels(np.zeros((3, 3)))


def test_point_cloud_folder(tmp_path):
    rng = np.random.default_rng(0)
    pts = rng.normal(size=(50, 3)).astype(np.float32)
    (tmp_path / 'flower_pot').mkdir()
    (tmp_path / 'chair').mkdir()
    (tmp_path / 'empty_class').mkdir()
    np.save(tmp_path / 'flower_pot' / 'b.npy', pts)
    np.savetxt(tmp_path / 'flower_pot' / 'a.xyz', pts)
    np.save(tmp_path / 'chair' / 'c.npy', pts[:20])
    (tmp_path / 'chair' / 'readme.md').write_text('skip me')
    ds = PointCloudFolder(tmp_path)
    assert ds.labels == ('chair', 'flower pot')
    assert [s.path.name for s in ds.samples] == ['c.npy', 'a.xyz', 'b.npy']
    np.testing.assert_array_equal(ds.targets, [0, 1, 1])
    points, target = ds[1]
    assert target == 1 and points.shape == (50, 3) and points.dtype == np.float32
    np.testing.assert_allclose(points, pts, atol=1e-5)
    clouds, targets = next(ds.batches(2))
    assert [c.shape for c in clouds] == [(20, 3), (50, 3)]
    ds40 = PointCloudFolder(tmp_path, dataset_labels('modelnet40'))
    np.testing.assert_array_equal(ds40.targets, [8, 15, 15])
    with pytest.raises(ValueError, match='not in the class list'):
        PointCloudFolder(tmp_path, ['chair'])
    # Y-up files are rotated into z-up: (x, y, z) -> (x, -z, y).
    yup = PointCloudFolder(tmp_path, up_axis='y')
    np.testing.assert_allclose(yup.load_points(1), pts[:, [0, 2, 1]] * [1, -1, 1], atol=1e-5)
    with pytest.raises(ValueError, match='up_axis must be'):
        PointCloudFolder(tmp_path, up_axis='up')
    assert len(PointCloudFolder(tmp_path, extensions=('.npy',))) == 2


def test_point_cloud_folder_drops_non_finite_and_names_bad_files(tmp_path):
    (tmp_path / 'cup').mkdir()
    pts = np.array([[0, 0, 0], [1, 2, 3], [np.nan, 0, 0]], np.float32)
    np.save(tmp_path / 'cup' / 'a.npy', pts)
    np.save(tmp_path / 'cup' / 'b.npy', np.zeros((4, 3), np.float32))
    ds = PointCloudFolder(tmp_path)
    np.testing.assert_array_equal(ds.load_points(0), pts[:2])
    with pytest.raises(ValueError, match="b.npy'.*degenerate"):
        ds.load_points(1)


def test_point_cloud_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'):
        PointCloudFolder(tmp_path / 'missing')
    (tmp_path / 'cls').mkdir()
    (tmp_path / 'cls' / 'x.off').write_text('OFF')
    with pytest.raises(FileNotFoundError, match='holds no <class>/<file> point clouds'):
        PointCloudFolder(tmp_path)
