"""
Readers for evaluation data: OpenDlign's released depth maps and folders of point-cloud files.

Released depth maps (spec section 7.1) live in ``<root>/<dataset>/depth_map/<idx>+<class>_dm.npy``;
each file is a float32 array of shape (V, H, W, 3) = (10, 224, 224, 3) in [0, 1] (background 1,
nearer surfaces darker). The label is the text between ``+`` and ``_dm.npy`` with underscores
turned into spaces; its index comes from the dataset's class list (:func:`dataset_labels`, the
``labels.json`` order of the reference code) for ``modelnet40``, ``scanobjectnn`` and
``OmniObject3D``, and from the sorted discovered labels for any other folder.

The classifier takes one channel per view, while the released files hold three. They are expected
to be equal (a grey image stored as RGB); :func:`reduce_channels` keeps channel 0 after checking
that, and averages the channels (with a warning) when they differ, which is what a grey conversion
of a colour image would do. Files are memory-mapped, so only the views of the current batch are
read.

Point-cloud folders are ``<root>/<class>/<file>.{ply,pcd,npy,npz,txt,xyz}`` (class = folder name,
underscores turned into spaces); files are read with
:func:`opendlign_core.pointcloud.load_point_cloud`.
"""

from dataclasses import dataclass
import functools
import json
import logging
from pathlib import Path
import re
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

_logger = logging.getLogger(__name__)

#: Dataset folder names with a bundled class list (case-sensitive, as in the released data).
RELEASED_DATASETS: Tuple[str, ...] = ('modelnet40', 'scanobjectnn', 'OmniObject3D')
#: Suffix of a released depth-map file.
DEPTH_MAP_SUFFIX = '_dm.npy'
#: Point-cloud file extensions read by :class:`PointCloudFolder`.
POINT_CLOUD_EXTENSIONS: Tuple[str, ...] = ('.ply', '.pcd', '.npy', '.npz', '.txt', '.xyz')
#: Largest difference between the 3 channels of a view still treated as equal.
CHANNEL_TOLERANCE = 1e-6

ChannelMode = Literal['auto', 'strict', 'first', 'mean']
PathLike = Union[str, Path]

_LABELS_FILE = Path(__file__).resolve().parent / 'data' / 'labels.json'
_INDEX_RE = re.compile(r'^-?\d+$')


@functools.lru_cache(maxsize=1)
def _bundled_labels() -> Dict[str, Tuple[str, ...]]:
    with open(_LABELS_FILE, encoding='utf-8') as f:
        raw = json.load(f)
    return {name: tuple(labels) for name, labels in raw.items()}


def dataset_labels(dataset: str) -> Tuple[str, ...]:
    """
    Return the class list of a released dataset in the reference ``labels.json`` order.

    :param dataset: ``'modelnet40'`` (40 classes), ``'scanobjectnn'`` (15) or ``'OmniObject3D'``
        (216; it has both ``'ornament'`` and ``'ornaments'``). Case-sensitive.
    :return: The labels, with spaces instead of underscores.
    :raises ValueError: If the dataset has no bundled class list.
    """
    labels = _bundled_labels()
    if dataset not in labels:
        raise ValueError(f'dataset {dataset!r} has no bundled class list; known: '
                         f'{sorted(labels)} (other folders use their sorted labels)')
    return labels[dataset]


def default_templates(dataset: Optional[str]) -> str:
    """
    Return the text-template set the reference uses for a dataset.

    :param dataset: Dataset name, or ``None``.
    :return: ``'depth-scanobjectnn'`` for ``'scanobjectnn'``, else ``'depth'``.
    """
    return 'depth-scanobjectnn' if dataset == 'scanobjectnn' else 'depth'


def parse_depth_map_name(name: str) -> Tuple[int, str]:
    """
    Split a released file name ``<idx>+<class>_dm.npy`` into its index and label.

    :param name: File name (a path is accepted; only its last component is parsed).
    :return: ``(index, label)`` with underscores in the label turned into spaces.
    :raises ValueError: If the name has no ``+``, does not end in ``_dm.npy``, has a non-integer
        index or an empty label.
    """
    base = Path(name).name
    if not base.endswith(DEPTH_MAP_SUFFIX):
        raise ValueError(f'depth-map file name {base!r} does not end in {DEPTH_MAP_SUFFIX!r}')
    if '+' not in base:
        raise ValueError(f"depth-map file name {base!r} has no '+' between index and class "
                         f'(expected <idx>+<class>{DEPTH_MAP_SUFFIX})')
    index, label = base[:-len(DEPTH_MAP_SUFFIX)].split('+', 1)
    if not _INDEX_RE.match(index):
        raise ValueError(f'depth-map file name {base!r} has a non-integer index {index!r}')
    label = label.replace('_', ' ').strip()
    if not label:
        raise ValueError(f'depth-map file name {base!r} has an empty class name')
    return int(index), label


