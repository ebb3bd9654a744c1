"""``opendlign bag from-scenes --mode frames``: per-frame clouds and poses in the scene frame."""

from geometry_msgs.msg import PoseStamped
import numpy as np
import pytest
from rclpy.serialization import deserialize_message
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import PointCloud2

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


def test_from_scenes_frames_writes_clouds_boxes_and_poses_in_the_scene_frame(tmp_path, capsys):
    frames = _write_scene(tmp_path / 'scenes')
    out = tmp_path / 'frames.bag'
    parser = build_parser([register_bag_commands])
    assert run(parser, ['bag', 'from-scenes', str(tmp_path / 'scenes'), '--out', str(out),
                        '--mode', 'frames', '--frame-id', 'room']) == 0
    valid = H * W - W                           # the bottom row has no depth
    assert capsys.readouterr().out.startswith(
        f'wrote 2 clouds ({2 * valid} points, 1 ground-truth boxes)')
    assert bag.bag_topics(out) == {bag.CLOUD_TOPIC: (bag.CLOUD_TYPE, 2),
                                   bag.GROUND_TRUTH_TOPIC: (bag.DETECTIONS_TYPE, 2),
                                   bag.SENSOR_POSE_TOPIC: (bag.POSE_TYPE, 2)}
    clouds = _read(out, bag.CLOUD_TOPIC, PointCloud2)
    poses = _read(out, bag.SENSOR_POSE_TOPIC, PoseStamped)
    # Default frames rate: 5 clouds per second of bag time, stamps equal to bag times.
    assert [t for t, _ in clouds] == [t for t, _ in poses] == [bag.START_NS, bag.START_NS + 2e8]
    assert [bag.stamp_key(m.header.stamp) for _, m in clouds] == ['1.000000000', '1.200000000']
    assert {m.header.frame_id for _, m in clouds + poses} == {'room'}

    # Hand-computed: pixel (u=7, v=5) at 2.0 m is (0, 0, 2) in the camera, (2.5, 1.0, 1.2) in
    # the scan, (0.0, 0.5, 1.2) in the scene; pixel (2, 2) gives (-1.0, 0.5, 1.8).
    pts0 = conversions.cloud_from_msg(clouds[0][1])
    assert pts0.shape == (valid, 3)
    assert np.abs(pts0 - [0.0, 0.5, 1.2]).sum(axis=1).min() < 1e-6
    assert np.abs(pts0 - [-1.0, 0.5, 1.8]).sum(axis=1).min() < 1e-6
    for (_, msg), (depth, pose) in zip(clouds, frames):
        scene_pts = _back_project(depth, ALIGN @ pose)
        np.testing.assert_allclose(conversions.cloud_from_msg(msg), scene_pts, atol=1e-5)

    # Poses: camera -> scene. Frame 0's camera sits at (0, -1.5, 1.2) looking along scene +y.
    for (_, msg), (_, pose) in zip(poses, frames):
        expected = ALIGN @ pose
        p, q = msg.pose.position, msg.pose.orientation
        np.testing.assert_allclose([p.x, p.y, p.z], expected[:3, 3], atol=1e-12)
        assert q.w >= 0
        np.testing.assert_allclose(Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix(),
                                   expected[:3, :3], atol=1e-12)
    np.testing.assert_allclose([poses[0][1].pose.position.x, poses[0][1].pose.position.y,
                                poses[0][1].pose.position.z], [0.0, -1.5, 1.2], atol=1e-12)
    np.testing.assert_allclose(Rotation.from_quat([
        getattr(poses[0][1].pose.orientation, k) for k in 'xyzw']).apply([0, 0, 1]), [0, 1, 0],
        atol=1e-12)

    # Ground truth per frame: frame 0 sees the chair (64 pixels) -> its box, hand-computed from
    # the pixel extents: x in [-1.2, 0.48], y in [0.5, 0.9], z in [0.24, 1.8]. The table
    # (20 pixels) is under MIN_BOX_POINTS in both frames; frame 1 sees 24 chair pixels: no box.
    gts = bag.read_ground_truth(out)
    assert [len(gts[k]) for k in ('1.000000000', '1.200000000')] == [1, 0]
    [chair] = gts['1.000000000']
    assert chair.label == 'chair' and chair.box.yaw == 0.0
    np.testing.assert_allclose(chair.box.center, [-0.36, 0.7, 1.02], atol=1e-5)
    np.testing.assert_allclose(chair.box.size, [1.68, 0.4, 1.56], atol=1e-5)
    # Frame 0 sees the whole chair, so its box is the scene-mode (whole mesh) chair box.
    scene_bag = tmp_path / 'scene.bag'
    bag.bag_from_scenes([tmp_path / 'scenes'], scene_bag)
    [scene_gt] = bag.read_ground_truth(scene_bag).values()
    assert sorted(g.label for g in scene_gt) == ['chair', 'table']
    scene_chair = next(g for g in scene_gt if g.label == 'chair')
    np.testing.assert_allclose(scene_chair.box.center, chair.box.center, atol=1e-5)
    np.testing.assert_allclose(scene_chair.box.size, chair.box.size, atol=1e-5)
    assert bag.SENSOR_POSE_TOPIC not in bag.bag_topics(scene_bag)


def test_from_scenes_frames_step_rate_and_missing_frames(tmp_path):
    _write_scene(tmp_path / 'scenes')
    summary = bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'step.bag', mode='frames',
                                  rate=2.0, frame_step=2, storage='sqlite3')
    assert (summary.clouds, summary.boxes, summary.points) == (1, 1, H * W - W)
    assert [t for _, _, t, _ in bag.read_bag(tmp_path / 'step.bag')] == [bag.START_NS] * 3
    with pytest.raises(ValueError, match='frame_step must be >= 1, got 0'):
        bag.bag_from_scenes([tmp_path / 'scenes'], tmp_path / 'x.bag', mode='frames',
                            frame_step=0)
    scannet.write_scannet_scene(tmp_path / 'bare' / 'scene0001_00', np.eye(3), np.full(3, -1),
                                {})
    with pytest.raises(FileNotFoundError, match='intrinsic_depth.txt not found'):
        bag.bag_from_scenes([tmp_path / 'bare'], tmp_path / 'y.bag', mode='frames')
    with pytest.raises(ValueError, match='pose must be a finite'):
        bag.pose_to_msg(np.eye(3), None)
    with pytest.raises(ValueError, match='not a rotation'):
        bag.pose_to_msg(np.diag([1.0, 1.0, -1.0, 1.0]), None)
