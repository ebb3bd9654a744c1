"""
Sweet Home 3D furniture catalogs: fetching, parsing and normalised mesh loading.

The models come from two Debian packages (``sweethome3d-furniture``: five ``.sh3f`` catalogs;
``sweethome3d``: the jar holding the 100-entry default catalog). :func:`fetch_sh3d` downloads them
with ``apt-get download`` and unpacks them with ``dpkg -x`` into a cache outside the repository
(``$OPENDLIGN_SH3D_CACHE`` or ``~/.cache/opendlign/sh3d``).

Loaded meshes are in metres, **z up**, the model's front facing **-y**, centred on the origin in x
and y with the bottom at z = 0, each axis rescaled to the catalog width (x), depth (y) and height
(z). The labels table ``opendlign_core/data/sh3d_labels.csv`` gives each model its classes and its
split: ``eval`` models are for evaluation only (never training or tuning).
"""

import csv
from dataclasses import dataclass
from functools import lru_cache
import logging
import os
from pathlib import Path
import re
import subprocess
from typing import Iterator, Optional, Sequence
import zipfile

import numpy as np

logger = logging.getLogger(__name__)

#: Debian packages holding the catalogs.
PACKAGES: tuple[str, ...] = ('sweethome3d-furniture', 'sweethome3d')
#: Catalog source name -> path of its archive relative to the extraction root.
CATALOG_ARCHIVES: dict[str, str] = {
    'BlendSwap-CC-0': 'usr/share/sweethome3d/furniture/BlendSwap-CC-0.sh3f',
    'BlendSwap-CC-BY': 'usr/share/sweethome3d/furniture/BlendSwap-CC-BY.sh3f',
    'KatorLegaz': 'usr/share/sweethome3d/furniture/KatorLegaz.sh3f',
    'Reallusion': 'usr/share/sweethome3d/furniture/Reallusion.sh3f',
    'Scopia': 'usr/share/sweethome3d/furniture/Scopia.sh3f',
    'Default': 'usr/share/sweethome3d/sweethome3d.jar',
}
_DEFAULT_PROPERTIES = 'com/eteks/sweethome3d/io/DefaultFurnitureCatalog.properties'
_PLUGIN_PROPERTIES = 'PluginFurnitureCatalog.properties'
LABELS_CSV = Path(__file__).resolve().parent / 'data' / 'sh3d_labels.csv'


def default_cache_dir() -> Path:
    """
    Return the cache folder of the Sweet Home 3D data.

    :return: ``$OPENDLIGN_SH3D_CACHE`` if set, else ``~/.cache/opendlign/sh3d``.
    """
    env = os.environ.get('OPENDLIGN_SH3D_CACHE')
    return Path(env) if env else Path.home() / '.cache' / 'opendlign' / 'sh3d'


def _root(cache_dir: Optional[Path]) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / 'extracted'


def sh3d_available(cache_dir: Optional[Path] = None) -> bool:
    """
    Tell whether all catalog archives are in the cache.

    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :return: True when every archive of :data:`CATALOG_ARCHIVES` exists.
    """
    root = _root(cache_dir)
    return all((root / rel).is_file() for rel in CATALOG_ARCHIVES.values())


