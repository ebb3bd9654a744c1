"""
What a robot's depth camera sees of an object: ray-cast partial views, sensor noise and clutter.

Pure functions used by :mod:`training.bootstrap` to train (and evaluate) on single-view partial
clouds as the node segments them, not only on clean full surfaces:

* :func:`robot_viewpoint` draws a camera at robot-like heights and distances;
* :func:`raycast_view` casts the rays of a ScanNet-like depth camera
  (``open3d.t.geometry.RaycastingScene``) at a triangle mesh and applies Kinect-like noise
  (:func:`kinect_noise`, the model of ``shared/spec/data.md``);
* :func:`floor_remnant`, :func:`wall_fragment`, :func:`neighbour_points` and
  :func:`occlusion_cut` imitate what a segmentation leaves in or cuts off, and :func:`add_clutter`
  draws a random mix of them;
* :func:`balanced_weights` and :func:`synonym_groups` serve class-balanced sampling and prompt
  ensembling over synonyms.
"""

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

#: ScanNet depth focal length (pixels): the angular resolution of the simulated camera.
SCANNET_FX = 577.59

#: Synonym groups (``'name|synonym|...'``) of the ModelNet40 classes; the ScanNet-18 groups come
#: from :data:`opendlign_core.config.DEFAULT_LABEL_SYNONYMS`.
MODELNET40_SYNONYMS = (
    'airplane|aeroplane|aircraft; bathtub|bath tub|bath; bed|double bed|single bed; '
    'bench|park bench|garden bench; bookshelf|bookcase|shelf; bottle|wine bottle; bowl|dish; '
    'car|automobile; chair|dining chair|office chair; cone|traffic cone; cup|mug|teacup; '
    'curtain|drapes; desk|office desk|writing desk; door|doorway; dresser|chest of drawers; '
    'flower pot|plant pot|planter; glass box|display case; guitar|acoustic guitar; '
    'keyboard|computer keyboard; lamp|floor lamp|table lamp; laptop|notebook computer; '
    'mantel|fireplace; monitor|computer screen|display; night stand|bedside table|nightstand; '
    'person|human|man; piano|grand piano; plant|houseplant|potted plant; radio|radio set; '
    'range hood|extractor hood; sink|washbasin; sofa|couch|settee; stairs|staircase; '
    'stool|bar stool; table|dining table; tent|camping tent; toilet|toilet bowl; '
    'tv stand|television stand|tv cabinet; vase|flower vase; wardrobe|closet|armoire; '
    'xbox|game console'
)


def synonym_groups(extra: str = '') -> Dict[str, Tuple[str, ...]]:
    """
    Return the synonym groups keyed by their first name.

    :param extra: More groups, ``'name|synonym|...'`` joined by ``';'`` (later groups win).
    :return: ``{name: (name, synonym, ...)}`` with stripped, lower-case, de-duplicated names.
    """
    from opendlign_core.config import DEFAULT_LABEL_SYNONYMS

    out: Dict[str, Tuple[str, ...]] = {}
    for spec in (MODELNET40_SYNONYMS, DEFAULT_LABEL_SYNONYMS, extra):
        for group in spec.split(';'):
            names = tuple(dict.fromkeys(n.strip().lower() for n in group.split('|')
                                        if n.strip()))
            if names:
                out[names[0]] = names
    return out


def balanced_weights(labels: Sequence[str], power: float = 0.5) -> np.ndarray:
    """
    Return per-sample sampling weights that flatten the class distribution.

    Each sample gets ``count(label) ** -power``, normalised to sum to 1: ``power=1`` samples every
    class equally often, ``0`` is plain uniform sampling.

    :param labels: One class label per sample.
    :param power: Strength in [0, 1].
    :return: (N,) float64 weights summing to 1.
    :raises ValueError: If ``labels`` is empty or ``power`` is outside [0, 1].
    """
    if len(labels) == 0:
        raise ValueError('labels must not be empty')
    if not 0.0 <= power <= 1.0:
        raise ValueError(f'power must be in [0, 1], got {power}')
    values, inverse, counts = np.unique(np.asarray(labels, dtype=object).astype(str),
                                        return_inverse=True, return_counts=True)
    w = counts[inverse].astype(np.float64) ** -power
    return w / w.sum()


