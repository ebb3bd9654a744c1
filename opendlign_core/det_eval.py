"""
3D detection average precision (ScanNet/VoteNet style).

Per class, the detections of all scenes are ranked by score (ties keep input order: scenes in the
given order, detections in their listed order). A detection is a true positive when its IoU with
an *unmatched* ground-truth box of its class in the same scene is above the threshold (the best
such box is matched, each ground-truth box at most once); otherwise it is a false positive. AP is
the VOC area under the precision envelope (all recall points). Note that VoteNet's evaluation
instead takes the best box over all ground truths and counts a hit on an already matched one as a
false positive; the two agree unless ground-truth boxes of one class overlap.

Classes without ground truth get AP NaN and are left out of the means.
"""

from dataclasses import dataclass
import math
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

import numpy as np

from opendlign_core.boxes import Box3D, iou_aligned_matrix, iou_oriented_matrix


class PredBox(NamedTuple):
    """A scored detection."""

    label: str
    score: float
    box: Box3D


class GtBox(NamedTuple):
    """A ground-truth box."""

    label: str
    box: Box3D


@dataclass(frozen=True)
class DetEvalResult:
    """AP per threshold and class, their means, PR curves and ground-truth counts."""

    thresholds: tuple[float, ...]
    classes: tuple[str, ...]
    #: ap[threshold][class] (NaN without ground truth).
    ap: Mapping[float, Mapping[str, float]]
    #: Mean over classes with ground truth, per threshold.
    mean_ap: Mapping[float, float]
    #: Mean recall at the end of each class's ranking, per threshold.
    mean_recall: Mapping[float, float]
    #: pr[threshold][class] = (recall (K,), precision (K,)).
    pr: Mapping[float, Mapping[str, tuple[np.ndarray, np.ndarray]]]
    num_gt: Mapping[str, int]
    num_pred: Mapping[str, int]


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """
    Compute the area under the precision envelope (VOC 2010+, all points).

    :param recall: (K,) non-decreasing recall values.
    :param precision: (K,) precision values.
    :return: AP in [0, 1]; 0 for empty input.
    """
    rec = np.asarray(recall, float)
    prec = np.asarray(precision, float)
    if len(rec) == 0:
        return 0.0
    mrec = np.r_[0.0, rec, 1.0]
    mpre = np.r_[0.0, prec, 0.0]
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


def _class_pr(preds: Mapping[str, Sequence[PredBox]], gts: Mapping[str, Sequence[GtBox]],
              klass: str, threshold: float, oriented: bool
              ) -> tuple[np.ndarray, np.ndarray, int, int]:
    ranked = []
    for s_order, (scene, dets) in enumerate(preds.items()):
        for d_order, d in enumerate(dets):
            if d.label == klass:
                ranked.append((-float(d.score), s_order, d_order, scene, d.box))
    ranked.sort(key=lambda r: (r[0], r[1], r[2]))
    gt_boxes = {scene: [g.box for g in boxes if g.label == klass] for scene, boxes in gts.items()}
    npos = sum(len(b) for b in gt_boxes.values())
    iou_fn = iou_oriented_matrix if oriented else iou_aligned_matrix
    ious = {}
    for scene in {r[3] for r in ranked}:
        scene_preds = [r[4] for r in ranked if r[3] == scene]
        ious[scene] = iou_fn(scene_preds, gt_boxes.get(scene, []))
    counters = {scene: 0 for scene in ious}
    matched = {scene: np.zeros(len(b), bool) for scene, b in gt_boxes.items()}
    tp = np.zeros(len(ranked))
    for i, r in enumerate(ranked):
        scene = r[3]
        row = ious[scene][counters[scene]]
        counters[scene] += 1
        if row.size == 0:
            continue
        free = np.where(matched[scene], -1.0, row)
        j = int(np.argmax(free))
        if free[j] > threshold:
            tp[i] = 1
            matched[scene][j] = True
    ctp = np.cumsum(tp)
    cfp = np.cumsum(1 - tp)
    recall = ctp / npos if npos else np.zeros_like(ctp)
    precision = ctp / np.maximum(ctp + cfp, np.finfo(float).eps)
    return recall, precision, npos, len(ranked)


