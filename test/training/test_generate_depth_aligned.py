"""Tests of training/generate_depth_aligned.py: pure processing and a tiny local pipeline."""

import gzip
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

from training import generate_depth_aligned as gen


def test_conditioning_image_inverts_and_median_filters():
    depth = np.ones((32, 32, 3), np.float32)      # background 1 -> black after inversion
    depth[8:24, 8:24] = 0.25                       # near square -> bright (0.75)
    depth[2, 2] = 0.0                              # isolated speck: removed by the 7x7 median
    img = np.asarray(gen.conditioning_image(depth, 32, median=7))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[..., 0] == img[..., 1]).all() and (img[..., 0] == img[..., 2]).all()
    assert img[16, 16, 0] == round(0.75 * 255)
    assert img[0, 31, 0] == 0
    assert img[2, 2, 0] == 0
    # median 1 keeps the speck; resize to the generation size
    assert np.asarray(gen.conditioning_image(depth, 32, median=1))[2, 2, 0] == 255
    assert gen.conditioning_image(depth[..., 0], 64).size == (64, 64)
    with pytest.raises(ValueError, match='depth must be'):
        gen.conditioning_image(np.zeros((2, 3, 4, 5)), 8)


def test_prompt_and_file_naming(tmp_path):
    assert gen.build_prompt('office_chair') == f'A realistic office chair. {gen.POSITIVE_PROMPT}'
    assert gen.POSITIVE_PROMPT.startswith('best quality, extremely realistic')
    assert gen.NEGATIVE_PROMPT.endswith('warped, incomplete.')
    with pytest.raises(ValueError, match='blank'):
        gen.build_prompt('  ')
    paths = gen.output_paths(str(tmp_path), 'obj7', 3)
    assert [p.relative_to(tmp_path).as_posix() for p in paths] == [
        'depth_align_img/obj7/0.png', 'depth_align_img/obj7/1.png', 'depth_align_img/obj7/2.png']
    assert gen.resize_output(Image.new('RGB', (256, 256)), 224).size == (224, 224)


def test_sharding_and_seeds():
    objs = [f'o{i}' for i in range(10)][::-1]
    shards = [gen.shard_objects(objs, i, 3) for i in range(3)]
    assert sorted(sum(shards, [])) == sorted(objs)
    assert not set(shards[0]) & set(shards[1])
    assert shards[0] == ['o0', 'o3', 'o6', 'o9']
    assert gen.parse_shard('2/4') == (2, 4)
    for bad in ('4/4', '-1/2', 'x', '1'):
        with pytest.raises(ValueError, match='shard'):
            gen.parse_shard(bad)
    assert gen.object_seed(42, 'a') == gen.object_seed(42, 'a') != gen.object_seed(42, 'b')


def test_metadata_sources(tmp_path):
    tax = tmp_path / 'taxonomy.json'
    tax.write_text(json.dumps([{'synsetId': '03001627', 'name': 'chair', 'children': []},
                               {'synsetId': '04379243', 'name': 'table,board'}]))
    meta = tmp_path / 'm.json'
    meta.write_text(json.dumps({'x1': 'red sofa'}))
    per_obj, per_syn = gen.load_metadata(str(meta), str(tax))
    assert gen.describe('x1', per_obj, per_syn) == 'red sofa'
    assert gen.describe('04379243-abc', per_obj, per_syn) == 'table'
    with pytest.raises(ValueError, match='no metadata'):
        gen.describe('zzz', per_obj, per_syn)