def robot_viewpoint(points: np.ndarray, rng: np.random.Generator,
                    height: Tuple[float, float] = (0.4, 1.6),
                    distance: Tuple[float, float] = (0.8, 3.5)) -> np.ndarray:
    """
    Draw a depth-camera position as a mobile robot would have it.

    The camera is at a random azimuth around the object's footprint centre, ``height`` metres
    above the object's bottom and ``distance`` metres away horizontally (at least the object's
    footprint radius plus 0.5 m, so it never stands inside the object).

    :param points: (N, 3) object points (or mesh vertices), metres, z up.
    :param rng: Random generator.
    :param height: Camera height range above the object's bottom.
    :param distance: Horizontal distance range from the footprint centre.
    :return: (3,) float64 camera position.
    """
    p = np.asarray(points, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(hi[:2] - lo[:2])) / 2
    d = max(rng.uniform(*distance), radius + 0.5)
    az = rng.uniform(0, 2 * np.pi)
    return np.array([centre[0] + d * np.cos(az), centre[1] + d * np.sin(az),
                     lo[2] + rng.uniform(*height)])


def kinect_noise(points: np.ndarray, normals: np.ndarray, eye: np.ndarray,
                 forward: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """
    Apply the Kinect-like depth model of ``shared/spec/data.md`` to ray-cast hits.

    Axial noise sigma(z) = 1.2 mm + 1.9 mm * (z - 0.4)^2 along each ray, 1 mm depth
    quantisation, range 0.3-4 m, drop-out above 80 deg incidence and 1 % at random.

    :param points: (N, 3) exact hit points.
    :param normals: (N, 3) unit surface normals at the hits (either orientation).
    :param eye: (3,) camera position.
    :param forward: (3,) unit optical axis.
    :param rng: Random generator.
    :return: (M, 3) float64 noisy points, M <= N.
    """
    p = np.asarray(points, dtype=np.float64)
    if len(p) == 0:
        return p.reshape(0, 3)
    ray = p - eye
    dist = np.linalg.norm(ray, axis=1)
    ray = ray / np.maximum(dist, 1e-12)[:, None]
    cos_axis = ray @ forward
    z = dist * cos_axis
    cos_inc = np.abs(np.sum(np.asarray(normals, dtype=np.float64) * ray, axis=1))
    keep = (z >= 0.3) & (z <= 4.0) & (cos_inc >= np.cos(np.radians(80.0)))
    keep &= rng.uniform(size=len(p)) >= 0.01
    z = z + rng.normal(0.0, 1.0, len(p)) * (0.0012 + 0.0019 * (z - 0.4) ** 2)
    z = np.round(z * 1000.0) / 1000.0
    out = eye + ray * (z / np.maximum(cos_axis, 1e-12))[:, None]
    return out[keep]


def raycast_view(vertices: np.ndarray, faces: np.ndarray, eye: np.ndarray,
                 rng: Optional[np.random.Generator] = None, max_side: int = 192,
                 fx: float = SCANNET_FX) -> np.ndarray:
    """
    Ray-cast a single depth-camera view of a triangle mesh.

    The camera at ``eye`` looks at the centre of the mesh's bounding box; its rays cover the
    bounding sphere, cropped to the ScanNet depth camera's field of view (640 x 480 pixels at
    ``fx``), with the angular pitch of a ``fx``-pixel focal length (coarser when that needs more
    than ``max_side`` rays per side). A camera close to a large object sees only part of it.
    With ``rng`` the hits go through :func:`kinect_noise`; without it the exact first hits are
    returned.

    :param vertices: (V, 3) mesh vertices, metres, z up.
    :param faces: (F, 3) triangle vertex indices.
    :param eye: (3,) camera position, outside the mesh.
    :param rng: Random generator for the sensor model; None for exact hits.
    :param max_side: Most rays per image side.
    :param fx: Focal length in pixels that sets the angular pitch.
    :return: (N, 3) float32 visible surface points (N may be 0).
    :raises ValueError: If the mesh is empty or ``eye`` is at the box centre.
    """
    import open3d as o3d

    v = np.asarray(vertices, dtype=np.float32)
    f = np.asarray(faces, dtype=np.uint32)
    if v.ndim != 2 or v.shape[1] != 3 or len(v) == 0 or f.ndim != 2 or len(f) == 0:
        raise ValueError(f'vertices/faces must be a non-empty mesh, got {v.shape} and {f.shape}')
    eye = np.asarray(eye, dtype=np.float64)
    lo, hi = v.min(axis=0).astype(np.float64), v.max(axis=0).astype(np.float64)
    centre = (lo + hi) / 2
    radius = float(np.linalg.norm(hi - lo)) / 2
    to_c = centre - eye
    d = float(np.linalg.norm(to_c))
    if d < 1e-9:
        raise ValueError(f'eye {eye.tolist()} is at the centre of the mesh bounding box')
    forward = to_c / d
    up0 = np.array([0.0, 0.0, 1.0]) if abs(forward[2]) < 0.99 else np.array([1.0, 0.0, 0.0])
    right = np.cross(forward, up0)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    # tan of the half angles: the bounding sphere, cropped to the 640 x 480 image
    sphere = radius / np.sqrt(d * d - radius * radius) if d > radius * 1.0001 else np.inf
    half_x, half_y = min(sphere, 320.0 / fx), min(sphere, 240.0 / fx)
    pitch = max(1.0 / fx, 2 * max(half_x, half_y) / max_side)
    gx, gy = np.meshgrid(np.arange(-half_x, half_x + 1e-12, pitch),
                         np.arange(-half_y, half_y + 1e-12, pitch))
    dirs = forward + gx.reshape(-1, 1) * right + gy.reshape(-1, 1) * up
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rays = np.concatenate([np.broadcast_to(eye, dirs.shape), dirs], axis=1).astype(np.float32)
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v), o3d.core.Tensor(f))
    ans = scene.cast_rays(o3d.core.Tensor(rays))
    t = ans['t_hit'].numpy()
    hit = np.isfinite(t)
    pts = eye + dirs[hit] * t[hit, None].astype(np.float64)
    if rng is None:
        return pts.astype(np.float32)
    normals = ans['primitive_normals'].numpy()[hit].astype(np.float64)
    return kinect_noise(pts, normals, eye, forward, rng).astype(np.float32)


