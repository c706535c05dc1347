"""``CMIDTask``: CMID pretraining as a TorchGeo task (Lightning module), spec §5–§6.

A :class:`torchgeo.tasks.BaseTask` subclass, so it runs from ``geocmid pretrain``, from Python and
from TorchGeo's own ``torchgeo fit --config`` (``model.class_path: geocmid.cmid.task.CMIDTask``).
It expects batches ``{"image": [B, C, S, S] normalised, "valid": [B, S, S] bool}`` such as
:class:`geocmid.datamodules.PretrainDataModule` yields (it normalises on the device); the
two-view transform, block masks and mean-fill run batched on the accelerator at the start of
``training_step``.

Per step it logs every loss term, the learning rate, the EMA momentum and the teacher temperature.
The EMA teacher is updated in ``on_train_batch_end``, i.e. after ``optimizer.step()`` (fix §9.5),
and only on steps where the optimizer actually stepped (gradient accumulation).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks import BaseTask

from geocmid.cmid.ema import momentum_at
from geocmid.cmid.model import CMIDModel
from geocmid.cmid.views import CMIDViewTransform
from geocmid.errors import ConfigError

#: Optimizers accepted by ``optimizer=``.
OPTIMIZERS = ("adan", "adamw")


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, start: float
) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step`` (spec §5 schedule).

    ``lr(k) = [min_lr + (lr − min_lr)·½(1 + cos(π k / K))] · w(k)`` with the warmup factor
    ``w(k) = start + (1 − start)·k / warmup_steps`` for ``k < warmup_steps``, else 1 (the
    official code multiplies the cosine value by the warmup factor).
    """
    k = min(max(step, 0), total_steps)
    cosine = min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * k / max(total_steps, 1)))
    warm = start + (1 - start) * k / warmup_steps if k < warmup_steps else 1.0
    return cosine * warm / base_lr


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed (≥ 2-D) and not decayed (≤ 1-D: biases, norms).

    As timm's ``filter_bias_and_bn``: the mask token is 4-D, so it *is* decayed (spec §5).
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def ema_foreach(model: CMIDModel, momentum: float) -> None:
    """``θ_t ← τ θ_t + (1 − τ) θ_s`` over every (student, teacher) pair, as one fused op.

    Same update as :meth:`CMIDModel.update_teacher` (parameters only; BN statistics are not
    averaged), but ``torch._foreach_lerp_`` updates all tensors in one kernel launch per group
    instead of two out-of-place ops per parameter: on ResNet-50 + heads that is ~45 M floats.
    """
    teacher, student = [], []
    for s, t in model._ema_pairs():
        for ps, pt in zip(s.parameters(), t.parameters(), strict=True):
            teacher.append(pt.data)
            student.append(ps.data.to(pt.dtype))
    torch._foreach_lerp_(teacher, student, 1.0 - momentum)


