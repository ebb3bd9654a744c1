"""Fixtures for the training-script tests: tiny synthetic data in the authors' layouts."""

from pathlib import Path

import numpy as np
from PIL import Image
import pytest


def write_aligned_data(root: Path, objects: int = 4, views: int = 2, size: int = 224,
                       seed: int = 0) -> Path:
    """Write ``depth_align_img/<obj>/k.png`` + ``depth_map/<obj>_dm.npy`` with distinct content."""
    rng = np.random.default_rng(seed)
    (root / 'depth_map').mkdir(parents=True, exist_ok=True)
    for i in range(objects):
        obj = f'obj{i:03d}'
        (root / 'depth_align_img' / obj).mkdir(parents=True, exist_ok=True)
        depth = np.ones((views, size, size, 3), np.float32)
        for k in range(views):
            # a distinct blob per object and view, nearer = darker, background 1
            y, x = np.mgrid[:size, :size]
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.15, 0.35) * size
            mask = (y - cy) ** 2 + (x - cx) ** 2 < r ** 2
            depth[k][mask] = rng.uniform(0.0, 0.8)
            img = (rng.uniform(0, 255, (size, size, 3))).astype(np.uint8)
            img[mask] = rng.integers(0, 255, 3)
            Image.fromarray(img).save(root / 'depth_align_img' / obj / f'{k}.png')
        np.save(root / 'depth_map' / f'{obj}_dm.npy', depth)
    return root


def write_val_data(root: Path, labels=('chair', 'table', 'floor_lamp'), per_class: int = 2,
                   views: int = 2, size: int = 64, seed: int = 1) -> Path:
    """Write an OpenDlign-format evaluation folder ``depth_map/<idx>+<class>_dm.npy``."""
    rng = np.random.default_rng(seed)
    (root / 'depth_map').mkdir(parents=True, exist_ok=True)
    idx = 0
    for label in labels:
        for _ in range(per_class):
            arr = rng.uniform(0, 1, (views, size, size, 1)).astype(np.float32).repeat(3, -1)
            np.save(root / 'depth_map' / f'{idx}+{label}_dm.npy', arr)
            idx += 1
    return root


@pytest.fixture
def aligned_root(tmp_path: Path) -> Path:
    return write_aligned_data(tmp_path / 'data')


@pytest.fixture
def make_aligned():
    return write_aligned_data


@pytest.fixture
def make_val():
    return write_val_data
