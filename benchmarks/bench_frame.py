"""
Per-frame cost of the detector on single depth frames, stage by stage, beside the bare encoder.

Frames: the middle depth frame of each of the first ``--frames`` eval-split synthetic scenes
(:mod:`opendlign_core.scene_synth`, generated into the cache folder when missing), read with
:func:`opendlign_core.scannet.read_frames` and back-projected with the frame's pose into the
scene's scan frame, which is gravity-aligned with +z up (as the node's cloud is after its
transform into the map frame). Timing only: nothing is tuned on these scenes.

Per frame and round: ``Detector.detect`` with the bundled model, as the node runs it (its own
stage timings: segment, project, encode, classify, total); then on the same frame
``segment_scene`` alone (its sub-stages, and its thread CPU time); then, on the same objects
(the detector's clusters and per-object subsampling), the contour projection and the PointCLIP
V2 realistic projection (per object, in the detector's batches, and for one object per call)
and the bare image-encoder forward of the objects' views
(``DepthCLIP.encode_image_mixed`` in the detector's batches, preprocessing excluded). Rounds
interleave all stages so that load from other processes on a shared machine hits them alike;
medians over frames x rounds are printed with their ratios to the bare encoder.
Targets (issue 13): segmentation <= 80 ms per ~300k-point frame; contour projection per object
<= the realistic projection per object.

Usage::

    .venv/bin/python benchmarks/bench_frame.py [--frames 5] [--repeats 5] [--threads 2]
"""

import argparse
from dataclasses import replace
import json
import os
from pathlib import Path
import statistics
import sys
import time

import numpy as np
import torch

from opendlign_core.classifier import encoder_inputs
from opendlign_core.config import DetectorConfig
from opendlign_core.detection import Detector
from opendlign_core.projection import project_depth_views
from opendlign_core.scannet import list_scenes, read_frames
from opendlign_core.scene_synth import write_synth_scenes
from opendlign_core.segmentation import segment_scene

LABELS = ('chair', 'table', 'sofa', 'bed', 'bookshelf', 'cabinet', 'desk', 'toilet', 'sink',
          'bathtub', 'refrigerator', 'door', 'window', 'picture', 'garbage bin', 'counter',
          'curtain', 'shower curtain')


def parse_args(argv=None) -> argparse.Namespace:
    """
    Parse the command line.

    :param argv: Arguments (default ``sys.argv[1:]``).
    :return: The namespace.
    """
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scenes', type=Path,
                   default=Path.home() / '.cache' / 'opendlign' / 'scenes' / 'eval_2024_20',
                   help='folder of eval-split ScanNet-format scenes with frames (generated as '
                        '20 eval scenes, seed 2024, when missing)')
    p.add_argument('--frames', type=int, default=5, help='frames (one per scene)')
    p.add_argument('--repeats', type=int, default=5, help='timed rounds after one warm-up')
    p.add_argument('--threads', type=int, default=2, help='torch threads (0: torch default)')
    p.add_argument('--precision', default='auto', choices=('fp32', 'bf16', 'fp16', 'auto'),
                   help="model precision (default: the node's, auto)")
    p.add_argument('--json', type=Path, default=None, help='write the numbers here')
    args = p.parse_args(argv)
    if args.frames < 1 or args.repeats < 1:
        raise ValueError('--frames and --repeats must be >= 1')
    return args


