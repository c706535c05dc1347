"""Backbone factory: ResNet, Swin and plain ViT from timm, any band count, final map as NCHW.

Every backbone is split in two halves so the CMID student can add its mask token in between:

* :meth:`Backbone.embed` maps an image ``[B, in_chans, H, W]`` to a token map
  ``[B, embed_dim, H / token_stride, W / token_stride]`` (ResNet stem, Swin patch-embed + norm,
  ViT patch-embed);
* :meth:`Backbone.forward_tokens` maps that token map to the final feature map
  ``[B, out_channels, H / stride, W / stride]``.

``forward(x) == forward_tokens(embed(x))``. No weights are ever downloaded (``pretrained=False``);
weights come from files through :mod:`geocmid.models.loading` (re-exported by
:mod:`geocmid.models.weights`, which also writes exports). This module imports neither
``weights`` nor ``masked``: the models package has no import circle.
"""

from __future__ import annotations

from typing import Any

import timm
from torch import Tensor, nn

from geocmid.errors import ConfigError, did_you_mean
from geocmid.models.loading import load_weights

#: Short names accepted by :func:`create_backbone`, mapped to timm architecture names.
ALIASES: dict[str, str] = {
    "resnet18": "resnet18",
    "resnet34": "resnet34",
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "swin_tiny": "swin_tiny_patch4_window7_224",
    "swin_small": "swin_small_patch4_window7_224",
    "swin_base": "swin_base_patch4_window7_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
}
_TIMM_NAMES = set(ALIASES.values())

#: (output stride, token stride) in pixels per family.
GEOMETRY: dict[str, tuple[int, int]] = {"resnet": (32, 4), "swin": (32, 4), "vit": (16, 16)}


def resolve_name(name: str) -> str:
    """Map a short or timm name to the timm architecture name, or raise :class:`ConfigError`."""
    if name in ALIASES:
        return ALIASES[name]
    if name in _TIMM_NAMES:
        return name
    choices = sorted(ALIASES) + sorted(_TIMM_NAMES)
    raise ConfigError(
        "setting 'backbone'",
        f"unknown backbone '{name}'{did_you_mean(name, choices)}",
        f"use one of: {', '.join(sorted(ALIASES))}",
    )


def family_of(name: str) -> str:
    """Return ``"resnet"``, ``"swin"`` or ``"vit"`` for a (short or timm) backbone name."""
    timm_name = resolve_name(name)
    for family in ("resnet", "swin", "vit"):
        if timm_name.startswith(family):
            return family
    raise AssertionError(timm_name)  # unreachable: every resolved name has a family


class Backbone(nn.Module):
    """A timm model seen as ``embed`` (to stride-``token_stride`` tokens) + ``forward_tokens``.

    Attributes:
        name: timm architecture name (``"resnet50"``, ``"swin_base_patch4_window7_224"``, ...).
        family: ``"resnet"``, ``"swin"`` or ``"vit"``.
        in_chans: number of input bands.
        img_size: chip size in pixels the model was built for (Swin windows / ViT pos-embed).
        embed_dim: channels of the token map returned by :meth:`embed`.
        out_channels: channels of the final feature map.
        stride: pixels per final-map cell (32 ResNet/Swin, 16 ViT).
        token_stride: pixels per token of :meth:`embed` (4 ResNet/Swin, 16 ViT).
        model: the wrapped timm model (built with ``num_classes=0``); exports hold its
            ``state_dict``, so their keys are exactly timm's. The wrapper's own ``state_dict``
            prefixes them with ``model.``.
    """

    family: str = ""

    def __init__(
        self,
        name: str,
        model: nn.Module,
        in_chans: int,
        img_size: int,
        embed_dim: int,
        out_channels: int,
        stride: int,
        token_stride: int,
    ) -> None:
        super().__init__()
        self.name = name
        self.model = model
        self.in_chans = in_chans
        self.img_size = img_size
        self.embed_dim = embed_dim
        self.out_channels = out_channels
        self.stride = stride
        self.token_stride = token_stride

    def embed(self, x: Tensor) -> Tensor:
        """Image ``[B, in_chans, H, W]`` → tokens ``[B, embed_dim, H/t, W/t]``, t = token_stride."""
        raise NotImplementedError

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        """Tokens ``[B, embed_dim, h, w]`` → final map ``[B, out_channels, H/stride, W/stride]``."""
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        """Image ``[B, in_chans, H, W]`` (normalised) → final feature map, NCHW."""
        return self.forward_tokens(self.embed(x))


