"""Metric reports: confusion matrices (PNG, CSV) and panels of sample predictions (PNG).

:class:`ReportCallback` writes them for every validation and test run of a fine-tuning task into
``<log dir>/reports`` (and to TensorBoard); ``geocmid fit`` adds it by default, a Lightning CLI
config lists it under ``trainer.callbacks``. Figures use matplotlib's Agg backend (no display
needed).
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: reports are written on servers and in CI

import matplotlib.pyplot as plt
import numpy as np
from lightning.pytorch import Callback, LightningModule, Trainer
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

log = logging.getLogger(__name__)


def write_confusion_csv(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    """Rows = reference class, columns = predicted class; counts of pixels (or chips)."""
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["reference \\ predicted", *names])
        for name, row in zip(names, matrix.tolist(), strict=True):
            writer.writerow([name, *[int(v) for v in row]])


def per_class_scores(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Precision, recall, F1 and IoU per class from a confusion matrix (rows = reference)."""
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(0) - tp
    fn = matrix.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
        iou = np.where(tp + fp + fn > 0, tp / (tp + fp + fn), 0.0)
    return {"precision": precision, "recall": recall, "f1": f1, "iou": iou}


def confusion_figure(matrix: np.ndarray, names: Sequence[str], title: str = "") -> Figure:
    """Row-normalised confusion matrix with counts, plus per-class recall/precision/F1."""
    k = len(names)
    rows = matrix.sum(1, keepdims=True)
    norm = np.divide(matrix, rows, out=np.zeros(matrix.shape, np.float64), where=rows > 0)
    size = max(4.0, 0.6 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1.5, size))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("reference")
    if k <= 15:  # numbers become unreadable beyond that
        for i in range(k):
            for j in range(k):
                colour = "white" if norm[i, j] > 0.5 else "black"
                ax.text(
                    j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7, color=colour
                )
    scores = per_class_scores(matrix)
    oa = np.trace(matrix) / max(matrix.sum(), 1)
    ax.set_title(f"{title}  OA {oa:.3f}  mIoU {scores['iou'].mean():.3f}".strip())
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of reference row")
    fig.tight_layout()
    return fig


def _stretch(image: np.ndarray) -> np.ndarray:
    """``[C, H, W]`` normalised bands → ``[H, W, C]`` in 0-1 (2-98 % per band)."""
    out = np.empty((*image.shape[1:], image.shape[0]), np.float32)
    for b in range(image.shape[0]):
        lo, hi = np.percentile(image[b], (2, 98))
        out[..., b] = np.clip((image[b] - lo) / max(hi - lo, 1e-6), 0, 1)
    return out if out.shape[-1] == 3 else out[..., 0]


def _label_image(mask: np.ndarray, colors: Sequence[str], ignore_index: int | None) -> np.ndarray:
    """Class indices → RGBA (ignored pixels transparent-grey)."""
    cmap = ListedColormap(list(colors))
    rgba = cmap(np.clip(mask, 0, len(colors) - 1) / max(len(colors) - 1, 1))
    if ignore_index is not None:
        rgba[mask == ignore_index] = (0.5, 0.5, 0.5, 1.0)
    return rgba


def sample_panel(
    image: Tensor,
    target: Tensor,
    prediction: Tensor,
    names: Sequence[str],
    colors: Sequence[str],
    rgb: Sequence[int],
    ignore_index: int | None = 255,
) -> Figure:
    """One row per sample: image(s), reference, prediction.

    Args:
        image: ``[N, C, H, W]`` (or ``[N, 2, C, H, W]`` for change: both dates are shown),
            normalised.
        target, prediction: ``[N, H, W]`` class indices, or ``[N]`` for scene classification
            (then the titles carry the classes).
        names, colors: class names and ``#rrggbb`` colours, by index.
        rgb: band indices displayed as red, green, blue (one index: grey).
    """
    n = image.shape[0]
    dates = image.shape[1] if image.ndim == 5 else 1
    dense = target.ndim == 3
    cols = dates + (2 if dense else 0)
    fig, axes = plt.subplots(n, cols, figsize=(2.4 * cols, 2.4 * n), squeeze=False)
    for i in range(n):
        frames = [image[i, d] for d in range(dates)] if dates > 1 else [image[i]]
        for d, frame in enumerate(frames):
            ax = axes[i, d]
            ax.imshow(_stretch(frame[list(rgb)].float().numpy()), cmap="gray")
            title = f"date {d + 1}" if dates > 1 else "image"
            if not dense:
                t, p = int(target[i]), int(prediction[i])
                ok = "ok" if t == p else "wrong"
                title = f"ref {names[t] if 0 <= t < len(names) else t}\npred {names[p]} ({ok})"
            ax.set_title(title, fontsize=8)
        if dense:
            for j, (label, mask) in enumerate(
                (("reference", target[i]), ("prediction", prediction[i]))
            ):
                ax = axes[i, dates + j]
                ax.imshow(_label_image(mask.numpy(), colors, ignore_index), interpolation="nearest")
                ax.set_title(label, fontsize=8)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    if dense:
        handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in colors]
        fig.legend(handles, names, loc="lower center", ncol=min(len(names), 6), fontsize=7)
    fig.tight_layout(rect=(0, 0.05 if dense else 0, 1, 1))
    return fig


