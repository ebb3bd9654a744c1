"""
Evaluation and inspection commands: ``eval-cls``, ``classify`` and ``project``.

``eval-cls`` scores a classifier on OpenDlign's released depth maps
(``ROOT/<dataset>/depth_map/*_dm.npy``, views already projected) or on a folder of point-cloud
files (``DIR/<class>/<file>``, projected here), exactly as the reference zero-shot script scores:
the sum over views of per-view softmaxes of raw cosines (spec section 5.2). It writes
``metrics.json``, ``metrics.md``, ``confusion.png`` and ``predictions.csv``. ``classify`` prints
the top-k labels of point-cloud or depth-map files; ``project`` saves a file's 10 depth maps as a
montage PNG (:func:`opendlign_core.projection.save_views_png`).

Without ``--weights`` the commands use the bundled model (:func:`default_model_config`); when it is
absent they fall back to a tiny random-weight model and say so loudly, since its predictions mean
nothing.
"""

import argparse
import csv
from dataclasses import dataclass, field, replace
import json
import logging
import math
from pathlib import Path
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from opendlign_core import config as config_module
from opendlign_core.config import ClassifierConfig, ModelConfig, OpenDlignConfig, ProjectionConfig
from opendlign_core.datasets import (
    RELEASED_DATASETS,
    DepthMapDataset,
    PointCloudFolder,
    dataset_labels,
    default_templates,
    reduce_channels,
)
from opendlign_core.metrics import (
    ClassificationReport,
    classification_report,
    save_confusion_png,
    top_k_predictions,
)

if TYPE_CHECKING:
    import torch

    from opendlign_core.classifier import Classifier

_logger = logging.getLogger(__name__)

#: The model trained for this package, used when no ``--weights`` is given.
BUNDLED_WEIGHTS = config_module.BUNDLED_WEIGHTS[ModelConfig.model_name]
#: Architecture used when neither weights nor the bundled model are available.
FALLBACK_MODEL_NAME = 'OpenDlign-Tiny-Test'
RANDOM_WEIGHTS_NOTICE = (
    '*** {}: predictions are meaningless. Pass --weights PATH to use a '
    'trained model. ***')

Dataset = Union[DepthMapDataset, PointCloudFolder]


def default_model_config(device: str = 'cpu') -> ModelConfig:
    """
    Return the model the commands use when no weights are given.

    :param device: Torch device string.
    :return: The bundled ``opendlign-bootstrap`` export if installed; otherwise the tiny random
        ``OpenDlign-Tiny-Test`` model (a warning is logged).
    """
    if BUNDLED_WEIGHTS.is_file():
        return ModelConfig(device=device)
    _logger.warning(RANDOM_WEIGHTS_NOTICE.format(
        f'RANDOM WEIGHTS: bundled model {BUNDLED_WEIGHTS} is missing, using '
        f'{FALLBACK_MODEL_NAME}'))
    return ModelConfig(model_name=FALLBACK_MODEL_NAME, weights_path='', device=device)


def model_config_from_args(weights: Optional[str], model_name: Optional[str], device: str,
                           precision: str = 'fp32') -> ModelConfig:
    """
    Map the model flags onto a :class:`ModelConfig`.

    :param weights: ``--weights`` (``None``: bundled model, or random weights of ``model_name``).
    :param model_name: ``--model-name`` (architecture; needed for non-exported checkpoints).
    :param device: ``--device``.
    :param precision: ``--precision``.
    :return: The config.
    """
    if weights:
        base = ModelConfig(weights_path=str(weights), device=device, precision=precision)
        return replace(base, model_name=model_name) if model_name else base
    if model_name:
        return ModelConfig(model_name=model_name, weights_path='', device=device,
                           precision=precision)
    return replace(default_model_config(device), precision=precision)


def build_classifier(config: OpenDlignConfig) -> 'Classifier':
    """
    Build the classifier the commands use (tests replace this function).

    :param config: Full settings.
    :return: The classifier.
    """
    from opendlign_core.classifier import Classifier

    return Classifier.from_config(config)


