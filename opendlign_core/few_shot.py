"""
Few-shot linear probing on multi-view features (spec section 5.3).

The paper trains a logistic regressor on N-shot, 10-view features from both encoders and
aggregates its logits over the views; it releases no code, so the details here are our reading
(spec section 10, item 12): every view's L2-normalised feature is one training sample carrying its
object's label; at test time the regressor's ``decision_function`` is summed over the object's
views and the argmax is the prediction. Support sets are drawn per class with a seed; results are
averaged over seeds (the paper uses 10).
"""

from dataclasses import dataclass
import logging
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from opendlign_core.metrics import top_k_accuracies

_logger = logging.getLogger(__name__)


def _check_features(features: np.ndarray, name: str = 'view_features') -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 3:
        raise ValueError(f'{name} must have shape (N, V, D), got {features.shape}')
    if not np.isfinite(features).all():
        raise ValueError(f'{name} holds non-finite values')
    return features


def _normalize(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def sample_few_shot(targets: np.ndarray, shots: int, seed: int,
                    num_classes: Optional[int] = None) -> np.ndarray:
    """
    Draw ``shots`` objects per class without replacement.

    :param targets: (N,) int class indices of the pool.
    :param shots: Objects per class, >= 1.
    :param seed: Seed of the draw (numpy ``default_rng``).
    :param num_classes: C; every class in [0, C) must have ``shots`` objects. ``None`` uses the
        classes present in ``targets``.
    :return: (C * shots,) int64 positions into ``targets``, grouped by class, sorted within.
    :raises ValueError: If ``shots`` < 1 or a class has fewer than ``shots`` objects.
    """
    targets = np.asarray(targets)
    if targets.ndim != 1:
        raise ValueError(f'targets must be 1-D, got shape {targets.shape}')
    if shots < 1:
        raise ValueError(f'shots must be >= 1, got {shots!r}')
    classes = range(num_classes) if num_classes is not None else np.unique(targets)
    rng = np.random.default_rng(seed)
    picks = []
    short = []
    for c in classes:
        members = np.flatnonzero(targets == c)
        if len(members) < shots:
            short.append((int(c), len(members)))
            continue
        picks.append(np.sort(rng.choice(members, size=shots, replace=False)))
    if short:
        raise ValueError(f'{shots}-shot sampling needs {shots} objects per class; too few in '
                         f'(class, count): {short[:10]}')
    return np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)


class LinearProbe:
    """
    Logistic regression on per-view features with logits summed over views.

    :param num_classes: C; score columns follow class indices 0..C-1 even when the training set
        lacks some (their columns are ``-inf``).
    :param c: Inverse regularisation strength of scikit-learn's ``LogisticRegression`` (the paper
        does not give one).
    :param max_iter: Solver iteration cap.
    :param normalize: L2-normalise every view feature first (features from the classifier already
        are; normalising again is harmless).
    """

    def __init__(self, num_classes: int, *, c: float = 1.0, max_iter: int = 1000,
                 normalize: bool = True) -> None:
        if num_classes < 2:
            raise ValueError(f'num_classes must be >= 2, got {num_classes!r}')
        if c <= 0:
            raise ValueError(f'c must be > 0, got {c!r}')
        self.num_classes = num_classes
        self.c = c
        self.max_iter = max_iter
        self.normalize = normalize
        self._model = None

    def _flatten(self, features: np.ndarray) -> np.ndarray:
        n, v, d = features.shape
        flat = features.reshape(n * v, d)
        return _normalize(flat) if self.normalize else flat

    def fit(self, view_features: np.ndarray, targets: np.ndarray) -> 'LinearProbe':
        """
        Train on labelled objects, one sample per view.

        :param view_features: (N, V, D) view features.
        :param targets: (N,) int class indices in [0, C).
        :return: ``self``.
        :raises ValueError: On bad shapes, out-of-range targets or fewer than 2 classes.
        """
        from sklearn.linear_model import LogisticRegression

        features = _check_features(view_features)
        targets = np.asarray(targets)
        if targets.shape != (features.shape[0],):
            raise ValueError(f'targets must have shape ({features.shape[0]},), got '
                             f'{targets.shape}')
        if targets.size and (targets.min() < 0 or targets.max() >= self.num_classes):
            raise ValueError(f'targets must lie in [0, {self.num_classes})')
        if len(np.unique(targets)) < 2:
            raise ValueError('the training set must hold at least 2 classes')
        view_targets = np.repeat(targets, features.shape[1])
        model = LogisticRegression(C=self.c, max_iter=self.max_iter)
        model.fit(self._flatten(features), view_targets)
        self._model = model
        return self

    def view_logits(self, view_features: np.ndarray) -> np.ndarray:
        """
        Return the regressor's logits for every view.

        :param view_features: (N, V, D) view features.
        :return: (N, V, C) float64 logits; classes absent from training get ``-inf``.
        :raises RuntimeError: If called before :meth:`fit`.
        """
        if self._model is None:
            raise RuntimeError('LinearProbe.fit must be called first')
        features = _check_features(view_features)
        n, v, _ = features.shape
        raw = self._model.decision_function(self._flatten(features))
        if raw.ndim == 1:
            # Binary case: scikit-learn returns the logit of classes_[1] only.
            raw = np.stack([-raw / 2, raw / 2], axis=1)
        out = np.full((n * v, self.num_classes), -np.inf)
        out[:, self._model.classes_] = raw
        return out.reshape(n, v, self.num_classes)

    def decision_function(self, view_features: np.ndarray) -> np.ndarray:
        """
        Return the per-object scores: logits summed over views.

        :param view_features: (N, V, D) view features.
        :return: (N, C) float64 scores.
        """
        return self.view_logits(view_features).sum(axis=1)

    def predict(self, view_features: np.ndarray) -> np.ndarray:
        """
        Predict class indices.

        :param view_features: (N, V, D) view features.
        :return: (N,) int64 argmax of :meth:`decision_function`.
        """
        return self.decision_function(view_features).argmax(axis=1).astype(np.int64)


