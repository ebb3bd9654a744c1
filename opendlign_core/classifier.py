"""
Zero-shot classification of multi-view depth maps (spec section 5).

Views ``0 .. V//2 - 1`` go through the pre-trained encoder and views ``V//2 .. V-1`` through the
fine-tuned depth branch (all views use the pre-trained encoder when the model has no depth branch).
Each view's L2-normalised feature is compared with the L2-normalised class text embeddings; a
softmax over the **raw** cosines (no temperature) is taken per view and the V softmaxes are summed.
The argmax of that sum is the prediction, exactly as the reference ``zero_shot.py``.
"""

from dataclasses import dataclass, replace
import logging
import threading
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

from opendlign_core.config import OpenDlignConfig, ProjectionConfig
from opendlign_core.model import DepthCLIP, create_depth_clip
from opendlign_core.projection import project_depth_views, views_to_images
from opendlign_core.templates import fill_templates, get_templates
from opendlign_core.text_cache import TextEmbeddingCache, resolve_cache_dir, text_fingerprint

_logger = logging.getLogger(__name__)

#: Longest label accepted, characters (the tokenizer truncates at 77 tokens anyway).
MAX_LABEL_LENGTH = 200


@dataclass(frozen=True, eq=False)
class LabelSet:
    """
    An immutable set of class labels and their text embeddings.

    :param labels: Class names, in score order.
    :param weights: (C, D) float32 L2-normalised text embeddings on the model's device.
    :param templates: Name of the template set used to build them.
    """

    labels: Tuple[str, ...]
    weights: torch.Tensor
    templates: str

    def __len__(self) -> int:
        """
        Return the number of classes C.

        :return: C.
        """
        return len(self.labels)


@dataclass(frozen=True)
class Prediction:
    """
    The classification of one object.

    :param label: The predicted label (argmax of the aggregated score).
    :param score: Reference aggregated score of ``label``: the sum over views of per-view softmaxes
        of raw cosines, divided by V, so it lies in [0, 1]. Use it for ranking.
    :param probability: Calibrated class probability of ``label``: softmax over classes of the
        model's ``logit_scale`` times the view-averaged cosine. Use it for thresholds.
    :param top_k: ``(label, score)`` pairs, best first.
    """

    label: str
    score: float
    probability: float
    top_k: Tuple[Tuple[str, float], ...]


def validate_labels(labels: Sequence[str]) -> Tuple[str, ...]:
    """
    Check a label list without side effects.

    :param labels: Candidate labels.
    :return: The labels as a tuple, each stripped of surrounding white space.
    :raises TypeError: If ``labels`` is a string or holds a non-string.
    :raises ValueError: If it is empty, or holds a blank, duplicate or over-long label.
    """
    if isinstance(labels, (str, bytes)):
        raise TypeError(f'labels must be a sequence of strings, not a single string {labels!r}')
    out = []
    for i, label in enumerate(labels):
        if not isinstance(label, str):
            raise TypeError(f'labels[{i}] must be a string, got {type(label).__name__}')
        label = label.strip()
        if not label:
            raise ValueError(f'labels[{i}] is blank')
        if len(label) > MAX_LABEL_LENGTH:
            raise ValueError(f'labels[{i}] has {len(label)} characters; the limit is '
                             f'{MAX_LABEL_LENGTH}')
        out.append(label)
    if not out:
        raise ValueError('labels must not be empty')
    seen = set()
    duplicates = sorted({x for x in out if x in seen or seen.add(x)})
    if duplicates:
        raise ValueError(f'labels contain duplicates: {duplicates}')
    return tuple(out)


def preprocess_views(views: torch.Tensor, model: DepthCLIP) -> torch.Tensor:
    """
    Turn depth maps into normalised 3-channel encoder input.

    :param views: (B, V, H, W) float depth maps in [0, 1] (background 1).
    :param model: The model (gives input size and normalisation statistics).
    :return: (B, V, 3, S, S) float32 tensor, S = ``model.image_size`` (bilinear resize if needed).
    """
    b, v, h, w = views.shape
    x = views.reshape(b * v, 1, h, w).to(device=model.device, dtype=torch.float32)
    size = model.image_size
    if (h, w) != (size, size):
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    return views_to_images(x.reshape(b, v, size, size), model.mean, model.std)


