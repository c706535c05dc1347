"""Export the student backbone of a CMID pretraining checkpoint: safetensors + model card.

The weights file holds the plain timm state dict of the backbone (the keys of
``timm.create_model(arch, num_classes=0)``), so timm, TorchGeo and smp load it as is. The card
(:class:`geocmid.models.card.ModelCard`, format ``geocmid-card/2``; JSON next to the weights, also
embedded in the safetensors header) records the architecture, band count and names,
normalisation mean/std (raw units), chip size, GSD, the pretraining data, epochs and settings,
and the geocmid version. Files are written under temporary names and renamed, so an interrupted
export leaves nothing under the final names.

Used by ``geocmid export`` and by recipes (the pretrain step).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geocmid.errors import ModelError

#: Prefix of the student backbone's weights in a CMIDTask state dict.
STUDENT_PREFIX = "model.student.backbone."


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a Lightning checkpoint safely (``weights_only=True``) → the checkpoint dict."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"checkpoint '{path}'", "does not exist", "check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable / foreign pickles are a user-file problem
        raise ModelError(
            f"checkpoint '{path}'",
            f"cannot be read as a PyTorch checkpoint ({type(exc).__name__}: {exc})",
            "pass the last.ckpt written by `geocmid pretrain`",
        ) from exc
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise ModelError(
            f"checkpoint '{path}'",
            "is not a Lightning checkpoint (no 'state_dict')",
            "pass the last.ckpt written by `geocmid pretrain`",
        )
    return ckpt


def student_backbone(ckpt: dict[str, Any], where: str, expect: str | None = None) -> Any:
    """Rebuild the student :class:`~geocmid.models.backbones.Backbone` of a CMID checkpoint."""
    from geocmid.models.backbones import create_backbone, resolve_name
    from geocmid.models.loading import load_state_dict_strict

    hp = ckpt.get("hyper_parameters") or {}
    state = ckpt["state_dict"]
    weights = {
        k[len(STUDENT_PREFIX) :]: v for k, v in state.items() if k.startswith(STUDENT_PREFIX)
    }
    if not weights or not {"backbone", "in_chans", "chip_size"} <= set(hp):
        raise ModelError(
            where,
            "is not a CMID pretraining checkpoint (no student backbone "
            f"'{STUDENT_PREFIX}*' weights or no CMIDTask hyperparameters)",
            "export checkpoints written by `geocmid pretrain` (RUN_DIR/checkpoints/last.ckpt)",
        )
    name = hp["backbone"]
    if expect is not None and resolve_name(expect) != resolve_name(name):
        raise ModelError(
            where,
            f"holds a {name} backbone, not {expect}",
            f"drop --backbone or pass --backbone {name}",
        )
    backbone = create_backbone(name, int(hp["in_chans"]), img_size=int(hp["chip_size"]))
    # the student's keys are Backbone keys ('model.' + timm key): load the timm model strictly
    timm_state = {k.removeprefix("model."): v for k, v in weights.items()}
    load_state_dict_strict(
        backbone.model,
        timm_state,
        f"{where}: student backbone ({name}, {hp['in_chans']} bands)",
        "export with the geocmid version that wrote the checkpoint, or check the file",
    )
    return backbone


def model_card(ckpt: dict[str, Any]) -> dict[str, Any]:
    """Card fields (``geocmid-card/2`` keys) from the checkpoint's hyperparameters.

    :func:`geocmid.models.weights.export_backbone` adds what the backbone itself says
    (architecture, family, band count, chip size, output geometry, geocmid version).
    """
    hp = ckpt["hyper_parameters"]
    progress = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {})
    # Epoch-end checkpoints (RunCheckpoint) are written after Lightning has processed the epoch
    # but before it counts it completed: the larger of the two is the epochs trained.
    current = progress.get("current", {})
    epochs = int(max(current.get("processed", 0), current.get("completed", ckpt.get("epoch", 0))))
    card: dict[str, Any] = {
        "task": "backbone",
        "bands": list(hp["bands"]) if hp.get("bands") else None,
        "rgb_bands": list(hp["rgb_bands"]) if hp.get("rgb_bands") else None,
        "gsd": hp.get("gsd"),
        "init_weights": str(hp["pretrained"]) if hp.get("pretrained") else None,
        "pretraining": {
            "method": "CMID",
            "data": hp.get("data"),
            "epochs": epochs,
            "steps": int(ckpt.get("global_step", 0)),
            "optimizer": hp.get("optimizer"),
            "base_lr": hp.get("base_lr"),
            # every CMID setting the run used (not the data-derived ones above)
            "settings": {k: v for k, v in hp.items() if k not in _DATA_KEYS and _plain(v)},
        },
    }
    if hp.get("mean") is not None and hp.get("std") is not None:
        card["mean"] = [float(v) for v in hp["mean"]]
        card["std"] = [float(v) for v in hp["std"]]
    return {k: v for k, v in card.items() if v is not None}


def export(
    checkpoint: str | Path, out: str | Path, overwrite: bool = False, expect: str | None = None
) -> tuple[Path, Path]:
    """Export the student backbone of ``checkpoint`` → ``(weights path, card path)``."""
    from geocmid.errors import ConfigError
    from geocmid.models.weights import export_backbone

    out = Path(out)
    stem = out.with_suffix("") if out.suffix in (".safetensors", ".json") else out
    targets = [stem.with_suffix(".safetensors"), stem.with_suffix(".json")]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not overwrite:
        raise ConfigError(
            f"output '{out}'",
            f"already exists ({', '.join(existing)})",
            "pass --overwrite to replace it, or choose another name",
        )
    where = f"checkpoint '{checkpoint}'"
    ckpt = read_checkpoint(checkpoint)
    backbone = student_backbone(ckpt, where, expect)
    return export_backbone(backbone, stem, model_card(ckpt))


#: CMIDTask hyperparameters that describe the data, not the method (they have card fields).
_DATA_KEYS = {"bands", "rgb_bands", "mean", "std", "gsd", "data", "in_chans", "chip_size",
              "pretrained", "optimizer", "base_lr", "backbone"}  # fmt: skip


def _plain(value: Any) -> bool:
    """True for JSON-safe values (numbers, strings, lists and dicts of them, None)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False
