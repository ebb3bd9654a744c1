"""Object map: association, lifetime rules, label fusion and re-scoring, configuration."""

import threading
from types import SimpleNamespace

import numpy as np
import pytest

from opendlign_core.boxes import Box3D, fit_aabb
from opendlign_core.object_map import (
    MapUpdate,
    ObjectMap,
    ObjectMapConfig,
    Observation,
    SensorView,
    observations_from_result,
)


class StubScorer:
    """Scores a label by the view-averaged cosine with its 2-D vector; records batch sizes."""

    def __init__(self):
        self.batches = []

    def classify_features(self, view_features, label_set):
        feats = np.asarray(view_features, dtype=np.float64)
        self.batches.append(len(feats))
        cos = (feats @ np.asarray(label_set.weights, dtype=np.float64).T).mean(axis=1)
        out = []
        for row in cos:
            order = np.argsort(-row, kind='stable')
            out.append(SimpleNamespace(
                label=label_set.labels[order[0]], score=float(row[order[0]]),
                probability=float(row[order[0]]),
                top_k=tuple((label_set.labels[j], float(row[j])) for j in order)))
        return out


def _labels(**vectors):
    return SimpleNamespace(labels=tuple(vectors), weights=np.array(list(vectors.values())))


LABELS = _labels(a=[1.0, 0.0], b=[0.0, 1.0])


def _face(lo, hi, axis, value, step=0.01):
    # Grid of points on an axis-aligned face of a cuboid.
    others = [d for d in range(3) if d != axis]
    u = np.arange(lo[others[0]], hi[others[0]] + 1e-9, step)
    v = np.arange(lo[others[1]], hi[others[1]] + 1e-9, step)
    uu, vv = np.meshgrid(u, v, indexing='ij')
    pts = np.empty((uu.size, 3))
    pts[:, axis] = value
    pts[:, others[0]] = uu.ravel()
    pts[:, others[1]] = vv.ravel()
    return pts


def _cuboid_faces(lo, hi):
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return {'front': _face(lo, hi, 1, lo[1]), 'back': _face(lo, hi, 1, hi[1]),
            'left': _face(lo, hi, 0, lo[0]), 'right': _face(lo, hi, 0, hi[0]),
            'top': _face(lo, hi, 2, hi[2])}


def _obs(points, feature=(1.0, 0.0)):
    pts = np.asarray(points, float)
    return Observation(fit_aabb(pts), pts, np.array([feature, feature], np.float32))


def test_one_object_seen_from_three_poses_keeps_one_id():
    faces = _cuboid_faces([1.0, 1.0, 0.0], [1.5, 1.5, 0.5])
    views = [np.vstack([faces['front'], faces['top']]),   # seen from -y
             np.vstack([faces['right'], faces['top']]),   # from +x
             np.vstack([faces['back'], faces['top']])]    # from +y
    omap = ObjectMap(StubScorer(), LABELS)
    updates = [omap.update([_obs(v)], stamp=float(i)) for i, v in enumerate(views)]
    assert updates[0].created == ('obj_1',)
    assert updates[1] == updates[2] == MapUpdate(matched=('obj_1',))
    (obj,) = omap.objects()
    assert obj.id == 'obj_1' and obj.num_observations == 3 and obj.confirmed
    assert (obj.first_seen, obj.last_seen) == (0.0, 2.0)
    # The box is refit from the accumulated cloud (voxel centroids lie within half a voxel).
    np.testing.assert_allclose(obj.box.center, [1.25, 1.25, 0.25], atol=0.0125)
    np.testing.assert_allclose(obj.box.size, [0.5, 0.5, 0.5], atol=0.025)


def test_two_objects_30cm_apart_stay_two_whatever_their_labels():
    a = _cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4])
    b = _cuboid_faces([1.7, 1.0, 0.0], [2.1, 1.4, 0.4])   # 0.3 m gap along x
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(observation_weight='uniform'))
    first = omap.update([_obs(np.vstack([a['front'], a['top']])),
                         _obs(np.vstack([b['front'], b['top']]), (0.0, 1.0))], 0.0)
    # Same places, labels swapped: association ignores labels.
    second = omap.update([_obs(np.vstack([b['front'], b['right']]), (1.0, 0.0)),
                          _obs(np.vstack([a['front'], a['left']]), (0.0, 1.0))], 1.0)
    assert first.created == ('obj_1', 'obj_2')
    assert sorted(second.matched) == ['obj_1', 'obj_2'] and second.created == ()
    objs = {o.id: o for o in omap.objects()}
    assert len(objs) == 2
    assert objs['obj_1'].box.center[0] < 1.5 < objs['obj_2'].box.center[0]
    # Fused features of each: normalize(mean([1, 0], [0, 1])) = [0.7071, 0.7071].
    for o in objs.values():
        assert o.score == pytest.approx(np.sqrt(0.5), abs=1e-6)


