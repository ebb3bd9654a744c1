"""Bag readers and players: unknown message types are skipped with a warning; offered QoS."""

import logging

from builtin_interfaces.msg import Time
import numpy as np
import pytest
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from ros_harness import unique_domain_id
from rosbags.interfaces import QosReliability
from rosbags.typesys import get_types_from_msg
from std_msgs.msg import Header, String

from opendlign_core.cli import build_parser, run
from opendlign_ros import bag, conversions
from opendlign_ros.bag_cli import register_bag_commands

pytestmark = pytest.mark.ros

#: A vendor driver's message, known only while the bag is written (no package installed here).
VENDOR_TYPE = 'vendor_msgs/msg/LidarPacket'
VENDOR_DEF = 'std_msgs/Header header\nuint32 count\nfloat32[] ranges\n'


def _write_mixed_bag(path, storage):
    """Three clouds on /points and three packets on each of two vendor topics."""
    with bag.BagWriter(path, storage) as writer:
        writer.store.register(get_types_from_msg(VENDOR_DEF, VENDOR_TYPE))
        types = writer.store.types
        for i in range(3):
            t = 10**9 + i * 10**6
            writer.write(bag.CLOUD_TOPIC, bag.CLOUD_TYPE, t, conversions.cloud_to_msg(
                np.full((2, 3), i, np.float32), Header(stamp=Time(sec=1, nanosec=i),
                                                       frame_id='lidar')))
            for offset, topic in enumerate(('/vendor/packets', '/vendor/status'), 1):
                header = types['std_msgs/msg/Header'](
                    stamp=types['builtin_interfaces/msg/Time'](sec=1, nanosec=i),
                    frame_id='lidar')
                writer.write(topic, VENDOR_TYPE, t + offset, types[VENDOR_TYPE](
                    header=header, count=i, ranges=np.arange(i, dtype=np.float32)))


def _warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_readers_and_player_skip_unknown_types_with_one_warning_per_topic(
        tmp_path, storage, capsys, caplog, monkeypatch):
    path = tmp_path / 'mixed.bag'
    _write_mixed_bag(path, storage)
    assert bag.bag_topics(path) == {bag.CLOUD_TOPIC: (bag.CLOUD_TYPE, 3),
                                    '/vendor/packets': (VENDOR_TYPE, 3),
                                    '/vendor/status': (VENDOR_TYPE, 3)}
    messages = list(bag.read_bag(path))
    assert [topic for topic, _, _, _ in messages] == \
        [bag.CLOUD_TOPIC, '/vendor/packets', '/vendor/status'] * 3
    store = bag.typestore()
    store.register(get_types_from_msg(VENDOR_DEF, VENDOR_TYPE))
    assert [store.deserialize_cdr(d, m).count for t, m, _, d in messages
            if t == '/vendor/packets'] == [0, 1, 2]
    assert bag.read_ground_truth(path) == {} and bag.read_transforms(path) == []

    monkeypatch.setenv('ROS_DOMAIN_ID', str(unique_domain_id()))
    parser = build_parser([register_bag_commands])
    caplog.set_level(logging.WARNING)
    assert run(parser, ['bag', 'play', str(path), '--rate', '100']) == 0
    assert capsys.readouterr().out.strip() == 'published 3 messages'
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    for topic, warning in zip(('/vendor/packets', '/vendor/status'), warnings):
        assert warning.startswith(f'topic {topic} has message type {VENDOR_TYPE}, which is not '
                                  'installed here; not playing it')

    # Only unknown topics selected: a clear error, exit code 2.
    assert run(parser, ['bag', 'play', str(path), '--topics', '/vendor/packets']) == 2
    assert "none of the topics ['/vendor/packets'] can be played: their message types " \
        "['vendor_msgs/msg/LidarPacket'] are not installed here" in capsys.readouterr().err


