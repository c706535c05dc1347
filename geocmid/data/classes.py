"""Class tables shared by every layer: :class:`ClassInfo` and the default palette.

One representation for a class colour: an RGBA tuple of 0-255 integers (what GDAL colour tables,
rasterio and numpy quick-looks take). ``'#rrggbb'`` strings (catalog YAML, model-card JSON,
matplotlib) are accepted wherever a colour is read and are available as :attr:`ClassInfo.hex`.

This module is the lowest layer that knows about classes: the catalog, datamodules, tasks, model
cards and prediction all import it, and it imports nothing from geocmid but the errors.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from geocmid.errors import ConfigError

#: An RGBA colour, 0-255 per channel.
RGBA = tuple[int, int, int, int]

#: Colours of classes that declare none, by class *position* (not value). Index 0 is black, for
#: the background / no-change class that usually comes first.
DEFAULT_COLORS: tuple[str, ...] = (
    "#000000", "#e6194b", "#3cb44b", "#ffe119", "#0082c8", "#f58230",
    "#911eb4", "#46f0f0", "#f032e6", "#d2f53c", "#fabed4", "#008080",
)  # fmt: skip

_HEX = re.compile(r"#([0-9a-fA-F]{6}|[0-9a-fA-F]{8})")


def default_color(index: int) -> str:
    """The palette colour of the class at position ``index`` (0-based), as ``'#rrggbb'``."""
    return DEFAULT_COLORS[index % len(DEFAULT_COLORS)]


def _is_byte(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool) and 0 <= int(v) <= 255


def parse_color(raw: Any, where: str = "colour") -> RGBA:
    """``'#rrggbb'``, ``'#rrggbbaa'``, ``[r, g, b]`` or ``[r, g, b, a]`` (0-255) → RGBA tuple.

    Raises:
        ConfigError: naming ``where`` when the value is none of these.
    """
    parts: list[int] | None = None
    if isinstance(raw, str) and _HEX.fullmatch(raw):
        parts = [int(raw[i : i + 2], 16) for i in range(1, len(raw), 2)]
    elif (
        isinstance(raw, Sequence)
        and not isinstance(raw, str)
        and len(raw) in (3, 4)
        and all(_is_byte(v) for v in raw)
    ):
        parts = [int(v) for v in raw]
    if parts is None:
        raise ConfigError(
            where, f"colour {raw!r} is not understood", "write '#rrggbb' or [r, g, b] (0-255)"
        )
    if len(parts) == 3:
        parts.append(255)
    return (parts[0], parts[1], parts[2], parts[3])


def color_hex(color: RGBA) -> str:
    """RGBA → ``'#rrggbb'`` (``'#rrggbbaa'`` when not opaque)."""
    text = "#{:02x}{:02x}{:02x}".format(*color[:3])
    return text if color[3] == 255 else text + f"{color[3]:02x}"


@dataclass(frozen=True)
class ClassInfo:
    """One class: the pixel / attribute / raster value, a name and a display colour.

    Attributes:
        value: the class value in label rasters, vector attributes and prediction rasters.
        name: display name.
        color: RGBA, 0-255 per channel. The constructor also takes ``'#rrggbb'``,
            ``'#rrggbbaa'`` or ``[r, g, b]`` and stores the RGBA tuple.
    """

    value: int
    name: str
    color: RGBA

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", int(self.value))
        object.__setattr__(self, "name", str(self.name))
        object.__setattr__(self, "color", parse_color(self.color, f"class '{self.name}'"))

    @property
    def rgb(self) -> tuple[int, int, int]:
        """Colour as ``(r, g, b)``, 0-255 (GeoTIFF colour tables, QGIS styles)."""
        return self.color[0], self.color[1], self.color[2]

    @property
    def hex(self) -> str:
        """Colour as ``'#rrggbb'`` (``'#rrggbbaa'`` if not opaque): JSON, YAML, matplotlib."""
        return color_hex(self.color)

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "name", "color": "#rrggbb"}``: the form written to model cards."""
        return {"value": self.value, "name": self.name, "color": self.hex}
