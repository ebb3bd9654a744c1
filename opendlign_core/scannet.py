"""
Reader and writer of ScanNet v2 scan folders (real scans and our synthetic scenes alike).

A scene folder ``<root>/<scene>/`` holds:

* ``<scene>_vh_clean_2.ply``: vertices (x, y, z float32 metres, red/green/blue/alpha uint8);
  faces are read past and ignored;
* ``<scene>_vh_clean_2.0.010000.segs.json``: ``segIndices``, one segment id per vertex;
* ``<scene>.aggregation.json``: ``segGroups`` (``objectId``, ``segments``, raw ``label``); our
  synthetic scenes add a ``scannet18`` key with the *semantic* ScanNet-18 class;
* ``<scene>.txt``: ``axisAlignment = <16 numbers>`` (row-major 4x4, scan -> aligned frame);
* optionally ``frames/`` in the layout of ScanNet's SensReader export: ``intrinsic/
  intrinsic_depth.txt`` (4x4), ``pose/<i>.txt`` (4x4 camera-to-scan), ``depth/<i>.png`` (uint16
  millimetres) and ``instance-filt/<i>.png`` (uint16 object id + 1, 0 = none).

``scannetv2-labels.combined.tsv`` (raw category -> nyu40) is looked up in the scene folder and its
parents. ScanNet-18 benchmark classes follow the VoteNet/3DETR nyu40 mapping, in which nyu40 39
(``otherfurniture``) is called "garbage bin"; ``scannet18_semantic`` holds the reading of our
synthetic ground truth (real bins) where the aggregation provides it.
"""

from dataclasses import dataclass
import json
import logging
from pathlib import Path
from typing import Iterator, Mapping, Optional, Sequence

import numpy as np

from opendlign_core.boxes import Box3D, fit_aabb

logger = logging.getLogger(__name__)

LABEL_MAP_NAME = 'scannetv2-labels.combined.tsv'
#: The 18 ScanNet detection classes, benchmark order.
SCANNET18_CLASSES: tuple[str, ...] = (
    'cabinet', 'bed', 'chair', 'sofa', 'table', 'door', 'window', 'bookshelf', 'picture',
    'counter', 'desk', 'curtain', 'refrigerator', 'shower curtain', 'toilet', 'sink', 'bathtub',
    'garbage bin',
)
#: nyu40 id -> ScanNet-18 benchmark class (VoteNet/3DETR mapping).
NYU40_TO_SCANNET18: dict[int, str] = dict(zip(
    (3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39), SCANNET18_CLASSES))
#: nyu40 ids of room structure (wall, floor, ceiling), not objects.
STRUCTURE_NYU40: frozenset = frozenset({1, 2, 22})
#: Instances with fewer observed points get no ground-truth box.
MIN_BOX_POINTS = 50

_PLY_TYPES = {'char': 'i1', 'uchar': 'u1', 'int8': 'i1', 'uint8': 'u1', 'short': 'i2',
              'ushort': 'u2', 'int16': 'i2', 'uint16': 'u2', 'int': 'i4', 'uint': 'u4',
              'int32': 'i4', 'uint32': 'u4', 'float': 'f4', 'float32': 'f4', 'double': 'f8',
              'float64': 'f8'}


@dataclass(frozen=True)
class ScanNetInstance:
    """One annotated object of a scene."""

    object_id: int
    raw_label: str
    #: nyu40 id (0 when the raw label is not in the label map).
    nyu40_id: int
    #: ScanNet-18 benchmark class ('' if none).
    scannet18: str
    #: ScanNet-18 semantic class (synthetic scenes; else equal to ``scannet18``).
    scannet18_semantic: str
    #: (K,) int64 indices into the scene's points.
    point_indices: np.ndarray
    #: Axis-aligned box of the aligned points; None under :data:`MIN_BOX_POINTS` points.
    box: Optional[Box3D]

    @property
    def is_structure(self) -> bool:
        """
        Tell whether this is wall, floor or ceiling.

        :return: True for nyu40 1, 2, 22.
        """
        return self.nyu40_id in STRUCTURE_NYU40 or self.raw_label in ('wall', 'floor', 'ceiling')