def test_recorder_skips_unknown_types(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    with bag.RosSession('recorder', unique_domain_id()) as session:
        recorder = bag.BagRecorder(session, tmp_path / 'rec.bag',
                                   {bag.CLOUD_TOPIC: bag.CLOUD_TYPE, '/vendor': VENDOR_TYPE})
        recorder.close()
        assert recorder.topics == {bag.CLOUD_TOPIC: bag.CLOUD_TYPE}
        with pytest.raises(ValueError, match='none of the topics'):
            bag.BagRecorder(session, tmp_path / 'rec2.bag', {'/vendor': VENDOR_TYPE})
    [first, *_] = _warnings(caplog)
    assert first.startswith(f'topic /vendor has message type {VENDOR_TYPE}, which is not '
                            'installed here; not recording it')


def test_replay_qos_follows_the_offered_profiles():
    plain = bag.replay_qos([], 5)
    assert (plain.reliability, plain.durability, plain.depth) == \
        (ReliabilityPolicy.RELIABLE, DurabilityPolicy.VOLATILE, 10)
    latched = bag.replay_qos([bag.latched_qos()], 3)
    assert (latched.reliability, latched.durability, latched.depth) == \
        (ReliabilityPolicy.RELIABLE, DurabilityPolicy.TRANSIENT_LOCAL, 3)
    best_effort = bag.offered_qos(5, False)._replace(reliability=QosReliability.BEST_EFFORT)
    mixed = bag.replay_qos([best_effort, bag.latched_qos()], 1)
    assert (mixed.reliability, mixed.durability, mixed.depth) == \
        (ReliabilityPolicy.BEST_EFFORT, DurabilityPolicy.VOLATILE, 10)
    tf = bag.replay_qos([bag.offered_qos(100, False)], 7)
    assert (tf.durability, tf.depth) == (DurabilityPolicy.VOLATILE, 100)
    with pytest.raises(ValueError, match='depth must be >= 1, got 0'):
        bag.offered_qos(0, True)


def test_played_latched_topic_reaches_a_late_subscriber(tmp_path):
    path = tmp_path / 'latched.bag'
    with bag.BagWriter(path, 'sqlite3') as writer:
        writer.add_topic('/latched', 'std_msgs/msg/String', [bag.latched_qos()])
        writer.write('/latched', 'std_msgs/msg/String', 10, String(data='a'))
        writer.write('/latched', 'std_msgs/msg/String', 20, String(data='b'))
        writer.write('/chatter', 'std_msgs/msg/String', 30, String(data='c'))
    domain = unique_domain_id()
    with bag.RosSession('player', domain) as player:
        assert bag.play_bag(player, path, rate=100.0) == 3
        # The subscriber starts after playback: only the latched topic reaches it (both of its
        # messages: the replay keeps as many as the bag holds).
        with bag.RosSession('listener', domain) as listener:
            got = {'/latched': [], '/chatter': []}
            for topic, durability in (('/latched', DurabilityPolicy.TRANSIENT_LOCAL),
                                      ('/chatter', DurabilityPolicy.VOLATILE)):
                listener.node.create_subscription(
                    String, topic, lambda msg, t=topic: got[t].append(msg.data),
                    QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE,
                               durability=durability))

            def spin_both():
                player.spin_for(0.01)
                return len(got['/latched']) == 2
            listener.spin_until(spin_both, 10.0)
            listener.spin_for(0.3)
    assert got == {'/latched': ['a', 'b'], '/chatter': []}


def test_frames_bag_tf_static_reaches_a_late_tf_listener(tmp_path):
    # A tf2 listener's /tf_static subscription (TRANSIENT_LOCAL) that starts after playback
    # still gets camera_link -> camera_depth_optical_frame; /tf (volatile) is gone by then.
    from test_bag_frames import _write_scene
    from tf2_msgs.msg import TFMessage  # set-up builds it: a missing one must fail, not skip

    _write_scene(tmp_path / 'scenes')
    path = tmp_path / 'frames.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], path, mode='frames', rate=50.0)
    domain = unique_domain_id()
    with bag.RosSession('player', domain) as player:
        assert bag.play_bag(player, path, [bag.TF_TOPIC, bag.TF_STATIC_TOPIC], rate=10.0) == 8
        with bag.RosSession('listener', domain) as listener:
            got = {bag.TF_TOPIC: [], bag.TF_STATIC_TOPIC: []}
            for topic, durability in ((bag.TF_STATIC_TOPIC, DurabilityPolicy.TRANSIENT_LOCAL),
                                      (bag.TF_TOPIC, DurabilityPolicy.VOLATILE)):
                listener.node.create_subscription(
                    TFMessage, topic, lambda msg, t=topic: got[t].append(msg),
                    QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE,
                               durability=durability))

            def spin_both():
                player.spin_for(0.01)
                return got[bag.TF_STATIC_TOPIC]
            listener.spin_until(spin_both, 10.0)
            listener.spin_for(0.3)
    [static] = got[bag.TF_STATIC_TOPIC]
    [edge] = static.transforms
    assert (edge.header.frame_id, edge.child_frame_id) == \
        ('camera_link', 'camera_depth_optical_frame')
    q = edge.transform.rotation
    assert (q.x, q.y, q.z, q.w) == pytest.approx((-0.5, 0.5, -0.5, 0.5), abs=1e-12)
    assert got[bag.TF_TOPIC] == []