class ResNetBackbone(Backbone):
    """timm ResNet; tokens are the stride-4 stem output (conv1 → bn1 → act1 → maxpool)."""

    family = "resnet"

    def embed(self, x: Tensor) -> Tensor:
        m = self.model
        return m.maxpool(m.act1(m.bn1(m.conv1(x))))

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        m = self.model
        return m.layer4(m.layer3(m.layer2(m.layer1(tokens))))


class SwinBackbone(Backbone):
    """timm Swin; tokens are the patch-embedding after its LayerNorm (stride 4).

    timm Swin works channels-last (NHWC); we expose NCHW at both ends so every family looks alike.
    """

    family = "swin"

    def embed(self, x: Tensor) -> Tensor:
        return self.model.patch_embed(x).permute(0, 3, 1, 2)

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        m = self.model
        x = m.norm(m.layers(tokens.permute(0, 2, 3, 1)))
        return x.permute(0, 3, 1, 2).contiguous()


class ViTBackbone(Backbone):
    """timm ViT (``dynamic_img_size``); tokens are patch embeddings before the position embedding.

    The final map is the normed patch tokens (class token dropped), reshaped to NCHW at stride 16.
    """

    family = "vit"

    def embed(self, x: Tensor) -> Tensor:
        # dynamic_img_size makes timm's patch-embed return NHWC
        return self.model.patch_embed(x).permute(0, 3, 1, 2)

    def forward_tokens(self, tokens: Tensor) -> Tensor:
        m = self.model
        b, _, h, w = tokens.shape
        x = m._pos_embed(tokens.permute(0, 2, 3, 1))  # resamples pos-embed to (h, w)
        x = m.norm(m.blocks(m.norm_pre(m.patch_drop(x))))
        x = x[:, m.num_prefix_tokens :]
        return x.transpose(1, 2).reshape(b, -1, h, w)


def create_backbone(
    name: str,
    in_chans: int,
    pretrained_path: str | None = None,
    img_size: int = 224,
    **kw: Any,
) -> Backbone:
    """Build a backbone from timm, never downloading weights.

    Args:
        name: short name (``resnet18/34/50/101``, ``swin_tiny/small/base``, ``vit_small/base``)
            or the matching timm name.
        in_chans: number of input bands (any ≥ 1).
        pretrained_path: optional weight file (CMID release ``.pth``, timm/extracted state dict,
            or a geocmid ``.safetensors`` export), see :func:`geocmid.models.loading.load_weights`.
        img_size: chip size in pixels. Swin builds its attention windows for it (other sizes that
            are multiples of 32 still run); ViT sizes its position embedding for it.
        **kw: passed to ``timm.create_model`` (e.g. ``drop_path_rate``, default 0).

    Returns:
        A :class:`Backbone` with ``out_channels``, ``stride``, ``token_stride`` and ``family``.
    """
    if in_chans < 1:
        raise ConfigError("setting 'in_chans'", f"must be ≥ 1, got {in_chans}")
    timm_name = resolve_name(name)
    family = family_of(timm_name)
    # drop_path defaults to 0: CMID pretrains Swin with drop_path 0 (spec §3.1); timm's is 0.1
    kw = {"num_classes": 0, "in_chans": in_chans, "drop_path_rate": 0.0, **kw}
    kw["pretrained"] = False  # weights are files, never downloads
    backbone: Backbone
    if family == "resnet":
        model = timm.create_model(timm_name, global_pool="", **kw)
        backbone = ResNetBackbone(
            timm_name, model, in_chans, img_size, 64, model.num_features, 32, 4
        )
    elif family == "swin":
        model = timm.create_model(timm_name, img_size=img_size, strict_img_size=False, **kw)
        backbone = SwinBackbone(
            timm_name, model, in_chans, img_size, model.embed_dim, model.num_features, 32, 4
        )
    else:
        model = timm.create_model(timm_name, img_size=img_size, dynamic_img_size=True, **kw)
        backbone = ViTBackbone(
            timm_name, model, in_chans, img_size, model.embed_dim, model.num_features, 16, 16
        )
    if pretrained_path is not None:
        load_weights(backbone, pretrained_path)  # strict: ModelError naming any key that misfits
    return backbone
