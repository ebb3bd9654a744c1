"""The disk cache of label text embeddings: hits, misses by fingerprint, damaged entries."""

import pytest
import torch

from opendlign_core.classifier import Classifier
from opendlign_core.config import ClassifierConfig, ModelConfig, OpenDlignConfig
from opendlign_core.model import create_depth_clip
from opendlign_core.text_cache import (
    ENV_VAR,
    TextEmbeddingCache,
    resolve_cache_dir,
    text_fingerprint,
)


def _classifier(cache_dir, seed=0):
    torch.manual_seed(seed)
    model = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test'))
    cfg = OpenDlignConfig(classifier=ClassifierConfig(text_cache_dir=str(cache_dir)))
    return Classifier(model, cfg)


class CountingClassifier:
    """Wraps a classifier's text encoder to count the labels it encodes."""

    def __init__(self, clf):
        self.encoded = []
        real = clf._encode_text_classes

        def counted(labels, templates, batch_size):
            self.encoded.extend(labels)
            return real(labels, templates, batch_size)

        clf._encode_text_classes = counted


def test_second_classifier_reads_the_cache(tmp_path):
    first = _classifier(tmp_path)
    count1 = CountingClassifier(first)
    a = first.encode_labels(['chair', 'table'])
    assert count1.encoded == ['chair', 'table']
    assert len(list(tmp_path.glob('*/*.safetensors'))) == 2
    second = _classifier(tmp_path)         # same weights (same seed): a restart
    count2 = CountingClassifier(second)
    b = second.encode_labels(['table', 'chair', 'lamp'])
    assert count2.encoded == ['lamp']
    torch.testing.assert_close(b.weights[:2], a.weights[[1, 0]], rtol=0, atol=0)
    assert len(list(tmp_path.glob('*/*.safetensors'))) == 3


def test_other_weights_or_templates_miss(tmp_path):
    _classifier(tmp_path, seed=0).encode_labels(['chair'])
    other = _classifier(tmp_path, seed=1)  # different random text tower
    count = CountingClassifier(other)
    other.encode_labels(['chair'])
    assert count.encoded == ['chair']
    count.encoded.clear()
    other.encode_labels(['chair'], templates='photo')
    assert count.encoded == ['chair']
    assert len(list(tmp_path.iterdir())) == 3   # three fingerprints


def test_damaged_entry_is_reencoded_and_rewritten(tmp_path):
    clf = _classifier(tmp_path)
    good = clf.encode_labels(['sofa']).weights
    (entry,) = tmp_path.glob('*/*.safetensors')
    entry.write_bytes(b'not a safetensors file')
    again = _classifier(tmp_path)
    count = CountingClassifier(again)
    torch.testing.assert_close(again.encode_labels(['sofa']).weights, good)
    assert count.encoded == ['sofa']
    assert entry.stat().st_size > 100


def test_cache_off_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path / 'auto'))
    clf = _classifier('')
    clf.encode_labels(['bed'])
    assert not any(tmp_path.iterdir())
    assert resolve_cache_dir('') is None
    assert resolve_cache_dir('auto') == tmp_path / 'auto'
    monkeypatch.delenv(ENV_VAR)
    assert resolve_cache_dir('auto').parts[-3:] == ('.cache', 'opendlign', 'text')


def test_fingerprint_covers_text_tower_tokenizer_and_templates():
    torch.manual_seed(0)
    model = create_depth_clip(ModelConfig(model_name='OpenDlign-Tiny-Test'))
    base = text_fingerprint(model.clip, model.tokenizer, ['a {}.'], model.dtype)
    assert base == text_fingerprint(model.clip, model.tokenizer, ['a {}.'], model.dtype)
    assert base != text_fingerprint(model.clip, model.tokenizer, ['the {}.'], model.dtype)
    assert base != text_fingerprint(model.clip, model.tokenizer, ['a {}.'], torch.bfloat16)
    assert base != text_fingerprint(model.clip, lambda t: model.tokenizer(t) + 1, ['a {}.'],
                                    model.dtype)
    # The image tower does not matter; the text tower does.
    with torch.no_grad():
        next(model.clip.visual.parameters()).add_(1.0)
        assert base == text_fingerprint(model.clip, model.tokenizer, ['a {}.'], model.dtype)
        text_param = next(p for n, p in model.clip.named_parameters()
                          if not n.startswith('visual.'))
        text_param.add_(1.0)
    assert base != text_fingerprint(model.clip, model.tokenizer, ['a {}.'], model.dtype)


def test_wrong_shape_entry_is_ignored(tmp_path):
    cache = TextEmbeddingCache(tmp_path, 'f' * 32)
    cache.store({'mug': torch.ones(7)})
    assert cache.load(['mug'], 7)['mug'].shape == (7,)
    assert cache.load(['mug'], 8) == {}
    assert cache.load(['cup'], 7) == {}


@pytest.mark.parametrize('label', ['café table', 'a' * 200])
def test_unicode_and_long_labels_round_trip(tmp_path, label):
    cache = TextEmbeddingCache(tmp_path, 'f' * 32)
    cache.store({label: torch.arange(4.0)})
    torch.testing.assert_close(cache.load([label], 4)[label], torch.arange(4.0))