def weights_description(classifier: 'Classifier') -> Tuple[str, bool]:
    """
    Describe where a classifier's weights came from.

    :param classifier: The classifier.
    :return: ``(text, is_random)``; the text starts with ``'random weights'`` for untrained models.
    """
    model = classifier.model
    source = str(getattr(model, 'source', 'unknown'))
    name = getattr(model, 'model_name', '?')
    if source.startswith('random'):
        return f'random weights ({name}, untrained)', True
    return f'{source} ({name})', False


def parse_labels(text: str) -> Tuple[str, ...]:
    """
    Read a ``--labels`` value.

    :param text: A bundled dataset name (``'modelnet40'``, ``'scanobjectnn'``, ``'OmniObject3D'``),
        a path to a text file with one label per line, or a comma-separated list.
    :return: The labels (stripped; blank entries dropped).
    :raises ValueError: If no label remains.
    """
    if text in RELEASED_DATASETS:
        return dataset_labels(text)
    path = Path(text).expanduser()
    if path.is_file():
        items = path.read_text(encoding='utf-8').splitlines()
    else:
        items = text.split(',')
    labels = tuple(x.strip() for x in items if x.strip())
    if not labels:
        raise ValueError(f'--labels {text!r} holds no label')
    return labels


@dataclass
class EvalResult:
    """
    Scores of one evaluation run.

    :param dataset: Dataset name.
    :param labels: Class names (C).
    :param paths: The N evaluated files.
    :param targets: (N,) true class indices.
    :param scores: (N, C) reference aggregated scores (per-view softmaxes summed, divided by V).
    :param report: The metrics.
    :param seconds: Wall time of feature extraction and scoring.
    :param info: Run metadata (weights, templates, device, ...).
    """

    dataset: str
    labels: Tuple[str, ...]
    paths: List[Path]
    targets: np.ndarray
    scores: np.ndarray
    report: ClassificationReport
    seconds: float
    info: Dict[str, Any] = field(default_factory=dict)


def _views_tensor(views: np.ndarray, classifier: 'Classifier') -> 'torch.Tensor':
    import torch

    return torch.from_numpy(np.ascontiguousarray(views, dtype=np.float32)).to(
        classifier.model.device)


def evaluate(classifier: 'Classifier', dataset: Dataset, *, templates: Optional[str] = None,
             batch_size: int = 8, ks: Sequence[int] = (1, 3, 5),
             progress: bool = False) -> EvalResult:
    """
    Score a classifier on a dataset with the reference multi-view aggregation.

    Depth-map datasets are fed as stored; point-cloud folders are projected with the
    classifier's projection settings.

    :param classifier: The classifier.
    :param dataset: A :class:`DepthMapDataset` or :class:`PointCloudFolder`.
    :param templates: Template set name; ``None`` uses the dataset's reference default.
    :param batch_size: Objects per encoder batch.
    :param ks: Top-k values to report.
    :param progress: Show a tqdm progress bar on stderr.
    :return: The result.
    """
    from tqdm import tqdm

    from opendlign_core.classifier import aggregate_scores

    templates = templates or default_templates(dataset.name)
    label_set = classifier.encode_labels(dataset.labels, templates=templates)
    all_scores, all_targets = [], []
    start = time.perf_counter()
    bar = tqdm(total=len(dataset), unit='obj', desc=f'eval {dataset.name}', disable=not progress,
               file=sys.stderr)
    offset, num_views = 0, 0
    for batch, targets in dataset.batches(batch_size):
        if isinstance(dataset, DepthMapDataset):
            views = _views_tensor(batch, classifier)
        else:
            try:
                views = classifier.project(batch)
            except ValueError as e:
                names = [str(s.path) for s in dataset.samples[offset:offset + len(batch)]]
                raise ValueError(f'projection failed for one of {names}: {e}') from e
        features = classifier.embed_views(views)
        weights = label_set.weights.to(features.device)
        num_views = int(features.shape[1])
        scores = aggregate_scores(features, weights) / num_views
        all_scores.append(scores.float().cpu().numpy())
        all_targets.append(targets)
        offset += len(targets)
        bar.update(len(targets))
    bar.close()
    seconds = time.perf_counter() - start
    scores = np.concatenate(all_scores)
    targets = np.concatenate(all_targets)
    description, is_random = weights_description(classifier)
    return EvalResult(
        dataset=dataset.name, labels=label_set.labels, paths=[s.path for s in dataset.samples],
        targets=targets, scores=scores,
        report=classification_report(scores, targets, label_set.labels, ks),
        seconds=seconds,
        info={'weights': description, 'random_weights': is_random, 'templates': templates,
              'num_views': num_views,
              'objects_per_second': len(targets) / seconds if seconds > 0 else None})


