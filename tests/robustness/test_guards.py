"""TrainingGuard: a run that learns nothing fails (no step, non-finite loss, no valid target),
and a real `geocmid fit` with a NaN loss exits non-zero with one line and a failed status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, Sampler

from geocmid.tasks.guards import RunCheckpoint, TrainingFailed, TrainingGuard

torch.set_num_threads(1)


class Toy(LightningModule):
    """A linear model; ``nan_at``: the training step whose loss is NaN (logged as
    ``train/loss_mim``); ``val_mask``: the validation batches' mask value."""

    def __init__(self, nan_at: int | None = None, val_mask: int = 1) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.nan_at = nan_at
        self.val_mask = val_mask

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.layer(batch["x"]).pow(2).mean()
        term = loss * float("nan") if self.global_step == self.nan_at else loss
        self.log("train/loss_mim", term)
        return term

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.layer(batch["x"]).pow(2).mean())

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)


def batches(n: int, mask: int = 1) -> DataLoader:
    items = [{"x": torch.ones(2), "mask": torch.full((4, 4), mask)} for _ in range(n)]
    return DataLoader(items, batch_size=2)


class LyingSampler(Sampler):
    """Says it has 12 items, yields none (TorchGeo's sampler on a region too small for a chip)."""

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(())

    def __len__(self) -> int:
        return 12


def trainer(tmp_path: Path, **kw: Any) -> Trainer:
    return Trainer(default_root_dir=tmp_path, max_epochs=2, logger=False, enable_progress_bar=False,
                   enable_model_summary=False, callbacks=[TrainingGuard()], **kw)  # fmt: skip


def test_a_nan_loss_stops_training_naming_the_step_and_the_term(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed) as error:
        trainer(tmp_path, limit_val_batches=0).fit(Toy(nan_at=2), batches(8))
    text = error.value.format()
    assert "training step 3 (epoch 0, batch 2)" in text and "train/loss_mim" in text, text


def test_an_epoch_without_optimizer_steps_fails(tmp_path: Path) -> None:
    loader = DataLoader([{"x": torch.ones(2)}] * 12, sampler=LyingSampler(), batch_size=2)
    with pytest.raises(TrainingFailed, match="took no optimizer step"):
        trainer(tmp_path, limit_val_batches=0).fit(Toy(), loader)


def test_a_validation_epoch_without_valid_target_fails(tmp_path: Path) -> None:
    with pytest.raises(TrainingFailed, match="no valid target pixel"):
        trainer(tmp_path, num_sanity_val_steps=0).fit(Toy(), batches(4), batches(4, mask=255))
    trainer(tmp_path, num_sanity_val_steps=0).fit(Toy(), batches(4), batches(4, mask=1))


def test_last_checkpoint_after_every_epoch_without_validation_or_monitor(tmp_path: Path) -> None:
    """Lightning's ModelCheckpoint(save_top_k=0, save_last=True) writes last.ckpt only when
    training ends; RunCheckpoint after every epoch (and every N steps when asked)."""
    seen: list[tuple[int, int]] = []

    def last() -> tuple[int, int]:
        ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
        return ckpt["epoch"], ckpt["global_step"]

    class Spy(TrainingGuard):  # runs before the checkpoint callback in each hook
        def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
            if trainer.current_epoch:
                seen.append(last())

        def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
            if trainer.max_epochs == 3:
                seen.append(last())

    def run(epochs: int, **kw: Any) -> None:
        checkpoint = RunCheckpoint(tmp_path / "ck", monitor=None, **kw)
        Trainer(default_root_dir=tmp_path, enable_progress_bar=False, logger=False,
                limit_val_batches=0, callbacks=[checkpoint, Spy()], max_epochs=epochs,
                ).fit(Toy(), batches(8))  # fmt: skip

    run(2)  # 4 steps per epoch: last.ckpt of epoch 0 before epoch 1
    assert seen == [(0, 4)], seen
    seen.clear()
    (tmp_path / "ck" / "last.ckpt").unlink()
    run(3, last_every_n_steps=3)  # steps 3, 6, 9, 12 and epoch ends
    assert seen == [(0, 3), (0, 4), (1, 6), (1, 8), (2, 12)], seen


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geocmid.data.synthetic import make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_dataset(out, size=160, seed=0)
    return out / "catalog"


REPO = Path(__file__).resolve().parents[2]
FIT = [
    "fit", "--config", str(REPO / "recipes" / "finetune-segmentation.yaml"),
    "--set", "data.chip_size=32", "--set", "data.batch_size=2", "--set", "data.eval_chips=4",
    "--set", "trainer.limit_train_batches=2", "--set", "trainer.limit_val_batches=1",
    "--set", "trainer.num_sanity_val_steps=0", "--max-epochs", "1",
]  # fmt: skip


@pytest.mark.slow  # a demo dataset and a short fit (about a minute on 2 busy cores)
def test_fit_with_a_nan_loss_exits_non_zero_with_one_line_and_a_failed_status(
    demo: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from geocmid.cli import main
    from geocmid.tasks.segmentation import SegmentationTask

    original = SegmentationTask.training_step

    def nan_step(self: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = original(self, *args, **kwargs) * float("nan")
        self.log("train_loss", loss)
        return loss

    monkeypatch.setattr(SegmentationTask, "training_step", nan_step)
    code = main(["--catalog", str(demo), *FIT, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "the loss is not finite" in err and "train_loss" in err
    assert err.count("error:") == 1
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and "not finite" in status["message"]
