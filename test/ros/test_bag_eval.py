"""Integration: ``opendlign bag eval`` replays a scene bag into the real node process."""

import json

import pytest
from ros_harness import TINY, unique_domain_id
from test_bag import _write_scene

from opendlign_core.cli import build_parser, run
from opendlign_ros.bag_cli import register_bag_commands
from opendlign_ros.node_process import format_overrides

pytestmark = pytest.mark.ros
# The node process builds the real detector (opendlign_core.detection, written in parallel).
pytest.importorskip('opendlign_core.detection')


def test_bag_eval_reports_ap_latency_and_drops(tmp_path, capsys):
    _write_scene(tmp_path / 'scenes')
    parser = build_parser([register_bag_commands])
    bag_dir = tmp_path / 'scenes.bag'
    assert run(parser, ['bag', 'from-scenes', str(tmp_path / 'scenes'), '--out', str(bag_dir),
                        '--rate', '4']) == 0
    args = ['bag', 'eval', str(bag_dir), '--out', str(tmp_path / 'eval'),
            '--domain-id', str(unique_domain_id())]
    args += format_overrides({k: v for k, v in TINY.items() if k != 'labels'})
    assert run(parser, args) == 0
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert results['clouds_sent'] == 1
    assert results['clouds_answered'] + results['clouds_dropped'] == 1
    assert set(results['ap']) == {'AP25', 'AP50'}
    assert set(results['ap']['AP25']) == {'chair', 'table'}
    assert results['latency_ms']['p50'] > 0
    for name in ('report.md', 'pr.png', 'latency.png', 'node.log'):
        assert (tmp_path / 'eval' / name).is_file()
    assert 'AP@0.25' in capsys.readouterr().out


def test_bag_eval_lockstep_answers_every_cloud_of_a_fast_bag(tmp_path):
    # Three clouds 1 ms apart: on the bag's schedule a slow node would supersede some of them;
    # lock-step replay waits for each answer, so none is dropped or superseded.
    roots = [tmp_path / name for name in ('a', 'b', 'c')]
    for root in roots:
        _write_scene(root)
    parser = build_parser([register_bag_commands])
    bag_dir = tmp_path / 'fast.bag'
    assert run(parser, ['bag', 'from-scenes', *map(str, roots), '--out', str(bag_dir),
                        '--rate', '1000']) == 0
    args = ['bag', 'eval', str(bag_dir), '--out', str(tmp_path / 'eval'), '--lockstep',
            '--domain-id', str(unique_domain_id())]
    args += format_overrides({k: v for k, v in TINY.items() if k != 'labels'})
    assert run(parser, args) == 0
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert (results['clouds_sent'], results['clouds_answered'], results['clouds_dropped']) == \
        (3, 3, 0)
    # The warm-up cloud(s) before the replay are not counted.
    assert results['lockstep'] is True and results['replay_counters']['superseded'] == 0
    assert results['replay_counters']['processed'] == 3
    detections = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
    assert sorted(detections) == ['1.000000000', '1.001000000', '1.002000000']
    assert all(isinstance(d['score'], float) and len(d['size']) == 3
               for dets in detections.values() for d in dets)


def _answer(stamp, boxes):
    """A detections/objects message in map: ``(label, score, box)`` per detection."""
    from builtin_interfaces.msg import Time
    from std_msgs.msg import Header

    from opendlign_ros import conversions

    sec, nanosec = (int(v) for v in stamp.split('.'))
    msg = conversions.boxes_to_msg([(label, box) for label, _, box in boxes],
                                   Header(stamp=Time(sec=sec, nanosec=nanosec), frame_id='map'))
    for det, (_, score, _) in zip(msg.detections, boxes):
        det.results[0].hypothesis.score = score
    return msg


