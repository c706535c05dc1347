"""Scene classification: TorchGeo's task with a timm classifier on a CMID encoder.

TorchGeo's :class:`~torchgeo.tasks.Classification` builds a timm model and provides losses,
metrics and steps (batches ``{"image": [B, C, H, W], "label": [B]}``). We build the same timm
model for the chip size (Swin windows, ViT positions), copy the CMID backbone into it (verified
equal), train the head at ``lr`` and the encoder at ``backbone_lr`` (or freeze it: linear probe),
and add the reports and the model card of :class:`~geocmid.tasks.common.FinetuneMixin`.
Data: :class:`~geocmid.datamodules.FeatureChipDataModule` (chips around labelled points or
polygons) or :class:`~geocmid.datamodules.ImageFolderDataModule` (UC Merced style).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import timm
from torch import Tensor, nn
from torchgeo.tasks import Classification

from geocmid.tasks.common import FinetuneMixin
from geocmid.tasks.encoders import EncoderSource, copy_encoder, freeze, load_encoder


def build_classifier(source: EncoderSource, num_classes: int, drop_rate: float = 0.0) -> nn.Module:
    """A timm classifier shaped like ``source.backbone``, encoder weights copied when pretrained."""
    backbone = source.backbone
    kwargs: dict[str, Any] = {}
    if backbone.family == "swin":
        kwargs = {"img_size": backbone.img_size, "strict_img_size": False}
    elif backbone.family == "vit":
        kwargs = {"img_size": backbone.img_size, "dynamic_img_size": True}
    model = timm.create_model(
        backbone.name, pretrained=False, num_classes=num_classes, in_chans=backbone.in_chans,
        drop_rate=drop_rate, drop_path_rate=0.0, **kwargs,
    )  # fmt: skip
    if source.pretrained:
        head = {f"{n}." for n, m in model.named_modules() if m is model.get_classifier()}
        copy_encoder(backbone, model, allow_left=lambda k: any(k.startswith(h) for h in head))
    return model


def encoder_part(model: nn.Module) -> list[nn.Module]:
    """Top-level children of a timm classifier that do not hold its classifier."""
    head = model.get_classifier()
    return [
        m for m in model.children() if m is not head and all(c is not head for c in m.modules())
    ]


class ClassificationTask(FinetuneMixin, Classification):
    """Scene classification on a CMID (or random) encoder.

    Args:
        backbone: ``resnet18/34/50/101``, ``swin_tiny/small/base``, ``vit_small/base``.
        weights: geocmid export, CMID release / state dict, or None (random).
        in_channels: bands; num_classes: classes; labels / classes: names / class table
            (in_channels, num_classes, classes: None = read from the datamodule in ``setup``).
        loss: ``ce`` or ``focal``; class_weights: CE weight per class.
        lr, backbone_lr, weight_decay, scheduler, patience: optimisation (see
            :class:`~geocmid.tasks.segmentation.SegmentationTask`).
        freeze_backbone: linear probe (train the classifier only).
        drop_rate: dropout before the classifier.
        chip_size, bands, mean, std: for the encoder geometry and the model card (None: the
            datamodule's).
        adapt_in_chans, channels_last: see :class:`~geocmid.tasks.segmentation.SegmentationTask`.
    """

    card_task = "classification"
    ignore = ()

    def __init__(
        self,
        backbone: str | None = "resnet50",
        weights: str | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
        labels: list[str] | None = None,
        classes: list[dict[str, Any]] | None = None,
        loss: Literal["ce", "focal"] = "ce",
        class_weights: Sequence[float] | None = None,
        lr: float = 1e-3,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-4,
        scheduler: Literal["plateau", "cosine", "none"] = "plateau",
        patience: int = 10,
        freeze_backbone: bool = False,
        drop_rate: float = 0.0,
        chip_size: int | None = None,
        bands: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        adapt_in_chans: bool = False,
        channels_last: bool = True,
    ) -> None:
        labels = labels or ([c["name"] for c in classes] if classes else None)
        super().__init__(
            model=backbone or "", weights=weights, in_channels=in_channels, task="multiclass",
            num_classes=num_classes, labels=labels, loss=loss, class_weights=class_weights,
            ignore_index=None, lr=lr, patience=patience, freeze_backbone=freeze_backbone,
        )  # fmt: skip

    def hparam_defaults(self) -> dict[str, Any]:
        hp = self.hparams
        return {"task": "multiclass", "model": hp.get("backbone") or "", "ignore_index": None}

    def build_model(self) -> None:
        hp = self.hparams
        self.source = load_encoder(
            self.weights, hp["backbone"] or None, hp["in_channels"], hp["chip_size"],
            hp["adapt_in_chans"],
        )  # fmt: skip
        self.hparams["backbone"] = self.hparams["model"] = self.source.backbone.name
        self.model = build_classifier(self.source, hp["num_classes"], hp["drop_rate"])
        if hp["freeze_backbone"]:
            for part in encoder_part(self.model):
                freeze(part)

    def encoder_modules(self) -> list[nn.Module]:
        return encoder_part(self.model)

    def target_of(self, batch: dict[str, Any]) -> Tensor:
        return batch["label"]

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        # TorchGeo's step plots through its own datamodules only; ours plots in FinetuneMixin
        x, y = batch["image"], batch["label"]
        y_hat = self(x)
        self.val_metrics(y_hat, y)
        self.log("val_loss", self.criterion(y_hat, y), batch_size=x.shape[0])


__all__ = ["ClassificationTask", "build_classifier"]
