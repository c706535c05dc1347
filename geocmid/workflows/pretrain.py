"""CMID pretraining as a workflow: :func:`pretrain` runs a Lightning CLI config.

The config is a plain Lightning CLI config (what ``torchgeo fit`` and any ``LightningCLI``
read)::

    seed_everything: 322
    trainer: {max_epochs: 200, default_root_dir: runs/cmid, callbacks: [...]}
    model:
      class_path: geocmid.cmid.CMIDTask          # its signature holds the paper's defaults
      init_args: {backbone: resnet50, base_lr: 4.0e-3}
    data:
      class_path: geocmid.datamodules.PretrainDataModule
      init_args: {entry: MY-ENTRY, catalog: data_catalog}

What :func:`pretrain` adds to running it with ``LightningCLI``:

* a config may leave anything out: ``model`` / ``data`` default to the classes above, and
  :data:`TRAINER_DEFAULTS`, ``seed_everything`` (:data:`SEED`) and the health and quick-look
  callbacks (:data:`DEFAULT_CALLBACKS`) are filled in;
* overrides (``model.mask_ratio=0.5``, ``trainer.max_epochs=5``; callbacks by class name:
  ``trainer.callbacks.QuickLook.every_n_epochs=1``, ``trainer.callbacks.RankStateDump=true``);
* checks before anything runs, each naming the setting: unknown keys (did-you-mean), types, the
  backbone, the optimizer, the chip size against the mask block and backbone stride, and the
  band count, band names, chip size, batch and statistics against the data;
* multi-device runs get DDP with ``broadcast_buffers=False`` (queue and centre stay equal by
  all-gather / all-reduce) and, for ResNets on GPUs, SyncBN (:func:`distributed_settings`);
* the run folder (``trainer.default_root_dir``): ``config.yaml`` (the resolved config, which
  ``LightningCLI`` / ``torchgeo fit --config`` accept), ``checkpoints/last.ckpt`` (every epoch),
  ``tensorboard/`` and ``csv/`` logs, ``quicklook/``; rerunning resumes from ``last.ckpt``;
* a run that took no optimizer step or ended with a non-finite loss fails.

The settings of the former flat ``geocmid pretrain`` schema map to these keys as
:data:`OLD_KEYS` says. Importing this module is cheap (no torch, no Lightning).
"""

from __future__ import annotations

import ast
import copy
import logging
import math
import os
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from geocmid.errors import ConfigError, GeocmidError, did_you_mean
from geocmid.workflows.config import (
    apply_overrides,
    check_class_paths,
    check_init_args,
    check_top_keys,
    load_config,
    parse_overrides,
)

log = logging.getLogger(__name__)

#: ``model.class_path`` / ``data.class_path`` when a config gives none.
TASK_CLASS = "geocmid.cmid.CMIDTask"
DATA_CLASS = "geocmid.datamodules.PretrainDataModule"
#: ``seed_everything`` when a config gives none (the official code's seed).
SEED = 322
#: Trainer settings of a pretraining run unless the config sets them (on top of GeocmidCLI's
#: ``accelerator: auto`` and ``use_distributed_sampler: false``).
TRAINER_DEFAULTS: dict[str, Any] = {
    "default_root_dir": "runs/cmid",
    "max_epochs": 200,
    "devices": 1,
    "precision": "32-true",
    "log_every_n_steps": 1,
}
#: Callbacks every pretraining run has; added unless the config lists one of the class.
DEFAULT_CALLBACKS = ("HealthMonitor", "QuickLook")
#: Callbacks that overrides may add by class name (``trainer.callbacks.NAME...``).
KNOWN_CALLBACKS = {
    "HealthMonitor": "geocmid.cmid.callbacks.HealthMonitor",
    "QuickLook": "geocmid.cmid.callbacks.QuickLook",
    "RankStateDump": "geocmid.cmid.callbacks.RankStateDump",
    # last.ckpt every N steps too: trainer.callbacks.RunCheckpoint.last_every_n_steps=500
    "RunCheckpoint": "geocmid.tasks.guards.RunCheckpoint",
}
#: Command-line shortcuts (``geocmid pretrain --entry X``, recipe step keys) → config keys.
SHORTCUTS = {
    "entry": "data.entry",
    "catalog": "data.catalog",
    "backbone": "model.backbone",
    "chip_size": "data.chip_size",
    "batch_size": "data.batch_size",
    "epochs": "trainer.max_epochs",
    "devices": "trainer.devices",
    "precision": "trainer.precision",
    "run_dir": "trainer.default_root_dir",
}
_HM, _QL = "trainer.callbacks.HealthMonitor", "trainer.callbacks.QuickLook"
_OPTIM_KEYS = ("optimizer", "base_lr", "lr_reference_batch", "weight_decay", "betas",
               "warmup_epochs", "warmup_start", "min_lr")  # fmt: skip
