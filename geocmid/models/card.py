"""The model card: one small, versioned JSON document that travels with every geocmid model.

A card says what a model takes and gives: its architecture, input bands and their normalisation,
chip size and ground sampling distance, output classes, and where it came from. The same layout
is written next to a pretraining export (``NAME.json`` beside ``NAME.safetensors``, and inside the
safetensors header), inside fine-tuned checkpoints, and read by prediction. Like timm's
``PretrainedCfg`` it carries a format tag; this module writes ``geocmid-card/2``::

    {"format": "geocmid-card/2",
     "task": "backbone",                     # or segmentation / change / classification / detection
     "architecture": "resnet50", "family": "resnet", "model": null,   # timm name; decoder name
     "in_chans": 4, "bands": ["red", "green", "blue", "nir"],         # names or 1-based indexes
     "mean": [..4..], "std": [..4..],        # raw image units, one per band
     "chip_size": 224, "gsd": 0.6,           # pixels; CRS units per pixel
     "stride": 32, "out_channels": 2048,     # backbone output geometry
     "classes": [{"value": 0, "name": "background", "color": "#000000"}, ...], "num_classes": K,
     "ignore_index": 255, "init_weights": "exports/r50.safetensors",
     "pretraining": {"method": "CMID", "data": "naip", "epochs": 200, ...},
     "geocmid_version": "0.1.0",
     ...}                                    # any other key is kept verbatim (ModelCard.extra)

:meth:`ModelCard.from_dict` also reads the older layouts: ``geocmid-backbone/1`` (exports, with
``normalisation: {mean, std}``), ``geocmid-task/1`` (fine-tuned checkpoints, flat ``mean``/``std``,
``backbone`` for the architecture) and untagged hand-written prediction cards (``bands``,
``mean``, ``std``, ``classes`` given as ``{value, name, color}`` or bare names, colours as
``'#rrggbb'`` or ``[r, g, b]``). A card of a newer format is refused with a clear error.

Class tables and the default palette come from :mod:`geocmid.data.classes` (one ``ClassInfo`` for
the whole package).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import InitVar, dataclass, field
from pathlib import Path
from typing import Any

from geocmid import __version__
from geocmid.data.classes import ClassInfo, default_color, parse_color
from geocmid.errors import ConfigError, ModelError, did_you_mean
from geocmid.registry import TASK_NAMES

#: Key of the card inside a Lightning checkpoint written by a geocmid task.
CHECKPOINT_KEY = "geocmid_card"
#: Format tag written by :meth:`ModelCard.to_dict`.
CARD_FORMAT = "geocmid-card/2"
#: Older format tags :meth:`ModelCard.from_dict` converts.
LEGACY_FORMATS = ("geocmid-backbone/1", "geocmid-task/1")
#: ``task`` values: a pretraining export, or what a fine-tuned model predicts.
PREDICTION_TASKS = TASK_NAMES
TASKS = ("backbone", *TASK_NAMES)

_VERSIONED = re.compile(r"geocmid-(card|backbone|task)/(\d+)")
_LATEST = {"card": 2, "backbone": 1, "task": 1}


@dataclass(frozen=True)
class ModelCard:
    """What a model takes and gives, and where it came from (see the module docstring).

    Construct it with :meth:`from_dict` / :meth:`from_file` (which also read the older layouts);
    the constructor validates too and raises :class:`~geocmid.errors.ConfigError` naming the bad
    key (``where`` names the card in messages; it is not stored).

    Attributes:
        in_chans: input channels per date.
        bands: ``in_chans`` band names (matched against raster band descriptions) or 1-based band
            indexes, in model channel order; default ``1..in_chans``.
        mean: per-band mean in raw image units, ``in_chans`` values, or ``()`` when unknown.
        std: per-band standard deviation in raw image units (> 0), or ``()``.
        task: ``"backbone"`` (a pretraining export), ``"segmentation"``, ``"change"``,
            ``"classification"``, ``"detection"``, or None for a hand-written prediction card
            (the predictor names the task). Prediction cards need ``mean``, ``std`` and
            ``classes``.
        architecture: timm architecture name of the encoder (``"resnet50"``,
            ``"swin_base_patch4_window7_224"``; older cards may hold a short name).
        family: ``"resnet"``, ``"swin"`` or ``"vit"``.
        model: decoder / network name of a fine-tuned model (``"unet"``, ``"fcsiamdiff"``, ...).
        chip_size: edge in pixels of the chips the model was trained on.
        gsd: ground sampling distance of the training data, CRS units (usually metres) per pixel.
        stride: pixels per cell of the backbone's final feature map (32 ResNet/Swin, 16 ViT).
        out_channels: channels of the backbone's final feature map.
        classes: output classes in logit-channel order (channel k is ``classes[k]``).
        ignore_index: label value left out of the loss, or None.
        init_weights: the encoder weights a fine-tuned model started from (``"random"``, a path).
        pretraining: provenance of pretraining: ``method``, ``data``, ``epochs``, ``steps``,
            ``optimizer``, ``base_lr``, ... (free form).
        geocmid_version: the geocmid version that wrote the model.
        extra: every other key of the card, kept verbatim (and written back by :meth:`to_dict`).
        format: always :data:`CARD_FORMAT` (older layouts are converted on reading).
    """

    in_chans: int
    bands: tuple[int | str, ...] = ()
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    task: str | None = None
    architecture: str | None = None
    family: str | None = None
    model: str | None = None
    chip_size: int | None = None
    gsd: float | None = None
    stride: int | None = None
    out_channels: int | None = None
    classes: tuple[ClassInfo, ...] = ()
    ignore_index: int | None = None
    init_weights: str | None = None
    pretraining: dict[str, Any] = field(default_factory=dict)
    geocmid_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format: str = CARD_FORMAT
    where: InitVar[str] = "model card"

    def __post_init__(self, where: str) -> None:
        def bad(key: str, problem: str, fix: str) -> ConfigError:
            return ConfigError(f"{where}: key '{key}'", problem, fix)

        put = object.__setattr__  # frozen: normalise in place once
        if self.format != CARD_FORMAT:
            raise bad("format", f"is '{self.format}'", f"build cards as {CARD_FORMAT}")
        in_chans = _int(self.in_chans, "in_chans", where)
        if in_chans < 1:
            raise bad("in_chans", f"is {in_chans}", "give the number of input bands (≥ 1)")
        put(self, "in_chans", in_chans)
        bands = tuple(self.bands) or tuple(range(1, in_chans + 1))
        for b in bands:
            index = isinstance(b, int) and not isinstance(b, bool) and b >= 1
            if not (index or (isinstance(b, str) and b)):
                raise bad(
                    "bands",
                    f"entry {b!r} is neither a band name nor an index ≥ 1",
                    "list band names ['red', ...] or 1-based indexes [1, 2, 3]",
                )
        put(self, "bands", bands)
        for key in ("bands", "mean", "std"):
            n = len(getattr(self, key))
            if (key == "bands" or n) and n != in_chans:
                raise bad(
                    key,
                    f"has {n} entries but in_chans is {in_chans}",
                    "give exactly one entry per model input band",
                )
        put(self, "mean", tuple(_float(v, "mean", where) for v in self.mean))
        put(self, "std", tuple(_float(v, "std", where) for v in self.std))
        if bool(self.mean) != bool(self.std):
            missing = "std" if self.mean else "mean"
            raise bad(
                missing,
                "is missing while the other statistic is given",
                "give both 'mean' and 'std' (raw units, one per band)",
            )
        if any(s <= 0 for s in self.std):
            raise bad("std", "contains a value <= 0", "use positive standard deviations")
        if self.task is not None and self.task not in TASKS:
            raise bad(
                "task",
                f"is '{self.task}'{did_you_mean(str(self.task), TASKS)}",
                f"use one of: {', '.join(TASKS)}",
            )
        classes = tuple(self.classes)
        if not all(isinstance(c, ClassInfo) for c in classes):
            raise bad(
                "classes",
                "holds entries that are not ClassInfo",
                "build cards from dictionaries with ModelCard.from_dict",
            )
        values = [c.value for c in classes]
        if len(set(values)) != len(values):
            raise bad("classes", "repeats a class value", "give every class its own value")
        for c in classes:
            if not 0 <= c.value < 65535:
                raise bad(
                    "classes",
                    f"value {c.value} of '{c.name}' is out of range",
                    "use class values 0..65534",
                )
        put(self, "classes", classes)
        if self.task != "backbone":  # a prediction card: prediction needs these
            if not self.mean:
                raise bad("mean", "is missing", "add 'mean' and 'std' (raw units, one per band)")
            if not classes:
                raise bad(
                    "classes",
                    "is missing or empty",
                    "list the classes: [{'value': 0, 'name': 'background'}, ...]",
                )
        for key in ("chip_size", "stride", "out_channels"):
            value = getattr(self, key)
            if value is not None:
                value = _int(value, key, where)
                if value < 1:
                    raise bad(key, f"is {value}", "use a positive number of pixels / channels")
                put(self, key, value)
        if self.gsd is not None:
            gsd = _float(self.gsd, "gsd", where)
            if gsd <= 0:
                raise bad("gsd", f"is {gsd}", "give CRS units per pixel (> 0), or leave it out")
            put(self, "gsd", gsd)
        if self.ignore_index is not None:
            put(self, "ignore_index", _int(self.ignore_index, "ignore_index", where))
        for key in ("architecture", "family", "model", "init_weights", "geocmid_version"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, str):
                raise bad(key, f"is {value!r}, not text", f"write '{key}' as a string")
        for key in ("pretraining", "extra"):
            if not isinstance(getattr(self, key), Mapping):
                raise bad(key, "is not a mapping", f"write '{key}' as a JSON object")
            put(self, key, dict(getattr(self, key)))

    # ---- derived -----------------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of output classes (logit channels)."""
        return len(self.classes)

    # ---- reading ----------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, card: Mapping[str, Any], where: str = "model card") -> ModelCard:
        """Validate a card dictionary of any known layout → :class:`ModelCard`.

        Args:
            card: the parsed JSON (``geocmid-card/2``, ``geocmid-backbone/1``,
                ``geocmid-task/1``, or an untagged prediction card).
            where: names the card in error messages (a file path, "checkpoint 'x.ckpt'").

        Raises:
            ConfigError: a key has a wrong type or value (the message names the key), or the
                ``format`` tag is not a geocmid card's.
            ModelError: the card was written by a newer geocmid (a format this one cannot read).
        """
        if not isinstance(card, Mapping):
            raise ConfigError(where, "is not a JSON object", 'write the card as {"bands": ...}')
        data = dict(card)
        fmt = data.pop("format", None)
        if fmt is not None and fmt != CARD_FORMAT and fmt not in LEGACY_FORMATS:
            m = _VERSIONED.fullmatch(str(fmt))
            if m and int(m.group(2)) > _LATEST[m.group(1)]:
                raise ModelError(
                    f"{where}: key 'format'",
                    f"is '{fmt}', written by a newer geocmid; geocmid {__version__} reads "
                    f"{', '.join((CARD_FORMAT, *LEGACY_FORMATS))}",
                    "upgrade geocmid (pip install -U geocmid) to read this model",
                )
            raise ConfigError(
                f"{where}: key 'format'",
                f"'{fmt}' is not a geocmid model card format",
                f"write '{CARD_FORMAT}' (or leave 'format' out of a hand-written card)",
            )
        if fmt != CARD_FORMAT:
            _upgrade(data, fmt, where)
        if fmt == "geocmid-backbone/1":
            data.setdefault("task", "backbone")
        kw: dict[str, Any] = {"where": where}
        kw["task"] = data.pop("task", None)
        mean, std = data.pop("mean", None), data.pop("std", None)
        kw["mean"] = _numbers(mean, "mean", where)
        kw["std"] = _numbers(std, "std", where)
        bands = data.pop("bands", None)
        if isinstance(bands, str) or (bands is not None and not isinstance(bands, Sequence)):
            raise ConfigError(f"{where}: key 'bands'", "is not a list", "use e.g. [1, 2, 3]")
        kw["bands"] = tuple(bands or ())
        in_chans = data.pop("in_chans", None)
        kw["in_chans"] = (
            in_chans if in_chans is not None else len(kw["mean"]) or len(kw["bands"]) or 0
        )
        num_classes = data.pop("num_classes", None)
        kw["classes"] = _parse_classes(data.pop("classes", None), num_classes, where)
        for key in (
            "architecture", "family", "model", "chip_size", "gsd", "stride", "out_channels",
            "ignore_index", "init_weights", "geocmid_version",
        ):  # fmt: skip
            kw[key] = data.pop(key, None)
        kw["pretraining"] = data.pop("pretraining", None) or {}
        kw["extra"] = data  # everything else, verbatim
        return cls(**kw)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> ModelCard:
        """Read and validate a JSON model card file (any known layout).

        Raises:
            ConfigError: the file does not exist, is not JSON, or holds an invalid card.
            ModelError: the card was written by a newer geocmid.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as error:
            raise ConfigError(str(path), "does not exist", "pass the model card JSON") from error
        except json.JSONDecodeError as error:
            raise ConfigError(str(path), f"is not valid JSON ({error})", "fix the file") from error
        return cls.from_dict(data, where=str(path))

    # ---- writing ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The card in the ``geocmid-card/2`` layout, JSON-serialisable.

        Every known key is written (None / ``[]`` when unknown); ``extra`` keys are merged in at
        the top level. Round-trips through :meth:`from_dict`.
        """
        known = {
            "format": CARD_FORMAT,
            "task": self.task,
            "architecture": self.architecture,
            "family": self.family,
            "model": self.model,
            "in_chans": self.in_chans,
            "bands": list(self.bands),
            "mean": list(self.mean),
            "std": list(self.std),
            "chip_size": self.chip_size,
            "gsd": self.gsd,
            "stride": self.stride,
            "out_channels": self.out_channels,
            "classes": [c.to_dict() for c in self.classes],
            "num_classes": self.num_classes,
            "ignore_index": self.ignore_index,
            "init_weights": self.init_weights,
            "pretraining": dict(self.pretraining),
            "geocmid_version": self.geocmid_version,
        }
        return {**self.extra, **known}

    def to_json(self) -> str:
        """:meth:`to_dict` as indented JSON text (sorted keys, trailing newline)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_file(self, path: str | os.PathLike[str]) -> Path:
        """Write the card as JSON, atomically (temporary file, then ``os.replace``) → the path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)
        return path

    # ---- use elsewhere ----------------------------------------------------------------------
    def timm_kwargs(self, weights: str | os.PathLike[str]) -> dict[str, Any]:
        """Arguments of ``timm.create_model`` that load an export's weights strictly.

        ``timm.create_model(**card.timm_kwargs("NAME.safetensors"))`` builds the backbone
        (``num_classes=0``) and loads every tensor of the file; a key that does not fit is a
        ``RuntimeError`` (the overlay's ``num_classes=0`` keeps timm's load strict, its
        ``input_size`` sets the band count and, for Swin / ViT, the chip size).

        Raises:
            ModelError: the card names no architecture.
        """
        if not self.architecture:
            raise ModelError("model card: key 'architecture'", "is missing", "use a geocmid export")
        size = self.chip_size or 224
        overlay = {
            "file": str(weights),
            "num_classes": 0,
            "input_size": (self.in_chans, size, size),
        }
        return {
            "model_name": self.architecture,
            "pretrained": True,
            "num_classes": 0,
            "pretrained_cfg_overlay": overlay,
        }

    # ---- read access in the JSON layout (for code written against card dictionaries) --------
    def __getitem__(self, key: str) -> Any:
        """``card["bands"]``: the value :meth:`to_dict` writes under ``key`` (KeyError if none)."""
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        """``card.get("gsd")``: like ``dict.get`` on :meth:`to_dict`."""
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


