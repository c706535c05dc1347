"""Catalog imagery and raster labels as TorchGeo :class:`RasterDataset` objects.

:class:`CatalogRasterDataset` adds three things to TorchGeo's reader:

* a **fast path**: a chip that lies inside one file already on the dataset's grid is read
  with one windowed read into a nodata-filled array, instead of going through
  ``rasterio.merge`` (which builds per-call VRTs and copies; see ``benchmarks/bench_chips.py``);
* files with a missing or wrong CRS (``assign_crs``) or no georeferencing at all
  (``reference_grid``: borrowed from the imagery they are pixel-aligned with);
* a ``valid`` mask (``[H, W]`` bool, False where all bands are nodata) in every sample.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rasterio.transform
import torch
from affine import Affine
from pyproj import CRS as PROJ_CRS
from rasterio.crs import CRS as RIO_CRS
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window
from torch import Tensor
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice

from geocmid.data.rasters import valid_pixels, valid_pixels_per_band

Sample = dict[str, Any]
#: Image types that ``native_dtype`` keeps as they are (torch collates them; floats are cast).
NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16))
#: Tolerance, in pixels, for calling a chip "on the file's grid".
GRID_TOLERANCE = 1e-3


class CatalogRasterDataset(RasterDataset):
    """A :class:`RasterDataset` over an explicit list of files.

    Args:
        files: raster files (for ``band_regex`` layouts: the first band's files).
        bands: band names in file order (or the ``{band}`` values of a one-file-per-band layout).
        crs: CRS to warp to (default: the first file's).
        res: resolution to warp to, in CRS units (default: the first file's).
        nodata: nodata value overriding the files' own (default: the files' own).
        is_image: True for imagery (``image`` key, float32), False for masks (``mask``, long).
        band_regex: for one file per band, a filename regex with a ``(?P<band>...)`` group.
        date_regex: filename regex with a ``(?P<date>...)`` group, parsed with ``date_format``.
        date_format: strptime format of the date group.
        date: acquisition date used when file names carry none.
        assign_crs: CRS to assume for every file (files that carry none or a wrong one).
        reference_grid: (crs, transform) for files with no georeferencing at all.
        transforms: applied to each sample after reading.
        native_dtype: keep 8/16-bit images in their file type (when chips are read on the grid)
            instead of float32: half or a quarter of the bytes through DataLoader workers; the
            consumer converts (e.g. :meth:`geocmid.data.stats.Normalize.batch`).
    """

    def __init__(
        self,
        files: Sequence[str | Path],
        *,
        bands: Sequence[str],
        crs: PROJ_CRS | RIO_CRS | str | None = None,
        res: float | tuple[float, float] | None = None,
        nodata: float | None = None,
        is_image: bool = True,
        band_regex: str | None = None,
        date_regex: str | None = None,
        date_format: str = "%Y%m%d",
        date: pd.Timestamp | None = None,
        assign_crs: RIO_CRS | None = None,
        reference_grid: tuple[RIO_CRS, Affine] | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        native_dtype: bool = False,
    ) -> None:
        self.all_bands = tuple(bands)
        self.is_image = is_image
        self.nodata = nodata
        self.separate_files = band_regex is not None
        self.filename_glob = "*"
        self.filename_regex = band_regex or date_regex or ".*"
        self.date_format = date_format
        if date is not None:
            self.mint, self.maxt = date, date + pd.Timedelta(days=1) - pd.Timedelta(1)
        self.assign_crs = assign_crs
        self.reference_grid = reference_grid
        self.post_transforms = transforms
        self.native_dtype = native_dtype
        if isinstance(crs, str | RIO_CRS):
            crs = PROJ_CRS.from_user_input(str(crs) if isinstance(crs, RIO_CRS) else crs)
        super().__init__(
            paths=[str(f) for f in files], crs=crs, res=res, bands=list(bands), cache=True
        )
        self._rio_crs = RIO_CRS.from_wkt(self.crs.to_wkt())
        self.nodata_value = nodata if nodata is not None else self._first_nodata()
        # One file per band: every band has its own nodata value and mask.
        self.band_nodata = (
            [self._band_nodata(band) for band in self.bands] if self.separate_files else None
        )

    # -- reading -------------------------------------------------------------------------

    def _first_nodata(self) -> float | None:
        with rasterio.open(self.index.filepath.iloc[0]) as src:
            return src.nodata

    def _band_nodata(self, band: str) -> float | None:
        if self.nodata is not None:
            return self.nodata
        with rasterio.open(self._update_filepath(band, self.index.filepath.iloc[0])) as src:
            return src.nodata

    def _load_warp_file(self, filepath: Path, crs: Any = None) -> DatasetReader | WarpedVRT:
        if self.assign_crs is None and self.reference_grid is None:
            return super()._load_warp_file(filepath, crs)
        src = rasterio.open(filepath)
        src_crs, src_transform = src.crs, src.transform
        if self.reference_grid is not None:
            src_crs, src_transform = self.reference_grid
        if self.assign_crs is not None:
            src_crs = self.assign_crs
        has_index = hasattr(self, "index")
        dst_crs = RIO_CRS.from_user_input(crs or self.crs) if crs or has_index else src_crs
        dst_transform, width, height, _ = self._compute_affine_warp_grid(
            src_crs, src_transform, src.width, src.height, dst_crs
        )
        if src_crs == dst_crs:
            dst_transform, width, height = src_transform, src.width, src.height
        extra = {"src_nodata": self.nodata} if self.nodata is not None else {}
        return WarpedVRT(
            src,
            crs=dst_crs,
            transform=dst_transform,
            width=width,
            height=height,
            src_crs=src_crs,
            src_transform=src_transform,
            **extra,
        )

    def _merge_or_stack(
        self,
        filepaths: Sequence[str],
        index: GeoSlice,
        band_indexes: Sequence[int] | None = None,
        out_crs: PROJ_CRS | None = None,
    ) -> Tensor:
        if not self.time_series:
            handles = [self._handle(f) for f in filepaths]
            data = self._read_on_grid(handles, index, band_indexes)
            if data is not None:
                # Convert in numpy: torch's intra-op threads cost more than they save on chips.
                return torch.from_numpy(data.astype(np.float32 if self.is_image else np.int64))
        return super()._merge_or_stack(filepaths, index, band_indexes, out_crs)

    def _handle(self, filepath: str) -> DatasetReader | WarpedVRT:
        """Open file handle on the dataset's CRS, cached per process.

        GDAL handles must not cross a fork: DataLoader workers inheriting the parent's open
        files share their file offsets and read corrupt blocks, so each process opens its own.
        """
        if getattr(self, "_handles_pid", None) != os.getpid():
            self._handles: dict[str, DatasetReader | WarpedVRT] = {}
            self._handles_pid = os.getpid()
        handle = self._handles.get(filepath)
        if handle is None:
            handle = rasterio.open(filepath)
            if self.assign_crs or self.reference_grid or handle.crs != self._rio_crs:
                handle.close()
                handle = self._load_warp_file(filepath, self.crs)
            # Else the plain file: a WarpedVRT on an identical grid (TorchGeo's way of overriding
            # nodata) decodes through the warper at ~3x the cost; nodata is applied on read.
            self._handles[filepath] = handle
        return handle

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_handles", None)
        state.pop("_handles_pid", None)
        return state

    def _grid_window(
        self, src: DatasetReader | WarpedVRT, index: GeoSlice
    ) -> tuple[int, int, int, int] | None:
        """(col, row, width, height) of the chip in ``src``'s pixels, if on its grid; else None."""
        x, y, _ = self._disambiguate_slice(index)
        t = src.transform
        if src.crs != self._rio_crs or t.b != 0 or t.d != 0:
            return None
        if not (
            math.isclose(x.step, t.a, rel_tol=1e-9) and math.isclose(y.step, -t.e, rel_tol=1e-9)
        ):
            return None
        exact = ((x.start - t.c) / t.a, (t.f - y.stop) / -t.e,
                 (x.stop - x.start) / x.step, (y.stop - y.start) / y.step)  # fmt: skip
        ints = tuple(round(v) for v in exact)
        if any(abs(v - i) > GRID_TOLERANCE for v, i in zip(exact, ints, strict=True)):
            return None
        return ints  # type: ignore[return-value]

    def _read_on_grid(
        self,
        handles: Sequence[DatasetReader | WarpedVRT],
        index: GeoSlice,
        band_indexes: Sequence[int] | None,
    ) -> np.ndarray | None:
        """Windowed reads when the chip is on every file's pixel grid, else None.

        Files are read in order; like ``rasterio.merge``'s default, the first file with data
        wins where files overlap, and pixels no file covers stay nodata.
        """
        windows = [self._grid_window(src, index) for src in handles]
        if any(w is None for w in windows):
            return None
        first = handles[0]
        _, _, width, height = windows[0]
        indexes = list(band_indexes) if band_indexes else list(range(1, first.count + 1))
        fill = self.nodata if self.nodata is not None else first.nodata
        fill = 0 if fill is None else fill
        col, row = windows[0][:2]
        inside = (
            col >= 0 and row >= 0 and col + width <= first.width and row + height <= first.height
        )
        # A chip inside the first file is overwritten entirely by its read: skip the fill pass.
        shape = (len(indexes), height, width)
        out = np.empty(shape, first.dtypes[0]) if inside else np.full(shape, fill, first.dtypes[0])
        for n, (src, (col, row, _, _)) in enumerate(zip(handles, windows, strict=True)):
            # Clip the chip to the file; the part outside stays nodata.
            c0, r0 = max(col, 0), max(row, 0)
            c1, r1 = min(col + width, src.width), min(row + height, src.height)
            if c1 <= c0 or r1 <= r0:
                continue
            window = Window(c0, r0, c1 - c0, r1 - r0)
            target = out[:, r0 - row : r1 - row, c0 - col : c1 - col]
            if n == 0:
                src.read(indexes, window=window, out=target)
                continue
            part = src.read(indexes, window=window).astype(out.dtype)
            empty = (target == fill).all(axis=0) & ~(part == fill).all(axis=0)
            target[:, empty] = part[:, empty]
        return out

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        # Recomputing total bounds costs ~1 ms per call and every query calls it several times.
        cached = getattr(self, "_bounds_cache", None)
        if cached is None or cached[0] is not self.index:
            cached = (self.index, super().bounds)
            self._bounds_cache = cached
        return cached[1]

    def _file_table(self) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
        """Paths, bounds ``[N, 4]`` and time intervals of the index as arrays (cached)."""
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached[0] is not self.index:
            bounds = self.index.geometry.bounds.to_numpy()
            mint = self.index.index.left.to_numpy().astype("datetime64[ns]")
            maxt = self.index.index.right.to_numpy().astype("datetime64[ns]")
            cached = (self.index, (list(self.index.filepath), bounds, mint, maxt))
            self._table_cache = cached
        return cached[1]

    def _read_fast(self, index: GeoSlice) -> Sample | None:
        """The sample through windowed reads, or None where TorchGeo's general path is needed.

        Selecting files with numpy instead of a GeoDataFrame query saves ~1 ms per chip, about
        as long as decoding a cached 256² chip.
        """
        if self.separate_files or self.time_series:
            return None
        x, y, t = self._disambiguate_slice(index)
        paths, bounds, mint, maxt = self._file_table()
        hit = (
            (bounds[:, 0] <= x.stop) & (bounds[:, 2] >= x.start)
            & (bounds[:, 1] <= y.stop) & (bounds[:, 3] >= y.start)
            & (mint <= np.datetime64(t.stop, "ns")) & (maxt >= np.datetime64(t.start, "ns"))
        )  # fmt: skip
        rows = np.flatnonzero(hit)
        if len(rows) == 0:
            raise IndexError(f"index: {index} not found in dataset with bounds: {self.bounds}")
        data = self._read_on_grid(
            [self._handle(paths[i]) for i in rows], (x, y, t), self.band_indexes
        )
        if data is None:
            return None
        transform = rasterio.transform.from_origin(x.start, y.stop, x.step, y.step)
        sample: Sample = {
            "bounds": self._slice_to_tensor((x, y, t)),
            "transform": torch.tensor(transform),
        }
        if self.is_image:
            # The valid mask is cheapest on the native (often 8/16-bit) values.
            sample["valid"] = self._valid_from_array(data)
            native = self.native_dtype and data.dtype in NATIVE_DTYPES
            sample["image"] = torch.from_numpy(data if native else data.astype(np.float32))
        else:
            sample["mask"] = torch.from_numpy(data.astype(np.int64)).squeeze(-3)
        return sample

    def _valid_from_array(self, data: np.ndarray) -> Tensor:
        # numpy: single-threaded and faster than torch on chip-sized arrays
        if self.band_nodata is not None:
            return torch.from_numpy(valid_pixels_per_band(data, self.band_nodata))
        return torch.from_numpy(valid_pixels(data, self.nodata_value))

    def __getitem__(self, index: GeoSlice) -> Sample:
        sample = self._read_fast(index) or super().__getitem__(index)
        if self.is_image and "valid" not in sample:
            sample["valid"] = self._valid_from_array(sample["image"].numpy())
        if self.post_transforms is not None:
            sample = self.post_transforms(sample)
        return sample


def band_regex_from_pattern(pattern: str) -> str:
    """Turn a ``band_files`` pattern (``'lsat7_2000_{band}.tif'``) into a filename regex."""
    name = Path(pattern).name
    before, after = name.split("{band}", 1)
    to_regex = lambda part: ".*".join(re.escape(p) for p in part.split("*"))  # noqa: E731
    return f"^{to_regex(before)}(?P<band>.+?){to_regex(after)}$"
