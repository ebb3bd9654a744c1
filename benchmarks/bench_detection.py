"""
Detection overhead: one ``Detector.detect`` call vs the bare image-encoder forwards it makes.

One synthetic ScanNet-style scene (train split, resampled to exactly 300k points) goes through
``Detector.detect`` with ViT-B-32 random weights on the CPU (or ``--weights`` when a trained export
is at hand). The views the detector projects are recorded; the same views, preprocessed, then go
through ``DepthCLIP.encode_image_mixed`` alone, in the same batches and with the same depth mask.
detect and bare forwards are interleaved ``--repeats`` times and medians are reported, in wall
time and in process CPU time (robust to other load on a shared machine; use ``--threads 1`` for
a CPU-time ratio that approximates a quiet machine's wall-time ratio).
Target (issue): ratio total / bare encoder <= 1.2.

    .venv/bin/python benchmarks/bench_detection.py [--repeats 2] [--threads 0]
"""

import argparse
import json
import os
from pathlib import Path
import statistics
import sys
import time

import numpy as np
import torch

from opendlign_core.classifier import Classifier, encoder_inputs
from opendlign_core.config import (
    DetectorConfig,
    ModelConfig,
    OpenDlignConfig,
    SegmentationConfig,
)
from opendlign_core.detection import Detector
from opendlign_core.model import create_depth_clip
from opendlign_core.scannet import list_scenes, read_scannet_scene
from opendlign_core.scene_synth import write_synth_scenes

LABELS = ('chair', 'table', 'sofa', 'bed', 'bookshelf', 'cabinet', 'desk', 'toilet', 'sink',
          'bathtub', 'refrigerator', 'door', 'window', 'picture', 'garbage bin', 'counter',
          'curtain', 'shower curtain')


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--scenes', type=Path,
                   default=Path.home() / '.cache' / 'opendlign' / 'scenes' / 'train_7_10',
                   help='folder of ScanNet-format train scenes (generated when missing)')
    p.add_argument('--scene-index', type=int, default=0)
    p.add_argument('--points', type=int, default=300_000)
    p.add_argument('--model-name', default='ViT-B-32')
    p.add_argument('--weights', default='', help='exported weights (default: random weights)')
    p.add_argument('--repeats', type=int, default=2)
    p.add_argument('--threads', type=int, default=0, help='torch threads (0: torch default)')
    p.add_argument('--max-points-per-object', type=int, default=None)
    p.add_argument('--json', type=Path, default=None)
    return p.parse_args(argv)


class _Recorder:
    """Wraps ``Classifier.project`` to keep the views the detector encodes."""

    def __init__(self, classifier: Classifier) -> None:
        self.views: list[torch.Tensor] = []
        self._project = classifier.project
        classifier.project = self

    def __call__(self, clouds):
        views = self._project(clouds)
        self.views.append(views)
        return views


def _bare_forwards(model, batches: list[torch.Tensor], step: int) -> tuple[float, float]:
    """Time encode_image_mixed on preprocessed views, batched as ``Classifier.embed_views``."""
    elapsed = cpu = 0.0
    for views in batches:
        for i in range(0, views.shape[0], step):
            images, mask = encoder_inputs(model, views[i:i + step])
            t0, c0 = time.perf_counter(), time.process_time()
            with torch.inference_mode():
                model.encode_image_mixed(images, mask)
            elapsed += time.perf_counter() - t0
            cpu += time.process_time() - c0
    return elapsed, cpu


def main(args: argparse.Namespace) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if not (args.scenes.exists() and list_scenes(args.scenes)):
        print(f'generating 10 train scenes into {args.scenes} ...', flush=True)
        write_synth_scenes(args.scenes, 'train', 10, 7)
    scene = read_scannet_scene(list_scenes(args.scenes)[args.scene_index])
    rng = np.random.default_rng(0)
    idx = rng.choice(len(scene.points), args.points, replace=len(scene.points) < args.points)
    pts = (scene.points[idx]
           + rng.normal(0, 0.002, (args.points, 3))).astype(np.float32)
    colors = scene.colors[idx] if scene.colors is not None else None

    model_cfg = ModelConfig(model_name=args.model_name, weights_path=args.weights)
    model = create_depth_clip(model_cfg)
    cfg = DetectorConfig(opendlign=OpenDlignConfig(model=model_cfg),
                         segmentation=SegmentationConfig())
    if args.max_points_per_object:
        from dataclasses import replace
        cfg = replace(cfg, max_points_per_object=args.max_points_per_object)
    classifier = Classifier(model, cfg.opendlign)
    detector = Detector(classifier, cfg)
    label_set = detector.encode_labels(LABELS)
    recorder = _Recorder(classifier)
    step = cfg.opendlign.classifier.batch_size

    detector.detect(pts, label_set, colors=colors)  # warm-up (allocator, open3d, thread pools)
    totals, bares, stages, cpu_totals, cpu_bares = [], [], [], [], []
    for _ in range(args.repeats):
        recorder.views.clear()
        c0 = time.process_time()
        res = detector.detect(pts, label_set, colors=colors)
        cpu_totals.append(1e3 * (time.process_time() - c0))
        totals.append(res.timings_ms['total'])
        stages.append(res.timings_ms)
        wall, cpu = _bare_forwards(model, recorder.views, step)
        bares.append(1e3 * wall)
        cpu_bares.append(1e3 * cpu)
    num_views = sum(int(v.shape[0] * v.shape[1]) for v in recorder.views)
    med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    total = statistics.median(totals)
    bare = statistics.median(bares)
    summary = {
        'model': args.model_name + (f' ({args.weights})' if args.weights else ' (random weights)'),
        'points': args.points, 'clusters': res.num_clusters, 'detections': len(res.detections),
        'images_encoded': num_views, 'torch_threads': torch.get_num_threads(),
        'max_points_per_object': cfg.max_points_per_object, 'repeats': args.repeats,
        'load_average': os.getloadavg(),
        'stages_ms_median': {k: round(v, 1) for k, v in med.items()},
        'bare_encoder_ms_median': round(bare, 1),
        'overhead_ms': round(total - bare, 1),
        'ratio_total_over_encoder': round(total / bare, 3),
        'ratio_per_repeat': [round(t / b, 3) for t, b in zip(totals, bares)],
        # CPU time is robust to other processes on a shared machine; with --threads 1 it
        # approximates the wall time of a quiet machine.
        'cpu_total_ms_median': round(statistics.median(cpu_totals), 1),
        'cpu_bare_encoder_ms_median': round(statistics.median(cpu_bares), 1),
        'ratio_cpu_time': round(statistics.median(cpu_totals) / statistics.median(cpu_bares), 3),
    }
    print(json.dumps(summary, indent=1))
    print(f'ratio total/encoder = {total / bare:.3f} (target <= 1.2)')
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main(parse_args()))
