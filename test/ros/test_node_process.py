"""Integration: the real detector node process over Fast DDS on localhost."""

from builtin_interfaces.msg import Time
import pytest
from ros_harness import TINY, RosClient, assert_clean_stop, unique_domain_id
from scene_clouds import scene_points
from std_msgs.msg import Header

from opendlign_ros import conversions
from opendlign_ros.node_process import NodeProcess, ros_environment

pytestmark = pytest.mark.ros
# The node process builds the real detector (opendlign_core.detection, written in parallel).
pytest.importorskip('opendlign_core.detection')

DETECTION3DARRAY_HASH = (
    'RIHS01_793f5eab9595ac1c0da07873cc859db42eae51f0ee76056db8562515d830e018')


def test_cloud_in_detections_out_with_header_and_type_hash(tmp_path):
    domain = unique_domain_id()
    with open(tmp_path / 'node.log', 'w') as log, \
            NodeProcess(ros_environment(domain), overrides=TINY, log=log) as process:
        client = RosClient(domain)
        try:
            client.wait_for_node(process=process)
            header = Header(stamp=Time(sec=1234, nanosec=5678), frame_id='sensor_frame')
            msg = conversions.cloud_to_msg(scene_points(0), header)
            out = client.request(msg, lambda d: d.header.stamp.sec == 1234)

            assert out.header.frame_id == 'sensor_frame' and out.header.stamp.nanosec == 5678
            assert len(out.detections) >= 1
            for det in out.detections:
                assert det.header == out.header
                assert det.results[0].hypothesis.class_id in TINY['labels']
                assert 0.0 <= det.results[0].hypothesis.score <= 1.0
                assert det.bbox.size.x > 0 and det.bbox.size.z > 0
            # Diagnostics carry per-stage latency and the counters.
            client.spin_until(lambda: client.last_counters().get('processed', 0) >= 1, 10)
            counters = client.last_counters()
            assert counters['rejected'] == 0 and counters['failed'] == 0
            assert float(counters['total_ms']) > 0 and float(counters['decode_ms']) >= 0
            # The advertised type is wire-compatible with vision_msgs 4.1.1.
            infos = client.node.get_publishers_info_by_topic('/detections')
            assert [i.topic_type for i in infos] == ['vision_msgs/msg/Detection3DArray']
            assert str(infos[0].topic_type_hash) == DETECTION3DARRAY_HASH
        finally:
            client.close()
        assert_clean_stop(process, tmp_path / 'node.log')


def test_missing_weights_exit_with_clear_message(tmp_path):
    missing = tmp_path / 'nope.safetensors'
    log_path = tmp_path / 'node.log'
    with open(log_path, 'w') as log:
        process = NodeProcess(ros_environment(unique_domain_id()),
                              overrides={**TINY, 'weights_path': str(missing)}, log=log)
        status = process.wait(timeout=120)
    assert status == 1
    text = log_path.read_text()
    assert 'cannot start' in text and str(missing) in text, text
