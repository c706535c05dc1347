"""What every geocmid fine-tuning task adds to its TorchGeo parent.

:class:`DataArgsMixin` lets a task be configured without what the data determines: ``in_channels``,
``num_classes``, ``classes``, ``bands``, ``mean``, ``std`` and ``chip_size`` may be None at
construction. TorchGeo's ``BaseTask.__init__`` builds the network, losses and metrics at once;
with those values missing that is deferred to the Lightning ``setup`` hook, which reads them from
``trainer.datamodule`` (:meth:`geocmid.datamodules.base.CatalogDataModule.task_args`) and writes
them into ``hparams``, so checkpoints carry them. The same config thus runs under ``geocmid fit``,
``torchgeo fit`` / a plain ``LightningCLI`` (no argument links) and from Python
(``trainer.fit(task, datamodule=dm)``).

:class:`FinetuneMixin` sits in front of a TorchGeo task in the MRO and adds:

* AdamW with separate learning rates for encoder and head (``backbone_lr``), frozen parameters
  left out, and a choice of scheduler (``plateau`` as TorchGeo, ``cosine`` per step, ``none``);
* a confusion matrix in the val/test metric collections and short metric aliases (``val_OA``,
  ``val_mIoU``, ``val_F1``) to monitor; the matrices and sample predictions are handed to
  :class:`geocmid.tasks.reports.ReportCallback`, which renders them (PNG, CSV, TensorBoard);
* the model card (task, classes, bands, normalisation, chip size) inside every checkpoint, so
  :func:`geocmid.tasks.load_for_prediction` needs nothing else.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau
from torchmetrics import Metric
from torchmetrics.classification import MulticlassConfusionMatrix

from geocmid import __version__
from geocmid.errors import ConfigError, ModelError
from geocmid.models.card import CHECKPOINT_KEY, ModelCard
from geocmid.tasks.encoders import param_groups

log = logging.getLogger(__name__)

#: Format tag of the card stored in fine-tuned checkpoints.
#: Short aliases logged next to TorchGeo's metric names (suffix → alias).
ALIASES = {
    "OverallAccuracy": "OA",
    "AverageJaccardIndex": "mIoU",
    "AverageF1Score": "F1",
    "AveragePrecision": "precision",
    "AverageRecall": "recall",
}
#: Task arguments the datamodule supplies when the config leaves them out (None).
DATA_ARGS = ("in_channels", "num_classes", "classes", "bands", "mean", "std", "chip_size")
#: Of those, the ones the network cannot be built without.
BUILD_ARGS = ("in_channels", "num_classes", "chip_size")


class DataArgsMixin:
    """Deferred construction of a TorchGeo task until the data is known (see module docstring).

    Subclasses implement :meth:`build_model` (instead of ``configure_models``) and may extend
    :meth:`build_metrics` / :meth:`build_losses` (by default TorchGeo's ``configure_*``).
    """

    hparams: Any
    _trainer: Any

    # ---- what subclasses implement --------------------------------------------------------------
    def build_model(self) -> None:
        """Build ``self.model`` from complete hparams."""
        raise NotImplementedError

    def build_losses(self) -> None:
        super().configure_losses()  # type: ignore[misc]

    def build_metrics(self) -> None:
        super().configure_metrics()  # type: ignore[misc]

    def hparam_defaults(self) -> dict[str, Any]:
        """Hparams a TorchGeo parent reads that this task's ``__init__`` derives itself (set
        when missing: a Lightning CLI instantiation saves only the config's arguments)."""
        return {}

    # ---- TorchGeo's hooks, deferred while the data is unknown -----------------------------------
    @property
    def deferred(self) -> bool:
        """True while a value the network needs (:data:`BUILD_ARGS`) is still unknown."""
        return any(self.hparams.get(key) is None for key in BUILD_ARGS)

    def complete_hparams(self) -> None:
        hp = self.hparams
        for key, value in self.hparam_defaults().items():
            if hp.get(key) is None:
                hp[key] = value
        # the TorchGeo parent's own defaults (num_labels, pos_weight, ...) for keys it reads
        for cls in type(self).__mro__:
            if not cls.__module__.startswith("torchgeo.") or "__init__" not in cls.__dict__:
                continue
            for name, param in inspect.signature(cls.__init__).parameters.items():
                if name != "self" and name not in hp and param.default is not param.empty:
                    hp[name] = param.default
        if hp.get("labels", "absent") is None and hp.get("classes"):
            hp["labels"] = [c["name"] if isinstance(c, dict) else str(c) for c in hp["classes"]]

    def configure_models(self) -> None:
        self.complete_hparams()
        if not self.deferred:
            self._build_model()

    def _build_model(self) -> None:
        """:meth:`build_model`, then channels-last weights when ``channels_last`` is set: convs
        then run in NHWC whatever the input layout (~1.3× a ResNet-18 U-Net training step on
        the CPU; what GPUs' tensor cores want under mixed precision)."""
        self.build_model()
        if self.hparams.get("channels_last"):  # absent in detection and old checkpoints
            self.model.to(memory_format=torch.channels_last)

    def configure_losses(self) -> None:
        if not self.deferred:
            self.build_losses()

    def configure_metrics(self) -> None:
        if not self.deferred:
            self.build_metrics()

    def setup(self, stage: str) -> None:
        """Fill the data-derived arguments from ``trainer.datamodule``, then build what was
        deferred (Lightning calls this after the datamodule's own ``setup``)."""
        super().setup(stage)  # type: ignore[misc]
        trainer = getattr(self, "_trainer", None)
        self.attach_data(getattr(trainer, "datamodule", None))

    def attach_data(self, datamodule: Any) -> None:
        """Complete the task from ``datamodule`` (anything with ``task_args()``) and build
        what was deferred; without one, every value the network needs must already be set.

        Raises:
            ConfigError: values still missing; ModelError: given values contradict the data.
        """
        was_deferred = self.deferred
        if datamodule is not None and callable(getattr(datamodule, "task_args", None)):
            self.fill_from_data(datamodule.task_args(), type(datamodule).__name__)
        if self.deferred:
            missing = [k for k in BUILD_ARGS if self.hparams.get(k) is None]
            raise ConfigError(
                f"task {type(self).__name__}",
                f"{', '.join(missing)} not given, and no geocmid datamodule to read them from",
                "set them in model.init_args, or train with a geocmid datamodule "
                "(trainer.fit(task, datamodule=dm))",
            )
        if was_deferred:
            self.complete_hparams()
            self._build_model()
            self.build_losses()
            self.build_metrics()

    def fill_from_data(self, values: dict[str, Any], where: str = "the data") -> None:
        """Set every data-derived hparam that is None from ``values``; an explicitly given band
        or class count that differs from the data's is a :class:`ModelError`."""
        hp = self.hparams
        for key in DATA_ARGS:
            value = values.get(key)
            if value is None:
                continue
            given = hp.get(key)
            if given is None:
                hp[key] = value
            elif key in ("in_channels", "num_classes") and int(given) != int(value):
                what = "bands" if key == "in_channels" else "classes"
                raise ModelError(
                    f"setting 'model.init_args.{key}'",
                    f"is {given} but the data ({where}) has {value} {what}",
                    f"leave model.init_args.{key} out: it is read from the data",
                )


class FinetuneMixin(DataArgsMixin):
    """Mixed into :class:`SegmentationTask`, :class:`ChangeTask` and :class:`ClassificationTask`.

    Expects hparams ``lr``, ``backbone_lr``, ``weight_decay``, ``scheduler``, ``patience``,
    ``num_classes``, ``classes``, ``bands``, ``mean``, ``std``, ``chip_size``, ``ignore_index``.
    Subclasses implement :meth:`build_model`, :meth:`encoder_modules` and :attr:`card_task`.
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
    def build_metrics(self) -> None:
        super().build_metrics()
        self.add_confusion_matrix()

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
        # rendered by ReportCallback.on_{validation,test}_end
        self.report_state[stage] = {
            "confusion": [m.detach().cpu().numpy() for m in matrices.values()],
            "epoch": int(self.trainer.current_epoch),
        }

    @property
    def report_state(self) -> dict[str, dict[str, Any]]:
        """Per stage, what the last epoch left for the reports (confusion matrices)."""
        if "_report_state" not in self.__dict__:
            self.__dict__["_report_state"] = {}
        return self.__dict__["_report_state"]

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

    def on_test_epoch_end(self) -> None:
        self._log_stage("test")

    # ---- what the reports show ----------------------------------------------------------------
    def report_samples(self, batch: dict[str, Any], n: int = 4) -> dict[str, Tensor]:
        """Up to ``n`` samples of ``batch`` with their predictions, on the CPU: ``image``,
        ``target`` and ``prediction`` (class indices), for the sample panels."""
        with torch.no_grad():
            logits = self.predict_logits(batch["image"][:n])
        return {
            "image": batch["image"][:n].detach().cpu(),
            "target": self.target_of(batch)[:n].detach().cpu(),
            "prediction": logits.argmax(1).cpu(),
        }

    def predict_logits(self, image: Tensor) -> Tensor:
        """Logits ``[B, K, ...]`` for a batch image as the dataloader yields it."""
        return self.model(image)

    def target_of(self, batch: dict[str, Any]) -> Tensor:
        return batch["mask"]

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

    def rgb_indices(self) -> list[int]:
        """Band indices shown as red, green, blue in panels (named ones if possible)."""
        return rgb_indices(self.hparams.get("bands"), self.hparams["in_channels"])

    # ---- model card ---------------------------------------------------------------------------
    def model_card(self) -> dict[str, Any]:
        """The :class:`~geocmid.models.card.ModelCard` (``geocmid-card/2``) of this task, as a
        dict: task, decoder, backbone, bands, normalisation, chip size, classes, provenance."""
        hp = self.hparams
        return task_card(self.card_task, hp, hp.get("backbone"), list(hp.get("classes") or []))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.model_card()


def rgb_indices(bands: list[str] | None, in_channels: int) -> list[int]:
    """Indices of the red, green, blue bands when named so, else the first three (or one)."""
    names = [str(b).lower() for b in bands or []]
    if all(b in names for b in ("red", "green", "blue")):
        return [names.index(b) for b in ("red", "green", "blue")]
    return [0, 1, 2] if in_channels >= 3 else [0]


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


def task_card(
    task: str, hp: Any, architecture: str | None, classes: list[dict[str, Any]]
) -> dict[str, Any]:
    """A fine-tuned task's card, validated through :class:`~geocmid.models.card.ModelCard`.

    Raises:
        ConfigError: a value the card refuses (e.g. a band count that differs from the
            statistics).
    """
    n = hp["in_channels"]
    card = {
        "task": task,
        "model": hp.get("model"),
        "architecture": architecture,
        "in_chans": n,
        "bands": list(hp.get("bands") or []) or list(range(1, n + 1)),
        "mean": list(hp.get("mean") or []),
        "std": list(hp.get("std") or []),
        "chip_size": hp["chip_size"],
        "classes": classes,
        "ignore_index": hp.get("ignore_index"),
        "init_weights": str(hp["weights"]) if hp.get("weights") else "random",
        "geocmid_version": __version__,
        **_provenance(hp.get("weights")),
    }
    return ModelCard.from_dict(card, where=f"model card of the {task} task").to_dict()


def _provenance(weights: Any) -> dict[str, Any]:
    """GSD and pretraining record of the encoder's export card, carried into the task's card."""
    from geocmid.tasks.encoders import is_export

    if not weights or not is_export(str(weights)):
        return {}
    path = Path(str(weights)).with_suffix(".json")
    if not path.is_file():
        return {}
    export = ModelCard.from_file(path)
    return {"gsd": export.gsd, "pretraining": dict(export.pretraining)}


def log_val_loss(task: Any, y_hat: Any, y: Any) -> None:
    """Log ``val_loss`` weighted by the batch's labelled pixels.

    A batch without any labelled pixel (sparse labels) is left out: its loss is a mean over no
    pixel (NaN) and would make the whole epoch's ``val_loss`` NaN. Whether an epoch held any
    labelled pixel at all is :class:`geocmid.tasks.guards.TrainingGuard`'s check.

    Args:
        task: the task (``criterion`` and ``hparams['ignore_index']``).
        y_hat: logits ``[B, K, H, W]``; y: targets ``[B, H, W]`` int64.
    """
    ignore = task.hparams.get("ignore_index")
    valid = int((y != ignore).sum()) if ignore is not None else int(y.numel())
    if valid:
        task.log("val_loss", task.criterion(y_hat, y), batch_size=valid)
