"""Reading scenes on a common grid, one block extent at a time.

One scene is read on its own grid. Two dated scenes (change) are read on the grid of the first
(``grid="first"``), of the second (``"second"``) or on the first scene's grid cropped to the
intersection of both extents (``"intersection"``); a scene whose grid differs from the target grid
goes through a :class:`rasterio.vrt.WarpedVRT`. A pixel is valid where any model band is valid
(GDAL masks: nodata, alpha, internal masks) and no band is NaN; for several dates, where every
date is valid, so areas outside one date's extent are nodata.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.vrt import WarpedVRT
from rasterio.warp import transform_bounds
from rasterio.windows import Window

from geocmid.data.rasters import open_raster
from geocmid.errors import DataError, ModelError
from geocmid.inference.card import ModelCard

GRID_CHOICES = ("first", "second", "intersection")


@dataclass(frozen=True)
class Grid:
    """A raster grid: CRS, affine transform and size in pixels."""

    crs: CRS | None
    transform: Affine
    width: int
    height: int

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(left, bottom, right, top)`` in CRS units (north-up grids)."""
        left, top = self.transform @ (0, 0)
        right, bottom = self.transform @ (self.width, self.height)
        return min(left, right), min(bottom, top), max(left, right), max(bottom, top)

    def same_as(self, other: Grid) -> bool:
        return (
            self.crs == other.crs
            and self.transform.almost_equals(other.transform, precision=1e-9)
            and (self.width, self.height) == (other.width, other.height)
        )


@dataclass(frozen=True)
class SceneSpec:
    """How to read one date: file, 1-based band indexes and where it sits on the target grid.

    ``offset`` is set when the file is pixel-aligned with the target grid (read directly with a
    pixel offset ``(row, col)``); otherwise the file is warped onto the grid.
    """

    path: str
    bands: tuple[int, ...]
    offset: tuple[int, int] | None


@dataclass(frozen=True)
class ScenePlan:
    """The scenes of one prediction, checked, and the grid they are read on."""

    scenes: tuple[SceneSpec, ...]
    grid: Grid
    resampling: str = "bilinear"


def _grid_of(src: Any) -> Grid:
    return Grid(src.crs, src.transform, src.width, src.height)


