"""Reading scenes on a common grid, one block extent at a time.

Every scene is a :class:`geocmid.data.sources.RasterSource`: a file path opens to
:func:`~geocmid.data.sources.file_source` (the file on its own grid), a catalog imagery entry to
:func:`~geocmid.data.sources.imagery_source` (band files, nodata override, ``assign_crs``, on
the entry's grid: exactly what training reads). One scene is read on its own grid. Two dated
scenes (change) are read on the grid of the first (``grid="first"``), of the second
(``"second"``) or on the first scene's grid cropped to the intersection of both extents
(``"intersection"``); files not on the target grid go through a WarpedVRT. Validity is the
source's rule (nodata values, GDAL alpha and dataset masks, NaN, what the files cover); for
several dates a pixel is valid where every date is, so areas outside one date are nodata.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from rasterio.enums import Resampling
from rasterio.warp import transform_bounds

from geocmid.data.sources import Grid, RasterSource, SourceReader, file_source
from geocmid.errors import ConfigError, DataError, ModelError
from geocmid.inference.card import ModelCard

GRID_CHOICES = ("first", "second", "intersection")
#: What a scene may be given as: a raster file, or a source (e.g. a catalog imagery entry's).
SceneInput = str | os.PathLike[str] | RasterSource

__all__ = [
    "GRID_CHOICES",
    "BlockReader",
    "Grid",
    "ScenePlan",
    "SceneSpec",
    "entry_sources",
    "plan_scenes",
    "select_bands",
]


@dataclass(frozen=True)
class SceneSpec:
    """How to read one date: its source on the plan's grid and the bands the model takes.

    ``bands`` are 1-based positions in ``source.bands`` (for a file: its band indexes), in model
    channel order.
    """

    source: RasterSource
    bands: tuple[int, ...]

    @property
    def path(self) -> str | None:
        """The raster file when the scene is one file holding its bands in order, else None."""
        return self.source.path

    @property
    def name(self) -> str:
        return self.source.name


@dataclass(frozen=True)
class ScenePlan:
    """The scenes of one prediction, checked, and the grid they are read on."""

    scenes: tuple[SceneSpec, ...]
    grid: Grid
    resampling: str = "bilinear"


def select_bands(
    source: RasterSource, card: ModelCard, where: str, override: tuple[int, ...] | None = None
) -> tuple[int, ...]:
    """1-based positions of ``source``'s bands to feed the model, in model channel order.

    ``override`` (user-chosen positions) wins; else band names in the card are matched against
    the source's band names (a file's band descriptions, an entry's ``bands``); else integer
    bands in the card are used when the image has exactly ``in_chans`` bands.
    """
    count = len(source.bands)
    mismatch = (
        f"the model expects {card.in_chans} band(s) {list(card.bands)} but the image has "
        f"{count} band(s)"
    )
    fix = "pass an image with the model's bands, or choose the bands to use (--bands 4,3,2)"
    if override is not None:
        indexes = tuple(int(b) for b in override)
        if len(indexes) != card.in_chans or not all(1 <= b <= count for b in indexes):
            raise ModelError(where, f"bands {list(indexes)} do not fit: {mismatch}", fix)
        return indexes
    wanted = card.bands
    names = [str(d).lower() if d else None for d in source.bands]
    if all(isinstance(b, str) for b in wanted) and any(names):
        missing = [b for b in wanted if str(b).lower() not in names]
        if missing:
            raise ModelError(
                where, f"has no band named {missing} (bands: {list(source.bands)})", fix
            )
        return tuple(names.index(str(b).lower()) + 1 for b in wanted)
    if count != card.in_chans:
        raise ModelError(where, mismatch, fix)
    if all(isinstance(b, int) for b in wanted) and sorted(wanted) == list(range(1, count + 1)):
        return tuple(int(b) for b in wanted)
    return tuple(range(1, count + 1))


def _source_of(scene: SceneInput) -> RasterSource:
    return scene if isinstance(scene, RasterSource) else file_source(scene)


def _where(scene: SceneInput) -> str:
    if isinstance(scene, RasterSource):
        return f"entry '{scene.name}'" if scene.path is None else scene.path
    return str(scene)


def plan_scenes(
    scenes: list[SceneInput],
    card: ModelCard,
    grid: str = "first",
    resampling: str = "bilinear",
    bands: tuple[int, ...] | None = None,
) -> ScenePlan:
    """Open and check the scenes, choose the grid, and say how each is read.

    Args:
        scenes: raster files or sources (one, or two dates for change).
        grid: for two dates, the grid they are read on (see :data:`GRID_CHOICES`).
        resampling: how a date not on the target grid is warped onto it.
        bands: 1-based band positions to use instead of the card's bands.

    Raises:
        DataError: a file is missing or unreadable, or two dates do not overlap.
        ModelError: the image bands do not match the model's bands.
    """
    if grid not in GRID_CHOICES:
        raise DataError("grid", f"'{grid}' is not a grid choice", f"use one of {GRID_CHOICES}")
    if resampling not in Resampling.__members__:
        raise DataError("resampling", f"'{resampling}' is unknown", "use e.g. bilinear, nearest")
    sources = [_source_of(s) for s in scenes]
    wheres = [_where(s) for s in scenes]
    selected = [select_bands(s, card, w, bands) for s, w in zip(sources, wheres, strict=True)]
    grids = [s.grid for s in sources]
    target = grids[1] if grid == "second" and len(grids) > 1 else grids[0]
    if len(grids) > 1:
        target = _check_overlap(wheres, grids, target, grid)
    specs = tuple(
        SceneSpec(s.on_grid(target, resampling), b) for s, b in zip(sources, selected, strict=True)
    )
    return ScenePlan(specs, target, resampling)


def _check_overlap(wheres: list[str], grids: list[Grid], target: Grid, choice: str) -> Grid:
    """Raise if the dates do not overlap; return the target grid (cropped for 'intersection')."""
    left, bottom, right, top = target.bounds
    for where, g in zip(wheres, grids, strict=True):
        if g.crs is None or target.crs is None:
            if not g.same_as(target):
                raise DataError(where, "has no CRS and a different grid", "georeference it")
            continue
        gl, gb, gr, gt = transform_bounds(g.crs, target.crs, *g.bounds, densify_pts=21)
        left, bottom, right, top = max(left, gl), max(bottom, gb), min(right, gr), min(top, gt)
    if left >= right or bottom >= top:
        raise DataError(
            f"{wheres[0]} and {wheres[1]}",
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


def entry_sources(catalog: Any, names: list[str]) -> list[RasterSource]:
    """The sources of catalog entries, as training reads them: one per imagery entry, two
    (before, after) for a bitemporal entry.

    Raises:
        ConfigError: an unknown name, or an entry that is not imagery or bitemporal.
        DataError: the entry's files do not fit it (checked as `catalog validate` does).
    """
    from geocmid.data.catalog import BitemporalEntry, ImageryEntry, validate
    from geocmid.data.sources import imagery_source

    sources: list[RasterSource] = []
    for name in names:
        entry = catalog.get(name)
        if isinstance(entry, BitemporalEntry):
            validate(entry, catalog)
            for key in (entry.before, entry.after):
                sources.append(imagery_source(catalog.get_kind(key, ImageryEntry)))
        elif isinstance(entry, ImageryEntry):
            validate(entry)
            sources.append(imagery_source(entry))
        else:
            raise ConfigError(
                f"--entry {name}",
                f"'{name}' is a {entry.kind} entry; predict reads imagery or bitemporal entries",
                "name an imagery entry (or a bitemporal one for change); "
                "`geocmid catalog list` shows each entry's kind",
            )
    return sources


class BlockReader:
    """Reads block extents of every date on the plan's grid. Not thread-safe: one per thread.

    Use as a context manager; :meth:`read` returns raw pixels ``[T, C, h, w]`` (T dates) and the
    valid mask ``[h, w]``.
    """

    def __init__(self, plan: ScenePlan) -> None:
        self.plan = plan
        self._readers: list[SourceReader] = []

    def __enter__(self) -> BlockReader:
        self._readers = [spec.source.reader() for spec in self.plan.scenes]
        return self

    def __exit__(self, *exc: object) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []

    def read(self, row0: int, row1: int, col0: int, col1: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw pixels ``[T, C, h, w]`` (native dtype) and validity ``[h, w]`` of grid rows
        ``[row0, row1)`` x cols ``[col0, col1)``."""
        h, w = row1 - row0, col1 - col0
        scenes = self.plan.scenes
        # Native dtype (uint8 is 4x smaller than float32): windows are converted one by one.
        dtype = np.result_type(*(r.dtype for r in self._readers))
        data = np.empty((len(scenes), len(scenes[0].bands), h, w), dtype)
        valid = np.ones((h, w), bool)
        for t, (spec, reader) in enumerate(zip(scenes, self._readers, strict=True)):
            pixels, ok = reader.read(row0, row1, col0, col1, bands=[b - 1 for b in spec.bands])
            data[t] = pixels
            valid &= ok
        return data, valid
