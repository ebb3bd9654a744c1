"""ScanNet format: writer -> reader round trip, alignment, labels, frames, PLY parsing."""

import json
import logging
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


# Real ScanNet folders: resolution pairing and data errata.

SID = 'scene0000_00'
TSV = {'chair': 5, 'table': 7, 'trash can': 39, 'wall': 1}


def _cluster(n, center, seed):
    rng = np.random.default_rng(seed)
    return (np.asarray(center) + rng.uniform(-0.25, 0.25, (n, 3))).astype(np.float32)


def _write_json(path, data):
    path.write_text(json.dumps(data))


def _two_resolutions(tmp_path, low_agg=True, high=True, high_agg=True):
    """
    Write a scene with both resolutions whose segment ids are swapped between them.

    Low-res: 120 vertices, chair = 0..59 (segment 10), table = 60..119 (segment 20).
    High-res: 240 vertices, table = 0..119 (segment 10), chair = 120..239 (segment 20).
    Read against the wrong segmentation, the chair gets the table's points (2.5 m off).
    """
    d = tmp_path / SID
    d.mkdir()
    from opendlign_core.scannet import write_ply_vertices
    chair_c, table_c = (0.0, 0.0, 0.5), (2.5, 0.0, 0.5)
    write_ply_vertices(d / f'{SID}_vh_clean_2.ply',
                       np.concatenate([_cluster(60, chair_c, 1), _cluster(60, table_c, 2)]))
    _write_json(d / f'{SID}_vh_clean_2.0.010000.segs.json',
                {'params': {'kThresh': '0.0001'}, 'sceneId': SID,
                 'segIndices': [10] * 60 + [20] * 60})
    groups = [{'id': 0, 'objectId': 0, 'segments': [10], 'label': 'chair'},
              {'id': 1, 'objectId': 1, 'segments': [20], 'label': 'table'}]
    if low_agg:
        _write_json(d / f'{SID}.aggregation.json', {
            'sceneId': f'scannet.{SID}', 'segGroups': groups,
            'segmentsFile': f'scannet.{SID}_vh_clean_2.0.010000.segs.json'})
    if high_agg:
        _write_json(d / f'{SID}_vh_clean.aggregation.json', {
            'sceneId': f'scannet.{SID}',
            'segGroups': [{'id': 0, 'objectId': 0, 'segments': [20], 'label': 'chair'},
                          {'id': 1, 'objectId': 1, 'segments': [10], 'label': 'table'}],
            'segmentsFile': f'scannet.{SID}_vh_clean.segs.json'})
    if high:
        write_ply_vertices(d / f'{SID}_vh_clean.ply',
                           np.concatenate([_cluster(120, table_c, 3), _cluster(120, chair_c, 4)]))
        _write_json(d / f'{SID}_vh_clean.segs.json',
                    {'sceneId': SID, 'segIndices': [10] * 120 + [20] * 120})
    (d / f'{SID}.txt').write_text('axisAlignment = 1 0 0 0 0 1 0 0 0 0 1 0 0 0 0 1\n')
    write_label_map(tmp_path / 'scannetv2-labels.combined.tsv', TSV)
    return d


def _by_label(scene):
    return {i.raw_label: i for i in scene.instances}


def _center(inst):
    return np.asarray(inst.box.center)


def test_low_res_aggregation_preferred_when_both_exist(tmp_path):
    scene = read_scannet_scene(_two_resolutions(tmp_path))
    assert scene.mesh_file == f'{SID}_vh_clean_2.ply' and len(scene.points) == 120
    inst = _by_label(scene)
    assert inst['chair'].point_indices.tolist() == list(range(60))
    assert inst['table'].point_indices.tolist() == list(range(60, 120))
    np.testing.assert_allclose(_center(inst['chair']), (0, 0, 0.5), atol=0.03)


def test_high_res_only_aggregation_uses_its_own_segments_and_mesh(tmp_path):
    # The old reader indexed this aggregation with the low-res segs: chair <-> table swapped.
    scene = read_scannet_scene(_two_resolutions(tmp_path, low_agg=False))
    assert scene.mesh_file == f'{SID}_vh_clean.ply' and len(scene.points) == 240
    inst = _by_label(scene)
    assert inst['chair'].point_indices.tolist() == list(range(120, 240))
    assert inst['table'].point_indices.tolist() == list(range(120))
    np.testing.assert_allclose(_center(inst['chair']), (0, 0, 0.5), atol=0.03)
    np.testing.assert_allclose(_center(inst['table']), (2.5, 0, 0.5), atol=0.03)
    assert (inst['chair'].nyu40_id, inst['chair'].scannet18) == (5, 'chair')
    np.testing.assert_array_equal(scene.instance_ids, [1] * 120 + [0] * 120)


