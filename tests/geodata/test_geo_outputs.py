"""Outputs that open right in GIS (issue #12), and true areas in every CRS (item 5).

A threshold model (class 1 where band 1 > 0.5) turns a generated square into a polygon of known
ground area, so areas are checked against a pyproj geodesic reference.
"""

from __future__ import annotations

import ctypes
import glob
import json
import os
import sqlite3
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import torch
from rasterio.transform import from_origin

from geocmid.cli import main
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from geocmid.recipes.styles import write_styles as recipe_write_styles
from tests.rasters import write_raster

SETTINGS = RunSettings(window=64, overlap=16, block_size=128)
CLASSES = [
    {"value": 0, "name": "background", "color": "#000000"},
    {"value": 1, "name": "field", "color": "#e6194b"},
    {"value": 2, "name": "forest", "color": "#3cb44b"},
]


class Threshold(torch.nn.Module):
    """Class 1 where band 1 > 0.5, class 2 where band 2 > 0.5, else background (0)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, 0:1], x[:, 1:2]
        return torch.cat([torch.zeros_like(a), 20 * (a - 0.5), 20 * (b - 0.5) - 1], dim=1)


def _card() -> dict:
    return {"bands": [1, 2], "in_chans": 2, "mean": [0.0, 0.0], "std": [1.0, 1.0],
            "classes": CLASSES}  # fmt: skip


def _predictor() -> Predictor:
    return Predictor(Threshold(), _card(), task="segmentation", background=0)


def _scene(path: Path, crs: str, origin: tuple[float, float], res: float, shape=(120, 140)):
    """Band 1: a square of ones (rows 20-80, cols 30-90); band 2: a strip (rows 90-110);
    a nodata corner (rows 0-10, cols 0-10, value -1 in both bands)."""
    data = np.zeros((2, *shape), np.float32)
    data[0, 20:80, 30:90] = 1.0
    data[1, 90:110, 10:130] = 1.0
    data[:, :10, :10] = -1.0
    return write_raster(path, data, crs=crs, origin=origin, res=res, nodata=-1.0)


def _geodesic_m2(polygon: shapely.Geometry, crs: str) -> float:
    """Reference: the polygon densified, carried to WGS 84 and measured by pyproj.Geod."""
    to_ll = pyproj.Transformer.from_crs(crs, 4326, always_xy=True)
    dense = shapely.segmentize(polygon, 1.0)
    ll = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(ll)[0])


@pytest.mark.parametrize(
    "crs, origin, res",
    [
        ("EPSG:3857", (1_113_195.0, 8_399_738.0), 25.0),  # Web Mercator at 60° N (x4 planar)
        ("EPSG:32633", (830_000.0, 7_000_000.0), 20.0),  # UTM 33N far east of its meridian
        ("EPSG:2154", (700_000.0, 6_600_000.0), 20.0),  # Lambert conformal conic (France)
    ],
    ids=["web-mercator-60N", "utm-zone-edge", "lambert-93"],
)
def test_areas_are_true_areas_in_projected_crs(tmp_path: Path, crs, origin, res) -> None:
    scene = _scene(tmp_path / "s.tif", crs, origin, res)
    result = predict_scene(
        _predictor(), [scene], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False), progress=False,
    )  # fmt: skip
    frame = gpd.read_file(result.outputs["vectors"], layer="polygons")
    field = frame[frame["class_name"] == "field"]
    assert len(field) == 1
    x0, y0 = origin
    square = shapely.box(x0 + 30 * res, y0 - 80 * res, x0 + 90 * res, y0 - 20 * res)
    assert field.geometry.iloc[0].equals_exact(square, 1e-6) or field.geometry.iloc[0].equals(
        square
    )
    reference = _geodesic_m2(square, crs)
    assert abs(field["area_m2"].iloc[0] / reference - 1) < 0.005
    # the summary's class areas (pixel areas) agree with the geodesic reference too
    summary = json.loads(Path(result.outputs["summary"]).read_text())
    areas = {c["name"]: c["area_m2"] for c in summary["classes"]}
    assert abs(areas["field"] / reference - 1) < 0.005
    # the column says how areas were measured
    with sqlite3.connect(result.outputs["vectors"]) as db:
        (text,) = db.execute(
            "SELECT description FROM gpkg_data_columns WHERE column_name = 'area_m2'"
        ).fetchone()
    assert "geodesic" in text
    if crs == "EPSG:3857":
        assert square.area / reference > 3.9, "the planar area would be ~4x the true one"


def test_min_area_filters_on_true_areas(tmp_path: Path) -> None:
    """In Web Mercator at 60° N (25 m pixels) the 60 x 60 px field is 56 ha of ground (225 ha
    planar) and the 20 x 120 px forest strip 37.5 ha (150 ha planar): --min-area 50 ha keeps
    the field and drops the forest, as the ground areas say (planar areas would keep both)."""
    scene = _scene(tmp_path / "s.tif", "EPSG:3857", (1_113_195.0, 8_399_738.0), 25.0)
    result = predict_scene(
        _predictor(), [scene], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False, min_area=500_000.0), progress=False,
    )  # fmt: skip
    frame = gpd.read_file(result.outputs["vectors"], layer="polygons")
    assert set(frame["class_name"]) == {"field"}


def test_equal_area_crs_keeps_planar_areas(tmp_path: Path) -> None:
    scene = _scene(tmp_path / "s.tif", "EPSG:3035", (4_300_000.0, 3_000_000.0), 10.0)
    result = predict_scene(
        _predictor(), [scene], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False), progress=False,
    )  # fmt: skip
    frame = gpd.read_file(result.outputs["vectors"], layer="polygons")
    field = frame[frame["class_name"] == "field"]
    assert field["area_m2"].iloc[0] == pytest.approx(60 * 60 * 100.0, rel=1e-9)


def _gdalinfo(path: Path) -> str:
    """``gdalinfo`` of ``path`` through the GDAL library rasterio itself loads."""
    import rasterio as rio

    libs = glob.glob(os.path.join(os.path.dirname(rio.__file__) + ".libs", "libgdal*.so*"))
    if not libs:
        pytest.skip("rasterio's GDAL library is not a separate file here")
    lib = ctypes.CDLL(libs[0])
    lib.GDALAllRegister()
    lib.GDALOpen.restype = ctypes.c_void_p
    lib.GDALOpen.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.GDALInfo.restype = ctypes.c_char_p
    lib.GDALInfo.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.GDALClose.argtypes = [ctypes.c_void_p]
    handle = lib.GDALOpen(str(path).encode(), 0)
    try:
        return lib.GDALInfo(handle, None).decode()
    finally:
        lib.GDALClose(handle)


def _predict_cli(tmp_path: Path, extra: list[str] = ()) -> Path:
    scene = _scene(tmp_path / "s.tif", "EPSG:32633", (500_000.0, 5_000_000.0), 10.0)
    folder = tmp_path / "model"
    folder.mkdir()
    torch.jit.script(Threshold()).save(str(folder / "model.pt"))
    (folder / "card.json").write_text(json.dumps(_card()))
    out = tmp_path / "out"
    args = ["predict", str(scene), "-o", str(out), "--model", str(folder / "model.pt"),
            "--card", str(folder / "card.json"), "--window", "64", "--overlap", "16",
            "--no-progress", "--probabilities", *extra]  # fmt: skip
    assert main(args) == 0
    return out


def test_class_cog_opens_with_names_and_transparent_background(tmp_path: Path) -> None:
    out = _predict_cli(tmp_path)
    cog = out / "s_classes.tif"
    info = _gdalinfo(cog)
    assert "Categories:" in info
    for value, name in ((0, "background"), (1, "field"), (2, "forest")):
        assert f"{value}: {name}" in info
    with rasterio.open(cog) as ds:
        colors = ds.colormap(1)
        nodata = int(ds.nodata)
        assert colors[0] == (230, 230, 230, 255), "background is light grey, not black"
        assert colors[1] == (230, 25, 75, 255) and colors[2] == (60, 180, 75, 255)
        assert nodata == 255, "declared nodata: transparent in GDAL and QGIS"
        cls = ds.read(1)
    # the QGIS style beside the file draws the background transparent
    qml = (out / "s_classes.qml").read_text()
    assert 'value="0" color="#000000" label="background" alpha="0"' in qml
    assert (cls[:10, :10] == nodata).all() and set(np.unique(cls)) == {0, 1, 2, nodata}


def test_probabilities_read_0_to_1_with_scales_applied(tmp_path: Path) -> None:
    out = _predict_cli(tmp_path)
    with rasterio.open(out / "s_probabilities.tif") as ds:
        raw = ds.read(masked=True).astype(np.float64)
        scales, offsets = np.array(ds.scales), np.array(ds.offsets)
        descriptions = ds.descriptions
        units = ds.tags()["UNITS"]
    probs = raw * scales[:, None, None] + offsets[:, None, None]
    valid = ~np.ma.getmaskarray(probs).any(axis=0)
    assert valid.sum() == 120 * 140 - 100
    values = probs.filled(np.nan)[:, valid]
    assert values.min() >= 0.0 and values.max() <= 1.0
    np.testing.assert_allclose(values.sum(axis=0), 1.0, atol=0.02)
    assert values[1].max() > 0.95, "the field square is class 1 with certainty"
    assert "0-1" in descriptions[0] and "0-1" in units


def test_gpkg_carries_its_qgis_style_and_predict_writes_the_recipe_styles(
    tmp_path: Path,
) -> None:
    out = _predict_cli(tmp_path)
    gpkg = out / "s.gpkg"
    with sqlite3.connect(gpkg) as db:
        rows = db.execute(
            "SELECT f_table_name, f_geometry_column, styleQML, useAsDefault FROM layer_styles"
        ).fetchall()
        [(layer, geometry)] = db.execute(
            "SELECT table_name, column_name FROM gpkg_geometry_columns"
        ).fetchall()
    assert len(rows) == 1
    table, column, qml, default = rows[0]
    assert (table, column, default) == (layer, geometry, 1)
    assert 'attr="class_name"' in qml and "field" in qml and "forest" in qml
    # the .qml files beside the outputs are exactly what the recipe's predict step writes
    beside = {p.name: p.read_text() for p in out.glob("*.qml")}
    assert set(beside) == {"s_classes.qml", "s.qml"}
    again = tmp_path / "again"
    again.mkdir()
    for name in ("s_classes.tif", "s.gpkg"):
        (again / name).write_bytes((out / name).read_bytes())
    recipe_write_styles(
        {"classes": again / "s_classes.tif", "vectors": again / "s.gpkg"}, CLASSES, "segmentation"
    )
    for name, text in beside.items():
        assert (again / name).read_text() == text
    assert 'value="0" color="#000000" label="background" alpha="0"' in beside["s_classes.qml"]
    # geometries are valid
    frame = gpd.read_file(gpkg, layer="polygons")
    assert frame.geometry.is_valid.all() and set(frame["class_name"]) == {"field", "forest"}


def test_geojson_follows_rfc_7946(tmp_path: Path) -> None:
    out = _predict_cli(tmp_path, ["--geojson"])
    doc = json.loads((out / "s.geojson").read_text())
    assert "crs" not in doc, "RFC 7946: no crs member, WGS 84 implied"
    assert "bbox" in doc
    for feature in doc["features"]:
        geom = shapely.geometry.shape(feature["geometry"])
        assert geom.is_valid
        for poly in getattr(geom, "geoms", [geom]):
            assert poly.exterior.is_ccw, "exterior rings counter-clockwise"
            assert all(not ring.is_ccw for ring in poly.interiors)
        coords = json.dumps(feature["geometry"]["coordinates"])
        numbers = coords.replace("]", ",").split(",")
        decimals = max(len(t.split(".")[1]) for t in numbers if "." in t)
        assert decimals <= 7, "10 m pixels: 7 decimals (1 cm) at most, not 15"
    frame = gpd.read_file(out / "s.geojson")
    gpkg = gpd.read_file(out / "s.gpkg", layer="polygons").to_crs(4326)
    a, b = frame.geometry.union_all(), gpkg.geometry.union_all()
    assert a.symmetric_difference(b).area < 1e-3 * b.area, "the same polygons, rounded"


def test_no_crs_scene_has_null_areas_and_says_so(tmp_path: Path) -> None:
    data = np.zeros((2, 40, 50), np.float32)
    data[0, 5:15, 5:25] = 1.0
    path = tmp_path / "bare.tif"
    with rasterio.open(path, "w", driver="GTiff", width=50, height=40, count=2, dtype="float32",
                       transform=from_origin(0, 40, 1, 1)) as ds:  # fmt: skip
        ds.write(data)
    result = predict_scene(
        _predictor(), [path], tmp_path / "out", settings=SETTINGS,
        options=OutputOptions(quicklook=False), progress=False,
    )  # fmt: skip
    frame = gpd.read_file(result.outputs["vectors"], layer="polygons")
    assert frame["area_m2"].isna().all()
    with sqlite3.connect(result.outputs["vectors"]) as db:
        (text,) = db.execute(
            "SELECT description FROM gpkg_data_columns WHERE column_name = 'area_m2'"
        ).fetchone()
    assert "NULL" in text
