"""Tests of training/export.py: authors' layout round trip, finetune checkpoint, hand formula."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from opendlign_core.config import ModelConfig
from opendlign_core.model import DEPTH_BLOCK_PREFIX, create_depth_clip
from training import export
from training import finetune as ft

TINY = 'OpenDlign-Tiny-Test'


def _trained_tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = create_depth_clip(ModelConfig(model_name=TINY), depth_branch=True)
    with torch.no_grad():
        for _, p in model.depth_trainable_parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def _write_authors_checkpoint(model, path):
    """The authors' layout: wrapper logit_scale + clip_model.* incl. depth_control_visual."""
    state = {'logit_scale': model.clip.logit_scale.detach().clone()}
    state.update({f'clip_model.{k}': v.clone() for k, v in model.clip.state_dict().items()})
    state.update({f'clip_model.{DEPTH_BLOCK_PREFIX}{k}': v.clone()
                  for k, v in model.depth_block.state_dict().items()})
    torch.save({'epoch': 9, 'model_state_dict': state, 'optimizer_d_visual_state_dict': {},
                'scheduler_d_visual_state_dict': {}}, path)


def _hand_depth_features(model, images):
    """Reference formula, written out with tensor primitives for the depth block."""
    v = model.clip.visual
    x = v.conv1(images).flatten(2).transpose(1, 2)
    cls = v.class_embedding.view(1, 1, -1).expand(x.shape[0], 1, -1)
    x = v.ln_pre(torch.cat([cls, x], dim=1) + v.positional_embedding)
    blocks = v.transformer.resblocks
    for blk in blocks[:-1]:
        x = blk(x)
    d = model.depth_block
    w = x.shape[-1]
    heads = d.attn.num_heads
    h = F.layer_norm(x, (w,), d.ln_1.weight, d.ln_1.bias, d.ln_1.eps)
    q, k, val = (h @ d.attn.in_proj_weight.T + d.attn.in_proj_bias).split(w, dim=-1)

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, w // heads).transpose(1, 2)

    att = (split(q) @ split(k).transpose(-1, -2) / math.sqrt(w // heads)).softmax(dim=-1)
    a = (att @ split(val)).transpose(1, 2).reshape(x.shape)
    y = x + a @ d.attn.out_proj.weight.T + d.attn.out_proj.bias
    m = F.layer_norm(y, (w,), d.ln_2.weight, d.ln_2.bias, d.ln_2.eps)
    y = y + F.gelu(m @ d.mlp.c_fc.weight.T + d.mlp.c_fc.bias) @ d.mlp.c_proj.weight.T \
        + d.mlp.c_proj.bias
    mixed = 0.5 * blocks[-1](x) + 0.5 * y
    return v.ln_post(mixed)[:, 0] @ v.proj


@torch.no_grad()
def test_authors_checkpoint_round_trip(tmp_path):
    model = _trained_tiny()
    pth = tmp_path / 'ViT-tiny.pth'
    _write_authors_checkpoint(model, pth)
    out = tmp_path / 'export' / 'tiny.safetensors'
    args = export.parse_args(['--authors', str(pth), '--model-name', TINY, '--output', str(out)])
    assert export.main(args) == 0
    manifest = json.loads(out.with_suffix('.json').read_text())
    assert manifest['has_depth_branch'] and manifest['model_name'] == TINY
    assert manifest['converted_from']['file'] == 'ViT-tiny.pth'

    exported = create_depth_clip(ModelConfig(weights_path=str(out)))
    direct = create_depth_clip(ModelConfig(model_name=TINY, weights_path=str(pth)))
    torch.manual_seed(3)
    images = torch.randn(3, 3, 224, 224)
    tokens = exported.tokenize(['a chair', 'a depth map of a lamp'])
    for branch in ('pretrained', 'depth'):
        a = exported.encode_image(images, branch)
        assert torch.equal(a, direct.encode_image(images, branch))
        assert torch.equal(a, model.encode_image(images, branch))
    assert torch.equal(exported.encode_text(tokens), direct.encode_text(tokens))
    assert exported.logit_scale == pytest.approx(direct.logit_scale)
    # the branches really differ, and the depth branch is the reference formula
    depth = exported.encode_image(images, 'depth')
    assert (depth - exported.encode_image(images, 'pretrained')).abs().max() > 1e-3
    assert torch.allclose(depth, _hand_depth_features(exported, images), atol=1e-5)


def test_finetune_checkpoint_export(tmp_path, make_aligned):
    torch.manual_seed(0)
    base = create_depth_clip(ModelConfig(model_name=TINY), depth_branch=False)
    base_path = tmp_path / 'base.pt'
    torch.save(base.clip.state_dict(), base_path)
    data = make_aligned(tmp_path / 'data', objects=4, views=2)
    run = tmp_path / 'run'
    ft.main(ft.parse_args(['--data-root', str(data), '--model-name', TINY, '--weights',
                           str(base_path), '--batch-size', '2', '--epochs', '1',
                           '--max-steps', '2', '--output-dir', str(run), '--max-lr', '1e-2']))
    ckpt = torch.load(run / 'checkpoint_0.pt', weights_only=False)
    out = tmp_path / 'ft.safetensors'
    assert export.main(export.parse_args(['--checkpoint', str(run / 'checkpoint_0.pt'),
                                          '--output', str(out)])) == 0
    loaded = create_depth_clip(ModelConfig(weights_path=str(out)))
    for k, v in ckpt['depth_block'].items():
        assert torch.equal(loaded.depth_block.state_dict()[k], v), k
    # training moved the attention away from the copied block; everything else is the base
    assert not torch.equal(loaded.depth_block.attn.in_proj_weight,
                           base.clip.visual.transformer.resblocks[-1].attn.in_proj_weight)
    assert torch.equal(loaded.depth_block.mlp.c_fc.weight,
                       base.clip.visual.transformer.resblocks[-1].mlp.c_fc.weight)
    for k, v in base.clip.state_dict().items():
        assert torch.equal(loaded.clip.state_dict()[k], v), k
    manifest = json.loads(out.with_suffix('.json').read_text())
    assert manifest['training']['step'] == 2


def test_export_fp16_halves_the_file(tmp_path):
    model = _trained_tiny()
    pth = tmp_path / 'a.pth'
    _write_authors_checkpoint(model, pth)
    sizes = {}
    for dtype in ('fp32', 'fp16'):
        out = tmp_path / f'{dtype}.safetensors'
        export.main(export.parse_args(['--authors', str(pth), '--model-name', TINY, '--output',
                                       str(out), '--dtype', dtype]))
        sizes[dtype] = out.stat().st_size
    assert sizes['fp16'] < 0.55 * sizes['fp32']


def test_parse_args_validation(tmp_path):
    f = tmp_path / 'x.pth'
    f.write_bytes(b'')
    with pytest.raises(ValueError, match='exactly one'):
        export.parse_args(['--output', 'o.safetensors'])
    with pytest.raises(ValueError, match='exactly one'):
        export.parse_args(['--output', 'o.safetensors', '--checkpoint', str(f), '--authors',
                           str(f)])
    with pytest.raises(ValueError, match='--model-name'):
        export.parse_args(['--output', 'o.safetensors', '--authors', str(f)])
    with pytest.raises(ValueError, match='.safetensors'):
        export.parse_args(['--output', 'o.bin', '--authors', str(f), '--model-name', TINY])
    with pytest.raises(ValueError, match='not a file'):
        export.parse_args(['--output', 'o.safetensors', '--checkpoint', str(tmp_path / 'no')])


def test_rejects_non_authors_file(tmp_path):
    p = tmp_path / 'plain.pth'
    torch.save({'state_dict': {}}, p)
    with pytest.raises(ValueError, match='model_state_dict'):
        export.model_from_authors_checkpoint(str(p), TINY)