def write_eval_outputs(result: EvalResult, out_dir: Union[str, Path]) -> Dict[str, Path]:
    """
    Write ``metrics.json``, ``metrics.md``, ``confusion.png`` and ``predictions.csv``.

    :param result: An evaluation result.
    :param out_dir: Output folder (created).
    :return: Name to written path.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in
             ('metrics.json', 'metrics.md', 'confusion.png', 'predictions.csv')}
    payload = {'dataset': result.dataset, 'seconds': result.seconds, **result.info,
               **result.report.to_dict()}
    paths['metrics.json'].write_text(json.dumps(payload, indent=2, allow_nan=False) + '\n')
    header = (f'Weights: {result.info.get("weights", "?")}  \n'
              f'Templates: {result.info.get("templates", "?")}  \n'
              f'Time: {result.seconds:.1f} s\n\n')
    paths['metrics.md'].write_text(
        result.report.to_markdown(f'Zero-shot classification: {result.dataset}')
        + '\n' + header)
    top1 = 100 * result.report.top_k.get(1, math.nan)
    save_confusion_png(result.report.confusion, result.labels, paths['confusion.png'],
                       title=f'{result.dataset} (top-1 {top1:.1f}%)')
    top = top_k_predictions(result.scores, 5)
    with open(paths['predictions.csv'], 'w', newline='', encoding='utf-8') as f:
        writer = csv.writer(f)
        writer.writerow(['file', 'true', 'predicted', 'score', 'top5'])
        for i, path in enumerate(result.paths):
            writer.writerow([path.name, result.labels[result.targets[i]],
                             result.labels[top[i, 0]], f'{result.scores[i, top[i, 0]]:.6f}',
                             '|'.join(result.labels[j] for j in top[i])])
    return paths


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group('model')
    group.add_argument('--weights', metavar='PATH',
                       help='exported .safetensors, authors .pth or open_clip checkpoint '
                            f'(default: the bundled model, else random {FALLBACK_MODEL_NAME})')
    group.add_argument('--model-name', metavar='NAME',
                       help='open_clip architecture (for .pth checkpoints; alone: random weights)')
    group.add_argument('--device', default='cpu', help="torch device (default 'cpu')")
    group.add_argument('--precision', default='fp32', choices=('fp32', 'bf16', 'fp16'))
    group.add_argument('--batch-size', type=int, default=8, metavar='N',
                       help='objects per encoder batch (default 8)')
    group.add_argument('--templates', metavar='SET',
                       help="text template set (default 'depth'; 'depth-scanobjectnn' for "
                            'scanobjectnn)')
    _add_up_axis_arg(group)


def _add_up_axis_arg(parser: Any) -> None:
    parser.add_argument('--up-axis', default='z', choices=('x', 'y', 'z', '-x', '-y', '-z'),
                        help="up axis of point-cloud files (default 'z'; 'y' for ModelNet/"
                             'ShapeNet-style Y-up data)')


def _config_from_args(args: argparse.Namespace) -> OpenDlignConfig:
    if args.batch_size < 1:
        raise ValueError(f'--batch-size must be >= 1, got {args.batch_size}')
    top_k = getattr(args, 'top_k', 5)
    if top_k < 1:
        raise ValueError(f'--top-k must be >= 1, got {top_k}')
    return OpenDlignConfig(
        model=model_config_from_args(args.weights, args.model_name, args.device, args.precision),
        classifier=ClassifierConfig(templates=args.templates or 'depth', top_k=top_k,
                                    batch_size=args.batch_size))


def _announce_weights(classifier: 'Classifier') -> str:
    text, is_random = weights_description(classifier)
    if is_random:
        print(RANDOM_WEIGHTS_NOTICE.format(text), file=sys.stderr)
    return text


def _cmd_eval_cls(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 1:
        raise ValueError(f'--limit must be >= 1, got {args.limit}')
    labels = parse_labels(args.labels) if args.labels else None
    if args.dataset:
        if not args.root:
            raise ValueError('eval-cls --dataset needs ROOT, the folder holding '
                             '<dataset>/depth_map')
        dataset: Dataset = DepthMapDataset.from_root(args.root, args.dataset, labels,
                                                     limit=args.limit, channel_mode=args.channels)
    else:
        dataset = PointCloudFolder(args.points_dir, labels, limit=args.limit,
                                   up_axis=args.up_axis)
    classifier = build_classifier(_config_from_args(args))
    weights = _announce_weights(classifier)
    print(f'weights: {weights}')
    print(f'dataset: {dataset.name}: {len(dataset)} objects, {len(dataset.labels)} classes')
    result = evaluate(classifier, dataset, templates=args.templates, batch_size=args.batch_size,
                      progress=not args.no_progress)
    result.info.update({'root': str(args.root or args.points_dir), 'limit': args.limit,
                        'device': args.device, 'precision': args.precision})
    paths = write_eval_outputs(result, args.out)
    top = result.report.top_k
    print(' '.join(f'Top-{k}: {100 * v:.2f}%' for k, v in top.items())
          + f'  mAcc: {100 * result.report.macro["mean_class_accuracy"]:.2f}%'
          + f'  macro F1: {100 * result.report.macro["f1"]:.2f}%')
    print(f'wrote {", ".join(str(p) for p in paths.values())}')
    return 0


def load_object(path: Union[str, Path], up_axis: str = 'z') -> Tuple[str, np.ndarray]:
    """
    Read a file given to ``classify`` or ``project``.

    :param path: A point-cloud file, or an ``.npy`` holding multi-view depth maps of shape
        (V, H, W, 3), (V, H, W, 1) or (V, H, W) (e.g. a released ``*_dm.npy``).
    :param up_axis: Up axis of a point-cloud file; points are rotated into +z up.
    :return: ``('views', (V, H, W) float32)`` or ``('points', (N, 3) float32)`` (finite points).
    :raises FileNotFoundError: If the file is missing.
    :raises ValueError: If the file cannot be read or holds no usable points.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f'file {str(path)!r} does not exist')
    if path.suffix.lower() == '.npy':
        try:
            arr = np.load(path, mmap_mode='r', allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f'could not read {str(path)!r}: {e}') from e
        if arr.ndim >= 3:
            return 'views', reduce_channels(arr, 'auto', name=path.name)
    from opendlign_core.pointcloud import clean_points, load_point_cloud, to_z_up

    try:
        points = clean_points(load_point_cloud(path))
    except ValueError as e:
        raise ValueError(f'{str(path)!r}: {e}') from e
    return 'points', points if up_axis == 'z' else to_z_up(points, up_axis)


