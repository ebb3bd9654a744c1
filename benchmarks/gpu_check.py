"""
One prepared GPU check: gpu tests, classify latency, detection stages and the node, in one table.

Sections (each has a time budget; what does not fit is reported as skipped, never overrun):

* ``tests``: ``pytest -m gpu`` (on the CPU only collected: those tests need CUDA);
* ``classify``: per-object latency of the whole classify path (projection + 10 views + text
  matching, ``Classifier.classify_points``) for batches of 1, 8 and 32 objects, ViT-B-32, ViT-B-16,
  ViT-L-14 and ViT-H-14 with random weights, fp32 and bf16, beside the bare image-encoder forward
  of the same views (``DepthCLIP.encode_image_mixed`` on preprocessed views: the overhead ratio),
  and the peak GPU memory;
* ``detect``: ``Detector.detect`` on one eval-split synthetic scene resampled to 300k points,
  stage by stage (each stage synchronised, so GPU work is charged to the stage that queued it);
* ``node``: the detector node end to end on a short frames bag (``opendlign bag from-scenes
  --mode frames`` and ``opendlign bag eval``, run as subprocesses, ``device`` passed as a
  parameter override): latency p50/p99 and drops.

On CUDA, times come from CUDA events after ``torch.cuda.synchronize`` and memory from
``torch.cuda.max_memory_allocated``; on the CPU, wall time and memory ``n/a``. A CUDA device that
is not usable is an error (exit 2), never a silent fall back to the CPU.

    bash scripts/gpu_check                          # cuda:0, the full check (< 6 min)
    bash scripts/gpu_check --device cpu --quick     # same code paths, smallest model (CI)

Writes ``out/gpu_check/gpu_check.md`` (the table) and ``gpu_check.json`` (rows and metadata).
"""

import argparse
from dataclasses import asdict, dataclass, field
import datetime
import importlib.util
import json
import math
import os
from pathlib import Path
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODELS = ('ViT-B-32', 'ViT-B-16', 'ViT-L-14', 'ViT-H-14')
PRECISIONS = ('fp32', 'bf16')
BATCHES = (1, 8, 32)
SECTIONS = ('tests', 'classify', 'detect', 'node')
#: Seconds per section: (full run, --quick run). The full total stays under 6 minutes with the
#: set-up; the quick one under 2 minutes on a loaded 2-core machine.
BUDGETS = {'tests': (60.0, 20.0), 'classify': (150.0, 30.0), 'detect': (45.0, 25.0),
           'node': (75.0, 45.0)}
COLUMNS = ('section', 'case', 'ms', 'bare_ms', 'ratio', 'peak_mib', 'note')
HEADERS = ('section', 'case', 'latency ms', 'bare encoder ms', 'ratio', 'peak GPU MiB', 'note')
EVAL_SEED = 2024
GPU_MARK = re.compile(r'mark\.gpu\b')


@dataclass
class Row:
    """
    One line of the result table.

    ``ms`` and ``bare_ms`` are per object in the ``classify`` section, per call elsewhere.
    """

    section: str
    case: str
    ms: Optional[float] = None
    bare_ms: Optional[float] = None
    ratio: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ''


@dataclass
class Budget:
    """
    A section's time allowance, bounded by the whole run's deadline.

    :param seconds: The section's own budget.
    :param deadline: ``time.monotonic()`` value by which the whole run must end.
    """

    seconds: float
    deadline: float
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        """
        Seconds this section may still spend.

        :return: Remaining seconds (may be negative).
        """
        now = time.monotonic()
        return min(self.start + self.seconds, self.deadline) - now

    def allows(self, estimate_s: float) -> bool:
        """
        Say whether a step estimated to take ``estimate_s`` seconds still fits.

        :param estimate_s: Expected duration of the step.
        :return: True when it fits in what is left.
        """
        return estimate_s <= self.left()


def _fmt(value: Optional[float], digits: int) -> str:
    if value is None:
        return ''
    if isinstance(value, float) and math.isnan(value):
        return 'n/a'
    return f'{value:.{digits}f}'


