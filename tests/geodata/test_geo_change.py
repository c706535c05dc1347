"""Change maps: nodata wherever either date has no data (item 4 of issue #12), and vectors that
hold the classes a user asked for, the background / no-change class read from the model card
(item 7)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import torch
from rasterio.transform import from_origin
from rasterio.warp import transform_bounds

from geocmid.cli import main
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.rasters import write_raster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
import toymodels

SETTINGS = RunSettings(window=64, overlap=16, block_size=100)


def _change_predictor() -> Predictor:
    return Predictor(toymodels.PerPixelChange(seed=2), toymodels.card(), task="change")


def _always_change_predictor() -> Predictor:
    """A change model that says "change" (class 1) wherever it is asked."""

    class Always(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 2, *x.shape[-2:])
            out[:, 1] = 10.0
            return out

    return Predictor(Always(), toymodels.card(), task="change")


def test_second_date_covering_half_in_another_crs_is_nodata_elsewhere(tmp_path: Path) -> None:
    """Date 1: 100 x 120 px UTM 33N. Date 2: in EPSG:4326, covering only the east half (offset
    by 60 px). West of date 2's footprint every pixel is nodata, never "change"."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 100, 120)).astype(np.float32)
    d1 = write_raster(tmp_path / "d1.tif", a, origin=(500_000.0, 5_000_000.0), res=10.0)
    # date 2: the east half of date 1's extent, expressed in lon/lat on a ~10 m grid
    west, south, east, north = transform_bounds(
        "EPSG:32633", "EPSG:4326", 500_600.0, 4_999_000.0, 501_200.0, 5_000_000.0
    )
    res = 10.0 / 111_000.0
    width, height = round((east - west) / res), round((north - south) / res)
    b = rng.normal(size=(3, height, width)).astype(np.float32)
    d2 = write_raster(tmp_path / "d2.tif", b, crs="EPSG:4326", origin=(west, north), res=res)
    result = predict_scene(
        _always_change_predictor(), [d1, d2], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False), progress=False,
    )  # fmt: skip
    with rasterio.open(result.outputs["classes"]) as out:
        assert out.transform == from_origin(500_000.0, 5_000_000.0, 10.0, 10.0)
        cls = out.read(1)
        nodata = out.nodata
    west_half, east_half = cls[:, :58], cls[:, 62:]
    assert (west_half == nodata).all(), "no second-date data: nodata, not change"
    # the east half is covered except a pixel or so at the warped footprint's slanted edges
    assert (east_half[2:-2, :-2] == 1).all()
    assert result.summary["nodata_pixels"] >= 100 * 58
    assert abs(result.summary["nodata_pixels"] - 100 * 60) < 0.08 * 100 * 60
    polys = gpd.read_file(result.outputs["vectors"])
    assert polys.total_bounds[0] >= 500_000.0 + 57 * 10.0, "no change polygon in the west half"


def test_non_finite_pixels_of_either_date_are_nodata(tmp_path: Path) -> None:
    """Another cause of no data: NaN and ±inf in a float date (no nodata value declared)."""
    rng = np.random.default_rng(1)
    a = rng.normal(size=(3, 60, 80)).astype(np.float32)
    b = a + 0.1
    a[:, 5:15, 5:25] = np.nan  # 200 px in date 1
    b[:, 30:40, 40:50] = np.inf  # 100 px in date 2
    b[0, 50:52, 0:10] = -np.inf  # 20 px, one band only: the pixel has no valid value there
    d1 = write_raster(tmp_path / "d1.tif", a)
    d2 = write_raster(tmp_path / "d2.tif", b)
    result = predict_scene(
        _always_change_predictor(), [d1, d2], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False), progress=False,
    )  # fmt: skip
    with rasterio.open(result.outputs["classes"]) as out:
        cls, nodata = out.read(1), out.nodata
    assert (cls[5:15, 5:25] == nodata).all() and (cls[30:40, 40:50] == nodata).all()
    assert (cls[50:52, 0:10] == nodata).all()
    assert int((cls == nodata).sum()) == 200 + 100 + 20


def _write_model(folder: Path, classes: list[dict], extra: dict | None = None) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    model = toymodels.PerPixelChange(in_chans=3, classes=len(classes), seed=2)
    torch.jit.script(model).save(str(folder / "model.pt"))
    card = {**toymodels.card(in_chans=3, classes=len(classes)), "classes": classes, **(extra or {})}
    (folder / "card.json").write_text(json.dumps(card))
    return ["--model", str(folder / "model.pt"), "--card", str(folder / "card.json")]


def _pair(tmp_path: Path) -> list[str]:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 80, 90)).astype(np.float32)
    b = a.copy()
    b[:, 20:50, 30:70] += 3.0
    return [str(write_raster(tmp_path / "d1.tif", a)), str(write_raster(tmp_path / "d2.tif", b))]


FAST = ["--task", "change", "--window", "64", "--overlap", "16", "--no-progress"]


def test_oscd_coded_change_vectors_hold_change_only(tmp_path: Path) -> None:
    """OSCD codes 1 = no change, 2 = change: the vectors hold class 2 only (no --background)."""
    model = _write_model(
        tmp_path / "m", [{"value": 1, "name": "no change"}, {"value": 2, "name": "change"}]
    )
    out = tmp_path / "out"
    assert main(["predict", *_pair(tmp_path), "-o", str(out), *model, *FAST]) == 0
    [gpkg] = list(out.glob("*.gpkg"))
    frame = gpd.read_file(gpkg)
    with rasterio.open(next(out.glob("*_classes.tif"))) as ds:
        values = set(np.unique(ds.read(1))) - {ds.nodata}
    assert values == {1, 2}, "the map holds both classes"
    assert set(frame["class_value"]) == {2}, "the vectors hold the change class only"


def test_a_card_background_key_and_none_keep_class_zero(tmp_path: Path) -> None:
    """Class 0 named 'water' is a class of interest: no class is dropped by default; a card's
    own 'background' key is followed, and --background none keeps every class."""
    classes = [{"value": 0, "name": "water"}, {"value": 1, "name": "land"}]
    model = _write_model(tmp_path / "m", classes)
    args = [*_pair(tmp_path), *model, *FAST]
    assert main(["predict", *args, "-o", str(tmp_path / "a")]) == 0
    [gpkg] = list((tmp_path / "a").glob("*.gpkg"))
    assert set(gpd.read_file(gpkg)["class_value"]) == {1}, "change: channel 0 is no change"
    model_b = _write_model(tmp_path / "m2", classes, extra={"background": None})
    args_b = [*_pair(tmp_path), *model_b, *FAST]
    assert main(["predict", *args_b, "-o", str(tmp_path / "b")]) == 0
    [gpkg] = list((tmp_path / "b").glob("*.gpkg"))
    assert set(gpd.read_file(gpkg)["class_value"]) == {0, 1}, "the card says: no background"
    assert main(["predict", *args, "-o", str(tmp_path / "c"), "--background", "none"]) == 0
    [gpkg] = list((tmp_path / "c").glob("*.gpkg"))
    assert set(gpd.read_file(gpkg)["class_value"]) == {0, 1}
