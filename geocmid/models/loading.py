"""Reading weight files into geocmid backbones: layouts, conversions, strict key checks.

Accepted inputs for :func:`load_weights`:

* the authors' full pretraining checkpoint (``{"model": {...}}``, backbone keys prefixed
  ``online_encoder.model.``) or an extracted backbone (``extract.py`` output, bare keys);
* ResNet keys in timm layout (also mmseg/torchvision ``conv1 / bn1 / layer1..4``);
* Swin keys in mmcls layout (``patch_embed.projection``, ``stages.i.blocks.j.attn.w_msa.*``,
  ``stages.i.downsample.*``, ``norm3``), converted to timm's layout: mmcls downsamples at the *end*
  of stage i, timm at the *start* of stage i+1, and mmcls' ``nn.Unfold`` patch merging orders the
  4·C merged channels differently from timm's;
* timm Swin / ViT state dicts, geocmid Lightning checkpoints and geocmid ``.safetensors`` exports
  (plain timm keys, or the ``model.``-prefixed keys of exports before ``geocmid-card/2``).

Every load returns a :class:`LoadReport` (missing / unexpected / shape-mismatched / ignored /
adapted keys) and logs it in one line. ``torch.load`` always runs with ``weights_only=True``.

This module sits below :mod:`geocmid.models.backbones` (whose ``create_backbone`` loads a
``pretrained_path`` through it) and knows backbones only by their attributes (``family``,
``name``, ``model``; ``backbone`` and ``mask_token`` for the masked student), so the models
package has no import circle. :mod:`geocmid.models.weights` re-exports everything here.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file
from timm.layers import resample_abs_pos_embed, resize_rel_pos_bias_table
from timm.models import adapt_input_conv
from torch import Tensor, nn

from geocmid.errors import ModelError

if TYPE_CHECKING:  # type hints only: backbones imports this module
    from geocmid.models.backbones import Backbone
    from geocmid.models.masked import MaskedBackbone

log = logging.getLogger(__name__)

# Key markers in front of the backbone weights, most specific first.
_MARKERS = ("online_encoder.model.", "student.backbone.model.")
# Keys that are never backbone weights: derivable buffers and classifier heads.
_IGNORE = re.compile(
    r"(^|\.)(relative_position_index|attn_mask)$|^(fc|head|norm[012])\.|^mask_token$"
)

_RESNETS = {
    ((2, 2, 2, 2), False): "resnet18",
    ((3, 4, 6, 3), False): "resnet34",
    ((3, 4, 6, 3), True): "resnet50",
    ((3, 4, 23, 3), True): "resnet101",
    ((3, 8, 36, 3), True): "resnet152",
}
_SWINS = {
    (96, (2, 2, 6, 2)): "swin_tiny_patch4_window7_224",
    (96, (2, 2, 18, 2)): "swin_small_patch4_window7_224",
    (128, (2, 2, 18, 2)): "swin_base_patch4_window7_224",
    (192, (2, 2, 18, 2)): "swin_large_patch4_window7_224",
}
_VITS = {(384, 12): "vit_small_patch16_224", (768, 12): "vit_base_patch16_224"}


@dataclass
class LoadReport:
    """What happened to each key of a weight file.

    Attributes:
        source: the file.
        architecture: architecture recognised in the file (timm name, or ``"<family>?"``).
        loaded: keys loaded into the backbone.
        missing: backbone keys the file lacks (left at their initial values).
        unexpected: file keys the backbone has no place for.
        mismatched: ``(key, file shape, backbone shape)`` left unloaded.
        ignored: file keys skipped on purpose (derivable buffers, heads, CMID mask token).
        adapted: keys loaded after a resize (band count, position tables).
    """

    source: str
    architecture: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every backbone key was loaded and no file key was left over."""
        return not (self.missing or self.unexpected or self.mismatched)

    def summary(self) -> str:
        """One log line; lists up to 5 keys per problem class."""

        def few(items: list[Any]) -> str:
            shown = ", ".join(str(i) for i in items[:5])
            return shown + (f", … (+{len(items) - 5})" if len(items) > 5 else "")

        text = (
            f"weights {self.source} ({self.architecture}): {len(self.loaded)} loaded, "
            f"{len(self.adapted)} adapted, {len(self.ignored)} ignored"
        )
        for name in ("missing", "unexpected", "mismatched"):
            items = getattr(self, name)
            if items:
                text += f"; {len(items)} {name}: {few(items)}"
        return text