def floor_remnant(points: np.ndarray, rng: np.random.Generator, fraction: float,
                  margin: float) -> np.ndarray:
    """
    Return floor points a segmentation left around an object's base.

    ``round(fraction * N)`` points uniform on the plane z = min z (+ 5 mm noise) over the object's
    footprint box grown by ``margin`` metres.

    :param points: (N, 3) object points, z up.
    :param rng: Random generator.
    :param fraction: Added points per object point.
    :param margin: Footprint growth in metres.
    :return: (K, 3) float32 floor points.
    """
    p = np.asarray(points, dtype=np.float64)
    k = int(round(fraction * len(p)))
    lo, hi = p.min(axis=0), p.max(axis=0)
    xy = rng.uniform(lo[:2] - margin, hi[:2] + margin, (k, 2))
    z = lo[2] + rng.normal(0.0, 0.005, (k, 1))
    return np.c_[xy, z].astype(np.float32)


def wall_fragment(points: np.ndarray, eye: np.ndarray, rng: np.random.Generator,
                  fraction: float, gap: float) -> np.ndarray:
    """
    Return points of a wall just behind an object (seen past it from ``eye``).

    The wall is vertical, faces the camera's horizontal direction, stands ``gap`` metres behind
    the object's far side and spans its width and height.

    :param points: (N, 3) object points, z up.
    :param eye: (3,) camera position.
    :param rng: Random generator.
    :param fraction: Added points per object point.
    :param gap: Distance behind the object in metres.
    :return: (K, 3) float32 wall points.
    """
    p = np.asarray(points, dtype=np.float64)
    k = int(round(fraction * len(p)))
    lo, hi = p.min(axis=0), p.max(axis=0)
    centre = (lo + hi) / 2
    axis = centre[:2] - np.asarray(eye, dtype=np.float64)[:2]
    axis = axis / (np.linalg.norm(axis) or 1.0)
    side = np.array([-axis[1], axis[0]])
    depth = float(np.max((p[:, :2] - centre[:2]) @ axis)) + gap
    width = float(np.max(np.abs((p[:, :2] - centre[:2]) @ side)))
    s = rng.uniform(-width, width, k)
    xy = centre[:2] + np.outer(s, side) + np.outer(depth + rng.normal(0, 0.005, k), axis)
    z = rng.uniform(lo[2], hi[2], k)
    return np.c_[xy, z].astype(np.float32)


