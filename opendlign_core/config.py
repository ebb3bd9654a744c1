"""
Frozen configuration dataclasses shared by the core, the ROS shell and the training scripts.

Every field documents its unit. The ROS shell maps parameters onto these; the CLI maps flags onto
them; nothing else constructs pipeline settings.
"""

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal, Mapping, Tuple

#: Default view angles in degrees (see :mod:`opendlign_core.projection` for the convention).
DEFAULT_VIEW_ANGLES_DEG: Tuple[float, ...] = (
    30.0, 66.0, 102.0, 138.0, 174.0, 210.0, 246.0, 282.0, 318.0, 354.0,
)

#: Weights shipped with the package, by architecture (``ModelConfig.weights_path='bundled'``).
BUNDLED_WEIGHTS: Mapping[str, Path] = {
    'OpenDlign-Bootstrap-XS':
        Path(__file__).resolve().parent / 'weights' / 'opendlign-bootstrap.safetensors',
}

#: ImageNet statistics: the reference code normalises depth maps with these, not CLIP's.
IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

ProjectionMethod = Literal['contour', 'realistic']
Device = str
Precision = Literal['fp32', 'bf16', 'fp16', 'auto']


@dataclass(frozen=True)
class ProjectionConfig:
    """
    Settings of the multi-view depth-map projection.

    The defaults reproduce OpenDlign's contour-aware projection (spec section 2).
    """

    #: Projection algorithm: ``'contour'`` (OpenDlign) or ``'realistic'`` (PointCLIP V2 baseline).
    method: ProjectionMethod = 'contour'
    #: Azimuths of the views about the object's +z (up) axis, degrees, in encoder order (the
    #: first half go to the pre-trained encoder); see :mod:`opendlign_core.projection`.
    view_angles_deg: Tuple[float, ...] = DEFAULT_VIEW_ANGLES_DEG
    #: Elevation of every view above the horizontal plane, degrees (positive looks down).
    elevation_deg: float = 20.0
    #: Output height and width of each depth map, pixels.
    resolution: int = 224
    #: Number of depth bins B of the voxel grid (8: PointCLIP V2's value; B <= 10 takes the fast
    #: exact table path of :mod:`opendlign_core.projection`, larger B a much slower dense path).
    depth_bins: int = 8
    #: Max-pool (densify) kernel edge, voxels; odd.
    densify_kernel: int = 7
    #: Bilateral filter window edge, voxels; odd.
    bilateral_kernel: int = 5
    #: Bilateral spatial sigma, voxels.
    bilateral_sigma_spatial: float = 1.0
    #: Bilateral range sigma, in nearness units (nearness is in [0, 1]).
    bilateral_sigma_range: float = 0.1
    #: Fraction of the image the object's largest extent fills, in (0, 1].
    object_ratio: float = 0.8
    #: Depth value of the farthest surface (background is 1.0, the nearest surface 0.0).
    far_value: float = 0.8
    #: CPU intra-op threads used while projecting (set for the call, then restored); 0 keeps the
    #: caller's torch setting. One thread is as fast as two for this memory-bound work and does
    #: not stall when other processes load the cores (OpenMP waits: 50x slower measured).
    num_threads: int = 1

    def __post_init__(self) -> None:
        _check(self.method in ('contour', 'realistic'), 'method', self.method,
               "one of 'contour', 'realistic'")
        _check(len(self.view_angles_deg) >= 1, 'view_angles_deg', self.view_angles_deg,
               'at least one angle')
        _check(self.resolution >= 8, 'resolution', self.resolution, '>= 8')
        _check(self.depth_bins >= 2, 'depth_bins', self.depth_bins, '>= 2')
        for name in ('densify_kernel', 'bilateral_kernel'):
            value = getattr(self, name)
            _check(value >= 1 and value % 2 == 1, name, value, 'an odd integer >= 1')
        _check(self.bilateral_sigma_spatial > 0, 'bilateral_sigma_spatial',
               self.bilateral_sigma_spatial, '> 0')
        _check(self.bilateral_sigma_range > 0, 'bilateral_sigma_range',
               self.bilateral_sigma_range, '> 0')
        _check(0 < self.object_ratio <= 1, 'object_ratio', self.object_ratio, 'in (0, 1]')
        _check(0 < self.far_value < 1, 'far_value', self.far_value, 'in (0, 1)')
        _check(self.num_threads >= 0, 'num_threads', self.num_threads, '>= 0')

    @property
    def num_views(self) -> int:
        """
        Return the number of views V.

        :return: ``len(view_angles_deg)``.
        """
        return len(self.view_angles_deg)


