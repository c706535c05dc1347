"""Fine-tuning and evaluation of downstream tasks: :func:`fit`.

One function under ``geocmid fit | validate | test`` and the recipes' fine-tuning step. It takes
a plain Lightning CLI config (a file or a dict), applies ``KEY=VALUE`` overrides, refuses what a
config must not do (:func:`~geocmid.workflows.config.check_class_paths`), builds everything
through :class:`~geocmid.workflows.config.GeocmidCLI` and runs the trainer. The run folder
(``trainer.default_root_dir``) then holds::

    checkpoints/best.ckpt, last.ckpt   best by the monitored metric, and the last
    metrics.csv, events.out.tfevents.* CSV and TensorBoard logs
    reports/                           confusion matrices (PNG, CSV), sample panels (PNG)
    config.yaml                        the resolved config (with what the task read from the data)
    model_card.json                    what prediction needs (after a fit)

Validation and test runs write their logs into ``<root>/validate`` / ``<root>/test``, keeping
the training logs.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geocmid.errors import ConfigError, GeocmidError, ModelError
from geocmid.workflows.config import (
    TOP_KEYS,
    apply_overrides,
    check_class_paths,
    check_init_args,
    check_top_keys,
    is_trusted,
    load_config,
)

log = logging.getLogger(__name__)

STAGES = ("fit", "validate", "test")


@dataclass
class FitResult:
    """What a :func:`fit` run produced.

    Attributes:
        root: the run folder (``trainer.default_root_dir``; ``<root>/<stage>`` for validate/test).
        best_checkpoint: ``checkpoints/best.ckpt`` (None when nothing was monitored or saved).
        last_checkpoint: ``checkpoints/last.ckpt`` (None when not saved, e.g. fast_dev_run).
        monitor: the metric that selects the best checkpoint (e.g. ``val_mIoU``), or None.
        best_score: its best value, or None.
        metrics: the final logged metrics (validate / test: the evaluation results), as floats.
        stage: ``fit``, ``validate`` or ``test``.
        config: the resolved config as written to ``config.yaml``.
    """

    root: Path
    best_checkpoint: Path | None
    last_checkpoint: Path | None
    monitor: str | None
    best_score: float | None
    metrics: dict[str, float]
    stage: str = "fit"
    config: dict[str, Any] = field(default_factory=dict, repr=False)


# ------------------------------------------------------------------------------------------------
def prepare_config(
    config: Mapping[str, Any] | str | Path,
    *,
    stage: str = "fit",
    overrides: Iterable[tuple[str, Any] | str] = (),
    catalog: str | Path | None = None,
    ckpt: str | Path | None = None,
    weights: str | Path | None = None,
) -> tuple[dict[str, Any], str, str | None]:
    """The checked config dict :func:`fit` runs, its source name and the checkpoint to use.

    Nothing is imported outside the trusted modules and nothing runs: use it to validate a
    config (recipes' dry runs). See :func:`fit` for the arguments.

    Raises:
        ConfigError: bad file, key, value or class_path.
    """
    if stage not in STAGES:
        raise ConfigError(f"stage '{stage}'", "unknown stage", f"use one of {', '.join(STAGES)}")
    if isinstance(config, str | Path):
        where = str(config)
        raw = load_config(config)
    elif isinstance(config, Mapping):
        where = "config"
        raw = copy.deepcopy(dict(config))
        check_top_keys(raw, where)
    else:
        raise ConfigError("config", f"must be a file or a dict, got {type(config).__name__}")
    raw = apply_overrides(raw, overrides)
    check_top_keys(raw, where, TOP_KEYS)
    for section in ("model", "data"):
        node = raw.get(section)
        if not isinstance(node, dict) or not node.get("class_path"):
            example = "geocmid.tasks.SegmentationTask" if section == "model" else (
                "geocmid.datamodules.SegmentationDataModule"
            )  # fmt: skip
            raise ConfigError(
                f"{where}: {section}", "needs a class_path",
                f"e.g. {section}: {{class_path: {example}, init_args: {{...}}}}",
            )  # fmt: skip
        if node.get("init_args") is None:
            node["init_args"] = {}
    _check_short_names(raw, where)
    check_class_paths(raw, where)
    if raw.get("optimizer") is not None or raw.get("lr_scheduler") is not None:
        raise ConfigError(
            f"{where}: optimizer / lr_scheduler",
            "geocmid tasks build their own optimiser (encoder and head learning rates)",
            "set model.init_args.lr, backbone_lr, weight_decay and scheduler instead",
        )
    raw.pop("optimizer", None)
    raw.pop("lr_scheduler", None)
    ckpt_path = str(ckpt) if ckpt else raw.get("ckpt_path")
    raw.pop("ckpt_path", None)
    margs, dargs = raw["model"]["init_args"], raw["data"]["init_args"]
    if weights:
        margs["weights"] = str(weights)
        _backbone_from_card(margs, weights, overrides)
    accepted = _accepted(raw["data"]["class_path"])
    if catalog and not dargs.get("catalog") and (accepted is None or "catalog" in accepted):
        dargs["catalog"] = str(catalog)
    # normalisation as the pretrained encoder learnt it: the card's statistics (`stats_from`)
    # unless the config decides (mean / std, or stats_from given, null included)
    explicit = "stats_from" in dargs or dargs.get("mean") is not None
    wants_stats = accepted is None or "stats_from" in accepted
    if not explicit and wants_stats:
        source = ckpt_path if stage != "fit" and ckpt_path else margs.get("weights")
        if source:
            dargs["stats_from"] = str(source)
    if stage != "fit" and not ckpt_path:
        raise ConfigError(f"geocmid {stage}", "needs a checkpoint", "pass --ckpt FILE.ckpt")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise ConfigError(f"checkpoint '{ckpt_path}'", "file not found", "check the path")
    if stage != "fit":
        margs["weights"] = None  # the checkpoint brings every weight, encoder included
        if margs.get("backbone", "unset") is None:  # it came from the export's card
            margs["backbone"] = _checkpoint_backbone(str(ckpt_path))
    check_init_args(raw, where)
    trainer = raw.setdefault("trainer", {}) or {}
    raw["trainer"] = trainer
    if not trainer.get("default_root_dir"):
        trainer["default_root_dir"] = f"runs/{_task_name(raw['model']['class_path'])}"
    if stage != "fit":  # keep the training logs: evaluation logs go to a sub-folder
        trainer["default_root_dir"] = str(Path(trainer["default_root_dir"]) / stage)
    return raw, where, ckpt_path


def fit(
    config: Mapping[str, Any] | str | Path,
    *,
    stage: str = "fit",
    overrides: Iterable[tuple[str, Any] | str] = (),
    catalog: str | Path | None = None,
    ckpt: str | Path | None = None,
    weights: str | Path | None = None,
) -> FitResult:
    """Fine-tune (``stage="fit"``) or evaluate (``"validate"``, ``"test"``) a downstream task.

    Args:
        config: a Lightning CLI config: a YAML file or a dict with ``trainer``, ``model``,
            ``data`` (``class_path`` / ``init_args``) and optionally ``seed_everything``,
            ``ckpt_path``.
        stage: ``fit``, ``validate`` or ``test``.
        overrides: ``"KEY=VALUE"`` strings or ``(key, value)`` pairs
            (:func:`~geocmid.workflows.config.parse_overrides`); ``model.X`` / ``data.X``
            reach ``init_args.X``.
        catalog: catalog folder for ``data.init_args.catalog`` when the config has none.
        ckpt: checkpoint to resume (fit) or to evaluate (validate / test, required).
        weights: encoder weights for ``model.init_args.weights`` (a geocmid export or a CMID
            release); an export's card statistics also normalise the data
            (``data.init_args.stats_from``) unless the config sets ``mean`` / ``stats_from``.

    Returns:
        :class:`FitResult`.

    Raises:
        ConfigError: bad input (file, key, value, class_path, missing checkpoint).
        ModelError: weights or checkpoint that do not fit the data; a fit that trained no step
            or ended with a non-finite loss.
    """
    raw, where, ckpt_path = prepare_config(
        config, stage=stage, overrides=overrides, catalog=catalog, ckpt=ckpt, weights=weights
    )
    from geocmid.tasks.guards import status_of_error, write_status

    if ckpt_path:
        check_checkpoint(ckpt_path)
    cli = build_cli(raw, where)
    trainer, model, datamodule = cli.trainer, cli.model, cli.datamodule
    root = Path(trainer.default_root_dir)
    root.mkdir(parents=True, exist_ok=True)
    if stage == "fit" and not ckpt_path:
        last = root / "checkpoints" / "last.ckpt"
        if last.is_file():  # rerunning the same command continues an interrupted run
            check_checkpoint(last)
            ckpt_path = str(last)
            log.info(
                "resuming from %s (same command: same run; --out NEW_FOLDER starts afresh)", last
            )
    preflight = getattr(datamodule, "preflight", None)
    if callable(preflight):  # splits too small or all nodata: refused before training
        preflight()
    for logger in trainer.loggers:  # start the log writers first: they expect an empty folder
        _ = logger.experiment
    resolved = resolved_config(cli)
    _write_yaml(root / "config.yaml", resolved)
    if stage == "fit":
        write_status(root, "running", stage=stage, resumed_from=ckpt_path)
        try:
            _run_trainer(trainer, trainer.fit, model, datamodule, ckpt_path, where)
            _check_learned(trainer, where)
        except BaseException as error:
            write_status(root, status_of_error(error), _message(error), stage=stage,
                         epoch=int(trainer.current_epoch), global_step=int(trainer.global_step))
            raise
        write_status(root, "done", stage=stage, epoch=int(trainer.current_epoch),
                     global_step=int(trainer.global_step))  # fmt: skip
        metrics = _floats(trainer.callback_metrics)
    else:
        runner = trainer.validate if stage == "validate" else trainer.test
        results = _run_trainer(
            trainer, runner, model, datamodule, ckpt_path, where, weights_only=True
        )
        metrics = _floats(results[0] if results else {})
    resolved = resolved_config(cli, model)  # now with what the task read from the data
    _write_yaml(root / "config.yaml", resolved)
    if stage == "fit" and trainer.is_global_zero and callable(getattr(model, "model_card", None)):
        _write_text(root / "model_card.json", json.dumps(model.model_card(), indent=2))
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") or ""
    last = getattr(callback, "last_model_path", "") or ""
    score = getattr(callback, "best_model_score", None)
    return FitResult(
        root=root,
        best_checkpoint=Path(best) if best else None,
        last_checkpoint=Path(last) if last else None,
        monitor=getattr(callback, "monitor", None),
        best_score=float(score) if score is not None else None,
        metrics=metrics,
        stage=stage,
        config=resolved,
    )


def _run_trainer(
    trainer: Any, method: Any, model: Any, datamodule: Any, ckpt_path: str | None, where: str,
    **kwargs: Any,
) -> Any:
    """``trainer.fit / validate / test``; Ctrl-C / SIGTERM (Lightning turns them into
    ``sys.exit(1)``) come out as :class:`KeyboardInterrupt`, a checkpoint that does not fit
    the model as a :class:`ModelError`."""
    try:
        return method(model, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
    except SystemExit as error:
        if getattr(trainer, "interrupted", False):
            raise KeyboardInterrupt("training interrupted") from None
        raise error
    except RuntimeError as error:
        text = str(error)
        if ckpt_path and ("state_dict" in text or "size mismatch" in text):
            # torch's first line only says "Error(s) in loading state_dict for X:"; the keys
            # and shapes that differ follow on the next lines
            lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
            detail = "; ".join(lines[1:3]) if len(lines) > 1 else lines[0]
            detail = detail[:400] + (" ..." if len(detail) > 400 else "")
            raise ModelError(
                f"checkpoint '{ckpt_path}'",
                "does not fit this model: " + detail,
                "resume with the config it was trained with, or start afresh in another "
                "folder (--out / trainer.default_root_dir)",
            ) from None
        raise


def _backbone_from_card(
    margs: dict[str, Any], weights: str | Path, overrides: Iterable[tuple[str, Any] | str]
) -> None:
    """With ``--weights`` of a geocmid export, the architecture is the one the card names:
    a config's ``model.backbone`` (the shipped configs name one for training from scratch) is
    replaced, with a line saying so, unless the user set it on the command line."""
    keys = {
        (o[0] if isinstance(o, tuple) else str(o).split("=", 1)[0]).strip() for o in overrides
    }
    card_file = Path(weights).with_suffix(".json")
    if keys & {"model.backbone", "model.init_args.backbone"} or not card_file.is_file():
        return
    from geocmid.models.backbones import resolve_name
    from geocmid.models.card import ModelCard

    architecture = ModelCard.from_file(card_file).architecture
    current = margs.get("backbone")
    if architecture and current and resolve_name(str(current)) != resolve_name(architecture):
        log.info("backbone %s, from the card of %s (the config names %s)", architecture,
                 weights, current)  # fmt: skip
        margs["backbone"] = architecture


def check_checkpoint(path: str | Path) -> None:
    """Refuse, with one line, a checkpoint ``torch.load(weights_only=True)`` cannot read
    (foreign pickles, truncated files) before training starts.

    Raises:
        ModelError: naming the file, why, and the fix.
    """
    import pickle

    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise ModelError(
            f"checkpoint '{path}'",
            "holds Python objects that torch.load(weights_only=True) refuses to unpickle "
            f"(not a plain Lightning/geocmid checkpoint: {first[:160]})",
            "use a checkpoint geocmid or Lightning wrote (RUN_DIR/checkpoints/*.ckpt); if you "
            "trust the file, load it in Python and save its state_dict with torch.save",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        if isinstance(error, OSError) and error.errno is not None:
            raise
        raise ModelError(
            f"checkpoint '{path}'", f"cannot be read ({str(error).strip()[:200]})",
            "the file is truncated or not a checkpoint: use another one (a killed run keeps "
            "its previous last.ckpt)",
        ) from None  # fmt: skip


def _message(error: BaseException) -> str:
    if isinstance(error, GeocmidError):
        return error.format()
    if isinstance(error, KeyboardInterrupt):
        return "interrupted (Ctrl-C or SIGTERM): rerun the same command to resume"
    return f"{type(error).__name__}: {error}"


# ------------------------------------------------------------------------------------------------
def build_cli(raw: dict[str, Any], where: str) -> Any:
    """:class:`GeocmidCLI` over a checked config dict (``run=False``); parse errors of
    jsonargparse become a :class:`ConfigError` naming the file and the key."""
    from jsonargparse import ArgumentError
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from geocmid.workflows.lightning_cli import GeocmidCLI

    try:
        return GeocmidCLI(args=raw, run=False)
    except GeocmidError:
        raise
    except (ArgumentError, SystemExit) as error:
        key, problem = parse_error(error)
        fix = "check the value (the config's comments say what it takes)"
        raise ConfigError(f"{where}: {key}" if key else where, problem, fix) from None
    except (MisconfigurationException, ValueError) as error:  # e.g. Trainer(...) refused a value
        raise ConfigError(
            where, str(error).strip().splitlines()[0],
            "fix the setting the message names (trainer settings: Lightning's Trainer docs)",
        ) from None  # fmt: skip


def parse_error(error: BaseException) -> tuple[str, str]:
    """``(dotted key, problem)`` from a jsonargparse error, whose reason is nested under
    ``Parser key "..."`` lines (the innermost is the key at fault)."""
    text = str(error).strip() or "the config could not be parsed"
    text = re.sub(r"<class '([\w.]+)'>", r"\1", text).replace("NoneType", "null")
    keys = re.findall(r'Parser key "([^"]+)"', text)
    key = ""
    if keys:
        key = keys[0]
        inner = keys[-1]
        if len(keys) > 1 and inner != keys[0]:
            key = f"{keys[0]}.init_args.{inner}" if keys[0] in ("model", "data") else inner
        elif len(keys) > 1 and keys[0] in ("model", "data"):
            key = f"{keys[0]}.init_args.{inner}"
    literal = re.search(r"Expected a typing\.Literal\[(.*?)\]\. Got value: (.*)", text)
    if literal:
        return key, f"must be one of {literal.group(1)}, got '{literal.group(2).strip()}'"
    expected = re.search(r"Expected a (.*?)\. Got value: (.*)", text)
    if expected:
        return key, f"expected {expected.group(1)}, got '{expected.group(2).strip()}'"
    union = re.findall(r"- Expected a ([^\n]+?)\.?$", text, flags=re.MULTILINE)
    if union:
        given = re.search(r"Given value: (.*)", text)
        got = f", got '{given.group(1).strip()}'" if given else ""
        return key, f"expected {' or '.join(union)}{got}"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [ln for ln in lines if not ln.startswith(("Given value", "Subtypes"))]
    return key, " ".join(useful or lines)[:800]


def resolved_config(cli: Any, model: Any = None) -> dict[str, Any]:
    """The parsed config with every default, as a plain dict; with ``model``, the task
    arguments it read from the data replace the config's ``null``s."""
    dumped = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True)) or {}
    dumped.pop("config", None)
    if model is not None:
        from geocmid.tasks.common import DATA_ARGS

        init_args = dumped.get("model", {}).get("init_args")
        hparams = getattr(model, "hparams", {})
        if isinstance(init_args, dict):
            for key in (*DATA_ARGS, "backbone"):
                if key in init_args and init_args[key] is None and hparams.get(key) is not None:
                    init_args[key] = _plain(hparams[key])
    return dumped


