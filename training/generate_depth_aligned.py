"""
Generate depth-aligned RGB images with ControlNet v1.1 depth on Stable Diffusion 1.5 (spec 4.1).

For every object ``<root>/depth_map/<obj>_dm.npy`` ((V, S, S, 3) float32 depth views, background 1,
nearer darker) this writes ``<root>/depth_align_img/<obj>/{0..V-1}.png`` (S x S RGB), the layout
:mod:`training.finetune` reads. Per view the conditioning image is the inverted depth map
(near = bright) after a 7 x 7 median filter; the prompt is ``A realistic {metadata}.`` followed by
the paper's positive prompt, with the paper's negative prompt; 20 DDIM steps, guidance 9.0,
ControlNet strength 1.0; the 256 x 256 output is resized (bicubic, antialiased) to S x S.

Models load from local folders only (``--controlnet`` a diffusers ``ControlNetModel`` folder, e.g.
``control_v11f1p_sd15_depth``; ``--base`` a diffusers Stable Diffusion 1.5 folder). Runs resume:
objects whose V images exist are skipped; images are written atomically. ``--shard i/n`` splits
the sorted object list for parallel jobs; every object's noise comes from its own seed, so the
result does not depend on sharding or on restarts::

    python -m training.generate_depth_aligned --root data/shapenet --metadata names.json \
        --controlnet models/control_v11f1p_sd15_depth --base models/stable-diffusion-v1-5 \
        --shard 0/8
"""

import argparse
from dataclasses import dataclass, fields
import hashlib
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

DEPTH_DIR = 'depth_map'
RGB_DIR = 'depth_align_img'
DEPTH_SUFFIX = '_dm.npy'
POSITIVE_PROMPT = ('best quality, extremely realistic, very professional, extremely detailed, '
                   'sharp edge, normal, complete.')
NEGATIVE_PROMPT = ('low-resolution, very blurry, unrealistic, worst quality, deep depth of field, '
                   'large depth of field, distorted, cropped, unusual, warped, incomplete.')


@dataclass
class GenerateArgs:
    """Settings of a generation run (defaults: the paper's)."""

    root: str = ''
    controlnet: str = ''
    base: str = ''
    metadata: str = ''
    taxonomy: str = ''
    shard: str = '0/1'
    steps: int = 20
    guidance: float = 9.0
    strength: float = 1.0
    eta: float = 1.0
    gen_size: int = 256
    median: int = 7
    seed: int = 42
    device: str = 'auto'
    fp16: bool = True
    limit: int = 0


def parse_args(argv: Optional[Sequence[str]] = None) -> GenerateArgs:
    """
    Parse and validate the command line.

    :param argv: Arguments without the program name; ``None`` reads ``sys.argv``.
    :return: The settings.
    :raises ValueError: On missing folders, a bad shard or out-of-range numbers.
    """
    d = GenerateArgs()
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0].strip(),
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--root', required=True, help=f'folder holding {DEPTH_DIR}/<obj>{DEPTH_SUFFIX}')
    p.add_argument('--controlnet', required=True, help='local diffusers ControlNet folder')
    p.add_argument('--base', required=True, help='local diffusers Stable Diffusion 1.5 folder')
    p.add_argument('--metadata', default='', help='JSON {object id: description}')
    p.add_argument('--taxonomy', default='',
                   help='ShapeNet taxonomy.json; objects named <synsetId>... get its name')
    p.add_argument('--shard', default=d.shard, help='i/n: process objects i, i+n, i+2n, ...')
    p.add_argument('--steps', type=int, default=d.steps, help='DDIM steps')
    p.add_argument('--guidance', type=float, default=d.guidance, help='classifier-free guidance')
    p.add_argument('--strength', type=float, default=d.strength, help='ControlNet scale')
    p.add_argument('--eta', type=float, default=d.eta,
                   help='DDIM eta (ControlNet v1.1 demo default 1.0; not given in the paper)')
    p.add_argument('--gen-size', type=int, default=d.gen_size, help='generation size, pixels')
    p.add_argument('--median', type=int, default=d.median, help='median filter window, odd')
    p.add_argument('--seed', type=int, default=d.seed, help='base of the per-object seeds')
    p.add_argument('--device', default=d.device, help="'auto', 'cpu', 'cuda', ...")
    p.add_argument('--no-fp16', dest='fp16', action='store_false',
                   help='run fp32 on CUDA (CPU always runs fp32)')
    p.add_argument('--limit', type=int, default=d.limit, help='stop after N objects (0 = all)')
    ns = p.parse_args(argv)
    args = GenerateArgs(**{f.name: getattr(ns, f.name) for f in fields(GenerateArgs)})
    if not (Path(args.root) / DEPTH_DIR).is_dir():
        raise ValueError(f'--root {args.root!r} has no {DEPTH_DIR}/ folder')
    for name in ('controlnet', 'base'):
        if not Path(getattr(args, name)).is_dir():
            raise ValueError(f'--{name} {getattr(args, name)!r} is not a local folder')
    for name in ('metadata', 'taxonomy'):
        if getattr(args, name) and not Path(getattr(args, name)).is_file():
            raise ValueError(f'--{name} {getattr(args, name)!r} is not a file')
    parse_shard(args.shard)
    if args.steps < 1 or args.gen_size < 8 or args.gen_size % 8 or args.limit < 0:
        raise ValueError('--steps must be >= 1, --gen-size a multiple of 8 (>= 8), --limit >= 0; '
                         f'got {args.steps}, {args.gen_size}, {args.limit}')
    if args.median < 1 or args.median % 2 == 0:
        raise ValueError(f'--median must be an odd integer >= 1, got {args.median}')
    return args


