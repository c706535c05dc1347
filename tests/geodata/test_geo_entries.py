"""Catalog entries as users bring them (issue #12 items 1, 6, 9; issue #11 corrupt files).

1. mixed resolutions in one entry: the grid is ``res`` if given, else the finest band file;
   ``align_with`` labels are checked against and read on that grid;
6. a class attribute holding text or fractions is one clear error in `catalog validate`;
9. a file with more bands than declared is refused by every command that reads it;
#11. `catalog validate` reads a sample of blocks and names a truncated file.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import shapely
from PIL import Image
from rasterio.transform import from_origin

from geocmid.cli import main
from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sources import imagery_source
from tests.rasters import smooth_field, write_entry, write_raster

ORIGIN = (600_000.0, 5_100_000.0)
#: Sentinel-2 L2A band order with each band's resolution (B01 at 60 m comes first).
S2 = {"B01": 60, "B02": 10, "B03": 10, "B04": 10, "B05": 20, "B8A": 20, "B11": 20}
EXTENT = 720.0  # metres: 72 px at 10 m, 36 at 20 m, 12 at 60 m


def _write_s2(folder: Path) -> None:
    for n, (band, res) in enumerate(S2.items()):
        size = round(EXTENT / res)
        data = smooth_field((size, size), seed=n, bands=1)
        write_raster(folder / f"T32TLS_20230719_{band}.tif", data, origin=ORIGIN, res=res)


def validate(cat: Path, name: str, capsys) -> tuple[int, str]:
    code = main(["--catalog", str(cat), "catalog", "validate", name])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_sentinel2_band_order_is_read_on_the_10m_grid_and_labels_align(
    tmp_path: Path, capsys
) -> None:
    _write_s2(tmp_path / "s2")
    cat = tmp_path / "cat"
    write_entry(cat, "s2", f"kind: imagery\nband_files: ../s2/T32TLS_20230719_{{band}}.tif\n"
                f"bands: {list(S2)}\n")  # fmt: skip
    label = np.zeros((72, 72), np.uint8)
    label[:, 36:] = 1
    label[60:, :] = 2
    Image.fromarray(label).save(tmp_path / "label10m.png")
    write_entry(cat, "lbl", "kind: raster_labels\npaths: ../label10m.png\nalign_with: s2\n"
                "classes: {0: a, 1: b, 2: c}\n")  # fmt: skip
    assert validate(cat, "lbl", capsys)[0] == 0
    catalog = Catalog(cat)
    grid = imagery_source(catalog.get("s2")).grid
    assert grid.transform == from_origin(*ORIGIN, 10.0, 10.0)
    assert (grid.width, grid.height) == (72, 72)
    image = dataset_from_entry(catalog.get("s2"))
    labels = dataset_from_entry(catalog.get("lbl"), catalog)
    x0, y1 = ORIGIN
    box = (slice(x0 + 200, x0 + 520), slice(y1 - 680, y1 - 360))  # cols 20-52, rows 36-68
    chip = image[box]["image"]
    assert chip.shape == (7, 32, 32)
    with rasterio.open(tmp_path / "s2" / "T32TLS_20230719_B02.tif") as ds:
        np.testing.assert_array_equal(chip[1].numpy(), ds.read(1)[36:68, 20:52])
    np.testing.assert_array_equal(labels[box]["mask"].numpy(), label[36:68, 20:52])


def test_entry_res_is_the_grid_labels_align_with(tmp_path: Path, capsys) -> None:
    """The same bands with ``res: 20``: a 36 px label aligns, the 72 px one is refused with
    the grid's size and where its resolution comes from."""
    _write_s2(tmp_path / "s2")
    cat = tmp_path / "cat"
    write_entry(cat, "s2", f"kind: imagery\nband_files: ../s2/T32TLS_20230719_{{band}}.tif\n"
                f"bands: {list(S2)}\nres: 20\n")  # fmt: skip
    Image.fromarray(np.ones((36, 36), np.uint8)).save(tmp_path / "label20m.png")
    Image.fromarray(np.ones((72, 72), np.uint8)).save(tmp_path / "label10m.png")
    for name, file in (("l20", "label20m.png"), ("l10", "label10m.png")):
        write_entry(cat, name, f"kind: raster_labels\npaths: ../{file}\nalign_with: s2\n"
                    "classes: {1: a}\n")  # fmt: skip
    assert validate(cat, "l20", capsys)[0] == 0
    assert imagery_source(Catalog(cat).get("s2")).grid.transform == from_origin(*ORIGIN, 20, 20)
    code, out = validate(cat, "l10", capsys)
    assert code != 0 and "36x36-pixel grid" in out and "its 'res'" in out


