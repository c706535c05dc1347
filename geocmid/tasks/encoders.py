"""Encoder initialisation for downstream tasks: geocmid exports, CMID releases, or random.

A downstream model (smp decoder, timm classifier, TorchGeo change model, torchvision detector)
holds its own copy of the encoder. This module builds a geocmid :class:`Backbone` from the chosen
source and copies its weights into that copy, *verifying* afterwards that every copied tensor is
bit-identical to the source (a silent key-mapping mistake is the most expensive bug in
fine-tuning: the model trains, just from scratch).

Sources (the ``weights`` setting):

* ``None`` / ``"random"``: random initialisation;
* a geocmid export ``NAME.safetensors`` (+ ``NAME.json`` model card, read as a
  :class:`~geocmid.models.card.ModelCard` whatever its format): architecture, band count and
  normalisation statistics come from the card; a band count that differs from the data's is a
  :class:`ModelError`;
* anything else :func:`geocmid.models.weights.load_weights` reads (the authors' released CMID
  ``.pth`` checkpoints, extracted backbones, timm state dicts, geocmid Lightning checkpoints);
  the architecture comes from the ``backbone`` setting.

Key layouts handled (``Backbone.model`` is a plain timm model):

* timm classifier / ChangeViT encoder: same keys;
* smp ``tu-<name>`` encoders (``TimmUniversalEncoder``, timm ``features_only``): prefix ``model.``;
  Swin stages are flattened by timm's feature wrapper, ``layers.N.`` → ``layers_N.``; the final
  ``norm`` is not part of a feature extractor and stays unused.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from geocmid.errors import ConfigError, ModelError
from geocmid.models.backbones import Backbone, create_backbone, resolve_name
from geocmid.models.card import ModelCard
from geocmid.models.loading import few_keys

log = logging.getLogger(__name__)

SourceKind = Literal["export", "weights", "random"]
_RANDOM = {None, "", "random", "none", "None"}


@dataclass
class EncoderSource:
    """A backbone holding the initial encoder weights, and where they came from.

    Attributes:
        backbone: geocmid backbone (timm model inside) with the loaded weights.
        kind: ``"export"`` (geocmid safetensors + card), ``"weights"`` (release / state dict)
            or ``"random"``.
        path: the weight file, or None.
        card: the export's model card (None for other sources).
    """

    backbone: Backbone
    kind: SourceKind
    path: str | None = None
    card: ModelCard | None = None

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"

    def normalisation(self) -> tuple[list[float], list[float]] | None:
        """``(mean, std)`` per band in raw units from the card, or None if it has none."""
        return None if self.card is None else card_normalisation(self.card)

    def bands(self) -> list[str] | None:
        """Band names of the card, or None (no card, or bands given only as indexes)."""
        if self.card is None or all(isinstance(b, int) for b in self.card.bands):
            return None
        return [str(b) for b in self.card.bands]


def is_export(path: str | Path) -> bool:
    """True when ``path`` names a geocmid export (``.safetensors`` or its ``.json`` card)."""
    p = Path(path)
    if p.suffix in (".safetensors", ".json"):
        return True
    return p.suffix == "" and p.with_suffix(".safetensors").is_file()


def card_normalisation(
    card: ModelCard | Mapping[str, Any], where: str = "model card"
) -> tuple[list[float], list[float]] | None:
    """Per-band ``(mean, std)`` in raw units from a model card, or None if it has none.

    Args:
        card: a :class:`ModelCard`, or a card dictionary of any format
            :meth:`ModelCard.from_dict` reads (e.g. the parsed ``NAME.json`` of an export).
        where: names the card in error messages.

    Raises:
        ConfigError: the dictionary is not a valid card (the message names the key).
    """
    if not isinstance(card, ModelCard):
        card = ModelCard.from_dict(card, where=where)
    if not card.mean:
        return None
    return list(card.mean), list(card.std)


def load_encoder(
    weights: str | Path | None,
    backbone: str | None,
    in_chans: int,
    img_size: int = 224,
    adapt_in_chans: bool = False,
) -> EncoderSource:
    """Build the initial encoder.

    Args:
        weights: weight source (see module docstring); None for random.
        backbone: backbone name (``resnet18``, ``swin_tiny``, ...). For an export it may be
            None (taken from the card); if given it must match the card.
        in_chans: band count of the data.
        img_size: chip size in pixels (Swin windows / ViT position embedding are built for it).
        adapt_in_chans: allow a release checkpoint with another band count (the stem is adapted
            with timm's ``adapt_input_conv``); exports always require the same band count.

    Raises:
        ModelError: the file is missing, does not fit, or its band count differs from the data's.
        ConfigError: no backbone is named for a non-export source.
    """
    if weights in _RANDOM:
        if not backbone:
            raise ConfigError("setting 'backbone'", "is required with random initialisation")
        return EncoderSource(create_backbone(backbone, in_chans, img_size=img_size), "random")
    path = str(weights)
    if is_export(path):
        return _load_export(path, backbone, in_chans, img_size)
    if not backbone:
        raise ConfigError(
            "setting 'backbone'",
            f"is required to load '{path}' (only geocmid exports carry their architecture)",
            "set model.backbone, e.g. resnet50 or swin_base",
        )
    from geocmid.models.weights import load_weights

    module = create_backbone(backbone, in_chans, img_size=img_size)
    report = load_weights(
        module, path, strict=True, adapt_in_chans=adapt_in_chans, log_level=logging.DEBUG
    )
    stem = next(
        (k for k in report.adapted if k in ("conv1.weight", "patch_embed.proj.weight")), None
    )
    if stem is not None:
        log.warning("%s: stem adapted to %d bands (adapt_in_chans=True)", path, in_chans)
    done = len(report.loaded) + len(report.adapted)
    notes = [f"{len(report.adapted)} adapted"] if report.adapted else []
    notes += [f"{len(report.ignored)} ignored on purpose"] if report.ignored else []
    log_loaded(path, module, done, notes)
    return EncoderSource(module, "weights", path)


def log_loaded(path: str, backbone: Backbone, loaded: int, notes: Sequence[str] = ()) -> None:
    """The one console line that says where the encoder weights come from, e.g.
    ``encoder weights: runs/x/cmid.safetensors (resnet18, 122 of 122 tensors loaded; card
    fingerprint ab12cd34ef56)``."""
    total = len(backbone.model.state_dict())
    details = "; ".join([f"{backbone.name}, {loaded} of {total} tensors loaded", *notes])
    log.info("encoder weights: %s (%s)", path, details)


def card_fingerprint(card: ModelCard) -> str:
    """The first 12 hex digits of the SHA-256 of the card's JSON (which export this is)."""
    import hashlib

    return hashlib.sha256(card.to_json().encode()).hexdigest()[:12]


def _load_export(path: str, backbone: str | None, in_chans: int, img_size: int) -> EncoderSource:
    from geocmid.models.weights import load_backbone

    exported, card = load_backbone(path)  # strict: every tensor of the file, or an error
    loaded = len(exported.model.state_dict())
    where = f"model card of '{path}'"
    if backbone and resolve_name(backbone) != exported.name:
        raise ModelError(
            where,
            f"describes a {exported.name} but the task asks for backbone '{backbone}'",
            f"set model.backbone to {card.architecture} (or leave it out)",
        )
    if exported.in_chans != in_chans:
        bands = card.bands
        raise ModelError(
            where,
            f"the backbone was trained on {exported.in_chans} bands"
            + (f" ({', '.join(map(str, bands))})" if bands else "")
            + f" but the data has {in_chans}",
            "fine-tune on imagery with the same bands, or start from other weights",
        )
    if exported.img_size != img_size:
        # Swin windows / ViT positions depend on the chip size: rebuild for ours and copy over
        # (load_weights resizes relative-position tables and position embeddings).
        from geocmid.models.weights import load_weights

        module = create_backbone(exported.name, in_chans, img_size=img_size)
        report = load_weights(
            module, Path(path).with_suffix(".safetensors"), strict=True, log_level=logging.DEBUG
        )
        loaded = len(report.loaded) + len(report.adapted)
        exported = module
    log_loaded(path, exported, loaded, [f"card fingerprint {card_fingerprint(card)}"])
    return EncoderSource(exported, "export", path, card)


def check_bands(source: EncoderSource, bands: Sequence[str], where: str) -> None:
    """Compare the data's bands with the encoder's; a count mismatch is a :class:`ModelError`.

    Band *names* may legitimately differ between catalogs (``B04`` vs ``red``), so differing
    names only log a warning.
    """
    n = source.backbone.in_chans
    if len(bands) != n:
        raise ModelError(
            where,
            f"has {len(bands)} bands ({', '.join(map(str, bands))}) but the encoder "
            f"({source.path or source.backbone.name}) takes {n}",
            "use imagery with the encoder's bands, or other weights",
        )
    card_bands = source.bands()
    if card_bands and [str(b) for b in bands] != card_bands:
        log.warning(
            "%s: bands %s differ in name from the model card's %s", where, list(bands), card_bands
        )


# ------------------------------------------------------------------------------------------------
# key mappings from Backbone.model (timm) keys to the downstream module's keys
KeyMap = Callable[[str], str]


def identity_keys(key: str) -> str:
    return key


def smp_encoder_keys(family: str) -> KeyMap:
    """Map timm backbone keys to smp ``tu-`` encoder keys for ``family``."""
    if family == "swin":
        return lambda k: "model." + re.sub(r"^layers\.(\d+)\.", r"layers_\1.", k)
    return lambda k: "model." + k


@dataclass
class CopyReport:
    """What :func:`copy_encoder` did.

    Attributes:
        copied: target keys that now equal the source.
        adapted: target keys filled from a reshaped source tensor (e.g. early-fusion stem).
        unused: source keys with no place in the target (e.g. Swin's final norm).
        left: target keys that no source key maps to (kept at their initial values).
    """

    copied: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    left: list[str] = field(default_factory=list)


def copy_encoder(
    backbone: Backbone,
    target: nn.Module,
    key_map: KeyMap = identity_keys,
    allow_left: Callable[[str], bool] = lambda k: False,
    adapt: Callable[[str, Tensor, Tensor], Tensor | None] | None = None,
) -> CopyReport:
    """Copy ``backbone.model`` weights into ``target`` through ``key_map``, then verify equality.

    Args:
        backbone: source backbone.
        target: the downstream encoder module (smp encoder, timm model, ...).
        key_map: source (timm) key → target key.
        allow_left: target keys that may stay unfilled (classifier heads, derived buffers).
        adapt: ``(key, source, target_tensor) → tensor`` for shape mismatches it can resolve.

    Raises:
        ModelError: a target key is left unfilled, a shape does not fit, or a tensor differs
            from the source after loading.
    """
    source = backbone.model.state_dict()
    target_state = target.state_dict()
    report = CopyReport()
    new: dict[str, Tensor] = {}
    for key, value in source.items():
        tkey = key_map(key)
        if tkey not in target_state:
            report.unused.append(key)
            continue
        want = target_state[tkey]
        if value.shape != want.shape:
            fixed = adapt(tkey, value, want) if adapt else None
            if fixed is None:
                raise ModelError(
                    f"encoder weight '{key}'",
                    f"has shape {tuple(value.shape)}, the model expects {tuple(want.shape)}",
                    "check the backbone, band count and chip size",
                )
            new[tkey] = fixed.to(want.dtype)
            report.adapted.append(tkey)
        else:
            new[tkey] = value
            report.copied.append(tkey)
    report.left = [k for k in target_state if k not in new and not _derived(k)]
    missing = [k for k in report.left if not allow_left(k)]
    if missing:
        raise ModelError(
            f"{type(target).__name__} encoder",
            f"{len(missing)} weights have no counterpart in {backbone.name}: {missing[:5]}",
            "the key mapping does not cover this architecture; use another backbone",
        )
    target.load_state_dict(new, strict=False)
    after = target.state_dict()
    differing = [k for k in new if not torch.equal(after[k], new[k])]
    if differing:  # would mean load_state_dict silently skipped something
        raise ModelError(
            f"{type(target).__name__} encoder", f"weights differ after loading: {differing[:5]}"
        )
    unused = [k for k in report.unused if not _feature_extractor_norm(k, backbone, target)]
    if unused:
        log.warning(
            "encoder weights: %d of %d tensors of %s have no place in the %s encoder and are "
            "not used: %s; the model trains without them (check the backbone and model "
            "settings)",
            len(unused), len(source), backbone.name, type(target).__name__, few_keys(unused),
        )  # fmt: skip
    elif report.unused:
        log.debug("encoder weights not used downstream: %s", report.unused)
    return report


def _feature_extractor_norm(key: str, backbone: Backbone, target: nn.Module) -> bool:
    """Swin's final norm, which timm's feature extractors (smp ``tu-`` encoders) leave out: not
    worth a warning (see the module docstring)."""
    return (
        backbone.family == "swin"
        and key.startswith("norm.")
        and "Universal" in type(target).__name__
    )


def _derived(key: str) -> bool:
    """Buffers rebuilt from the architecture, never worth copying."""
    return key.endswith(("relative_position_index", "attn_mask", "num_batches_tracked"))


def encoder_differences(
    backbone: Backbone, target: nn.Module, key_map: KeyMap = identity_keys
) -> list[str]:
    """Source keys whose target tensor differs from ``backbone``'s (empty: identical)."""
    target_state = target.state_dict()
    out = []
    for key, value in backbone.model.state_dict().items():
        tkey = key_map(key)
        if tkey in target_state and not torch.equal(target_state[tkey].cpu(), value.cpu()):
            out.append(key)
    return out


def early_fusion_stem(key: str, value: Tensor, want: Tensor) -> Tensor | None:
    """Adapt a ``[O, C, k, k]`` stem to ``[O, T·C, k, k]`` inputs (dates stacked on channels).

    Each date gets the pretrained filters divided by T, so the fused stem initially sees the
    mean of the dates with the pretrained response scale.
    """
    fits = value.ndim == want.ndim == 4 and want.shape[1] % value.shape[1] == 0
    if fits and value.shape[0] == want.shape[0] and value.shape[2:] == want.shape[2:]:
        t = want.shape[1] // value.shape[1]
        return value.repeat(1, t, 1, 1) / t
    return None


# ------------------------------------------------------------------------------------------------
# optimisation helpers shared by every task
def freeze(module: nn.Module) -> None:
    """Stop gradients for every parameter of ``module``."""
    for p in module.parameters():
        p.requires_grad = False


def param_groups(
    model: nn.Module,
    encoder: nn.Module | Sequence[nn.Module],
    lr: float,
    backbone_lr: float | None,
    weight_decay: float,
) -> list[dict[str, Any]]:
    """AdamW parameter groups: the encoder at ``backbone_lr`` (default ``lr``), the rest at ``lr``.

    Frozen parameters are left out, so a frozen encoder costs no optimiser state.
    """
    encoders = [encoder] if isinstance(encoder, nn.Module) else list(encoder)
    enc_ids = {id(p) for e in encoders for p in e.parameters()}
    enc = [p for p in model.parameters() if id(p) in enc_ids and p.requires_grad]
    rest = [p for p in model.parameters() if id(p) not in enc_ids and p.requires_grad]
    groups = []
    if enc:
        groups.append(
            {"params": enc, "lr": lr if backbone_lr is None else backbone_lr, "name": "encoder"}
        )
    if rest:
        groups.append({"params": rest, "lr": lr, "name": "head"})
    if not groups:
        raise ConfigError(
            "model", "every parameter is frozen: nothing to train", "unfreeze the head"
        )
    for g in groups:
        g["weight_decay"] = weight_decay
    return groups
