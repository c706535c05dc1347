"""geocmid's one configuration system: Lightning CLI configs, safely.

A geocmid config is a plain Lightning CLI config (``seed_everything``, ``trainer``, ``model``,
``data``, with ``class_path`` / ``init_args``), so the same file runs under ``geocmid fit``,
``torchgeo fit`` and any ``LightningCLI``. This module adds what geocmid needs around it:

* :func:`load_config`: read a YAML file with errors that name the file, the line and the key;
* :func:`check_class_paths`: a config is data, not code: every ``class_path`` must name a
  subclass of the base class expected where it stands, and nothing outside the trusted module
  prefixes (:data:`TRUSTED_PREFIXES`, plus ``GEOCMID_TRUSTED_MODULES``) is imported at all;
* :func:`parse_overrides` / :func:`apply_overrides`: the one ``KEY=VALUE`` override syntax of
  the command line and the recipes (values read as YAML; ``model.X`` / ``data.X`` reach
  ``init_args.X``);
* :class:`GeocmidCLI`: the :class:`~lightning.pytorch.cli.LightningCLI` subclass every geocmid
  training command runs through (run folder layout, loggers, best checkpoint, reports).

Only the standard library and PyYAML are imported at module level; Lightning is imported when
:class:`GeocmidCLI` is first used.
"""

from __future__ import annotations

import copy
import importlib
import os
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from geocmid.errors import ConfigError, did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from geocmid.workflows.lightning_cli import GeocmidCLI

#: Module prefixes whose classes a config may name (anything else is refused before import).
TRUSTED_PREFIXES: tuple[str, ...] = (
    "geocmid.",
    "torchgeo.",
    "lightning.",
    "pytorch_lightning.",
    "torch.optim.",
    "torchmetrics.",
    "segmentation_models_pytorch.",
    "timm.",
)
#: Environment variable with extra trusted packages, comma-separated (``pkg1,pkg2.sub``).
TRUSTED_ENV = "GEOCMID_TRUSTED_MODULES"

#: Top-level keys of a Lightning CLI config (one subcommand's view).
TOP_KEYS: tuple[str, ...] = (
    "seed_everything",
    "trainer",
    "model",
    "data",
    "optimizer",
    "lr_scheduler",
    "ckpt_path",
)

# position (dotted, ``*`` = list item) → (module, class name) pairs of the accepted bases
_BASES: dict[str, tuple[tuple[str, str], ...]] = {
    "model": (("lightning.pytorch", "LightningModule"),),
    "data": (("lightning.pytorch", "LightningDataModule"),),
    "trainer.callbacks": (("lightning.pytorch.callbacks", "Callback"),),
    "trainer.logger": (("lightning.pytorch.loggers", "Logger"),),
    "trainer.profiler": (("lightning.pytorch.profilers", "Profiler"),),
    "trainer.strategy": (("lightning.pytorch.strategies", "Strategy"),),
    "trainer.plugins": (
        ("lightning.pytorch.plugins", "PrecisionPlugin"),
        ("lightning.fabric.plugins", "CheckpointIO"),
        ("lightning.fabric.plugins.environments", "ClusterEnvironment"),
        ("lightning.pytorch.plugins", "LayerSync"),
    ),
    "optimizer": (("torch.optim", "Optimizer"),),
    "lr_scheduler": (
        ("torch.optim.lr_scheduler", "LRScheduler"),
        ("torch.optim.lr_scheduler", "ReduceLROnPlateau"),
    ),
}
_SUBCOMMANDS = ("fit", "validate", "test", "predict")


