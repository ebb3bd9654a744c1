"""
Multi-view depth maps of object point clouds (OpenDlign contour-aware and PointCLIP V2 realistic).

Conventions (stated once; every function here follows them)
-----------------------------------------------------------

*Object frame.* Input clouds are ``(N, 3)`` xyz in a +z-up frame (REP-103); units are
irrelevant because every view is normalised on its own. Nothing else is assumed about the
frame: a cloud is not re-centred or re-oriented before projection.

*Views.* View ``k`` is a camera orbiting the object about the +z axis. With azimuth
``theta = view_angles_deg[k]`` and elevation ``phi = elevation_deg`` (positive: the camera is
above the object and looks down), the camera axes, unit vectors in the object frame, are::

    right   r = (-sin theta,           cos theta,           0)        image u (column) grows
    down    d = ( sin phi cos theta,   sin phi sin theta,  -cos phi)  image v (row) grows
    forward f = (-cos phi cos theta,  -cos phi sin theta,  -sin phi)  depth grows (away)

so the camera sits on the ray from the centre along ``-f`` (azimuth 0 looks from +x towards -x,
azimuth 90 from +y; the object's +z points up in the image when ``|phi| < 90``). ``(r, d, f)`` is a
right-handed (OpenCV-style) camera frame, :func:`view_rotations` returns it as rows. A point
``p`` has camera coordinates ``(a, b, c) = (p.r, p.d, p.f)``. Views are orthographic.
The default azimuths are 30 + 36 k degrees, k = 0..9: our resolution of the paper's
self-contradictory "30 to 330 degrees at 30-degree intervals, 10 views" (spec section 10):
ten evenly spaced views starting at 30 degrees. The view order is the encoder order: with V
views, views ``0 .. V//2 - 1`` go to the pre-trained encoder and the rest to the depth branch.

*Pixels and depth (contour method).* Per view, with ``lo``/``hi`` the per-axis minimum/maximum
of the camera coordinates, ``ctr = (lo + hi) / 2``, ``s = max(hi_a - lo_a, hi_b - lo_b)``
(``s = 1`` if 0), ``R = resolution`` and ``rho = object_ratio``::

    col = clip(floor(R / 2 + (a - ctr_a) * (rho * R / s)), 0, R - 1)
    row = clip(floor(R / 2 + (b - ctr_b) * (rho * R / s)), 0, R - 1)
    bin = min(floor(B * (c - lo_c) / (hi_c - lo_c)), B - 1)        (bin = 0 if hi_c == lo_c)

so the larger image-plane extent of the object fills ``rho`` of the image, centred, with the
aspect ratio kept, and the nearest point is in bin 0 and the farthest in bin ``B - 1``. Output
maps are ``(H, W) = (R, R)``, index ``[row, col]``, ``row`` 0 at the top.

*Contour-aware projection (OpenDlign, spec section 2.1).*

1. Quantise: ``G[z, row, col] = n_z = 1 - far_value * z / (B - 1)`` (the *nearness* of bin z:
   1 for the nearest bin, ``1 - far_value`` for the farthest) where a point falls, 0 elsewhere.
2. Densify: 3D max-pool, cubic window ``densify_kernel`` (7), stride 1, "same" size.
3. Smooth: bilateral filter over a cubic window ``bilateral_kernel`` (5): the voxel value becomes
   ``sum_j w_j I_j / sum_j w_j`` with
   ``w_j = exp(-|x_i - x_j|^2 / (2 sigma_s^2)) * exp(-(I_i - I_j)^2 / (2 sigma_r^2))``,
   ``|x_i - x_j|`` in voxels. Voxels outside the grid count as empty voxels of value 0 (the grid
   is a window onto empty space), in both the max-pool and the bilateral filter.
4. Squeeze: ``D = min_z (1 - G)`` (the nearest surface wins). Empty columns give ``D = 1``
   (white background), the nearest surface ``D = 0`` (black), the farthest ``D = far_value``;
   the bilateral filter leaves soft contours between these levels. ``D`` lies in [0, 1].

*Why the fast path is exact and fast.* After step 2 a column ``(row, col)`` is fully described
by the set of occupied bins within the ``densify_kernel`` window in the image plane, a ``B``-bit
mask (OR-pooling of per-pixel bit masks is the max-pool in xy; the max-pool along depth maps a
mask to the column's value profile, because nearness decreases with depth; masks whose
profiles agree share a *profile code*: 80 codes for the defaults). The bilateral output of a
voxel depends only on the centre column's profile and the neighbour columns' profiles, so a
table indexed by (centre code, neighbour code) holds, for every depth ``z``, the
depth-direction part of the numerator and denominator sums. The filter becomes
``bilateral_kernel**2`` table lookups per pixel (a weighted ``embedding_bag``), done only for
pixels whose window holds more than one code; a window of one code takes a precomputed value
and pixels farther than the window from the object stay background. These are the same sums
as the reference in a different order (float32 round-off only; ``test/core/test_projection.py``
checks it against :mod:`opendlign_core._reference`). The table is used while it stays small
(:data:`MAX_TABLE_BINS`, :data:`MAX_TABLE_BYTES`: B <= 10 with the default kernels, 320 codes);
beyond that an exact dense path is used (per-level "bilateral grid": the pooled grid only
takes the ``B + 1`` values ``{0, n_0..n_{B-1}}``, so the filter is a sum over levels of a range
weight times a separable Gaussian convolution of the level's indicator); it is about two
orders of magnitude slower.

*Defaults* (:class:`~opendlign_core.config.ProjectionConfig`): ``depth_bins = 8``: PointCLIP V2
uses 8 bins; with a 7-bin max-pool along depth, more bins mostly widen plateaus, and 8 keeps
the fast table path (an 80 x 80 x 16 float table, built once per setting in about 0.1 s).
``bilateral_sigma_spatial = 1`` voxel (the 5-voxel window then holds about 99 % of the 1-D
Gaussian mass, so the window truncates little) and ``bilateral_sigma_range = 0.1``: adjacent
bins differ by ``far_value / 7 = 0.114`` in nearness, so one-bin steps are averaged with range
weight 0.52 (smooth shading), two-bin steps with 0.07, three-bin jumps with 0.003, and the
object/background edge of the nearest surfaces with ~1e-22 (sharp contours: the edge-preserving
behaviour the paper asks for); the farthest surfaces (nearness 0.2) blend into the background a
little (weight 0.14), which lightens far contours.
Cost (``benchmarks/bench_frame.py``, 2-core Xeon, one thread, objects of depth frames, up to
8192 points, 10 views at 224 px): about 12-15 ms per object in the detector's batches of 8
(the PointCLIP V2 projection: 16-20 ms), 15-20 ms for one object per call (PointCLIP V2:
8-9 ms). Full-image steps use bit masks in uint8, window OR/AND in log steps and NumPy
look-ups with the narrow index (torch widens every index to int64 first). The rest is about
``25 * (pixels whose window holds several codes)`` table lookups of 16 floats (~60 % of the
time), independent of the number of points beyond the initial scatter. The loop reference
(:mod:`opendlign_core._reference`) needs ~1.8 s for 10 views at 12 px.

*Realistic projection (PointCLIP V2 baseline, spec section 2.3), written from its description.*
Same views. Per view the camera coordinates are centred on the bounding-box centre, divided by
the largest extent of all three axes and doubled (so they lie in [-1, 1]); ``a, b`` are multiplied
by ``object_ratio``. On a ``G = resolution // 2`` grid (112 for 224) with 8 depth bins:
``col = clip(ceil((a + 1) / 2 * G), 1, G - 2)`` (``row`` likewise from ``b``), the score
``q = ((1 - c) / 2 + 0.2) / 1.2 * 6`` (nearer is larger; 0.2 is the depth bias) goes to bin
``clip(ceil(q), 1, 6)`` with a max reduction (empty = 0); the voxel keeps the continuous ``q``
(as PointCLIP V2's scatter of the unrounded depth coordinate does), not the bin index. Then a
(1, 7, 7) max-pool ("same" padding; PointCLIP V2 pads 2 and loses 2 pixels), a (1, 3, 3)
Gaussian with sigma 3 (normalised, zero padding), the max over depth, division by the
per-image maximum, ``1 - x`` (background 1, nearest 0) and a bilinear resize
(``align_corners=False``) to ``resolution``.
"""

