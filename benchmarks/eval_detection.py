"""
ScanNet-18 detection AP of the full detector on synthetic eval-split scenes.

Generates (or reuses) ScanNet-format scenes from Sweet Home 3D EVAL-split models, runs
``Detector.detect`` with the given model on every scene, and scores AP at IoU 0.25/0.5 with the
ScanNet rules (ground truth: the semantic ScanNet-18 reading of the synthetic scenes).

    .venv/bin/python benchmarks/eval_detection.py --count 20 --seed 2024 --out out/eval_det

Tune on TRAIN-split scenes only (never generates scenes when ``--split train``)::

    .venv/bin/python benchmarks/eval_detection.py --split train \
        --scenes ~/.cache/opendlign/scenes/train_7_10 ~/.cache/opendlign/scenes/train_11_10

``--labels-per-object`` reports each object's best N labels; the table is for that setting, and
the mAP of the best-label detections alone (``hypothesis == 0``) is printed too.
"""

import argparse
from dataclasses import replace
import json
from pathlib import Path
import time

from opendlign_core.config import DetectorConfig, ModelConfig, OpenDlignConfig
from opendlign_core.det_eval import PredBox, evaluate_detections, format_markdown, plot_pr
from opendlign_core.detection import Detector
from opendlign_core.scannet import list_scenes, read_scannet_scene
from opendlign_core.scene_cli import SCANNET18_CLASSES, read_ground_truth
from opendlign_core.scene_synth import write_synth_scenes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('--count', type=int, default=20)
    parser.add_argument('--seed', type=int, default=2024)
    parser.add_argument('--split', choices=('eval', 'train'), default='eval',
                        help='split of the scenes; eval scenes are generated when missing, '
                        'train scenes must exist (give them with --scenes)')
    parser.add_argument('--scenes', type=Path, nargs='+', default=None,
                        help='scene roots (default ~/.cache/opendlign/scenes/eval_<seed>_<count>)')
    parser.add_argument('--labels-per-object', type=int, default=1)
    parser.add_argument('--no-synonyms', action='store_true',
                        help='match class names alone (no DetectorConfig.label_synonyms)')
    parser.add_argument('--no-colors', action='store_true',
                        help="segment from geometry alone (ignore the scenes' colours)")
    parser.add_argument('--weights', default='bundled')
    parser.add_argument('--model-name', default=ModelConfig.model_name)
    parser.add_argument('--precision', default=ModelConfig.precision,
                        choices=('fp32', 'bf16', 'fp16', 'auto'),
                        help="model precision ('auto' is the node's default)")
    parser.add_argument('--out', type=Path, default=Path('out/eval_det'))
    args = parser.parse_args()
    if args.split == 'train' and not args.scenes:
        parser.error('--split train needs --scenes (train scenes are never generated here)')
    roots = args.scenes or [Path.home() / '.cache/opendlign/scenes'
                            / f'eval_{args.seed}_{args.count}']
    if args.split == 'eval' and len(roots) == 1 and len(list_scenes(roots[0])) < args.count:
        print(f'generating {args.count} eval-split scenes (seed {args.seed}) in {roots[0]}')
        write_synth_scenes(roots[0], 'eval', args.count, args.seed)
    model = ModelConfig(model_name=args.model_name, weights_path=args.weights,
                        precision=args.precision)
    config = DetectorConfig(opendlign=OpenDlignConfig(model=model),
                            labels_per_object=args.labels_per_object,
                            use_colors=not args.no_colors)
    if args.no_synonyms:
        config = replace(config, label_synonyms='')
    detector = Detector.from_config(config)
    print(f'model: {detector.classifier.model.source}; split {args.split}; '
          f'labels_per_object {config.labels_per_object}; synonyms {bool(config.label_synonyms)}; '
          f'colours {config.use_colors}')
    labels = detector.encode_labels(list(SCANNET18_CLASSES))
    preds, best, gts, timings = {}, {}, {}, []
    args.out.mkdir(parents=True, exist_ok=True)
    for root in roots:
        prefix = f'{root.name}/' if len(roots) > 1 else ''
        root_gts = read_ground_truth(root, 'semantic')
        for scene_dir in list_scenes(root)[:args.count]:
            scene = read_scannet_scene(scene_dir)
            key = prefix + scene.scene_id
            t0 = time.perf_counter()
            result = detector.detect(scene.points, labels, colors=scene.colors)
            timings.append(time.perf_counter() - t0)
            preds[key] = [PredBox(d.label, d.score, d.box) for d in result.detections]
            best[key] = [PredBox(d.label, d.score, d.box) for d in result.detections
                         if d.hypothesis == 0]
            gts[key] = root_gts.get(scene.scene_id, [])
            (args.out / f'{key.replace("/", "_")}.json').write_text(json.dumps(
                {'scene': key, 'detections': [d.to_dict() for d in result.detections]}))
    classes = list(SCANNET18_CLASSES)
    result = evaluate_detections(preds, gts, (0.25, 0.5), classes)
    table = format_markdown(result)
    (args.out / 'table.md').write_text(table)
    plot_pr(result, args.out / 'pr.png')
    print(table)
    print(f'{len(preds)} scenes, {sum(map(len, preds.values()))} detections, '
          f'{sum(map(len, gts.values()))} ground-truth boxes; detect median '
          f'{sorted(timings)[len(timings) // 2]:.2f} s/scene')
    print(f'mAP@0.25 {100 * result.mean_ap[0.25]:.2f}  mAP@0.5 {100 * result.mean_ap[0.5]:.2f}')
    if config.labels_per_object > 1:
        one = evaluate_detections(best, gts, (0.25, 0.5), classes)
        print(f'best label only: mAP@0.25 {100 * one.mean_ap[0.25]:.2f}  '
              f'mAP@0.5 {100 * one.mean_ap[0.5]:.2f}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
