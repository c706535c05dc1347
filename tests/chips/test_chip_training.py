"""Fine-tuning and pretraining on chip datasets: geocmid's chip datamodules and TorchGeo's own
dataset classes (UCMerced, LEVIRCD, MillionAID) on files laid out as they expect; no download."""

from __future__ import annotations

import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from geocmid.cli import main
from geocmid.errors import DataError
from tests.chips.fixtures import levir_layout, write_png
from tests.cmid.test_pretrain_cli import TINY_MODEL
from tests.rasters import write_entry

torch.set_num_threads(1)


def _trainer(tmp_path: Path, epochs: int = 1, **kw) -> L.Trainer:
    return L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path, **kw,
    )  # fmt: skip


@pytest.mark.slow
def test_chip_change_fit_learns_on_levir_layout(tmp_path: Path) -> None:
    from geocmid.datamodules import ChipChangeDataModule
    from geocmid.tasks.change import ChangeTask

    levir_layout(tmp_path / "LEVIR-CD", size=64, counts={"train": 4, "val": 2, "test": 1})
    write_entry(tmp_path / "cat", "levir", "kind: chip_change\nroot: ../LEVIR-CD\n"
                "splits: {train: train, val: val, test: test}\n")  # fmt: skip
    L.seed_everything(0)
    dm = ChipChangeDataModule("levir", tmp_path / "cat", chip_size=32, batch_size=4,
                              chips_per_epoch=24)  # fmt: skip
    task = ChangeTask(model="unet", backbone="resnet18", lr=3e-3, backbone_lr=3e-3,
                      ignore_index=255, class_weights=[1.0, 3.0])  # fmt: skip
    trainer = _trainer(tmp_path, epochs=3)
    trainer.fit(task, datamodule=dm)
    assert trainer.global_step == 18
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (4, 2, 3, 32, 32) and batch["mask"].max() == 1
    assert len(dm.val_dataloader().dataset) == 2 * 4  # 2 pairs × 4 windows: every pixel scored
    f1 = float(trainer.callback_metrics["val_change_F1"])
    assert f1 > 0.5, f1  # bright new buildings on a dull background: easy, if the data is right


@pytest.mark.slow
def test_chip_segmentation_fit_colour_masks(tmp_path: Path) -> None:
    from geocmid.datamodules import ChipSegmentationDataModule
    from geocmid.tasks.segmentation import SegmentationTask

    rng = np.random.default_rng(1)
    colours = {0: (60, 16, 152), 1: (254, 221, 58)}
    for i in range(6):
        water = np.zeros((48, 48), bool)
        water[:, : rng.integers(12, 36)] = True
        image = np.where(water[..., None], 40, 200) + rng.integers(0, 20, (48, 48, 3))
        mask = np.where(water[..., None], colours[1], colours[0]).astype(np.uint8)
        mask[0, 0] = 0  # one black pixel, ignored
        write_png(tmp_path / "d" / f"Tile {i % 3}" / "images" / f"p{i}.jpg", image.astype(np.uint8))
        write_png(tmp_path / "d" / f"Tile {i % 3}" / "masks" / f"p{i}.png", mask)
    write_entry(tmp_path / "cat", "seg", "kind: chip_segmentation\nroot: ../d\n"
                "mask_format: colors\nclasses: {0: {name: land, color: '#3c1098'}, "
                "1: {name: water, color: '#fedd3a'}}\nignore_colors: ['#000000']\n"
                "splits: {train: ['Tile 0', 'Tile 1'], val: 'Tile 2'}\n")  # fmt: skip
    L.seed_everything(0)
    dm = ChipSegmentationDataModule("seg", tmp_path / "cat", chip_size=32, batch_size=4,
                                    chips_per_epoch=24)  # fmt: skip
    task = SegmentationTask(model="unet", backbone="resnet18", lr=3e-3, backbone_lr=3e-3,
                            ignore_index=255)  # fmt: skip
    trainer = _trainer(tmp_path, epochs=3)
    trainer.fit(task, datamodule=dm)
    assert [c["name"] for c in task.hparams["classes"]] == ["land", "water"]
    batch = next(iter(dm.val_dataloader()))
    assert (batch["mask"] == 255).any()  # the black pixel
    miou = float(trainer.callback_metrics["val_mIoU"])
    assert miou > 0.6, miou