# ------------------------------------------------------------------------------------------------
# reading and recognising state dicts
def read_state_dict(path: str | os.PathLike[str]) -> dict[str, Tensor]:
    """Read a ``.safetensors`` / ``.pth`` / ``.ckpt`` file into a flat ``{key: tensor}``.

    Unwraps ``{"model": ...}`` (CMID release) and ``{"state_dict": ...}`` (Lightning). Uses
    ``torch.load(weights_only=True)``: pickled code is never executed.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelError(f"weights file '{p}'", "does not exist", "check the path")
    if p.suffix == ".safetensors":
        return load_file(str(p))
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # any unpickling failure is a user-file problem
        raise ModelError(
            f"weights file '{p}'",
            f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})",
            "pass a .pth/.ckpt saved with torch.save or a .safetensors file",
        ) from exc
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ModelError(f"weights file '{p}'", "holds no state dict of tensors")
    return obj


def strip_prefixes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Reduce a checkpoint to bare backbone keys (timm or mmcls names).

    Keeps only keys after ``online_encoder.model.`` (CMID) or ``student.backbone.model.``
    (geocmid training checkpoints) when present, then drops a ``module.`` / ``backbone.`` /
    ``model.`` prefix shared by all keys (DDP, mmseg, geocmid export).
    """
    for marker in _MARKERS:
        picked = {k.split(marker, 1)[1]: v for k, v in sd.items() if marker in k}
        if picked:
            sd = picked
            break
    for prefix in ("module.", "backbone.", "model."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix) :]: v for k, v in sd.items()}
    return sd


def _counts(sd: dict[str, Tensor], pattern: str, groups: int) -> tuple[int, ...]:
    """Distinct block indices per stage, e.g. ``layer(\\d)\\.(\\d+)\\.`` → (3, 4, 6, 3)."""
    seen: dict[int, set[int]] = {}
    for k in sd:
        m = re.match(pattern, k)
        if m:
            seen.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return tuple(len(seen.get(i, ())) for i in range(groups))


def guess_architecture(sd: dict[str, Tensor]) -> tuple[str, str | None, str]:
    """Recognise a bare state dict → ``(family, timm name or None, layout)``.

    ``family`` is ``"resnet"``, ``"swin"``, ``"vit"`` or ``"unknown"``; ``layout`` is ``"timm"``
    or ``"mmcls"`` (Swin only).
    """
    if "conv1.weight" in sd and "layer1.0.conv1.weight" in sd:
        counts = _counts(sd, r"layer(\d)\.(\d+)\.", 5)[1:]
        return "resnet", _RESNETS.get((counts, "layer1.0.conv3.weight" in sd)), "timm"
    if "patch_embed.projection.weight" in sd:
        dim = sd["patch_embed.projection.weight"].shape[0]
        depths = _counts(sd, r"stages\.(\d)\.blocks\.(\d+)\.", 4)
        return "swin", _SWINS.get((dim, depths)), "mmcls"
    if "layers.0.blocks.0.attn.qkv.weight" in sd and "patch_embed.proj.weight" in sd:
        dim = sd["patch_embed.proj.weight"].shape[0]
        depths = _counts(sd, r"layers\.(\d)\.blocks\.(\d+)\.", 4)
        return "swin", _SWINS.get((dim, depths)), "timm"
    if "blocks.0.attn.qkv.weight" in sd and "pos_embed" in sd:
        dim = sd["pos_embed"].shape[-1]
        depth = len({int(m.group(1)) for k in sd if (m := re.match(r"blocks\.(\d+)\.", k))})
        return "vit", _VITS.get((dim, depth)), "timm"
    return "unknown", None, "unknown"