#: Keys of the former flat pretraining schema (geocmid <= 0.x) → keys of the Lightning CLI
#: config, as overrides take them (``model.X`` / ``data.X`` stand for ``*.init_args.X``).
#: Keys not listed kept their name (``data.*``, ``model.*``, ``trainer.*``).
OLD_KEYS: dict[str, str] = {
    **{f"optim.{k}": f"model.{k}" for k in _OPTIM_KEYS},
    "trainer.seed": "seed_everything",
    "health.every_n_epochs": f"{_HM}.every_n_epochs",
    "health.knn_entry": f"{_HM}.knn_entry",
    "health.knn_k": f"{_HM}.knn_k",
    "health.knn_temperature": f"{_HM}.knn_temperature",
    "health.knn_max_images": f"{_HM}.knn_max_images",
    "health.quicklook_every_n_epochs": f"{_QL}.every_n_epochs",
    "debug.dump_rank_state": "trainer.callbacks.RankStateDump",
    "run_dir": "trainer.default_root_dir",
}
#: Config sections of the former schema (a config using them is an old one).
_OLD_SECTIONS = ("optim", "health", "debug", "run_dir")
#: Main trainer settings, listed by ``--help`` and :func:`settings`.
TRAINER_SETTINGS: dict[str, str] = {
    "default_root_dir": "run folder: checkpoints, logs, quick-looks, config.yaml",
    "max_epochs": "epochs in total (a resumed run continues up to this)",
    "devices": "devices per node (int, 'auto' or a list); DDP when more than one",
    "num_nodes": "nodes",
    "accelerator": "cpu, gpu, auto",
    "precision": "32-true, 16-mixed, bf16-mixed",
    "strategy": "auto, ddp, ... (DDP without buffer broadcast when devices > 1)",
    "accumulate_grad_batches": "batches per optimizer step",
    "limit_train_batches": "batches per epoch cap (int) or fraction (float)",
    "log_every_n_steps": "logger write interval in steps",
    "gradient_clip_val": "gradient norm clip (paper: none)",
}


@dataclass
class PretrainResult:
    """What :func:`pretrain` did.

    Attributes:
        run_dir: the run folder (``trainer.default_root_dir``).
        last_checkpoint: ``run_dir/checkpoints/last.ckpt`` (absent after a dry run).
        epochs: epochs completed in total (0 after a dry run).
        global_step: optimizer steps taken in total (0 after a dry run).
        config: the resolved config (Lightning CLI layout), as written to
            ``run_dir/config.yaml``; data-derived task arguments left to the data.
        data_args: the task arguments taken from the data (bands, statistics, chip size, ...).
        resumed: whether training continued from ``last_checkpoint``.
    """

    run_dir: Path
    last_checkpoint: Path
    epochs: int
    global_step: int
    config: dict[str, Any]
    data_args: dict[str, Any] = field(default_factory=dict)
    resumed: bool = False

    def resolved_config(self) -> dict[str, Any]:
        """``config`` with the data-derived task arguments filled in (what the run uses)."""
        config = copy.deepcopy(self.config)
        config["model"]["init_args"].update(copy.deepcopy(self.data_args))
        return config


# ------------------------------------------------------------------------------------------------
# settings from the signatures (read from the source: no torch import, one definition)
_PACKAGE = Path(__file__).resolve().parents[1]
_SIGNATURES = {
    "model": (_PACKAGE / "cmid" / "task.py", "CMIDTask"),
    "data": (_PACKAGE / "datamodules" / "pretrain.py", "PretrainDataModule"),
    "trainer.callbacks.HealthMonitor": (_PACKAGE / "cmid" / "callbacks.py", "HealthMonitor"),
    "trainer.callbacks.QuickLook": (_PACKAGE / "cmid" / "callbacks.py", "QuickLook"),
}


