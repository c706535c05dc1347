"""Preflight: a training run whose data cannot yield a batch is refused before training, with
the numbers (chip positions, largest part, usable chips) and the setting to change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import shapely
from torchgeo.samplers import RandomPatchSampler

from geocmid.cli import main
from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sampling import ChipSampler, nodata_fraction
from geocmid.datamodules import PretrainDataModule, SegmentationDataModule
from geocmid.errors import ConfigError, DataError
from tests.rasters import smooth_field, write_entry, write_raster

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = str(REPO / "recipes" / "pretrain-resnet18-cpu.yaml")
ORIGIN = (500_000.0, 5_000_000.0)


def tiles(folder: Path, size: int, count: int = 4, gap: int = 40) -> Path:
    """``count`` separate square tiles of ``size`` px (10 m), ``gap`` px apart, and a catalog."""
    for i in range(count):
        x = ORIGIN[0] + i * (size + gap) * 10.0
        write_raster(folder / f"tile{i}.tif", smooth_field((size, size), seed=i, bands=3),
                     origin=(x, ORIGIN[1]))  # fmt: skip
    entry = "kind: imagery\npaths: ../tile*.tif\nbands: [r, g, b]\n"
    write_entry(folder / "catalog", "tiles", entry)
    return folder / "catalog"


def pretrain_cli(catalog: Path, run: Path, *extra: str) -> list[str]:
    return ["pretrain", "--config", PRETRAIN, "--catalog", str(catalog), "--entry", "tiles",
            "--run-dir", str(run), "--epochs", "1", *extra]  # fmt: skip


def test_pretraining_a_scene_smaller_than_the_chip_is_refused_with_numbers(
    tmp_path: Path, capsys
) -> None:
    write_raster(tmp_path / "small.tif", smooth_field((13, 20), bands=3))
    write_entry(tmp_path / "catalog", "tiles", "kind: imagery\npaths: ../small.tif\nbands: 3\n")
    code = main(pretrain_cli(tmp_path / "catalog", tmp_path / "run", "--chip-size", "64"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "0 distinct 64-px chip position(s) (largest part 20×13 px)" in err, err
    assert "data.chip_size" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


def test_tiles_smaller_than_the_chip_are_refused_with_numbers(tmp_path: Path, capsys) -> None:
    catalog = tiles(tmp_path, 48)
    code = main(pretrain_cli(catalog, tmp_path / "run", "--chip-size", "64"))
    err = capsys.readouterr().err
    assert code == 2 and "0 distinct 64-px chip position(s) (largest part 48×48 px)" in err, err


def test_tiles_between_one_chip_and_chip_sqrt2_yield_whole_chips(tmp_path: Path) -> None:
    """80 px tiles, 64 px chips: TorchGeo's half-diagonal erosion (45 px > 40 px) leaves no
    chip; geocmid's square erosion yields chips, each wholly inside one tile."""
    catalog = Catalog(tiles(tmp_path, 80))
    dataset = dataset_from_entry(catalog.get("tiles"))
    assert list(RandomPatchSampler(dataset, size=64, length=8, generator=0)) == []
    chips = list(ChipSampler(dataset, size=64, length=24, generator=0))
    assert len(chips) == 24
    for query in chips:
        sample = dataset[query]
        assert sample["image"].shape[-2:] == (64, 64)
        assert nodata_fraction(sample) == 0.0  # inside a tile: no pixel of the gaps
    dm = PretrainDataModule("tiles", catalog.folder, chip_size=64, batch_size=8, num_workers=0)
    capacity = dm.preflight()
    assert capacity.positions == 4 * 17 * 17  # (80 - 64 + 1)² positions per tile
    assert capacity.usable == capacity.probed > 0


def test_a_scene_exactly_one_chip_trains_with_batch_one_and_is_refused_for_more(
    tmp_path: Path,
) -> None:
    write_raster(tmp_path / "one.tif", smooth_field((64, 64), bands=3))
    write_entry(tmp_path / "catalog", "one", "kind: imagery\npaths: ../one.tif\nbands: 3\n")
    dm = PretrainDataModule("one", tmp_path / "catalog", chip_size=64, batch_size=1,
                            num_workers=0)  # fmt: skip
    assert dm.preflight().positions == 1
    chips = list(ChipSampler(dm.dataset, size=64, length=3, generator=0))
    assert all(nodata_fraction(dm.dataset[q]) == 0.0 for q in chips)
    dm = PretrainDataModule("one", tmp_path / "catalog", chip_size=64, batch_size=2,
                            num_workers=0)  # fmt: skip
    with pytest.raises(ConfigError, match="fewer usable chips than one batch of 2"):
        dm.preflight()


@pytest.fixture
def scene_with_nodata(tmp_path: Path) -> Path:
    """A uint16 scene whose eastern 60 % is nodata, and labels everywhere."""
    image = smooth_field((192, 192), bands=3)
    image[:, :, 77:] = 0
    write_raster(tmp_path / "img.tif", image, nodata=0)
    labels = np.ones((192, 192), np.uint8)
    labels[96:] = 2
    write_raster(tmp_path / "lab.tif", labels)
    cat = tmp_path / "catalog"
    write_entry(cat, "scene", "kind: imagery\npaths: ../img.tif\nbands: [r, g, b]\n")
    write_entry(cat, "labels", "kind: raster_labels\npaths: ../lab.tif\nclasses: {1: a, 2: b}\n")
    return cat


def test_a_split_that_is_all_nodata_is_refused(scene_with_nodata: Path) -> None:
    dm = SegmentationDataModule("scene", "labels", scene_with_nodata, chip_size=32,
                                batch_size=2, block_size=2)  # fmt: skip
    dm.setup()
    x0, y0, _, y1 = dm.dataset.index.total_bounds
    nodata_part = shapely.box(x0 + 80 * 10.0, y0, x0 + 192 * 10.0, y1)
    dm.regions[1] = dm.regions[1].union(nodata_part) & nodata_part  # validation: nodata only
    with pytest.raises(DataError) as error:
        dm.preflight()
    text = error.value.format()
    assert "data split 'val'" in text and "0 of 16 probed chips" in text, text
    assert "mean nodata 100%" in text


def test_an_all_nodata_scene_is_refused_before_training(tmp_path: Path) -> None:
    write_raster(tmp_path / "img.tif", np.zeros((3, 96, 96), np.uint16), nodata=0)
    write_raster(tmp_path / "lab.tif", np.ones((96, 96), np.uint8))
    cat = tmp_path / "catalog"
    write_entry(cat, "scene", "kind: imagery\npaths: ../img.tif\nbands: 3\n"
                "stats: {mean: [1, 1, 1], std: [1, 1, 1]}\n")  # fmt: skip
    write_entry(cat, "labels", "kind: raster_labels\npaths: ../lab.tif\nclasses: {1: a}\n")
    dm = PretrainDataModule("scene", cat, chip_size=32, batch_size=2, num_workers=0)
    with pytest.raises(DataError, match="every probed chip is nodata"):
        dm.preflight()
