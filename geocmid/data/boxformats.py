"""Object labels of plain (not georeferenced) image chips, in the formats benchmarks ship.

Every reader returns the objects of one image in **pixel coordinates of that image** (x right,
y down, 0 = left / top edge of the image, ``width`` = right edge), as an :class:`ImageObjects`:
each object is a quadrilateral ``[4, 2]`` (an oriented box is kept as its 4 corners; an
axis-aligned box is the quadrilateral of its corners), its class name and a difficulty flag.
The axis-aligned box of an object is derived from its corners (min / max), clipped to the
image.

Formats (``format`` of a ``detection_folder`` catalog entry):

* ``dota``: DOTA ``labelTxt`` (DOTA devkit, https://captain-whu.github.io/DOTA/dataset.html):
  optional header lines ``imagesource:GoogleEarth`` and ``gsd:0.146343590398``, then one object
  per line ``x1 y1 x2 y2 x3 y3 x4 y4 category difficult`` (pixels; ``difficult`` 0/1, absent
  in some releases = 0).
* ``yolo_obb``: Ultralytics YOLO-OBB, ``class x1 y1 x2 y2 x3 y3 x4 y4`` with the corners
  normalised to 0-1 by the image width / height and ``class`` an index into the dataset YAML's
  ``names``; ``yolo``: ``class cx cy w h`` (normalised centre and size).
* ``nwpu``: NWPU VHR-10 ground truth, ``(x1,y1),(x2,y2),class_id`` (top-left, bottom-right,
  1-based class id), spaces allowed inside the brackets, CRLF or LF line ends.
* ``polygon_csv``: one CSV for all images, a row per object with the image name, a polygon in
  pixels (a Python-style list of ``(x, y)`` tuples, closed or not, or WKT ``POLYGON ((...))``)
  and the class (Airbus aircraft ``annotations.csv``: ``id,image_id,geometry,class``).
* ``csv``: one CSV for all images, DeepForest layout ``image_path,xmin,ymin,xmax,ymax,label``.
* ``voc``: Pascal VOC XML per image (``<object><name>``, ``<bndbox>``, ``<difficult>``).

An image whose label file holds no object is a valid negative (every DOTA-style dataset has
them). Objects reaching past the image edge (truncated objects: DOTA crops, Airbus) keep their
corners; their axis-aligned box is clipped to the image, and an object left with no area inside
the image is dropped (counted in :attr:`ImageObjects.dropped`).
"""

from __future__ import annotations

