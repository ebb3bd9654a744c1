"""
Class-agnostic segmentation of a scene point cloud into object clusters.

Input clouds are (N, 3) metres in a gravity-aligned frame with +z up
(:func:`opendlign_core.pointcloud.to_z_up` rotates other conventions into it). Pipeline, all on
a voxel grid so that the cost barely depends on N:

1. voxel down-sampling (centroid per occupied voxel, every point keeps its voxel index);
2. RANSAC planes (:func:`ransac_plane`), snapped horizontal or vertical (walls by a yaw search
   for the densest wall line): horizontal planes with almost nothing below (floor) or above
   (ceiling), and large vertical planes with almost nothing behind them (walls) are removed
   together with whatever lies beyond them; other candidates (table tops, cabinet fronts,
   sloped surfaces) are set aside and the search goes on, within ``max_plane_tries``; a
   room-sized cloud without a floor plane is reported and its floor taken from the height
   histogram when a large dense lowest layer exists;
3. wall relief: objects a few cm proud of a removed wall, or flush with it but of another
   colour (doors, windows, pictures), are found on a median height map and an optional colour
   map of the wall and become clusters of their own (:func:`wall_relief_regions`);
4. Euclidean clustering (connected components of the voxel neighbour graph) or open3d DBSCAN;
   clusters that a wall-noise sheet chains together are re-clustered without the sheet;
5. optional splitting of a cluster that falls apart into several large parts at a tighter link;
6. merging of parts standing under a cluster's footprint into it (table top + legs, see
   :func:`merge_stacked_parts`);
7. filters on point count and extent; labels map back to all points through the voxel index.

Nothing is dropped silently: :class:`SegmentationResult` counts the clusters each filter drops
and carries warnings (no floor in a room-sized cloud, an oversized cluster holding much of the
cloud dropped), which are also logged at WARNING.
"""

from dataclasses import dataclass, field
import logging
import math
import time
from typing import Literal, Mapping, Sequence

import numpy as np
import open3d as o3d
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree
from threadpoolctl import ThreadpoolController

from opendlign_core.config import SegmentationConfig
from opendlign_core.pointcloud import bounds

logger = logging.getLogger(__name__)

# Built once at import (it scans the loaded BLAS libraries), used by every segment_scene call.
_BLAS = ThreadpoolController()

PlaneKind = Literal['floor', 'ceiling', 'wall']

# Largest voxel-key range :func:`voxelize` counts densely (int64: 64 MiB) rather than sorting.
_DENSE_VOXEL_KEYS = 8 << 20

@dataclass(frozen=True)
class Plane:
    """A removed structural plane: ``normal . p + offset = 0`` with the normal pointing inside."""

    kind: PlaneKind
    normal: np.ndarray
    offset: float
    num_points: int


@dataclass(frozen=True)
class SegmentationResult:
    """
    Outcome of :func:`segment_scene`.

    ``labels`` is (N,) int64 over the input points: the cluster id, or -1 for removed structure,
    noise, filtered clusters and non-finite points. ``clusters[k]`` holds the (K_k,) int64 indices
    of cluster k, clusters ordered by decreasing size. ``warnings`` (also logged at WARNING) and
    ``dropped`` report what the segmentation could not do and what its filters removed.
    """

    labels: np.ndarray
    clusters: tuple[np.ndarray, ...]
    planes: tuple[Plane, ...]
    num_voxels: int
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    #: Problems worth a diagnostic, e.g. 'no floor plane found in a room-sized cloud (...)'.
    warnings: tuple[str, ...] = ()
    #: Clusters dropped per filter name: ``'too_small'``, ``'too_large'``, ``'too_tall'``,
    #: ``'too_thin'`` (see :func:`_reject_reason`) and ``'wall_sheet'`` (wall noise only).
    dropped: Mapping[str, int] = field(default_factory=dict)