def reduce_channels(views: np.ndarray, mode: ChannelMode = 'auto',
                    name: str = 'views') -> np.ndarray:
    """
    Turn (V, H, W, C) views with C in {1, 3} into single-channel (V, H, W) depth maps.

    :param views: (V, H, W, C) or (V, H, W) array (already single-channel arrays pass through).
    :param mode: ``'auto'``: channel 0 if the channels agree within :data:`CHANNEL_TOLERANCE`,
        else their mean with a warning; ``'strict'``: channel 0, raising if they differ;
        ``'first'``: channel 0 unchecked; ``'mean'``: the channel mean.
    :param name: What to call the array in messages (e.g. its file name).
    :return: (V, H, W) float32 array.
    :raises ValueError: On a bad shape or mode, or differing channels in ``'strict'`` mode.
    """
    if mode not in ('auto', 'strict', 'first', 'mean'):
        raise ValueError(f"mode must be one of 'auto', 'strict', 'first', 'mean', got {mode!r}")
    if views.ndim == 3:
        return np.asarray(views, dtype=np.float32)
    if views.ndim != 4 or views.shape[-1] not in (1, 3):
        raise ValueError(f'{name} must have shape (V, H, W, 3), (V, H, W, 1) or (V, H, W), '
                         f'got {views.shape}')
    if views.shape[-1] == 1 or mode == 'first':
        return np.asarray(views[..., 0], dtype=np.float32)
    if mode == 'mean':
        return views.mean(axis=-1, dtype=np.float32)
    first = np.asarray(views[..., 0], dtype=np.float32)
    diff = max(float(np.abs(views[..., c] - first).max()) for c in (1, 2))
    if diff <= CHANNEL_TOLERANCE:
        return first
    if mode == 'strict':
        raise ValueError(f'{name}: the 3 channels differ by up to {diff:.3g}; use mode '
                         "'mean' or 'first' to accept them")
    _logger.warning('%s: the 3 channels differ by up to %.3g; averaging them', name, diff)
    return views.mean(axis=-1, dtype=np.float32)


@dataclass(frozen=True)
class Sample:
    """
    One evaluation object.

    :param path: Its file.
    :param label: Its class name.
    :param target: Index of ``label`` in the dataset's class list.
    """

    path: Path
    label: str
    target: int


def _subset(samples: List[Sample], limit: Optional[int]) -> List[Sample]:
    """Keep ``limit`` samples spread evenly over the (index-ordered) list."""
    if limit is None or limit >= len(samples):
        return samples
    if limit < 1:
        raise ValueError(f'limit must be >= 1, got {limit!r}')
    picks = np.unique(np.linspace(0, len(samples) - 1, limit).round().astype(int))
    return [samples[i] for i in picks]


def _check_labels(labels: Sequence[str], where: str) -> Tuple[str, ...]:
    out = tuple(labels)
    if not out:
        raise ValueError(f'{where}: the class list is empty')
    if len(set(out)) != len(out):
        raise ValueError(f'{where}: the class list has duplicates')
    return out


def _resolve_labels(found: Sequence[str], labels: Optional[Sequence[str]],
                    where: str) -> Tuple[str, ...]:
    if labels is None:
        return _check_labels(sorted(set(found)), where)
    labels = _check_labels(labels, where)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise ValueError(f'{where}: class(es) {unknown[:10]}'
                         f'{" ..." if len(unknown) > 10 else ""} are not in the class list '
                         f'({len(labels)} classes: {list(labels[:5])} ...)')
    return labels


class _Samples:
    """Shared sample-list behaviour of the dataset readers (``self.samples``)."""

    samples: Tuple[Sample, ...]

    def __len__(self) -> int:
        """
        Return the number of objects.

        :return: The count.
        """
        return len(self.samples)

    @property
    def targets(self) -> np.ndarray:
        """
        Return every sample's class index.

        :return: (N,) int64 array.
        """
        return np.array([s.target for s in self.samples], dtype=np.int64)