@dataclass(frozen=True)
class FewShotResult:
    """
    Accuracy of N-shot probes over several seeds.

    :param shots: N.
    :param seeds: The seeds used.
    :param per_seed: ``{k: accuracies, one per seed}``.
    :param mean: ``{k: mean over seeds}``.
    :param std: ``{k: population standard deviation over seeds}``.
    """

    shots: int
    seeds: Tuple[int, ...]
    per_seed: Dict[int, Tuple[float, ...]]
    mean: Dict[int, float]
    std: Dict[int, float]


def evaluate_few_shot(
    view_features: np.ndarray,
    targets: np.ndarray,
    shots: int,
    *,
    num_classes: int,
    seeds: Sequence[int] = tuple(range(10)),
    query_features: Optional[np.ndarray] = None,
    query_targets: Optional[np.ndarray] = None,
    ks: Sequence[int] = (1,),
    c: float = 1.0,
) -> FewShotResult:
    """
    Train an N-shot probe per seed and report its accuracy, averaged over seeds.

    The support set is drawn from (``view_features``, ``targets``). Without a separate query set
    the probe is scored on the pool objects not in that seed's support set.

    :param view_features: (N, V, D) features of the support pool.
    :param targets: (N,) class indices of the pool.
    :param shots: Objects per class in each support set.
    :param num_classes: C.
    :param seeds: One probe per seed.
    :param query_features: (M, V, D) features of a separate test set, or ``None``.
    :param query_targets: (M,) its class indices (required with ``query_features``).
    :param ks: Top-k values to report.
    :param c: Inverse regularisation strength of the probe.
    :return: The result.
    :raises ValueError: If exactly one of the query arguments is given, ``seeds`` is empty, or no
        query object remains.
    """
    features = _check_features(view_features)
    targets = np.asarray(targets)
    if (query_features is None) != (query_targets is None):
        raise ValueError('query_features and query_targets must be given together')
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError('seeds must not be empty')
    per_seed: Dict[int, list] = {int(k): [] for k in ks}
    for seed in seeds:
        support = sample_few_shot(targets, shots, seed, num_classes)
        if query_features is None:
            rest = np.setdiff1d(np.arange(len(targets)), support)
            q_feats, q_targets = features[rest], targets[rest]
        else:
            q_feats = _check_features(query_features, 'query_features')
            q_targets = np.asarray(query_targets)
        if len(q_targets) == 0:
            raise ValueError('no query objects left to evaluate on')
        probe = LinearProbe(num_classes, c=c).fit(features[support], targets[support])
        for k, acc in top_k_accuracies(probe.decision_function(q_feats), q_targets, ks).items():
            per_seed[k].append(acc)
        _logger.debug('%d-shot seed %d: %s', shots, seed, {k: v[-1] for k, v in per_seed.items()})
    return FewShotResult(
        shots=shots, seeds=seeds,
        per_seed={k: tuple(v) for k, v in per_seed.items()},
        mean={k: float(np.mean(v)) for k, v in per_seed.items()},
        std={k: float(np.std(v)) for k, v in per_seed.items()},
    )
