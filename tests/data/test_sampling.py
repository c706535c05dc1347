"""Chip sampling: nodata rejection, spatially disjoint splits, rank-distinct chips, alignment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from rasterio.warp import Resampling, calculate_default_transform, reproject
from torchgeo.samplers import RandomPatchSampler

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sampling import NodataRejectingDataset, nodata_fraction, rank_seed
from geocmid.datamodules import PretrainDataModule, SupervisedGeoDataModule
from tests.rasters import smooth_field, write_entry, write_raster


@pytest.fixture
def half_nodata(tmp_path: Path) -> Catalog:
    """A 4-band scene whose western 60% is nodata, plus labels (class = quadrant)."""
    image = smooth_field((256, 256), bands=4)
    image[:, :, :154] = 0
    write_raster(tmp_path / "img.tif", image, nodata=0)
    labels = np.ones((256, 256), np.uint8)
    labels[128:] = 2
    write_raster(tmp_path / "lab.tif", labels)
    cat = tmp_path / "catalog"
    write_entry(cat, "scene", "kind: imagery\npaths: ../img.tif\nbands: [b, g, r, n]\n")
    write_entry(cat, "labels", "kind: raster_labels\npaths: ../lab.tif\nclasses: {1: a, 2: b}\n")
    return Catalog(cat)


def test_nodata_heavy_chips_are_replaced(half_nodata: Catalog) -> None:
    ds = dataset_from_entry(half_nodata.get("scene"))
    sampler = RandomPatchSampler(ds, size=32, length=40, generator=1)
    raw = [nodata_fraction(ds[q]) for q in sampler]
    assert max(raw) > 0.5, "the sampler does draw nodata-heavy chips"
    chips = NodataRejectingDataset(ds, size=32, max_nodata=0.1, seed=0)
    kept = [nodata_fraction(chips[q]) for q in sampler]
    assert max(kept) <= 0.1 and chips.rejected > 0 and chips.gave_up == 0


def test_pretrain_batches_are_normalised_and_valid(half_nodata: Catalog) -> None:
    dm = PretrainDataModule(
        "scene", half_nodata.folder, chip_size=32, batch_size=8, chips_per_epoch=16, max_nodata=0.2
    )
    batches = list(dm.train_dataloader())
    assert len(batches) == 2
    for batch in batches:
        batch = dm.on_after_batch_transfer(batch, 0)
        assert batch["image"].shape == (8, 4, 32, 32)
        assert float(batch["valid"].float().mean()) >= 0.8
        assert abs(float(batch["image"][:, :, batch["valid"][0]].mean())) < 3


def test_two_ranks_draw_different_chips(half_nodata: Catalog, monkeypatch) -> None:
    chips = []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        dm = PretrainDataModule(
            "scene",
            half_nodata.folder,
            chip_size=32,
            batch_size=4,
            chips_per_epoch=16,
            max_nodata=1.0,
            seed=7,
        )
        loader = dm.train_dataloader()
        assert len(loader.sampler) == 8, "each rank draws its share of the epoch"
        chips.append({tuple(b[:4].tolist()) for batch in loader for b in batch["bounds"]})
    assert not chips[0] & chips[1]
    assert rank_seed(7, 0) != rank_seed(7, 1)


def test_splits_are_spatially_disjoint(half_nodata: Catalog) -> None:
    dm = SupervisedGeoDataModule(
        "scene",
        labels="labels",
        catalog=half_nodata.folder,
        chip_size=16,
        batch_size=4,
        block_size=2,
        chips_per_epoch=64,
        eval_chips=32,
        max_nodata=1.0,
    )
    dm.setup()
    train, val, test = dm.regions
    for a, b in ((train, val), (train, test), (val, test)):
        assert a.intersection(b).area == pytest.approx(0, abs=1e-6)
    boxes = []
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        split_boxes = [
            shapely.box(float(b[0]), float(b[3]), float(b[1]), float(b[4]))
            for batch in loader
            for b in batch["bounds"]
        ]
        assert split_boxes
        boxes.append(shapely.union_all(split_boxes))
    for i in range(3):
        for j in range(i + 1, 3):
            assert boxes[i].intersection(boxes[j]).area == pytest.approx(0, abs=1e-6)
    batch = next(iter(dm.train_dataloader()))
    assert set(batch["mask"].unique().tolist()) <= {0, 1, 255}


def test_supervised_training_chips_rejected_within_the_train_region(half_nodata: Catalog) -> None:
    dm = SupervisedGeoDataModule(
        "scene", labels="labels", catalog=half_nodata.folder, chip_size=16, batch_size=4,
        block_size=2, chips_per_epoch=64, eval_chips=8, max_nodata=0.1,
    )  # fmt: skip
    dm.setup()
    others = shapely.union_all(dm.regions[1:])
    loader = dm.train_dataloader()
    for batch in loader:
        assert float((~batch["valid"]).float().mean(dim=(1, 2)).max()) <= 0.1
        for b in batch["bounds"]:
            chip = shapely.box(float(b[0]), float(b[3]), float(b[1]), float(b[4]))
            assert chip.intersection(others).area == pytest.approx(0, abs=1e-6)
    assert loader.dataset.rejected > 0, "nodata-heavy draws were replaced"


def test_bitemporal_dates_in_other_crs_and_resolution_align(tmp_path: Path) -> None:
    first = smooth_field((200, 200), bands=3, seed=3)
    before = write_raster(tmp_path / "t1.tif", first, crs="EPSG:32633", res=10.0)
    with rasterio.open(before) as src:
        transform, width, height = calculate_default_transform(
            src.crs, "EPSG:3035", src.width, src.height, *src.bounds, resolution=15.0
        )
        warped = np.zeros((3, height, width), np.uint16)
        reproject(
            first,
            warped,
            src_transform=src.transform,
            src_crs=src.crs,
            dst_transform=transform,
            dst_crs="EPSG:3035",
            resampling=Resampling.bilinear,
        )
    with rasterio.open(
        tmp_path / "t2.tif",
        "w",
        driver="GTiff",
        width=width,
        height=height,
        count=3,
        dtype="uint16",
        crs="EPSG:3035",
        transform=transform,
        nodata=0,
    ) as dst:
        dst.write(warped)
    cat = tmp_path / "cat"
    write_entry(cat, "t1", "kind: imagery\npaths: ../t1.tif\nbands: 3\ndate: 2020-01-01\n")
    write_entry(cat, "t2", "kind: imagery\npaths: ../t2.tif\nbands: 3\ndate: 2021-01-01\n")
    write_entry(cat, "pair", "kind: bitemporal\nbefore: t1\nafter: t2\n")
    catalog = Catalog(cat)
    ds = dataset_from_entry(catalog.get("pair"), catalog)
    assert ds.crs.to_epsg() == 32633 and ds.res == (10.0, 10.0)
    x, y, _ = ds.bounds
    cx, cy = (x.start + x.stop) / 2, (y.start + y.stop) / 2
    chip = ds[cx - 640 : cx + 640, cy - 640 : cy + 640]
    assert chip["image"].shape == (2, 3, 128, 128)
    a, b = chip["image"][0].numpy(), chip["image"][1].numpy()
    valid = chip["valid"].numpy()
    assert valid.mean() > 0.95
    corr = np.corrcoef(a[:, valid].ravel(), b[:, valid].ravel())[0, 1]
    assert corr > 0.95, "the second date is resampled onto the first date's grid"