@cache
def _signature(path: Path, cls: str) -> tuple[tuple[str, Any, str, str], ...]:
    """``(name, default, type, help)`` of ``cls.__init__``'s keyword arguments, from the source.

    Defaults are the literal values of the signature (``REQUIRED`` when there is none); help is
    the argument's line(s) in the class docstring's ``Args:`` section.
    """
    tree = ast.parse(path.read_text())
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls)
    init = next(n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[1:] + init.args.kwonlyargs
    positional = init.args.args[1:]
    defaults = [None] * (len(positional) - len(init.args.defaults)) + list(init.args.defaults)
    defaults += list(init.args.kw_defaults)
    helps = _docstring_args(ast.get_docstring(node) or "")
    constants = _module_constants(tree)
    out = []
    for arg, default in zip(args, defaults, strict=True):
        if default is None:
            value: Any = REQUIRED
        elif isinstance(default, ast.Name) and default.id in constants:
            value = constants[default.id]  # e.g. match_fraction = PAPER_MATCH_FRACTION
        else:
            try:
                value = ast.literal_eval(default)
            except ValueError:
                value = ast.unparse(default)
        kind = ast.unparse(arg.annotation) if arg.annotation is not None else ""
        out.append((arg.arg, value, kind, helps.get(arg.arg, "")))
    return tuple(out)


def _module_constants(tree: ast.Module, depth: int = 0) -> dict[str, Any]:
    """Module-level ``NAME = value`` constants of a source file: literals, and arithmetic on
    literals and earlier constants (``PAPER_MATCH_FRACTION = 20 / 49``)."""
    out: dict[str, Any] = {}
    for node in tree.body:  # constants imported from other geocmid modules
        geocmid_module = (node.module or "").startswith("geocmid.") if isinstance(
            node, ast.ImportFrom) else False  # fmt: skip
        if isinstance(node, ast.ImportFrom) and geocmid_module and depth < 3:
            base = _PACKAGE.parent / Path(*str(node.module).split("."))
            source = base.with_suffix(".py") if base.with_suffix(".py").is_file() else (
                base / "__init__.py"
            )  # fmt: skip
            if source.is_file():
                names = _module_constants(ast.parse(source.read_text()), depth + 1)
                out.update({a.asname or a.name: names[a.name] for a in node.names
                            if a.name in names})  # fmt: skip
    for node in tree.body:
        target = value = None
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        if not isinstance(target, ast.Name) or value is None:
            continue
        try:
            out[target.id] = ast.literal_eval(value)
        except ValueError:
            allowed = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Name,
                       ast.operator, ast.unaryop, ast.Load)  # fmt: skip
            expr = ast.Expression(value)
            if all(isinstance(n, allowed) for n in ast.walk(expr)) and all(
                n.id in out for n in ast.walk(expr) if isinstance(n, ast.Name)
            ):
                code = compile(expr, "<constant>", "eval")
                out[target.id] = eval(code, {"__builtins__": {}}, dict(out))
    return out


class _Required:
    def __repr__(self) -> str:
        return "required"


#: Marks a setting without a default.
REQUIRED: Any = _Required()


def _docstring_args(doc: str) -> dict[str, str]:
    """``{name: text}`` of a Google-style ``Args:`` section (continuation lines joined)."""
    out: dict[str, str] = {}
    lines = doc.split("Args:", 1)[1].splitlines() if "Args:" in doc else []
    name = None
    for line in lines:
        if line.strip() and not line.startswith(" "):
            break  # next section
        match = re.match(r"^    (\w+)(?: \(.*?\))?:\s*(.*)$", line)
        if match:
            name = match.group(1)
            out[name] = match.group(2).strip()
        elif name and line.startswith("        "):
            out[name] += " " + line.strip()
    return out


def settings() -> dict[str, tuple[Any, str]]:
    """Every documented setting of a pretraining config: ``{key: (default, help)}``.

    Keys as overrides take them: ``model.X``, ``data.X``, ``trainer.X`` (the main ones, with the
    pretraining defaults), ``trainer.callbacks.HealthMonitor.X``,
    ``trainer.callbacks.QuickLook.X``, and ``seed_everything``. Defaults come from the
    signatures of the classes (read from their source, without importing torch).
    """
    out: dict[str, tuple[Any, str]] = {}
    for prefix, (path, cls) in _SIGNATURES.items():
        for name, default, _, text in _signature(path, cls):
            if prefix.startswith("trainer.callbacks") and name in ("out_dir", "rgb_indices"):
                text = text or "(run-derived)"
            out[f"{prefix}.{name}"] = (default, text)
    lightning = _trainer_defaults()
    for key, text in TRAINER_SETTINGS.items():
        out[f"trainer.{key}"] = (TRAINER_DEFAULTS.get(key, lightning.get(key)), text)
    out["seed_everything"] = (SEED, "seed of weights, chips order and views (one per run)")
    return out


@cache
def _trainer_defaults() -> dict[str, Any]:
    """Lightning's Trainer defaults, read from its source (importing Lightning takes seconds)."""
    import importlib.util

    spec = importlib.util.find_spec("lightning")
    if spec is None or spec.origin is None:  # pragma: no cover - Lightning is a dependency
        return {}
    path = Path(spec.origin).parent / "pytorch" / "trainer" / "trainer.py"
    try:
        return {name: default for name, default, _, _ in _signature(path, "Trainer")}
    except (OSError, StopIteration, SyntaxError):  # pragma: no cover - another layout
        return {}