def _wall(x, y_range=(-3, 3), z_range=(-1, 2), step=0.02):
    return _face([x, y_range[0], z_range[0]], [x, y_range[1], z_range[1]], 0, x, step)


def test_sensor_view_visibility_by_hand():
    view = SensorView.from_cloud(_wall(4.0), np.zeros(3))
    pts = np.array([[2.0, 0.0, 0.0],     # in front of the wall: visible
                    [5.0, 0.0, 0.0],     # behind the wall: occluded
                    [4.05, 0.0, 0.0],    # 5 cm behind the measured surface, margin 0.1: visible
                    [-2.0, 0.0, 0.0]])   # no return that way: not in view
    vis = [bool(view.visible(p[None], margin=0.1)[0]) for p in pts]
    assert vis == [True, False, True, False]
    # An object does not occlude itself: its far points share bins with its near points.
    assert view.visible(np.array([[2.0, 0.0, 0.0], [2.5, 0.0, 0.0]]), margin=0.1).all()
    # Two objects in one call with groups: each as if alone. Object 1 (5.0 m, behind the wall)
    # shares a bin with object 0 (2.0 m): as one object the near point would vouch for it.
    grouped = np.array([[2.0, 0.0, 0.0], [5.0, 0.0, 0.0], [4.05, 0.0, 0.0]])
    groups = np.array([0, 1, 0])
    alone = np.zeros(len(grouped), bool)
    for g in (0, 1):
        alone[groups == g] = view.visible(grouped[groups == g], margin=0.1)
    together = view.visible(grouped, margin=0.1, groups=groups)
    assert together.tolist() == alone.tolist() == [True, False, True]
    assert view.visible(grouped, margin=0.1).tolist() == [True, True, True]
    for bad in (groups[:, None], groups.astype(float), -groups, groups[:2]):
        with pytest.raises(ValueError, match='groups'):
            view.visible(grouped, margin=0.1, groups=bad)
    # Invalid depth pixels written as (0, 0, 0) are no returns: they hide nothing.
    zeros = SensorView.from_cloud(np.vstack([_wall(3.0), np.zeros((5, 3))]), np.zeros(3))
    assert zeros.visible(np.array([[2.5, 0.0, 0.0]]), margin=0.1).tolist() == [True]
    with pytest.raises(ValueError, match='sensor_origin_map'):
        SensorView.from_cloud(_wall(4.0), [0.0, np.nan, 0.0])
    with pytest.raises(ValueError, match='points_map'):
        SensorView.from_cloud(np.zeros((3, 2)), np.zeros(3))
    assert not SensorView.from_cloud(np.zeros((0, 3)), np.zeros(3)).visible(pts).any()


def _one_object_map(config=ObjectMapConfig(), stamp=0.0, where=(2.0, 0.0)):
    faces = _cuboid_faces([where[0] - 0.2, where[1] - 0.2, 0.0],
                          [where[0] + 0.2, where[1] + 0.2, 0.4])
    omap = ObjectMap(StubScorer(), LABELS, config)
    omap.update([_obs(np.vstack([faces['left'], faces['top']]))], stamp)
    return omap


def test_object_in_view_but_not_reobserved_is_removed_after_k_frames():
    omap = _one_object_map(ObjectMapConfig(max_missed_in_view=3, min_observations=1))
    # The sensor at the origin sees the wall at x = 4 m through the object's place: the object
    # is in view and unoccluded, yet not observed.
    view = SensorView.from_cloud(_wall(4.0), np.zeros(3))
    assert omap.update([], 1.0, view).removed == ()
    assert omap.update([], 2.0, view).removed == ()
    assert omap.update([], 3.0, view).removed == ('obj_1',)
    assert len(omap) == 0 and omap.stats['removed'] == 1


