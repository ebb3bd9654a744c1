"""Tests of training/finetune.py: cached == uncached, smoke run, resume, DDP, learning signal."""

import json
import os
from pathlib import Path
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opendlign_core.config import ModelConfig
from opendlign_core.model import create_depth_clip
from training import finetune as ft

TINY = 'OpenDlign-Tiny-Test'


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    model = create_depth_clip(ModelConfig(model_name=TINY), depth_branch=True)
    with torch.no_grad():  # make the depth block differ from the block it was copied from
        for _, p in model.depth_trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.requires_grad_(False)
    for _, p in model.depth_trainable_parameters():
        p.requires_grad_(True)
    return model


def _grads(model):
    return {n: p.grad.detach().clone() for n, p in model.depth_trainable_parameters()}


def test_block_cls_forward_equals_block():
    model = _tiny_model()
    x = torch.randn(3, 50, 64)
    ref = model.depth_block(x)[:, 0]
    assert torch.allclose(ft.block_cls_forward(model.depth_block, x), ref, atol=1e-5)


def test_cached_loss_and_gradients_equal_uncached(aligned_root):
    model = _tiny_model()
    objects = ft.list_objects(str(aligned_root))
    depth, rgb = map(torch.stack, zip(*(ft.load_object(str(aligned_root), o) for o in objects)))
    v = depth.shape[1]
    h_r = ft.rgb_object_features(model, rgb)

    h_d_full = ft.object_features(ft.FullDepthEncoder(model)(depth.flatten(0, 1)), v)
    full = ft.compute_losses(h_d_full, h_r, model.logit_scale)
    full['backward'].backward()
    g_full = _grads(model)
    model.zero_grad()

    # cache built the way main() builds it (fp32 memmaps), then the cached head
    args = ft.FinetuneArgs(data_root=str(aligned_root), model_name=TINY, cache_batch_size=3)
    cache = ft.build_trunk_cache(model, args, objects, aligned_root.parent / 'cache')
    ds = ft.CachedDataset(cache)
    _, x_in, y_cls, h_r_cached = map(lambda t: torch.stack(t) if isinstance(t[0], torch.Tensor)
                                     else t, zip(*(ds[i] for i in range(len(ds)))))
    assert torch.allclose(h_r_cached, h_r, atol=1e-6)
    feats = ft.CachedDepthHead(model)(x_in.flatten(0, 1), y_cls.flatten(0, 1))
    h_d_cached = ft.object_features(feats, v)
    cached = ft.compute_losses(h_d_cached, h_r_cached, model.logit_scale)
    cached['backward'].backward()
    g_cached = _grads(model)

    assert torch.allclose(h_d_cached, h_d_full, atol=1e-6)
    assert float(cached['loss']) == pytest.approx(float(full['loss']), abs=1e-6)
    assert float(full['loss']) > 0.1
    for name in g_full:
        assert g_full[name].abs().max() > 0, name
        assert torch.allclose(g_cached[name], g_full[name], atol=1e-6, rtol=1e-4), name


def test_loss_matches_hand_computation():
    torch.manual_seed(0)
    h_d = F.normalize(torch.randn(3, 4), dim=-1)
    h_r = F.normalize(torch.randn(3, 4), dim=-1)
    s = 10.0
    logits = (s * h_d @ h_r.T).numpy().astype(np.float64)

    def ce(lg):
        lg = lg - lg.max(axis=1, keepdims=True)
        return float(np.mean(-np.diag(lg) + np.log(np.exp(lg).sum(axis=1))))

    expected = 0.5 * (ce(logits) + ce(logits.T)) + float(((h_d - h_r) ** 2).mean())
    out = ft.compute_losses(h_d, h_r, s)
    assert float(out['loss']) == pytest.approx(expected, rel=1e-5)


def test_parse_args_validation(tmp_path, aligned_root):
    with pytest.raises(ValueError, match='--data-root'):
        ft.parse_args(['--data-root', str(tmp_path / 'missing')])
    with pytest.raises(ValueError, match='--batch-size'):
        ft.parse_args(['--data-root', str(aligned_root), '--batch-size', '0'])
    with pytest.raises(ValueError, match='--val-labels needs'):
        ft.parse_args(['--data-root', str(aligned_root), '--val-labels', 'x.json'])
    args = ft.parse_args(['--data-root', str(aligned_root)])
    assert (args.epochs, args.batch_size, args.lr, args.max_lr, args.seed) == \
        (10, 128, 3e-5, 3e-4, 42)


