"""Semantic segmentation: TorchGeo's task with smp decoders on CMID encoders.

TorchGeo's :class:`~torchgeo.tasks.SemanticSegmentation` provides the losses (CE with ignore
index and class weights, focal, dice, jaccard), the metrics (overall / average / per-class
accuracy, precision, recall, F1, IoU) and the train/val/test/predict steps. We replace how the
model is built (timm encoders through smp's ``tu-`` wrapper, initialised from a geocmid export
or a CMID release and verified equal after loading), add FPN, and bring the optimiser groups,
reports and model card of :class:`~geocmid.tasks.common.FinetuneMixin`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import segmentation_models_pytorch as smp
from torch import nn
from torchgeo.tasks import SemanticSegmentation

from geocmid.errors import ConfigError
from geocmid.models.backbones import Backbone
from geocmid.tasks.common import FinetuneMixin, log_val_loss
from geocmid.tasks.encoders import (
    EncoderSource,
    copy_encoder,
    freeze,
    load_encoder,
    smp_encoder_keys,
)

DECODERS: dict[str, type[nn.Module]] = {
    "unet": smp.Unet,
    "upernet": smp.UPerNet,
    "fpn": smp.FPN,
    "deeplabv3+": smp.DeepLabV3Plus,
}


def build_smp(
    decoder: str,
    backbone: Backbone,
    in_channels: int,
    classes: int,
) -> nn.Module:
    """An smp model with a ``tu-<timm name>`` encoder shaped like ``backbone`` (random weights).

    Args:
        decoder: ``unet``, ``upernet``, ``fpn`` or ``deeplabv3+``.
        backbone: geocmid backbone whose architecture and chip size the encoder copies.
        in_channels: channels the encoder takes (``2·C`` for early-fusion change).
        classes: output channels (logits).
    """
    if decoder not in DECODERS:
        raise ConfigError(
            "setting 'model.model'",
            f"unknown decoder '{decoder}'",
            f"use one of: {', '.join(DECODERS)}",
        )
    if backbone.family == "vit":
        raise ConfigError(
            "setting 'model.backbone'",
            f"{backbone.name} has a single-scale feature map; smp decoders need a pyramid",
            "use a ResNet or Swin backbone (ViT: scene classification or ChangeViT)",
        )
    kwargs: dict[str, Any] = {}
    if backbone.family == "swin":
        if decoder == "deeplabv3+":
            raise ConfigError(
                "setting 'model.model'",
                "DeepLabV3+ needs a dilated (output stride 16) encoder, which Swin cannot be",
                "use unet, fpn or upernet with Swin",
            )
        kwargs["img_size"] = backbone.img_size  # Swin windows are built for the chip size
    return DECODERS[decoder](
        encoder_name=f"tu-{backbone.name}",
        encoder_weights=None,  # never download: weights come from files
        in_channels=in_channels,
        classes=classes,
        **kwargs,
    )


def init_smp_encoder(model: nn.Module, source: EncoderSource, adapt: Any = None) -> None:
    """Copy ``source``'s backbone into ``model.encoder`` (random sources are copied too, so a
    random start is the same network as a pretrained one, just other numbers)."""
    if source.pretrained:
        copy_encoder(
            source.backbone, model.encoder, smp_encoder_keys(source.backbone.family), adapt=adapt
        )


class SegmentationTask(FinetuneMixin, SemanticSegmentation):
    """Semantic segmentation on a CMID (or random) encoder.

    Args:
        model: decoder, ``unet`` / ``upernet`` / ``fpn`` / ``deeplabv3+``.
        backbone: ``resnet18/34/50/101``, ``swin_tiny/small/base`` (may be omitted with an
            export: the card says).
        weights: geocmid export (``.safetensors``), CMID release / state dict, or None (random).
        in_channels: bands of the imagery (None: read from the datamodule in ``setup``).
        num_classes: classes (logit channels), unlabelled pixels excluded (None: from the data).
        labels: class names (metric names); filled from ``classes`` when omitted.
        classes: class table ``[{value, name, color}]`` for the model card (None: from the data).
        loss: ``ce``, ``focal``, ``dice`` or ``jaccard``.
        class_weights: CE weight per class (rare classes up-weighted).
        ignore_index: label index left out of loss and metrics (255: unlabelled).
        lr: head learning rate; ``backbone_lr``: encoder learning rate (default: ``lr``).
        weight_decay: AdamW weight decay.
        scheduler: ``plateau``, ``cosine`` or ``none``; ``patience`` for plateau.
        freeze_backbone: train the decoder only; ``freeze_decoder``: the head only.
        chip_size: chip edge in pixels (Swin windows are built for it; model card; None: the
            datamodule's).
        bands, mean, std: band names and normalisation statistics (raw units) for the card
            (None: the datamodule's, i.e. what the chips are actually normalised with).
        adapt_in_chans: let a release checkpoint with another band count adapt its stem.
        channels_last: keep the weights in channels-last memory format (the same model, ~1.3×
            faster CPU steps; what tensor cores want under ``trainer.precision`` 16/bf16).
    """

    card_task = "segmentation"
    ignore = ()

    def __init__(
        self,
        model: Literal["unet", "upernet", "fpn", "deeplabv3+"] = "unet",
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
        self.model = build_smp(
            hp["model"], self.source.backbone, hp["in_channels"], hp["num_classes"]
        )
        init_smp_encoder(self.model, self.source)
        if hp["freeze_backbone"]:
            freeze(self.model.encoder)
        if hp["freeze_decoder"]:
            freeze(self.model.decoder)

    def encoder_modules(self) -> list[nn.Module]:
        return [self.model.encoder]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # TorchGeo's step plots through its own datamodules only; ours plots in FinetuneMixin
        x, y = batch["image"], batch["mask"]
        y_hat = self(x)
        self.val_metrics(y_hat, y)
        log_val_loss(self, y_hat, y)


__all__ = ["DECODERS", "SegmentationTask", "build_smp", "init_smp_encoder"]
