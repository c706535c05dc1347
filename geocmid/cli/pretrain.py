"""``geocmid pretrain``: CMID pretraining from a YAML config, every value overridable.

The config is a flat geocmid schema (sections ``data``, ``model``, ``optim``, ``trainer``,
``health``, ``debug`` and ``run_dir``; see :data:`SCHEMA` or ``geocmid pretrain --help``). It is
validated before anything runs: unknown keys (with a did-you-mean), wrong types, a chip size that
does not fit the mask block / backbone stride, and a band count that differs from the data.

Runs are resumable: ``RUN_DIR/checkpoints/last.ckpt`` is written every epoch (atomically, by
Lightning) and rerunning the same command continues from it. The resolved config is written to
``RUN_DIR/config.yaml``; logs go to ``RUN_DIR/tensorboard`` and ``RUN_DIR/csv``.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
from pathlib import Path
from typing import Any

import yaml

from geocmid.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

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

EPILOG = """\
examples:
  geocmid pretrain --config recipes/pretrain-resnet18-cpu.yaml --catalog demo/catalog
  geocmid pretrain --config recipes/pretrain-resnet50.yaml --entry naip-2022 --devices 4
  geocmid pretrain --config my.yaml --set optim.base_lr=1e-3 --model.mask_ratio 0.5
  geocmid pretrain --config my.yaml --dry-run        # validate and print the resolved config

Rerunning the same command resumes from RUN_DIR/checkpoints/last.ckpt (raise --epochs to
train longer). Export the student backbone afterwards with
  geocmid export RUN_DIR/checkpoints/last.ckpt backbone.safetensors
