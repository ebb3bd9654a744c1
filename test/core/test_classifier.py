import math

import pytest
import torch

from opendlign_core.classifier import (
    Classifier,
    LabelSet,
    aggregate_scores,
    encode_views,
    validate_labels,
)
from opendlign_core.config import ModelConfig
from opendlign_core.model import create_depth_clip


@pytest.fixture(scope='module')
def classifier():
    torch.manual_seed(0)
    return Classifier(create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test')))


def test_aggregate_scores_hand_computed():
    # Two views, two classes, 2-D features. View 0 is class 0's embedding, view 1 is class 1's.
    views = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    text = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    p_hi = math.exp(1) / (math.exp(1) + math.exp(0))
    expected = torch.tensor([[p_hi + (1 - p_hi), (1 - p_hi) + p_hi]])
    torch.testing.assert_close(aggregate_scores(views, text), expected)
    # Three views: two lean to class 1 (cos 0.6 vs 0.8), one strongly to class 0 (cos 1 vs 0).
    views = torch.tensor([[[0.6, 0.8], [0.6, 0.8], [1.0, 0.0]]])
    s = 1 / (1 + math.exp(-0.2))      # softmax([0.6, 0.8])[1]
    t = 1 / (1 + math.exp(-1.0))      # softmax([1, 0])[0]
    expected = torch.tensor([[2 * (1 - s) + t, 2 * s + (1 - t)]])
    torch.testing.assert_close(aggregate_scores(views, text), expected)
    assert aggregate_scores(views, text).argmax().item() == 0


def test_sum_of_softmax_differs_from_sum_of_cosines():
    # The reference sums per-view softmaxes of raw cosines; summing cosines would pick class 1.
    text = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    y = math.sqrt(1 - 0.45 ** 2)
    views = torch.tensor([[[-1.0, 0.0], [0.45, y], [0.45, y]]])
    cos_sum = (views @ text.T).sum(1)
    soft = aggregate_scores(views, text)
    assert cos_sum.argmax().item() == 1
    # class 1: sigmoid(2) + 2 sigmoid(-0.9)
    sig = 1 / (1 + math.exp(-2.0)) + 2 / (1 + math.exp(0.9))
    torch.testing.assert_close(soft, torch.tensor([[3 - sig, sig]]))
    assert soft.argmax().item() == 0


def test_validate_labels():
    assert validate_labels([' chair', 'table ']) == ('chair', 'table')
    with pytest.raises(ValueError, match='empty'):
        validate_labels([])
    with pytest.raises(ValueError, match=r'labels\[1\] is blank'):
        validate_labels(['chair', '  '])
    with pytest.raises(ValueError, match="duplicates: \\['chair'\\]"):
        validate_labels(['chair', 'table', 'chair '])
    with pytest.raises(TypeError, match='single string'):
        validate_labels('chair')
    with pytest.raises(TypeError, match=r'labels\[0\] must be a string'):
        validate_labels([3])
    with pytest.raises(ValueError, match='limit'):
        validate_labels(['x' * 500])


def test_encode_labels_caches_per_label_and_keeps_old_sets(classifier, monkeypatch):
    calls = []
    real = classifier.model.encode_text
    monkeypatch.setattr(classifier.model, 'encode_text',
                        lambda tokens: calls.append(len(tokens)) or real(tokens))
    first = classifier.encode_labels(['chair', 'table'], templates='depth-simple')
    before = first.weights.clone()
    assert calls == [4]  # 2 labels x 2 templates
    second = classifier.encode_labels(['table', 'sofa'], templates='depth-simple')
    assert calls == [4, 2]  # only 'sofa' was new
    torch.testing.assert_close(second.weights[0], first.weights[1])
    assert torch.equal(first.weights, before) and first.labels == ('chair', 'table')
    torch.testing.assert_close(second.weights.norm(dim=-1), torch.ones(2))
    classifier.encode_labels(['chair'], templates='photo')
    assert calls == [4, 2, 1]  # the cache key includes the template set


def test_label_embedding_is_normalised_mean_of_prompt_embeddings(classifier):
    labels = classifier.encode_labels(['lamp'], templates='depth-simple')
    prompts = ['a depth map of a lamp.', 'a gray depth image of a lamp with white background.']
    with torch.no_grad():
        feats = classifier.model.encode_text(classifier.model.tokenize(prompts))
    feats = feats / feats.norm(dim=-1, keepdim=True)
    expected = feats.mean(0) / feats.mean(0).norm()
    torch.testing.assert_close(labels.weights[0], expected, rtol=1e-5, atol=1e-6)


def test_dual_encoder_split(classifier, monkeypatch):
    masks = []
    real = classifier.model.encode_image_mixed

    def spy(images, depth_mask):
        masks.append(depth_mask.clone())
        return real(images, depth_mask)

    monkeypatch.setattr(classifier.model, 'encode_image_mixed', spy)
    feats = encode_views(classifier.model, torch.rand(2, 10, 64, 64))
    # Views 0-4 of each object take the pre-trained branch, views 5-9 the depth branch.
    assert masks[0].tolist() == ([False] * 5 + [True] * 5) * 2
    assert feats.shape == (2, 10, 32)
    torch.testing.assert_close(feats.norm(dim=-1), torch.ones(2, 10))


def test_classify_features_scores_and_topk(classifier):
    text = torch.eye(4)[:3]
    label_set = LabelSet(labels=('a', 'b', 'c'), weights=text, templates='manual')
    feats = torch.tensor([[[0.0, 1.0, 0.0, 0.0]] * 2, [[0.0, 0.0, 0.0, 1.0]] * 2])
    preds = classifier.classify_features(feats, label_set)
    e = math.e
    assert preds[0].label == 'b'
    assert preds[0].score == pytest.approx(e / (e + 2))
    assert [lbl for lbl, _ in preds[0].top_k][0] == 'b' and len(preds[0].top_k) == 3
    p = math.exp(classifier.model.logit_scale)
    assert preds[0].probability == pytest.approx(p / (p + 2), rel=1e-5)
    assert preds[1].score == pytest.approx(1 / 3)  # orthogonal to every class: uniform


def test_embed_views_batches_match_single_pass(classifier):
    views = torch.rand(5, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    batched = classifier.embed_views(views)  # config batch_size 8 -> one chunk
    one_by_one = torch.cat([classifier.embed_views(views[i:i + 1]) for i in range(5)])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-4, atol=1e-5)


def test_classifier_uses_the_projection_recorded_with_the_model():
    from opendlign_core.config import OpenDlignConfig, ProjectionConfig

    model = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test', weights_path=''))
    model.manifest = {'projection': {'resolution': 64, 'densify_kernel': 5,
                                     'view_angles_deg': [0.0, 90.0], 'num_threads': 3}}
    config = OpenDlignConfig(projection=ProjectionConfig(num_threads=2))
    projection = Classifier(model, config).config.projection
    assert (projection.resolution, projection.densify_kernel) == (64, 5)
    assert projection.view_angles_deg == (0.0, 90.0) and projection.num_threads == 2
    assert Classifier(create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test',
                                                    weights_path='')),
                      config).config.projection == config.projection
