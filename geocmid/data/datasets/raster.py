"""Catalog imagery and raster labels as TorchGeo :class:`RasterDataset` objects.

:class:`CatalogRasterDataset` reads through a :class:`geocmid.data.sources.RasterSource` (the
grid, band order, nodata and resampling that prediction uses too) and adds to TorchGeo's reader:

* a **fast path**: a chip on the source's pixel lattice is read with windowed reads of the files
  on that grid (plain reads, or a WarpedVRT onto the grid for files at another resolution or CRS:
  one file per band at mixed resolutions included) instead of going through ``rasterio.merge``
  (which builds per-call VRTs and copies; see ``benchmarks/bench_chips.py``); other chips take
  TorchGeo's general path;
* files with a missing or wrong CRS (``assign_crs``) or no georeferencing at all
  (``reference_grid``: borrowed from the imagery they are pixel-aligned with);
* a ``valid`` mask (``[H, W]`` bool, False where there is no data) in every sample.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import rasterio
import rasterio.errors
import torch
from affine import Affine
from pyproj import CRS as PROJ_CRS
from rasterio.crs import CRS as RIO_CRS
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from torch import Tensor
from torch.utils.data import get_worker_info
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import GeoSlice

from geocmid.data.rasters import valid_pixels, valid_pixels_per_band
from geocmid.data.sampling import ChipBatch
from geocmid.data.sources import (
    RasterSource,
    SourceReader,
    band_path,
    band_regex_from_pattern,
    build_source,
    file_georeferencing,
)
from geocmid.errors import DataError

Sample = dict[str, Any]
#: Image types that ``native_dtype`` keeps as they are (torch collates them; floats are cast).
NATIVE_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16), np.dtype(np.int16))
#: Tolerance, in pixels, for calling a chip "on the source's grid".
GRID_TOLERANCE = 1e-3

__all__ = ["CatalogRasterDataset", "band_regex_from_pattern"]


class CatalogRasterDataset(RasterDataset):
    """A :class:`RasterDataset` over a :class:`RasterSource` (or an explicit list of files).

    Args:
        files: raster files (for ``band_regex`` layouts: the first band's files); unused when
            ``source`` is given.
        bands: band names in file order (or the ``{band}`` values of a one-file-per-band layout).
        crs: CRS to warp to (default: the first file's).
        res: resolution to warp to, in CRS units (default: the finest band's / first file's).
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
        source: the source to read (:func:`geocmid.data.sources.imagery_source`); replaces
            ``files`` … ``reference_grid``.
    """

    def __init__(
        self,
        files: Sequence[str | Path] = (),
        *,
        bands: Sequence[str] = (),
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
        source: RasterSource | None = None,
    ) -> None:
        if source is None:
            source = build_source(
                files,
                bands=bands,
                band_regex=band_regex,
                filename_regex=date_regex,
                crs=crs,
                res=res,
                nodata=nodata,
                assign_crs=assign_crs,
                reference_grid=reference_grid,
                is_image=is_image,
                date_format=date_format,
            )
        self.source = source
        self.all_bands = tuple(str(b) for b in source.bands)
        self.is_image = is_image
        self.nodata = source.nodata_override
        self.separate_files = source.separate
        self.filename_glob = "*"
        self.filename_regex = source.filename_regex
        self.date_format = date_format
        if date is not None:
            self.mint, self.maxt = date, date + pd.Timedelta(days=1) - pd.Timedelta(1)
        self.assign_crs = source.assign_crs
        self.reference_grid = source.reference_grid
        self.post_transforms = transforms
        self.native_dtype = native_dtype
        grid = source.grid
        super().__init__(
            paths=list(source.keys),
            crs=PROJ_CRS.from_wkt(grid.crs.to_wkt()) if grid.crs is not None else None,
            res=grid.res,
            bands=list(self.all_bands),
            cache=True,
        )
        self._layer_of = {key: n for n, key in enumerate(source.keys)}
        self.nodata_value = source.nodata[0]
        # One file per band: every band has its own nodata value and mask.
        self.band_nodata = list(source.nodata) if self.separate_files else None

    # -- reading -------------------------------------------------------------------------

    @property
    def reader(self) -> SourceReader:
        """This process's reader of the source (GDAL handles must not cross a fork)."""
        reader = getattr(self, "_reader", None)
        if reader is None or getattr(self, "_reader_pid", None) != os.getpid():
            reader = self.source.reader()
            self._reader, self._reader_pid = reader, os.getpid()
        return reader

    def _update_filepath(self, band: str, filepath: str) -> str:
        return band_path(self.filename_regex, band, filepath)

    def _filepath_to_timestamp(self, filepath: str) -> tuple[pd.Timestamp, pd.Timestamp]:
        """The date in the file's name (``date_pattern`` searched anywhere in it, the format
        found among common ones: :func:`geocmid.data.sources.parse_date`), else the entry's."""
        found = self.source.file_date(filepath) if hasattr(self, "source") else None
        if found is None:
            return self.mint, self.maxt
        return found

    def _load_warp_file(self, filepath: Path, crs: Any = None) -> DatasetReader | WarpedVRT:
        """The file warped to the dataset's CRS, placed as every reader places it
        (:func:`geocmid.data.sources.file_georeferencing`: ``align_with`` grid, geotransform,
        the north-up pixel grid of a file without georeferencing, ``assign_crs``)."""
        with warnings.catch_warnings():  # files without georeferencing: placed below
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            src = rasterio.open(filepath)
        try:
            src_crs, src_transform = file_georeferencing(src, self.assign_crs, self.reference_grid)
        except Exception:
            src.close()
            raise
        if src_crs is None:
            src.close()
            raise DataError(str(filepath), "has no CRS", "set 'assign_crs' in its catalog entry")
        own = src_crs == src.crs and src_transform == src.transform
        has_index = hasattr(self, "index")
        dst_crs = RIO_CRS.from_user_input(crs or self.crs) if crs or has_index else src_crs
        if own and dst_crs == src_crs:
            return src
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

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.pop("_reader", None)
        state.pop("_reader_pid", None)
        return state

    def chip_window(self, index: GeoSlice) -> tuple[int, int, int, int] | None:
        """``(row0, row1, col0, col1)`` of the chip on the source's grid if on its pixel
        lattice (same resolution, whole-pixel offset), else None."""
        x, y, _ = self._disambiguate_slice(index)
        return self._grid_window(x, y)

    def _grid_window(self, x: slice, y: slice) -> tuple[int, int, int, int] | None:
        """:meth:`chip_window` of resolved x/y slices (the per-chip hot path)."""
        coefficients = self._grid_coefficients()
        if coefficients is None:
            return None
        a, c, e, f = coefficients
        if not (math.isclose(x.step, a, rel_tol=1e-9) and math.isclose(y.step, -e, rel_tol=1e-9)):
            return None
        exact = ((f - y.stop) / -e, (f - y.start) / -e, (x.start - c) / a, (x.stop - c) / a)
        ints = tuple(round(v) for v in exact)
        if any(abs(v - i) > GRID_TOLERANCE for v, i in zip(exact, ints, strict=True)):
            return None
        return ints  # type: ignore[return-value]

    def _grid_coefficients(self) -> tuple[float, float, float, float] | None:
        """``(a, c, e, f)`` of the source grid's north-up transform while the dataset is in the
        grid's CRS, else None (cached per index: Affine attribute access costs µs each)."""
        cached = getattr(self, "_coef_cache", None)
        if cached is None or cached[0] is not self.index:
            t = self.source.grid.transform
            ok = self._on_source_crs() and t.b == 0 and t.d == 0
            cached = (self.index, (t.a, t.c, t.e, t.f) if ok else None)
            self._coef_cache = cached
        return cached[1]

    def _on_source_crs(self) -> bool:
        """Whether the dataset is still in its source grid's CRS (TorchGeo's dataset unions and
        intersections may set another ``crs``, which re-projects the index); cached per index."""
        cached = getattr(self, "_crs_cache", None)
        if cached is None or cached[0] is not self.index:
            same = RIO_CRS.from_wkt(self.crs.to_wkt()) == self.source.grid.crs
            cached = (self.index, same)
            self._crs_cache = cached
        return cached[1]

    @property
    def bounds(self) -> tuple[slice, slice, slice]:
        # Recomputing total bounds costs ~1 ms per call and every query calls it several times.
        cached = getattr(self, "_bounds_cache", None)
        if cached is None or cached[0] is not self.index:
            cached = (self.index, super().bounds)
            self._bounds_cache = cached
        return cached[1]

    def _file_table(self) -> tuple[list[str], np.ndarray, tuple[Any, Any] | None, Any]:
        """Paths, spatial test table and time intervals of the index (cached per index).

        Returns ``(paths, table [N, 4], (earliest, latest) ns or None, (mint, maxt))``: a file
        touches the box ``x``/``y`` when ``(table <= [x.stop, y.stop, -x.start, -y.start])``
        holds on all four columns; the time test is skipped for queries spanning every file's
        interval (``earliest``/``latest``; the usual case).
        """
        cached = getattr(self, "_table_cache", None)
        if cached is None or cached[0] is not self.index:
            b = self.index.geometry.bounds.to_numpy()
            table = np.stack([b[:, 0], b[:, 1], -b[:, 2], -b[:, 3]], axis=1)
            mint = self.index.index.left.to_numpy().astype("datetime64[ns]")
            maxt = self.index.index.right.to_numpy().astype("datetime64[ns]")
            # as int nanoseconds: comparing pd.Timestamps costs ~40 µs a chip
            span = None
            if len(mint):
                span = (int(mint.min().astype(np.int64)), int(maxt.max().astype(np.int64)))
            cached = (self.index, (list(self.index.filepath), table, span, (mint, maxt)))
            self._table_cache = cached
        return cached[1]

    def _bounds_tensor(self, x: slice, y: slice, t: slice) -> Tensor:
        """TorchGeo's ``_slice_to_tensor`` of resolved slices (``[9]`` float32)."""
        return torch.tensor(self._bounds_list(x, y, t))

    def _bounds_list(self, x: slice, y: slice, t: slice) -> list[Any]:
        """The 9 values of :meth:`_bounds_tensor`, the time part cached (converting Timestamps
        costs more than the rest of the sample's metadata)."""
        cached = getattr(self, "_time_cache", None)
        if cached is None or cached[0] != (t.start, t.stop, t.step):
            cached = ((t.start, t.stop, t.step), [t.start.timestamp(), t.stop.timestamp(), t.step])
            self._time_cache = cached
        return [x.start, x.stop, x.step, y.start, y.stop, y.step, *cached[1]]

    def _chip_window(self, index: GeoSlice) -> tuple[slice, slice, slice, Any] | None:
        """``(x, y, t, window)`` of a query on the source's pixel lattice, or None where
        TorchGeo's general path is needed (off the lattice, time series)."""
        if self.time_series:
            return None
        x, y, t = self._disambiguate_slice(index)
        window = self._grid_window(x, y)
        return None if window is None else (x, y, t, window)

    def _chip_layers(self, hit: np.ndarray, t: slice, index: GeoSlice) -> list[int] | None:
        """Source layers of the files a chip touches: ``hit`` ``[N]`` is the spatial test of
        the file table, narrowed here by the query's time; None where a file is not one of
        the source's layers.

        Raises:
            IndexError: no file under the query (TorchGeo's message).
        """
        paths, _, span, (mint, maxt) = self._file_table()
        if span is None or not (t.start.value <= span[0] and span[1] <= t.stop.value):
            start, stop = np.datetime64(t.start, "ns"), np.datetime64(t.stop, "ns")
            hit = hit & (mint <= stop) & (maxt >= start)
        rows = np.flatnonzero(hit)
        if len(rows) == 0:
            raise IndexError(f"index: {index} not found in dataset with bounds: {self.bounds}")
        layers = [self._layer_of.get(paths[i]) for i in rows]
        return None if any(n is None for n in layers) else layers  # type: ignore[return-value]

    def _read_fast(self, index: GeoSlice) -> Sample | None:
        """The sample through the source's windowed reads, or None where TorchGeo's general
        path is needed (chips off the source's pixel lattice, time series).

        Every step is kept to numpy on cached tables and plain floats: at ~0.1 ms a cached
        256² chip, a GeoDataFrame query, Affine objects or Timestamp conversions per chip
        would each cost as much as the read (``benchmarks/bench_chips.py``).
        """
        chip = self._chip_window(index)
        if chip is None:
            return None
        x, y, t, window = chip
        _, table, _, _ = self._file_table()
        hit = (table <= np.array([x.stop, y.stop, -x.start, -y.start])).all(axis=1)
        layers = self._chip_layers(hit, t, index)
        if layers is None:
            return None
        data, valid = self.reader.read(*window, layers=layers)
        transform = _transform_list(x, y)
        sample: Sample = {
            "bounds": self._bounds_tensor(x, y, t),
            "transform": torch.tensor(transform),
        }
        if self.is_image:
            sample["valid"] = torch.from_numpy(valid)
            native = self.native_dtype and data.dtype in NATIVE_DTYPES
            # Convert in numpy: torch's intra-op threads cost more than they save on chips.
            sample["image"] = torch.from_numpy(data if native else data.astype(np.float32))
        else:
            sample["mask"] = torch.from_numpy(data.astype(np.int64)).squeeze(-3)
        return sample

    def __getitems__(self, indexes: Sequence[GeoSlice]) -> Sequence[Sample]:
        """The samples of a batch of queries, read into one preallocated array per key.

        torch's DataLoader calls this (with a batch sampler) instead of ``__getitem__`` per
        query. When every chip takes the windowed fast path (imagery on the source's pixel
        lattice, all chips of one size, no sample transforms), the batch is read with one
        file-table test, one output array per key (in shared memory inside a DataLoader worker,
        so the batch crosses to the main process without a copy) and no per-sample dicts:
        a :class:`~geocmid.data.sampling.ChipBatch` of ``bounds [B, 9]`` and ``transform
        [B, 9]`` (float32), ``valid [B, H, W]`` (bool) and ``image [B, C, H, W]`` (the file
        dtype with ``native_dtype``, else float32), equal bit for bit to stacking the samples
        ``__getitem__`` returns. Otherwise (and in subclasses that read samples their own way,
        e.g. :class:`~geocmid.data.datasets.labels.ClassMaskDataset`):
        ``[self[q] for q in indexes]``.
        """
        own = type(self).__getitem__ is CatalogRasterDataset.__getitem__
        batch = self._read_batch(indexes) if own else None
        return [self[q] for q in indexes] if batch is None else batch

    def _read_batch(self, indexes: Sequence[GeoSlice]) -> ChipBatch | None:
        """:meth:`__getitems__`'s batch, or None where a chip needs the per-sample path."""
        if not indexes or not self.is_image or self.post_transforms is not None:
            return None
        resolved = []
        for index in indexes:
            chip = self._chip_window(index)
            if chip is None:
                return None
            resolved.append(chip)
        r0, r1, c0, c1 = resolved[0][3]
        shape = (r1 - r0, c1 - c0)
        if any((w[1] - w[0], w[3] - w[2]) != shape for *_, w in resolved):
            return None  # chips of several sizes: stacking them fails as it would per sample
        _, table, _, _ = self._file_table()
        # the file test of every chip at once: [B, 4] query boxes against [N, 4] files
        boxes = np.array([[x.stop, y.stop, -x.start, -y.start] for x, y, _, _ in resolved])
        hits = (table[None, :, :] <= boxes[:, None, :]).all(axis=2)
        reads = []
        for (_, _, t, window), hit, index in zip(resolved, hits, indexes, strict=True):
            layers = self._chip_layers(hit, t, index)
            if layers is None:
                return None
            reads.append((window, layers))
        reader = self.reader
        native = self.native_dtype and reader.dtype in NATIVE_DTYPES
        count, size = len(indexes), len(self.source.bands)
        image = _batch_tensor((count, size, *shape), reader.dtype)
        valid = _batch_tensor((count, *shape), np.dtype(bool))
        image_np, valid_np = image.numpy(), valid.numpy()
        for i, (window, layers) in enumerate(reads):
            reader.read_into(image_np[i], valid_np[i], *window, layers=layers)
        # bounds and transform as __getitem__ builds them (torch.tensor of Python floats:
        # float32), one tensor each for the batch
        bounds = torch.tensor([self._bounds_list(x, y, t) for x, y, t, _ in resolved])
        transform = torch.tensor([_transform_list(x, y) for x, y, _, _ in resolved])
        if not native:  # as __getitem__: converted in numpy, one array for the batch
            image = torch.from_numpy(image_np.astype(np.float32))
        return ChipBatch({"bounds": bounds, "transform": transform, "valid": valid, "image": image})

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


def _transform_list(x: slice, y: slice) -> list[float]:
    """``rasterio.transform.from_origin(x.start, y.stop, x.step, y.step)`` as TorchGeo stores
    it (the 9 Affine coefficients), built directly: Affine objects per chip cost as much as a
    cached read."""
    return [x.step, 0.0, x.start, 0.0, -y.step, y.stop, 0.0, 0.0, 1.0]


#: numpy dtype → torch dtype of the batch arrays :func:`_batch_tensor` allocates.
_TORCH_DTYPES = {
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.uint16): torch.uint16,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.float32): torch.float32,
    np.dtype(bool): torch.bool,
}


def _batch_tensor(shape: tuple[int, ...], dtype: np.dtype) -> Tensor:
    """An uninitialised tensor of ``shape`` (numpy ``dtype``) to read a batch into.

    Inside a DataLoader worker it lives in shared memory, as torch's ``default_collate``
    allocates its batches there: the worker sends a handle, not a copy of the chips. Elsewhere
    numpy allocates it (wrapped by ``torch.from_numpy``): numpy asks for transparent huge pages
    on arrays of megabytes, and a fresh ``torch.empty`` batch cost ~20 µs a 256² chip more in
    page faults (``benchmarks/bench_chips.py``, 0 workers, warm).
    """
    torch_dtype = _TORCH_DTYPES.get(np.dtype(dtype))
    if torch_dtype is None or get_worker_info() is None:
        return torch.from_numpy(np.empty(shape, dtype))
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    storage = torch.UntypedStorage._new_shared(nbytes)
    return torch.empty(0, dtype=torch_dtype).set_(storage).view(shape)
