"""
Cross-modal shape retrieval by cosine k-nearest neighbours (spec section 5.4).

A shape's embedding is the L2-normalised mean of its L2-normalised view features (our reading of
the paper, which gives no formula). Queries are CLIP text embeddings, CLIP image embeddings, or
the normalised average of both; neighbours are ranked by cosine similarity.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from opendlign_core.classifier import Classifier
    from opendlign_core.model import DepthCLIP

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError(f'{name} holds non-finite values')
    return x


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def object_embeddings(view_features: ArrayLike) -> np.ndarray:
    """
    Turn multi-view features into one embedding per object.

    :param view_features: (N, V, D) view features (normalised or not).
    :return: (N, D) float32: the L2-normalised mean of the L2-normalised views.
    :raises ValueError: If the shape is not (N, V, D) or values are non-finite.
    """
    feats = _as_numpy(view_features, 'view_features')
    if feats.ndim != 3:
        raise ValueError(f'view_features must have shape (N, V, D), got {feats.shape}')
    return _normalize(_normalize(feats).mean(axis=1))


def combine_queries(*embeddings: ArrayLike) -> np.ndarray:
    """
    Average several query embeddings of the same queries (e.g. text and image).

    :param embeddings: (Q, D) arrays, each normalised before averaging.
    :return: (Q, D) float32 normalised average.
    :raises ValueError: If none is given or the shapes differ.
    """
    if not embeddings:
        raise ValueError('combine_queries needs at least one embedding array')
    arrays = [_normalize(_as_numpy(e, 'embeddings')) for e in embeddings]
    if any(a.ndim != 2 or a.shape != arrays[0].shape for a in arrays):
        shapes = [a.shape for a in arrays]
        raise ValueError(f'embeddings must share one (Q, D) shape, got {shapes}')
    return _normalize(np.mean(arrays, axis=0))


def cosine_knn(queries: ArrayLike, gallery: ArrayLike, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """
    Find the k gallery items most cosine-similar to each query.

    :param queries: (Q, D) query embeddings.
    :param gallery: (N, D) gallery embeddings.
    :param k: Neighbours per query, clipped to N.
    :return: ``(indices (Q, k) int64, similarities (Q, k) float32)``, best first; ties go to the
        lower gallery index.
    :raises ValueError: On bad shapes, mismatched D, an empty gallery or ``k`` < 1.
    """
    q = _as_numpy(queries, 'queries')
    g = _as_numpy(gallery, 'gallery')
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError(f'queries and gallery must be 2-D, got {q.shape} and {g.shape}')
    if q.shape[1] != g.shape[1]:
        raise ValueError(f'queries have D={q.shape[1]} but the gallery has D={g.shape[1]}')
    if len(g) == 0:
        raise ValueError('gallery is empty')
    if k < 1:
        raise ValueError(f'k must be >= 1, got {k!r}')
    sims = _normalize(q) @ _normalize(g).T
    idx = np.argsort(-sims, axis=1, kind='stable')[:, :min(k, len(g))]
    return idx.astype(np.int64), np.take_along_axis(sims, idx, axis=1)


def encode_text_queries(classifier: 'Classifier', texts: Sequence[str],
                        templates: Optional[str] = 'label') -> np.ndarray:
    """
    Embed text queries with the classifier's text tower.

    :param classifier: An :class:`opendlign_core.classifier.Classifier`.
    :param texts: Query strings (distinct, non-blank).
    :param templates: Template set each text is filled into (``'label'`` uses the text as is;
        ``None`` uses the classifier's configured set); prompt embeddings are averaged.
    :return: (Q, D) float32 normalised embeddings.
    """
    label_set = classifier.encode_labels(list(texts), templates=templates)
    return _as_numpy(label_set.weights, 'text embeddings')


def encode_image_queries(model: 'DepthCLIP', images: ArrayLike) -> np.ndarray:
    """
    Embed RGB query images with the model's pre-trained (plain CLIP) image branch.

    Images are resized bilinearly to the model's input size and normalised with the model's
    statistics (ImageNet mean/std for OpenDlign exports, as the reference does for depth maps).

    :param model: A :class:`opendlign_core.model.DepthCLIP`.
    :param images: (B, H, W, 3) RGB, uint8 in [0, 255] or float in [0, 1].
    :return: (B, D) float32 normalised embeddings.
    :raises ValueError: If the shape is not (B, H, W, 3).
    """
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f'images must have shape (B, H, W, 3), got {arr.shape}')
    x = torch.from_numpy(arr.astype(np.float32) / (255.0 if arr.dtype == np.uint8 else 1.0))
    x = x.permute(0, 3, 1, 2).to(model.device)
    size = model.image_size
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode='bilinear', align_corners=False)
    mean = torch.tensor(model.mean, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(model.std, device=x.device).view(1, 3, 1, 1)
    with torch.inference_mode():
        feats = model.encode_image((x - mean) / std, 'pretrained').float()
    return _as_numpy(F.normalize(feats, dim=-1), 'image embeddings')


@dataclass(frozen=True)
class RetrievalHit:
    """
    One retrieved gallery item.

    :param index: Position in the gallery.
    :param name: The gallery item's name.
    :param similarity: Cosine similarity with the query, in [-1, 1].
    """

    index: int
    name: str
    similarity: float


class ShapeGallery:
    """
    A searchable set of shape embeddings.

    :param view_features: (N, V, D) view features of the gallery shapes.
    :param names: N names (e.g. file names); defaults to ``'0'``, ``'1'``, ...
    :raises ValueError: If ``names`` does not have N entries.
    """

    def __init__(self, view_features: ArrayLike, names: Optional[Sequence[str]] = None) -> None:
        self.embeddings = object_embeddings(view_features)
        n = len(self.embeddings)
        self.names: Tuple[str, ...] = tuple(names) if names is not None else tuple(
            str(i) for i in range(n))
        if len(self.names) != n:
            raise ValueError(f'names has {len(self.names)} entries for {n} shapes')

    def __len__(self) -> int:
        """
        Return the number of gallery shapes.

        :return: N.
        """
        return len(self.names)

    def search(self, queries: ArrayLike, k: int = 5) -> List[List[RetrievalHit]]:
        """
        Return the k nearest shapes for each query embedding.

        :param queries: (Q, D) or (D,) query embeddings.
        :param k: Neighbours per query.
        :return: One best-first list of hits per query.
        """
        q = _as_numpy(queries, 'queries')
        if q.ndim == 1:
            q = q[None]
        idx, sims = cosine_knn(q, self.embeddings, k)
        return [[RetrievalHit(int(i), self.names[int(i)], float(s)) for i, s in zip(row, srow)]
                for row, srow in zip(idx, sims)]
