"""
Classification metrics: top-k accuracy, confusion matrix, per-class and macro scores.

Conventions (as in scikit-learn, whose results these match): the confusion matrix has true classes
in rows and predictions in columns; per-class precision/recall/F1 are 0 where undefined (no
prediction / no sample of the class); macro averages run over the classes that occur in the
targets or the predictions. Per-class accuracy is the recall of each class; its mean over the
classes that have samples is the "mean class accuracy" reported on ModelNet40.
"""

from dataclasses import asdict, dataclass
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np

#: The top-k accuracies OpenDlign reports.
DEFAULT_KS: Tuple[int, ...] = (1, 3, 5)


def _check_scores_targets(scores: np.ndarray,
                          targets: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores)
    targets = np.asarray(targets)
    if scores.ndim != 2:
        raise ValueError(f'scores must have shape (N, C), got {scores.shape}')
    if targets.shape != (scores.shape[0],):
        raise ValueError(f'targets must have shape ({scores.shape[0]},), got {targets.shape}')
    if not np.issubdtype(targets.dtype, np.integer):
        raise TypeError(f'targets must be integers, got dtype {targets.dtype}')
    if targets.size and (targets.min() < 0 or targets.max() >= scores.shape[1]):
        raise ValueError(f'targets must lie in [0, {scores.shape[1]}), got values in '
                         f'[{targets.min()}, {targets.max()}]')
    return scores, targets


