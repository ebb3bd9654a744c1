"""Tests of shape embeddings and cosine k-NN retrieval with hand-made feature tables."""

import numpy as np
import pytest
import torch

from opendlign_core.classifier import Classifier
from opendlign_core.config import ModelConfig, OpenDlignConfig
from opendlign_core.retrieval import (
    ShapeGallery,
    combine_queries,
    cosine_knn,
    encode_image_queries,
    encode_text_queries,
    object_embeddings,
)

S = np.sqrt(0.5)
# obj0 -> (1, 0, 0); obj1 -> (0, S, S); obj2 -> (0, 1, 0)
VIEWS = np.array([[[1, 0, 0], [2, 0, 0]],
                  [[0, 1, 0], [0, 0, 1]],
                  [[0, 3, 0], [0, 1, 0]]], np.float32)


def test_object_embeddings_normalise_views_first():
    emb = object_embeddings(VIEWS)
    np.testing.assert_allclose(emb, [[1, 0, 0], [0, S, S], [0, 1, 0]], atol=1e-6)
    np.testing.assert_allclose(object_embeddings(torch.from_numpy(VIEWS)), emb)
    with pytest.raises(ValueError, match=r'\(N, V, D\)'):
        object_embeddings(VIEWS[0])


def test_cosine_knn_exact_neighbours():
    gallery = object_embeddings(VIEWS)
    idx, sims = cosine_knn(np.array([[0, 2, 0], [0, 0, 1]], np.float32), gallery, 3)
    np.testing.assert_array_equal(idx, [[2, 1, 0], [1, 0, 2]])  # tie 0/2 -> lower index first
    np.testing.assert_allclose(sims, [[1, S, 0], [S, 0, 0]], atol=1e-6)
    idx, _ = cosine_knn(np.array([[1, 0, 0]]), gallery, 10)
    assert idx.shape == (1, 3)
    with pytest.raises(ValueError, match='D=2'):
        cosine_knn(np.ones((1, 2)), gallery, 1)
    with pytest.raises(ValueError, match='k must be'):
        cosine_knn(np.ones((1, 3)), gallery, 0)


def test_combined_query_and_gallery_search():
    q = combine_queries(np.array([[5, 0, 0]]), np.array([[0, 1, 0]]))
    np.testing.assert_allclose(q, [[S, S, 0]], atol=1e-6)
    hits = ShapeGallery(VIEWS, names=['mug', 'lamp', 'vase']).search(q[0], k=2)
    assert [(h.index, h.name) for h in hits[0]] == [(0, 'mug'), (2, 'vase')]
    assert hits[0][0].similarity == pytest.approx(S)
    with pytest.raises(ValueError, match='share one'):
        combine_queries(np.ones((1, 3)), np.ones((2, 3)))
    with pytest.raises(ValueError, match='names has 2'):
        ShapeGallery(VIEWS, names=['a', 'b'])


@pytest.fixture(scope='module')
def tiny():
    torch.manual_seed(0)
    config = OpenDlignConfig(model=ModelConfig(model_name='OpenDlign-Tiny-Test'))
    return Classifier.from_config(config)


def test_text_queries_find_matching_shapes(tiny):
    texts = ['chair', 'table', 'lamp']
    q = encode_text_queries(tiny, texts)
    assert q.shape == (3, tiny.model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(q, tiny.encode_labels(texts, templates='label').weights.numpy())
    # A gallery whose shape i has views scattered around text embedding i (reversed order).
    rng = np.random.default_rng(0)
    views = q[::-1, None, :] + 0.05 * rng.normal(size=(3, 4, q.shape[1]))
    idx, _ = cosine_knn(q, object_embeddings(views), 1)
    np.testing.assert_array_equal(idx[:, 0], [2, 1, 0])


def test_image_queries(tiny):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(2, 40, 40, 3), dtype=np.uint8)
    q = encode_image_queries(tiny.model, images)
    assert q.shape == (2, tiny.model.embed_dim)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(encode_image_queries(tiny.model, images / 255.0), q, atol=1e-5)
    with pytest.raises(ValueError, match=r'\(B, H, W, 3\)'):
        encode_image_queries(tiny.model, images[..., 0])
