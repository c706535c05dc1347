"""Every catalog kind on the real samples of ../shared/data (skipped when absent)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.crs import CRS

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import ClassLookup, dataset_from_entry
from geocmid.datamodules import SupervisedGeoDataModule
from tests.rasters import write_entry


@pytest.fixture
def catalog(real_catalog: Path) -> Catalog:
    return Catalog(real_catalog)


def corner_chip(ds, size: int = 32) -> dict:
    x, y, _ = ds.bounds
    return ds[x.start : x.start + size * x.step, y.stop - size * y.step : y.stop]


def test_wkt_quadrant_tiles_read_as_one_mosaic(catalog: Catalog) -> None:
    ds = dataset_from_entry(catalog.get("rgb-quads"))
    assert len(ds) == 4
    assert CRS.from_wkt(ds.crs.to_wkt()).to_dict()["zone"] == 18
    x, y, _ = ds.bounds
    assert (x.start, x.stop, y.start, y.stop) == pytest.approx(
        (101985.0, 339315.0, 2611485.0, 2826915.0)
    )
    # A chip straddling all four tiles is merged, not nodata.
    cx, cy = 222000.0, 2707000.0
    chip = ds[cx - 30 * x.step : cx + 30 * x.step, cy - 30 * y.step : cy + 30 * y.step]
    assert chip["image"].shape == (3, 60, 60)
    for quadrant in (chip["valid"][:30, :30], chip["valid"][:30, 30:], chip["valid"][30:, :30]):
        assert quadrant.float().mean() > 0.5


def test_sentinel2_band_files_stack(catalog: Catalog) -> None:
    ds = dataset_from_entry(catalog.get("s2"))
    assert ds.crs.to_epsg() == 32629 and ds.res == (200.0, 200.0)
    chip = corner_chip(ds, 64)
    assert chip["image"].shape == (2, 64, 64)
    assert not torch.equal(chip["image"][0], chip["image"][1])


def test_float64_equal_earth_band_nodata(catalog: Catalog) -> None:
    ds = dataset_from_entry(catalog.get("le07"))
    assert ds.crs.to_epsg() == 8858 and ds.res == (120.0, 120.0)
    x, y, _ = ds.bounds
    assert (x.start, y.stop) == pytest.approx((3118725.0, -3279495.0))
    chip = ds[x.start : x.stop, y.start : y.stop]
    image, valid = chip["image"], chip["valid"]
    assert image.shape == (1, 168, 168)
    invalid = image[0][~valid]
    assert bool(((invalid == 32768) | invalid.isnan()).all())
    assert bool(image[0][valid].isfinite().all())
    assert 0 < valid.float().mean() < 1, "the sample has both data and nodata pixels"
    assert float(image[0][valid].max()) < 32768


def test_envi_taizhou_pair_with_class_masks(catalog: Catalog) -> None:
    ds = dataset_from_entry(catalog.get("taizhou"), catalog)
    assert ds.crs.to_epsg() == 32651
    chip = corner_chip(ds, 128)
    assert chip["image"].shape == (2, 6, 128, 128)
    mask = chip["mask"]
    assert set(mask.unique().tolist()) <= {0, 1, 255}
    # Whole-scene label counts match the BMP masks pixel for pixel.
    x, y, _ = ds.bounds
    whole = ds[x.start : x.stop, y.start : y.stop]["mask"]
    from PIL import Image

    change = np.array(Image.open(catalog.get("tz-change").files()[0])) != 0
    assert int((whole == 1).sum()) == int(
        change.reshape(whole.shape[0], whole.shape[1], -1).any(-1).sum()
    )


def test_nc_labels_in_other_crs_align_with_bands(catalog: Catalog) -> None:
    image = dataset_from_entry(catalog.get("nc"))
    labels = dataset_from_entry(catalog.get("nc-labels"), catalog, crs=image.crs, res=image.res)
    assert labels.crs == image.crs
    ix, iy, _ = image.bounds
    lx, ly, _ = labels.bounds
    assert (lx.start, lx.stop, ly.start, ly.stop) == pytest.approx(
        (ix.start, ix.stop, iy.start, iy.stop), abs=2.0
    )
    dm = SupervisedGeoDataModule(
        "nc",
        labels="nc-labels",
        catalog=catalog.folder,
        chip_size=64,
        batch_size=4,
        chips_per_epoch=8,
        eval_chips=4,
        block_size=1.5,
    )
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 6, 64, 64)
    assert set(batch["mask"].unique().tolist()) <= set(range(7)) | {255}
    assert float(batch["image"].abs().max()) < 50, "per-band nodata must not leak into the image"


def test_vector_labels_real(catalog: Catalog) -> None:
    image = dataset_from_entry(catalog.get("atlanta"))
    buildings = dataset_from_entry(catalog.get("atlanta-buildings"), crs=image.crs, res=image.res)
    mask_ds = dataset_from_entry(catalog.get("atlanta-mask"), catalog, crs=image.crs, res=image.res)
    x, y, _ = image.bounds
    vec = buildings[x.start : x.stop, y.start : y.stop]["mask"]
    ras = mask_ds[x.start : x.stop, y.start : y.stop]["mask"]
    assert vec.shape == ras.shape == (900, 900)
    # Burnt on the image grid exactly where rasterio burns the GeoJSON itself ...
    import geopandas as gpd
    import rasterio
    from rasterio.features import rasterize

    path = catalog.get("atlanta-buildings").files()[0]
    with rasterio.open(catalog.get("atlanta").files()[0]) as src:
        expected = rasterize(
            gpd.read_file(path).geometry, out_shape=(900, 900), transform=src.transform
        )
    agreement = float(((vec > 0).numpy() == (expected > 0)).mean())
    assert agreement > 0.995 and int(expected.sum()) > 10_000
    # ... and the un-georeferenced mask lands pixel for pixel on the image grid (align_with).
    with rasterio.open(catalog.get("atlanta-mask").files()[0]) as src:
        assert np.array_equal(ras.numpy(), src.read(1).astype(np.int64))
    nc = dataset_from_entry(catalog.get("nc"))
    polygons = dataset_from_entry(catalog.get("nc-polygons"), crs=nc.crs, res=nc.res)
    nx, ny, _ = nc.bounds
    burnt = polygons[nx.start : nx.stop, ny.start : ny.stop]["mask"]
    assert set(burnt.unique().tolist()) - {0}, "polygon classes burnt into the mask"


def test_raster_mask_class_lookup_rejects_unknown_values(catalog: Catalog) -> None:
    lookup = ClassLookup(catalog.get("nc-labels").classes, None, "nc-labels")
    from geocmid.errors import DataError

    with pytest.raises(DataError, match="not in the class table"):
        lookup(torch.tensor([[1, 9]]))
    assert lookup(torch.tensor([[1, 7]])).tolist() == [[0, 6]]


def test_image_folder_on_real_images(tmp_path: Path, shared_data: Path) -> None:
    root = tmp_path / "scenes"
    for cls, src in (
        ("forest", "detection/neon-trees/SOAP_061.png"),
        ("canopy", "detection/neon-trees/2019_BLAN_3_751000_4330000_image_crop.jpg"),
    ):
        (root / cls).mkdir(parents=True)
        (root / cls / Path(src).name).symlink_to(shared_data / src)
    write_entry(tmp_path / "cat", "scenes", f"kind: image_folder\nroot: {root}\n")
    ds = dataset_from_entry(Catalog(tmp_path / "cat").get("scenes"))
    assert len(ds) == 2 and ds.classes == ["canopy", "forest"]
    sample = ds[1]
    assert sample["image"].shape == (3, 400, 400) and int(sample["label"]) == 1
    assert math.isfinite(float(sample["image"].mean()))


def test_fast_reads_equal_torchgeo_merge(catalog: Catalog) -> None:
    """geocmid's windowed fast path returns TorchGeo's pixels, across tile borders too.

    TorchGeo resamples bilinearly even on-grid, so pixels next to nodata may differ by the
    interpolation; every pixel holding data must be identical.
    """
    from torchgeo.datasets import RasterDataset
    from torchgeo.samplers import RandomPatchSampler

    ours = dataset_from_entry(catalog.get("rgb-quads"))

    class Plain(RasterDataset):
        filename_glob = "rgb?.tif"

    plain = Plain(list(ours.index.filepath))
    crossing = 0
    for query in RandomPatchSampler(ours, size=64, length=60, generator=0):
        a, b = ours[query]["image"], plain[query]["image"]
        assert not bool(((a != b) & (a != 0)).any())
        crossing += (
            len(ours.index.cx[query[0].start : query[0].stop, query[1].start : query[1].stop]) > 1
        )
    assert crossing > 0, "some chips cross tile borders"
