"""Tests of the classification metrics with hand-computed values and a scikit-learn cross-check."""

import json
import math

import numpy as np
from PIL import Image
import pytest

from opendlign_core.metrics import (
    classification_report,
    confusion_matrix,
    macro_scores,
    per_class_accuracy,
    per_class_scores,
    save_confusion_png,
    top_k_accuracies,
    top_k_accuracy,
    top_k_predictions,
)

# 4 samples, 3 classes: top-1 predictions are 0, 1, 2, 0.
SCORES = np.array([[0.5, 0.3, 0.2],
                   [0.1, 0.6, 0.3],
                   [0.2, 0.3, 0.5],
                   [0.4, 0.35, 0.25]])
TARGETS = np.array([0, 1, 1, 2])


def test_top_k_hand_computed():
    assert top_k_accuracy(SCORES, TARGETS, 1) == 0.5
    assert top_k_accuracy(SCORES, TARGETS, 2) == 0.75
    assert top_k_accuracy(SCORES, TARGETS, 3) == 1.0
    assert top_k_accuracies(SCORES, TARGETS, (1, 3, 5)) == {1: 0.5, 3: 1.0, 5: 1.0}
    np.testing.assert_array_equal(top_k_predictions(SCORES, 2), [[0, 1], [1, 2], [2, 1], [0, 1]])


def test_top_k_ties_prefer_lower_index_and_empty_is_nan():
    scores = np.array([[1.0, 1.0, 0.0]])
    np.testing.assert_array_equal(top_k_predictions(scores, 1), [[0]])
    assert top_k_accuracy(scores, np.array([1]), 1) == 0.0
    assert math.isnan(top_k_accuracy(np.zeros((0, 3)), np.zeros(0, int), 1))


def test_confusion_and_per_class_hand_computed():
    m = confusion_matrix(TARGETS, np.array([0, 1, 2, 0]), 3)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 1], [1, 0, 0]])
    s = per_class_scores(m)
    np.testing.assert_allclose(s.precision, [0.5, 1.0, 0.0])
    np.testing.assert_allclose(s.recall, [1.0, 0.5, 0.0])
    np.testing.assert_allclose(s.f1, [2 / 3, 2 / 3, 0.0])
    np.testing.assert_array_equal(s.support, [1, 2, 1])
    macro = macro_scores(m)
    assert macro['precision'] == pytest.approx(0.5)
    assert macro['recall'] == pytest.approx(0.5)
    assert macro['f1'] == pytest.approx(4 / 9)
    assert macro['mean_class_accuracy'] == pytest.approx(0.5)


def test_absent_class_is_nan_accuracy_and_excluded_from_macro():
    m = confusion_matrix(np.array([0, 0, 1]), np.array([0, 1, 1]), 4)
    acc = per_class_accuracy(m)
    assert acc[0] == 0.5 and acc[1] == 1.0 and np.isnan(acc[2]) and np.isnan(acc[3])
    macro = macro_scores(m)
    # class 0: P=1, R=.5, F1=2/3; class 1: P=.5, R=1, F1=2/3
    assert macro['precision'] == pytest.approx(0.75)
    assert macro['f1'] == pytest.approx(2 / 3)
    assert macro['mean_class_accuracy'] == pytest.approx(0.75)


def test_matches_sklearn_on_random_data():
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    scores = rng.normal(size=(200, 7))
    targets = rng.integers(0, 6, size=200)  # class 6 never a target
    pred = scores.argmax(1)
    m = confusion_matrix(targets, pred, 7)
    np.testing.assert_array_equal(m, skm.confusion_matrix(targets, pred, labels=range(7)))
    p, r, f, _ = skm.precision_recall_fscore_support(targets, pred, average='macro',
                                                      zero_division=0)
    macro = macro_scores(m)
    assert macro['precision'] == pytest.approx(p)
    assert macro['recall'] == pytest.approx(r)
    assert macro['f1'] == pytest.approx(f)
    for k in (1, 3, 5):
        assert top_k_accuracy(scores, targets, k) == pytest.approx(
            skm.top_k_accuracy_score(targets, scores, k=k, labels=range(7)))


def test_report_json_and_markdown():
    rep = classification_report(SCORES, TARGETS, ['a', 'b', 'c'])
    d = json.loads(json.dumps(rep.to_dict(), allow_nan=False))
    assert d['top_k_accuracy'] == {'1': 0.5, '3': 1.0, '5': 1.0}
    assert d['confusion_matrix'] == [[1, 0, 0], [0, 1, 1], [1, 0, 0]]
    assert d['per_class']['support'] == [1, 2, 1]
    md = rep.to_markdown('T')
    assert '| 50.00 | 100.00 | 100.00 | 50.00 | 50.00 | 50.00 | 44.44 |' in md
    assert '| b | 2 | 50.00 | 100.00 | 50.00 | 66.67 |' in md


def test_input_errors():
    with pytest.raises(ValueError, match='scores must have shape'):
        top_k_accuracy(np.zeros(3), np.zeros(3, int))
    with pytest.raises(ValueError, match='targets must lie'):
        top_k_accuracy(SCORES, np.array([0, 1, 3, 0]))
    with pytest.raises(TypeError, match='integers'):
        top_k_accuracy(SCORES, TARGETS.astype(float))
    with pytest.raises(ValueError, match='k must be'):
        top_k_accuracy(SCORES, TARGETS, 0)
    with pytest.raises(ValueError, match='labels has 2'):
        classification_report(SCORES, TARGETS, ['a', 'b'])
    with pytest.raises(ValueError, match='predictions must lie'):
        confusion_matrix(TARGETS, np.array([0, 1, 5, 0]), 3)


def test_save_confusion_png_40_classes(tmp_path):
    rng = np.random.default_rng(1)
    labels = [f'class name {i}' for i in range(40)]
    m = rng.integers(0, 5, size=(40, 40)) + np.eye(40, dtype=int) * 20
    path = save_confusion_png(m, labels, tmp_path / 'sub' / 'cm.png', title='forty')
    with Image.open(path) as im:
        assert im.format == 'PNG'
        assert min(im.size) >= 1000  # big enough for 40 readable tick labels
    small = save_confusion_png(np.array([[2, 1], [0, 3]]), ['a', 'b'], tmp_path / 's.png',
                               normalize=False)
    assert small.stat().st_size > 0
    with pytest.raises(ValueError, match='labels has 1'):
        save_confusion_png(np.eye(2), ['a'], tmp_path / 'x.png')
