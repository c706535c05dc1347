"""A small generated dataset with a clear signal for every fine-tuning task.

256×256 px, 10 m, 3 bands. The scene is a grid of 32-px blocks of 3 classes; each class is
bright in "its" band (a clear spectral signal). The second date brightens some blocks (change).
Also: class points at 8-px spacing (chip classification) and a folder of 32-px class images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.rasters import write_entry, write_raster

SIZE, BLOCK = 256, 32
CLASSES = (
    "{1: {name: red-ish, color: '#ff0000'}, 2: {name: green-ish, color: '#00ff00'}, "
    "3: {name: blue-ish, color: '#0000ff'}}"
)

torch.set_num_threads(1)  # tiny models: threads cost more than they give on shared CPUs


def _blocks(
    rng: np.random.Generator, values: list[int], p: list[float] | None = None
) -> np.ndarray:
    n = SIZE // BLOCK
    grid = rng.choice(values, size=(n, n), p=p)
    return np.kron(grid, np.ones((BLOCK, BLOCK), dtype=np.int64))


@pytest.fixture(scope="session")
def clear_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clear")
    rng = np.random.default_rng(0)
    labels = _blocks(rng, [1, 2, 3])
    image = np.stack([1000 + 600 * (labels == b + 1) for b in range(3)]).astype(np.float64)
    image += rng.normal(0, 60, image.shape)
    change = _blocks(rng, [0, 1], [0.6, 0.4])
    after = image + 900 * change[None] + rng.normal(0, 60, image.shape)
    write_raster(root / "img.tif", image.astype(np.uint16))
    write_raster(root / "after.tif", after.astype(np.uint16))
    write_raster(root / "labels.tif", labels.astype(np.uint8), nodata=0)
    write_raster(root / "change.tif", change.astype(np.uint8), nodata=255)
    # class points every 8 px, labelled by the block class under them
    import geopandas as gpd
    from shapely.geometry import Point

    pts, cls = [], []
    for r in range(4, SIZE, 8):
        for c in range(4, SIZE, 8):
            pts.append(Point(500_000 + 10 * c + 5, 5_000_000 - 10 * r - 5))  # 10 m pixels
            cls.append(int(labels[r, c]))
    gpd.GeoDataFrame({"klass": cls}, geometry=pts, crs="EPSG:32633").to_file(root / "points.gpkg")
    gpd.GeoDataFrame({"klass": []}, geometry=[], crs="EPSG:32633").to_file(root / "empty.gpkg")
    # image folder: 12 images per class, 32 px, RGB
    from PIL import Image

    for k, name in enumerate(["red", "green", "blue"]):
        (root / "folder" / name).mkdir(parents=True)
        for i in range(12):
            px = np.full((32, 32, 3), 90.0) + rng.normal(0, 20, (32, 32, 3))
            px[..., k] += 100
            Image.fromarray(px.clip(0, 255).astype(np.uint8)).save(
                root / "folder" / name / f"{i}.png"
            )
    cat = root / "catalog"
    bands = "bands: [red, green, blue]\nrgb: [red, green, blue]\n"
    write_entry(cat, "img", f"kind: imagery\npaths: ../img.tif\n{bands}date: 2020-01-01\n")
    write_entry(cat, "after", f"kind: imagery\npaths: ../after.tif\n{bands}date: 2021-01-01\n")
    write_entry(cat, "labels", f"kind: raster_labels\npaths: ../labels.tif\nclasses: {CLASSES}\n")
    write_entry(cat, "change", "kind: raster_labels\npaths: ../change.tif\n"
                "classes: {0: no change, 1: change}\nignore_value: 255\n")  # fmt: skip
    write_entry(cat, "pair", "kind: bitemporal\nbefore: img\nafter: after\nchange_labels: change\n")
    write_entry(cat, "points", "kind: vector_labels\npaths: ../points.gpkg\n"
                f"class_attribute: klass\nclasses: {CLASSES}\n")  # fmt: skip
    write_entry(cat, "empty-points", "kind: vector_labels\npaths: ../empty.gpkg\n"
                f"class_attribute: klass\nclasses: {CLASSES}\n")  # fmt: skip
    write_entry(cat, "folder", "kind: image_folder\nroot: ../folder\nextensions: [.png]\n")
    return cat


@pytest.fixture(scope="session")
def rgb_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A geocmid export of a random 3-band ResNet-18 (stands in for a CMID-pretrained one)."""
    from geocmid.models import create_backbone
    from geocmid.models.weights import export_backbone

    torch.manual_seed(1)
    backbone = create_backbone("resnet18", 3, img_size=64)
    out = tmp_path_factory.mktemp("export") / "cmid-r18"
    card = {"bands": ["red", "green", "blue"], "mean": [1200.0] * 3, "std": [300.0] * 3}
    weights, _ = export_backbone(backbone, out, card)
    return weights
