"""
Export OpenDlign weights in the format :func:`opendlign_core.model.create_depth_clip` reads.

Two sources:

* ``--checkpoint``: a :mod:`training.finetune` checkpoint (depth block only) plus the CLIP weights
  it was trained from (recorded in the checkpoint; override with ``--weights``);
* ``--authors``: the authors' released ``.pth`` (``{'model_state_dict': {'logit_scale',
  'clip_model.*', 'clip_model.visual.transformer.depth_control_visual.resblocks.0.*'}}``).

Both write ``<output>.safetensors`` plus the ``<output>.json`` manifest with
:func:`opendlign_core.model.save_depth_clip`, then reload the file and check that both branches
give the same features as the model in memory (``--no-verify`` skips this)::

    python -m training.export --authors ViT-H-14-quickgelu.pth --model-name ViT-H-14-quickgelu \
        --output weights/opendlign-vit-h-14.safetensors
"""

import argparse
from dataclasses import asdict, dataclass, fields
import hashlib
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

import torch

from opendlign_core.config import ModelConfig
from opendlign_core.model import DEPTH_BLOCK_PREFIX, DepthCLIP, create_depth_clip, save_depth_clip


@dataclass
class ExportArgs:
    """Settings of an export."""

    output: str = ''
    checkpoint: str = ''
    authors: str = ''
    model_name: str = ''
    weights: str = ''
    dtype: str = 'fp32'
    verify: bool = True


def parse_args(argv: Optional[Sequence[str]] = None) -> ExportArgs:
    """
    Parse and validate the command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The settings.
    :raises ValueError: If not exactly one source is given, a file is missing, or the output name
        is wrong.
    """
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip())
    p.add_argument('--output', required=True, help='target .safetensors path (+ .json beside)')
    p.add_argument('--checkpoint', default='', help='training.finetune checkpoint (.pt)')
    p.add_argument('--authors', default='', help="authors' released checkpoint (.pth)")
    p.add_argument('--model-name', default='',
                   help='architecture (required with --authors; default: from the checkpoint)')
    p.add_argument('--weights', default='',
                   help='CLIP weights the checkpoint was trained from (default: as recorded)')
    p.add_argument('--dtype', default='fp32', choices=('fp32', 'fp16', 'bf16'),
                   help='tensor dtype in the file')
    p.add_argument('--no-verify', dest='verify', action='store_false',
                   help='skip reloading the export and comparing features')
    ns = p.parse_args(argv)
    args = ExportArgs(**{f.name: getattr(ns, f.name) for f in fields(ExportArgs)})
    if bool(args.checkpoint) == bool(args.authors):
        raise ValueError('give exactly one of --checkpoint and --authors')
    source = args.checkpoint or args.authors
    if not Path(source).is_file():
        raise ValueError(f'{"--checkpoint" if args.checkpoint else "--authors"} {source!r} is not '
                         'a file')
    if args.authors and not args.model_name:
        raise ValueError('--authors needs --model-name (e.g. ViT-H-14-quickgelu)')
    if args.authors and args.weights:
        raise ValueError('--weights applies to --checkpoint only; the authors file is complete')
    if args.weights and not Path(args.weights).is_file():
        raise ValueError(f'--weights {args.weights!r} is not a file')
    if not args.output.endswith('.safetensors'):
        raise ValueError(f'--output must end with .safetensors, got {args.output!r}')
    return args


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 22), b''):
            h.update(chunk)
    return h.hexdigest()


def model_from_finetune_checkpoint(path: str, model_name: str = '',
                                   weights: str = '') -> DepthCLIP:
    """
    Rebuild the fine-tuned model from a :mod:`training.finetune` checkpoint.

    :param path: Checkpoint file.
    :param model_name: Architecture override (default: the checkpoint's).
    :param weights: Base CLIP weights override (default: the path recorded in the checkpoint).
    :return: The model (CPU, fp32, eval mode) with the trained depth block.
    :raises ValueError: If the file is not a fine-tuning checkpoint or names no base weights.
    :raises FileNotFoundError: If the base weights are missing.
    """
    ckpt = torch.load(path, map_location='cpu', weights_only=False)
    if not isinstance(ckpt, dict) or ckpt.get('format') != 'opendlign-finetune-checkpoint':
        raise ValueError(f'{path!r} is not a training.finetune checkpoint')
    base = weights or ckpt.get('base_weights', '')
    if not base:
        raise ValueError(f'checkpoint {path!r} was trained from random weights; pass --weights')
    model = create_depth_clip(ModelConfig(model_name=model_name or ckpt['model_name'],
                                          weights_path=base), depth_branch=True)
    if not model.has_depth_branch:  # plain open_clip checkpoints load without one
        model.add_depth_branch()
    model.depth_block.load_state_dict(ckpt['depth_block'])
    return model


