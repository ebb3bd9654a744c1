"""Detector control flow with a stub classifier, and one run with the tiny real model."""

from types import SimpleNamespace

import numpy as np
import pytest

from opendlign_core.boxes import Box3D
from opendlign_core.config import (
    ClassifierConfig,
    DetectorConfig,
    ModelConfig,
    OpenDlignConfig,
    ProjectionConfig,
)
from opendlign_core.detection import Detection, DetectionResult, Detector


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    floor = np.c_[rng.uniform(0, 4, (20000, 2)), rng.normal(0, 0.002, 20000)]
    tall = rng.uniform([1, 1, 0.05], [1.4, 1.4, 1.6], (3000, 3))   # tall object
    flat = rng.uniform([2.5, 2.5, 0.05], [3.5, 3.0, 0.4], (3000, 3))  # low wide object
    pts = np.vstack([floor, tall, flat]).astype(np.float32)
    return pts, np.r_[np.full(20000, -1), np.zeros(3000), np.ones(3000)].astype(int)


class StubClassifier:
    """Labels a cloud 'tall' when its height exceeds its width; records calls."""

    def __init__(self, probability=0.9):
        self.probability = probability
        self.batches = []

    def encode_labels(self, labels):
        return SimpleNamespace(labels=tuple(labels))

    def project(self, clouds):
        self.batches.append(len(clouds))
        return [np.ptp(c, axis=0) for c in clouds]

    def embed_views(self, views):
        return views

    def classify_features(self, feats, label_set):
        out = []
        for ext in feats:
            tall = ext[2] > max(ext[0], ext[1])
            label = 'tall' if tall else 'flat'
            score = 0.8 if tall else 0.6
            out.append(SimpleNamespace(label=label, score=score, probability=self.probability,
                                       top_k=((label, score),)))
        return out


def test_detect_finds_both_objects():
    pts, gt = _scene()
    clf = StubClassifier()
    cfg = DetectorConfig(opendlign=OpenDlignConfig(classifier=ClassifierConfig(batch_size=1)))
    det = Detector(clf, cfg)
    res = det.detect(pts, det.encode_labels(['tall', 'flat']))
    assert isinstance(res, DetectionResult)
    assert [d.label for d in res.detections] == ['tall', 'flat']  # by decreasing score
    for d, k in zip(res.detections, (0, 1)):
        assert isinstance(d, Detection)
        assert d.point_indices.dtype == np.int64
        assert np.mean(gt[d.point_indices] == k) > 0.99
        assert d.probability == pytest.approx(0.9)
    np.testing.assert_allclose(res.detections[0].box.center[:2], [1.2, 1.2], atol=0.05)
    assert set(res.timings_ms) >= {'segment', 'project', 'encode', 'classify', 'total'}
    assert res.num_points == len(pts) and res.num_clusters == 2
    assert clf.batches == [1, 1]  # batch_size objects per encoder batch


def test_thresholds_unknown_and_deterministic():
    pts, _ = _scene()
    det = Detector(StubClassifier(probability=0.3), DetectorConfig(unknown_threshold=0.5))
    res = det.detect(pts, det.encode_labels(['tall', 'flat']))
    assert [d.label for d in res.detections] == ['unknown', 'unknown']
    det = Detector(StubClassifier(probability=0.3), DetectorConfig(score_threshold=0.5))
    assert det.detect(pts, None).detections == ()
    a = Detector(StubClassifier(), DetectorConfig(max_points=10000)).detect(pts, None)
    b = Detector(StubClassifier(), DetectorConfig(max_points=10000)).detect(pts, None)
    assert [d.point_indices.tolist() for d in a.detections] == \
        [d.point_indices.tolist() for d in b.detections]


def test_nms_suppresses_same_label_duplicates(monkeypatch):
    pts, _ = _scene()
    import opendlign_core.detection as detection

    real = detection.segment_scene

    def duplicated(points, config, seed=0, colors=None):
        res = real(points, config, seed, colors)
        return res.__class__(res.labels, res.clusters + res.clusters[:1], res.planes,
                             res.num_voxels, res.timings_ms)

    monkeypatch.setattr(detection, 'segment_scene', duplicated)
    det = Detector(StubClassifier(), DetectorConfig())
    assert len(det.detect(pts, None).detections) == 2
    det = Detector(StubClassifier(), DetectorConfig(nms_iou=1.0))
    assert len(det.detect(pts, None).detections) == 3


