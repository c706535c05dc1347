"""``geocmid pretrain``: CMID self-supervised pretraining from a Lightning CLI config.

The config has the layout of any Lightning CLI / ``torchgeo fit`` config:

  seed_everything: 322
  trainer:  {max_epochs: 200, default_root_dir: runs/cmid, callbacks: [...]}
  model:    {class_path: geocmid.cmid.CMIDTask, init_args: {backbone: resnet50, ...}}
  data:     {class_path: geocmid.datamodules.PretrainDataModule, init_args: {entry: ...}}

Anything left out takes the paper's defaults (listed below, read from CMIDTask and
PretrainDataModule). Override a value with --set KEY=VALUE or --KEY VALUE, where KEY is
model.X / data.X (the init_args of the task / datamodule), trainer.X, seed_everything, or
trainer.callbacks.NAME.X for the health and quick-look callbacks. Values are read as YAML.
Everything is checked before training: unknown keys (with a did-you-mean), types, the chip
size against the mask block and backbone stride, the bands against the data.

Runs are resumable: RUN_DIR/checkpoints/last.ckpt (RUN_DIR = trainer.default_root_dir,
--run-dir) is written every epoch and rerunning the same command continues from it. The
resolved config goes to RUN_DIR/config.yaml (it also runs with `torchgeo fit --config`); logs
go to RUN_DIR/tensorboard and RUN_DIR/csv, reconstructions to RUN_DIR/quicklook.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

EPILOG = """\
examples:
  geocmid pretrain --config recipes/pretrain-resnet18-cpu.yaml --catalog demo/catalog
  geocmid pretrain --config recipes/pretrain-resnet50.yaml --entry naip-2022 --devices 4
  geocmid pretrain --config my.yaml --set model.base_lr=1e-3 --model.mask_ratio 0.5
  geocmid pretrain --config my.yaml --set trainer.callbacks.HealthMonitor.knn_entry=chips
  geocmid pretrain --config my.yaml --dry-run        # check and print the resolved config

Rerunning the same command resumes from RUN_DIR/checkpoints/last.ckpt (raise
--epochs to train longer). Export the student backbone afterwards with
  geocmid export RUN_DIR/checkpoints/last.ckpt backbone.safetensors
