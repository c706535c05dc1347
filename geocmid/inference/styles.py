"""QGIS styles for prediction outputs, beside the files and inside the GeoPackage.

QGIS loads ``NAME.qml`` automatically when it opens ``NAME.tif`` or ``NAME.gpkg`` from the same
folder, and the default style of a GeoPackage layer from the package's ``layer_styles`` table
(the table QGIS itself writes with "Save as default"), so a layer opened from the file alone
looks right. The class raster gets a paletted renderer, the polygons a categorised renderer on
``class_name``; the background / no-change class is transparent so maps overlay imagery.

``geocmid predict`` and the recipes' predict step write the same styles
(:func:`write_styles`).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from geocmid.data.classes import ClassInfo

HEADER = "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n"

#: Columns of QGIS's ``layer_styles`` table (QgsOgrProvider / QgsProviderRegistry styles).
LAYER_STYLES_SQL = """CREATE TABLE IF NOT EXISTS layer_styles (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    f_table_catalog TEXT(256),
    f_table_schema TEXT(256),
    f_table_name TEXT(256),
    f_geometry_column TEXT(256),
    styleName TEXT(30),
    styleQML TEXT,
    styleSLD TEXT,
    useAsDefault BOOLEAN,
    description TEXT,
    owner TEXT(30),
    ui TEXT(30),
    update_time DATETIME DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now'))
)"""


def class_dicts(classes: Iterable[ClassInfo | Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Classes as ``{"value", "name", "color"}`` dicts (from ClassInfo or card JSON)."""
    out = []
    for c in classes:
        if isinstance(c, ClassInfo):
            out.append(c.to_dict())
        else:
            info = ClassInfo(int(c["value"]), str(c["name"]), c.get("color") or "#808080")
            out.append(info.to_dict())
    return out


def _rgb(color: str) -> tuple[int, int, int]:
    color = color.lstrip("#")
    return int(color[0:2], 16), int(color[2:4], 16), int(color[4:6], 16)


def raster_qml(classes: Iterable[Any], transparent: set[int] | None = None) -> str:
    """Paletted renderer of band 1 with one entry per class (value, colour, name); classes in
    ``transparent`` (the background / no change) get alpha 0. Nodata is transparent in QGIS."""
    transparent = transparent or set()
    entries = "\n".join(
        f'        <paletteEntry value="{c["value"]}" color="{c["color"][:7]}" '
        f"label={quoteattr(str(c['name']))} "
        f'alpha="{0 if c["value"] in transparent else 255}"/>'
        for c in class_dicts(classes)
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


def vector_qml(classes: Iterable[Any], attribute: str = "class_name") -> str:
    """Categorised renderer on ``attribute``: a filled polygon per class, outlined darker."""
    categories, symbols = [], []
    for i, c in enumerate(class_dicts(classes)):
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


def gpkg_layers(path: Path) -> list[tuple[str, str]]:
    """``(table, geometry column)`` of every feature layer of a GeoPackage."""
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT table_name, column_name FROM gpkg_geometry_columns"))


def embed_gpkg_style(path: Path, qml: str, name: str = "geocmid") -> None:
    """Store ``qml`` as the default QGIS style of every feature layer of the GeoPackage
    (``layer_styles``; replaces a style of the same name)."""
    layers = gpkg_layers(path)
    with sqlite3.connect(path) as db:
        db.execute(LAYER_STYLES_SQL)
        for table, geometry in layers:
            db.execute(
                "DELETE FROM layer_styles WHERE f_table_name = ? AND styleName = ?", (table, name)
            )
            db.execute(
                "UPDATE layer_styles SET useAsDefault = 0 WHERE f_table_name = ?", (table,)
            )
            db.execute(
                "INSERT INTO layer_styles (f_table_catalog, f_table_schema, f_table_name, "
                "f_geometry_column, styleName, styleQML, styleSLD, useAsDefault, description, "
                "owner, ui) VALUES ('', '', ?, ?, ?, ?, '', 1, ?, '', NULL)",
                (table, geometry, name, qml, "classes with their names and colours (geocmid)"),
            )


def describe_gpkg_columns(path: Path, descriptions: Mapping[str, str]) -> None:
    """Column descriptions in the GeoPackage schema extension (``gpkg_data_columns``), which
    GDAL reads as field comments and QGIS shows in the layer's fields."""
    layers = gpkg_layers(path)
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE IF NOT EXISTS gpkg_data_columns (table_name TEXT NOT NULL, "
            "column_name TEXT NOT NULL, name TEXT, title TEXT, description TEXT, "
            "mime_type TEXT, constraint_name TEXT, "
            "CONSTRAINT pk_gdc PRIMARY KEY (table_name, column_name), "
            "CONSTRAINT gdc_tn UNIQUE (table_name, name))"
        )
        db.execute(
            "CREATE TABLE IF NOT EXISTS gpkg_extensions (table_name TEXT, column_name TEXT, "
            "extension_name TEXT NOT NULL, definition TEXT NOT NULL, scope TEXT NOT NULL, "
            "CONSTRAINT ge_tce UNIQUE (table_name, column_name, extension_name))"
        )
        for table_name in ("gpkg_data_columns", "gpkg_data_column_constraints"):
            db.execute(
                "INSERT OR IGNORE INTO gpkg_extensions VALUES (?, NULL, 'gpkg_schema', "
                "'http://www.geopackage.org/spec121/#extension_schema', 'read-write')",
                (table_name,),
            )
        for table, _ in layers:
            columns = {row[1] for row in db.execute(f'PRAGMA table_info("{table}")')}
            for column, text in descriptions.items():
                if column in columns:
                    db.execute(
                        "INSERT OR REPLACE INTO gpkg_data_columns (table_name, column_name, "
                        "name, title, description) VALUES (?, ?, ?, ?, ?)",
                        (table, column, column, column, text),
                    )


def _named_background(classes: list[dict[str, Any]], task: str) -> int | None:
    from geocmid.inference.card import BACKGROUND_NAMES

    for c in classes:
        if "".join(ch for ch in str(c["name"]).lower() if ch.isalnum()) in BACKGROUND_NAMES:
            return int(c["value"])
    return int(classes[0]["value"]) if task == "change" and classes else None


def write_styles(
    outputs: Mapping[str, Path],
    classes: Iterable[Any],
    task: str = "",
    background: int | str | None = "auto",
) -> list[Path]:
    """Write ``.qml`` styles beside the class raster and the GPKG, and the GPKG's own default
    style (``layer_styles``); returns the ``.qml`` files written.

    Args:
        outputs: output kind → path (``classes``, ``vectors``; others are ignored).
        classes: the model's classes (ClassInfo or ``{"value", "name", "color"}``).
        task: the model's task.
        background: the background / no-change class value, drawn transparent; ``"auto"``:
            the class named so (:func:`geocmid.inference.card.background_value`'s rule), else
            for change maps the first class; ``None``: none.
    """
    classes = class_dicts(classes)
    if background == "auto":
        background = _named_background(classes, task)
    transparent = {background} if background is not None else set()
    written = []
    if "classes" in outputs and Path(outputs["classes"]).exists():
        path = Path(outputs["classes"]).with_suffix(".qml")
        path.write_text(raster_qml(classes, transparent))
        written.append(path)
    if "vectors" in outputs and Path(outputs["vectors"]).exists():
        path = Path(outputs["vectors"]).with_suffix(".qml")
        qml = vector_qml(classes)
        path.write_text(qml)
        embed_gpkg_style(Path(outputs["vectors"]), qml)
        written.append(path)
    return written
