"""Atomic output files: nothing appears under its final name before it is complete.

Every output is written under a hidden temporary name in the output folder and renamed into place
(``os.replace``, atomic on one filesystem). Rasters become Cloud-Optimised GeoTIFFs (tiled,
DEFLATE-compressed, with overviews) carrying a colour table, class names and provenance tags.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rasterio
import rasterio.shutil
from rasterio.enums import ColorInterp

from geocmid.errors import DataError
from geocmid.inference.card import ModelCard

#: GDAL settings for a run: a small block cache keeps memory flat whatever the scene size.
GDAL_ENV = {"GDAL_CACHEMAX": 32 * 2**20, "GDAL_NUM_THREADS": "ALL_CPUS"}  # bytes


def ensure_output_dir(out_dir: str | os.PathLike[str]) -> Path:
    """Create the output folder if needed and check it is writable (raise :class:`DataError`)."""
    path = Path(out_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".geocmid-write-test"):
            pass
    except OSError as error:
        raise DataError(
            str(path),
            f"is not a writable folder ({error.strerror or error})",
            "choose an output folder you can write to (--output DIR)",
        ) from error
    return path


def refuse_existing(paths: list[Path], overwrite: bool) -> None:
    """Raise :class:`DataError` if an output exists and ``overwrite`` is False."""
    existing = [p for p in paths if p.exists()]
    if existing and not overwrite:
        raise DataError(
            str(existing[0]),
            "already exists"
            + (f" (and {len(existing) - 1} more output(s))" if len(existing) > 1 else ""),
            "choose another --output folder or --name, or pass --overwrite to replace them",
        )


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` when the block succeeds."""
    for stale in final.parent.glob(f".{final.stem}.partial-*{final.suffix}"):
        stale.unlink(missing_ok=True)  # left by a killed run
    tmp = final.with_name(f".{final.stem}.partial-{os.getpid()}{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def provenance_tags(card: ModelCard, config: dict[str, Any]) -> dict[str, str]:
    """Dataset tags naming the model card, the settings and the geocmid version (no timestamps,
    so a resumed run writes the same bytes as an uninterrupted one)."""
    from geocmid import __version__

    return {
        "GEOCMID_VERSION": __version__,
        "GEOCMID_MODEL_CARD": json.dumps(card.to_dict(), sort_keys=True, default=str),
        "GEOCMID_CONFIG": json.dumps(config, sort_keys=True, default=str),
    }


def write_class_cog(tmp_tif: Path, final: Path, card: ModelCard, tags: dict[str, str]) -> Path:
    """Turn the assembled class GeoTIFF into the final COG with colour table and class names."""
    names = {str(c.value): c.name for c in card.classes}
    with rasterio.open(tmp_tif, "r+") as ds:
        ds.update_tags(**tags)
        ds.update_tags(1, CLASS_NAMES=json.dumps(names))
        ds.set_band_description(1, "class")
        if ds.dtypes[0] == "uint8":  # GDAL colour tables need 8-bit (or 16-bit) bands
            ds.write_colormap(1, {c.value: c.color for c in card.classes})
            ds.colorinterp = [ColorInterp.palette]
    return _to_cog(tmp_tif, final, "NEAREST")


def write_probability_cog(
    tmp_tif: Path, final: Path, card: ModelCard, tags: dict[str, str]
) -> Path:
    """The probability COG: one uint8 band per class in percent (scale 0.01), nodata 255."""
    with rasterio.open(tmp_tif, "r+") as ds:
        ds.update_tags(**tags, UNITS="percent")
        for band, c in enumerate(card.classes, start=1):
            ds.set_band_description(band, f"probability of {c.name} (%)")
            ds.update_tags(band, CLASS_VALUE=str(c.value), CLASS_NAME=c.name)
        ds.scales = [0.01] * ds.count
    return _to_cog(tmp_tif, final, "AVERAGE")


def _to_cog(src: Path, final: Path, resampling: str) -> Path:
    with atomic_path(final) as tmp:
        rasterio.shutil.copy(
            src,
            tmp,
            driver="COG",
            COMPRESS="DEFLATE",
            PREDICTOR="YES",
            BLOCKSIZE=512,
            OVERVIEW_RESAMPLING=resampling,
            BIGTIFF="IF_SAFER",
        )
    return final
