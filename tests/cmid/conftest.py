"""Shared fixtures for the CMID tests: building timm Swin/ViT costs seconds, so cache them."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest

from geocmid.models import Backbone, create_backbone

_CACHE: dict[tuple[str, int, int], Backbone] = {}


@pytest.fixture(scope="session")
def make_backbone() -> Callable[..., Backbone]:
    """``make_backbone(name, bands, size)`` → a fresh copy of a cached random-init model."""

    def make(name: str, bands: int, size: int = 224) -> Backbone:
        key = (name, bands, size)
        if key not in _CACHE:
            _CACHE[key] = create_backbone(name, bands, img_size=size)
        return copy.deepcopy(_CACHE[key])

    return make
