"""
Evaluate a bag with the real detector node: replay it, collect the answers, score them.

Scene bags (``/points`` + ``/ground_truth`` in one frame) are scored per cloud. Frames bags
(clouds in the camera's optical frame, ``/tf``, ``/tf_static``, ground truth in the fixed frame;
see :mod:`opendlign_ros.bag_scenes`) are replayed with their transforms into a node started with
``target_frame`` = the ground truth's frame, as on a robot, and scored twice: per frame (each
frame's detections against the objects that frame sees) and as an object map (the node's last
``objects`` message against every object of the bag's scenes). Both use
:func:`opendlign_core.det_eval.evaluate_detections` (axis-aligned IoU, AP at 0.25 and 0.5).
"""

from dataclasses import dataclass, field
import json
import logging
import math
import os
from pathlib import Path
import time
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from opendlign_ros.bag_io import (
    CLOUD_TOPIC,
    CLOUD_TYPE,
    GT_OBJECTS_TOPIC,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    TF_TYPE,
    bag_topics,
    cloud_stamp_key,
    message_classes,
    stamp_key,
)
from opendlign_ros.bag_replay import RosSession, play_bag, reliable_qos
from opendlign_ros.bag_scenes import ground_truth_frame, read_ground_truth, read_transforms

logger = logging.getLogger(__name__)

#: Node topics the evaluation listens to (relative, in the node's namespace).
DETECTIONS = 'detections'
OBJECTS = 'objects'
#: The node's map consolidation service, called once after the last cloud.
CONSOLIDATE_SERVICE = '/opendlign/consolidate_objects'
#: Longest wait for it, seconds.
CONSOLIDATE_TIMEOUT_S = 180.0
DIAGNOSTICS = 'diagnostics'
THRESHOLDS = (0.25, 0.5)
#: Node counters of clouds dropped without a detections message.
DROP_COUNTERS = ('rejected', 'failed', 'no_transform')


@dataclass
class EvalReport:
    """Results of :func:`evaluate_bag`."""

    clouds_sent: int = 0
    clouds_answered: int = 0
    latencies_ms: List[float] = field(default_factory=list)
    node_counters: Dict[str, str] = field(default_factory=dict)
    #: Per-cloud AP: ``'AP25'``/``'AP50'`` -> class -> AP (fraction).
    ap: Dict[str, Dict[str, float]] = field(default_factory=dict)
    mean_ap: Dict[str, float] = field(default_factory=dict)
    #: The node's ``target_frame`` ('' = the clouds' own frame).
    target_frame: str = ''
    #: Increase of each numeric node counter during the replay (warm-up clouds excluded).
    replay_counters: Dict[str, int] = field(default_factory=dict)
    #: Clouds the node dropped for want of a transform during the replay (``None``: not
    #: reported by the node).
    no_transform: Optional[int] = None
    #: Object-map AP (last ``objects`` message vs the scenes' objects), as :attr:`ap`.
    object_ap: Dict[str, Dict[str, float]] = field(default_factory=dict)
    object_mean_ap: Dict[str, float] = field(default_factory=dict)
    #: Objects in the last ``objects`` message (``None``: no message received).
    objects: Optional[int] = None
    #: Whether that message is the map rebuilt by ``~/consolidate_objects`` after the last
    #: cloud (False: the streaming map; the reason is in :attr:`consolidation`).
    consolidated: bool = False
    #: What the consolidation request gave (the node's answer, or why it was not asked).
    consolidation: str = ''
    #: ``header.frame_id`` values of the answered clouds' detections (sorted, distinct).
    detection_frames: List[str] = field(default_factory=list)
    markdown: str = ''
    files: List[str] = field(default_factory=list)

    @property
    def clouds_dropped(self) -> int:
        """
        Return clouds that got no detections message.

        :return: ``clouds_sent - clouds_answered``.
        """
        return self.clouds_sent - self.clouds_answered

    def latency_percentiles(self) -> Dict[str, float]:
        """
        Return end-to-end latency percentiles (publish -> detections received).

        :return: ``p50``, ``p90``, ``p99``, ``max`` in milliseconds (NaN without data).
        """
        if not self.latencies_ms:
            return {k: math.nan for k in ('p50', 'p90', 'p99', 'max')}
        lat = np.asarray(self.latencies_ms)
        return {'p50': float(np.percentile(lat, 50)), 'p90': float(np.percentile(lat, 90)),
                'p99': float(np.percentile(lat, 99)), 'max': float(lat.max())}