def test_up_axis_y_and_malformed_inputs():
    pts, _ = _scene()
    y_up = pts[:, [0, 2, 1]] * [1, 1, -1]  # (x, z, -y): a Y-up view of the same scene
    det = Detector(StubClassifier(), DetectorConfig(up_axis='y'))
    res = det.detect(y_up.astype(np.float32), None)
    assert sorted(d.label for d in res.detections) == ['flat', 'tall']
    det = Detector(StubClassifier(), DetectorConfig())
    assert det.detect(np.zeros((0, 3), np.float32), None).detections == ()
    with_nan = np.vstack([pts, np.full((10, 3), np.nan, np.float32)])
    assert len(det.detect(with_nan, None).detections) == 2
    with pytest.raises(ValueError, match='points'):
        det.detect(np.zeros((4, 4)), None)
    with pytest.raises(ValueError, match='colors'):
        det.detect(pts, None, colors=np.zeros((3, 3)))


def test_non_finite_rows_anywhere_give_the_same_detections_and_original_indices():
    # The all-finite cloud takes the no-copy path, the one with NaN/inf rows the filtered one:
    # same boxes, and each detection's indices point at the same points of its own input.
    pts, _ = _scene()
    rng = np.random.default_rng(5)
    bad = np.sort(rng.choice(len(pts) + 40, 40, replace=False))
    dirty = np.empty((len(pts) + 40, 3), np.float32)
    keep = np.setdiff1d(np.arange(len(dirty)), bad)
    dirty[keep] = pts
    dirty[bad] = [np.nan, 0.0, np.inf]
    det = Detector(StubClassifier(), DetectorConfig())
    clean_res, dirty_res = det.detect(pts, None), det.detect(dirty, None)
    assert len(clean_res.detections) == len(dirty_res.detections) == 2
    for a, b in zip(clean_res.detections, dirty_res.detections):
        np.testing.assert_allclose(a.box.center, b.box.center, atol=1e-9)
        np.testing.assert_array_equal(keep[a.point_indices], b.point_indices)
        assert np.isfinite(dirty[b.point_indices]).all()


def test_colours_reach_the_segmentation():
    # A door flush with a wall differs from it in colour only: found with colours, not without,
    # and not when use_colors is off. Colours with NaN rows and subsampling stay aligned.
    rng = np.random.default_rng(3)
    floor = np.c_[rng.uniform(0, 4, (30000, 2)), rng.normal(0, 0.005, 30000)]
    wall = np.c_[rng.uniform(0, 4, 60000), 4 + rng.normal(0, 0.02, 60000),
                 rng.uniform(0, 2.5, 60000)]
    door = (wall[:, 0] > 1.5) & (wall[:, 0] < 2.4) & (wall[:, 2] < 2.0)
    pts = np.vstack([floor, wall, np.full((5, 3), np.nan)]).astype(np.float32)
    colors = np.vstack([np.full((30000, 3), 90), np.where(door[:, None], [150, 100, 40], 150),
                        np.zeros((5, 3))]).astype(np.uint8)
    det = Detector(StubClassifier(), DetectorConfig(max_points=80000))
    found = det.detect(pts, None, colors=colors).detections
    assert len(found) == 1
    lo, hi = found[0].box.corners().min(axis=0), found[0].box.corners().max(axis=0)
    np.testing.assert_allclose([lo[0], hi[0], hi[2]], [1.5, 2.4, 2.0], atol=0.08)
    assert det.detect(pts, None).detections == ()
    off = Detector(StubClassifier(), DetectorConfig(max_points=80000, use_colors=False))
    assert off.detect(pts, None, colors=colors).detections == ()
    with pytest.raises(TypeError, match='colors'):
        det.detect(pts, None, colors=np.full(pts.shape, 'x'))


def test_classify_boxes():
    pts, gt = _scene()
    det = Detector(StubClassifier(), DetectorConfig())
    boxes = [Box3D(np.array([1.2, 1.2, 0.85]), np.array([0.5, 0.5, 1.6])),
             Box3D(np.array([3.0, 2.75, 0.25]), np.array([1.2, 0.7, 0.45])),
             Box3D(np.array([0.5, 3.5, 1.5]), np.array([0.2, 0.2, 0.2]))]  # empty
    dets = det.classify_boxes(pts, boxes, None)
    assert [d.label for d in dets] == ['tall', 'flat']
    assert dets[0].box == boxes[0]
    assert (gt[dets[0].point_indices] == 0).all()
    with pytest.raises(TypeError, match='Box3D'):
        det.classify_boxes(pts, [(0, 0, 0)], None)