def _vector_labels(tmp_path: Path, values: list) -> Path:
    geoms = [shapely.box(600_000 + 10 * i, 5_099_900, 600_010 + 10 * i, 5_099_910)
             for i in range(len(values))]  # fmt: skip
    frame = gpd.GeoDataFrame({"cls": values}, geometry=geoms, crs="EPSG:32632")
    path = tmp_path / "labels.gpkg"
    frame.to_file(path)
    write_entry(tmp_path / "cat", "vec", "kind: vector_labels\npaths: ../labels.gpkg\n"
                "class_attribute: cls\nclasses: {1: field, 2: water}\n")  # fmt: skip
    return path


def test_class_attribute_with_text_is_refused_by_validate(tmp_path: Path, capsys) -> None:
    path = _vector_labels(tmp_path, [1, 2, 1, "water", "water", 2])
    code, out = validate(tmp_path / "cat", "vec", capsys)
    assert code != 0 and "Traceback" not in out
    assert path.name in out and "'cls'" in out and "'water' (2x)" in out
    assert "2 value(s) of 6" in out and "water -> 2" in out


def test_class_attribute_with_fractions_is_refused(tmp_path: Path, capsys) -> None:
    path = _vector_labels(tmp_path, [1.0, 2.0, 1.5, 2.0])
    code, out = validate(tmp_path / "cat", "vec", capsys)
    assert code != 0 and path.name in out and "1.5 (1x)" in out
    _vector_labels(tmp_path, [1.0, 2.0, None, 2.0])  # reals holding integers, a missing value
    assert validate(tmp_path / "cat", "vec", capsys)[0] == 0


@pytest.mark.parametrize("layout", ["stacked", "band_files"])
def test_band_count_is_checked_by_every_command(tmp_path: Path, capsys, layout: str) -> None:
    """A 4-band file where 3 bands are declared (or a 2-band file among one-band band files):
    validate, stats and predict --entry refuse it alike, naming the file."""
    cat = tmp_path / "cat"
    if layout == "stacked":
        bad = write_raster(tmp_path / "img.tif", smooth_field((40, 40), bands=4))
        write_entry(cat, "img", "kind: imagery\npaths: ../img.tif\nbands: [r, g, b]\n")
    else:
        write_raster(tmp_path / "b" / "x_r.tif", smooth_field((40, 40), bands=1))
        bad = write_raster(tmp_path / "b" / "x_g.tif", smooth_field((40, 40), bands=2))
        write_entry(cat, "img", "kind: imagery\nband_files: ../b/x_{band}.tif\nbands: [r, g]\n")
    code, out = validate(cat, "img", capsys)
    assert code != 0 and bad.name in out and "band(s)" in out
    assert main(["--catalog", str(cat), "catalog", "stats", "img"]) != 0
    err = capsys.readouterr().err
    assert bad.name in err and "band(s)" in err and "Traceback" not in err
    assert "stats" not in {p.name for p in cat.iterdir() if p.suffix == ".json"}
    code = main(["--catalog", str(cat), "predict", "--entry", "img", "--model", "m.pt",
                 "--card", "c.json", "-o", str(tmp_path / "out")])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and bad.name in err and "band(s)" in err