def _cmd_classify(args: argparse.Namespace) -> int:
    import torch

    labels = parse_labels(args.labels)
    classifier = build_classifier(_config_from_args(args))
    weights = _announce_weights(classifier)
    print(f'weights: {weights}')
    label_set = classifier.encode_labels(labels)
    width = max(len(x) for x in labels)
    for file in args.files:
        kind, data = load_object(file, args.up_axis)
        if kind == 'views':
            views = torch.from_numpy(np.ascontiguousarray(data))[None].to(classifier.model.device)
            pred = classifier.classify_views(views, label_set)[0]
        else:
            pred = classifier.classify_points([data], label_set)[0]
        print(f'{file}: {pred.label} (probability {pred.probability:.3f})')
        for rank, (label, score) in enumerate(pred.top_k, 1):
            print(f'  {rank}. {label:<{width}}  score {score:.4f}')
    return 0


def _cmd_project(args: argparse.Namespace) -> int:
    from opendlign_core.projection import project_depth_views, save_views_png

    kind, data = load_object(args.file, args.up_axis)
    config = ProjectionConfig(method=args.method, resolution=args.resolution)
    if kind == 'points':
        views = project_depth_views(data, config, device='cpu')[0].cpu().numpy()
        order = ', '.join(f'{a:g}' for a in config.view_angles_deg)
        print(f'{args.file}: {len(data)} points, {config.method} projection, azimuths '
              f'{order} deg (elevation {config.elevation_deg:g} deg)')
    else:
        views = np.asarray(data)
        print(f'{args.file}: stored depth maps')
    path = save_views_png(views, args.out, ncols=5)
    half = len(views) // 2
    print(f'{len(views)} views {views.shape[1]}x{views.shape[2]} (views 0-{half - 1} pre-trained '
          f'encoder, {half}-{len(views) - 1} depth branch), wrote {path}')
    return 0


