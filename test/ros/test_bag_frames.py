"""``opendlign bag from-scenes --mode frames``: a bag as a robot records it (contract E)."""

import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2
import yaml

from opendlign_core import scannet
from opendlign_core.cli import build_parser, run
from opendlign_ros import bag, conversions
from opendlign_ros.bag_cli import register_bag_commands

pytestmark = pytest.mark.ros

H, W = 12, 16
K = np.array([[10.0, 0.0, 7.0], [0.0, 10.0, 5.0], [0.0, 0.0, 1.0]])
#: Camera -> scan: the camera looks along scan +x (optical x right = scan -y, y down = scan -z).
POSE = np.array([[0.0, 0.0, 1.0, 0.5], [-1.0, 0.0, 0.0, 1.0], [0.0, -1.0, 0.0, 1.2],
                 [0.0, 0.0, 0.0, 1.0]])
#: Scan -> scene (axis alignment): 90 degrees about z, then (1, -2, 0).
ALIGN = np.array([[0.0, -1.0, 0.0, 1.0], [1.0, 0.0, 0.0, -2.0], [0.0, 0.0, 1.0, 0.0],
                  [0.0, 0.0, 0.0, 1.0]])
FLOOR, CHAIR, TABLE = 0, 1, 2


def _frame(chair_cols):
    """Depth (m) and instance images: a wall at 3 m, the chair at 2.0/2.4 m, the table at 2.5 m."""
    depth = np.full((H, W), 3.0)
    inst = np.full((H, W), FLOOR)
    depth[11, :] = 0.0                          # no return on the bottom row
    inst[11, :] = -1
    depth[2:6, chair_cols] = 2.0                # chair rows 2..5 at 2.0 m, rows 6..9 at 2.4 m
    depth[6:10, chair_cols] = 2.4
    inst[2:10, chair_cols] = CHAIR
    depth[2:7, 11:15] = 2.5                     # table: 20 pixels, under MIN_BOX_POINTS
    inst[2:7, 11:15] = TABLE
    return depth, inst


def _back_project(depth, pose):
    v, u = np.nonzero(depth > 0)
    z = depth[v, u]
    cam = np.stack([(u - K[0, 2]) * z / K[0, 0], (v - K[1, 2]) * z / K[1, 1], z], axis=1)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def _write_scene(root):
    """One scene with two frames; its mesh is frame 0's points plus more table points (scan)."""
    d0, i0 = _frame(slice(2, 10))               # sees the whole chair (64 pixels)
    d1, i1 = _frame(slice(2, 5))                # sees 24 chair pixels: no box
    pose1 = POSE.copy()
    pose1[2, 3] += 1.0                          # 1 m higher
    scan0 = _back_project(d0, POSE)
    ids0 = i0[d0 > 0]
    rng = np.random.default_rng(0)
    table = scan0[ids0 == TABLE].mean(axis=0) + rng.uniform(-0.2, 0.2, (60, 3))
    points = np.concatenate([scan0, table])
    ids = np.r_[ids0, np.full(60, TABLE)]
    root.mkdir(parents=True, exist_ok=True)
    scannet.write_label_map(root / scannet.LABEL_MAP_NAME, {'floor': 2, 'chair': 5, 'table': 7})
    folder = root / 'scene0000_00'
    scannet.write_scannet_scene(folder, points, ids, {FLOOR: 'floor', CHAIR: 'chair',
                                                      TABLE: 'table'}, axis_alignment=ALIGN)
    scannet.write_frames(folder, [d0, d1], [POSE, pose1], K, [i0, i1])
    return [(d0, POSE), (d1, pose1)]


def _read(path, topic, cls):
    return [(t, deserialize_message(data, cls)) for _, _, t, data in bag.read_bag(path, [topic])]