# ------------------------------------------------------------------------------------------------
# config assembly
def _short_name(class_path: Any) -> str:
    return str(class_path).rsplit(".", 1)[-1]


def _callbacks(trainer: dict[str, Any]) -> list[Any]:
    callbacks = trainer.get("callbacks")
    if callbacks is None:
        callbacks = trainer["callbacks"] = []
    elif isinstance(callbacks, Mapping):
        callbacks = trainer["callbacks"] = [callbacks]
    return callbacks


def _callback_index(callbacks: list[Any], name: str) -> int | None:
    for i, cb in enumerate(callbacks):
        if isinstance(cb, Mapping) and _short_name(cb.get("class_path")) == name:
            return i
    return None


def apply_pretrain_overrides(
    config: dict[str, Any], overrides: Iterable[tuple[str, Any]]
) -> dict[str, Any]:
    """:func:`~geocmid.workflows.config.apply_overrides`, one at a time, plus callbacks by name.

    ``trainer.callbacks.NAME.ARG=VALUE`` sets an init argument of the callback of class NAME
    (added if the config has none), ``trainer.callbacks.NAME=true`` adds NAME with its
    defaults, ``=false`` / ``=null`` removes it, ``={...}`` sets all its init_args. NAME is a
    class name among the config's callbacks or :data:`KNOWN_CALLBACKS`. Returns a new dict.
    """
    config = copy.deepcopy(config)
    for key, value in overrides:
        parts = key.split(".")
        if len(parts) < 3 or parts[:2] != ["trainer", "callbacks"] or parts[2].isdigit():
            config = apply_overrides(config, [(key, value)])
            continue
        name = parts[2]
        config["trainer"] = config.get("trainer") or {}
        callbacks = _callbacks(config["trainer"])
        index = _callback_index(callbacks, name)
        if len(parts) == 3 and value in (False, None):
            if index is not None:
                callbacks.pop(index)
            continue
        if index is None:
            if name not in KNOWN_CALLBACKS:
                known = sorted({*KNOWN_CALLBACKS, *(_short_name(c.get("class_path"))
                                for c in callbacks if isinstance(c, Mapping))})  # fmt: skip
                raise ConfigError(
                    f"override '{key}'",
                    f"no callback '{name}' in the config{did_you_mean(name, known)}",
                    f"callbacks addressed by name: {', '.join(known)}",
                )
            callbacks.append({"class_path": KNOWN_CALLBACKS[name], "init_args": {}})
            index = len(callbacks) - 1
        callback = callbacks[index] = dict(callbacks[index])
        if len(parts) == 3:
            if isinstance(value, Mapping):
                callback["init_args"] = dict(value)
            elif value is not True:
                raise ConfigError(
                    f"override '{key}'", f"expected true, false or a mapping, got {value!r}",
                    f"e.g. {key}=true, or {key}.ARGUMENT=VALUE",
                )  # fmt: skip
            continue
        init_args = callback["init_args"] = dict(callback.get("init_args") or {})
        nested = apply_overrides({"a": init_args}, [(".".join(["a", *parts[3:]]), value)])
        callback["init_args"] = nested["a"]
    return config


def _old_key_error(key: str, where: str) -> ConfigError | None:
    """A ConfigError pointing at the new name of a key of the former flat schema, if it is one."""
    head = key.split(".")[0]
    if key in OLD_KEYS or head in _OLD_SECTIONS:
        new = OLD_KEYS.get(key)
        return ConfigError(
            f"{where}: '{key}'",
            "is a setting of the former `geocmid pretrain` schema"
            + (f"; it is now '{new}'" if new else ""),
            "pretraining configs are Lightning CLI configs now (see recipes/pretrain-*.yaml); "
            "`geocmid pretrain --help` lists the settings",
        )
    return None


def _check_old_layout(config: Mapping[str, Any], where: str) -> None:
    for section in _OLD_SECTIONS:
        if section in config:
            value = config[section]
            first = next(iter(value), None) if isinstance(value, Mapping) else None
            error = _old_key_error(f"{section}.{first}" if first else section, where)
            assert error is not None
            raise error
    for section in ("model", "data"):
        node = config.get(section)
        if isinstance(node, Mapping) and node and not ({"class_path", "init_args"} & set(node)):
            key = next(iter(node))
            raise ConfigError(
                f"{where}: '{section}.{key}'",
                f"'{section}' holds settings directly (the former `geocmid pretrain` layout)",
                f"put them under {section}.init_args (see recipes/pretrain-*.yaml)",
            )


