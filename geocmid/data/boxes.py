"""Box label sources for object detection, all brought to map coordinates.

Three kinds of files hold boxes:

* **vector files** (GPKG / GeoJSON / Shapefile / FlatGeobuf): boxes or polygons in map
  coordinates; a polygon stands for its axis-aligned bounding box;
* **CSV** in the DeepForest layout ``image_path,xmin,ymin,xmax,ymax,label``: pixel boxes of a
  georeferenced image (``image_path`` relative to the CSV's folder);
* **Pascal VOC XML** (``<filename>``, ``<size>``, ``<object><bndbox>``): pixel boxes of one image.

Pixel boxes are given in pixel-edge coordinates (0 = left/top edge of the image, ``width`` =
right edge) and are converted to map coordinates with the image's affine transform, so every
source ends up as the same table: a GeoDataFrame of box polygons with ``class_value`` (the raw
class as written in the file), ``source`` (file) and ``row`` (where in the file, for errors).
"""

from __future__ import annotations

import csv
import logging
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning

from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)

VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb")
BOX_COLUMNS = ("xmin", "ymin", "xmax", "ymax")
#: Pixels a box may reach past the image edge (annotation tools round outwards).
EDGE_TOLERANCE = 1.0


@dataclass(frozen=True)
class ImageGrid:
    """What converting pixel boxes needs from an image: its path, size, CRS and transform."""

    path: Path
    width: int
    height: int
    crs: Any
    transform: Affine

    @classmethod
    def open(cls, path: Path, where: str) -> ImageGrid:
        if not path.is_file():
            raise DataError(where, f"refers to the image {path}, which does not exist",
                            "put the image next to the label file or fix its name")  # fmt: skip
        with warnings.catch_warnings():  # we report a missing geotransform ourselves
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                grid = cls(path, src.width, src.height, src.crs, src.transform)
        if grid.crs is None or grid.transform == Affine.identity():
            raise DataError(
                str(path), "is not georeferenced (no CRS or geotransform)",
                "pixel boxes need a georeferenced image (GeoTIFF) to be placed on the map",
            )  # fmt: skip
        return grid

    def to_map(self, boxes: np.ndarray) -> np.ndarray:
        """``[N, 4]`` pixel xyxy → ``[N, 4]`` map (minx, miny, maxx, maxy) via the 4 corners."""
        xs = np.stack([boxes[:, 0], boxes[:, 2], boxes[:, 2], boxes[:, 0]], axis=1)
        ys = np.stack([boxes[:, 1], boxes[:, 1], boxes[:, 3], boxes[:, 3]], axis=1)
        a, b, c, d, e, f = self.transform[:6]
        mx, my = a * xs + b * ys + c, d * xs + e * ys + f
        return np.stack([mx.min(1), my.min(1), mx.max(1), my.max(1)], axis=1)


def _frame(
    bounds: np.ndarray, values: list[Any], rows: list[str], source: Path, crs: Any,
    images: list[str] | None = None,
) -> gpd.GeoDataFrame:  # fmt: skip
    data: dict[str, Any] = {"class_value": values, "source": str(source), "row": rows}
    if images is not None:
        data["image"] = images
    geometry = shapely.box(*bounds.T) if len(bounds) else []
    return gpd.GeoDataFrame(data, geometry=geometry, crs=crs)


def check_pixel_boxes(boxes: np.ndarray, grid: ImageGrid, rows: list[str], where: str) -> None:
    """Raise :class:`DataError` naming the first degenerate box or box outside the image."""
    w, h, tol = grid.width, grid.height, EDGE_TOLERANCE
    for (x0, y0, x1, y1), row in zip(boxes.tolist(), rows, strict=True):
        if not np.isfinite([x0, y0, x1, y1]).all():
            raise DataError(f"{where}, {row}", "has a missing or non-numeric coordinate")
        if x0 >= x1 or y0 >= y1:
            raise DataError(
                f"{where}, {row}",
                f"is not a box: xmin={x0:g}, ymin={y0:g}, xmax={x1:g}, ymax={y1:g}",
                "each box needs xmin < xmax and ymin < ymax; if the file orders its columns "
                "differently (e.g. xmin,xmax,ymin,ymax without a header) pass column_order",
            )
        if x0 < -tol or y0 < -tol or x1 > w + tol or y1 > h + tol:
            raise DataError(
                f"{where}, {row}",
                f"box ({x0:g}, {y0:g}, {x1:g}, {y1:g}) lies outside the image "
                f"{grid.path.name} ({w}×{h} pixels)",
                "check the box coordinates (pixels from the top-left corner) and the image",
            )