"""

#: Shortcut flags: (flag, dest, setting, argparse type).
SHORTCUT_FLAGS = (
    ("--entry", "entry", str),
    ("--catalog", "pretrain_catalog", str),
    ("--backbone", "backbone", str),
    ("--chip-size", "chip_size", int),
    ("--batch-size", "batch_size", int),
    ("--epochs", "epochs", int),
    ("--devices", "devices", str),
    ("--precision", "precision", str),
    ("--run-dir", "run_dir", str),
)
_GROUPS = (
    ("model", "model settings: CMIDTask (--model.KEY VALUE = --set model.init_args.KEY=VALUE)"),
    ("data", "data settings: PretrainDataModule (--data.KEY VALUE)"),
    ("trainer.callbacks", "callbacks (--trainer.callbacks.NAME.KEY VALUE)"),
    ("trainer", "main trainer settings (--trainer.KEY VALUE; --set takes any Trainer arg)"),
    ("seed_everything", "run"),
)
#: Settings left out of --help (still accepted).
HIDDEN = {"model.model_kwargs"}
USAGE = (
    "geocmid pretrain [-h] [--config FILE] [--set KEY=VALUE ...] [--KEY VALUE ...]\n"
    "                        [--entry NAME] [--catalog DIR] [--backbone NAME] [--chip-size PX]\n"
    "                        [--batch-size N] [--epochs N] [--devices N] [--precision P]\n"
    "                        [--run-dir DIR] [--dry-run] [-q] [-v]"
)


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter
    from geocmid.workflows.pretrain import SHORTCUTS, settings

    parser = subparsers.add_parser(
        "pretrain",
        help="CMID self-supervised pretraining on a catalog imagery entry",
        description=__doc__.split("``: ", 1)[-1],
        epilog=EPILOG,
        formatter_class=HelpFormatter,
        usage=USAGE,
    )
    none = argparse.SUPPRESS  # no "(default: None)" in the help; read with getattr
    parser.add_argument("--config", metavar="FILE", default=none,
                        help="YAML config (see recipes/pretrain-*.yaml)")  # fmt: skip
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=none,
                        help="override a setting, e.g. data.chip_size=96 (repeatable)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", default=none,
                        help="check everything, print the resolved config and stop")  # fmt: skip
    short = parser.add_argument_group("common settings")
    for flag, dest, kind in SHORTCUT_FLAGS:
        key = SHORTCUTS[dest.removeprefix("pretrain_")]
        short.add_argument(flag, dest=dest, type=kind, default=none, metavar="V", help=f"= {key}")
    # every documented setting as --KEY VALUE, defaults read from the classes' signatures
    table = settings()
    groups = {prefix: parser.add_argument_group(title) for prefix, title in _GROUPS}
    for key, (default, text) in table.items():
        if key in HIDDEN:
            continue
        prefix = next(p for p, _ in _GROUPS if key == p or key.startswith(p + "."))
        groups[prefix].add_argument(
            f"--{key}", dest=f"cfg__{key}", metavar="V", default=argparse.SUPPRESS,
            help=f"{text.rstrip('.')} (default: {default!r})".replace("%", "%%"),
        )  # fmt: skip
    parser.set_defaults(func=cmd_pretrain)


def overrides_of(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """The command line's overrides, in order of precedence: the explicit global ``--catalog``,
    ``--set``, ``--KEY VALUE`` flags, then the shortcut flags."""
    from geocmid.workflows.config import parse_overrides, parse_value
    from geocmid.workflows.pretrain import SHORTCUTS

    pairs: list[tuple[str, Any]] = []
    # the global `geocmid --catalog X` wins over the config file when given explicitly (recipes
    # and runners pass it that way); its default only fills a gap (pretrain(catalog=...))
    global_catalog = getattr(args, "catalog", None)
    if global_catalog and global_catalog != os.environ.get("GEOCMID_CATALOG", "data_catalog"):
        pairs.append(("data.catalog", global_catalog))
    pairs += parse_overrides(getattr(args, "set", None) or [])
    for name, value in vars(args).items():
        if name.startswith("cfg__"):
            pairs.append((name.removeprefix("cfg__"), parse_value(value)))
    for _, dest, _ in SHORTCUT_FLAGS:
        value = getattr(args, dest, None)
        if value is not None:
            pairs.append((SHORTCUTS[dest.removeprefix("pretrain_")], parse_value(str(value))))
    return pairs


def estimate_line(config: dict[str, Any]) -> str:
    """``# estimate: ~X min (measured: ...)`` for the dry run: a YAML comment, so the printed
    config still loads (:func:`geocmid.recipes.calibrate.estimate_pretrain`)."""
    from geocmid.recipes.calibrate import estimate_pretrain

    data, trainer = config["data"]["init_args"], config["trainer"]
    epochs, chips = trainer.get("max_epochs"), data.get("chips_per_epoch")
    return (f"# estimate: {estimate_pretrain(config).text()} for {epochs} epoch(s) × {chips} "
            f"chips of {data.get('chip_size')} px; data loading not included")  # fmt: skip


def cmd_pretrain(args: argparse.Namespace) -> int:
    import yaml

    from geocmid.workflows.pretrain import pretrain

    dry_run = bool(getattr(args, "dry_run", False))
    result = pretrain(
        getattr(args, "config", None) or {},
        overrides=overrides_of(args),
        catalog=getattr(args, "catalog", None),
        dry_run=dry_run,
    )
    if dry_run:
        print("# resolved config; model.init_args values taken from the data are filled in")
        resolved = result.resolved_config()
        print(yaml.safe_dump(resolved, sort_keys=False), end="")
        print(estimate_line(resolved))
        return 0
    if all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK")):
        last = result.last_checkpoint
        print(f"done: {result.epochs} epoch(s), {result.global_step} step(s); checkpoint {last}")
        print(f"export the backbone with: geocmid export {last} {result.run_dir / 'backbone'}")
    return 0