def _checkpoint_backbone(path: str) -> str | None:
    """The encoder architecture recorded in a fine-tuned checkpoint (hparams or card)."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a foreign or damaged file
        raise ModelError(f"checkpoint '{path}'", f"cannot be read ({error})") from None
    hparams = ckpt.get("hyper_parameters") or {}
    card = ckpt.get("geocmid_card") or {}
    return hparams.get("backbone") or card.get("backbone") or card.get("architecture") or None


def _plain(value: Any) -> Any:
    """Tuples and other sequences → lists, so the YAML is plain."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _check_learned(trainer: Any, where: str) -> None:
    """A fit that trained nothing, or whose loss is not finite, is a failure."""
    if trainer.global_step == 0:
        raise ModelError(
            where, "no training step ran (empty training split, or max_epochs / max_steps 0)",
            "check data.chips_per_epoch / batch_size and trainer.max_epochs",
        )  # fmt: skip
    for key, value in trainer.callback_metrics.items():
        if key.startswith("train_loss") and not math.isfinite(float(value)):
            raise ModelError(
                where, f"the training loss is not finite ({key} = {float(value)})",
                "lower model.init_args.lr, check the data's normalisation (nodata values?)",
            )  # fmt: skip


def _floats(metrics: Mapping[str, Any]) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        try:
            number = float(value)
        except (TypeError, ValueError, RuntimeError):
            continue  # per-class tensors and the like
        out[str(key)] = number
    return out