@dataclass(frozen=True)
class ModelConfig:
    """
    Which CLIP model to build and where its weights come from.

    The default is the model bundled with the package (``OpenDlign-Bootstrap-XS``).
    """

    #: open_clip architecture name (``'ViT-B-32'``, ``'ViT-H-14-quickgelu'``, a bundled JSON name).
    #: Ignored when ``weights_path`` is an exported model, whose manifest names the architecture.
    model_name: str = 'OpenDlign-Bootstrap-XS'
    #: Weights: ``'bundled'`` = the weights shipped for ``model_name`` in
    #: ``opendlign_core/weights`` (random, with a warning, for architectures that have none);
    #: ``''`` = random weights; otherwise a path to an exported ``.safetensors`` (with its
    #: ``.json`` manifest), an authors' ``.pth`` checkpoint or a plain open_clip checkpoint.
    weights_path: str = 'bundled'
    #: Torch device string, e.g. ``'cpu'`` or ``'cuda:0'``.
    device: Device = 'cpu'
    #: Weight precision: ``'fp32'``; ``'bf16'``/``'fp16'`` (the whole model); ``'auto'`` (the
    #: image tower in bf16 where the device computes bf16 natively: x86 AVX512-BF16 or AMX,
    #: CUDA with bf16; fp32 elsewhere; the text tower stays fp32, see
    #: :func:`opendlign_core.model.resolve_precision`).
    precision: Precision = 'fp32'

    def __post_init__(self) -> None:
        _check(bool(self.model_name.strip()), 'model_name', self.model_name, 'a non-empty name')
        _check(self.precision in ('fp32', 'bf16', 'fp16', 'auto'), 'precision', self.precision,
               "one of 'fp32', 'bf16', 'fp16', 'auto'")


@dataclass(frozen=True)
class ClassifierConfig:
    """Zero-shot classification settings."""

    #: Text template set name (see :mod:`opendlign_core.templates`).
    templates: str = 'depth'
    #: Number of (label, score) pairs returned per object.
    top_k: int = 5
    #: Objects per encoder batch (each object contributes V images).
    batch_size: int = 8
    #: Disk cache of label text embeddings (restarts skip the text encoder): ``'auto'``
    #: (``$OPENDLIGN_TEXT_CACHE`` or ``~/.cache/opendlign/text``), a folder, or ``''`` for none.
    text_cache_dir: str = 'auto'

    def __post_init__(self) -> None:
        _check(self.top_k >= 1, 'top_k', self.top_k, '>= 1')
        _check(self.batch_size >= 1, 'batch_size', self.batch_size, '>= 1')


@dataclass(frozen=True)
class OpenDlignConfig:
    """Everything needed to classify point clouds: model, projection and classifier settings."""

    model: ModelConfig = field(default_factory=ModelConfig)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)


def update_dataclass(obj: Any, values: Mapping[str, Any]) -> Any:
    """
    Return a copy of a frozen dataclass with some fields replaced, rejecting unknown names.

    :param obj: A dataclass instance.
    :param values: Field name to new value.
    :return: The new instance (validated by its ``__post_init__``).
    :raises ValueError: If a name is not a field of ``obj``.
    """
    known = {f.name for f in fields(obj)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f'unknown {type(obj).__name__} field(s) {unknown}; known: {sorted(known)}')
    return replace(obj, **dict(values))


def _check(ok: bool, name: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f'{name} must be {expected}, got {value!r}')


UpAxis = Literal['x', 'y', 'z', '-x', '-y', '-z']
ClusterMethod = Literal['euclidean', 'dbscan']