def test_high_res_aggregation_without_its_segs_is_refused(tmp_path):
    d = _two_resolutions(tmp_path, low_agg=False, high=False)
    with pytest.raises(FileNotFoundError, match=f'{SID}_vh_clean.segs.json'):
        read_scannet_scene(d)
    # Without segmentsFile the README's pairing applies: still the high-res segs.
    agg_path = d / f'{SID}_vh_clean.aggregation.json'
    agg = json.loads(agg_path.read_text())
    del agg['segmentsFile']
    _write_json(agg_path, agg)
    with pytest.raises(FileNotFoundError, match=f'{SID}_vh_clean.segs.json'):
        read_scannet_scene(d)


def test_segments_file_field_is_honoured(tmp_path):
    # A high-res aggregation saved under the low-res name: its segmentsFile decides.
    d = _two_resolutions(tmp_path, high_agg=False)
    _write_json(d / f'{SID}.aggregation.json', {
        'segGroups': [{'objectId': 0, 'segments': [20], 'label': 'chair'}],
        'segmentsFile': f'scannet.{SID}_vh_clean.segs.json'})
    scene = read_scannet_scene(d)
    assert scene.mesh_file == f'{SID}_vh_clean.ply'
    assert scene.instances[0].point_indices.tolist() == list(range(120, 240))


@pytest.mark.parametrize('change,error,message', [
    ({'agg': {'segmentsFile': 'scannet.scene0001_00_vh_clean_2.0.010000.segs.json'}},
     ValueError, 'is not a segs file of scene0000_00'),
    ({'agg': {'sceneId': 'scannet.scene0001_00'}}, ValueError, 'names another scene'),
    ({'segs': {'sceneId': f'{SID}_vh_clean'}}, ValueError, 'does not belong to'),
    ({'segs': {'sceneId': 'scene0001_00'}}, ValueError, 'does not belong to'),
    ({'segs': {'segIndices': [10] * 60 + [20] * 59}}, ValueError,
     f'119 segment ids for the 120 vertices of .*{SID}_vh_clean_2.ply'),
    ({'segs': {'params': 'kThresh=0.01'}}, ValueError, 'params is not an object'),
    ({'segs': {'segIndices': [3] * 120}}, ValueError, '2 of its 2 segments are not in'),
])
def test_mismatched_pairs_are_refused(tmp_path, change, error, message):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    for key, name in (('agg', f'{SID}.aggregation.json'),
                      ('segs', f'{SID}_vh_clean_2.0.010000.segs.json')):
        if key in change:
            data = json.loads((d / name).read_text())
            data.update(change[key])
            _write_json(d / name, data)
    with pytest.raises(error, match=message):
        read_scannet_scene(d)


def test_segment_errata_are_handled_with_warnings(tmp_path, caplog):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    # 120 vertices in segments 10, 20 plus 30 (last 20 table vertices, unannotated).
    _write_json(d / f'{SID}_vh_clean_2.0.010000.segs.json',
                {'segIndices': [10] * 60 + [20] * 40 + [30] * 20})
    _write_json(d / f'{SID}.aggregation.json', {'segGroups': [
        {'objectId': 0, 'segments': [10, 99], 'label': 'chair'},   # 99: absent
        {'objectId': 1, 'segments': [20], 'label': 'table'},
        {'objectId': 1, 'segments': [30], 'label': 'Table'},       # duplicate id, same label
        {'objectId': 2, 'segments': [], 'label': 'trash can'},     # empty
        {'objectId': 3, 'segments': [20], 'label': 'table'},       # overlaps object 1
    ]})
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(d)
    text = caplog.text
    assert '1 referenced segments are absent' in text and '[99]' in text
    assert 'objectIds listed more than once with the same label, merged: [1]' in text
    assert 'objects without any point (empty or absent segments): [2]' in text
    assert '40 points belong to more than one object' in text
    ids = [i.object_id for i in scene.instances]
    assert ids == [0, 1, 2, 3]
    chair, table, trash, table2 = scene.instances
    assert chair.point_indices.tolist() == list(range(60))
    assert table.point_indices.tolist() == list(range(60, 120))
    assert len(trash.point_indices) == 0 and trash.box is None and trash.nyu40_id == 39
    assert table2.point_indices.tolist() == list(range(60, 100))
    np.testing.assert_array_equal(scene.instance_ids, [0] * 60 + [1] * 60)


def test_duplicate_object_id_with_other_label_is_refused(tmp_path):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    _write_json(d / f'{SID}.aggregation.json', {'segGroups': [
        {'objectId': 0, 'segments': [10], 'label': 'chair'},
        {'objectId': 0, 'segments': [20], 'label': 'table'}]})
    with pytest.raises(ValueError, match=r'aggregation.json: objectId 0 is used twice'):
        read_scannet_scene(d)


