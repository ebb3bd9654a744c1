"""
Benchmark the scene segmentation: class-agnostic instance recall and speed.

Quality on synthetic ScanNet-style scenes (generated on the fly into a cache folder when missing):
recall@0.25/0.5 = fraction of ground-truth objects (wall/floor excluded, >= 50 observed points)
whose best axis-aligned IoU with a cluster box exceeds the threshold; over-segmentation = objects
of which two or more clusters each hold >= 20% of the points; under-segmentation = clusters that
hold >= 20% of the points of two or more objects. Speed: segmentation of a 300k-point scene.
Malformed inputs: empty, single plane, NaNs, a million points. The scenes' colours are used
unless ``--no-colors`` (geometry only).

Usage::

    python benchmarks/bench_segmentation.py --split eval --count 20 --seed 2024
    python benchmarks/bench_segmentation.py --split eval --count 20 --seed 2024 --no-colors
"""

import argparse
import json
from pathlib import Path
import sys
import time

import numpy as np

from opendlign_core.boxes import fit_aabb, iou_aligned_matrix
from opendlign_core.config import SegmentationConfig, update_dataclass
from opendlign_core.scannet import list_scenes, read_scannet_scene
from opendlign_core.scene_synth import write_synth_scenes
from opendlign_core.segmentation import segment_scene


def parse_args(argv=None) -> argparse.Namespace:
    """
    Parse the command line.

    :param argv: Arguments (default ``sys.argv[1:]``).
    :return: The namespace.
    """
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--split', default='eval', choices=('train', 'eval'))
    p.add_argument('--count', type=int, default=20)
    p.add_argument('--seed', type=int, default=2024)
    p.add_argument('--scenes', type=Path, default=None,
                   help='folder of ScanNet-format scenes (default: a cache folder per split/seed)')
    p.add_argument('--set', nargs='*', default=[], metavar='FIELD=VALUE',
                   help='SegmentationConfig overrides, e.g. voxel_size=0.05')
    p.add_argument('--json', type=Path, default=None, help='write the numbers here')
    p.add_argument('--no-colors', action='store_true',
                   help="segment from geometry alone (ignore the scenes' colours)")
    p.add_argument('--skip-speed', action='store_true')
    return p.parse_args(argv)


def _config(overrides) -> SegmentationConfig:
    values = {}
    for item in overrides:
        key, _, raw = item.partition('=')
        default = getattr(SegmentationConfig(), key)
        if isinstance(default, bool):
            values[key] = raw.lower() in ('1', 'true', 'yes')
        else:
            values[key] = type(default)(raw)
    return update_dataclass(SegmentationConfig(), values)


def evaluate_scene(scene, cfg: SegmentationConfig, use_colors: bool = True) -> dict:
    """
    Segment one scene and score it against its instances.

    :param scene: A :class:`opendlign_core.scannet.ScanNetScene`.
    :param cfg: Segmentation settings.
    :param use_colors: Pass the scene's colours (when it has them) to the segmentation.
    :return: Counts and timings.
    """
    t0 = time.perf_counter()
    res = segment_scene(scene.points, cfg, colors=scene.colors if use_colors else None)
    elapsed = time.perf_counter() - t0
    objects = [i for i in scene.instances if not i.is_structure and i.box is not None]
    boxes = [fit_aabb(scene.points[c]) for c in res.clusters]
    iou = iou_aligned_matrix([o.box for o in objects], boxes)
    best = iou.max(axis=1) if boxes else np.zeros(len(objects))
    over = 0
    share = np.zeros((len(objects), len(res.clusters)))
    for i, o in enumerate(objects):
        lab = res.labels[o.point_indices]
        counts = np.bincount(lab[lab >= 0], minlength=len(res.clusters))
        share[i] = counts / len(o.point_indices)
        over += int((share[i] >= 0.2).sum() >= 2)
    under = int(((share >= 0.2).sum(axis=0) >= 2).sum()) if len(objects) else 0
    missed = [o.raw_label for o, b in zip(objects, best) if b <= 0.25]
    return {'objects': len(objects), 'clusters': len(res.clusters),
            'hit25': int((best > 0.25).sum()), 'hit50': int((best > 0.5).sum()),
            'over': over, 'under': under, 'seconds': elapsed, 'points': len(scene.points),
            'missed25': missed, 'warnings': list(res.warnings), 'dropped': dict(res.dropped)}