# ------------------------------------------------------------------------------------------------
def _upgrade(data: dict[str, Any], fmt: str | None, where: str) -> None:
    """Rewrite an older (or untagged) card dictionary in place to ``geocmid-card/2`` keys.

    ``normalisation: {mean, std}`` (``geocmid-backbone/1``) becomes top-level ``mean`` / ``std``;
    ``backbone`` (``geocmid-task/1``: the short architecture name) becomes ``architecture``.
    """
    norm = data.pop("normalisation", None)
    if norm is not None:
        if not isinstance(norm, Mapping):
            raise ConfigError(
                f"{where}: key 'normalisation'",
                "is not a mapping",
                'write {"mean": [...], "std": [...]}',
            )
        for stat in ("mean", "std"):
            if stat in norm:
                top = data.get(stat)
                if top is not None and list(top) != list(norm[stat]):
                    raise ConfigError(
                        f"{where}: key 'normalisation.{stat}'",
                        f"differs from the top-level '{stat}'",
                        "keep one of them",
                    )
                data[stat] = norm[stat]
    short = data.pop("backbone", None)  # the short name next to (or instead of) architecture
    if data.get("architecture") is None and short is not None:
        data["architecture"] = short
    if fmt == "geocmid-backbone/1":
        # a description of the old key layout ("keys prefixed 'model.'"), no longer true once
        # the weights are loaded or re-exported
        data.pop("weights", None)


