"""
``opendlign bag ...``: make, play, record and evaluate rosbag2 bags (no ``ros2 bag`` needed).

``opendlign_core.cli`` builds the ``opendlign`` parser; the ROS package adds these commands with
:func:`register_bag_commands`, so the core never imports ROS.
"""

import argparse
from pathlib import Path
import time
from typing import Any, Dict, List

import yaml


def register_bag_commands(subparsers: Any) -> None:
    """
    Add the ``bag`` command and its subcommands to an ``argparse`` subparsers object.

    :param subparsers: The object returned by ``ArgumentParser.add_subparsers()``.
    """
    bag = subparsers.add_parser('bag', help='make, play, record and evaluate rosbag2 bags',
                                description=__doc__.strip().splitlines()[0])
    sub = bag.add_subparsers(dest='bag_command', metavar='BAG_COMMAND', required=True)

    p = sub.add_parser('from-scenes',
                       help='write ScanNet-format scenes as a bag with ground truth')
    p.add_argument('scenes', nargs='+', type=Path, metavar='SCENE_DIR',
                   help='scene folders, or roots holding scene folders')
    p.add_argument('--out', required=True, type=Path, help='bag folder to create')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    p.add_argument('--mode', choices=('scene', 'frames'), default='scene',
                   help='one cloud per scene, or one per exported depth frame as a robot '
                        'records it (camera-frame clouds, /tf, /tf_static)')
    p.add_argument('--rate', type=float, default=None,
                   help='clouds per second of bag time (default 1 for scenes, 5 for frames)')
    p.add_argument('--frame-id', default='map',
                   help="the fixed frame: the clouds' frame in scene mode; in frames mode the "
                        'root of /tf and the frame of the ground truth (clouds are in '
                        'camera_depth_optical_frame)')
    p.add_argument('--frame-step', type=int, default=1, help='use every N-th frame')
    p.set_defaults(func=_from_scenes)

    p = sub.add_parser('eval', help='replay a bag into the detector node and score it')
    p.add_argument('bag', type=Path)
    p.add_argument('--params', type=Path, default=None,
                   help='node parameter file (default: the shipped config/detect.yaml)')
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--lockstep', action='store_true',
                   help='ignore the timing: send each cloud once the node answered the previous')
    p.add_argument('--out', type=Path, default=None,
                   help='report folder (default: <bag>_eval next to the bag)')
    p.add_argument('--labels', default=None,
                   help="comma-separated labels (default: the bag's ground-truth classes)")
    p.add_argument('-p', '--param', action='append', default=[], metavar='NAME:=VALUE',
                   help='node parameter override (YAML value), repeatable')
    p.add_argument('--domain-id', type=int, default=None, help='private ROS domain id')
    p.add_argument('--startup-timeout', type=float, default=300.0,
                   help='seconds allowed for the node to load its model')
    p.add_argument('--target-frame', default=None,
                   help="node target_frame (default for a bag with /tf or /tf_static: its ground "
                        "truth's frame, e.g. map, else the root of its transform tree; none "
                        'for a bag without transforms)')
    p.set_defaults(func=_eval)

    p = sub.add_parser('play', help="publish a bag's messages with their original timing (and "
                       'offered QoS; topics of types not installed here are skipped with a '
                       'warning)')
    p.add_argument('bag', type=Path)
    p.add_argument('--rate', type=float, default=1.0, help='playback speed factor')
    p.add_argument('--topics', nargs='+', default=None, help='topics to play (default: all)')
    p.add_argument('--remap', action='append', default=[], metavar='FROM:=TO',
                   help='publish bag topic FROM on TO, repeatable')
    p.add_argument('--wait-for-subscribers', action='store_true',
                   help='start once every played topic (but the ground truth) has a '
                        'subscriber, or after 30 s with a warning naming those without one; '
                        'without it the first messages can go out before discovery')
    p.set_defaults(func=_play)

    p = sub.add_parser('record', help='record topics (raw CDR) into a new bag')
    p.add_argument('out', type=Path, help='bag folder to create')
    p.add_argument('--topics', nargs='+', required=True, help='fully qualified topic names')
    p.add_argument('--storage', choices=('mcap', 'sqlite3'), default='mcap')
    p.add_argument('--duration', type=float, default=None,
                   help='seconds to record (default: until Ctrl-C or SIGTERM)')
    p.add_argument('--discovery-timeout', type=float, default=30.0,
                   help='seconds to wait for the topics to appear')
    p.set_defaults(func=_record)


def _parse_assignments(items: List[str], what: str) -> Dict[str, Any]:
    out = {}
    for item in items:
        name, sep, value = item.partition(':=')
        if not sep or not name:
            raise ValueError(f'{what} must look like NAME:=VALUE, got {item!r}')
        out[name] = yaml.safe_load(value) if what == 'parameter' else value
    return out


def _from_scenes(args: argparse.Namespace) -> int:
    from opendlign_ros.bag_scenes import bag_from_scenes

    summary = bag_from_scenes(args.scenes, args.out, args.storage, args.mode, args.rate,
                              args.frame_id, args.frame_step)
    print(f'wrote {summary.clouds} clouds ({summary.points} points, {summary.boxes} ground-truth '
          f'boxes) to {summary.path}')
    return 0


def _eval(args: argparse.Namespace) -> int:
    from opendlign_ros.bag_eval import evaluate_bag

    out = args.out or args.bag.parent / f'{args.bag.name}_eval'
    labels = None
    if args.labels is not None:
        labels = [s.strip() for s in args.labels.split(',') if s.strip()]
    report = evaluate_bag(args.bag, out, args.params, args.rate,
                          _parse_assignments(args.param, 'parameter'), labels, args.domain_id,
                          args.startup_timeout, lockstep=args.lockstep,
                          target_frame=args.target_frame)
    print(report.markdown)
    print('files: ' + ', '.join(report.files))
    return 0


def _play(args: argparse.Namespace) -> int:
    from opendlign_ros.bag_io import GROUND_TRUTH_TOPIC, GT_OBJECTS_TOPIC, bag_topics
    from opendlign_ros.bag_replay import RosSession, play_bag

    remap = _parse_assignments(args.remap, 'remapping')
    with RosSession('opendlign_bag_player') as session:
        topics = args.topics
        wait = list(topics or []) if args.wait_for_subscribers else []
        if args.wait_for_subscribers and topics is None:
            # Our ground-truth topics are for evaluation; nobody need listen to them.
            wait = [t for t in bag_topics(args.bag)
                    if t not in (GROUND_TRUTH_TOPIC, GT_OBJECTS_TOPIC)]
        count = play_bag(session, args.bag, topics, args.rate, wait_for_subscribers=wait,
                         require_subscribers=False,
                         remap=remap)
    print(f'published {count} messages')
    return 0


def _record(args: argparse.Namespace) -> int:
    from opendlign_ros.bag_replay import BagRecorder, RosSession, discover_types, stop_on_signal

    stop = stop_on_signal()
    with RosSession('opendlign_bag_recorder') as session:
        types = discover_types(session, args.topics, args.discovery_timeout)
        recorder = BagRecorder(session, args.out, types, args.storage)
        print(f'recording {sorted(recorder.topics)} into {args.out}; Ctrl-C to stop')
        deadline = None if args.duration is None else time.monotonic() + args.duration
        try:
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                session.executor.spin_once(timeout_sec=0.05)
        finally:
            recorder.close()
    print(f'recorded {recorder.count} messages')
    return 0