def test_labels_match_ignoring_case_and_whitespace(tmp_path, caplog):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    _write_json(d / f'{SID}.aggregation.json', {'segGroups': [
        {'objectId': 0, 'segments': [10], 'label': ' Chair '},
        {'objectId': 1, 'segments': [20], 'label': 'hoverboard'}]})
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        chair, other = read_scannet_scene(d).instances
    assert (chair.raw_label, chair.nyu40_id, chair.scannet18) == (' Chair ', 5, 'chair')
    assert (other.nyu40_id, other.scannet18) == (0, '')
    assert "labels not in the label map (nyu40 id 0): ['hoverboard']" in caplog.text


def test_missing_label_map_warns(tmp_path, caplog):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    (tmp_path / 'scannetv2-labels.combined.tsv').unlink()
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(d)
    assert [i.nyu40_id for i in scene.instances] == [0, 0]
    assert 'no scannetv2-labels.combined.tsv' in caplog.text


def test_label_map_encoding_and_cell_errata(tmp_path, caplog):
    path = tmp_path / 'labels.tsv'
    rows = ['id\traw_category\tcategory\tcount\tnyuId\tnyu40id',
            '1\t chair \tchair\t5\t5\t5',
            '2\t"side, table"\ttable\t3\t7\t7',
            '3\tcaf\xe9 table\ttable\t1\t7\t7',      # Latin-1 byte: file is not UTF-8
            '4\tstand\tstand\t1\t50\t50',             # nyuId copied into nyu40id
            '5\tbox\tbox\t1\t29\tbox',
            '6\tceiling light\tlight\t1\t\t',
            '7\tchair\tchair\t1\t5\t6']               # conflicting duplicate
    path.write_bytes('\r\n'.join(rows).encode('latin-1') + b'\r\n')
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        label_map = read_label_map(path)
    assert label_map == {'chair': 5, 'side, table': 7, 'caf\xe9 table': 7}
    assert 'is not UTF-8' in caplog.text
    assert "skipped 2 rows whose nyu40id is not an integer in 1..40 (line 5: '50', line 6: " \
        "'box')" in caplog.text
    assert "different nyu40 ids, first kept: ['chair']" in caplog.text
    # A byte-order mark before the header is not part of the first column name.
    bom = tmp_path / 'bom.tsv'
    bom.write_bytes('raw_category\tnyu40id\nsofa\t6\n'.encode('utf-8-sig'))
    assert read_label_map(bom) == {'sofa': 6}


def test_label_map_without_tabs_is_refused(tmp_path):
    path = tmp_path / 'scannetv2-labels.combined.tsv'
    path.write_text('id raw_category category count nyu40id\n1 chair chair 5 5\n')
    with pytest.raises(ValueError, match='scannetv2-labels.combined.tsv: expected a tab-sep'):
        read_label_map(path)


def test_scenes_without_axis_alignment_warn_and_stay_in_scan_frame(tmp_path, caplog):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    (d / f'{SID}.txt').write_text('colorHeight = 968\nsceneType = Apartment\n')
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(d)
    np.testing.assert_array_equal(scene.axis_alignment, np.eye(4))
    assert 'has no axisAlignment line' in caplog.text
    (d / f'{SID}.txt').unlink()
    caplog.clear()
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        read_scannet_scene(d)
    assert f'{SID}.txt not found' in caplog.text
    (d / f'{SID}.txt').write_text('axisAlignment = 1 0 0 x 0 1 0 0 0 0 1 0 0 0 0 1\n')
    with pytest.raises(ValueError, match=f'{SID}.txt: axisAlignment is not 16 numbers'):
        read_scannet_scene(d)
    (d / f'{SID}.txt').write_text('axisAlignment = ' + ' '.join(['0'] * 15 + ['1']) + '\n')
    with pytest.raises(ValueError, match='not a finite rigid transform'):
        read_scannet_scene(d)


def test_non_finite_vertices_are_dropped_and_indices_remapped(tmp_path, caplog):
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    from opendlign_core.scannet import write_ply_vertices
    pts = read_ply_vertices(d / f'{SID}_vh_clean_2.ply')
    xyz = np.stack([pts['x'], pts['y'], pts['z']], axis=1)
    xyz[[0, 70]] = np.nan
    xyz[71, 2] = np.inf
    write_ply_vertices(d / f'{SID}_vh_clean_2.ply', xyz)
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(d)
    assert 'dropped 3 vertices with non-finite coordinates' in caplog.text
    assert len(scene.points) == 117 and np.isfinite(scene.points).all()
    chair, table = scene.instances
    assert chair.point_indices.tolist() == list(range(59))
    assert table.point_indices.tolist() == list(range(59, 117))
    np.testing.assert_allclose(scene.points[table.point_indices],
                               np.delete(xyz, [0, 70, 71], axis=0)[59:], atol=1e-6)
    np.testing.assert_array_equal(scene.instance_ids, [0] * 59 + [1] * 58)


