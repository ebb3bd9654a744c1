"""Tests of the evaluation commands: exact metrics with a stub encoder; a tiny model end to end."""

import csv
import json
import math

import numpy as np
from PIL import Image
import pytest
import torch

from opendlign_core import eval_cli
from opendlign_core.classifier import Classifier, LabelSet
from opendlign_core.config import ModelConfig, OpenDlignConfig
from opendlign_core.datasets import DepthMapDataset

TINY = 'OpenDlign-Tiny-Test'
E = math.e


def _write_dataset(root, items, shape=(10, 16, 16)):
    """Write ``(label, value)`` items as released files; each view is filled with ``value``."""
    folder = root / 'toy' / 'depth_map'
    folder.mkdir(parents=True)
    for i, (label, value) in enumerate(items):
        views = np.full(shape + (3,), value, np.float32)
        np.save(folder / f'{i}+{label}_dm.npy', views)
    return root


class _StubModel:
    source = 'stub weights'
    model_name = 'stub'
    device = torch.device('cpu')


class StubClassifier:
    """Maps a view filled with 0.1 * (k + 1) to the one-hot feature of class k."""

    model = _StubModel()

    def encode_labels(self, labels, templates=None):
        return LabelSet(labels=tuple(labels), weights=torch.eye(len(labels), 4),
                        templates=templates or 'depth')

    def embed_views(self, views):
        k = (views.mean(dim=(2, 3)) * 10).round().long() - 1  # (B, V)
        return torch.nn.functional.one_hot(k, 4).float()


# bowl = class 0, cup = class 1 (sorted); the last cup looks like a bowl.
ITEMS = [('bowl', 0.1), ('bowl', 0.1), ('bowl', 0.1), ('cup', 0.2), ('cup', 0.2), ('cup', 0.1)]


def test_evaluate_exact_metrics_with_stub(tmp_path):
    root = _write_dataset(tmp_path, ITEMS)
    ds = DepthMapDataset.from_root(root, 'toy')
    result = eval_cli.evaluate(StubClassifier(), ds, batch_size=4)
    assert result.labels == ('bowl', 'cup')
    p = E / (1 + E)  # per-view softmax of raw cosines (1, 0), summed over views / V
    np.testing.assert_allclose(result.scores, [[p, 1 - p]] * 3 + [[1 - p, p]] * 2 + [[p, 1 - p]],
                               rtol=1e-6)
    rep = result.report
    assert rep.top_k == {1: pytest.approx(5 / 6), 3: 1.0, 5: 1.0}
    np.testing.assert_array_equal(rep.confusion, [[3, 0], [1, 2]])
    np.testing.assert_allclose(rep.per_class.accuracy, [1, 2 / 3])
    assert rep.macro['f1'] == pytest.approx((6 / 7 + 0.8) / 2)
    assert result.info['templates'] == 'depth' and result.info['num_views'] == 10
    assert result.info['random_weights'] is False