def test_score_replay_reports_per_frame_and_object_map_ap(tmp_path):
    # The scoring of a frames-bag replay on hand-made answers (no node): ground truth from a
    # real frames bag (frame 0 sees the chair, frame 1 nothing; the scene has a chair and a
    # table).
    from dataclasses import replace

    from test_bag_frames import _write_scene

    from opendlign_ros import bag

    _write_scene(tmp_path / 'scenes')
    path = tmp_path / 'frames.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], path, mode='frames')
    gts = bag.read_ground_truth(path)
    objects = [g for boxes in bag.read_ground_truth(path, bag.GT_OBJECTS_TOPIC).values()
               for g in boxes]
    [chair] = gts['1.000000000']
    # Half the chair's x size (1.68 m) off: IoU 1/3, a hit at 0.25, a miss at 0.5.
    off = replace(chair.box, center=chair.box.center + [0.84, 0.0, 0.0])
    far = replace(chair.box, center=chair.box.center + [5.0, 0.0, 0.0])
    answers = {'1.000000000': (10.05, _answer('1.000000000', [('chair', 0.9, off),
                                                               ('table', 0.8, far)])),
               '0.000000000': (9.0, _answer('0.000000000', []))}    # warm-up: ignored
    objects_msg = _answer('1.200000000', [('chair', 0.9, chair.box), ('chair', 0.6, far)])
    report = bag.EvalReport(clouds_sent=2, target_frame='map',
                            node_counters={'processed': '2', 'no_transform': '3'})
    bag.score_replay(report, tmp_path / 'eval', 'frames.bag',
                     {'1.000000000': 10.0, '1.200000000': 10.2}, answers, gts, objects,
                     objects_msg, {'no_transform': '1'}, lockstep=True)
    assert (report.clouds_answered, report.clouds_dropped, report.no_transform) == (1, 1, 2)
    assert report.replay_counters == {'processed': 2, 'no_transform': 2}
    assert report.latencies_ms == pytest.approx([50.0]) and report.detection_frames == ['map']
    # Per frame: the chair at IoU 1/3; the table has no per-frame ground truth (n/a).
    assert report.ap['AP25']['chair'] == 1.0 and report.ap['AP50']['chair'] == 0.0
    assert report.mean_ap == {'AP25': 1.0, 'AP50': 0.0}
    # Object map: the chair exact (the far duplicate ranks below it), the table missed.
    assert report.objects == 2
    assert report.object_ap == {'AP25': {'chair': 1.0, 'table': 0.0},
                                'AP50': {'chair': 1.0, 'table': 0.0}}
    assert report.object_mean_ap == {'AP25': 0.5, 'AP50': 0.5}
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert (results['target_frame'], results['no_transform'], results['clouds_dropped']) == \
        ('map', 2, 1)
    assert results['object_map'] == {'objects': 2, 'gt_objects': 2, 'consolidated': False,
                                     'consolidation': '', 'ap': report.object_ap,
                                     'mean_ap': {'AP25': 0.5, 'AP50': 0.5}}
    for name in ('report.md', 'pr.png', 'pr_objects.png', 'latency.png', 'objects.json',
                 'detections.json'):
        assert (tmp_path / 'eval' / name).is_file()
    text = (tmp_path / 'eval' / 'report.md').read_text()
    assert '(no_transform): 2' in text and '2 objects in the last `objects` message' in text
    assert 'not consolidated' in text
    assert '| **mean** | 2 | 2 | 50.00 | 50.00 |' in text
    assert sorted(json.loads((tmp_path / 'eval' / 'detections.json').read_text())) == \
        ['1.000000000']