def test_object_out_of_view_or_occluded_is_kept():
    omap = _one_object_map(ObjectMapConfig(max_missed_in_view=2, min_observations=1))
    behind = SensorView.from_cloud(_wall(-4.0), np.zeros(3))   # looking the other way
    occluded = SensorView.from_cloud(_wall(1.0), np.zeros(3))  # a wall in front of the object
    for i in range(10):
        assert omap.update([], 1.0 + i, behind if i % 2 else occluded).removed == ()
    (obj,) = omap.objects()
    assert obj.id == 'obj_1' and obj.last_seen == 0.0
    # Updates without a view never count misses either.
    for i in range(5):
        omap.update([], 20.0 + i)
    assert len(omap) == 1


def test_max_age_removal():
    omap = _one_object_map(ObjectMapConfig(max_age=5.0))
    assert omap.update([], 5.0).removed == ()          # exactly 5 s old: kept
    assert omap.update([], 5.5).removed == ('obj_1',)  # older than 5 s: removed


def test_confirmation_after_n_observations():
    faces = _cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4])
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(min_observations=3))
    cloud = np.vstack([faces['front'], faces['top']])
    for i in range(2):
        omap.update([_obs(cloud)], float(i))
        assert omap.objects() == ()
    (pending,) = omap.objects(confirmed_only=False)
    assert not pending.confirmed and pending.num_observations == 2
    omap.update([_obs(cloud)], 2.0)
    (obj,) = omap.objects()
    assert obj.confirmed and obj.num_observations == 3 and obj.id == pending.id


def test_label_change_rescores_every_object_from_stored_features():
    scorer = StubScorer()
    a = _cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4])
    b = _cuboid_faces([3.0, 1.0, 0.0], [3.4, 1.4, 0.4])
    omap = ObjectMap(scorer, LABELS, ObjectMapConfig(min_observations=1,
                                                     observation_weight='uniform'))
    omap.update([_obs(np.vstack([a['front'], a['top']]), (1.0, 0.0)),
                 _obs(b['front'], (0.6, 0.8))], 0.0)
    omap.update([_obs(np.vstack([a['left'], a['top']]), (0.0, 1.0))], 1.0)
    before = {o.id: (o.label, round(o.score, 4)) for o in omap.objects()}
    # obj_1: features [1, 0] and [0, 1] fuse to [0.7071, 0.7071]: a and b tie at 0.7071, a
    # first. obj_2: [0.6, 0.8] scores b 0.8.
    assert before == {'obj_1': ('a', 0.7071), 'obj_2': ('b', 0.8)}
    scorer.batches.clear()
    omap.set_label_set(_labels(b=[0.0, 1.0], c=[0.6, 0.8]))
    after = {o.id: (o.label, round(o.score, 4)) for o in omap.objects()}
    # obj_1: c = (0.6 + 0.8) / sqrt(2) = 0.9899; obj_2: c = 0.36 + 0.64 = 1.0.
    assert after == {'obj_1': ('c', 0.9899), 'obj_2': ('c', 1.0)}
    assert scorer.batches == [2]   # one batch for the whole map, no new observation
    (top,) = [o.top_k for o in omap.objects() if o.id == 'obj_1']
    assert [k for k, _ in top] == ['c', 'b']


def test_ids_are_never_reused_after_removal_or_clear():
    cloud = np.vstack(list(_cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4]).values()))
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(max_age=1.0, min_observations=1))
    assert omap.update([_obs(cloud)], 0.0).created == ('obj_1',)
    assert omap.update([], 2.0).removed == ('obj_1',)
    assert omap.update([_obs(cloud)], 3.0).created == ('obj_2',)
    omap.clear()
    assert len(omap) == 0 and omap.objects(confirmed_only=False) == ()
    assert omap.update([_obs(cloud)], 4.0).created == ('obj_3',)