def test_eval_cls_cli_with_stub_writes_consistent_outputs(tmp_path, monkeypatch, capsys):
    root = _write_dataset(tmp_path / 'data', ITEMS)
    monkeypatch.setattr(eval_cli, 'build_classifier', lambda config: StubClassifier())
    out = tmp_path / 'out'
    code = eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--batch-size', '4', '--no-progress'])
    assert code == 0
    stdout = capsys.readouterr().out
    assert 'Top-1: 83.33% Top-3: 100.00% Top-5: 100.00%' in stdout
    assert 'weights: stub weights (stub)' in stdout
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['top_k_accuracy'] == {'1': pytest.approx(5 / 6), '3': 1.0, '5': 1.0}
    assert metrics['confusion_matrix'] == [[3, 0], [1, 2]]
    assert metrics['num_samples'] == 6 and metrics['dataset'] == 'toy'
    assert '| 83.33 | 100.00 | 100.00 |' in (out / 'metrics.md').read_text()
    with open(out / 'predictions.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['predicted'] for r in rows] == ['bowl'] * 3 + ['cup'] * 2 + ['bowl']
    assert rows[5]['file'] == '5+cup_dm.npy' and rows[5]['true'] == 'cup'
    with Image.open(out / 'confusion.png') as im:
        assert im.format == 'PNG'


def test_eval_cls_limit_and_errors(tmp_path, monkeypatch, capsys):
    root = _write_dataset(tmp_path / 'data', ITEMS)
    monkeypatch.setattr(eval_cli, 'build_classifier', lambda config: StubClassifier())
    out = tmp_path / 'out'
    assert eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--limit', '2', '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['num_samples'] == 2 and metrics['limit'] == 2
    capsys.readouterr()
    assert eval_cli.main(['eval-cls', str(root), '--dataset', 'modelnet40', '--out',
                          str(out)]) == 2
    assert 'datasets under' in capsys.readouterr().err
    assert eval_cli.main(['eval-cls', '--dataset', 'toy', '--out', str(out)]) == 2
    assert 'needs ROOT' in capsys.readouterr().err
    assert eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--limit', '0']) == 2
    capsys.readouterr()
    assert eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--labels', 'cup,plate']) == 2
    assert "['bowl'] are not in the class list" in capsys.readouterr().err
    assert eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--labels', 'cup,plate,bowl', '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['labels'] == ['cup', 'plate', 'bowl']
    assert metrics['per_class']['support'] == [3, 0, 3]


def test_default_model_config(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(eval_cli, 'BUNDLED_WEIGHTS', tmp_path / 'missing.safetensors')
    cfg = eval_cli.default_model_config()
    assert cfg == ModelConfig(model_name=TINY, weights_path='')
    assert 'RANDOM WEIGHTS' in caplog.text
    bundled = tmp_path / 'opendlign-bootstrap.safetensors'
    bundled.write_bytes(b'')
    monkeypatch.setattr(eval_cli, 'BUNDLED_WEIGHTS', bundled)
    assert eval_cli.default_model_config('cuda:0') == ModelConfig(device='cuda:0')
    assert eval_cli.model_config_from_args('w.pth', 'ViT-B-16', 'cpu') == ModelConfig(
        model_name='ViT-B-16', weights_path='w.pth')
    assert eval_cli.model_config_from_args(None, 'ViT-B-16', 'cpu', 'bf16') == ModelConfig(
        model_name='ViT-B-16', weights_path='', precision='bf16')


def test_parse_labels(tmp_path):
    assert eval_cli.parse_labels(' a, b ,,c ') == ('a', 'b', 'c')
    assert len(eval_cli.parse_labels('modelnet40')) == 40
    f = tmp_path / 'labels.txt'
    f.write_text('chair\n\nred wine glass\n')
    assert eval_cli.parse_labels(str(f)) == ('chair', 'red wine glass')
    with pytest.raises(ValueError, match='holds no label'):
        eval_cli.parse_labels(' , ')


@pytest.fixture(scope='module')
def tiny_classifier():
    torch.manual_seed(0)
    return Classifier.from_config(OpenDlignConfig(model=ModelConfig(model_name=TINY)))


@pytest.fixture
def reuse_tiny(monkeypatch, tiny_classifier):
    """Build command classifiers around the one tiny model (each keeps its own config)."""
    def build(config):
        assert config.model.model_name == TINY and not config.model.weights_path
        return Classifier(tiny_classifier.model, config)

    monkeypatch.setattr(eval_cli, 'build_classifier', build)


def test_eval_cls_end_to_end_tiny_model(tmp_path, reuse_tiny, tiny_classifier, capsys):
    rng = np.random.default_rng(0)
    root = tmp_path / 'data'
    folder = root / 'toy' / 'depth_map'
    folder.mkdir(parents=True)
    for i, label in enumerate(['mug', 'chair'] * 3):
        np.save(folder / f'{i}+{label}_dm.npy',
                np.repeat(rng.uniform(0, 1, (10, 32, 32, 1)).astype(np.float32), 3, axis=-1))
    out = tmp_path / 'out'
    code = eval_cli.main(['eval-cls', str(root), '--dataset', 'toy', '--out', str(out),
                          '--model-name', TINY, '--batch-size', '4'])
    assert code == 0
    captured = capsys.readouterr()
    assert '*** random weights (OpenDlign-Tiny-Test, untrained): predictions are meaningless' \
        in captured.err
    assert 'weights: random weights (OpenDlign-Tiny-Test, untrained)' in captured.out
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['random_weights'] is True and metrics['num_views'] == 10
    assert np.sum(metrics['confusion_matrix']) == 6
    assert metrics['top_k_accuracy']['5'] == 1.0
    with open(out / 'predictions.csv') as f:
        rows = list(csv.DictReader(f))
    top1 = np.mean([r['true'] == r['predicted'] for r in rows])
    assert metrics['top_k_accuracy']['1'] == pytest.approx(top1)
    assert (out / 'confusion.png').stat().st_size > 0
    # The written predictions agree with the classifier's own.
    ds = DepthMapDataset.from_root(root, 'toy')
    views = torch.from_numpy(np.stack([ds.load_views(i) for i in range(len(ds))]))
    preds = tiny_classifier.classify_views(views, tiny_classifier.encode_labels(ds.labels))
    assert [p.label for p in preds] == [r['predicted'] for r in rows]
    np.testing.assert_allclose([p.score for p in preds], [float(r['score']) for r in rows],
                               rtol=1e-4)


def test_classify_views_file(tmp_path, reuse_tiny, capsys):
    f = tmp_path / '0+cup_dm.npy'
    np.save(f, np.full((10, 32, 32, 3), 0.5, np.float32))
    assert eval_cli.main(['classify', str(f), '--labels', 'cup,bowl,chair', '--top-k', '2',
                          '--model-name', TINY]) == 0
    out = capsys.readouterr().out
    assert 'weights: random weights (OpenDlign-Tiny-Test, untrained)' in out
    assert f'{f}: ' in out and '  1. ' in out and '  2. ' in out and '  3. ' not in out
    assert eval_cli.main(['classify', str(tmp_path / 'nope.ply'), '--labels', 'a,b',
                          '--model-name', TINY]) == 2


def test_classify_point_cloud(tmp_path, reuse_tiny, capsys):
    rng = np.random.default_rng(0)
    f = tmp_path / 'box.xyz'
    np.savetxt(f, rng.uniform(-1, 1, (500, 3)) * [0.5, 0.3, 0.2])
    assert eval_cli.main(['classify', str(f), '--labels', 'box,ball', '--model-name', TINY,
                          '--up-axis', 'y']) == 0
    out = capsys.readouterr().out
    assert f'{f}: ' in out and '  2. ' in out


def test_project_views_npy(tmp_path, capsys):
    f = tmp_path / 'views.npy'
    np.save(f, np.linspace(0, 1, 10 * 24 * 24, dtype=np.float32).reshape(10, 24, 24))
    png = tmp_path / 'views.png'
    assert eval_cli.main(['project', str(f), '--out', str(png)]) == 0
    with Image.open(png) as im:
        assert im.format == 'PNG' and im.size == (5 * 24 + 6 * 4, 2 * 24 + 3 * 4)
    assert '10 views 24x24 (views 0-4 pre-trained encoder, 5-9 depth branch)' in \
        capsys.readouterr().out


def test_project_point_cloud(tmp_path):
    rng = np.random.default_rng(0)
    f = tmp_path / 'cloud.npy'
    np.save(f, rng.normal(size=(300, 3)).astype(np.float32))
    png = tmp_path / 'out' / 'views.png'
    assert eval_cli.main(['project', str(f), '--out', str(png), '--resolution', '64']) == 0
    with Image.open(png) as im:
        assert im.size == (5 * 64 + 6 * 4, 2 * 64 + 3 * 4)


def test_eval_cls_points_dir_tiny_model(tmp_path, reuse_tiny, tiny_classifier, capsys):
    rng = np.random.default_rng(2)
    root = tmp_path / 'clouds'
    for label, scale in (('flat_box', [1.0, 1.0, 0.1]), ('pole', [0.1, 0.1, 1.0])):
        (root / label).mkdir(parents=True)
        for i in range(2):
            np.save(root / label / f'{i}.npy',
                    (rng.uniform(-1, 1, (400, 3)) * scale).astype(np.float32))
    out = tmp_path / 'out'
    assert eval_cli.main(['eval-cls', '--points-dir', str(root), '--labels', 'pole,flat box,cup',
                          '--out', str(out), '--model-name', TINY, '--no-progress']) == 0
    metrics = json.loads((out / 'metrics.json').read_text())
    assert metrics['labels'] == ['pole', 'flat box', 'cup']
    assert metrics['per_class']['support'] == [2, 2, 0]
    assert metrics['top_k_accuracy']['3'] == 1.0 and metrics['templates'] == 'depth'
    with open(out / 'predictions.csv') as f:
        rows = list(csv.DictReader(f))
    assert [r['file'] for r in rows] == ['0.npy', '1.npy'] * 2
    # Same predictions as classifying the clouds directly.
    from opendlign_core.datasets import PointCloudFolder

    ds = PointCloudFolder(root)
    clouds = [ds.load_points(i) for i in range(len(ds))]
    preds = tiny_classifier.classify_points(
        clouds, tiny_classifier.encode_labels(['pole', 'flat box', 'cup']))
    assert [r['predicted'] for r in rows] == [p.label for p in preds]