@dataclass(frozen=True)
class ScanNetScene:
    """A scene: (N, 3) float32 points in the aligned frame (metres, z up), colours, instances."""

    scene_id: str
    points: np.ndarray
    colors: Optional[np.ndarray]
    instances: tuple[ScanNetInstance, ...]
    axis_alignment: np.ndarray
    #: (N,) int64 object id per point, -1 for unannotated points.
    instance_ids: np.ndarray


def read_ply_vertices(path: Path) -> np.ndarray:
    """
    Read the vertex element of a PLY file (ascii or binary, faces ignored).

    :param path: PLY file.
    :return: Structured array with one field per vertex property.
    :raises FileNotFoundError: If the file does not exist.
    :raises ValueError: If the header is malformed or has no vertex element.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'PLY file {path} not found')
    with open(path, 'rb') as f:
        if f.readline().strip() != b'ply':
            raise ValueError(f'{path} is not a PLY file')
        fmt, count, props, in_vertex, before_vertex = None, None, [], False, 0
        while True:
            line = f.readline()
            if not line:
                raise ValueError(f'{path}: PLY header has no end_header')
            words = line.decode('ascii', 'replace').split()
            if not words:
                continue
            if words[0] == 'format':
                fmt = words[1]
            elif words[0] == 'element':
                in_vertex = words[1] == 'vertex'
                if in_vertex:
                    count = int(words[2])
                elif count is None:
                    before_vertex += 1
            elif words[0] == 'property' and in_vertex:
                if words[1] == 'list':
                    raise ValueError(f'{path}: list properties on vertices are not supported')
                props.append((words[2], _PLY_TYPES[words[1]]))
            elif words[0] == 'end_header':
                break
        if count is None:
            raise ValueError(f'{path}: PLY has no vertex element')
        if before_vertex:
            raise ValueError(f'{path}: elements before the vertex element are not supported')
        if fmt == 'ascii':
            data = np.loadtxt(f, max_rows=count, ndmin=2)
            out = np.empty(count, dtype=[(n, t) for n, t in props])
            for i, (n, _) in enumerate(props):
                out[n] = data[:, i]
            return out
        endian = {'binary_little_endian': '<', 'binary_big_endian': '>'}.get(fmt or '')
        if endian is None:
            raise ValueError(f'{path}: unknown PLY format {fmt!r}')
        dtype = np.dtype([(n, endian + t) for n, t in props])
        raw = f.read(dtype.itemsize * count)
        if len(raw) < dtype.itemsize * count:
            raise ValueError(f'{path}: truncated vertex data')
        return np.frombuffer(raw, dtype=dtype, count=count)


def write_ply_vertices(path: Path, points: np.ndarray, colors: Optional[np.ndarray] = None
                       ) -> None:
    """
    Write points (and colours) as a binary little-endian PLY with an empty face element.

    :param path: Output file.
    :param points: (N, 3) metres.
    :param colors: (N, 3) uint8 or None (written as grey).
    """
    pts = np.asarray(points, dtype=np.float32)
    n = len(pts)
    cols = np.full((n, 3), 128, np.uint8) if colors is None else np.asarray(colors, np.uint8)
    dtype = np.dtype([('x', '<f4'), ('y', '<f4'), ('z', '<f4'), ('red', 'u1'), ('green', 'u1'),
                      ('blue', 'u1'), ('alpha', 'u1')])
    data = np.empty(n, dtype)
    data['x'], data['y'], data['z'] = pts[:, 0], pts[:, 1], pts[:, 2]
    data['red'], data['green'], data['blue'] = cols[:, 0], cols[:, 1], cols[:, 2]
    data['alpha'] = 255
    header = ('ply\nformat binary_little_endian 1.0\ncomment opendlign\n'
              f'element vertex {n}\nproperty float x\nproperty float y\nproperty float z\n'
              'property uchar red\nproperty uchar green\nproperty uchar blue\n'
              'property uchar alpha\nelement face 0\nproperty list uchar int vertex_indices\n'
              'end_header\n')
    with open(path, 'wb') as f:
        f.write(header.encode('ascii'))
        f.write(data.tobytes())


def read_label_map(path: Path) -> dict[str, int]:
    """
    Read ``scannetv2-labels.combined.tsv``.

    :param path: The TSV file.
    :return: raw category -> nyu40 id.
    :raises ValueError: If the header lacks ``raw_category`` or ``nyu40id``.
    """
    lines = Path(path).read_text(encoding='utf-8').splitlines()
    header = lines[0].split('\t')
    try:
        i_raw, i_nyu = header.index('raw_category'), header.index('nyu40id')
    except ValueError as e:
        raise ValueError(f'{path}: header needs raw_category and nyu40id, got {header}') from e
    out = {}
    for line in lines[1:]:
        cols = line.split('\t')
        if len(cols) > max(i_raw, i_nyu) and cols[i_nyu].strip():
            out[cols[i_raw]] = int(cols[i_nyu])
    return out


def write_label_map(path: Path, raw_to_nyu40: Mapping[str, int]) -> None:
    """
    Write a minimal ``scannetv2-labels.combined.tsv`` (id, raw_category, category, nyu40id).

    :param path: Output file.
    :param raw_to_nyu40: raw category -> nyu40 id.
    """
    rows = ['id\traw_category\tcategory\tcount\tnyu40id']
    for i, (raw, nyu) in enumerate(sorted(raw_to_nyu40.items()), start=1):
        rows.append(f'{i}\t{raw}\t{raw}\t1\t{int(nyu)}')
    Path(path).write_text('\n'.join(rows) + '\n', encoding='utf-8')


def find_label_map(scene_dir: Path) -> Optional[Path]:
    """
    Look for ``scannetv2-labels.combined.tsv`` in the scene folder and its two parents.

    :param scene_dir: The scene folder.
    :return: The path, or None.
    """
    here = Path(scene_dir).resolve()
    for d in (here, here.parent, here.parent.parent):
        if (d / LABEL_MAP_NAME).is_file():
            return d / LABEL_MAP_NAME
    return None


def read_axis_alignment(path: Path) -> np.ndarray:
    """
    Read ``axisAlignment`` from a scene ``.txt`` (identity when absent).

    :param path: ``<scene>.txt``.
    :return: (4, 4) float64.
    """
    if not Path(path).is_file():
        return np.eye(4)
    for line in Path(path).read_text().splitlines():
        if line.strip().startswith('axisAlignment'):
            values = [float(v) for v in line.split('=', 1)[1].split()]
            if len(values) != 16:
                raise ValueError(f'{path}: axisAlignment needs 16 numbers, got {len(values)}')
            return np.asarray(values).reshape(4, 4)
    return np.eye(4)


def list_scenes(root: Path) -> list[Path]:
    """
    List scene folders under a root (folders holding ``<name>_vh_clean_2.ply``).

    :param root: Dataset root, or a scene folder itself.
    :return: Sorted scene folders.
    """
    root = Path(root)
    if (root / f'{root.name}_vh_clean_2.ply').is_file():
        return [root]
    return sorted(d for d in root.iterdir() if (d / f'{d.name}_vh_clean_2.ply').is_file())


def read_scannet_scene(scene_dir: Path, align: bool = True,
                       label_map: Optional[Mapping[str, int]] = None) -> ScanNetScene:
    """
    Read one scene folder.

    :param scene_dir: ``<root>/<scene>``; the scene id is the folder name.
    :param align: Apply ``axisAlignment`` (boxes are always fitted in the returned frame).
    :param label_map: raw -> nyu40 (default: the nearest ``scannetv2-labels.combined.tsv``).
    :return: The scene.
    :raises FileNotFoundError: If the PLY is missing.
    :raises ValueError: If segment and vertex counts disagree.
    """
    scene_dir = Path(scene_dir)
    sid = scene_dir.name
    verts = read_ply_vertices(scene_dir / f'{sid}_vh_clean_2.ply')
    points = np.stack([verts['x'], verts['y'], verts['z']], axis=1).astype(np.float64)
    names = verts.dtype.names or ()
    colors = (np.stack([verts['red'], verts['green'], verts['blue']], axis=1).astype(np.uint8)
              if {'red', 'green', 'blue'} <= set(names) else None)
    axis = read_axis_alignment(scene_dir / f'{sid}.txt')
    if align:
        points = points @ axis[:3, :3].T + axis[:3, 3]
    points = points.astype(np.float32)
    if label_map is None:
        tsv = find_label_map(scene_dir)
        label_map = read_label_map(tsv) if tsv is not None else {}
    instance_ids = np.full(len(points), -1, np.int64)
    instances: list[ScanNetInstance] = []
    agg_path = scene_dir / f'{sid}.aggregation.json'
    if not agg_path.is_file():
        agg_path = scene_dir / f'{sid}_vh_clean.aggregation.json'
    seg_path = scene_dir / f'{sid}_vh_clean_2.0.010000.segs.json'
    if agg_path.is_file() and seg_path.is_file():
        seg = np.asarray(json.loads(seg_path.read_text())['segIndices'], dtype=np.int64)
        if len(seg) != len(points):
            raise ValueError(f'{seg_path}: {len(seg)} segment ids for {len(points)} vertices')
        groups = json.loads(agg_path.read_text())['segGroups']
        order = np.argsort(seg, kind='stable')
        uniq, starts = np.unique(seg[order], return_index=True)
        ends = np.r_[starts[1:], len(order)]
        seg_slices = {int(u): (s, e) for u, s, e in zip(uniq, starts, ends)}
        for g in groups:
            parts = [order[slice(*seg_slices[s])] for s in g['segments'] if s in seg_slices]
            idx = np.sort(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            oid = int(g.get('objectId', g.get('id')))
            instance_ids[idx] = oid
            raw = g.get('label', '')
            nyu = int(label_map.get(raw, 0))
            bench = NYU40_TO_SCANNET18.get(nyu, '')
            box = fit_aabb(points[idx]) if len(idx) >= MIN_BOX_POINTS else None
            instances.append(ScanNetInstance(oid, raw, nyu, bench, g.get('scannet18', bench),
                                             idx.astype(np.int64), box))
    return ScanNetScene(sid, points, colors, tuple(instances), axis, instance_ids)


def write_scannet_scene(scene_dir: Path, points: np.ndarray, instance_ids: np.ndarray,
                        instance_labels: Mapping[int, str], colors: Optional[np.ndarray] = None,
                        axis_alignment: Optional[np.ndarray] = None,
                        instance_scannet18: Optional[Mapping[int, str]] = None) -> None:
    """
    Write a scene folder in ScanNet's format (one segment per instance plus one unlabelled).

    :param scene_dir: Output folder; its name is the scene id.
    :param points: (N, 3) metres in the scan frame.
    :param instance_ids: (N,) int object id per point, -1 for unlabelled points.
    :param instance_labels: object id -> raw category.
    :param colors: (N, 3) uint8 or None.
    :param axis_alignment: (4, 4) scan -> aligned transform (default identity).
    :param instance_scannet18: object id -> semantic ScanNet-18 class (stored as ``scannet18``).
    :raises ValueError: On length mismatches.
    """
    scene_dir = Path(scene_dir)
    sid = scene_dir.name
    pts = np.asarray(points, np.float32)
    ids = np.asarray(instance_ids, np.int64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(ids) != len(pts):
        raise ValueError(f'points {pts.shape} and instance_ids {ids.shape} do not match')
    scene_dir.mkdir(parents=True, exist_ok=True)
    write_ply_vertices(scene_dir / f'{sid}_vh_clean_2.ply', pts, colors)
    # Segment = object id + 1; segment 0 holds unlabelled points.
    segs = (ids + 1).tolist()
    (scene_dir / f'{sid}_vh_clean_2.0.010000.segs.json').write_text(json.dumps(
        {'params': {'kThresh': '0.0001', 'segMinVerts': '20'}, 'sceneId': sid,
         'segIndices': segs}))
    groups = []
    for oid in sorted(instance_labels):
        g = {'id': int(oid), 'objectId': int(oid), 'segments': [int(oid) + 1],
             'label': instance_labels[oid]}
        if instance_scannet18 is not None:
            g['scannet18'] = instance_scannet18.get(oid, '')
        groups.append(g)
    (scene_dir / f'{sid}.aggregation.json').write_text(json.dumps(
        {'sceneId': f'scannet.{sid}', 'appId': 'opendlign.synth', 'segGroups': groups,
         'segmentsFile': f'scannet.{sid}_vh_clean_2.0.010000.segs.json'}, indent=1))
    axis = np.eye(4) if axis_alignment is None else np.asarray(axis_alignment, float)
    (scene_dir / f'{sid}.txt').write_text(
        'axisAlignment = ' + ' '.join(f'{v:.9g}' for v in axis.reshape(-1)) + '\n'
        f'numVerts = {len(pts)}\nsceneType = synthetic\n')


def write_frames(scene_dir: Path, depths_m: Sequence[np.ndarray], poses: Sequence[np.ndarray],
                 intrinsic: np.ndarray, instances: Optional[Sequence[np.ndarray]] = None) -> None:
    """
    Write per-frame depth, poses and intrinsics in the SensReader export layout.

    :param scene_dir: Scene folder.
    :param depths_m: Frames of (H, W) float depth, metres (0 = no return).
    :param poses: (4, 4) camera-to-scan transforms, one per frame (camera: x right, y down,
        z forward).
    :param intrinsic: (3, 3) or (4, 4) depth intrinsics, pixels.
    :param instances: Optional (H, W) int object id per pixel (-1 = none).
    """
    from PIL import Image

    base = Path(scene_dir) / 'frames'
    for sub in ('depth', 'pose', 'intrinsic') + (('instance-filt',) if instances else ()):
        (base / sub).mkdir(parents=True, exist_ok=True)
    k4 = np.eye(4)
    k = np.asarray(intrinsic, float)
    k4[:k.shape[0], :k.shape[1]] = k
    np.savetxt(base / 'intrinsic' / 'intrinsic_depth.txt', k4, fmt='%.6f')
    for i, (depth, pose) in enumerate(zip(depths_m, poses)):
        mm = np.clip(np.round(np.asarray(depth) * 1000.0), 0, 65535).astype(np.uint16)
        Image.fromarray(mm).save(base / 'depth' / f'{i}.png')
        np.savetxt(base / 'pose' / f'{i}.txt', np.asarray(pose, float), fmt='%.9f')
        if instances:
            inst = np.clip(np.asarray(instances[i]) + 1, 0, 65535).astype(np.uint16)
            Image.fromarray(inst).save(base / 'instance-filt' / f'{i}.png')


@dataclass(frozen=True)
class Frame:
    """One depth frame: (H, W) float32 metres, (4, 4) camera-to-scan pose, (3, 3) intrinsics."""

    depth: np.ndarray
    pose: np.ndarray
    intrinsic: np.ndarray
    instance: Optional[np.ndarray]

    def points(self) -> np.ndarray:
        """
        Back-project valid pixels into the scan frame.

        :return: (M, 3) float32 metres.
        """
        v, u = np.nonzero(self.depth > 0)
        z = self.depth[v, u].astype(np.float64)
        k = self.intrinsic
        cam = np.stack([(u - k[0, 2]) * z / k[0, 0], (v - k[1, 2]) * z / k[1, 1], z], axis=1)
        return (cam @ self.pose[:3, :3].T + self.pose[:3, 3]).astype(np.float32)


def read_frames(scene_dir: Path) -> Iterator[Frame]:
    """
    Iterate the exported frames of a scene in index order.

    :param scene_dir: Scene folder with a ``frames/`` sub-folder.
    :return: Iterator of :class:`Frame`.
    :raises FileNotFoundError: If there is no ``frames/intrinsic/intrinsic_depth.txt``.
    """
    from PIL import Image

    base = Path(scene_dir) / 'frames'
    kfile = base / 'intrinsic' / 'intrinsic_depth.txt'
    if not kfile.is_file():
        raise FileNotFoundError(f'{kfile} not found')
    k = np.loadtxt(kfile)[:3, :3]
    ids = sorted(int(p.stem) for p in (base / 'depth').glob('*.png'))
    for i in ids:
        depth = np.asarray(Image.open(base / 'depth' / f'{i}.png'), np.float32) / 1000.0
        pose = np.loadtxt(base / 'pose' / f'{i}.txt')
        inst_path = base / 'instance-filt' / f'{i}.png'
        inst = (np.asarray(Image.open(inst_path), np.int64) - 1) if inst_path.is_file() else None
        yield Frame(depth, pose, k, inst)
