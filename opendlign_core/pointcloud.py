"""
Point-cloud file loading and the small array operations every consumer needs.

All functions take ``(N, 3)`` arrays of xyz coordinates (units as in the file, usually metres)
and return float32, except :func:`load_point_cloud`, which keeps float64 where the file stores
values float32 cannot hold exactly (doubles, text, 32/64-bit integers), so that clouds far from
the origin (UTM or map coordinates) keep their precision. Object clouds handed to
:mod:`opendlign_core.projection` are expected in a +z-up frame (REP-103); :func:`to_z_up` rotates
Y-up (ModelNet/ShapeNet/OBJ) data into it.

Supported files (:func:`load_point_cloud`):

* ``.ply``, ``.pcd``: read with open3d's tensor reader (which keeps the file's float32 or
  float64 coordinates, PCL padding fields and compressed PCDs included); a ``.ply`` whose header
  declares faces (a mesh) is surface-sampled with trimesh instead;
* ``.obj``, ``.off``, ``.stl``, ``.glb``: meshes, surface-sampled with trimesh
  (:data:`MESH_SAMPLE_POINTS` points, fixed seed);
* ``.npy``: an ``(N, >=3)`` array; ``.npz``: key ``'points'``, else ``'xyz'``, else the only array;
* ``.txt``, ``.xyz``, ``.csv``: whitespace- or comma-separated rows of ``>= 3`` numbers (ModelNet
  ``.txt`` files carry normals in columns 4-6, which are dropped).
"""

import logging
from pathlib import Path
from typing import Optional, Union

import numpy as np

logger = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: Points sampled from a mesh surface when a file holds faces but no point cloud.
MESH_SAMPLE_POINTS = 10_000

_POINT_SUFFIXES = ('.pcd',)
_MESH_SUFFIXES = ('.obj', '.off', '.stl', '.glb', '.gltf')
_TEXT_SUFFIXES = ('.txt', '.xyz', '.csv')
SUPPORTED_SUFFIXES = ('.ply', '.npy', '.npz') + _POINT_SUFFIXES + _MESH_SUFFIXES + _TEXT_SUFFIXES

# Proper rotations R taking a frame whose up axis is the key to +z up: z-up points = points @ R.T.
_UP_ROTATIONS = {
    'z': np.eye(3),
    '-z': np.diag([1.0, -1.0, -1.0]),
    # Y-up (x right, z towards the viewer) -> z-up: (x, y, z) -> (x, -z, y).
    'y': np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]]),
    '-y': np.array([[1.0, 0, 0], [0, 0, 1], [0, -1, 0]]),
    'x': np.array([[0, 0, -1.0], [0, 1, 0], [1, 0, 0]]),
    '-x': np.array([[0, 0, 1.0], [0, 1, 0], [-1, 0, 0]]),
}