def format_table(rows: Sequence[Row]) -> str:
    """
    Render rows as one markdown table.

    Empty cells mean "not measured for this row"; ``n/a`` means "not available on this device"
    (GPU memory on the CPU).

    :param rows: The rows, in order.
    :return: The table, header and separator first, one line per row, ending with a newline.
    """
    lines = ['| ' + ' | '.join(HEADERS) + ' |', '|' + '---|' * len(HEADERS)]
    for r in rows:
        cells = (r.section, r.case, _fmt(r.ms, 1), _fmt(r.bare_ms, 1), _fmt(r.ratio, 3),
                 _fmt(r.peak_mib, 0), r.note.replace('|', '/'))
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines) + '\n'


def write_report(rows: Sequence[Row], meta: Dict[str, Any], out_dir: Path) -> tuple:
    """
    Write the table (``gpu_check.md``) and a JSON copy (``gpu_check.json``) under ``out_dir``.

    :param rows: The rows.
    :param meta: Run metadata (device, versions, wall time...), written before the table and
        into the JSON ``meta`` object.
    :param out_dir: Folder, created if missing.
    :return: ``(markdown_path, json_path)``.
    :raises ValueError: If a value is infinite (not representable in JSON).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    head = ['# GPU check', ''] + [f'- {k}: {v}' for k, v in meta.items()] + ['']
    md = out_dir / 'gpu_check.md'
    md.write_text('\n'.join(head) + '\n' + format_table(rows))
    js = out_dir / 'gpu_check.json'
    # NaN (not available on this device) becomes 'n/a', as in the table: the file stays JSON.
    data = [{k: 'n/a' if isinstance(v, float) and math.isnan(v) else v
             for k, v in asdict(r).items()} for r in rows]
    js.write_text(json.dumps({'meta': meta, 'rows': data}, indent=1, allow_nan=False))
    return md, js


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """
    Read the command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The parsed and validated arguments.
    :raises SystemExit: On a bad argument (argparse's usage error).
    """
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--device', default='cuda:0', help="'cuda:N' (default cuda:0) or 'cpu'")
    p.add_argument('--quick', action='store_true',
                   help='ViT-B-32 only, batches 1 and 2, small scene work: a smoke run')
    p.add_argument('--sections', default=','.join(SECTIONS),
                   help=f'comma-separated subset of {",".join(SECTIONS)}')
    p.add_argument('--models', default=None, help='comma-separated classify models')
    p.add_argument('--total-budget', type=float, default=None,
                   help='seconds for the whole run (default 300, quick 115)')
    p.add_argument('--scene', type=Path, default=None,
                   help='eval scene: a ScanNet scene folder or a .npz with points (and colors); '
                        'default: scene 0 of the eval split, seed 2024 (generated if missing)')
    p.add_argument('--points', type=int, default=300_000, help='detect: points in the scene')
    p.add_argument('--out', type=Path, default=REPO / 'out' / 'gpu_check')
    args = p.parse_args(argv)
    if not re.fullmatch(r'cpu|cuda(:\d+)?', args.device):
        p.error(f"--device must be 'cpu' or 'cuda[:N]', got {args.device!r}")
    args.sections = [s.strip() for s in args.sections.split(',') if s.strip()]
    bad = [s for s in args.sections if s not in SECTIONS]
    if bad or not args.sections:
        p.error(f'--sections must name some of {SECTIONS}, got {bad or args.sections}')
    if args.models is None:
        args.models = ['ViT-B-32'] if args.quick else list(MODELS)
    else:
        args.models = [m.strip() for m in args.models.split(',') if m.strip()]
    if args.total_budget is None:
        args.total_budget = 115.0 if args.quick else 300.0
    if args.total_budget <= 0:
        p.error(f'--total-budget must be > 0, got {args.total_budget}')
    if args.points < 1:
        p.error(f'--points must be >= 1, got {args.points}')
    return args


def check_device(device: str) -> str:
    """
    Make sure ``device`` can run work; describe it.

    :param device: ``'cpu'`` or ``'cuda[:N]'``.
    :return: A one-line description (GPU name, torch and CUDA versions).
    :raises RuntimeError: If a CUDA device is asked for but CUDA is not usable here.
    """
    import torch

    if device == 'cpu':
        return f'cpu ({platform.processor() or platform.machine()}, torch {torch.__version__}, ' \
               f'{torch.get_num_threads()} threads)'
    if not torch.cuda.is_available():
        raise RuntimeError(f'--device {device}: CUDA is not usable here (torch {torch.__version__}'
                           f', built for CUDA {torch.version.cuda}); refusing to fall back to the '
                           'CPU (use --device cpu for a CPU run)')
    dev = torch.device(device)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f'--device {device}: only {torch.cuda.device_count()} CUDA device(s)')
    x = torch.ones(4, device=dev)
    if float((x + x).sum()) != 8.0:
        raise RuntimeError(f'--device {device}: a trivial CUDA computation gave a wrong result')
    return (f'{torch.cuda.get_device_name(dev)} (torch {torch.__version__}, CUDA '
            f'{torch.version.cuda}, bf16 supported {torch.cuda.is_bf16_supported()})')


class Timer:
    """
    Time callables on one device: CUDA events on a GPU, ``perf_counter`` on the CPU.

    :param device: The torch device string.
    """

    def __init__(self, device: str) -> None:
        import torch

        self.torch = torch
        self.cuda = device.startswith('cuda')
        self.device = torch.device(device)

    def sync(self) -> None:
        """Wait for the device's queued work (no-op on the CPU)."""
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def ms(self, fn: Callable[[], Any]) -> float:
        """
        Run ``fn`` once and time it, device work included.

        :param fn: The work.
        :return: Milliseconds.
        """
        if not self.cuda:
            t0 = time.perf_counter()
            fn()
            return 1e3 * (time.perf_counter() - t0)
        self.sync()
        start = self.torch.cuda.Event(enable_timing=True)
        end = self.torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return float(start.elapsed_time(end))

    def reset_peak(self) -> None:
        """Start a new peak-memory window (no-op on the CPU)."""
        if self.cuda:
            self.sync()
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mib(self) -> float:
        """
        Peak allocated GPU memory since :meth:`reset_peak`.

        :return: MiB, or NaN on the CPU (shown as ``n/a``).
        """
        if not self.cuda:
            return math.nan
        return self.torch.cuda.max_memory_allocated(self.device) / 2 ** 20


def _missing(*modules: str) -> List[str]:
    out = []
    for m in modules:
        try:
            if importlib.util.find_spec(m) is None:
                out.append(m)
        except (ImportError, ValueError):
            out.append(m)
    return out


def run_tests(args: argparse.Namespace, budget: Budget) -> List[Row]:
    """
    Run the ``gpu``-marked tests (only collect them on the CPU, where they cannot run).

    :param args: Parsed arguments.
    :param budget: Time allowance (the pytest subprocess is killed past it).
    :return: One row with pytest's summary.
    """
    collect = args.device == 'cpu'
    # Only the files that hold gpu tests: collecting the whole tree would cost time and tie this
    # check to every other test module's imports.
    files = sorted(str(f.relative_to(REPO)) for f in (REPO / 'test').rglob('test_*.py')
                   if GPU_MARK.search(f.read_text()))
    if not files:
        return [Row('tests', 'pytest -m gpu', note='FAILED: no test file holds a gpu mark')]
    cmd = [sys.executable, '-m', 'pytest', '-m', 'gpu', '-q', '-p', 'no:cacheprovider', *files]
    if collect:
        cmd.append('--collect-only')
    env = dict(os.environ, HF_HUB_OFFLINE='1', ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST')
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=max(1.0, budget.left()))
    except subprocess.TimeoutExpired:
        return [Row('tests', 'pytest -m gpu', note=f'skipped for time: killed after '
                    f'{time.perf_counter() - t0:.0f} s')]
    lines = [x for x in proc.stdout.strip().splitlines() if x.strip()]
    summary = lines[-1].strip('= ') if lines else proc.stderr.strip()[-200:]
    if proc.returncode not in (0, 5):
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-2000:])
    case = 'pytest -m gpu --collect-only (no CUDA)' if collect else 'pytest -m gpu'
    status = 'ok' if proc.returncode == 0 else f'FAILED (exit {proc.returncode})'
    return [Row('tests', case, ms=1e3 * (time.perf_counter() - t0), note=f'{status}: {summary}')]


