"""Backbones (timm ResNet / Swin / ViT, any band count), the masked CMID student, weight I/O."""

from geocmid.models.backbones import ALIASES, Backbone, create_backbone, family_of, resolve_name
from geocmid.models.masked import MaskedBackbone

__all__ = [
    "ALIASES",
    "Backbone",
    "MaskedBackbone",
    "create_backbone",
    "family_of",
    "resolve_name",
]
