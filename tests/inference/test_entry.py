"""`geocmid predict --entry`: a catalog imagery entry predicted exactly as training reads it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import rasterio
import torch
import toymodels

from geocmid.cli import main
from tests.rasters import write_entry, write_raster

ORIGIN = (500_000.0, 5_000_000.0)
FAST = ["--window", "32", "--overlap", "8", "--block-size", "48", "--no-progress"]


def model_args(model: Path, card: Path) -> list[str]:
    return ["--model", str(model), "--card", str(card), *FAST]


def read_map(path: Path) -> tuple[np.ndarray, rasterio.Affine, rasterio.crs.CRS]:
    with rasterio.open(path) as ds:
        return ds.read(1), ds.transform, ds.crs


def test_band_files_entry_predicts_the_stacked_map(mixed_scene, toy_model_files, tmp_path):
    """Band files at mixed resolutions (B01 at 30 m first) + nodata override, predicted with
    --entry, give the map of the same bands stacked on the 10 m grid, on that grid."""
    args = model_args(*toy_model_files)
    assert main(["predict", str(mixed_scene.stacked), "-o", str(tmp_path / "a"), *args]) == 0
    catalog = ["--catalog", str(mixed_scene.catalog)]
    assert main([*catalog, "predict", "--entry", "s2", "-o", str(tmp_path / "b"), *args]) == 0
    stacked, transform, crs = read_map(tmp_path / "a" / "stacked_classes.tif")
    entry, entry_transform, entry_crs = read_map(tmp_path / "b" / "s2_classes.tif")
    assert entry_transform == transform == mixed_scene.transform
    assert entry_crs == crs == "EPSG:32633"
    assert entry.shape == stacked.shape == mixed_scene.shape
    np.testing.assert_array_equal(entry, stacked)
    assert (entry[:12, :15] == 255).all() and (entry[12:, 15:] != 255).all(), "nodata corner"
    assert len(np.unique(entry[entry != 255])) >= 2, "a map, not one class"
    summary = json.loads((tmp_path / "b" / "s2_summary.json").read_text())
    assert summary["inputs"] == ["entry:s2"]
    assert (tmp_path / "b" / "s2_quicklook.png").stat().st_size > 0


def test_assign_crs_entry_predicts_like_the_georeferenced_file(
    mixed_scene, toy_model_files, tmp_path
):
    """A file without a CRS, given one by the entry's assign_crs: the map is georeferenced."""
    bare = write_raster(
        tmp_path / "bare.tif", mixed_scene.pixels, crs=None, origin=ORIGIN, res=10.0, nodata=0
    )
    with rasterio.open(bare, "r+") as ds:
        ds.descriptions = ("B01", "B02", "B03", "B04")
    entry = f"kind: imagery\npaths: {bare}\nbands: [B01, B02, B03, B04]\nassign_crs: EPSG:32633\n"
    write_entry(mixed_scene.catalog, "bare", entry)
    args = model_args(*toy_model_files)
    assert main(["predict", str(mixed_scene.stacked), "-o", str(tmp_path / "a"), *args]) == 0
    catalog = ["--catalog", str(mixed_scene.catalog), "predict", "--entry", "bare"]
    assert main([*catalog, "-o", str(tmp_path / "b"), *args]) == 0
    expected, transform, crs = read_map(tmp_path / "a" / "stacked_classes.tif")
    classes, entry_transform, entry_crs = read_map(tmp_path / "b" / "bare_classes.tif")
    assert entry_crs == crs == "EPSG:32633" and entry_transform == transform
    np.testing.assert_array_equal(classes, expected)


def test_tiled_entry_is_predicted_as_one_mosaic(mixed_scene, toy_model_files, tmp_path):
    """An entry of two tiles gives one map on the entry's grid (the union of the tiles)."""
    half = mixed_scene.shape[1] // 2
    for name, cols, x in (("west", slice(0, half), 0.0), ("east", slice(half, None), half * 10.0)):
        tile = write_raster(
            tmp_path / "tiles" / f"{name}.tif", mixed_scene.pixels[:, :, cols],
            origin=(ORIGIN[0] + x, ORIGIN[1]), res=10.0, nodata=0,
        )  # fmt: skip
        with rasterio.open(tile, "r+") as ds:
            ds.descriptions = ("B01", "B02", "B03", "B04")
    entry = f"kind: imagery\npaths: {tmp_path / 'tiles'}\nbands: [B01, B02, B03, B04]\n"
    write_entry(mixed_scene.catalog, "tiles", entry)
    args = model_args(*toy_model_files)
    assert main(["predict", str(mixed_scene.stacked), "-o", str(tmp_path / "a"), *args]) == 0
    catalog = ["--catalog", str(mixed_scene.catalog), "predict", "--entry", "tiles"]
    assert main([*catalog, "-o", str(tmp_path / "b"), *args]) == 0
    expected, transform, _ = read_map(tmp_path / "a" / "stacked_classes.tif")
    classes, entry_transform, _ = read_map(tmp_path / "b" / "tiles_classes.tif")
    assert entry_transform == transform
    np.testing.assert_array_equal(classes, expected)