import functools
import logging
import math
from pathlib import Path
from typing import List, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from opendlign_core.config import IMAGENET_MEAN, IMAGENET_STD, ProjectionConfig
from opendlign_core.threads import torch_threads

logger = logging.getLogger(__name__)

PointsLike = Union[np.ndarray, torch.Tensor]


#: Largest ``depth_bins`` that may use the (centre code, neighbour code) table path; it is used
#: when the table also fits in :data:`MAX_TABLE_BYTES` (B <= 10 with the default kernels).
MAX_TABLE_BINS = 12
#: Largest pair table (float32) the table path builds.
MAX_TABLE_BYTES = 32 << 20

# Pixels per lookup chunk on CPU (temporaries of a few MiB stay in cache).
_CHUNK = 16384

_REALISTIC_BINS = 8
_REALISTIC_DEPTH_BIAS = 0.2
_REALISTIC_POOL = 7
_REALISTIC_SIGMA = 3.0


def project_depth_views(points: Union[PointsLike, Sequence[PointsLike]],
                        config: ProjectionConfig = ProjectionConfig(),
                        device: Union[str, torch.device] = 'cpu') -> torch.Tensor:
    """
    Project object point clouds into multi-view depth maps.

    :param points: One cloud, (N, 3) float array or tensor, +z up; or a sequence of clouds with
        different N (a ragged batch); or a (B, N, 3) float array/tensor.
    :param config: Projection settings; ``config.method`` picks ``'contour'`` (OpenDlign) or
        ``'realistic'`` (PointCLIP V2).
    :param device: Torch device the computation runs on, e.g. ``'cpu'`` or ``'cuda:0'``. On CPU
        the call runs with ``config.num_threads`` intra-op threads (``torch.set_num_threads`` is
        process-wide: an encoder running concurrently in another Python thread sees it too).
    :return: (B, V, H, W) float32 on ``device``, values in [0, 1]: background 1, nearest surface
        darkest (see the module docstring for the exact conventions). B = 1 for a single cloud.
    :raises TypeError: If a cloud is not a floating-point array/tensor or ``config`` is not a
        :class:`ProjectionConfig`.
    :raises ValueError: If a cloud is empty, not (N, 3), or holds non-finite values, or the
        batch is empty.
    """
    if not isinstance(config, ProjectionConfig):
        raise TypeError(f'config must be a ProjectionConfig, got {type(config).__name__}')
    dev = torch.device(device)
    clouds = _as_cloud_list(points, dev)
    with torch_threads(config.num_threads, dev), torch.no_grad():
        if config.method == 'realistic':
            return _project_realistic(clouds, config, dev)
        idx, bins = _contour_voxels(clouds, config, dev)
        if _table_fits(config):
            return _contour_table(idx, bins, len(clouds), config, dev)
        logger.debug('depth_bins=%d: using the slow dense contour path', config.depth_bins)
        return _contour_dense(idx, bins, len(clouds), config, dev)