# ------------------------------------------------------------------------------------------------
def read_csv_boxes(
    path: str | Path,
    *,
    image: str | Path | None = None,
    column_order: Sequence[str] | None = None,
    label_column: str = "label",
    crs: Any = None,
) -> gpd.GeoDataFrame:
    """Pixel boxes from a DeepForest-style CSV → box polygons in map coordinates.

    Args:
        path: the CSV. With a header, columns are found by name (``image_path``, ``xmin``,
            ``ymin``, ``xmax``, ``ymax``, ``label``) in any order, so neon-trees' ``*_truth.csv``
            (``xmin,xmax,ymin,ymax``) reads as is.
        image: the georeferenced image of every row (default: each row's ``image_path``,
            relative to the CSV's folder).
        column_order: names of the columns in file order, for files without a header (or
            whose header is wrong), e.g. ``["image_path", "xmin", "xmax", "ymin", "ymax",
            "label"]``. With it the first line is read as data unless it repeats these names.
        label_column: column holding the class (absent: every box is class ``"object"``).
        crs: CRS of the output (default: the first image's).

    Returns:
        GeoDataFrame with ``class_value``, ``source``, ``row`` (``"line N"``), ``image``;
        ``attrs["negatives"]``: images whose only row is ``0,0,0,0`` (DeepForest's way of
        listing an image without objects).

    Raises:
        DataError: empty file, missing columns, non-numeric or degenerate boxes, boxes outside
            the image (naming the file and line), missing or non-georeferenced image.
    """
    path = Path(path)
    with path.open(newline="") as f:
        lines = list(csv.reader(f))
    lines = [(n, r) for n, r in enumerate(lines, start=1) if any(c.strip() for c in r)]
    if column_order is not None:
        header = [c.strip() for c in column_order]
        if lines and [c.strip() for c in lines[0][1]] == header:
            lines = lines[1:]
    elif lines:
        header, lines = [c.strip() for c in lines[0][1]], lines[1:]
    if not lines:
        raise DataError(str(path), "holds no boxes (empty file)", "label at least one object")
    missing = [c for c in BOX_COLUMNS if c not in header]
    if image is None and "image_path" not in header:
        missing.append("image_path")
    if missing:
        raise DataError(
            str(path), f"has no column(s) {', '.join(missing)} (columns: {', '.join(header)})",
            "use the layout image_path,xmin,ymin,xmax,ymax,label, pass image=, or pass "
            "column_order to name the columns",
        )  # fmt: skip
    col = {name: header.index(name) for name in header}

    def cell(row: list[str], name: str) -> str:
        return row[col[name]].strip() if col[name] < len(row) else ""

    groups: dict[Path, tuple[list[list[float]], list[Any], list[str]]] = {}
    for number, row in lines:
        target = Path(image) if image is not None else path.parent / cell(row, "image_path")
        coords = []
        for name in BOX_COLUMNS:
            try:
                coords.append(float(cell(row, name)))
            except ValueError:
                raise DataError(
                    f"{path}, line {number}",
                    f"{name}={cell(row, name)!r} is not a number",
                    "fix the row, or pass column_order if the columns are misnamed",
                ) from None
        label = cell(row, label_column) if label_column in col else "object"
        boxes, labels, rows = groups.setdefault(target, ([], [], []))
        if coords == [0.0, 0.0, 0.0, 0.0]:  # DeepForest's row for an image without objects
            continue
        boxes.append(coords)
        labels.append(label)
        rows.append(f"line {number}")
    frames = []
    negatives: list[str] = []
    for target, (boxes, labels, rows) in groups.items():
        grid = ImageGrid.open(target, f"{path}, {rows[0] if rows else 'a 0,0,0,0 row'}")
        if not boxes:
            negatives.append(str(target))
            frames.append(_frame(np.zeros((0, 4)), [], [], path, grid.crs, []))
            continue
        array = np.asarray(boxes, dtype=np.float64)
        check_pixel_boxes(array, grid, rows, str(path))
        frame = _frame(grid.to_map(array), labels, rows, path, grid.crs, [str(target)] * len(rows))
        frames.append(frame)
    out = _concat(frames, crs)
    out.attrs["negatives"] = negatives
    return out