import ast
import csv
import logging
import re
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: ``format`` values of a ``detection_folder`` entry.
FORMATS = ("dota", "yolo_obb", "yolo", "nwpu", "polygon_csv", "csv", "voc")
#: Formats whose labels are oriented quadrilaterals (oriented-box mAP is reported for them).
ORIENTED_FORMATS = ("dota", "yolo_obb", "polygon_csv")
#: Formats with one label file per image, and its suffix.
LABEL_SUFFIX = {"dota": ".txt", "yolo_obb": ".txt", "yolo": ".txt", "nwpu": ".txt", "voc": ".xml"}
#: Formats with one table for every image.
TABLE_FORMATS = ("polygon_csv", "csv")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
#: Split names a split sub-folder or split file may use, and the split they mean.
SPLIT_NAMES = {"train": "train", "training": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test", "testing": "test"}  # fmt: skip
#: ``difficult`` policies: train on them and leave them out of mAP (DOTA's evaluation), count
#: them like any object, or drop them.
DIFFICULT_POLICIES = ("ignore", "keep", "drop")


@dataclass
class ImageObjects:
    """The objects of one image, in pixels of that image.

    Attributes:
        image: the image file.
        width, height: image size in pixels.
        polygons: ``[N, 4, 2]`` float64 corners (x, y), pixel-edge coordinates, as written in
            the label file (may reach past the image edge).
        classes: ``N`` class names.
        difficult: ``[N]`` bool, the file's difficulty flag (False where it has none).
        meta: header values of the label file (DOTA: ``imagesource``, ``gsd``).
        dropped: objects of the file left out because no part of them lies in the image.
        split: ``train`` / ``val`` / ``test``, or ``""`` when the dataset defines none.
    """

    image: Path
    width: int
    height: int
    polygons: np.ndarray
    classes: list[str]
    difficult: np.ndarray
    meta: dict[str, str] = field(default_factory=dict)
    dropped: int = 0
    split: str = ""

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def boxes(self) -> np.ndarray:
        """``[N, 4]`` float64 axis-aligned boxes (xmin, ymin, xmax, ymax) clipped to the image."""
        if not len(self.polygons):
            return np.zeros((0, 4))
        lo, hi = self.polygons.min(axis=1), self.polygons.max(axis=1)
        box = np.concatenate([lo, hi], axis=1)
        return np.clip(box, 0, [self.width, self.height, self.width, self.height])


# ---- one label file -> objects -----------------------------------------------------------------
def _quads_from_boxes(boxes: np.ndarray) -> np.ndarray:
    """``[N, 4]`` xyxy → ``[N, 4, 2]`` corners (top-left, top-right, bottom-right, bottom-left)."""
    x0, y0, x1, y1 = boxes.T
    return np.stack([np.stack([x0, y0], 1), np.stack([x1, y0], 1),
                     np.stack([x1, y1], 1), np.stack([x0, y1], 1)], axis=1)  # fmt: skip


def _numbers(tokens: Sequence[str], where: str, what: str) -> list[float]:
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        raise DataError(where, f"{what}: {' '.join(tokens)!r} holds a non-number",
                        "fix the line; coordinates are numbers in pixels") from None  # fmt: skip
    if not np.isfinite(values).all():
        raise DataError(where, f"{what}: a coordinate is not finite ({' '.join(tokens)})")
    return values


def parse_dota(text: str, where: str) -> tuple[np.ndarray, list[str], np.ndarray, dict[str, str]]:
    """DOTA ``labelTxt`` text → ``(corners [N, 4, 2], classes, difficult [N], header)``.

    Header lines ``key:value`` (``imagesource``, ``gsd``) may come first, in any order; blank
    lines are skipped. Class names keep their hyphens (``storage-tank``).

    Raises:
        DataError: a line with fewer than 9 fields, non-numeric corners, a difficulty other than
            0 / 1 (naming the file and line).
    """
    quads, classes, difficult, meta = [], [], [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        head = re.fullmatch(r"([A-Za-z_]+)\s*:\s*(.*)", line)
        if head:
            meta[head.group(1).lower()] = head.group(2).strip()
            continue
        parts = line.split()
        at = f"{where}, line {number}"
        if len(parts) < 9:
            raise DataError(
                at, f"has {len(parts)} fields; DOTA lines are 'x1 y1 x2 y2 x3 y3 x4 y4 category "
                "difficult'", "fix the line, or set the entry's 'format' to the file's format",
            )  # fmt: skip
        coords = _numbers(parts[:8], at, "corners")
        flag = parts[9] if len(parts) > 9 else "0"
        if flag not in ("0", "1"):
            raise DataError(at, f"difficulty {flag!r} is not 0 or 1", "write 0 or 1")
        quads.append(np.reshape(coords, (4, 2)))
        classes.append(parts[8])
        difficult.append(flag == "1")
    return _pack(quads), classes, np.array(difficult, dtype=bool), meta


def parse_yolo(
    text: str, where: str, width: int, height: int, oriented: bool = True
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """YOLO-OBB (``cls x1 y1 .. x4 y4``) or YOLO (``cls cx cy w h``) → pixel corners.

    Normalised coordinates are multiplied by the image ``width`` (x) and ``height`` (y); the
    class token is returned as written (an index into the dataset YAML's ``names``).

    Raises:
        DataError: wrong field count or non-numbers (naming file and line).
    """
    quads, classes = [], []
    fields = 9 if oriented else 5
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        at = f"{where}, line {number}"
        if len(parts) != fields:
            layout = "class x1 y1 x2 y2 x3 y3 x4 y4" if oriented else "class cx cy w h"
            raise DataError(at, f"has {len(parts)} fields; this format is '{layout}' "
                            "(normalised 0-1)", "fix the line or the entry's 'format'")  # fmt: skip
        values = np.array(_numbers(parts[1:], at, "coordinates"))
        if oriented:
            quad = values.reshape(4, 2) * [width, height]
        else:
            cx, cy, w, h = values * [width, height, width, height]
            box = np.array([[cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]])
            quad = _quads_from_boxes(box)[0]
        quads.append(quad)
        classes.append(parts[0])
    return _pack(quads), classes, np.zeros(len(classes), dtype=bool)


_NWPU = re.compile(
    r"\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)\s*,\s*\(\s*(-?[\d.]+)\s*,\s*(-?[\d.]+)\s*\)\s*,\s*(\w+)"
)


def parse_nwpu(text: str, where: str) -> tuple[np.ndarray, list[str], np.ndarray]:
    """NWPU VHR-10 ground truth ``(x1,y1),(x2,y2),class_id`` → corners, class ids (as text).

    Raises:
        DataError: a non-blank line that does not match the layout, or x2 <= x1 / y2 <= y1.
    """
    quads, classes = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        at = f"{where}, line {number}"
        match = _NWPU.fullmatch(line.strip())
        if not match:
            raise DataError(at, f"{line.strip()!r} is not '(x1,y1),(x2,y2),class_id'",
                            "fix the line or the entry's 'format'")  # fmt: skip
        x0, y0, x1, y1 = _numbers(match.groups()[:4], at, "corners")
        if x1 <= x0 or y1 <= y0:
            raise DataError(
                at,
                f"is not a box: ({x0:g},{y0:g}),({x1:g},{y1:g})",
                "the first point is the top-left corner, the second the bottom-right",
            )
        quads.append(_quads_from_boxes(np.array([[x0, y0, x1, y1]]))[0])
        classes.append(match.group(5))
    return _pack(quads), classes, np.zeros(len(classes), dtype=bool)


def parse_voc(path: Path) -> tuple[str | None, np.ndarray, list[str], np.ndarray]:
    """Pascal VOC XML → ``(filename, corners, names, difficult)``; no ``<object>``: a negative.

    Raises:
        DataError: invalid XML, an object without a complete numeric ``<bndbox>``.
    """
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as error:
        raise DataError(str(path), f"is not valid XML ({error})") from None
    boxes, names, difficult = [], [], []
    for k, obj in enumerate(root.findall("object"), start=1):
        box = obj.find("bndbox")
        try:
            assert box is not None
            boxes.append([float(box.findtext(c, "")) for c in ("xmin", "ymin", "xmax", "ymax")])
        except (AssertionError, ValueError):
            raise DataError(f"{path}, object {k}", "has no complete numeric <bndbox>") from None
        names.append((obj.findtext("name") or "object").strip())
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    quads = _quads_from_boxes(np.array(boxes, dtype=np.float64).reshape(-1, 4))
    filename = root.findtext("filename")
    return (filename.strip() if filename else None), quads, names, np.array(difficult, dtype=bool)


def parse_polygon(text: str, where: str) -> np.ndarray:
    """``"[(x, y), ...]"`` or WKT ``POLYGON ((x y, ...))`` → ``[4, 2]`` corners.

    A closed ring's repeated last point is dropped. Rings of other than 4 corners are replaced
    by their minimum rotated rectangle (an oriented box).
    """
    text = text.strip()
    try:
        if text.upper().startswith("POLYGON"):
            import shapely

            points = np.asarray(shapely.from_wkt(text).exterior.coords, dtype=np.float64)
        else:
            points = np.asarray(ast.literal_eval(text), dtype=np.float64)
    except Exception:  # literal_eval / WKT raise many types for malformed text
        raise DataError(
            where,
            f"geometry {text[:60]!r} is not a list of (x, y) points or WKT",
            "write the polygon as [(x1, y1), (x2, y2), ...] in pixels",
        ) from None
    if points.ndim != 2 or points.shape[1] != 2 or len(points) < 3:
        raise DataError(where, f"geometry {text[:60]!r} is not a polygon of 3 or more points")
    if len(points) > 1 and np.array_equal(points[0], points[-1]):
        points = points[:-1]
    if len(points) != 4:
        import shapely

        rect = shapely.oriented_envelope(shapely.Polygon(points))
        points = np.asarray(rect.exterior.coords, dtype=np.float64)[:4]
    return points


def _pack(quads: list[np.ndarray]) -> np.ndarray:
    return np.stack(quads).astype(np.float64) if quads else np.zeros((0, 4, 2))


# ---- sizes, classes ----------------------------------------------------------------------------
def image_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` from the file header (PIL; rasterio for TIFF and what PIL cannot)."""
    try:
        if path.suffix.lower() not in (".tif", ".tiff"):
            from PIL import Image

            with Image.open(path) as image:
                return int(image.width), int(image.height)
    except Exception:  # PIL raises several types for formats it does not know
        pass
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return int(src.width), int(src.height)
    except rasterio.errors.RasterioIOError as error:
        raise DataError(str(path), f"cannot be read as an image ({error})",
                        "re-export the image (PNG, JPEG or TIFF)") from None  # fmt: skip


def class_names_from(raw: Any, where: str) -> dict[str, str] | list[str] | None:
    """A ``classes`` setting → ``{token: name}`` (ids as written in the files) or a name list.

    Accepts a list of names, a mapping ``{id: name}``, or the path of a dataset YAML whose
    ``names`` is either (Ultralytics ``dota8.yaml``).
    """
    if raw is None or raw == [] or raw == {}:
        return None
    if isinstance(raw, str | Path):
        import yaml

        path = Path(raw)
        if not path.is_file():
            raise ConfigError(where, f"class file not found: {path}",
                              "give the dataset YAML (with 'names') or the names")  # fmt: skip
        data = yaml.safe_load(path.read_text())
        if not isinstance(data, Mapping) or "names" not in data:
            raise ConfigError(where, f"{path} has no 'names'", "point to the dataset YAML")
        raw = data["names"]
    if isinstance(raw, Mapping):
        return {str(k).strip(): str(v) for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return [str(v) for v in raw]
    raise ConfigError(where, f"expected a list of names, {{id: name}} or a YAML file, got {raw!r}")


def token_lookup(names: dict[str, str] | list[str] | None, fmt: str) -> dict[str, str] | None:
    """``{token as written in the label files: class name}``; None: the tokens are the names.

    A list means index order: YOLO ids start at 0, NWPU VHR-10 ids at 1; for DOTA, CSV and VOC
    (whose files hold the names) a list only fixes the class order.
    """
    if names is None:
        return None
    if isinstance(names, dict):
        return names
    if fmt in ("yolo_obb", "yolo"):
        return {str(i): n for i, n in enumerate(names)}
    if fmt == "nwpu":
        return {str(i): n for i, n in enumerate(names, start=1)}
    return None


# ---- tables (one CSV for all images) ----------------------------------------------------------
#: Column names looked for, in order, when the entry gives none.
TABLE_COLUMNS = {
    "image": ("image_path", "image_id", "image", "filename", "file"),
    "geometry": ("geometry", "polygon", "wkt"),
    "class": ("label", "class", "category", "class_name"),
}


def read_table(
    path: Path, fmt: str, columns: Mapping[str, str] | None = None
) -> dict[str, tuple[np.ndarray, list[str], list[str]]]:
    """A ``polygon_csv`` / ``csv`` table → ``{image name: (corners, classes, rows)}``.

    Raises:
        DataError: missing columns, bad geometry or numbers (naming the file and line).
    """
    with path.open(newline="") as f:
        rows = [r for r in csv.reader(f) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(str(path), "is empty (no header, no rows)",
                        "write a header line and one row per object")  # fmt: skip
    header = [c.strip() for c in rows[0]]
    wanted = ["image", "class", "geometry"] if fmt == "polygon_csv" else ["image", "class"]
    col: dict[str, int] = {}
    for key in wanted:
        names = [columns[key]] if columns and key in columns else list(TABLE_COLUMNS[key])
        found = [n for n in names if n in header]
        if not found:
            raise DataError(
                str(path), f"has no {key} column (looked for {', '.join(names)}; header: "
                f"{', '.join(header)})", f"name it in the entry: columns: {{{key}: NAME}}",
            )  # fmt: skip
        col[key] = header.index(found[0])
    if fmt == "csv":
        missing = [c for c in ("xmin", "ymin", "xmax", "ymax") if c not in header]
        if missing:
            raise DataError(str(path), f"has no column(s) {', '.join(missing)}",
                            "use the layout image_path,xmin,ymin,xmax,ymax,label")  # fmt: skip
        box_cols = [header.index(c) for c in ("xmin", "ymin", "xmax", "ymax")]
    out: dict[str, tuple[list[np.ndarray], list[str], list[str]]] = {}
    for number, row in enumerate(rows[1:], start=2):
        at = f"{path}, line {number}"
        cells = row + [""] * (len(header) - len(row))
        image = cells[col["image"]].strip()
        quads, classes, where_rows = out.setdefault(image, ([], [], []))
        if fmt == "polygon_csv":
            quad = parse_polygon(cells[col["geometry"]], at)
        else:
            x0, y0, x1, y1 = _numbers([cells[i].strip() for i in box_cols], at, "box")
            if (x0, y0, x1, y1) == (0, 0, 0, 0):  # DeepForest's row for an image without objects
                continue
            if x1 <= x0 or y1 <= y0:
                raise DataError(
                    at,
                    f"is not a box: xmin={x0:g}, ymin={y0:g}, xmax={x1:g}, ymax={y1:g}",
                    "each box needs xmin < xmax and ymin < ymax",
                )
            quad = _quads_from_boxes(np.array([[x0, y0, x1, y1]]))[0]
        quads.append(quad)
        classes.append(cells[col["class"]].strip() or "object")
        where_rows.append(f"line {number}")
    return {k: (_pack(q), c, r) for k, (q, c, r) in out.items()}


# ---- objects of one image: clip and name -------------------------------------------------------
def finish(
    image: Path, size: tuple[int, int], quads: np.ndarray, tokens: list[str],
    difficult: np.ndarray, lookup: dict[str, str] | None, where: str,
    meta: dict[str, str] | None = None,
) -> ImageObjects:  # fmt: skip
    """Name the classes and drop objects with no area inside the image.

    Raises:
        DataError: a class id that ``lookup`` does not know (naming the file and id).
    """
    if lookup is not None:
        unknown = sorted({t for t in tokens if t not in lookup})
        if unknown:
            raise DataError(
                where, f"class {unknown[0]!r} is not among the entry's classes "
                f"({', '.join(f'{k}: {v}' for k, v in list(lookup.items())[:20])})",
                "add it to 'classes' (or the dataset YAML's names) or fix the label file",
            )  # fmt: skip
        names = [lookup[t] for t in tokens]
    else:
        names = list(tokens)
    objects = ImageObjects(image, size[0], size[1], quads, names, difficult, meta or {})
    box = objects.boxes
    keep = (box[:, 2] > box[:, 0]) & (box[:, 3] > box[:, 1])
    if not keep.all():
        objects.polygons = quads[keep]
        objects.classes = [n for n, k in zip(names, keep, strict=True) if k]
        objects.difficult = difficult[keep]
        objects.dropped = int((~keep).sum())
    return objects


def read_label_file(
    path: Path | None, image: Path, fmt: str, lookup: dict[str, str] | None,
    size: tuple[int, int] | None = None,
) -> ImageObjects:  # fmt: skip
    """The objects of ``image`` from its label file (None: a negative without a file)."""
    size = size or image_size(image)
    if path is None:
        return ImageObjects(image, size[0], size[1], np.zeros((0, 4, 2)), [], np.zeros(0, bool))
    meta: dict[str, str] = {}
    where = str(path)
    if fmt == "voc":
        _, quads, tokens, difficult = parse_voc(path)
    else:
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError:
            raise DataError(where, "is not a UTF-8 text label file",
                            "check the entry's 'format' and 'labels' folder") from None  # fmt: skip
        if fmt == "dota":
            quads, tokens, difficult, meta = parse_dota(text, where)
        elif fmt in ("yolo_obb", "yolo"):
            quads, tokens, difficult = parse_yolo(text, where, *size, oriented=fmt == "yolo_obb")
        elif fmt == "nwpu":
            quads, tokens, difficult = parse_nwpu(text, where)
        else:
            raise ConfigError(where, f"format {fmt!r} has no per-image label files")
    return finish(image, size, quads, tokens, difficult, lookup, where, meta)


# ---- a whole detection folder ------------------------------------------------------------------
@dataclass
class DetectionFolder:
    """Every image of a ``detection_folder`` entry with its objects.

    Attributes:
        records: one :class:`ImageObjects` per image (negatives included), sorted by path.
        class_names: object class names in label order (detector label ``k`` ↔
            ``class_names[k - 1]``; 0 is the detectors' background).
        oriented: the labels are oriented quadrilaterals (oriented-box mAP is meaningful).
        notes: what was left out and why (objects outside their image, table rows of images
            not in the folder, images outside every split), for the log.
    """

    records: list[ImageObjects]
    class_names: list[str]
    oriented: bool
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Images per split (``all`` when the dataset defines no split)."""
        out: dict[str, int] = {}
        for record in self.records:
            key = record.split or "all"
            out[key] = out.get(key, 0) + 1
        return out

    def split(self, name: str) -> list[ImageObjects]:
        return [r for r in self.records if r.split == name]


def _relative_parts(path: Path, root: Path) -> tuple[str, ...]:
    return path.relative_to(root).parts


def _find_images(entry: Any) -> list[Path]:
    root: Path = entry.root_path
    if not root.is_dir():
        raise entry.error("root", f"folder not found: {root}", "point 'root' at the dataset")
    exts = tuple(e.lower() for e in entry.extensions)
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in exts and p.is_file())
    if entry.image_dir:
        files = [f for f in files if entry.image_dir in _relative_parts(f.parent, root)]
    if not files:
        where = f"with a folder '{entry.image_dir}' in their path " if entry.image_dir else ""
        raise entry.error(
            "image_dir", f"no image ({', '.join(exts)}) {where}under {root}",
            "set 'image_dir' to the name of the folder holding the images (. for root itself)",
        )  # fmt: skip
    return files


def _splits(entry: Any, images: list[Path]) -> tuple[dict[Path, str], list[str]]:
    """``{image: split}`` from the entry's ``splits`` (folders, globs or .txt lists under root)."""
    import glob

    root: Path = entry.root_path
    if not entry.splits:
        return {f: "" for f in images}, []
    found: dict[Path, str] = {}
    for split, specs in entry.splits.items():
        for spec in specs:
            path = root / spec
            if glob.has_magic(str(path)):
                members = {Path(p) for p in glob.glob(str(path), recursive=True)}
                chosen = [f for f in images if f in members or any(p in members for p in f.parents)]
            elif path.suffix.lower() == ".txt" and path.is_file():
                names = {ln.strip() for ln in path.read_text().splitlines() if ln.strip()}
                chosen = [f for f in images if names & {f.name, f.stem, str(f.relative_to(root))}]
            elif path.is_dir():
                chosen = [f for f in images if path in f.parents]
            else:
                raise entry.error("splits", f"{split}: {path} is no folder, glob or .txt list",
                                  "paths in 'splits' are relative to root")  # fmt: skip
            if not chosen:
                raise entry.error("splits", f"{split}: {spec} holds none of the entry's images",
                                  "check the path and 'image_dir'")  # fmt: skip
            for f in chosen:
                if found.get(f, split) != split:
                    raise entry.error("splits", f"{f.name} is in both {found[f]} and {split}",
                                      "each image belongs to one split")  # fmt: skip
                found[f] = split
    notes = []
    left = len(images) - len(found)
    if left:
        notes.append(f"{left} image(s) in no split are left out")
    return found, notes


def _label_path(entry: Any, image: Path) -> Path:
    """The label file of ``image``: its path with ``image_dir`` → ``label_dir``, new ending."""
    root: Path = entry.root_path
    parts = list(image.relative_to(root).parts)
    if entry.image_dir:
        k = len(parts) - 1 - parts[::-1].index(entry.image_dir)  # the last such folder
        parts[k] = entry.label_dir
    elif entry.label_dir:
        parts.insert(0, entry.label_dir)
    return (root.joinpath(*parts)).with_suffix(LABEL_SUFFIX[entry.format])


def read_detection_folder(entry: Any) -> DetectionFolder:
    """Read a ``detection_folder`` catalog entry: images, their objects, splits, class names.

    Args:
        entry: a :class:`~geocmid.data.catalog.schema.DetectionFolderEntry`.

    Raises:
        ConfigError: no image found, unknown split paths, bad ``classes``.
        DataError: a malformed label line (naming file and line), an image without labels
            (``missing_labels: error``), a class not in ``classes``.
    """
    fmt = entry.format
    lookup = entry.class_tokens
    names = [c.name for c in entry.classes] or None
    images = _find_images(entry)
    split_of, notes = _splits(entry, images)
    table: dict[str, tuple[np.ndarray, list[str], list[str]]] = {}
    if fmt in TABLE_FORMATS:
        path = entry.root_path / str(entry.labels)
        if not path.is_file():
            raise entry.error("labels", f"file not found: {path}", "labels is relative to root")
        table = read_table(path, fmt, entry.columns)
        known = {f.name for f in images} | {str(f.relative_to(entry.root_path)) for f in images}
        absent = {k: v for k, v in table.items() if k and k not in known}
        if absent:
            rows = sum(len(v[1]) for v in absent.values())
            notes.append(f"{rows} object(s) of {len(absent)} image(s) listed in {path.name} but "
                         f"not under {entry.root_path} are left out")  # fmt: skip
    records: list[ImageObjects] = []
    missing: list[Path] = []
    for image in images:
        if image not in split_of:
            continue
        if fmt in TABLE_FORMATS:
            key = image.name if image.name in table else str(image.relative_to(entry.root_path))
            if key not in table:
                missing.append(image)
                if entry.missing_labels == "error":
                    break
                record = read_label_file(None, image, fmt, lookup)
            else:
                quads, tokens, _ = table[key]
                record = finish(
                    image,
                    image_size(image),
                    quads,
                    tokens,
                    np.zeros(len(tokens), bool),
                    lookup,
                    f"{path}, image {key}",
                )
        else:
            label = _label_path(entry, image)
            if not label.is_file():
                missing.append(image)
                if entry.missing_labels == "error":
                    break
                record = read_label_file(None, image, fmt, lookup)
            else:
                record = read_label_file(label, image, fmt, lookup)
        record.split = split_of[image]
        records.append(record)
    if missing and entry.missing_labels == "error":
        where = (f"{entry.root_path / str(entry.labels)}" if fmt in TABLE_FORMATS
                 else str(_label_path(entry, missing[0])))  # fmt: skip
        raise DataError(
            where, f"{'has no row for' if fmt in TABLE_FORMATS else 'not found: the labels of'} "
            f"image {missing[0].name}",
            "an image without objects needs an empty label file (or set 'missing_labels: "
            f"negative' in {entry.where}); check 'image_dir' / 'label_dir'",
        )  # fmt: skip
    if missing:
        notes.append(f"{len(missing)} image(s) without a label file read as negatives")
    if entry.difficult == "drop":
        for r in records:
            keep = ~r.difficult
            r.polygons, r.difficult = r.polygons[keep], r.difficult[keep]
            r.classes = [c for c, k in zip(r.classes, keep, strict=True) if k]
    dropped = sum(r.dropped for r in records)
    if dropped:
        notes.append(f"{dropped} object(s) lying wholly outside their image are left out")
    found = sorted({c for r in records for c in r.classes})
    order = names or found
    unknown = [c for c in found if c not in order]
    if unknown:
        first = next(r for r in records if unknown[0] in r.classes)
        raise DataError(
            f"labels of {first.image}", f"class {unknown[0]!r} is not among the entry's classes "
            f"{order}", f"add it to 'classes' in {entry.where} or fix the label file",
        )  # fmt: skip
    if not records:
        raise entry.error(None, "no image to read", "check 'root', 'image_dir' and 'splits'")
    if not any(len(r) for r in records):
        raise DataError(
            entry.where,
            f"none of its {len(records)} images has an object",
            "check 'format' and 'label_dir'; a detector needs objects to learn",
        )
    return DetectionFolder(records, list(order), fmt in ORIENTED_FORMATS, notes)


__all__ = [
    "DIFFICULT_POLICIES",
    "FORMATS",
    "ORIENTED_FORMATS",
    "DetectionFolder",
    "ImageObjects",
    "class_names_from",
    "image_size",
    "parse_dota",
    "parse_nwpu",
    "parse_polygon",
    "parse_voc",
    "parse_yolo",
    "read_detection_folder",
    "read_label_file",
    "read_table",
    "token_lookup",
]