def view_rotations(config: ProjectionConfig = ProjectionConfig()) -> np.ndarray:
    """
    Return the camera frames of the views.

    :param config: Supplies ``view_angles_deg`` and ``elevation_deg``.
    :return: (V, 3, 3) float64; row 0 = right (image u), row 1 = down (image v), row 2 = forward
        (depth), in the object frame. Camera coordinates of ``p`` are ``R[k] @ p``.
    """
    theta = np.deg2rad(np.asarray(config.view_angles_deg, dtype=np.float64))
    phi = math.radians(config.elevation_deg)
    ct, st = np.cos(theta), np.sin(theta)
    cp, sp = math.cos(phi), math.sin(phi)
    zeros = np.zeros_like(theta)
    right = np.stack([-st, ct, zeros], axis=1)
    down = np.stack([sp * ct, sp * st, np.full_like(theta, -cp)], axis=1)
    forward = np.stack([-cp * ct, -cp * st, np.full_like(theta, -sp)], axis=1)
    return np.stack([right, down, forward], axis=1)


def views_to_images(views: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN,
                    std: Sequence[float] = IMAGENET_STD) -> torch.Tensor:
    """
    Turn depth maps into normalised 3-channel images (ImageNet statistics by default).

    :param views: (..., H, W) depth maps in [0, 1], e.g. (B, V, H, W).
    :param mean: Per-channel mean (3 values).
    :param std: Per-channel standard deviation (3 values).
    :return: (..., 3, H, W) float32, channel c = ``(views - mean[c]) / std[c]``; same device.
    :raises TypeError: If ``views`` is not a floating-point tensor.
    :raises ValueError: If ``views`` has fewer than 2 dimensions.
    """
    if not isinstance(views, torch.Tensor) or not views.is_floating_point():
        raise TypeError(f'views must be a floating-point torch.Tensor, got {_describe(views)}')
    if views.dim() < 2:
        raise ValueError(f'views must be (..., H, W), got shape {tuple(views.shape)}')
    mean_t = torch.tensor(mean, dtype=torch.float32, device=views.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=views.device)
    x = views.to(torch.float32).unsqueeze(-3)
    return (x - mean_t.view(3, 1, 1)) / std_t.view(3, 1, 1)


