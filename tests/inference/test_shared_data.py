"""Real scenes from ../shared/data predicted end to end (skipped when the folder is absent)."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import toymodels
from PIL import Image

from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

pytestmark = pytest.mark.shared


def test_taizhou_landsat_change(shared, tmp_path):
    folder = shared / "change/taizhou-landsat/Taizhou"
    card = toymodels.card(in_chans=6, mean=80.0, std=40.0)
    card["classes"] = [{"value": 0, "name": "no change"}, {"value": 1, "name": "change"}]
    predictor = Predictor(toymodels.AbsDiffChange(0.5), card, task="change")
    result = predict_scene(
        predictor, [folder / "2000TM", folder / "2003TM"], tmp_path,
        settings=RunSettings(window=128, overlap=32, block_size=200),
        options=OutputOptions(probabilities=True, geojson=True, min_area=900 * 4), progress=False,
    )  # fmt: skip
    with rasterio.open(folder / "2000TM") as src, rasterio.open(result.outputs["classes"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        change = out.read(1)
    assert set(np.unique(change)) <= {0, 1}
    # Sanity of the map against the reference masks: change is far more frequent where the
    # reference says "changed" than where it says "unchanged".
    changed = np.asarray(Image.open(folder / "change.bmp")) > 0
    unchanged = np.asarray(Image.open(folder / "unchanged.bmp")) > 0
    assert change[changed].mean() > 2 * change[unchanged].mean()
    polygons = gpd.read_file(result.outputs["vectors"])
    assert len(polygons) > 0 and polygons.crs == out.crs
    assert (polygons["area_m2"] >= 3600).all() and (polygons["class_name"] == "change").all()
    assert gpd.read_file(result.outputs["geojson"]).crs == "EPSG:4326"


def test_neon_trees_boxes_in_map_coordinates(shared, tmp_path):
    path = shared / "detection/neon-trees/OSBS_029.tif"
    card = toymodels.card(in_chans=3, mean=100.0, std=50.0)
    card["classes"] = ["background", "tree"]
    predictor = Predictor(toymodels.FixedBoxDetector(), card, task="detection")
    result = predict_scene(
        predictor, [path], tmp_path, settings=RunSettings(window=256, overlap=64), progress=False
    )
    boxes = gpd.read_file(result.outputs["vectors"])
    with rasterio.open(path) as src:
        assert boxes.crs == src.crs
        valid = src.dataset_mask() > 0
        expected = []
        for oy in (0, 192):
            for ox in (0, 192):
                if valid[oy + 30, ox + 30]:  # box centre on data
                    x0, y1 = src.transform @ (ox + 10, oy + 10)
                    x1, y0 = src.transform @ (ox + 50, oy + 50)
                    expected.append((x0, y0, x1, y1))
    found = sorted(tuple(b) for b in np.round(boxes.geometry.bounds.to_numpy(), 6))
    assert found == sorted(tuple(np.round(e, 6)) for e in expected)
    # 40 x 40 px at 0.1 m: 16 m² planar; UTM is not equal-area, areas are geodesic (+0.06 %)
    assert np.allclose(boxes["area_m2"], 16.0, rtol=2e-3)


@pytest.mark.slow
def test_spacenet_atlanta_building_polygons(shared, tmp_path):
    path = shared / "segmentation/spacenet-atlanta/sample_geotiff.tif"
    card = toymodels.card(in_chans=1, mean=400.0, std=200.0)
    card["classes"] = ["background", "building"]
    predictor = Predictor(toymodels.Threshold(), card)
    frames = []
    for block_size in (160, 4096):  # many block borders vs one block: the same polygons
        result = predict_scene(
            predictor, [path], tmp_path / str(block_size),
            settings=RunSettings(window=128, overlap=32, block_size=block_size),
            options=OutputOptions(simplify=0.0), progress=False,
        )  # fmt: skip
        frames.append(gpd.read_file(result.outputs["vectors"]))
    small, large = frames
    assert len(small) == len(large) > 0
    assert small.crs == "EPSG:32616"
    assert small.geometry.geom_equals(large.geometry).all()
    with rasterio.open(result.outputs["classes"]) as out, rasterio.open(path) as src:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        cls = out.read(1)
        assert ((cls == 255) == (src.read(1) == 0)).all()
    # planar 0.25 m² per pixel; geodesic areas in UTM differ by the zone's scale (< 0.2 %)
    assert abs(small["area_m2"].sum() / ((cls == 1).sum() * 0.25) - 1) < 2e-3
