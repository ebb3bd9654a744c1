"""
Scene subcommands of the ``opendlign`` CLI: ``detect``, ``scene synth`` and ``eval-det``.

``detect SCENE`` reads a point-cloud file or a ScanNet scene folder, writes ``dets.json`` and a
top-view PNG; ``scene synth`` writes synthetic ScanNet-format scenes; ``eval-det`` scores a folder
of detection JSONs against ScanNet-format ground truth (or ground-truth JSONs) and writes a
markdown table, a JSON summary and a PR plot.
"""

import argparse
import json
import math
from pathlib import Path
import sys
from typing import Any, Optional, Sequence

import numpy as np

from opendlign_core.boxes import Box3D
from opendlign_core.scannet import SCANNET18_CLASSES, list_scenes, read_scannet_scene


def register_scene_commands(subparsers: Any) -> None:
    """
    Add ``detect``, ``scene`` (``synth``) and ``eval-det`` to a parser's subcommands.

    :param subparsers: The object returned by ``ArgumentParser.add_subparsers``; each command
        sets ``func(args) -> int``.
    """
    from opendlign_core.eval_cli import _add_model_args

    p = subparsers.add_parser('detect', help='zero-shot 3D detection in a scene cloud',
                              description='Segment a scene, classify each object, write boxes.')
    p.add_argument('scene', metavar='SCENE',
                   help='point-cloud file (.ply/.pcd/.npy/...) or a ScanNet scene folder')
    p.add_argument('--labels', required=True, metavar='LIST',
                   help="comma-separated labels, a file (one per line) or 'scannet18'")
    p.add_argument('--out', required=True, metavar='FILE', help='output JSON (dets.json)')
    p.add_argument('--png', metavar='FILE', help='top-view PNG (default: next to --out)')
    p.add_argument('--score-threshold', type=float, default=0.0)
    p.add_argument('--unknown-threshold', type=float, default=0.0)
    p.add_argument('--nms-iou', type=float, default=0.25)
    p.add_argument('--axis-aligned', action='store_true', help='fit axis-aligned boxes')
    p.add_argument('--no-colors', action='store_true',
                   help="segment from geometry alone (ignore the scene's colours)")
    _add_model_args(p)
    p.set_defaults(func=_cmd_detect)

    p = subparsers.add_parser('scene', help='synthetic ScanNet-style scenes')
    scene_sub = p.add_subparsers(dest='scene_command', metavar='ACTION', required=True)
    s = scene_sub.add_parser('synth', help='generate scenes from Sweet Home 3D models')
    s.add_argument('--split', required=True, choices=('train', 'eval'),
                   help="model split ('eval' scenes are for evaluation only)")
    s.add_argument('--count', type=int, required=True, metavar='N')
    s.add_argument('--seed', type=int, default=0, metavar='S')
    s.add_argument('--out', required=True, metavar='DIR')
    s.add_argument('--no-frames', action='store_true', help='do not keep per-frame depth/poses')
    s.set_defaults(func=_cmd_synth)

    p = subparsers.add_parser('eval-det', help='3D detection AP (ScanNet protocol)',
                              description='Per-class AP at IoU 0.25/0.5 and their means.')
    p.add_argument('--pred', required=True, metavar='DIR', help='folder of <scene>.json files')
    p.add_argument('--gt', required=True, metavar='DIR',
                   help='ScanNet-format scene folders, or a folder of ground-truth JSONs')
    p.add_argument('--out', metavar='DIR', help='write table.md, summary.json, pr.png here')
    p.add_argument('--classes', default='scannet18',
                   help="comma-separated classes or 'scannet18' (default) or 'all'")
    p.add_argument('--gt-labels', default='benchmark', choices=('benchmark', 'semantic'),
                   help='ScanNet-18 reading of the ground truth (semantic: synthetic scenes)')
    p.add_argument('--oriented', action='store_true', help='oriented IoU instead of aligned')
    p.add_argument('--thresholds', default='0.25,0.5')
    p.set_defaults(func=_cmd_eval_det)


