"""Raster sources: the entry grid rule (finest band, ``res``), and training reading it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import Resampling, reproject

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sources import file_source, imagery_source
from tests.rasters import smooth_field, write_entry, write_raster

ORIGIN = (500_000.0, 5_000_000.0)
FINE, COARSE = 10.0, 30.0
BANDS = ["B01", "B02", "B03", "B04"]


@dataclass(frozen=True)
class MixedScene:
    """A 4-band scene as one file per band (B01 at 3x coarser resolution, listed first) and as
    one stacked file with B01 already resampled onto the fine grid (bilinear, like training)."""

    catalog: Path  # entries: 's2' (band files, nodata: 0), 's2-20m' (res: 20)
    stacked: Path  # 4 bands on the fine grid, nodata 0, band descriptions B01..B04
    shape: tuple[int, int]  # fine grid (rows, cols)
    transform: rasterio.Affine  # fine grid
    pixels: np.ndarray  # [4, H, W] the stacked file's pixels


def write_mixed_resolution_scene(folder: Path, shape: tuple[int, int] = (60, 90)) -> MixedScene:
    """Write the band files, the stacked file and their catalog under ``folder``.

    The band files carry no nodata value: the entry's ``nodata: 0`` marks a nodata corner
    present in every band (B01's corner, resampled, is exactly the fine bands' corner).
    """
    h, w = shape
    fine = smooth_field((h, w), seed=1, bands=3)
    coarse = smooth_field((h // 3, w // 3), seed=2, bands=1)
    coarse[:, :4, :5] = 0
    b01 = np.zeros((1, h, w), np.uint16)
    reproject(
        coarse, b01, src_transform=from_origin(*ORIGIN, COARSE, COARSE), src_crs="EPSG:32633",
        dst_transform=from_origin(*ORIGIN, FINE, FINE), dst_crs="EPSG:32633",
        resampling=Resampling.bilinear, src_nodata=0, dst_nodata=0,
    )  # fmt: skip
    fine[:, b01[0] == 0] = 0
    bands = folder / "bands"
    write_raster(bands / "S2_B01.tif", coarse, origin=ORIGIN, res=COARSE)
    for name, band in zip(BANDS[1:], fine, strict=True):
        write_raster(bands / f"S2_{name}.tif", band, origin=ORIGIN, res=FINE)
    pixels = np.concatenate([b01, fine])
    stacked = write_raster(folder / "stacked.tif", pixels, origin=ORIGIN, res=FINE, nodata=0)
    with rasterio.open(stacked, "r+") as ds:
        ds.descriptions = tuple(BANDS)
    cat = folder / "catalog"
    entry = f"kind: imagery\nband_files: ../bands/S2_{{band}}.tif\nbands: {BANDS}\nnodata: 0\n"
    write_entry(cat, "s2", entry)
    write_entry(cat, "s2-20m", entry + "res: 20\n")
    return MixedScene(cat, stacked, shape, from_origin(*ORIGIN, FINE, FINE), pixels)


@pytest.fixture
def mixed(tmp_path: Path) -> MixedScene:
    return write_mixed_resolution_scene(tmp_path)


def test_band_files_are_read_on_the_finest_band_grid(mixed: MixedScene) -> None:
    entry = Catalog(mixed.catalog).get("s2")
    source = imagery_source(entry)
    assert source.grid.transform == mixed.transform, "B01 (30 m) is first, the grid is 10 m"
    assert (source.grid.height, source.grid.width) == mixed.shape
    assert source.bands == tuple(BANDS)
    assert source.nodata == (0.0,) * 4, "the entry's nodata overrides the files' (none)"
    # Training reads the entry on that grid: chips hold B01 resampled bilinearly, in band order.
    ds = dataset_from_entry(entry)
    assert ds.res == (FINE, FINE)
    x0, y1 = ORIGIN
    chip = ds[x0 + 50 : x0 + 50 + 32 * FINE, y1 - 40 * FINE : y1]
    assert chip["image"].shape == (4, 40, 32)
    expected = mixed.pixels[:, :40, 5:37]
    np.testing.assert_array_equal(chip["image"].numpy(), expected.astype(np.float32))
    np.testing.assert_array_equal(chip["valid"].numpy(), (expected != 0).all(0))
    assert not chip["valid"][:12, :10].any() and chip["valid"][12:, 10:].all()


def test_res_overrides_the_finest_band(mixed: MixedScene) -> None:
    entry = Catalog(mixed.catalog).get("s2-20m")
    source = imagery_source(entry)
    assert source.grid.res == (20.0, 20.0)
    assert (source.grid.height, source.grid.width) == (mixed.shape[0] // 2, mixed.shape[1] // 2)
    assert source.grid.transform == from_origin(*ORIGIN, 20.0, 20.0)
    assert dataset_from_entry(entry).res == (20.0, 20.0)


def test_prediction_and_training_read_the_same_pixels(mixed: MixedScene) -> None:
    """The stacked file read as a file equals the band files read as the entry."""
    source = imagery_source(Catalog(mixed.catalog).get("s2"))
    h, w = mixed.shape
    with source.reader() as entry, file_source(mixed.stacked).reader() as stacked:
        for window in [(0, h, 0, w), (7, 41, 13, 77), (50, 60, 80, 90)]:
            a, valid_a = entry.read(*window)
            b, valid_b = stacked.read(*window)
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(valid_a, valid_b)


def test_align_with_masks_take_the_entry_grid(mixed: MixedScene) -> None:
    """Masks without georeferencing borrow the grid the imagery is read on (the fine one)."""
    from PIL import Image

    from geocmid.data.datasets import raster_labels_dataset

    h, w = mixed.shape
    mask = np.ones(mixed.shape, np.uint8)
    mask[:, w // 2 :] = 2
    Image.fromarray(mask).save(mixed.catalog.parent / "mask.png")
    write_entry(
        mixed.catalog,
        "labels",
        "kind: raster_labels\npaths: ../mask.png\nclasses: {1: a, 2: b}\nalign_with: s2\n",
    )
    catalog = Catalog(mixed.catalog)
    # Validated against the grid the imagery is read on (10 m), not its first file (B01, 30 m).
    labels = raster_labels_dataset(catalog.get("labels"), catalog)
    assert labels.res == (FINE, FINE)
    x0, y1 = ORIGIN
    chip = labels[x0 : x0 + w * FINE, y1 - h * FINE : y1]["mask"]
    np.testing.assert_array_equal(chip.numpy(), mask)


def test_tiles_are_one_mosaic_on_one_grid(tmp_path: Path) -> None:
    image = smooth_field((40, 64), seed=3, bands=2)
    write_raster(tmp_path / "tiles" / "a.tif", image[:, :, :32], origin=ORIGIN, nodata=0)
    write_raster(
        tmp_path / "tiles" / "b.tif",
        image[:, :, 32:],
        origin=(ORIGIN[0] + 320, ORIGIN[1]),
        nodata=0,
    )
    write_entry(tmp_path / "cat", "tiles", "kind: imagery\npaths: ../tiles\nbands: [r, g]\n")
    source = imagery_source(Catalog(tmp_path / "cat").get("tiles"))
    assert (source.grid.width, source.grid.height) == (64, 40) and len(source.layers) == 2
    with source.reader() as reader:
        data, valid = reader.read(-2, 42, 0, 64)  # beyond the top and bottom: nodata
    np.testing.assert_array_equal(data[:, 2:42], image)
    assert valid[2:42].all() and not valid[:2].any() and not valid[42:].any()


@pytest.mark.parametrize("order", ["ab", "ba"])
def test_overlapping_tiles_fill_each_others_holes_across_the_seam(
    tmp_path: Path, order: str
) -> None:
    """Chips across tile seams take the direct read where no earlier tile has data and the
    masked merge where tiles overlap; either way every pixel comes from a tile that has data."""
    image = smooth_field((40, 64), seed=4, bands=3)
    a, b = image[:, :, :40].copy(), image[:, :, 24:].copy()
    a[:, 10:20, 30:36] = 0  # a hole in the overlap: b has those pixels
    b[:, 30:34, 30:40] = 0  # a hole east of a: nobody has those pixels
    write_raster(tmp_path / "t" / f"{order[0]}.tif", a, origin=ORIGIN, nodata=0)
    write_raster(tmp_path / "t" / f"{order[1]}.tif", b, origin=(ORIGIN[0] + 240, ORIGIN[1]),
                 nodata=0)  # fmt: skip
    write_entry(tmp_path / "cat", "t", "kind: imagery\npaths: ../t\nbands: [r, g, b]\n")
    source = imagery_source(Catalog(tmp_path / "cat").get("t"))
    expected_valid = np.ones((40, 64), bool)
    expected_valid[30:34, 54:64] = False
    with source.reader() as reader:
        for rows, cols in [((0, 40), (0, 64)), ((5, 35), (20, 50)), ((8, 22), (28, 44))]:
            data, valid = reader.read(*rows, *cols)
            sl = (slice(*rows), slice(*cols))
            np.testing.assert_array_equal(valid, expected_valid[sl])
            np.testing.assert_array_equal(data[:, valid], image[:, sl[0], sl[1]][:, valid])


def test_a_file_warped_onto_another_grid_is_nodata_outside_its_footprint(
    mixed: MixedScene, tmp_path: Path
) -> None:
    """The other date of a pair, in another CRS, without a nodata value and covering the east
    half only: west of its footprint nothing is valid (the warp's alpha band, not the zeros
    it fills with)."""
    import shapely
    from rasterio.features import geometry_mask
    from rasterio.warp import calculate_default_transform, transform_geom

    h, w = mixed.shape
    east = mixed.pixels[:, :, w // 2 :]
    east_transform = mixed.transform @ rasterio.Affine.translation(w // 2, 0)
    bounds = rasterio.transform.array_bounds(h, w // 2, east_transform)
    transform, width, height = calculate_default_transform(
        "EPSG:32633", "EPSG:3035", w // 2, h, *bounds
    )
    other = np.zeros((4, height, width), np.uint16)
    reproject(
        east, other, src_transform=east_transform, src_crs="EPSG:32633", dst_transform=transform,
        dst_crs="EPSG:3035", resampling=Resampling.bilinear,
    )  # fmt: skip
    path = tmp_path / "other.tif"
    with rasterio.open(
        path, "w", driver="GTiff", width=width, height=height, count=4, dtype="uint16",
        crs="EPSG:3035", transform=transform,
    ) as dst:  # fmt: skip
        dst.write(other)
    grid = file_source(mixed.stacked).grid
    source = file_source(path).on_grid(grid, "bilinear")
    with source.reader() as reader:
        data, valid = reader.read(0, h, 0, w)
    # The file's footprint (a rotated rectangle) on the grid: what it touches, what is well in.
    footprint = shapely.geometry.shape(
        transform_geom("EPSG:3035", "EPSG:32633", shapely.geometry.mapping(
            shapely.box(*rasterio.transform.array_bounds(height, width, transform))
        ))
    )  # fmt: skip
    touched = ~geometry_mask([footprint], (h, w), mixed.transform, all_touched=True)
    well_in = ~geometry_mask([footprint.buffer(-15.0)], (h, w), mixed.transform)
    assert not (valid & ~touched).any(), "outside the footprint: no data"
    assert (valid | ~well_in).all() and well_in.sum() > 500, "inside it, data"
    assert not valid[:, : w // 2 - 6].any()
    inner = (slice(None), slice(5, -5), slice(w // 2 + 5, -5))
    assert np.abs(data[inner].astype(float) - mixed.pixels[inner]).mean() < 50



def test_files_left_open_by_a_dataset_are_closed_at_exit(tmp_path: Path) -> None:
    """Datasets keep their readers' files open for the life of the process; an exit hook
    closes them while Python is intact (left to interpreter teardown, GDAL closed them after
    rasterio's error handler could run and each printed 'Error in sys.excepthook')."""
    from geocmid.data import sources

    write_raster(tmp_path / "img" / "a.tif", smooth_field((64, 64), seed=5, bands=2),
                 origin=ORIGIN, nodata=0)  # fmt: skip
    write_entry(tmp_path / "cat", "img", "kind: imagery\npaths: ../img\nbands: [r, g]\n")
    reader = imagery_source(Catalog(tmp_path / "cat").get("img")).reader()
    _, valid = reader.read(0, 8, 0, 8)
    assert valid.all()
    files = [h.dataset for h in reader._handles.values() if h is not None]
    assert files and not any(f.closed for f in files)
    sources._close_open_readers()
    assert all(f.closed for f in files)

