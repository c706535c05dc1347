"""Opening rasters with plain-worded errors, and reading their metadata cheaply."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.errors
from rasterio.crs import CRS
from rasterio.io import DatasetReader

from geocmid.errors import DataError


def open_raster(path: str | Path) -> DatasetReader:
    """Open a raster with rasterio, turning GDAL's failures into a :class:`DataError`.

    GDAL virtual paths and URLs (:mod:`geocmid.data.paths`) go to GDAL untouched.
    """
    from geocmid.data.paths import is_virtual

    virtual = is_virtual(path)
    path = os.fspath(path) if virtual else Path(path)
    if not virtual and not Path(path).exists():
        raise DataError(str(path), "file not found", "check the path in the catalog entry")
    try:
        with warnings.catch_warnings():
            # Un-georeferenced masks and folder images are legitimate; validation reports them.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            return rasterio.open(path)
    except rasterio.errors.RasterioIOError as error:
        raise DataError(
            str(path),
            f"cannot be read as a raster ({error})",
            "the file is corrupt, truncated or not a raster; re-export it (e.g. gdal_translate)",
        ) from None


#: Blocks read per file by :func:`check_readable` (first, last and spread between).
SAMPLE_BLOCKS = 8


def check_readable(path: str | Path, blocks: int = SAMPLE_BLOCKS) -> None:
    """Read a sample of ``path``'s blocks (the first, the last and some between, every band),
    so that a truncated or corrupt file fails here with one clear line, not in the middle of
    training or prediction.

    Raises:
        DataError: a block cannot be read (naming the file and the block).
    """
    with open_raster(path) as src:
        windows = [w for _, w in src.block_windows(1)]
        if not windows:
            return
        count = min(blocks, len(windows))
        picks = sorted({round(i) for i in np.linspace(0, len(windows) - 1, count)})
        for i in picks:
            window = windows[i]
            try:
                src.read(window=window)
            except rasterio.errors.RasterioIOError as error:
                raise DataError(
                    str(path),
                    f"is truncated or corrupt: block {i + 1} of {len(windows)} (rows "
                    f"{window.row_off}-{window.row_off + window.height}) cannot be read "
                    f"({str(error).splitlines()[0][:120]})",
                    "copy or download the file again, or re-export it (e.g. gdal_translate); "
                    "check it with gdalinfo -checksum",
                ) from None


def georeferencing_kind(src: DatasetReader) -> str:
    """How an open raster is placed on the ground.

    ``"transform"``: a geotransform (north-up, rotated or south-up as the file says);
    ``"gcps"`` / ``"rpcs"``: ground control points or rational polynomial coefficients only (no
    geotransform: the pixels must be warped to be on any grid); ``"none"``: nothing at all
    (a plain PNG/JPEG without a world file), which GDAL reports as the identity transform.
    """
    if not src.transform.is_identity:
        return "transform"
    if src.gcps[0]:
        return "gcps"
    if src.rpcs is not None:
        return "rpcs"
    return "none"


def refuse_unwarped(path: str | Path, kind: str, crs: CRS | None = None) -> DataError:
    """The error for a raster georeferenced by GCPs or RPCs only (one rule for every command:
    geocmid reads rasters on a grid, and warping through GCPs/RPCs is GDAL's job)."""
    what = "ground control points" if kind == "gcps" else "RPC coefficients"
    target = f" -t_srs {crs_label(crs)}" if crs is not None else " -t_srs EPSG:XXXX"
    flag = " -rpc" if kind == "rpcs" else ""
    stem = Path(path).with_suffix("").name
    return DataError(
        str(path),
        f"is georeferenced by {what} only (no geotransform), so its pixels lie on no grid",
        f"warp it onto a north-up grid first, e.g. gdalwarp{flag}{target} -r bilinear "
        f"{path} {stem}_warped.tif, and use the warped file",
    )


@dataclass(frozen=True)
class RasterInfo:
    """What `catalog show` and the validators need to know about one raster file."""

    path: Path
    width: int
    height: int
    count: int
    dtype: str
    crs: CRS | None
    res: tuple[float, float]
    bounds: tuple[float, float, float, float]
    nodata: float | None
    georeferenced: bool
    georeferencing: str = "transform"


def raster_info(path: str | Path) -> RasterInfo:
    """Read the header of one raster (no pixel data; a remote file's header only)."""
    from geocmid.data.paths import as_path

    with open_raster(path) as src:
        kind = georeferencing_kind(src)
        georeferenced = src.crs is not None and kind == "transform"
        return RasterInfo(
            path=as_path(path),  # a GDAL virtual path / URL kept as written
            width=src.width,
            height=src.height,
            count=src.count,
            dtype=src.dtypes[0],
            crs=src.crs,
            res=(abs(src.res[0]), abs(src.res[1])),
            bounds=tuple(src.bounds),
            nodata=src.nodata,
            georeferenced=georeferenced,
            georeferencing=kind,
        )


def valid_pixels(array: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[..., H, W]`` bool: True where the pixel of ``array [..., C, H, W]`` holds data.

    A pixel is nodata when every band equals ``nodata`` (GDAL's per-dataset mask), or when any
    band is not finite (NaN, +inf, -inf): a model cannot take such a pixel, whatever the file
    declares.
    """
    floating = array.dtype.kind == "f"
    if nodata is None or math.isnan(nodata):
        invalid = np.zeros(array.shape[:-3] + array.shape[-2:], bool)
    else:
        # Test one band first: most chips hold no nodata, so the other bands are rarely read.
        invalid = array[..., 0, :, :] == nodata
        if invalid.any() and array.shape[-3] > 1:
            invalid &= (array[..., 1:, :, :] == nodata).all(axis=-3)
    if floating:
        invalid |= ~np.isfinite(array).all(axis=-3)
    return ~invalid


def valid_pixels_per_band(array: np.ndarray, nodata: Sequence[float | None]) -> np.ndarray:
    """``[..., H, W]`` bool: True where no band equals its own nodata value (one file per band)
    and every band is finite."""
    floating = array.dtype.kind == "f"
    invalid = ~np.isfinite(array).all(axis=-3) if floating else np.zeros(array.shape[-2:], bool)
    for band, value in enumerate(nodata):
        if value is not None and not math.isnan(value):
            invalid |= array[..., band, :, :] == value
    return ~invalid


def crs_label(crs: CRS | None) -> str:
    """Short CRS name for people: ``EPSG:32618``, or the WKT's name with its EPSG equivalent."""
    if crs is None:
        return "none"
    if crs.to_epsg(confidence_threshold=100):
        return f"EPSG:{crs.to_epsg(confidence_threshold=100)}"
    from pyproj import CRS as PROJ_CRS

    proj = PROJ_CRS.from_wkt(crs.to_wkt())
    epsg = proj.to_epsg(min_confidence=70)
    return proj.name + (f" (equivalent to EPSG:{epsg})" if epsg else "")


def parse_crs(value: str | None, where: str) -> CRS | None:
    """Parse a user-given CRS (``EPSG:32633``, WKT, PROJ string) with a clear error."""
    if value is None:
        return None
    try:
        return CRS.from_user_input(value)
    except rasterio.errors.CRSError:
        raise DataError(
            where, f"{value!r} is not a known CRS", "use an EPSG code such as 'EPSG:32633'"
        ) from None
