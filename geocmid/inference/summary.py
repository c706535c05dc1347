"""Run summary (JSON: per-class areas and counts) and a quick-look PNG, both small."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
from PIL import Image, ImageDraw
from rasterio.enums import Resampling

from geocmid.inference.card import ModelCard
from geocmid.inference.reader import Grid
from geocmid.inference.writers import atomic_path

#: Longest side of the quick-look image, pixels.
QUICKLOOK_SIZE = 1024


def grid_dict(grid: Grid) -> dict[str, Any]:
    epsg = grid.crs.to_epsg() if grid.crs is not None else None
    return {
        "crs": f"EPSG:{epsg}" if epsg else (grid.crs.to_wkt() if grid.crs else None),
        "transform": list(grid.transform)[:6],
        "width": grid.width,
        "height": grid.height,
    }


def class_table(
    card: ModelCard,
    pixels: np.ndarray | None = None,
    area_m2: np.ndarray | None = None,
    objects: gpd.GeoDataFrame | None = None,
) -> list[dict[str, Any]]:
    """One entry per class: pixel count and area (rasters), object count and area (vectors)."""
    table = []
    for k, c in enumerate(card.classes):
        entry: dict[str, Any] = {"value": c.value, "name": c.name}
        if pixels is not None and area_m2 is not None:
            entry["pixels"] = int(pixels[k])
            entry["area_m2"] = None if np.isnan(area_m2[k]) else round(float(area_m2[k]), 3)
        if objects is not None:
            mine = objects[objects["class_value"] == c.value]
            entry["objects"] = len(mine)
            entry["objects_area_m2"] = round(float(np.nansum(mine["area_m2"])), 3)
        table.append(entry)
    return table


def write_summary(path: Path, summary: dict[str, Any]) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(summary, indent=2, default=str))
    return path


def _shape(width: int, height: int) -> tuple[int, int]:
    scale = min(1.0, QUICKLOOK_SIZE / max(width, height))
    return max(1, round(height * scale)), max(1, round(width * scale))


def quicklook_classes(class_tif: Path, card: ModelCard, path: Path) -> Path:
    """Colour the class raster (read decimated through its overviews); nodata is transparent."""
    with rasterio.open(class_tif) as ds:
        h, w = _shape(ds.width, ds.height)
        cls = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        nodata = ds.nodata
    rgba = np.zeros((h, w, 4), np.uint8)
    for c in card.classes:
        rgba[cls == c.value] = c.color
    rgba[cls == nodata] = 0
    with atomic_path(path) as tmp:
        Image.fromarray(rgba, "RGBA").save(tmp, format="PNG")
    return path


def quicklook_scene(
    scene: str, grid: Grid, frame: gpd.GeoDataFrame, card: ModelCard, path: Path
) -> Path:
    """The first input (stretched, decimated) with detection boxes or class cells drawn on it."""
    with rasterio.open(scene) as ds:
        h, w = _shape(ds.width, ds.height)
        bands = [1, 2, 3] if ds.count >= 3 else [1]
        img = ds.read(bands, out_shape=(len(bands), h, w), resampling=Resampling.average)
        img = img.astype(np.float64)
    lo, hi = np.nanpercentile(img, 2), np.nanpercentile(img, 98)
    img = np.clip((img - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    rgb = np.repeat(img, 3, axis=0) if len(bands) == 1 else img
    image = Image.fromarray(np.moveaxis(rgb, 0, -1), "RGB")
    draw = ImageDraw.Draw(image)
    inv = ~grid.transform
    sx, sy = w / grid.width, h / grid.height
    colours = {c.value: tuple(c.color[:3]) for c in card.classes}
    for geom, value in zip(frame.geometry, frame["class_value"], strict=True):
        x0, y0, x1, y1 = geom.bounds
        (c0, r0), (c1, r1) = inv @ (x0, y1), inv @ (x1, y0)
        draw.rectangle(
            [min(c0, c1) * sx, min(r0, r1) * sy, max(c0, c1) * sx, max(r0, r1) * sy],
            outline=colours.get(int(value), (255, 0, 0)),
            width=2,
        )
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return path
