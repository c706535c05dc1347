"""How files are placed on the ground, one rule in every command.

Item 3 of issue #12: rasters georeferenced by GCPs or RPCs only are refused with one clear line
(and the gdalwarp command) by `catalog validate`, by training's datasets and by `predict`.
Issue #10: a raster without georeferencing is read on its north-up pixel grid, never as a
south-up footprint; plain PNG images with ``assign_crs`` train on aligned chips; several such
files in one entry are refused (they would be stacked at one place).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.rpc import RPC

from geocmid.cli import main
from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sources import PIXEL_GRID_TRANSFORM, file_source
from geocmid.errors import DataError
from tests.rasters import smooth_field, write_entry


def _write_gcp_raster(path: Path, rpc: bool = False) -> Path:
    data = smooth_field((40, 50), seed=4, bands=4)
    profile = dict(driver="GTiff", width=50, height=40, count=4, dtype="uint16")
    if rpc:
        profile["rpcs"] = RPC(
            height_off=0, height_scale=500, lat_off=45.0, lat_scale=0.01,
            line_den_coeff=[1] + [0] * 19,
            line_num_coeff=[0, 0, -1] + [0] * 17, line_off=20, line_scale=20, long_off=7.0,
            long_scale=0.01, samp_den_coeff=[1] + [0] * 19, samp_num_coeff=[0, 1] + [0] * 18,
            samp_off=25, samp_scale=25,
        )  # fmt: skip
    else:
        gcps = [
            GroundControlPoint(row=r, col=c, x=500_000 + 10 * c + 2 * r, y=5_000_000 - 10 * r)
            for r, c in ((0, 0), (0, 50), (40, 0), (40, 50))
        ]
        profile["gcps"] = gcps
        profile["crs"] = "EPSG:32633"
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(data)
        if not rpc:
            ds.gcps = (profile.pop("gcps"), rasterio.crs.CRS.from_epsg(32633))
    return path


@pytest.mark.parametrize("rpc", [False, True], ids=["gcps", "rpcs"])
def test_gcp_and_rpc_rasters_are_refused_everywhere(tmp_path: Path, capsys, rpc: bool) -> None:
    path = _write_gcp_raster(tmp_path / "scene.tif", rpc=rpc)
    with rasterio.open(path) as ds:
        assert ds.transform.is_identity and (bool(ds.gcps[0]) != rpc)
    what = "RPC coefficients" if rpc else "ground control points"
    # the readers prediction and training share
    with pytest.raises(DataError, match=what) as error:
        file_source(path)
    assert "gdalwarp" in str(error.value) and ("-rpc" in str(error.value)) == rpc
    # catalog validate
    cat = tmp_path / "cat"
    write_entry(cat, "scene", f"kind: imagery\npaths: {path}\nbands: 4\nassign_crs: EPSG:32633\n")
    assert main(["--catalog", str(cat), "catalog", "validate", "scene"]) != 0
    err = capsys.readouterr().err
    assert str(path) in err and what in err and "gdalwarp" in err and "Traceback" not in err
    # training's dataset (validation skipped: the reader's own rule)
    with pytest.raises(DataError, match=what):
        dataset_from_entry(Catalog(cat).get("scene"), check=False)
    # predict on the path: refused before any output is written
    out = tmp_path / "out"
    model = _toy_model(tmp_path)
    code = main(["predict", str(path), "-o", str(out), "--model", str(model[0]), "--card",
                 str(model[1]), "--window", "32", "--overlap", "8", "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and what in err and "Traceback" not in err
    assert not list(out.glob("*.tif")) if out.exists() else True


def _toy_model(tmp_path: Path) -> tuple[Path, Path]:
    import json
    import sys

    import torch

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))
    import toymodels

    torch.manual_seed(0)
    model = toymodels.PerPixel(in_chans=3, classes=3, seed=7)
    card = toymodels.card(in_chans=3, classes=3, mean=100.0, std=50.0)
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    torch.jit.script(model).save(str(folder / "model.pt"))
    (folder / "card.json").write_text(json.dumps(card))
    return folder / "model.pt", folder / "card.json"


def _png_pair(folder: Path, shape: tuple[int, int] = (48, 64)) -> tuple[np.ndarray, np.ndarray]:
    """An RGB PNG whose rows differ (top bright, bottom dark) and its label PNG (top = 1)."""
    h, w = shape
    rows = np.linspace(250, 10, h).astype(np.uint8)
    image = np.repeat(rows[:, None], w, axis=1)
    rgb = np.stack([image, image // 2, np.full_like(image, 7)])
    label = np.where(np.arange(h)[:, None] < h // 3, 1, 2).repeat(w, axis=1).astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.moveaxis(rgb, 0, -1)).save(folder / "tile.png")
    Image.fromarray(label).save(folder / "tile_label.png")
    return rgb, label


def test_png_image_and_label_are_read_north_up_on_their_pixel_grid(tmp_path: Path) -> None:
    rgb, label = _png_pair(tmp_path / "png")
    cat = tmp_path / "cat"
    write_entry(cat, "img", "kind: imagery\npaths: ../png/tile.png\nbands: [r, g, b]\n"
                "assign_crs: EPSG:3857\n")  # fmt: skip
    write_entry(cat, "lbl", "kind: raster_labels\npaths: ../png/tile_label.png\n"
                "classes: {1: top, 2: bottom}\nalign_with: img\n")  # fmt: skip
    catalog = Catalog(cat)
    image_ds = dataset_from_entry(catalog.get("img"))
    label_ds = dataset_from_entry(catalog.get("lbl"), catalog)
    assert image_ds.source.grid.transform == PIXEL_GRID_TRANSFORM, "north-up pixel grid"
    h, w = label.shape
    # the footprint: x 0..W, y -H..0 (north-up), not 0..H (south-up)
    (x, y, _) = image_ds.bounds
    assert (x.start, x.stop, y.start, y.stop) == (0, w, -h, 0)
    window = (slice(8, 40), slice(-40, -8))  # cols 8..40, rows 8..40
    image = image_ds[window]
    mask = label_ds[window]["mask"].numpy()
    np.testing.assert_array_equal(image["image"].numpy(), rgb[:, 8:40, 8:40].astype(np.float32))
    assert image["valid"].all(), "every pixel of the chip holds data"
    np.testing.assert_array_equal(mask, label[8:40, 8:40])
    # rows stay in file order: bright rows (label 1, the top third) at the top of the chip
    assert image["image"][0, 0, 0] > image["image"][0, -1, 0]


def test_predict_on_a_plain_image_writes_its_pixel_grid(tmp_path: Path, capsys, caplog) -> None:
    _png_pair(tmp_path / "png")
    model = _toy_model(tmp_path)
    out = tmp_path / "out"
    code = main(["predict", str(tmp_path / "png" / "tile.png"), "-o", str(out), "--model",
                 str(model[0]), "--card", str(model[1]), "--window", "32", "--overlap", "8",
                 "--no-progress"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("has no georeferencing" in w for w in warnings) == 1, warnings
    with rasterio.open(out / "tile_classes.tif") as ds:
        # GDAL stores the north-up pixel grid as no geotransform: the file's own pixel grid
        assert ds.crs is None and (ds.height, ds.width) == (48, 64)
        assert ds.transform in (PIXEL_GRID_TRANSFORM, rasterio.Affine.identity())
    import geopandas as gpd

    frame = gpd.read_file(out / "tile.gpkg")
    assert len(frame) > 0 and frame["area_m2"].isna().all(), "areas are NULL without a CRS"
    minx, miny, maxx, maxy = frame.total_bounds
    assert minx >= 0 and maxx <= 64 and miny >= -48 and maxy <= 0, "polygons on the pixel grid"


def test_bitemporal_png_dates_with_assign_crs(tmp_path: Path, capsys) -> None:
    _png_pair(tmp_path / "a")
    _png_pair(tmp_path / "b")
    cat = tmp_path / "cat"
    for name in ("a", "b"):
        write_entry(cat, name, f"kind: imagery\npaths: ../{name}/tile.png\nbands: [r, g, b]\n"
                    "assign_crs: EPSG:3857\n")  # fmt: skip
    write_entry(cat, "ab", "kind: bitemporal\nbefore: a\nafter: b\n")
    assert main(["--catalog", str(cat), "catalog", "validate", "ab"]) == 0, capsys.readouterr()
    catalog = Catalog(cat)
    ds = dataset_from_entry(catalog.get("ab"), catalog)
    assert ds is not None


def test_several_plain_tiles_in_one_entry_are_refused(tmp_path: Path, capsys) -> None:
    """LoveDA-style tiles without georeferencing would all lie at one place."""
    for n in range(3):
        _png_pair(tmp_path / "tiles" / str(n))
        (tmp_path / "tiles" / str(n) / "tile.png").rename(tmp_path / "tiles" / f"{n}.png")
    cat = tmp_path / "cat"
    write_entry(cat, "tiles", "kind: imagery\npaths: ../tiles/*.png\nbands: [r, g, b]\n"
                "assign_crs: EPSG:3857\n")  # fmt: skip
    assert main(["--catalog", str(cat), "catalog", "validate", "tiles"]) != 0
    err = capsys.readouterr().err
    assert "3 of its files have no georeferencing" in err and "stacked" in err
    with pytest.raises(DataError, match="stacked"):
        dataset_from_entry(Catalog(cat).get("tiles"), check=False)


@pytest.mark.slow
def test_fit_on_png_image_and_aligned_png_label_learns(tmp_path: Path, capsys) -> None:
    """The #10 case: PNG image + PNG label with assign_crs / align_with trained on empty chips
    (NaN loss, exit 0). On the pixel grid the chips hold data and the model learns."""
    h = w = 256
    y, x = np.mgrid[0:h, 0:w]
    label = ((np.sin(x / 20) + np.cos(y / 25)) > 0).astype(np.uint8) + 1
    noise = np.random.default_rng(0).integers(0, 40, (h, w))
    rgb = np.stack([label * 80 + noise, 255 - label * 60, np.full((h, w), 30)], -1)
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "img.png")
    Image.fromarray(label).save(tmp_path / "lbl.png")
    cat = tmp_path / "cat"
    write_entry(cat, "img", "kind: imagery\npaths: ../img.png\nbands: [r, g, b]\n"
                "assign_crs: EPSG:3857\n")  # fmt: skip
    write_entry(cat, "lbl", "kind: raster_labels\npaths: ../lbl.png\nalign_with: img\n"
                "classes: {1: a, 2: b}\n")  # fmt: skip
    config = Path(__file__).resolve().parents[2] / "recipes" / "finetune-segmentation.yaml"
    code = main(["--catalog", str(cat), "fit", "--config", str(config), "--set", "data.entry=img",
                 "--set", "data.labels=lbl", "--set", "data.chip_size=64", "--set",
                 "data.chips_per_epoch=16", "--set", "data.eval_chips=8", "--set",
                 "data.batch_size=4", "--max-epochs", "1", "--set",
                 f"trainer.default_root_dir={tmp_path / 'run'}"])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0, captured.err
    import pandas as pd

    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    miou = metrics["val_mIoU"].dropna()
    assert len(miou) and np.isfinite(miou).all() and miou.iloc[-1] > 0.5
    assert "NotGeoreferencedWarning" not in captured.err + captured.out
