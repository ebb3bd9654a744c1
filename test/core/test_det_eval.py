"""Detection AP on hand-built cases with hand-computed values."""

import math

import numpy as np
import pytest

from opendlign_core.boxes import Box3D
from opendlign_core.det_eval import (
    GtBox,
    PredBox,
    evaluate_detections,
    format_markdown,
    plot_pr,
    voc_ap,
)


def _box(x, y=0.0, size=1.0):
    return Box3D(np.array([x, y, 0.5]), np.full(3, size), 0.0)


GT = {'s0': [GtBox('chair', _box(0)), GtBox('chair', _box(3))]}


def _ap(preds, gts=GT, t=0.25, **kw):
    return evaluate_detections(preds, gts, thresholds=(t,), **kw).ap[t]['chair']


def test_voc_ap_envelope():
    # Points (0.5, 1), (0.5, 0.5), (1, 2/3): envelope 1 on [0, .5], 2/3 on (.5, 1].
    assert voc_ap(np.array([.5, .5, 1]), np.array([1, .5, 2 / 3])) == pytest.approx(5 / 6)
    assert voc_ap(np.zeros(0), np.zeros(0)) == 0.0


def test_perfect():
    assert _ap({'s0': [PredBox('chair', .9, _box(0)), PredBox('chair', .8, _box(3))]}) == 1.0


def test_one_miss():
    assert _ap({'s0': [PredBox('chair', .9, _box(0))]}) == pytest.approx(0.5)


def test_duplicate_is_false_positive():
    preds = {'s0': [PredBox('chair', .9, _box(0)), PredBox('chair', .8, _box(0.05)),
                    PredBox('chair', .7, _box(3))]}
    # TP, FP, TP: recall .5 .5 1, precision 1 .5 .667 -> .5 * 1 + .5 * 2/3.
    assert _ap(preds) == pytest.approx(0.5 + 1 / 3)


def test_unmatched_false_positive_ranked_first():
    preds = {'s0': [PredBox('chair', .95, _box(10)), PredBox('chair', .9, _box(0)),
                    PredBox('chair', .8, _box(3))]}
    # FP, TP, TP: precision at recall .5 is 1/2, at recall 1 is 2/3 -> envelope 2/3 everywhere.
    assert _ap(preds) == pytest.approx(2 / 3)


def test_ties_keep_input_order():
    tp, fp = PredBox('chair', .5, _box(3)), PredBox('chair', .5, _box(10))
    first = PredBox('chair', .9, _box(0))
    assert _ap({'s0': [first, fp, tp]}) == pytest.approx(0.5 + 1 / 3)
    assert _ap({'s0': [first, tp, fp]}) == pytest.approx(1.0)


def test_iou_threshold_is_strict_and_classes_separate():
    # Shift 0.5 of a unit cube: IoU = 0.5 / 1.5 = 1/3.
    preds = {'s0': [PredBox('chair', .9, _box(0.5)), PredBox('table', .9, _box(3))]}
    res = evaluate_detections(preds, GT, thresholds=(0.25, 1 / 3, 0.5))
    assert res.ap[0.25]['chair'] == pytest.approx(0.5)
    assert res.ap[1 / 3]['chair'] == 0.0
    assert math.isnan(res.ap[0.25]['table'])
    assert res.mean_ap[0.25] == pytest.approx(0.5)  # table has no GT: left out of the mean
    assert res.num_pred['table'] == 1


def test_across_scenes_and_missing_scene():
    gts = {'a': [GtBox('chair', _box(0))], 'b': [GtBox('chair', _box(0))]}
    preds = {'a': [PredBox('chair', .6, _box(0))], 'b': [PredBox('chair', .9, _box(5))],
             'c': [PredBox('chair', .7, _box(0))]}
    # Ranking: b FP (.9), c FP (.7), a TP (.6) -> recall .5 at precision 1/3.
    assert _ap(preds, gts) == pytest.approx(0.5 / 3)


def test_oriented_vs_aligned():
    rot = Box3D(np.array([0, 0, .5]), np.array([2, .2, 1]), math.pi / 4)
    gts = {'s': [GtBox('chair', Box3D(np.array([0, 0, .5]), np.array([2, .2, 1]), 0.0))]}
    preds = {'s': [PredBox('chair', .9, rot)]}
    assert _ap(preds, gts, t=0.25, oriented=True) == 0.0
    assert _ap(preds, gts, t=0.1, oriented=False) == 1.0


def test_markdown_and_plot(tmp_path):
    res = evaluate_detections({'s0': [PredBox('chair', .9, _box(0))]}, GT)
    text = format_markdown(res)
    assert '| chair | 2 | 1 | 50.00 | 50.00 |' in text
    plot_pr(res, tmp_path / 'pr.png')
    assert (tmp_path / 'pr.png').stat().st_size > 1000
    with pytest.raises(ValueError, match='thresholds'):
        evaluate_detections({}, GT, thresholds=(1.0,))
