"""``geocmid fit | validate | test --config FILE``: fine-tune and evaluate downstream tasks.

The config follows the Lightning CLI layout (``trainer``, ``model`` and ``data`` with
``class_path`` / ``init_args``), so TorchGeo and TerraTorch users read it at a glance; short
class names (``segmentation``, ``change``, ``classification``; data ``segmentation``, ``chips``,
``image_folder``) are accepted. Whatever the task needs from the data (bands, class table,
normalisation, chip size) is filled in from the datamodule unless the config sets it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  geocmid --catalog demo/catalog fit --config recipes/finetune-segmentation.yaml
  geocmid fit --config recipes/finetune-segmentation.yaml --set model.lr=1e-3 \\
      --set data.chip_size=128 --max-epochs 5 --weights runs/cmid/backbone.safetensors
  geocmid fit --config recipes/finetune-change.yaml --freeze-backbone      # decoder only
  geocmid test --config recipes/finetune-segmentation.yaml --ckpt runs/seg/best.ckpt

--set KEY=VALUE takes dotted keys (model.X and data.X reach init_args.X); VALUE is YAML.
Outputs under trainer.default_root_dir (--out): checkpoints/ (best by the monitored metric, and
last), metrics.csv, TensorBoard events, reports/ (confusion matrix PNG/CSV, sample panels PNG),
config.yaml (the resolved config) and model_card.json.
"""

TASK_NAMES = {
    "segmentation": "geocmid.tasks.segmentation.SegmentationTask",
    "change": "geocmid.tasks.change.ChangeTask",
    "classification": "geocmid.tasks.classification.ClassificationTask",
    "detection": "geocmid.tasks.detection.DetectionTask",
}
DATA_NAMES = {
    "segmentation": "geocmid.datamodules.SegmentationDataModule",
    "change": "geocmid.datamodules.SegmentationDataModule",
    "chips": "geocmid.datamodules.FeatureChipDataModule",
    "image_folder": "geocmid.datamodules.ImageFolderDataModule",
    "detection": "geocmid.datamodules.DetectionDataModule",
}
#: Metric kept for the best checkpoint, per task (all "higher is better").
MONITOR = {
    "segmentation": "val_mIoU",
    "change": "val_change_F1",
    "classification": "val_OA",
    "detection": "val_map_50",
}
TOP_KEYS = {
    "seed_everything",
    "trainer",
    "model",
    "data",
    "checkpoint",
    "normalisation",
    "ckpt_path",
}

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    for name, help_text in (
        ("fit", "fine-tune a task (classification, segmentation, change) from a config"),
        ("validate", "evaluate a checkpoint on the validation split"),
        ("test", "evaluate a checkpoint on the test split"),
    ):
        p = subparsers.add_parser(
            name, help=help_text, description=help_text + ".\n\n" + __doc__.split("\n\n")[1],
            epilog=EPILOG, formatter_class=HelpFormatter,
        )  # fmt: skip
        p.add_argument(
            "--config", "-c", required=True, help="YAML config (see recipes/finetune-*.yaml)"
        )
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value (repeatable)")  # fmt: skip
        p.add_argument("--ckpt", help="checkpoint to evaluate (validate/test) or resume (fit)")
        p.add_argument("--out", help="output folder (trainer.default_root_dir)")
        p.add_argument("--weights", help="encoder weights (model.weights): export or CMID release")
        p.add_argument("--backbone", help="encoder architecture (model.backbone)")
        p.add_argument("--max-epochs", type=int, help="trainer.max_epochs")
        p.add_argument("--lr", type=float, help="head learning rate (model.lr)")
        p.add_argument(
            "--backbone-lr", type=float, help="encoder learning rate (model.backbone_lr)"
        )
        p.add_argument("--freeze-backbone", action="store_true", help="linear probe / decoder only")
        p.add_argument("--batch-size", type=int, help="data.batch_size")
        p.add_argument("--fast-dev-run", action="store_true", help="one batch of each split")
        p.set_defaults(func=run, stage=name)


