"""Training guards: a run that learns nothing fails loudly, and the run folder says so.

:class:`TrainingGuard` is a Lightning callback that :class:`geocmid.workflows.config.GeocmidCLI`
adds to every ``geocmid fit`` / ``geocmid pretrain`` run (and to ``torchgeo fit`` runs of a
geocmid config). It fails the run, with one sentence naming what went wrong:

* an epoch that took **no optimizer step** (the loader yielded nothing: a split too small for
  the chip size, ``limit_train_batches: 0`` ...);
* a **non-finite training loss** (NaN or ±inf), naming the step and the loss term(s) that were
  not finite (``train/loss_mim``, ``train_loss`` ...);
* a **validation epoch without a valid target pixel** (every mask pixel is nodata or
  ``ignore_index``) or whose logged validation loss is not finite: its metrics would be NaN and
  "best checkpoint" meaningless.

Without a progress bar (not a terminal, ``--quiet``, recipe runs), it logs one line per epoch
instead (steps, training loss, validation metric), so logs say what happened. It also stops the
run at the next batch after a Ctrl-C / SIGTERM whose exception Python dropped (raised inside a
finalizer, e.g. while a checkpoint file was being closed), so an interrupt is never lost.

:func:`write_status` records a run's state in ``RUN_DIR/status.json`` (``running``, ``done``,
``failed``, ``interrupted``, with the message), written atomically; the workflows call it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from geocmid.errors import GeocmidError

log = logging.getLogger("geocmid.train")

#: Name of the run-state file in a run folder.
STATUS_FILE = "status.json"


class TrainingFailed(GeocmidError):
    """Training ran but learnt nothing usable (no step, non-finite loss, no valid target)."""


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(torch.as_tensor(value).detach().float().cpu().sum()))
    except (TypeError, ValueError, RuntimeError):
        return True


def _interrupt_if_signalled() -> None:
    """Ctrl-C / SIGTERM whose exception was lost (raised inside a finalizer, e.g. while a
    checkpoint file was closed) stops the run at the next batch
    (:func:`geocmid.cli.console.raise_if_interrupted`); a no-op outside the ``geocmid``
    command."""
    import sys

    console = sys.modules.get("geocmid.cli.console")
    if console is not None:
        console.raise_if_interrupted()


class TrainingGuard(Callback):
    """Fail a run on an epoch without optimizer steps, a non-finite loss, or a validation epoch
    without any valid target pixel.

    Args:
        ignore_index: mask value that marks unlabelled pixels (default: the task's
            ``hparams.ignore_index``, else 255).
        epoch_summary: log one line per epoch when there is no progress bar.
    """

    def __init__(self, ignore_index: int | None = None, epoch_summary: bool = True) -> None:
        self.ignore_index = ignore_index
        self.epoch_summary = epoch_summary
        self._epoch_start_step = 0
        self._epoch_batches = 0
        self._val_targets = 0
        self._val_batches = 0
        self._val_has_masks = False
        self._epoch_started = 0.0

    # ---- interrupts ---------------------------------------------------------------------------
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _interrupt_if_signalled()

    def on_validation_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        _interrupt_if_signalled()

    # ---- training -----------------------------------------------------------------------------
    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_start_step = int(trainer.global_step)
        self._epoch_batches = 0
        self._epoch_started = time.monotonic()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        self._epoch_batches += 1
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or _finite(loss):
            return
        terms = sorted(
            key.removesuffix("_step")
            for key, value in trainer.callback_metrics.items()
            if "loss" in key and not key.endswith("_epoch") and not _finite(value)
        )
        named = ", ".join(terms) if terms else "the total loss"
        raise TrainingFailed(
            f"training step {int(trainer.global_step)} (epoch {trainer.current_epoch}, batch "
            f"{batch_idx})",
            f"the loss is not finite ({float(torch.as_tensor(loss).detach().float())}); "
            f"non-finite term(s): {named}",
            "lower the learning rate (model.lr / model.base_lr), use trainer.precision=32-true, "
            "and check the data: nodata values and statistics (`geocmid catalog stats ENTRY`)",
        )

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        steps = int(trainer.global_step) - self._epoch_start_step
        if steps <= 0 and not trainer.sanity_checking:
            raise TrainingFailed(
                f"training epoch {trainer.current_epoch}",
                f"took no optimizer step ({self._epoch_batches} batch(es) came from the "
                "training loader): nothing was learnt",
                "the training split yields fewer chips than one batch: lower data.chip_size or "
                "data.batch_size, raise data.chips_per_epoch or the training share of "
                "data.split; check trainer.limit_train_batches / accumulate_grad_batches",
            )
        if self.epoch_summary and trainer.progress_bar_callback is None and trainer.is_global_zero:
            log.info("%s", self._summary(trainer, steps))

    def _summary(self, trainer: Trainer, steps: int) -> str:
        epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        parts = [f"epoch {trainer.current_epoch + 1}/{epochs}: {steps} step(s)"]
        metrics = trainer.callback_metrics
        train = next((k for k in ("train/loss_epoch", "train_loss_epoch", "train_loss")
                      if k in metrics), None)  # fmt: skip
        for key in (train, "val_loss"):
            if key and key in metrics:
                parts.append(f"{key.removesuffix('_epoch')} {float(metrics[key]):.4g}")
        callback = trainer.checkpoint_callback
        monitor = getattr(callback, "monitor", None)
        if monitor and monitor in metrics and monitor != "val_loss":
            parts.append(f"{monitor} {float(metrics[monitor]):.4g}")
        parts.append(f"{time.monotonic() - self._epoch_started:.0f} s")
        return ", ".join(parts)

    # ---- validation ---------------------------------------------------------------------------
    def on_validation_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._val_targets = 0
        self._val_batches = 0
        self._val_has_masks = False

    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._val_batches += 1
        mask = batch.get("mask") if isinstance(batch, dict) else None
        if not isinstance(mask, torch.Tensor):
            return
        self._val_has_masks = True
        ignore = self.ignore_index
        if ignore is None:
            ignore = getattr(pl_module, "hparams", {}).get("ignore_index", 255)
        valid = mask != ignore if ignore is not None else torch.ones_like(mask, dtype=torch.bool)
        self._val_targets += int(valid.sum())

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        where = f"validation after epoch {trainer.current_epoch}"
        if self._val_has_masks and self._val_targets == 0:
            raise TrainingFailed(
                where,
                f"its {self._val_batches} batch(es) hold no valid target pixel (every label "
                "pixel is nodata or ignore_index): the validation metrics would be NaN",
                "the validation split lies in nodata: change data.seed or data.split so that "
                "labelled, valid imagery falls in it, or lower data.max_nodata",
            )
        for key, value in trainer.callback_metrics.items():
            if key.startswith("val") and "loss" in key and not _finite(value):
                raise TrainingFailed(
                    where, f"{key} is {float(value)} (not finite)",
                    "check the validation split for nodata-only chips and the data's "
                    "statistics (`geocmid catalog stats ENTRY`)",
                )  # fmt: skip


# ------------------------------------------------------------------------------------------------
class RunCheckpoint(ModelCheckpoint):
    """``checkpoints/best.ckpt`` by a monitored metric and ``checkpoints/last.ckpt`` after
    **every** training epoch (and every ``last_every_n_steps`` optimizer steps when > 0).

    Lightning's :class:`~lightning.pytorch.callbacks.ModelCheckpoint` writes ``last.ckpt`` at the
    end of an epoch only when it also saved a top-k checkpoint in that step, so a run without a
    monitored metric (pretraining: ``save_top_k=0``) had no checkpoint until training ended and
    a killed run started over. Checkpoints are written atomically by Lightning (in memory, then
    one fsspec transaction: a temporary file renamed into place), so a kill mid-write leaves the
    previous ``last.ckpt``.

    A config may list it (``trainer.callbacks``) to set ``last_every_n_steps``; the run folder
    and the task's monitor are filled in (``dirpath: null``, ``monitor: auto``).

    Args:
        dirpath: checkpoint folder (default: ``RUN_DIR/checkpoints``).
        monitor: metric of ``best.ckpt`` (``auto``: the task registry's; None: ``last`` only).
        mode: ``min`` or ``max`` (default: ``min`` for a loss, else ``max``).
        last_every_n_steps: also write ``last.ckpt`` every this many optimizer steps (0: per
            epoch only).
    """

    def __init__(
        self,
        dirpath: str | Path | None = None,
        monitor: str | None = "auto",
        mode: str | None = None,
        last_every_n_steps: int = 0,
    ) -> None:
        if last_every_n_steps < 0:
            raise ValueError(f"last_every_n_steps must be >= 0, got {last_every_n_steps}")
        resolved = None if monitor == "auto" else monitor
        mode = mode or ("min" if (resolved or "").endswith("loss") else "max")
        super().__init__(
            dirpath=dirpath, monitor=resolved, mode=mode, save_top_k=1 if resolved else 0,
            save_last=True, filename="best", auto_insert_metric_name=False,
            enable_version_counter=False,
        )  # fmt: skip
        self.requested_monitor = monitor
        self.last_every_n_steps = int(last_every_n_steps)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int,
    ) -> None:  # fmt: skip
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_steps
        step = int(trainer.global_step)
        if (
            n > 0
            and step > 0
            and step % n == 0
            and not self._should_skip_saving_checkpoint(trainer)
        ):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        # Lightning saves last.ckpt here only when a top-k checkpoint was saved too
        if not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


# ------------------------------------------------------------------------------------------------
def write_status(root: str | Path, status: str, message: str = "", **extra: Any) -> Path:
    """Record a run's state in ``root/status.json`` (atomically); returns its path.

    Args:
        root: the run folder.
        status: ``running``, ``done``, ``failed`` or ``interrupted``.
        message: the reason (failures: the error line).
        extra: more JSON-serialisable fields (epoch, global_step ...).
    """
    path = Path(root) / STATUS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"status": status, "message": message, "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "pid": os.getpid(), **extra}  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    tmp.replace(path)
    return path


def read_status(root: str | Path) -> dict[str, Any]:
    """The run's ``status.json`` as a dict (empty when absent or unreadable)."""
    path = Path(root) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def status_of_error(error: BaseException) -> str:
    """``interrupted`` for Ctrl-C / SIGTERM, else ``failed``."""
    return "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"


__all__ = [
    "STATUS_FILE",
    "RunCheckpoint",
    "TrainingFailed",
    "TrainingGuard",
    "read_status",
    "status_of_error",
    "write_status",
]


class FileCheckpointIO(TorchCheckpointIO):
    """Checkpoints written straight to a temporary file beside the target, then renamed.

    Lightning's :class:`~lightning.fabric.plugins.io.torch_io.TorchCheckpointIO` serialises the
    whole checkpoint into an in-memory buffer before writing it (``_atomic_save``), so every
    save holds a second copy of the weights and optimizer state in RAM: +0.5 GB at each epoch
    end of the quickstart's ResNet-18 CMID run (2.3 GB peak), +1.5 GB for a ResNet-50. This
    writes the same bytes (``torch.save``) to ``PATH.tmp-PID`` in the target folder, flushes
    them to disk, and moves the file into place with ``os.replace``: a reader sees the old
    checkpoint or the new one, never a part. Remote paths (``s3://`` ...) keep Lightning's way.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = str(path)
        if "://" in target and not target.startswith("file://"):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        final = Path(target.removeprefix("file://"))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as file:
                torch.save(checkpoint, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
