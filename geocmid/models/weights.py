"""Weight files of geocmid backbones: import (any layout) and safetensors export with a card.

* :func:`load_weights` (from :mod:`geocmid.models.loading`, re-exported with the other readers
  and converters) loads the authors' CMID releases, timm / mmcls / torchvision state dicts,
  geocmid Lightning checkpoints and exports into a :class:`~geocmid.models.backbones.Backbone`,
  strictly by default.
* :func:`export_backbone` writes ``NAME.safetensors`` holding ``Backbone.model.state_dict()``
  (exactly the keys of ``timm.create_model(arch, num_classes=0)``) and the model card
  (:class:`~geocmid.models.card.ModelCard`, format ``geocmid-card/2``) both as ``NAME.json`` and
  in the safetensors header.
* :func:`load_backbone` rebuilds the backbone from an export, strictly; exports written before
  ``geocmid-card/2`` (keys prefixed ``model.``) still load.

The same file loads elsewhere with no geocmid installed (``N`` bands, chip ``S`` px)::

    timm.create_model("resnet50", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
        file="NAME.safetensors", num_classes=0, input_size=(N, S, S)))   # strict
    # or: timm.create_model(**ModelCard.from_file("NAME.json").timm_kwargs("NAME.safetensors"))
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from geocmid import __version__
from geocmid.errors import ConfigError, ModelError
from geocmid.models.backbones import Backbone, create_backbone, resolve_name
from geocmid.models.card import CARD_FORMAT, ModelCard
from geocmid.models.loading import (
    LoadReport,
    few_keys,
    guess_architecture,
    load_state_dict_strict,
    load_weights,
    mmcls_swin_to_timm,
    read_state_dict,
    strip_prefixes,
)

log = logging.getLogger(__name__)

#: safetensors header key holding the model card (JSON text).
CARD_METADATA_KEY = "geocmid_card"

__all__ = [
    "CARD_FORMAT",
    "CARD_METADATA_KEY",
    "LoadReport",
    "export_backbone",
    "few_keys",
    "guess_architecture",
    "load_backbone",
    "load_state_dict_strict",
    "load_weights",
    "mmcls_swin_to_timm",
    "read_export_card",
    "read_state_dict",
    "strip_prefixes",
]


def _stem(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def _find_backbone(module: nn.Module) -> Backbone:
    backbone: Any = module
    while not isinstance(backbone, Backbone):
        if not hasattr(backbone, "backbone"):
            raise ModelError(
                "export",
                f"{type(module).__name__} has no backbone to export",
                "pass a Backbone, a MaskedBackbone or a CMIDModel",
            )
        backbone = backbone.backbone
    return backbone


def export_card(backbone: Backbone, card: ModelCard | Mapping[str, Any] | None = None) -> ModelCard:
    """The card of an export: ``card``'s fields plus what ``backbone`` itself says.

    Architecture, family, band count, chip size, output stride / channels and the geocmid
    version come from the backbone; ``task`` defaults to ``"backbone"``.

    Raises:
        ModelError: ``card`` names another architecture or band count than the backbone's.
        ConfigError: a field of ``card`` is invalid (the message names the key).
    """
    user = card.to_dict() if isinstance(card, ModelCard) else dict(card or {})
    for key, own in (("architecture", backbone.name), ("in_chans", backbone.in_chans)):
        given = user.get(key)
        same = given is None or (
            resolve_name(str(given)) == own if key == "architecture" else given == own
        )
        if not same:
            raise ModelError(
                f"model card: key '{key}'",
                f"says {given!r}, the exported backbone has {own!r}",
                f"leave '{key}' out of the card (it is taken from the backbone)",
            )
    filled = {
        "architecture": backbone.name,
        "family": backbone.family,
        "in_chans": backbone.in_chans,
        "chip_size": backbone.img_size,
        "out_channels": backbone.out_channels,
        "stride": backbone.stride,
        "geocmid_version": __version__,
    }
    merged = {**user, **filled}
    merged.setdefault("task", "backbone")
    return ModelCard.from_dict(merged, where="model card")


def export_backbone(
    module: nn.Module,
    path: str | os.PathLike[str],
    card: ModelCard | Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` (weights, plain timm keys) and ``NAME.json`` (card), atomically.

    The safetensors file holds ``backbone.model.state_dict()``: exactly the keys of
    ``timm.create_model(card.architecture, num_classes=0, in_chans=card.in_chans)``, so timm,
    TorchGeo and smp load it without renaming. The card is also stored in the file's header
    (metadata key ``geocmid_card``), so the weights alone are enough.

    Args:
        module: a :class:`Backbone`, or anything with a ``.backbone`` (MaskedBackbone, CMIDModel).
        path: ``NAME`` or ``NAME.safetensors``.
        card: a :class:`ModelCard` or a dict of card fields: ``bands`` (names), ``mean`` /
            ``std`` (raw units, one per band; the old ``normalisation: {mean, std}`` is read too),
            ``gsd`` (CRS units per pixel), ``pretraining`` (``{"method", "data", "epochs", ...}``),
            anything else (kept in ``extra``). Architecture, band count, chip size, output
            geometry and geocmid version are filled in from the module (see :func:`export_card`).

    Returns:
        ``(weights path, card path)``.

    Raises:
        ModelError: ``module`` holds no backbone, or ``card`` contradicts it.
        ConfigError: a card field is invalid (named in the message).
    """
    backbone = _find_backbone(module)
    full = export_card(backbone, card)
    stem = _stem(path)
    stem.parent.mkdir(parents=True, exist_ok=True)
    weights, card_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    state = {k: v.detach().contiguous().cpu() for k, v in backbone.model.state_dict().items()}
    tmp_w, tmp_c = weights.with_suffix(".safetensors.part"), card_path.with_suffix(".json.part")
    meta = {"format": "pt", CARD_METADATA_KEY: json.dumps(full.to_dict(), sort_keys=True)}
    save_file(state, str(tmp_w), metadata=meta)
    tmp_c.write_text(full.to_json())
    os.replace(tmp_w, weights)  # rename last: no half-written file under the final name
    os.replace(tmp_c, card_path)
    return weights, card_path


