"""Each task trains from the CLI on generated data with a clear signal and beats chance.

Chance: 1/3 overall accuracy for the 3 balanced classes; the change F1 of a coin flip is ~0.44
(40 % of the blocks change). Budgets are CPU-sized: a few dozen steps of ResNet-18 on 32-px chips.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from geocmid.cli import main
from geocmid.tasks import load_for_prediction

REPO = Path(__file__).resolve().parents[2]


def fit(catalog: Path, recipe: str, out: Path, *sets: str, epochs: int = 2) -> int:
    argv = ["--catalog", str(catalog), "fit", "--config", str(REPO / "recipes" / recipe),
            "--out", str(out), "--max-epochs", str(epochs),
            "--set", "trainer.enable_progress_bar=false",
            "--set", "trainer.enable_model_summary=false",
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    return main(argv)


def best(out: Path, metric: str) -> float:
    with open(out / "metrics.csv") as f:
        values = [float(r[metric]) for r in csv.DictReader(f) if r.get(metric)]
    assert values, f"{metric} never logged"
    return max(values)


def check_outputs(out: Path, task: str, image: torch.Tensor, out_shape: tuple[int, ...]) -> None:
    assert (out / "reports" / "confusion_val.png").is_file()
    assert (out / "reports" / "confusion_val.csv").is_file()
    assert (out / "reports" / "samples_val.png").is_file()
    assert list(out.glob("events.out.tfevents*")), "TensorBoard events"
    model, card = load_for_prediction(out / "checkpoints" / "last.ckpt")
    assert card["task"] == task and card["in_chans"] == 3 and len(card["mean"]) == 3
    # the prediction model carries the trained weights, not a fresh initialisation
    trained = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    loaded = model.state_dict()
    assert loaded
    for name, tensor in loaded.items():
        torch.testing.assert_close(tensor, trained[f"model.{name}"])
    with torch.no_grad():
        assert model(image).shape == out_shape


COMMON = ("data.chip_size=32", "data.batch_size=8", "data.chips_per_epoch=96", "data.eval_chips=32",
          "model.lr=3e-3", "model.backbone_lr=3e-3", "trainer.log_every_n_steps=4")  # fmt: skip


@pytest.mark.slow
def test_segmentation_learns(clear_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "seg"
    assert fit(clear_catalog, "finetune-segmentation.yaml", out, "data.entry=img",
               "data.labels=labels", *COMMON) == 0  # fmt: skip
    assert best(out, "val_OA") > 0.6, "3 classes: chance is 0.33"
    check_outputs(out, "segmentation", torch.zeros(1, 3, 32, 32), (1, 3, 32, 32))
    argv = ["--catalog", str(clear_catalog), "test", "--config", str(out / "config.yaml"),
            "--ckpt", str(out / "checkpoints" / "last.ckpt")]  # fmt: skip
    assert main(argv) == 0


@pytest.mark.slow
def test_change_learns(clear_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "change"
    assert fit(clear_catalog, "finetune-change.yaml", out, "data.entry=pair", *COMMON) == 0
    assert best(out, "val_change_F1") > 0.6, "coin flip: ~0.44"
    check_outputs(out, "change", torch.zeros(1, 2, 3, 32, 32), (1, 2, 32, 32))


@pytest.mark.slow
def test_point_chip_classification_learns(clear_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "chips"
    assert fit(clear_catalog, "finetune-classification-chips.yaml", out, "data.entry=img",
               "data.labels=points", "data.chip_size=16", "data.chips_per_epoch=96",
               "model.lr=3e-3", "model.backbone_lr=3e-3") == 0  # fmt: skip
    assert best(out, "val_OA") > 0.6, "3 classes: chance is 0.33"
    check_outputs(out, "classification", torch.zeros(2, 3, 16, 16), (2, 3))


@pytest.mark.slow
@pytest.mark.parametrize("freeze", [False, True])
def test_image_folder_classification_learns(
    clear_catalog: Path, tmp_path: Path, freeze: bool
) -> None:
    out = tmp_path / "folder"
    sets = ["data.entry=folder", "data.chip_size=32", "data.batch_size=8", "model.lr=3e-3",
            "model.backbone_lr=3e-3", f"model.freeze_backbone={str(freeze).lower()}"]  # fmt: skip
    assert fit(clear_catalog, "finetune-classification-folder.yaml", out, *sets, epochs=4) == 0
    assert best(out, "val_OA") > 0.6, "3 classes: chance is 0.33"