def _parse_labels(text: str) -> list[str]:
    if text == 'scannet18':
        return list(SCANNET18_CLASSES)
    path = Path(text)
    if path.is_file():
        return [x.strip() for x in path.read_text().splitlines() if x.strip()]
    return [x.strip() for x in text.split(',') if x.strip()]


def _load_scene_points(path: Path) -> tuple[str, np.ndarray, Optional[np.ndarray]]:
    if path.is_dir():
        scene = read_scannet_scene(path)
        return scene.scene_id, scene.points, scene.colors
    from opendlign_core.pointcloud import load_point_cloud, load_point_colors

    return path.stem, load_point_cloud(path), load_point_colors(path)


def _cmd_detect(args: argparse.Namespace) -> int:
    from opendlign_core.config import DetectorConfig
    from opendlign_core.detection import Detector
    from opendlign_core.eval_cli import _config_from_args

    path = Path(args.scene)
    if not path.exists():
        raise FileNotFoundError(f'SCENE {path} not found')
    scene_id, points, colors = _load_scene_points(path)
    cfg = DetectorConfig(opendlign=_config_from_args(args), up_axis=args.up_axis,
                         score_threshold=args.score_threshold,
                         unknown_threshold=args.unknown_threshold, nms_iou=args.nms_iou,
                         oriented_boxes=not args.axis_aligned, use_colors=not args.no_colors)
    detector = Detector.from_config(cfg)
    labels = _parse_labels(args.labels)
    result = detector.detect(points, detector.encode_labels(labels), colors=colors)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {'scene': scene_id, 'labels': labels, 'num_points': result.num_points,
               'num_clusters': result.num_clusters,
               'timings_ms': {k: round(v, 2) for k, v in result.timings_ms.items()},
               'detections': [d.to_dict() for d in result.detections]}
    out.write_text(json.dumps(payload, indent=1))
    png = Path(args.png) if args.png else out.with_suffix('.png')
    save_top_view(png, points if cfg.up_axis == 'z' else None, result.detections, scene_id)
    print(f'{len(result.detections)} detections from {result.num_clusters} clusters in '
          f'{result.timings_ms["total"] / 1e3:.2f} s -> {out}, {png}')
    return 0


def save_top_view(path: Path, points: Optional[np.ndarray], detections: Sequence[Any],
                  title: str = '') -> None:
    """
    Save a top view (x right, y up) of the cloud with box footprints and labels.

    :param path: Output PNG.
    :param points: (N, 3) cloud in the boxes' frame, or None to draw boxes only.
    :param detections: Objects with ``label``, ``score`` and ``box`` (:class:`Box3D`).
    :param title: Figure title.
    """
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 8))
    if points is not None and len(points):
        pts = np.asarray(points)
        pts = pts[np.isfinite(pts).all(axis=1)]
        step = max(1, len(pts) // 60_000)
        ax.scatter(pts[::step, 0], pts[::step, 1], s=0.2, c=pts[::step, 2], cmap='Greys',
                   alpha=0.5)
    cmap = plt.get_cmap('tab20')
    names = sorted({d.label for d in detections})
    for d in detections:
        foot = np.vstack([d.box.footprint(), d.box.footprint()[:1]])
        color = cmap(names.index(d.label) % 20)
        ax.plot(foot[:, 0], foot[:, 1], color=color, lw=1.5)
        ax.text(d.box.center[0], d.box.center[1], f'{d.label}\n{d.score:.2f}', fontsize=7,
                ha='center', va='center', color=color)
    ax.set_aspect('equal')
    ax.set_xlabel('x [m]')
    ax.set_ylabel('y [m]')
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cmd_synth(args: argparse.Namespace) -> int:
    from opendlign_core.scene_synth import SynthConfig, write_synth_scenes

    dirs = write_synth_scenes(Path(args.out), args.split, args.count, args.seed,
                              SynthConfig(keep_frames=not args.no_frames))
    print(f'wrote {len(dirs)} {args.split} scenes to {args.out}')
    return 0


def read_predictions(folder: Path) -> dict:
    """
    Read detection JSONs (``detect`` output) from a folder.

    :param folder: Folder of ``*.json`` files; the scene id is the ``scene`` key or the stem.
    :return: scene id -> list of :class:`opendlign_core.det_eval.PredBox`.
    :raises FileNotFoundError: If the folder does not exist.
    """
    from opendlign_core.det_eval import PredBox

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'--pred folder {folder} not found')
    out = {}
    for f in sorted(folder.glob('*.json')):
        data = json.loads(f.read_text())
        out[data.get('scene', f.stem)] = [
            PredBox(d['label'], float(d['score']), Box3D.from_dict(d['box']))
            for d in data.get('detections', [])]
    return out


