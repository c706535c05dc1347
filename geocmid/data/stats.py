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


log = logging.getLogger(__name__)


def _decimated_read(path: Path, nodata: float | None) -> np.ndarray:
    """``[C, N]`` valid pixel values of ``path`` read on a regular sub-grid."""
    with open_raster(path) as src:
        step = max(1, math.ceil(math.sqrt(src.width * src.height / PIXELS_PER_FILE)))
        shape = (src.count, max(1, src.height // step), max(1, src.width // step))
        data = src.read(out_shape=shape, resampling=Resampling.nearest).astype(np.float64)
        nodata = nodata if nodata is not None else src.nodata
    return data[:, valid_pixels(data, nodata)]


#: Statistics computed in this process, by files (with size and time) and reading settings:
#: catalog entries are re-read on every lookup, so callers cannot share the entry object.
_CACHE: dict[tuple[Any, ...], dict[str, Any]] = {}


def compute_stats(entry: ImageryEntry) -> dict[str, Any]:
    """Estimate per-band mean, std and 2/50/98th percentiles over the valid pixels of ``entry``.

    Each file is sampled on a regular grid of at most :data:`PIXELS_PER_FILE` pixels; nodata
    pixels (all bands equal nodata) are excluded. Repeated calls for unchanged files are free.
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
    if entry.band_files:
        # One file per band: each band has its own nodata mask, so pool per band.
        per_band = [
            np.concatenate([_decimated_read(f, entry.nodata)[0] for f in group])
            for group in entry.band_file_groups()
        ]
    else:
        scenes = [_decimated_read(f, entry.nodata) for f in entry.files()]
        per_band = list(np.concatenate(scenes, axis=1))
    if min(len(v) for v in per_band) == 0:
        from geocmid.errors import DataError

        raise DataError(entry.where, "holds no valid pixel (all nodata)", "check 'nodata'")
    p2, p50, p98 = (np.array([np.percentile(v, q) for v in per_band]) for q in (2, 50, 98))
    mean = np.array([v.mean() for v in per_band])
    std = np.array([v.std() for v in per_band])
    return {
        "bands": list(entry.bands),
        "mean": mean.round(6).tolist(),
        "std": np.maximum(std, 1e-6).round(6).tolist(),
        "p2": p2.tolist(),
        "p50": p50.tolist(),
        "p98": p98.tolist(),
        "pixels_sampled": int(max(len(v) for v in per_band)),
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