def speed_300k(cfg: SegmentationConfig, scene, repeats: int = 5,
               use_colors: bool = True) -> dict:
    """
    Time the segmentation of a 300k-point cloud drawn from a scene.

    :param cfg: Segmentation settings.
    :param scene: Source scene (resampled to exactly 300k points).
    :param repeats: Timed runs after one warm-up.
    :param use_colors: Pass the scene's colours (when it has them).
    :return: Median and max seconds.
    """
    rng = np.random.default_rng(0)
    idx = rng.choice(len(scene.points), 300_000, replace=len(scene.points) < 300_000)
    pts = scene.points[idx] + rng.normal(0, 0.002, size=(300_000, 3)).astype(np.float32)
    cols = scene.colors[idx] if use_colors and scene.colors is not None else None
    segment_scene(pts, cfg, colors=cols)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = segment_scene(pts, cfg, colors=cols)
        times.append(time.perf_counter() - t0)
    return {'median_s': float(np.median(times)), 'max_s': float(np.max(times)),
            'stages_ms': {k: round(v, 1) for k, v in res.timings_ms.items()}}


def malformed(cfg: SegmentationConfig) -> dict:
    """
    Run the malformed-input cases and report what each gives.

    :param cfg: Segmentation settings.
    :return: case -> outcome text.
    """
    rng = np.random.default_rng(1)
    plane = np.c_[rng.uniform(0, 5, (50_000, 2)), rng.normal(0, 0.003, 50_000)]
    nans = rng.uniform(0, 3, (10_000, 3))
    nans[::7] = np.nan
    cases = {'empty': np.zeros((0, 3), np.float32), 'one plane': plane,
             'NaNs': nans, 'million points': rng.uniform(0, 6, (1_000_000, 3))}
    out = {}
    for name, pts in cases.items():
        t0 = time.perf_counter()
        try:
            res = segment_scene(pts, cfg)
            out[name] = f'{len(res.clusters)} clusters in {time.perf_counter() - t0:.2f} s'
        except (ValueError, TypeError) as e:
            out[name] = f'error: {e}'
    return out


def main(args: argparse.Namespace) -> int:
    """
    Run the benchmark.

    :param args: From :func:`parse_args`.
    :return: Exit code.
    """
    cfg = _config(args.set)
    folder = args.scenes or Path.home() / '.cache' / 'opendlign' / 'scenes' / \
        f'{args.split}_{args.seed}_{args.count}'
    if not list_scenes(folder) if folder.exists() else True:
        print(f'generating {args.count} {args.split} scenes into {folder} ...', flush=True)
        write_synth_scenes(folder, args.split, args.count, args.seed)
    scenes = [read_scannet_scene(d) for d in list_scenes(folder)[:args.count]]
    rows = [evaluate_scene(s, cfg, not args.no_colors) for s in scenes]
    total = sum(r['objects'] for r in rows)
    summary = {
        'scenes': len(rows), 'objects': total,
        'recall@0.25': sum(r['hit25'] for r in rows) / total,
        'recall@0.5': sum(r['hit50'] for r in rows) / total,
        'over_segmented': sum(r['over'] for r in rows),
        'under_segmented': sum(r['under'] for r in rows),
        'clusters': sum(r['clusters'] for r in rows),
        'mean_points': float(np.mean([r['points'] for r in rows])),
        'mean_seconds': float(np.mean([r['seconds'] for r in rows])),
        'missed@0.25': sorted(m for r in rows for m in r['missed25']),
        # What the segmentation reported (contract F): warnings and clusters dropped per filter.
        'warnings': [w for r in rows for w in r['warnings']],
        'dropped': {k: sum(r['dropped'].get(k, 0) for r in rows)
                    for k in sorted({k for r in rows for k in r['dropped']})},
    }
    if not args.skip_speed:
        summary['speed_300k'] = speed_300k(cfg, scenes[0], use_colors=not args.no_colors)
        summary['malformed'] = malformed(cfg)
    print(json.dumps(summary, indent=1))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main(parse_args()))
