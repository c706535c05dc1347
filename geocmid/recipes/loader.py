"""Read a recipe YAML file keeping where every key was written, and apply overrides.

A recipe error must point at the key *and the line* (``recipes/x.yaml line 12``), so the file is
read with :func:`yaml.compose`, which keeps node marks, and converted to plain Python values while
recording the line of each dotted key. Command-line overrides (``steps.pretrain.epochs=2``) are
recorded as coming from the command line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from geocmid.errors import ConfigError


@dataclass
class Recipe:
    """A recipe as loaded: plain values plus where each dotted key came from.

    Attributes:
        path: the recipe file.
        data: the recipe as nested dicts / lists / scalars.
        lines: dotted key → 1-based line in ``path`` (keys set on the command line are absent).
        overridden: dotted keys set on the command line.
    """

    path: Path
    data: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    overridden: set[str] = field(default_factory=set)

    def where(self, key: str) -> str:
        """``recipes/x.yaml line 12, key 'steps.pretrain.epochs'`` (or ``command line``)."""
        if key in self.overridden:
            return f"{self.path} (command line), key '{key}'"
        parts = key.split(".")
        while parts and ".".join(parts) not in self.lines:
            parts.pop()  # a key the file does not write: point at its closest written parent
        line = self.lines.get(".".join(parts)) if parts else None
        return f"{self.path} line {line}, key '{key}'" if line else f"{self.path}, key '{key}'"

    def error(self, key: str, problem: str, fix: str | None = None) -> ConfigError:
        return ConfigError(self.where(key), problem, fix)

    def get(self, key: str, default: Any = None) -> Any:
        node: Any = self.data
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _construct(node: yaml.Node, prefix: str, lines: dict[str, int], path: Path) -> Any:
    """Plain value of ``node``; records each mapping key's line under its dotted name."""
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            key = str(yaml.safe_load(yaml.serialize(key_node)))
            dotted = f"{prefix}.{key}" if prefix else key
            if key in out:
                raise ConfigError(
                    f"{path} line {key_node.start_mark.line + 1}",
                    f"key '{dotted}' is written twice",
                    "keep one of them",
                )
            lines[dotted] = key_node.start_mark.line + 1
            out[key] = _construct(value_node, dotted, lines, path)
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_construct(v, prefix, lines, path) for v in node.value]
    return yaml.safe_load(yaml.serialize(node))


def load_recipe(path: str | Path) -> Recipe:
    """Load ``path`` keeping key lines.

    Raises:
        ConfigError: missing file, YAML syntax error (with its line) or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.parent.is_dir():
            from geocmid.errors import did_you_mean

            hint = did_you_mean(path.name, [p.name for p in path.parent.glob("*.yaml")])
        raise ConfigError(str(path), f"recipe file not found{hint}", "ls recipes/ lists them")
    try:
        node = yaml.compose(path.read_text(), Loader=yaml.SafeLoader)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path} line {mark.line + 1}" if mark else str(path)
        raise ConfigError(
            where, f"not valid YAML: {getattr(error, 'problem', error)}", "fix the YAML syntax"
        ) from None
    lines: dict[str, int] = {}
    data = _construct(node, "", lines, path) if node is not None else {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "a recipe must be a mapping of keys", "see recipes/")
    return Recipe(path=path, data=data, lines=lines)


def parse_override(text: str) -> tuple[str, Any]:
    """``steps.pretrain.epochs=2`` → ``("steps.pretrain.epochs", 2)``.

    The same ``KEY=VALUE`` syntax (value read as YAML) as every training config override:
    :func:`geocmid.workflows.config.parse_overrides`.
    """
    from geocmid.workflows.config import parse_overrides

    return parse_overrides([text], where="override")[0]


def set_dotted(data: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Set ``a.b.c`` in nested dicts, creating the sections on the way."""
    node = data
    parts = key.split(".")
    if len(parts) > 3 and parts[0] == "steps" and parts[2] == "set":
        # a step's `set` block holds the command's own dotted keys: keep them whole
        parts = [*parts[:3], ".".join(parts[3:])]
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(where, f"'{part}' is a value, not a section", "check the key")
        node = child
    node[parts[-1]] = value


def apply_overrides(recipe: Recipe, overrides: list[str]) -> None:
    """Apply ``key=value`` overrides (in order) to ``recipe``."""
    for text in overrides:
        key, value = parse_override(text)
        set_dotted(recipe.data, key, value, f"override '{text}'")
        recipe.overridden.add(key)


def set_profile_overrides(recipe: Recipe, values: dict[str, Any], source: str) -> None:
    """Apply a profile's ``{dotted key: value}`` (e.g. the ``tiny`` block) to ``recipe``."""
    for key, value in values.items():
        if key in recipe.overridden:
            continue  # the command line wins over a profile
        set_dotted(recipe.data, key, value, f"{source}, key '{key}'")