def predictions_from_msg(msg: Any) -> List[Any]:
    """
    Return the scored boxes of a ``vision_msgs/Detection3DArray`` (detections or objects).

    :param msg: The message; each detection's first result is its label and score.
    :return: ``det_eval.PredBox`` list (detections without results are skipped).
    """
    from opendlign_core import det_eval
    from opendlign_ros import conversions

    return [det_eval.PredBox(d.results[0].hypothesis.class_id, d.results[0].hypothesis.score,
                             conversions.box_from_msg(d.bbox))
            for d in msg.detections if len(d.results)]


def _counter(counters: Mapping[str, str], name: str) -> Optional[int]:
    try:
        return int(counters[name])
    except (KeyError, ValueError):
        return None


def score_replay(report: EvalReport, out_dir: Path, bag_path: Path,
                 sent: Mapping[str, float], answers: Mapping[str, Tuple[float, Any]],
                 gts: Mapping[str, Sequence[Any]], gt_objects: Optional[Sequence[Any]] = None,
                 objects_msg: Optional[Any] = None,
                 baseline_counters: Optional[Mapping[str, str]] = None,
                 rate: float = 1.0, lockstep: bool = False) -> EvalReport:
    """
    Score what a node answered to a replayed bag; write the report files.

    :param report: Report with ``clouds_sent``, ``node_counters`` and ``target_frame`` set;
        filled in and returned.
    :param out_dir: Folder for ``report.md``, ``results.json``, ``detections.json`` (stamp key
        -> detections with label, score and box), ``pr.png`` (per cloud), ``pr_objects.png`` and
        ``objects.json`` (object map, with ``gt_objects``) and ``latency.png``.
    :param bag_path: The bag (its name titles the report).
    :param sent: Cloud stamp key -> monotonic publish time.
    :param answers: Stamp key -> (monotonic arrival time, ``Detection3DArray``); keys not in
        ``sent`` are ignored.
    :param gts: Stamp key -> ``GtBox`` list, the objects each cloud sees (empty: no AP).
    :param gt_objects: Every object of the bag's scenes in the fixed frame (``None``: no
        object-map evaluation).
    :param objects_msg: The node's last ``objects`` message (``None``: none received, scored as
        an empty map).
    :param baseline_counters: Node counters before the replay (after the warm-up);
        ``replay_counters`` and ``no_transform`` are the increases since then.
    :param rate: Playback speed factor of the replay.
    :param lockstep: Whether the replay was lock-step (then ``rate`` did not apply).
    :return: ``report``.
    """
    from opendlign_core import det_eval

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    replay = 'lock-step replay' if lockstep else f'playback rate x{rate:g}'
    answered = {k: v for k, v in answers.items() if k in sent}
    report.clouds_answered = len(answered)
    report.latencies_ms = sorted((t - sent[k]) * 1e3 for k, (t, _) in answered.items())
    preds = {k: predictions_from_msg(msg) for k, (_, msg) in answered.items()}
    report.detection_frames = sorted({msg.header.frame_id for _, msg in answered.values()})
    for name in report.node_counters:
        final = _counter(report.node_counters, name)
        if final is not None:
            report.replay_counters[name] = final - (
                _counter(baseline_counters or {}, name) or 0)
    report.no_transform = report.replay_counters.get('no_transform')
    lines = [f'# Bag evaluation: `{Path(bag_path).name}`', '',
             f'- clouds sent: {report.clouds_sent}, answered: {report.clouds_answered}, '
             f'dropped: {report.clouds_dropped} ({replay})']
    if report.target_frame:
        lines.append(f'- target_frame: `{report.target_frame}` (clouds transformed with the '
                     "bag's /tf and /tf_static); clouds dropped for want of a transform "
                     f'(no_transform): '
                     + ('not reported' if report.no_transform is None
                        else str(report.no_transform)))
    pct = report.latency_percentiles()
    lines.append('- end-to-end latency (publish -> detections received), ms: '
                 + ', '.join(f'{k} {v:.1f}' for k, v in pct.items()))
    if report.replay_counters:
        keys = ('received', 'processed', 'superseded', 'rejected', 'failed', 'no_transform',
                'empty')
        lines.append('- node counters during the replay: ' + ', '.join(
            f'{k} {report.replay_counters[k]}' for k in keys if k in report.replay_counters))
    all_gt = list(gts.values()) + [list(gt_objects or [])]
    classes = sorted({g.label for boxes in all_gt for g in boxes})
    if gts:
        result = det_eval.evaluate_detections({k: preds.get(k, []) for k in gts}, gts,
                                              thresholds=THRESHOLDS, classes=classes)
        report.ap = {f'AP{int(t * 100)}': {c: result.ap[t][c] for c in classes}
                     for t in result.thresholds}
        report.mean_ap = {f'AP{int(t * 100)}': result.mean_ap[t] for t in result.thresholds}
        lines += ['', '## Detection AP per cloud (axis-aligned IoU, percent; each cloud against '
                  'the objects it sees)', '', det_eval.format_markdown(result)]
        _plot_pr(result, out_dir / 'pr.png')
        report.files.append(str(out_dir / 'pr.png'))
    object_preds: List[Any] = []
    if gt_objects is not None:
        if objects_msg is not None:
            object_preds = predictions_from_msg(objects_msg)
            report.objects = len(object_preds)
        result = det_eval.evaluate_detections({'map': object_preds}, {'map': list(gt_objects)},
                                              thresholds=THRESHOLDS, classes=classes)
        report.object_ap = {f'AP{int(t * 100)}': {c: result.ap[t][c] for c in classes}
                            for t in result.thresholds}
        report.object_mean_ap = {f'AP{int(t * 100)}': result.mean_ap[t]
                                 for t in result.thresholds}
        got = ('no `objects` message received' if objects_msg is None
               else f'{len(object_preds)} objects in the last `objects` message, '
               + ('consolidated after the last cloud' if report.consolidated
                  else f'not consolidated ({report.consolidation})'))
        lines += ['', f'## Object-map AP (axis-aligned IoU, percent; {got}, against the '
                  f'{len(gt_objects)} objects of the scenes)', '',
                  det_eval.format_markdown(result)]
        _plot_pr(result, out_dir / 'pr_objects.png')
        (out_dir / 'objects.json').write_text(json.dumps(_boxes_json(object_preds), indent=1))
        report.files += [str(out_dir / 'pr_objects.png'), str(out_dir / 'objects.json')]
    _plot_latency(report.latencies_ms, out_dir / 'latency.png')
    report.files.append(str(out_dir / 'latency.png'))
    report.markdown = '\n'.join(lines) + '\n'
    (out_dir / 'report.md').write_text(report.markdown)
    (out_dir / 'results.json').write_text(json.dumps({
        'bag': str(bag_path), 'rate': rate, 'lockstep': lockstep,
        'target_frame': report.target_frame, 'detection_frames': report.detection_frames,
        'clouds_sent': report.clouds_sent, 'clouds_answered': report.clouds_answered,
        'clouds_dropped': report.clouds_dropped, 'no_transform': report.no_transform,
        'latency_ms': pct, 'node_counters': report.node_counters,
        'replay_counters': report.replay_counters, 'ap': report.ap,
        'mean_ap': report.mean_ap, 'object_map': None if gt_objects is None else {
            'objects': report.objects, 'gt_objects': len(gt_objects),
            'consolidated': report.consolidated, 'consolidation': report.consolidation,
            'ap': report.object_ap,
            'mean_ap': report.object_mean_ap}}, indent=2, allow_nan=True))
    (out_dir / 'detections.json').write_text(json.dumps(
        {key: _boxes_json(boxes) for key, boxes in sorted(preds.items())}, indent=1))
    report.files += [str(out_dir / 'report.md'), str(out_dir / 'results.json'),
                     str(out_dir / 'detections.json')]
    return report