def save_views_png(views: PointsLike, path: Union[str, Path], ncols: int = 5) -> Path:
    """
    Save depth maps as one grey-scale montage PNG (row-major in view order, 4-pixel gaps).

    :param views: (V, H, W) depth maps in [0, 1] (array or tensor); values are clipped.
    :param path: Output ``.png`` path; parent folders are created.
    :param ncols: Views per montage row, >= 1.
    :return: The written path.
    :raises ValueError: If ``views`` is not (V, H, W) or ``ncols < 1``.
    """
    from PIL import Image

    arr = views.detach().cpu().numpy() if isinstance(views, torch.Tensor) else np.asarray(views)
    if arr.ndim != 3:
        raise ValueError(f'views must be (V, H, W), got shape {arr.shape}')
    if ncols < 1:
        raise ValueError(f'ncols must be >= 1, got {ncols}')
    num, h, w = arr.shape
    cols = min(ncols, num)
    rows = -(-num // cols)
    gap = 4
    canvas = np.full((rows * h + (rows + 1) * gap, cols * w + (cols + 1) * gap), 128, np.uint8)
    img = np.clip(np.nan_to_num(arr, nan=1.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    for k in range(num):
        r, c = divmod(k, cols)
        y, x = gap + r * (h + gap), gap + c * (w + gap)
        canvas[y:y + h, x:x + w] = img[k]
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas, mode='L').save(out)
    return out


# --------------------------------------------------------------------------------------------
# Input handling and geometry


def _describe(x: object) -> str:
    dtype = getattr(x, 'dtype', None)
    return f'{type(x).__name__}' + (f' of dtype {dtype}' if dtype is not None else '')


def _as_cloud_list(points: object, device: torch.device) -> List[torch.Tensor]:
    if isinstance(points, (np.ndarray, torch.Tensor)) and points.ndim == 3:
        items = list(points)
    elif isinstance(points, (np.ndarray, torch.Tensor)):
        items = [points]
    elif isinstance(points, (list, tuple)):
        items = list(points)
        if not items:
            raise ValueError('points is an empty sequence; expected at least one (N, 3) cloud')
    else:
        raise TypeError('points must be an (N, 3) array/tensor or a sequence of them, '
                        f'got {_describe(points)}')
    clouds = []
    for i, item in enumerate(items):
        name = 'points' if len(items) == 1 else f'points[{i}]'
        if isinstance(item, np.ndarray):
            if not np.issubdtype(item.dtype, np.floating):
                raise TypeError(f'{name} must be a floating-point array, got {_describe(item)}')
            tensor = torch.from_numpy(np.ascontiguousarray(item))
        elif isinstance(item, torch.Tensor):
            if not item.is_floating_point():
                raise TypeError(f'{name} must be a floating-point tensor, got {_describe(item)}')
            tensor = item.detach()
        else:
            raise TypeError(f'{name} must be a numpy array or torch tensor, got {_describe(item)}')
        if tensor.dim() != 2 or tensor.shape[1] != 3 or tensor.shape[0] == 0:
            raise ValueError(f'{name} must have shape (N, 3) with N >= 1, '
                             f'got {tuple(tensor.shape)}')
        tensor = tensor.to(device=device, dtype=torch.float64)
        if not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).any(dim=1).sum())
            raise ValueError(f'{name} has {bad} non-finite rows of {tensor.shape[0]}; '
                             'drop them first (opendlign_core.pointcloud.clean_points)')
        clouds.append(tensor)
    return clouds


def _camera_coords(cloud: torch.Tensor, config: ProjectionConfig) -> torch.Tensor:
    """(N, 3) float64 -> (V, N, 3) float64 camera coordinates (a, b, c)."""
    rot = torch.from_numpy(view_rotations(config)).to(cloud.device)
    return torch.einsum('vij,nj->vni', rot, cloud)