def test_smoke_two_steps_resume_and_validation(tmp_path, aligned_root, make_val):
    val = make_val(tmp_path / 'val')
    out = tmp_path / 'run'
    common = ['--data-root', str(aligned_root), '--model-name', TINY, '--batch-size', '2',
              '--epochs', '2', '--output-dir', str(out), '--val-root', str(val),
              '--val-templates', 'depth-simple']
    assert ft.main(ft.parse_args(common + ['--max-steps', '2'])) == 0
    assert (out / 'checkpoint_0.pt').is_file()
    log = [json.loads(x) for x in (out / 'log.jsonl').read_text().splitlines()]
    train = [r for r in log if r['event'] == 'train']
    assert [r['step'] for r in train] == [1, 2]
    for r in train:
        assert np.isfinite(r['loss']) and 0 <= r['acc_d2r'] <= 1 and 0 <= r['acc_r2d'] <= 1
    (v,) = [r for r in log if r['event'] == 'val']
    assert v['count'] == 6 and 0 <= v['top1'] <= v['top5'] <= 1
    ckpt = torch.load(out / 'checkpoint_0.pt', weights_only=False)
    assert ckpt['step'] == 2 and ckpt['model_name'] == TINY
    # resume finishes the schedule: 2 epochs x 2 iterations
    assert ft.main(ft.parse_args(common + ['--resume', 'auto'])) == 0
    log = [json.loads(x) for x in (out / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log if r['event'] == 'train'] == [1, 2, 3, 4]
    assert torch.load(out / 'checkpoint_1.pt', weights_only=False)['step'] == 4


def test_learning_signal_with_distinct_targets():
    """On a fixed task (distinct fixed targets) the loss falls and retrieval accuracy rises."""
    model = _tiny_model(1)
    torch.manual_seed(1)
    n, v = 8, 2
    images = torch.randn(n * v, 3, 224, 224)
    with torch.no_grad():
        x_in, y_cls = ft.trunk_features(model, images)
    targets = F.normalize(torch.randn(n, model.embed_dim), dim=-1)
    head = ft.CachedDepthHead(model)
    opt = torch.optim.AdamW([p for _, p in model.depth_trainable_parameters()], lr=3e-3)
    history = []
    for _ in range(40):
        out = ft.compute_losses(ft.object_features(head(x_in, y_cls), v), targets,
                                model.logit_scale)
        opt.zero_grad()
        out['backward'].backward()
        opt.step()
        history.append((float(out['loss']), float(out['acc_d2r'])))
    (l0, a0), (l1, a1) = history[0], history[-1]
    assert l1 < 0.5 * l0
    assert a1 > a0 and a1 >= 0.75


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, data: str, out: str) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist.init_process_group('gloo', rank=rank, world_size=world)
    # gradient of the gathered loss, averaged as DDP does, equals the single-process gradient
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    x, r = torch.randn(4, 6), F.normalize(torch.randn(4, 5), dim=-1)
    shard = slice(2 * rank, 2 * rank + 2)
    h_d = F.normalize(x[shard] @ w, dim=-1)
    ft.compute_losses(h_d, r[shard], 7.0)['backward'].backward()
    grad = w.grad.clone()
    dist.all_reduce(grad)
    grad /= world
    if rank == 0:
        torch.save(grad, Path(out) / 'grad.pt')
    args = ft.parse_args(['--data-root', data, '--model-name', TINY, '--batch-size', '4',
                          '--epochs', '1', '--max-steps', '2', '--output-dir', out,
                          '--device', 'cpu'])
    ft.main(args)


def test_ddp_two_cpu_processes_gloo(tmp_path, make_aligned):
    data = make_aligned(tmp_path / 'data', objects=8, views=2)
    out = tmp_path / 'ddp'
    out.mkdir()
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), str(data), str(out)),
                                nprocs=2, join=True)
    torch.manual_seed(0)
    w = torch.randn(6, 5, requires_grad=True)
    x, r = torch.randn(4, 6), F.normalize(torch.randn(4, 5), dim=-1)
    ft.compute_losses(F.normalize(x @ w, dim=-1), r, 7.0)['backward'].backward()
    assert torch.allclose(torch.load(out / 'grad.pt'), w.grad, atol=1e-6)
    log = [json.loads(x) for x in (out / 'log.jsonl').read_text().splitlines()]
    assert [r['step'] for r in log if r['event'] == 'train'] == [1, 2]
    assert (out / 'checkpoint_0.pt').is_file()
