"""Model cards as seen by prediction: bands, normalisation and classes.

A model card is the small JSON document exported next to a trained model (see ARCHITECTURE.md).
Prediction only needs a few of its keys::

    {"bands": [1, 2, 3] | ["red", "green", "blue"], "in_chans": 3,
     "mean": [..], "std": [..],                        # one per band, in raw image units
     "classes": [{"value": 0, "name": "background", "color": "#000000"}, ...]}

Any other key (architecture, chip size, GSD, provenance …) is kept verbatim in ``extra`` and copied
into the provenance tags of every output.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geocmid.errors import ConfigError

#: Colours given to classes that do not declare one (RGB, 0-255).
_PALETTE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
]


@dataclass(frozen=True)
class ClassInfo:
    """One output class: the raster value written for it, a name and an RGBA colour."""

    value: int
    name: str
    color: tuple[int, int, int, int]


@dataclass(frozen=True)
class ModelCard:
    """What prediction needs to know about a model.

    Attributes:
        bands: 1-based band indexes (ints) or band names (matched against the raster's band
            descriptions) that the model expects, in model channel order.
        mean: per-band mean in raw image units, length ``in_chans``.
        std: per-band standard deviation in raw image units, length ``in_chans``.
        classes: output classes in logit-channel order (channel k is ``classes[k]``).
        extra: every other key of the card, kept for provenance.
    """

    bands: tuple[int | str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[ClassInfo, ...]
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def in_chans(self) -> int:
        """Number of input channels per date."""
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_dict(cls, card: dict[str, Any], where: str = "model card") -> ModelCard:
        """Validate a card dictionary; raise :class:`ConfigError` naming the bad key."""
        if not isinstance(card, dict):
            raise ConfigError(where, "is not a JSON object", 'write the card as {"bands": ...}')
        missing = [k for k in ("mean", "std", "classes") if k not in card]
        if missing:
            raise ConfigError(
                where,
                f"misses key(s) {', '.join(missing)}",
                "add 'mean', 'std' (one number per band) and 'classes' (list of {value, name})",
            )
        in_chans = int(card.get("in_chans", len(card["mean"])))
        bands = card.get("bands") or list(range(1, in_chans + 1))
        if not isinstance(bands, list | tuple):
            raise ConfigError(f"{where}: key 'bands'", "is not a list", "use e.g. [1, 2, 3]")
        for key, values in (("bands", bands), ("mean", card["mean"]), ("std", card["std"])):
            if len(values) != in_chans:
                raise ConfigError(
                    f"{where}: key '{key}'",
                    f"has {len(values)} entries but in_chans is {in_chans}",
                    "give exactly one entry per model input band",
                )
        std = tuple(float(s) for s in card["std"])
        if any(s <= 0 for s in std):
            raise ConfigError(f"{where}: key 'std'", "contains a value <= 0", "use positive std")
        classes = _parse_classes(card["classes"], where)
        extra = {k: v for k, v in card.items() if k not in ("bands", "mean", "std", "classes")}
        return cls(
            bands=tuple(bands),
            mean=tuple(float(m) for m in card["mean"]),
            std=std,
            classes=classes,
            extra=extra,
        )

    @classmethod
    def from_file(cls, path: str | Path) -> ModelCard:
        """Read and validate a JSON model card."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise ConfigError(str(path), "does not exist", "pass the model card JSON") from error
        except json.JSONDecodeError as error:
            raise ConfigError(str(path), f"is not valid JSON ({error})", "fix the file") from error
        return cls.from_dict(data, where=str(path))

    def to_dict(self) -> dict[str, Any]:
        """The card as a JSON-serialisable dictionary (round-trips through :meth:`from_dict`)."""
        return {
            **self.extra,
            "bands": list(self.bands),
            "in_chans": self.in_chans,
            "mean": list(self.mean),
            "std": list(self.std),
            "classes": [
                {"value": c.value, "name": c.name, "color": list(c.color)} for c in self.classes
            ],
        }


def _parse_classes(raw: Any, where: str) -> tuple[ClassInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}: key 'classes'", "is empty or not a list", "list the classes")
    classes = []
    for k, entry in enumerate(raw):
        if isinstance(entry, str):  # a bare list of names is accepted: values are 0..K-1
            entry = {"value": k, "name": entry}
        if not isinstance(entry, dict) or "name" not in entry:
            raise ConfigError(
                f"{where}: classes[{k}]", "has no 'name'", 'write {"value": 1, "name": "x"}'
            )
        value = int(entry.get("value", k))
        if not 0 <= value < 65535:
            raise ConfigError(
                f"{where}: classes[{k}]", f"value {value} out of range", "use 0..65534"
            )
        color = _parse_color(
            entry.get("color"), _PALETTE[k % len(_PALETTE)], f"{where}: classes[{k}]"
        )
        classes.append(ClassInfo(value=value, name=str(entry["name"]), color=color))
    values = [c.value for c in classes]
    if len(set(values)) != len(values):
        raise ConfigError(f"{where}: key 'classes'", "repeats a class value", "make values unique")
    return tuple(classes)


def _parse_color(raw: Any, default: tuple[int, int, int], where: str) -> tuple[int, int, int, int]:
    if raw is None:
        return (*default, 255)
    if isinstance(raw, str) and raw.startswith("#") and len(raw) in (7, 9):
        parts = [int(raw[i : i + 2], 16) for i in range(1, len(raw), 2)]
    elif isinstance(raw, list | tuple) and len(raw) in (3, 4):
        parts = [int(v) for v in raw]
    else:
        raise ConfigError(where, f"colour {raw!r} is not understood", "use '#rrggbb' or [r, g, b]")
    if len(parts) == 3:
        parts.append(255)
    return (parts[0], parts[1], parts[2], parts[3])