def test_torchgeo_ucmerced_entry_trains_classification(tmp_path: Path) -> None:
    from torchgeo.datasets import UCMerced

    from geocmid.datamodules import TorchGeoChipDataModule
    from geocmid.tasks.classification import ClassificationTask

    root = tmp_path / "ucmerced"
    images = root / "UCMerced_LandUse" / "Images"
    rng = np.random.default_rng(0)
    names = {s: [] for s in ("train", "val", "test")}
    for c, level in (("agricultural", 60), ("beach", 190)):
        for i in range(8):
            name = f"{c}{i:02d}.tif"
            write_png(
                images / c / name,
                (level + 10 * rng.standard_normal((32, 32, 3))).clip(0, 255).astype(np.uint8),
            )
            names["train" if i < 4 else "val" if i < 6 else "test"].append(name)
    for split, files in names.items():
        (root / f"uc_merced-{split}.txt").write_text("\n".join(files) + "\n")
    write_entry(tmp_path / "cat", "ucm", "kind: torchgeo_dataset\ndataset: UCMerced\n"
                f"root: {root}\ntask: classification\n")  # fmt: skip
    dm = TorchGeoChipDataModule("ucm", tmp_path / "cat", chip_size=32, batch_size=4)
    dm.setup()
    assert isinstance(dm.datasets["val"], UCMerced) and len(dm.datasets["test"]) == 4
    L.seed_everything(0)
    task = ClassificationTask(backbone="resnet18", lr=1e-2, backbone_lr=1e-2)
    trainer = _trainer(tmp_path, epochs=3)
    trainer.fit(task, datamodule=dm)
    assert task.hparams["classes"][1]["name"] == "beach"
    assert float(trainer.callback_metrics["val_OA"]) == 1.0  # dark vs bright scenes


def test_torchgeo_levircd_entry_trains_change(tmp_path: Path) -> None:
    from torchgeo.datasets import LEVIRCD

    from geocmid.datamodules import TorchGeoChipDataModule

    root = tmp_path / "levir"
    levir_layout(tmp_path / "tmp", size=64, counts={"train": 4, "test": 2})
    for role in ("A", "B", "label"):  # TorchGeo's LEVIRCD: root/{A,B,label}/<split>_<n>.png
        (root / role).mkdir(parents=True)
        for split in ("train", "test"):
            for f in (tmp_path / "tmp" / split / role).iterdir():
                f.rename(root / role / f.name)
    write_entry(tmp_path / "cat", "levir-cd", f"kind: torchgeo_dataset\ndataset: LEVIRCD\n"
                f"root: {root}\nargs: {{split: train}}\ntask: change\n")  # fmt: skip
    assert main(["--catalog", str(tmp_path / "cat"), "catalog", "validate", "levir-cd"]) == 0
    dm = TorchGeoChipDataModule(
        "levir-cd", tmp_path / "cat", chip_size=32, batch_size=2, chips_per_epoch=4
    )
    dm.setup()
    assert isinstance(dm.datasets["test"], LEVIRCD) and len(dm.datasets["test"]) == 2
    assert len(dm.datasets["val"]) == 1  # LEVIRCD has no val split: drawn from train
    batch = next(iter(dm.val_dataloader()))
    assert batch["image"].shape == (2, 2, 3, 32, 32) and batch["mask"].shape == (2, 32, 32)
    assert set(batch["mask"].unique().tolist()) <= {0, 1}
    from geocmid.tasks.change import ChangeTask

    trainer = _trainer(tmp_path, limit_train_batches=2, limit_val_batches=2)
    trainer.fit(ChangeTask(model="fcsiamdiff", backbone="resnet18"), datamodule=dm)
    assert trainer.global_step == 2 and "val_change_F1" in trainer.callback_metrics


def _few_images(shared_data: Path, tmp_path: Path, per_class: int = 6) -> Path:
    """A few real NWPU-RESISC45 images of 3 classes, linked into a folder-per-class tree."""
    src = shared_data / "chips/classification/nwpu-resisc12/NWPU-RESISC12/train"
    if not src.is_dir():
        pytest.skip("chip samples not found")
    root = tmp_path / "nwpu"
    for c in ("beach", "forest", "industrial_area"):
        (root / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:per_class]:
            (root / c / f.name).symlink_to(f)
    return root