def test_bag_eval_frames_bag_through_the_node_with_target_frame(tmp_path):
    # The robot flow end to end: a frames bag (camera-frame clouds, /tf, latched /tf_static,
    # ground truth in map, plus a vendor topic of a type not installed here) replayed into a
    # real node process with target_frame: map.
    import numpy as np
    from rosbags.typesys import get_types_from_msg
    from test_bag_frames import _write_scene
    from test_bag_replay import VENDOR_DEF, VENDOR_TYPE

    from opendlign_ros import bag

    _write_scene(tmp_path / 'scenes')
    frames = tmp_path / 'frames.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], frames, mode='frames')
    mixed = tmp_path / 'mixed.bag'
    qos = bag.bag_offered_qos(frames)
    with bag.BagWriter(mixed) as writer:
        writer.store.register(get_types_from_msg(VENDOR_DEF, VENDOR_TYPE))
        for topic, (msgtype, _) in bag.bag_topics(frames).items():
            writer.add_topic(topic, msgtype, qos[topic])
        for topic, msgtype, t, data in bag.read_bag(frames):
            writer.write(topic, msgtype, t, data)
            writer.write('/vendor/packets', VENDOR_TYPE, t, writer.store.types[VENDOR_TYPE](
                header=writer.store.types['std_msgs/msg/Header'](
                    stamp=writer.store.types['builtin_interfaces/msg/Time'](sec=0, nanosec=0),
                    frame_id='lidar'), count=1, ranges=np.zeros(0, np.float32)))
    parser = build_parser([register_bag_commands])
    args = ['bag', 'eval', str(mixed), '--out', str(tmp_path / 'eval'), '--lockstep',
            '--domain-id', str(unique_domain_id())]
    args += format_overrides({k: v for k, v in TINY.items() if k != 'labels'})
    assert run(parser, args) == 0
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert results['target_frame'] == 'map'
    assert (results['clouds_sent'], results['clouds_answered'], results['no_transform']) == \
        (2, 2, 0)
    assert results['detection_frames'] == ['map']
    assert results['replay_counters']['processed'] == 2
    assert set(results['ap']['AP25']) == {'chair', 'table'}
    assert results['object_map']['gt_objects'] == 2
    assert set(results['object_map']['ap']['AP50']) == {'chair', 'table'}
    assert isinstance(results['object_map']['objects'], int)
    # The map was refined after the last cloud (the node's ~/consolidate_objects).
    assert results['object_map']['consolidated'] is True
    assert 'consolidated after the last cloud' in (tmp_path / 'eval' / 'report.md').read_text()
    for name in ('report.md', 'pr.png', 'pr_objects.png', 'latency.png', 'objects.json'):
        assert (tmp_path / 'eval' / name).is_file()


def test_bag_eval_counts_clouds_without_a_transform(tmp_path):
    # /tf ends at the first cloud: the second cloud (1.2 s) has no transform to map, the node
    # drops it (no_transform) and the lock-step replay moves on instead of waiting for it.
    from test_bag_frames import _write_scene

    from opendlign_ros import bag

    _write_scene(tmp_path / 'scenes')
    frames = tmp_path / 'frames.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], frames, mode='frames')
    cut = tmp_path / 'cut.bag'
    qos = bag.bag_offered_qos(frames)
    with bag.BagWriter(cut, 'sqlite3') as writer:
        for topic, (msgtype, _) in bag.bag_topics(frames).items():
            writer.add_topic(topic, msgtype, qos[topic])
        for topic, msgtype, t, data in bag.read_bag(frames):
            if topic != bag.TF_TOPIC or t <= bag.START_NS:
                writer.write(topic, msgtype, t, data)
    parser = build_parser([register_bag_commands])
    args = ['bag', 'eval', str(cut), '--out', str(tmp_path / 'eval'), '--lockstep',
            '--domain-id', str(unique_domain_id())]
    args += format_overrides({k: v for k, v in TINY.items() if k != 'labels'})
    assert run(parser, args) == 0
    results = json.loads((tmp_path / 'eval' / 'results.json').read_text())
    assert (results['clouds_sent'], results['clouds_answered'], results['clouds_dropped'],
            results['no_transform']) == (2, 1, 1, 1)
    assert results['replay_counters']['processed'] == 1
    assert '(no_transform): 1' in (tmp_path / 'eval' / 'report.md').read_text()