# ----------------------------------------------------------------------------------------------
# Pure pre/post-processing


def parse_shard(text: str) -> Tuple[int, int]:
    """
    Parse ``'i/n'``.

    :param text: Shard spec.
    :return: ``(i, n)`` with ``0 <= i < n``.
    :raises ValueError: If malformed or out of range.
    """
    try:
        i, n = (int(x) for x in text.split('/'))
    except ValueError:
        raise ValueError(f"--shard must look like 'i/n', got {text!r}") from None
    if not 0 <= i < n:
        raise ValueError(f'--shard needs 0 <= i < n, got {text!r}')
    return i, n


def shard_objects(objects: Sequence[str], index: int, count: int) -> List[str]:
    """
    Pick one shard of the sorted object list.

    :param objects: Object ids (any order).
    :param index: Shard index i.
    :param count: Number of shards n.
    :return: ``sorted(objects)[i::n]``; the shards partition the list.
    """
    return sorted(objects)[index::count]


def object_seed(seed: int, obj: str) -> int:
    """
    Return the deterministic noise seed of one object (independent of sharding and order).

    :param seed: Run seed.
    :param obj: Object id.
    :return: A 63-bit seed; view k uses ``object_seed + k``.
    """
    return int(hashlib.sha256(f'{seed}/{obj}'.encode()).hexdigest()[:15], 16)


def output_paths(root: str, obj: str, views: int) -> List[Path]:
    """
    Return where the images of one object go.

    :param root: Data root.
    :param obj: Object id.
    :param views: V.
    :return: ``<root>/depth_align_img/<obj>/{0..V-1}.png``.
    """
    return [Path(root) / RGB_DIR / obj / f'{k}.png' for k in range(views)]


def list_depth_objects(root: str) -> Dict[str, Path]:
    """
    Map object ids to their depth-map files.

    :param root: Data root.
    :return: ``{obj: <root>/depth_map/<obj>_dm.npy}``.
    """
    return {p.name[:-len(DEPTH_SUFFIX)]: p
            for p in sorted((Path(root) / DEPTH_DIR).glob(f'*{DEPTH_SUFFIX}'))}


def conditioning_image(depth: np.ndarray, size: int, median: int = 7) -> Image.Image:
    """
    Turn one depth view into the ControlNet conditioning image.

    :param depth: (S, S) or (S, S, C) depth in [0, 1] (background 1, nearer darker; channel 0 is
        used).
    :param size: Output side in pixels (the generation size).
    :param median: Median filter window (odd).
    :return: RGB image, near = bright, ``median x median`` median-filtered, resized bilinearly.
    :raises ValueError: On a bad shape.
    """
    from scipy.ndimage import median_filter

    d = np.asarray(depth, dtype=np.float32)
    if d.ndim == 3:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f'depth must be (S, S) or (S, S, C), got {np.shape(depth)}')
    inv = 1.0 - np.clip(d, 0.0, 1.0)
    inv = median_filter(inv, size=median, mode='nearest')
    img = Image.fromarray(np.round(inv * 255).astype(np.uint8)).convert('RGB')
    return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)


def build_prompt(metadata: str) -> str:
    """
    Build the positive prompt.

    :param metadata: Object description, e.g. ``'chair'``.
    :return: ``'A realistic {metadata}. ' + POSITIVE_PROMPT``.
    :raises ValueError: If the description is blank.
    """
    text = ' '.join(metadata.replace('_', ' ').split())
    if not text:
        raise ValueError('metadata must not be blank')
    return f'A realistic {text}. {POSITIVE_PROMPT}'


def resize_output(image: Image.Image, size: int) -> Image.Image:
    """
    Downsample a generated image to the depth-map size.

    :param image: Generated RGB image (e.g. 256 x 256).
    :param size: Target side S (e.g. 224).
    :return: S x S RGB (bicubic, antialiased).
    """
    image = image.convert('RGB')
    return image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC)


