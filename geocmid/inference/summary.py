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


def _rgb_on_grid(scene: Any, bands: tuple[int, ...], ds: Any, shape: tuple[int, int]) -> np.ndarray:
    """``[H, W, 3]`` uint8 of ``scene`` read onto ``ds``'s grid at ``shape``, 2-98 % stretched."""
    from rasterio.vrt import WarpedVRT

    rgb_bands = list(bands[:3]) if len(bands) >= 3 else [bands[0]] * 3
    with (
        rasterio.open(scene.path) as src,
        WarpedVRT(src, crs=ds.crs, transform=ds.transform, width=ds.width, height=ds.height) as vrt,
    ):
        img = vrt.read(rgb_bands, out_shape=(3, *shape), resampling=Resampling.average)
        valid = vrt.read_masks(1, out_shape=shape) > 0
    img = img.astype(np.float64)
    out = np.zeros((*shape, 3), np.uint8)
    for b in range(3):  # per band, over valid pixels: reads like the eye expects
        v = img[b][valid]
        lo, hi = (np.percentile(v, 2), np.percentile(v, 98)) if v.size else (0.0, 1.0)
        out[..., b] = np.clip((img[b] - lo) / max(hi - lo, 1e-9) * 255, 0, 255)
    out[~valid] = 255
    return out


def _rgb_band_indexes(scene: Any, card: ModelCard) -> tuple[int, ...]:
    """The scene's red, green, blue bands when the card names them, else its first bands."""
    names = [str(b).lower() for b in card.bands]
    if all(c in names for c in ("red", "green", "blue")):
        return tuple(scene.bands[names.index(c)] for c in ("red", "green", "blue"))
    return tuple(scene.bands)


def quicklook_classes(
    class_tif: Path,
    card: ModelCard,
    path: Path,
    scenes: tuple[Any, ...] = (),
    background: int | None = None,
) -> Path:
    """A PNG to look at: the classes over the scene, or before | after | change for two dates.

    Classes are drawn in their colours, half transparent over the (stretched, decimated) first
    scene; for change the panels are both dates and the second date with the change classes
    over it. ``background`` (no change) is left uncoloured. Without scenes: the classes alone.
    """
    with rasterio.open(class_tif) as ds:
        h, w = _shape(ds.width, ds.height)
        cls = ds.read(1, out_shape=(h, w), resampling=Resampling.nearest)
        nodata = ds.nodata
        bases = [_rgb_on_grid(s, _rgb_band_indexes(s, card), ds, (h, w)) for s in scenes]
    colour = np.zeros((h, w, 3), np.uint8)
    painted = np.zeros((h, w), bool)
    for c in card.classes:
        if c.value == background and bases:
            continue
        hit = cls == c.value
        colour[hit] = c.color[:3]
        painted |= hit
    painted &= cls != nodata
    if not bases:
        rgba = np.dstack([colour, np.where(painted, 255, 0).astype(np.uint8)])
        image = Image.fromarray(rgba, "RGBA")
    else:
        overlay = bases[-1].copy()
        alpha = 0.45 if len(bases) == 1 else 0.75
        overlay[painted] = (alpha * colour[painted] + (1 - alpha) * overlay[painted]).astype(
            np.uint8
        )
        panels = [*bases, overlay] if len(bases) > 1 else [overlay]
        gap = np.full((h, 8, 3), 255, np.uint8)
        row = [panels[0]]
        for panel in panels[1:]:
            row += [gap, panel]
        image = Image.fromarray(np.concatenate(row, axis=1), "RGB")
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
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