# ------------------------------------------------------------------------------------------------
# loading
def load_config(path: str | Path, top_keys: Iterable[str] = TOP_KEYS) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Args:
        path: the YAML file.
        top_keys: accepted top-level keys (default: a Lightning CLI config's).

    Raises:
        ConfigError: the file does not exist, is not valid YAML (the message gives the line),
            is not a mapping, or has an unknown top-level key (with a did-you-mean).
    """
    p = Path(path)
    if not p.is_file():
        hint = "check the path (shipped configs are in recipes/, e.g. recipes/finetune-*.yaml)"
        raise ConfigError(str(p), "config file not found", hint)
    try:
        config = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(
            str(p), f"not valid YAML{line}: {problem}",
            "fix the YAML syntax there (indentation with spaces, 'key: value', quotes closed)",
        ) from None  # fmt: skip
    if not isinstance(config, dict):
        raise ConfigError(
            str(p), "must be a mapping (trainer: / model: / data: sections)",
            "see recipes/finetune-segmentation.yaml for the layout",
        )  # fmt: skip
    check_top_keys(config, str(p), top_keys)
    return config


def check_top_keys(
    config: Mapping[str, Any], where: str, top_keys: Iterable[str] = TOP_KEYS
) -> None:
    """Refuse unknown top-level keys, naming the closest known one."""
    keys = list(top_keys)
    for key in config:
        if key not in keys:
            hint = ""
            if key in ("checkpoint", "normalisation"):
                hint = (
                    "; geocmid <= 0.x 'checkpoint:' is now a trainer.callbacks ModelCheckpoint "
                    "and 'normalisation:' is data.init_args.stats_from"
                )
            raise ConfigError(
                f"{where}: key '{key}'",
                f"unknown top-level key{did_you_mean(str(key), keys)}{hint}",
                f"top-level keys are: {', '.join(keys)}",
            )


# ------------------------------------------------------------------------------------------------
# class_path allow-list
def trusted_prefixes() -> tuple[str, ...]:
    """:data:`TRUSTED_PREFIXES` plus the packages named in ``$GEOCMID_TRUSTED_MODULES``."""
    extra = [p.strip().rstrip(".") for p in os.environ.get(TRUSTED_ENV, "").split(",")]
    return TRUSTED_PREFIXES + tuple(f"{p}." for p in extra if p)


def is_trusted(dotted: str) -> bool:
    """Whether ``dotted`` (``pkg.module.Class``) lies under a trusted module prefix."""
    return any(dotted.startswith(prefix) for prefix in trusted_prefixes())


def _base_classes(position: str) -> tuple[type, ...]:
    bases = []
    for module, name in _BASES[position]:
        try:
            bases.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):  # pragma: no cover - older Lightning
            continue
    return tuple(bases)


def _import_trusted(dotted: str, where: str) -> Any:
    """Import ``dotted`` (known to be trusted): the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            obj: Any = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name and module_name.startswith(error.name):
                continue  # this prefix is not a module; try a shorter one
            raise ConfigError(where, f"importing '{module_name}' failed: {error}") from None
        except ImportError as error:
            raise ConfigError(where, f"importing '{module_name}' failed: {error}") from None
        try:
            for attr in parts[cut:]:
                obj = getattr(obj, attr)
        except AttributeError:
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                where, f"'{module_name}' has no '{'.'.join(parts[cut:])}'"
                f"{did_you_mean(parts[cut], names)}",
                "check the spelling of the class_path",
            ) from None  # fmt: skip
        return obj
    raise ConfigError(
        where, f"no module found for '{dotted}'", "check the spelling of the class_path"
    )


def _check_one(class_path: Any, position: str | None, where: str) -> None:
    """Check one ``class_path`` value at ``position`` (a key of ``_BASES``, or None: nested)."""
    if not isinstance(class_path, str) or not class_path.strip():
        raise ConfigError(where, f"class_path must be a class name, got {class_path!r}")
    if "." not in class_path:
        if position is None:
            raise ConfigError(
                where, f"short class name '{class_path}' in a nested init_args",
                "write the full dotted path of the class (e.g. torch.nn.CrossEntropyLoss)",
            )  # fmt: skip
        return  # jsonargparse resolves short names only among subclasses of the base
    if not is_trusted(class_path):
        package = class_path.split(".")[0]
        trusted = ", ".join(p.rstrip(".") for p in trusted_prefixes())
        raise ConfigError(
            where,
            f"class_path '{class_path}' is outside the trusted modules, so it was not imported "
            "(a config file must not run code from anywhere)",
            f"if you trust the package, run with {TRUSTED_ENV}={package} "
            f"(comma-separated list); trusted already: {trusted}",
        )
    obj = _import_trusted(class_path, where)
    if not isinstance(obj, type):
        raise ConfigError(
            where, f"'{class_path}' is a {type(obj).__name__}, not a class",
            "class_path must name a class",
        )  # fmt: skip
    if position is None:
        return
    bases = _base_classes(position)
    if bases and not issubclass(obj, bases):
        names = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
        raise ConfigError(
            where, f"'{class_path}' is not a subclass of {names}",
            f"'{position}' takes a {names.split('.')[-1]}"
            + (f" such as {_EXAMPLES[position]}" if position in _EXAMPLES else ""),
        )  # fmt: skip


