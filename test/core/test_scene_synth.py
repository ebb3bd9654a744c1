"""Synthetic scenes: needs the Sweet Home 3D cache (skips with a reason otherwise)."""

import numpy as np
import pytest

from opendlign_core import sh3d
from opendlign_core.scannet import list_scenes, read_frames, read_scannet_scene
from opendlign_core.scene_synth import SynthConfig, write_synth_scenes

pytestmark = pytest.mark.skipif(
    not sh3d.sh3d_available(),
    reason=f'Sweet Home 3D cache missing at {sh3d.default_cache_dir()} (run sh3d.fetch_sh3d())')

TINY = SynthConfig(num_views=3, image_size=(160, 120), num_objects=(3, 3), fusion_voxel=0.04)


def test_scene_written_read_and_deterministic(tmp_path):
    a = write_synth_scenes(tmp_path / 'a', 'train', 1, seed=3, config=TINY)
    b = write_synth_scenes(tmp_path / 'b', 'train', 1, seed=3, config=TINY)
    sa, sb = read_scannet_scene(a[0]), read_scannet_scene(b[0])
    np.testing.assert_array_equal(sa.points, sb.points)
    assert list_scenes(tmp_path / 'a') == a
    labels = {i.raw_label for i in sa.instances}
    assert {'floor', 'wall'} <= labels
    objects = [i for i in sa.instances if not i.is_structure]
    assert 2 <= len(objects)
    # Aligned frame: floor at z ~ 0, room within the walls.
    floor = next(i for i in sa.instances if i.raw_label == 'floor')
    assert abs(float(np.median(sa.points[floor.point_indices, 2]))) < 0.02
    # Every labelled object carries a semantic ScanNet-18 class from the train split.
    train_classes = {r.scannet18 for r in sh3d.load_labels('train')}
    assert all(o.scannet18_semantic in train_classes for o in objects)
    frames = list(read_frames(a[0]))
    assert len(frames) == 3
    # Frame points land on the fused cloud (both in the scan frame before alignment).
    raw = read_scannet_scene(a[0], align=False).points
    from scipy.spatial import cKDTree
    d, _ = cKDTree(raw).query(frames[0].points()[::50])
    assert np.median(d) < 0.03


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='split'):
        write_synth_scenes(tmp_path, 'test', 1, 0, TINY)
    with pytest.raises(ValueError, match='count'):
        write_synth_scenes(tmp_path, 'eval', 0, 0, TINY)
