"""Per-band statistics of an imagery entry, for normalisation, and the normalising transform."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rasterio.enums import Resampling

from geocmid.data.catalog.schema import ImageryEntry
from geocmid.data.rasters import open_raster, valid_pixels

#: Pixels read per file at most; files are read decimated (overviews when present).
PIXELS_PER_FILE = 1_000_000
#: A decimated read with fewer valid pixels than this (a sparse raster: valid data in a small
#: part of a large extent) is completed from the file's valid blocks at full resolution.
SPARSE_PIXELS = 10_000
#: Pixels read at most while looking for the valid blocks of a sparse file.
BLOCK_BUDGET = 16_000_000
#: A band with fewer finite valid pixels than this has no usable statistics.
MIN_VALID_PIXELS = 100


log = logging.getLogger(__name__)


def _valid_columns(data: np.ndarray, nodata: float | None) -> np.ndarray:
    """``[C, N]`` values of the valid pixels of ``data [C, H, W]`` (float64; non-finite values
    stay and are dropped per band later)."""
    return data[:, valid_pixels(data, nodata)].astype(np.float64)


def _decimated_read(path: Path, nodata: float | None) -> np.ndarray:
    """:func:`_sample_file`; a file GDAL cannot read is a :class:`DataError` naming it."""
    from rasterio._err import CPLE_BaseError
    from rasterio.errors import RasterioError

    from geocmid.errors import DataError

    try:
        return _sample_file(path, nodata)
    except (RasterioError, CPLE_BaseError) as error:
        cause = error.__cause__ or error.__context__ or error
        raise DataError(
            str(path), f"cannot be read ({str(cause).strip()[:200]}): truncated or corrupt?",
            f"check it with `gdalinfo -checksum {path}`; re-download or re-export it",
        ) from None  # fmt: skip


def _sample_file(path: Path, nodata: float | None) -> np.ndarray:
    """``[C, N]`` valid pixel values of ``path``: a regular sub-grid of at most
    :data:`PIXELS_PER_FILE` pixels (overviews when present) and, when that holds fewer than
    :data:`SPARSE_PIXELS` valid pixels, full-resolution reads of the file's blocks, those near
    the valid pixels found first (sparse rasters)."""
    with open_raster(path) as src:
        step = max(1, math.ceil(math.sqrt(src.width * src.height / PIXELS_PER_FILE)))
        shape = (src.count, max(1, src.height // step), max(1, src.width // step))
        data = src.read(out_shape=shape, resampling=Resampling.nearest)
        nodata = nodata if nodata is not None else src.nodata
        values = _valid_columns(data, nodata)
        if step == 1 or values.shape[1] >= SPARSE_PIXELS:
            return values
        # sparse: read whole blocks where data are, then the others, within a budget
        hits = valid_pixels(data, nodata)
        rows, cols = np.nonzero(hits)
        bh, bw = src.block_shapes[0]
        near = {
            (int(r * src.height / shape[1]) // bh, int(c * src.width / shape[2]) // bw)
            for r, c in zip(rows, cols, strict=True)
        }
        windows = [w for _, w in src.block_windows(1)]
        first = [w for w in windows if (w.row_off // bh, w.col_off // bw) in near]
        rest = [w for w in windows if (w.row_off // bh, w.col_off // bw) not in near]
        order = np.random.default_rng(0).permutation(len(rest))
        chunks, found, read = [], 0, 0
        for window in [*first, *(rest[i] for i in order)]:
            if found >= PIXELS_PER_FILE or read >= BLOCK_BUDGET:
                break
            block = _valid_columns(src.read(window=window), nodata)
            read += int(window.width * window.height)
            if block.shape[1]:
                chunks.append(block)
                found += block.shape[1]
        if found > values.shape[1]:
            log.debug("%s: sparse raster, %d valid pixels from its blocks", path, found)
            return np.concatenate(chunks, axis=1)
        return values


#: Statistics computed in this process, by files (with size and time) and reading settings:
#: catalog entries are re-read on every lookup, so callers cannot share the entry object.
_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def compute_stats(entry: ImageryEntry) -> dict[str, Any]:
    """Estimate per-band mean, std and 2/50/98th percentiles over the valid pixels of ``entry``.

    Each file is sampled on a regular grid of at most :data:`PIXELS_PER_FILE` pixels (sparse
    files, whose grid hits fewer than :data:`SPARSE_PIXELS` valid pixels, by their valid blocks
    at full resolution). Nodata pixels (all bands equal nodata) are excluded, and each band's
    reductions ignore its non-finite values (NaN, ±inf): the statistics are those of the finite
    valid pixels. Repeated calls for unchanged files are free.

    Returns:
        ``{"bands", "mean", "std", "p2", "p50", "p98", "pixels_sampled"}`` (raw units; lists
        of one float per band).

    Raises:
        DataError: a band with fewer than :data:`MIN_VALID_PIXELS` finite valid pixels (named).
    """
    files = entry.files()
    key = (
        tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files),
        entry.nodata,
        tuple(entry.bands),
        entry.band_files,
    )
    if key not in _CACHE:
        _CACHE[key] = _estimate(entry)
    return json.loads(json.dumps(_CACHE[key]))  # a copy callers may change


def _estimate(entry: ImageryEntry) -> dict[str, Any]:
    from geocmid.errors import DataError

    if entry.band_files:
        # One file per band: each band has its own nodata mask, so pool per band.
        per_band = [
            np.concatenate([_decimated_read(f, entry.nodata)[0] for f in group])
            for group in entry.band_file_groups()
        ]
    else:
        scenes = [_decimated_read(f, entry.nodata) for f in entry.files()]
        per_band = list(np.concatenate(scenes, axis=1))
    if max((len(v) for v in per_band), default=0) == 0:
        raise DataError(entry.where, "holds no valid pixel (all nodata)", "check 'nodata'")
    finite = [v[np.isfinite(v)] for v in per_band]
    for band, values, raw in zip(entry.bands, finite, per_band, strict=False):
        if len(values) < MIN_VALID_PIXELS:
            raise DataError(
                f"{entry.where}, band '{band}'",
                f"has {len(values)} finite valid pixel(s) among the {len(raw)} sampled (the "
                f"rest is nodata, NaN or ±inf); at least {MIN_VALID_PIXELS} are needed for "
                "its statistics",
                "check the band's data and the entry's 'nodata', or drop the band",
            )
    p2, p50, p98 = (np.array([np.percentile(v, q) for v in finite]) for q in (2, 50, 98))
    mean = np.array([v.mean() for v in finite])
    std = np.array([v.std() for v in finite])
    return {
        "bands": list(entry.bands),
        "mean": mean.round(6).tolist(),
        "std": np.maximum(std, 1e-6).round(6).tolist(),
        "p2": p2.tolist(),
        "p50": p50.tolist(),
        "p98": p98.tolist(),
        "pixels_sampled": int(max(len(v) for v in finite)),
    }


def write_stats(stats: dict[str, Any], path: Path) -> None:
    """Write statistics JSON atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(stats, indent=2))
    tmp.replace(path)


