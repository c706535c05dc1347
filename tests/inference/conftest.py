"""Fixtures for prediction tests: small synthetic georeferenced scenes and the toy models."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.transform import from_origin

sys.path.insert(0, str(Path(__file__).resolve().parent))  # toymodels

#: ../shared/data beside the repository (real samples; tests using it skip when absent).
SHARED = Path(__file__).resolve().parents[2] / "../shared/data"


def write_scene(
    path: Path,
    data: np.ndarray,
    crs: str | None = "EPSG:32618",
    transform: Affine | None = None,
    nodata: float | None = None,
) -> Path:
    """Write ``data`` ``[C, H, W]`` as a GeoTIFF (default: 10 m UTM grid)."""
    transform = transform or from_origin(500000.0, 4000000.0, 10.0, 10.0)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=data.shape[2],
        height=data.shape[1],
        count=data.shape[0],
        dtype=data.dtype,
        crs=crs,
        transform=transform,
        nodata=nodata,
    ) as ds:
        ds.write(data)
    return path


@pytest.fixture
def smooth_scene(tmp_path: Path) -> Path:
    """A 3-band 230 x 310 float scene with smooth patterns and a nodata corner (-9999)."""
    rows, cols = np.mgrid[0:230, 0:310].astype(np.float32)
    data = np.stack(
        [np.sin(rows / 17.0) + np.cos(cols / 23.0), np.cos(rows / 11.0), np.sin(cols / 7.0)]
    ).astype(np.float32)
    data[:, :20, :30] = -9999.0
    return write_scene(tmp_path / "scene.tif", data, nodata=-9999.0)


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED.resolve()


@pytest.fixture
def mixed_scene(tmp_path: Path):
    """A 4-band scene as band files at mixed resolutions (catalog entry 's2', nodata override)
    and as the same bands stacked on the fine grid (see tests/data/test_sources.py)."""
    from tests.data.test_sources import write_mixed_resolution_scene

    return write_mixed_resolution_scene(tmp_path / "scene")


@pytest.fixture
def toy_model_files(tmp_path: Path):
    """``(model, card)``: a TorchScript per-pixel model on bands B01..B04, 3 classes."""
    import json

    import torch
    import toymodels

    torch.manual_seed(0)
    model = toymodels.PerPixel(in_chans=4, classes=3, seed=7)
    card = toymodels.card(in_chans=4, classes=3, mean=1000.0, std=400.0)
    card["bands"] = ["B01", "B02", "B03", "B04"]
    folder = tmp_path / "model"
    folder.mkdir()
    torch.jit.script(model).save(str(folder / "model.pt"))
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "model.pt", folder / "card.json"
