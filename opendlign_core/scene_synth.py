"""
Synthetic ScanNet-style scenes built from Sweet Home 3D models, written in ScanNet's format.

A room (walls 2.6 m high, no ceiling) gets a door, a window and a picture on its walls and ~9 floor
objects (beds, sofas, bookshelves, cabinets, desks, ... against walls; tables, chairs, bins
anywhere), placed by rejection sampling of footprints with a margin. A virtual RGB-D sensor with
ScanNet's depth intrinsics scans it from ~12 poses (open3d ray casting, Kinect-like axial noise,
1 mm quantisation, 0.3-4 m range, grazing-angle and random drop-out); the frames are fused into a
2 cm voxel grid that keeps each point's instance id. Ground-truth boxes are, as in ScanNet, the
axis-aligned boxes of each instance's observed points (see :mod:`opendlign_core.scannet`).

Everything is deterministic for a seed. Models are drawn from one split only (``eval`` scenes are
for evaluation only).
"""

from dataclasses import dataclass, field
import logging
import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from opendlign_core import sh3d
from opendlign_core.boxes import Box3D, _clip_polygon, _polygon_area
from opendlign_core.scannet import write_frames, write_label_map, write_scannet_scene

logger = logging.getLogger(__name__)

#: ScanNet depth intrinsics (fx, fy, cx, cy) and image size.
SCANNET_DEPTH_INTRINSICS = (577.590698, 578.729797, 318.905426, 242.683609)
SCANNET_DEPTH_SIZE = (640, 480)

_WALL_CLASSES = ('bed', 'sofa', 'bookshelf', 'cabinet', 'desk', 'refrigerator', 'counter',
                 'toilet', 'sink', 'bathtub')
_FREE_CLASSES = ('table', 'chair', 'garbage bin')


@dataclass(frozen=True)
class SynthConfig:
    """Settings of the synthetic scene generator."""

    #: Room width and depth range, metres.
    room_size: tuple[float, float] = (4.5, 6.0)
    #: Wall height, metres.
    wall_height: float = 2.6
    #: Number of floor objects (inclusive range).
    num_objects: tuple[int, int] = (8, 10)
    #: Clearance kept between object footprints, metres.
    margin: float = 0.1
    #: Number of sensor poses.
    num_views: int = 12
    #: Sensor height range, metres.
    camera_height: tuple[float, float] = (1.25, 1.6)
    #: Depth range kept, metres.
    depth_range: tuple[float, float] = (0.3, 4.0)
    #: Drop returns whose incidence angle exceeds this, degrees.
    max_incidence_deg: float = 80.0
    #: Random drop-out probability per pixel.
    dropout: float = 0.01
    #: Fusion voxel edge, metres.
    fusion_voxel: float = 0.02
    #: Image size (width, height) of the sensor, pixels; intrinsics scale with it.
    image_size: tuple[int, int] = SCANNET_DEPTH_SIZE
    #: Write per-frame depth, poses and instance images.
    keep_frames: bool = True


@dataclass
class _Placed:
    entry: sh3d.CatalogEntry
    labels: sh3d.ModelLabels
    mesh: object
    klass: str
    footprint: Optional[np.ndarray] = None


@dataclass
class SynthScene:
    """A generated scene before writing (scan frame = aligned frame moved by ``scan_pose``)."""

    points: np.ndarray
    colors: np.ndarray
    instance_ids: np.ndarray
    instance_labels: dict[int, str]
    instance_scannet18: dict[int, str]
    amodal_boxes: dict[int, Box3D]
    depths: list = field(default_factory=list)
    instance_images: list = field(default_factory=list)
    poses: list = field(default_factory=list)
    intrinsic: np.ndarray = field(default_factory=lambda: np.eye(3))


def _pools(split: str, cache_dir: Optional[Path]) -> dict[str, list]:
    pools: dict[str, list] = {}
    for entry, row in sh3d.iter_entries(split, cache_dir):
        klass = row.scannet18
        if not klass:
            continue
        pools.setdefault(klass, []).append((entry, row))
    return pools