def test_overlapping_duplicates_merge_into_the_older_object():
    faces = _cuboid_faces([1.0, 1.0, 0.0], [1.5, 1.5, 0.5])
    whole = np.vstack([faces['front'], faces['top']])
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(merge_every=2, min_observations=1,
                                                            observation_weight='uniform'))
    # One frame segments the object twice (a fragment inside the whole): two new objects.
    first = omap.update([_obs(whole), _obs(faces['top'], (0.0, 1.0))], 0.0)
    assert first.created == ('obj_1', 'obj_2')
    second = omap.update([], 1.0)   # second update: upkeep runs
    assert second.merged == (('obj_2', 'obj_1'),) and second.removed == ('obj_2',)
    (obj,) = omap.objects()
    assert obj.id == 'obj_1' and obj.num_observations == 2
    assert obj.score == pytest.approx(np.sqrt(0.5), abs=1e-6)   # counts kept when merging


@pytest.mark.parametrize('field, value', [
    ('voxel_size', 0.0), ('voxel_size', 0.5), ('max_points_per_object', 8),
    ('max_points_per_observation', 2.5), ('max_center_distance', -1.0),
    ('overlap_radius', float('inf')), ('min_association_score', 0.0),
    ('min_observations', 0), ('max_age', 0.0), ('max_age', float('nan')),
    ('max_missed_in_view', 0), ('in_view_fraction', 1.5), ('occlusion_margin', -0.1),
    ('label_fusion', 'votes'), ('observation_weight', 'area'), ('reclassify_growth', 0.5),
    ('cloud_feature_weight', 2.0),
    ('merge_every', -1), ('merge_overlap', 0.0), ('max_stored_observations', 0),
    ('oriented_boxes', 1), ('seed', -1), ('min_observations', True),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f'ObjectMapConfig.{field} '):
        ObjectMapConfig(**{field: value})


def test_bad_inputs_are_refused_with_clear_errors():
    omap = ObjectMap(StubScorer(), LABELS)
    box = Box3D(np.zeros(3), np.ones(3))
    with pytest.raises(ValueError, match='points'):
        Observation(box, np.zeros((4, 2)), np.ones((2, 2)))
    with pytest.raises(ValueError, match='no finite point'):
        Observation(box, np.full((4, 3), np.nan), np.ones((2, 2)))
    with pytest.raises(ValueError, match='view_features'):
        Observation(box, np.zeros((4, 3)), np.ones(2))
    with pytest.raises(TypeError, match='Box3D'):
        Observation((0, 0, 0), np.zeros((4, 3)), np.ones((2, 2)))
    with pytest.raises(TypeError, match='observations\\[0\\]'):
        omap.update([object()], 0.0)
    with pytest.raises(ValueError, match='stamp'):
        omap.update([], float('nan'))
    with pytest.raises(TypeError, match='scorer'):
        ObjectMap(object(), LABELS)
    # Non-finite rows are dropped, the caller's array stays writable.
    pts = np.array([[0.0, 0.0, 0.0], [np.nan, 0.0, 0.0], [0.1, 0.1, 0.1]])
    obs = Observation(box, pts, np.array([[3.0, 4.0]]))
    assert len(obs.points) == 2 and pts.flags.writeable
    np.testing.assert_allclose(obs.view_features, [[0.6, 0.8]])


def test_concurrent_updates_and_label_changes_do_not_corrupt_the_map():
    faces = _cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4])
    cloud = np.vstack([faces['front'], faces['top']])
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(min_observations=1))
    errors = []

    def relabel():
        try:
            for i in range(50):
                omap.set_label_set(LABELS if i % 2 else _labels(c=[0.6, 0.8]))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=relabel)
    thread.start()
    for i in range(50):
        omap.update([_obs(cloud)], float(i))
    thread.join()
    assert errors == []
    (obj,) = omap.objects()
    assert obj.num_observations == 50 and obj.label in ('a', 'c')