def read_ground_truth(folder: Path, reading: str = 'benchmark') -> dict:
    """
    Read ground-truth boxes from ScanNet scene folders or from JSON files.

    :param folder: A ScanNet root (scene folders) or a folder of ``{"scene", "objects": [{label,
        box}]}`` JSONs.
    :param reading: ``'benchmark'`` (nyu40 mapping) or ``'semantic'`` ScanNet-18 classes.
    :return: scene id -> list of :class:`opendlign_core.det_eval.GtBox`.
    :raises FileNotFoundError: If the folder does not exist.
    """
    from opendlign_core.det_eval import GtBox

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f'--gt folder {folder} not found')
    scenes = list_scenes(folder)
    out = {}
    if scenes:
        for d in scenes:
            scene = read_scannet_scene(d)
            out[scene.scene_id] = [
                GtBox(i.scannet18_semantic if reading == 'semantic' else i.scannet18, i.box)
                for i in scene.instances if i.box is not None and not i.is_structure
                and (i.scannet18_semantic if reading == 'semantic' else i.scannet18)]
        return out
    for f in sorted(folder.glob('*.json')):
        data = json.loads(f.read_text())
        out[data.get('scene', f.stem)] = [GtBox(o['label'], Box3D.from_dict(o['box']))
                                          for o in data.get('objects', [])]
    return out


def _cmd_eval_det(args: argparse.Namespace) -> int:
    from opendlign_core.det_eval import evaluate_detections, format_markdown, plot_pr

    thresholds = tuple(float(t) for t in args.thresholds.split(','))
    preds = read_predictions(Path(args.pred))
    gts = read_ground_truth(Path(args.gt), args.gt_labels)
    classes = None if args.classes == 'all' else _parse_labels(args.classes)
    res = evaluate_detections(preds, gts, thresholds, classes, oriented=args.oriented)
    table = format_markdown(res)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / 'table.md').write_text(table)
        summary = {'thresholds': list(thresholds),
                   'mean_ap': {str(t): v for t, v in res.mean_ap.items()},
                   'ap': {str(t): {c: (None if math.isnan(v) else v) for c, v in d.items()}
                          for t, d in res.ap.items()},
                   'num_gt': dict(res.num_gt), 'scenes_gt': len(gts), 'scenes_pred': len(preds)}
        (out / 'summary.json').write_text(json.dumps(summary, indent=1))
        plot_pr(res, out / 'pr.png')
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    """
    Run only the scene subcommands (for tests and scripts).

    :param argv: Arguments without the program name.
    :return: Exit code.
    """
    from opendlign_core.cli import run

    parser = argparse.ArgumentParser(prog='opendlign')
    parser.add_argument('-v', '--verbose', action='store_true')
    register_scene_commands(parser.add_subparsers(dest='command', required=True))
    return run(parser, argv)


if __name__ == '__main__':
    sys.exit(main())