def _tiny_pipeline_dirs(tmp_path: Path):
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    import open_clip
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    # CLIP tokenizer from open_clip's bundled BPE (no hub access)
    bpe = Path(open_clip.__file__).parent / 'bpe_simple_vocab_16e6.txt.gz'
    tok = open_clip.tokenizer.SimpleTokenizer(str(bpe))
    tok_dir = tmp_path / 'tok'
    tok_dir.mkdir()
    names = {'<start_of_text>': '<|startoftext|>', '<end_of_text>': '<|endoftext|>'}
    vocab = {names.get(k, k): v for k, v in tok.encoder.items()}  # Hugging Face special names
    (tok_dir / 'vocab.json').write_text(json.dumps(vocab))
    merges = gzip.open(bpe).read().decode('utf-8').split('\n')[1:49152 - 256 - 2 + 1]
    (tok_dir / 'merges.txt').write_text('#version: 0.2\n' + '\n'.join(merges) + '\n')
    tokenizer = CLIPTokenizer(str(tok_dir / 'vocab.json'), str(tok_dir / 'merges.txt'),
                              model_max_length=77)
    assert len(tokenizer) == 49408
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, hidden_size=32,
        intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=49408))
    unet = UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4,
        out_channels=4, down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'),
        up_block_types=('CrossAttnUpBlock2D', 'UpBlock2D'), cross_attention_dim=32,
        norm_num_groups=1)
    controlnet = ControlNetModel(
        block_out_channels=(4, 8), layers_per_block=1, in_channels=4,
        down_block_types=('DownBlock2D', 'CrossAttnDownBlock2D'), cross_attention_dim=32,
        conditioning_embedding_out_channels=(16, 32), norm_num_groups=1)
    vae = AutoencoderKL(block_out_channels=(4, 8), in_channels=3, out_channels=3,
                        down_block_types=('DownEncoderBlock2D',) * 2,
                        up_block_types=('UpDecoderBlock2D',) * 2, latent_channels=4,
                        norm_num_groups=2)
    sd = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                 unet=unet, scheduler=DDIMScheduler(), safety_checker=None,
                                 feature_extractor=None, requires_safety_checker=False)
    sd.save_pretrained(tmp_path / 'sd15')
    controlnet.save_pretrained(tmp_path / 'controlnet')
    return tmp_path / 'controlnet', tmp_path / 'sd15'


def test_generation_with_tiny_local_pipeline(tmp_path):
    cn, base = _tiny_pipeline_dirs(tmp_path)
    root = tmp_path / 'data'
    (root / 'depth_map').mkdir(parents=True)
    rng = np.random.default_rng(0)
    for obj in ('chair_1', 'lamp_2', 'sofa_3'):
        np.save(root / 'depth_map' / f'{obj}_dm.npy',
                rng.uniform(0, 1, (2, 28, 28, 3)).astype(np.float32))
    meta = tmp_path / 'meta.json'
    meta.write_text(json.dumps({'chair_1': 'chair', 'lamp_2': 'lamp', 'sofa_3': 'sofa'}))
    common = ['--root', str(root), '--controlnet', str(cn), '--base', str(base), '--metadata',
              str(meta), '--steps', '2', '--gen-size', '32', '--device', 'cpu']
    # shard 1/2 holds lamp_2 only
    assert gen.main(gen.parse_args(common + ['--shard', '1/2'])) == 0
    assert sorted(p.parent.name for p in (root / 'depth_align_img').rglob('*.png')) == \
        ['lamp_2', 'lamp_2']
    first = np.asarray(Image.open(root / 'depth_align_img' / 'lamp_2' / '0.png'))
    assert first.shape == (28, 28, 3)
    # the rest; finished objects are skipped (their files stay untouched)
    mtime = (root / 'depth_align_img' / 'lamp_2' / '0.png').stat().st_mtime_ns
    assert gen.main(gen.parse_args(common + ['--shard', '0/1'])) == 0
    assert len(list((root / 'depth_align_img').rglob('*.png'))) == 6
    assert (root / 'depth_align_img' / 'lamp_2' / '0.png').stat().st_mtime_ns == mtime
    # deterministic per object: regenerating gives the same pixels
    (root / 'depth_align_img' / 'lamp_2' / '0.png').unlink()
    gen.main(gen.parse_args(common))
    assert np.array_equal(np.asarray(Image.open(root / 'depth_align_img' / 'lamp_2' / '0.png')),
                          first)


def test_parse_args_validation(tmp_path):
    (tmp_path / 'depth_map').mkdir()
    ok = ['--root', str(tmp_path), '--controlnet', str(tmp_path), '--base', str(tmp_path)]
    assert gen.parse_args(ok).steps == 20 and gen.parse_args(ok).guidance == 9.0
    with pytest.raises(ValueError, match='--controlnet'):
        gen.parse_args(['--root', str(tmp_path), '--controlnet', str(tmp_path / 'x'), '--base',
                        str(tmp_path)])
    with pytest.raises(ValueError, match='--median'):
        gen.parse_args(ok + ['--median', '4'])
    with pytest.raises(ValueError, match='shard'):
        gen.parse_args(ok + ['--shard', '3/2'])