# ------------------------------------------------------------------------------------------------
# config handling (no torch imports: `--help` stays instant)
def load_config(path: str | Path) -> dict[str, Any]:
    import yaml

    from geocmid.errors import ConfigError

    p = Path(path)
    if not p.is_file():
        raise ConfigError(str(p), "config file not found", "check the path (see recipes/)")
    try:
        config = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(str(p), f"not valid YAML: {error}", "fix the YAML syntax") from None
    if not isinstance(config, dict):
        raise ConfigError(str(p), "must be a mapping with trainer / model / data sections")
    unknown = sorted(set(config) - TOP_KEYS)
    if unknown:
        from geocmid.errors import did_you_mean

        raise ConfigError(
            str(p), f"unknown section '{unknown[0]}'{did_you_mean(unknown[0], TOP_KEYS)}",
            f"sections: {', '.join(sorted(TOP_KEYS))}",
        )  # fmt: skip
    return config


def set_value(config: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key``; ``model.X`` / ``data.X`` go to ``init_args.X`` (unless class_path)."""
    parts = key.split(".")
    if (
        parts[0] in ("model", "data")
        and len(parts) > 1
        and parts[1] not in ("class_path", "init_args")
    ):
        parts = [parts[0], "init_args", *parts[1:]]
    node = config
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            from geocmid.errors import ConfigError

            raise ConfigError(f"--set {key}", f"'{part}' is not a section", "check the key")
    node[parts[-1]] = value


def parse_value(raw: str) -> Any:
    """A ``--set`` value as YAML, with ``1e-3`` read as a number (YAML 1.1 reads a string)."""
    import yaml

    value = yaml.safe_load(raw)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:

    from geocmid.errors import ConfigError

    for item in args.overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item}", "expected KEY=VALUE", "e.g. --set model.lr=1e-3")
        key, raw = item.split("=", 1)
        set_value(config, key.strip(), parse_value(raw))
    shortcuts = {
        "trainer.default_root_dir": args.out,
        "model.weights": args.weights,
        "model.backbone": args.backbone,
        "trainer.max_epochs": args.max_epochs,
        "model.lr": args.lr,
        "model.backbone_lr": args.backbone_lr,
        "model.freeze_backbone": True if args.freeze_backbone else None,
        "data.batch_size": args.batch_size,
        "trainer.fast_dev_run": True if args.fast_dev_run else None,
    }
    for key, value in shortcuts.items():
        if value is not None:
            set_value(config, key, value)
    data = config.setdefault("data", {}).setdefault("init_args", {})
    if not data.get("catalog") and getattr(args, "catalog", None):
        data["catalog"] = args.catalog
    return config


def _resolve(section: dict[str, Any], names: dict[str, str], what: str) -> tuple[type, str]:
    from geocmid.errors import ConfigError, did_you_mean

    path = section.get("class_path")
    if not path:
        raise ConfigError(
            f"config '{what}'", "has no class_path", f"e.g. class_path: {next(iter(names))}"
        )
    short = path
    path = names.get(path, path)
    module, _, cls = path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls), short
    except (ImportError, AttributeError, ValueError):
        raise ConfigError(
            f"config '{what}.class_path'", f"unknown class '{short}'{did_you_mean(short, names)}",
            f"use one of {', '.join(names)} or a full dotted class path",
        ) from None  # fmt: skip


def _task_name(cls: type) -> str:
    return getattr(cls, "card_task", "") or "segmentation"


# ------------------------------------------------------------------------------------------------
def build(config: dict[str, Any], stage: str) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Datamodule, task and trainer from a resolved config (mutated: filled-in values)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from geocmid.tasks.encoders import card_normalisation, is_export

    model_cfg = config.setdefault("model", {})
    data_cfg = config.setdefault("data", {})
    task_cls, _ = _resolve(model_cfg, TASK_NAMES, "model")
    data_cls, _ = _resolve(data_cfg, DATA_NAMES, "data")
    margs = model_cfg.setdefault("init_args", {})
    dargs = data_cfg.setdefault("init_args", {})
    weights = margs.get("weights")
    if stage != "fit":
        margs["weights"] = None  # the checkpoint brings every weight
    # normalisation: the encoder card's statistics by default, so features mean what they meant
    mode = config.get("normalisation", "auto")
    if weights and is_export(str(weights)) and mode in ("auto", "card") and "mean" not in dargs:
        card_path = Path(str(weights)).with_suffix(".json")
        stats = (
            card_normalisation(json.loads(card_path.read_text())) if card_path.is_file() else None
        )
        if stats:
            dargs["mean"], dargs["std"] = stats
    datamodule = data_cls(**dargs)
    datamodule.setup()
    mean, std = datamodule.normalisation
    classes = [{"value": c.value, "name": c.name, "color": c.color} for c in datamodule.classes]
    filled = {
        "in_channels": len(datamodule.bands),
        "num_classes": len(classes),
        "classes": classes,
        "bands": datamodule.bands,
        "mean": mean,
        "std": std,
        "chip_size": dargs.get("chip_size", datamodule.hparams.get("chip_size")),
    }
    for key, value in filled.items():
        margs.setdefault(key, value)
    if margs["in_channels"] != len(datamodule.bands):
        from geocmid.errors import ModelError

        raise ModelError(
            "config 'model.in_channels'",
            f"is {margs['in_channels']} but the data has {len(datamodule.bands)} bands",
            "remove model.in_channels (it is taken from the data)",
        )
    task = task_cls(**margs)
    task_name = _task_name(task_cls)
    ckpt_cfg = config.setdefault("checkpoint", {})
    monitor = ckpt_cfg.setdefault("monitor", MONITOR.get(task_name, "val_loss"))
    mode = ckpt_cfg.setdefault("mode", "min" if monitor.endswith("loss") else "max")
    tcfg = dict(config.setdefault("trainer", {}))
    root = Path(tcfg.pop("default_root_dir", f"runs/{task_name}"))
    if stage != "fit":  # keep the training logs: evaluation logs go to a sub-folder
        root = root / stage
    name = tcfg.pop("name", "")
    loggers = [
        CSVLogger(root, name=name, version=""),
        TensorBoardLogger(root, name=name, version=""),
    ]
    checkpoint = ModelCheckpoint(
        dirpath=root / "checkpoints", monitor=monitor, mode=mode, save_top_k=1, save_last=True,
        # A stable name: users and recipes point `geocmid predict` at checkpoints/best.ckpt.
        filename="best", auto_insert_metric_name=False, enable_version_counter=False,
    )  # fmt: skip
    tcfg.setdefault("accelerator", "auto")
    tcfg.setdefault("log_every_n_steps", 10)
    trainer = L.Trainer(
        default_root_dir=root, logger=loggers, use_distributed_sampler=False,
        callbacks=[checkpoint], **tcfg,
    )  # fmt: skip
    return datamodule, task, trainer, config


def run(args: argparse.Namespace) -> int:
    import lightning as L
    import yaml

    from geocmid.errors import ConfigError

    config = apply_overrides(load_config(args.config), args)
    if "seed_everything" in config:
        L.seed_everything(config["seed_everything"], workers=True)
    datamodule, task, trainer, config = build(config, args.stage)
    root = Path(trainer.default_root_dir)
    root.mkdir(parents=True, exist_ok=True)
    for logger in trainer.loggers:  # start the log writers first: they expect an empty folder
        _ = logger.experiment
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    ckpt = args.ckpt or config.get("ckpt_path")
    if args.stage == "fit":
        trainer.fit(task, datamodule=datamodule, ckpt_path=ckpt)
        callback = trainer.checkpoint_callback
        best = getattr(callback, "best_model_path", "") or getattr(callback, "last_model_path", "")
        (root / "model_card.json").write_text(json.dumps(task.model_card(), indent=2))
        score = getattr(callback, "best_model_score", None)
        print(
            f"best checkpoint: {best}"
            + (f" ({callback.monitor} = {float(score):.4f})" if score is not None else "")
        )
        print(f"reports: {root / 'reports'}; metrics: {root / 'metrics.csv'}")
        return 0
    if not ckpt:
        raise ConfigError(f"geocmid {args.stage}", "needs a checkpoint", "pass --ckpt FILE.ckpt")
    if not Path(ckpt).is_file():
        raise ConfigError(f"--ckpt {ckpt}", "file not found", "check the path")
    runner = trainer.validate if args.stage == "validate" else trainer.test
    results = runner(task, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
    for key, value in sorted((results[0] if results else {}).items()):
        if "Classwise" not in key:
            print(f"{key:32s} {value:.4f}")
    return 0