def fetch_sh3d(cache_dir: Optional[Path] = None, update: bool = True) -> Path:
    """
    Download and unpack the Debian packages into the cache (no-op when already there).

    Runs ``apt-get update`` (if ``update``), ``apt-get download`` and ``dpkg -x``; needs a
    Debian/Ubuntu host with network access to its archive.

    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :param update: Run ``apt-get update`` first.
    :return: The extraction root.
    :raises RuntimeError: If a command fails (its output is in the message).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    root = cache / 'extracted'
    if sh3d_available(cache):
        return root
    debs = cache / 'debs'
    debs.mkdir(parents=True, exist_ok=True)
    commands = ([['apt-get', 'update']] if update else []) + [['apt-get', 'download', *PACKAGES]]
    for cmd in commands:
        _run(cmd, debs)
    for deb in sorted(debs.glob('*.deb')):
        _run(['dpkg', '-x', str(deb), str(root)], debs)
    if not sh3d_available(cache):
        raise RuntimeError(f'catalog archives missing under {root} after unpacking')
    return root


def _run(cmd: list[str], cwd: Path) -> None:
    logger.info('running %s', ' '.join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f'{" ".join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}')


def parse_properties(text: str) -> dict[str, str]:
    r"""
    Parse Java ``.properties`` text (continuations, ``\uXXXX`` escapes, ``=``/``:`` separators).

    :param text: The decoded file (ISO-8859-1).
    :return: Key to value.
    """
    out: dict[str, str] = {}
    logical: list[str] = []
    buf = ''
    for raw in text.splitlines():
        line = raw.lstrip() if not buf else raw.lstrip()
        if not buf and (not line or line[0] in '#!'):
            continue
        trailing = len(line) - len(line.rstrip('\\'))
        if trailing % 2 == 1:
            buf += line[:-1]
            continue
        logical.append(buf + line)
        buf = ''
    if buf:
        logical.append(buf)
    for line in logical:
        match = re.match(r'((?:\\.|[^=:\s\\])*)\s*[=:\s]\s*(.*)$', line)
        if match is None:
            out[_unescape(line)] = ''
            continue
        out[_unescape(match.group(1))] = _unescape(match.group(2))
    return out


def _unescape(value: str) -> str:
    def repl(m: re.Match) -> str:
        s = m.group(1)
        if s.startswith('u'):
            return chr(int(s[1:], 16))
        return {'t': '\t', 'n': '\n', 'r': '\r', 'f': '\f'}.get(s, s)
    return re.sub(r'\\(u[0-9a-fA-F]{4}|.)', repl, value)


@dataclass(frozen=True)
class CatalogEntry:
    """One catalog model; sizes in centimetres as the catalog gives them."""

    #: Catalog source name (a key of :data:`CATALOG_ARCHIVES`).
    source: str
    #: 1-based ``#N`` index in the catalog.
    index: int
    #: Catalog-unique id (names are not unique).
    id: str
    name: str
    category: str
    #: Catalog width (x), depth and height, centimetres.
    width_cm: float
    depth_cm: float
    height_cm: float
    #: Default elevation above the floor, centimetres.
    elevation_cm: float
    #: Path of the OBJ inside the archive (no leading slash).
    model: str
    #: Row-major 3x3 model rotation, or None.
    model_rotation: Optional[tuple[float, ...]]
    door_or_window: bool
    creator: str


def read_catalog(source: str, cache_dir: Optional[Path] = None) -> list[CatalogEntry]:
    """
    Parse one catalog's properties file.

    :param source: A key of :data:`CATALOG_ARCHIVES`.
    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :return: The entries in ``#N`` order.
    :raises ValueError: If ``source`` is unknown.
    :raises FileNotFoundError: If the archive is not in the cache (call :func:`fetch_sh3d`).
    """
    if source not in CATALOG_ARCHIVES:
        raise ValueError(f'source must be one of {sorted(CATALOG_ARCHIVES)}, got {source!r}')
    archive = _root(cache_dir) / CATALOG_ARCHIVES[source]
    if not archive.is_file():
        raise FileNotFoundError(f'{archive} not found; run opendlign_core.sh3d.fetch_sh3d()')
    with zipfile.ZipFile(archive) as zf:
        name = _DEFAULT_PROPERTIES if source == 'Default' else _PLUGIN_PROPERTIES
        props = parse_properties(zf.read(name).decode('iso-8859-1'))
    indices = sorted({int(k.split('#', 1)[1]) for k in props
                      if k.startswith('id#') and k.split('#', 1)[1].isdigit()})
    entries = []
    for i in indices:
        def get(key: str, default: str = '') -> str:
            return props.get(f'{key}#{i}', default)
        rot = get('modelRotation')
        entries.append(CatalogEntry(
            source=source, index=i, id=get('id'), name=get('name'), category=get('category'),
            width_cm=float(get('width', '0')), depth_cm=float(get('depth', '0')),
            height_cm=float(get('height', '0')), elevation_cm=float(get('elevation', '0')),
            model=get('model').lstrip('/'),
            model_rotation=tuple(float(v) for v in rot.split()) if rot else None,
            door_or_window=get('doorOrWindow') == 'true', creator=get('creator')))
    return entries


def read_catalogs(cache_dir: Optional[Path] = None) -> list[CatalogEntry]:
    """
    Parse all six catalogs.

    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :return: All entries (920 for the Debian 12 packages).
    """
    return [e for source in CATALOG_ARCHIVES for e in read_catalog(source, cache_dir)]


@dataclass(frozen=True)
class ModelLabels:
    """One row of ``sh3d_labels.csv``."""

    source: str
    index: int
    id: str
    name: str
    category: str
    loads: bool
    scannet_raw: str
    nyu40: int
    modelnet40: str
    scannet18: str
    scannet18_nyu40: str
    creator: str
    license: str
    split: str


@lru_cache(maxsize=4)
def _read_labels(path: str) -> tuple[ModelLabels, ...]:
    rows = []
    with open(path, newline='', encoding='utf-8') as f:
        for r in csv.DictReader(f):
            rows.append(ModelLabels(
                source=r['source'], index=int(r['index']), id=r['id'], name=r['name'],
                category=r['category'], loads=r['loads'] == 'True', scannet_raw=r['scannet_raw'],
                nyu40=int(r['nyu40']) if r['nyu40'] else 0, modelnet40=r['modelnet40'],
                scannet18=r['scannet18'], scannet18_nyu40=r['scannet18_nyu40'],
                creator=r['creator'], license=r['license'], split=r['split']))
    return tuple(rows)


def load_labels(split: Optional[str] = None, path: Optional[Path] = None) -> list[ModelLabels]:
    """
    Read the labels table.

    :param split: ``'train'``, ``'eval'`` or None for all rows.
    :param path: CSV path (default: the packaged table).
    :return: Rows in file order.
    :raises ValueError: If ``split`` is not one of the allowed values.
    """
    if split not in (None, 'train', 'eval'):
        raise ValueError(f"split must be 'train', 'eval' or None, got {split!r}")
    rows = _read_labels(str(path or LABELS_CSV))
    return [r for r in rows if split is None or r.split == split]


def _model_cache(cache_dir: Optional[Path]) -> Path:
    return (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / 'models'


def _extract_model(entry: CatalogEntry, cache_dir: Optional[Path]) -> Path:
    target = _model_cache(cache_dir) / entry.source / entry.model
    if target.is_file():
        return target
    archive = _root(cache_dir) / CATALOG_ARCHIVES[entry.source]
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as zf:
        data = zf.read(entry.model)
    tmp = target.with_suffix('.part')
    tmp.write_bytes(data)
    tmp.replace(target)
    return target


def load_model_mesh(entry: CatalogEntry, cache_dir: Optional[Path] = None):
    """
    Load a model as one normalised triangle mesh (geometry only).

    Applies ``modelRotation``, rescales each axis to the catalog size, converts Y-up to Z-up
    (``(x, y, z) -> (x, -z, y)``, so the SH3D front +Z faces -y) and puts the footprint centre at
    the origin and the bottom at z = 0.

    :param entry: The catalog entry.
    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :return: ``trimesh.Trimesh``, metres.
    :raises ValueError: If the model has no triangles (e.g. the empty light-source entries).
    """
    import trimesh

    path = _extract_model(entry, cache_dir)
    loaded = trimesh.load(str(path), force='scene', skip_materials=True, process=False)
    geoms = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not geoms:
        raise ValueError(f'model {entry.source}#{entry.id} has no triangles')
    mesh = trimesh.util.concatenate(geoms)
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    if entry.model_rotation is not None and len(entry.model_rotation) == 9:
        verts = verts @ np.asarray(entry.model_rotation).reshape(3, 3).T
    lo, hi = verts.min(axis=0), verts.max(axis=0)
    extent = np.where(hi - lo > 1e-9, hi - lo, 1.0)
    target = np.array([entry.width_cm, entry.height_cm, entry.depth_cm]) / 100.0
    verts = (verts - (lo + hi) / 2) / extent * target
    verts = np.c_[verts[:, 0], -verts[:, 2], verts[:, 1]]
    verts[:, 2] -= verts[:, 2].min()
    return trimesh.Trimesh(vertices=verts, faces=np.asarray(mesh.faces), process=False)


def iter_entries(split: Optional[str] = None, cache_dir: Optional[Path] = None,
                 sources: Optional[Sequence[str]] = None
                 ) -> Iterator[tuple[CatalogEntry, ModelLabels]]:
    """
    Yield loadable catalog entries with their labels, optionally restricted to a split.

    :param split: ``'train'``, ``'eval'`` or None.
    :param cache_dir: Cache folder (default :func:`default_cache_dir`).
    :param sources: Catalog names to include (default all).
    :return: Iterator of ``(entry, labels)``.
    """
    labels = {(r.source, r.id): r for r in load_labels(split)}
    for source in sources or CATALOG_ARCHIVES:
        for entry in read_catalog(source, cache_dir):
            row = labels.get((source, entry.id))
            if row is not None and row.loads:
                yield entry, row