@dataclass(frozen=True)
class SegmentationConfig:
    """
    Settings of the scene segmentation into object clusters.

    Clouds are in metres in a gravity-aligned frame with +z up (the detector rotates other up axes
    into it first). Defaults were tuned on train-split synthetic scenes (``benchmarks/``).
    """

    #: Edge of the voxel grid the scene is segmented on, metres (points map back via their voxel).
    voxel_size: float = 0.04
    #: Largest number of structure planes (floor, ceiling, walls) removed before clustering.
    max_planes: int = 8
    #: Largest number of RANSAC plane candidates examined, removed or set aside (table tops,
    #: cabinet fronts, sloped surfaces); a rejected candidate never ends the search by itself.
    max_plane_tries: int = 8
    #: RANSAC inlier distance for floor, ceiling and wall planes, metres.
    plane_distance: float = 0.04
    #: RANSAC iterations per plane.
    plane_iterations: int = 200
    #: Voxels sampled for each RANSAC search (the plane is then refitted on all of them).
    ransac_max_points: int = 4000
    #: Voxel budget; the grid is coarsened by 1.5x steps until the occupied voxels fit.
    max_voxels: int = 150_000
    #: Fewest voxels a plane needs to be considered at all.
    min_plane_voxels: int = 300
    #: Largest angle between a plane normal and +z for the plane to count as horizontal, degrees.
    horizontal_tolerance_deg: float = 10.0
    #: Largest angle between a plane and the vertical for the plane to count as a wall, degrees.
    vertical_tolerance_deg: float = 10.0
    #: Yaw range searched around a RANSAC wall normal for the densest wall line, degrees
    #: (fused walls come out of RANSAC 1-2 degrees off, which over 5 m leaves half a wall out).
    wall_yaw_search_deg: float = 3.0
    #: Remove the floor plane (horizontal, almost nothing below it).
    remove_floor: bool = True
    #: Remove a ceiling plane (horizontal, almost nothing above it).
    remove_ceiling: bool = True
    #: Remove wall planes (vertical, large, almost nothing behind them).
    remove_walls: bool = True
    #: Largest fraction of the scene's voxels allowed beyond a floor, ceiling or wall plane.
    max_outside_fraction: float = 0.05
    #: A cloud whose voxels span at least this much in both x and y is room-sized, metres: when
    #: RANSAC finds no floor in it, a warning is reported and the floor is taken from the height
    #: histogram (the lowest layer holding ``floor_layer_share`` of the fullest one).
    room_min_extent: float = 2.5
    #: Smallest share of the fullest height layer for the histogram floor layer, in (0, 1].
    floor_layer_share: float = 0.3
    #: Smallest x and y span of the histogram floor layer's well-filled 0.2 m cells, metres;
    #: they must also cover its square (larger than furniture tops: a bed filling a depth frame
    #: is not a floor).
    floor_min_extent: float = 2.2
    #: Warn when a cluster dropped as too large or too tall holds at least this share of the
    #: points left after structure removal, in (0, 1] (structure the plane search missed).
    warn_dropped_share: float = 0.1
    #: Smallest horizontal length of a wall plane's inliers, metres.
    wall_min_length: float = 1.0
    #: Smallest vertical extent of a wall plane's inliers, metres.
    wall_min_height: float = 1.2
    #: Oversized clusters lose their voxels closer than this to a wall and are re-clustered,
    #: metres (wall-noise sheets otherwise chain the objects along a wall together).
    wall_residue_distance: float = 0.1
    #: Clustering algorithm: ``'euclidean'`` (connected components) or ``'dbscan'`` (open3d).
    cluster_method: ClusterMethod = 'euclidean'
    #: Neighbour distance linking two voxels of one cluster, metres.
    cluster_distance: float = 0.07
    #: DBSCAN core-point neighbour count (``'dbscan'`` only).
    dbscan_min_points: int = 3
    #: Fewest original points a cluster needs to be kept.
    min_cluster_points: int = 100
    #: Smallest largest-extent of a kept cluster, metres.
    min_cluster_extent: float = 0.15
    #: Largest horizontal extent of a kept cluster, metres (larger ones are room structure).
    max_cluster_extent: float = 4.0
    #: Largest vertical extent of a kept cluster, metres.
    max_cluster_height: float = 2.5
    #: Split clusters whose footprint contains several separate blobs at a tighter link distance.
    split_clusters: bool = False
    #: Link distance used when trying to split a cluster, metres.
    split_distance: float = 0.05
    #: Fewest original points each part of a split needs (otherwise the cluster stays whole).
    split_min_points: int = 400
    #: Merge parts standing under a cluster's ground footprint into it (table top + legs).
    merge_stacked: bool = True
    #: Ground cell edge of the footprint test of the merge, metres.
    merge_cell: float = 0.08
    #: Largest vertical gap between a part's top and the bottom of the cluster above it, metres.
    merge_max_gap: float = 0.3
    #: Smallest fraction of a part's voxels inside the footprint of the cluster above it.
    merge_min_overlap: float = 0.8
    #: Recover objects standing slightly proud of a removed wall (doors, windows, pictures) from
    #: a height map of the wall in its own (along, up) coordinates.
    wall_relief: bool = True
    #: Cell edge of the wall height map, metres.
    relief_cell: float = 0.05
    #: Smallest per-cell median distance in front of the wall for a cell to stand proud, metres.
    relief_min_height: float = 0.02
    #: Points up to this far in front of a wall belong to its height map and its regions, metres.
    relief_front: float = 0.3
    #: Points up to this far behind a wall belong to its height map and its regions, metres.
    relief_back: float = 0.1
    #: Smallest per-cell colour distance from the wall's own colour for a cell to count as part
    #: of a flush object (0-255 RGB units; used only when colours are given, 0 disables).
    relief_min_color: float = 30.0
    #: Largest colour distance between neighbouring wall-map cells of one object (0-255 RGB
    #: units; colours given only): proud cells of different colours become different objects.
    relief_color_link: float = 25.0
    #: Largest gap between the two posts of one window or door frame found as separate wall
    #: regions, metres (0 disables joining posts).
    relief_frame_span: float = 1.6
    #: Largest width of a frame post, metres.
    relief_post_width: float = 0.3
    #: Smallest vertical overlap of two posts of one frame, as a share of the shorter post.
    relief_post_overlap: float = 0.6
    #: Smallest share of a wall map's cells in the back-most layer taken as the wall itself
    #: (a large window or door in front of it may hold more).
    relief_wall_share: float = 0.2
    #: Smallest area of a proud region, square metres.
    relief_min_area: float = 0.03
    #: Largest fraction of a region's voxels within ``cluster_distance`` of voxels just in
    #: front of the band (a region touching a deeper object is that object's back).
    relief_max_touch: float = 0.02

    def __post_init__(self) -> None:
        for name in ('voxel_size', 'plane_distance', 'cluster_distance', 'wall_min_length',
                     'wall_min_height', 'max_cluster_extent', 'max_cluster_height',
                     'split_distance', 'wall_residue_distance', 'merge_cell', 'relief_cell',
                     'relief_front', 'relief_back'):
            _check(getattr(self, name) > 0, name, getattr(self, name), '> 0')
        for name in ('max_planes', 'min_cluster_points', 'min_cluster_extent'):
            _check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
        for name in ('room_min_extent', 'floor_min_extent'):
            _check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
        for name in ('floor_layer_share', 'warn_dropped_share'):
            _check(0 < getattr(self, name) <= 1, name, getattr(self, name), 'in (0, 1]')
        for name in ('plane_iterations', 'min_plane_voxels', 'dbscan_min_points',
                     'split_min_points', 'ransac_max_points', 'max_voxels', 'max_plane_tries'):
            _check(getattr(self, name) >= 1, name, getattr(self, name), '>= 1')
        _check(0 <= self.wall_yaw_search_deg < 45, 'wall_yaw_search_deg',
               self.wall_yaw_search_deg, 'in [0, 45)')
        for name in ('horizontal_tolerance_deg', 'vertical_tolerance_deg'):
            _check(0 < getattr(self, name) < 45, name, getattr(self, name), 'in (0, 45)')
        _check(0 <= self.max_outside_fraction < 1, 'max_outside_fraction',
               self.max_outside_fraction, 'in [0, 1)')
        _check(self.merge_max_gap >= 0, 'merge_max_gap', self.merge_max_gap, '>= 0')
        for name in ('relief_frame_span', 'relief_post_width'):
            _check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
        _check(0 < self.relief_post_overlap <= 1, 'relief_post_overlap', self.relief_post_overlap,
               'in (0, 1]')
        for name in ('relief_min_height', 'relief_min_area'):
            _check(getattr(self, name) >= 0, name, getattr(self, name), '>= 0')
        _check(0 < self.relief_wall_share <= 1, 'relief_wall_share', self.relief_wall_share,
               'in (0, 1]')
        _check(0 <= self.relief_max_touch <= 1, 'relief_max_touch', self.relief_max_touch,
               'in [0, 1]')
        _check(0 < self.merge_min_overlap <= 1, 'merge_min_overlap', self.merge_min_overlap,
               'in (0, 1]')
        _check(self.cluster_method in ('euclidean', 'dbscan'), 'cluster_method',
               self.cluster_method, "one of 'euclidean', 'dbscan'")