def load_point_cloud(path: PathLike) -> np.ndarray:
    """
    Load the xyz coordinates of a point-cloud or mesh file.

    :param path: File path; the suffix selects the reader (see the module docstring).
    :return: (N, 3) coordinates in the file's frame and units: float64 when the file stores
        doubles (``.ply``/``.pcd`` double properties, float64 ``.npy``/``.npz`` arrays), 32- or
        64-bit integers or decimal text, float32 otherwise (float32/16 data, small integers,
        mesh samples). Non-finite rows are kept; call :func:`clean_points` to drop them.
    :raises FileNotFoundError: If ``path`` does not exist.
    :raises ValueError: If the suffix is unsupported, or the file holds no points or a table
        with fewer than 3 columns.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'point-cloud file not found: {str(p)!r}')
    suffix = p.suffix.lower()
    if suffix == '.npy':
        points = _table_xyz(np.load(p, allow_pickle=False), p)
    elif suffix == '.npz':
        points = _table_xyz(_npz_array(p), p)
    elif suffix in _TEXT_SUFFIXES:
        points = _table_xyz(_read_text_table(p), p)
    elif suffix in ('.ply',) + _POINT_SUFFIXES:
        points = _read_open3d(p)
    elif suffix in _MESH_SUFFIXES:
        points = _sample_mesh_file(p)
    else:
        raise ValueError(f'unsupported point-cloud suffix {suffix!r} of path {str(p)!r}; '
                         f'supported: {", ".join(SUPPORTED_SUFFIXES)}')
    if points.shape[0] == 0:
        raise ValueError(f'point-cloud file {str(p)!r} holds no points')
    return points


def clean_points(points: np.ndarray) -> np.ndarray:
    """
    Drop rows with a non-finite coordinate and reject empty or degenerate clouds.

    :param points: (N, 3) coordinates, any real dtype.
    :return: (M, 3), M <= N, the finite rows in their original order: float64 for float64 input
        (coordinates far from the origin, e.g. UTM, keep their precision; the projection centres
        each object in float64), float32 otherwise.
    :raises TypeError: If ``points`` is not a real-valued array.
    :raises ValueError: If ``points`` is not (N, 3), has no finite row, or all finite rows
        coincide (zero extent along every axis).
    """
    pts = _check_points(points, 'points')
    finite = np.isfinite(pts).all(axis=1)
    pts = pts[finite]
    if pts.shape[0] == 0:
        raise ValueError(f'points has no finite row (of {finite.shape[0]})')
    lo, hi = bounds(pts)
    extent = hi - lo
    if not np.any(extent > 0):
        raise ValueError(f'points is degenerate: all {pts.shape[0]} finite points coincide '
                         f'at {pts[0].tolist()}')
    if not finite.all():
        logger.debug('dropped %d non-finite of %d points', int((~finite).sum()), finite.size)
    return np.ascontiguousarray(pts, dtype=_working_dtype(pts))


def bounds(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """
    Per-axis minimum and maximum of a cloud, one column at a time.

    NumPy reduces an (N, 3) array along axis 0 10-20x slower than its three columns one by one
    (a 4096-point float64 cloud: 116 vs 9 us), and object-level code does this per object
    and frame.

    :param points: (N, 3) array, N >= 1, any real dtype.
    :return: ``(lo, hi)``, each (3,) in the points' dtype.
    :raises ValueError: If ``points`` is not (N, 3) with N >= 1.
    """
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0:
        raise ValueError(f'points must have shape (N, 3) with N >= 1, got {pts.shape}')
    lo = np.array([pts[:, d].min() for d in range(3)], dtype=pts.dtype)
    hi = np.array([pts[:, d].max() for d in range(3)], dtype=pts.dtype)
    return lo, hi


def normalize_points(points: np.ndarray) -> np.ndarray:
    """
    Centre a cloud on its bounding-box centre and scale it into the unit sphere.

    :param points: (N, 3) finite coordinates, not all identical.
    :return: (N, 3) float32; the bounding-box centre is the origin and the largest distance of a
        point from it is 1.
    :raises TypeError: If ``points`` is not a real-valued array.
    :raises ValueError: If ``points`` is not (N, 3) with N >= 1, is non-finite, or degenerate.
    """
    pts = _check_points(points, 'points').astype(np.float64)
    if pts.shape[0] == 0 or not np.isfinite(pts).all():
        raise ValueError(f'points must be a non-empty finite (N, 3) array, got shape {pts.shape} '
                         f'with {int((~np.isfinite(pts)).any(axis=1).sum())} non-finite rows')
    lo, hi = bounds(pts)
    centred = pts - (hi + lo) / 2.0
    radius = float(np.sqrt((centred ** 2).sum(axis=1)).max())
    if radius == 0.0:
        raise ValueError(f'points is degenerate: all {pts.shape[0]} points coincide')
    return (centred / radius).astype(np.float32)


def sample_points(points: np.ndarray, n: int, seed: Optional[int] = 0) -> np.ndarray:
    """
    Resample a cloud to exactly ``n`` points.

    Without replacement when ``n <= N`` (a random subset, in random order); with replacement
    otherwise (every point is kept once, the remaining ``n - N`` are drawn at random).

    :param points: (N, 3) coordinates, N >= 1.
    :param n: Number of output points, >= 1.
    :param seed: Seed of the NumPy generator (``None``: nondeterministic).
    :return: (n, 3) float32.
    :raises TypeError: If ``points`` is not a real-valued array or ``n`` is not an integer.
    :raises ValueError: If ``points`` is empty or not (N, 3), or ``n < 1``.
    """
    pts = _check_points(points, 'points')
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f'n must be an integer, got {type(n).__name__} {n!r}')
    if n < 1:
        raise ValueError(f'n must be >= 1, got {n}')
    if pts.shape[0] == 0:
        raise ValueError('points is empty; cannot sample from 0 points')
    rng = np.random.default_rng(seed)
    count = pts.shape[0]
    if n <= count:
        idx = rng.choice(count, size=n, replace=False)
    else:
        idx = np.concatenate([rng.permutation(count), rng.integers(0, count, size=n - count)])
    return np.ascontiguousarray(pts[idx], dtype=np.float32)


def up_rotation(up_axis: str) -> np.ndarray:
    """
    Return the proper rotation taking a frame whose up axis is ``up_axis`` to a +z-up frame.

    :param up_axis: One of ``'x', 'y', 'z', '-x', '-y', '-z'``.
    :return: (3, 3) float64 rotation R (det +1); z-up points are ``points @ R.T``.
    :raises ValueError: If ``up_axis`` is unknown.
    """
    try:
        return _UP_ROTATIONS[up_axis].copy()
    except (KeyError, TypeError) as e:
        raise ValueError(f'up_axis must be one of {sorted(_UP_ROTATIONS)}, got {up_axis!r}') from e


def to_z_up(points: np.ndarray, up_axis: str) -> np.ndarray:
    """
    Rotate a cloud whose up direction is ``up_axis`` into a +z-up frame (a proper rotation).

    ``'y'`` (Y-up, x right, z towards the viewer, as in OBJ/ShapeNet) maps (x, y, z) to
    (x, -z, y); ``'-y'`` maps to (x, z, -y); ``'x'`` maps (x, y, z) to (-z, y, x); ``'-x'`` to
    (z, y, -x); ``'-z'`` to (x, -y, -z); ``'z'`` is the identity.

    :param points: (N, 3) coordinates in the source frame.
    :param up_axis: One of ``'x', 'y', 'z', '-x', '-y', '-z'``.
    :return: (N, 3) in the +z-up frame: float64 for float64 input (no precision lost far from
        the origin), float32 otherwise.
    :raises TypeError: If ``points`` is not a real-valued array.
    :raises ValueError: If ``points`` is not (N, 3) or ``up_axis`` is unknown.
    """
    pts = _check_points(points, 'points')
    rotation = up_rotation(up_axis)
    dtype = _working_dtype(pts)
    if up_axis == 'z':
        return np.ascontiguousarray(pts, dtype=dtype)
    return np.ascontiguousarray(pts.astype(np.float64) @ rotation.T, dtype=dtype)


def _working_dtype(points: np.ndarray) -> type:
    # float64 stays float64 (UTM-scale coordinates lose up to 0.25 m as float32); the rest is
    # float32, the dtype the projection and the models work in.
    return np.float64 if points.dtype == np.float64 else np.float32


def _check_points(points: np.ndarray, name: str) -> np.ndarray:
    if hasattr(points, 'detach') and hasattr(points, 'cpu'):  # a torch tensor
        points = points.detach().cpu().numpy()
    arr = np.asarray(points)
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.floating)
                                     or np.issubdtype(arr.dtype, np.integer)):
        raise TypeError(f'{name} must be a real-valued array, got dtype {arr.dtype}')
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f'{name} must have shape (N, 3), got {arr.shape}')
    return arr


def _table_xyz(table: np.ndarray, path: Path) -> np.ndarray:
    arr = np.asarray(table)
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f'{str(path)!r} holds a {arr.dtype} array, expected numbers')
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f'{str(path)!r} holds an array of shape {arr.shape}, '
                         'expected (N, >=3) with xyz in the first 3 columns')
    return np.ascontiguousarray(arr[:, :3], dtype=_lossless_float(arr.dtype))


def _lossless_float(dtype: np.dtype) -> type:
    """
    Return the smaller float type that holds every value of ``dtype`` exactly.

    :param dtype: A numeric dtype.
    :return: ``np.float32`` for floats of up to 4 bytes and integers of up to 2 bytes, else
        ``np.float64``.
    """
    if np.issubdtype(dtype, np.floating):
        return np.float32 if dtype.itemsize <= 4 else np.float64
    return np.float32 if dtype.itemsize <= 2 else np.float64


def _npz_array(path: Path) -> np.ndarray:
    with np.load(path, allow_pickle=False) as data:
        keys = list(data.keys())
        for key in ('points', 'xyz'):
            if key in data:
                return data[key]
        if len(keys) == 1:
            return data[keys[0]]
    raise ValueError(f'{str(path)!r} has arrays {keys}; expected a key "points" or "xyz" '
                     'or exactly one array')


def _read_text_table(path: Path) -> np.ndarray:
    rows = []
    with open(path, 'r', encoding='utf-8') as f:
        for line_no, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith('#'):
                continue
            fields = text.replace(',', ' ').split()
            try:
                rows.append([float(x) for x in fields])
            except ValueError as e:
                raise ValueError(f'{str(path)!r} line {line_no}: not numbers: '
                                 f'{text[:80]!r}') from e
    if not rows:
        return np.zeros((0, 3), dtype=np.float32)
    width = min(len(r) for r in rows)
    if width < 3:
        raise ValueError(f'{str(path)!r} has rows with {width} columns, expected >= 3')
    return np.array([r[:width] for r in rows], dtype=np.float64)


def _ply_face_count(path: Path) -> int:
    """Return the face count declared in a PLY header (0 if none or unreadable)."""
    with open(path, 'rb') as f:
        for _ in range(200):
            line = f.readline()
            if not line or line.strip() == b'end_header':
                break
            parts = line.split()
            if len(parts) == 3 and parts[0] == b'element' and parts[1] == b'face':
                try:
                    return int(parts[2])
                except ValueError:
                    return 0
    return 0


def load_point_colors(path: PathLike) -> Optional[np.ndarray]:
    """
    Load the per-point RGB colours of a point-cloud file, when it has them.

    Only point files read by open3d (``.ply`` without faces, ``.pcd``) carry colours; meshes,
    NumPy and text tables give None. 8-bit colours are returned as stored; float colours (0..1)
    are scaled by 255 and rounded.

    :param path: File path.
    :return: (N, 3) uint8 RGB in the row order of :func:`load_point_cloud`, or None.
    :raises FileNotFoundError: If ``path`` does not exist.
    """
    import open3d as o3d

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f'point-cloud file not found: {str(p)!r}')
    suffix = p.suffix.lower()
    if suffix not in ('.ply',) + _POINT_SUFFIXES or (suffix == '.ply' and _ply_face_count(p)):
        return None
    cloud = o3d.t.io.read_point_cloud(str(p))
    if 'colors' not in cloud.point:
        return None
    colors = cloud.point.colors.numpy().reshape(-1, 3)
    if colors.dtype == np.uint8:
        return np.ascontiguousarray(colors)
    if np.issubdtype(colors.dtype, np.floating):
        colors = np.nan_to_num(colors.astype(np.float64) * 255)
    return np.clip(np.rint(colors), 0, 255).astype(np.uint8)


def _read_open3d(path: Path) -> np.ndarray:
    import open3d as o3d

    if path.suffix.lower() == '.ply' and _ply_face_count(path) > 0:
        # A mesh: its vertices are not a surface sample (a box has 8); sample the faces.
        return _sample_mesh_file(path)
    # The tensor reader keeps the stored type (float32 or float64); the legacy reader returns
    # float64 whatever the file holds, and reads binary PCDs with double x, y, z beside other
    # fields (PCL's padding, rgb) as all zeros.
    cloud = o3d.t.io.read_point_cloud(str(path))
    if 'positions' not in cloud.point:
        return np.zeros((0, 3), dtype=np.float32)
    points = cloud.point.positions.numpy().reshape(-1, 3)
    return np.ascontiguousarray(points, dtype=_lossless_float(points.dtype))


def _sample_mesh_file(path: Path) -> np.ndarray:
    import trimesh

    try:
        loaded = trimesh.load(str(path), force='scene')
    except Exception as e:  # trimesh raises many types for corrupt files
        raise ValueError(f'cannot read mesh file {str(path)!r}: {e}') from e
    meshes = [g for g in loaded.geometry.values() if isinstance(g, trimesh.Trimesh)]
    faced = [m for m in meshes if len(m.faces) > 0]
    if faced:
        mesh = trimesh.util.concatenate([m for m in loaded.dump()
                                         if isinstance(m, trimesh.Trimesh) and len(m.faces)])
        points, _ = trimesh.sample.sample_surface(mesh, MESH_SAMPLE_POINTS, seed=0)
        return np.ascontiguousarray(points, dtype=np.float32)
    vertices = [np.asarray(g.vertices) for g in loaded.geometry.values()
                if hasattr(g, 'vertices') and len(g.vertices)]
    if not vertices:
        return np.zeros((0, 3), dtype=np.float32)
    return np.ascontiguousarray(np.concatenate(vertices), dtype=np.float32)