def _task_name(class_path: str) -> str:
    """Registry name of a task class path (``segmentation`` …), else the lower-cased class."""
    from geocmid.registry import task_of_class_path

    return task_of_class_path(class_path) or class_path.rsplit(".", 1)[-1].lower() or "run"


def _accepted(class_path: str) -> set[str] | None:
    """Init arguments of a trusted class, or None when unknown (short names, untrusted)."""
    from geocmid.workflows.config import _import_trusted, accepted_init_args

    if "." not in class_path or not is_trusted(class_path):
        return None
    cls = _import_trusted(class_path, "data.class_path")
    return accepted_init_args(cls) if isinstance(cls, type) else None


def _check_short_names(raw: dict[str, Any], where: str) -> None:
    """geocmid <= 0.x short names (``segmentation``, ``chips`` …) → the class path to write."""
    from geocmid.errors import did_you_mean
    from geocmid.registry import TASKS

    old_data = {
        "segmentation": "geocmid.datamodules.SegmentationDataModule",
        "change": "geocmid.datamodules.SegmentationDataModule",
        "chips": "geocmid.datamodules.FeatureChipDataModule",
        "image_folder": "geocmid.datamodules.ImageFolderDataModule",
        "detection": "geocmid.datamodules.DetectionDataModule",
    }
    choices = {
        "model": {name: record.task_class for name, record in TASKS.items()},
        "data": old_data,
    }
    for section, names in choices.items():
        path = raw[section]["class_path"]
        if not isinstance(path, str) or "." in path:
            continue
        if path in names:
            raise ConfigError(
                f"{where}: {section}.class_path",
                f"'{path}' is a geocmid short name, not a class",
                f"write the class path: class_path: {names[path]}",
            )
        near = did_you_mean(path, names)
        if near:
            guess = names[near.split("'")[1]]
            raise ConfigError(
                f"{where}: {section}.class_path",
                f"unknown class '{path}'{near}",
                f"write the class path: class_path: {guess}",
            )


def _write_yaml(path: Path, data: dict[str, Any]) -> None:
    _write_text(path, yaml.safe_dump(_plain(data), sort_keys=False))


def _write_text(path: Path, text: str) -> None:
    """Write under a temporary name, then rename (no half-written file under the final name)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


__all__ = ["STAGES", "FitResult", "build_cli", "fit", "prepare_config", "resolved_config"]