def load_frames(folder: Path, count: int) -> list[np.ndarray]:
    """
    Return the middle depth frame of each of the first ``count`` scenes as a z-up cloud.

    :param folder: Scene root (generated as 20 eval scenes, seed 2024, when missing).
    :param count: Number of frames.
    :return: (N_i, 3) float32 clouds in the scenes' gravity-aligned scan frames, metres.
    """
    if not (folder.exists() and list_scenes(folder)):
        print(f'generating 20 eval scenes into {folder} ...', flush=True)
        write_synth_scenes(folder, 'eval', 20, 2024)
    clouds = []
    for scene in list_scenes(folder)[:count]:
        frames = list(read_frames(scene))
        clouds.append(frames[len(frames) // 2].points())
    return clouds


def _bare_encoder_ms(model, views: torch.Tensor, step: int) -> float:
    """Time encode_image_mixed on preprocessed views, batched as ``Classifier.embed_views``."""
    elapsed = 0.0
    for i in range(0, views.shape[0], step):
        images, mask = encoder_inputs(model, views[i:i + step])
        t0 = time.perf_counter()
        with torch.inference_mode():
            model.encode_image_mixed(images, mask)
        elapsed += time.perf_counter() - t0
    return 1e3 * elapsed


def run_round(detector: Detector, label_set, cloud: np.ndarray) -> dict:
    """
    Time every stage once on one frame.

    :param detector: The detector (bundled model).
    :param label_set: Its encoded labels.
    :param cloud: (N, 3) float32 z-up frame.
    :return: stage -> ms, plus ``objects``.
    """
    cfg = detector.config
    res = detector.detect(cloud, label_set)
    out = {f'detect.{k}': v for k, v in res.timings_ms.items()}
    c0 = time.thread_time()
    seg = segment_scene(cloud, cfg.segmentation, seed=cfg.seed)
    # CPU time of this thread: the segmentation runs on it alone, so this is its wall time on a
    # quiet machine, whatever other processes (or torch's idle worker threads) do.
    out['segment.cpu'] = 1e3 * (time.thread_time() - c0)
    out.update({f'segment.{k}': v for k, v in seg.timings_ms.items()})
    clusters = [c for c in seg.clusters if len(c) >= cfg.min_points_per_object]
    clusters = clusters[:cfg.max_objects]
    objects = [detector._object_cloud(cloud[c]) for c in clusters]
    out['objects'] = len(objects)
    if not objects:
        return out
    proj = cfg.opendlign.projection
    device = detector.classifier.model.device
    step = cfg.opendlign.classifier.batch_size
    # Both projections in the detector's batches of ``classifier.batch_size`` objects.
    t0 = time.perf_counter()
    views = torch.cat([project_depth_views(objects[i:i + step], proj, device=device)
                       for i in range(0, len(objects), step)])
    t1 = time.perf_counter()
    for i in range(0, len(objects), step):
        project_depth_views(objects[i:i + step], replace(proj, method='realistic'),
                            device=device)
    t2 = time.perf_counter()
    out['contour_per_object'] = 1e3 * (t1 - t0) / len(objects)
    out['realistic_per_object'] = 1e3 * (t2 - t1) / len(objects)
    # And one object per call (fixed per-call costs weigh more).
    t0 = time.perf_counter()
    project_depth_views(objects[0], proj, device=device)
    t1 = time.perf_counter()
    project_depth_views(objects[0], replace(proj, method='realistic'), device=device)
    t2 = time.perf_counter()
    out['contour_single_object'] = 1e3 * (t1 - t0)
    out['realistic_single_object'] = 1e3 * (t2 - t1)
    out['bare_encoder'] = _bare_encoder_ms(detector.classifier.model, views, step)
    out['bare_encoder_per_object'] = out['bare_encoder'] / len(objects)
    return out


def main(args: argparse.Namespace) -> int:
    """
    Run the benchmark.

    :param args: From :func:`parse_args`.
    :return: Exit code.
    """
    if args.threads:
        torch.set_num_threads(args.threads)
    clouds = load_frames(args.scenes, args.frames)
    t0 = time.perf_counter()
    base = DetectorConfig()
    model = replace(base.opendlign.model, precision=args.precision)
    detector = Detector.from_config(replace(base, opendlign=replace(base.opendlign, model=model)))
    label_set = detector.encode_labels(LABELS)
    startup_ms = 1e3 * (time.perf_counter() - t0)
    for cloud in clouds:                                   # warm-up (allocators, caches)
        run_round(detector, label_set, cloud)
    samples: dict[str, list[float]] = {}
    per_frame: list[dict[str, list[float]]] = [{} for _ in clouds]
    for _ in range(args.repeats):
        for i, cloud in enumerate(clouds):
            for key, value in run_round(detector, label_set, cloud).items():
                samples.setdefault(key, []).append(value)
                per_frame[i].setdefault(key, []).append(value)
    med = {k: statistics.median(v) for k, v in samples.items()}
    enc = med.get('bare_encoder', float('nan'))
    summary = {
        'model': detector.config.opendlign.model.model_name,
        'frames': len(clouds), 'repeats': args.repeats,
        'points_per_frame': [len(c) for c in clouds],
        'objects_per_frame': [int(statistics.median(f['objects'])) for f in per_frame],
        'torch_threads': torch.get_num_threads(), 'cpu_count': os.cpu_count(),
        'load_average': os.getloadavg(), 'startup_ms': round(startup_ms, 1),
        'median_ms': {k: round(v, 2) for k, v in med.items() if k != 'objects'},
        'min_ms': {k: round(min(v), 2) for k, v in samples.items() if k != 'objects'},
        'ratio_to_bare_encoder': {k: round(v / enc, 3) for k, v in med.items()
                                  if k.startswith(('detect.', 'segment.', 'bare_encoder'))
                                  and not k.endswith('per_object')},
        'contour_over_realistic_per_object': round(
            med['contour_per_object'] / med['realistic_per_object'], 3)
        if 'contour_per_object' in med else None,
        'contour_over_realistic_single_object': round(
            med['contour_single_object'] / med['realistic_single_object'], 3)
        if 'contour_single_object' in med else None,
        'segment_ms_per_frame_median': [round(statistics.median(f['segment.total']), 1)
                                        for f in per_frame],
    }
    print(json.dumps(summary, indent=1))
    print(f'segmentation {med["segment.total"]:.1f} ms per frame wall, '
          f'{med["segment.cpu"]:.1f} ms CPU (target <= 80 ms; frames of '
          f'{int(np.mean(summary["points_per_frame"]))} points on average)')
    if summary['contour_over_realistic_per_object'] is not None:
        print(f'contour / realistic projection per object = '
              f'{summary["contour_over_realistic_per_object"]:.2f} in batches of '
              f'{detector.config.opendlign.classifier.batch_size}, '
              f'{summary["contour_over_realistic_single_object"]:.2f} one object per call '
              f'(target <= 1)')
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main(parse_args()))
