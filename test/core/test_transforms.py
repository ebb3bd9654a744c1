"""Tests of the tf2-style transform buffer (hand-computed transforms)."""

import math
import threading

import numpy as np
import pytest

from opendlign_core.transforms import (
    TransformBuffer,
    TransformError,
    invert_transform,
    matrix_from_pose,
    normalize_frame_id,
    pose_from_matrix,
    transform_points,
    yaw_box_matrix,
)

S = 1_000_000_000
#: Quaternion (x, y, z, w) of a rotation about +z by 90 degrees.
YAW_90 = (0.0, 0.0, math.sqrt(0.5), math.sqrt(0.5))
#: REP-103 camera_link -> *_optical_frame rotation, rpy (-pi/2, 0, -pi/2).
OPTICAL = (-0.5, 0.5, -0.5, 0.5)


def _apply(transform, point):
    return transform_points(np.array([point], np.float64), transform)[0]


def _dynamic_buffer():
    buffer = TransformBuffer()
    # odom -> base_link: at 1 s at the origin facing +x; at 3 s at (2, 4, 0) facing +y.
    buffer.set_transform('odom', 'base_link', 1 * S, (0, 0, 0), (0, 0, 0, 1))
    buffer.set_transform('odom', 'base_link', 3 * S, (2, 4, 0), YAW_90)
    return buffer


def test_static_chain_composes_through_the_tree():
    buffer = TransformBuffer()
    buffer.set_transform('map', 'base', 0, (1, 0, 0), YAW_90, static=True)
    buffer.set_transform('base', 'cam', 0, (0, 0, 0.5), (0, 0, 0, 1), static=True)
    buffer.set_transform('base', 'lidar', 0, (0, 2, 0), (0, 0, 0, 1), static=True)
    t_map_cam = buffer.lookup('map', 'cam', 123 * S)
    # cam (1, 0, 0) -> base (1, 0, 0.5) -> rotate 90 deg about z (0, 1, 0.5) -> + (1, 0, 0).
    np.testing.assert_allclose(_apply(t_map_cam, (1, 0, 0)), (1, 1, 0.5), atol=1e-12)
    # The inverse direction, and a path through the common ancestor 'base' (siblings).
    np.testing.assert_allclose(_apply(buffer.lookup('cam', 'map', 0), (1, 1, 0.5)), (1, 0, 0),
                               atol=1e-12)
    np.testing.assert_allclose(_apply(buffer.lookup('lidar', 'cam', 5 * S), (0, 0, 0)),
                               (0, -2, 0.5), atol=1e-12)
    np.testing.assert_array_equal(buffer.lookup('cam', 'cam', 7 * S), np.eye(4))
    assert buffer.frames() == ('base', 'cam', 'lidar', 'map')


def test_optical_frame_rotation_matches_rep_103():
    buffer = TransformBuffer()
    buffer.set_transform('camera_link', 'camera_optical', 0, (0, 0, 0), OPTICAL, static=True)
    t = buffer.lookup('camera_link', 'camera_optical')
    # Optical z (forward) is link x, optical x (right) is link -y, optical y (down) is link -z.
    np.testing.assert_allclose(_apply(t, (0, 0, 1)), (1, 0, 0), atol=1e-12)
    np.testing.assert_allclose(_apply(t, (1, 0, 0)), (0, -1, 0), atol=1e-12)
    np.testing.assert_allclose(_apply(t, (0, 1, 0)), (0, 0, -1), atol=1e-12)