def test_tiny_real_model_single_observation_keeps_the_detection():
    torch = pytest.importorskip('torch')
    torch.set_num_threads(1)
    from opendlign_core.config import (
        ClassifierConfig,
        DetectorConfig,
        ModelConfig,
        OpenDlignConfig,
        ProjectionConfig,
    )
    from opendlign_core.detection import Detector

    rng = np.random.default_rng(0)
    floor = np.c_[rng.uniform(0, 4, (20000, 2)), rng.normal(0, 0.002, 20000)]
    tall = rng.uniform([1, 1, 0.05], [1.4, 1.4, 1.6], (3000, 3))
    flat = rng.uniform([2.5, 2.5, 0.05], [3.5, 3.0, 0.4], (3000, 3))
    pts = np.vstack([floor, tall, flat]).astype(np.float32)
    cfg = DetectorConfig(opendlign=OpenDlignConfig(
        model=ModelConfig(model_name='OpenDlign-Tiny-Test'),
        projection=ProjectionConfig(resolution=32, view_angles_deg=(30.0, 120.0)),
        classifier=ClassifierConfig(templates='depth', batch_size=4)),
        max_points_per_object=512)
    det = Detector.from_config(cfg)
    labels = det.encode_labels(['chair', 'table'])
    res = det.detect(pts, labels)
    obs = observations_from_result(res, pts)
    assert len(obs) == len(res.detections) == 2
    omap = ObjectMap(det.classifier, labels, ObjectMapConfig(min_observations=1))
    omap.update(obs, 0.0)
    got = sorted((o.label, round(o.score, 5)) for o in omap.objects())
    assert got == sorted((d.label, round(d.score, 5)) for d in res.detections)


def test_points_weighting_counts_fuller_views_more():
    line = np.array([[1.0, 1.0, 0.1], [1.1, 1.0, 0.1], [1.2, 1.0, 0.1]])   # 3 voxels
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(observation_weight='points',
                                                            min_observations=1))
    omap.update([_obs(line, (1.0, 0.0))], 0.0)
    assert omap.update([_obs(line[:1], (0.0, 1.0))], 1.0).matched == ('obj_1',)
    # (3 * [1, 0] + 1 * [0, 1]) / 4, normalised: [3, 1] / sqrt(10); a scores 3 / sqrt(10).
    (obj,) = omap.objects()
    assert (obj.label, obj.score) == ('a', pytest.approx(3 / np.sqrt(10), abs=1e-6))


@pytest.mark.parametrize('rule, expected', [('max', ('obj_1',)), ('min', ())])
def test_small_object_on_a_large_one_joins_it_only_under_the_max_rule(rule, expected):
    wall = _face([0.0, 2.0, 0.0], [2.0, 2.0, 2.0], 1, 2.0)
    picture = _face([0.9, 2.0, 1.0], [1.1, 2.0, 1.2], 1, 2.0)
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(association_overlap=rule))
    omap.update([_obs(wall)], 0.0)
    assert omap.update([_obs(picture)], 1.0).matched == expected


def test_observations_from_result_takes_best_hypotheses_strides_and_checks():
    pts = np.arange(30, dtype=float).reshape(10, 3)
    feats = np.array([[1.0, 0.0]], np.float32)

    def det(hypothesis, indices=np.arange(10), features=feats):
        return SimpleNamespace(label='a', hypothesis=hypothesis, point_indices=indices,
                               box=fit_aabb(pts), view_features=features)

    result = SimpleNamespace(detections=(det(0), det(1)))
    (full,) = observations_from_result(result, pts)
    np.testing.assert_array_equal(full.points, pts)
    (strided,) = observations_from_result(result, pts, max_points=4)
    np.testing.assert_array_equal(strided.points, pts[[0, 3, 6, 9]])   # stride ceil(10 / 4)
    with pytest.raises(ValueError, match='view_features'):
        observations_from_result(SimpleNamespace(detections=(det(0, features=None),)), pts)
    with pytest.raises(ValueError, match='outside'):
        observations_from_result(SimpleNamespace(detections=(det(0, np.array([10])),)), pts)
    with pytest.raises(ValueError, match='max_points'):
        observations_from_result(result, pts, max_points=0)


def test_scores_fusion_averages_per_observation_predictions():
    cloud = np.vstack(list(_cuboid_faces([1.0, 1.0, 0.0], [1.4, 1.4, 0.4]).values()))
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(label_fusion='scores'))
    for i, f in enumerate([(1.0, 0.0), (0.0, 1.0), (0.6, 0.8)]):
        omap.update([_obs(cloud, f)], float(i))
    (obj,) = omap.objects()
    # a: (1 + 0 + 0.6) / 3 = 0.5333; b: (0 + 1 + 0.8) / 3 = 0.6; the probability of b is the
    # mean over observations of their probability where they chose b: (1 + 0.8) / 3.
    assert obj.label == 'b'
    assert obj.score == pytest.approx(0.6) and obj.probability == pytest.approx(0.6)
    assert obj.top_k == (('b', pytest.approx(0.6)), ('a', pytest.approx(1.6 / 3)))


