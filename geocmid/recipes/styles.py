"""QGIS style files written beside the outputs, so classes open with their names and colours.

QGIS loads ``NAME.qml`` automatically when it opens ``NAME.tif`` or ``NAME.gpkg`` from the same
folder: a paletted renderer for the class raster, a categorised renderer (on ``class_name``) for
the polygons. Background classes of a change map are transparent so the map overlays imagery.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import quoteattr

HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"


def _rgb(color: str | list[int]) -> tuple[int, int, int]:
    """``#rrggbb`` or ``[r, g, b(, a)]`` (cards store either) → ``(r, g, b)``."""
    if not isinstance(color, str):
        r, g, b = (int(v) for v in list(color)[:3])
        return r, g, b
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def _hex(color: str | list[int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*_rgb(color))


def raster_qml(classes: list[dict], transparent: set[int] | None = None) -> str:
    """Paletted renderer of band 1 with one entry per class (value, colour, name)."""
    transparent = transparent or set()
    entries = "\n".join(
        f'        <paletteEntry value="{c["value"]}" color="{_hex(c["color"])}" '
        f"label={quoteattr(str(c['name']))} "
        f'alpha="{0 if c["value"] in transparent else 255}"/>'
        for c in classes
    )
    return (
        HEADER + '<qgis version="3.28.0" styleCategories="AllStyleCategories">\n'
        "  <pipe>\n"
        '    <rasterrenderer type="paletted" band="1" opacity="1" alphaBand="-1" '
        'nodataColor="">\n'
        f"      <colorPalette>\n{entries}\n      </colorPalette>\n"
        "    </rasterrenderer>\n"
        "  </pipe>\n"
        "  <blendMode>0</blendMode>\n"
        "</qgis>\n"
    )


def vector_qml(classes: list[dict], attribute: str = "class_name") -> str:
    """Categorised renderer on ``attribute``: a filled polygon per class, outlined darker."""
    categories, symbols = [], []
    for i, c in enumerate(classes):
        r, g, b = _rgb(c["color"])
        name = quoteattr(str(c["name"]))
        categories.append(f'      <category render="true" symbol="{i}" value={name} label={name}/>')
        symbols.append(
            f'      <symbol type="fill" name="{i}" alpha="0.7" clip_to_extent="1" force_rhr="0">\n'
            '        <layer class="SimpleFill" enabled="1" locked="0" pass="0">\n'
            '          <Option type="Map">\n'
            f'            <Option type="QString" name="color" value="{r},{g},{b},255"/>\n'
            '            <Option type="QString" name="outline_color" '
            f'value="{r // 2},{g // 2},{b // 2},255"/>\n'
            '            <Option type="QString" name="outline_width" value="0.3"/>\n'
            '            <Option type="QString" name="style" value="solid"/>\n'
            "          </Option>\n"
            "        </layer>\n"
            "      </symbol>"
        )
    return (
        HEADER + '<qgis version="3.28.0" styleCategories="Symbology">\n'
        f'  <renderer-v2 type="categorizedSymbol" attr="{attribute}" symbollevels="0" '
        'enableorderby="0" forceraster="0">\n'
        "    <categories>\n" + "\n".join(categories) + "\n    </categories>\n"
        "    <symbols>\n" + "\n".join(symbols) + "\n    </symbols>\n"
        "  </renderer-v2>\n"
        "</qgis>\n"
    )


def write_styles(outputs: dict[str, Path], classes: list[dict], task: str) -> list[Path]:
    """Write ``.qml`` files beside the class raster and the GPKG; returns the files written."""
    written = []
    transparent = {0} if task == "change" else set()
    if "classes" in outputs:
        path = outputs["classes"].with_suffix(".qml")
        path.write_text(raster_qml(classes, transparent))
        written.append(path)
    if "vectors" in outputs:
        path = outputs["vectors"].with_suffix(".qml")
        path.write_text(vector_qml(classes))
        written.append(path)
    return written
