"""``geocmid fit | validate | test --config FILE``: fine-tune and evaluate downstream tasks.

The config is a plain Lightning CLI config (``seed_everything``, ``trainer``, ``model`` and
``data`` with full ``class_path`` / ``init_args``): the same file runs under ``torchgeo fit``.
Whatever the task needs from the data (bands, class table, normalisation, chip size) is read
from the datamodule when training starts, unless the config sets it. Only classes of trusted
packages are accepted as ``class_path`` (see GEOCMID_TRUSTED_MODULES).
"""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  geocmid --catalog demo/catalog fit --config recipes/finetune-segmentation.yaml
  geocmid fit -c recipes/finetune-segmentation.yaml --set model.lr=1e-3 \\
      --set data.chip_size=128 --max-epochs 5 --weights runs/cmid/backbone.safetensors
  geocmid fit -c recipes/finetune-segmentation.yaml --model.init_args.lr 1e-3 \\
      --trainer.max_epochs 3                     # Lightning-style keys work too
  geocmid fit --config recipes/finetune-change.yaml --freeze-backbone      # decoder only
  geocmid fit --config recipes/finetune-segmentation.yaml --ckpt runs/seg/checkpoints/last.ckpt
  geocmid test --config runs/seg/config.yaml --ckpt runs/seg/checkpoints/best.ckpt
  torchgeo fit --config recipes/finetune-segmentation.yaml --data.init_args.catalog demo/catalog

--set KEY=VALUE takes dotted keys (model.X and data.X reach init_args.X; list items by index:
trainer.callbacks.0.init_args.monitor); VALUE is YAML (1e-3, [1, 2], null, true).
--weights also normalises the data with the export's card statistics (data.stats_from) unless
the config sets data.mean / data.std / data.stats_from.
Outputs under trainer.default_root_dir (--out): checkpoints/ (best.ckpt by the monitored
metric, last.ckpt), metrics.csv, TensorBoard events, reports/ (confusion matrix PNG/CSV,
sample panels PNG), config.yaml (the resolved config) and model_card.json. validate / test
write their logs into <out>/validate or <out>/test.
"""

#: Lightning CLI sections a ``--section.key VALUE`` argument may address.
SECTIONS = ("trainer", "model", "data", "seed_everything", "ckpt_path")


class _FitParser(argparse.ArgumentParser):
    """Takes Lightning-style ``--model.init_args.lr 1e-3`` / ``--trainer.max_epochs=3`` too:
    they become ``--set`` overrides (applied after the ``--set`` ones, before the shortcuts)."""

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        items = list(args or [])
        rest: list[str] = []
        dotted: list[str] = []
        i = 0
        while i < len(items):
            token = items[i]
            key = token[2:].split("=", 1)[0] if token.startswith("--") else ""
            if key.split(".")[0] in SECTIONS and (
                "." in key or key in ("seed_everything", "ckpt_path")
            ):
                if "=" in token:
                    dotted.append(token[2:])
                elif i + 1 < len(items):
                    dotted.append(f"{key}={items[i + 1]}")
                    i += 1
                else:
                    self.error(f"argument --{key}: expected a value")
                i += 1
                continue
            rest.append(token)
            i += 1
        namespace, extra = super().parse_known_args(rest, namespace)
        namespace.lightning_overrides = [*getattr(namespace, "lightning_overrides", []), *dotted]
        return namespace, extra


def register(subparsers: Any) -> None:
    from geocmid.cli import HelpFormatter

    for name, help_text in (
        ("fit", "fine-tune a task (classification, segmentation, change, detection) from a config"),
        ("validate", "evaluate a checkpoint on the validation split"),
        ("test", "evaluate a checkpoint on the test split"),
    ):
        p = subparsers.add_parser(
            name, help=help_text, description=help_text + ".\n\n" + __doc__.split("\n\n")[1],
            epilog=EPILOG, formatter_class=HelpFormatter,
        )  # fmt: skip
        p.__class__ = _FitParser  # Lightning-style dotted options (see _FitParser)
        p.add_argument(
            "--config", "-c", required=True,
            help="Lightning CLI config YAML (see recipes/finetune-*.yaml, or a run's config.yaml)",
        )  # fmt: skip
        p.add_argument(
            "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
            help="override a config value (repeatable); model.X = model.init_args.X",
        )  # fmt: skip
        p.add_argument("--ckpt", help="checkpoint to evaluate (validate/test) or resume (fit)")
        p.add_argument("--out", help="output folder (trainer.default_root_dir)")
        p.add_argument(
            "--weights",
            help="encoder weights (model.weights): a geocmid export or a CMID release; an "
            "export's card statistics also normalise the data (data.stats_from)",
        )
        p.add_argument(
            "--backbone", help="encoder architecture (model.backbone; null: from the export card)"
        )
        p.add_argument("--max-epochs", type=int, help="trainer.max_epochs")
        p.add_argument("--lr", type=float, help="head learning rate (model.lr)")
        p.add_argument(
            "--backbone-lr", type=float, help="encoder learning rate (model.backbone_lr)"
        )
        p.add_argument("--freeze-backbone", action="store_true", help="linear probe / decoder only")
        p.add_argument("--batch-size", type=int, help="data.batch_size")
        p.add_argument("--fast-dev-run", action="store_true", help="one batch of each split")
        p.set_defaults(func=run, stage=name, trailing_overrides="overrides")


def overrides_of(args: argparse.Namespace) -> list[tuple[str, Any]]:
    """``--set`` items, then Lightning-style options, then the shortcut flags, as pairs."""
    from geocmid.workflows.config import parse_overrides, parse_value

    pairs = parse_overrides(args.overrides, "--set")
    pairs += parse_overrides(getattr(args, "lightning_overrides", []), "option")
    shortcuts = {
        "trainer.default_root_dir": args.out,
        "model.backbone": parse_value(args.backbone) if args.backbone else None,
        "trainer.max_epochs": args.max_epochs,
        "model.lr": args.lr,
        "model.backbone_lr": args.backbone_lr,
        "model.freeze_backbone": True if args.freeze_backbone else None,
        "data.batch_size": args.batch_size,
        "trainer.fast_dev_run": True if args.fast_dev_run else None,
    }
    pairs += [(key, value) for key, value in shortcuts.items() if value is not None]
    if args.backbone and parse_value(args.backbone) is None:  # --backbone null: from the card
        pairs.append(("model.backbone", None))
    return pairs


def run(args: argparse.Namespace) -> int:
    from geocmid.workflows.training import fit

    result = fit(
        args.config,
        stage=args.stage,
        overrides=overrides_of(args),
        catalog=getattr(args, "catalog", None),
        ckpt=args.ckpt,
        weights=args.weights,
    )
    if args.stage == "fit":
        best = result.best_checkpoint or result.last_checkpoint
        score = (
            f" ({result.monitor} = {result.best_score:.4f})"
            if result.best_score is not None
            else ""
        )
        print(f"best checkpoint: {best or '(none saved)'}{score}")
        print(f"reports: {result.root / 'reports'}; metrics: {result.root / 'metrics.csv'}")
        return 0
    for key, value in sorted(result.metrics.items()):
        if "Classwise" not in key:
            print(f"{key:32s} {value:.4f}")
    return 0