"""


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
    """Defaults ← ``--config`` file ← ``--set`` ← dotted flags ← shortcut flags."""
    cfg = defaults()
    if args.config:
        merge_file(cfg, args.config)
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


# ------------------------------------------------------------------------------------------------
def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "pretrain",
        help="CMID self-supervised pretraining on a catalog imagery entry",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--config", help="YAML config (see recipes/pretrain-*.yaml)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="override a setting: data.chip_size=96 (repeatable)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true",
                        help="validate, print the resolved config and stop")  # fmt: skip
    short = parser.add_argument_group("common settings")
    short.add_argument("--entry", help="data.entry")
    short.add_argument("--catalog", dest="pretrain_catalog", help="data.catalog")
    short.add_argument("--backbone", help="model.backbone")
    short.add_argument("--chip-size", dest="chip_size", type=int, help="data.chip_size")
    short.add_argument("--batch-size", dest="batch_size", type=int, help="data.batch_size")
    short.add_argument("--epochs", type=int, help="trainer.max_epochs")
    short.add_argument("--devices", help="trainer.devices")
    short.add_argument("--precision", help="trainer.precision")
    short.add_argument("--run-dir", dest="run_dir", help="run_dir")
    every = parser.add_argument_group("every setting (--SECTION.KEY VALUE, VALUE read as YAML)")
    for section, keys in SCHEMA.items():
        for key, (default, _, text) in keys.items():
            every.add_argument(f"--{section}.{key}", dest=f"cfg__{section}.{key}",
                               metavar="V", help=f"{text} [{default!r}]")  # fmt: skip
    parser.set_defaults(func=cmd_pretrain)


def cmd_pretrain(args: argparse.Namespace) -> int:
    cfg = load_config(args)
    plan = prepare(cfg)
    if args.dry_run:
        print(yaml.safe_dump(plan.config, sort_keys=False), end="")
        return 0
    run(plan)
    return 0


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


class Plan:
    """Everything resolved before training: config, datamodule, task arguments."""

    def __init__(self, config: dict[str, Any], datamodule: Any, task_kwargs: dict[str, Any]):
        self.config = config
        self.datamodule = datamodule
        self.task_kwargs = task_kwargs

    @property
    def run_dir(self) -> Path:
        return Path(self.config["run_dir"])


def prepare(cfg: dict[str, Any]) -> Plan:
    """Validate ``cfg`` against the data and build the datamodule and the task arguments."""
    from geocmid.data.datamodules import PretrainDataModule, entry_normalizer
    from geocmid.models.backbones import resolve_name

    data, model, optim = cfg["data"], cfg["model"], cfg["optim"]
    if not data["entry"]:
        raise ConfigError(
            "setting 'data.entry'", "is not set", "pass --entry NAME or set data.entry"
        )
    try:
        resolve_name(model["backbone"])
    except ConfigError as error:
        raise ConfigError("setting 'model.backbone'", error.problem, error.fix) from None
    check_chip_size(model["backbone"], data["chip_size"], model["mask_block"])
    if (name := optim["optimizer"]).lower() not in ("adan", "adamw"):
        raise ConfigError(
            "setting 'optim.optimizer'",
            f"unknown optimizer '{name}'{did_you_mean(name, ['adan', 'adamw'])}",
            "use adan or adamw",
        )
    for key in ("teacher_temp", "ema_momentum"):
        if len(model[key]) != 2:
            raise ConfigError(f"setting 'model.{key}'", "needs two values: [start, end]")

    dm = PretrainDataModule(
        data["entry"], data["catalog"], chip_size=data["chip_size"],
        batch_size=data["batch_size"], chips_per_epoch=data["chips_per_epoch"],
        num_workers=data["num_workers"], max_nodata=data["max_nodata"], seed=data["seed"],
    )  # fmt: skip
    entry = dm.entry
    bands = list(entry.bands)
    where = f"data entry '{entry.name}'"
    if model["in_chans"] is not None and int(model["in_chans"]) != len(bands):
        raise ConfigError(
            "setting 'model.in_chans'",
            f"is {model['in_chans']} but {where} has {len(bands)} bands ({', '.join(bands)})",
            f"set model.in_chans to {len(bands)} (or leave it unset to follow the data)",
        )
    if model["bands"] is not None and list(model["bands"]) != bands:
        raise ConfigError(
            "setting 'model.bands'",
            f"is {list(model['bands'])} but {where} has bands {bands}",
            "use the entry's bands in file order (or leave model.bands unset)",
        )
    rgb = model["rgb_bands"] or list(entry.rgb) or None
    if rgb is not None and (len(rgb) != 3 or any(b not in bands for b in rgb)):
        raise ConfigError(
            "setting 'model.rgb_bands'",
            f"{rgb} are not three of the bands {bands}",
            "name the red, green and blue bands of the entry",
        )
    entry_normalizer(entry)  # computes statistics once when the entry has none
    dm.setup("fit")  # opens the rasters now: data problems surface before training starts
    gsd = float(entry.res) if entry.res else float(dm.dataset.res[0])

    resolved = copy.deepcopy(cfg)
    resolved["model"]["in_chans"], resolved["model"]["bands"] = len(bands), bands
    resolved["model"]["rgb_bands"] = rgb
    keys = ("mask_ratio", "mask_block", "queue_size", "proj_hidden", "proj_dim", "temperature",
            "head_hidden", "head_bottleneck", "num_prototypes", "num_matches", "student_temp",
            "teacher_temp_warmup_epochs", "center_momentum", "focal_alpha", "focal_gamma",
            "fft_weight")  # fmt: skip
    model_kwargs: dict[str, Any] = {k: model[k] for k in keys}
    model_kwargs["teacher_temp"] = tuple(model["teacher_temp"])
    model_kwargs["backbone_kwargs"] = (
        {"drop_path_rate": model["drop_path_rate"]}
        if model["backbone"].startswith(("swin", "vit"))
        else {}
    )
    task_kwargs = {
        "backbone": model["backbone"],
        "in_chans": len(bands),
        "chip_size": data["chip_size"],
        "bands": bands,
        "rgb_bands": rgb,
        "mean": [float(v) for v in entry.stats["mean"]],
        "std": [float(v) for v in entry.stats["std"]],
        "gsd": gsd,
        "data": entry.name,
        "pretrained": model["pretrained"],
        "model_kwargs": model_kwargs,
        "optimizer": optim["optimizer"].lower(),
        "base_lr": optim["base_lr"],
        "lr_reference_batch": optim["lr_reference_batch"],
        "batch_size": data["batch_size"],
        "weight_decay": optim["weight_decay"],
        "betas": optim["betas"],
        "warmup_epochs": optim["warmup_epochs"],
        "warmup_start": optim["warmup_start"],
        "min_lr": optim["min_lr"],
        "ema_momentum": list(model["ema_momentum"]),
        "view_seed": cfg["trainer"]["seed"],
    }
    return Plan(resolved, dm, task_kwargs)


def _write_yaml(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(tmp, path)


def build_trainer(plan: Plan, family: str, rgb_indices: list[int] | None) -> Any:
    """The Lightning Trainer: checkpoints, loggers, health and quick-look callbacks, DDP."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from lightning.pytorch.strategies import DDPStrategy

    from geocmid.cmid.callbacks import HealthMonitor, KNNProbe, QuickLook, RankStateDump

    cfg, run_dir = plan.config, plan.run_dir
    t, health = cfg["trainer"], cfg["health"]
    knn = None
    if health["knn_entry"]:
        knn = KNNProbe.from_entry(
            health["knn_entry"], cfg["data"]["catalog"], cfg["data"]["chip_size"],
            plan.task_kwargs["mean"], plan.task_kwargs["std"], health["knn_max_images"],
            k=health["knn_k"], temperature=health["knn_temperature"],
        )  # fmt: skip
    callbacks: list[Any] = [
        ModelCheckpoint(
            dirpath=run_dir / "checkpoints",
            save_last=True,
            save_top_k=0,
            every_n_epochs=1,
            enable_version_counter=False,
        ),
        HealthMonitor(knn, health["every_n_epochs"]),
        QuickLook(run_dir / "quicklook", health["quicklook_every_n_epochs"], rgb_indices),
    ]
    if cfg["debug"]["dump_rank_state"]:
        callbacks.append(RankStateDump(run_dir / "debug"))
    devices = t["devices"]
    multi = t["num_nodes"] > 1 or devices not in (1, "1", [0])
    strategy: Any = t["strategy"]
    if strategy == "ddp" or (strategy == "auto" and multi):
        # queue and centre stay identical across ranks by all-gather / all-reduce: broadcasting
        # rank 0's 64 MB queue every step would cost bandwidth and hide bugs
        strategy = DDPStrategy(broadcast_buffers=False)
    cpu = t["accelerator"] == "cpu"
    sync_bn = family == "resnet" and multi and not cpu  # torch's SyncBN needs a GPU
    return L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t["max_epochs"],
        devices=devices,
        num_nodes=t["num_nodes"],
        accelerator=t["accelerator"],
        precision=t["precision"],
        strategy=strategy,
        sync_batchnorm=sync_bn,
        accumulate_grad_batches=t["accumulate_grad_batches"],
        limit_train_batches=t["limit_train_batches"],
        log_every_n_steps=t["log_every_n_steps"],
        gradient_clip_val=t["gradient_clip_val"],
        use_distributed_sampler=False,  # the geo sampler is already rank-aware
        limit_val_batches=0,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        logger=[TensorBoardLogger(run_dir, name="tensorboard"), CSVLogger(run_dir, name="csv")],
    )


