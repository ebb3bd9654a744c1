"""
A disk cache of label text embeddings, so that restarts do not re-run the text encoder.

Encoding a label runs the text tower once per template (80 for the depth set), which dominates a
node's start-up on a CPU. Embeddings depend only on the text tower's weights, the tokenizer, the
template texts and the label, so they are stored under a fingerprint of exactly those:

``<root>/<fingerprint>/<sha256(label)[:32]>.safetensors``

one small file per label, written atomically (temporary file + rename), so several processes can
share a cache. A file that cannot be read or holds the wrong shape is treated as missing and
rewritten. The root is ``ClassifierConfig.text_cache_dir``: ``'auto'`` means
``$OPENDLIGN_TEXT_CACHE`` when set, else ``~/.cache/opendlign/text``; ``''`` turns the cache off.
"""

import hashlib
import logging
import os
from pathlib import Path
import tempfile
from typing import Dict, Optional, Sequence

from safetensors.torch import load_file, save_file
import torch

_logger = logging.getLogger(__name__)

#: Environment variable that moves the ``'auto'`` cache root.
ENV_VAR = 'OPENDLIGN_TEXT_CACHE'
#: Strings whose token ids enter the fingerprint (a different tokenizer changes them).
_PROBES = ('a depth map of a chair.', 'Ünïcode – 3D point cloud of an office-chair #2')


def resolve_cache_dir(setting: str) -> Optional[Path]:
    """
    Turn ``ClassifierConfig.text_cache_dir`` into a folder.

    :param setting: ``'auto'``, ``''`` (off) or a path.
    :return: The cache root, or None when the cache is off.
    """
    if not setting:
        return None
    if setting == 'auto':
        env = os.environ.get(ENV_VAR, '')
        return Path(env) if env else Path.home() / '.cache' / 'opendlign' / 'text'
    return Path(setting).expanduser()


def text_fingerprint(model: torch.nn.Module, tokenizer, templates: Sequence[str],
                     dtype: torch.dtype) -> str:
    """
    Fingerprint everything a label's embedding depends on, except the label.

    :param model: The open_clip model; every parameter and buffer outside ``visual.`` is hashed
        (the text tower, its projection and embeddings).
    :param tokenizer: Callable mapping a list of strings to token ids.
    :param templates: The template texts (``'{}'`` marks the label).
    :param dtype: Dtype the text tower runs in.
    :return: 32 hex characters.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith('visual.'):
            continue
        t = tensor.detach().to('cpu').contiguous()
        h.update(f'{name}:{tuple(t.shape)}:{t.dtype};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    h.update(repr(torch.as_tensor(tokenizer(list(_PROBES))).tolist()).encode())
    h.update('\x1f'.join(templates).encode())
    h.update(str(dtype).encode())
    return h.hexdigest()[:32]


class TextEmbeddingCache:
    """
    Per-label embeddings of one (text tower, tokenizer, templates) fingerprint on disk.

    :param root: Cache root folder (created on first write).
    :param fingerprint: From :func:`text_fingerprint`.
    """

    def __init__(self, root: Path, fingerprint: str) -> None:
        self.folder = Path(root) / fingerprint

    def _path(self, label: str) -> Path:
        return self.folder / (hashlib.sha256(label.encode()).hexdigest()[:32] + '.safetensors')

    def load(self, labels: Sequence[str], dim: int) -> Dict[str, torch.Tensor]:
        """
        Read the cached embeddings of some labels.

        :param labels: Labels to look up.
        :param dim: Embedding size D; entries of another shape are ignored.
        :return: Label to (D,) float32 CPU tensor, for the labels found intact.
        """
        found: Dict[str, torch.Tensor] = {}
        for label in labels:
            path = self._path(label)
            if not path.is_file():
                continue
            try:
                entry = load_file(str(path))
                emb, stored = entry['embedding'], bytes(entry['label'].tolist()).decode()
            except Exception as e:  # noqa: BLE001 - any unreadable file is a cache miss
                _logger.warning('text cache entry %s unreadable (%s); re-encoding', path, e)
                continue
            if stored == label and emb.shape == (dim,) and torch.isfinite(emb).all():
                found[label] = emb.float()
        return found

    def store(self, embeddings: Dict[str, torch.Tensor]) -> None:
        """
        Write embeddings (atomically per label; failures are logged, never raised).

        :param embeddings: Label to (D,) tensor.
        """
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            _logger.warning('text cache %s not writable (%s)', self.folder, e)
            return
        for label, emb in embeddings.items():
            path = self._path(label)
            tensors = {'embedding': emb.detach().float().cpu().contiguous(),
                       'label': torch.tensor(list(label.encode()), dtype=torch.uint8)}
            tmp = None
            try:
                fd, tmp = tempfile.mkstemp(dir=self.folder, suffix='.tmp')
                os.close(fd)
                save_file(tensors, tmp)
                os.replace(tmp, path)
            except OSError as e:
                _logger.warning('text cache entry %s not written (%s)', path, e)
                if tmp is not None and os.path.exists(tmp):
                    os.unlink(tmp)
