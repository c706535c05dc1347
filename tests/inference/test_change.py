"""Change between two dates: common grid, warping, nodata where either date is missing."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
import toymodels
from rasterio.transform import from_origin

from geocmid.errors import DataError
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.inference.conftest import write_scene

SETTINGS = RunSettings(window=64, overlap=16, block_size=100)
OPTIONS = OutputOptions(probabilities=True, quicklook=False)


def scenes(tmp_path, second_transform, second_crs="EPSG:32618", shape=(3, 120, 150)):
    rng = np.random.default_rng(0)
    a = rng.normal(size=shape).astype(np.float32)
    b = a.copy()
    b[:, 40:80, 50:110] += 3.0  # a changed rectangle
    p1 = write_scene(tmp_path / "d1.tif", a)
    p2 = write_scene(tmp_path / "d2.tif", b, crs=second_crs, transform=second_transform)
    return p1, p2


def change_predictor(pair: bool = False) -> Predictor:
    model = toymodels.PairChange(seed=2) if pair else toymodels.PerPixelChange(seed=2)
    return Predictor(
        model, toymodels.card(), task="change", change_input="pair" if pair else "stacked"
    )


def test_change_on_first_grid_with_partial_overlap(tmp_path):
    # Date 2 is shifted 30 px right and 20 px down: outside it, the change map is nodata.
    p1, p2 = scenes(tmp_path, from_origin(500300.0, 3999800.0, 10.0, 10.0))
    result = predict_scene(
        change_predictor(),
        [p1, p2],
        tmp_path / "out",
        settings=SETTINGS,
        options=OPTIONS,
        progress=False,
    )
    with rasterio.open(p1) as src, rasterio.open(result.outputs["classes"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        cls = out.read(1)
    assert (cls[:20, :] == 255).all() and (cls[:, :30] == 255).all()
    assert (cls[20:, 30:] != 255).all()
    assert result.summary["nodata_pixels"] == 120 * 150 - 100 * 120
    assert result.outputs["vectors"].exists()


def test_pair_model_equals_stacked_model(tmp_path):
    p1, p2 = scenes(tmp_path, None)
    opts = OutputOptions(vectors=False, quicklook=False)
    a = predict_scene(
        change_predictor(),
        [p1, p2],
        tmp_path / "a",
        settings=SETTINGS,
        options=opts,
        progress=False,
    )
    b = predict_scene(
        change_predictor(True),
        [p1, p2],
        tmp_path / "b",
        settings=SETTINGS,
        options=opts,
        progress=False,
    )
    with rasterio.open(a.outputs["classes"]) as ra, rasterio.open(b.outputs["classes"]) as rb:
        np.testing.assert_array_equal(ra.read(), rb.read())


def test_second_date_in_other_crs_is_warped_onto_first_grid(tmp_path):
    p1, _ = scenes(tmp_path, None)
    # The same area in Web Mercator at ~13 m: warped onto date 1's UTM grid.
    with rasterio.open(p1) as src:
        from rasterio.warp import calculate_default_transform, reproject

        transform, w, h = calculate_default_transform(
            src.crs, "EPSG:3857", src.width, src.height, *src.bounds
        )
        data = np.zeros((3, h, w), np.float32)
        reproject(
            src.read(),
            data,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:3857",
        )
    p2 = write_scene(tmp_path / "merc.tif", data, crs="EPSG:3857", transform=transform, nodata=0.0)
    result = predict_scene(
        change_predictor(),
        [p1, p2],
        tmp_path / "out",
        settings=SETTINGS,
        options=OutputOptions(vectors=False, quicklook=False),
        progress=False,
    )
    with rasterio.open(p1) as src, rasterio.open(result.outputs["classes"]) as out:
        assert (out.crs, out.transform, out.shape) == (src.crs, src.transform, src.shape)
        assert (out.read(1) != 255).mean() > 0.9


def test_intersection_grid_crops_first_grid(tmp_path):
    p1, p2 = scenes(tmp_path, from_origin(500300.0, 3999800.0, 10.0, 10.0))
    result = predict_scene(
        change_predictor(),
        [p1, p2],
        tmp_path / "out",
        settings=SETTINGS,
        options=OutputOptions(vectors=False, quicklook=False),
        grid="intersection",
        progress=False,
    )
    with rasterio.open(result.outputs["classes"]) as out:
        assert out.shape == (100, 120)
        assert out.transform == from_origin(500300.0, 3999800.0, 10.0, 10.0)
        assert (out.read(1) != 255).all()


def test_scenes_that_do_not_overlap_are_refused(tmp_path):
    p1, p2 = scenes(tmp_path, from_origin(600000.0, 4000000.0, 10.0, 10.0))
    with pytest.raises(DataError, match="do not overlap"):
        predict_scene(change_predictor(), [p1, p2], tmp_path / "out", progress=False)
