"""
Slow, loop-based reference of the contour-aware projection, for tests only.

It follows the text of :mod:`opendlign_core.projection` step by step with explicit Python loops
and float64 NumPy (per-point scatter, explicit max-pool window, explicit bilateral window), so
that it is easy to check by reading. Use small grids: the cost is
``V * B * R^2 * (densify_kernel^3 + bilateral_kernel^3)`` Python iterations.
"""

import math

import numpy as np

from opendlign_core.config import ProjectionConfig


def reference_contour_views(points: np.ndarray, config: ProjectionConfig) -> np.ndarray:
    """
    Project one cloud with the contour-aware method, by loops.

    :param points: (N, 3) finite float coordinates, +z up.
    :param config: Projection settings (``method`` is ignored).
    :return: (V, R, R) float64 depth maps in [0, 1], background 1.
    """
    return np.stack([reference_contour_view(points, config, k)
                     for k in range(config.num_views)])


def reference_quantise(points: np.ndarray, config: ProjectionConfig,
                       view: int) -> list:
    """
    Return the (row, col, bin) of every point in one view.

    :param points: (N, 3) coordinates.
    :param config: Projection settings.
    :param view: View index.
    :return: List of N ``(row, col, bin)`` int tuples.
    """
    theta = math.radians(config.view_angles_deg[view])
    phi = math.radians(config.elevation_deg)
    right = (-math.sin(theta), math.cos(theta), 0.0)
    down = (math.sin(phi) * math.cos(theta), math.sin(phi) * math.sin(theta), -math.cos(phi))
    forward = (-math.cos(phi) * math.cos(theta), -math.cos(phi) * math.sin(theta),
               -math.sin(phi))
    cam = []
    for p in np.asarray(points, dtype=np.float64):
        cam.append(tuple(sum(float(e[i]) * float(p[i]) for i in range(3))
                         for e in (right, down, forward)))
    lo = [min(c[i] for c in cam) for i in range(3)]
    hi = [max(c[i] for c in cam) for i in range(3)]
    ctr = [(lo[i] + hi[i]) / 2.0 for i in range(3)]
    s = max(hi[0] - lo[0], hi[1] - lo[1])
    if s == 0:
        s = 1.0
    res, nbins = config.resolution, config.depth_bins
    scale = config.object_ratio * res / s
    out = []
    for a, b, c in cam:
        col = min(max(math.floor(res / 2.0 + (a - ctr[0]) * scale), 0), res - 1)
        row = min(max(math.floor(res / 2.0 + (b - ctr[1]) * scale), 0), res - 1)
        if hi[2] > lo[2]:
            z = min(math.floor((c - lo[2]) / (hi[2] - lo[2]) * nbins), nbins - 1)
        else:
            z = 0
        out.append((row, col, z))
    return out


def reference_contour_view(points: np.ndarray, config: ProjectionConfig,
                           view: int) -> np.ndarray:
    """
    Project one cloud into one view, by loops.

    :param points: (N, 3) coordinates.
    :param config: Projection settings.
    :param view: View index.
    :return: (R, R) float64 depth map.
    """
    res, nbins = config.resolution, config.depth_bins
    grid = np.zeros((nbins, res, res))
    for row, col, z in reference_quantise(points, config, view):
        grid[z, row, col] = 1.0 - config.far_value * z / (nbins - 1)

    def value(g: np.ndarray, z: int, y: int, x: int) -> float:
        inside = 0 <= z < nbins and 0 <= y < res and 0 <= x < res
        return float(g[z, y, x]) if inside else 0.0   # outside the grid = empty

    rd = config.densify_kernel // 2
    pooled = np.zeros_like(grid)
    for z in range(nbins):
        for y in range(res):
            for x in range(res):
                best = 0.0
                for dz in range(-rd, rd + 1):
                    for dy in range(-rd, rd + 1):
                        for dx in range(-rd, rd + 1):
                            best = max(best, value(grid, z + dz, y + dy, x + dx))
                pooled[z, y, x] = best

    rb = config.bilateral_kernel // 2
    two_ss = 2.0 * config.bilateral_sigma_spatial ** 2
    two_sr = 2.0 * config.bilateral_sigma_range ** 2
    smooth = np.zeros_like(grid)
    for z in range(nbins):
        for y in range(res):
            for x in range(res):
                centre = pooled[z, y, x]
                num = den = 0.0
                for dz in range(-rb, rb + 1):
                    for dy in range(-rb, rb + 1):
                        for dx in range(-rb, rb + 1):
                            v = value(pooled, z + dz, y + dy, x + dx)
                            w = (math.exp(-(dz * dz + dy * dy + dx * dx) / two_ss)
                                 * math.exp(-(centre - v) ** 2 / two_sr))
                            num += w * v
                            den += w
                smooth[z, y, x] = num / den

    depth = np.ones((res, res))
    for y in range(res):
        for x in range(res):
            depth[y, x] = min(1.0 - smooth[z, y, x] for z in range(nbins))
    return depth