class ReportCallback(Callback):
    """Confusion matrices and sample panels of each validation / test run.

    Writes into ``<log dir>/reports`` (``trainer.log_dir``, else ``default_root_dir``), on the
    global-zero rank only, replacing the previous epoch's files:

    * ``confusion_{val,test}.png`` / ``.csv`` (rows = reference, columns = predicted);
    * ``samples_{val,test}.png``: up to ``max_samples`` chips of the first batch with reference
      and prediction (detection tasks: ``detections_{val,test}.png``, boxes drawn);

    and sends the figures to TensorBoard when a TensorBoard logger is attached. Works with
    tasks that offer ``report_samples(batch, n)`` (geocmid's fine-tuning tasks); other modules
    are left alone. Confusion matrices come from the task's ``report_state`` (filled when its
    epoch metrics are computed).

    Args:
        max_samples: chips per sample panel.
        every_n_epochs: write during training every N epochs (test runs: always).
    """

    def __init__(self, max_samples: int = 4, every_n_epochs: int = 1) -> None:
        super().__init__()
        self.max_samples = max_samples
        self.every_n_epochs = max(1, every_n_epochs)
        self._samples: dict[str, Any] = {}

    # ---- hooks --------------------------------------------------------------------------------
    def on_validation_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._remember(trainer, pl_module, "val", batch, batch_idx)

    def on_test_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any,
        batch_idx: int, dataloader_idx: int = 0,
    ) -> None:  # fmt: skip
        self._remember(trainer, pl_module, "test", batch, batch_idx)

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "val")

    def on_test_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._write(trainer, pl_module, "test")

    # ---- work ---------------------------------------------------------------------------------
    def _active(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> bool:
        if trainer.sanity_checking or not callable(getattr(pl_module, "report_samples", None)):
            return False
        return stage == "test" or trainer.current_epoch % self.every_n_epochs == 0

    def _remember(
        self, trainer: Trainer, pl_module: LightningModule, stage: str, batch: Any, batch_idx: int
    ) -> None:
        if batch_idx != 0 or not self._active(trainer, pl_module, stage):
            return
        if not trainer.is_global_zero:
            return
        self._samples[stage] = pl_module.report_samples(batch, self.max_samples)  # type: ignore[operator]

    def report_dir(self, trainer: Trainer) -> Path:
        return Path(trainer.log_dir or trainer.default_root_dir) / "reports"

    def _write(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        samples = self._samples.pop(stage, None)
        state = getattr(pl_module, "report_state", {}).pop(stage, None)
        if not self._active(trainer, pl_module, stage) or not trainer.is_global_zero:
            return
        out = self.report_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        epoch = trainer.current_epoch
        if getattr(pl_module, "card_task", "") == "detection":
            if samples is not None:
                self._detection_panel(trainer, pl_module, stage, samples, out)
            return
        names = pl_module.class_names()  # type: ignore[operator]
        for matrix in (state or {}).get("confusion", []):
            write_confusion_csv(matrix, names, out / f"confusion_{stage}.csv")
            fig = confusion_figure(matrix, names, title=f"{stage}, epoch {epoch}")
            fig.savefig(out / f"confusion_{stage}.png", dpi=100)
            self._to_tensorboard(trainer, f"{stage}/confusion_matrix", fig)
        if samples is not None:
            fig = sample_panel(
                samples["image"], samples["target"], samples["prediction"], names,
                pl_module.class_colors(), pl_module.rgb_indices(),  # type: ignore[operator]
                ignore_index=pl_module.hparams.get("ignore_index"),
            )  # fmt: skip
            fig.savefig(out / f"samples_{stage}.png", dpi=80)
            self._to_tensorboard(trainer, f"{stage}/samples", fig)

    def _detection_panel(
        self, trainer: Trainer, pl_module: Any, stage: str, samples: dict[str, Any], out: Path
    ) -> None:
        from geocmid.tasks.detection_panels import save_panels

        save_panels(
            out / f"detections_{stage}.png", samples["images"], samples["targets"],
            samples["predictions"], pl_module.object_classes(),
            min_score=pl_module.hparams["panel_score"], rgb=pl_module.rgb_indices(),
        )  # fmt: skip

    @staticmethod
    def _to_tensorboard(trainer: Trainer, tag: str, fig: Figure) -> None:
        for logger in trainer.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_figure"):
                experiment.add_figure(tag, fig, global_step=trainer.global_step, close=False)
        plt.close(fig)
