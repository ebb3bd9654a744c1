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
