"""
Zero-shot 3D detection: scene segmentation, multi-view projection, OpenDlign classification.

:class:`Detector` runs segmentation (:mod:`opendlign_core.segmentation`) -> per-cluster boxes
(:mod:`opendlign_core.boxes`) -> batched projection and encoding -> zero-shot classification
against a :class:`~opendlign_core.classifier.LabelSet` -> thresholds, ``unknown`` outcome and
class-wise 3D NMS. Clouds are (N, 3) float32 metres; boxes are in the gravity-aligned frame in
which ``DetectorConfig.up_axis`` becomes +z (the input frame itself for the default ``'z'``).
Point indices always index the caller's cloud.

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
from opendlign_core.segmentation import segment_scene, to_z_up

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Detection:
    """
    One detected object.

    ``label`` is the best label (or ``DetectorConfig.unknown_label``), ``score`` the classifier's
    ranking score in [0, 1], ``box`` the fitted box, ``point_indices`` (K,) int64 indices into the
    input cloud, ``top_k`` the best (label, score) pairs and ``probability`` the calibrated
    probability of the best label.
    """

    label: str
    score: float
    box: Box3D
    point_indices: np.ndarray
    top_k: tuple[tuple[str, float], ...]
    probability: float = math.nan

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
    """Detections by decreasing score, stage timings (ms) and scene statistics."""

    detections: tuple[Detection, ...]
    timings_ms: Mapping[str, float] = field(default_factory=dict)
    num_points: int = 0
    num_clusters: int = 0


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
        Build an immutable label set (delegates to the classifier).

        :param labels: Class names.
        :return: A :class:`~opendlign_core.classifier.LabelSet`.
        """
        return self.classifier.encode_labels(labels)

    def _prepare(self, points: np.ndarray, colors: Optional[np.ndarray]
                 ) -> tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f'points must have shape (N, 3), got {pts.shape}')
        if not np.issubdtype(pts.dtype, np.number):
            raise TypeError(f'points must be numeric, got dtype {pts.dtype}')
        if colors is not None and len(np.asarray(colors)) != len(pts):
            raise ValueError(f'colors has {len(np.asarray(colors))} rows for {len(pts)} points')
        index = np.flatnonzero(np.isfinite(pts).all(axis=1))
        if len(index) > self.config.max_points:
            rng = np.random.default_rng(self.config.seed)
            index = np.sort(rng.choice(index, self.config.max_points, replace=False))
        work = to_z_up(pts[index].astype(np.float32, copy=False), self.config.up_axis)
        return work, index

    def _fit_box(self, pts: np.ndarray) -> Box3D:
        return fit_oriented_box(pts) if self.config.oriented_boxes else fit_aabb(pts)

    def _classify(self, clouds: list[np.ndarray], label_set, timings: dict) -> list:
        preds = []
        step = max(1, self.config.opendlign.classifier.batch_size)
        for start in range(0, len(clouds), step):
            t0 = time.perf_counter()
            views = self.classifier.project(clouds[start:start + step])
            t1 = time.perf_counter()
            feats = self.classifier.embed_views(views)
            t2 = time.perf_counter()
            preds.extend(self.classifier.classify_features(feats, label_set))
            t3 = time.perf_counter()
            timings['project'] += 1e3 * (t1 - t0)
            timings['encode'] += 1e3 * (t2 - t1)
            timings['classify'] += 1e3 * (t3 - t2)
        return preds

    def _object_cloud(self, pts: np.ndarray) -> np.ndarray:
        cap = self.config.max_points_per_object
        if len(pts) <= cap:
            return pts
        rng = np.random.default_rng(self.config.seed)
        return pts[np.sort(rng.choice(len(pts), cap, replace=False))]

    def _make(self, pred, box: Box3D, indices: np.ndarray) -> Optional[Detection]:
        prob = float(pred.probability)
        if prob < self.config.score_threshold:
            return None
        label = pred.label
        if self.config.unknown_threshold > 0 and prob < self.config.unknown_threshold:
            label = self.config.unknown_label
        return Detection(label, float(pred.score), box, indices.astype(np.int64),
                         tuple((str(k), float(v)) for k, v in pred.top_k), prob)

    def detect(self, points: np.ndarray, label_set, colors: Optional[np.ndarray] = None
               ) -> DetectionResult:
        """
        Detect objects in a scene cloud.

        Non-finite points are ignored; clouds above ``max_points`` are subsampled with ``seed``.
        An empty cloud, or one with no objects, gives a result without detections.

        :param points: (N, 3) metres, ``config.up_axis`` up.
        :param label_set: Labels from :meth:`encode_labels`.
        :param colors: Optional (N, 3) colours (checked, currently unused by the depth model).
        :return: Detections by decreasing score and stage timings.
        :raises ValueError: If ``points`` is not (N, 3) or ``colors`` does not match.
        :raises TypeError: If ``points`` is not numeric.
        """
        t_start = time.perf_counter()
        timings = {'segment': 0.0, 'project': 0.0, 'encode': 0.0, 'classify': 0.0}
        work, index = self._prepare(points, colors)
        t0 = time.perf_counter()
        seg = segment_scene(work, self.config.segmentation, seed=self.config.seed)
        clusters = [c for c in seg.clusters if len(c) >= self.config.min_points_per_object]
        clusters = clusters[:self.config.max_objects]
        boxes = [self._fit_box(work[c]) for c in clusters]
        timings['segment'] = 1e3 * (time.perf_counter() - t0)
        preds = self._classify([self._object_cloud(work[c]) for c in clusters], label_set,
                               timings)
        t1 = time.perf_counter()
        dets = [d for d in (self._make(p, b, index[c]) for p, b, c in zip(preds, boxes, clusters))
                if d is not None]
        if dets and self.config.nms_iou < 1:
            keep = nms_3d([d.box for d in dets], [d.score for d in dets], self.config.nms_iou,
                          labels=[d.label for d in dets], oriented=True)
            dets = [dets[i] for i in keep]
        dets.sort(key=lambda d: -d.score)
        timings['classify'] += 1e3 * (time.perf_counter() - t1)
        timings['total'] = 1e3 * (time.perf_counter() - t_start)
        return DetectionResult(tuple(dets), timings, len(np.asarray(points)), len(seg.clusters))

    def classify_boxes(self, points: np.ndarray, boxes: Sequence[Box3D], label_set
                       ) -> tuple[Detection, ...]:
        """
        Classify the points inside externally proposed boxes (no segmentation, no NMS).

        Boxes holding fewer than ``min_points_per_object`` points give no detection; thresholds
        and the ``unknown`` outcome apply as in :meth:`detect`.

        :param points: (N, 3) metres, ``config.up_axis`` up.
        :param boxes: Boxes in the gravity-aligned frame.
        :param label_set: Labels from :meth:`encode_labels`.
        :return: Detections in box order (each keeps its given box).
        :raises ValueError: If ``points`` is not (N, 3).
        :raises TypeError: If ``points`` is not numeric or a box is not a :class:`Box3D`.
        """
        work, index = self._prepare(points, None)
        for b in boxes:
            if not isinstance(b, Box3D):
                raise TypeError(f'boxes must be Box3D, got {type(b).__name__}')
        members = [np.flatnonzero(b.contains(work)) for b in boxes]
        chosen = [(b, m) for b, m in zip(boxes, members)
                  if len(m) >= self.config.min_points_per_object]
        timings = {'project': 0.0, 'encode': 0.0, 'classify': 0.0}
        preds = self._classify([self._object_cloud(work[m]) for _, m in chosen], label_set,
                               timings)
        dets = (self._make(p, b, index[m]) for p, (b, m) in zip(preds, chosen))
        return tuple(d for d in dets if d is not None)