def model_from_authors_checkpoint(path: str, model_name: str) -> DepthCLIP:
    """
    Load the authors' released checkpoint, checking its wrapper-level ``logit_scale``.

    :param path: The ``.pth`` file.
    :param model_name: open_clip architecture name.
    :return: The model with its depth branch.
    :raises ValueError: If the file is not in the authors' layout or has no depth block.
    """
    raw = torch.load(path, map_location='cpu', weights_only=True)
    state = raw.get('model_state_dict') if isinstance(raw, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{path!r} has no 'model_state_dict'; not an authors checkpoint")
    if not any(k.startswith('clip_model.' + DEPTH_BLOCK_PREFIX) for k in state):
        raise ValueError(f'{path!r} has no depth block ({DEPTH_BLOCK_PREFIX}*)')
    model = create_depth_clip(ModelConfig(model_name=model_name, weights_path=path))
    top = state.get('logit_scale')
    if top is not None and not torch.equal(top.float(), model.clip.logit_scale.float()):
        raise ValueError(f"{path!r}: wrapper 'logit_scale' differs from 'clip_model.logit_scale'")
    return model


@torch.no_grad()
def verify_export(model: DepthCLIP, weights_path: Path) -> float:
    """
    Reload an export and compare features of both branches and the text tower.

    :param model: The model that was exported.
    :param weights_path: The written ``.safetensors``.
    :return: Largest absolute feature difference.
    :raises RuntimeError: If the reloaded model differs.
    """
    loaded = create_depth_clip(ModelConfig(weights_path=str(weights_path)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, model.image_size, model.image_size, generator=gen)
    tokens = model.tokenize(['a depth map of a chair', 'a table'])
    diffs = []
    for branch in ('pretrained', 'depth') if model.has_depth_branch else ('pretrained',):
        a = model.encode_image(x.to(model.dtype), branch).float()
        b = loaded.encode_image(x.to(loaded.dtype), branch).float()
        diffs.append(float((a - b).abs().max()))
    diffs.append(float((model.encode_text(tokens).float() - loaded.encode_text(tokens).float())
                       .abs().max()))
    worst = max(diffs)
    tol = 1e-5 if model.dtype == torch.float32 else 5e-2
    if worst > tol:
        raise RuntimeError(f'reloaded export differs by {worst:g} (> {tol:g})')
    return worst


def main(args: ExportArgs) -> int:
    """
    Run the export.

    :param args: Settings from :func:`parse_args`.
    :return: Process exit status.
    """
    extra: Dict[str, Any]
    if args.checkpoint:
        model = model_from_finetune_checkpoint(args.checkpoint, args.model_name, args.weights)
        ckpt = torch.load(args.checkpoint, map_location='cpu', weights_only=False)
        extra = {'training': {'script': 'training/finetune.py', 'epoch': ckpt['epoch'],
                              'step': ckpt['step'], 'args': ckpt['args'],
                              'checkpoint_sha256': _sha256(args.checkpoint)}}
    else:
        model = model_from_authors_checkpoint(args.authors, args.model_name)
        extra = {'converted_from': {'format': 'OpenDlign authors checkpoint',
                                    'file': Path(args.authors).name,
                                    'sha256': _sha256(args.authors)}}
    extra['export'] = asdict(args)
    dtype = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}[args.dtype]
    model = model.to(dtype)
    weights, manifest = save_depth_clip(model, args.output, extra=extra)
    print(f'wrote {weights} ({weights.stat().st_size / 1e6:.1f} MB) and {manifest}')
    if args.verify:
        print(f'verified: reloaded features differ by at most {verify_export(model, weights):g}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main(parse_args()))
