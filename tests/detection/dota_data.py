"""Generated DOTA-style data: rotated bright rectangles on a textured background, as PNG chips.

Labels follow the DOTA devkit's published ``labelTxt`` format
(https://captain-whu.github.io/DOTA/dataset.html): two header lines ``imagesource:GoogleEarth``
and ``gsd:0.146343590398``, then one object per line ``x1 y1 x2 y2 x3 y3 x4 y4 category
difficult`` with the corners clockwise from the object's "head". Every split holds one image
without objects (its label file has the two header lines only), as real DOTA does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

HEADER = "imagesource:GoogleEarth\ngsd:0.146343590398\n"
CLASSES = ("plane", "ship")


def rotated_rect(cx: float, cy: float, length: float, width: float, angle: float) -> np.ndarray:
    """``[4, 2]`` corners of a ``length`` × ``width`` rectangle turned by ``angle`` radians."""
    c, s = math.cos(angle), math.sin(angle)
    half = np.array([[-length, -width], [length, -width], [length, width], [-length, width]]) / 2
    return half @ np.array([[c, s], [-s, c]]) + [cx, cy]


def scene(
    size: int, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, list[tuple[np.ndarray, str, int]]]:
    """An RGB ``[size, size, 3]`` uint8 image and its objects (corners, class, difficult).

    Planes are bright and 22-30 px long, ships dark and narrower; objects never overlap.
    """
    noise = rng.normal(0, 1, (size // 8 + 1, size // 8 + 1))
    background = np.kron(noise, np.ones((8, 8)))[:size, :size]
    base = 110 + 18 * background + rng.normal(0, 6, (size, size))
    canvas = Image.fromarray(base.clip(0, 255).astype(np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(canvas)
    objects: list[tuple[np.ndarray, str, int]] = []
    centres: list[tuple[float, float]] = []
    tries = 0
    while len(objects) < count and tries < 500:
        tries += 1
        cx, cy = rng.uniform(18, size - 18, 2)
        if any(math.hypot(cx - x, cy - y) < 34 for x, y in centres):
            continue
        cls = CLASSES[int(rng.integers(0, 2))]
        angle = float(rng.uniform(0, math.pi))
        if cls == "plane":
            quad = rotated_rect(cx, cy, rng.uniform(22, 30), rng.uniform(14, 20), angle)
            fill = (235, 235, 225)
        else:
            quad = rotated_rect(cx, cy, rng.uniform(24, 30), rng.uniform(10, 13), angle)
            fill = (25, 30, 60)
        draw.polygon([tuple(p) for p in quad.tolist()], fill=fill)
        centres.append((cx, cy))
        objects.append((quad, cls, int(rng.random() < 0.15)))
    return np.asarray(canvas), objects


def label_text(objects: list[tuple[np.ndarray, str, int]]) -> str:
    lines = [
        " ".join(f"{v:.1f}" for v in quad.ravel()) + f" {cls} {difficult}"
        for quad, cls, difficult in objects
    ]
    return HEADER + "".join(line + "\n" for line in lines)


def write_dota_folder(
    root: Path, images: dict[str, int] | None = None, size: int = 160, count: int = 6,
    seed: int = 0, torchgeo: bool = False,
) -> dict[str, list[tuple[np.ndarray, str, int]]]:  # fmt: skip
    """Write ``root/{train,val}/images/*.png`` + labels, one object-free image per split.

    Args:
        root: dataset folder.
        images: images per split (the last of each split has no object).
        size: image edge in pixels.
        count: objects per image.
        seed: random seed.
        torchgeo: lay the files out as TorchGeo's ``DOTA`` expects
            (``{split}/annotations/version1.0/`` and ``samples.csv``) instead of DOTA's own
            ``{split}/labelTxt/``.

    Returns:
        ``{image stem: objects}`` written.
    """
    rng = np.random.default_rng(seed)
    images = images or {"train": 6, "val": 3}
    written: dict[str, list[tuple[np.ndarray, str, int]]] = {}
    rows = ["image_path,annotation_path,split,version"]
    k = 0
    for split, n in images.items():
        for i in range(n):
            stem = f"P{k:04d}"
            k += 1
            pixels, objects = scene(size, count if i < n - 1 else 0, rng)
            image = root / split / "images" / f"{stem}.png"
            labels = root / split / ("annotations/version1.0" if torchgeo else "labelTxt")
            image.parent.mkdir(parents=True, exist_ok=True)
            labels.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(image)
            (labels / f"{stem}.txt").write_text(label_text(objects))
            rel_labels = (labels / f"{stem}.txt").relative_to(root)
            rows.append(f"{image.relative_to(root)},{rel_labels},{split},1.0")
            written[stem] = objects
    if torchgeo:
        (root / "samples.csv").write_text("\n".join(rows) + "\n")
    return written


def dota_entry(catalog: Path, name: str, root: Path, **extra: str) -> Path:
    """A ``detection_folder`` catalog entry over ``write_dota_folder``'s layout."""
    catalog.mkdir(parents=True, exist_ok=True)
    lines = [
        "kind: detection_folder", f"root: {root}", "format: dota", "label_dir: labelTxt",
        "splits: {train: train, val: val}",
    ]  # fmt: skip
    lines += [f"{k}: {v}" for k, v in extra.items()]
    path = catalog / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path