class Normalize:
    """Sample transform: ``(image - mean) / std`` per band, nodata pixels set to 0 (the mean).

    Works on ``image`` of shape ``[C, H, W]`` or ``[T, C, H, W]``; uses ``valid`` when present.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.scale = 1.0 / np.asarray(std, dtype=np.float32)[:, None, None]

    @classmethod
    def from_entry(cls, entry: ImageryEntry) -> Normalize | None:
        if not entry.stats:
            return None
        return cls(entry.stats["mean"], entry.stats["std"])

    def __call__(self, sample: dict[str, Any]) -> dict[str, Any]:
        # numpy, in place: torch's intra-op threads cost more than they save on chip-sized arrays.
        image = sample["image"].numpy().astype(np.float32, copy=True)
        image -= self.mean
        image *= self.scale
        if "valid" in sample:
            image[..., ~sample["valid"].numpy()] = 0.0
        if np.isnan(image.sum()):  # cheaper than nan_to_num on the (usual) NaN-free chip
            np.nan_to_num(image, copy=False)
        sample["image"] = torch.from_numpy(image)
        return sample

    def batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Normalise a collated batch in place (on its device): ``image`` ``[B, C, H, W]``.

        Normalising after the transfer keeps the per-chip loader work to reading, which is
        what bounds pretraining throughput on CPU workers.
        """
        image = batch["image"].float()  # chips may travel in their 8/16-bit file type
        mean = torch.as_tensor(self.mean, device=image.device)
        scale = torch.as_tensor(self.scale, device=image.device)
        image = (image - mean) * scale
        if "valid" in batch:
            image = image * batch["valid"].unsqueeze(-3).to(image.dtype)
        batch["image"] = torch.nan_to_num(image)
        return batch


def entry_normalizer(entry: ImageryEntry) -> Normalize:
    """Normalisation from the entry's stored statistics (computed now, with a warning, if none)."""
    if not entry.stats:
        log.warning(
            "%s has no statistics; estimating them now. Store them once with "
            "`geocmid catalog stats %s`.", entry.where, entry.name,
        )  # fmt: skip
        entry.stats = compute_stats(entry)
    return Normalize(entry.stats["mean"], entry.stats["std"])