class DepthMapDataset(_Samples):
    """
    OpenDlign's released multi-view depth maps, one memory-mapped ``.npy`` file per object.

    Samples are ordered by file index. Indexing returns ``(views, target)`` with views of shape
    (V, H, W) float32 in [0, 1].

    :param folder: The ``depth_map`` folder holding ``<idx>+<class>_dm.npy`` files.
    :param labels: Class list (index order); ``None`` uses the sorted labels found in the folder.
    :param name: Dataset name for messages and reports.
    :param limit: Keep only this many files, spread evenly over the index order (so every class
        of an index-grouped dataset keeps some); ``None`` keeps all.
    :param channel_mode: How 3-channel views become one channel (see :func:`reduce_channels`).
    :raises FileNotFoundError: If the folder is missing or holds no ``*_dm.npy`` file.
    :raises ValueError: On a malformed file name or a label missing from ``labels``.
    """

    def __init__(self, folder: PathLike, labels: Optional[Sequence[str]] = None, *,
                 name: Optional[str] = None, limit: Optional[int] = None,
                 channel_mode: ChannelMode = 'auto') -> None:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f'depth-map folder {str(folder)!r} does not exist')
        files = [p for p in folder.iterdir() if p.name.endswith(DEPTH_MAP_SUFFIX)]
        if not files:
            raise FileNotFoundError(f'depth-map folder {str(folder)!r} holds no '
                                    f'*{DEPTH_MAP_SUFFIX} files')
        parsed = sorted((parse_depth_map_name(p.name) + (p,) for p in files),
                        key=lambda t: (t[0], t[2].name))
        self.folder = folder
        self.name = name or folder.name
        self.labels = _resolve_labels([t[1] for t in parsed], labels, str(folder))
        self.channel_mode = channel_mode
        index = {label: i for i, label in enumerate(self.labels)}
        self.samples: Tuple[Sample, ...] = tuple(_subset(
            [Sample(path=p, label=label, target=index[label]) for _, label, p in parsed], limit))
        self._shape: Optional[Tuple[int, ...]] = None

    @classmethod
    def from_root(cls, root: PathLike, dataset: str, labels: Optional[Sequence[str]] = None,
                  **kwargs: Any) -> 'DepthMapDataset':
        """
        Open ``<root>/<dataset>/depth_map`` with the dataset's bundled class list if it has one.

        :param root: Folder holding the dataset folders.
        :param dataset: Dataset folder name (case-sensitive), e.g. ``'modelnet40'``.
        :param labels: Class list overriding the bundled one (or the sorted discovered labels).
        :param kwargs: ``limit`` and ``channel_mode`` as in the constructor.
        :return: The dataset.
        :raises FileNotFoundError: If the folder is missing (the message lists the datasets found).
        """
        root = Path(root).expanduser()
        folder = root / dataset / 'depth_map'
        if not folder.is_dir():
            found = sorted(p.parent.name for p in root.glob('*/depth_map')) \
                if root.is_dir() else []
            raise FileNotFoundError(f'dataset {dataset!r}: folder {str(folder)!r} does not exist'
                                    f'; datasets under {str(root)!r}: {found}')
        if labels is None and dataset in RELEASED_DATASETS:
            labels = dataset_labels(dataset)
        return cls(folder, labels, name=dataset, **kwargs)

    def load_views(self, i: int) -> np.ndarray:
        """
        Read the views of one object.

        :param i: Sample position.
        :return: (V, H, W) float32 depth maps.
        :raises ValueError: If the file is not a float array of shape (V, H, W, 3), differs in
            shape from the other files, or holds non-finite values.
        """
        path = self.samples[i].path
        try:
            raw = np.load(path, mmap_mode='r', allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(f'could not read depth-map file {str(path)!r}: {e}') from e
        if not np.issubdtype(raw.dtype, np.floating):
            raise ValueError(f'{str(path)!r} has dtype {raw.dtype}, expected float32')
        if raw.ndim != 4 or raw.shape[-1] not in (1, 3):
            raise ValueError(f'{str(path)!r} has shape {raw.shape}, expected (V, H, W, 3) '
                             'such as (10, 224, 224, 3)')
        if self._shape is None:
            self._shape = raw.shape
        elif raw.shape != self._shape:
            raise ValueError(f'{str(path)!r} has shape {raw.shape}, other files have '
                             f'{self._shape}')
        views = reduce_channels(raw, self.channel_mode, name=path.name)
        if not np.isfinite(views).all():
            raise ValueError(f'{str(path)!r} holds non-finite values')
        return views

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int]:
        """
        Return one object's views and class index.

        :param i: Sample position.
        :return: ``(views (V, H, W) float32, target)``.
        """
        return self.load_views(i), self.samples[i].target

    def batches(self, batch_size: int) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """
        Iterate over the objects in order, a batch at a time.

        :param batch_size: Objects per batch, >= 1.
        :return: Iterator of ``(views (B, V, H, W) float32, targets (B,) int64)``.
        :raises ValueError: If ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size!r}')
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            views = np.stack([self.load_views(i) for i in range(start, stop)])
            yield views, np.array([s.target for s in self.samples[start:stop]], dtype=np.int64)


def _label_from_folder(name: str) -> str:
    return name.replace('_', ' ').strip()


class PointCloudFolder(_Samples):
    """
    Point-cloud files sorted into one folder per class: ``<root>/<class>/<file>.<ext>``.

    Only files directly inside a class folder with one of ``extensions`` are read; samples are
    ordered by class folder, then file name. Indexing returns ``(points (N, 3) float32, target)``:
    the file's finite points, rotated into the +z-up frame the projection expects.

    :param root: Folder holding one sub-folder per class.
    :param labels: Class list (index order); ``None`` uses the sorted class-folder labels.
    :param limit: Keep only this many files, spread evenly over the order; ``None`` keeps all.
    :param up_axis: Up axis of the files (``'y'`` for ModelNet/ShapeNet-style Y-up data); see
        :func:`opendlign_core.pointcloud.to_z_up`.
    :param extensions: File suffixes read (lower case, with the dot); mesh suffixes such as
        ``'.off'`` are also accepted by the loader, which samples their surface.
    :raises FileNotFoundError: If ``root`` is missing or holds no point-cloud file.
    :raises ValueError: If a class folder's label is missing from ``labels``.
    """

    def __init__(self, root: PathLike, labels: Optional[Sequence[str]] = None, *,
                 limit: Optional[int] = None, up_axis: str = 'z',
                 extensions: Sequence[str] = POINT_CLOUD_EXTENSIONS) -> None:
        if up_axis not in ('x', 'y', 'z', '-x', '-y', '-z'):
            raise ValueError(f"up_axis must be one of 'x', 'y', 'z', '-x', '-y', '-z', got "
                             f'{up_axis!r}')
        extensions = tuple(e.lower() for e in extensions)
        root = Path(root).expanduser()
        if not root.is_dir():
            raise FileNotFoundError(f'point-cloud folder {str(root)!r} does not exist')
        found: List[Tuple[str, Path]] = []
        for class_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            files = sorted(p for p in class_dir.iterdir()
                           if p.is_file() and p.suffix.lower() in extensions)
            found.extend((_label_from_folder(class_dir.name), p) for p in files)
        if not found:
            raise FileNotFoundError(f'{str(root)!r} holds no <class>/<file> point clouds with '
                                    f'extension {list(extensions)}')
        self.root = root
        self.up_axis = up_axis
        self.name = root.name
        self.labels = _resolve_labels([label for label, _ in found], labels, str(root))
        index = {label: i for i, label in enumerate(self.labels)}
        self.samples: Tuple[Sample, ...] = tuple(_subset(
            [Sample(path=p, label=label, target=index[label]) for label, p in found], limit))

    def load_points(self, i: int) -> np.ndarray:
        """
        Read one object's points.

        :param i: Sample position.
        :return: (N, 3) float32 finite points in the file's units, +z up.
        :raises ValueError: If the file holds no usable points (the message names it).
        """
        from opendlign_core.pointcloud import clean_points, load_point_cloud, to_z_up

        path = self.samples[i].path
        try:
            points = clean_points(load_point_cloud(path))
        except ValueError as e:
            raise ValueError(f'{str(path)!r}: {e}') from e
        points = points if self.up_axis == 'z' else to_z_up(points, self.up_axis)
        return np.ascontiguousarray(points, dtype=np.float32)

    def __getitem__(self, i: int) -> Tuple[np.ndarray, int]:
        """
        Return one object's points and class index.

        :param i: Sample position.
        :return: ``(points (N, 3) float32, target)``.
        """
        return self.load_points(i), self.samples[i].target

    def batches(self, batch_size: int) -> Iterator[Tuple[List[np.ndarray], np.ndarray]]:
        """
        Iterate over the objects in order, a batch at a time.

        :param batch_size: Objects per batch, >= 1.
        :return: Iterator of ``(list of (N_i, 3) float32 arrays, targets (B,) int64)``.
        :raises ValueError: If ``batch_size`` < 1.
        """
        if batch_size < 1:
            raise ValueError(f'batch_size must be >= 1, got {batch_size!r}')
        for start in range(0, len(self), batch_size):
            stop = min(start + batch_size, len(self))
            clouds = [self.load_points(i) for i in range(start, stop)]
            yield clouds, np.array([s.target for s in self.samples[start:stop]], dtype=np.int64)
