"""torchvision detectors (Faster R-CNN, RetinaNet, FCOS) on a geocmid ResNet backbone + FPN.

The geocmid :class:`~geocmid.models.backbones.Backbone` is kept *as is* inside the detector
(``detector.backbone.body.backbone``), so the encoder weights right after loading are the
exported ones, key for key. Inputs are already normalised chips of any band count: the
detectors' own transform is replaced by TorchGeo's no-op (no resizing, mean 0 / std 1).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torchvision.models.detection as tvd
from torch import Tensor, nn
from torchgeo.tasks.utils import GeneralizedRCNNTransformNoOp
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from geocmid.errors import ConfigError, ModelError
from geocmid.models.backbones import Backbone

MODELS = ("faster-rcnn", "retinanet", "fcos")
#: Base anchor size in pixels per pyramid level (strides 4, 8, 16, 32, 64, 128).
DEFAULT_ANCHORS = (16, 32, 64, 128, 256, 512)
FPN_CHANNELS = 256


class ResNetFeatures(nn.Module):
    """A geocmid ResNet → ``{"0": C2, "1": C3, "2": C4, "3": C5}`` (strides 4, 8, 16, 32)."""

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        if backbone.family != "resnet":
            raise ModelError(
                f"backbone {backbone.name}", "detection needs a ResNet backbone (FPN on C2-C5)",
                "use resnet18/34/50/101 weights",
            )  # fmt: skip
        self.backbone = backbone
        info = [f for f in backbone.model.feature_info if str(f["module"]).startswith("layer")]
        self.channels = [int(f["num_chs"]) for f in info]

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        m = self.backbone.model
        out: OrderedDict[str, Tensor] = OrderedDict()
        x = self.backbone.embed(x)
        for i, layer in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)):
            x = layer(x)
            out[str(i)] = x
        return out


class ResNetFPN(nn.Module):
    """``body`` (:class:`ResNetFeatures`) + ``fpn``; ``out_channels`` as torchvision expects."""

    def __init__(self, backbone: Backbone, extra: nn.Module, channels: int = FPN_CHANNELS) -> None:
        super().__init__()
        self.body = ResNetFeatures(backbone)
        self.fpn = FeaturePyramidNetwork(self.body.channels, channels, extra_blocks=extra)
        self.out_channels = channels

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(x))


def _sizes(anchor_sizes: Sequence[int], levels: int) -> list[int]:
    sizes = [int(s) for s in anchor_sizes]
    if not sizes or any(s <= 0 for s in sizes):
        raise ConfigError("setting 'anchor_sizes'", f"needs positive sizes, got {sizes}")
    while len(sizes) < levels:  # one octave per level
        sizes.append(sizes[-1] * 2)
    return sizes[:levels]


def build_detector(
    model: str,
    backbone: Backbone,
    num_classes: int,
    anchor_sizes: Sequence[int] = DEFAULT_ANCHORS,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
    options: dict[str, Any] | None = None,
    fpn_channels: int = FPN_CHANNELS,
) -> nn.Module:
    """A torchvision detector on ``backbone`` + FPN.

    Args:
        model: ``faster-rcnn``, ``retinanet`` or ``fcos``.
        backbone: geocmid ResNet (its weights are used as they are).
        num_classes: object classes + 1 (label 0 is background for every model).
        anchor_sizes: base anchor edge in pixels per pyramid level (5 levels for Faster
            R-CNN, 6 for RetinaNet / FCOS; missing levels double the last size).
        score_thresh: detections scoring lower are dropped at inference.
        detections_per_img: most detections returned per chip.
        options: further keyword arguments of the torchvision constructor, e.g. for Faster
            R-CNN ``rpn_pre_nms_top_n_train``, ``rpn_post_nms_top_n_train``,
            ``box_batch_size_per_image`` (smaller = cheaper steps on small chips).
        fpn_channels: channels of every pyramid level (torchvision: 256; 64-128 is much
            cheaper on CPU and enough for few classes); a multiple of 32 (RetinaNet GroupNorm).

    Returns:
        the detector: ``model(images [B, C, H, W], targets)`` → losses (train) or a list of
        ``{"boxes" [N, 4] xyxy pixels, "scores" [N], "labels" [N]}`` (eval).
    """
    if num_classes < 2:
        raise ConfigError("setting 'num_classes'", "needs at least one object class + background")
    if fpn_channels <= 0 or fpn_channels % 32:
        raise ConfigError("setting 'fpn_channels'", f"must be a multiple of 32, got {fpn_channels}")
    c = fpn_channels
    detector: nn.Module
    if model == "faster-rcnn":
        net = ResNetFPN(backbone, LastLevelMaxPool(), c)
        sizes = _sizes(anchor_sizes, 5)
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * 5)
        roi = MultiScaleRoIAlign(["0", "1", "2", "3"], output_size=7, sampling_ratio=2)
        detector = tvd.FasterRCNN(
            net, num_classes, rpn_anchor_generator=anchors, box_roi_pool=roi,
            box_score_thresh=score_thresh, box_detections_per_img=detections_per_img,
            **(options or {}),
        )  # fmt: skip
    elif model == "retinanet":
        net = ResNetFPN(backbone, LastLevelP6P7(c, c), c)
        sizes = _sizes(anchor_sizes, 6)
        per_level = tuple((s, round(s * 2 ** (1 / 3)), round(s * 2 ** (2 / 3))) for s in sizes)
        anchors = AnchorGenerator(per_level, ((0.5, 1.0, 2.0),) * 6)
        head = RetinaNetHead(
            c, anchors.num_anchors_per_location()[0], num_classes,
            norm_layer=partial(nn.GroupNorm, 32),
        )  # fmt: skip
        detector = tvd.RetinaNet(
            net, num_classes, anchor_generator=anchors, head=head,
            score_thresh=score_thresh, detections_per_img=detections_per_img, **(options or {}),
        )  # fmt: skip
    elif model == "fcos":
        net = ResNetFPN(backbone, LastLevelP6P7(c, c), c)
        sizes = _sizes(anchor_sizes, 6)
        anchors = AnchorGenerator(tuple((s,) for s in sizes), ((1.0,),) * 6)
        detector = tvd.FCOS(
            net, num_classes, anchor_generator=anchors, score_thresh=score_thresh,
            detections_per_img=detections_per_img, **(options or {}),
        )  # fmt: skip
    else:
        raise ConfigError("setting 'model'", f"unknown detector '{model}'", f"use one of {MODELS}")
    # chips arrive normalised and at their final size: no resize, no re-normalisation
    detector.transform = GeneralizedRCNNTransformNoOp()
    return detector


def encoder_of(detector: nn.Module) -> Backbone:
    """The geocmid backbone inside a detector from :func:`build_detector`."""
    return detector.backbone.body.backbone


class DetectorForPrediction(nn.Module):
    """Inference wrapper: normalised ``[B, C, H, W]`` → list of ``B`` dicts.

    Each dict holds ``boxes`` ``[N, 4]`` (pixel xyxy in the input window), ``scores`` ``[N]``
    and ``labels`` ``[N]`` (indices into the card's classes; 0 is background, never emitted).
    Always runs the detector in eval mode.
    """

    def __init__(self, detector: nn.Module, in_chans: int) -> None:
        super().__init__()
        self.detector = detector.eval()
        self.in_chans = in_chans

    def train(self, mode: bool = True) -> DetectorForPrediction:
        super().train(False)  # a detector in train mode wants targets: keep it in eval
        return self

    @torch.no_grad()
    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise ModelError(
                "detector input", f"expected [B, {self.in_chans}, H, W], got {list(x.shape)}",
                "pass normalised chips with the model card's bands",
            )  # fmt: skip
        return self.detector(list(x))