_EXAMPLES = {
    "model": "geocmid.tasks.SegmentationTask",
    "data": "geocmid.datamodules.SegmentationDataModule",
    "trainer.callbacks": "lightning.pytorch.callbacks.ModelCheckpoint",
    "trainer.logger": "lightning.pytorch.loggers.CSVLogger",
}


def _walk_nested(node: Any, where: str) -> None:
    """Check every ``class_path`` below ``node`` (inside init_args / dict values / lists)."""
    if isinstance(node, Mapping):
        if "class_path" in node:
            _check_one(node["class_path"], None, f"{where}.class_path")
        for key, value in node.items():
            if key != "class_path":
                _walk_nested(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            _walk_nested(item, f"{where}[{i}]")


def _check_position(node: Any, position: str, where: str) -> None:
    """A value at a known position: a class_path dict, a list of them (callbacks, loggers,
    plugins), or a plain value (``true``, a short string) that needs no check."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_position(item, position, f"{where}[{i}]")
        return
    sections = ("model", "data", "optimizer", "lr_scheduler")
    if isinstance(node, str) and "." in node and position in sections:
        _check_one(node, position, where)  # `model: pkg.Class` short form
        return
    if not isinstance(node, Mapping):
        return
    if "class_path" in node:
        _check_one(node["class_path"], position, f"{where}.class_path")
    for key, value in node.items():
        if key != "class_path":
            _walk_nested(value, f"{where}.{key}")


def check_class_paths(config: Mapping[str, Any], where: str) -> None:
    """Refuse any ``class_path`` of a raw Lightning CLI config that is not allowed.

    Rules: ``model`` names a LightningModule, ``data`` a LightningDataModule,
    ``trainer.callbacks[*]`` a Callback, ``trainer.logger`` a Logger, ``optimizer`` a
    ``torch.optim.Optimizer``, ``lr_scheduler`` an LRScheduler or ReduceLROnPlateau; a
    ``class_path`` nested in ``init_args`` must be a class under a trusted prefix. A dotted name
    outside :func:`trusted_prefixes` is refused *before* anything is imported; trusted names are
    imported and checked with ``issubclass``. Bare names (no dot) pass: jsonargparse resolves
    them only among subclasses of the expected base.

    Args:
        config: the config as read from YAML (not yet parsed by jsonargparse).
        where: the file or source, for error messages.

    Raises:
        ConfigError: naming the key, the class and what to do.
    """
    if not isinstance(config, Mapping):
        return
    if any(k in _SUBCOMMANDS for k in config):  # {"fit": {...}} as LightningCLI(args=dict) takes
        for sub in _SUBCOMMANDS:
            if isinstance(config.get(sub), Mapping):
                check_class_paths(config[sub], f"{where}: {sub}")
    for key, value in config.items():
        if key in _SUBCOMMANDS:
            continue
        if key in ("model", "data", "optimizer", "lr_scheduler"):
            _check_position(value, key, f"{where}: {key}")
        elif key == "trainer" and isinstance(value, Mapping):
            for tkey, tvalue in value.items():
                position = f"trainer.{tkey}"
                if position in _BASES:
                    _check_position(tvalue, position, f"{where}: {position}")
                else:
                    _walk_nested(tvalue, f"{where}: {position}")
        else:
            _walk_nested(value, f"{where}: {key}")


# ------------------------------------------------------------------------------------------------
# overrides
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def parse_value(raw: str) -> Any:
    """A command-line value read as YAML; ``1e-3`` is a float (YAML 1.1 would keep a string)."""
    text = raw.strip()
    try:
        value = yaml.safe_load(text) if text else None
    except yaml.YAMLError:
        return raw
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    return value


def parse_overrides(items: Iterable[str], where: str = "--set") -> list[tuple[str, Any]]:
    """``["model.init_args.lr=1e-3", "trainer.max_epochs=5"]`` → ``[(key, value), ...]``.

    Values are read as YAML (``5`` → int, ``1e-3`` → float, ``[1, 2]`` → list, ``null`` → None,
    ``true`` → bool, anything else → str).

    Raises:
        ConfigError: an item without ``=`` or with an empty key.
    """
    pairs: list[tuple[str, Any]] = []
    for item in items:
        key, sep, raw = str(item).partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise ConfigError(
                f"{where} {item}", "expected KEY=VALUE",
                "e.g. model.init_args.lr=1e-3 or trainer.max_epochs=5",
            )  # fmt: skip
        pairs.append((key, parse_value(raw)))
    return pairs


def _path_of(key: str) -> list[str]:
    """Dotted key → path in the config; ``model.X`` / ``data.X`` → ``init_args.X``."""
    parts = [p for p in key.split(".")]
    if any(not p for p in parts):
        raise ConfigError(f"override '{key}'", "has an empty part between dots", "e.g. model.lr")
    sections = ("model", "data", "optimizer", "lr_scheduler")
    if (
        parts[0] in sections
        and len(parts) > 1
        and parts[1] not in ("class_path", "init_args", "dict_kwargs")
    ):
        parts = [parts[0], "init_args", *parts[1:]]
    return parts


def set_value(config: dict[str, Any], key: str, value: Any) -> None:
    """Set dotted ``key`` in ``config`` in place (``model.X`` / ``data.X`` → ``init_args.X``)."""
    parts = _path_of(key)
    node: Any = config
    for i, part in enumerate(parts[:-1]):
        if isinstance(node, list):
            node = _list_item(node, part, key)
            continue
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict | list):
            raise ConfigError(
                f"override '{key}'",
                f"'{'.'.join(parts[: i + 1])}' is a value ({child!r}), not a section",
                "override the value itself, or replace the whole section",
            )  # fmt: skip
        node = child
    if isinstance(node, list):
        index = _index(node, parts[-1], key)
        node[index] = value
    else:
        node[parts[-1]] = value


def _index(node: list[Any], part: str, key: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(
            f"override '{key}'", f"'{part}' is not an index of a list of {len(node)} items",
            "use a list index such as trainer.callbacks.0.init_args.monitor",
        )  # fmt: skip
    return int(part)


def _list_item(node: list[Any], part: str, key: str) -> Any:
    return node[_index(node, part, key)]


def apply_overrides(
    config: dict[str, Any], overrides: Iterable[tuple[str, Any]] | Iterable[str]
) -> dict[str, Any]:
    """Apply ``KEY=VALUE`` overrides to a raw config (a deep copy is returned).

    Args:
        config: the config dict (as :func:`load_config` returns it); left unchanged.
        overrides: ``(key, value)`` pairs (from :func:`parse_overrides`) or ``"KEY=VALUE"``
            strings. ``model.X`` / ``data.X`` reach ``model.init_args.X`` / ``data.init_args.X``;
            list items are reached by index (``trainer.callbacks.0.init_args.patience``).

    Returns:
        the updated copy. Whether a key is known to the class is checked when the config is
        parsed (see :func:`check_init_args`).
    """
    result = copy.deepcopy(config)
    for item in overrides:
        key, value = parse_overrides([item])[0] if isinstance(item, str) else item
        set_value(result, key, value)
    return result


# ------------------------------------------------------------------------------------------------
# init_args checks (names a class accepts; run after check_class_paths)
def accepted_init_args(cls: type) -> set[str] | None:
    """Keyword names ``cls(...)`` accepts, following ``**kwargs`` up the MRO as jsonargparse
    does; None when the signature cannot be read (then nothing is checked)."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters
        except (TypeError, ValueError):
            return None
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        names.update(n for n, p in params.items() if n != "self" and p.kind not in variadic)
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return names
    return names


def check_init_args(config: Mapping[str, Any], where: str) -> None:
    """Refuse ``model`` / ``data`` ``init_args`` keys the named class does not accept, and
    unknown ``trainer`` keys (with a did-you-mean). Only classes under trusted prefixes are
    looked at (call :func:`check_class_paths` first); short names are left to jsonargparse."""
    for section in ("model", "data"):
        node = config.get(section)
        if not isinstance(node, Mapping) or not isinstance(node.get("init_args"), Mapping):
            continue
        class_path = node.get("class_path")
        if not isinstance(class_path, str) or "." not in class_path or not is_trusted(class_path):
            continue
        cls = _import_trusted(class_path, f"{where}: {section}.class_path")
        accepted = accepted_init_args(cls) if isinstance(cls, type) else None
        if accepted is None:
            continue
        for key in node["init_args"]:
            if key not in accepted:
                raise ConfigError(
                    f"{where}: {section}.init_args.{key}",
                    f"{class_path.rsplit('.', 1)[-1]} has no argument '{key}'"
                    f"{did_you_mean(str(key), accepted)}",
                    f"its arguments: {', '.join(sorted(accepted))}",
                )
    trainer = config.get("trainer")
    callbacks = trainer.get("callbacks") if isinstance(trainer, Mapping) else None
    callbacks = [callbacks] if isinstance(callbacks, Mapping) else callbacks
    for i, node in enumerate(callbacks if isinstance(callbacks, list) else []):
        if not isinstance(node, Mapping) or not isinstance(node.get("init_args"), Mapping):
            continue
        class_path = node.get("class_path")
        if not isinstance(class_path, str) or "." not in class_path or not is_trusted(class_path):
            continue
        cls = _import_trusted(class_path, f"{where}: trainer.callbacks.{i}.class_path")
        accepted = accepted_init_args(cls) if isinstance(cls, type) else None
        name = class_path.rsplit(".", 1)[-1]
        for key in node["init_args"] if accepted is not None else ():
            if key not in accepted:
                raise ConfigError(
                    f"{where}: trainer.callbacks.{name}.{key}",
                    f"{name} has no argument '{key}'{did_you_mean(str(key), accepted)}",
                    f"its arguments: {', '.join(sorted(accepted))}",
                )
    if isinstance(trainer, Mapping):
        from lightning.pytorch import Trainer

        accepted = accepted_init_args(Trainer) or set()
        for key in trainer:
            if key not in accepted:
                raise ConfigError(
                    f"{where}: trainer.{key}",
                    f"the Trainer has no argument '{key}'{did_you_mean(str(key), accepted)}",
                    "see https://lightning.ai/docs/pytorch/stable/common/trainer.html#trainer-flags",
                )


# ------------------------------------------------------------------------------------------------
# the CLI class
def __getattr__(name: str) -> Any:
    # GeocmidCLI subclasses LightningCLI: defined in lightning_cli.py, imported on first use so
    # that reading and checking configs stays free of torch / Lightning imports.
    if name == "GeocmidCLI":
        from geocmid.workflows.lightning_cli import GeocmidCLI

        return GeocmidCLI
    raise AttributeError(f"module 'geocmid.workflows.config' has no attribute '{name}'")


__all__ = [
    "TOP_KEYS",
    "TRUSTED_ENV",
    "TRUSTED_PREFIXES",
    "GeocmidCLI",
    "accepted_init_args",
    "apply_overrides",
    "check_class_paths",
    "check_init_args",
    "check_top_keys",
    "is_trusted",
    "load_config",
    "parse_overrides",
    "parse_value",
    "set_value",
    "trusted_prefixes",
]
