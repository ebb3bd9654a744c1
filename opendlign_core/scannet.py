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

ScanNet also ships the high-resolution ``<scene>_vh_clean.ply`` with its own over-segmentation
``<scene>_vh_clean.segs.json`` and aggregation ``<scene>_vh_clean.aggregation.json``. Segment ids
of one resolution mean nothing in the other, so the reader pairs each aggregation with the segs
file its ``segmentsFile`` field names (by ScanNet's README when the field is absent:
``<scene>.aggregation.json`` -> low-res, ``<scene>_vh_clean.aggregation.json`` -> high-res) and
with the mesh that segs file belongs to, and refuses a pair that does not fit (segs length !=
mesh vertex count, a ``sceneId`` naming another scene or mesh, most referenced segments absent).
The first *complete* set (aggregation, the segs file it names, that segs file's mesh) is used,
low resolution first: a preferred set missing its segs file or mesh is passed over with a warning
(e.g. the high-res set plus the default ``<scene>.aggregation.json`` alone), and only when no set
is complete is a ``FileNotFoundError`` listing each set and what it lacks raised. The points of
the returned scene are the vertices of the mesh its instances index.

Known data errata and how the reader treats them (warnings go to this module's logger):

* objects whose segments are partly absent from the segs file: warning, the present ones are used;
  more than half absent (a mismatched pair): ``ValueError``;
* objects with an empty ``segments`` list: warning, the instance has no points and no box;
* the same ``objectId`` twice: merged with a warning when the labels agree, else ``ValueError``;
* a segment claimed by two objects: warning, the point's ``instance_ids`` entry is the first;
* labels differing from the label map only in case or whitespace: matched; labels missing from
  it: nyu40 0 with one warning per scene; no label map found: warning;
* a label map that is not UTF-8 (read as Latin-1, warning), has a byte-order mark, CRLF line ends,
  padded cells, blank or non-integer ``nyu40id`` cells (skipped, warning), or ids outside 1..40
  (skipped, warning); a file with no tabs (tabs turned into spaces by a copy): ``ValueError``;
* no ``axisAlignment`` (ScanNet's test scenes) or no ``<scene>.txt``: identity, with a warning;
* non-finite vertices: dropped with a warning (instance indices refer to the kept points);
* ``_vh_clean_2.labels.ply`` is never read: in a few scenes (scene0270_00, scene0270_02,
  scene0384_00) it holds nyuId values such as 50 instead of nyu40 ids; the nyu40 id comes from the
  aggregation's raw label and the label map instead.

``scannetv2-labels.combined.tsv`` (raw category -> nyu40) is looked up in the scene folder and its
parents. ScanNet-18 benchmark classes follow the VoteNet/3DETR nyu40 mapping, in which nyu40 39
(``otherfurniture``) is called "garbage bin"; ``scannet18_semantic`` holds the reading of our
synthetic ground truth (real bins) where the aggregation provides it.
"""

import csv
from dataclasses import dataclass
import json
import logging
from pathlib import Path
import re
from typing import Any, Iterator, Mapping, Optional, Sequence

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
#: Mesh suffixes, low resolution (the benchmark's) first.
MESH_SUFFIXES = ('_vh_clean_2.ply', '_vh_clean.ply')
#: Aggregation suffix -> the segs file it indexes by ScanNet's README (when it has no
#: ``segmentsFile``), low resolution first.
AGGREGATIONS = (('.aggregation.json', '_vh_clean_2.0.010000.segs.json'),
                ('_vh_clean.aggregation.json', '_vh_clean.segs.json'))
#: An aggregation whose referenced segments are more than this fraction absent from its segs
#: file is taken for a mismatched pair and refused.
MAX_MISSING_SEGMENTS = 0.5
_SEGS_NAME = re.compile(r'(?P<mesh>.+?)(?:\.\d+\.\d+)?\.segs\.json')

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
    #: File name of the mesh the points come from (``<scene>_vh_clean_2.ply`` usually).
    mesh_file: str = ''


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

    Tolerates a byte-order mark, CRLF line ends, quoted or padded cells and a non-UTF-8 file (read
    as Latin-1 with a warning). Rows whose ``nyu40id`` is blank are skipped; rows whose
    ``nyu40id`` is not an integer in 1..40 are skipped with one warning. When a raw category
    appears twice with different ids, the first wins (warning).

    :param path: The TSV file.
    :return: raw category (as written, stripped) -> nyu40 id.
    :raises ValueError: If the file has no tab-separated header with ``raw_category`` and
        ``nyu40id``.
    """
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode('utf-8-sig')
    except UnicodeDecodeError as e:
        logger.warning('%s is not UTF-8 (%s); reading it as Latin-1', path, e.reason)
        text = data.decode('latin-1')
    lines = text.splitlines()
    if not lines or '\t' not in lines[0]:
        raise ValueError(f'{path}: expected a tab-separated header with raw_category and '
                         f'nyu40id, got {lines[0][:120] if lines else ""!r} (tabs replaced by '
                         'spaces?)')
    rows = csv.reader(lines, delimiter='\t')
    header = [h.strip().lower() for h in next(rows)]
    try:
        i_raw, i_nyu = header.index('raw_category'), header.index('nyu40id')
    except ValueError as e:
        raise ValueError(f'{path}: header needs raw_category and nyu40id, got {header}') from e
    out: dict[str, int] = {}
    bad, conflicts = [], []
    for line_no, cols in enumerate(rows, start=2):
        if len(cols) <= max(i_raw, i_nyu) or not cols[i_nyu].strip():
            continue
        raw, cell = cols[i_raw].strip(), cols[i_nyu].strip()
        try:
            value = float(cell)
        except ValueError:
            value = float('nan')
        if not (value == int(value) if np.isfinite(value) else False) or not 1 <= value <= 40:
            bad.append(f'line {line_no}: {cell!r}')
            continue
        if raw in out and out[raw] != int(value):
            conflicts.append(raw)
            continue
        out.setdefault(raw, int(value))
    if bad:
        logger.warning('%s: skipped %d rows whose nyu40id is not an integer in 1..40 (%s)',
                       path, len(bad), ', '.join(bad[:5]))
    if conflicts:
        logger.warning('%s: raw categories listed twice with different nyu40 ids, first kept: %s',
                       path, sorted(set(conflicts))[:10])
    return out


def normalize_label(label: str) -> str:
    """
    Return the form raw labels are matched in: lower case, single spaces, no padding.

    :param label: A raw category.
    :return: The normalized label.
    """
    return ' '.join(str(label).split()).casefold()


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
    Read ``axisAlignment`` from a scene ``.txt`` (identity, with a warning, when absent).

    ScanNet's test scenes have no ``axisAlignment`` line; their points stay in the scan frame.

    :param path: ``<scene>.txt``.
    :return: (4, 4) float64.
    :raises ValueError: If the line does not hold 16 finite numbers or the rotation part is
        singular.
    """
    path = Path(path)
    if not path.is_file():
        logger.warning('%s not found; the scene is not axis-aligned (identity)', path)
        return np.eye(4)
    for line in path.read_text(encoding='utf-8', errors='replace').splitlines():
        if line.strip().startswith('axisAlignment'):
            try:
                values = [float(v) for v in line.split('=', 1)[1].split()]
            except (IndexError, ValueError) as e:
                raise ValueError(f'{path}: axisAlignment is not 16 numbers: {line!r}') from e
            if len(values) != 16:
                raise ValueError(f'{path}: axisAlignment needs 16 numbers, got {len(values)}')
            axis = np.asarray(values).reshape(4, 4)
            if not np.isfinite(axis).all() or abs(np.linalg.det(axis[:3, :3])) < 1e-9:
                raise ValueError(f'{path}: axisAlignment is not a finite rigid transform: '
                                 f'{values}')
            return axis
    logger.warning('%s has no axisAlignment line (as in ScanNet test scenes); using identity',
                   path)
    return np.eye(4)


def list_scenes(root: Path) -> list[Path]:
    """
    List scene folders under a root (holding ``<name>_vh_clean_2.ply`` or ``_vh_clean.ply``).

    :param root: Dataset root, or a scene folder itself.
    :return: Sorted scene folders.
    """
    root = Path(root)

    def is_scene(d: Path) -> bool:
        return any((d / f'{d.name}{suffix}').is_file() for suffix in MESH_SUFFIXES)
    if is_scene(root):
        return [root]
    return sorted(d for d in root.iterdir() if d.is_dir() and is_scene(d))


def _read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode('utf-8-sig'))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f'{path}: not valid JSON: {e}') from e


def _strip_dataset_prefix(name: str) -> str:
    # ScanNet writes ids as '<dataset>.<name>', e.g. 'scannet.scene0000_00'.
    name = str(name).replace('\\', '/').rsplit('/', 1)[-1]
    return name.split('.', 1)[1] if name.startswith('scannet.') else name


def _aggregation_set(scene_dir: Path, sid: str, agg_path: Path, default_segs: str
                     ) -> tuple[dict, Path, Path]:
    """Read an aggregation; return its JSON, the segs file it indexes and that file's mesh."""
    agg = _read_json(agg_path)
    if not isinstance(agg, dict) or not isinstance(agg.get('segGroups'), list):
        raise ValueError(f'{agg_path}: no segGroups list')
    agg_scene = _strip_dataset_prefix(agg.get('sceneId', sid))
    if agg_scene != sid:
        raise ValueError(f'{agg_path}: sceneId {agg.get("sceneId")!r} names another scene than '
                         f'{sid!r}')
    named = agg.get('segmentsFile')
    segs_name = _strip_dataset_prefix(named) if named else f'{sid}{default_segs}'
    match = _SEGS_NAME.fullmatch(segs_name)
    if match is None or not segs_name.startswith(f'{sid}_'):
        raise ValueError(f'{agg_path}: segmentsFile {named!r} is not a segs file of {sid}')
    return agg, scene_dir / segs_name, scene_dir / f'{match.group("mesh")}.ply'


def _pair_aggregation(scene_dir: Path, sid: str) -> Optional[tuple[Path, dict, Path, Path]]:
    """
    Return (aggregation, its JSON, segs file, mesh) of a scene, or None without annotation.

    The first complete set in :data:`AGGREGATIONS` order wins: an aggregation together with
    the segs file it names and that segs file's mesh, all present (resolutions are never
    mixed). A preferred aggregation whose set is incomplete is passed over with a warning.

    :raises FileNotFoundError: If aggregations exist but none has its segs file and mesh;
        the message lists each candidate set and the files it lacks.
    :raises ValueError: If an aggregation is malformed or names another scene's segs file.
    """
    incomplete: list[str] = []
    for agg_suffix, default_segs in AGGREGATIONS:
        agg_path = scene_dir / f'{sid}{agg_suffix}'
        if not agg_path.is_file():
            continue
        agg, segs_path, mesh_path = _aggregation_set(scene_dir, sid, agg_path, default_segs)
        lacking = [f'{what} {needed.name}' for needed, what in
                   ((segs_path, 'segmentation'), (mesh_path, 'mesh')) if not needed.is_file()]
        if not lacking:
            if incomplete:
                logger.warning('%s: using the complete set %s + %s + %s; passed over the '
                               'incomplete preferred set(s): %s', scene_dir, agg_path.name,
                               segs_path.name, mesh_path.name, '; '.join(incomplete))
            return agg_path, agg, segs_path, mesh_path
        incomplete.append(f'{agg_path.name} (indexes {segs_path.name}, mesh {mesh_path.name}) '
                          f'lacks {" and ".join(lacking)}')
    if not incomplete:
        return None
    raise FileNotFoundError(
        f'{scene_dir}: no complete annotation set (aggregation + the segs file it names + that '
        "segs file's mesh). " + '; '.join(incomplete) + '. Segment ids of one resolution do '
        'not match the other: provide the missing files of one set')


def _read_segments(segs_path: Path, sid: str, mesh_path: Path, num_vertices: int) -> np.ndarray:
    segs = _read_json(segs_path)
    if not isinstance(segs, dict) or 'segIndices' not in segs:
        raise ValueError(f'{segs_path}: no segIndices')
    seg_scene = segs.get('sceneId')
    if seg_scene is not None:
        seg_scene = _strip_dataset_prefix(seg_scene)
        mesh_stem = mesh_path.stem
        other_meshes = {f'{sid}{m[:-4]}' for m in MESH_SUFFIXES} - {mesh_stem}
        if not seg_scene.startswith(sid) or seg_scene in other_meshes:
            raise ValueError(f'{segs_path}: sceneId {segs.get("sceneId")!r} does not belong to '
                             f'{mesh_path.name}')
    if 'params' in segs and not isinstance(segs['params'], dict):
        raise ValueError(f'{segs_path}: params is not an object: {segs["params"]!r}')
    try:
        seg = np.asarray(segs['segIndices'], dtype=np.int64)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f'{segs_path}: segIndices are not integers') from e
    if seg.ndim != 1 or len(seg) != num_vertices:
        raise ValueError(f'{segs_path}: {seg.size} segment ids for the {num_vertices} vertices '
                         f'of {mesh_path}; the segmentation belongs to another mesh')
    return seg


def _object_groups(agg_path: Path, groups: list) -> list[tuple[int, str, list[int], Any]]:
    """Validate segGroups; merge duplicate objectIds with equal labels."""
    merged: dict[int, tuple[str, list[int], Any]] = {}
    duplicates = []
    for k, g in enumerate(groups):
        if not isinstance(g, dict):
            raise ValueError(f'{agg_path}: segGroups[{k}] is not an object')
        oid = g.get('objectId', g.get('id'))
        try:
            oid = int(oid)
            segments = [int(v) for v in g.get('segments') or []]
        except (TypeError, ValueError) as e:
            raise ValueError(f'{agg_path}: segGroups[{k}] has a non-integer objectId or '
                             f'segment: {e}') from e
        label = str(g.get('label', ''))
        if oid in merged:
            if normalize_label(merged[oid][0]) != normalize_label(label):
                raise ValueError(f'{agg_path}: objectId {oid} is used twice, for '
                                 f'{merged[oid][0]!r} and {label!r}')
            duplicates.append(oid)
            merged[oid][1].extend(segments)
        else:
            merged[oid] = (label, segments, g.get('scannet18'))
    if duplicates:
        logger.warning('%s: objectIds listed more than once with the same label, merged: %s',
                       agg_path, sorted(set(duplicates)))
    return [(oid, label, segs, s18) for oid, (label, segs, s18) in merged.items()]


def read_scannet_scene(scene_dir: Path, align: bool = True,
                       label_map: Optional[Mapping[str, int]] = None) -> ScanNetScene:
    """
    Read one scene folder.

    The first complete annotation set (low resolution preferred) is read: an aggregation, the
    segs file its ``segmentsFile`` names and that file's mesh; the module docstring lists the
    data errata handled and refused.

    :param scene_dir: ``<root>/<scene>``; the scene id is the folder name.
    :param align: Apply ``axisAlignment`` (boxes are always fitted in the returned frame).
    :param label_map: raw -> nyu40 (default: the nearest ``scannetv2-labels.combined.tsv``);
        labels are matched exactly, then ignoring case and whitespace.
    :return: The scene (points of the mesh the instances index).
    :raises FileNotFoundError: If no mesh exists, or aggregations exist but none has both the
        segs file it names and that file's mesh.
    :raises ValueError: If the aggregation, segs file and mesh do not belong together, or a file
        is malformed.
    """
    scene_dir = Path(scene_dir)
    sid = scene_dir.name
    pair = _pair_aggregation(scene_dir, sid) if scene_dir.is_dir() else None
    if pair is not None:
        mesh_path = pair[3]
    else:
        meshes = [scene_dir / f'{sid}{suffix}' for suffix in MESH_SUFFIXES]
        mesh_path = next((m for m in meshes if m.is_file()), meshes[0])
    verts = read_ply_vertices(mesh_path)
    names = verts.dtype.names or ()
    if not {'x', 'y', 'z'} <= set(names):
        raise ValueError(f'{mesh_path}: vertices have no x, y, z properties')
    points = np.stack([verts['x'], verts['y'], verts['z']], axis=1).astype(np.float64)
    colors = (np.stack([verts['red'], verts['green'], verts['blue']], axis=1).astype(np.uint8)
              if {'red', 'green', 'blue'} <= set(names) else None)
    axis = read_axis_alignment(scene_dir / f'{sid}.txt')
    finite = np.isfinite(points).all(axis=1)
    if align:
        with np.errstate(invalid='ignore'):
            points = points @ axis[:3, :3].T + axis[:3, 3]
    points = points.astype(np.float32)
    if label_map is None:
        tsv = find_label_map(scene_dir)
        if tsv is None and pair is not None:
            logger.warning('%s: no %s in the scene folder or its two parents; every instance '
                           'gets nyu40 id 0', scene_dir, LABEL_MAP_NAME)
        label_map = read_label_map(tsv) if tsv is not None else {}
    normalized = {}
    for raw, nyu in label_map.items():
        normalized.setdefault(normalize_label(raw), int(nyu))
    instance_ids = np.full(len(points), -1, np.int64)
    groups: list[tuple[int, str, np.ndarray, Any]] = []
    if pair is not None:
        agg_path, agg, segs_path, _ = pair
        seg = _read_segments(segs_path, sid, mesh_path, len(points))
        order = np.argsort(seg, kind='stable')
        uniq, starts = np.unique(seg[order], return_index=True)
        ends = np.r_[starts[1:], len(order)]
        seg_slices = {int(u): (s, e) for u, s, e in zip(uniq, starts, ends)}
        objects = _object_groups(agg_path, agg['segGroups'])
        referenced = {s for _, _, segs, _ in objects for s in segs}
        missing = sorted(referenced - seg_slices.keys())
        if referenced and len(missing) > MAX_MISSING_SEGMENTS * len(referenced):
            raise ValueError(
                f'{agg_path}: {len(missing)} of its {len(referenced)} segments are not in '
                f'{segs_path.name}; the aggregation indexes another segmentation')
        if missing:
            logger.warning('%s: %d referenced segments are absent from %s and ignored: %s',
                           agg_path, len(missing), segs_path.name, missing[:10])
        empty, overlap = [], 0
        for oid, raw, segs, s18 in objects:
            parts = [order[slice(*seg_slices[s])] for s in dict.fromkeys(segs) if s in seg_slices]
            idx = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)
            if not len(idx):
                empty.append(oid)
            free = instance_ids[idx] == -1
            overlap += int((~free).sum())
            instance_ids[idx[free]] = oid
            groups.append((oid, raw, idx, s18))
        if empty:
            logger.warning('%s: objects without any point (empty or absent segments): %s',
                           agg_path, empty)
        if overlap:
            logger.warning('%s: %d points belong to more than one object; instance_ids keeps '
                           'the first', agg_path, overlap)
    if not finite.all():
        logger.warning('%s: dropped %d vertices with non-finite coordinates', mesh_path,
                       int((~finite).sum()))
        new_index = np.cumsum(finite) - 1
        points, instance_ids = points[finite], instance_ids[finite]
        colors = colors[finite] if colors is not None else None
        groups = [(oid, raw, new_index[idx[finite[idx]]], s18) for oid, raw, idx, s18 in groups]
    instances: list[ScanNetInstance] = []
    unknown = set()
    for oid, raw, idx, s18 in groups:
        nyu = label_map.get(raw)
        if nyu is None:
            nyu = normalized.get(normalize_label(raw))
        if nyu is None:
            unknown.add(raw)
            nyu = 0
        bench = NYU40_TO_SCANNET18.get(int(nyu), '')
        box = fit_aabb(points[idx]) if len(idx) >= MIN_BOX_POINTS else None
        instances.append(ScanNetInstance(oid, raw, int(nyu), bench,
                                         bench if s18 is None else s18,
                                         idx.astype(np.int64), box))
    if unknown and label_map:
        logger.warning('%s: labels not in the label map (nyu40 id 0): %s', scene_dir,
                       sorted(unknown))
    return ScanNetScene(sid, points, colors, tuple(instances), axis, instance_ids,
                        mesh_path.name)


def write_scannet_scene(scene_dir: Path, points: np.ndarray, instance_ids: np.ndarray,
                        instance_labels: Mapping[int, str], colors: Optional[np.ndarray] = None,
                        axis_alignment: Optional[np.ndarray] = None,
                        instance_scannet18: Optional[Mapping[int, str]] = None) -> None:
    """
    Write a scene folder in ScanNet's format (one segment per instance plus one unlabelled).

    :param scene_dir: Output folder; its name is the scene id.
    :param points: (N, 3) metres in the scan frame.
    :param instance_ids: (N,) int object id per point, -1 for unlabelled points.
    :param instance_labels: object id -> raw category (ids without any point are left out).
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
    # An instance the scan never saw has no segment: listing it would be an erratum of our own.
    seen = set(np.unique(ids).tolist())
    for oid in sorted(o for o in instance_labels if o in seen):
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