def test_update_from_frame_is_observations_view_and_update_in_one_call():
    from opendlign_core.detection import Detection, DetectionResult

    box_pts = np.concatenate(list(_cuboid_faces([2.0, -0.2, 0.0], [2.4, 0.2, 0.5]).values()))
    frame = np.concatenate([box_pts, _wall(4.0)])
    feats = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    det = Detection('a', 0.9, fit_aabb(box_pts), np.arange(len(box_pts)), (('a', 0.9),), 0.9,
                    view_features=feats)
    result = DetectionResult((det,))
    pose = np.eye(4)
    one, two = ObjectMap(StubScorer(), LABELS), ObjectMap(StubScorer(), LABELS)
    got = one.update_from_frame(result, frame, pose, 1.0)
    want = two.update(observations_from_result(result, frame), 1.0,
                      SensorView.from_cloud(frame, np.zeros(3), pose))
    assert got.created == want.created == ('obj_1',)
    assert [o.box for o in one.objects(False)] == [o.box for o in two.objects(False)]
    with pytest.raises(ValueError, match=r'map_from_sensor must be a \(4, 4\) matrix'):
        one.update_from_frame(result, frame, np.eye(3), 2.0)


def test_update_from_frame_takes_sensor_frame_points_with_the_pose():
    from scipy.spatial.transform import Rotation

    from opendlign_core.detection import Detection, DetectionResult
    from opendlign_core.transforms import invert_transform, transform_points

    box_pts = np.concatenate(list(_cuboid_faces([2.0, -0.2, 0.0], [2.4, 0.2, 0.5]).values()))
    frame_map = np.concatenate([box_pts, _wall(4.0)])
    pose = np.eye(4)
    pose[:3, :3] = Rotation.from_euler('zyx', [20, -15, 5], degrees=True).as_matrix()
    pose[:3, 3] = [0.3, -0.4, 1.1]
    frame_sensor = transform_points(frame_map, invert_transform(pose)).astype(np.float32)
    feats = np.array([[1.0, 0.0], [1.0, 0.0]], np.float32)
    det = Detection('a', 0.9, fit_aabb(box_pts), np.arange(len(box_pts)), (('a', 0.9),), 0.9,
                    view_features=feats)
    result = DetectionResult((det,))
    in_map, in_sensor = ObjectMap(StubScorer(), LABELS), ObjectMap(StubScorer(), LABELS)
    assert in_map.update_from_frame(result, frame_map, pose, 1.0).created == ('obj_1',)
    assert in_sensor.update_from_frame(result, frame_sensor, pose, 1.0,
                                       points_in_sensor_frame=True).created == ('obj_1',)
    a, b = in_map.objects(False)[0], in_sensor.objects(False)[0]
    np.testing.assert_allclose(b.box.center, a.box.center, atol=1e-5)
    np.testing.assert_allclose(b.box.size, a.box.size, atol=1e-5)
    # The observation's points were moved into the map frame (the box spans x 2.0-2.4).
    obs = observations_from_result(result, frame_sensor, map_from_points=pose)
    np.testing.assert_allclose(fit_aabb(obs[0].points).center, [2.2, 0.0, 0.25], atol=1e-5)
    with pytest.raises(ValueError, match=r'points must have shape \(N, 3\)'):
        in_sensor.update_from_frame(result, frame_sensor[:, :2], pose, 2.0,
                                    points_in_sensor_frame=True)


def _result(*clouds_and_features):
    # A DetectionResult over the concatenation of the given clouds, one detection per cloud.
    from opendlign_core.detection import Detection, DetectionResult
    dets, start = [], 0
    for cloud, feature in clouds_and_features:
        idx = np.arange(start, start + len(cloud))
        feats = np.array([feature, feature], np.float32)
        dets.append(Detection('a', 0.9, fit_aabb(cloud), idx, (('a', 0.9),), 0.9,
                              view_features=feats))
        start += len(cloud)
    return DetectionResult(tuple(dets))


