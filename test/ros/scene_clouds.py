"""Canned point clouds for the ROS tests: a small synthetic room corner with two boxes."""

import numpy as np


def box_surface(center, size, n, rng):
    """Return (n, 3) points on the surface of an axis-aligned box."""
    center, size = np.asarray(center, float), np.asarray(size, float)
    face = rng.integers(0, 6, n)
    uv = rng.uniform(-0.5, 0.5, (n, 3))
    axis = face // 2
    uv[np.arange(n), axis] = np.where(face % 2 == 0, -0.5, 0.5)
    return (center + uv * size).astype(np.float32)


def scene_points(seed: int = 0, n_floor: int = 6000, n_object: int = 2500) -> np.ndarray:
    """Return a z-up scene: a 3 m x 3 m floor and two separated boxes on it, metres."""
    rng = np.random.default_rng(seed)
    floor = np.column_stack([rng.uniform(-1.5, 1.5, n_floor), rng.uniform(-1.5, 1.5, n_floor),
                             rng.normal(0.0, 0.002, n_floor)])
    a = box_surface((-0.6, 0.0, 0.3), (0.5, 0.5, 0.6), n_object, rng)
    b = box_surface((0.7, 0.3, 0.4), (0.6, 0.4, 0.8), n_object, rng)
    return np.concatenate([floor, a, b]).astype(np.float32)