def test_tiny_real_model():
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    cfg = DetectorConfig(opendlign=OpenDlignConfig(
        model=ModelConfig(model_name='OpenDlign-Tiny-Test'),
        projection=ProjectionConfig(resolution=32, view_angles_deg=(30.0, 120.0)),
        classifier=ClassifierConfig(templates='depth', batch_size=4)),
        max_points_per_object=512)
    det = Detector.from_config(cfg)
    labels = det.encode_labels(['chair', 'table'])
    pts, _ = _scene()
    res = det.detect(pts, labels)
    assert len(res.detections) == 2
    for d in res.detections:
        assert d.label in ('chair', 'table')
        assert 0 <= d.score <= 1 and 0 <= d.probability <= 1
        assert len(d.top_k) == 2


class VectorClassifier:
    """Encodes each name as a fixed 2-D unit vector; classifies by dot product."""

    VECTORS = {'bin': [1.0, 0.0], 'trash can': [0.0, 1.0], 'chair': [-1.0, 0.0]}

    def __init__(self):
        self.calls = []

    def encode_labels(self, labels):
        import torch

        from opendlign_core.classifier import LabelSet

        self.calls.append(tuple(labels))
        return LabelSet(tuple(labels), torch.tensor([self.VECTORS[x] for x in labels]), 't')


def test_expand_synonyms_groups_and_errors():
    from opendlign_core.detection import expand_synonyms

    assert expand_synonyms(['bin', 'chair|seat| ', 'sofa'], 'bin|trash can; bin|x') == [
        ('bin', 'trash can'), ('chair', 'seat'), ('sofa',)]
    with pytest.raises(ValueError, match='repeats'):
        expand_synonyms(['bin', 'bin|trash can'])
    with pytest.raises(ValueError, match='blank'):
        expand_synonyms(['|trash can'])


def test_encode_labels_averages_synonym_embeddings():
    clf = VectorClassifier()
    det = Detector(clf, DetectorConfig(label_synonyms='bin|trash can'))
    labels = det.encode_labels(['bin', 'chair'])
    assert labels.labels == ('bin', 'chair')
    h = 0.5 ** 0.5   # mean of (1, 0) and (0, 1), renormalised
    np.testing.assert_allclose(labels.weights.numpy(), [[h, h], [-1, 0]], atol=1e-6)
    assert clf.calls == [('bin', 'trash can', 'chair')]
    plain = Detector(clf, DetectorConfig(label_synonyms='')).encode_labels(['bin|trash can'])
    np.testing.assert_allclose(plain.weights.numpy(), [[h, h]], atol=1e-6)
    Detector(clf, DetectorConfig(label_synonyms='')).encode_labels(['bin'])
    assert clf.calls[-1] == ('bin',)   # no synonyms: delegated unchanged


def test_labels_per_object_emits_ranked_hypotheses():
    pts, _ = _scene()
    clf = StubClassifier()

    def classify(feats, label_set):
        return [SimpleNamespace(label='a', score=0.6, probability=0.7,
                                top_k=(('a', 0.6), ('b', 0.3), ('c', 0.1))) for _ in feats]
    clf.classify_features = classify
    one = Detector(clf, DetectorConfig()).detect(pts, None).detections
    three = Detector(clf, DetectorConfig(labels_per_object=3)).detect(pts, None).detections
    assert len(one) == 2 and {d.label for d in one} == {'a'}
    assert len(three) == 6
    assert sorted((d.label, d.hypothesis, d.score) for d in three)[::2] == [
        ('a', 0, 0.6), ('b', 1, 0.3), ('c', 2, 0.1)]
    assert all(np.isnan(d.probability) for d in three if d.hypothesis)
    with pytest.raises(ValueError, match='labels_per_object'):
        DetectorConfig(labels_per_object=0)
    with pytest.raises(ValueError, match='label_synonyms'):
        DetectorConfig(label_synonyms='bin; |trash can')


