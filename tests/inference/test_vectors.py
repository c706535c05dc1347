"""Polygons merged across block borders, geodesic areas, detections merged across windows."""

from __future__ import annotations

import numpy as np
import pyproj
import pytest
import rasterio
import shapely
import torch
import toymodels
from rasterio.transform import from_origin

from geocmid.inference import OutputOptions, Predictor, RunSettings, predict, predict_scene
from geocmid.inference.detections import merge_boxes
from tests.inference.conftest import write_scene


def threshold_model() -> torch.nn.Module:
    """Per-pixel: class 1 where band 1 > 0.5."""
    model = toymodels.PerPixel(in_chans=1)
    with torch.no_grad():
        model.conv.weight[:] = torch.tensor([[-10.0], [10.0]]).view(2, 1, 1, 1)
        model.conv.bias[:] = torch.tensor([5.0, -5.0])
    return model


def ring_scene(tmp_path, crs="EPSG:32618", transform=None):
    data = np.zeros((1, 200, 260), np.float32)
    data[0, 30:170, 40:220] = 1.0  # a ring crossing several block borders ...
    data[0, 60:140, 80:180] = 0.0  # ... with a hole
    data[0, 5:15, 5:15] = 1.0  # and a small square inside one block
    return write_scene(tmp_path / "ring.tif", data, crs=crs, transform=transform)


def test_polygons_cross_block_borders_as_one(tmp_path):
    predictor = Predictor(threshold_model(), toymodels.card(in_chans=1))
    path = ring_scene(tmp_path)
    result = predict_scene(
        predictor,
        [path],
        tmp_path / "out",
        settings=RunSettings(64, 16, 64),
        options=OutputOptions(geojson=True, quicklook=True),
        progress=False,
    )
    from geocmid.inference import vectorize

    frame = vectorize.polygons(
        result.outputs["classes"], _prob(result, tmp_path), predictor.model_card, 0, block=50
    )  # vectorise in 50 px blocks: the ring is cut by many block borders
    assert len(frame) == 2
    ring = frame.sort_values("area_m2").iloc[-1]
    expected = shapely.box(500400, 4000000 - 1700, 502200, 4000000 - 300).difference(
        shapely.box(500800, 4000000 - 1400, 501800, 4000000 - 600)
    )
    assert ring.geometry.symmetric_difference(expected).area == 0
    # UTM is not equal-area: areas are geodesic (planar / 0.9992 near the central meridian)
    true_ring, true_square = _geodesic(expected), _geodesic(shapely.box(0, 0, 100, 100))
    assert ring.area_m2 == pytest.approx(true_ring, rel=1e-9)
    assert ring.area_m2 / expected.area == pytest.approx(1 / 0.9996**2, rel=1e-4)
    assert ring.pixels == expected.area / 100
    assert 0.99 <= ring.mean_prob <= 1.0 and ring.class_name == "class1"
    import geopandas as gpd

    written = gpd.read_file(result.outputs["vectors"])
    assert len(written) == 2 and written.crs == "EPSG:32618"
    assert gpd.read_file(result.outputs["geojson"]).crs == "EPSG:4326"
    table = {c["name"]: c for c in result.summary["classes"]}
    assert table["class1"]["objects"] == 2
    assert table["class1"]["area_m2"] == pytest.approx(true_ring + true_square, rel=1e-4)


def _geodesic(polygon: shapely.Geometry, crs: str = "EPSG:32618") -> float:
    """pyproj.Geod area of a polygon given in ``crs`` (densified to 1 m, carried to WGS 84)."""
    import pyproj

    to_ll = pyproj.Transformer.from_crs(crs, 4326, always_xy=True)
    dense = shapely.segmentize(polygon, 1.0)
    ll = shapely.transform(dense, lambda xy: np.column_stack(to_ll.transform(xy[:, 0], xy[:, 1])))
    return abs(pyproj.Geod(ellps="WGS84").geometry_area_perimeter(ll)[0])


def _prob(result, tmp_path):
    # Probabilities were not requested: write them again next to the class raster for the check.
    with rasterio.open(result.outputs["classes"]) as ds:
        profile = ds.profile | {"count": 2, "dtype": "uint8", "nodata": 255}
        data = np.full((2, ds.height, ds.width), 100, np.uint8)
    path = tmp_path / "prob.tif"
    with rasterio.open(path, "w", **{k: v for k, v in profile.items() if k != "photometric"}) as ds:
        ds.write(data)
    return path