def test_fused_cloud_merges_the_frames_on_a_fixed_grid():
    from opendlign_core.detection import DetectionResult
    cfg = ObjectMapConfig(fused_voxel_size=0.1, consolidate_every=2)
    omap = ObjectMap(StubScorer(), LABELS, cfg)
    assert omap.fused_cloud().shape == (0, 3) and not omap.consolidation_due()
    first = np.array([[0.01, 0.01, 0.01], [0.03, 0.01, 0.01], [0.25, 0.05, 0.05]])
    second = np.array([[0.05, 0.05, 0.05], [np.nan, 0.0, 0.0]])
    omap.update_from_frame(DetectionResult(()), first, np.eye(4), 1.0)
    assert not omap.consolidation_due()
    # A sensor-frame cloud is moved by the pose: (-0.95, 0.05, 0.05) + (1, 0, 0).
    pose = np.eye(4)
    pose[0, 3] = 1.0
    omap.update_from_frame(DetectionResult(()), second - [1.0, 0, 0], pose, 2.0,
                           points_in_sensor_frame=True)
    assert omap.consolidation_due()
    # Hand-computed: cell (0, 0, 0) holds 3 points, cell (2, 0, 0) one; NaN rows are dropped.
    np.testing.assert_allclose(omap.fused_cloud(), [[0.03, 0.07 / 3, 0.07 / 3],
                                                    [0.25, 0.05, 0.05]], atol=1e-12)
    omap.clear()
    assert omap.fused_cloud().shape == (0, 3) and not omap.consolidation_due()


def test_consolidate_joins_fragments_under_one_id_and_adds_new_objects():
    faces = _cuboid_faces([1.0, 1.0, 0.0], [2.0, 1.5, 0.6])
    left = faces['left']                                   # x = 1.0 face
    right = np.vstack([faces['right'], faces['top'][faces['top'][:, 0] > 1.9]])
    omap = ObjectMap(StubScorer(), LABELS, ObjectMapConfig(min_observations=2))
    omap.update([_obs(left)], stamp=1.0)
    omap.update([_obs(right, (0.0, 1.0))], stamp=2.0)
    assert [o.id for o in omap.objects(False)] == ['obj_1', 'obj_2']
    whole = np.vstack(list(faces.values()))
    shelf = _cuboid_faces([4.0, 0.0, 0.0], [4.4, 0.4, 1.8])
    shelf = np.vstack(list(shelf.values()))
    # The fused detection: the whole box (both fragments inside, the left one entirely) and an
    # object no frame had shown as one.
    points = np.vstack([whole, shelf])
    update = omap.consolidate(_result((whole, (1.0, 0.0)), (shelf, (0.0, 1.0))), points, 3.0)
    assert update.created == ('obj_3',) and update.matched == ('obj_1',)
    assert update.removed == ('obj_2',) and update.merged == (('obj_2', 'obj_1'),)
    objs = {o.id: o for o in omap.objects(confirmed_only=True)}
    assert sorted(objs) == ['obj_1', 'obj_3']
    np.testing.assert_allclose(objs['obj_1'].box.center, [1.5, 1.25, 0.3], atol=0.02)
    np.testing.assert_allclose(objs['obj_1'].box.size, [1.0, 0.5, 0.6], atol=0.03)
    assert objs['obj_1'].label == 'a' and objs['obj_3'].label == 'b'
    assert objs['obj_1'].first_seen == 1.0 and objs['obj_3'].first_seen == 3.0
    assert omap.stats['consolidated'] == 1
    # Later frames associate with the consolidated objects as usual.
    assert omap.update([_obs(faces['front'])], stamp=4.0).matched == ('obj_1',)


def test_fused_cloud_settings_are_validated():
    for field, value in (('fused_points_per_frame', -1), ('fused_voxel_size', 0.0),
                         ('max_fused_points', 10), ('consolidate_every', 1.5)):
        with pytest.raises(ValueError, match=field):
            ObjectMapConfig(**{field: value})
    with pytest.raises(ValueError, match='consolidate_every.*no fused cloud'):
        ObjectMapConfig(consolidate_every=5, fused_points_per_frame=0)
    omap = ObjectMap(StubScorer(), LABELS)
    from opendlign_core.detection import DetectionResult
    for stamp in (float('nan'), float('inf')):
        with pytest.raises(ValueError, match='stamp must be finite'):
            omap.consolidate(DetectionResult(()), np.zeros((0, 3)), stamp)