def test_segmentation_warnings_and_drops_reach_the_result():
    # A 4 x 4 m floor with a 30-point speck (too small) and a 4.5 m rail (too large) beside the
    # two objects; max_objects=1 leaves the smaller object unclassified (issue 10 item 7).
    pts, _ = _scene()
    rng = np.random.default_rng(1)
    speck = rng.uniform([0.3, 3.5, 1.0], [0.35, 3.55, 1.05], (30, 3))
    rail = np.c_[rng.uniform(-0.3, 4.2, 3000), rng.normal(0.2, 0.01, 3000),
                 rng.normal(0.9, 0.01, 3000)]
    det = Detector(StubClassifier(), DetectorConfig(max_objects=1))
    res = det.detect(np.vstack([pts, speck, rail]).astype(np.float32),
                     det.encode_labels(['tall', 'flat']))
    assert len(res.detections) == 1
    assert res.dropped_clusters == {'too_small': 1, 'too_large': 1, 'max_objects': 1}
    assert res.warnings == ('dropped an oversized cluster holding 33% of the non-structure '
                            'points (4.5 x 0.1 x 0.1 m)',)


# ---- clouds far from the origin (issue 10 item 2) ---------------------------------------------

UTM_SHIFT = np.array([500000.0, 5000000.0, 0.0])


def _boxes(res):
    return sorted((d.label, tuple(d.box.center), tuple(d.box.size), d.box.yaw)
                  for d in res.detections)


def _assert_same_boxes(shifted, reference, shift, tol=1e-3):
    assert len(shifted) == len(reference) == 2
    for (la, ca, sa, ya), (lb, cb, sb, yb) in zip(shifted, reference):
        assert la == lb
        np.testing.assert_allclose(np.subtract(ca, shift), cb, rtol=0, atol=tol)
        np.testing.assert_allclose(sa, sb, rtol=0, atol=tol)
        assert abs(ya - yb) < 1e-3


@pytest.mark.parametrize('shift', [UTM_SHIFT, -UTM_SHIFT, np.array([512345.678, -4987654.321, 0]),
                                   np.array([-700000.5, 6000000.25, 2500.0])],
                         ids=['utm', 'utm_negative', 'utm_fractional', 'high_altitude'])
def test_far_scene_gives_the_same_boxes_as_at_the_origin(shift):
    pts, _ = _scene()
    det = Detector(StubClassifier(), DetectorConfig())
    labels = det.encode_labels(['tall', 'flat'])
    reference = _boxes(det.detect(pts, labels))
    far = pts.astype(np.float64) + shift
    res = det.detect(far, labels)
    # Hand-checked: the tall object spans x, y in [1, 1.4], the flat one x in [2.5, 3.5].
    tall = next(d for d in res.detections if d.label == 'tall')
    np.testing.assert_allclose(tall.box.center[:2] - shift[:2], [1.2, 1.2], atol=0.05)
    assert tall.box.center.dtype == np.float64
    _assert_same_boxes(_boxes(res), reference, shift)
    # float32 coordinates at 5e6 m are 0.5 m apart: the bug this guards against gave slabs.
    assert all(min(d.box.size) > 0.2 for d in res.detections)


def test_far_float64_cloud_through_pointcloud2_round_trip():
    from opendlign_core import pointcloud2 as pc2

    pts, _ = _scene()
    det = Detector(StubClassifier(), DetectorConfig())
    labels = det.encode_labels(['tall', 'flat'])
    reference = _boxes(det.detect(pts, labels))
    far = pts.astype(np.float64) + UTM_SHIFT
    data, fields, step, row_step = pc2.encode_xyz(far, pc2.FLOAT64)
    decoded = pc2.decode_xyz(data, fields, step, len(far), 1, row_step)
    assert decoded.dtype == np.float64
    np.testing.assert_array_equal(decoded, far)
    _assert_same_boxes(_boxes(det.detect(decoded, labels)), reference, UTM_SHIFT)


def test_classify_boxes_takes_and_returns_boxes_in_far_coordinates():
    pts, _ = _scene()
    far = pts.astype(np.float64) + UTM_SHIFT
    det = Detector(StubClassifier(), DetectorConfig())
    box = Box3D(np.array([1.2, 1.2, 0.8]) + UTM_SHIFT, [0.5, 0.5, 1.7])
    out = det.classify_boxes(far, [box], det.encode_labels(['tall', 'flat']))
    assert [d.label for d in out] == ['tall'] and out[0].box is box
    # The 3000 points of the tall object (x, y in [1, 1.4], z in [0.05, 1.6]) plus the floor
    # points under it (z <= 0.05 m + noise): the same members as at the origin.
    at_origin = det.classify_boxes(pts, [Box3D([1.2, 1.2, 0.8], [0.5, 0.5, 1.7])],
                                   det.encode_labels(['tall', 'flat']))
    np.testing.assert_array_equal(out[0].point_indices, at_origin[0].point_indices)


