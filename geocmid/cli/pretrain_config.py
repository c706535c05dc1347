"""Config schema of ``geocmid pretrain``: defaults, YAML merge, overrides and validation.

Sections ``data``, ``model``, ``optim``, ``trainer``, ``health``, ``debug`` plus ``run_dir``. Every
setting can be given in the YAML file, as ``--set SECTION.KEY=VALUE``, as ``--SECTION.KEY VALUE``
or (for the common ones) as a shortcut flag; values from the command line are read as YAML.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
from pathlib import Path
from typing import Any

import yaml

from geocmid.errors import ConfigError, did_you_mean

_ANY = None  # "any type" marker in the schema

#: section → key → (default, accepted types or None for any, help).
SCHEMA: dict[str, dict[str, tuple[Any, Any, str]]] = {
    "data": {
        "catalog": (None, _ANY, "catalog folder (default: the global --catalog)"),
        "entry": (None, _ANY, "imagery catalog entry to pretrain on (required)"),
        "chip_size": (224, int, "square chip edge in px; multiple of the mask block and stride"),
        "batch_size": (64, int, "chips per batch on each device"),
        "chips_per_epoch": (16384, int, "chips per epoch over all devices together"),
        "num_workers": (4, int, "data-loading processes per device"),
        "max_nodata": (0.5, float, "chips with a larger nodata fraction (0-1) are redrawn"),
        "seed": (0, int, "chip sampling seed (each rank derives its own)"),
    },
    "model": {
        "backbone": ("resnet50", str, "resnet18/34/50/101, swin_tiny/small/base, vit_small/base"),
        "in_chans": (None, _ANY, "band count (default: the entry's; checked when set)"),
        "bands": (None, _ANY, "band names (default: the entry's; checked when set)"),
        "rgb_bands": (None, _ANY, "red, green, blue band names (default: the entry's 'rgb')"),
        "pretrained": (None, _ANY, "weight file to start the student from"),
        "mask_ratio": (0.6, float, "fraction of masked blocks"),
        "mask_block": (32, int, "mask block size in px (a multiple of the token stride)"),
        "queue_size": (65536, int, "MoCo key queue length"),
        "proj_hidden": (2048, int, "MoCo projector hidden size"),
        "proj_dim": (256, int, "MoCo embedding size"),
        "temperature": (0.2, float, "InfoNCE temperature"),
        "head_hidden": (2048, int, "dense DINO head hidden size"),
        "head_bottleneck": (256, int, "dense DINO head bottleneck"),
        "num_prototypes": (2048, int, "dense DINO prototypes"),
        "num_matches": (20, int, "position-matched cells per image"),
        "student_temp": (0.1, float, "DINO student temperature"),
        "teacher_temp": ([0.04, 0.07], list, "DINO teacher temperature, start and end"),
        "teacher_temp_warmup_epochs": (50, int, "epochs of the teacher temperature warmup"),
        "center_momentum": (0.9, float, "DINO centre momentum"),
        "focal_alpha": (0.2, float, "focal-L1 alpha"),
        "focal_gamma": (1.0, float, "focal-L1 gamma"),
        "fft_weight": (1.0, float, "focal frequency loss weight"),
        "drop_path_rate": (0.0, float, "stochastic depth of Swin/ViT (paper: 0)"),
        "ema_momentum": ([0.996, 1.0], list, "EMA teacher momentum, start and end (cosine)"),
    },
    "optim": {
        "optimizer": ("adan", str, "adan (paper) or adamw"),
        "base_lr": (4e-3, float, "lr per lr_reference_batch images (lr scales with global batch)"),
        "lr_reference_batch": (256, int, "global batch that base_lr refers to"),
        "weight_decay": (0.02, float, "weight decay of >= 2-D parameters"),
        "betas": (None, _ANY, "optimizer betas (default: adan 0.98/0.92/0.99, adamw 0.9/0.999)"),
        "warmup_epochs": (10, float, "linear warmup epochs"),
        "warmup_start": (0.01, float, "warmup start factor"),
        "min_lr": (1e-6, float, "final lr of the cosine schedule"),
    },
    "trainer": {
        "max_epochs": (200, int, "epochs in total (a resumed run continues up to this)"),
        "devices": (1, (int, str, list), "devices per node (int, 'auto' or a list)"),
        "num_nodes": (1, int, "nodes"),
        "accelerator": ("auto", str, "cpu, gpu, auto"),
        "precision": ("32-true", (str, int), "32-true, 16-mixed, bf16-mixed"),
        "strategy": ("auto", str, "auto, ddp, ddp_spawn, ... (DDP is used when devices > 1)"),
        "accumulate_grad_batches": (1, int, "batches per optimizer step"),
        "limit_train_batches": (None, _ANY, "batches per epoch cap (int or fraction)"),
        "log_every_n_steps": (1, int, "logger write interval in steps"),
        "gradient_clip_val": (None, _ANY, "gradient norm clip (paper: none)"),
        "seed": (322, int, "seed of weights init and views (each rank adds its rank)"),
    },
    "health": {
        "every_n_epochs": (1, int, "collapse metrics (and kNN) every N epochs"),
        "knn_entry": (None, _ANY, "image_folder entry with labelled images for a kNN probe"),
        "knn_k": (20, int, "kNN neighbours"),
        "knn_temperature": (0.07, float, "kNN vote temperature"),
        "knn_max_images": (1000, int, "labelled images used at most"),
        "quicklook_every_n_epochs": (10, int, "reconstruction PNG every N epochs"),
    },
    "debug": {
        "dump_rank_state": (False, bool, "save each rank's chip bounds, queue and centre"),
    },
}
TOP_LEVEL: dict[str, tuple[Any, Any, str]] = {
    "run_dir": ("runs/cmid", str, "run folder: checkpoints, logs, quick-looks, config"),
}

#: Shortcut flags → dotted keys.
SHORTCUTS = {
    "entry": "data.entry",
    "pretrain_catalog": "data.catalog",
    "backbone": "model.backbone",
    "chip_size": "data.chip_size",
    "batch_size": "data.batch_size",
    "epochs": "trainer.max_epochs",
    "devices": "trainer.devices",
    "precision": "trainer.precision",
    "run_dir": "run_dir",
}


# ------------------------------------------------------------------------------------------------
# config: defaults, file, overrides, validation
def defaults() -> dict[str, Any]:
    """The default config as a nested dict."""
    cfg: dict[str, Any] = {
        s: {k: copy.deepcopy(v[0]) for k, v in keys.items()} for s, keys in SCHEMA.items()
    }
    cfg.update({k: v[0] for k, v in TOP_LEVEL.items()})
    return cfg


def _all_keys() -> list[str]:
    return [f"{s}.{k}" for s, keys in SCHEMA.items() for k in keys] + list(TOP_LEVEL)


def _spec(dotted: str, where: str) -> tuple[Any, Any, str]:
    section, _, key = dotted.partition(".")
    if not key and section in TOP_LEVEL:
        return TOP_LEVEL[section]
    if key and section in SCHEMA and key in SCHEMA[section]:
        return SCHEMA[section][key]
    raise ConfigError(
        where,
        f"unknown setting '{dotted}'{did_you_mean(dotted, _all_keys())}",
        "`geocmid pretrain --help` lists every setting",
    )


def _check_type(dotted: str, value: Any, types: Any, where: str) -> Any:
    if types is _ANY or value is None:
        return value
    types = types if isinstance(types, tuple) else (types,)
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    # bool is an int to Python, not to a config: `devices: true` is a mistake
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join(t.__name__ for t in types)
        raise ConfigError(
            f"{where}: setting '{dotted}'",
            f"expected {names}, got {value!r} ({type(value).__name__})",
            f"give a value of type {names}",
        )
    return value


def set_value(cfg: dict[str, Any], dotted: str, value: Any, where: str) -> None:
    """Validate and set ``cfg[section][key] = value`` for a dotted key."""
    _, types, _ = _spec(dotted, where)
    value = _check_type(dotted, value, types, where)
    section, _, key = dotted.partition(".")
    if key:
        cfg[section][key] = value
    else:
        cfg[section] = value


def merge_file(cfg: dict[str, Any], path: str | Path) -> None:
    """Merge a YAML config file into ``cfg`` (unknown keys → ConfigError with did-you-mean)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "config file not found", "check the path given to --config")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(str(path), f"not valid YAML{at}", "fix the YAML syntax") from None
    if not isinstance(raw, dict):
        raise ConfigError(str(path), "must be a mapping of sections", "see recipes/pretrain-*.yaml")
    for section, body in raw.items():
        if section in TOP_LEVEL:
            set_value(cfg, section, body, str(path))
            continue
        if section not in SCHEMA:
            choices = list(SCHEMA) + list(TOP_LEVEL)
            raise ConfigError(
                str(path),
                f"unknown section '{section}'{did_you_mean(str(section), choices)}",
                f"sections are: {', '.join(choices)}",
            )
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section '{section}'", "must be a mapping of settings")
        for key, value in body.items():
            set_value(cfg, f"{section}.{key}", value, str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """``"data.chip_size=96"`` → ``("data.chip_size", 96)`` (the value is read as YAML)."""
    if "=" not in text:
        raise ConfigError(
            f"--set {text}", "expected KEY=VALUE", "write e.g. --set data.chip_size=96"
        )
    key, _, value = text.partition("=")
    return key.strip(), _yaml_value(value)


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def check_chip_size(backbone: str, chip_size: int, mask_block: int) -> None:
    """ConfigError naming the setting unless the chip fits the mask block and backbone stride."""
    from geocmid.models.backbones import GEOMETRY, family_of

    family = family_of(backbone)
    stride, token_stride = GEOMETRY[family]
    if mask_block <= 0 or mask_block % token_stride:
        raise ConfigError(
            "setting 'model.mask_block'",
            f"{mask_block} px is not a multiple of the {family} token stride ({token_stride} px)",
            f"use a multiple of {token_stride} (CMID uses 32)",
        )
    need = math.lcm(mask_block, stride)
    if chip_size <= 0 or chip_size % need:
        near = max(need, round(chip_size / need) * need)
        raise ConfigError(
            "setting 'data.chip_size'",
            f"{chip_size} px is not divisible by {need} px (mask block {mask_block} px, "
            f"{family} output stride {stride} px)",
            f"use a chip size divisible by {need}, e.g. {near}",
        )


def load_config(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults ← ``--config`` file ← global ``--catalog`` ← ``--set`` ← dotted ← shortcut flags."""
    cfg = defaults()
    if args.config:
        merge_file(cfg, args.config)
    # the global `geocmid --catalog X` is a command-line value too: when given explicitly it wins
    # over the file (recipes and runners pass it that way); its default only fills a gap
    global_catalog = getattr(args, "catalog", None)
    if global_catalog and global_catalog != os.environ.get("GEOCMID_CATALOG", "data_catalog"):
        cfg["data"]["catalog"] = global_catalog
    for text in args.set or []:
        key, value = parse_override(text)
        set_value(cfg, key, value, f"--set {text}")
    for dotted in _all_keys():
        text = getattr(args, f"cfg__{dotted}", None)
        if text is not None:
            set_value(cfg, dotted, _yaml_value(text), f"--{dotted}")
    for dest, dotted in SHORTCUTS.items():
        value = getattr(args, dest, None)
        if value is not None:
            flag = "--" + dest.replace("pretrain_", "").replace("_", "-")
            set_value(cfg, dotted, _yaml_value(str(value)), flag)
    if cfg["data"]["catalog"] is None:
        cfg["data"]["catalog"] = getattr(args, "catalog", None)
    return cfg
