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


def benchmark_catalog(root: Path) -> Path:
    """Tiny data under ``root`` and a catalog naming them as the shipped entries the benchmark
    recipes use (nwpu-resisc45, dubai-aerial, levir-cd-folders); returns the catalog folder."""
    rng = np.random.default_rng(0)
    for c in ("beach", "forest"):
        for i in range(6):
            img = rng.integers(0, 255, (48, 48, 3), np.uint8)
            write_png(root / "nwpu" / c / f"{c}_{i}.jpg", img)
    for t in range(3):
        mask = np.where(blobs(rng, 64)[..., None], (60, 16, 152), (254, 221, 58)).astype(np.uint8)
        img = rng.integers(0, 255, (64, 64, 3), np.uint8)
        write_png(root / "dubai" / f"Tile {t}" / "images" / "a.jpg", img)
        write_png(root / "dubai" / f"Tile {t}" / "masks" / "a.png", mask)
    levir_layout(root / "LEVIR-CD", size=64)
    cat = root / "catalog"
    cat.mkdir(parents=True, exist_ok=True)
    (cat / "nwpu-resisc45.yaml").write_text("kind: image_folder\nroot: ../nwpu\n")
    (cat / "dubai-aerial.yaml").write_text(
        "kind: chip_segmentation\nroot: ../dubai\nmask_format: colors\n"
        "classes: {0: {name: building, color: '#3C1098'},\n"
        "          1: {name: vegetation, color: '#FEDD3A'}}\n"
        "splits: {train: 'Tile 0', val: 'Tile 1', test: 'Tile 2'}\n"
    )
    (cat / "levir-cd-folders.yaml").write_text(
        "kind: chip_change\nroot: ../LEVIR-CD\nsplits: {train: train, val: val, test: test}\n"
    )
    return cat
