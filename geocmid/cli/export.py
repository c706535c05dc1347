"""``geocmid export``: the student backbone of a CMID checkpoint as safetensors + a model card.

The weights file holds the plain timm state dict of the backbone (the keys of
``timm.create_model(arch, num_classes=0)``), so timm, TorchGeo and smp load it as is. The card
(:class:`geocmid.models.card.ModelCard`, format ``geocmid-card/2``; JSON next to the weights, also
embedded in the safetensors header) records the architecture, band count and names,
normalisation mean/std (raw units), chip size, GSD, the pretraining data and epochs, and the
geocmid version. Files are written under temporary names and renamed, so an interrupted export
leaves nothing under the final names.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from geocmid.errors import ModelError

EPILOG = """\
examples:
  geocmid export runs/cmid/checkpoints/last.ckpt exports/resnet50-naip
      → exports/resnet50-naip.safetensors + exports/resnet50-naip.json
  geocmid export last.ckpt backbone.safetensors --backbone resnet50 --overwrite

Loading the weights elsewhere (keys are timm's; N bands, chip S px, both in the card):
  from geocmid.models.weights import load_backbone
  backbone, card = load_backbone("exports/resnet50-naip.safetensors")
  timm.create_model("resnet50", pretrained=True, num_classes=0, pretrained_cfg_overlay=dict(
      file="exports/resnet50-naip.safetensors", num_classes=0, input_size=(N, S, S)))
"""

#: Prefix of the student backbone's weights in a CMIDTask state dict.
STUDENT_PREFIX = "model.student.backbone."


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "export",
        help="export the pretrained student backbone (safetensors + model card)",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("checkpoint", help="CMID pretraining checkpoint (.ckpt)")
    parser.add_argument("out", help="output NAME or NAME.safetensors (NAME.json is the card)")
    parser.add_argument("--backbone", help="refuse unless the checkpoint holds this backbone")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.set_defaults(func=cmd_export)


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
    epochs = int(progress.get("current", {}).get("completed", ckpt.get("epoch", 0)))
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
            "model_kwargs": hp.get("model_kwargs"),
        },
    }
    if hp.get("mean") is not None and hp.get("std") is not None:
        card["mean"] = [float(v) for v in hp["mean"]]
        card["std"] = [float(v) for v in hp["std"]]
    return {k: v for k, v in card.items() if v is not None}


def export_checkpoint(
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


def cmd_export(args: argparse.Namespace) -> int:
    weights, card = export_checkpoint(args.checkpoint, args.out, args.overwrite, args.backbone)
    print(f"wrote {weights}\nwrote {card}")
    return 0