def load_metadata(metadata: str, taxonomy: str) -> Tuple[Dict[str, str], Dict[str, str]]:
    """
    Read object descriptions and an optional ShapeNet taxonomy.

    :param metadata: JSON file ``{obj: description}`` or ``''``.
    :param taxonomy: ShapeNet ``taxonomy.json`` (list of ``{'synsetId', 'name'}``) or ``''``.
    :return: ``(per_object, per_synset)``; synset names keep the first comma-separated name.
    """
    per_object = json.loads(Path(metadata).read_text()) if metadata else {}
    per_synset = {}
    if taxonomy:
        for node in json.loads(Path(taxonomy).read_text()):
            per_synset[str(node['synsetId'])] = str(node['name']).split(',')[0].strip()
    return per_object, per_synset


def describe(obj: str, per_object: Dict[str, str], per_synset: Dict[str, str]) -> str:
    """
    Return the description of an object.

    :param obj: Object id.
    :param per_object: Explicit descriptions.
    :param per_synset: ShapeNet synset names; used when ``obj`` starts with a known 8-digit id.
    :return: The description.
    :raises ValueError: If neither source knows the object.
    """
    if obj in per_object:
        return str(per_object[obj])
    synset = obj[:8]
    if synset in per_synset:
        return per_synset[synset]
    raise ValueError(f'no metadata for object {obj!r}; give --metadata or --taxonomy')


def _save_atomic(image: Image.Image, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'.{path.stem}.tmp.png')
    image.save(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Pipeline


def load_pipeline(controlnet: str, base: str, device: str, fp16: bool):
    """
    Load ControlNet + SD 1.5 from local folders with a DDIM scheduler.

    :param controlnet: ControlNet folder.
    :param base: Stable Diffusion folder.
    :param device: Torch device string.
    :param fp16: Half precision (CUDA only).
    :return: The pipeline on ``device`` (no safety checker: the images are training data).
    """
    from diffusers import ControlNetModel, DDIMScheduler, StableDiffusionControlNetPipeline
    import torch

    dtype = torch.float16 if fp16 and torch.device(device).type == 'cuda' else torch.float32
    net = ControlNetModel.from_pretrained(controlnet, local_files_only=True, dtype=dtype)
    pipe = StableDiffusionControlNetPipeline.from_pretrained(
        base, controlnet=net, local_files_only=True, dtype=dtype, safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def generate_object(pipe, depth: np.ndarray, description: str, seed: int,
                    args: GenerateArgs) -> List[Image.Image]:
    """
    Generate the V depth-aligned images of one object.

    :param pipe: The ControlNet pipeline.
    :param depth: (V, S, S, 3) depth views.
    :param description: Object description for the prompt.
    :param seed: The object's seed (view k uses ``seed + k``).
    :param args: Sampler settings.
    :return: V images of S x S.
    """
    import torch

    views, size = depth.shape[0], depth.shape[1]
    conds = [conditioning_image(depth[k], args.gen_size, args.median) for k in range(views)]
    gens = [torch.Generator(device='cpu').manual_seed(seed + k) for k in range(views)]
    result = pipe(prompt=[build_prompt(description)] * views, image=conds,
                  negative_prompt=[NEGATIVE_PROMPT] * views, num_inference_steps=args.steps,
                  guidance_scale=args.guidance, controlnet_conditioning_scale=args.strength,
                  eta=args.eta, height=args.gen_size, width=args.gen_size, generator=gens)
    return [resize_output(im, size) for im in result.images]


def main(args: GenerateArgs) -> int:
    """
    Generate the images of this shard, skipping finished objects.

    :param args: Settings from :func:`parse_args`.
    :return: Process exit status.
    """
    import torch
    from tqdm import tqdm

    device = args.device
    if device == 'auto':
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    per_object, per_synset = load_metadata(args.metadata, args.taxonomy)
    files = list_depth_objects(args.root)
    index, count = parse_shard(args.shard)
    mine = shard_objects(files, index, count)
    todo = []
    for obj in mine:
        depth_views = np.load(files[obj], mmap_mode='r').shape[0]
        if not all(p.is_file() for p in output_paths(args.root, obj, depth_views)):
            todo.append(obj)
    if args.limit:
        todo = todo[:args.limit]
    print(f'shard {index}/{count}: {len(mine)} objects, {len(mine) - len(todo)} done, '
          f'{len(todo)} to generate')
    if not todo:
        return 0
    pipe = load_pipeline(args.controlnet, args.base, device, args.fp16)
    for obj in tqdm(todo, desc=f'shard {index}/{count}', unit='obj'):
        depth = np.load(files[obj])
        images = generate_object(pipe, depth, describe(obj, per_object, per_synset),
                                 object_seed(args.seed, obj), args)
        for image, path in zip(images, output_paths(args.root, obj, len(images))):
            _save_atomic(image, path)
    return 0


if __name__ == '__main__':
    raise SystemExit(main(parse_args()))