def assemble(
    config: Mapping[str, Any] | str | Path,
    overrides: Iterable[str | tuple[str, Any]] = (),
    catalog: str | Path | None = None,
) -> tuple[dict[str, Any], str]:
    """The raw pretraining config: file or dict + defaults + overrides, checked without data.

    Checks: top-level keys, the former schema's keys (naming their new place), class paths
    (``model`` must be a :class:`~geocmid.cmid.task.CMIDTask`), init_args names (did-you-mean).

    Args:
        config: a dict, or the path of a YAML file.
        overrides: ``"KEY=VALUE"`` strings or ``(key, value)`` pairs (see the module doc).
        catalog: catalog folder used when ``data.init_args.catalog`` is unset.

    Returns:
        ``(config, where)``: the assembled dict and the name used in error messages.
    """
    if isinstance(config, str | Path):
        where = str(config)
        raw = load_config(config, top_keys=(*_TOP_KEYS, *_OLD_SECTIONS))
    else:
        where = "config"
        raw = copy.deepcopy(dict(config))
    _check_old_layout(raw, where)
    check_top_keys(raw, where, _TOP_KEYS)
    pairs = [parse_overrides([o])[0] if isinstance(o, str) else tuple(o) for o in overrides]
    for key, _ in pairs:
        if error := _old_key_error(key, "override"):
            raise error
    raw = _with_defaults(raw)
    raw = apply_pretrain_overrides(raw, pairs)
    data_args = raw["data"].setdefault("init_args", {}) or {}
    raw["data"]["init_args"] = data_args
    if data_args.get("catalog") is None and catalog is not None:
        data_args["catalog"] = str(catalog)
    if raw["data"].get("class_path") == DATA_CLASS and data_args.get("entry"):
        # chip datasets and torchgeo_dataset entries: their own datamodule (issue #10)
        from geocmid.datamodules.chip_pretrain import pretrain_datamodule_for

        chosen = pretrain_datamodule_for(str(data_args["entry"]), data_args.get("catalog"))
        raw["data"]["class_path"] = chosen or DATA_CLASS
    check_class_paths(raw, where)
    _check_task_class(raw, where)
    check_init_args(raw, where)
    return raw, where


_TOP_KEYS = ("seed_everything", "trainer", "model", "data")