def test_local_origin_is_the_horizontal_median():
    from opendlign_core.detection import local_origin

    pts = np.array([[500000.0, 5000000.0, 1.0], [500002.0, 5000010.0, 3.0],
                    [500010.0, 5000004.0, 2.0]])
    np.testing.assert_array_equal(local_origin(pts), [500002.0, 5000004.0, 0.0])
    pts[:, 2] += 2000.0   # beyond LOCAL_Z_LIMIT: z is localised too
    np.testing.assert_array_equal(local_origin(pts), [500002.0, 5000004.0, 2002.0])
    np.testing.assert_array_equal(local_origin(np.zeros((0, 3))), [0.0, 0.0, 0.0])


@pytest.mark.parametrize('suffix', ['.npy', '.ply', '.pcd', '.xyz'])
def test_detect_cli_keeps_double_precision_files(tmp_path, monkeypatch, suffix):
    import json

    from opendlign_core.scene_cli import main

    monkeypatch.setattr(Detector, 'from_config',
                        classmethod(lambda cls, config: cls(StubClassifier(), config)))
    pts, _ = _scene()
    np.save(tmp_path / 'origin.npy', pts)
    far = pts.astype(np.float64) + UTM_SHIFT
    path = tmp_path / f'far{suffix}'
    if suffix == '.npy':
        np.save(path, far)
    elif suffix == '.xyz':
        np.savetxt(path, far, fmt='%.17g')
    else:
        import open3d as o3d

        cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(far))
        assert o3d.t.io.write_point_cloud(str(path), cloud)
    boxes = {}
    for name in ('origin.npy', path.name):
        out = tmp_path / f'{name}.json'
        assert main(['detect', str(tmp_path / name), '--labels', 'tall,flat', '--out', str(out),
                     '--model-name', 'OpenDlign-Tiny-Test']) == 0
        dets = json.loads(out.read_text())['detections']
        boxes[name] = sorted((d['label'], tuple(d['box']['center']), tuple(d['box']['size']),
                              d['box']['yaw']) for d in dets)
    _assert_same_boxes(boxes[path.name], boxes['origin.npy'], UTM_SHIFT)


def test_far_y_up_cloud_gives_z_up_boxes_at_the_shifted_place():
    pts, _ = _scene()
    det = Detector(StubClassifier(), DetectorConfig())
    labels = det.encode_labels(['tall', 'flat'])
    reference = _boxes(det.detect(pts, labels))
    # The same scene y-up (x, z, -y), 500 km east and 5000 km "north" (-z in a y-up frame).
    far = np.c_[pts[:, 0], pts[:, 2], -pts[:, 1]].astype(np.float64) + [500000.0, 0, -5000000.0]
    res = Detector(StubClassifier(), DetectorConfig(up_axis='y')).detect(far, labels)
    _assert_same_boxes(_boxes(res), reference, UTM_SHIFT)


def test_view_features_are_the_scored_features_shared_by_hypotheses():
    pts, gt = _scene()
    det = Detector(StubClassifier(), DetectorConfig(labels_per_object=1))
    res = det.detect(pts, None)
    for d in res.detections:
        # The stub's "features" are the extents of the cloud it projected.
        expected = np.ptp(pts[d.point_indices], axis=0).astype(np.float32)
        assert d.view_features.dtype == np.float32
        np.testing.assert_allclose(d.view_features, expected, atol=1e-5)
        assert 'view_features' not in d.to_dict()
    boxes = [Box3D(np.array([1.2, 1.2, 0.85]), np.array([0.5, 0.5, 1.6]))]
    (one,) = det.classify_boxes(pts, boxes, None)
    np.testing.assert_allclose(one.view_features, np.ptp(pts[one.point_indices], axis=0),
                               atol=1e-5)