def run(plan: Plan) -> Path:
    """Train (or resume) the planned run; returns the path of ``last.ckpt``."""
    import lightning as L

    from geocmid.cmid.task import CMIDTask

    run_dir = plan.run_dir
    last = run_dir / "checkpoints" / "last.ckpt"
    resume = last.is_file()
    if _is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        _write_yaml(run_dir / "config.yaml", plan.config)
        _write_yaml(run_dir / "torchgeo_fit.yaml", torchgeo_config(plan))
        log.info("%s run in %s", "resuming" if resume else "starting", run_dir)
    L.seed_everything(plan.config["trainer"]["seed"], workers=True, verbose=False)
    task = CMIDTask(**plan.task_kwargs)
    trainer = build_trainer(plan, task.model.family, task.rgb_indices)
    trainer.fit(task, datamodule=plan.datamodule, ckpt_path=str(last) if resume else None)
    if trainer.is_global_zero:
        print(f"done: {trainer.current_epoch} epoch(s); checkpoint {last}")
        print(f"export the backbone with: geocmid export {last} {run_dir / 'backbone'}")
    return last


def torchgeo_config(plan: Plan) -> dict[str, Any]:
    """The same run as a Lightning-CLI config for ``torchgeo fit --config`` (informative)."""
    cfg = plan.config
    t = cfg["trainer"]
    dm = dict(plan.datamodule.hparams)
    dm["catalog"] = str(dm["catalog"]) if dm.get("catalog") is not None else None
    return {
        "seed_everything": t["seed"],
        "trainer": {
            "max_epochs": t["max_epochs"], "devices": t["devices"], "num_nodes": t["num_nodes"],
            "accelerator": t["accelerator"], "precision": t["precision"],
            "use_distributed_sampler": False, "default_root_dir": cfg["run_dir"],
        },
        "model": {"class_path": "geocmid.cmid.task.CMIDTask", "init_args": plan.task_kwargs},
        "data": {"class_path": "geocmid.data.datamodules.PretrainDataModule", "init_args": dm},
    }  # fmt: skip
