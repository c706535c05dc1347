"""Bitemporal change detection: TorchGeo's task with siamese models sharing a CMID encoder.

TorchGeo's :class:`~torchgeo.tasks.ChangeDetection` provides the losses, metrics and the
train/val/test steps (``image`` ``[B, 2, C, H, W]``, ``mask`` ``[B, H, W]``). We build the model
around a CMID (or random) encoder, verified equal to the source after loading:

* ``fcsiamdiff`` / ``fcsiamconc``: TorchGeo's FC-Siam models; one smp ``tu-`` encoder (ResNet or
  Swin) runs on both dates, features are subtracted / concatenated for a UNet decoder;
* ``changevit``: TorchGeo's ChangeViT; the CMID ViT is its (shared) encoder, the detail-capture
  CNN starts random;
* ``unet``: early fusion, both dates stacked on channels into one UNet; the pretrained stem is
  split over the two dates (filters / 2 each).

Binary change is two classes (no change, change); multiclass change has class 0 = no change and
one class per kind of change. ``val_change_F1`` / ``_IoU`` / ``_precision`` / ``_recall`` score
change against no change for both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import segmentation_models_pytorch as smp
from einops import rearrange
from torch import Tensor, nn
from torchgeo.models import ChangeViT, FCSiamConc, FCSiamDiff
from torchgeo.tasks import ChangeDetection

from geocmid.errors import ConfigError
from geocmid.tasks.common import ChangeBinary, FinetuneMixin, log_val_loss
from geocmid.tasks.encoders import (
    EncoderSource,
    copy_encoder,
    early_fusion_stem,
    freeze,
    load_encoder,
)
from geocmid.tasks.segmentation import build_smp, init_smp_encoder

MODELS = ("fcsiamdiff", "fcsiamconc", "changevit", "unet")


class EarlyFusion(nn.Module):
    """A single-image segmentation model fed both dates stacked on channels.

    Accepts ``[B, 2, C, H, W]`` (the prediction contract) or ``[B, 2·C, H, W]`` (what TorchGeo's
    change step passes to non-siamese models) and returns logits ``[B, K, H, W]``.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.encoder = net.encoder
        self.decoder = net.decoder

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 5:
            x = rearrange(x, "b t c h w -> b (t c) h w")
        return self.net(x)


def build_change_model(
    model: str, source: EncoderSource, in_channels: int, classes: int
) -> nn.Module:
    """The change network for ``model`` around ``source``'s architecture, encoder initialised."""
    backbone = source.backbone
    if model not in MODELS:
        raise ConfigError(
            "setting 'model.model'",
            f"unknown change model '{model}'",
            f"use one of: {', '.join(MODELS)}",
        )
    if model == "changevit":
        if backbone.family != "vit":
            raise ConfigError(
                "setting 'model.backbone'",
                f"ChangeViT needs a ViT encoder, got {backbone.name}",
                "use vit_small / vit_base, or fcsiamdiff / fcsiamconc with ResNet or Swin",
            )
        net = ChangeViT(
            backbone=backbone.name, img_size=backbone.img_size, in_channels=in_channels,
            num_classes=classes, pretrained=False,
        )  # fmt: skip
        if source.pretrained:
            copy_encoder(backbone, net.encoder, allow_left=lambda k: k.startswith("head"))
        return net
    if backbone.family == "vit":
        raise ConfigError(
            "setting 'model.backbone'",
            f"{model} needs a multi-scale encoder (ResNet or Swin), got {backbone.name}",
            "use changevit with a ViT encoder",
        )
    if model == "unet":
        net = EarlyFusion(build_smp("unet", backbone, 2 * in_channels, classes))
        init_smp_encoder(net.net, source, adapt=early_fusion_stem)
        return net
    cls = FCSiamDiff if model == "fcsiamdiff" else FCSiamConc
    net = cls(
        encoder_name=f"tu-{backbone.name}",
        in_channels=in_channels,
        classes=classes,
        encoder_weights=None,
    )
    if backbone.family == "swin":  # rebuild the encoder for the chip size (Swin windows)
        net.encoder = smp.encoders.get_encoder(
            f"tu-{backbone.name}",
            in_channels=in_channels,
            depth=5,
            weights=None,
            img_size=backbone.img_size,
        )
    init_smp_encoder(net, source)
    return net


