"""Detection trains on chip datasets: a DOTA labelTxt folder with object-free images, and
TorchGeo's own DOTA class over files laid out as it expects (no download)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from geocmid.data.catalog import Catalog
from geocmid.datamodules.detection_folder import DetectionFolderDataModule
from geocmid.errors import DataError
from geocmid.tasks.detection import DetectionTask
from geocmid.workflows.training import fit
from tests.detection.dota_data import dota_entry, write_dota_folder

RECIPE = Path(__file__).parents[2] / "recipes" / "finetune-detection-chips.yaml"
FAST = (
    "{rpn_pre_nms_top_n_train: 300, rpn_post_nms_top_n_train: 150, "
    "rpn_pre_nms_top_n_test: 150, rpn_post_nms_top_n_test: 100, box_batch_size_per_image: 64}"
)
SMALL = [
    "model.backbone=resnet18", "model.fpn_channels=64", "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "model.scheduler=none", "model.backbone_lr=null", f"model.detector_options={FAST}",
    "data.scale=1.0", "data.num_workers=0", "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false",
]  # fmt: skip


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def test_dota_labeltxt_folder_with_negatives_fits(tmp_path: Path, one_thread: None) -> None:
    """`geocmid fit` with the shipped recipe runs on a labelTxt folder whose splits each hold
    an image without objects: steps run, the loss is finite, both mAPs are reported."""
    root = tmp_path / "DOTA"
    write_dota_folder(root, {"train": 3, "val": 2}, size=96, count=3)
    dota_entry(tmp_path / "catalog", "dota", root)
    out = tmp_path / "run"
    result = fit(
        RECIPE, catalog=tmp_path / "catalog",
        overrides=[*SMALL, "data.entry=dota", "data.chip_size=64", "data.batch_size=2",
                   "data.chips_per_epoch=6", "data.eval_chips=8", "trainer.max_epochs=1",
                   f"trainer.default_root_dir={out}"],
    )  # fmt: skip
    m = result.metrics
    assert np.isfinite(m["train_loss"]) and 0 <= m["val_map_50"] <= 1
    assert 0 <= m["val_obb_map_50"] <= 1
    assert result.config["model"]["init_args"]["classes"][1]["name"] == "plane"


@pytest.mark.slow
def test_dota_labeltxt_folder_with_negatives_learns(tmp_path: Path, one_thread: None) -> None:
    """`geocmid fit` with the shipped recipe learns rotated planes and ships from labelTxt.

    Chance is near 0: 20-30 px boxes at random places hit a reference with IoU ≥ 0.5 in well
    under 5 % of draws (objects cover ~10 % of each image). 0.3 after 45 steps fails any model
    that does not learn, and the object-free images must not break training or scoring.
    """
    torch.manual_seed(0)
    root = tmp_path / "DOTA"
    written = write_dota_folder(root, {"train": 7, "val": 3}, size=160, count=6)
    assert written["P0006"] == [] and written["P0009"] == []  # one negative per split
    catalog = tmp_path / "catalog"
    dota_entry(catalog, "dota", root)
    # the datamodule draws chips from the negative image: no box, and a finite loss on them
    dm = DetectionFolderDataModule("dota", catalog=catalog, chip_size=96)
    dm.setup()
    assert dm.class_names == ["plane", "ship"] and dm.oriented
    negative = dm.images["train"][-1]
    chip = dm.datasets["train"][(negative, 10, 20)]
    assert chip["bbox_xyxy"].shape == (0, 4) and chip["polygon"].shape == (0, 8)
    out = tmp_path / "run"
    result = fit(
        RECIPE, catalog=catalog,
        overrides=[*SMALL, "data.entry=dota", "data.chip_size=96", "data.batch_size=4",
                   "data.chips_per_epoch=60", "data.eval_chips=27", "trainer.max_epochs=3",
                   "model.lr=5e-4", f"trainer.default_root_dir={out}"],
    )  # fmt: skip
    m = result.metrics
    assert m["val_map_50"] > 0.3, f"mAP@0.5 {m['val_map_50']:.3f} after 45 steps"
    # oriented references are scored too; a horizontal box of a turned object overlaps its
    # polygon less than its axis-aligned box does, so the oriented score is lower
    assert 0 < m["val_obb_map_50"] <= m["val_map_50"] + 0.05
    assert (out / "reports" / "detections_val.png").is_file()
    assert result.best_checkpoint is not None and result.best_checkpoint.is_file()


def test_batch_of_negatives_trains_and_scores(tmp_path: Path, one_thread: None) -> None:
    root = tmp_path / "DOTA"
    write_dota_folder(root, {"train": 2, "val": 2}, size=64, count=2)
    dota_entry(tmp_path / "catalog", "dota", root)
    dm = DetectionFolderDataModule("dota", catalog=tmp_path / "catalog", chip_size=64)
    task = DetectionTask(model="faster-rcnn", backbone="resnet18", fpn_channels=32,
                         anchor_sizes=[8, 16, 32, 64, 128], scheduler="none")  # fmt: skip
    dm.setup()
    task.attach_data(dm)
    from geocmid.data.detection import collate_boxes

    negative = dm.images["train"][-1]
    batch = collate_boxes([dm.datasets["train"][(negative, 0, 0)] for _ in range(2)])
    assert all(len(b) == 0 for b in batch["bbox_xyxy"])
    task.model.train()
    losses = task.model(batch["image"], task.targets(batch))
    assert all(torch.isfinite(v) for v in losses.values())
    task.model.eval()
    task._eval_step("val", batch, 0)  # scored as images without objects
    assert len(task.val_obb.groundtruth_labels) == 2


def test_torchgeo_dota_trains_through_its_own_class(tmp_path: Path, one_thread: None) -> None:
    root = tmp_path / "data" / "dota"
    written = write_dota_folder(root, {"train": 3, "val": 2}, size=96, count=3, torchgeo=True)
    catalog = tmp_path / "catalog"
    catalog.mkdir()
    (catalog / "dota.yaml").write_text(
        "kind: torchgeo_dataset\ndataset: DOTA\nroot: ../data/dota\n"
        "args: {split: train, version: '1.0', bbox_orientation: horizontal}\ntask: detection\n"
    )
    dm = DetectionFolderDataModule("dota", catalog=catalog, chip_size=96, augment=False)
    dm.setup()
    assert len(dm.class_names) == 15 and dm.class_names[:2] == ["plane", "ship"]
    assert {s: len(v) for s, v in dm.images.items()} == {"train": 3, "val": 2, "test": 2}
    # the first train image through torchgeo.datasets.DOTA: corners as written, boxes derived
    _image, record = dm.sources["train"].load(0)
    assert type(dm.sources["train"].dataset).__module__ == "torchgeo.datasets.dota"
    quads = np.stack([q for q, _, _ in written["P0000"]])
    np.testing.assert_allclose(record.polygons, quads.round(1), atol=1e-4)
    sample = dm.datasets["train"][(0, 0, 0)]
    expected = np.clip(np.concatenate([quads.min(1), quads.max(1)], 1), 0, 96)
    np.testing.assert_allclose(sample["bbox_xyxy"], expected, atol=0.06)
    assert sample["label"].tolist() == [1 + ("plane", "ship").index(c) for _, c, _ in
                                        written["P0000"]]  # fmt: skip
    out = tmp_path / "run"
    result = fit(
        RECIPE, catalog=catalog,
        overrides=[*SMALL, "data.entry=dota", "data.chip_size=96", "data.batch_size=2",
                   "data.chips_per_epoch=4", "data.eval_chips=4", "trainer.max_epochs=1",
                   f"trainer.default_root_dir={out}"],
    )  # fmt: skip
    assert result.metrics["train_loss"] > 0 and "val_obb_map_50" in result.metrics
    # never downloads: an empty root is one clear error
    (catalog / "empty.yaml").write_text("kind: torchgeo_dataset\ndataset: DOTA\nroot: nowhere\n")
    with pytest.raises(DataError, match=r"(?s)DOTA train files are not in.*download empty"):
        DetectionFolderDataModule("empty", catalog=catalog).setup()
    assert Catalog(catalog).get("empty").kind == "torchgeo_dataset"
