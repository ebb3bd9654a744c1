"""Tests of N-shot sampling and the view-summed logistic-regression probe."""

import numpy as np
import pytest

from opendlign_core.few_shot import LinearProbe, evaluate_few_shot, sample_few_shot


def _separable(n_per_class, num_classes=3, views=4, dim=6, seed=0, noise=0.05):
    """Objects of class c have views near the basis vector e_c."""
    rng = np.random.default_rng(seed)
    targets = np.repeat(np.arange(num_classes), n_per_class)
    feats = np.eye(dim)[targets][:, None, :] + noise * rng.normal(size=(len(targets), views, dim))
    return feats, targets


def test_sample_few_shot():
    targets = np.array([0, 1, 0, 2, 1, 0, 2, 1, 2, 0])
    picks = sample_few_shot(targets, 2, seed=3)
    assert len(picks) == 6 and len(set(picks)) == 6
    np.testing.assert_array_equal(targets[picks], [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(picks, sample_few_shot(targets, 2, seed=3))
    draws = {tuple(sample_few_shot(targets, 2, seed=s)) for s in range(10)}
    assert len(draws) > 1
    first = sample_few_shot(targets, 3, seed=0)[:3]
    assert set(first) <= {0, 2, 5, 9} and list(first) == sorted(first)
    with pytest.raises(ValueError, match=r'too few in \(class, count\): \[\(1, 3\), \(2, 3\)\]'):
        sample_few_shot(targets, 4, seed=0)
    with pytest.raises(ValueError, match=r'\(3, 0\)'):
        sample_few_shot(targets, 1, seed=0, num_classes=4)
    with pytest.raises(ValueError, match='shots must be'):
        sample_few_shot(targets, 0, seed=0)


def test_probe_separable_exact_predictions():
    train, train_t = _separable(2, seed=0)
    test, test_t = _separable(5, seed=1)
    probe = LinearProbe(3).fit(train, train_t)
    np.testing.assert_array_equal(probe.predict(test), test_t)
    scores = probe.decision_function(test)
    assert scores.shape == (15, 3)
    np.testing.assert_allclose(scores, probe.view_logits(test).sum(axis=1))


def test_probe_sums_sklearn_logits_over_views():
    from sklearn.linear_model import LogisticRegression

    train, train_t = _separable(3, seed=2, noise=0.3)
    test, _ = _separable(2, seed=3, noise=0.6)
    probe = LinearProbe(3, c=0.5).fit(train, train_t)
    flat = train / np.linalg.norm(train, axis=-1, keepdims=True)
    ref = LogisticRegression(C=0.5, max_iter=1000).fit(flat.reshape(-1, 6), np.repeat(train_t, 4))
    test_flat = (test / np.linalg.norm(test, axis=-1, keepdims=True)).reshape(-1, 6)
    expected = ref.decision_function(test_flat).reshape(6, 4, 3).sum(axis=1)
    np.testing.assert_allclose(probe.decision_function(test), expected, rtol=1e-6)


def test_view_disagreement_is_resolved_by_summed_logits():
    train, train_t = _separable(4, num_classes=2, dim=2, seed=4)
    probe = LinearProbe(2, c=10.0).fit(train, train_t)
    # three views weakly class 0, one view strongly class 1 -> class 0 wins the sum
    obj = np.array([[[0.6, 0.4], [0.6, 0.4], [0.6, 0.4], [0.0, 1.0]]])
    logits = probe.view_logits(obj)[0]
    assert logits.shape == (4, 2)
    assert (logits[:3].argmax(1) == 0).all() and logits[3].argmax() == 1
    np.testing.assert_allclose(logits[:, 0], -logits[:, 1])  # binary: +-d/2
    assert probe.predict(obj)[0] == int(logits.sum(0).argmax())


def test_missing_training_class_gets_minus_inf():
    train, train_t = _separable(2, num_classes=3, seed=5)
    keep = train_t != 1
    probe = LinearProbe(3).fit(train[keep], train_t[keep])
    scores = probe.decision_function(train)
    assert np.isneginf(scores[:, 1]).all() and np.isfinite(scores[:, [0, 2]]).all()


def test_probe_errors():
    feats, targets = _separable(2)
    with pytest.raises(RuntimeError, match='fit must be called'):
        LinearProbe(3).predict(feats)
    with pytest.raises(ValueError, match=r'shape \(N, V, D\)'):
        LinearProbe(3).fit(feats[:, 0], targets)
    with pytest.raises(ValueError, match='at least 2 classes'):
        LinearProbe(3).fit(feats[:2], targets[:2])
    with pytest.raises(ValueError, match='must lie in'):
        LinearProbe(2).fit(feats, targets)
    with pytest.raises(ValueError, match='c must be'):
        LinearProbe(3, c=0)


def test_evaluate_few_shot_pool_and_query():
    pool, pool_t = _separable(6, seed=6)
    res = evaluate_few_shot(pool, pool_t, 2, num_classes=3, seeds=(0, 1, 2), ks=(1, 2))
    assert res.seeds == (0, 1, 2) and res.shots == 2
    assert res.per_seed[1] == (1.0, 1.0, 1.0) and res.mean == {1: 1.0, 2: 1.0}
    assert res.std[1] == 0.0
    query, query_t = _separable(3, seed=7)
    res = evaluate_few_shot(pool, pool_t, 1, num_classes=3, seeds=range(2),
                            query_features=query, query_targets=query_t)
    assert res.mean[1] == 1.0 and len(res.per_seed[1]) == 2
    with pytest.raises(ValueError, match='given together'):
        evaluate_few_shot(pool, pool_t, 1, num_classes=3, query_features=query)
    with pytest.raises(ValueError, match='no query objects'):
        evaluate_few_shot(pool, pool_t, 6, num_classes=3, seeds=(0,))