def _contour_voxels(clouds: List[torch.Tensor], config: ProjectionConfig,
                    device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Return (pixel index ``img * R * R + row * R + col``, bin) int64 for every point/view."""
    res, nbins, ratio = config.resolution, config.depth_bins, config.object_ratio
    views = config.num_views
    all_idx, all_bins = [], []
    for obj, cloud in enumerate(clouds):
        cam = _camera_coords(cloud, config)
        lo, hi = cam.amin(dim=1), cam.amax(dim=1)                   # (V, 3)
        ctr = (lo + hi) / 2.0
        ext = hi - lo
        s = torch.maximum(ext[:, 0], ext[:, 1])
        s = torch.where(s > 0, s, torch.ones_like(s))
        scale = (ratio * res / s)[:, None]
        col = torch.floor(res / 2.0 + (cam[..., 0] - ctr[:, 0:1]) * scale).clamp_(0, res - 1)
        row = torch.floor(res / 2.0 + (cam[..., 1] - ctr[:, 1:2]) * scale).clamp_(0, res - 1)
        depth = ext[:, 2:3]
        t = torch.where(depth > 0, (cam[..., 2] - lo[:, 2:3]) / torch.where(depth > 0, depth, 1.0),
                        torch.zeros_like(cam[..., 2]))
        bins = torch.floor(t * nbins).clamp_(max=nbins - 1).long()
        img = (obj * views + torch.arange(views, device=device))[:, None]
        all_idx.append((img * (res * res) + row.long() * res + col.long()).reshape(-1))
        all_bins.append(bins.reshape(-1))
    return torch.cat(all_idx), torch.cat(all_bins)


def _nearness(config: ProjectionConfig) -> np.ndarray:
    """(B,) float64 nearness of each bin: 1 - far_value * z / (B - 1)."""
    z = np.arange(config.depth_bins, dtype=np.float64)
    return 1.0 - config.far_value * z / (config.depth_bins - 1)


def _gauss1d(kernel: int, sigma: float) -> np.ndarray:
    d = np.arange(kernel, dtype=np.float64) - kernel // 2
    return np.exp(-d * d / (2.0 * sigma * sigma))


# --------------------------------------------------------------------------------------------
# Contour-aware projection, table path (small B)


@functools.lru_cache(maxsize=8)
def _profile_codes(nbins: int, densify: int, far_value: float) -> Tuple[np.ndarray, np.ndarray]:
    """
    Return the profile code of every B-bit mask and the distinct profiles.

    :return: ``code`` (2^B,) int64 (code 0 = the empty profile) and ``profile`` (P, B) float64,
        ``profile[code[m], z]`` = nearness of the nearest set bit of ``m`` within
        ``[z - densify // 2, z + densify // 2]``, or 0.
    """
    levels = 1.0 - far_value * np.arange(nbins) / (nbins - 1)
    num_masks = 1 << nbins
    bits = (np.arange(num_masks)[:, None] >> np.arange(nbins)[None, :]) & 1   # (M, B)
    half = densify // 2
    profile = np.zeros((num_masks, nbins))
    for z in range(nbins):
        lo, hi = max(0, z - half), min(nbins, z + half + 1)
        window = bits[:, lo:hi].astype(bool)
        has = window.any(axis=1)
        first = lo + window.argmax(axis=1)
        profile[:, z] = np.where(has, levels[first], 0.0)
    profile, code = np.unique(profile, axis=0, return_inverse=True)   # row 0 = all zeros
    return code.reshape(-1), profile


@functools.lru_cache(maxsize=8)
def _pair_table_np(nbins: int, densify: int, kernel: int, sigma_s: float, sigma_r: float,
                   far_value: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """
    Depth-direction bilateral sums for every pair of column profiles.

    A column's B-bit mask (occupied bins within the densify window in xy) gives its profile
    after the depth part of the max-pool: ``I(z) = n_k`` for the nearest set bit k in
    ``[z - densify // 2, z + densify // 2]``, else 0. Masks with equal profiles (set bits hidden
    behind a nearer one) share a code.

    :return: ``code`` (2^B,) int64 profile code of each mask (code 0 = the empty profile),
        ``table`` (P * P, 2B) float64 with row ``c * P + n`` holding, for the centre profile c
        and the neighbour profile n, ``sum_dz g(dz) r(I_c(z) - I_n(z + dz)) I_n(z + dz)`` in
        column z and the same sum without ``I_n`` in column ``B + z`` (``I_n = 0`` outside the
        grid), and ``uniform`` (P,) ``1 - max_z num / den`` of a window of equal profiles.
    """
    code, profile = _profile_codes(nbins, densify, far_value)
    num = profile.shape[0]
    gz = _gauss1d(kernel, sigma_s)
    rb = kernel // 2
    table = np.zeros((num, num, 2 * nbins))
    for z in range(nbins):
        centre = profile[:, z][:, None]
        for k, dz in enumerate(range(-rb, rb + 1)):
            zz = z + dz
            nb = profile[:, zz][None, :] if 0 <= zz < nbins else np.zeros((1, num))
            w = gz[k] * np.exp(-(centre - nb) ** 2 / (2.0 * sigma_r * sigma_r))
            table[:, :, z] += w * nb
            table[:, :, nbins + z] += np.broadcast_to(w, (num, num))
    same = table[np.arange(num), np.arange(num)]
    uniform = 1.0 - (same[:, :nbins] / same[:, nbins:]).max(axis=1)
    return code, table.reshape(num * num, 2 * nbins), uniform


_TABLE_CACHE: dict = {}


def _table_fits(config: ProjectionConfig) -> bool:
    """Return whether the table path serves ``config`` (few enough bins and profile codes)."""
    if config.depth_bins > MAX_TABLE_BINS:
        return False
    codes = _profile_codes(config.depth_bins, config.densify_kernel, config.far_value)[1].shape[0]
    return codes * codes * 2 * config.depth_bins * 4 <= MAX_TABLE_BYTES


def _pair_table(config: ProjectionConfig,
                device: torch.device) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """
    Return :func:`_pair_table_np`'s ``code``, ``table`` and ``uniform`` on ``device``.

    :return: (2^B,) uint8 (int16 if P > 256), (P * P, 2B) float32 and (P,) float32 tensors.
    """
    key = (config.depth_bins, config.densify_kernel, config.bilateral_kernel,
           config.bilateral_sigma_spatial, config.bilateral_sigma_range, config.far_value,
           str(device))
    cached = _TABLE_CACHE.get(key)
    if cached is None:
        code, table, uniform = _pair_table_np(*key[:6])
        code_dtype = torch.uint8 if uniform.shape[0] <= 256 else torch.int16
        cached = (torch.from_numpy(code).to(device=device, dtype=code_dtype),
                  torch.from_numpy(table).to(device=device, dtype=torch.float32),
                  torch.from_numpy(uniform).to(device=device, dtype=torch.float32))
        if len(_TABLE_CACHE) >= 8:
            _TABLE_CACHE.clear()
        _TABLE_CACHE[key] = cached
    return cached


def _window_bits(masks: torch.Tensor, kernel: int, op: str) -> torch.Tensor:
    """
    Bitwise OR (``op='or'``) or AND (``op='and'``) over a square window, zero padding.

    Each axis takes ``ceil(log2(kernel))`` passes (windows of 1, 2, 4, ... values combined with
    a shifted copy of themselves, then one pass for the rest) instead of ``kernel - 1``.

    :param masks: (I, H, W) integer tensor.
    :param kernel: Odd window edge.
    :param op: ``'or'`` or ``'and'``.
    :return: (I, H, W) tensor of the same dtype.
    """
    half = kernel // 2
    if half == 0:
        return masks
    combine = torch.bitwise_or if op == 'or' else torch.bitwise_and
    out = masks
    for dim, pad in ((2, (half, half, 0, 0)), (1, (0, 0, half, half))):
        acc = F.pad(out, pad)
        span = 1          # acc[i] combines the padded values i .. i + span - 1
        while span < kernel:
            step = min(span, kernel - span)
            size = acc.shape[dim] - step
            acc = combine(acc.narrow(dim, 0, size), acc.narrow(dim, step, size))
            span += step
        out = acc
    return out


def _lut(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """
    Return ``table[index]`` for a 1-D table and a non-negative integer index of any shape.

    On CPU NumPy indexes with the small integer dtype directly, several times faster than torch,
    which first widens the whole index to int64.
    """
    if index.device.type == 'cpu':
        return torch.from_numpy(table.numpy()[index.numpy()])
    return table[index.long()]


def _contour_table(idx: torch.Tensor, bins: torch.Tensor, num_objects: int,
                   config: ProjectionConfig, device: torch.device) -> torch.Tensor:
    res, nbins, views = config.resolution, config.depth_bins, config.num_views
    num_images = num_objects * views
    # 1. Per-pixel bit mask of occupied bins (B <= 12 bits fit the narrow dtype).
    mask_dtype = torch.uint8 if nbins <= 8 else torch.int16
    if device.type == 'cpu':
        # An unbuffered OR into each point's pixel (NumPy's ufunc.at): 5x faster than the
        # sort that the device path needs.
        np_dtype = np.uint8 if nbins <= 8 else np.int16
        flat = np.zeros(num_images * res * res, dtype=np_dtype)
        bits = np.left_shift(np_dtype(1), bins.numpy().astype(np_dtype))
        np.bitwise_or.at(flat, idx.numpy(), bits)
        masks = torch.from_numpy(flat).view(num_images, res, res)
    else:
        # Distinct bits of one pixel sum to their OR: a sum over distinct (pixel, bin).
        keys = torch.unique(idx * nbins + bins)
        masks = torch.zeros(num_images * res * res, dtype=torch.int64, device=device)
        masks.index_add_(0, torch.div(keys, nbins, rounding_mode='floor'),
                         torch.ones_like(keys) << (keys % nbins))
        masks = masks.view(num_images, res, res).to(mask_dtype)
    # 2. Densify in xy (OR-pool); the depth part of the max-pool lives in the table, which is
    #    indexed by profile codes (masks with equal depth profiles share a code; empty = 0).
    code, table, uniform = _pair_table(config, device)
    num_codes = uniform.numel()
    codes = _lut(code, _window_bits(masks, config.densify_kernel, 'or'))
    # 3. Pixels the bilateral window reaches: those whose window holds a single code
    #    (OR == AND) take a precomputed value, the others are summed over their window.
    kb = config.bilateral_kernel
    rb = kb // 2
    mixed = _window_bits(codes, kb, 'or') != _window_bits(codes, kb, 'and')
    out = _lut(uniform, codes.view(-1))
    pixels = torch.nonzero(mixed.view(-1)).squeeze(1)
    # 4. Bilateral filter of mixed pixels = weighted lookups of (centre code, neighbour code),
    #    in chunks small enough to stay in cache.
    side = res + 2 * rb
    padded = F.pad(codes, (rb, rb, rb, rb)).reshape(-1)
    img = torch.div(pixels, res * res, rounding_mode='floor')
    rowcol = pixels - img * (res * res)
    row = torch.div(rowcol, res, rounding_mode='floor')
    base = img * (side * side) + (row + rb) * side + (rowcol - row * res + rb)
    # rows[i] = padded[i : i + kb] (an overlapping view), so a window is kb row lookups.
    rows = padded.as_strided((padded.numel() - kb + 1, kb), (1, 1))
    offsets = (torch.arange(-rb, rb + 1, device=device) * side - rb).reshape(1, -1)
    g = torch.from_numpy(_gauss1d(kb, config.bilateral_sigma_spatial)).to(device)
    gxy = (g[:, None] * g[None, :]).reshape(1, -1).to(torch.float32)
    chunk = _CHUNK if device.type == 'cpu' else max(pixels.numel(), 1)
    weights = gxy.expand(min(chunk, pixels.numel()), kb * kb).contiguous()
    values = torch.empty(pixels.numel(), dtype=torch.float32, device=device)
    for start in range(0, pixels.numel(), chunk):
        b = base[start:start + chunk]
        lookup = rows.index_select(0, (b[:, None] + offsets).view(-1)).view(-1, kb * kb).int()
        lookup += padded[b].int()[:, None] * num_codes
        sums = F.embedding_bag(lookup, table, per_sample_weights=weights[:b.numel()],
                               mode='sum')
        values[start:start + chunk] = (sums[:, :nbins] / sums[:, nbins:]).amax(dim=1)
    out[pixels] = 1.0 - values
    return out.view(num_objects, views, res, res)


def _slide(x: torch.Tensor, kernel: int, dim: int, pad_value: float = 0.0) -> torch.Tensor:
    """Return the ``kernel`` shifted views (centred window) of ``x`` along ``dim``, padded."""
    half = kernel // 2
    pad = [0, 0] * (x.dim() - dim % x.dim() - 1) + [half, half]
    padded = F.pad(x, pad, value=pad_value)
    size = x.shape[dim]
    return [padded.narrow(dim, i, size) for i in range(kernel)]


def _sliding_max(x: torch.Tensor, kernel: int, dims: Sequence[int]) -> torch.Tensor:
    """Max over a centred window along each of ``dims`` of a non-negative tensor (0 padding)."""
    for dim in dims:
        if kernel > 1:
            views = _slide(x, kernel, dim)
            out = views[0].clone()
            for v in views[1:]:
                torch.maximum(out, v, out=out)
            x = out
    return x


def _sliding_conv(x: torch.Tensor, g: torch.Tensor, dims: Sequence[int],
                  pad_value: float = 0.0) -> torch.Tensor:
    """
    Separable correlation with the symmetric 1-D kernel ``g`` along each of ``dims``.

    Outside the tensor the input is ``pad_value`` (after a pass, ``pad_value * sum(g)``).
    """
    weights = [float(w) for w in g]
    for dim in dims:
        views = _slide(x, len(weights), dim, pad_value)
        out = views[0] * weights[0]
        for w, v in zip(weights[1:], views[1:]):
            out.add_(v, alpha=w)
        x = out
        pad_value *= sum(weights)
    return x


# --------------------------------------------------------------------------------------------
# Contour-aware projection, dense path (any B)


def _contour_dense(idx: torch.Tensor, bins: torch.Tensor, num_objects: int,
                   config: ProjectionConfig, device: torch.device) -> torch.Tensor:
    res, nbins, views = config.resolution, config.depth_bins, config.num_views
    num_images = num_objects * views
    levels = torch.from_numpy(_nearness(config)).to(device=device, dtype=torch.float32)
    grid = torch.zeros(num_images, nbins, res, res, dtype=torch.float32, device=device)
    img = torch.div(idx, res * res, rounding_mode='floor')
    pix = idx % (res * res)
    grid.view(num_images, nbins, res * res)[img, bins, pix] = levels[bins]
    grid = _sliding_max(grid, config.densify_kernel, (1, 2, 3))
    # Crop to the rows/columns the bilateral window can reach (everything else stays empty).
    kb, rb = config.bilateral_kernel, config.bilateral_kernel // 2
    any_rows = torch.nonzero(grid.amax(dim=(0, 1, 3)) > 0).flatten()
    any_cols = torch.nonzero(grid.amax(dim=(0, 1, 2)) > 0).flatten()
    r0, r1 = max(int(any_rows[0]) - rb, 0), min(int(any_rows[-1]) + rb + 1, res)
    c0, c1 = max(int(any_cols[0]) - rb, 0), min(int(any_cols[-1]) + rb + 1, res)
    crop = grid[:, :, r0:r1, c0:c1].contiguous()
    g = torch.from_numpy(_gauss1d(kb, config.bilateral_sigma_spatial)).to(device, torch.float32)
    inv = 1.0 / (2.0 * config.bilateral_sigma_range ** 2)
    num = torch.zeros_like(crop)
    den = torch.zeros_like(crop)
    # Level 0 (empty): outside the grid counts as empty, so pad its indicator with ones.
    weight = _sliding_conv((crop == 0).to(torch.float32), g, (1, 2, 3), pad_value=1.0)
    den += torch.exp(-crop * crop * inv) * weight
    for k in range(nbins):
        v = float(levels[k])
        weight = _sliding_conv((crop == levels[k]).to(torch.float32), g, (1, 2, 3))
        r = torch.exp(-(crop - v) ** 2 * inv) * weight
        num += v * r
        den += r
    out = torch.ones(num_images, res, res, dtype=torch.float32, device=device)
    out[:, r0:r1, c0:c1] = 1.0 - (num / den).amax(dim=1)
    return out.view(num_objects, views, res, res)


# --------------------------------------------------------------------------------------------
# Realistic projection (PointCLIP V2 baseline)


def _project_realistic(clouds: List[torch.Tensor], config: ProjectionConfig,
                       device: torch.device) -> torch.Tensor:
    res, views = config.resolution, config.num_views
    grid_res = max(res // 2, 8)
    depth = _REALISTIC_BINS
    num_images = len(clouds) * views
    grid = torch.zeros(num_images * depth * grid_res * grid_res, dtype=torch.float32,
                       device=device)
    for obj, cloud in enumerate(clouds):
        cam = _camera_coords(cloud, config)
        lo, hi = cam.amin(dim=1, keepdim=True), cam.amax(dim=1, keepdim=True)
        ext = (hi - lo).amax(dim=2, keepdim=True)
        ext = torch.where(ext > 0, ext, torch.ones_like(ext))
        norm = (cam - (lo + hi) / 2.0) / ext * 2.0                  # in [-1, 1]
        a, b = norm[..., 0] * config.object_ratio, norm[..., 1] * config.object_ratio
        col = torch.ceil((a + 1.0) / 2.0 * grid_res).clamp_(1, grid_res - 2).long()
        row = torch.ceil((b + 1.0) / 2.0 * grid_res).clamp_(1, grid_res - 2).long()
        score = ((1.0 - norm[..., 2]) / 2.0 + _REALISTIC_DEPTH_BIAS) \
            / (1.0 + _REALISTIC_DEPTH_BIAS) * (depth - 2)
        zbin = torch.ceil(score).clamp_(1, depth - 2).long()
        img = (obj * views + torch.arange(views, device=device))[:, None]
        lin = ((img * depth + zbin) * grid_res + row) * grid_res + col
        grid.scatter_reduce_(0, lin.reshape(-1), score.reshape(-1).to(torch.float32), 'amax')
    grid = grid.view(num_images, depth, grid_res, grid_res)
    grid = _sliding_max(grid, _REALISTIC_POOL, (2, 3))                # (1, 7, 7) max-pool
    g = _gauss1d(3, _REALISTIC_SIGMA)
    grid = _sliding_conv(grid, torch.from_numpy(g / g.sum()), (2, 3))  # (1, 3, 3) Gaussian
    img_max = grid.amax(dim=1)                                         # (I, G, G)
    peak = img_max.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    maps = 1.0 - img_max / peak
    maps = F.interpolate(maps.unsqueeze(1), size=(res, res), mode='bilinear',
                         align_corners=False).squeeze(1).clamp_(0.0, 1.0)
    return maps.view(len(clouds), views, res, res)