def test_change_between_entries_equals_change_between_files(mixed_scene, tmp_path):
    """`--entry A --entry B` and a bitemporal entry read both dates as the files do; outputs
    of a bitemporal entry are named after it."""
    later = mixed_scene.pixels.copy()
    later[1:, 30:50, 40:70] += 600  # a changed rectangle (B01 unchanged)
    later_path = write_raster(tmp_path / "later.tif", later, origin=ORIGIN, res=10.0, nodata=0)
    with rasterio.open(later_path, "r+") as ds:
        ds.descriptions = ("B01", "B02", "B03", "B04")
    cat = mixed_scene.catalog
    write_entry(cat, "later", f"kind: imagery\npaths: {later_path}\nbands: [B01, B02, B03, B04]\n")
    write_entry(cat, "pair", "kind: bitemporal\nbefore: s2\nafter: later\n")
    card = toymodels.card(in_chans=4, classes=2, mean=1000.0, std=200.0)
    card["bands"] = ["B01", "B02", "B03", "B04"]
    (tmp_path / "card.json").write_text(json.dumps(card))
    torch.jit.script(toymodels.AbsDiffChange(1.0)).save(str(tmp_path / "change.pt"))
    args = ["--task", "change", *model_args(tmp_path / "change.pt", tmp_path / "card.json")]
    files = [str(mixed_scene.stacked), str(later_path)]
    assert main(["predict", *files, "-o", str(tmp_path / "files"), "--name", "c", *args]) == 0
    catalog = ["--catalog", str(cat), "predict"]
    entries = ["--entry", "s2", "--entry", "later"]
    assert main([*catalog, *entries, "-o", str(tmp_path / "two"), "--name", "c", *args]) == 0
    assert main([*catalog, "--entry", "pair", "-o", str(tmp_path / "pair"), *args]) == 0
    reference, transform, _ = read_map(tmp_path / "files" / "c_classes.tif")
    assert transform == mixed_scene.transform
    assert reference[30:50, 40:70].all() and reference[reference != 255].mean() < 0.3
    for out in (tmp_path / "two" / "c_classes.tif", tmp_path / "pair" / "pair_classes.tif"):
        classes, out_transform, _ = read_map(out)
        assert out_transform == transform
        np.testing.assert_array_equal(classes, reference)


def test_entry_errors_are_one_clear_line(mixed_scene, toy_model_files, tmp_path, capsys):
    cat = mixed_scene.catalog
    write_entry(cat, "labels", "kind: raster_labels\npaths: ../mask.tif\nclasses: {1: a}\n")
    args = ["-o", str(tmp_path / "out"), *model_args(*toy_model_files)]
    cases = [
        (["--entry", "s2x"], "no entry named 's2x' (did you mean 's2'?)"),
        (["--entry", "labels"], "'labels' is a raster_labels entry"),
        (["--entry", "s2", str(mixed_scene.stacked)], "scene files and --entry were both given"),
        ([], "nothing to predict"),
    ]
    for extra, message in cases:
        assert main(["--catalog", str(cat), "predict", *extra, *args]) == 2
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and message in errors[0], err
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_bitemporal_entry_needs_a_change_model(mixed_scene, toy_model_files, tmp_path, capsys):
    write_entry(mixed_scene.catalog, "pair", "kind: bitemporal\nbefore: s2\nafter: s2\n")
    args = ["-o", str(tmp_path / "out"), *model_args(*toy_model_files)]
    assert main(["--catalog", str(mixed_scene.catalog), "predict", "--entry", "pair", *args]) == 2
    assert "holds two dates, but this model predicts one scene" in capsys.readouterr().err
