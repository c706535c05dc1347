"""Backbones (timm ResNet / Swin / ViT, any band count), the masked CMID student, weight I/O,
and the model card."""

from geocmid.models.backbones import ALIASES, Backbone, create_backbone, family_of, resolve_name
from geocmid.models.card import ModelCard
from geocmid.models.masked import MaskedBackbone

__all__ = [
    "ALIASES",
    "Backbone",
    "MaskedBackbone",
    "ModelCard",
    "create_backbone",
    "family_of",
    "resolve_name",
]