def test_labels_ply_is_not_read(tmp_path):
    # scene0270_00 & co. carry nyuId 50 in _vh_clean_2.labels.ply; the tsv gives nyu40 39.
    d = _two_resolutions(tmp_path, high=False, high_agg=False)
    (d / f'{SID}_vh_clean_2.labels.ply').write_text('ply\nformat ascii 1.0\nend_header\n')
    _write_json(d / f'{SID}.aggregation.json', {'segGroups': [
        {'objectId': 0, 'segments': [10], 'label': 'trash can'}]})
    (inst,) = read_scannet_scene(d).instances
    assert (inst.nyu40_id, inst.scannet18) == (39, 'garbage bin')
    assert list_scenes(tmp_path) == [d]


def test_complete_high_res_set_used_when_low_res_aggregation_stands_alone(tmp_path, caplog):
    # High-res types plus the default <scene>.aggregation.json, without its segs and mesh.
    d = _two_resolutions(tmp_path)
    (d / f'{SID}_vh_clean_2.ply').unlink()
    (d / f'{SID}_vh_clean_2.0.010000.segs.json').unlink()
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(d)
    assert scene.mesh_file == f'{SID}_vh_clean.ply' and len(scene.points) == 240
    inst = _by_label(scene)
    assert inst['chair'].point_indices.tolist() == list(range(120, 240))
    assert inst['table'].point_indices.tolist() == list(range(120))
    np.testing.assert_allclose(_center(inst['chair']), (0, 0, 0.5), atol=0.03)
    np.testing.assert_allclose(_center(inst['table']), (2.5, 0, 0.5), atol=0.03)
    np.testing.assert_array_equal(scene.instance_ids, [1] * 120 + [0] * 120)
    assert (f'using the complete set {SID}_vh_clean.aggregation.json + {SID}_vh_clean.segs.json'
            f' + {SID}_vh_clean.ply') in caplog.text
    assert (f'{SID}.aggregation.json (indexes {SID}_vh_clean_2.0.010000.segs.json, mesh '
            f'{SID}_vh_clean_2.ply) lacks segmentation {SID}_vh_clean_2.0.010000.segs.json and '
            f'mesh {SID}_vh_clean_2.ply') in caplog.text


def test_low_res_set_used_when_both_sets_complete_without_fallback_warning(tmp_path, caplog):
    with caplog.at_level('WARNING', logger='opendlign_core.scannet'):
        scene = read_scannet_scene(_two_resolutions(tmp_path))
    assert scene.mesh_file == f'{SID}_vh_clean_2.ply' and len(scene.points) == 120
    inst = _by_label(scene)
    assert inst['chair'].point_indices.tolist() == list(range(60))
    np.testing.assert_allclose(_center(inst['table']), (2.5, 0, 0.5), atol=0.03)
    assert 'complete set' not in caplog.text and 'passed over' not in caplog.text


def test_no_complete_set_error_lists_every_candidate(tmp_path):
    # Low-res set lacks its segs file; high-res set lacks its mesh (segs file present).
    d = _two_resolutions(tmp_path)
    (d / f'{SID}_vh_clean_2.0.010000.segs.json').unlink()
    (d / f'{SID}_vh_clean.ply').unlink()
    with pytest.raises(FileNotFoundError) as err:
        read_scannet_scene(d)
    text = str(err.value)
    assert 'no complete annotation set' in text
    assert (f'{SID}.aggregation.json (indexes {SID}_vh_clean_2.0.010000.segs.json, mesh '
            f'{SID}_vh_clean_2.ply) lacks segmentation {SID}_vh_clean_2.0.010000.segs.json;'
            ) in text
    assert (f'{SID}_vh_clean.aggregation.json (indexes {SID}_vh_clean.segs.json, mesh '
            f'{SID}_vh_clean.ply) lacks mesh {SID}_vh_clean.ply.') in text


def test_writer_leaves_out_instances_without_points(tmp_path, caplog):
    scene = tmp_path / 'scene0000_00'
    pts = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], np.float32)
    write_scannet_scene(scene, pts, np.array([0, 0, -1]), {0: 'chair', 5: 'table'})
    groups = json.loads((scene / 'scene0000_00.aggregation.json').read_text())['segGroups']
    assert [(g['objectId'], g['label']) for g in groups] == [(0, 'chair')]
    with caplog.at_level(logging.WARNING):
        read_scannet_scene(scene)
    assert 'absent' not in caplog.text and 'without any point' not in caplog.text
