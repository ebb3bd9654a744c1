"""
Fine-tune the OpenDlign depth branch: the paper recipe (spec sections 3.3, 4.2-4.4).

CLIP is frozen. Only the attention projections of the depth block (a copy of the last
image-tower block) train. Each object contributes V depth maps (through the depth branch) and V
depth-aligned RGB images (through the frozen pre-trained branch); per object the normalised view
features are averaged and normalised again, giving h^D and h^R. The loss is the symmetric InfoNCE
at CLIP's frozen ``logit_scale`` plus ``MSE(h^D, h^R)`` (weight 1). AdamW + OneCycleLR, stepped
every iteration.

By default the frozen trunk is *cached* once (spec section 4.4, "equivalent fast implementation"):
per view the token sequence entering the last block (output of block L-2) and the CLS row of the
last block's output, and per object h^R. Training then runs only the depth block on the CLS query,
the 0.5 average, ln_post, CLS pooling and proj. This is mathematically identical to running the
whole encoder (nothing upstream trains, no dropout; ln_post, pooling and proj act per token and
only the CLS token is read); ``test/training/test_finetune.py`` checks loss and gradients against
the uncached path (``--no-cache``).

Data layout (the authors'): ``<root>/depth_align_img/<obj>/{0..V-1}.png`` (RGB, S x S) and
``<root>/depth_map/<obj>_dm.npy`` (V, S, S, 3) float32, S = the model's input size.

Single process::

    python -m training.finetune --data-root DATA/shapenet --model-name ViT-B-32 \
        --weights open_clip_b32.safetensors --output-dir runs/b32

Several GPUs (features are gathered across ranks for the contrastive loss)::

    torchrun --nproc_per_node 8 -m training.finetune --data-root ... --output-dir ...
"""

import argparse
from dataclasses import asdict, dataclass, fields
import hashlib
import json
import logging
import os
from pathlib import Path
import random
import re
import time
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
import torch.distributed as dist
import torch.nn.functional as F

from opendlign_core.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClassifierConfig,
    ModelConfig,
    OpenDlignConfig,
)
from opendlign_core.model import DepthCLIP, create_depth_clip

_logger = logging.getLogger('opendlign.finetune')

DEPTH_DIR = 'depth_map'
RGB_DIR = 'depth_align_img'
DEPTH_SUFFIX = '_dm.npy'


@dataclass
class FinetuneArgs:
    """Hyper-parameters and paths of a fine-tuning run (defaults: the paper recipe)."""

    data_root: str = ''
    output_dir: str = 'runs/finetune'
    model_name: str = 'ViT-H-14-quickgelu'
    weights: str = ''
    epochs: int = 10
    batch_size: int = 128
    lr: float = 3e-5
    max_lr: float = 3e-4
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-8
    weight_decay: float = 0.1
    mse_weight: float = 1.0
    seed: int = 42
    max_steps: int = 0
    device: str = 'auto'
    bf16: bool = True
    cache: bool = True
    cache_dir: str = ''
    cache_dtype: str = 'fp32'
    cache_batch_size: int = 16
    workers: int = 0
    resume: str = ''
    val_root: str = ''
    val_labels: str = ''
    val_templates: str = 'depth'
    log_every: int = 1
    limit_objects: int = 0


