"""Integration: malformed and hostile PointCloud2 messages are dropped, counted and survived."""

import copy

import numpy as np
import pytest
from ros_harness import TINY, RosClient, assert_clean_stop, unique_domain_id
from scene_clouds import scene_points
from sensor_msgs.msg import PointField
from std_msgs.msg import Header

from opendlign_ros import conversions
from opendlign_ros.node_process import NodeProcess, ros_environment

pytestmark = pytest.mark.ros
# The node process builds the real detector (opendlign_core.detection, written in parallel).
pytest.importorskip('opendlign_core.detection')

CAP = 5000


def _base():
    return conversions.cloud_to_msg(np.arange(30, dtype=np.float32).reshape(10, 3),
                                    Header(frame_id='f'))


def _with(**changes):
    msg = _base()
    for name, value in changes.items():
        setattr(msg, name, value)
    return msg


def _fields(*specs):
    return [PointField(name=n, offset=o, datatype=d, count=c) for n, o, d, c in specs]


XYZ = (('x', 0, 7, 1), ('y', 4, 7, 1), ('z', 8, 7, 1))
HOSTILE = {
    # name: (message builder, text expected in the node's last_error)
    'short data': (lambda: _with(data=bytes(100)), 'data is too short'),
    'long data': (lambda: _with(data=bytes(200)), 'data is too long'),
    'point_step too small': (lambda: _with(point_step=8, row_step=80), 'beyond point_step 8'),
    'point_step zero': (lambda: _with(point_step=0, row_step=0, data=b''),
                        'point_step must be >= 1'),
    'row_step below width * point_step': (lambda: _with(row_step=60, data=bytes(60)),
                                          'row_step 60 is smaller'),
    'no fields': (lambda: _with(fields=[]), 'fields is empty'),
    'missing z': (lambda: _with(fields=_fields(*XYZ[:2])), "'z' is missing"),
    'unknown datatype': (lambda: _with(fields=_fields(*XYZ[:2], ('z', 8, 42, 1))),
                         'unknown datatype 42'),
    # Issue 10 item 1: an identical repeat of a field (like PCL's '_' padding) is valid; two
    # different layouts under one read name are not.
    'duplicate field names': (lambda: _with(fields=_fields(*XYZ, ('x', 0, 8, 1))),
                              'more than once'),
    'overlapping fields': (lambda: _with(fields=_fields(('x', 0, 7, 1), ('y', 2, 7, 1),
                                                        ('z', 8, 7, 1))), 'overlap'),
    'offset beyond point_step': (lambda: _with(fields=_fields(*XYZ[:2], ('z', 2**31, 7, 1))),
                                 'beyond point_step'),
    # A read field with count 0 is read as one value, as PCL does (issue 10 item 1).
    'z twice': (lambda: _with(fields=_fields(*XYZ, ('z', 4, 7, 1))), 'more than once'),
    'x is an array': (lambda: _with(fields=_fields(('x', 0, 2, 4), ('y', 4, 7, 1),
                                                   ('z', 8, 7, 1))), "'x' has count 4"),
    'over the point cap': (lambda: conversions.cloud_to_msg(
        np.zeros((CAP + 1, 3), np.float32), Header(frame_id='f')), 'over the cap'),
    'huge claimed size': (lambda: _with(width=2**31, height=2**31, row_step=2**32 - 1),
                          'over the cap'),
    'organised size mismatch': (lambda: _with(height=3), 'data is too short'),
}


def test_hostile_clouds_are_dropped_and_counted(tmp_path):
    assert len(HOSTILE) >= 12
    domain = unique_domain_id()
    overrides = {**TINY, 'max_input_points': CAP}
    with open(tmp_path / 'node.log', 'w') as log, \
            NodeProcess(ros_environment(domain), overrides=overrides, log=log) as process:
        client = RosClient(domain)
        try:
            client.wait_for_node(process=process)
            good = conversions.cloud_to_msg(scene_points(2, 2000, 1000), Header(frame_id='f'))
            client.request(good, lambda d: True)
            for name, (build, expected) in HOSTILE.items():
                msg = build()
                before = client.last_counters().get('rejected', 0)
                # A new rejection with this cloud's own reason: late copies of the previous
                # hostile cloud may still arrive and count as rejections too.
                def rejected_for_reason() -> bool:
                    counters = client.last_counters()
                    return (counters.get('rejected', 0) > before
                            and expected in str(counters.get('last_error', '')))

                client.spin_until(rejected_for_reason, 15,
                                  every=lambda: client.points_pub.publish(copy.copy(msg)))
                assert process.poll() is None, f'node died on {name!r}'
            # The node still answers, and nothing was counted as a detector failure.
            good.header.frame_id = 'after'
            client.request(good, lambda d: d.header.frame_id == 'after')
            client.spin_until(lambda: client.last_counters().get('processed', 0) >= 2, 10)
            counters = client.last_counters()
            assert counters['rejected'] >= len(HOSTILE)
            assert counters['failed'] == 0 and counters['processed'] >= 2
        finally:
            client.close()
        assert_clean_stop(process, tmp_path / 'node.log')
