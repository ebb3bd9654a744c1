"""Node tests of the persistent object map wiring: objects, objects_markers, ~/clear_objects."""

import threading
import time

from builtin_interfaces.msg import Time
import numpy as np
import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from ros_harness import TINY, unique_domain_id, wait_until
from scene_clouds import scene_points
from scipy.spatial.transform import Rotation
from std_msgs.msg import Header
from std_srvs.srv import Trigger
from vision_msgs.msg import Detection3DArray
from visualization_msgs.msg import MarkerArray

from opendlign_ros import conversions
from opendlign_ros.node import DetectorNode

pytestmark = pytest.mark.ros
pytest.importorskip('opendlign_core.object_map')
pytest.importorskip('opendlign_core.detection')

#: The scene's two boxes (scene_clouds.scene_points): centres in the cloud's z-up frame.
BOX_CENTRES = np.array([(-0.6, 0.0, 0.3), (0.7, 0.3, 0.4)])


class ObjectsRig:
    """The real node (tiny random model) and a probe recording objects."""

    def __init__(self, overrides):
        self.context = Context()
        rclpy.init(context=self.context, domain_id=unique_domain_id())
        self.node = DetectorNode(context=self.context, parameter_overrides=[
            Parameter(k, value=v) for k, v in overrides.items()])
        self.probe = rclpy.create_node('probe', context=self.context)
        self.lock = threading.Lock()
        self.objects, self.markers = [], []
        self.probe.create_subscription(Detection3DArray, 'objects', self._keep(self.objects), 50)
        self.probe.create_subscription(MarkerArray, 'objects_markers', self._keep(self.markers),
                                       50)
        self.clear = self.probe.create_client(Trigger, '/opendlign/clear_objects')
        self.consolidate = self.probe.create_client(Trigger, '/opendlign/consolidate_objects')
        self.executor = MultiThreadedExecutor(num_threads=6, context=self.context)
        self.executor.add_node(self.node)
        self.executor.add_node(self.probe)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _keep(self, store):
        def keep(msg):
            with self.lock:
                store.append(msg)
        return keep

    def feed(self, points, sec, frame='room'):
        """Process one cloud and return the objects message it produced."""
        count = len(self.objects)
        self.node._on_cloud(conversions.cloud_to_msg(
            points, Header(stamp=Time(sec=sec), frame_id=frame)))
        wait_until(lambda: len(self.objects) > count, 60)
        with self.lock:
            return self.objects[-1]

    def close(self):
        self.executor.shutdown()
        self.spinner.join(5)
        self.probe.destroy_node()
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)




@pytest.fixture
def rig():
    r = ObjectsRig({**TINY, 'up_axis': 'z'})
    yield r
    r.close()


def _centres(msg):
    return np.array([(d.bbox.center.position.x, d.bbox.center.position.y,
                      d.bbox.center.position.z) for d in msg.detections])


def _consolidate(rig):
    future = rig.consolidate.call_async(Trigger.Request())
    return wait_until(lambda: future.done() and future.result(), 10)