def _rect(center: np.ndarray, size: np.ndarray, yaw: float) -> np.ndarray:
    return Box3D(np.r_[center, 0.0], np.r_[size, 1.0], yaw).footprint()


def _overlaps(poly: np.ndarray, others: Sequence[np.ndarray]) -> bool:
    return any(_polygon_area(_clip_polygon(poly, o)) > 1e-6 for o in others)


def _transform(mesh, yaw: float, translation: np.ndarray):
    c, s = math.cos(yaw), math.sin(yaw)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])
    m = mesh.copy()
    m.vertices = np.asarray(mesh.vertices) @ rot.T + translation
    return m


def generate_scene(seed: int, split: str, config: SynthConfig = SynthConfig(),
                   cache_dir: Optional[Path] = None,
                   pools: Optional[dict[str, list]] = None) -> SynthScene:
    """
    Generate one scene (geometry, scan and fusion).

    :param seed: Scene seed; equal seeds give equal scenes.
    :param split: ``'train'`` or ``'eval'`` (models are drawn from that split only).
    :param config: Generator settings.
    :param cache_dir: SH3D cache folder (default :func:`opendlign_core.sh3d.default_cache_dir`).
    :param pools: Pre-computed model pools (speeds up many scenes).
    :return: The fused scene and its frames.
    :raises ValueError: If ``split`` is invalid.
    """
    import trimesh

    if split not in ('train', 'eval'):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    rng = np.random.default_rng(seed)
    pools = pools if pools is not None else _pools(split, cache_dir)
    width, depth = rng.uniform(*config.room_size, size=2)
    height = config.wall_height
    placed: list[tuple[_Placed, float, np.ndarray]] = []
    footprints: list[np.ndarray] = []

    def pick(klass: str) -> Optional[_Placed]:
        options = pools.get(klass)
        if not options:
            return None
        for _ in range(5):
            entry, row = options[int(rng.integers(len(options)))]
            try:
                mesh = sh3d.load_model_mesh(entry, cache_dir)
            except ValueError:
                continue
            return _Placed(entry, row, mesh, klass)
        return None

    # Walls: 0 = south (y=0), 1 = east (x=W), 2 = north (y=D), 3 = west (x=0). Yaw turns the
    # model front (-y) into the room.
    wall_yaw = (math.pi, math.pi / 2, 0.0, -math.pi / 2)
    wall_len = (width, depth, width, depth)

    def wall_point(wall: int, along: float, off: float) -> np.ndarray:
        return [np.array([along, off]), np.array([width - off, along]),
                np.array([width - along, depth - off]), np.array([off, depth - along])][wall]

    def place_on_wall(item: _Placed, z: float, embed: float) -> bool:
        ext = np.ptp(np.asarray(item.mesh.vertices), axis=0)
        for _ in range(50):
            wall = int(rng.integers(4))
            if ext[0] + 0.2 > wall_len[wall]:
                continue
            along = rng.uniform(ext[0] / 2 + 0.1, wall_len[wall] - ext[0] / 2 - 0.1)
            center = wall_point(wall, along, ext[1] / 2 - embed)
            yaw = wall_yaw[wall]
            poly = _rect(center, ext[:2] + [0.0, 0.0], yaw)
            if z < 0.5 and _overlaps(poly, footprints):
                continue
            if z < 0.5:
                footprints.append(_rect(center, ext[:2] + 2 * config.margin, yaw))
            placed.append((item, yaw, np.r_[center, z]))
            return True
        return False

    # Door, window, picture (when the split has them).
    for klass, z_range, embed_frac in (('door', (0.0, 0.0), 0.5), ('window', (0.8, 1.0), 0.5),
                                       ('picture', (1.2, 1.6), 0.0)):
        item = pick(klass)
        if item is None:
            continue
        ext = np.ptp(np.asarray(item.mesh.vertices), axis=0)
        z = rng.uniform(*z_range)
        if z + ext[2] > height - 0.05:
            z = max(0.0, height - 0.05 - ext[2])
        place_on_wall(item, z, embed_frac * ext[1])
    n_obj = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
    wall_classes = [c for c in _WALL_CLASSES if c in pools]
    free_classes = [c for c in _FREE_CLASSES if c in pools]
    attempts = 0
    floor_count = 0
    while floor_count < n_obj and attempts < 4 * n_obj:
        attempts += 1
        against = rng.random() < 0.5 and wall_classes
        klass = (wall_classes[int(rng.integers(len(wall_classes)))] if against
                 else free_classes[int(rng.integers(len(free_classes)))])
        item = pick(klass)
        if item is None:
            continue
        ext = np.ptp(np.asarray(item.mesh.vertices), axis=0)
        if ext[2] > height - 0.1 or max(ext[:2]) > min(width, depth) - 0.4:
            continue
        if against:
            ok = place_on_wall(item, 0.0, -0.02)
        else:
            ok = False
            for _ in range(50):
                yaw = rng.uniform(-math.pi, math.pi) if klass == 'chair' else (
                    rng.integers(4) * math.pi / 2 + rng.normal(0, 0.1))
                r = 0.5 * math.hypot(ext[0], ext[1])
                center = np.array([rng.uniform(r + 0.1, width - r - 0.1) if width > 2 * r + 0.2
                                   else width / 2,
                                   rng.uniform(r + 0.1, depth - r - 0.1) if depth > 2 * r + 0.2
                                   else depth / 2])
                poly = _rect(center, ext[:2], yaw)
                if _overlaps(poly, footprints):
                    continue
                footprints.append(_rect(center, ext[:2] + 2 * config.margin, yaw))
                placed.append((item, yaw, np.r_[center, 0.0]))
                ok = True
                break
        floor_count += int(ok)

    # Structure: floor (id 0), four walls (ids 1-4); objects from 5.
    t = 0.1
    structure = [
        ('floor', trimesh.creation.box([width + 2 * t, depth + 2 * t, t],
                                       trimesh.transformations.translation_matrix(
                                           [width / 2, depth / 2, -t / 2]))),
    ]
    for center, ext in (([width / 2, -t / 2, height / 2], [width + 2 * t, t, height]),
                        ([width + t / 2, depth / 2, height / 2], [t, depth + 2 * t, height]),
                        ([width / 2, depth + t / 2, height / 2], [width + 2 * t, t, height]),
                        ([-t / 2, depth / 2, height / 2], [t, depth + 2 * t, height])):
        structure.append(('wall', trimesh.creation.box(
            ext, trimesh.transformations.translation_matrix(center))))
    meshes = [m for _, m in structure]
    labels = {i: name for i, (name, _) in enumerate(structure)}
    sem18: dict[int, str] = {i: '' for i in labels}
    amodal: dict[int, Box3D] = {}
    for item, yaw, pos in placed:
        oid = len(meshes)
        m = _transform(item.mesh, yaw, pos)
        meshes.append(m)
        labels[oid] = item.labels.scannet_raw or item.klass
        sem18[oid] = item.klass
        ext = np.ptp(np.asarray(item.mesh.vertices), axis=0)
        amodal[oid] = Box3D(np.r_[pos[:2], pos[2] + ext[2] / 2], ext, yaw)
    scene = _scan(meshes, width, depth, config, rng)
    scene.instance_labels = labels
    scene.instance_scannet18 = sem18
    scene.amodal_boxes = amodal
    return scene