def object_clouds(count: int, points: int = 2048, seed: int = 0) -> List[np.ndarray]:
    """
    Make seeded object-sized clouds: points on the surface of boxes of varied shape.

    :param count: Number of clouds.
    :param points: Points per cloud.
    :param seed: Random seed.
    :return: ``count`` (points, 3) float32 arrays, metres, z up.
    """
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        size = rng.uniform(0.3, 1.5, 3)
        pts = rng.uniform(-0.5, 0.5, (points, 3))
        face = rng.integers(0, 3, points)
        pts[np.arange(points), face] = np.sign(pts[np.arange(points), face]) * 0.5
        out.append((pts * size).astype(np.float32))
    return out


def _time_classify(timer: Timer, classifier: Any, batch: List[np.ndarray], label_set: Any,
                   repeats: int) -> tuple:
    """
    Time ``classify_points`` on a batch and the bare encoder forward of the same views.

    :return: ``(whole ms per object, bare ms per object, peak GPU MiB or NaN)``, medians.
    """
    import torch

    from opendlign_core.classifier import encoder_inputs

    model = classifier.model
    b = len(batch)
    flat, flat_mask = encoder_inputs(model, classifier.project(batch))

    def bare() -> None:
        with torch.inference_mode():
            model.encode_image_mixed(flat, flat_mask)

    def whole() -> None:
        classifier.classify_points(batch, label_set)

    timer.reset_peak()
    whole()
    bare()  # warm-up (allocator, kernels, thread pools)
    t_whole, t_bare = [], []
    for _ in range(repeats):
        t_whole.append(timer.ms(whole))
        t_bare.append(timer.ms(bare))
    return (statistics.median(t_whole) / b, statistics.median(t_bare) / b, timer.peak_mib())


