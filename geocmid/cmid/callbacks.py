"""Callbacks of CMID pretraining: collapse health metrics, kNN probe, reconstruction quick-looks.

All three work on what :class:`~geocmid.cmid.task.CMIDTask` already has (its last two-view batch,
its teacher) and run once per epoch (or every N epochs), never per step: the official code's
per-iteration plot hook (spec §9.4) is exactly what is avoided here.

Their arguments are plain values, so a Lightning CLI config lists them under
``trainer.callbacks`` (``class_path: geocmid.cmid.callbacks.HealthMonitor``). What depends on the
run (the run folder, the data's statistics and RGB bands) is looked up when training starts:
folders default to ``trainer.default_root_dir``, the kNN probe uses the task's ``mean`` / ``std``
/ ``chip_size`` as :meth:`CMIDTask.setup <geocmid.cmid.task.CMIDTask.setup>` filled them.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geocmid.errors import ConfigError

log = logging.getLogger(__name__)

#: The kNN entry's setting, as errors name it.
KNN_KEY = "trainer.callbacks.HealthMonitor.knn_entry"


# ------------------------------------------------------------------------------------------------
# health: embedding spread and kNN accuracy
def embedding_health(z: Tensor) -> dict[str, float]:
    """Collapse indicators of a batch of embeddings ``z`` ``[B, D]`` (any scale).

    Returns:
        ``std``: mean over dimensions of the per-dimension std of the L2-normalised embeddings
        (0 = collapsed; ≈ 1/√D when spread uniformly over the sphere);
        ``std_norm``: ``std × √D`` (≈ 1 healthy, → 0 collapse, comparable across D);
        ``cos``: mean pairwise cosine similarity over distinct pairs (→ 1 collapse).
    """
    z = F.normalize(z.float(), dim=1)
    b, d = z.shape
    std = float(z.std(dim=0).mean()) if b > 1 else 0.0
    sim = z @ z.T
    cos = float((sim.sum() - sim.diagonal().sum()) / max(b * (b - 1), 1))
    return {"std": std, "std_norm": std * d**0.5, "cos": cos}


def knn_accuracy(
    train_z: Tensor,
    train_y: Tensor,
    test_z: Tensor,
    test_y: Tensor,
    k: int = 20,
    temperature: float = 0.07,
) -> float:
    """Weighted cosine kNN top-1 accuracy (DINO-style: votes ``exp(sim / T)`` of the k nearest).

    Args:
        train_z, test_z: ``[N, D]`` embeddings (normalised here).
        train_y, test_y: ``[N]`` integer labels.
        k: neighbours (20, as the official kNN hook).
        temperature: vote temperature T (0.07).
    """
    train_z, test_z = F.normalize(train_z.float(), dim=1), F.normalize(test_z.float(), dim=1)
    k = min(k, len(train_z))
    sims, idx = (test_z @ train_z.T).topk(k, dim=1)
    classes = int(max(train_y.max(), test_y.max())) + 1
    votes = torch.zeros(len(test_z), classes, device=test_z.device)
    votes.scatter_add_(1, train_y[idx], (sims / temperature).exp())
    return float((votes.argmax(1) == test_y).float().mean())


class KNNProbe:
    """A small labelled set for a per-epoch kNN probe on teacher GAP features.

    Every ``holdout``-th image (in dataset order, so every class is represented) is a query; the
    rest are the neighbours. Images must already be normalised like the pretraining data and be
    ``chip_size`` square.

    Args:
        images: ``[N, C, S, S]`` normalised float images.
        labels: ``[N]`` integer labels.
        k, temperature: kNN parameters (20, 0.07).
        holdout: one query image out of every ``holdout`` (5 → 20 % queries).
    """

    def __init__(
        self, images: Tensor, labels: Tensor, k: int = 20, temperature: float = 0.07,
        holdout: int = 5,
    ) -> None:  # fmt: skip
        if len(images) < 2 * holdout:
            raise ConfigError(
                "kNN probe", f"needs at least {2 * holdout} labelled images, got {len(images)}"
            )
        self.images, self.labels = images.float(), labels.long()
        self.k, self.temperature = k, temperature
        self.query = torch.arange(len(images)) % holdout == 0

    @classmethod
    def from_entry(
        cls,
        entry: str,
        catalog: str | Path | None,
        chip_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        max_images: int = 1000,
        **kw: Any,
    ) -> KNNProbe:
        """Load an ``image_folder`` catalog entry, resize to ``chip_size`` and normalise.

        ``mean``/``std`` are the pretraining data's statistics (raw units): the labelled images
        must come from the same kind of sensor and radiometry.
        """
        from geocmid.data.catalog import Catalog
        from geocmid.data.catalog.schema import ImageFolderEntry
        from geocmid.data.datasets import dataset_from_entry

        cat = Catalog(catalog)
        folder = cat.get_kind(entry, ImageFolderEntry, f"setting '{KNN_KEY}'")
        dataset = dataset_from_entry(folder, cat)
        step = max(1, len(dataset) // max_images)  # thin evenly: keeps every class
        m = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        s = torch.tensor(std, dtype=torch.float32)[:, None, None]
        images, labels = [], []
        for i in range(0, len(dataset), step):
            sample = dataset[i]
            img = sample["image"].float()
            if img.shape[0] != len(mean):
                raise ConfigError(
                    f"setting '{KNN_KEY}' ({folder.where})",
                    f"images have {img.shape[0]} bands, the pretraining data {len(mean)}",
                    "use labelled images of the same bands as the pretraining data",
                )
            img = F.interpolate(
                img[None], size=(chip_size, chip_size), mode="bilinear", antialias=True
            )[0]
            images.append((img - m) / s)
            labels.append(int(sample["label"]))
        return cls(torch.stack(images), torch.tensor(labels), **kw)

    @torch.no_grad()
    def accuracy(self, embed: Any, batch_size: int = 64) -> float:
        """Top-1 kNN accuracy of ``embed`` (``[B, C, S, S]`` → ``[B, D]``) on this set."""
        z = torch.cat([embed(x).cpu() for x in self.images.split(batch_size)])
        q = self.query
        return knn_accuracy(z[~q], self.labels[~q], z[q], self.labels[q], self.k, self.temperature)


class HealthMonitor(L.Callback):
    """Per-epoch collapse metrics (and kNN accuracy) logged next to the losses.

    Logs ``health/feat_std``, ``health/feat_std_norm``, ``health/feat_cos`` of the teacher's GAP
    features of the epoch's last batch (view 1, unmasked), and ``health/knn_acc`` with a kNN
    probe. A warning is logged when the mean cosine similarity exceeds ``collapse_cos``.

    Args:
        every_n_epochs: collapse metrics (and kNN) every N epochs (and at the last epoch).
        knn_entry: image_folder catalog entry with labelled images of the same bands for a kNN
            probe (loaded when training starts, normalised with the pretraining statistics).
        knn_catalog: catalog folder of knn_entry (default: the datamodule's catalog).
        knn_k: kNN neighbours.
        knn_temperature: kNN vote temperature.
        knn_max_images: labelled images used at most.
        collapse_cos: mean-cosine threshold of the collapse warning.

    Attributes:
        knn: the :class:`KNNProbe` (built from ``knn_entry`` at fit start; may be set directly).
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        knn_entry: str | None = None,
        knn_catalog: str | None = None,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        knn_max_images: int = 1000,
        collapse_cos: float = 0.95,
    ) -> None:
        self.every = max(1, every_n_epochs)
        self.knn_entry, self.knn_catalog = knn_entry, knn_catalog
        self.knn_k, self.knn_temperature = knn_k, knn_temperature
        self.knn_max_images = knn_max_images
        self.collapse_cos = collapse_cos
        self.knn: KNNProbe | None = None

    def catalog_of(self, datamodule: Any) -> Any:
        """Catalog folder of ``knn_entry``: ``knn_catalog``, else the datamodule's catalog."""
        if self.knn_catalog is not None:
            return self.knn_catalog
        catalog = getattr(datamodule, "catalog", None)
        return getattr(catalog, "folder", catalog)

    def check(self, datamodule: Any) -> None:
        """Fail early (before training) if ``knn_entry`` is not an image_folder entry."""
        if self.knn_entry is None:
            return
        from geocmid.data.catalog import Catalog
        from geocmid.data.catalog.schema import ImageFolderEntry

        Catalog(self.catalog_of(datamodule)).get_kind(
            self.knn_entry, ImageFolderEntry, f"setting '{KNN_KEY}'"
        )

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Load the kNN probe (the task's statistics and chip size are known by now)."""
        if self.knn_entry is None or self.knn is not None:
            return
        hp = pl_module.hparams
        catalog = self.catalog_of(trainer.datamodule if trainer is not None else None)
        if hp.get("mean") is None or hp.get("std") is None:
            raise ConfigError(
                f"setting '{KNN_KEY}'",
                "the kNN probe needs the pretraining data's mean and std, and the task has none",
                "set model.init_args.mean and std, or train with a PretrainDataModule",
            )
        self.knn = KNNProbe.from_entry(
            self.knn_entry, catalog, int(hp["chip_size"]), hp["mean"], hp["std"],
            self.knn_max_images, k=self.knn_k, temperature=self.knn_temperature,
        )  # fmt: skip

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every and epoch + 1 != trainer.max_epochs:
            return
        views = getattr(pl_module, "last_views", None)
        metrics: dict[str, float] = {}
        if views is not None:
            h = embedding_health(pl_module.teacher_embeddings(views["img"]))
            metrics |= {f"health/feat_{k}": v for k, v in h.items()}
            if h["cos"] > self.collapse_cos and trainer.is_global_zero:
                log.warning(
                    "epoch %d: teacher embeddings look collapsed (mean cosine %.3f, std×√D "
                    "%.3f); check the learning rate and the EMA momentum", epoch, h["cos"],
                    h["std_norm"],
                )  # fmt: skip
        if self.knn is not None:
            metrics["health/knn_acc"] = self.knn.accuracy(pl_module.teacher_embeddings)
        if metrics:
            # every rank computes on its own batch; average so all ranks log the same value
            pl_module.log_dict(metrics, on_step=False, on_epoch=True, sync_dist=True)


# ------------------------------------------------------------------------------------------------
# reconstruction quick-look
def _display(x: Tensor, rgb: Sequence[int]) -> np.ndarray:
    """``[C, H, W]`` normalised → ``[H, W, 3]`` in 0–1 with a 2–98 % stretch per image."""
    img = x[list(rgb)].float() if x.shape[0] >= 3 else x[:1].float().expand(3, -1, -1)
    lo, hi = torch.quantile(img.flatten(), torch.tensor([0.02, 0.98], device=img.device))
    img = ((img - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
    return img.permute(1, 2, 0).cpu().numpy()


class QuickLook(L.Callback):
    """Every N epochs, a PNG of input, masked input and reconstruction of a few chips (rank 0).

    Written to ``out_dir/recon_epoch{EPOCH:04d}.png`` (temp name, then renamed).

    Args:
        every_n_epochs: a reconstruction PNG every N epochs (and after the last epoch).
        out_dir: folder of the PNGs (default: the run folder's quicklook/).
        rgb_indices: channels shown as red, green, blue (default: the task's rgb_bands, else the
            first 3, or band 1 as grey).
        max_images: chips per figure (rows).
    """

    def __init__(
        self, every_n_epochs: int = 10, out_dir: str | Path | None = None,
        rgb_indices: list[int] | None = None, max_images: int = 4,
    ) -> None:  # fmt: skip
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.every = max(1, every_n_epochs)
        self.rgb_indices = list(rgb_indices) if rgb_indices else None
        self.rgb = self.rgb_indices or [0, 1, 2]
        self.max_images = max_images
        self.written: list[Path] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Resolve the folder (run folder) and the colours (the task's RGB bands)."""
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir) / "quicklook"
        if self.rgb_indices is None:
            self.rgb = getattr(pl_module, "rgb_indices", None) or [0, 1, 2]

    @torch.no_grad()
    def reconstruct(self, pl_module: Any, views: dict[str, Tensor]) -> tuple[Tensor, ...]:
        """(input, masked input, reconstruction) of view 1, each ``[n, C, S, S]`` on the CPU."""
        model = pl_module.model
        n = min(self.max_images, views["img"].shape[0])
        was_training = model.training
        model.eval()
        try:
            feats = model.student(views["mim_img"][:n], views["mask"][:n])
            rec = model.decoder(feats).float()
        finally:
            model.train(was_training)
        return views["img"][:n].cpu(), views["mim_img"][:n].cpu(), rec.cpu()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        epoch = trainer.current_epoch
        views = getattr(pl_module, "last_views", None)
        due = (epoch + 1) % self.every == 0 or epoch + 1 == trainer.max_epochs
        if not (due and trainer.is_global_zero and views is not None):
            return
        self.written.append(self.write(pl_module, views, epoch))

    def write(self, pl_module: Any, views: dict[str, Tensor], epoch: int) -> Path:
        import matplotlib

        matplotlib.use("Agg")  # no display on training nodes
        import matplotlib.pyplot as plt

        img, masked, rec = self.reconstruct(pl_module, views)
        rgb = [i for i in self.rgb if i < img.shape[1]] if img.shape[1] >= 3 else [0]
        rgb = rgb if len(rgb) == 3 else [0, 1, 2][: min(3, img.shape[1])]
        n = img.shape[0]
        fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
        for row in range(n):
            for col, (title, x) in enumerate(
                (("input", img), ("masked input", masked), ("reconstruction", rec))
            ):
                ax = axes[row][col]
                ax.imshow(_display(x[row], rgb))
                ax.set_axis_off()
                if row == 0:
                    ax.set_title(title, fontsize=9)
        fig.suptitle(f"CMID reconstruction, epoch {epoch + 1}", fontsize=10)
        fig.tight_layout()
        self.out_dir = self.out_dir or Path("quicklook")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"recon_epoch{epoch + 1:04d}.png"
        tmp = path.with_name(path.stem + ".part.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        return path


# ------------------------------------------------------------------------------------------------
class RankStateDump(L.Callback):
    """Diagnostics for distributed runs: each rank saves what it saw and its method state.

    ``out_dir/rank{R}.pt`` holds ``bounds`` (every chip's bounds, ``[N, ...]``), ``queue``
    (the MoCo key queue) and ``center`` (the DINO centre) at the end of training. Used by the
    DDP tests: ranks must see different chips yet hold identical queue and centre.

    Args:
        out_dir: folder of the dumps (default: the run folder's debug/).
    """

    def __init__(self, out_dir: str | Path | None = None) -> None:
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.bounds: list[Tensor] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if self.out_dir is None:
            self.out_dir = Path(trainer.default_root_dir) / "debug"

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        if isinstance(batch, dict) and isinstance(batch.get("bounds"), Tensor):
            self.bounds.append(batch["bounds"].detach().cpu())

    def on_train_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        model = pl_module.model
        queue = model.global_loss.queue
        state = {
            "bounds": torch.cat(self.bounds) if self.bounds else torch.empty(0),
            "queue": queue.bank.detach().cpu().clone(),
            "queue_ptr": queue.bank_ptr.detach().cpu().clone(),
            "center": model.local_loss.center.detach().cpu().clone(),
            "world_size": trainer.world_size,
        }
        self.out_dir = self.out_dir or Path(trainer.default_root_dir) / "debug"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"rank{trainer.global_rank}.pt"
        tmp = path.with_suffix(".part")
        torch.save(state, tmp)
        os.replace(tmp, path)
