"""Tiny generated georeferenced rasters for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import rasterio
from rasterio.transform import from_origin


def write_raster(
    path: Path,
    array: np.ndarray,
    *,
    crs: str = "EPSG:32633",
    origin: tuple[float, float] = (500_000.0, 5_000_000.0),
    res: float = 10.0,
    nodata: float | None = None,
) -> Path:
    """Write ``array`` ``[C, H, W]`` as a GeoTIFF with its top-left corner at ``origin``."""
    array = array if array.ndim == 3 else array[None]
    path.parent.mkdir(parents=True, exist_ok=True)
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[2],
        height=array.shape[1],
        count=array.shape[0],
        dtype=array.dtype,
        crs=crs,
        transform=from_origin(origin[0], origin[1], res, res),
        nodata=nodata,
    ) as dst:
        dst.write(array)
    return path


def smooth_field(shape: tuple[int, int], seed: int = 0, bands: int = 3) -> np.ndarray:
    """``[bands, H, W]`` uint16 image with spatial structure (so resampling can be checked)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]]
    out = []
    for b in range(bands):
        fx, fy = rng.uniform(0.01, 0.05, 2).tolist()
        phase = rng.uniform(0, 6)
        out.append(1000 + 500 * np.sin(fx * x + phase) * np.cos(fy * y) + 100 * b)
    return np.stack(out).astype(np.uint16)


def write_entry(folder: Path, name: str, text: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(text)
    return path