def read_export_card(path: str | os.PathLike[str]) -> ModelCard:
    """The card of an export: ``NAME.json`` beside the weights, else the safetensors header.

    Args:
        path: ``NAME``, ``NAME.safetensors`` or ``NAME.json``.

    Raises:
        ModelError: neither the JSON file nor a card in the weights' header exists.
        ConfigError: the card is invalid (the message names the key).
    """
    stem = _stem(path)
    weights, card_path = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if card_path.is_file():
        return ModelCard.from_file(card_path)
    meta: dict[str, str] = {}
    if weights.is_file():
        try:
            with safe_open(str(weights), "pt") as f:
                meta = f.metadata() or {}
        except (SafetensorError, OSError) as exc:
            raise ModelError(
                f"weights file '{weights}'", f"is not a safetensors file ({exc})", "re-export it"
            ) from exc
    if CARD_METADATA_KEY not in meta:
        raise ModelError(
            f"model card '{card_path}'",
            "is missing (and the weights file carries none)",
            "keep NAME.json next to NAME.safetensors",
        )
    try:
        data = json.loads(meta[CARD_METADATA_KEY])
    except json.JSONDecodeError as exc:
        raise ConfigError(f"model card in '{weights}'", f"is not valid JSON ({exc})") from exc
    return ModelCard.from_dict(data, where=f"model card in '{weights}'")


def load_backbone(path: str | os.PathLike[str]) -> tuple[Backbone, ModelCard]:
    """Rebuild a backbone exported by :func:`export_backbone` → ``(backbone, card)``.

    The backbone is built from the card (architecture, band count, chip size) and every tensor
    of the file is loaded strictly. Exports written before ``geocmid-card/2`` hold the keys under
    a ``model.`` prefix; it is removed (logged at DEBUG).

    Args:
        path: ``NAME``, ``NAME.safetensors`` or ``NAME.json``.

    Raises:
        ModelError: the weights file is missing, or a key is missing / unexpected / of another
            shape (the message names the first few and counts them).
        ConfigError: the card is invalid.
    """
    stem = _stem(path)
    weights = stem.with_suffix(".safetensors")
    if not weights.is_file():
        raise ModelError(f"weights file '{weights}'", "does not exist", "check the path")
    card = read_export_card(weights)
    if not card.architecture:
        raise ModelError(
            f"model card of '{weights}'",
            "names no architecture",
            "export the backbone with `geocmid export` (it writes a complete card)",
        )
    backbone = create_backbone(card.architecture, card.in_chans, img_size=card.chip_size or 224)
    state = load_file(str(weights))
    if state and all(k.startswith("model.") for k in state):
        log.debug("%s: export written before geocmid-card/2, removing the 'model.' prefix", weights)
        state = {k.removeprefix("model."): v for k, v in state.items()}
    load_state_dict_strict(
        backbone.model,
        state,
        f"weights file '{weights}'",
        f"the weights do not match their card ({card.architecture}, {card.in_chans} bands, "
        f"chip {card.chip_size} px): keep each NAME.json with the NAME.safetensors it was "
        "written with, or export again with `geocmid export`",
    )
    return backbone, card
