"""The synthetic data generator: georeferencing, nodata, labels, mosaics, changes, demo CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from rasterio.features import rasterize

from geocmid.cli import main
from geocmid.data.synthetic import (
    Landscape,
    default_footprint,
    plan_changes,
    write_change_mask,
    write_scene,
)

ORIGIN = (499_000.0, 5_001_000.0)  # whole metres: pixel centres are exact in float64


def read(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return src.read()


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A small demo dataset written through the command line."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo-data", str(out), "--size", "256", "--seed", "1"]) == 0
    return out


def test_same_seed_same_scene_other_seed_other_scene(tmp_path):
    kw = {"width": 96, "height": 80, "origin": ORIGIN}
    a = read(write_scene(tmp_path / "a.tif", seed=3, **kw).path)
    b = read(write_scene(tmp_path / "b.tif", seed=3, **kw).path)
    c = read(write_scene(tmp_path / "c.tif", seed=4, **kw).path)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_georeferencing_nodata_and_footprint(tmp_path):
    scene = write_scene(
        tmp_path / "s.tif", width=200, height=160, origin=ORIGIN, res=2.0, crs="EPSG:32633",
        labels_path=tmp_path / "l.tif", blocksize=64,
    )  # fmt: skip
    with rasterio.open(scene.path) as src:
        assert src.crs.to_epsg() == 32633 and src.nodata == 0 and src.dtypes[0] == "uint16"
        assert src.transform == rasterio.transform.from_origin(*ORIGIN, 2.0, 2.0)
        assert src.descriptions == ("blue", "green", "red", "nir")
        assert src.profile["tiled"] and src.profile["blockxsize"] == 64
        data = src.read()
    with rasterio.open(scene.labels_path) as src:
        labels = src.read(1)
        assert src.colormap(1)[2][:3] == (0x33, 0xA0, 0x2C)
    nodata = (data == 0).all(0)
    assert 0.08 < nodata.mean() < 0.35  # swath-like corners cut off
    assert ((data == 0).any(0) == nodata).all()  # nodata is all bands or none
    assert np.array_equal(labels == 0, nodata)
    assert nodata[0, 0] and nodata[-1, -1] and not nodata[80, 100]


def test_spectra_plausible_and_any_band_set(tmp_path):
    kw = {"width": 256, "height": 256, "seed": 0, "nodata_border": False, "blocksize": 128}
    scene = write_scene(tmp_path / "s2.tif", bands=13, labels_path=tmp_path / "l.tif", **kw)
    data = read(scene.path).astype(float)
    labels = read(tmp_path / "l.tif")[0]
    assert data.shape[0] == 13 and scene.bands[8] == "B8A"
    blue, red, nir = data[1], data[3], data[7]
    ndvi = (nir - red) / (nir + red)
    assert np.median(ndvi[labels == 2]) > 0.6  # forest
    assert np.median(ndvi[labels == 1]) < 0.0  # water
    assert np.median(nir[labels == 1]) < 600 < np.median(nir[labels == 2])
    assert np.median(blue[labels == 5]) > np.median(blue[labels == 2])  # roofs, roads


def test_label_raster_matches_vector_labels(demo):
    import geopandas as gpd

    with rasterio.open(demo / "labels" / "landcover.tif") as src:
        labels, transform, shape = src.read(1), src.transform, src.shape
    polys = gpd.read_file(demo / "labels" / "landcover.gpkg")
    assert set(polys["class"]) <= {1, 2, 3, 4, 5} and len(polys) > 10
    assert (polys["class_name"] == polys["class"].map({1: "water", 2: "forest"})).sum() > 0
    burnt = rasterize(zip(polys.geometry, polys["class"], strict=True), shape, transform=transform)
    labelled = labels > 0
    assert (burnt[labelled] == labels[labelled]).mean() > 0.95
    buildings = gpd.read_file(demo / "labels" / "buildings.gpkg")
    boxes = gpd.read_file(demo / "labels" / "building_boxes.gpkg")
    assert len(buildings) == len(boxes) > 20 and buildings.crs == polys.crs
    assert (boxes.area >= buildings.area - 1e-6).all()
    inside = rasterize(buildings.geometry, shape, transform=transform).astype(bool)
    assert (labels[inside] == 5).mean() > 0.95  # footprints are urban pixels


def test_adjacent_tiles_join_seamlessly(tmp_path):
    land = Landscape(seed=2, center=(ORIGIN[0] + 256, ORIGIN[1] - 128))
    border = default_footprint((ORIGIN[0], ORIGIN[1] - 256, ORIGIN[0] + 512, ORIGIN[1]), 5)
    kw = {"height": 128, "landscape": land, "nodata_border": border, "blocksize": 64}
    whole = read(write_scene(tmp_path / "w.tif", width=256, origin=ORIGIN, **kw).path)
    left = read(write_scene(tmp_path / "l.tif", width=128, origin=ORIGIN, **kw).path)
    right_origin = (ORIGIN[0] + 256.0, ORIGIN[1])
    right = read(write_scene(tmp_path / "r.tif", width=128, origin=right_origin, **kw).path)
    assert np.array_equal(np.concatenate([left, right], axis=2), whole)
    assert (whole != 0).all(0).mean() > 0.5


def test_second_date_differs_where_the_change_mask_says(tmp_path):
    land = Landscape(seed=0, center=(500_000.0, 5_000_000.0))
    kw = {"width": 384, "height": 384, "landscape": land, "blocksize": 128}
    first = write_scene(tmp_path / "a.tif", **kw)
    zones = plan_changes(land, first.footprint, seed=0)
    assert {z.kind for z in zones} == {1, 2, 3}
    second = write_scene(tmp_path / "b.tif", changes=zones, nodata_border=first.footprint, **kw)
    mask = read(write_change_mask(tmp_path / "c.tif", first, second))[0]
    a, b = read(first.path).astype(float), read(second.path).astype(float)
    valid = mask != 255
    assert np.array_equal(valid, (a != 0).all(0))
    changed = (np.abs(a - b) / np.maximum(a, 1) > 0.15).any(0) & valid
    assert 0.005 < (mask == 1).mean() < 0.2
    assert (mask[changed] == 1).mean() > 0.95  # differences lie in the change mask
    assert changed[mask == 1].mean() > 0.7  # and the change mask shows differences


def test_second_date_in_another_crs(demo):
    with rasterio.open(demo / "imagery" / "scene_2021-06-01.tif") as src:
        assert src.crs.to_epsg() == 3035 and src.res == (3.0, 3.0) and src.nodata == 0
    with rasterio.open(demo / "labels" / "change_2020_2021.tif") as src:
        mask = src.read(1)
        assert src.crs.to_epsg() == 32633 and src.nodata == 255
    assert set(np.unique(mask)) <= {0, 1, 255} and (mask == 1).any() and (mask == 255).any()


def test_cli_writes_catalog_entries_that_resolve(demo):
    files = sorted((demo / "catalog").glob("*.yaml"))
    names = {f.stem for f in files}
    assert names == {
        "demo-2020", "demo-2021", "demo-landcover", "demo-landcover-vector", "demo-buildings",
        "demo-building-boxes", "demo-change", "demo-pair", "demo-scenes",
    }  # fmt: skip
    for f in files:
        entry = yaml.safe_load(f.read_text())
        for key in ("paths", "root"):
            if key in entry:
                assert (f.parent / entry[key]).exists(), f"{f.name}: {entry[key]}"
        if entry["kind"] == "bitemporal":
            assert {entry["before"], entry["after"], entry["change_labels"]} <= names
    assert yaml.safe_load((demo / "catalog" / "demo-2020.yaml").read_text())["date"] == "2020-06-01"
    chips = list((demo / "scenes").glob("*/*.png"))
    assert len({c.parent.name for c in chips}) >= 2
    from PIL import Image

    assert Image.open(chips[0]).size == (64, 64) and Image.open(chips[0]).mode == "RGB"


def test_cli_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "mine.txt").write_text("keep me")
    assert main(["demo-data", str(tmp_path), "--size", "64"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path), "--size", "64", "--overwrite"]) == 2
    assert (tmp_path / "mine.txt").read_text() == "keep me"
    out = tmp_path / "demo"
    assert main(["demo-data", str(out), "--size", "64"]) == 0
    assert main(["demo-data", str(out), "--size", "64", "--overwrite"]) == 0
    assert not list(tmp_path.glob(".*partial*"))