def parse_args(argv: Optional[Sequence[str]] = None) -> FinetuneArgs:
    """
    Parse and validate the command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The run settings.
    :raises ValueError: On inconsistent or out-of-range settings.
    """
    d = FinetuneArgs()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--data-root', required=True,
                   help=f'folder with {RGB_DIR}/<obj>/k.png and {DEPTH_DIR}/<obj>{DEPTH_SUFFIX}')
    p.add_argument('--output-dir', default=d.output_dir, help='checkpoints, logs, cache')
    p.add_argument('--model-name', default=d.model_name, help='open_clip / bundled architecture')
    p.add_argument('--weights', default=d.weights,
                   help="CLIP weights (open_clip checkpoint or export); '' = random (tests only)")
    p.add_argument('--epochs', type=int, default=d.epochs)
    p.add_argument('--batch-size', type=int, default=d.batch_size, help='global batch (objects)')
    p.add_argument('--lr', type=float, default=d.lr, help='AdamW constructor lr')
    p.add_argument('--max-lr', type=float, default=d.max_lr, help='OneCycleLR peak')
    p.add_argument('--beta1', type=float, default=d.beta1)
    p.add_argument('--beta2', type=float, default=d.beta2)
    p.add_argument('--eps', type=float, default=d.eps)
    p.add_argument('--weight-decay', type=float, default=d.weight_decay)
    p.add_argument('--mse-weight', type=float, default=d.mse_weight)
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--max-steps', type=int, default=d.max_steps,
                   help='stop after this many optimiser steps (0 = full schedule)')
    p.add_argument('--device', default=d.device, help="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    p.add_argument('--no-bf16', dest='bf16', action='store_false',
                   help='disable bf16 autocast (it is only ever used on CUDA)')
    p.add_argument('--no-cache', dest='cache', action='store_false',
                   help='run the whole encoder every step instead of caching the frozen trunk')
    p.add_argument('--cache-dir', default=d.cache_dir, help='default: <output-dir>/trunk_cache')
    p.add_argument('--cache-dtype', default=d.cache_dtype, choices=('fp32', 'fp16'))
    p.add_argument('--cache-batch-size', type=int, default=d.cache_batch_size,
                   help='objects per forward while building the cache')
    p.add_argument('--workers', type=int, default=d.workers, help='DataLoader workers')
    p.add_argument('--resume', default=d.resume,
                   help="checkpoint to resume from, or 'auto' for the newest in --output-dir")
    p.add_argument('--val-root', default=d.val_root,
                   help='OpenDlign-format eval folder (<root>/depth_map/<idx>+<class>_dm.npy)')
    p.add_argument('--val-labels', default=d.val_labels,
                   help='JSON list of class names in order (default: sorted names in --val-root)')
    p.add_argument('--val-templates', default=d.val_templates)
    p.add_argument('--log-every', type=int, default=d.log_every, help='iterations per log line')
    p.add_argument('--limit-objects', type=int, default=d.limit_objects,
                   help='use only the first N objects (debugging; 0 = all)')
    ns = p.parse_args(argv)
    args = FinetuneArgs(**{f.name: getattr(ns, f.name) for f in fields(FinetuneArgs)})

    for name in ('epochs', 'batch_size', 'cache_batch_size', 'log_every'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('max_steps', 'workers', 'limit_objects'):
        if getattr(args, name) < 0:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 0, got {getattr(args, name)}')
    for name in ('lr', 'max_lr', 'eps'):
        if not getattr(args, name) > 0:
            raise ValueError(f'--{name.replace("_", "-")} must be > 0, got {getattr(args, name)}')
    if not (0 <= args.beta1 < 1 and 0 <= args.beta2 < 1):
        raise ValueError(f'betas must lie in [0, 1), got ({args.beta1}, {args.beta2})')
    if args.weight_decay < 0 or args.mse_weight < 0:
        raise ValueError('--weight-decay and --mse-weight must be >= 0')
    if not Path(args.data_root).is_dir():
        raise ValueError(f'--data-root {args.data_root!r} is not a directory')
    for sub in (RGB_DIR, DEPTH_DIR):
        if not (Path(args.data_root) / sub).is_dir():
            raise ValueError(f'--data-root {args.data_root!r} has no {sub}/ folder')
    if args.weights and not Path(args.weights).is_file():
        raise ValueError(f'--weights {args.weights!r} is not a file')
    if args.val_labels and not args.val_root:
        raise ValueError('--val-labels needs --val-root')
    if args.val_root and not (Path(args.val_root) / DEPTH_DIR).is_dir():
        raise ValueError(f'--val-root {args.val_root!r} has no {DEPTH_DIR}/ folder')
    if args.resume and args.resume != 'auto' and not Path(args.resume).is_file():
        raise ValueError(f"--resume {args.resume!r} is neither 'auto' nor a file")
    return args


# ----------------------------------------------------------------------------------------------
# Data


def list_objects(root: str) -> List[str]:
    """
    List the object ids that have both RGB images and a depth-map file.

    The order is the sorted RGB folder listing shuffled with ``random.Random(42)`` (the reference
    shuffles both lists with seed 42, which keeps them paired); the DataLoader shuffles again.

    :param root: Data root.
    :return: Object ids.
    :raises ValueError: If no object has both parts.
    """
    rgb = Path(root) / RGB_DIR
    depth = Path(root) / DEPTH_DIR
    ids = sorted(p.name for p in rgb.iterdir() if p.is_dir()
                 and (depth / f'{p.name}{DEPTH_SUFFIX}').is_file())
    if not ids:
        raise ValueError(f'no object in {str(rgb)!r} has a matching '
                         f'{DEPTH_DIR}/<obj>{DEPTH_SUFFIX}')
    random.Random(42).shuffle(ids)
    return ids


def _normalize(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def load_object(root: str, obj: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Load one object's depth maps and depth-aligned images, ImageNet-normalised.

    The reference preprocessing: ``ToTensor`` (PNG to [0, 1]; the float npy is not rescaled), then
    ImageNet mean/std; no resizing.

    :param root: Data root.
    :param obj: Object id.
    :return: ``(depth, rgb)``, each (V, 3, S, S) float32.
    :raises ValueError: If the files disagree in view count or size.
    """
    from PIL import Image

    depth = np.load(Path(root) / DEPTH_DIR / f'{obj}{DEPTH_SUFFIX}')
    if depth.ndim != 4 or depth.shape[-1] != 3:
        raise ValueError(f'{obj}{DEPTH_SUFFIX} has shape {depth.shape}, expected (V, S, S, 3)')
    views = depth.shape[0]
    rgb = []
    for k in range(views):
        path = Path(root) / RGB_DIR / obj / f'{k}.png'
        with Image.open(path) as im:
            rgb.append(np.asarray(im.convert('RGB'), dtype=np.uint8))
    rgb_arr = np.stack(rgb)
    if rgb_arr.shape[:3] != depth.shape[:3]:
        raise ValueError(f'object {obj!r}: images {rgb_arr.shape} and depth maps {depth.shape} '
                         'differ')
    d = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32)).permute(0, 3, 1, 2)
    r = torch.from_numpy(rgb_arr).permute(0, 3, 1, 2).float() / 255.0
    return _normalize(d), _normalize(r)


class AlignedDataset(torch.utils.data.Dataset):
    """
    Raw objects for the uncached path: ``(index, depth (V,3,S,S), rgb (V,3,S,S))``.

    :param root: Data root.
    :param objects: Object ids.
    """

    def __init__(self, root: str, objects: Sequence[str]) -> None:
        self.root = root
        self.objects = list(objects)

    def __len__(self) -> int:
        """Return the number of objects."""
        return len(self.objects)

    def __getitem__(self, i: int) -> Tuple[int, torch.Tensor, torch.Tensor]:
        """Return object ``i``."""
        depth, rgb = load_object(self.root, self.objects[i])
        return i, depth, rgb


class CachedDataset(torch.utils.data.Dataset):
    """
    Cached trunk outputs: ``(index, x_in (V,N,w), y_cls (V,w), h_rgb (D,))`` as float32.

    :param cache: Arrays from :func:`build_trunk_cache` (numpy memmaps).
    """

    def __init__(self, cache: Dict[str, np.ndarray]) -> None:
        self.cache = cache

    def __len__(self) -> int:
        """Return the number of objects."""
        return int(self.cache['h_rgb'].shape[0])

    def __getitem__(self, i: int) -> Tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return object ``i``."""
        return (i,) + tuple(torch.from_numpy(np.array(self.cache[k][i], dtype=np.float32))
                            for k in ('x_in', 'y_cls', 'h_rgb'))


# ----------------------------------------------------------------------------------------------
# Model pieces


def check_cacheable(model: DepthCLIP) -> None:
    """
    Check that the CLS-only cached head is exact for this image tower.

    :param model: The model.
    :raises ValueError: If the tower pools other than by the CLS token or uses attention pooling.
    """
    visual = model.clip.visual
    if getattr(visual, 'attn_pool', None) is not None or visual.pool_type != 'tok':
        raise ValueError(f'model {model.model_name!r} pools with {visual.pool_type!r}/attn_pool; '
                         'the cached head needs CLS pooling: use --no-cache')


def trunk_features(model: DepthCLIP, images: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """
    Run the frozen trunk: tokens entering the last block and the CLS row it outputs.

    :param model: The model.
    :param images: (M, 3, S, S) normalised depth maps.
    :return: ``x_in`` (M, N, w) output of block L-2 (batch first) and ``y_cls`` (M, w), the CLS
        token of block L-1's output.
    """
    visual = model.clip.visual
    transformer = visual.transformer
    x = visual._embeds(images.to(device=model.device, dtype=model.dtype))
    if not transformer.batch_first:  # _embeds is batch first; the blocks may want LND
        x = x.transpose(0, 1)
    for block in transformer.resblocks[:-1]:
        x = block(x)
    y = transformer.resblocks[-1](x)
    if not transformer.batch_first:
        x, y = x.transpose(0, 1), y.transpose(0, 1)
    return x, y[:, 0]


def block_cls_forward(block: nn.Module, x: torch.Tensor, batch_first: bool = True) -> torch.Tensor:
    """
    Apply a residual attention block and return only its CLS output row.

    Keys and values come from every token, the query from the CLS token only; the MLP and the
    residuals act per token. The result equals ``block(x)[:, 0]``.

    :param block: An open_clip ``ResidualAttentionBlock``.
    :param x: (M, N, w) tokens, batch first, CLS first.
    :param batch_first: Whether ``block.attn`` expects batch-first input.
    :return: (M, w).
    """
    h = block.ln_1(x)
    q = h[:, :1]
    if batch_first:
        a = block.attn(q, h, h, need_weights=False)[0]
    else:
        a = block.attn(q.transpose(0, 1), h.transpose(0, 1), h.transpose(0, 1),
                       need_weights=False)[0].transpose(0, 1)
    y = x[:, :1] + block.ls_1(a)
    y = y + block.ls_2(block.mlp(block.ln_2(y)))
    return y[:, 0]


class CachedDepthHead(nn.Module):
    """
    The part of the depth branch that runs on cached trunk outputs.

    ``0.5 * y_cls + 0.5 * depth_block(x_in)[CLS]`` then ln_post, CLS pooling and proj.

    :param model: The model (shared, not copied: training updates ``model.depth_block``).
    """

    def __init__(self, model: DepthCLIP) -> None:
        super().__init__()
        check_cacheable(model)
        self.model = model

    def forward(self, x_in: torch.Tensor, y_cls: torch.Tensor) -> torch.Tensor:
        """
        Compute depth-branch features.

        :param x_in: (M, N, w) tokens entering the last block.
        :param y_cls: (M, w) CLS row of the last block's output.
        :return: (M, D) features (not normalised).
        """
        visual = self.model.clip.visual
        z = block_cls_forward(self.model.depth_block, x_in,
                              visual.transformer.batch_first)
        mixed = 0.5 * y_cls + 0.5 * z
        pooled, _ = visual._pool(mixed[:, None])
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled


class FullDepthEncoder(nn.Module):
    """
    The whole depth branch (the uncached reference path).

    :param model: The model (shared).
    """

    def __init__(self, model: DepthCLIP) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """
        Encode normalised depth maps with the depth branch.

        :param images: (M, 3, S, S).
        :return: (M, D) features (not normalised).
        """
        return self.model.encode_image(images, 'depth')


def object_features(view_features: torch.Tensor, views: int) -> torch.Tensor:
    """
    Pool view features into one object feature, as the reference.

    :param view_features: (B * V, D) features, views of one object consecutive.
    :param views: V.
    :return: (B, D) ``normalise(mean_v(normalise(f_v)))`` in float32.
    """
    f = F.normalize(view_features.float(), dim=-1)
    return F.normalize(f.reshape(-1, views, f.shape[-1]).mean(dim=1), dim=-1)


@torch.no_grad()
def rgb_object_features(model: DepthCLIP, rgb: torch.Tensor) -> torch.Tensor:
    """
    Compute h^R with the frozen pre-trained branch.

    :param model: The model.
    :param rgb: (B, V, 3, S, S) normalised images.
    :return: (B, D) float32, L2-normalised.
    """
    b, v = rgb.shape[:2]
    return object_features(model.encode_image(rgb.flatten(0, 1), 'pretrained'), v)


# ----------------------------------------------------------------------------------------------
# Loss and metrics


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """
    All-gather rows from every rank; the local shard keeps its autograd graph.

    :param x: (B_local, D).
    :return: (B_local * world, D), rank order; identity without an initialised process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def contrastive_loss(h_d: torch.Tensor, h_r: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """
    Symmetric InfoNCE between paired rows.

    :param h_d: (B, D) normalised depth features.
    :param h_r: (B, D) normalised RGB features.
    :param logit_scale: Multiplier of the cosines (CLIP's ``exp(logit_scale)``, frozen).
    :return: Scalar ``(CE(s H_d H_r^T) + CE(s H_r H_d^T)) / 2``.
    """
    logits = logit_scale * h_d @ h_r.T
    target = torch.arange(h_d.shape[0], device=h_d.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@torch.no_grad()
def retrieval_accuracy(h_d: torch.Tensor, h_r: torch.Tensor) -> Tuple[float, float]:
    """
    In-batch retrieval accuracy in both directions.

    :param h_d: (B, D) depth features.
    :param h_r: (B, D) RGB features.
    :return: ``(depth->rgb, rgb->depth)`` top-1 accuracy in [0, 1].
    """
    sim = h_d.float() @ h_r.float().T
    target = torch.arange(sim.shape[0], device=sim.device)
    return (float((sim.argmax(dim=1) == target).float().mean()),
            float((sim.argmax(dim=0) == target).float().mean()))


def compute_losses(h_d_local: torch.Tensor, h_r_local: torch.Tensor, logit_scale: float,
                   mse_weight: float = 1.0) -> Dict[str, torch.Tensor]:
    """
    Compute the training objective over the global batch (features gathered across ranks).

    ``backward`` is the tensor to differentiate: under DDP, which averages gradients over W
    ranks, the contrastive term is multiplied by W so the update equals single-process training
    on the global batch (each rank's graph reaches only its own shard). ``loss`` is the value of
    ``L_cont + mse_weight * L_dist`` on the global batch.

    :param h_d_local: (B_local, D) normalised depth features (with grad).
    :param h_r_local: (B_local, D) normalised RGB features.
    :param logit_scale: Frozen CLIP multiplier.
    :param mse_weight: Weight of the MSE term.
    :return: Dict with ``loss``, ``contrastive``, ``mse`` (detached), ``backward``, ``acc_d2r``,
        ``acc_r2d`` (floats as 0-d tensors).
    """
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    h_d = gather_with_grad(h_d_local)
    h_r = gather_with_grad(h_r_local.detach())
    cont = contrastive_loss(h_d, h_r, logit_scale)
    mse_local = F.mse_loss(h_d_local, h_r_local)
    d2r, r2d = retrieval_accuracy(h_d, h_r)
    mse_global = mse_local.detach().clone()
    if world > 1:
        dist.all_reduce(mse_global)
        mse_global /= world
    return {
        'backward': world * cont + mse_weight * mse_local,
        'loss': cont.detach() + mse_weight * mse_global,
        'contrastive': cont.detach(),
        'mse': mse_global,
        'acc_d2r': torch.tensor(d2r),
        'acc_r2d': torch.tensor(r2d),
    }


# ----------------------------------------------------------------------------------------------
# Trunk cache


def _fingerprint(model: DepthCLIP, args: FinetuneArgs, objects: Sequence[str]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([model.model_name, model.model_cfg, args.cache_dtype],
                        sort_keys=True).encode())
    if args.weights:
        st = Path(args.weights).stat()
        h.update(f'{Path(args.weights).resolve()}:{st.st_size}:{st.st_mtime_ns}'.encode())
    else:
        h.update(str(args.seed).encode())  # random weights depend on the seed
    h.update('\n'.join(objects).encode())
    return h.hexdigest()[:16]


def build_trunk_cache(model: DepthCLIP, args: FinetuneArgs, objects: Sequence[str],
                      cache_dir: Path, rank: int = 0, world: int = 1) -> Dict[str, np.ndarray]:
    """
    Compute (or reuse) the frozen-trunk cache for every object.

    Arrays (numpy ``.npy`` memmaps under ``cache_dir/<fingerprint>/``): ``x_in`` (B, V, N, w),
    ``y_cls`` (B, V, w) in ``args.cache_dtype``; ``h_rgb`` (B, D) float32. Ranks fill disjoint
    rows; a ``complete.json`` marks a finished cache so later runs and resumes reuse it.

    :param model: The model with its depth branch.
    :param args: Run settings (data root, dtype, batch size).
    :param objects: Object ids, in dataset order.
    :param cache_dir: Parent folder of the cache.
    :param rank: This process's rank.
    :param world: Number of processes.
    :return: Name to read-only memmap.
    """
    from numpy.lib.format import open_memmap

    folder = cache_dir / _fingerprint(model, args, objects)
    done = folder / 'complete.json'
    names = ('x_in', 'y_cls', 'h_rgb')
    if not done.is_file():
        depth0, _ = load_object(args.data_root, objects[0])
        with torch.no_grad():
            x0, y0 = trunk_features(model, depth0[:1])
        v, n, w = depth0.shape[0], x0.shape[1], x0.shape[2]
        dt = np.float16 if args.cache_dtype == 'fp16' else np.float32
        shapes = {'x_in': ((len(objects), v, n, w), dt), 'y_cls': ((len(objects), v, w), dt),
                  'h_rgb': ((len(objects), model.embed_dim), np.float32)}
        if rank == 0:
            folder.mkdir(parents=True, exist_ok=True)
            for k in names:
                open_memmap(folder / f'{k}.npy', mode='w+', dtype=shapes[k][1],
                            shape=shapes[k][0]).flush()
        _barrier()
        arrays = {k: open_memmap(folder / f'{k}.npy', mode='r+') for k in names}
        mine = list(range(rank, len(objects), world))
        step = args.cache_batch_size
        t0 = time.time()
        for start in range(0, len(mine), step):
            idx = mine[start:start + step]
            depth, rgb = zip(*(load_object(args.data_root, objects[i]) for i in idx))
            depth_t, rgb_t = torch.stack(depth), torch.stack(rgb)
            with torch.no_grad(), _autocast(model.device, args.bf16):
                x, y = trunk_features(model, depth_t.flatten(0, 1))
                h_r = rgb_object_features(model, rgb_t)
            x = x.float().reshape(len(idx), v, n, w).cpu().numpy()
            y = y.float().reshape(len(idx), v, w).cpu().numpy()
            for j, i in enumerate(idx):
                arrays['x_in'][i] = x[j]
                arrays['y_cls'][i] = y[j]
                arrays['h_rgb'][i] = h_r[j].float().cpu().numpy()
            if rank == 0 and (start // step) % 20 == 0:
                _logger.info('trunk cache: %d/%d objects (%.0f s)', start + len(idx), len(mine),
                             time.time() - t0)
        for a in arrays.values():
            a.flush()
        del arrays
        _barrier()
        if rank == 0:
            done.write_text(json.dumps({'objects': len(objects), 'model_name': model.model_name,
                                        'weights': args.weights, 'dtype': args.cache_dtype}))
        _barrier()
    return {k: np.load(folder / f'{k}.npy', mmap_mode='r') for k in names}


# ----------------------------------------------------------------------------------------------
# Validation


_VAL_NAME = re.compile(r'^(?P<idx>[^+]*)\+(?P<label>.+)_dm\.npy$')


def list_val_files(root: str) -> List[Tuple[Path, str]]:
    """
    List an OpenDlign-format evaluation folder.

    :param root: Folder with ``depth_map/<idx>+<class>_dm.npy``.
    :return: ``(path, label)`` pairs sorted by file name; underscores in labels become spaces.
    :raises ValueError: If no file matches.
    """
    out = []
    for path in sorted((Path(root) / DEPTH_DIR).glob('*_dm.npy')):
        m = _VAL_NAME.match(path.name)
        if m:
            out.append((path, m.group('label').replace('_', ' ')))
    if not out:
        raise ValueError(f'no <idx>+<class>_dm.npy files in {str(Path(root) / DEPTH_DIR)!r}')
    return out


@torch.no_grad()
def zero_shot_eval(model: DepthCLIP, root: str, labels: Optional[Sequence[str]] = None,
                   templates: str = 'depth', batch_size: int = 8) -> Dict[str, float]:
    """
    Zero-shot accuracy on an OpenDlign-format depth-map folder (the per-epoch validation hook).

    Views 0..V/2-1 use the pre-trained encoder and V/2..V-1 the depth branch, as the reference.

    :param model: The model.
    :param root: Evaluation folder.
    :param labels: Class names in order; default the sorted names found in the files.
    :param templates: Template set.
    :param batch_size: Objects per batch.
    :return: ``{'top1', 'top5', 'count'}`` (accuracies in [0, 1]).
    :raises ValueError: If a file's class is not in ``labels``.
    """
    from opendlign_core.classifier import Classifier

    files = list_val_files(root)
    labels = list(labels) if labels else sorted({lab for _, lab in files})
    unknown = sorted({lab for _, lab in files} - set(labels))
    if unknown:
        raise ValueError(f'classes {unknown} in {root!r} are not in the label list')
    clf = Classifier(model, OpenDlignConfig(classifier=ClassifierConfig(
        templates=templates, top_k=min(5, len(labels)), batch_size=batch_size)))
    label_set = clf.encode_labels(labels)
    top1 = top5 = 0
    for start in range(0, len(files), batch_size):
        chunk = files[start:start + batch_size]
        views = torch.from_numpy(np.stack([np.load(p)[..., 0] for p, _ in chunk]))
        for (_, truth), pred in zip(chunk, clf.classify_views(views.float(), label_set)):
            top1 += pred.label == truth
            top5 += truth in [lab for lab, _ in pred.top_k]
    n = len(files)
    return {'top1': top1 / n, 'top5': top5 / n, 'count': n}


# ----------------------------------------------------------------------------------------------
# Run


def _autocast(device: torch.device, bf16: bool):
    enabled = bf16 and torch.device(device).type == 'cuda'
    return torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16,
                          enabled=enabled)


def _barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _init_distributed(device_arg: str) -> Tuple[int, int, torch.device]:
    world = int(os.environ.get('WORLD_SIZE', '1'))
    if world > 1 and not dist.is_initialized():
        cuda = torch.cuda.is_available() and device_arg != 'cpu'
        dist.init_process_group(backend='nccl' if cuda else 'gloo')
    rank = dist.get_rank() if dist.is_initialized() else 0
    local = int(os.environ.get('LOCAL_RANK', '0'))
    if device_arg == 'auto':
        device = torch.device(f'cuda:{local}' if torch.cuda.is_available() else 'cpu')
    else:
        device = torch.device(device_arg)
        if device.type == 'cuda' and device.index is None:
            device = torch.device(f'cuda:{local}')
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    return rank, (dist.get_world_size() if dist.is_initialized() else 1), device


def build_model(args: FinetuneArgs, device: torch.device) -> DepthCLIP:
    """
    Build the model with a depth branch and mark only the depth attention trainable.

    :param args: Run settings.
    :param device: Device.
    :return: The model (eval mode; only ``depth_trainable_parameters`` require grad).
    """
    torch.manual_seed(args.seed)
    model = create_depth_clip(ModelConfig(model_name=args.model_name, weights_path=args.weights,
                                          device=str(device)), depth_branch=True)
    if not model.has_depth_branch:  # plain open_clip checkpoints load without one
        model.add_depth_branch()
    model.requires_grad_(False)
    for _, p in model.depth_trainable_parameters():
        p.requires_grad_(True)
    return model


def make_optimizer(model: DepthCLIP, args: FinetuneArgs,
                   steps_per_epoch: int) -> Tuple[torch.optim.Optimizer, Any]:
    """
    AdamW over the depth attention parameters and a per-iteration OneCycleLR.

    :param model: The model.
    :param args: Run settings.
    :param steps_per_epoch: Iterations per epoch (``len(loader)``).
    :return: ``(optimizer, scheduler)``.
    """
    params = [p for _, p in model.depth_trainable_parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(args.beta1, args.beta2), eps=args.eps,
                            weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.max_lr, epochs=args.epochs,
                                                steps_per_epoch=steps_per_epoch)
    return opt, sched


def _latest_checkpoint(out: Path) -> Optional[Path]:
    found = sorted(out.glob('checkpoint_*.pt'),
                   key=lambda p: int(p.stem.split('_')[-1]) if p.stem.split('_')[-1].isdigit()
                   else -1)
    return found[-1] if found else None


def save_checkpoint(path: Path, model: DepthCLIP, opt: torch.optim.Optimizer, sched: Any,
                    args: FinetuneArgs, epoch: int, step: int) -> None:
    """
    Save a resumable checkpoint (depth block, optimiser, scheduler, RNG, provenance).

    :param path: Target file.
    :param model: The model.
    :param opt: Optimiser.
    :param sched: Scheduler.
    :param args: Run settings.
    :param epoch: Last finished (or interrupted) epoch, 0-based.
    :param step: Optimiser steps so far.
    """
    tmp = path.with_suffix('.tmp')
    torch.save({
        'format': 'opendlign-finetune-checkpoint',
        'epoch': epoch,
        'step': step,
        'model_name': model.model_name,
        'base_weights': str(Path(args.weights).resolve()) if args.weights else '',
        'depth_block': {k: v.detach().cpu() for k, v in model.depth_block.state_dict().items()},
        'optimizer': opt.state_dict(),
        'scheduler': sched.state_dict(),
        'args': asdict(args),
        'rng': {'torch': torch.get_rng_state(), 'python': random.getstate()},
    }, tmp)
    os.replace(tmp, path)


def _batches(loader: Any, skip: int) -> Iterator[Tuple[int, Any]]:
    for i, batch in enumerate(loader):
        if i >= skip:
            yield i, batch


def main(args: FinetuneArgs) -> int:
    """
    Run fine-tuning.

    :param args: Settings from :func:`parse_args`.
    :return: Process exit status (0 on success).
    """
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    rank, world, device = _init_distributed(args.device)
    if args.batch_size % world:
        raise ValueError(f'--batch-size {args.batch_size} is not divisible by the world size '
                         f'{world}')
    out = Path(args.output_dir)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    _barrier()
    random.seed(args.seed)
    np.random.seed(args.seed)
    model = build_model(args, device)
    objects = list_objects(args.data_root)
    if args.limit_objects:
        objects = objects[:args.limit_objects]
    if args.cache:
        cache_dir = Path(args.cache_dir) if args.cache_dir else out / 'trunk_cache'
        dataset: torch.utils.data.Dataset = CachedDataset(
            build_trunk_cache(model, args, objects, cache_dir, rank, world))
        net: nn.Module = CachedDepthHead(model)
    else:
        dataset = AlignedDataset(args.data_root, objects)
        net = FullDepthEncoder(model)
    views = None
    local_batch = args.batch_size // world
    generator = torch.Generator().manual_seed(args.seed)
    if world > 1:
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank,
                                                      shuffle=True, seed=args.seed)
        loader = torch.utils.data.DataLoader(dataset, batch_size=local_batch, sampler=sampler,
                                             num_workers=args.workers, drop_last=False)
        ddp = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == 'cuda' else None)
    else:
        sampler = None
        loader = torch.utils.data.DataLoader(dataset, batch_size=local_batch, shuffle=True,
                                             generator=generator, num_workers=args.workers)
        ddp = net
    steps_per_epoch = len(loader)
    opt, sched = make_optimizer(model, args, steps_per_epoch)
    logit_scale = model.logit_scale

    start_epoch, step, skip = 0, 0, 0
    resume = _latest_checkpoint(out) if args.resume == 'auto' else (
        Path(args.resume) if args.resume else None)
    if resume is not None:
        ckpt = torch.load(resume, map_location='cpu', weights_only=False)
        model.depth_block.load_state_dict(ckpt['depth_block'])
        opt.load_state_dict(ckpt['optimizer'])
        sched.load_state_dict(ckpt['scheduler'])
        step = int(ckpt['step'])
        start_epoch, skip = divmod(step, steps_per_epoch)
        torch.set_rng_state(ckpt['rng']['torch'])
        random.setstate(ckpt['rng']['python'])
        if rank == 0:
            _logger.info('resumed from %s at step %d (epoch %d)', resume, step, start_epoch)

    log_file = open(out / 'log.jsonl', 'a') if rank == 0 else None
    total = args.epochs * steps_per_epoch
    limit = min(total, args.max_steps) if args.max_steps else total
    t_start = time.time()
    try:
        for epoch in range(start_epoch, args.epochs):
            if step >= limit:
                break
            if sampler is not None:
                sampler.set_epoch(epoch)
            generator.manual_seed(args.seed + epoch)
            for i, batch in _batches(loader, skip if epoch == start_epoch else 0):
                with _autocast(device, args.bf16):
                    if args.cache:
                        _, x_in, y_cls, h_r = batch
                        views = x_in.shape[1]
                        feats = ddp(x_in.flatten(0, 1).to(device), y_cls.flatten(0, 1).to(device))
                        h_r = h_r.to(device)
                    else:
                        _, depth, rgb = batch
                        views = depth.shape[1]
                        h_r = rgb_object_features(model, rgb.to(device))
                        feats = ddp(depth.flatten(0, 1).to(device))
                h_d = object_features(feats, views)
                losses = compute_losses(h_d, h_r, logit_scale, args.mse_weight)
                opt.zero_grad(set_to_none=True)
                losses['backward'].backward()
                opt.step()
                sched.step()
                step += 1
                if log_file is not None and (step % args.log_every == 0 or step == limit):
                    rec = {'event': 'train', 'epoch': epoch, 'iter': i, 'step': step,
                           'lr': sched.get_last_lr()[0],
                           'elapsed_s': round(time.time() - t_start, 3)}
                    rec.update({k: float(v) for k, v in losses.items() if k != 'backward'})
                    log_file.write(json.dumps(rec) + '\n')
                    log_file.flush()
                if step >= limit:
                    break
            if rank == 0:
                save_checkpoint(out / f'checkpoint_{epoch}.pt', model, opt, sched, args, epoch,
                                step)
                if args.val_root:
                    labels = json.loads(Path(args.val_labels).read_text()) \
                        if args.val_labels else None
                    res = zero_shot_eval(model, args.val_root, labels, args.val_templates)
                    rec = {'event': 'val', 'epoch': epoch, 'step': step, **res}
                    log_file.write(json.dumps(rec) + '\n')
                    log_file.flush()
                    _logger.info('epoch %d zero-shot top1 %.4f top5 %.4f', epoch, res['top1'],
                                 res['top5'])
            _barrier()
    finally:
        if log_file is not None:
            log_file.close()
    if rank == 0:
        _logger.info('finished %d steps in %.1f s', step, time.time() - t_start)
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == '__main__':
    raise SystemExit(main(parse_args()))