def run_classify(args: argparse.Namespace, budget: Budget) -> List[Row]:
    """
    Time the whole classify path against the bare encoder, per model, precision and batch.

    :param args: Parsed arguments (``device``, ``models``, ``quick``).
    :param budget: Time allowance; configurations that no longer fit are listed as skipped.
    :return: One row per configuration.
    """
    import torch

    from opendlign_core.classifier import Classifier
    from opendlign_core.config import ModelConfig
    from opendlign_core.model import create_depth_clip

    timer = Timer(args.device)
    batches = (1, 2) if args.quick else BATCHES
    repeats = 1 if args.quick else 5
    labels = [f'class {i}' for i in range(40)]
    clouds = object_clouds(max(batches))
    rows: List[Row] = []
    cost = 0.0
    for mi, name in enumerate(args.models):
        # A bigger model costs more than the last one measured: grow the estimate with it.
        if mi and not budget.allows(cost * 2.5):
            rows += [Row('classify', f'{name} {p} x{b}', note='skipped for time')
                     for p in PRECISIONS for b in batches]
            continue
        t_model = time.monotonic()
        torch.manual_seed(0)
        model = create_depth_clip(ModelConfig(model_name=name, weights_path='',
                                              device=args.device))
        classifier = Classifier(model)
        label_set = classifier.encode_labels(labels, templates='label')
        for precision in PRECISIONS:
            if precision == 'bf16':
                model.to(dtype=torch.bfloat16)
            last = (0.0, 1)     # (seconds, batch) of the last configuration of this model
            for b in batches:
                case = f'{name} {precision} x{b}'
                if rows and not budget.allows(last[0] * b / last[1]):
                    rows.append(Row('classify', case, note='skipped for time'))
                    continue
                t_cfg = time.monotonic()
                w, br, peak = _time_classify(timer, classifier, clouds[:b], label_set, repeats)
                last = (time.monotonic() - t_cfg, b)
                rows.append(Row('classify', case, ms=w, bare_ms=br, ratio=w / br, peak_mib=peak,
                                note=f'per object, 10 views, {repeats} timed run(s)'))
        model = classifier = label_set = None
        if timer.cuda:
            torch.cuda.empty_cache()
        cost = time.monotonic() - t_model
    return rows