class CMIDTask(BaseTask):
    """CMID self-supervised pretraining of a ResNet, Swin or ViT backbone (any band count).

    Args:
        backbone: ``resnet18/34/50/101``, ``swin_tiny/small/base``, ``vit_small/base``.
        in_chans: number of bands of the data.
        chip_size: square chip size in pixels (multiple of the mask block and backbone stride).
        bands: band names in channel order (model card, quick-look).
        rgb_bands: names of the red, green, blue bands: enables hue/saturation/greyscale
            augmentation and sets the quick-look colours (default: no RGB ops, first 3 bands).
        mean, std: per-band normalisation statistics of the data, raw units (model card).
        gsd: ground sampling distance of the data in CRS units per pixel (model card).
        data: name of the pretraining data (model card provenance).
        pretrained: optional weight file to start the student (and teacher) from.
        model_kwargs: further :class:`~geocmid.cmid.model.CMIDModel` arguments (mask_ratio,
            queue_size, num_prototypes, teacher_temp, backbone_kwargs, ...).
        photometric: overrides of :class:`~geocmid.cmid.views.Photometric` (view-2 augmentation).
        optimizer: ``"adan"`` (timm, betas 0.98/0.92/0.99, paper) or ``"adamw"``.
        base_lr: learning rate for a global batch of ``lr_reference_batch`` images; the used
            lr is ``base_lr × global batch / lr_reference_batch``.
        lr_reference_batch: global batch that ``base_lr`` refers to (256).
        batch_size: per-device batch used for the lr scaling when the datamodule has none.
        weight_decay: decoupled weight decay of ≥ 2-D parameters (0.02).
        betas: optimizer betas (default: the optimizer's own).
        warmup_epochs: linear warmup length in epochs (fractions allowed), from
            ``warmup_start × lr``.
        warmup_start: warmup start factor (0.01).
        min_lr: final learning rate of the cosine schedule (1e-6).
        ema_momentum: (start, end) of the cosine EMA momentum schedule (0.996 → 1).
        view_seed: seed of the view transform (each rank derives its own).
    """

    ignore = None
    monitor = "train/loss"

    def __init__(
        self,
        backbone: str = "resnet50",
        in_chans: int = 3,
        chip_size: int = 224,
        bands: Sequence[str] | None = None,
        rgb_bands: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        gsd: float | None = None,
        data: str | None = None,
        pretrained: str | None = None,
        model_kwargs: dict[str, Any] | None = None,
        photometric: dict[str, Any] | None = None,
        optimizer: str = "adan",
        base_lr: float = 1e-3,
        lr_reference_batch: int = 256,
        batch_size: int | None = None,
        weight_decay: float = 0.02,
        betas: Sequence[float] | None = None,
        warmup_epochs: float = 10,
        warmup_start: float = 0.01,
        min_lr: float = 1e-6,
        ema_momentum: Sequence[float] = (0.996, 1.0),
        view_seed: int = 322,
    ) -> None:
        if optimizer.lower() not in OPTIMIZERS:
            raise ConfigError(
                "setting 'optimizer'", f"unknown optimizer '{optimizer}'", "use adan or adamw"
            )
        if bands is not None and len(bands) != in_chans:
            raise ConfigError(
                "setting 'bands'",
                f"lists {len(bands)} bands but in_chans is {in_chans}",
                "give one band name per input channel",
            )
        self.model: CMIDModel
        self.views: CMIDViewTransform
        self.last_views: dict[str, Tensor] | None = None  # last batch, for quick-looks / health
        self._generator: torch.Generator | None = None
        self._ema_step = -1
        self.ema_tau = float(ema_momentum[0])
        super().__init__()

    # ------------------------------------------------------------------------------------------
    def configure_models(self) -> None:
        hp = self.hparams
        self.model = CMIDModel(
            hp["backbone"],
            hp["in_chans"],
            hp["chip_size"],
            pretrained_path=hp["pretrained"],
            **(hp["model_kwargs"] or {}),
        )
        self.views = self.model.view_transform(self.rgb_indices, **(hp["photometric"] or {}))

    @property
    def rgb_indices(self) -> list[int] | None:
        """Channel indices of ``rgb_bands`` (None when no RGB bands are named)."""
        rgb, bands = self.hparams["rgb_bands"], self.hparams["bands"]
        if not rgb:
            return None
        if bands is None or any(b not in bands for b in rgb):
            raise ConfigError(
                "setting 'rgb_bands'",
                f"{list(rgb)} are not all among the bands {list(bands or [])}",
                "name three of the data's bands (the catalog entry's 'rgb')",
            )
        return [list(bands).index(b) for b in rgb]

    def forward(self, x: Tensor) -> Tensor:
        """Student backbone features ``[B, C_out, S/stride, S/stride]`` of a normalised image."""
        return self.model.backbone(x)

    # ------------------------------------------------------------------------------------------
    def _view_generator(self, device: torch.device) -> torch.Generator:
        """Per-rank generator of the crops, flips, masks and augmentation draws.

        Seeded from (seed, rank, global step) so ranks differ and a resumed run does not replay
        the crops of its first epochs.
        """
        if self._generator is None or self._generator.device != device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            step = self.trainer.global_step if self._trainer is not None else 0
            seed = np.random.SeedSequence([self.hparams["view_seed"], rank, step]).generate_state(
                1
            )[0]
            self._generator = torch.Generator(device=device).manual_seed(int(seed))
        return self._generator

    def on_train_start(self) -> None:
        self._generator = None  # reseed after a resume (global_step is restored by now)
        self._ema_step = self.trainer.global_step

    def make_views(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``{"image", ["valid"]}`` (normalised, on the device) → the two-view CMID batch.

        Runs inside ``training_step`` rather than ``on_after_batch_transfer``: Lightning calls only
        one of the module's and the datamodule's batch hooks, and the datamodule's normalises.
        Autocast is off: crops, blur and mean-fill are cheap and exact in fp32.
        """
        image = batch["image"]
        if image.shape[1] != self.hparams["in_chans"]:
            raise ConfigError(
                "setting 'in_chans'",
                f"the data has {image.shape[1]} bands but the model was built for "
                f"{self.hparams['in_chans']}",
                "set in_chans (and bands) to the data's band count",
            )
        inputs = {"image": image.float()}
        if "valid" in batch:
            inputs["valid"] = batch["valid"].bool()
        with torch.autocast(image.device.type, enabled=False):
            views = self.views(inputs, self._view_generator(image.device))
        if "bounds" in batch:
            views["bounds"] = batch["bounds"]  # kept for diagnostics (which chips a rank saw)
        return views

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """All CMID losses of one batch; returns the total loss."""
        if "img" not in batch:
            batch = self.make_views(batch)
        losses = self.model.forward_losses(batch, self.current_epoch)
        self.last_views = batch
        bs = batch["img"].shape[0]
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"},
            on_step=True, on_epoch=True, batch_size=bs,
        )  # fmt: skip
        self.log("train/loss", losses["loss"].detach(), on_step=True, on_epoch=True,
                 prog_bar=True, batch_size=bs)  # fmt: skip
        self.log_dict(
            {
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
                "train/ema_momentum": self.ema_tau,
                "train/teacher_temp": self.model.teacher_temperature(self.current_epoch),
            },
            on_step=True, on_epoch=False, batch_size=bs,
        )  # fmt: skip
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA teacher update, after ``optimizer.step()`` and only when the optimizer stepped."""
        step = self.trainer.global_step
        if step > self._ema_step:
            start, end = self.hparams["ema_momentum"]
            total = max(int(self.trainer.estimated_stepping_batches), 1)
            self.ema_tau = momentum_at(step - 1, total, float(start), float(end))
            ema_foreach(self.model, self.ema_tau)
            self._ema_step = step

    # ------------------------------------------------------------------------------------------
    def per_device_batch(self) -> int:
        """Per-device batch size: the datamodule's, else the ``batch_size`` argument."""
        dm = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        size = getattr(dm, "hparams", {}).get("batch_size") if dm is not None else None
        size = size or getattr(dm, "batch_size", None) or self.hparams["batch_size"]
        if not size:
            raise ConfigError(
                "setting 'batch_size'",
                "the per-device batch size is unknown (the datamodule has no batch_size)",
                "pass batch_size to CMIDTask",
            )
        return int(size)

    def global_batch(self) -> int:
        """Images per optimizer step: batch × devices × nodes × gradient accumulation."""
        t = self.trainer
        return self.per_device_batch() * t.world_size * t.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        """Adan/AdamW, wd on ≥ 2-D parameters, per-step warmup + cosine LambdaLR (spec §5)."""
        hp = self.hparams
        lr = hp["base_lr"] * self.global_batch() / hp["lr_reference_batch"]
        groups = param_groups(self.model, hp["weight_decay"])
        betas = tuple(hp["betas"]) if hp["betas"] else None
        opt: Optimizer
        if hp["optimizer"].lower() == "adan":
            from timm.optim import Adan

            opt = Adan(groups, lr=lr, **({"betas": betas} if betas else {}), eps=1e-8)
        else:
            opt = AdamW(groups, lr=lr, **({"betas": betas} if betas else {}))
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        epochs = self.trainer.max_epochs if (self.trainer.max_epochs or 0) > 0 else 1
        warmup = round(hp["warmup_epochs"] * total / epochs)
        min_lr, start = min(hp["min_lr"], lr), hp["warmup_start"]

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup, lr, min_lr, start)

        sched = LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_embeddings(self, x: Tensor) -> Tensor:
        """L2-normalised teacher GAP features ``[B, C_out]`` of normalised images, eval mode."""
        teacher = self.model.teacher
        was_training = teacher.training
        teacher.eval()
        try:
            feats = teacher(x.to(self.device, torch.float32)).float().mean(dim=(2, 3))
        finally:
            teacher.train(was_training)
        return nn.functional.normalize(feats, dim=1)