def evaluate_detections(preds: Mapping[str, Sequence[PredBox]],
                        gts: Mapping[str, Sequence[GtBox]],
                        thresholds: Sequence[float] = (0.25, 0.5),
                        classes: Optional[Sequence[str]] = None,
                        oriented: bool = False) -> DetEvalResult:
    """
    Evaluate detections against ground truth over all scenes.

    :param preds: scene id -> detections. Scenes missing here have no detections.
    :param gts: scene id -> ground-truth boxes. Detections in scenes missing here are FPs.
    :param thresholds: IoU thresholds (a match needs IoU strictly above).
    :param classes: Classes to evaluate (default: every label in ground truth or detections,
        sorted). Detections of other labels are ignored.
    :param oriented: Use oriented IoU; default axis-aligned IoU (ScanNet benchmark).
    :return: The result.
    :raises ValueError: If a threshold is outside (0, 1).
    """
    for t in thresholds:
        if not 0 < t < 1:
            raise ValueError(f'IoU thresholds must be in (0, 1), got {t}')
    if classes is None:
        names = {g.label for boxes in gts.values() for g in boxes}
        names |= {d.label for dets in preds.values() for d in dets}
        classes = sorted(names)
    ap: dict = {}
    pr: dict = {}
    mean_ap: dict = {}
    mean_recall: dict = {}
    num_gt: dict = {}
    num_pred: dict = {}
    for t in thresholds:
        ap[t], pr[t] = {}, {}
        finals = []
        for c in classes:
            rec, prec, npos, npred = _class_pr(preds, gts, c, t, oriented)
            num_gt[c], num_pred[c] = npos, npred
            pr[t][c] = (rec, prec)
            ap[t][c] = voc_ap(rec, prec) if npos else math.nan
            if npos:
                finals.append(rec[-1] if len(rec) else 0.0)
        valid = [v for v in ap[t].values() if not math.isnan(v)]
        mean_ap[t] = float(np.mean(valid)) if valid else math.nan
        mean_recall[t] = float(np.mean(finals)) if finals else math.nan
    return DetEvalResult(tuple(thresholds), tuple(classes), ap, mean_ap, mean_recall, pr,
                         num_gt, num_pred)


def format_markdown(result: DetEvalResult) -> str:
    """
    Render the per-class AP table (percent) with the means as the last row.

    :param result: An evaluation result.
    :return: Markdown text.
    """
    heads = ' | '.join(f'AP@{t:g}' for t in result.thresholds)
    lines = [f'| class | GT | pred | {heads} |',
             '|---|---:|---:|' + '---:|' * len(result.thresholds)]

    def fmt(v: float) -> str:
        return 'n/a' if math.isnan(v) else f'{100 * v:.2f}'

    for c in result.classes:
        vals = ' | '.join(fmt(result.ap[t][c]) for t in result.thresholds)
        lines.append(f'| {c} | {result.num_gt[c]} | {result.num_pred[c]} | {vals} |')
    vals = ' | '.join(fmt(result.mean_ap[t]) for t in result.thresholds)
    lines.append(f'| **mean** | {sum(result.num_gt.values())} | '
                 f'{sum(result.num_pred.values())} | {vals} |')
    return '\n'.join(lines) + '\n'


def plot_pr(result: DetEvalResult, path: Path) -> None:
    """
    Save precision-recall curves (one panel per threshold) as a PNG.

    :param result: An evaluation result.
    :param path: Output PNG.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(result.thresholds), figsize=(6 * len(result.thresholds), 5),
                             squeeze=False)
    for ax, t in zip(axes[0], result.thresholds):
        for c in result.classes:
            rec, prec = result.pr[t][c]
            if result.num_gt[c] and len(rec):
                ax.step(rec, prec, where='post', label=f'{c} ({100 * result.ap[t][c]:.1f})')
        ax.set_title(f'IoU {t:g}: mAP {100 * result.mean_ap[t]:.2f}')
        ax.set_xlabel('recall')
        ax.set_ylabel('precision')
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7, loc='lower left')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