def _look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    fwd = target - eye
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    pose = np.eye(4)
    pose[:3, :3] = np.stack([right, down, fwd], axis=1)
    pose[:3, 3] = eye
    return pose


def _scan(meshes: list, width: float, depth: float, config: SynthConfig,
          rng: np.random.Generator) -> SynthScene:
    import open3d as o3d

    rc = o3d.t.geometry.RaycastingScene()
    for m in meshes:
        rc.add_triangles(o3d.core.Tensor(np.asarray(m.vertices, np.float32)),
                         o3d.core.Tensor(np.asarray(m.faces, np.uint32)))
    w_img, h_img = config.image_size
    scale = w_img / SCANNET_DEPTH_SIZE[0]
    fx, fy, cx, cy = (v * scale for v in SCANNET_DEPTH_INTRINSICS)
    k = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    u, v = np.meshgrid(np.arange(w_img, dtype=np.float64), np.arange(h_img, dtype=np.float64))
    cam_dirs = np.stack([(u - cx) / fx, (v - cy) / fy, np.ones_like(u)], axis=-1)
    poses, depths, inst_imgs, all_pts, all_ids = [], [], [], [], []
    centre = np.array([width / 2, depth / 2])
    for i in range(config.num_views):
        # Sensor on a jittered ring around the room centre looking across the room.
        angle = 2 * math.pi * i / config.num_views + rng.normal(0, 0.15)
        radius = rng.uniform(0.15, 0.35) * min(width, depth)
        eye_xy = centre + radius * np.array([math.cos(angle), math.sin(angle)])
        eye = np.r_[eye_xy, rng.uniform(*config.camera_height)]
        look = angle + math.pi + rng.normal(0, 0.5)
        target_xy = eye_xy + 2.5 * np.array([math.cos(look), math.sin(look)])
        target = np.r_[target_xy, rng.uniform(0.2, 0.9)]
        pose = _look_at(eye, target)
        dirs = cam_dirs @ pose[:3, :3].T
        rays = np.concatenate([np.broadcast_to(eye, dirs.shape), dirs], axis=-1)
        ans = rc.cast_rays(o3d.core.Tensor(rays.astype(np.float32)))
        z = ans['t_hit'].numpy().astype(np.float64)  # direction has unit z: t is depth
        gid = ans['geometry_ids'].numpy().astype(np.int64)
        normals = ans['primitive_normals'].numpy().astype(np.float64)
        valid = np.isfinite(z) & (z >= config.depth_range[0]) & (z <= config.depth_range[1])
        unit = dirs / np.linalg.norm(dirs, axis=-1, keepdims=True)
        cos_inc = np.abs((normals * unit).sum(-1))
        valid &= cos_inc >= math.cos(math.radians(config.max_incidence_deg))
        valid &= rng.random(z.shape) >= config.dropout
        z = np.where(valid, z, 0.0)
        zn = z + rng.normal(size=z.shape) * (0.0012 + 0.0019 * (z - 0.4) ** 2)
        zn = np.round(zn * 1000.0) / 1000.0
        zn = np.where(valid, zn, 0.0)
        ids = np.where(valid, gid, -1)
        poses.append(pose)
        depths.append(zn.astype(np.float32))
        inst_imgs.append(ids)
        vv, uu = np.nonzero(valid)
        cam = cam_dirs[vv, uu] * zn[vv, uu, None]
        all_pts.append(cam @ pose[:3, :3].T + pose[:3, 3])
        all_ids.append(ids[vv, uu])
    pts = np.concatenate(all_pts)
    ids = np.concatenate(all_ids)
    fused, fused_ids = _fuse(pts, ids, config.fusion_voxel)
    colors = _colorize(fused, fused_ids, rng)
    return SynthScene(fused.astype(np.float32), colors, fused_ids, {}, {}, {}, depths,
                      inst_imgs, poses, k)