def test_objects_keep_their_ids_over_frames_and_clear_empties_the_map(rig):
    points = scene_points(0)
    assert rig.consolidate.wait_for_service(timeout_sec=10)
    response = _consolidate(rig)
    assert not response.success and response.message == (
        'nothing to consolidate: no cloud processed yet')
    history = [rig.feed(points, sec) for sec in range(1, 6)]
    last = history[-1]
    assert last.header.frame_id == 'room' and last.header.stamp == Time(sec=5)
    assert len(last.detections) == 2
    ids = sorted(d.id for d in last.detections)
    assert len(set(ids)) == 2 and all(ids)
    for centre in BOX_CENTRES:
        assert np.min(np.linalg.norm(_centres(last) - centre, axis=1)) < 0.05
    # The same objects, under the same ids, in every message once confirmed.
    confirmed = [m for m in history if m.detections]
    assert len(confirmed) >= 2
    assert all(sorted(d.id for d in m.detections) == ids for m in confirmed)
    for det in last.detections:
        labels = [r.hypothesis.class_id for r in det.results]
        scores = [r.hypothesis.score for r in det.results]
        assert set(labels) <= set(TINY['labels']) and scores == sorted(scores, reverse=True)
        assert det.header.frame_id == 'room'
    markers = wait_until(lambda: rig.markers)[-1].markers
    assert markers[0].action == markers[0].DELETEALL
    assert {m.text.rsplit(' ', 1)[-1] for m in markers if m.ns == 'labels'} == {
        f'[{i}]' for i in ids}
    assert len(rig.node.object_map) == 2
    # A label change re-scores the map's objects at once (no new cloud), keeping their ids.
    count = len(rig.objects)
    assert rig.node.set_parameters([Parameter('labels', value=['lamp', 'sofa'])])[0].successful
    relabelled = wait_until(lambda: len(rig.objects) > count and rig.objects[-1], 60)
    assert sorted(d.id for d in relabelled.detections) == ids
    for det in relabelled.detections:
        assert {r.hypothesis.class_id for r in det.results} == {'lamp', 'sofa'}

    # Consolidation: scene-mode detection on the map's fused cloud keeps the two objects and
    # their ids, and publishes the rebuilt map.
    count = len(rig.objects)
    future = rig.consolidate.call_async(Trigger.Request())
    response = wait_until(lambda: future.done() and future.result(), 10)
    assert response.success and response.message.startswith('consolidation queued')
    rebuilt = wait_until(lambda: len(rig.objects) > count and rig.objects[-1], 60)
    assert sorted(d.id for d in rebuilt.detections) == ids
    for centre in BOX_CENTRES:
        assert np.min(np.linalg.norm(_centres(rebuilt) - centre, axis=1)) < 0.05

    assert rig.clear.wait_for_service(timeout_sec=10)
    future = rig.clear.call_async(Trigger.Request())
    response = wait_until(lambda: future.done() and future.result(), 10)
    assert response.success and response.message == 'cleared 2 objects (2 confirmed)'
    assert len(rig.node.object_map) == 0
    wait_until(lambda: rig.objects[-1].detections == [])
    # Ids are never reused after a clear.
    again = [rig.feed(points, sec) for sec in range(6, 11)][-1]
    assert len(again.detections) == 2 and not set(d.id for d in again.detections) & set(ids)


def test_objects_of_a_y_down_cloud_are_published_in_its_frame():
    rig = ObjectsRig({**TINY, 'up_axis': '-y'})
    try:
        # The scene seen in a y-down frame: -y up maps (x, y, z) to (x, z, -y), so the cloud
        # holds (x, -z, y) of each z-up point.
        scene = scene_points(0)
        y_down = np.column_stack([scene[:, 0], -scene[:, 2], scene[:, 1]])
        last = [rig.feed(y_down, sec, frame='camera_optical') for sec in range(1, 5)][-1]
        assert last.header.frame_id == 'camera_optical' and len(last.detections) == 2
        expected = np.column_stack([BOX_CENTRES[:, 0], -BOX_CENTRES[:, 2], BOX_CENTRES[:, 1]])
        for centre in expected:
            assert np.min(np.linalg.norm(_centres(last) - centre, axis=1)) < 0.05
        # The objects' up axis is the frame's -y.
        for det in last.detections:
            q = det.bbox.center.orientation
            np.testing.assert_allclose(
                Rotation.from_quat([q.x, q.y, q.z, q.w]).as_matrix()[:, 2], (0, -1, 0),
                atol=1e-9)
        # Consolidation detects on the fused cloud, which the map keeps z-up: still the same
        # two boxes in the cloud's frame.
        count = len(rig.objects)
        future = rig.consolidate.call_async(Trigger.Request())
        assert wait_until(lambda: future.done() and future.result(), 10).success
        rebuilt = wait_until(lambda: len(rig.objects) > count and rig.objects[-1], 60)
        assert rebuilt.header.frame_id == 'camera_optical' and len(rebuilt.detections) == 2
        for centre in expected:
            assert np.min(np.linalg.norm(_centres(rebuilt) - centre, axis=1)) < 0.05
    finally:
        rig.close()


def test_a_cloud_in_another_frame_restarts_the_map_in_that_frame(rig):
    points = scene_points(0)
    first = [rig.feed(points, sec) for sec in range(1, 4)][-1]
    assert first.header.frame_id == 'room' and len(first.detections) == 2
    # Without target_frame the map lives in the clouds' frame; numbers from 'room' must never be
    # published under 'lidar', so the map starts again there.
    moved = rig.feed(points, 4, frame='lidar')
    assert moved.header.frame_id == 'lidar' and moved.detections == []
    again = rig.feed(points, 5, frame='lidar')
    assert len(again.detections) == 2
    assert not {d.id for d in again.detections} & {d.id for d in first.detections}


