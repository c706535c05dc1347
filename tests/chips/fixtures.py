"""Tiny chip datasets written by the tests (layouts of the benchmarks, learnable signal)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def blobs(rng: np.random.Generator, size: int, n: int = 3) -> np.ndarray:
    """A ``[size, size]`` bool mask of ``n`` random rectangles."""
    mask = np.zeros((size, size), bool)
    for _ in range(n):
        y, x = rng.integers(0, size - size // 4, 2)
        h, w = rng.integers(size // 8, size // 3, 2)
        mask[y : y + h, x : x + w] = True
    return mask


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)
    return path


def change_triplet(
    rng: np.random.Generator, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two RGB dates (uint8) and a 0/255 label: bright buildings appear where the label is."""
    base = (90 + 20 * rng.standard_normal((size, size, 3))).clip(0, 255)
    change = blobs(rng, size)
    after = base.copy()
    after[change] = (230 + 10 * rng.standard_normal((int(change.sum()), 3))).clip(0, 255)
    return base.astype(np.uint8), after.astype(np.uint8), (change * 255).astype(np.uint8)


def levir_layout(root: Path, size: int = 64, counts: dict[str, int] | None = None) -> Path:
    """LEVIR-CD's folders: ``root/{train,val,test}/{A,B,label}/<split>_<n>.png``."""
    rng = np.random.default_rng(0)
    for split, n in (counts or {"train": 4, "val": 2, "test": 2}).items():
        for i in range(n):
            a, b, label = change_triplet(rng, size)
            write_png(root / split / "A" / f"{split}_{i}.png", a)
            write_png(root / split / "B" / f"{split}_{i}.png", b)
            write_png(root / split / "label" / f"{split}_{i}.png", label)
    return root