def _fuse(points: np.ndarray, ids: np.ndarray, voxel: float) -> tuple[np.ndarray, np.ndarray]:
    from opendlign_core.segmentation import voxelize

    centroids, inverse, _ = voxelize(points, voxel)
    # Majority instance id per voxel.
    num_ids = int(ids.max()) + 2
    key = inverse * num_ids + (ids + 1)
    uniq, counts = np.unique(key, return_counts=True)
    vox_of, id_of = uniq // num_ids, uniq % num_ids - 1
    order = np.lexsort((-counts, vox_of))
    first = np.r_[True, vox_of[order][1:] != vox_of[order][:-1]]
    voxel_ids = np.full(len(centroids), -1, np.int64)
    voxel_ids[vox_of[order][first]] = id_of[order][first]
    return centroids, voxel_ids


def _colorize(points: np.ndarray, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    palette = rng.integers(40, 230, size=(int(ids.max()) + 2, 3))
    shade = 0.85 + 0.15 * np.clip(points[:, 2:3] / 2.6, 0, 1)
    noise = rng.normal(0, 6, size=(len(points), 3))
    return np.clip(palette[ids + 1] * shade + noise, 0, 255).astype(np.uint8)


def write_synth_scenes(out_dir: Path, split: str, count: int, seed: int,
                       config: SynthConfig = SynthConfig(),
                       cache_dir: Optional[Path] = None) -> list[Path]:
    """
    Generate ``count`` scenes and write them as ScanNet folders ``scene{i:04d}_00`` under out_dir.

    Each scene is placed in a random scan frame (rotation about z plus translation) whose
    ``axisAlignment`` maps it back, so readers exercise the alignment. A label map TSV is written
    at the root.

    :param out_dir: Output root.
    :param split: ``'train'`` or ``'eval'``.
    :param count: Number of scenes, >= 1.
    :param seed: Base seed; scene i uses ``seed * 100003 + i``.
    :param config: Generator settings.
    :param cache_dir: SH3D cache folder.
    :return: The scene folders.
    :raises ValueError: If ``count`` < 1 or ``split`` is invalid.
    :raises FileNotFoundError: If the SH3D cache is missing.
    """
    if count < 1:
        raise ValueError(f'count must be >= 1, got {count}')
    if split not in ('train', 'eval'):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    if not sh3d.sh3d_available(cache_dir):
        raise FileNotFoundError(
            f'Sweet Home 3D cache missing under {cache_dir or sh3d.default_cache_dir()}; '
            'run opendlign_core.sh3d.fetch_sh3d()')
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pools = _pools(split, cache_dir)
    raw_to_nyu = {'floor': 2, 'wall': 1}
    for rows in pools.values():
        for _, row in rows:
            if row.scannet_raw:
                raw_to_nyu.setdefault(row.scannet_raw, row.nyu40)
    write_label_map(out / 'scannetv2-labels.combined.tsv', raw_to_nyu)
    dirs = []
    for i in range(count):
        scene_seed = seed * 100003 + i
        scene = generate_scene(scene_seed, split, config, cache_dir, pools)
        rng = np.random.default_rng(scene_seed + 7)
        yaw = rng.uniform(-math.pi, math.pi)
        c, s = math.cos(yaw), math.sin(yaw)
        scan_to_aligned = np.eye(4)
        scan_to_aligned[:3, :3] = [[c, -s, 0], [s, c, 0], [0, 0, 1]]
        scan_to_aligned[:3, 3] = rng.uniform(-3, 3, size=3) * [1, 1, 0.1]
        aligned_to_scan = np.linalg.inv(scan_to_aligned)
        pts_scan = (scene.points @ aligned_to_scan[:3, :3].T + aligned_to_scan[:3, 3])
        d = out / f'scene{i:04d}_00'
        write_scannet_scene(d, pts_scan, scene.instance_ids, scene.instance_labels,
                            scene.colors, scan_to_aligned, scene.instance_scannet18)
        if config.keep_frames:
            poses = [aligned_to_scan @ p for p in scene.poses]
            write_frames(d, scene.depths, poses, scene.intrinsic, scene.instance_images)
        dirs.append(d)
        logger.info('wrote %s (%d points)', d, len(scene.points))
    return dirs