def test_dynamic_edge_is_interpolated_between_bracketing_samples():
    buffer = _dynamic_buffer()
    t = buffer.lookup('odom', 'base_link', 2 * S)
    # Halfway: translation (1, 2, 0), yaw 45 deg.
    translation, rotation = pose_from_matrix(t)
    np.testing.assert_allclose(translation, (1, 2, 0), atol=1e-12)
    np.testing.assert_allclose(rotation, (0, 0, math.sin(math.pi / 8), math.cos(math.pi / 8)),
                               atol=1e-12)
    np.testing.assert_allclose(_apply(t, (1, 0, 0)), (1 + math.sqrt(0.5), 2 + math.sqrt(0.5), 0),
                               atol=1e-12)
    # A quarter of the way (1.5 s): translation (0.5, 1, 0), yaw 22.5 deg.
    translation, rotation = pose_from_matrix(buffer.lookup('odom', 'base_link', 3 * S // 2))
    np.testing.assert_allclose(translation, (0.5, 1, 0), atol=1e-12)
    np.testing.assert_allclose(rotation, (0, 0, math.sin(math.pi / 16), math.cos(math.pi / 16)),
                               atol=1e-12)
    # Exactly at a sample, and "latest" (stamp 0) = the newest sample.
    np.testing.assert_allclose(buffer.lookup('odom', 'base_link', 3 * S),
                               buffer.lookup('odom', 'base_link', 0), atol=1e-15)
    np.testing.assert_allclose(_apply(buffer.lookup('odom', 'base_link', 3 * S), (1, 0, 0)),
                               (2, 5, 0), atol=1e-12)


def test_static_and_dynamic_edges_chain_and_latest_is_the_common_time():
    buffer = _dynamic_buffer()
    buffer.set_transform('base_link', 'cam', 0, (0.5, 0, 0), (0, 0, 0, 1), static=True)
    buffer.set_transform('map', 'odom', 2 * S, (10, 0, 0), (0, 0, 0, 1))
    buffer.set_transform('map', 'odom', 4 * S, (12, 0, 0), (0, 0, 0, 1))
    # At 3 s: map->odom (11, 0, 0); odom->base (2, 4, 0) yaw 90; base->cam (0.5, 0, 0).
    np.testing.assert_allclose(_apply(buffer.lookup('map', 'cam', 3 * S), (0, 0, 0)),
                               (13, 4.5, 0), atol=1e-12)
    # Latest common time is min(3 s, 4 s) = 3 s.
    np.testing.assert_allclose(buffer.lookup('map', 'cam', 0), buffer.lookup('map', 'cam', 3 * S),
                               atol=1e-12)


def test_extrapolation_is_refused_unless_within_the_tolerance():
    buffer = _dynamic_buffer()
    with pytest.raises(TransformError, match='extrapolation into the future') as info:
        buffer.lookup('odom', 'base_link', 3 * S + S // 2)
    assert '[base_link]' in str(info.value) and '[odom]' in str(info.value)
    with pytest.raises(TransformError, match='extrapolation into the past'):
        buffer.lookup('odom', 'base_link', S // 2)
    assert not buffer.can_transform('odom', 'base_link', 4 * S)
    lenient = TransformBuffer(tolerance_s=0.6)
    lenient.set_transform('odom', 'base_link', 1 * S, (0, 0, 0), (0, 0, 0, 1))
    lenient.set_transform('odom', 'base_link', 3 * S, (2, 4, 0), YAW_90)
    np.testing.assert_allclose(lenient.lookup('odom', 'base_link', 3 * S + S // 2),
                               lenient.lookup('odom', 'base_link', 3 * S))
    with pytest.raises(TransformError, match='future'):
        lenient.lookup('odom', 'base_link', 3 * S + 7 * S // 10)


def test_missing_and_disconnected_frames_name_both_frames():
    buffer = _dynamic_buffer()
    with pytest.raises(TransformError, match='"camera" passed to lookup as source_frame') as info:
        buffer.lookup('odom', 'camera', 2 * S)
    assert '[odom]' in str(info.value)
    with pytest.raises(LookupError, match='"world" passed to lookup as target_frame'):
        buffer.lookup('world', 'base_link', 2 * S)
    buffer.set_transform('world', 'tag', 0, (0, 0, 0), (0, 0, 0, 1), static=True)
    with pytest.raises(TransformError, match=r'between \[tag\] and \[base_link\].*same tree'):
        buffer.lookup('tag', 'base_link', 2 * S)
    with pytest.raises(TransformError, match='cannot be empty'):
        buffer.lookup('odom', '', 2 * S)


def test_samples_older_than_the_cache_time_are_dropped():
    buffer = _dynamic_buffer()
    buffer.set_transform('odom', 'base_link', 12 * S, (0, 0, 0), (0, 0, 0, 1))
    # Kept: samples within 10 s of the newest (3 s and 12 s); 1 s is gone.
    with pytest.raises(TransformError, match='past'):
        buffer.lookup('odom', 'base_link', 2 * S)
    buffer.lookup('odom', 'base_link', 3 * S)
    # A sample older than the cache on arrival is ignored.
    buffer.set_transform('odom', 'base_link', 1 * S, (0, 0, 0), (0, 0, 0, 1))
    with pytest.raises(TransformError, match='past'):
        buffer.lookup('odom', 'base_link', 1 * S)
    buffer.clear(dynamic_only=True)
    assert buffer.frames() == ()


def test_leading_slashes_are_stripped():
    buffer = TransformBuffer()
    buffer.set_transform('/map', '/base', 0, (1, 2, 3), (0, 0, 0, 1), static=True)
    np.testing.assert_allclose(_apply(buffer.lookup('map', '//base'), (0, 0, 0)), (1, 2, 3))
    assert normalize_frame_id('/camera_link') == 'camera_link'


def test_wait_for_returns_once_another_thread_adds_the_transform():
    buffer = TransformBuffer()
    buffer.set_transform('map', 'cam', 1 * S, (0, 0, 0), (0, 0, 0, 1))
    later = threading.Timer(0.05, buffer.set_transform,
                            ('map', 'cam', 3 * S, (2, 0, 0), (0, 0, 0, 1)))
    later.start()
    t = buffer.wait_for('map', 'cam', 2 * S, timeout_s=5.0)
    later.join()
    np.testing.assert_allclose(t[:3, 3], (1, 0, 0))
    with pytest.raises(TransformError, match='future'):
        buffer.wait_for('map', 'cam', 4 * S, timeout_s=0.02)


def test_transform_points_keeps_double_precision_far_from_the_origin():
    t = matrix_from_pose((500000.0, 4000000.0, 0.0), YAW_90)
    out = transform_points(np.array([[0.001, 0.002, 0.25]], np.float64), t)
    assert out.dtype == np.float64
    # float32 would be off by up to 0.25 m at 4e6 m.
    np.testing.assert_allclose(out, [[500000.0 - 0.002, 4000000.0 + 0.001, 0.25]], rtol=0,
                               atol=1e-9)
    np.testing.assert_allclose(invert_transform(t) @ t, np.eye(4), atol=1e-9)


def test_yaw_box_matrix():
    m = yaw_box_matrix((1, 2, 3), math.pi / 2)
    np.testing.assert_allclose(_apply(m, (1, 0, 0)), (1, 3, 3), atol=1e-12)


@pytest.mark.parametrize('args, error, match', [
    (('map', 'map', 0, (0, 0, 0), (0, 0, 0, 1)), ValueError, 'to itself'),
    (('', 'cam', 0, (0, 0, 0), (0, 0, 0, 1)), ValueError, 'must not be empty'),
    (('map', 'cam', -1, (0, 0, 0), (0, 0, 0, 1)), ValueError, 'stamp_ns must be >= 0'),
    (('map', 'cam', 1.5, (0, 0, 0), (0, 0, 0, 1)), TypeError, 'stamp_ns must be an integer'),
    (('map', 'cam', 0, (0, 0), (0, 0, 0, 1)), ValueError, 'translation must have 3 values'),
    (('map', 'cam', 0, (0, 0, math.nan), (0, 0, 0, 1)), ValueError, 'translation must be fin'),
    (('map', 'cam', 0, (0, 0, 0), (0, 0, 0, 0)), ValueError, 'non-zero norm'),
])
def test_bad_transforms_are_rejected(args, error, match):
    with pytest.raises(error, match=match):
        TransformBuffer().set_transform(*args)


def test_bad_buffer_settings_and_points_are_rejected():
    with pytest.raises(ValueError, match='cache_time_s'):
        TransformBuffer(cache_time_s=0.0)
    with pytest.raises(ValueError, match='tolerance_s'):
        TransformBuffer(tolerance_s=-1.0)
    with pytest.raises(ValueError, match=r'points must have shape \(N, 3\)'):
        transform_points(np.zeros((2, 2)), np.eye(4))
    with pytest.raises(ValueError, match=r'transform must have shape \(4, 4\)'):
        transform_points(np.zeros((2, 3)), np.eye(3))
    with pytest.raises(ValueError, match='timeout_s'):
        TransformBuffer().wait_for('a', 'b', 0, -1.0)


@pytest.mark.parametrize('dtype', [np.float32, np.float64])
def test_transform_points_local_matches_the_float64_path(dtype):
    from opendlign_core.transforms import transform_points_local
    rng = np.random.default_rng(3)
    pts = (rng.normal(size=(5000, 3)) * 4).astype(dtype)
    t = matrix_from_pose([512345.678, -4987654.321, 2500.0], [0.1, -0.3, 0.2, 0.927])
    origin = np.array([512340.0, -4987650.0, 2500.5])
    got = transform_points_local(pts, t, origin)
    assert got.dtype == np.float32 and got.flags['C_CONTIGUOUS'] and got.shape == (5000, 3)
    want = transform_points(pts, t) - origin
    # A few float32 spacings of the input's magnitude (~20 m), not of the 5e6 m translation.
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-5)
    # Hand-computed: a quarter turn about z, then shift by (10, 20, 30), minus (9, 19, 29).
    quarter = np.eye(4)
    quarter[:3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]
    quarter[:3, 3] = [10, 20, 30]
    np.testing.assert_array_equal(
        transform_points_local(np.array([[1.0, 2.0, 3.0]], dtype), quarter, [9, 19, 29]),
        [[-1.0, 2.0, 4.0]])


def test_transform_points_local_errors():
    from opendlign_core.transforms import transform_points_local
    with pytest.raises(ValueError, match='origin must be 3 finite values'):
        transform_points_local(np.zeros((2, 3)), np.eye(4), [0, np.nan, 0])
    with pytest.raises(ValueError, match=r'points must have shape \(N, 3\)'):
        transform_points_local(np.zeros((2, 2)), np.eye(4), np.zeros(3))
    with pytest.raises(TypeError, match='real-valued'):
        transform_points_local(np.zeros((2, 3), bool), np.eye(4), np.zeros(3))