class ChangeTask(FinetuneMixin, ChangeDetection):
    """Change detection between two dates on a shared CMID (or random) encoder.

    Args:
        model: ``fcsiamdiff``, ``fcsiamconc``, ``changevit`` or ``unet`` (early fusion).
        backbone, weights, adapt_in_chans: the encoder (see :class:`SegmentationTask`).
        in_channels: bands per date (None: read from the datamodule in ``setup``).
        num_classes: 2 for binary change, more for kinds of change (index 0 = no change; None:
            from the data). ``classes``, ``bands``, ``mean``, ``std``, ``chip_size``: None = the
            datamodule's.
        The other arguments are those of :class:`~geocmid.tasks.segmentation.SegmentationTask`.
    """

    card_task = "change"
    ignore = ()

    def __init__(
        self,
        model: Literal["fcsiamdiff", "fcsiamconc", "changevit", "unet"] = "fcsiamdiff",
        backbone: str | None = "resnet50",
        weights: str | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
        labels: list[str] | None = None,
        classes: list[dict[str, Any]] | None = None,
        loss: Literal["ce", "focal", "dice", "jaccard"] = "ce",
        class_weights: Sequence[float] | None = None,
        ignore_index: int | None = 255,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-4,
        scheduler: Literal["plateau", "cosine", "none"] = "plateau",
        patience: int = 10,
        freeze_backbone: bool = False,
        freeze_decoder: bool = False,
        chip_size: int | None = None,
        bands: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        adapt_in_chans: bool = False,
        channels_last: bool = True,
    ) -> None:
        labels = labels or ([c["name"] for c in classes] if classes else None)
        super().__init__(
            model=model, backbone=backbone or "", weights=weights, in_channels=in_channels,
            task="multiclass", num_classes=num_classes, labels=labels, loss=loss,
            class_weights=class_weights, ignore_index=ignore_index, lr=lr, patience=patience,
            freeze_backbone=freeze_backbone, freeze_decoder=freeze_decoder,
        )  # fmt: skip

    def hparam_defaults(self) -> dict[str, Any]:
        return {"task": "multiclass"}

    def build_model(self) -> None:
        hp = self.hparams
        self.source = load_encoder(
            self.weights, hp["backbone"] or None, hp["in_channels"], hp["chip_size"],
            hp["adapt_in_chans"],
        )  # fmt: skip
        self.hparams["backbone"] = self.source.backbone.name
        self.model = build_change_model(
            hp["model"], self.source, hp["in_channels"], hp["num_classes"]
        )
        if hp["freeze_backbone"]:
            freeze(self.model.encoder)
        if hp["freeze_decoder"]:
            freeze(self.model.decoder)

    def build_metrics(self) -> None:
        super().build_metrics()
        for stage in ("train", "val", "test"):
            getattr(self, f"{stage}_metrics").add_metrics(
                {"Change": ChangeBinary(self.hparams["ignore_index"])}
            )

    def encoder_modules(self) -> list[nn.Module]:
        return [self.model.encoder]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # TorchGeo's step plots through its own datamodules only (under a TensorBoard logger it
        # would call datamodule.plot); ours plot in ReportCallback. Same loss and metrics.
        x, y = batch["image"], batch["mask"]
        if not self.hparams["model"].startswith("fcsiam") and self.hparams["model"] != "changevit":
            x = rearrange(x, "b t c h w -> b (t c) h w")
        y = y.squeeze(1).long() if y.ndim == 4 else y.long()
        y_hat = self(x)
        log_val_loss(self, y_hat, y)
        self.val_metrics(y_hat, y)


__all__ = ["MODELS", "ChangeTask", "EarlyFusion", "build_change_model"]