def select_bands(
    src: Any, card: ModelCard, path: str, override: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """1-based band indexes of ``src`` to feed the model, in model channel order.

    ``override`` (user-chosen indexes) wins; else band names in the card are matched against the
    raster's band descriptions; else integer bands in the card are used when the image has
    exactly ``in_chans`` bands.
    """
    mismatch = (
        f"the model expects {card.in_chans} band(s) {list(card.bands)} but the image has "
        f"{src.count} band(s)"
    )
    fix = "pass an image with the model's bands, or choose the bands to use (--bands 4,3,2)"
    if override is not None:
        indexes = tuple(int(b) for b in override)
        if len(indexes) != card.in_chans or not all(1 <= b <= src.count for b in indexes):
            raise ModelError(path, f"bands {list(indexes)} do not fit: {mismatch}", fix)
        return indexes
    wanted = card.bands
    names = [d.lower() if d else None for d in src.descriptions]
    if all(isinstance(b, str) for b in wanted) and any(names):
        missing = [b for b in wanted if str(b).lower() not in names]
        if missing:
            raise ModelError(path, f"has no band named {missing} (bands: {src.descriptions})", fix)
        return tuple(names.index(str(b).lower()) + 1 for b in wanted)
    if src.count != card.in_chans:
        raise ModelError(path, mismatch, fix)
    if all(isinstance(b, int) for b in wanted) and sorted(wanted) == list(range(1, src.count + 1)):
        return tuple(int(b) for b in wanted)
    return tuple(range(1, src.count + 1))


def plan_scenes(
    paths: list[str | os.PathLike[str]],
    card: ModelCard,
    grid: str = "first",
    resampling: str = "bilinear",
    bands: tuple[int, ...] | None = None,
) -> ScenePlan:
    """Open and check the scenes, choose the grid, and say how each is read.

    Raises:
        DataError: a file is missing or unreadable, or two dates do not overlap.
        ModelError: the image bands do not match the model's bands.
    """
    if grid not in GRID_CHOICES:
        raise DataError("grid", f"'{grid}' is not a grid choice", f"use one of {GRID_CHOICES}")
    if resampling not in Resampling.__members__:
        raise DataError("resampling", f"'{resampling}' is unknown", "use e.g. bilinear, nearest")
    grids, selected = [], []
    for path in paths:
        with open_raster(path) as src:
            grids.append(_grid_of(src))
            selected.append(select_bands(src, card, str(path), bands))
    target = grids[1] if grid == "second" and len(grids) > 1 else grids[0]
    if len(grids) > 1:
        target = _check_overlap(paths, grids, target, grid)
    specs = tuple(
        SceneSpec(str(p), b, _pixel_offset(g, target))
        for p, b, g in zip(paths, selected, grids, strict=True)
    )
    return ScenePlan(specs, target, resampling)


def _check_overlap(paths: list[Any], grids: list[Grid], target: Grid, choice: str) -> Grid:
    """Raise if the dates do not overlap; return the target grid (cropped for 'intersection')."""
    left, bottom, right, top = target.bounds
    for path, g in zip(paths, grids, strict=True):
        if g.crs is None or target.crs is None:
            if not g.same_as(target):
                raise DataError(str(path), "has no CRS and a different grid", "georeference it")
            continue
        gl, gb, gr, gt = transform_bounds(g.crs, target.crs, *g.bounds, densify_pts=21)
        left, bottom, right, top = max(left, gl), max(bottom, gb), min(right, gr), min(top, gt)
    if left >= right or bottom >= top:
        raise DataError(
            f"{paths[0]} and {paths[1]}",
            "the scenes do not overlap",
            "pass two dates of the same place (check their CRS and extents)",
        )
    if choice != "intersection":
        return target
    # Crop the first scene's grid to the intersection, outward to whole pixels.
    inv = ~target.transform
    cols, rows = zip(*(inv @ (x, y) for x in (left, right) for y in (bottom, top)), strict=True)
    c0, c1 = max(0, math.floor(min(cols) + 1e-6)), min(target.width, math.ceil(max(cols) - 1e-6))
    r0, r1 = max(0, math.floor(min(rows) + 1e-6)), min(target.height, math.ceil(max(rows) - 1e-6))
    return Grid(target.crs, target.transform @ Affine.translation(c0, r0), c1 - c0, r1 - r0)


def _pixel_offset(src: Grid, target: Grid) -> tuple[int, int] | None:
    """``(row, col)`` of the target's origin in ``src`` pixels if pixel-aligned, else ``None``."""
    if src.crs != target.crs:
        return None
    a, t = src.transform, target.transform
    same_scale = all(
        math.isclose(u, v, rel_tol=1e-9, abs_tol=1e-12)
        for u, v in ((a.a, t.a), (a.b, t.b), (a.d, t.d), (a.e, t.e))
    )
    if not same_scale:
        return None
    col, row = ~a @ (t.c, t.f)
    if abs(col - round(col)) > 1e-6 or abs(row - round(row)) > 1e-6:
        return None
    return round(row), round(col)


class BlockReader:
    """Reads block extents of every date on the plan's grid. Not thread-safe: one per thread.

    Use as a context manager; :meth:`read` returns raw pixels ``[T, C, h, w]`` (T dates) and the
    valid mask ``[h, w]``.
    """

    def __init__(self, plan: ScenePlan) -> None:
        self.plan = plan
        self._handles: list[Any] = []

    def __enter__(self) -> BlockReader:
        grid = self.plan.grid
        for spec in self.plan.scenes:
            src = rasterio.open(spec.path)
            self._handles.append(src)
            if spec.offset is None:
                vrt = WarpedVRT(
                    src,
                    crs=grid.crs,
                    transform=grid.transform,
                    width=grid.width,
                    height=grid.height,
                    resampling=Resampling[self.plan.resampling],
                    add_alpha=True,  # the alpha band marks pixels outside this date or nodata
                )
                self._handles.append(vrt)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in reversed(self._handles):
            handle.close()
        self._handles.clear()

    def _dataset(self, t: int) -> Any:
        # Handles are [src, (vrt)] per date in order; the last one of each date is what we read.
        k = 0
        for i, spec in enumerate(self.plan.scenes):
            step = 1 if spec.offset is not None else 2
            if i == t:
                return self._handles[k + step - 1]
            k += step
        raise IndexError(t)

    def read(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixels ``[T, C, h, w]`` (native dtype) and validity ``[h, w]`` of grid rows
        ``[row0, row1)`` x cols ``[col0, col1)``."""
        h, w = row1 - row0, col1 - col0
        n_bands = len(self.plan.scenes[0].bands)
        # Native dtype (uint8 is 4x smaller than float32): windows are converted one by one.
        dtype = np.result_type(*(self._dataset(t).dtypes[0] for t in range(len(self.plan.scenes))))
        data = np.zeros((len(self.plan.scenes), n_bands, h, w), dtype)
        valid = np.ones((h, w), bool)
        for t, spec in enumerate(self.plan.scenes):
            ds = self._dataset(t)
            dr, dc = spec.offset if spec.offset is not None else (0, 0)
            # Clip the request to the dataset; what lies outside stays invalid.
            r0, r1 = max(row0 + dr, 0), min(row1 + dr, ds.height)
            c0, c1 = max(col0 + dc, 0), min(col1 + dc, ds.width)
            date_valid = np.zeros((h, w), bool)
            if r0 < r1 and c0 < c1:
                window = Window(c0, r0, c1 - c0, r1 - r0)
                pixels = ds.read(list(spec.bands), window=window)
                masks = ds.read_masks(list(spec.bands), window=window)
                ok = masks.any(axis=0)
                if pixels.dtype.kind == "f":
                    ok &= ~np.isnan(pixels).any(axis=0)
                sl = (slice(r0 - dr - row0, r1 - dr - row0), slice(c0 - dc - col0, c1 - dc - col0))
                data[t][(slice(None), *sl)] = pixels
                date_valid[sl] = ok
            valid &= date_valid
        return data, valid