def test_consolidation_is_refused_without_a_fused_cloud():
    rig = ObjectsRig({**TINY, 'up_axis': 'z', 'object_map.fused_points_per_frame': 0})
    try:
        rig.feed(scene_points(0), 1)
        assert rig.consolidate.wait_for_service(timeout_sec=10)
        response = _consolidate(rig)
        assert not response.success and 'fused_points_per_frame is 0' in response.message
    finally:
        rig.close()


def test_clear_drops_queued_map_work_and_never_waits_for_the_map_thread(rig):
    # The map thread is held busy (a gate), with a consolidation and a cloud's map update
    # queued behind it: ~/clear_objects answers without waiting for them, and the queued
    # work, which belongs to the old map, is dropped instead of bringing its objects back.
    points = scene_points(0)
    ids = sorted(d.id for d in [rig.feed(points, sec) for sec in range(1, 4)][-1].detections)
    assert len(ids) == 2
    gate = threading.Event()
    rig.node._map_worker.submit(gate.wait, 30)
    assert _consolidate(rig).success
    processed = rig.node._counters.processed
    rig.node._on_cloud(conversions.cloud_to_msg(points, Header(stamp=Time(sec=4),
                                                               frame_id='room')))
    wait_until(lambda: rig.node._counters.processed > processed, 60)
    future = rig.clear.call_async(Trigger.Request())
    try:
        response = wait_until(lambda: future.done() and future.result(), 3)
    finally:
        gate.set()
    assert response.success and response.message == 'cleared 2 objects (2 confirmed)'
    rig.node.wait_for_object_map(timeout=30)
    rig.node._map_worker.submit(lambda: None).result(timeout=60)   # the consolidation's turn
    assert len(rig.node.object_map) == 0
    assert rig.node.object_map.fused_cloud().shape == (0, 3)
    # The next cloud starts the new map, under new ids.
    again = [rig.feed(points, sec) for sec in range(5, 8)][-1]
    assert len(again.detections) == 2 and not set(d.id for d in again.detections) & set(ids)


def test_no_objects_message_of_the_old_map_follows_the_clear(rig):
    # The map thread is slowed between building a cloud's objects message and publishing it
    # (fault injection: 0.5 s); a clear in that window must still publish last.
    points = scene_points(0)
    for sec in range(1, 4):
        rig.feed(points, sec)
    in_publish = threading.Event()
    publish = rig.node._publish

    def slow_publish(publisher, msg):
        if (publisher is rig.node._objects_pub
                and threading.current_thread().name.startswith('object_map')):
            in_publish.set()
            time.sleep(0.5)
        publish(publisher, msg)

    rig.node._publish = slow_publish
    count = len(rig.objects)
    rig.node._on_cloud(conversions.cloud_to_msg(points, Header(stamp=Time(sec=4),
                                                               frame_id='room')))
    assert in_publish.wait(60)
    future = rig.clear.call_async(Trigger.Request())
    response = wait_until(lambda: future.done() and future.result(), 10)
    assert response.success and response.message == 'cleared 2 objects (2 confirmed)'
    wait_until(lambda: len(rig.objects) >= count + 2, 10)
    rig.node.wait_for_object_map(timeout=30)
    with rig.lock:
        stamps = [m.header.stamp.sec for m in rig.objects[count:]]
        last = rig.objects[-1]
    assert stamps[0] == 4 and len(stamps) == 2      # the cloud's message, then the clear's
    assert last.detections == []
    # A consolidation asked for after the clear, before any new cloud, publishes nothing
    # (no stale stamp of the old map).
    assert _consolidate(rig).success
    rig.node._map_worker.submit(lambda: None).result(timeout=60)
    assert len(rig.objects) == count + 2


def test_a_burst_of_consolidation_requests_runs_one_consolidation(rig):
    points = scene_points(0)
    for sec in range(1, 4):
        rig.feed(points, sec)
    gate = threading.Event()
    rig.node._map_worker.submit(gate.wait, 30)
    try:
        messages = [_consolidate(rig).message for _ in range(5)]
    finally:
        gate.set()
    assert messages[0].startswith('consolidation queued')
    assert all(m.startswith('a consolidation is already queued') for m in messages[1:])
    rig.node._map_worker.submit(lambda: None).result(timeout=60)
    assert rig.node.object_map.stats['consolidated'] == 1
    # Once it has started, a new request queues a new run.
    assert _consolidate(rig).message.startswith('consolidation queued')
    rig.node._map_worker.submit(lambda: None).result(timeout=60)
    assert rig.node.object_map.stats['consolidated'] == 2