def _boxes_json(boxes: Sequence[Any]) -> List[Dict[str, Any]]:
    return [{'label': d.label, 'score': round(float(d.score), 6),
             'center': [round(float(v), 4) for v in d.box.center],
             'size': [round(float(v), 4) for v in d.box.size],
             'yaw': round(float(d.box.yaw), 4)} for d in boxes]


def fixed_frame(path: Path) -> str:
    """
    Return the frame to detect in for a bag with transforms.

    :param path: Bag folder.
    :return: The frame of its ground truth; without ground truth, the root of its transform tree
        (a frame that is never a child; ``map`` if it is one of several roots, else the first
        in sorted order); ``'map'`` if the bag has neither.
    """
    frame = ground_truth_frame(path)
    if frame:
        return frame
    transforms = read_transforms(path)
    children = {t.child for t in transforms}
    roots = sorted({t.parent for t in transforms} - children)
    if not roots or 'map' in roots:
        return 'map'
    return roots[0]


def evaluate_bag(path: Path, out_dir: Path, params_file: Optional[Path] = None,
                 rate: float = 1.0, overrides: Optional[Mapping[str, Any]] = None,
                 labels: Optional[Sequence[str]] = None, domain_id: Optional[int] = None,
                 startup_timeout: float = 300.0, node_log: Optional[Path] = None,
                 lockstep: bool = False, target_frame: Optional[str] = None) -> EvalReport:
    """
    Replay a bag into a real detector node process and score what comes back.

    The node starts as users start it (own process, ``--params-file``), on a private domain with
    loopback-only discovery and the large-message Fast DDS profile. Clouds (and, in a frames
    bag, ``/tf`` and ``/tf_static``, the latter latched) are replayed with their original timing
    scaled by ``rate``; each ``detections`` message is matched to its cloud by header stamp.
    Clouds without an answer (superseded while the node was busy, or rejected) count as dropped
    and as missed detections. With ``lockstep`` the timing is ignored: each cloud is published
    once the node has answered (or rejected) the previous one, so none is superseded however
    slow the model is; the transforms between two clouds go out at once.

    :param path: Bag with ``/points`` (and optionally ``/ground_truth``, and for a frames bag
        ``/tf``, ``/tf_static`` and ``/ground_truth/objects``; the object map is scored unless
        ``overrides`` sets ``object_map.enabled`` to false). Other topics are ignored.
    :param out_dir: Folder for the report files (:func:`score_replay`).
    :param params_file: Node parameter file (default: the shipped ``detect.yaml``).
    :param rate: Playback speed factor.
    :param overrides: Extra node parameters.
    :param labels: Node labels; default: the ground-truth classes of the bag (if any).
    :param domain_id: ROS domain (default: derived from the process id).
    :param startup_timeout: Seconds allowed for the node to load its model.
    :param node_log: File for the node's output (default: ``out_dir/node.log``).
    :param lockstep: Replay one cloud at a time instead of on the bag's schedule.
    :param target_frame: The node's ``target_frame``; default: for a bag with ``/tf`` or
        ``/tf_static``, :func:`fixed_frame` (``map`` for ``bag from-scenes``), else none
        (``overrides`` may also set it).
    :return: The report (also written to ``out_dir``).
    :raises ValueError: If the bag has no ``/points`` topic.
    :raises RuntimeError: If the node exits early, or the bag has transforms but ``tf2_msgs``
        is not installed here (run ``scripts/setup``).
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from vision_msgs.msg import Detection3DArray

    from opendlign_ros import conversions
    from opendlign_ros.node_process import NodeProcess, ros_environment

    topics = bag_topics(path)
    if topics.get(CLOUD_TOPIC, ('',))[0] != CLOUD_TYPE:
        raise ValueError(f'bag {str(path)!r} has no {CLOUD_TOPIC} {CLOUD_TYPE} topic; '
                         f'topics: {topics}')
    tf_topics = [t for t in (TF_STATIC_TOPIC, TF_TOPIC) if topics.get(t, ('',))[0] == TF_TYPE]
    if tf_topics and not message_classes({TF_TOPIC: TF_TYPE}, 'cannot replay transforms'):
        raise RuntimeError(f'bag {str(path)!r} holds {tf_topics} but {TF_TYPE} is not installed '
                           'here; run scripts/setup')
    node_overrides = dict(overrides or {})
    if target_frame is None:
        target_frame = node_overrides.get('target_frame')
    if target_frame is None:
        target_frame = fixed_frame(path) if tf_topics else ''
    if target_frame:
        node_overrides['target_frame'] = target_frame
    gts = read_ground_truth(path)
    gt_objects = None
    map_enabled = node_overrides.get('object_map.enabled', True) not in (False, 'false')
    if GT_OBJECTS_TOPIC in topics and target_frame and map_enabled:
        gt_objects = [g for boxes in read_ground_truth(path, GT_OBJECTS_TOPIC).values()
                      for g in boxes]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    classes = sorted({g.label for boxes in list(gts.values()) + [gt_objects or []]
                      for g in boxes})
    if labels is not None or classes:
        node_overrides['labels'] = list(labels if labels is not None else classes)
    domain = (os.getpid() % 90) + 10 if domain_id is None else int(domain_id)
    report = EvalReport(target_frame=target_frame)
    sent: Dict[str, float] = {}
    answers: Dict[str, Tuple[float, Any]] = {}
    last_diag: List[Any] = []
    last_objects: List[Any] = []
    drops = [0]                     # clouds the node dropped so far (DROP_COUNTERS)
    drops_at_send: Dict[str, int] = {}
    last_sent: List[str] = []
    baseline: Dict[str, str] = {}
    log_path = node_log or out_dir / 'node.log'
    env = ros_environment(domain)
    os.environ['FASTDDS_DEFAULT_PROFILES_FILE'] = env['FASTDDS_DEFAULT_PROFILES_FILE']
    os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    with open(log_path, 'w') as log, \
            NodeProcess(env, params_file, node_overrides, log=log) as process, \
            RosSession('opendlign_bag_eval', domain) as session:
        def on_detections(msg: Detection3DArray) -> None:
            answers.setdefault(stamp_key(msg.header.stamp), (time.monotonic(), msg))

        det_sub = session.node.create_subscription(
            Detection3DArray, DETECTIONS, on_detections, reliable_qos(100))
        objects_sub = session.node.create_subscription(
            Detection3DArray, OBJECTS, lambda msg: last_objects.insert(0, msg), reliable_qos(10))

        def on_diagnostics(msg: DiagnosticArray) -> None:
            last_diag[:] = [msg]
            values = dict(conversions.diagnostic_values(msg))
            drops[0] = sum(_counter(values, name) or 0 for name in DROP_COUNTERS)

        session.node.create_subscription(DiagnosticArray, DIAGNOSTICS, on_diagnostics,
                                         reliable_qos(100))

        def node_alive() -> bool:
            if process.poll() is not None:
                raise RuntimeError(f'node exited with status {process.poll()}; see {log_path}')
            return False

        def on_publish(topic: str, data: bytes, now: float) -> None:
            if topic == CLOUD_TOPIC:
                report.clouds_sent += 1
                sent[cloud_stamp_key(data)] = now
                drops_at_send[cloud_stamp_key(data)] = drops[0]
                last_sent[:] = [cloud_stamp_key(data)]

        def previous_done() -> bool:
            # Answered, or the node counted a dropped cloud since it was sent (a warning about a
            # processed cloud is no drop).
            node_alive()
            key = last_sent[0]
            return key in answers or drops[0] > drops_at_send[key]

        def warm_up(publishers: Mapping[str, Any]) -> None:
            # Best-effort delivery starts only once both ends have matched: publish a cloud the
            # node answers or rejects cheaply (all NaN) until its diagnostics acknowledge it.
            from rclpy.serialization import serialize_message
            from std_msgs.msg import Header

            probe = serialize_message(conversions.cloud_to_msg(
                np.full((1, 3), np.nan, np.float32), Header(frame_id='warm_up')))
            deadline = time.monotonic() + 30.0
            while not last_diag:
                if time.monotonic() > deadline:
                    raise TimeoutError('the node did not acknowledge the warm-up cloud')
                publishers[CLOUD_TOPIC].publish(probe)
                session.spin_for(0.25)
                node_alive()
            session.spin_for(1.0)       # let late probe answers arrive before timing starts
            baseline.update(conversions.diagnostic_values(last_diag[0]))
            last_objects.clear()

        # The node's publishers appear once its model is loaded; fail fast if it dies first.
        session.spin_until(lambda: node_alive() or det_sub.get_publisher_count() > 0,
                           startup_timeout)
        play_bag(session, path, [CLOUD_TOPIC] + tf_topics, rate,
                 wait_for_subscribers=[CLOUD_TOPIC], discovery_timeout=startup_timeout,
                 on_publish=on_publish, warm_up=warm_up,
                 gate=previous_done if lockstep else None, gate_topics=[CLOUD_TOPIC])
        if lockstep and last_sent:
            session.spin_until(previous_done, startup_timeout)
        _drain(session, sent, answers, node_alive)
        if gt_objects is not None and objects_sub.get_publisher_count() and last_sent:
            # The object map is published after the last cloud's detections.
            try:
                session.spin_until(lambda: last_objects and stamp_key(
                    last_objects[0].header.stamp) == last_sent[0], 5.0)
            except TimeoutError:
                logger.warning('no objects message for the last cloud %s', last_sent[0])
            report.consolidated, report.consolidation = _consolidate_map(session, last_objects)
        session.spin_for(0.3)
        if last_diag:
            report.node_counters = dict(conversions.diagnostic_values(last_diag[0]))
    return score_replay(report, out_dir, path, sent, answers, gts, gt_objects,
                        last_objects[0] if last_objects else None, baseline, rate, lockstep)


def _consolidate_map(session: RosSession, last_objects: List[Any]) -> Tuple[bool, str]:
    # The map at the end of the recording, refined once: ~/consolidate_objects queues a
    # scene-mode detection on the map's fused cloud and publishes the rebuilt objects.
    # Returns (consolidated, what happened).
    from std_srvs.srv import Trigger

    client = session.node.create_client(Trigger, CONSOLIDATE_SERVICE)
    if not client.wait_for_service(timeout_sec=5.0):
        return _not_consolidated(f'{CONSOLIDATE_SERVICE} not available')
    count = len(last_objects)
    future = client.call_async(Trigger.Request())
    try:
        response = session.spin_until(lambda: future.done() and future.result(), 30.0)
    except TimeoutError:
        return _not_consolidated(f'{CONSOLIDATE_SERVICE} did not answer within 30 s')
    if not response.success:
        return _not_consolidated(f'{CONSOLIDATE_SERVICE} refused: {response.message}')
    try:
        session.spin_until(lambda: len(last_objects) > count, CONSOLIDATE_TIMEOUT_S)
    except TimeoutError:
        return _not_consolidated(f'no objects message within {CONSOLIDATE_TIMEOUT_S:.0f} s of '
                                 'the consolidation request (see node.log)')
    return True, response.message


def _not_consolidated(reason: str) -> Tuple[bool, str]:
    logger.warning('object map scored unconsolidated: %s', reason)
    return False, reason


def _drain(session: RosSession, sent: Mapping[str, float],
           answers: Mapping[str, Tuple[float, Any]], node_alive: Any) -> None:
    # Wait until every cloud is answered or answers stop coming (for longer than 10 s and three
    # times the slowest answer so far).
    last_count, last_change = -1, time.monotonic()
    while len(set(sent) & set(answers)) < len(sent):
        session.spin_for(0.05)
        node_alive()
        slowest = max((t - sent[k] for k, (t, _) in answers.items() if k in sent), default=0.0)
        if len(answers) != last_count:
            last_count, last_change = len(answers), time.monotonic()
        elif time.monotonic() - last_change > max(10.0, 3.0 * slowest):
            break


def _plot_pr(result: Any, path: Path) -> None:
    import warnings

    from opendlign_core import det_eval

    with warnings.catch_warnings():
        # An empty map or frame has no curve to put in the legend.
        warnings.filterwarnings('ignore', 'No artists with labels found')
        det_eval.plot_pr(result, path)


def _plot_latency(latencies_ms: Sequence[float], path: Path) -> None:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    if latencies_ms:
        ax.hist(latencies_ms, bins=min(50, max(5, len(latencies_ms) // 2)))
    ax.set_xlabel('end-to-end latency (ms)')
    ax.set_ylabel('clouds')
    ax.set_title('publish -> detections received')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