#: Generic synonym groups of the ScanNet-18 classes (see ``DetectorConfig.label_synonyms``).
DEFAULT_LABEL_SYNONYMS: str = (
    'garbage bin|trash can|waste bin|garbage can; refrigerator|fridge; bookshelf|bookcase|shelf; '
    'counter|kitchen counter|countertop; cabinet|kitchen cabinet|cupboard; '
    'desk|office desk|writing desk; window|window frame; door|doorway; toilet|toilet bowl; '
    'sink|washbasin; picture|picture frame'
)


@dataclass(frozen=True)
class DetectorConfig:
    """
    Zero-shot 3D detection settings: segmentation, classification and post-processing.

    Probabilities are the classifier's calibrated softmax; scores rank detections.
    """

    #: Model, projection and classifier settings.
    opendlign: OpenDlignConfig = field(default_factory=OpenDlignConfig)
    #: Scene segmentation settings.
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    #: Up axis of input clouds (``'z'`` for REP-103 frames, ``'y'`` for Y-up meshes); boxes are
    #: reported in the gravity-aligned frame where this axis becomes +z.
    up_axis: UpAxis = 'z'
    #: Drop detections whose top probability is below this, in [0, 1].
    score_threshold: float = 0.0
    #: Label an object ``unknown_label`` when its top probability is below this; 0 disables.
    unknown_threshold: float = 0.0
    #: Label used for objects below ``unknown_threshold``.
    unknown_label: str = 'unknown'
    #: Class-wise 3D NMS IoU threshold (oriented IoU); 1 disables NMS.
    nms_iou: float = 0.25
    #: Largest number of scene points processed; larger clouds are subsampled with ``seed``.
    max_points: int = 1_000_000
    #: Largest number of points per object handed to the projection (subsampled with ``seed``).
    max_points_per_object: int = 8192
    #: Fewest points an object (cluster or given box) needs to be classified.
    min_points_per_object: int = 50
    #: Largest number of clusters classified per scene (the largest ones are kept).
    max_objects: int = 64
    #: Fit yaw-oriented boxes (min-area rectangle) instead of axis-aligned ones.
    oriented_boxes: bool = True
    #: Seed of every random subsampling, so results are reproducible.
    seed: int = 0
    #: Synonym groups ``'label|synonym|...'`` joined by ``';'`` (``''`` for none): a class whose
    #: label equals a group's first name is
    #: matched by the average of the names' L2-normalised text embeddings (renormalised), and its
    #: detections keep the first name. A label may also carry its own ``'|'`` synonyms.
    label_synonyms: str = DEFAULT_LABEL_SYNONYMS
    #: Labels reported per object: its best ``labels_per_object`` labels by score, each a
    #: detection with the same box (more recall for AP-style evaluation); 1 gives one label per
    #: object. Capped by ``opendlign.classifier.top_k``.
    labels_per_object: int = 1
    #: Use the cloud's colours, when it has them, in the segmentation: doors, pictures and
    #: windows flush with a wall differ from it only in colour (see
    #: ``SegmentationConfig.relief_min_color``). False segments from geometry alone.
    use_colors: bool = True

    def __post_init__(self) -> None:
        _check(self.up_axis in ('x', 'y', 'z', '-x', '-y', '-z'), 'up_axis', self.up_axis,
               "one of 'x', 'y', 'z', '-x', '-y', '-z'")
        for name in ('score_threshold', 'unknown_threshold'):
            _check(0 <= getattr(self, name) <= 1, name, getattr(self, name), 'in [0, 1]')
        _check(bool(self.unknown_label.strip()), 'unknown_label', self.unknown_label,
               'a non-empty label')
        _check(0 < self.nms_iou <= 1, 'nms_iou', self.nms_iou, 'in (0, 1]')
        for name in ('max_points', 'max_points_per_object', 'min_points_per_object',
                     'max_objects'):
            _check(getattr(self, name) >= 1, name, getattr(self, name), '>= 1')
        _check(self.labels_per_object >= 1, 'labels_per_object', self.labels_per_object, '>= 1')
        _check(isinstance(self.label_synonyms, str)
               and all(g.split('|')[0].strip() for g in self.label_synonyms.split(';')
                       if g.strip()),
               'label_synonyms', self.label_synonyms, "'label|synonym|...' groups joined by ';'")
