"""Evaluation reads reference labels through the entry code training uses (issue #12 item 8)
and scores held-out areas only (issue #11).

``read_labels_on_grid`` is what the recipe's evaluate step reads labels with; the recipe run
itself (test split, ``areas: all``, report line) is checked on a tiny quickstart (slow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin

from geocmid.data.catalog import Catalog
from geocmid.data.datasets.factory import read_labels_on_grid
from geocmid.data.sources import Grid, imagery_source
from tests.rasters import smooth_field, write_entry, write_raster

ORIGIN = (500_000.0, 5_000_000.0)


def _catalog(tmp_path: Path) -> tuple[Catalog, np.ndarray]:
    """Imagery (two band files, 30 m and 10 m: the entry grid is 10 m, 60 x 90 px) and a PNG
    label without georeferencing aligned with it."""
    write_raster(tmp_path / "b" / "s_B01.tif", smooth_field((20, 30), bands=1), res=30.0)
    write_raster(tmp_path / "b" / "s_B02.tif", smooth_field((60, 90), bands=1), res=10.0)
    label = np.zeros((60, 90), np.uint8)
    label[10:40, 20:70] = 1
    label[50:, :] = 255
    Image.fromarray(label).save(tmp_path / "label.png")
    cat = tmp_path / "cat"
    write_entry(cat, "img", "kind: imagery\nband_files: ../b/s_{band}.tif\nbands: [B01, B02]\n")
    write_entry(cat, "lbl", "kind: raster_labels\npaths: ../label.png\nalign_with: img\n"
                "classes: {0: bare, 1: built}\nignore_value: 255\n")  # fmt: skip
    return Catalog(cat), label


def test_align_with_labels_are_read_on_the_map_grid(tmp_path: Path) -> None:
    """The case of the issue: a PNG mask with align_with, which a plain reproject refused."""
    catalog, label = _catalog(tmp_path)
    grid = imagery_source(catalog.get("img")).grid
    values, valid = read_labels_on_grid(catalog.get("lbl"), grid, catalog, rows=16)
    assert values.shape == (60, 90)
    np.testing.assert_array_equal(values[:50], label[:50])
    assert valid[:50].all() and not valid[50:].any(), "ignore_value 255 is not scored"


def test_labels_on_another_grid_are_warped_nearest(tmp_path: Path) -> None:
    """Another case of the same kind: georeferenced labels in another CRS and offset, and
    vector labels, read onto a map grid they are not on."""
    _catalog(tmp_path)  # the catalog folder
    grid = Grid(rasterio.crs.CRS.from_epsg(32633), from_origin(*ORIGIN, 10.0, 10.0), 90, 60)
    # raster labels at 20 m, shifted by 200 m east
    mask = np.zeros((30, 45), np.uint8)
    mask[5:20, 10:30] = 1
    write_raster(tmp_path / "l20.tif", mask, origin=(ORIGIN[0] + 200, ORIGIN[1]), res=20.0,
                 nodata=255)  # fmt: skip
    write_entry(tmp_path / "cat", "l20", "kind: raster_labels\npaths: ../l20.tif\n"
                "classes: {0: bare, 1: built}\n")  # fmt: skip
    values, valid = read_labels_on_grid(Catalog(tmp_path / "cat").get("l20"), grid)
    assert not valid[:, :20].any(), "west of the labels' footprint: no reference"
    assert valid[:, 20:].all()
    expected = np.zeros((60, 90), bool)
    expected[10:40, 40:80] = True  # 20 m cells (5..20, 10..30) on the 10 m grid, +20 px east
    np.testing.assert_array_equal(values == 1, expected)
    # vector labels in EPSG:4326, rasterised with their class attribute
    box = shapely.box(ORIGIN[0] + 100, ORIGIN[1] - 300, ORIGIN[0] + 400, ORIGIN[1] - 100)
    frame = gpd.GeoDataFrame({"code": ["2"]}, geometry=[box], crs="EPSG:32633").to_crs(4326)
    frame.to_file(tmp_path / "v.gpkg")
    write_entry(tmp_path / "cat", "vec", "kind: vector_labels\npaths: ../v.gpkg\n"
                "class_attribute: code\nclasses: {2: built}\n")  # fmt: skip
    values, valid = read_labels_on_grid(Catalog(tmp_path / "cat").get("vec"), grid)
    assert int((values == 2).sum()) == pytest.approx(30 * 20, abs=60)
    assert valid[15, 20] and not valid[0, 0]


@pytest.mark.slow
def test_recipe_scores_the_test_split_only(tmp_path: Path) -> None:
    """A tiny quickstart scores its test split; ``areas: all`` scores the whole map and says
    that the training area is included; the report says which."""
    from geocmid.cli import main

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "quickstart.yaml"
    work = tmp_path
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["run", str(recipe), "--tiny"]) == 0
        run = work / "runs" / "quickstart"
        held_out = json.loads((run / "maps" / "change_evaluation.json").read_text())
        report = (run / "report.md").read_text()
        assert main(["run", str(recipe), "--tiny", "steps.evaluate.areas=all"]) == 0
        whole = json.loads((run / "maps" / "change_evaluation.json").read_text())
    finally:
        os.chdir(cwd)
    scored = held_out["scored_area"]
    assert scored["kind"] == "test split of the fine-tuning"
    assert 0.02 < scored["fraction_of_labelled_map"] < 0.5
    assert held_out["pixels"] == scored["pixels"] < whole["pixels"]
    assert whole["scored_area"]["kind"] == "whole map"
    assert "trained" in whole["scored_area"]["note"]
    assert "Scored on the test split of the fine-tuning" in report