def _int(value: Any, key: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(
            f"{where}: key '{key}'",
            f"is {value!r}, not a whole number",
            f"write '{key}' as an integer",
        )
    return int(value)


def _float(value: Any, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        what = "numbers, one per band" if key in ("mean", "std") else "a number"
        raise ConfigError(
            f"{where}: key '{key}'", f"holds {value!r}, not a number", f"write '{key}' as {what}"
        )
    return float(value)


def _numbers(raw: Any, key: str, where: str) -> tuple[float, ...]:
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ConfigError(
            f"{where}: key '{key}'",
            f"is {raw!r}, not a list",
            f"give '{key}' as one number per band",
        )
    return tuple(_float(v, key, where) for v in raw)


def _parse_classes(raw: Any, num_classes: Any, where: str) -> tuple[ClassInfo, ...]:
    """Class list (dicts or bare names) → ClassInfo; ``class_k`` names from ``num_classes``."""
    if raw in (None, []) and num_classes:
        raw = [f"class_{k}" for k in range(_int(num_classes, "num_classes", where))]
    if raw is None:
        return ()
    if isinstance(raw, str) or not isinstance(raw, Sequence):
        raise ConfigError(
            f"{where}: key 'classes'",
            "is not a list",
            'list the classes: [{"value": 0, "name": "background"}, ...]',
        )
    classes = []
    for k, entry in enumerate(raw):
        if isinstance(entry, str):  # a bare list of names: values are 0..K-1
            entry = {"value": k, "name": entry}
        if isinstance(entry, ClassInfo):
            classes.append(entry)
            continue
        if not isinstance(entry, Mapping) or "name" not in entry:
            raise ConfigError(
                f"{where}: classes[{k}]", "has no 'name'", 'write {"value": 1, "name": "building"}'
            )
        value = _int(entry.get("value", k), f"classes[{k}].value", where)
        raw_color = entry.get("color")
        color = parse_color(
            default_color(k) if raw_color is None else raw_color, f"{where}: classes[{k}]"
        )
        classes.append(ClassInfo(value=value, name=str(entry["name"]), color=color))
    if num_classes is not None and _int(num_classes, "num_classes", where) != len(classes):
        raise ConfigError(
            f"{where}: key 'num_classes'",
            f"is {num_classes} but 'classes' lists {len(classes)}",
            "make them agree (num_classes is the length of classes)",
        )
    return tuple(classes)
