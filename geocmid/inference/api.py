"""Python API: predict from file paths or xarray DataArrays, get xarray / GeoDataFrames back.

>>> from geocmid.inference import Predictor, predict
>>> result = predict(Predictor(model, card, task="segmentation"), "scene.tif", "out/")
>>> result.classes.rio.crs, result.vectors.head()

Inputs may also be :class:`~geocmid.data.sources.RasterSource` objects, e.g. a catalog imagery
entry read as training reads it::

    from geocmid.data.catalog import Catalog
    from geocmid.data.sources import imagery_source
    predict(predictor, imagery_source(Catalog("data_catalog").get("s2-tile")), "out/")

Inputs that are DataArrays (``band, y, x`` with a rioxarray CRS and transform) are written to a
temporary GeoTIFF first, so every path goes through the same bounded-memory engine. Outputs are
loaded into memory only when they are small enough (``max_load_pixels``); otherwise use the paths
in ``result.outputs``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import xarray as xr

from geocmid.data.sources import RasterSource
from geocmid.errors import DataError
from geocmid.inference.engine import RunSettings
from geocmid.inference.predictor import Predictor
from geocmid.inference.run import OutputOptions, PredictionResult, predict_scene

Input = str | os.PathLike[str] | xr.DataArray | RasterSource


@dataclass
class Prediction:
    """Result of :func:`predict`: in-memory views (when small enough) and the written files."""

    result: PredictionResult
    classes: xr.DataArray | None = None
    probabilities: xr.DataArray | None = None
    vectors: gpd.GeoDataFrame | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def outputs(self) -> dict[str, Path]:
        return self.result.outputs

    @property
    def summary(self) -> dict[str, Any]:
        return self.result.summary


def predict(
    predictor: Predictor,
    inputs: Input | Sequence[Input],
    output: str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    window: int = 512,
    overlap: int = 64,
    block_size: int = 2048,
    batch_size: int = 8,
    tta: str = "none",
    options: OutputOptions | None = None,
    load: bool = True,
    max_load_pixels: int = 64_000_000,
    **kwargs: Any,
) -> Prediction:
    """Predict one scene (or a pair for change) and return xarray / GeoDataFrame outputs.

    Args:
        predictor: model, card and task.
        inputs: a path, DataArray or source (a catalog entry's), or two of them for change.
        output: folder for the files; ``None`` writes to a temporary folder that is removed
            after loading (the outputs must then fit ``max_load_pixels``).
        window, overlap, block_size, batch_size, tta: see :class:`RunSettings`.
        options: what to write besides the class raster (see :class:`OutputOptions`).
        load: load outputs as DataArrays / GeoDataFrame.
        max_load_pixels: largest raster (pixels x bands) loaded into memory.
        **kwargs: passed to :func:`predict_scene` (``grid``, ``bands``, ``overwrite``, ``part``,
            ``progress`` …).
    """
    single = str | os.PathLike | xr.DataArray | RasterSource
    items = [inputs] if isinstance(inputs, single) else list(inputs)
    settings = RunSettings(window, overlap, block_size, batch_size, tta)
    with tempfile.TemporaryDirectory(prefix="geocmid-") as tmp:
        paths = [_as_path(item, Path(tmp), n) for n, item in enumerate(items)]
        if name is None and any(isinstance(i, xr.DataArray) for i in items):
            name = "prediction"
        out = Path(output) if output is not None else Path(tmp) / "out"
        if output is None:
            load = True
            kwargs.setdefault("overwrite", True)
        result = predict_scene(predictor, paths, out, name, settings, options, **kwargs)
        prediction = Prediction(result)
        if load and result.complete:
            _load(prediction, max_load_pixels, must_fit=output is None)
    return prediction


def _as_path(item: Input, tmp: Path, n: int) -> str | RasterSource:
    if isinstance(item, RasterSource):
        return item
    if not isinstance(item, xr.DataArray):
        return str(item)
    if item.rio.crs is None:
        raise DataError(
            f"input {n + 1} (DataArray)",
            "has no CRS",
            "set one with da.rio.write_crs('EPSG:xxxx') before predicting",
        )
    array = item if "band" in item.dims else item.expand_dims("band")
    path = tmp / f"input{n + 1}.tif"
    array.rio.to_raster(path, tiled=True, blockxsize=256, blockysize=256)
    return str(path)


def _load(prediction: Prediction, max_pixels: int, must_fit: bool) -> None:
    import rioxarray

    for key in ("classes", "probabilities"):
        path = prediction.outputs.get(key)
        if path is None:
            continue
        with rioxarray.open_rasterio(path) as da:
            if da.size > max_pixels:
                if must_fit:
                    raise DataError(
                        str(path),
                        f"has {da.size} values, more than max_load_pixels={max_pixels}",
                        "pass an output folder and read the files, or raise max_load_pixels",
                    )
                continue
            loaded = da.load()
        if key == "classes":
            loaded = loaded.squeeze("band", drop=True)
        loaded.attrs["source"] = str(path)
        setattr(prediction, key, loaded)
    if "vectors" in prediction.outputs:
        prediction.vectors = gpd.read_file(prediction.outputs["vectors"])
