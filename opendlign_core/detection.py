"""
Zero-shot 3D detection: scene segmentation, multi-view projection, OpenDlign classification.

:class:`Detector` runs segmentation (:mod:`opendlign_core.segmentation`) -> per-cluster boxes
(:mod:`opendlign_core.boxes`) -> batched projection and encoding -> zero-shot classification
against a :class:`~opendlign_core.classifier.LabelSet` -> thresholds, ``unknown`` outcome and
class-wise 3D NMS. Clouds are (N, 3) float32 or float64 metres; boxes are in the gravity-aligned
frame in which ``DetectorConfig.up_axis`` becomes +z (the input frame itself for the default
``'z'``). Point indices always index the caller's cloud.

Clouds far from the origin (UTM or map coordinates, float64) keep their precision: the detector
works in a local frame, subtracting a float64 origin (:func:`local_origin`) before the float32
cast, and adds it back to every box centre in float64.

The detector holds no per-call state, so ``detect`` may run on one thread while another builds a
new label set with :meth:`Detector.encode_labels`.
"""

from dataclasses import dataclass, field
import logging
import math
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from opendlign_core.boxes import Box3D, fit_aabb, fit_oriented_box, nms_3d
from opendlign_core.config import DetectorConfig
from opendlign_core.pointcloud import up_rotation
from opendlign_core.segmentation import check_colors, segment_scene
from opendlign_core.transforms import transform_points, transform_points_local

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """
    One detected object.

    ``label`` is the best label (or ``DetectorConfig.unknown_label``), ``score`` the classifier's
    ranking score in [0, 1], ``box`` the fitted box, ``point_indices`` (K,) int64 indices into the
    input cloud, ``top_k`` the best (label, score) pairs and ``probability`` the calibrated
    probability of the best label. With ``DetectorConfig.labels_per_object`` > 1 an object gives
    one detection per label hypothesis: ``hypothesis`` is the label's rank among the object's
    labels (0 for the best; other ranks have a NaN ``probability``).
    """

    label: str
    score: float
    box: Box3D
    point_indices: np.ndarray
    top_k: tuple[tuple[str, float], ...]
    probability: float = math.nan
    hypothesis: int = 0
    #: (V, D) float32 L2-normalised per-view features of the object (what the classifier
    #: scored), shared by all hypotheses of one object; None when not computed. Not in
    #: :meth:`to_dict` and not compared.
    view_features: Optional[np.ndarray] = field(default=None, compare=False, repr=False)

    def to_dict(self, with_indices: bool = False) -> dict:
        """
        Return a JSON-friendly dict.

        :param with_indices: Include the point indices.
        :return: label, score, probability, box, num_points, top_k (and point_indices).
        """
        out = {'label': self.label, 'score': float(self.score),
               'probability': float(self.probability), 'box': self.box.to_dict(),
               'num_points': int(len(self.point_indices)),
               'top_k': [[k, float(v)] for k, v in self.top_k]}
        if with_indices:
            out['point_indices'] = self.point_indices.tolist()
        return out


