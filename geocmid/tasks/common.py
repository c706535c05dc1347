"""What every geocmid fine-tuning task adds to its TorchGeo parent.

:class:`FinetuneMixin` sits in front of a TorchGeo task in the MRO and adds:

* AdamW with separate learning rates for encoder and head (``backbone_lr``), frozen parameters
  left out, and a choice of scheduler (``plateau`` as TorchGeo, ``cosine`` per step, ``none``);
* a confusion matrix in the val/test metric collections (rendered to PNG + CSV, and to
  TensorBoard) and short metric aliases (``val_OA``, ``val_mIoU``, ``val_F1``) to monitor;
* one panel of sample predictions per validation epoch (PNG, TensorBoard);
* the model card (task, classes, bands, normalisation, chip size) inside every checkpoint, so
  :func:`geocmid.tasks.load_for_prediction` needs nothing else.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from geocmid.tasks.encoders import param_groups

log = logging.getLogger(__name__)

#: Format tag of the card stored in fine-tuned checkpoints.
CARD_FORMAT = "geocmid-task/1"
CARD_KEY = "geocmid_card"
#: Short aliases logged next to TorchGeo's metric names (suffix → alias).
ALIASES = {
    "OverallAccuracy": "OA",
    "AverageJaccardIndex": "mIoU",
    "AverageF1Score": "F1",
    "AveragePrecision": "precision",
    "AverageRecall": "recall",
}


class FinetuneMixin:
    """Mixed into :class:`SegmentationTask`, :class:`ChangeTask` and :class:`ClassificationTask`.

    Expects hparams ``lr``, ``backbone_lr``, ``weight_decay``, ``scheduler``, ``patience``,
    ``num_classes``, ``classes``, ``bands``, ``mean``, ``std``, ``chip_size``, ``ignore_index``.
    Subclasses implement :meth:`encoder_modules` and :attr:`card_task`.
    """

    card_task: str = ""
    hparams: Any
    model: nn.Module
    trainer: Any
    logger: Any

    # ---- optimisation -------------------------------------------------------------------------
    def encoder_modules(self) -> list[nn.Module]:
        """Modules holding pretrained encoder weights (lower learning rate, freezable)."""
        raise NotImplementedError

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = param_groups(
            self.model, self.encoder_modules(), hp["lr"], hp["backbone_lr"], hp["weight_decay"]
        )
        optimizer = AdamW(groups)
        match hp["scheduler"]:
            case "cosine":
                steps = max(1, int(self.trainer.estimated_stepping_batches))
                sched = CosineAnnealingLR(optimizer, T_max=steps)
                return {
                    "optimizer": optimizer,
                    "lr_scheduler": {"scheduler": sched, "interval": "step"},
                }
            case "plateau":
                sched = ReduceLROnPlateau(optimizer, patience=hp["patience"])
                return {
                    "optimizer": optimizer,
                    "lr_scheduler": {"scheduler": sched, "monitor": "val_loss"},
                }
            case _:
                return optimizer

    # ---- metrics ------------------------------------------------------------------------------
    def add_confusion_matrix(self) -> None:
        """Add a confusion matrix to the val/test collections built by TorchGeo's mixin."""
        k = self.hparams["num_classes"]
        ignore = self.hparams["ignore_index"]
        for stage in ("val", "test"):
            metrics = getattr(self, f"{stage}_metrics")
            metrics.add_metrics(
                {"ConfusionMatrix": MulticlassConfusionMatrix(k, ignore_index=ignore)}
            )

    def _log_stage(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values: dict[str, Tensor] = metrics.compute()
        metrics.reset()
        matrices = {k: values.pop(k) for k in list(values) if k.endswith("ConfusionMatrix")}
        for name, alias in ALIASES.items():
            if f"{stage}_{name}" in values:
                values[f"{stage}_{alias}"] = values[f"{stage}_{name}"]
        values.update(self.extra_metrics(stage, values))
        self.log_dict(values)  # type: ignore[attr-defined]
        if stage == "train" or getattr(self.trainer, "sanity_checking", False):
            return
        for matrix in matrices.values():
            self._write_confusion(stage, matrix)

    def extra_metrics(self, stage: str, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Task-specific derived metrics (e.g. change F1); none by default."""
        return {}

    def on_train_epoch_end(self) -> None:
        self._log_stage("train")
        optimizer = self.optimizers() if self._trainer is not None else None  # type: ignore[attr-defined]
        for group in getattr(optimizer, "param_groups", []):
            self.log(f"lr_{group.get('name', 'group')}", float(group["lr"]))  # type: ignore[attr-defined]

    def on_validation_epoch_end(self) -> None:
        self._log_stage("val")
        self._write_samples("val")

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")
        self._write_samples("test")

    # ---- reports ------------------------------------------------------------------------------
    @property
    def report_dir(self) -> Path | None:
        """``<log dir>/reports`` of the first logger, or ``<default_root_dir>/reports``."""
        trainer = getattr(self, "_trainer", None)
        if trainer is None:
            return None
        root = trainer.log_dir or trainer.default_root_dir
        return Path(root) / "reports"

    def class_names(self) -> list[str]:
        classes = self.hparams.get("classes") or []
        names = [c["name"] for c in classes]
        return names or [str(i) for i in range(self.hparams["num_classes"])]

    def class_colors(self) -> list[str]:
        from geocmid.data.catalog.schema import DEFAULT_COLORS

        classes = self.hparams.get("classes") or []
        colors = [c.get("color") for c in classes]
        if len(colors) == self.hparams["num_classes"] and all(colors):
            return colors
        return [DEFAULT_COLORS[i % len(DEFAULT_COLORS)] for i in range(self.hparams["num_classes"])]

    def _write_confusion(self, stage: str, matrix: Tensor) -> None:
        from geocmid.tasks.reports import confusion_figure, write_confusion_csv

        out = self.report_dir
        if out is None or not self._is_global_zero():
            return
        epoch = self.trainer.current_epoch
        names = self.class_names()
        out.mkdir(parents=True, exist_ok=True)
        write_confusion_csv(matrix.cpu().numpy(), names, out / f"confusion_{stage}.csv")
        fig = confusion_figure(matrix.cpu().numpy(), names, title=f"{stage}, epoch {epoch}")
        fig.savefig(out / f"confusion_{stage}.png", dpi=100)
        self._to_tensorboard(f"{stage}/confusion_matrix", fig)

    def remember_samples(self, stage: str, batch: dict[str, Any], batch_idx: int) -> None:
        """Keep up to 4 samples of the first batch with their predictions for the panel."""
        if batch_idx != 0 or getattr(self.trainer, "sanity_checking", False):
            return
        with torch.no_grad():
            logits = self.predict_logits(batch["image"][:4])
        self._samples = {
            "image": batch["image"][:4].detach().cpu(),
            "target": self.target_of(batch)[:4].detach().cpu(),
            "prediction": logits.argmax(1).cpu(),
        }

    def on_validation_batch_end(self, outputs: Any, batch: Any, batch_idx: int, *_: Any) -> None:
        self.remember_samples("val", batch, batch_idx)

    def on_test_batch_end(self, outputs: Any, batch: Any, batch_idx: int, *_: Any) -> None:
        self.remember_samples("test", batch, batch_idx)

    def predict_logits(self, image: Tensor) -> Tensor:
        """Logits ``[B, K, ...]`` for a batch image as the dataloader yields it."""
        return self.model(image)

    def target_of(self, batch: dict[str, Any]) -> Tensor:
        return batch["mask"]

    def _write_samples(self, stage: str) -> None:
        from geocmid.tasks.reports import sample_panel

        samples = getattr(self, "_samples", None)
        out = self.report_dir
        if samples is None or out is None or not self._is_global_zero():
            return
        out.mkdir(parents=True, exist_ok=True)
        fig = sample_panel(
            samples["image"], samples["target"], samples["prediction"],
            self.class_names(), self.class_colors(), self.rgb_indices(),
            ignore_index=self.hparams["ignore_index"],
        )  # fmt: skip
        fig.savefig(out / f"samples_{stage}.png", dpi=80)
        self._to_tensorboard(f"{stage}/samples", fig)
        self._samples = None

    def rgb_indices(self) -> list[int]:
        """Band indices shown as red, green, blue in panels (named ones if possible)."""
        bands = [str(b).lower() for b in self.hparams.get("bands") or []]
        if all(b in bands for b in ("red", "green", "blue")):
            return [bands.index(b) for b in ("red", "green", "blue")]
        n = self.hparams["in_channels"]
        return [0, 1, 2] if n >= 3 else [0]

    def _to_tensorboard(self, tag: str, fig: Any) -> None:
        import matplotlib.pyplot as plt

        for logger in getattr(self.trainer, "loggers", []):
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure(tag, fig, global_step=self.trainer.global_step, close=False)
        plt.close(fig)

    def _is_global_zero(self) -> bool:
        return bool(getattr(self.trainer, "is_global_zero", True))

    # ---- model card ---------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        """What prediction needs: task, classes, bands, normalisation, chip size, architecture."""
        hp = self.hparams
        return {
            "format": CARD_FORMAT,
            "task": self.card_task,
            "model": hp.get("model"),
            "backbone": hp.get("backbone"),
            "in_chans": hp["in_channels"],
            "bands": list(hp.get("bands") or []) or list(range(1, hp["in_channels"] + 1)),
            "mean": list(hp.get("mean") or []),
            "std": list(hp.get("std") or []),
            "chip_size": hp["chip_size"],
            "classes": list(hp.get("classes") or []),
            "num_classes": hp["num_classes"],
            "ignore_index": hp.get("ignore_index"),
            "init_weights": str(hp.get("weights")) if hp.get("weights") else "random",
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CARD_KEY] = self.model_card()


class ChangeBinary(Metric):
    """Change vs no-change precision / recall / F1 / IoU from multiclass change logits.

    Class index 0 is "no change"; every other index is a kind of change. Pixels at
    ``ignore_index`` are left out.
    """

    full_state_update = False

    def __init__(self, ignore_index: int | None = 255) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, logits: Tensor, target: Tensor) -> None:
        pred = logits.argmax(1) != 0 if logits.shape[1] > 1 else logits[:, 0] > 0
        target = target.long()
        keep = (
            target != self.ignore_index if self.ignore_index is not None else torch.ones_like(pred)
        )
        truth = (target != 0) & keep
        pred = pred & keep
        self.tp += (pred & truth).sum()
        self.fp += (pred & ~truth).sum()
        self.fn += (~pred & truth).sum()

    def compute(self) -> dict[str, Tensor]:
        tp, fp, fn = (t.double() for t in (self.tp, self.fp, self.fn))
        precision = tp / (tp + fp).clamp(min=1)
        recall = tp / (tp + fn).clamp(min=1)
        return {
            "change_precision": precision.float(),
            "change_recall": recall.float(),
            "change_F1": (2 * tp / (2 * tp + fp + fn).clamp(min=1)).float(),
            "change_IoU": (tp / (tp + fp + fn).clamp(min=1)).float(),
        }