@pytest.mark.slow
def test_pretrain_on_plain_rgb_folder_exports_and_probes(tmp_path: Path, shared_data: Path) -> None:
    root = _few_images(shared_data, tmp_path)
    cat = tmp_path / "cat"
    write_entry(cat, "nwpu", f"kind: image_folder\nroot: {root}\n")
    run = tmp_path / "run"
    args = ["--catalog", str(cat), "pretrain", "--entry", "nwpu", "--backbone", "resnet18",
            "--chip-size", "64", "--batch-size", "4", "--epochs", "2", "--run-dir", str(run),
            "--set", "data.num_workers=0", "--set", "model.warmup_epochs=1",
            *[a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")]]  # fmt: skip
    assert main(args) == 0
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2 * (18 // 4)  # every image once per epoch, full batches
    hp = ckpt["hyper_parameters"]
    assert hp["bands"] == ["red", "green", "blue"] and hp["data"] == "nwpu"
    assert 60 < hp["mean"][0] < 160  # 8-bit images, statistics in their units
    assert main(["export", str(run / "checkpoints/last.ckpt"), str(tmp_path / "enc")]) == 0

    from geocmid.cmid.callbacks import KNNProbe
    from geocmid.models.weights import load_backbone

    backbone, card = load_backbone(tmp_path / "enc.safetensors")
    probe = KNNProbe.from_entry("nwpu", cat, 64, card.mean, card.std, k=3, holdout=3)
    backbone.eval()
    accuracy = probe.accuracy(lambda x: backbone(x).mean((2, 3)))  # GAP of the final map
    assert 0.0 <= accuracy <= 1.0 and len(probe.labels) == 18


def test_pretrain_refuses_a_folder_smaller_than_a_batch(tmp_path: Path) -> None:
    for i in range(3):
        write_png(tmp_path / "imgs" / f"{i}.png", np.full((40, 30, 3), 50 * i, np.uint8))
    write_entry(tmp_path / "cat", "few", "kind: image_folder\nroot: ../imgs\nlabels: none\n")
    from geocmid.datamodules import ChipPretrainDataModule

    with pytest.raises(DataError, match="zero steps"):
        ChipPretrainDataModule("few", tmp_path / "cat", chip_size=32, batch_size=4).setup()
    dm = ChipPretrainDataModule("few", tmp_path / "cat", chip_size=32, batch_size=4,
                                chips_per_epoch=8, num_workers=0)  # fmt: skip
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 32, 32)
    # oblong 40x30 chips: a 30x30 square resized to 32; values stay the image's constant
    assert {int(v) for v in batch["image"].unique()} <= {0, 50, 100}


def test_pretrain_on_torchgeo_millionaid_layout(tmp_path: Path) -> None:
    from geocmid.datamodules import ChipPretrainDataModule
    from geocmid.datamodules.chip_pretrain import pretrain_datamodule_for

    rng = np.random.default_rng(0)
    for i in range(8):  # MillionAID: root/train/<scene>/<class>/*.jpg
        img = rng.integers(0, 255, (48 + 8 * i, 64, 3), dtype=np.uint8)
        write_png(tmp_path / "maid" / "train" / "agriculture" / f"c{i % 2}" / f"{i}.jpg", img)
    entry = (
        "kind: torchgeo_dataset\ndataset: MillionAID\n"
        f"root: {tmp_path / 'maid'}\nargs: {{task: multi-class, split: train}}\n"
    )
    write_entry(tmp_path / "cat", "millionaid", entry)
    assert pretrain_datamodule_for("millionaid", tmp_path / "cat").endswith(
        "ChipPretrainDataModule"
    )
    dm = ChipPretrainDataModule("millionaid", tmp_path / "cat", chip_size=32, batch_size=4,
                                num_workers=0)  # fmt: skip
    batch = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert batch["image"].shape == (4, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert abs(float(batch["image"].mean())) < 0.5  # normalised with the data's statistics
    assert dm.task_args()["data"] == "millionaid"


def test_tiles_smaller_than_the_chip_are_a_warning_with_the_numbers(tmp_path: Path, caplog) -> None:
    """Two of six training pairs are 48x48 with 64 px chips: trained on, with one warning."""
    import logging

    from geocmid.datamodules import ChipChangeDataModule
    from tests.chips.fixtures import change_triplet

    counts = {"train": 4, "val": 1, "test": 1}
    root = levir_layout(tmp_path / "LEVIR-CD", size=64, counts=counts)
    rng = np.random.default_rng(1)
    for i in (4, 5):
        for folder, array in zip(("A", "B", "label"), change_triplet(rng, 48), strict=True):
            write_png(root / "train" / folder / f"train_{i}.png", array)
    write_entry(tmp_path / "cat", "levir", "kind: chip_change\nroot: ../LEVIR-CD\n"
                "splits: {train: train, val: val, test: test}\n")  # fmt: skip
    caplog.set_level(logging.INFO)
    dm = ChipChangeDataModule("levir", tmp_path / "cat", chip_size=64, batch_size=2)
    dm.setup()
    dm.setup()  # once
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    padded = 2 / 6 * (1 - 48 * 48 / 64**2)  # two tiles of six, 44 % of their chips
    assert "2 of 6 training tiles are smaller than the chip size (48x48 px" in warnings[0]
    assert f"{padded:.0%} of the pixels of training chips would be padding" in warnings[0]
    assert "set data.chip_size to at most 48" in warnings[0], warnings
    assert dm.train_dataloader().dataset[0]["image"].shape == (2, 3, 64, 64)  # still trains


def test_a_chip_mostly_padding_on_every_tile_is_refused(tmp_path: Path) -> None:
    from geocmid.datamodules import ChipSegmentationDataModule
    from geocmid.errors import ConfigError

    rng = np.random.default_rng(0)
    for i in range(6):
        write_png(tmp_path / "seg" / "images" / f"t{i}.png", rng.integers(0, 255, (40, 40, 3),
                                                                          np.uint8))  # fmt: skip
        write_png(tmp_path / "seg" / "masks" / f"t{i}.png", rng.integers(0, 2, (40, 40), np.uint8))
    write_entry(tmp_path / "cat", "seg", "kind: chip_segmentation\nroot: ../seg\n"
                "classes: {0: background, 1: thing}\n")  # fmt: skip
    dm = ChipSegmentationDataModule("seg", tmp_path / "cat", chip_size=64)
    with pytest.raises(ConfigError) as info:
        dm.setup()
    text = info.value.format()
    assert re.search(r"(\d) of \1 training tiles are smaller than the chip size \(40x40 px", text)
    assert "61% of the pixels" in text and "at most 40" in text and "e.g. 32" in text, text
    ChipSegmentationDataModule("seg", tmp_path / "cat", chip_size=32).setup()  # the fix works