def test_validate_catches_a_truncated_raster(tmp_path: Path, capsys) -> None:
    data = smooth_field((512, 512), bands=3)
    path = tmp_path / "img.tif"
    with rasterio.open(path, "w", driver="GTiff", width=512, height=512, count=3,
                       dtype="uint16", crs="EPSG:32632", transform=from_origin(*ORIGIN, 10, 10),
                       tiled=True, blockxsize=128, blockysize=128) as ds:  # fmt: skip
        ds.write(data)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(int(size * 0.6))
    with rasterio.open(path) as ds:  # the header still reads: only the pixels are missing
        assert ds.count == 3
    write_entry(tmp_path / "cat", "img", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    code, out = validate(tmp_path / "cat", "img", capsys)
    assert code != 0 and "img.tif" in out and "truncated or corrupt" in out
    assert "Traceback" not in out and len(out.strip().splitlines()) <= 2


def test_mosaic_of_tiles_at_two_resolutions_is_read_on_the_finest(tmp_path: Path) -> None:
    """Another case of item 1: tiles of one entry at 20 m (first in sorted order) and 10 m;
    the entry is read on the 10 m tile's lattice and that tile's pixels come out unchanged."""
    coarse = smooth_field((30, 20), seed=1, bands=2)
    fine = smooth_field((60, 40), seed=2, bands=2)
    write_raster(tmp_path / "t" / "a.tif", coarse, origin=ORIGIN, res=20.0)
    right = (ORIGIN[0] + 400.0, ORIGIN[1])
    write_raster(tmp_path / "t" / "b.tif", fine, origin=right, res=10.0)
    write_entry(tmp_path / "cat", "m", "kind: imagery\npaths: ../t\nbands: [x, y]\n")
    source = imagery_source(Catalog(tmp_path / "cat").get("m"))
    assert source.grid.transform == from_origin(*ORIGIN, 10.0, 10.0)
    assert (source.grid.width, source.grid.height) == (80, 60)
    with source.reader() as reader:
        data, valid = reader.read(0, 60, 0, 80)
    assert valid.all()
    np.testing.assert_array_equal(data[:, :, 40:], fine)


def test_validate_names_every_truncated_file_of_an_entry(tmp_path: Path, capsys) -> None:
    """Three truncated tiles of five in one folder: one error for the entry naming all three."""
    for i in range(5):
        path = tmp_path / "tiles" / f"tile{i}.tif"
        path.parent.mkdir(exist_ok=True)
        origin = (ORIGIN[0] + 2560 * i, ORIGIN[1])
        with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3,
                           dtype="uint16", crs="EPSG:32632", transform=from_origin(*origin, 10, 10),
                           tiled=True, blockxsize=64, blockysize=64,
                           compress="deflate") as ds:  # fmt: skip
            ds.write(smooth_field((256, 256), seed=i, bands=3))
        if i in (0, 2, 3):
            data = path.read_bytes()
            path.write_bytes(data[: len(data) // 2])
    write_entry(tmp_path / "cat", "tiles", "kind: imagery\npaths: ../tiles/*.tif\nbands: 3\n")
    write_raster(tmp_path / "good.tif", smooth_field((64, 64), bands=3))
    write_entry(tmp_path / "cat", "good", "kind: imagery\npaths: ../good.tif\nbands: 3\n")
    code = main(["--catalog", str(tmp_path / "cat"), "catalog", "validate"])
    out = capsys.readouterr().out
    assert code == 2, out
    assert "ok      good" in out and out.count("FAILED") == 1, out
    assert "3 of 5 files cannot be read" in out and "truncated or corrupt" in out, out
    for name in ("tile0.tif", "tile2.tif", "tile3.tif"):
        assert name in out, out
    assert "tile1.tif" not in out and "tile4.tif" not in out, out
    assert "Traceback" not in out and "1 of 2 entries failed validation" in out, out


def test_several_file_errors_list_ten_and_count_the_rest() -> None:
    from geocmid.errors import DataError, several_files

    errors = [DataError(f"/data/tiles/t{i:02d}.tif", "is truncated or corrupt") for i in range(13)]
    error = several_files(errors, 20, "catalog entry 'tiles'")
    assert error.where == "catalog entry 'tiles'"
    assert "13 of 20 files cannot be read (in /data/tiles): t00.tif, t01.tif" in error.problem
    assert "t09.tif … and 3 more" in error.problem and "t10.tif" not in error.problem
    assert several_files(errors[:1], 20, "x") is errors[0]  # one file: its own error