@dataclass(frozen=True)
class DetectionResult:
    """
    Detections by decreasing score, stage timings (ms) and scene statistics.

    ``warnings`` and ``dropped_clusters`` (clusters dropped per filter name) come from the
    segmentation (:class:`~opendlign_core.segmentation.SegmentationResult`, which logs the
    warnings); clusters the detector itself leaves unclassified add ``'min_points_per_object'``
    and ``'max_objects'`` counts.
    """

    detections: tuple[Detection, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    num_points: int = 0
    num_clusters: int = 0
    warnings: tuple[str, ...] = ()
    dropped_clusters: Mapping[str, int] = field(default_factory=dict)


class Detector:
    """
    Zero-shot 3D detector over a :class:`~opendlign_core.classifier.Classifier`.

    :param classifier: Provides ``encode_labels``, ``project``, ``embed_views`` and
        ``classify_features``.
    :param config: Detection settings.
    """

    def __init__(self, classifier, config: DetectorConfig = DetectorConfig()) -> None:
        self.classifier = classifier
        self.config = config

    @classmethod
    def from_config(cls, config: DetectorConfig) -> 'Detector':
        """
        Build the classifier from ``config.opendlign`` and wrap it.

        :param config: Detection settings.
        :return: The detector.
        """
        from opendlign_core.classifier import Classifier

        return cls(Classifier.from_config(config.opendlign), config)

    def encode_labels(self, labels: Sequence[str]):
        """
        Build an immutable label set, merging synonyms (see ``DetectorConfig.label_synonyms``).

        A label ``'a|b|c'`` (or a label ``'a'`` with a configured group ``'a|b|c'``) becomes the
        class ``'a'`` whose text embedding is the renormalised mean of the L2-normalised
        embeddings of ``a``, ``b`` and ``c``. Without any synonyms this delegates to the
        classifier unchanged.

        :param labels: Class names, each optionally ``'name|synonym|...'``.
        :return: A :class:`~opendlign_core.classifier.LabelSet` labelled by the first names.
        :raises TypeError: If ``labels`` is a single string.
        :raises ValueError: If a label has a blank name or two labels share a first name.
        """
        if isinstance(labels, (str, bytes)):
            raise TypeError(f'labels must be a sequence of strings, not a string {labels!r}')
        groups = expand_synonyms(labels, self.config.label_synonyms)
        if all(len(g) == 1 for g in groups):
            return self.classifier.encode_labels([g[0] for g in groups])
        import torch
        import torch.nn.functional as F

        from opendlign_core.classifier import LabelSet

        names = list(dict.fromkeys(n for g in groups for n in g))
        base = self.classifier.encode_labels(names)
        row = {n: i for i, n in enumerate(base.labels)}
        weights = torch.stack([F.normalize(base.weights[[row[n] for n in g]].mean(dim=0), dim=-1)
                               for g in groups])
        return LabelSet(labels=tuple(g[0] for g in groups), weights=weights,
                        templates=base.templates)

    def _prepare(self, points: np.ndarray, colors: Optional[np.ndarray],
                 transform: Optional[np.ndarray] = None
                 ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray]:
        """
        Select, move (``transform``), rotate and localise the finite points.

        :return: ``(work, index, cols, origin, source_origin)``: (M, 3) float32 z-up points
            minus ``origin``, their (M,) indices into ``points``, their colours (or None), the
            (3,) float64 z-up origin to add back to positions computed from ``work``, and where
            the input lies in its own frame (for :func:`_precision_warnings`).
        """
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f'points must have shape (N, 3), got {pts.shape}')
        if not np.issubdtype(pts.dtype, np.number):
            raise TypeError(f'points must be numeric, got dtype {pts.dtype}')
        cols = check_colors(colors, len(pts)) if colors is not None else None
        # Clouds are usually all finite: one flat check, and no row-wise pass or copy then.
        if np.isfinite(pts).all():
            index = np.arange(len(pts))
        else:
            index = np.flatnonzero(np.isfinite(pts).all(axis=1))
        if len(index) > self.config.max_points:
            rng = np.random.default_rng(self.config.seed)
            index = np.sort(rng.choice(index, self.config.max_points, replace=False))
        if cols is not None and self.config.use_colors:
            cols = cols[index]
        else:
            cols = None
        zup = pts if len(index) == len(pts) else pts[index]
        if transform is not None:
            work, origin, source = self._localise_moved(zup, transform)
            return work, index, cols, origin, source
        # Rotate and localise before any float32 cast: casting coordinates like 5e6 m would move
        # points by up to 0.25 m.
        if self.config.up_axis != 'z':
            zup = zup.astype(np.float64) @ up_rotation(self.config.up_axis).T
        origin = local_origin(zup)
        if zup.dtype == np.float32:
            # float32 minus a float32 origin rounds exactly like the float64 difference cast to
            # float32, without a float64 copy of the cloud.
            origin32 = origin.astype(np.float32)
            origin = origin32.astype(np.float64)
            work = np.ascontiguousarray(zup - origin32)
        else:
            work = np.ascontiguousarray(zup.astype(np.float64, copy=False) - origin,
                                        dtype=np.float32)
        return work, index, cols, origin, origin

    def _localise_moved(self, pts: np.ndarray, transform: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # The points moved by ``transform`` (then rotated to z-up) straight into the float32
        # working frame (transform_points_local): no float64 copy of the moved cloud. The origin
        # is local_origin's, from the same fixed-stride sample moved in float64.
        try:
            m = np.asarray(transform, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f'transform must be a finite (4, 4) matrix: {e}') from e
        if m.shape != (4, 4):
            raise ValueError(f'transform must be a finite (4, 4) matrix, got shape {m.shape}')
        if not np.isfinite(m).all():
            raise ValueError('transform must be a finite (4, 4) matrix, got non-finite entries')
        if self.config.up_axis != 'z':
            up = np.eye(4)
            up[:3, :3] = up_rotation(self.config.up_axis)
            m = up @ m
        origin = np.zeros(3)
        if len(pts) == 0:
            return np.zeros((0, 3), np.float32), origin, origin
        raw = pts[::max(1, len(pts) // 8192)]
        sample = transform_points(raw, m)
        origin[:2] = np.median(sample[:, :2], axis=0)
        work = transform_points_local(pts, m, origin)
        if np.abs(work[:, 2]).max() > LOCAL_Z_LIMIT:
            origin[2] = np.median(sample[:, 2])
            work = transform_points_local(pts, m, origin)
        return work, origin, np.median(raw.astype(np.float64), axis=0)

    def _fit_box(self, pts: np.ndarray) -> Box3D:
        return fit_oriented_box(pts) if self.config.oriented_boxes else fit_aabb(pts)

    def _classify(self, clouds: list[np.ndarray], label_set, timings: dict
                  ) -> tuple[list, list[np.ndarray]]:
        # Returns the predictions and each object's (V, D) float32 view features.
        preds: list = []
        features: list[np.ndarray] = []
        step = max(1, self.config.opendlign.classifier.batch_size)
        for start in range(0, len(clouds), step):
            t0 = time.perf_counter()
            views = self.classifier.project(clouds[start:start + step])
            t1 = time.perf_counter()
            feats = self.classifier.embed_views(views)
            t2 = time.perf_counter()
            preds.extend(self.classifier.classify_features(feats, label_set))
            features.extend(_features_to_numpy(feats))
            t3 = time.perf_counter()
            timings['project'] += 1e3 * (t1 - t0)
            timings['encode'] += 1e3 * (t2 - t1)
            timings['classify'] += 1e3 * (t3 - t2)
        return preds, features

    def _object_cloud(self, pts: np.ndarray) -> np.ndarray:
        cap = self.config.max_points_per_object
        if len(pts) <= cap:
            return pts
        rng = np.random.default_rng(self.config.seed)
        return pts[np.sort(rng.choice(len(pts), cap, replace=False))]

    def _make(self, pred, box: Box3D, indices: np.ndarray,
              features: Optional[np.ndarray] = None) -> list[Detection]:
        prob = float(pred.probability)
        if prob < self.config.score_threshold:
            return []
        top_k = tuple((str(k), float(v)) for k, v in pred.top_k)
        indices = indices.astype(np.int64)
        if self.config.unknown_threshold > 0 and prob < self.config.unknown_threshold:
            return [Detection(self.config.unknown_label, float(pred.score), box, indices, top_k,
                              prob, view_features=features)]
        out = [Detection(pred.label, float(pred.score), box, indices, top_k, prob,
                         view_features=features)]
        extra = [(k, v) for k, v in top_k if k != pred.label][:self.config.labels_per_object - 1]
        out.extend(Detection(k, v, box, indices, top_k, math.nan, rank, view_features=features)
                   for rank, (k, v) in enumerate(extra, start=1))
        return out

    def detect(self, points: np.ndarray, label_set, colors: Optional[np.ndarray] = None,
               transform: Optional[np.ndarray] = None) -> DetectionResult:
        """
        Detect objects in a scene cloud.

        Non-finite points are ignored; clouds above ``max_points`` are subsampled with ``seed``.
        An empty cloud, or one with no objects, gives a result without detections.

        :param points: (N, 3) metres, ``config.up_axis`` up.
        :param label_set: Labels from :meth:`encode_labels`.
        :param colors: Optional (N, 3) RGB colours, 0-255, used by the segmentation when
            ``config.use_colors`` (the depth model itself sees geometry only).
        :param transform: Optional (4, 4) ``T_frame<-points``, e.g. a TF lookup of the target
            frame from the sensor frame: detect in ``frame`` (whose up axis is
            ``config.up_axis``) on points given in their own frame. It is applied while the
            cloud is converted to the float32 working frame, instead of a float64 moved copy of
            the cloud first (3 vs 12 ms for 260k float32 points, issue 13); boxes come out in
            ``frame`` and ``point_indices`` still index ``points``.
        :return: Detections by decreasing score and stage timings.
        :raises ValueError: If ``points`` is not (N, 3), ``colors`` does not match it or
            ``transform`` is not a finite (4, 4) matrix.
        :raises TypeError: If ``points`` or ``colors`` is not numeric.
        """
        t_start = time.perf_counter()
        timings = {'segment': 0.0, 'project': 0.0, 'encode': 0.0, 'classify': 0.0}
        work, index, cols, origin, source_origin = self._prepare(points, colors, transform)
        t0 = time.perf_counter()
        seg = segment_scene(work, self.config.segmentation, seed=self.config.seed, colors=cols)
        clusters = [c for c in seg.clusters if len(c) >= self.config.min_points_per_object]
        dropped = dict(seg.dropped)
        for name, num in (('min_points_per_object', len(seg.clusters) - len(clusters)),
                          ('max_objects', len(clusters) - self.config.max_objects)):
            if num > 0:
                dropped[name] = num
        clusters = clusters[:self.config.max_objects]
        boxes = [_shift_box(self._fit_box(work[c]), origin) for c in clusters]
        timings['segment'] = 1e3 * (time.perf_counter() - t0)
        preds, feats = self._classify([self._object_cloud(work[c]) for c in clusters], label_set,
                                      timings)
        t1 = time.perf_counter()
        dets = [d for p, b, c, f in zip(preds, boxes, clusters, feats)
                for d in self._make(p, b, index[c], f)]
        if dets and self.config.nms_iou < 1:
            keep = nms_3d([d.box for d in dets], [d.score for d in dets], self.config.nms_iou,
                          labels=[d.label for d in dets], oriented=True)
            dets = [dets[i] for i in keep]
        dets.sort(key=lambda d: -d.score)
        timings['classify'] += 1e3 * (time.perf_counter() - t1)
        timings['total'] = 1e3 * (time.perf_counter() - t_start)
        return DetectionResult(tuple(dets), timings, len(np.asarray(points)), len(seg.clusters),
                               _precision_warnings(points, source_origin) + tuple(seg.warnings),
                               dropped)

    def classify_boxes(self, points: np.ndarray, boxes: Sequence[Box3D], label_set
                       ) -> tuple[Detection, ...]:
        """
        Classify the points inside externally proposed boxes (no segmentation, no NMS).

        Boxes holding fewer than ``min_points_per_object`` points give no detection; thresholds
        and the ``unknown`` outcome apply as in :meth:`detect`.

        :param points: (N, 3) metres, ``config.up_axis`` up.
        :param boxes: Boxes in the gravity-aligned frame.
        :param label_set: Labels from :meth:`encode_labels`.
        :return: Detections in box order (each keeps its given box; hypotheses of one box follow
            each other).
        :raises ValueError: If ``points`` is not (N, 3).
        :raises TypeError: If ``points`` is not numeric or a box is not a :class:`Box3D`.
        """
        work, index, _, origin, _ = self._prepare(points, None)
        for b in boxes:
            if not isinstance(b, Box3D):
                raise TypeError(f'boxes must be Box3D, got {type(b).__name__}')
        members = [np.flatnonzero(_shift_box(b, -origin).contains(work)) for b in boxes]
        chosen = [(b, m) for b, m in zip(boxes, members)
                  if len(m) >= self.config.min_points_per_object]
        timings = {'project': 0.0, 'encode': 0.0, 'classify': 0.0}
        preds, feats = self._classify([self._object_cloud(work[m]) for _, m in chosen],
                                      label_set, timings)
        return tuple(d for p, (b, m), f in zip(preds, chosen, feats)
                     for d in self._make(p, b, index[m], f))


#: Height (m) beyond which the vertical coordinate is localised too; below it the local frame
#: keeps the input's z, so heights in segmentation reports stay those of the input.
LOCAL_Z_LIMIT = 1000.0


def local_origin(points: np.ndarray) -> np.ndarray:
    """
    Choose the float64 origin of the detector's float32 working frame.

    x and y are the medians of the points (robust to outliers, so the working coordinates of
    the scene are small wherever it lies); z is the median too when any point is more than
    :data:`LOCAL_Z_LIMIT` from z = 0, else 0. The medians are taken over every k-th point, at
    most about 8192 of them (a fixed stride, so the result is deterministic). Translating a
    cloud translates the origin by the same amount, so detections do not depend on where the
    scene lies.

    :param points: (N, 3) finite z-up coordinates, metres, any real dtype.
    :return: (3,) float64 origin; zeros for an empty cloud.
    """
    origin = np.zeros(3)
    if len(points) == 0:
        return origin
    sample = points[::max(1, len(points) // 8192)].astype(np.float64)
    origin[:2] = np.median(sample[:, :2], axis=0)
    if np.abs(points[:, 2]).max() > LOCAL_Z_LIMIT:
        origin[2] = np.median(sample[:, 2])
    return origin


#: Coarsest coordinate resolution accepted without a warning, metres (a quarter of the default
#: 4 cm segmentation voxel).
MAX_INPUT_RESOLUTION = 0.01


def _precision_warnings(points: np.ndarray, origin: np.ndarray) -> tuple[str, ...]:
    # A cloud that arrives as float32 far from the origin (a PCL PointXYZ map in UTM) has
    # already lost its precision: the detector cannot restore it, but says so.
    pts = np.asarray(points)
    if pts.dtype.itemsize > 4 or not np.issubdtype(pts.dtype, np.floating) or not np.any(origin):
        return ()
    reach = float(np.abs(origin).max())
    step = float(np.spacing(np.float32(reach)))
    if step <= MAX_INPUT_RESOLUTION:
        return ()
    message = (f'input coordinates are {pts.dtype} about {reach:.0f} m from the origin, where '
               f'they are spaced {step:.3g} m apart: geometry finer than that is lost; send '
               f'float64 coordinates or a frame near the data')
    logger.warning(message)
    return (message,)


def _features_to_numpy(features) -> list[np.ndarray]:
    # (B, V, D) torch tensor (or a sequence of arrays from a stub) -> B read-only float32 arrays.
    if hasattr(features, 'detach'):
        features = features.detach().to('cpu').float().numpy()
    out = []
    for f in features:
        arr = np.array(f, dtype=np.float32)
        arr.setflags(write=False)
        out.append(arr)
    return out


def _shift_box(box: Box3D, offset: np.ndarray) -> Box3D:
    if not np.any(offset):
        return box
    return Box3D(box.center + offset, box.size, box.yaw)


def expand_synonyms(labels: Sequence[str], synonyms: str = '') -> list[tuple[str, ...]]:
    """
    Split labels into synonym groups.

    ``'a|b'`` gives ``('a', 'b')``; a plain label ``'a'`` takes the names of the first group in
    ``synonyms`` whose first name is ``'a'``. Names are stripped and de-duplicated in order.

    :param labels: Class names, each optionally ``'name|synonym|...'``.
    :param synonyms: Groups ``'name|synonym|...'`` joined by ``';'``
        (``DetectorConfig.label_synonyms``).
    :return: One tuple of names per label, the class name first.
    :raises ValueError: If a label has a blank first name or two labels share a first name.
    """
    known: dict[str, tuple[str, ...]] = {}
    for group in (g for g in synonyms.split(';') if g.strip()):
        names = _split(group)
        known.setdefault(names[0], names)
    out, seen = [], set()
    for i, label in enumerate(labels):
        names = _split(label)
        if not names[0]:
            raise ValueError(f'labels[{i}] has a blank name: {label!r}')
        if names[0] in seen:
            raise ValueError(f'labels[{i}] repeats the class {names[0]!r}')
        seen.add(names[0])
        out.append(names if len(names) > 1 else known.get(names[0], names))
    return out


def _split(group: str) -> tuple[str, ...]:
    names = [n.strip() for n in group.split('|')]
    return tuple(dict.fromkeys([names[0]] + [n for n in names[1:] if n]))
