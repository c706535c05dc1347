"""Assembling completed blocks into rasters on the scene grid.

Every region of the layout (see :mod:`geocmid.inference.windows`) is finished once: core regions
come straight from their block file; edge regions sum the partial weighted sums of their 2 or 4
blocks in a fixed order, so the result is the same however the blocks were computed (one process,
several, or resumed). Regions are written into temporary tiled GeoTIFFs in the work folder;
:mod:`geocmid.inference.writers` turns them into the final COGs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.windows import Window

from geocmid.inference.areas import pixel_area_rows
from geocmid.inference.card import ModelCard
from geocmid.inference.engine import NO_CLASS, NO_PROB, finish
from geocmid.inference.reader import Grid
from geocmid.inference.store import WorkDir
from geocmid.inference.windows import Layout, is_final, region_name


@dataclass
class ClassStats:
    """Per-class pixel counts and areas (m², NaN without a CRS) gathered while assembling."""

    pixels: np.ndarray
    area_m2: np.ndarray
    nodata_pixels: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def class_dtype(card: ModelCard) -> tuple[str, int]:
    """Smallest dtype for the class values and its nodata value."""
    if max(c.value for c in card.classes) < 255:
        return "uint8", 255
    return "uint16", 65535


def assemble_dense(
    work: WorkDir, layout: Layout, grid: Grid, card: ModelCard, out_dir: Path
) -> tuple[Path, Path, ClassStats]:
    """Write ``classes.tif`` and ``probabilities.tif`` (temporary, in ``out_dir``) from blocks.

    Returns the two paths and per-class statistics. Memory: one region (<= one block) at a time.
    """
    dtype, nodata = class_dtype(card)
    k = card.num_classes
    lookup = np.array([c.value for c in card.classes] + [nodata], np.int64)  # index -1 → nodata
    profile = {
        "driver": "GTiff",
        "width": grid.width,
        "height": grid.height,
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "BIGTIFF": "IF_SAFER",
    }
    cls_path, prob_path = out_dir / "classes.tif", out_dir / "probabilities.tif"
    stats = ClassStats(np.zeros(k, np.int64), np.zeros(k, np.float64))
    # m² per pixel of every row, once: geodesic rows cost a pyproj call each in geographic CRSs
    row_areas = pixel_area_rows(grid.transform, grid.crs, 0, grid.height, grid.width)
    with (
        rasterio.open(cls_path, "w", count=1, dtype=dtype, nodata=nodata, **profile) as cls_ds,
        rasterio.open(prob_path, "w", count=k, dtype="uint8", nodata=NO_PROB, **profile) as prob_ds,
    ):
        for key, (r0, r1, c0, c1) in layout.all_regions():
            cls, pct = _region(work, layout, key)
            window = Window(c0, r0, c1 - c0, r1 - r0)
            cls_ds.write(lookup[cls].astype(dtype), 1, window=window)
            prob_ds.write(pct, window=window)
            _add_stats(stats, cls, row_areas[r0 : r0 + cls.shape[0]], k)
    return cls_path, prob_path, stats


def _region(work: WorkDir, layout: Layout, key: tuple) -> tuple[np.ndarray, np.ndarray]:
    name = region_name(key)
    contributors = layout.region_contributors(key)
    if is_final(key):
        with work.load_block(contributors[0]) as arrays:
            return arrays[f"{name}.cls"], arrays[f"{name}.prob"]
    num = wsum = valid = None
    for block in contributors:  # fixed order: the float sums do not depend on who computed what
        with work.load_block(block) as arrays:
            if num is None:
                num, wsum = arrays[f"{name}.num"].copy(), arrays[f"{name}.wsum"].copy()
                valid = arrays[f"{name}.valid"]
            else:
                num += arrays[f"{name}.num"]
                wsum += arrays[f"{name}.wsum"]
    assert num is not None and wsum is not None and valid is not None
    return finish(num, wsum, valid)


def _add_stats(stats: ClassStats, cls: np.ndarray, areas: np.ndarray, k: int) -> None:
    """Add a region's pixel counts and areas (``areas``: m² per pixel of each of its rows)."""
    h = cls.shape[0]
    if h and cls.size and int(cls.max()) >= k:  # classes beyond the table: not counted
        cls = np.where(cls >= k, k, cls)
    # One bincount of (row, class + 1) pairs, then areas per row: ~3x faster than masking
    # the block and weighting every pixel (column 0 is nodata, column k + 1 beyond the table).
    width = k + 2
    pairs = (cls.astype(np.int64) - NO_CLASS) + np.arange(h, dtype=np.int64)[:, None] * width
    counts = np.bincount(pairs.ravel(), minlength=h * width).reshape(h, width)
    per_class = counts[:, 1 : k + 1]
    stats.nodata_pixels += int(counts[:, 0].sum())
    stats.pixels += per_class.sum(axis=0)
    if np.isfinite(areas).all():
        stats.area_m2 += areas @ per_class
    else:  # no CRS: NaN for the classes present, as a weighted count of NaN areas gives
        stats.area_m2 += np.where(per_class.any(axis=0), np.nan, 0.0)