def encode_views(model: DepthCLIP, views: torch.Tensor) -> torch.Tensor:
    """
    Encode multi-view depth maps with the dual-encoder split.

    :param model: The model.
    :param views: (B, V, H, W) float depth maps in [0, 1].
    :return: (B, V, D) float32 L2-normalised view features.
    """
    if views.ndim != 4:
        raise ValueError(f'views must have shape (B, V, H, W), got {tuple(views.shape)}')
    images, depth_mask = encoder_inputs(model, views)
    with torch.inference_mode():
        feats = model.encode_image_mixed(images, depth_mask)
    return F.normalize(feats.float().reshape(views.shape[0], views.shape[1], -1), dim=-1)


def encoder_inputs(model: DepthCLIP, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """
    Prepare multi-view depth maps for :meth:`DepthCLIP.encode_image_mixed` (spec section 4).

    Views ``V // 2 ..`` take the depth branch when the model has one (the dual-encoder split).
    Benchmarks time the bare encoder forward on exactly these inputs.

    :param model: The model.
    :param views: (B, V, H, W) float depth maps in [0, 1].
    :return: ``(images, depth_mask)``: (B * V, 3, S, S) float32 encoder input and (B * V,) bool.
    """
    images = preprocess_views(views, model)
    b, v = images.shape[:2]
    depth_mask = torch.zeros(b, v, dtype=torch.bool)
    if model.has_depth_branch:
        depth_mask[:, v // 2:] = True
    return images.flatten(0, 1), depth_mask.flatten()


def aggregate_scores(view_features: torch.Tensor, text_weights: torch.Tensor) -> torch.Tensor:
    """
    Sum per-view softmaxes of raw cosines (the reference aggregation).

    :param view_features: (B, V, D) L2-normalised view features.
    :param text_weights: (C, D) L2-normalised class embeddings.
    :return: (B, C) aggregated scores; each row sums to V.
    """
    cosines = view_features.float() @ text_weights.float().T
    return cosines.softmax(dim=-1).sum(dim=1)


class Classifier:
    """
    Zero-shot point-cloud classifier: projection, dual-encoder features, text matching.

    Text embeddings are cached per (template set, label), in memory and on disk
    (``config.classifier.text_cache_dir``, see :mod:`opendlign_core.text_cache`), so switching
    between label sets, or restarting, re-encodes only new labels; :class:`LabelSet` objects are
    immutable, so building one never disturbs one in use on another thread.

    A model exported with its projection settings (our manifests record the projection it was
    trained on) is always fed views made that way: the manifest's projection replaces
    ``config.projection``, except the run-time ``num_threads``.

    :param model: The depth CLIP model.
    :param config: Projection and classifier settings (``config.model`` is informational here).
    """

    def __init__(self, model: DepthCLIP, config: Optional[OpenDlignConfig] = None) -> None:
        self.model = model
        config = config or OpenDlignConfig()
        trained = model.manifest.get('projection')
        if trained:
            values = {k: tuple(v) if isinstance(v, list) else v for k, v in trained.items()}
            values['num_threads'] = config.projection.num_threads
            projection = ProjectionConfig(**values)
            if projection != config.projection:
                _logger.info('using the projection the model was trained with: %s', projection)
            config = replace(config, projection=projection)
        self.config = config
        self._text_cache: Dict[Tuple[str, str], torch.Tensor] = {}
        self._cache_lock = threading.Lock()
        self._disk_caches: Dict[str, Optional[TextEmbeddingCache]] = {}

    @classmethod
    def from_config(cls, config: OpenDlignConfig) -> 'Classifier':
        """
        Build the model named by ``config.model`` and wrap it.

        :param config: Full settings.
        :return: The classifier.
        """
        return cls(create_depth_clip(config.model), config)

    def encode_labels(self, labels: Sequence[str], templates: Optional[str] = None,
                      batch_size: int = 256) -> LabelSet:
        """
        Build the text side for a label set (spec section 5.1).

        Each label fills every template; the prompt embeddings are L2-normalised, averaged and
        normalised again.

        :param labels: Class names (validated by :func:`validate_labels`).
        :param templates: Template set name; defaults to ``config.classifier.templates``.
        :param batch_size: Prompts per text-encoder batch.
        :return: The immutable label set.
        """
        labels = validate_labels(labels)
        name = templates or self.config.classifier.templates
        template_list = get_templates(name)
        with self._cache_lock:
            missing = [x for x in labels if (name, x) not in self._text_cache]
        if missing:
            disk = self._disk_cache(name, template_list)
            found = disk.load(missing, self.model.embed_dim) if disk is not None else {}
            todo = [x for x in missing if x not in found]
            new = dict(zip(todo, self._encode_text_classes(todo, template_list, batch_size)
                           if todo else []))
            if disk is not None and new:
                disk.store(new)
            if found:
                _logger.info('%d of %d label embeddings from the text cache %s', len(found),
                             len(missing), disk.folder)
            with self._cache_lock:
                for label in missing:
                    feature = new[label] if label in new else found[label]
                    self._text_cache[(name, label)] = feature.to(self.model.device)
        with self._cache_lock:
            weights = torch.stack([self._text_cache[(name, x)] for x in labels])
        return LabelSet(labels=labels, weights=weights, templates=name)

    def _disk_cache(self, name: str, templates: Sequence[str]) -> Optional[TextEmbeddingCache]:
        # One fingerprint per template set, computed on first use (hashes the text tower).
        if name not in self._disk_caches:
            root = resolve_cache_dir(self.config.classifier.text_cache_dir)
            self._disk_caches[name] = None if root is None else TextEmbeddingCache(
                root, text_fingerprint(self.model.clip, self.model.tokenizer, templates,
                                       self.model.text_dtype))
        return self._disk_caches[name]

    def _encode_text_classes(self, labels: Sequence[str], templates: Sequence[str],
                             batch_size: int) -> List[torch.Tensor]:
        prompts = [p for label in labels for p in fill_templates(templates, label)]
        feats = []
        with torch.inference_mode():
            for start in range(0, len(prompts), batch_size):
                tokens = self.model.tokenize(prompts[start:start + batch_size])
                feats.append(F.normalize(self.model.encode_text(tokens).float(), dim=-1))
        per_prompt = torch.cat(feats).reshape(len(labels), len(templates), -1)
        return list(F.normalize(per_prompt.mean(dim=1), dim=-1))

    def project(self, clouds: Union[np.ndarray, Sequence[np.ndarray]]) -> torch.Tensor:
        """
        Project point clouds into multi-view depth maps with ``config.projection``.

        :param clouds: One (N, 3) array or a sequence of (N_i, 3) arrays, metres, z up.
        :return: (B, V, H, W) float32 depth maps on the model's device.
        """
        return project_depth_views(clouds, self.config.projection, device=self.model.device)

    def embed_views(self, views: torch.Tensor) -> torch.Tensor:
        """
        Encode depth maps in batches of ``config.classifier.batch_size`` objects.

        :param views: (B, V, H, W) depth maps in [0, 1].
        :return: (B, V, D) float32 L2-normalised view features.
        """
        step = self.config.classifier.batch_size
        return torch.cat([encode_views(self.model, views[i:i + step])
                          for i in range(0, views.shape[0], step)]) if len(views) else \
            torch.zeros(0, views.shape[1], self.model.embed_dim)

    def classify_features(self, view_features: torch.Tensor,
                          label_set: LabelSet) -> List[Prediction]:
        """
        Score precomputed view features against a label set.

        :param view_features: (B, V, D) L2-normalised view features.
        :param label_set: The classes.
        :return: One prediction per object.
        """
        weights = label_set.weights.to(view_features.device)
        v = view_features.shape[1]
        scores = aggregate_scores(view_features, weights) / v
        mean_cos = (view_features.float() @ weights.float().T).mean(dim=1)
        probs = (self.model.logit_scale * mean_cos).softmax(dim=-1)
        k = min(self.config.classifier.top_k, len(label_set))
        top_scores, top_idx = scores.topk(k, dim=-1)
        out = []
        for i in range(scores.shape[0]):
            idx = top_idx[i].tolist()
            out.append(Prediction(
                label=label_set.labels[idx[0]],
                score=float(top_scores[i, 0]),
                probability=float(probs[i, idx[0]]),
                top_k=tuple((label_set.labels[j], float(s))
                            for j, s in zip(idx, top_scores[i].tolist())),
            ))
        return out

    def classify_views(self, views: torch.Tensor, label_set: LabelSet) -> List[Prediction]:
        """
        Classify objects given as multi-view depth maps.

        :param views: (B, V, H, W) depth maps in [0, 1], views in encoder order.
        :param label_set: The classes.
        :return: One prediction per object.
        """
        return self.classify_features(self.embed_views(views), label_set)

    def classify_points(self, clouds: Union[np.ndarray, Sequence[np.ndarray]],
                        label_set: LabelSet) -> List[Prediction]:
        """
        Classify point clouds: project, encode, match.

        :param clouds: One (N, 3) array or a sequence of (N_i, 3) arrays, z up.
        :param label_set: The classes.
        :return: One prediction per cloud.
        """
        return self.classify_views(self.project(clouds), label_set)
