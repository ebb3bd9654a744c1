"""ScanNet format: writer -> reader round trip, alignment, labels, frames, PLY parsing."""

import json
import math

import numpy as np
import pytest

from opendlign_core.scannet import (
    list_scenes,
    read_frames,
    read_label_map,
    read_ply_vertices,
    read_scannet_scene,
    write_frames,
    write_label_map,
    write_scannet_scene,
)


def _write(tmp_path, n=600):
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 1, (n, 3)).astype(np.float32)
    ids = np.repeat([-1, 0, 1], n // 3)
    pts[ids == 1] += [2, 0, 0]
    yaw = math.pi / 6
    align = np.eye(4)
    align[:3, :3] = [[math.cos(yaw), -math.sin(yaw), 0], [math.sin(yaw), math.cos(yaw), 0],
                     [0, 0, 1]]
    align[:3, 3] = [1, 2, 0.5]
    scan = (pts - align[:3, 3]) @ align[:3, :3]  # inverse of the alignment
    colors = rng.integers(0, 255, (n, 3), dtype=np.uint8)
    write_label_map(tmp_path / 'scannetv2-labels.combined.tsv',
                    {'trash can': 39, 'kitchen chair': 5, 'wall': 1})
    scene_dir = tmp_path / 'scene0007_00'
    write_scannet_scene(scene_dir, scan, ids, {0: 'kitchen chair', 1: 'trash can'}, colors,
                        align, {0: 'chair', 1: 'garbage bin'})
    return scene_dir, pts, ids, colors


def test_round_trip(tmp_path):
    scene_dir, pts, ids, colors = _write(tmp_path)
    scene = read_scannet_scene(scene_dir)
    assert scene.scene_id == 'scene0007_00'
    np.testing.assert_allclose(scene.points, pts, atol=1e-5)
    np.testing.assert_array_equal(scene.colors, colors)
    np.testing.assert_array_equal(scene.instance_ids, ids)
    chair, bin_ = scene.instances
    assert (chair.raw_label, chair.nyu40_id, chair.scannet18) == ('kitchen chair', 5, 'chair')
    assert (bin_.nyu40_id, bin_.scannet18, bin_.scannet18_semantic) == (39, 'garbage bin',
                                                                         'garbage bin')
    np.testing.assert_allclose(chair.box.center, (pts[ids == 0].min(0) + pts[ids == 0].max(0)) / 2,
                               atol=1e-5)
    assert list_scenes(tmp_path) == [scene_dir]
    raw = read_scannet_scene(scene_dir, align=False)
    assert not np.allclose(raw.points, pts, atol=1e-3)


def test_small_instances_get_no_box(tmp_path):
    scene_dir, _, _, _ = _write(tmp_path, n=90)  # 30 points per instance < 50
    assert all(i.box is None for i in read_scannet_scene(scene_dir).instances)


def test_real_scannet_style_files(tmp_path):
    # Hand-written files as ScanNet ships them: ascii PLY with faces, a full TSV header.
    d = tmp_path / 'scene0000_00'
    d.mkdir()
    (d / 'scene0000_00_vh_clean_2.ply').write_text(
        'ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\n'
        'property float z\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n'
        'property uchar alpha\nelement face 1\nproperty list uchar int vertex_indices\n'
        'end_header\n0 0 0 1 2 3 255\n1 0 0 4 5 6 255\n0 1 2 7 8 9 255\n3 0 1 2\n')
    (d / 'scene0000_00_vh_clean_2.0.010000.segs.json').write_text(
        json.dumps({'segIndices': [5, 5, 9]}))
    (d / 'scene0000_00.aggregation.json').write_text(json.dumps({'segGroups': [
        {'id': 0, 'objectId': 0, 'segments': [5], 'label': 'sofa'},
        {'id': 1, 'objectId': 1, 'segments': [9], 'label': 'bookcase'}]}))
    (d / 'scene0000_00.txt').write_text('axisAlignment = 1 0 0 10 0 1 0 0 0 0 1 0 0 0 0 1\n')
    (tmp_path / 'scannetv2-labels.combined.tsv').write_text(
        'id\traw_category\tcategory\tcount\tnyuId\tnyuClass\tnyu40id\tnyu40class\n'
        '1\tsofa\tsofa\t10\t83\tsofa\t6\tsofa\n2\tbookcase\tbookshelf\t3\t88\tbookshelf\t10\tb\n')
    scene = read_scannet_scene(d)
    np.testing.assert_allclose(scene.points[:, 0], [10, 11, 10])
    assert [i.scannet18 for i in scene.instances] == ['sofa', 'bookshelf']
    assert scene.instances[0].point_indices.tolist() == [0, 1]
    assert read_label_map(tmp_path / 'scannetv2-labels.combined.tsv')['sofa'] == 6
    assert read_ply_vertices(d / 'scene0000_00_vh_clean_2.ply')['red'].tolist() == [1, 4, 7]


def test_frames_round_trip(tmp_path):
    depth = np.zeros((4, 5), np.float32)
    depth[1, 2] = 1.234
    depth[3, 4] = 2.0
    pose = np.eye(4)
    pose[:3, 3] = [1, 2, 3]
    k = np.array([[2.0, 0, 2], [0, 2.0, 1.5], [0, 0, 1]])
    inst = np.full((4, 5), -1)
    inst[1, 2] = 7
    write_frames(tmp_path, [depth], [pose], k, [inst])
    (frame,) = list(read_frames(tmp_path))
    np.testing.assert_allclose(frame.depth, depth, atol=5e-4)
    assert frame.instance[1, 2] == 7 and frame.instance[0, 0] == -1
    pts = frame.points()
    # Pixel (u=2, v=1) at z=1.234: x = (2-2)/2*z, y = (1-1.5)/2*z.
    np.testing.assert_allclose(pts[0], [1 + 0, 2 - 0.25 * 1.234, 3 + 1.234], atol=1e-5)


def test_missing_files_raise(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_scannet_scene(tmp_path / 'scene9999_00')
    bad = tmp_path / 'x.ply'
    bad.write_text('not a ply')
    with pytest.raises(ValueError, match='PLY'):
        read_ply_vertices(bad)