def voxelize(points: np.ndarray, voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Down-sample points to the centroids of their occupied voxels.

    :param points: (N, 3) finite metres.
    :param voxel_size: Voxel edge, metres, > 0.
    :return: ``(centroids (M, 3) float64, inverse (N,) int64 voxel of each point,
        counts (M,) int64 points per voxel)``; voxels in lexicographic order of their indices.
    :raises ValueError: If ``voxel_size`` is not positive.
    """
    if not voxel_size > 0:
        raise ValueError(f'voxel_size must be > 0, got {voxel_size}')
    pts = np.asarray(points, dtype=np.float64)
    if len(pts) == 0:
        return np.zeros((0, 3)), np.zeros(0, np.int64), np.zeros(0, np.int64)
    lo, _ = bounds(pts)
    grid = pts - lo
    grid /= voxel_size
    grid = grid.astype(np.int64)   # >= 0, so truncation = floor
    dims = bounds(grid)[1] + 1
    keys = (grid[:, 0] * dims[1] + grid[:, 1]) * dims[2] + grid[:, 2]
    num_keys = int(dims.prod())
    if num_keys <= max(_DENSE_VOXEL_KEYS, 8 * len(pts)):
        # Counting sort: a bincount over the dense key range instead of a sort of N keys.
        hist = np.bincount(keys, minlength=num_keys)
        occupied = np.flatnonzero(hist)
        rank = np.zeros(num_keys, np.int64)
        rank[occupied] = np.arange(len(occupied))
        inverse = rank[keys]
        counts = hist[occupied]
    else:
        _, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        inverse = inverse.reshape(-1).astype(np.int64)
    centroids = np.empty((len(counts), 3))
    for d in range(3):
        centroids[:, d] = np.bincount(inverse, weights=pts[:, d], minlength=len(counts))
    centroids /= counts[:, None]
    return centroids, inverse, counts.astype(np.int64)


def euclidean_clusters(points: np.ndarray, distance: float) -> np.ndarray:
    """
    Label the connected components of the graph linking points closer than ``distance``.

    :param points: (M, 3) metres.
    :param distance: Link distance, metres.
    :return: (M,) int64 component ids in [0, C).
    """
    n = len(points)
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = cKDTree(points).query_pairs(distance, output_type='ndarray')
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return comp.astype(np.int64)


def _dbscan(points: np.ndarray, eps: float, min_points: int) -> np.ndarray:
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(points))
    return np.asarray(pcd.cluster_dbscan(eps=eps, min_points=min_points), dtype=np.int64)


def ransac_plane(points: np.ndarray, distance: float, iterations: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, float, np.ndarray]:
    """
    Fit the plane with the most inliers by RANSAC, then refit it by least squares on them.

    All ``iterations`` three-point hypotheses are scored at once (one (M, iterations) matrix
    product), which is several times faster than open3d's ``segment_plane`` on the few
    thousand points it is used on, and thread-safe (no global random state).

    :param points: (M, 3) metres, M >= 3.
    :param distance: Inlier distance, metres.
    :param iterations: Number of hypotheses.
    :param rng: Source of the hypotheses.
    :return: ``(normal (3,) unit, offset, inliers (K,) int64)`` with ``normal . p + offset = 0``;
        inliers index ``points``.
    """
    pts = np.asarray(points, np.float64)
    centre = pts.mean(axis=0)
    local = pts - centre
    tri = rng.integers(0, len(pts), (iterations, 3))
    a = local[tri[:, 0]]
    normals = np.cross(local[tri[:, 1]] - a, local[tri[:, 2]] - a)
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-12
    best_normal, best_offset = np.array([0.0, 0.0, 1.0]), 0.0
    if ok.any():
        normals = normals[ok] / norm[ok, None]
        offsets = -np.einsum('ij,ij->i', normals, a[ok])
        # float32 residuals: the scores only count points within ``distance`` (centimetres).
        res = local.astype(np.float32) @ normals.T.astype(np.float32)
        res += offsets.astype(np.float32)
        np.abs(res, out=res)
        k = int(np.count_nonzero(res < distance, axis=0).argmax())
        best_normal, best_offset = normals[k], float(offsets[k])
    inliers = np.flatnonzero(np.abs(local @ best_normal + best_offset) < distance)
    if len(inliers) >= 3:
        q = local[inliers]
        mean = q.mean(axis=0)
        _, _, vt = np.linalg.svd(q - mean, full_matrices=False)
        refit = vt[2]
        if refit @ best_normal < 0:
            refit = -refit
        best_normal, best_offset = refit, float(-refit @ mean)
        inliers = np.flatnonzero(np.abs(local @ best_normal + best_offset) < distance)
    return best_normal, best_offset - float(best_normal @ centre), inliers


def _remove_structure(vox: np.ndarray, weights: np.ndarray, cfg: SegmentationConfig,
                      seed: int) -> tuple[np.ndarray, list[Plane], int]:
    """
    Find and remove the floor, ceiling and walls by repeated RANSAC.

    A candidate that is not structure (a table top, a cabinet front, a sloped surface, a plane
    that snapping leaves thin) is set aside and the search goes on: one poor candidate never ends
    it. The search stops after ``cfg.max_planes`` removed planes, ``cfg.max_plane_tries``
    candidates, or when fewer than ``cfg.min_plane_voxels`` candidate voxels are left.

    :return: ``(removed (M,) bool, planes, candidates tried)``.
    """
    removed = np.zeros(len(vox), bool)
    candidate = np.ones(len(vox), bool)
    planes: list[Plane] = []
    tries = 0
    if not (cfg.remove_floor or cfg.remove_ceiling or cfg.remove_walls):
        return removed, planes, tries
    cos_h = math.cos(math.radians(cfg.horizontal_tolerance_deg))
    sin_v = math.sin(math.radians(cfg.vertical_tolerance_deg))
    margin = cfg.plane_distance
    total = float(weights.sum())
    rng = np.random.default_rng(seed)
    while len(planes) < cfg.max_planes and tries < cfg.max_plane_tries:
        idx = np.flatnonzero(candidate & ~removed)
        if len(idx) < cfg.min_plane_voxels:
            break
        tries += 1
        # RANSAC on a subsample, then a least-squares refit on all inliers: fast and untilted.
        sample = idx if len(idx) <= cfg.ransac_max_points else np.sort(
            rng.choice(idx, cfg.ransac_max_points, replace=False))
        raw_normal, raw_offset, sample_in = ransac_plane(vox[sample], cfg.plane_distance,
                                                         cfg.plane_iterations, rng)
        raw_in = idx[np.abs(vox[idx] @ raw_normal + raw_offset) < cfg.plane_distance]
        normal, offset = _snap_plane(vox[idx], vox[~removed], raw_normal, raw_offset, cfg,
                                     cos_h, sin_v)
        inliers = idx[np.abs(vox[idx] @ normal + offset) < cfg.plane_distance]
        snapped = abs(raw_normal[2]) >= cos_h or abs(raw_normal[2]) <= sin_v
        if len(inliers) < cfg.min_plane_voxels or (snapped and len(inliers) < 0.5 * len(raw_in)):
            # A poor candidate: a sloped or noisy surface that the horizontal/vertical snap
            # leaves thin. Set all of RANSAC's own inliers aside (not only the snapped band, or
            # the same surface comes back band by band) and keep searching.
            logger.debug('plane candidate n=%s: %d raw inliers, %d snapped -> set aside',
                         np.round(raw_normal, 3), len(raw_in), len(inliers))
            candidate[raw_in] = False
            candidate[inliers] = False
            candidate[sample[sample_in]] = False
            continue
        # Outside fractions count removed voxels too: an object face in front of an already
        # removed wall has that wall behind it, so it is never taken for a wall itself.
        signed = vox @ normal + offset
        kind: PlaneKind | None = None
        if abs(normal[2]) >= cos_h:
            if normal[2] < 0:
                normal, offset, signed = -normal, -offset, -signed
            below = weights[signed < -margin].sum() / total
            above = weights[signed > margin].sum() / total
            if cfg.remove_floor and below <= cfg.max_outside_fraction:
                kind = 'floor'
            elif cfg.remove_ceiling and above <= cfg.max_outside_fraction:
                kind, normal, offset, signed = 'ceiling', -normal, -offset, -signed
        elif abs(normal[2]) <= sin_v and cfg.remove_walls:
            back = weights[signed < -margin].sum() / total
            front = weights[signed > margin].sum() / total
            if front < back:
                normal, offset, signed = -normal, -offset, -signed
                back = front
            along = np.array([-normal[1], normal[0], 0.0])
            span = vox[inliers] @ along
            length = float(np.ptp(span))
            height = float(np.ptp(vox[inliers, 2]))
            if (back <= cfg.max_outside_fraction and length >= cfg.wall_min_length
                    and height >= cfg.wall_min_height):
                kind = 'wall'
        logger.debug('plane n=%s d=%.3f inliers=%d -> %s', np.round(normal, 3), offset,
                     len(inliers), kind or 'kept')
        if kind is None:
            candidate[inliers] = False
            continue
        gone = ~removed & (signed < cfg.plane_distance)
        removed |= gone
        planes.append(Plane(kind, normal, offset, int(weights[inliers].sum())))
    return removed, planes, tries


def _floor_from_histogram(vox: np.ndarray, removed: np.ndarray,
                          cfg: SegmentationConfig) -> tuple[float, int] | None:
    """
    Estimate the floor height as the lowest dense horizontal layer of the cloud.

    Voxels not yet removed are binned by height in ``cfg.plane_distance`` layers; the lowest
    layer holding at least ``cfg.min_plane_voxels`` voxels and ``cfg.floor_layer_share`` of the
    fullest layer is the floor when it is itself large: its well-filled 0.2 m cells span at
    least ``cfg.floor_min_extent`` in x and in y and cover at least its square (the top of a bed
    filling the view is no floor).

    :param vox: (M, 3) voxel centroids, metres, +z up.
    :param removed: (M,) voxels already removed.
    :param cfg: Segmentation settings.
    :return: ``(floor height in metres, voxels in the layer)``, or None without a dense,
        room-sized lowest layer.
    """
    z = vox[~removed, 2]
    if len(z) < cfg.min_plane_voxels:
        return None
    width = cfg.plane_distance
    layer = np.floor((z - z.min()) / width).astype(np.int64)
    hist = np.bincount(layer)
    dense = np.flatnonzero((hist >= cfg.min_plane_voxels)
                           & (hist >= cfg.floor_layer_share * hist.max()))
    if len(dense) == 0:
        return None
    k = int(dense[0])
    # The layer and its neighbours: a floor straddling a bin edge is split between two bins.
    near = np.abs(layer - k) <= 1
    # Its extent over well-filled 0.2 m cells only: walls cross the layer as thin sparse strips.
    cells = np.floor(vox[~removed][near][:, :2] / 0.2).astype(np.int64)
    cells, fill = np.unique(cells, axis=0, return_counts=True)
    full = cells[fill >= 0.5 * np.median(fill)]
    extent = (np.ptp(full, axis=0) + 1) * 0.2
    if extent.min() < cfg.floor_min_extent or len(full) * 0.04 < cfg.floor_min_extent ** 2:
        return None
    return float(np.median(z[near])), int(hist[k])


def _snap_plane(vox: np.ndarray, alive: np.ndarray, normal: np.ndarray, offset: float,
                cfg: SegmentationConfig, cos_h: float, sin_v: float) -> tuple[np.ndarray, float]:
    # In a gravity-aligned frame floors are horizontal and walls vertical: snap near-horizontal
    # and near-vertical normals exactly (walls by a yaw search over the candidate voxels
    # ``vox``), then place the plane at the median of a tight band of all ``alive`` voxels, so
    # that objects standing close to a wall cannot tilt it into themselves and a wall whose
    # front was taken by an earlier rejected plane (a large window) is not placed behind.
    if abs(normal[2]) >= cos_h:
        # RANSAC's normal may point down: the snapped plane must keep its height, not mirror it
        # (a mirrored floor has no voxels near it and was rejected as a failed candidate).
        offset = offset / normal[2]
        normal = np.array([0.0, 0.0, 1.0])
    elif abs(normal[2]) <= sin_v:
        normal, offset = _level_wall(vox, normal, offset, cfg)
    else:
        return normal, offset
    for band in (cfg.plane_distance, 0.5 * cfg.plane_distance):
        dist = alive @ normal + offset
        near = np.abs(dist) < band
        if near.sum() < 3:
            break
        offset -= float(np.median(dist[near]))
    return normal, offset


def _level_wall(vox: np.ndarray, normal: np.ndarray, offset: float,
                cfg: SegmentationConfig) -> tuple[np.ndarray, float]:
    # RANSAC and least-squares normals of a noisy fused wall are often 1-2 degrees off, which
    # over a 5 m wall leaves half of it beyond the inlier band. Search the yaw (within
    # cfg.wall_yaw_search_deg, to 0.1 degree) whose densest band of width plane_distance
    # holds the most voxels: the wall is the densest line of the top view.
    h = np.hypot(normal[0], normal[1])
    base = math.atan2(normal[1] / h, normal[0] / h)
    offset = offset / h
    near = vox[np.abs(vox[:, :2] @ (normal[:2] / h) + offset) < 4 * cfg.plane_distance, :2]
    unit = np.array([math.cos(base), math.sin(base), 0.0])
    if len(near) < 3:
        return unit, offset
    width = cfg.plane_distance
    best = (-1, base, offset)
    # Coarse 0.5 degree steps over the range, then 0.1 degree steps around the best.
    for step, reach in ((0.5, cfg.wall_yaw_search_deg), (0.1, 0.4)):
        centre = best[1]
        num = int(round(reach / step))
        for a in centre + np.radians(step * np.arange(-num, num + 1)):
            dist = np.sort(near @ np.array([math.cos(a), math.sin(a)]))
            # Most values inside any window [d, d + width]: slide over the sorted values.
            inside = np.searchsorted(dist, dist + width, side='right') - np.arange(len(dist))
            k = int(np.argmax(inside))
            if inside[k] > best[0]:
                best = (int(inside[k]), a, -float(dist[k] + 0.5 * width))
    _, a, offset = best
    return np.array([math.cos(a), math.sin(a), 0.0]), offset


def _check_cloud(points: np.ndarray) -> np.ndarray:
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3:
        raise ValueError(f'points must have shape (N, 3), got {pts.shape}')
    if not np.issubdtype(pts.dtype, np.number):
        raise TypeError(f'points must be numeric, got dtype {pts.dtype}')
    return pts


def segment_scene(points: np.ndarray, config: SegmentationConfig = SegmentationConfig(),
                  seed: int = 0, colors: np.ndarray | None = None) -> SegmentationResult:
    """
    Segment a scene cloud into object clusters.

    Non-finite rows are ignored (label -1). An empty cloud, or one that is entirely structure,
    gives a result with no clusters.

    :param points: (N, 3) metres, +z up (see :func:`opendlign_core.pointcloud.to_z_up`).
    :param config: Segmentation settings.
    :param seed: Seed of the RANSAC sampling (results are deterministic for a seed).
    :param colors: Optional (N, 3) RGB of the points, 0-255 (floats all within [0, 1] are
        taken as 0-1 and scaled); used to find objects flush with walls
        (``config.relief_min_color``).
    :return: The labels, the clusters and the removed planes.
    :raises ValueError: If ``points`` is not (N, 3) or ``colors`` does not match it.
    :raises TypeError: If ``points`` or ``colors`` is not numeric.
    """
    # One BLAS thread: the products here are small (k = 3), and on a loaded 2-core machine
    # OpenBLAS worker threads spinning beside other processes made them 10x slower, and every
    # NumPy operation after them too (measured: a RANSAC scoring step 1.2 ms -> 12 ms). The
    # limit is process-wide while the call runs (threadpoolctl); it only affects speed.
    with _BLAS.limit(limits=1, user_api='blas'):
        return _segment_scene(points, config, seed, colors)


def _segment_scene(points: np.ndarray, config: SegmentationConfig, seed: int,
                   colors: np.ndarray | None) -> SegmentationResult:
    t0 = time.perf_counter()
    pts = _check_cloud(points)
    n = len(pts)
    labels = np.full(n, -1, np.int64)
    # Row-wise only when needed: an (N, 3) reduction along axis 1 is slow and clouds are
    # usually all finite.
    valid = (None if np.isfinite(pts).all()
             else np.flatnonzero(np.isfinite(pts).all(axis=1)))
    work = pts[valid] if valid is not None else pts
    cols = None
    if colors is not None:
        cols = check_colors(colors, n)
        cols = cols[valid] if valid is not None else cols
    if len(work) == 0:
        return SegmentationResult(labels, (), (), 0, {'total': 0.0})
    voxel = config.voxel_size
    vox, inverse, counts = voxelize(work, voxel)
    while len(vox) > config.max_voxels:
        # Keep the cost bounded on huge or sparse clouds: coarsen until the budget fits.
        voxel *= 1.5
        vox, inverse, counts = voxelize(work, voxel)
    if voxel != config.voxel_size:
        logger.info('segmentation voxel coarsened to %.3f m for %d points', voxel, len(work))
    t1 = time.perf_counter()
    removed, planes, tries = _remove_structure(vox, counts.astype(np.float64), config, seed)
    warnings: list[str] = []
    lo, hi = np.percentile(vox[:, :2], [1, 99], axis=0)
    room = hi - lo
    room_sized = bool(room.min() >= config.room_min_extent)
    if config.remove_floor and room_sized and not any(p.kind == 'floor' for p in planes):
        floor = _floor_from_histogram(vox, removed, config)
        text = (f'no floor plane found in a room-sized cloud ({room[0]:.1f} x {room[1]:.1f} m, '
                f'{tries} plane candidates tried)')
        if floor is None:
            warnings.append(text + '; no room-sized floor layer either, floor left in')
        else:
            height, size = floor
            removed |= vox[:, 2] < height + config.plane_distance
            planes.append(Plane('floor', np.array([0.0, 0.0, 1.0]), -height, size))
            warnings.append(text + f'; floor taken from the height histogram at z = '
                            f'{height:.2f} m ({size} voxels)')
    t2 = time.perf_counter()
    walls = [p for p in planes if p.kind == 'wall']
    relief = (wall_relief_regions(work, inverse, vox, planes, config, cols)
              if config.wall_relief and walls else [])
    claimed = np.zeros(len(vox), bool)
    for region in relief:
        claimed[region] = True
    t_relief = time.perf_counter()
    keep = np.flatnonzero(~removed & ~claimed)
    vox_label = np.full(len(vox), -1, np.int64)
    dropped = _Dropped()
    if len(keep):
        if config.cluster_method == 'dbscan':
            comp = _dbscan(vox[keep], config.cluster_distance, config.dbscan_min_points)
        else:
            comp = euclidean_clusters(vox[keep], config.cluster_distance)
        vox_label[keep] = _filter_clusters(vox[keep], counts[keep], comp, config, walls, dropped)
    next_id = int(vox_label.max()) + 1
    for region in relief:
        reason = _reject_reason(vox[region], int(counts[region].sum()), config)
        if reason is None:
            vox_label[region] = next_id
            next_id += 1
        else:
            dropped.add(reason, vox[region], int(counts[region].sum()))
    # Oversized clusters holding much of the cloud are structure the plane search missed (or
    # objects chained to it): say so rather than lose them silently.
    kept_points = float(counts[~removed].sum())
    for num_points, extent in sorted(dropped.oversized, key=lambda x: -x[0]):
        share = num_points / max(kept_points, 1.0)
        if share < config.warn_dropped_share:
            break
        warnings.append(f'dropped an oversized cluster holding {share:.0%} of the non-structure '
                        f'points ({extent[0]:.1f} x {extent[1]:.1f} x {extent[2]:.1f} m)')
    t3 = time.perf_counter()
    point_label = vox_label[inverse]
    # Renumber by decreasing point count.
    pos = point_label >= 0
    num = int(point_label.max()) + 1 if pos.any() else 0
    sizes = np.bincount(point_label[pos], minlength=num)
    order = np.argsort(-sizes, kind='stable')
    rank = np.empty(num, np.int64)
    rank[order] = np.arange(num)
    if num:
        point_label = np.where(pos, rank[np.maximum(point_label, 0)], -1)
    if valid is not None:
        labels[valid] = point_label
    else:
        labels = point_label
    clusters = _group_indices(labels, num)
    t4 = time.perf_counter()
    timings = {'voxelize': 1e3 * (t1 - t0), 'planes': 1e3 * (t2 - t1),
               'relief': 1e3 * (t_relief - t2), 'cluster': 1e3 * (t3 - t_relief),
               'map': 1e3 * (t4 - t3), 'total': 1e3 * (t4 - t0)}
    for text in warnings:
        logger.warning('segmentation: %s', text)
    return SegmentationResult(labels, clusters, tuple(planes), len(vox), timings,
                              tuple(warnings), dict(sorted(dropped.counts.items())))


def wall_relief_regions(points: np.ndarray, inverse: np.ndarray, vox: np.ndarray,
                        planes: Sequence[Plane], cfg: SegmentationConfig,
                        colors: np.ndarray | None = None) -> list[np.ndarray]:
    """
    Find objects standing slightly proud of removed walls (doors, windows, pictures).

    Such objects lie within the depth noise of the wall and go with it when it is removed. For
    each wall, the points whose voxels lie within ``[-cfg.relief_back, cfg.relief_front]`` of it
    (and not within ``cfg.plane_distance`` of another removed plane) are binned into
    ``cfg.relief_cell`` cells of the wall's own (along, up) coordinates. The per-cell median
    distance, less a planar fit of the wall's own level (the back-most layer holding
    ``cfg.relief_wall_share`` of the cells: a large window in front may hold more) and smoothed
    by a 3 x 3 median filter, is a height map in which the depth noise averages out. With
    colours, each cell's distance from the wall's own colour (a plane in (along, up) fitted over
    the largest colour-connected segment of flush cells, so shading does not count) is a second
    map. Cells higher than ``cfg.relief_min_height`` or off-colour by ``cfg.relief_min_color``
    are proud; proud cells connect into regions (with colours, only where neighbours differ by
    less than ``cfg.relief_color_link``, one-cell slivers of mixed colour joining their
    neighbour). Regions of at least ``cfg.relief_min_area`` take the band's voxels in their cells
    grown by one cell, unless they touch a deeper object in front (its back, which clustering
    handles); the posts of one window frame are then joined (:func:`_group_frame_posts`).

    :param points: (N, 3) finite metres, +z up.
    :param inverse: (N,) voxel index of each point.
    :param vox: (M, 3) voxel centroids, metres.
    :param planes: Removed planes (normals point into the room); only walls are searched.
    :param cfg: Segmentation settings.
    :param colors: Optional (N, 3) RGB of the points, 0-255.
    :return: Disjoint (K_i,) int64 voxel-index arrays, one per region.
    """
    out: list[np.ndarray] = []
    if len(vox) == 0:
        return out
    taken = np.zeros(len(vox), bool)
    near_plane = [np.abs(vox @ p.normal + p.offset) < cfg.plane_distance for p in planes]
    cell = cfg.relief_cell
    structure = np.ones((3, 3), bool)
    for i, wall in enumerate(planes):
        if wall.kind != 'wall':
            continue
        found: list[tuple[np.ndarray, np.ndarray | None]] = []
        vdist = vox @ wall.normal + wall.offset
        band = (vdist > -cfg.relief_back) & (vdist < cfg.relief_front) & ~taken
        for j, near in enumerate(near_plane):
            if j != i:
                band &= ~near
        idx = np.flatnonzero(band)
        if len(idx) < 9:
            continue
        along = np.array([-wall.normal[1], wall.normal[0], 0.0])
        origin = np.array([(vox[idx] @ along).min(), vox[idx, 2].min()])
        pidx = np.flatnonzero(band[inverse])
        pts = np.asarray(points[pidx], np.float64)
        ij = np.floor((np.c_[pts @ along, pts[:, 2]] - origin) / cell).astype(np.int64) + 2
        ij = np.maximum(ij, 0)
        shape = np.array([ij[:, 0].max(), ij[:, 1].max()]) + 3
        flat = ij[:, 0] * shape[1] + ij[:, 1]
        d = pts @ wall.normal + wall.offset
        # Sort by cell, then distance: one argsort of a combined key is 3x faster than lexsort
        # (the distance term stays below 1 and resolves well under a micrometre).
        low = float(d.min())
        order = np.argsort(flat * (float(d.max()) - low + 1.0) + (d - low))
        fs = flat[order]
        starts = np.flatnonzero(np.r_[True, fs[1:] != fs[:-1]])
        sizes = np.diff(np.r_[starts, len(fs)])
        med = d[order][starts + sizes // 2]
        cells = fs[starts]
        iu, iz = cells // shape[1], cells % shape[1]
        level = _robust_level(iu, iz, med, sizes, cfg)
        raw = np.zeros(shape)
        raw.flat[cells] = med - level
        height = ndimage.median_filter(raw, size=3, mode='constant')
        proud = height > cfg.relief_min_height
        # A region's own cells: its grown cells that stand proud before the smoothing too.
        raw_proud = raw > 0.5 * cfg.relief_min_height
        color = None
        if colors is not None and cfg.relief_min_color > 0:
            # Flush objects (doors, pictures) differ from the wall in colour, not in depth.
            color, color_off = _wall_color_map(np.asarray(colors[pidx], np.float64), flat,
                                               cells, sizes, shape, raw, cfg)
            proud |= ndimage.median_filter(color_off, size=3, mode='constant') \
                > cfg.relief_min_color
            raw_proud |= color_off > 0.5 * cfg.relief_min_color
            # Neighbouring proud cells of different colours are different objects.
            regions = _absorb_slivers(_color_segments(proud, color, cfg.relief_color_link))
            num = int(regions.max())
        else:
            regions, num = ndimage.label(proud, structure)
        if num == 0:
            continue
        area = np.bincount(regions.ravel(), minlength=num + 1) * cell * cell
        vij = np.floor((np.c_[vox[idx] @ along, vox[idx, 2]] - origin) / cell).astype(
            np.int64) + 2
        vflat = vij[:, 0] * shape[1] + vij[:, 1]
        # Voxels of deeper objects just in front of the band: a region touching them is the
        # back of such an object (cabinet, bed), which the ordinary clustering handles.
        front = np.flatnonzero((vdist >= cfg.relief_front)
                               & (vdist < cfg.relief_front + 2 * cfg.cluster_distance))
        front_tree = cKDTree(vox[front]) if len(front) else None
        for r in np.flatnonzero(area[1:] >= cfg.relief_min_area) + 1:
            grown = ndimage.binary_dilation(regions == r, structure) & raw_proud
            if color is not None:
                ref = np.median(color[regions == r], axis=0)
                grown &= np.linalg.norm(color - ref, axis=-1) < cfg.relief_color_link
            members = idx[grown.flat[vflat]]
            members = members[~taken[members]]
            if not len(members):
                continue
            if front_tree is not None:
                dd, _ = front_tree.query(vox[members], distance_upper_bound=cfg.cluster_distance)
                touch = float(np.mean(np.isfinite(dd)))
            else:
                touch = 0.0
            logger.debug('wall %d region %d: %.2f m2, %d voxels, touch %.3f', i, r, area[r],
                         len(members), touch)
            if touch > cfg.relief_max_touch:
                continue
            taken[members] = True
            found.append((members, None if color is None else ref))
        out.extend(_group_frame_posts(vox, found, along, cfg))
    return out


def _group_frame_posts(vox: np.ndarray, regions: Sequence[tuple[np.ndarray, np.ndarray | None]],
                       along: np.ndarray, cfg: SegmentationConfig) -> list[np.ndarray]:
    """
    Join the posts of one frame (window or door jambs) found as separate regions of a wall.

    A window whose pane shows the wall or the outside is seen as its two side posts. Two
    regions are posts of one frame when both are at most ``cfg.relief_post_width`` wide and at
    least twice as tall as wide, their heights overlap by ``cfg.relief_post_overlap`` of the
    shorter one (occlusion often hides part of a post), the gap between them is at most
    ``cfg.relief_frame_span`` and (with colours) their colours differ by less than
    ``cfg.relief_color_link``. Other regions of matching colour inside the joined frame grown by
    ``cfg.relief_post_width`` (a sill, a rail) join it too.

    :param vox: (M, 3) voxel centroids, metres.
    :param regions: Per region its voxel indices and its colour (None without colours).
    :param along: (3,) unit vector along the wall, horizontal.
    :param cfg: Segmentation settings.
    :return: The regions after joining (voxel-index arrays).
    """
    if not cfg.relief_frame_span or len(regions) < 2:
        return [m for m, _ in regions]
    lo = np.array([[(vox[m] @ along).min(), vox[m, 2].min()] for m, _ in regions])
    hi = np.array([[(vox[m] @ along).max(), vox[m, 2].max()] for m, _ in regions])
    size = hi - lo + cfg.voxel_size

    def same_color(a: int, b: int) -> bool:
        ca, cb = regions[a][1], regions[b][1]
        return ca is None or cb is None or float(np.linalg.norm(ca - cb)) < cfg.relief_color_link

    post = (size[:, 0] <= cfg.relief_post_width) & (size[:, 1] >= 2 * size[:, 0])
    group = np.arange(len(regions))
    for a in np.flatnonzero(post):
        for b in np.flatnonzero(post):
            if b <= a or group[b] != b:
                continue
            gap = max(lo[b, 0] - hi[a, 0], lo[a, 0] - hi[b, 0])
            overlap = min(hi[a, 1], hi[b, 1]) - max(lo[a, 1], lo[b, 1]) + cfg.voxel_size
            if (0 < gap <= cfg.relief_frame_span
                    and overlap >= cfg.relief_post_overlap * min(size[a, 1], size[b, 1])
                    and same_color(a, b)):
                group[group == group[b]] = group[a]
    for g in np.unique(group):
        members = np.flatnonzero(group == g)
        if len(members) < 2:
            continue
        glo, ghi = lo[members].min(axis=0), hi[members].max(axis=0)
        inside = (np.all(lo >= glo - cfg.relief_post_width, axis=1)
                  & np.all(hi <= ghi + cfg.relief_post_width, axis=1))
        alone = (group == np.arange(len(regions))) & (np.bincount(group, minlength=len(group))
                                                      == 1)
        for c in np.flatnonzero(inside & alone):
            if all(same_color(c, m) for m in members):
                group[c] = g
    return [np.concatenate([regions[k][0] for k in np.flatnonzero(group == g)])
            for g in np.unique(group)]


def _wall_color_map(colors: np.ndarray, flat: np.ndarray, cells: np.ndarray, sizes: np.ndarray,
                    shape: np.ndarray, height: np.ndarray,
                    cfg: SegmentationConfig) -> tuple[np.ndarray, np.ndarray]:
    # Mean colour per cell (empty cells take their occupied neighbours' mean), and each cell's
    # colour distance from the wall's own colour. The wall is the largest colour-connected
    # segment of flush cells; its colour is a plane in (along, up) so that shading gradients
    # along the wall do not count as objects.
    inv_cell = np.searchsorted(cells, flat)
    mean = np.stack([np.bincount(inv_cell, weights=colors[:, c], minlength=len(cells))
                     for c in range(3)], axis=1) / sizes[:, None]
    occupied = np.zeros(shape, bool)
    occupied.flat[cells] = True
    grid = np.zeros((*shape, 3))
    grid.reshape(-1, 3)[cells] = mean
    near = ndimage.uniform_filter(occupied.astype(np.float64), size=3, mode='constant')
    filled = np.stack([ndimage.uniform_filter(grid[..., c], size=3, mode='constant')
                       for c in range(3)], axis=-1) / np.maximum(near, 1e-9)[..., None]
    grid = np.where(occupied[..., None], grid, filled)
    seg = _color_segments(occupied, grid, cfg.relief_color_link)
    flush = occupied & (np.abs(height) < cfg.relief_min_height)
    votes = np.bincount(seg[flush], minlength=int(seg.max()) + 1)
    votes[0] = 0
    iu, iz = cells // shape[1], cells % shape[1]
    design = np.c_[np.ones(len(cells)), iu * cfg.relief_cell, iz * cfg.relief_cell]
    on_wall = seg.flat[cells] == int(votes.argmax()) if votes.any() else np.ones(len(cells), bool)
    off = np.zeros(len(cells))
    for _ in range(2):
        if on_wall.sum() < 3:
            break
        coef, *_ = np.linalg.lstsq(design[on_wall], mean[on_wall], rcond=None)
        off = np.linalg.norm(mean - design @ coef, axis=1)
        on_wall = off < cfg.relief_min_color
    color_off = np.zeros(shape)
    color_off.flat[cells] = off
    return grid, color_off


def _absorb_slivers(regions: np.ndarray) -> np.ndarray:
    """
    Give each sliver region to its largest neighbour.

    Cells on an object's edge mix its colour with the wall's and form one-cell-wide regions of
    their own along it. A region whose every cell lies within one cell (8-neighbourhood) of a
    larger neighbouring region joins that region.

    :param regions: (H, W) int64 labels, 0 for no region.
    :return: The relabelled map (labels of absorbed regions become unused).
    """
    out = regions.copy()
    structure = np.ones((3, 3), bool)
    area = np.bincount(out.ravel())
    for r in np.argsort(area, kind='stable'):
        if r == 0 or area[r] == 0:
            continue
        mask = out == r
        ring = ndimage.binary_dilation(mask, structure) & ~mask & (out > 0)
        if not ring.any():
            continue
        neighbours = np.unique(out[ring])
        best = int(neighbours[np.argmax(area[neighbours])])
        if area[best] <= area[r]:
            continue
        if np.all(ndimage.binary_dilation(out == best, structure)[mask]):
            out[mask] = best
            area[best] += area[r]
            area[r] = 0
    return out


def _color_segments(mask: np.ndarray, grid: np.ndarray, link: float) -> np.ndarray:
    """
    Label the 8-connected components of ``mask`` linked where neighbours' colours are close.

    Two neighbouring cells of ``mask`` are linked when their colours differ by less than
    ``link``.

    :param mask: (H, W) bool cells to label.
    :param grid: (H, W, 3) colour per cell.
    :param link: Largest colour distance linking two neighbours.
    :return: (H, W) int64 labels, 0 outside ``mask``, 1.. for the components.
    """
    h, w = mask.shape
    ids = np.arange(h * w).reshape(h, w)
    rows, cols = [], []
    for di, dj in ((1, 0), (0, 1), (1, 1), (1, -1)):
        a = (slice(0, h - di), slice(max(0, -dj), w - max(0, dj)))
        b = (slice(di, h), slice(max(0, dj), w - max(0, -dj)))
        ok = mask[a] & mask[b] & (np.linalg.norm(grid[a] - grid[b], axis=-1) < link)
        rows.append(ids[a][ok])
        cols.append(ids[b][ok])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), np.int8), (r, c)), shape=(h * w, h * w))
    _, comp = connected_components(graph, directed=False)
    comp = comp.reshape(h, w)
    _, dense = np.unique(np.where(mask, comp, -1), return_inverse=True)
    dense = dense.reshape(h, w)
    # ``dense`` is 0 for the -1 (outside) entry when any cell lies outside the mask.
    return np.where(mask, dense + (0 if (~mask).any() else 1), 0).astype(np.int64)


def _robust_level(iu: np.ndarray, iz: np.ndarray, med: np.ndarray, sizes: np.ndarray,
                  cfg: SegmentationConfig) -> np.ndarray:
    # The wall is the back-most layer of the map holding at least cfg.relief_wall_share of its
    # cells: RANSAC may have put the plane on a large window or door just in front of it. A
    # planar fit med ~ a + b u + c z over that layer's cells, refitted on the cells near the
    # fit, then follows the slight tilt of fused walls without being pulled by proud objects.
    a = np.c_[np.ones(len(med)), iu * cfg.relief_cell, iz * cfg.relief_cell]
    use = sizes >= 3
    level = np.zeros(len(med))
    if use.sum() >= 10:
        vals = np.sort(med[use])
        # Cells within +-1 cm of each value, back to front; the first layer dense enough wins.
        layer = np.searchsorted(vals, vals + 0.01, side='right') - np.searchsorted(
            vals, vals - 0.01, side='left')
        dense = np.flatnonzero(layer >= cfg.relief_wall_share * len(vals))
        if len(dense):
            level[:] = vals[dense[0]]
    for tol in (0.015, 0.01):
        fit = use & (np.abs(med - level) < tol)
        if fit.sum() < 10:
            break
        coef, *_ = np.linalg.lstsq(a[fit], med[fit], rcond=None)
        level = a @ coef
    return level


def check_colors(colors: np.ndarray, n: int) -> np.ndarray:
    """
    Validate per-point colours; float colours all within [0, 1] (open3d's) are scaled to 0-255.

    :param colors: (n, 3) numeric RGB, 0-255 (or 0-1 floats).
    :param n: Number of points they belong to.
    :return: (n, 3) colours in 0-255 units.
    :raises ValueError: If the shape is not (n, 3) or a float colour is not finite.
    :raises TypeError: If ``colors`` is not numeric.
    """
    cols = np.asarray(colors)
    if cols.shape != (n, 3):
        raise ValueError(f'colors must have shape ({n}, 3) to match the points, got {cols.shape}')
    if not np.issubdtype(cols.dtype, np.number):
        raise TypeError(f'colors must be numeric, got dtype {cols.dtype}')
    if np.issubdtype(cols.dtype, np.floating):
        if not np.isfinite(cols).all():
            raise ValueError('colors contain NaN or infinite values')
        if len(cols) and cols.min() >= 0 and cols.max() <= 1:
            cols = cols * 255.0
    return cols


def _group_indices(labels: np.ndarray, num: int) -> tuple[np.ndarray, ...]:
    if num == 0:
        return ()
    order = np.argsort(labels, kind='stable')
    sorted_labels = labels[order]
    starts = np.searchsorted(sorted_labels, np.arange(num + 1))
    return tuple(order[starts[k]:starts[k + 1]].astype(np.int64) for k in range(num))


class _Dropped:
    """Clusters dropped per filter name, and the largest ones dropped as too large or tall."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.oversized: list[tuple[int, np.ndarray]] = []

    def add(self, reason: str, vox: np.ndarray, num_points: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        if reason in ('too_large', 'too_tall'):
            self.oversized.append((num_points, np.ptp(vox, axis=0)))


def _filter_clusters(vox: np.ndarray, counts: np.ndarray, comp: np.ndarray,
                     cfg: SegmentationConfig, walls: Sequence[Plane] = (),
                     dropped: _Dropped | None = None) -> np.ndarray:
    out = np.full(len(vox), -1, np.int64)
    if len(comp) == 0 or comp.max() < 0:
        return out
    order = np.argsort(comp, kind='stable')
    bounds = np.searchsorted(comp[order], np.arange(comp.max() + 2))
    # Every part is kept until after the merge, however small: table legs are often only a few
    # voxels each once the top occludes them, yet they carry the object's height.
    parts: list[np.ndarray] = []
    for k in range(comp.max() + 1):
        members = order[bounds[k]:bounds[k + 1]]
        pieces = [members]
        if counts[members].sum() < cfg.min_cluster_points:
            parts.append(members)
            continue
        if walls:
            pieces = _strip_wall_residue(
                vox, counts, members, cfg, walls,
                oversized=not _accept(vox[members], int(counts[members].sum()), cfg))
            if not pieces and dropped is not None:
                dropped.add('wall_sheet', vox[members], int(counts[members].sum()))
        if cfg.split_clusters:
            pieces = [q for p in pieces for q in (_split(vox, counts, p, cfg) if len(p) > 1
                                                   else [p])]
        parts.extend(p for p in pieces if len(p))
    if cfg.merge_stacked and len(parts) > 1:
        parts = merge_stacked_parts(vox, counts, parts, cfg)
    next_id = 0
    for part in parts:
        num_points = int(counts[part].sum())
        reason = _reject_reason(vox[part], num_points, cfg)
        if reason is None:
            out[part] = next_id
            next_id += 1
        elif dropped is not None:
            dropped.add(reason, vox[part], num_points)
    return out


def merge_stacked_parts(vox: np.ndarray, counts: np.ndarray, parts: Sequence[np.ndarray],
                        cfg: SegmentationConfig) -> list[np.ndarray]:
    """
    Merge parts that stand under an accepted cluster into it (table top + legs).

    Part B joins accepted cluster A when B reaches lower than A, B's top lies in A's lower half
    (or at most ``cfg.merge_max_gap`` below A's bottom), and at least ``cfg.merge_min_overlap`` of
    B's voxels fall inside A's ground footprint (A's occupied ``cfg.merge_cell`` xy cells grown by
    one cell). Each B joins the qualifying A with the lowest bottom gap; merges are one level deep.

    :param vox: (M, 3) voxel centroids, metres, +z up.
    :param counts: (M,) original points per voxel.
    :param parts: Disjoint (K_i,) int64 voxel-index arrays.
    :param cfg: Segmentation settings.
    :return: The parts after merging (merged parts are concatenated, order of A kept).
    """
    n = len(parts)
    # Per-part bounds in one pass (parts are mostly tiny noise islands, often thousands).
    member = np.concatenate(parts)
    pid = np.repeat(np.arange(n), [len(p) for p in parts])
    lo = np.full((n, 3), np.inf)
    hi = np.full((n, 3), -np.inf)
    np.minimum.at(lo, pid, vox[member])
    np.maximum.at(hi, pid, vox[member])
    weight = np.bincount(pid, weights=counts[member], minlength=n)
    accepted = np.zeros(n, bool)
    for i in np.flatnonzero(weight >= cfg.min_cluster_points):
        accepted[i] = _accept(vox[parts[i]], int(weight[i]), cfg)
    cell = cfg.merge_cell
    owner = np.full(n, -1, np.int64)
    best_gap = np.full(n, np.inf)
    for a in np.flatnonzero(accepted):
        mid = 0.5 * (lo[a, 2] + hi[a, 2])
        cand = ((lo[:, 2] < lo[a, 2]) & (hi[:, 2] <= mid)
                & (hi[:, 2] >= lo[a, 2] - cfg.merge_max_gap)
                & np.all(lo[:, :2] >= lo[a, :2] - cell, axis=1)
                & np.all(hi[:, :2] <= hi[a, :2] + cell, axis=1))
        cand[a] = False
        cand &= (hi[a, :2] - lo[a, :2]).prod() >= (hi[:, :2] - lo[:, :2]).prod()
        cand_idx = np.flatnonzero(cand)
        if len(cand_idx) == 0:
            continue
        origin = lo[a, :2]
        cells_a = np.floor((vox[parts[a], :2] - origin) / cell).astype(np.int64) + 1
        shape = cells_a.max(axis=0) + 2
        grid = np.zeros(shape, bool)
        grid[cells_a[:, 0], cells_a[:, 1]] = True
        # Grow by one cell (3 x 3 dilation) so that legs at the rim of a top still count.
        grown = grid.copy()
        grown[1:] |= grid[:-1]
        grown[:-1] |= grid[1:]
        g2 = grown.copy()
        g2[:, 1:] |= grown[:, :-1]
        g2[:, :-1] |= grown[:, 1:]
        for b in cand_idx:
            cb = np.floor((vox[parts[b], :2] - origin) / cell).astype(np.int64) + 1
            inside = np.all((cb >= 0) & (cb < shape), axis=1)
            hit = np.zeros(len(cb), bool)
            hit[inside] = g2[cb[inside, 0], cb[inside, 1]]
            gap = max(0.0, lo[a, 2] - hi[b, 2])
            if hit.mean() >= cfg.merge_min_overlap and gap < best_gap[b]:
                owner[b], best_gap[b] = a, gap
    if not (owner >= 0).any():
        return list(parts)
    # A part that itself gets merged cannot take others (one level): its children stay apart.
    owner[np.isin(owner, np.flatnonzero(owner >= 0))] = -1
    merged = [[p] for p in parts]
    for b in np.flatnonzero(owner >= 0):
        merged[owner[b]].append(parts[b])
    return [np.concatenate(m) for i, m in enumerate(merged) if owner[i] < 0]


def _strip_wall_residue(vox: np.ndarray, counts: np.ndarray, members: np.ndarray,
                        cfg: SegmentationConfig, walls: Sequence[Plane],
                        oversized: bool = True) -> list[np.ndarray]:
    # Depth noise leaves a thin sheet of wall points beyond the RANSAC band that chains
    # everything along a wall into one cluster: re-cluster without that sheet. An oversized
    # cluster loses the sheet; any other is split only when that leaves several parts of at
    # least ``min_cluster_points``, the sheet then going to the nearest part.
    dist = np.min(np.stack([np.abs(vox[members] @ w.normal + w.offset) for w in walls]), axis=0)
    near = dist < cfg.wall_residue_distance
    if not near.any():
        return [members]
    rest = members[~near]
    if len(rest) == 0:
        return [] if oversized else [members]
    sub = euclidean_clusters(vox[rest], cfg.cluster_distance)
    if oversized:
        return [rest[sub == k] for k in range(int(sub.max()) + 1)]
    weight = np.bincount(sub, weights=counts[rest])
    big = np.flatnonzero(weight >= cfg.min_cluster_points)
    if len(big) == 0:
        return [members]
    big_mask = np.isin(sub, big)
    others = np.r_[rest[~big_mask], members[near]]
    # The sheet joins the nearest part only where it touches one; the rest of it is wall.
    dist_big, nearest = cKDTree(vox[rest[big_mask]]).query(
        vox[others], distance_upper_bound=2 * cfg.cluster_distance)
    close = np.isfinite(dist_big)
    owner = np.r_[sub[big_mask], sub[big_mask][nearest[close]]]
    pool = np.r_[rest[big_mask], others[close]]
    pieces = [pool[owner == b] for b in big]
    loose = others[~close]
    if len(loose):
        sub2 = euclidean_clusters(vox[loose], cfg.cluster_distance)
        pieces += [loose[sub2 == k] for k in range(int(sub2.max()) + 1)]
    return pieces


def _split(vox: np.ndarray, counts: np.ndarray, members: np.ndarray,
           cfg: SegmentationConfig) -> list[np.ndarray]:
    sub = euclidean_clusters(vox[members], cfg.split_distance)
    if sub.max() == 0:
        return [members]
    weight = np.bincount(sub, weights=counts[members])
    big = np.flatnonzero(weight >= cfg.split_min_points)
    if len(big) < 2:
        return [members]
    # Small fragments join the nearest large part.
    big_mask = np.isin(sub, big)
    tree = cKDTree(vox[members[big_mask]])
    _, nearest = tree.query(vox[members[~big_mask]])
    assign = sub.copy()
    assign[~big_mask] = sub[big_mask][nearest]
    return [members[assign == b] for b in big]


def _reject_reason(vox: np.ndarray, num_points: int, cfg: SegmentationConfig) -> str | None:
    """
    Name the filter that drops a cluster, or None when the cluster is kept.

    :param vox: (K, 3) the cluster's voxel centroids, metres.
    :param num_points: Original points of the cluster.
    :param cfg: Segmentation settings.
    :return: ``'too_small'`` (under ``min_cluster_points``), ``'too_large'`` (horizontal extent
        over ``max_cluster_extent``), ``'too_tall'`` (over ``max_cluster_height``), ``'too_thin'``
        (largest extent under ``min_cluster_extent``) or None.
    """
    if num_points < cfg.min_cluster_points:
        return 'too_small'
    extent = np.ptp(vox, axis=0)
    if max(extent[0], extent[1]) > cfg.max_cluster_extent:
        return 'too_large'
    if extent[2] > cfg.max_cluster_height:
        return 'too_tall'
    if extent.max() + cfg.voxel_size < cfg.min_cluster_extent:
        return 'too_thin'
    return None


def _accept(vox: np.ndarray, num_points: int, cfg: SegmentationConfig) -> bool:
    return _reject_reason(vox, num_points, cfg) is None