def read_voc_boxes(
    path: str | Path, *, image: str | Path | None = None, crs: Any = None
) -> gpd.GeoDataFrame:
    """Pixel boxes from a Pascal VOC XML annotation → box polygons in map coordinates.

    Args:
        path: the XML file.
        image: its georeferenced image (default: ``<filename>`` next to the XML).
        crs: CRS of the output (default: the image's).

    An annotation without ``<object>`` is an image without objects (a negative): the frame is
    empty and ``frame.attrs["negatives"]`` names the image.

    Raises:
        DataError: unreadable XML, a malformed or outside box (naming the object),
            image size different from ``<size>``, missing or non-georeferenced image.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(str(path), f"is not valid XML ({error})") from error
    filename = root.findtext("filename")
    if image is None and not filename:
        raise DataError(str(path), "names no <filename>", "pass image= explicitly")
    target = Path(image) if image is not None else path.parent / str(filename).strip()
    objects = root.findall("object")
    grid = ImageGrid.open(target, str(path))
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        declared = (
            int(float(size.findtext("width", "0"))),
            int(float(size.findtext("height", "0"))),
        )
        if declared != (grid.width, grid.height):
            raise DataError(
                str(path), f"declares a {declared[0]}×{declared[1]} image but {target.name} is "
                f"{grid.width}×{grid.height}", "pair the annotation with the image it was made on",
            )  # fmt: skip
    boxes, labels, rows = [], [], []
    for k, obj in enumerate(objects, start=1):
        row = f"object {k}"
        box = obj.find("bndbox")
        try:
            assert box is not None
            boxes.append([float(box.findtext(c, "")) for c in BOX_COLUMNS])
        except (AssertionError, ValueError):
            raise DataError(f"{path}, {row}", "has no complete numeric <bndbox>") from None
        labels.append((obj.findtext("name") or "object").strip())
        rows.append(row)
    if not objects:  # an image without objects: a negative (its chips teach silence)
        out = _concat([_frame(np.zeros((0, 4)), [], [], path, grid.crs, [])], crs)
        out.attrs["negatives"] = [str(target)]
        return out
    array = np.asarray(boxes, dtype=np.float64)
    check_pixel_boxes(array, grid, rows, str(path))
    frame = _frame(grid.to_map(array), labels, rows, path, grid.crs, [str(target)] * len(rows))
    return _concat([frame], crs)


def read_vector_boxes(
    path: str | Path, *, class_attribute: str | None = None, layer: str | None = None,
    crs: Any = None,
) -> gpd.GeoDataFrame:  # fmt: skip
    """Boxes or polygons from a vector file → their axis-aligned bounding boxes (map coordinates).

    Args:
        path: GPKG / GeoJSON / Shapefile / FlatGeobuf.
        class_attribute: attribute holding the class (None: every box is class ``1``).
        layer: layer of a multi-layer file.
        crs: CRS of the output (default: the file's).

    Raises:
        DataError: unreadable or empty file, no CRS, missing class attribute, point or empty
            geometries (naming the feature).
    """
    path = Path(path)
    try:
        gdf = gpd.read_file(path, layer=layer)
    except Exception as error:  # pyogrio raises several types for unreadable files
        raise DataError(str(path), f"cannot be read as a vector file ({error})") from error
    if gdf.empty:
        raise DataError(str(path), "holds no features (empty file)", "label at least one object")
    if gdf.crs is None:
        raise DataError(str(path), "has no CRS", "write the file with its coordinate system")
    if class_attribute is not None and class_attribute not in gdf.columns:
        raise DataError(
            str(path), f"has no attribute '{class_attribute}' (has: {', '.join(gdf.columns)})",
            "set class_attribute to the column holding the class",
        )  # fmt: skip
    geoms = gdf.geometry.values
    bad = np.flatnonzero(shapely.is_missing(geoms) | shapely.is_empty(geoms))
    if len(bad):
        raise DataError(f"{path}, feature {bad[0] + 1}", "has an empty geometry",
                        "delete it or draw its box")  # fmt: skip
    types = shapely.get_type_id(geoms)
    points = np.flatnonzero(np.isin(types, (0, 4)))  # Point, MultiPoint
    if len(points):
        raise DataError(
            f"{path}, feature {points[0] + 1}", "is a point; detection needs boxes or polygons",
            "draw boxes (or buffer the points to the object size)",
        )  # fmt: skip
    values = gdf[class_attribute].tolist() if class_attribute else [1] * len(gdf)
    rows = [f"feature {k}" for k in range(1, len(gdf) + 1)]
    frame = _frame(shapely.bounds(geoms), values, rows, path, gdf.crs)
    return _concat([frame], crs)


def _concat(frames: list[gpd.GeoDataFrame], crs: Any) -> gpd.GeoDataFrame:
    """Bring frames to ``crs`` (default: the first frame's), keeping boxes axis-aligned."""
    crs = crs or frames[0].crs
    import pandas as pd

    out = []
    for frame in frames:
        if frame.crs != crs:
            frame = frame.to_crs(crs)
            frame["geometry"] = shapely.envelope(frame.geometry.values)
        out.append(frame)
    return gpd.GeoDataFrame(pd.concat(out, ignore_index=True), crs=crs)


def read_boxes(
    path: str | Path,
    *,
    image: str | Path | None = None,
    column_order: Sequence[str] | None = None,
    label_column: str = "label",
    class_attribute: str | None = None,
    layer: str | None = None,
    crs: Any = None,
) -> gpd.GeoDataFrame:
    """Read any box file by its suffix (``.csv``, ``.xml`` or a vector format); see the readers."""
    path = Path(path)
    if not path.is_file():
        raise DataError(str(path), "does not exist", "check the path of the label file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return read_csv_boxes(
            path, image=image, column_order=column_order, label_column=label_column, crs=crs
        )
    if suffix == ".xml":
        return read_voc_boxes(path, image=image, crs=crs)
    if suffix in VECTOR_SUFFIXES:
        return read_vector_boxes(path, class_attribute=class_attribute, layer=layer, crs=crs)
    raise ConfigError(
        str(path), f"has an unknown box format '{suffix}'",
        f"use .csv (DeepForest), .xml (Pascal VOC) or a vector file ({', '.join(VECTOR_SUFFIXES)})",
    )  # fmt: skip


def class_index(
    boxes: gpd.GeoDataFrame, classes: Sequence[Any] | None, where: str
) -> tuple[np.ndarray, list[str]]:
    """Map raw ``class_value`` to detector labels ``1..K`` (0 is the detectors' background).

    Args:
        boxes: frame from the readers.
        classes: class names or values in label order, or catalog ``ClassInfo`` objects
            (matched by value or name). None: the sorted distinct values found.
        where: named in the error.

    Returns:
        ``(labels [N] int64 in 1..K, class names [K])``.
    """
    raw = [str(v) for v in boxes["class_value"].tolist()]
    if classes is None or len(classes) == 0:
        keys = sorted(set(raw), key=lambda s: (not s.lstrip("-").isdigit(), s.zfill(12)))
        names = keys
        lookup = {k: i + 1 for i, k in enumerate(keys)}
    else:
        lookup, names = {}, []
        for i, c in enumerate(classes):
            if hasattr(c, "value") and hasattr(c, "name"):
                lookup[str(c.value)] = lookup[str(c.name)] = i + 1
                names.append(str(c.name))
            else:
                lookup[str(c)] = i + 1
                names.append(str(c))
    unknown = sorted(set(raw) - set(lookup))
    if unknown:
        first = boxes.iloc[raw.index(unknown[0])]
        raise DataError(
            f"{first['source']}, {first['row']}",
            f"class {unknown[0]!r} is not among the classes {names} ({where})",
            "add it to 'classes' or fix the label",
        )
    return np.array([lookup[v] for v in raw], dtype=np.int64), names
