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
import os
from pathlib import Path
from typing import Any

import yaml

from geocmid.cli.pretrain_config import SCHEMA, check_chip_size, load_config
from geocmid.errors import ConfigError, did_you_mean

log = logging.getLogger(__name__)

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
    from geocmid.data.stats import entry_normalizer
    from geocmid.datamodules import PretrainDataModule
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

    # Lightning has its own console handler; without this every line shows twice
    logging.getLogger("lightning.pytorch").propagate = False
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
        "data": {"class_path": "geocmid.datamodules.PretrainDataModule", "init_args": dm},
    }  # fmt: skip
