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


#: Colour of the background / no-change class in class COGs: light grey (TIFF colour maps hold
#: no alpha; the QGIS style beside the file draws it transparent, and nodata is transparent
#: through the declared nodata value).
BACKGROUND_RGBA = (230, 230, 230, 255)


def category_names_xml(card: ModelCard) -> str:
    """GDAL PAM XML with the class names as band 1's category names (``gdalinfo``'s
    "Categories", QGIS's class labels): entry ``v`` names pixel value ``v``."""
    from xml.sax.saxutils import escape

    names = {c.value: c.name for c in card.classes}
    top = max(names) if names else -1
    entries = "".join(
        f"      <Category>{escape(names.get(v, ''))}</Category>\n" for v in range(top + 1)
    )
    return (
        "<PAMDataset>\n  <PAMRasterBand band=\"1\">\n    <CategoryNames>\n"
        f"{entries}    </CategoryNames>\n  </PAMRasterBand>\n</PAMDataset>\n"
    )


def write_class_cog(
    tmp_tif: Path,
    final: Path,
    card: ModelCard,
    tags: dict[str, str],
    background: int | None = None,
) -> Path:
    """Turn the assembled class GeoTIFF into the final COG with colour table and class names.

    The colour table gives every class its colour and the ``background`` class (no change) a
    light grey, not black (the ``.qml`` style draws it transparent); class names are GDAL
    category names (in ``FINAL.aux.xml``, which GDAL and QGIS read beside the file) and a
    ``CLASS_NAMES`` JSON tag.
    """
    names = {str(c.value): c.name for c in card.classes}
    with rasterio.open(tmp_tif, "r+") as ds:
        ds.update_tags(**tags)
        ds.update_tags(1, CLASS_NAMES=json.dumps(names))
        if background is not None:
            ds.update_tags(1, BACKGROUND_CLASS=str(background))
        ds.set_band_description(1, "class")
        if ds.dtypes[0] == "uint8":  # GDAL colour tables need 8-bit (or 16-bit) bands
            colors = {c.value: c.color for c in card.classes}
            if background is not None and background in colors:
                colors[background] = BACKGROUND_RGBA
            if ds.nodata is not None and 0 <= ds.nodata <= 255:
                colors.setdefault(int(ds.nodata), (0, 0, 0, 0))
            ds.write_colormap(1, colors)
            ds.colorinterp = [ColorInterp.palette]
    _to_cog(tmp_tif, final, "NEAREST")
    aux = final.with_name(final.name + ".aux.xml")
    with atomic_path(aux) as tmp:
        tmp.write_text(category_names_xml(card))
    return final


#: Scale of the probability COG: stored integers 0..100 (percent) times this is 0..1.
PROBABILITY_SCALE = 0.01


def write_probability_cog(
    tmp_tif: Path, final: Path, card: ModelCard, tags: dict[str, str]
) -> Path:
    """The probability COG: one uint8 band per class, nodata 255.

    Stored values are percent (0..100); every band carries scale 0.01 and offset 0, so the
    value with scales applied (rasterio ``ds.scales``, ``gdalinfo -unscale``, QGIS) is the
    probability 0..1, and the metadata says so (``UNITS`` and band descriptions).
    """
    with rasterio.open(tmp_tif, "r+") as ds:
        ds.update_tags(
            **tags, UNITS="probability 0-1 after scale (stored as percent 0-100, scale 0.01)"
        )
        for band, c in enumerate(card.classes, start=1):
            ds.set_band_description(band, f"probability of {c.name} (0-1 after scale)")
            ds.update_tags(band, CLASS_VALUE=str(c.value), CLASS_NAME=c.name)
        ds.scales = [PROBABILITY_SCALE] * ds.count
        ds.offsets = [0.0] * ds.count
    return _to_cog(tmp_tif, final, "AVERAGE")


def write_vectors(frame: Any, paths: dict[str, Path], layer: str) -> None:
    """Write ``frame`` to ``paths["vectors"]`` (GPKG, valid geometries, column descriptions)
    and, if asked, ``paths["geojson"]`` (RFC 7946: WGS 84, counter-clockwise exterior rings,
    antimeridian split, coordinates rounded to a tenth of the pixel size or finer)."""
    import warnings

    from geocmid.inference.areas import area_method
    from geocmid.inference.styles import describe_gpkg_columns

    frame = _valid_geometries(frame)
    with atomic_path(paths["vectors"]) as tmp, warnings.catch_warnings():
        # a scene without a CRS was announced once by predict; pyogrio's own note repeats it
        warnings.filterwarnings("ignore", "'crs' was not provided", UserWarning)
        frame.to_file(tmp, layer=layer, driver="GPKG", engine="pyogrio")
        describe_gpkg_columns(tmp, column_descriptions(area_method(frame.crs)))
    if "geojson" in paths:
        wgs84 = _valid_geometries(frame.to_crs(4326)) if frame.crs is not None else frame
        with atomic_path(paths["geojson"]) as tmp:
            wgs84.to_file(
                tmp, driver="GeoJSON", engine="pyogrio", RFC7946="YES",
                COORDINATE_PRECISION=geojson_precision(frame), WRITE_BBOX="YES",
            )  # fmt: skip


def column_descriptions(area_text: str) -> dict[str, str]:
    """Descriptions of the attribute columns geocmid writes (``gpkg_data_columns``)."""
    return {
        "class_value": "class value (as in the class raster)",
        "class_name": "class name (from the model card)",
        "area_m2": area_text,
        "mean_prob": "mean over the polygon's pixels of the probability of its class (0-1)",
        "pixels": "number of class-raster pixels in the polygon",
        "probability": "probability of the class (0-1)",
        "score": "detector score (0-1)",
        "valid_fraction": "fraction of the cell's pixels that hold data (0-1)",
    }


def geojson_precision(frame: Any) -> int:
    """Decimal places of degrees that resolve a tenth of the data's finest detail: the pixel
    size when known (the frame's ``pixels``/``area_m2``), else about 1 cm (7 places)."""
    import math

    import numpy as np

    if "pixels" in frame and "area_m2" in frame and len(frame):
        per_pixel = np.asarray(frame["area_m2"], float) / np.maximum(
            np.asarray(frame["pixels"], float), 1
        )
        per_pixel = per_pixel[np.isfinite(per_pixel) & (per_pixel > 0)]
        if len(per_pixel):
            pixel_m = math.sqrt(float(per_pixel.min()))
            degrees = pixel_m / 10 / 111_320.0
            return int(min(9, max(5, math.ceil(-math.log10(degrees)))))
    return 7


def _valid_geometries(frame: Any) -> Any:
    """The frame with invalid geometries repaired (``shapely.make_valid``, polygons kept)."""
    import shapely

    if not len(frame):
        return frame
    geoms = frame.geometry.to_numpy()
    bad = ~shapely.is_valid(geoms)
    if not bad.any():
        return frame
    frame = frame.copy()
    fixed = shapely.make_valid(geoms[bad])
    polygonal = [
        shapely.union_all([p for p in shapely.get_parts(g) if p.geom_type.endswith("Polygon")])
        if g.geom_type == "GeometryCollection"
        else g
        for g in fixed
    ]
    frame.loc[bad, frame.geometry.name] = polygonal
    return frame


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
