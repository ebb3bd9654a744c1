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
    assert results['lockstep'] is True and results['node_counters']['superseded'] == '0'
    assert results['node_counters']['processed'] == '3'
    detections = json.loads((tmp_path / 'eval' / 'detections.json').read_text())
    assert sorted(detections) == ['1.000000000', '1.001000000', '1.002000000']
    assert all(isinstance(d['score'], float) and len(d['size']) == 3
               for dets in detections.values() for d in dets)