def test_areas_are_geodesic_in_a_geographic_crs(tmp_path):
    # 0.01° pixels at 60°N: a degree of longitude is half as long there as at the equator.
    transform = from_origin(10.0, 61.0, 0.01, 0.01)
    predictor = Predictor(threshold_model(), toymodels.card(in_chans=1))
    path = ring_scene(tmp_path, crs="EPSG:4326", transform=transform)
    prediction = predict(
        predictor, path, tmp_path / "out", window=64, overlap=16, block_size=64, progress=False
    )
    ring = prediction.vectors.sort_values("area_m2").iloc[-1]
    geod = pyproj.Geod(ellps="WGS84")
    expected = abs(geod.geometry_area_perimeter(shapely.segmentize(ring.geometry, 0.01))[0])
    assert abs(ring.area_m2 - expected) / expected < 1e-9
    equal_area = prediction.vectors.to_crs("EPSG:6933").area.max()  # cylindrical equal-area
    assert abs(ring.area_m2 - equal_area) / equal_area < 2e-3
    outer = abs(geod.polygon_area_perimeter([10.4, 12.2, 12.2, 10.4], [60.7, 60.7, 59.3, 59.3])[0])
    assert abs(ring.area_m2 / outer - (1 - 1.0 * 0.8 / (1.8 * 1.4))) < 0.01
    # The summary areas integrate the per-row geodesic pixel area.
    class1 = next(c for c in prediction.summary["classes"] if c["name"] == "class1")
    assert abs(class1["area_m2"] - prediction.vectors["area_m2"].sum()) / class1["area_m2"] < 1e-5
    # xarray output on the input grid
    with rasterio.open(path) as src:
        assert prediction.classes.rio.crs == src.crs
        assert prediction.classes.rio.transform() == src.transform
        assert prediction.classes.shape == (src.height, src.width)


def test_boxes_cut_by_window_borders_come_out_once(tmp_path):
    ids = np.zeros((1, 300, 300), np.float32)
    truth = {
        1: (50, 60, 80, 100),
        2: (110, 100, 150, 180),
        3: (230, 10, 290, 40),
        4: (170, 170, 230, 230),
    }
    for k, (x0, y0, x1, y1) in truth.items():
        ids[0, y0:y1, x0:x1] = k
    path = write_scene(tmp_path / "ids.tif", ids)
    card = toymodels.card(in_chans=1) | {"classes": ["background", "tree"]}
    predictor = Predictor(toymodels.IdDetector(), card, task="detection")
    # 128 px windows, 32 px overlap: objects 2 and 4 straddle window borders (4 crosses four).
    result = predict(
        predictor, path, tmp_path / "out", window=128, overlap=32, block_size=128, progress=False
    )
    frame = result.vectors
    assert len(frame) == len(truth)
    found = sorted(tuple(np.round(g.bounds, 6)) for g in frame.geometry)
    expected = sorted(
        (500000 + x0 * 10, 4000000 - y1 * 10, 500000 + x1 * 10, 4000000 - y0 * 10)
        for x0, y0, x1, y1 in truth.values()
    )
    assert found == expected
    assert set(frame["class_name"]) == {"tree"} and np.allclose(frame["score"], 0.9)


def test_merge_boxes_keeps_distinct_boxes_of_one_window():
    rows = np.array(
        [
            [0, 0, 10, 10, 0.9, 1, 0, 0, 0],
            [0.5, 0, 10, 10, 0.8, 1, 0, 0, 1],  # the same object seen by the next window
            [2, 2, 12, 12, 0.7, 1, 0, 0, 0],  # overlapping, but its own window separated it
        ]
    )
    merged = merge_boxes(rows, iou=0.5)
    assert len(merged) == 2 and merged[0][4] == 0.9


def test_scene_classification_grid(smooth_scene, tmp_path):
    predictor = Predictor(toymodels.SceneClassifier(), toymodels.card(), task="classification")
    result = predict(predictor, smooth_scene, tmp_path / "out", window=64, progress=False)
    cells = result.vectors
    # 5 x 4 cells of 64 px over 310 x 230; the nodata corner (20 x 30) leaves cell 0 > 50 % valid.
    assert len(cells) == 20 and cells.crs == "EPSG:32618"
    assert np.allclose(cells["prob_class0"] + cells["prob_class1"], 1, atol=1e-5)
    assert abs(cells.area.sum() - 310 * 230 * 100) < 1e-3