def _tf_at(transforms, parent, child, stamp_ns):
    [tf] = [t for t in transforms if (t.parent, t.child, t.stamp_ns) == (parent, child, stamp_ns)]
    return tf.matrix


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_from_scenes_frames_writes_a_robot_bag(tmp_path, capsys, storage):
    frames = _write_scene(tmp_path / 'scenes')
    out = tmp_path / 'frames.bag'
    parser = build_parser([register_bag_commands])
    assert run(parser, ['bag', 'from-scenes', str(tmp_path / 'scenes'), '--out', str(out),
                        '--mode', 'frames', '--storage', storage]) == 0
    valid = H * W - W                           # the bottom row has no depth
    assert capsys.readouterr().out.startswith(
        f'wrote 2 clouds ({2 * valid} points, 1 ground-truth boxes)')
    # Default frames rate: 5 clouds per second; /tf at 4 samples per cloud period (50 ms), one
    # more a quarter period before the first and after the last cloud.
    assert bag.bag_topics(out) == {bag.CLOUD_TOPIC: (bag.CLOUD_TYPE, 2),
                                   bag.GROUND_TRUTH_TOPIC: (bag.DETECTIONS_TYPE, 2),
                                   bag.GT_OBJECTS_TOPIC: (bag.DETECTIONS_TYPE, 1),
                                   bag.TF_TOPIC: (bag.TF_TYPE, 7),
                                   bag.TF_STATIC_TOPIC: (bag.TF_TYPE, 1)}

    # /tf_static is offered latched (KEEP_LAST 1, RELIABLE, TRANSIENT_LOCAL) in the metadata.
    meta = yaml.safe_load((out / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    topics = {t['topic_metadata']['name']: t['topic_metadata']
              for t in meta['topics_with_message_count']}
    [qos] = topics['/tf_static']['offered_qos_profiles']
    assert (qos['history'], qos['depth'], qos['reliability'], qos['durability']) == \
        ('keep_last', 1, 'reliable', 'transient_local')
    assert topics['/tf_static']['type_description_hash'] == \
        'RIHS01_e369d0f05a23ae52508854b66f6aa0437f3449d652e8cbf22d5abe85d020f087'

    # Written in log-time order.
    times = [t for _, _, t, _ in bag.read_bag(out)]
    assert times == sorted(times) and times[0] == 950_000_000

    # Clouds: in the optical frame, not pre-transformed; pixel (u=7, v=5) at 2.0 m is (0, 0, 2).
    clouds = _read(out, bag.CLOUD_TOPIC, PointCloud2)
    assert [t for t, _ in clouds] == [bag.START_NS, bag.START_NS + 2e8]
    assert [bag.stamp_key(m.header.stamp) for _, m in clouds] == ['1.000000000', '1.200000000']
    assert {m.header.frame_id for _, m in clouds} == {'camera_depth_optical_frame'}
    pts0 = conversions.cloud_from_msg(clouds[0][1])
    assert pts0.shape == (valid, 3)
    assert np.abs(pts0 - [0.0, 0.0, 2.0]).sum(axis=1).min() < 1e-6

    # TF: every message logged at its header stamp; each cloud stamp has an exact sample and
    # samples before and after it.
    tf_log = [(t, bag.stamp_ns(m.transforms[0].header.stamp)) for _, _, t, m in (
        (topic, mt, t, bag.deserialize(d, mt)) for topic, mt, t, d in bag.read_bag(
            out, [bag.TF_TOPIC]))]
    assert [t for t, _ in tf_log] == [s for _, s in tf_log] == [
        950_000_000, 1_000_000_000, 1_050_000_000, 1_100_000_000, 1_150_000_000, 1_200_000_000,
        1_250_000_000]
    transforms = bag.read_transforms(out)
    [static] = [t for t in transforms if t.static]
    assert (static.parent, static.child) == ('camera_link', 'camera_depth_optical_frame')
    [(_, msgtype, _, data)] = list(bag.read_bag(out, [bag.TF_STATIC_TOPIC]))
    [written] = bag.deserialize(data, msgtype).transforms
    q = written.transform.rotation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [-0.5, 0.5, -0.5, 0.5], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_quat([-0.5, 0.5, -0.5, 0.5]).as_matrix(),
                               static.matrix[:3, :3], atol=1e-12)
    np.testing.assert_allclose(static.matrix[:3, 3], 0.0)
    dynamic = [t for t in transforms if not t.static]
    assert {(t.parent, t.child) for t in dynamic} == {('map', 'camera_link')}
    for _, msg in clouds:
        stamp = bag.stamp_ns(msg.header.stamp)
        stamps = [t.stamp_ns for t in dynamic]
        assert min(stamps) < stamp < max(stamps) and stamp in stamps

    # Hand-computed: frame 0's camera_link sits at (0, -1.5, 1.2) in map, yawed +90 degrees
    # (x forward = map +y, z up); frame 1's is 1 m higher; halfway (1.1 s) is 0.5 m higher.
    yaw90 = Rotation.from_euler('z', 90, degrees=True).as_matrix()
    for stamp, z in ((1_000_000_000, 1.2), (1_100_000_000, 1.7), (1_200_000_000, 2.2)):
        m = _tf_at(dynamic, 'map', 'camera_link', stamp)
        np.testing.assert_allclose(m[:3, 3], [0.0, -1.5, z], atol=1e-9)
        np.testing.assert_allclose(m[:3, :3], yaw90, atol=1e-9)

    # map <- camera_link (at the cloud stamp) <- optical (static) maps each cloud onto the
    # scene's points.
    for (_, msg), (depth, pose) in zip(clouds, frames):
        t = _tf_at(dynamic, 'map', 'camera_link', bag.stamp_ns(msg.header.stamp)) @ static.matrix
        pts = conversions.cloud_from_msg(msg).astype(np.float64)
        np.testing.assert_allclose(pts @ t[:3, :3].T + t[:3, 3],
                                   _back_project(depth, ALIGN @ pose), atol=1e-5)

    # Ground truth in map. Per frame: frame 0 sees the chair (64 pixels) -> its box,
    # hand-computed from the pixel extents: x in [-1.2, 0.48], y in [0.5, 0.9], z in
    # [0.24, 1.8]. The table (20 pixels) is under MIN_BOX_POINTS in both frames; frame 1 sees
    # 24 chair pixels: no box.
    gt_msgs = [bag.deserialize(d, mt) for _, mt, _, d in bag.read_bag(
        out, [bag.GROUND_TRUTH_TOPIC, bag.GT_OBJECTS_TOPIC])]
    assert {m.header.frame_id for m in gt_msgs} == {'map'}
    gts = bag.read_ground_truth(out)
    assert [len(gts[k]) for k in ('1.000000000', '1.200000000')] == [1, 0]
    [chair] = gts['1.000000000']
    assert chair.label == 'chair' and chair.box.yaw == 0.0
    np.testing.assert_allclose(chair.box.center, [-0.36, 0.7, 1.02], atol=1e-5)
    np.testing.assert_allclose(chair.box.size, [1.68, 0.4, 1.56], atol=1e-5)
    # Per scene: every object, as in the scene-mode bag; frame 0 sees the whole chair, so the
    # scene's chair box is frame 0's.
    [(key, objects)] = bag.read_ground_truth(out, bag.GT_OBJECTS_TOPIC).items()
    assert key == '1.000000000'
    scene_bag = tmp_path / 'scene.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], scene_bag)
    [scene_gt] = bag.read_ground_truth(scene_bag).values()
    assert sorted(g.label for g in objects) == sorted(g.label for g in scene_gt) == \
        ['chair', 'table']
    for got, want in zip(sorted(objects), sorted(scene_gt)):
        np.testing.assert_allclose(got.box.center, want.box.center, atol=1e-9)
        np.testing.assert_allclose(got.box.size, want.box.size, atol=1e-9)
    np.testing.assert_allclose(sorted(objects)[0].box.center, chair.box.center, atol=1e-5)
    assert bag.TF_TOPIC not in bag.bag_topics(scene_bag)


def test_from_scenes_frames_spreads_scenes_apart_in_the_fixed_frame(tmp_path):
    _write_scene(tmp_path / 'a')
    _write_scene(tmp_path / 'b')
    out = tmp_path / 'two.bag'
    summary = bag.bag_from_scenes([tmp_path / 'a', tmp_path / 'b'], out, mode='frames',
                                  frame_id='/odom')
    assert (summary.clouds, summary.boxes, summary.transforms) == (4, 2, 14)
    dynamic = [t for t in bag.read_transforms(out) if not t.static]
    assert {(t.parent, t.child) for t in dynamic} == {('odom', 'camera_link')}
    # Scene b (clouds at 1.4 and 1.6 s) is scene a moved 100 m along x.
    np.testing.assert_allclose(_tf_at(dynamic, 'odom', 'camera_link', 1_400_000_000)[:3, 3],
                               [100.0, -1.5, 1.2], atol=1e-9)
    assert [t.stamp_ns for t in dynamic][6:8] == [1_250_000_000, 1_350_000_000]
    objects = bag.read_ground_truth(out, bag.GT_OBJECTS_TOPIC)
    assert sorted(objects) == ['1.000000000', '1.400000000']
    for a, b in zip(sorted(objects['1.000000000']), sorted(objects['1.400000000'])):
        np.testing.assert_allclose(b.box.center - a.box.center, [bag.SCENE_SPACING, 0, 0],
                                   atol=1e-9)
    [chair_b] = bag.read_ground_truth(out)['1.400000000']
    np.testing.assert_allclose(chair_b.box.center, [99.64, 0.7, 1.02], atol=1e-5)


def test_from_scenes_frames_step_rate_and_bad_arguments(tmp_path):
    _write_scene(tmp_path / 'scenes')
    summary = bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'step.bag', mode='frames',
                                  rate=2.0, frame_step=2, storage='sqlite3')
    assert (summary.clouds, summary.boxes, summary.points) == (1, 1, H * W - W)
    # One cloud at 1 s; /tf at 0.875 s (a quarter period before), 1 s and 1.125 s.
    assert [(topic, t) for topic, _, t, _ in bag.read_bag(tmp_path / 'step.bag')
            if topic in (bag.TF_TOPIC, bag.CLOUD_TOPIC)] == [
        (bag.TF_TOPIC, 875_000_000), (bag.TF_TOPIC, bag.START_NS),
        (bag.CLOUD_TOPIC, bag.START_NS), (bag.TF_TOPIC, 1_125_000_000)]
    with pytest.raises(ValueError, match='frame_step must be >= 1, got 0'):
        bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'x.bag', mode='frames',
                            frame_step=0)
    with pytest.raises(ValueError, match="frame_id must be a non-empty fixed frame other than "
                                         "'camera_link'"):
        bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'x.bag', mode='frames',
                            frame_id='camera_link')
    scannet.write_scannet_scene(tmp_path / 'bare' / 'scene0001_00', np.eye(3), np.full(3, -1),
                                {})
    with pytest.raises(FileNotFoundError, match='intrinsic_depth.txt not found'):
        bag.bag_from_scenes([tmp_path / 'bare'], tmp_path / 'y.bag', mode='frames')
    store = bag.typestore()
    with pytest.raises(ValueError, match='must be a finite'):
        bag.tf_message(store, [(0, 'a', 'b', np.eye(3))])
    with pytest.raises(ValueError, match='not a rotation'):
        bag.tf_message(store, [(0, 'a', 'b', np.diag([1.0, 1.0, -1.0, 1.0]))])
    with pytest.raises(ValueError, match=r'fraction must be in \[0, 1\], got 1.5'):
        bag.interpolate_pose(np.eye(4), np.eye(4), 1.5)


def test_fixed_frame_is_the_ground_truth_frame_or_the_tf_root(tmp_path):
    _write_scene(tmp_path / 'scenes')
    bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'room.bag', mode='frames',
                        frame_id='room')
    assert bag.fixed_frame(tmp_path / 'room.bag') == 'room'
    # No ground truth: the root of the transform tree (odom -> base_link -> camera_link).
    with bag.BagWriter(tmp_path / 'robot.bag') as writer:
        writer.write(bag.TF_TOPIC, bag.TF_TYPE, 1, bag.tf_message(
            writer.store, [(1, 'odom', 'base_link', np.eye(4)),
                           (1, 'base_link', 'camera_link', np.eye(4))]))
    assert bag.fixed_frame(tmp_path / 'robot.bag') == 'odom'