def register_eval_commands(subparsers: Any) -> None:
    """
    Add ``eval-cls``, ``classify`` and ``project`` to a parser's subcommands.

    :param subparsers: The object returned by ``ArgumentParser.add_subparsers``; each command
        sets ``func(args) -> int``.
    """
    p = subparsers.add_parser(
        'eval-cls', help='zero-shot accuracy on released depth maps or point-cloud folders',
        description='Zero-shot classification accuracy (Top-1/3/5, per-class, macro F1).')
    p.add_argument('root', nargs='?', metavar='ROOT',
                   help='folder holding <dataset>/depth_map (with --dataset)')
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument('--dataset', metavar='NAME',
                        help=f'dataset folder under ROOT, e.g. {", ".join(RELEASED_DATASETS)}')
    source.add_argument('--points-dir', metavar='DIR',
                        help='folder of <class>/<file>.{ply,pcd,npy,npz,txt,xyz} point clouds')
    p.add_argument('--labels', metavar='LIST',
                   help='class list (index order): comma-separated, a file (one per line) or a '
                        'bundled dataset name (default: the bundled list of --dataset, else the '
                        'sorted labels found)')
    p.add_argument('--limit', type=int, metavar='N',
                   help='evaluate N objects spread evenly over the dataset')
    p.add_argument('--channels', default='auto', choices=('auto', 'strict', 'first', 'mean'),
                   help='how 3-channel depth maps become one channel (default: channel 0 if '
                        'all equal, else the mean)')
    p.add_argument('--out', required=True, metavar='DIR', help='output folder')
    p.add_argument('--no-progress', action='store_true', help='hide the progress bar')
    _add_model_args(p)
    p.set_defaults(func=_cmd_eval_cls)

    p = subparsers.add_parser(
        'classify', help='classify point-cloud or depth-map files among given labels',
        description='Print the top-k labels of each file.')
    p.add_argument('files', nargs='+', metavar='FILE',
                   help='point-cloud files, or .npy multi-view depth maps (V, H, W[, 3])')
    p.add_argument('--labels', required=True, metavar='LIST',
                   help='comma-separated labels, a file (one per line) or a bundled dataset name')
    p.add_argument('--top-k', type=int, default=5, metavar='K', help='labels shown per file')
    _add_model_args(p)
    p.set_defaults(func=_cmd_classify)

    p = subparsers.add_parser(
        'project', help='save the multi-view depth maps of a point cloud as a PNG',
        description='Project a point cloud into depth maps (or show a .npy of views).')
    p.add_argument('file', metavar='FILE', help='point-cloud file or .npy depth maps')
    p.add_argument('--out', required=True, metavar='PNG', help='output image')
    p.add_argument('--method', default='contour', choices=('contour', 'realistic'))
    p.add_argument('--resolution', type=int, default=224, metavar='PX')
    _add_up_axis_arg(p)
    p.set_defaults(func=_cmd_project)


def main(argv: Optional[List[str]] = None) -> int:
    """
    Run the evaluation commands alone (as ``opendlign`` does, without the other commands).

    :param argv: Arguments without the program name.
    :return: The exit code.
    """
    from opendlign_core.cli import run

    parser = argparse.ArgumentParser(prog='opendlign-eval')
    parser.add_argument('-v', '--verbose', action='store_true', help='log debug messages')
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', required=True)
    register_eval_commands(sub)
    return run(parser, argv)


if __name__ == '__main__':
    raise SystemExit(main())