def _with_defaults(raw: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    for section, class_path in (("model", TASK_CLASS), ("data", DATA_CLASS)):
        node = raw.get(section)
        if node is None:
            raw[section] = {"class_path": class_path, "init_args": {}}
        elif isinstance(node, str):
            raw[section] = {"class_path": node, "init_args": {}}
        elif isinstance(node, Mapping):
            raw[section] = dict(node)
            raw[section].setdefault("class_path", class_path)
            if raw[section].get("init_args") is None:
                raw[section]["init_args"] = {}
    if raw.get("seed_everything") is None:
        raw["seed_everything"] = SEED
    trainer = raw.get("trainer") or {}
    raw["trainer"] = trainer
    for key, value in TRAINER_DEFAULTS.items():
        if trainer.get(key) is None:
            trainer[key] = value
    callbacks = _callbacks(trainer)
    for name in DEFAULT_CALLBACKS:
        if _callback_index(callbacks, name) is None:
            callbacks.append({"class_path": KNOWN_CALLBACKS[name], "init_args": {}})
    return raw


def _check_task_class(raw: Mapping[str, Any], where: str) -> None:
    from geocmid.workflows.config import _import_trusted

    class_path = raw["model"].get("class_path")
    if _short_name(class_path) == "CMIDTask":
        return
    from geocmid.cmid.task import CMIDTask

    cls = _import_trusted(str(class_path), f"{where}: model.class_path")
    if not (isinstance(cls, type) and issubclass(cls, CMIDTask)):
        raise ConfigError(
            f"{where}: model.class_path",
            f"'{class_path}' is not a CMID pretraining task",
            f"geocmid pretrain trains {TASK_CLASS} (or a subclass); use `geocmid fit` for others",
        )


# ------------------------------------------------------------------------------------------------
# checks that need no data, and the distributed settings
def _task_args(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The task's arguments: its signature's defaults updated by the config's init_args."""
    path, cls = _SIGNATURES["model"]
    args = {name: default for name, default, _, _ in _signature(path, cls)}
    args.update(raw["model"].get("init_args") or {})
    return args


def check_task_args(raw: Mapping[str, Any], where: str) -> None:
    """Backbone, optimizer, two-value schedules and the mask block / chip size, before parsing.

    (The task checks them too, but an error raised while jsonargparse instantiates it comes
    wrapped in a type-union message.)
    """
    from geocmid.cmid.task import OPTIMIZERS, check_chip_size
    from geocmid.models.backbones import resolve_name

    args = _task_args(raw)
    data = raw["data"].get("init_args") or {}
    key = "model.init_args"
    try:
        resolve_name(str(args["backbone"]))
    except ConfigError as error:
        raise ConfigError(f"{where}: setting '{key}.backbone'", error.problem, error.fix) from None
    optimizer = str(args["optimizer"]).lower()
    if optimizer not in OPTIMIZERS:
        raise ConfigError(
            f"{where}: setting '{key}.optimizer'",
            f"unknown optimizer '{args['optimizer']}'{did_you_mean(optimizer, OPTIMIZERS)}",
            "use adan (the paper's) or adamw",
        )
    chip, chip_key = data.get("chip_size"), "data.init_args.chip_size"
    if chip is None and _short_name(raw["data"].get("class_path")) == "PretrainDataModule":
        chip = {n: d for n, d, _, _ in _signature(*_SIGNATURES["data"])}["chip_size"]
    if args.get("chip_size") is not None:
        chip, chip_key = args["chip_size"], f"{key}.chip_size"
    if isinstance(chip, int) and isinstance(args["mask_block"], int):
        try:
            check_chip_size(str(args["backbone"]), chip, args["mask_block"], chip_key=chip_key)
        except ConfigError as error:
            raise ConfigError(f"{where}: {error.where}", error.problem, error.fix) from None
    entry_missing = "entry" not in data or data.get("entry") in (None, "")
    if _short_name(raw["data"].get("class_path")) == "PretrainDataModule" and entry_missing:
        raise ConfigError(
            f"{where}: setting 'data.init_args.entry'",
            "is not set: which imagery catalog entry to pretrain on?",
            "pass --entry NAME, or set data.init_args.entry (`geocmid catalog list` shows them)",
        )


def _device_count(devices: Any, accelerator: str) -> int:
    import torch

    gpus = torch.cuda.device_count() if accelerator in ("auto", "gpu", "cuda") else 0
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text == "auto":
            return max(gpus, 1)
        if "," in text:
            return len([d for d in text.split(",") if d.strip()])
        devices = int(text) if text.lstrip("-").isdigit() else 1
    if isinstance(devices, int):
        return max(gpus, 1) if devices == -1 else max(devices, 1)
    return 1


def distributed_settings(trainer: Mapping[str, Any], backbone: str) -> dict[str, Any]:
    """Trainer settings the DDP rule adds (returned, not applied).

    With more than one device in all (or ``strategy: ddp``): DDP without buffer broadcast (the
    MoCo queue and DINO centre are kept equal by all-gather / all-reduce; broadcasting rank 0's
    64 MB queue every step would cost bandwidth and hide bugs). ResNets on GPUs also get SyncBN
    (torch's SyncBN needs a GPU; the teacher's BN uses batch statistics, spec §3.2).
    """
    import torch

    from geocmid.models.backbones import family_of

    accelerator = str(trainer.get("accelerator") or "auto")
    count = _device_count(trainer.get("devices", 1), accelerator) * int(
        trainer.get("num_nodes") or 1
    )
    multi = count > 1
    strategy = trainer.get("strategy", "auto") or "auto"
    out: dict[str, Any] = {}
    ddp = {"class_path": "lightning.pytorch.strategies.DDPStrategy",
           "init_args": {"broadcast_buffers": False}}  # fmt: skip
    if strategy == "ddp" or (strategy == "auto" and multi):
        out["strategy"] = ddp
    elif isinstance(strategy, Mapping) and _short_name(strategy.get("class_path")) == "DDPStrategy":
        init = dict(strategy.get("init_args") or {})
        init.setdefault("broadcast_buffers", False)
        out["strategy"] = {**strategy, "init_args": init}
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    if multi and on_gpu and family_of(backbone) == "resnet" and "sync_batchnorm" not in trainer:
        out["sync_batchnorm"] = True
    return out


# ------------------------------------------------------------------------------------------------
# parsing
def _parse_error(error: BaseException, where: str) -> GeocmidError:
    """A jsonargparse error (or one raised while it instantiated a class) as a ConfigError."""
    cause: BaseException | None = error
    while cause is not None:  # an error of ours raised inside a constructor: use it as it is
        if isinstance(cause, GeocmidError):
            return cause
        cause = cause.__cause__ or cause.__context__
    text = str(error)
    keys = re.findall(r'Parser key "([^"]+)"', text)
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    problem = next(
        (ln for ln in reversed(lines) if ln.startswith(("Expected", "Problem", "Does not"))),
        lines[-1] if lines else text,
    )
    given = re.search(r"Given value: (.*)$", text, re.MULTILINE)
    if problem.startswith("Does not validate") and given:
        problem = f"{given.group(1)} is not an accepted value (see `geocmid pretrain --help`)"
    match = re.search(r"Expected a (.+?)\. Got value: (.*)$", problem)
    if match:
        kind = re.sub(r"<class '([\w.]+)'>", r"\1", match.group(1))
        problem = f"expected {kind}, got {match.group(2)}"
    if not keys:
        return ConfigError(where, problem, "check the config against `geocmid pretrain --help`")
    key = keys[0]
    if key in ("model", "data") and len(keys) > 1:
        key = f"{key}.init_args.{keys[-1]}"
    return ConfigError(f"{where}: setting '{key}'", problem, "fix the value in the config")


@cache
def _cli_class() -> type:
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from geocmid.workflows.config import GeocmidCLI

    class PretrainCLI(GeocmidCLI):
        """GeocmidCLI with the pretraining run folder: versioned ``tensorboard/`` and ``csv/``
        logs (a resumed run adds a version instead of replacing the metrics)."""

        def instantiate_trainer(self, **kwargs: Any) -> Any:
            config = dict(self._get(self.config_init, "trainer", default={}) or {})
            root = Path(config.get("default_root_dir") or Path.cwd())
            if "logger" not in kwargs and config.get("logger") in (None, True):
                kwargs["logger"] = [
                    TensorBoardLogger(root, name="tensorboard"),
                    CSVLogger(root, name="csv"),
                ]
            return super().instantiate_trainer(**kwargs)

    return PretrainCLI


def _int_limits(raw: Mapping[str, Any], target: dict[str, Any] | Any) -> None:
    """Keep integer ``limit_*_batches`` integers (Lightning's CLI reads ``1`` as ``1.0``,
    i.e. a whole epoch instead of one batch)."""
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches"):
        value = raw["trainer"].get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            if isinstance(target, dict):
                target[key] = value
            else:
                setattr(target, key, value)


def _is_rank_zero() -> bool:
    return all(os.environ.get(v, "0") == "0" for v in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _write_yaml(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------
def pretrain(
    config: Mapping[str, Any] | str | Path,
    *,
    overrides: Iterable[str | tuple[str, Any]] = (),
    catalog: str | Path | None = None,
    dry_run: bool = False,
) -> PretrainResult:
    """Pretrain (or resume, or only validate) CMID from a Lightning CLI config.

    Args:
        config: the config as a dict or the path of a YAML file (``recipes/pretrain-*.yaml``);
            anything left out takes the defaults (module doc).
        overrides: ``"KEY=VALUE"`` strings or ``(key, value)`` pairs, applied in order
            (``model.mask_ratio=0.5``, ``data.chip_size=96``, ``trainer.max_epochs=5``,
            ``trainer.callbacks.QuickLook.every_n_epochs=1``).
        catalog: catalog folder used when the config's ``data.init_args.catalog`` is unset.
        dry_run: check everything (the data included: statistics are computed if missing)
            and return the resolved config without training or writing anything.

    Returns:
        :class:`PretrainResult`.

    Raises:
        ConfigError, DataError, ModelError: a setting or the data is not usable (the message
            names the setting or file); nothing was trained.
        GeocmidError: training took no optimizer step or ended with a non-finite loss.
    """

    raw, where = assemble(config, overrides, catalog)
    check_task_args(raw, where)
    backbone = str(_task_args(raw)["backbone"])
    raw["trainer"].update(distributed_settings(raw["trainer"], backbone))

    from argparse import ArgumentError

    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        with warnings.catch_warnings():
            # Lightning warns when `args` is given while sys.argv has arguments (ours)
            warnings.filterwarnings("ignore", message=".*args parameter is intended to run")
            cli = _cli_class()(args=raw, run=False)
    except (ArgumentError, ValueError, TypeError) as error:
        raise _parse_error(error, where) from None
    except MisconfigurationException as error:  # Trainer(...) refused a value
        raise ConfigError(
            f"{where}: trainer", str(error).strip().splitlines()[0],
            "fix that trainer setting (Lightning's Trainer documents each one)",
        ) from None  # fmt: skip
    task, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    _int_limits(raw, trainer)

    # the data: open it now so that data problems surface before training starts
    from geocmid.cmid.task import check_chip_size, data_args_of, fill_data_args

    derived = data_args_of(datamodule)
    filled = fill_data_args(task.hparams, derived)
    if filled["chip_size"] is not None:
        check_chip_size(backbone, filled["chip_size"], task.hparams["mask_block"])
    data_args = {k: v for k, v in filled.items() if v is not None and task.hparams[k] is None}
    from geocmid.cmid.callbacks import HealthMonitor

    for callback in trainer.callbacks:  # a kNN entry that is not there fails now, not later
        if isinstance(callback, HealthMonitor):
            callback.check(datamodule)

    resolved = yaml.safe_load(cli.parser.dump(cli.config, skip_none=False))
    for section in ("model", "data"):  # class_path first, as people write it
        node = resolved[section]
        resolved[section] = {"class_path": node["class_path"], **node}
    _int_limits(raw, resolved["trainer"])
    run_dir = Path(trainer.default_root_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    result = PretrainResult(run_dir, last, 0, 0, resolved, data_args)
    if dry_run:
        return result

    result.resumed = last.is_file()
    from geocmid.tasks.guards import status_of_error, write_status
    from geocmid.workflows.training import _message, _run_trainer, check_checkpoint

    if result.resumed:
        check_checkpoint(last)
    preflight = getattr(datamodule, "preflight", None)
    if callable(preflight):  # a scene or tiles too small for a chip: refused before training
        preflight()
    # A resume that fails (a checkpoint that does not fit this config) must leave the run's
    # record as it was: keep the previous config and status to put back.
    previous = {
        name: (run_dir / name).read_text()
        for name in ("config.yaml", "status.json")
        if result.resumed and (run_dir / name).is_file()
    }
    if _is_rank_zero():
        run_dir.mkdir(parents=True, exist_ok=True)
        header = (
            "# The resolved config of this run (geocmid pretrain). `geocmid pretrain --config`\n"
            "# with it resumes the run; `torchgeo fit --config` or any LightningCLI runs it too.\n"
            "# Task arguments the data decide (bands, statistics, ...) are left null: the task\n"
            "# takes them from the datamodule (the checkpoint's hyper_parameters have them).\n"
        )
        _write_yaml(run_dir / "config.yaml", header + yaml.safe_dump(resolved, sort_keys=False))
        if result.resumed:
            log.info("resuming from %s (rerun of the same run; raise trainer.max_epochs to "
                     "train longer, or use another --run-dir to start afresh)", last)  # fmt: skip
        else:
            log.info("starting run in %s", run_dir)
        write_status(run_dir, "running", stage="pretrain", resumed_from=str(last) if
                     result.resumed else None)  # fmt: skip
    try:
        _run_trainer(trainer, trainer.fit, task, datamodule,
                     str(last) if result.resumed else None, where)  # fmt: skip
        _check_pretrained(trainer, run_dir)
    except BaseException as error:
        from geocmid.errors import ModelError

        if _is_rank_zero() and isinstance(error, ModelError) and previous:
            for name, text in previous.items():  # the checkpoint was refused: nothing changed
                _write_yaml(run_dir / name, text)
        elif _is_rank_zero():
            write_status(run_dir, status_of_error(error), _message(error), stage="pretrain",
                         epoch=int(trainer.current_epoch),
                         global_step=int(trainer.global_step))  # fmt: skip
        raise
    if _is_rank_zero():
        write_status(run_dir, "done", stage="pretrain", epoch=int(trainer.current_epoch),
                     global_step=int(trainer.global_step))  # fmt: skip
    result.epochs, result.global_step = int(trainer.current_epoch), int(trainer.global_step)
    result.data_args = {k: task.hparams[k] for k in data_args}
    return result


def _check_pretrained(trainer: Any, run_dir: Path) -> None:
    """A run that took no optimizer step or whose loss is not finite is a failure."""
    import torch

    if trainer.global_step == 0:
        raise GeocmidError(
            f"run '{run_dir}'", "training took no optimizer step: nothing was learned",
            "check trainer.max_epochs / limit_train_batches and data.chips_per_epoch (at least "
            "one batch per device)",
        )  # fmt: skip
    loss = trainer.callback_metrics.get("train/loss_epoch")
    if loss is not None and not math.isfinite(float(torch.as_tensor(loss))):
        raise GeocmidError(
            f"run '{run_dir}'", f"the training loss is {float(loss)} (not finite)",
            "lower model.base_lr, use trainer.precision=32-true, or check the data statistics",
        )  # fmt: skip


__all__ = [
    "DATA_CLASS",
    "DEFAULT_CALLBACKS",
    "OLD_KEYS",
    "SEED",
    "SHORTCUTS",
    "TASK_CLASS",
    "TRAINER_DEFAULTS",
    "PretrainResult",
    "apply_pretrain_overrides",
    "assemble",
    "check_task_args",
    "distributed_settings",
    "pretrain",
    "settings",
]
