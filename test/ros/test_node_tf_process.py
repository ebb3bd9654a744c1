"""Integration: the real node process with target_frame, a camera cloud and a robot's /tf."""

from builtin_interfaces.msg import Time
from geometry_msgs.msg import TransformStamped
import numpy as np
import pytest
from ros_harness import TINY, RosClient, assert_clean_stop, unique_domain_id
from scene_clouds import scene_points
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from tf2_msgs.msg import TFMessage
from vision_msgs.msg import Detection3DArray

from opendlign_core.transforms import invert_transform, matrix_from_pose, transform_points
from opendlign_ros import conversions
from opendlign_ros.node_process import NodeProcess, ros_environment
from opendlign_ros.tf_listener import TF_QOS, TF_STATIC_QOS

pytestmark = pytest.mark.ros
pytest.importorskip('opendlign_core.detection')

#: The scene's two boxes (scene_clouds.scene_points), z-up map frame: centres.
BOX_CENTRES = np.array([(-0.6, 0.0, 0.3), (0.7, 0.3, 0.4)])
#: camera_link -> camera_depth_optical_frame, rpy (-pi/2, 0, -pi/2).
OPTICAL = (-0.5, 0.5, -0.5, 0.5)


def _ts(parent, child, stamp, matrix):
    ts = TransformStamped()
    ts.header.frame_id, ts.child_frame_id, ts.header.stamp = parent, child, stamp
    q = Rotation.from_matrix(matrix[:3, :3]).as_quat()
    t = ts.transform
    t.translation.x, t.translation.y, t.translation.z = (float(v) for v in matrix[:3, 3])
    t.rotation.x, t.rotation.y, t.rotation.z, t.rotation.w = (float(v) for v in q)
    return ts


def test_camera_cloud_is_detected_in_the_map_frame(tmp_path):
    domain = unique_domain_id()
    overrides = {**TINY, 'target_frame': 'map', 'transform_timeout': 2.0}
    # A camera 2 m behind the scene's centre, 1.2 m up, looking along map +y, yawed 90 deg.
    map_link = matrix_from_pose((0.0, -2.0, 1.2), Rotation.from_euler('z', 90, degrees=True)
                                .as_quat())
    link_optical = matrix_from_pose((0, 0, 0), OPTICAL)
    scene = scene_points(0)
    optical = transform_points(scene, invert_transform(map_link @ link_optical))
    stamp = Time(sec=50, nanosec=250_000_000)
    with open(tmp_path / 'node.log', 'w') as log, \
            NodeProcess(ros_environment(domain), overrides=overrides, log=log) as process:
        client = RosClient(domain)
        try:
            objects = []
            client.node.create_subscription(Detection3DArray, 'objects', objects.append, 10)
            tf_pub = client.node.create_publisher(TFMessage, '/tf', TF_QOS)
            static_pub = client.node.create_publisher(TFMessage, '/tf_static', TF_STATIC_QOS)
            client.wait_for_node(process=process)
            static_pub.publish(TFMessage(transforms=[
                _ts('camera_link', 'camera_depth_optical_frame', Time(), link_optical)]))
            tf_pub.publish(TFMessage(transforms=[_ts('map', 'camera_link', stamp, map_link)]))
            msg = conversions.cloud_to_msg(
                optical.astype(np.float32),
                Header(stamp=stamp, frame_id='camera_depth_optical_frame'))

            def publish():
                tf_pub.publish(TFMessage(transforms=[_ts('map', 'camera_link', stamp,
                                                         map_link)]))
                client.points_pub.publish(msg)
            start = len(client.detections)
            out = client.spin_until(
                lambda: next((d for d in client.detections[start:] if d.detections), None), 90,
                every=publish, period=1.0)
            assert out.header.frame_id == 'map' and out.header.stamp == stamp
            centres = np.array([(d.bbox.center.position.x, d.bbox.center.position.y,
                                 d.bbox.center.position.z) for d in out.detections])
            # Each scene box is found at its place in the map frame (within 5 cm).
            for centre in BOX_CENTRES:
                assert np.min(np.linalg.norm(centres - centre, axis=1)) < 0.05, centres
            # Boxes stand upright in the map frame: their z axis is map +z.
            for det in out.detections:
                q = det.bbox.center.orientation
                axis = Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 2]
                np.testing.assert_allclose(axis, (0, 0, 1), atol=1e-6)
            # map_update_ms reports the last finished map update (the map runs on its own
            # thread after the detections are out), so it appears from the next cloud on.
            counters = client.spin_until(
                lambda: 'map_update_ms' in client.last_counters() and client.last_counters(),
                60, every=publish, period=1.0)
            assert counters['tf_backend'] == 'opendlign' and counters['target_frame'] == 'map'
            assert float(counters['transform_ms']) >= 0 and float(counters['map_update_ms']) > 0
            # The object map lives in the map frame too (confirmed after two observations).
            mapped = client.spin_until(lambda: next(
                (m for m in objects if len(m.detections) == 2), None), 60, every=publish,
                period=1.0)
            assert mapped.header.frame_id == 'map'
            for centre in BOX_CENTRES:
                got = np.array([(d.bbox.center.position.x, d.bbox.center.position.y,
                                 d.bbox.center.position.z) for d in mapped.detections])
                assert np.min(np.linalg.norm(got - centre, axis=1)) < 0.05, got
        finally:
            client.close()
        assert_clean_stop(process, tmp_path / 'node.log')
