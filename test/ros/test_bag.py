"""Bag tools: scene bags with ground truth, and a bit-exact write -> play -> record round trip."""

import logging
import threading

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from ros_harness import unique_domain_id
from scene_clouds import box_surface
from sensor_msgs.msg import PointCloud2
from std_msgs.msg import Header

from opendlign_core import scannet
from opendlign_core.boxes import fit_aabb
from opendlign_ros import bag, conversions

pytestmark = pytest.mark.ros


def _write_scene(root):
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    floor = np.column_stack([rng.uniform(-1, 1, 500), rng.uniform(-1, 1, 500), np.zeros(500)])
    chair = box_surface((-0.5, 0, 0.3), (0.4, 0.4, 0.6), 300, rng)
    table = box_surface((0.5, 0, 0.4), (0.8, 0.5, 0.8), 300, rng)
    points = np.concatenate([floor, chair, table]).astype(np.float32)
    ids = np.r_[np.full(500, 0), np.full(300, 1), np.full(300, 2)]
    scannet.write_label_map(root / scannet.LABEL_MAP_NAME, {'floor': 2, 'chair': 5, 'table': 7})
    scannet.write_scannet_scene(root / 'scene0000_00', points, ids,
                                {0: 'floor', 1: 'chair', 2: 'table'})
    return points, {'chair': fit_aabb(chair), 'table': fit_aabb(table)}


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_bag_from_scenes_carries_clouds_and_ground_truth(tmp_path, storage):
    points, boxes = _write_scene(tmp_path)
    summary = bag.bag_from_scenes([tmp_path], tmp_path / 'out', storage=storage)
    assert (summary.clouds, summary.boxes, summary.points) == (1, 2, len(points))
    assert bag.bag_topics(tmp_path / 'out') == {
        bag.CLOUD_TOPIC: (bag.CLOUD_TYPE, 1), bag.GROUND_TRUTH_TOPIC: (bag.DETECTIONS_TYPE, 1)}
    [(topic, msgtype, t, data)] = list(bag.read_bag(tmp_path / 'out', [bag.CLOUD_TOPIC]))
    cloud = deserialize_message(data, PointCloud2)
    assert t == bag.START_NS and cloud.header.stamp.sec == 1 and cloud.header.frame_id == 'map'
    np.testing.assert_array_equal(conversions.cloud_from_msg(cloud), points)
    gts = bag.read_ground_truth(tmp_path / 'out')
    assert list(gts) == ['1.000000000'] and bag.cloud_stamp_key(data) == '1.000000000'
    got = {g.label: g.box for g in gts['1.000000000']}
    assert set(got) == {'chair', 'table'}
    for label, box in boxes.items():
        np.testing.assert_allclose(got[label].center, box.center, atol=1e-12)
        np.testing.assert_allclose(got[label].size, box.size, atol=1e-12)
        assert got[label].yaw == 0.0


def test_bag_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match='no ScanNet scene folders'):
        bag.bag_from_scenes([tmp_path], tmp_path / 'out')
    with pytest.raises(ValueError, match="mode must be 'scene' or 'frames'"):
        bag.bag_from_scenes([tmp_path], tmp_path / 'out', mode='video')
    with pytest.raises(FileNotFoundError, match='metadata.yaml missing'):
        list(bag.read_bag(tmp_path / 'nothing'))
    with pytest.raises(ValueError, match='storage must be one of'):
        bag.BagWriter(tmp_path / 'x', storage='zip')
    with pytest.raises(ValueError, match='not a CDR message'):
        bag.cloud_stamp_key(b'\x01\x02')


def test_write_play_record_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(3)
    source = tmp_path / 'source'
    with bag.BagWriter(source, 'sqlite3') as writer:
        for i in range(6):
            header = Header(stamp=Time(sec=10 + i, nanosec=i), frame_id=f'frame{i}')
            n = int(rng.integers(1, 2000))
            writer.write('/points', bag.CLOUD_TYPE, 10**9 + i * 20_000_000,
                         conversions.cloud_to_msg(rng.normal(size=(n, 3)), header))
    expected = [data for _, _, _, data in bag.read_bag(source)]

    domain = unique_domain_id()
    recorder_session = bag.RosSession('recorder', domain)
    player_session = bag.RosSession('player', domain)
    recorder = bag.BagRecorder(recorder_session, tmp_path / 'copy', {'/points': bag.CLOUD_TYPE})
    stop = threading.Event()

    def spin():
        while not stop.is_set():
            recorder_session.executor.spin_once(timeout_sec=0.01)
    spinner = threading.Thread(target=spin)
    spinner.start()
    try:
        sent = bag.play_bag(player_session, source, rate=2.0, wait_for_subscribers=['/points'])
        player_session.spin_until(lambda: recorder.count >= len(expected), 10)
    finally:
        stop.set()
        spinner.join()
        recorder.close()
        player_session.close()
        recorder_session.close()
    assert sent == len(expected) == 6
    copied = list(bag.read_bag(tmp_path / 'copy'))
    assert [d for _, _, _, d in copied] == expected
    assert {m for _, m, _, _ in copied} == {bag.CLOUD_TYPE}
    stamps = [t for _, _, t, _ in copied]
    assert stamps == sorted(stamps)


def test_play_waits_for_subscribers_but_a_topic_nobody_hears_does_not_stop_it(tmp_path, caplog):
    source = tmp_path / 'source'
    header = Header(stamp=Time(sec=10), frame_id='map')
    with bag.BagWriter(source, 'sqlite3') as writer:
        writer.write('/points', bag.CLOUD_TYPE, 10**9,
                     conversions.cloud_to_msg(np.zeros((3, 3)), header))
    session = bag.RosSession('lonely_player', unique_domain_id())
    try:
        with pytest.raises(TimeoutError, match=r"no subscriber on \['/points'\]"):
            bag.play_bag(session, source, wait_for_subscribers=['/points'],
                         discovery_timeout=0.2)
        with caplog.at_level(logging.WARNING, logger='opendlign_ros.bag_replay'):
            sent = bag.play_bag(session, source, wait_for_subscribers=['/points'],
                                discovery_timeout=0.2, require_subscribers=False)
    finally:
        session.close()
    assert sent == 1
    assert "no subscriber on ['/points'] after 0 s; playing anyway" in caplog.text
