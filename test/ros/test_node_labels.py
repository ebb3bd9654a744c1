"""Integration: runtime label updates through the node's parameter service."""

import pytest
from rclpy.parameter import Parameter
from ros_harness import TINY, RosClient, assert_clean_stop, unique_domain_id
from scene_clouds import scene_points
from std_msgs.msg import Header

from opendlign_ros import conversions
from opendlign_ros.node_process import NodeProcess, ros_environment
from opendlign_ros.params import MAX_LABELS

pytestmark = pytest.mark.ros
# The node process builds the real detector (opendlign_core.detection, written in parallel).
pytest.importorskip('opendlign_core.detection')

OLD = set(TINY['labels'])
NEW = ['zebra crossing', 'giraffe', 'umbrella stand']


def _labels_of(msg):
    return {r.hypothesis.class_id for det in msg.detections for r in det.results}


def test_label_update_from_another_process(tmp_path):
    domain = unique_domain_id()
    with open(tmp_path / 'node.log', 'w') as log, \
            NodeProcess(ros_environment(domain), overrides=TINY, log=log) as process:
        client = RosClient(domain)
        try:
            client.wait_for_node(process=process)
            stamp = iter(range(1, 10_000))

            def detect():
                msg = conversions.cloud_to_msg(scene_points(1), Header(frame_id='map'))
                msg.header.stamp.sec = next(stamp)
                return client.request(msg, lambda d: d.header.stamp.sec == msg.header.stamp.sec
                                      and len(d.detections) > 0)

            assert _labels_of(detect()) <= OLD

            # Invalid sets are rejected with a reason; the old set stays in force.
            bad = {
                'blank': ['chair', '  '],
                'empty': [],
                'duplicates': ['chair', 'chair'],
                'limit': [f'label {i}' for i in range(MAX_LABELS + 1)],
            }
            for reason, labels in bad.items():
                value = Parameter('labels', Parameter.Type.STRING_ARRAY, labels)
                [result] = client.set_parameters([value])
                assert not result.successful and reason in result.reason, (reason, result)
            [wrong_type] = client.set_parameters([Parameter('labels', value=3)])
            assert not wrong_type.successful
            [read_only] = client.set_parameters([Parameter('model_name', value='ViT-B-16')])
            assert not read_only.successful and 'read-only' in read_only.reason
            future = client.params.get_parameters(['labels'])
            client.spin_until(future.done, 10)
            assert list(future.result().values[0].string_array_value) == TINY['labels']
            assert _labels_of(detect()) <= OLD

            # A valid set takes effect on a following detection, never mixed with the old one.
            [ok] = client.set_parameters([Parameter('labels', value=NEW)])
            assert ok.successful, ok.reason
            client.spin_until(lambda: _labels_of(detect()) <= set(NEW), 30, period=0)
            for _ in range(2):
                assert _labels_of(detect()) <= set(NEW)
            client.spin_until(lambda: client.last_counters().get('label_generation') == 1, 10)
        finally:
            client.close()
        assert_clean_stop(process, tmp_path / 'node.log')
