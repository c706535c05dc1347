"""The catalog folder: find, load and cross-check entries by name."""

from __future__ import annotations

import json
import os
from pathlib import Path

import yaml

from geocmid.data.catalog.schema import ENTRY_KINDS, Entry, ImageryEntry, parse_entry
from geocmid.errors import ConfigError, did_you_mean

#: Environment variable naming the catalog folder (the ``--catalog`` option wins over it).
CATALOG_ENV = "GEOCMID_CATALOG"
STATS_SUFFIX = ".stats.json"


def _yaml_error_location(error: yaml.YAMLError) -> str:
    mark = getattr(error, "problem_mark", None)
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""


def load_entry_file(path: Path) -> Entry:
    """Load and validate one catalog entry YAML file (name = file stem)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(str(path), "catalog entry file not found", "check the path")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError(
            str(path),
            f"not valid YAML{_yaml_error_location(error)}: {getattr(error, 'problem', error)}",
            "fix the YAML syntax at that line",
        ) from None
    entry = parse_entry(raw, path.stem, path, path.parent.resolve())
    stats_file = path.with_name(path.stem + STATS_SUFFIX)
    if isinstance(entry, ImageryEntry) and entry.stats is None and stats_file.exists():
        entry.stats = json.loads(stats_file.read_text())
    return entry


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


class Catalog:
    """A folder of catalog entries (``*.yaml`` / ``*.yml``), addressed by name.

    Args:
        folder: the catalog folder; defaults to ``$GEOCMID_CATALOG`` or ``data_catalog``.
    """

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder or os.environ.get(CATALOG_ENV) or "data_catalog")

    def entry_files(self) -> dict[str, Path]:
        if not self.folder.is_dir():
            raise ConfigError(
                str(self.folder),
                "catalog folder not found",
                f"pass --catalog FOLDER or set {CATALOG_ENV}; `geocmid demo-data DIR` makes one",
            )
        files = sorted(list(self.folder.glob("*.yaml")) + list(self.folder.glob("*.yml")))
        return {f.stem: f for f in files}

    def names(self) -> list[str]:
        return list(self.entry_files())

    def get(self, name: str | Path) -> Entry:
        """Return the entry called ``name``, or load ``name`` as a YAML file path."""
        if str(name).endswith((".yaml", ".yml")) and Path(name).is_file():
            return load_entry_file(Path(name))
        files = self.entry_files()
        if str(name) not in files:
            raise ConfigError(
                f"catalog {self.folder}",
                f"no entry named '{name}'{did_you_mean(str(name), files)}",
                "`geocmid catalog list` shows the entries",
            )
        return load_entry_file(files[str(name)])

    def get_kind[T: Entry](self, name: str, kind: type[T], referrer: str = "") -> T:
        """Return entry ``name``, checking that it is of ``kind``."""
        entry = self.get(name)
        if not isinstance(entry, kind):
            raise ConfigError(
                referrer or entry.where,
                f"entry '{name}' is {_a(entry.kind)} entry; {_a(kind.kind)} entry is needed here",
                f"name a {kind.kind} entry; `geocmid catalog list` shows each entry's kind",
            )
        return entry

    def all(self) -> list[Entry]:
        return [load_entry_file(f) for f in self.entry_files().values()]

    def check_references(self, entry: Entry) -> None:
        """Check that the entries ``entry`` refers to exist and are of the right kind."""
        from geocmid.data.catalog.schema import BitemporalEntry, RasterLabelsEntry

        if isinstance(entry, BitemporalEntry):
            for key in ("before", "after"):
                self.get_kind(getattr(entry, key), ImageryEntry, f"{entry.where}, key '{key}'")
            if entry.change_labels:
                label = self.get(entry.change_labels)
                if label.kind not in ("raster_labels", "vector_labels"):
                    raise entry.error("change_labels", f"'{label.name}' is a {label.kind} entry")
        if isinstance(entry, RasterLabelsEntry) and entry.align_with:
            self.get_kind(entry.align_with, ImageryEntry, f"{entry.where}, key 'align_with'")

    def stats_path(self, name: str) -> Path:
        return self.entry_files()[name].with_name(name + STATS_SUFFIX)


__all__ = ["ENTRY_KINDS", "Catalog", "load_entry_file"]