# ------------------------------------------------------------------------------------------------
# mmcls Swin → timm Swin
def _merge_reorder(t: Tensor) -> Tensor:
    """Reorder mmcls (``nn.Unfold``) patch-merging channels to timm's order.

    mmcls index ``c·4 + kh·2 + kw``; timm index ``kw·2C + kh·C + c`` (kh/kw: row/column offset in
    the 2×2 neighbourhood). Works on ``[out, 4C]`` weights and ``[4C]`` norm parameters.
    """
    if t.ndim == 2:
        out, four_c = t.shape
        return t.reshape(out, four_c // 4, 2, 2).permute(0, 3, 2, 1).reshape(out, four_c)
    return t.reshape(-1, 2, 2).permute(2, 1, 0).reshape(-1)


def mmcls_swin_to_timm(sd: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """Rename mmcls Swin keys to timm ≥ 0.9 names → ``(converted, ignored keys)``."""
    out: dict[str, Tensor] = {}
    ignored: list[str] = []
    for key, value in sd.items():
        if _IGNORE.search(key):
            ignored.append(key)
            continue
        new = key
        m = re.match(r"stages\.(\d+)\.downsample\.(.*)", key)
        if m:  # end of mmcls stage i == start of timm stage i+1
            new = f"layers.{int(m.group(1)) + 1}.downsample.{m.group(2)}"
            value = _merge_reorder(value)
        else:
            new = re.sub(r"^stages\.", "layers.", new)
            new = new.replace("patch_embed.projection.", "patch_embed.proj.")
            new = new.replace(".attn.w_msa.", ".attn.")
            new = new.replace(".ffn.layers.0.0.", ".mlp.fc1.")
            new = new.replace(".ffn.layers.1.", ".mlp.fc2.")
            new = re.sub(r"^norm3\.", "norm.", new)
        out[new] = value
    return out, ignored


# ------------------------------------------------------------------------------------------------
def _adapt(
    key: str, value: Tensor, target: Tensor, backbone: Backbone, adapt_in_chans: bool
) -> Tensor | None:
    """Resize ``value`` to ``target``'s shape where that is meaningful, else None."""
    stem = key in ("conv1.weight", "patch_embed.proj.weight") and adapt_in_chans
    if stem and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
        return adapt_input_conv(target.shape[1], value)
    if key.endswith("relative_position_bias_table") and value.shape[1:] == target.shape[1:]:
        old = int((value.shape[0] ** 0.5 + 1) // 2)
        new = int((target.shape[0] ** 0.5 + 1) // 2)
        # Swin windows shrink on small chips (window = min(7, feature size)); resize like timm
        return resize_rel_pos_bias_table(value, (new, new), tuple(target.shape), (old, old))
    if key == "pos_embed" and value.shape[-1] == target.shape[-1]:
        prefix = backbone.model.num_prefix_tokens
        side = int((target.shape[1] - prefix) ** 0.5)
        return resample_abs_pos_embed(value, [side, side], num_prefix_tokens=prefix)
    return None


def load_weights(
    module: Backbone | MaskedBackbone,
    path: str | os.PathLike[str],
    strict: bool = True,
    adapt_in_chans: bool = True,
    log_level: int = logging.INFO,
) -> LoadReport:
    """Load a weight file into a geocmid backbone (or masked backbone), converting layouts.

    Args:
        module: target :class:`Backbone` or :class:`MaskedBackbone` (its mask token is loaded
            too when the file has a ``mask_token`` of the right size).
        path: weight file (see module docstring for accepted layouts).
        strict: raise :class:`ModelError` if any key is missing, unexpected or mismatched.
        adapt_in_chans: adapt a stem trained on another band count (timm's ``adapt_input_conv``:
            repeat and rescale RGB filters), e.g. to start 13-band training from RGB weights.
        log_level: level of the summary line (callers that log their own line pass DEBUG).

    Returns:
        a :class:`LoadReport`, also logged (at ``log_level``).

    Raises:
        ModelError: the file is unreadable, holds another architecture, or (strict) does not fit.
    """
    masked = hasattr(module, "mask_token")  # a MaskedBackbone (duck-typed: no import of it)
    backbone: Backbone = module.backbone if masked else module  # type: ignore[assignment]
    raw = strip_prefixes(read_state_dict(path))
    family, arch, layout = guess_architecture(raw)
    where = f"weights file '{path}'"
    if family == "unknown":
        raise ModelError(
            where,
            "holds no recognisable ResNet, Swin or ViT backbone weights",
            "pass a CMID release checkpoint, an extracted backbone or a geocmid export",
        )
    if family != backbone.family or (arch is not None and arch != backbone.name):
        found = arch or f"a {family} of unknown size"
        raise ModelError(
            where,
            f"holds {found} weights but the backbone is {backbone.name}",
            f"set the backbone to match the file ({found}) or use a {backbone.name} file",
        )
    report = LoadReport(source=str(path), architecture=arch or f"{family}?")
    token = raw.get("mask_token")  # the CMID student's, in full pretraining checkpoints
    if layout == "mmcls":
        raw, report.ignored = mmcls_swin_to_timm(raw)
    else:
        report.ignored = [k for k in raw if _IGNORE.search(k)]
        raw = {k: v for k, v in raw.items() if k not in set(report.ignored)}

    target = backbone.model.state_dict()
    to_load: dict[str, Tensor] = {}
    for key, value in raw.items():
        if key not in target:
            report.unexpected.append(key)
        elif value.shape == target[key].shape:
            to_load[key] = value
        elif (new := _adapt(key, value, target[key], backbone, adapt_in_chans)) is not None:
            to_load[key] = new
            report.adapted.append(key)
        else:
            report.mismatched.append((key, tuple(value.shape), tuple(target[key].shape)))
    report.missing = [k for k in target if k not in raw]
    report.loaded = [k for k in to_load if k not in report.adapted]
    mask_token = getattr(module, "mask_token", None)
    if masked and token is not None and token.numel() == mask_token.numel():
        report.adapted.append("mask_token")
    log.log(log_level, report.summary())
    if strict and not report.ok:
        raise ModelError(where, f"does not fit {backbone.name}: {report.summary()}", _FIX_STRICT)
    backbone.model.load_state_dict(to_load, strict=False)
    if "mask_token" in report.adapted:
        mask_token.data.copy_(token.reshape(mask_token.shape))
    return report


_FIX_STRICT = "check the architecture and band count, or load with strict=False to accept this"


def few_keys(keys: Iterable[str], n: int = 5) -> str:
    """``"a, b, c, … (+12 more)"``: the first ``n`` keys and how many more."""
    keys = list(keys)
    shown = ", ".join(keys[:n])
    return shown + (f", … (+{len(keys) - n} more)" if len(keys) > n else "")


def load_state_dict_strict(
    model: nn.Module, state: Mapping[str, Tensor], where: str, fix: str | None = None
) -> None:
    """``model.load_state_dict(state)`` that fails in plain words instead of loading partly.

    Every key of ``model`` must be in ``state`` with the same shape, and ``state`` must hold
    nothing else; otherwise nothing is loaded.

    Args:
        model: the module to fill (e.g. ``Backbone.model``, a plain timm model).
        state: ``{key: tensor}`` in ``model``'s key layout.
        where: names the file in the error message.
        fix: what to tell the user (default: check architecture / band count / chip size).

    Raises:
        ModelError: naming the first missing, unexpected and wrong-shape keys and their counts.
    """
    target = model.state_dict()
    missing = [k for k in target if k not in state]
    unexpected = [k for k in state if k not in target]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in target.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = [
        f"{len(items)} {name}: {few_keys(items)}"
        for name, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", wrong),
        )
        if items
    ]
    if problems:
        raise ModelError(
            where,
            f"does not fit {type(model).__name__} ({'; '.join(problems)})",
            fix or "check the architecture, band count and chip size the file was written for",
        )
    model.load_state_dict(dict(state), strict=True)