def top_k_predictions(scores: np.ndarray, k: int) -> np.ndarray:
    """
    Return the indices of the k highest scores per row, best first (ties: lower index first).

    :param scores: (N, C) scores.
    :param k: Number of classes kept; clipped to C.
    :return: (N, min(k, C)) int64 class indices.
    :raises ValueError: If ``k`` < 1 or ``scores`` is not 2-D.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f'scores must have shape (N, C), got {scores.shape}')
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k!r}')
    return np.argsort(-scores, axis=1, kind='stable')[:, :min(k, scores.shape[1])]


def top_k_accuracy(scores: np.ndarray, targets: np.ndarray, k: int = 1) -> float:
    """
    Return the fraction of samples whose target is among the k best-scored classes.

    :param scores: (N, C) scores, higher is better.
    :param targets: (N,) int class indices.
    :param k: k >= 1 (k >= C gives 1.0).
    :return: Accuracy in [0, 1]; ``nan`` for N = 0.
    :raises ValueError: On bad shapes, ``k`` or target range.
    """
    scores, targets = _check_scores_targets(scores, targets)
    if targets.size == 0:
        return math.nan
    top = top_k_predictions(scores, k)
    return float((top == targets[:, None]).any(axis=1).mean())


def top_k_accuracies(scores: np.ndarray, targets: np.ndarray,
                     ks: Sequence[int] = DEFAULT_KS) -> Dict[int, float]:
    """
    Return several top-k accuracies at once.

    :param scores: (N, C) scores.
    :param targets: (N,) int class indices.
    :param ks: The k values.
    :return: ``{k: accuracy}``.
    """
    return {int(k): top_k_accuracy(scores, targets, k) for k in ks}


def confusion_matrix(targets: np.ndarray, predictions: np.ndarray,
                     num_classes: int) -> np.ndarray:
    """
    Count (true class, predicted class) pairs.

    :param targets: (N,) int true class indices in [0, C).
    :param predictions: (N,) int predicted class indices in [0, C).
    :param num_classes: C.
    :return: (C, C) int64 matrix; ``m[i, j]`` = samples of class i predicted as j.
    :raises ValueError: On mismatched shapes or out-of-range indices.
    """
    targets = np.asarray(targets)
    predictions = np.asarray(predictions)
    if num_classes < 1:
        raise ValueError(f'num_classes must be >= 1, got {num_classes!r}')
    if targets.ndim != 1 or predictions.shape != targets.shape:
        raise ValueError(f'targets and predictions must be 1-D of equal length, got '
                         f'{targets.shape} and {predictions.shape}')
    for name, arr in (('targets', targets), ('predictions', predictions)):
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(f'{name} must lie in [0, {num_classes}), got values in '
                             f'[{arr.min()}, {arr.max()}]')
    flat = targets.astype(np.int64) * num_classes + predictions.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes)


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    out = np.zeros(num.shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den > 0)
    return out


@dataclass(frozen=True)
class PerClassScores:
    """
    Per-class scores from a confusion matrix (arrays of length C).

    :param support: Samples per true class.
    :param accuracy: Per-class accuracy (= recall); ``nan`` for classes without samples.
    :param precision: Precision, 0 where nothing was predicted as the class.
    :param recall: Recall, 0 where the class has no sample.
    :param f1: F1, 0 where precision + recall = 0.
    """

    support: np.ndarray
    accuracy: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray


def per_class_scores(matrix: np.ndarray) -> PerClassScores:
    """
    Compute per-class accuracy, precision, recall and F1 from a confusion matrix.

    :param matrix: (C, C) counts, rows = true class, columns = prediction.
    :return: The scores.
    :raises ValueError: If the matrix is not square.
    """
    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f'matrix must be square (C, C), got {matrix.shape}')
    tp = np.diag(matrix).astype(np.float64)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = _safe_divide(tp, predicted)
    recall = _safe_divide(tp, support)
    f1 = _safe_divide(2 * precision * recall, precision + recall)
    accuracy = np.where(support > 0, recall, np.nan)
    return PerClassScores(support=support, accuracy=accuracy, precision=precision,
                          recall=recall, f1=f1)


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """
    Return each class's accuracy (correct / samples of the class).

    :param matrix: (C, C) confusion matrix.
    :return: (C,) float64; ``nan`` for classes without samples.
    """
    return per_class_scores(matrix).accuracy


def macro_scores(matrix: np.ndarray) -> Dict[str, float]:
    """
    Return macro-averaged precision, recall and F1 and the mean class accuracy.

    Precision/recall/F1 average over classes present in the targets or the predictions
    (scikit-learn's ``average='macro'`` with ``zero_division=0``); mean class accuracy averages
    over classes present in the targets.

    :param matrix: (C, C) confusion matrix.
    :return: ``{'precision', 'recall', 'f1', 'mean_class_accuracy'}``; ``nan`` when empty.
    """
    scores = per_class_scores(matrix)
    matrix = np.asarray(matrix)
    present = (scores.support > 0) | (matrix.sum(axis=0) > 0)
    has_samples = scores.support > 0

    def mean(values: np.ndarray, mask: np.ndarray) -> float:
        return float(values[mask].mean()) if mask.any() else math.nan

    return {
        'precision': mean(scores.precision, present),
        'recall': mean(scores.recall, present),
        'f1': mean(scores.f1, present),
        'mean_class_accuracy': mean(scores.recall, has_samples),
    }


@dataclass(frozen=True)
class ClassificationReport:
    """
    Everything reported for one evaluation run.

    :param labels: Class names (C).
    :param num_samples: N.
    :param top_k: ``{k: accuracy}`` for the requested k.
    :param macro: Macro precision/recall/F1 and mean class accuracy (see :func:`macro_scores`).
    :param per_class: Per-class scores.
    :param confusion: (C, C) int64 confusion matrix of the top-1 predictions.
    """

    labels: Tuple[str, ...]
    num_samples: int
    top_k: Dict[int, float]
    macro: Dict[str, float]
    per_class: PerClassScores
    confusion: np.ndarray

    def to_dict(self) -> Dict[str, Any]:
        """
        Return a JSON-serialisable dict (``nan`` becomes ``None``).

        :return: The dict.
        """
        def clean(x: Any) -> Any:
            if isinstance(x, float) and math.isnan(x):
                return None
            return x

        per_class = {key: [clean(float(v)) if key != 'support' else int(v) for v in value]
                     for key, value in asdict(self.per_class).items()}
        return {
            'num_samples': self.num_samples,
            'num_classes': len(self.labels),
            'top_k_accuracy': {str(k): clean(v) for k, v in self.top_k.items()},
            'macro': {k: clean(v) for k, v in self.macro.items()},
            'labels': list(self.labels),
            'per_class': per_class,
            'confusion_matrix': self.confusion.tolist(),
        }

    def to_markdown(self, title: str = 'Classification results') -> str:
        """
        Render the headline numbers and the per-class table as Markdown (percentages).

        :param title: Heading text.
        :return: The Markdown text.
        """
        def pct(v: float) -> str:
            return '-' if math.isnan(v) else f'{100 * v:.2f}'

        lines = [f'## {title}', '', f'Samples: {self.num_samples}, classes: {len(self.labels)}',
                 '']
        head = [f'Top-{k}' for k in self.top_k] + ['mAcc', 'macro P', 'macro R', 'macro F1']
        values = [pct(v) for v in self.top_k.values()] + [
            pct(self.macro[k]) for k in ('mean_class_accuracy', 'precision', 'recall', 'f1')]
        lines += ['| ' + ' | '.join(head) + ' |', '|' + '---|' * len(head),
                  '| ' + ' | '.join(values) + ' |', '',
                  '| class | samples | accuracy | precision | recall | F1 |',
                  '|---|---|---|---|---|---|']
        pc = self.per_class
        for i, label in enumerate(self.labels):
            lines.append(f'| {label} | {int(pc.support[i])} | {pct(pc.accuracy[i])} | '
                         f'{pct(pc.precision[i])} | {pct(pc.recall[i])} | {pct(pc.f1[i])} |')
        return '\n'.join(lines) + '\n'


def classification_report(scores: np.ndarray, targets: np.ndarray, labels: Sequence[str],
                          ks: Sequence[int] = DEFAULT_KS) -> ClassificationReport:
    """
    Compute every reported metric from class scores.

    :param scores: (N, C) scores, higher is better; top-1 = argmax (ties: lower index).
    :param targets: (N,) int class indices.
    :param labels: C class names.
    :param ks: The top-k values to report.
    :return: The report.
    :raises ValueError: If ``labels`` does not have C entries, or on bad shapes.
    """
    scores, targets = _check_scores_targets(scores, targets)
    if len(labels) != scores.shape[1]:
        raise ValueError(f'labels has {len(labels)} entries but scores has {scores.shape[1]} '
                         'columns')
    predictions = top_k_predictions(scores, 1)[:, 0] if len(targets) else targets
    matrix = confusion_matrix(targets, predictions, len(labels))
    return ClassificationReport(
        labels=tuple(labels), num_samples=int(len(targets)),
        top_k=top_k_accuracies(scores, targets, ks), macro=macro_scores(matrix),
        per_class=per_class_scores(matrix), confusion=matrix)


def save_confusion_png(matrix: np.ndarray, labels: Sequence[str], path: Union[str, Path], *,
                       normalize: bool = True, title: Optional[str] = None) -> Path:
    """
    Draw a confusion matrix as a PNG heat map (readable up to about 60 classes).

    Rows are true classes, columns predictions. The figure grows with the class count; cell
    values are printed when there are at most 20 classes.

    :param matrix: (C, C) counts.
    :param labels: C class names.
    :param path: Output file (parent folders are created).
    :param normalize: Colour by row fraction (per-class recall) instead of raw counts.
    :param title: Figure title.
    :return: The path written.
    :raises ValueError: If the matrix is not square or ``labels`` has the wrong length.
    """
    # The Agg canvas directly, not pyplot: no GUI backend, no global state, thread-safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    matrix = np.asarray(matrix)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f'matrix must be square (C, C), got {matrix.shape}')
    c = matrix.shape[0]
    if len(labels) != c:
        raise ValueError(f'labels has {len(labels)} entries, matrix is {c}x{c}')
    values = matrix.astype(np.float64)
    if normalize:
        values = _safe_divide(values, values.sum(axis=1, keepdims=True))
    side = max(4.0, 0.28 * c + 2.5)
    font = 10 if c <= 20 else max(4.0, 9 - 0.05 * c)
    fig = Figure(figsize=(side, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap='Blues', vmin=0, vmax=1 if normalize else None,
                      interpolation='nearest')
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04,
                 label='fraction of true class' if normalize else 'count')
    ticks = np.arange(c)
    ax.set_xticks(ticks, labels=list(labels), rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels=list(labels), fontsize=font)
    ax.set_xlabel('predicted')
    ax.set_ylabel('true')
    if title:
        ax.set_title(title)
    if c <= 20:
        top = values.max() if values.size else 0
        for i in range(c):
            for j in range(c):
                if matrix[i, j]:
                    text = f'{values[i, j]:.2f}' if normalize else str(int(matrix[i, j]))
                    ax.text(j, i, text, ha='center', va='center', fontsize=font - 2,
                            color='white' if values[i, j] > 0.5 * top else 'black')
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