def neighbour_points(points: np.ndarray, other: np.ndarray, rng: np.random.Generator,
                     fraction: float, bleed: float) -> np.ndarray:
    """
    Return the part of a neighbouring object that a segmentation merged into this one.

    ``other`` is placed on the floor beside the object, touching its box along a random
    horizontal direction; only its points within ``bleed`` metres of the object's box are kept,
    at most ``round(fraction * N)`` of them.

    :param points: (N, 3) object points, z up.
    :param other: (M, 3) the neighbour's points, any placement.
    :param rng: Random generator.
    :param fraction: Most added points per object point.
    :param bleed: How far into the neighbour the segmentation reaches, metres.
    :return: (K, 3) float32 neighbour points.
    """
    p = np.asarray(points, dtype=np.float64)
    q = np.asarray(other, dtype=np.float64)
    lo, hi = p.min(axis=0), p.max(axis=0)
    qlo, qhi = q.min(axis=0), q.max(axis=0)
    az = rng.uniform(0, 2 * np.pi)
    u = np.array([np.cos(az), np.sin(az)])
    reach = np.abs(u) @ ((hi - lo)[:2] / 2) + np.abs(u) @ ((qhi - qlo)[:2] / 2)
    shift = np.r_[(lo + hi)[:2] / 2 + reach * u - (qlo + qhi)[:2] / 2, lo[2] - qlo[2]]
    q = q + shift
    near = np.all((q >= lo - bleed) & (q <= hi + bleed), axis=1)
    q = q[near]
    k = min(len(q), int(round(fraction * len(p))))
    return q[rng.permutation(len(q))[:k]].astype(np.float32)


def occlusion_cut(points: np.ndarray, rng: np.random.Generator, fraction: float,
                  min_keep: int = 64) -> np.ndarray:
    """
    Remove the part of an object hidden behind something else.

    Either (half the time) everything below a height, as behind a table or bed in front, or
    everything on one side of a random vertical plane; the cut plane sits ``fraction`` of the
    object's extent along the cut direction. Nothing is cut when fewer than ``min_keep`` points
    would remain.

    :param points: (N, 3) object points, z up.
    :param rng: Random generator.
    :param fraction: Cut depth in [0, 1) of the extent along the cut direction.
    :param min_keep: Fewest points to keep.
    :return: (M, 3) float32 kept points.
    """
    p = np.asarray(points, dtype=np.float32)
    if rng.uniform() < 0.5:
        d = np.array([0.0, 0.0, 1.0])
    else:
        az = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(az), np.sin(az), 0.0])
    s = p.astype(np.float64) @ d
    keep = s >= s.min() + fraction * (s.max() - s.min())
    return p[keep] if keep.sum() >= min_keep else p


def add_clutter(points: np.ndarray, eye: np.ndarray, rng: np.random.Generator,
                other: Optional[np.ndarray] = None, prob: float = 0.5) -> np.ndarray:
    """
    Imitate a segmentation's errors: each effect independently with probability ``prob``.

    Occlusion cut (10-40 % of the extent), floor remnant (2-15 % more points within 5-20 cm),
    wall fragment (2-15 %, 0-5 cm behind) and, when ``other`` is given, a neighbour's points
    (up to 15 %, 5-25 cm bleed).

    :param points: (N, 3) object points, z up.
    :param eye: (3,) camera position the object was seen from.
    :param rng: Random generator.
    :param other: (M, 3) points of another object, or None.
    :param prob: Probability of each effect.
    :return: (M, 3) float32 points.
    """
    p = np.asarray(points, dtype=np.float32)
    if len(p) == 0:
        return p.reshape(0, 3)
    parts: List[np.ndarray] = []
    if rng.uniform() < prob:
        p = occlusion_cut(p, rng, rng.uniform(0.1, 0.4))
    if rng.uniform() < prob:
        parts.append(floor_remnant(p, rng, rng.uniform(0.02, 0.15), rng.uniform(0.05, 0.2)))
    if rng.uniform() < prob:
        parts.append(wall_fragment(p, eye, rng, rng.uniform(0.02, 0.15), rng.uniform(0, 0.05)))
    if other is not None and len(other) and rng.uniform() < prob:
        parts.append(neighbour_points(p, other, rng, rng.uniform(0.03, 0.15),
                                      rng.uniform(0.05, 0.25)))
    return np.concatenate([p] + parts, axis=0).astype(np.float32)