def _eval_scene_dir() -> Path:
    root = Path.home() / '.cache' / 'opendlign' / 'scenes'
    for d in sorted(root.glob(f'eval_{EVAL_SEED}_*')):
        if (d / 'scene0000_00').is_dir():
            return d / 'scene0000_00'
    from opendlign_core.scene_synth import write_synth_scenes

    return write_synth_scenes(root / f'eval_{EVAL_SEED}_1', 'eval', 1, EVAL_SEED)[0]


def load_scene(path: Optional[Path], points: int) -> tuple:
    """
    Load the eval scene and resample it to exactly ``points`` points (seeded, 2 mm jitter).

    :param path: A ScanNet scene folder, a ``.npz`` with ``points`` (and ``colors``), or
        ``None`` for scene 0 of the eval split with seed 2024 (generated if missing).
    :param points: Points wanted.
    :return: ``(points (N, 3) float32, colors (N, 3) uint8 or None, description)``.
    """
    path = path or _eval_scene_dir()
    if path.suffix == '.npz':
        with np.load(path) as data:
            pts, cols = data['points'], data['colors'] if 'colors' in data else None
    else:
        from opendlign_core.scannet import read_scannet_scene

        scene = read_scannet_scene(path)
        pts, cols = scene.points, scene.colors
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pts), points, replace=len(pts) < points)
    out = (pts[idx] + rng.normal(0, 0.002, (points, 3))).astype(np.float32)
    return out, None if cols is None else np.asarray(cols)[idx], f'{path.name}'


def export_scene(path: Path, points: int = 300_000) -> Path:
    """
    Save the default eval scene, resampled, as a ``.npz`` a GPU machine can read.

    :param path: Output file.
    :param points: Points to keep.
    :return: ``path``.
    """
    pts, cols, _ = load_scene(None, points)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, points=pts, **({} if cols is None else {'colors': cols}))
    return path


def run_detect(args: argparse.Namespace, budget: Budget) -> List[Row]:
    """
    Time ``Detector.detect`` stage by stage on the eval scene, beside the bare encoder forwards.

    :param args: Parsed arguments.
    :param budget: Time allowance; repeats stop when the next would not fit.
    :return: One row per stage and a total row (with the bare encoder time and ratio).
    """
    from dataclasses import replace

    import torch

    from benchmarks.bench_detection import LABELS, _Recorder
    from opendlign_core.classifier import Classifier, encoder_inputs
    from opendlign_core.config import DetectorConfig, ModelConfig, OpenDlignConfig
    from opendlign_core.detection import Detector
    from opendlign_core.model import create_depth_clip

    timer = Timer(args.device)
    points = min(args.points, 100_000) if args.quick else args.points
    pts, cols, scene_name = load_scene(args.scene, points)
    model_cfg = ModelConfig(model_name='ViT-B-32', weights_path='', device=args.device)
    cfg = DetectorConfig(opendlign=OpenDlignConfig(model=model_cfg))
    if args.quick:
        # One prompt per label and two objects: the same code, a fraction of the CPU time.
        op = cfg.opendlign
        cfg = replace(cfg, max_objects=2, opendlign=replace(
            op, classifier=replace(op.classifier, templates='label')))
    torch.manual_seed(0)
    model = create_depth_clip(model_cfg)
    classifier = Classifier(model, cfg.opendlign)
    detector = Detector(classifier, cfg)
    label_set = detector.encode_labels(LABELS)
    # Synchronise after each stage, so that queued GPU work is charged to the stage that made it.
    for name in ('project', 'embed_views'):
        inner = getattr(classifier, name)

        def synced(x, _inner=inner):
            out = _inner(x)
            timer.sync()
            return out
        setattr(classifier, name, synced)
    recorder = _Recorder(classifier)
    step = cfg.opendlign.classifier.batch_size
    if not budget.allows(5.0):
        return [Row('detect', 'Detector.detect', note='skipped for time (after loading the '
                    f'scene and the model, {budget.left():.0f} s left)')]
    timer.reset_peak()
    t0 = time.monotonic()
    detector.detect(pts, label_set, colors=cols)  # warm-up
    one = time.monotonic() - t0
    stages: List[Dict[str, float]] = []
    bares: List[float] = []
    res = None
    while len(stages) < (1 if args.quick else 3) and budget.allows(1.5 * one):
        recorder.views.clear()
        res = detector.detect(pts, label_set, colors=cols)
        stages.append(res.timings_ms)
        bare = 0.0
        for views in recorder.views:
            for i in range(0, views.shape[0], step):
                flat, flat_mask = encoder_inputs(model, views[i:i + step])

                def fwd(flat=flat, flat_mask=flat_mask) -> None:
                    with torch.inference_mode():
                        model.encode_image_mixed(flat, flat_mask)
                bare += timer.ms(fwd)
        bares.append(bare)
    peak = timer.peak_mib()
    if not stages:
        return [Row('detect', 'Detector.detect', note=f'skipped for time (warm-up took '
                    f'{one:.1f} s)')]
    med = {k: statistics.median(s[k] for s in stages) for k in stages[0]}
    images = sum(int(v.shape[0] * v.shape[1]) for v in recorder.views)
    rows = [Row('detect', f'stage {k}', ms=med[k]) for k in med if k != 'total']
    bare = statistics.median(bares)
    rows.append(Row('detect', 'Detector.detect total', ms=med['total'], bare_ms=bare,
                    ratio=med['total'] / bare if bare else None, peak_mib=peak,
                    note=f'{scene_name}, {points} points, {res.num_clusters} clusters, '
                         f'{len(res.detections)} detections, {images} views encoded, ViT-B-32 '
                         f'fp32 ({cfg.opendlign.classifier.templates} templates), median of '
                         f'{len(stages)}'))
    return rows