def test_tiny_real_model_view_features_are_unit_per_view():
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    cfg = DetectorConfig(opendlign=OpenDlignConfig(
        model=ModelConfig(model_name='OpenDlign-Tiny-Test'),
        projection=ProjectionConfig(resolution=32, view_angles_deg=(30.0, 120.0)),
        classifier=ClassifierConfig(templates='depth', batch_size=4)),
        max_points_per_object=512, labels_per_object=2)
    det = Detector.from_config(cfg)
    labels = det.encode_labels(['chair', 'table'])
    pts, _ = _scene()
    res = det.detect(pts, labels)
    best = [d for d in res.detections if d.hypothesis == 0]
    assert len(best) == 2
    for d in best:
        assert d.view_features.shape == (2, det.classifier.model.embed_dim)
        np.testing.assert_allclose(np.linalg.norm(d.view_features, axis=1), 1.0, atol=1e-5)
        # Re-scoring the stored features reproduces the detection.
        (pred,) = det.classifier.classify_features(torch.tensor(d.view_features)[None],
                                                   labels)
        assert pred.label == d.label and pred.score == pytest.approx(d.score, abs=1e-6)
        twins = [h for h in res.detections if h.hypothesis > 0
                 and np.array_equal(h.point_indices, d.point_indices)]
        assert all(h.view_features is d.view_features for h in twins)


def test_float32_cloud_far_from_the_origin_is_reported():
    from opendlign_core.detection import _precision_warnings

    far = np.array([[500000.0, 5000000.0, 0.0]])
    (message,) = _precision_warnings(far.astype(np.float32), far[0])
    # float32 values near 5e6 are 0.5 m apart (2**22 <= 5e6 < 2**23, 23 mantissa bits).
    assert 'spaced 0.5 m apart' in message and 'float32' in message
    assert _precision_warnings(far, far[0]) == ()                        # float64: exact
    near = np.array([[1000.0, 2000.0, 0.0]], np.float32)                 # spacing 2.4e-4 m
    assert _precision_warnings(near, near[0].astype(np.float64)) == ()


def _camera_pose(translation):
    # A tilted optical-frame camera (+z forward, +y down) looking 30 degrees below horizontal.
    from scipy.spatial.transform import Rotation
    pose = np.eye(4)
    pose[:3, :3] = (Rotation.from_euler('y', 30, degrees=True).as_matrix()
                    @ np.array([[0.0, 0, 1], [-1, 0, 0], [0, -1, 0]]))
    pose[:3, 3] = translation
    return pose


@pytest.mark.parametrize('translation', [[0.5, -1.0, 1.2], [512345.678, -4987654.321, 2500.0]],
                         ids=['room', 'utm_high_altitude'])
def test_transform_detects_sensor_frame_points_in_the_target_frame(translation):
    from opendlign_core.transforms import invert_transform, transform_points
    pts, _ = _scene()
    map_from_camera = _camera_pose(translation)
    scene_map = pts.astype(np.float64) + map_from_camera[:3, 3]
    camera = transform_points(scene_map, invert_transform(map_from_camera)).astype(np.float32)
    det = Detector(StubClassifier(), DetectorConfig())
    labels = det.encode_labels(['tall', 'flat'])
    reference = _boxes(det.detect(pts, labels))
    res = det.detect(camera, labels, transform=map_from_camera)
    _assert_same_boxes(_boxes(res), reference, map_from_camera[:3, 3])
    moved_first = det.detect(transform_points(camera, map_from_camera), labels)
    assert [(d.label, tuple(d.point_indices)) for d in res.detections] == [
        (d.label, tuple(d.point_indices)) for d in moved_first.detections]
    # The precision check looks at the input in its own frame: a camera-frame float32 cloud
    # is precise wherever the camera is.
    assert res.warnings == ()


def test_transform_combines_with_up_axis_and_is_checked():
    pts, _ = _scene()
    det = Detector(StubClassifier(), DetectorConfig())
    labels = det.encode_labels(['tall', 'flat'])
    reference = _boxes(det.detect(pts, labels))
    # Target frame y-up (x, z, -y), reached from the points' frame by a 3 m shift along x.
    shift = np.eye(4)
    shift[0, 3] = 3.0
    y_up = np.c_[pts[:, 0] - 3.0, pts[:, 2], -pts[:, 1]].astype(np.float32)
    res = Detector(StubClassifier(), DetectorConfig(up_axis='y')).detect(
        y_up, labels, transform=shift)
    _assert_same_boxes(_boxes(res), reference, np.zeros(3))
    for bad in (np.eye(3), np.full((4, 4), np.nan)):
        with pytest.raises(ValueError, match=r'transform must be a finite \(4, 4\) matrix'):
            det.detect(pts, labels, transform=bad)
    assert det.detect(np.zeros((0, 3), np.float32), labels, transform=shift).detections == ()