def _opendlign(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess:
    code = 'import sys; from opendlign_ros.cli import main; sys.exit(main(sys.argv[1:]))'
    env = dict(os.environ, HF_HUB_OFFLINE='1', ROS_AUTOMATIC_DISCOVERY_RANGE='LOCALHOST',
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])))
    proc = subprocess.Popen([sys.executable, '-c', code, *argv], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=max(1.0, timeout))
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGTERM: the CLI then unwinds and stops the node it started (the node
        # runs in its own session, out of reach of signals sent to this child).
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _log_tail(path: Path) -> str:
    """
    Echo a node log to stderr and return its last line (shortened), or '' when there is none.

    :param path: The node's log file.
    :return: The last non-empty line, at most 200 characters.
    """
    if not path.is_file():
        return ''
    text = path.read_text(errors='replace')
    sys.stderr.write(f'--- {path} (end) ---\n{text[-3000:]}\n')
    lines = [x for x in text.splitlines() if x.strip()]
    return lines[-1][-200:] if lines else ''


def run_node(args: argparse.Namespace, budget: Budget) -> List[Row]:
    """
    Replay a short frames bag into the node (own process) with ``device`` overridden.

    :param args: Parsed arguments.
    :param budget: Time allowance (the CLI subprocesses are killed past it).
    :return: Latency p50/p99 rows with the drop counts.
    """
    missing = _missing('rclpy', 'vision_msgs', 'rosbags')
    if missing:
        return [Row('node', 'bag eval', note=f'skipped: not installed here: {", ".join(missing)}')]
    scene = args.scene if args.scene and args.scene.is_dir() else _eval_scene_dir()
    work = Path(tempfile.mkdtemp(prefix='gpu_check_node_'))
    try:
        bag = work / 'frames_bag'
        step = '6' if args.quick else '1'
        try:
            made = _opendlign(['bag', 'from-scenes', str(scene), '--mode', 'frames', '--out',
                               str(bag), '--frame-step', step], budget.left())
        except subprocess.TimeoutExpired:
            return [Row('node', 'bag from-scenes', note='skipped for time')]
        if made.returncode:
            sys.stderr.write(made.stdout[-2000:] + made.stderr[-3000:])
            return [Row('node', 'bag from-scenes', note=f'FAILED (exit {made.returncode})')]
        overrides = [f'device:={args.device}', 'model_name:=ViT-B-32', "weights_path:=''",
                     'precision:=fp32']
        if args.quick:
            overrides += ['max_objects:=2', 'classifier.templates:=label']
        cmd = ['bag', 'eval', str(bag), '--out', str(work / 'eval'), '--startup-timeout',
               str(max(10, int(budget.left())))]
        for o in overrides:
            cmd += ['-p', o]
        t0 = time.perf_counter()
        try:
            ran = _opendlign(cmd, budget.left())
        except subprocess.TimeoutExpired:
            log = work / 'eval' / 'node.log'
            last = _log_tail(log)
            # A node that died on start can leave the replay waiting: that is a failure.
            died = log.is_file() and re.search(r'\[FATAL\]|Traceback', log.read_text(
                errors='replace')) is not None
            return [Row('node', 'bag eval', note=('FAILED: ' if died else 'skipped for time: ')
                        + f'killed after {time.perf_counter() - t0:.0f} s'
                        + (f'; node log: {last}' if last else ''))]
        if ran.returncode:
            sys.stderr.write(ran.stdout[-2000:] + ran.stderr[-3000:])
            last = _log_tail(work / 'eval' / 'node.log')
            return [Row('node', 'bag eval', note=f'FAILED (exit {ran.returncode})'
                        + (f'; node log: {last}' if last else ''))]
        res = json.loads((work / 'eval' / 'results.json').read_text())
        lat = res.get('latency_ms') or {}
        counts = (f"{res['clouds_sent']} clouds sent, {res['clouds_answered']} answered, "
                  f"{res['clouds_dropped']} dropped; frames bag of {scene.name} (every "
                  f'{step}), ViT-B-32 fp32, device {args.device}')
        return [Row('node', f'end-to-end latency {k}', ms=lat.get(k), note=counts)
                for k in ('p50', 'p99')]
    finally:
        shutil.rmtree(work, ignore_errors=True)


RUNNERS = {'tests': run_tests, 'classify': run_classify, 'detect': run_detect, 'node': run_node}


def main(args: argparse.Namespace) -> int:
    """
    Run the selected sections within their budgets and write the report.

    :param args: From :func:`parse_args`.
    :return: 0 when every section ran or was skipped for time or a missing package, 1 when one
        failed, 2 when the device is not usable.
    """
    t_start = time.monotonic()
    import torch

    if args.device == 'cpu':
        # Torch's OpenMP threads stall 10-50x when other processes load the cores (README): on
        # the CPU this is a smoke run, so one thread, here and in the node it starts.
        torch.set_num_threads(1)
        os.environ['OMP_NUM_THREADS'] = '1'
    try:
        device_info = check_device(args.device)
    except RuntimeError as e:
        print(f'gpu_check: ERROR: {e}', file=sys.stderr)
        return 2
    deadline = t_start + args.total_budget
    rows: List[Row] = []
    failed = False
    for section in SECTIONS:
        if section not in args.sections:
            continue
        seconds = BUDGETS[section][1 if args.quick else 0]
        budget = Budget(seconds, deadline)
        if budget.left() <= 0:
            rows.append(Row(section, '(all)', note='skipped for time'))
            continue
        t0 = time.monotonic()
        print(f'gpu_check: {section} (budget {min(seconds, budget.left()):.0f} s) ...',
              file=sys.stderr, flush=True)
        try:
            got = RUNNERS[section](args, budget)
        except Exception as e:  # noqa: BLE001 - one broken section must not hide the others
            import traceback

            traceback.print_exc()
            got = [Row(section, '(all)', note=f'FAILED: {type(e).__name__}: {e}'[:300])]
        failed |= any('FAILED' in r.note for r in got)
        rows += got
        print(f'gpu_check: {section} done in {time.monotonic() - t0:.1f} s', file=sys.stderr,
              flush=True)
    meta = {
        'date': datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC'),
        'device': f'{args.device}: {device_info}',
        'mode': 'quick' if args.quick else 'full',
        'host': f'{platform.node()}, {os.cpu_count()} CPUs, Python {platform.python_version()}',
        'wall_s': round(time.monotonic() - t_start, 1),
        'total_budget_s': args.total_budget,
        'command': ' '.join(['scripts/gpu_check'] + sys.argv[1:]),
    }
    md, js = write_report(rows, meta, args.out)
    print(md.read_text())
    print(f'written: {md} and {js}')
    return 1 if failed else 0


if __name__ == '__main__':
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(parse_args()))
