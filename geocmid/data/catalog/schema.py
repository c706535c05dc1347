"""Catalog entries: typed descriptions of one data source each, validated before use.

A catalog entry is one YAML file in the catalog folder; its name is the file stem. Paths in an
entry are relative to the folder of the YAML file, so a catalog travels with its data.
"""

from __future__ import annotations

import datetime as dt
import glob
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

# the one class table and palette of the package live in geocmid.data.classes; re-exported here
from geocmid.data.classes import DEFAULT_COLORS as DEFAULT_COLORS
from geocmid.data.classes import ClassInfo as ClassInfo
from geocmid.data.classes import default_color
from geocmid.errors import ConfigError, did_you_mean

#: File endings read as rasters when a folder is given (GDAL reads many more by explicit path).
RASTER_SUFFIXES = (".tif", ".tiff", ".vrt", ".jp2", ".img", ".nc")
VECTOR_SUFFIXES = (".gpkg", ".geojson", ".json", ".shp", ".fgb", ".parquet")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


@dataclass
class Entry:
    """Base of all catalog entries."""

    kind: ClassVar[str] = ""
    #: key → (required, help). Every kind adds its own keys to these.
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        "kind": (True, "entry kind"),
        "name": (False, "entry name (defaults to the YAML file stem)"),
        "description": (False, "free text shown by `catalog list`"),
        "gdal_env": (False, "GDAL options for reading its files, e.g. {AWS_NO_SIGN_REQUEST: YES}"),
    }

    name: str
    source: Path | None  # the YAML file this entry came from (None when built in Python)
    base_dir: Path
    description: str = ""
    gdal_env: dict[str, Any] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"catalog entry '{self.name}'" + (f" ({self.source})" if self.source else "")

    def error(self, key: str | None, problem: str, fix: str | None = None) -> ConfigError:
        where = self.where + (f", key '{key}'" if key else "")
        return ConfigError(where, problem, fix)

    def resolve_paths(self, patterns: list[str], key: str, suffixes: tuple[str, ...]) -> list[Path]:
        """Expand files, globs and folders (relative to the YAML folder) to existing files.

        GDAL virtual paths and URLs (``/vsizip/``, ``/vsicurl/``, ``https://``, ``s3://``,
        ``file://`` …) pass through untouched (:func:`geocmid.data.paths.entry_path`); the
        entry's ``gdal_env`` options are set for reading them. A STAC Item / ItemCollection /
        Catalog JSON gives one VRT per item holding the entry's bands
        (:mod:`geocmid.data.stac`).
        """
        from geocmid.data.paths import apply_gdal_env, as_path, entry_path, is_virtual

        apply_gdal_env(self.gdal_env, self.where)
        files: list[Path] = []
        for pattern in patterns:
            if ".json" not in suffixes and pattern.lower().endswith(".json"):
                from geocmid.data import stac  # a STAC Item / ItemCollection / Catalog

                document = as_path(pattern, self.base_dir)
                if stac.is_stac_document(document):
                    files += stac.entry_files(self, document)
                    continue
            if is_virtual(pattern):
                files.append(entry_path(pattern, self.base_dir, key, self.where))
                continue
            path = Path(pattern).expanduser()
            path = path if path.is_absolute() else self.base_dir / path
            if glob.has_magic(str(path)):
                matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
                matches = [m for m in matches if m.is_file()]
                if not matches:
                    raise self.error(
                        key,
                        f"the pattern '{pattern}' matches no file (searched {path})",
                        "check the folder and the pattern; paths are relative to the YAML file",
                    )
                files += matches
            elif path.is_dir():
                found = sorted(p for p in path.rglob("*") if p.suffix.lower() in suffixes)
                if not found:
                    raise self.error(
                        key,
                        f"the folder {path} holds no file ending in {', '.join(suffixes)}",
                        "point to the files themselves or to a glob such as 'folder/*.tif'",
                    )
                files += found
            elif path.exists():
                files.append(path)
            else:
                raise self.error(
                    key,
                    f"file not found: {path}",
                    "check the spelling; relative paths are relative to the YAML file's folder",
                )
        return files

    def referenced_entries(self) -> list[str]:
        """Names of other catalog entries this one depends on."""
        return []


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def _parse_classes(entry: Entry, raw: Any) -> list[ClassInfo]:
    """Accept ``{1: building}``, ``{1: {name: building, color: '#f00'}}`` or a list of names."""
    if raw is None:
        return []
    if isinstance(raw, list):
        raw = dict(enumerate(raw))
    if not isinstance(raw, Mapping):
        raise entry.error("classes", "expected a mapping of value: name or value: {name, color}")
    classes = []
    for i, (value, spec) in enumerate(raw.items()):
        try:
            ivalue = int(value)
        except (TypeError, ValueError):
            raise entry.error(
                "classes", f"class value {value!r} is not an integer", "use integer class values"
            ) from None
        if isinstance(spec, str):
            name, color = spec, default_color(i)
        elif isinstance(spec, Mapping):
            unknown = set(spec) - {"name", "color"}
            if unknown:
                key = sorted(unknown)[0]
                raise entry.error(
                    "classes",
                    f"class {ivalue} has an unknown key '{key}'"
                    + did_you_mean(key, ["name", "color"]),
                    "each class takes only 'name' and 'color'",
                )
            name = str(spec.get("name", f"class_{ivalue}"))
            color = str(spec.get("color", default_color(i)))
        else:
            raise entry.error("classes", f"class {ivalue}: expected a name or {{name, color}}")
        if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
            raise entry.error(
                "classes",
                f"class '{name}': colour {color!r} is not #RRGGBB",
                "write e.g. '#33a02c'",
            )
        classes.append(ClassInfo(ivalue, name, color))
    return classes


@dataclass
class ImageryEntry(Entry):
    """Imagery: GeoTIFF or any GDAL raster, by file, folder or glob."""

    kind: ClassVar[str] = "imagery"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "paths": (False, "file, folder or glob, or a list of them (or use band_files)"),
        "bands": (True, "band names in file order (their count is checked against the files)"),
        "band_files": (False, "one file per band: a pattern with {band}, e.g. 'B{band}.tif'"),
        "rgb": (False, "names of the red, green and blue bands, for quick-looks"),
        "nodata": (False, "nodata value (defaults to the files' own)"),
        "date": (False, "acquisition date, YYYY-MM-DD"),
        "date_pattern": (False, "regex with a (?P<date>...) group matched on file names"),
        "date_format": (False, "strptime format of the date group (default %Y%m%d)"),
        "crs": (False, "CRS to warp to, e.g. EPSG:32633 (default: the first file's)"),
        "res": (
            False,
            "resolution the entry is read on, in CRS units (default: the finest file's, band file "
            "or tile)",
        ),
        "assign_crs": (False, "CRS to assume for files that carry none or a wrong one"),
        "stats": (False, "per-band normalisation statistics (written by `catalog stats`)"),
    }

    paths: list[str] = field(default_factory=list)
    bands: list[str] = field(default_factory=list)
    band_files: str | None = None
    rgb: list[str] = field(default_factory=list)
    nodata: float | None = None
    date: dt.date | None = None
    date_pattern: str | None = None
    date_format: str = "%Y%m%d"
    crs: str | None = None
    res: float | None = None
    assign_crs: str | None = None
    stats: dict[str, list[float]] | None = None

    def files(self) -> list[Path]:
        """All raster files of this entry (with ``band_files``: every band's files)."""
        if self.band_files:
            return [f for group in self.band_file_groups() for f in group]
        return self.resolve_paths(self.paths, "paths", RASTER_SUFFIXES)

    def band_file_groups(self) -> list[list[Path]]:
        """With ``band_files``: the files of each band, in band order."""
        assert self.band_files is not None
        groups = [
            self.resolve_paths(
                [self.band_files.replace("{band}", b)], "band_files", RASTER_SUFFIXES
            )
            for b in self.bands
        ]
        counts = {len(g) for g in groups}
        if len(counts) != 1:
            raise self.error(
                "band_files",
                "bands have different numbers of files: "
                + str(dict(zip(self.bands, map(len, groups), strict=True))),
                "every band needs one file per scene",
            )
        return groups


@dataclass
class RasterLabelsEntry(Entry):
    """Raster labels: class-value masks, or one binary mask per class."""

    kind: ClassVar[str] = "raster_labels"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "paths": (False, "mask rasters holding class values (or use class_masks)"),
        "class_masks": (False, "value: file of a binary mask (non-zero = this class)"),
        "classes": (True, "value: name or value: {name, color}"),
        "ignore_value": (False, "value of unlabelled pixels (default: the files' nodata)"),
        "align_with": (False, "imagery entry whose grid these un-georeferenced masks share"),
        "assign_crs": (False, "CRS to assume for files that carry none or a wrong one"),
    }

    paths: list[str] = field(default_factory=list)
    class_masks: dict[int, str] = field(default_factory=dict)
    classes: list[ClassInfo] = field(default_factory=list)
    ignore_value: int | None = None
    align_with: str | None = None
    assign_crs: str | None = None

    def files(self) -> list[Path]:
        if self.class_masks:
            return self.resolve_paths(
                list(self.class_masks.values()), "class_masks", RASTER_SUFFIXES
            )
        return self.resolve_paths(self.paths, "paths", RASTER_SUFFIXES)

    def referenced_entries(self) -> list[str]:
        return [self.align_with] if self.align_with else []


@dataclass
class VectorLabelsEntry(Entry):
    """Vector labels: polygons, points or boxes in GPKG / GeoJSON / Shapefile."""

    kind: ClassVar[str] = "vector_labels"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "paths": (True, "vector file(s): GPKG, GeoJSON, Shapefile, FlatGeobuf"),
        "layer": (False, "layer name inside a multi-layer file (GPKG)"),
        "class_attribute": (False, "attribute holding the class (omit for a single class)"),
        "classes": (False, "value: name or value: {name, color} (default: values found)"),
        "geometry": (False, "polygons, points or boxes (default: from the file)"),
    }

    paths: list[str] = field(default_factory=list)
    layer: str | None = None
    class_attribute: str | None = None
    classes: list[ClassInfo] = field(default_factory=list)
    geometry: str | None = None

    def files(self) -> list[Path]:
        return self.resolve_paths(self.paths, "paths", VECTOR_SUFFIXES)


@dataclass
class BitemporalEntry(Entry):
    """Two imagery entries of one area at two dates, with optional change labels."""

    kind: ClassVar[str] = "bitemporal"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "before": (True, "imagery entry of the first date"),
        "after": (True, "imagery entry of the second date"),
        "change_labels": (False, "raster_labels or vector_labels entry of the change"),
    }

    before: str = ""
    after: str = ""
    change_labels: str | None = None

    def referenced_entries(self) -> list[str]:
        return [n for n in (self.before, self.after, self.change_labels) if n]


#: Split names a chip dataset's ``splits`` key may define (the benchmarks' own).
SPLITS = ("train", "val", "test")


@dataclass
class ChipEntry(Entry):
    """Base of chip datasets: folders of plain tiles without georeferencing, read on their
    pixel grid (never as a geographic footprint). Subclasses add their label layout.

    ``splits`` maps ``train`` / ``val`` / ``test`` to what belongs to it: sub-folders or globs
    relative to ``root`` (split folders, as LEVIR-CD and NWPU-RESISC ship them), or a ``.txt``
    file listing file names or stems, one a line (split files). Without ``splits`` the
    datamodule splits the files at random (seeded).
    """

    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "root": (True, "folder holding the dataset (paths are relative to it)"),
        "extensions": (
            False,
            "image file endings to read (default: .png .jpg .jpeg .tif .tiff .bmp)",
        ),
        "splits": (
            False,
            "train/val/test: sub-folders, globs or .txt file lists (default: random split)",
        ),
        "bands": (False, "band names in file order (default: red, green, blue for 3 bands)"),
    }

    root: str = ""
    extensions: list[str] = field(default_factory=lambda: list(IMAGE_SUFFIXES))
    splits: dict[str, list[str]] = field(default_factory=dict)
    bands: list[str] = field(default_factory=list)

    @property
    def root_path(self) -> Path:
        root = Path(self.root).expanduser()
        return root if root.is_absolute() else self.base_dir / root

    def parse_values(self, values: Mapping[str, Any]) -> None:
        """Read this kind's keys from the YAML mapping (``kind``/``name``/... removed)."""
        self.root = str(values["root"])
        if "extensions" in values:
            exts = [str(e).lower() for e in _as_list(values["extensions"])]
            self.extensions = [e if e.startswith(".") else "." + e for e in exts]
        raw = values.get("splits") or {}
        if not isinstance(raw, Mapping):
            raise self.error(
                "splits", "expected a mapping such as {train: train, test: test}",
                "map each split name to sub-folders, globs or a .txt file list",
            )  # fmt: skip
        for key in raw:
            if key not in SPLITS:
                raise self.error(
                    "splits", f"unknown split '{key}'{did_you_mean(str(key), SPLITS)}",
                    "use train, val and test",
                )  # fmt: skip
        self.splits = {str(k): [str(v) for v in _as_list(raw[k])] for k in raw}
        if self.splits and "train" not in self.splits:
            raise self.error("splits", "no 'train' split", "add train: FOLDER (or a .txt list)")
        bands = values.get("bands")
        if isinstance(bands, int):
            bands = [f"b{i + 1}" for i in range(bands)]
        self.bands = [str(b) for b in _as_list(bands)]

    def validate_files(self) -> dict[str, int]:
        """Check the files (``catalog validate``); image counts per class or split
        (:func:`geocmid.data.catalog.chips.validate_chip_entry`)."""
        from geocmid.data.catalog.chips import validate_chip_entry

        return validate_chip_entry(self)


@dataclass
class ImageFolderEntry(ChipEntry):
    """A tree of plain images: folder-per-class (UC Merced, NWPU-RESISC45 style) for scene
    classification, or any folder of images (``labels: none``, Million-AID style) for
    pretraining. Files are found recursively; JPEG/PNG/TIFF, any band count, 8/16-bit or float.

    With ``labels: folders`` (the default) the class of an image is the first sub-folder below
    its split folder (or below ``root`` without split folders).
    """

    kind: ClassVar[str] = "image_folder"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **ChipEntry.KEYS,
        "root": (True, "folder holding one sub-folder per class (or the images: labels: none)"),
        "classes": (False, "class names in label order (default: sorted sub-folder names)"),
        "labels": (False, "folders (class = sub-folder, default) or none (unlabelled images)"),
    }

    classes: list[str] = field(default_factory=list)
    labels: str = "folders"

    def parse_values(self, values: Mapping[str, Any]) -> None:
        super().parse_values(values)
        self.classes = [str(c) for c in _as_list(values.get("classes"))]
        labels = str(values.get("labels") or "folders").lower()
        if labels not in ("folders", "none"):
            raise self.error(
                "labels", f"{labels!r} is not 'folders' or 'none'",
                "folders: one sub-folder per class; none: unlabelled images (pretraining)",
            )  # fmt: skip
        self.labels = labels


@dataclass
class ChipSegmentationEntry(ChipEntry):
    """Image tiles with mask tiles beside them (Potsdam, Vaihingen, LoveDA, Dubai style).

    An image's mask is the file at the same path with the ``image_dir`` folder replaced by
    ``mask_dir`` and the same stem (any image ending): ``Tile 1/images/a.jpg`` →
    ``Tile 1/masks/a.png``. Masks hold class values (``mask_format: values``) or colours
    (``mask_format: colors``: each class's ``color`` in the class table; RGB or palette PNG).
    """

    kind: ClassVar[str] = "chip_segmentation"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **ChipEntry.KEYS,
        "image_dir": (False, "name of the folders holding the images (default: images)"),
        "mask_dir": (False, "name of the folders holding the masks (default: masks)"),
        "classes": (True, "value: name or value: {name, color} (colour masks: the mask colour)"),
        "mask_format": (False, "values (class values, default) or colors (colour-coded masks)"),
        "ignore_value": (False, "mask value of unlabelled pixels (value masks)"),
        "ignore_colors": (False, "mask colours of unlabelled pixels, e.g. ['#000000']"),
    }

    image_dir: str = "images"
    mask_dir: str = "masks"
    classes: list[ClassInfo] = field(default_factory=list)
    mask_format: str = "values"
    ignore_value: int | None = None
    ignore_colors: list[str] = field(default_factory=list)

    def parse_values(self, values: Mapping[str, Any]) -> None:
        super().parse_values(values)
        self.image_dir = str(values.get("image_dir") or "images")
        self.mask_dir = str(values.get("mask_dir") or "masks")
        self.classes = _parse_classes(self, values.get("classes"))
        fmt = str(values.get("mask_format") or "values").lower()
        if fmt not in ("values", "colors"):
            raise self.error(
                "mask_format", f"{fmt!r} is not 'values' or 'colors'",
                "values: masks hold class values; colors: masks are colour-coded",
            )  # fmt: skip
        self.mask_format = fmt
        ignore = values.get("ignore_value")
        self.ignore_value = None if ignore is None else int(ignore)
        self.ignore_colors = [str(c) for c in _as_list(values.get("ignore_colors"))]
        for color in self.ignore_colors:
            if not re.fullmatch(r"#[0-9a-fA-F]{6}", color):
                raise self.error("ignore_colors", f"{color!r} is not #RRGGBB", "e.g. '#000000'")
        if fmt == "colors":
            colors = [c.hex[:7].lower() for c in self.classes]
            if len(set(colors)) != len(colors):
                raise self.error(
                    "classes", "two classes share a colour; colour masks need one per class",
                    "give each class the colour its pixels have in the masks",
                )  # fmt: skip


@dataclass
class ChipChangeEntry(ChipEntry):
    """Bitemporal chip triplets: first date, second date and change label with the same name
    in three folders (LEVIR-CD ``A/B/label``, WHU-CD ``image1/image2/label`` or
    ``prev/curr/label``). Label 0 is no change, any other value change (0/255 and 0/1 alike),
    ``ignore_value`` unlabelled.
    """

    kind: ClassVar[str] = "chip_change"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **ChipEntry.KEYS,
        "before_dir": (False, "folder name of the first dates (default: A)"),
        "after_dir": (False, "folder name of the second dates (default: B)"),
        "label_dir": (False, "folder name of the change labels (default: label)"),
        "ignore_value": (False, "label value of unlabelled pixels"),
        "classes": (False, "names of no change and change (default: no change, change)"),
    }

    before_dir: str = "A"
    after_dir: str = "B"
    label_dir: str = "label"
    ignore_value: int | None = None
    classes: list[ClassInfo] = field(default_factory=list)

    def parse_values(self, values: Mapping[str, Any]) -> None:
        super().parse_values(values)
        self.before_dir = str(values.get("before_dir") or "A")
        self.after_dir = str(values.get("after_dir") or "B")
        self.label_dir = str(values.get("label_dir") or "label")
        if len({self.before_dir, self.after_dir, self.label_dir}) != 3:
            raise self.error(
                "before_dir", "before_dir, after_dir and label_dir must be three different names"
            )
        ignore = values.get("ignore_value")
        self.ignore_value = None if ignore is None else int(ignore)
        raw = values.get("classes")
        self.classes = _parse_classes(self, raw) if raw else [
            ClassInfo(0, "no change", "#000000"), ClassInfo(1, "change", "#ff0000"),
        ]  # fmt: skip
        if len(self.classes) != 2:
            raise self.error(
                "classes", f"change labels have 2 classes, {len(self.classes)} given",
                "give names for 0 (no change) and 1 (change)",
            )  # fmt: skip


# ---- detection chip folders (owner: engineer "detection"; readers: geocmid.data.boxformats) ----
@dataclass
class DetectionFolderEntry(ChipEntry):
    """Images with object labels beside them, for object detection on their pixel grid.

    Per-image label files (``format``: ``dota`` labelTxt, ``yolo_obb``, ``yolo``, ``nwpu``,
    ``voc``) sit at the image's path with the ``image_dir`` folder replaced by ``label_dir`` and
    the format's ending (``train/images/P0001.png`` → ``train/labelTxt/P0001.txt``); table
    formats (``polygon_csv``, ``csv``) hold every image's objects in one ``labels`` file. Images
    are the files under ``root`` with an ``image_dir`` folder in their path. Oriented boxes are
    kept as their 4 corners (:mod:`geocmid.data.boxformats` reads and documents each format).
    """

    kind: ClassVar[str] = "detection_folder"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **ChipEntry.KEYS,
        "format": (True, "dota, yolo_obb, yolo, nwpu, polygon_csv, csv or voc"),
        "image_dir": (False, "name of the folders holding the images (default: images; . = root)"),
        "label_dir": (False, "name of the folders holding the label files (default: labels)"),
        "labels": (False, "polygon_csv / csv: the table of objects, relative to root"),
        "classes": (
            False,
            "class names: a list (YOLO ids from 0, NWPU ids from 1), {id: name}, or a dataset "
            "YAML with 'names' (default: the names in the label files)",
        ),
        "columns": (False, "polygon_csv / csv column names, e.g. {image: image_id, class: class}"),
        "difficult": (False, "objects flagged difficult: ignore (default; not scored), keep, drop"),
        "missing_labels": (
            False,
            "an image without labels: error (default; yolo: negative) or negative",
        ),
    }

    format: str = ""
    image_dir: str = "images"
    label_dir: str = "labels"
    labels: str | None = None
    #: class names in detector label order (``value``: the id written in YOLO / NWPU files,
    #: else the position 1..K); empty: the names found in the label files, sorted
    classes: list[ClassInfo] = field(default_factory=list)
    #: ``{id as written in the label files: name}`` (YOLO / NWPU, or ``{id: name}`` given)
    class_tokens: dict[str, str] | None = None
    columns: dict[str, str] = field(default_factory=dict)
    difficult: str = "ignore"
    missing_labels: str = "error"

    def parse_values(self, values: Mapping[str, Any]) -> None:
        from geocmid.data.boxformats import DIFFICULT_POLICIES, FORMATS, TABLE_FORMATS

        super().parse_values(values)
        self.format = str(values["format"]).lower()
        if self.format not in FORMATS:
            raise self.error(
                "format", f"unknown format '{self.format}'{did_you_mean(self.format, FORMATS)}",
                f"use one of {', '.join(FORMATS)}",
            )  # fmt: skip
        for key, default in (("image_dir", "images"), ("label_dir", "labels")):
            raw = values.get(key, default)
            setattr(self, key, "" if str(raw or ".") == "." else str(raw))  # "." = root itself
        self.labels = None if values.get("labels") is None else str(values["labels"])
        if self.format in TABLE_FORMATS and not self.labels:
            raise self.error("labels", f"{self.format} needs the table of objects",
                             "labels: annotations.csv (relative to root)")  # fmt: skip
        self._parse_classes(values.get("classes"))
        self.columns = {str(k): str(v) for k, v in (values.get("columns") or {}).items()}
        self.difficult = str(values.get("difficult") or "ignore").lower()
        if self.difficult not in DIFFICULT_POLICIES:
            raise self.error(
                "difficult",
                f"{self.difficult!r} is not one of {DIFFICULT_POLICIES}",
                "ignore: trained on, left out of mAP; keep: scored; drop: removed",
            )
        default = "negative" if self.format in ("yolo", "yolo_obb") else "error"
        self.missing_labels = str(values.get("missing_labels") or default).lower()
        if self.missing_labels not in ("error", "negative"):
            raise self.error("missing_labels", f"{self.missing_labels!r} is not error or negative")

    def _parse_classes(self, raw: Any) -> None:
        """A list, ``{id: name}`` or a dataset YAML (``names``; relative to root, else to the
        entry's folder) → :attr:`classes` and :attr:`class_tokens`."""
        from geocmid.data.boxformats import class_names_from, token_lookup

        if isinstance(raw, str) and not (self.root_path / raw).is_file():
            raw = str(self.base_dir / raw)
        elif isinstance(raw, str):
            raw = str(self.root_path / raw)
        names = class_names_from(raw, f"{self.where}, key 'classes'")
        self.class_tokens = token_lookup(names, self.format)
        if isinstance(names, dict):
            ordered = list(dict.fromkeys(names.values()))
        else:
            ordered = list(names or [])
        ids = {n: t for t, n in (self.class_tokens or {}).items()}
        self.classes = [
            ClassInfo(int(ids[n]) if ids.get(n, "").lstrip("-").isdigit() else k, n,
                      default_color(k - 1))
            for k, n in enumerate(ordered, start=1)
        ]  # fmt: skip

    def read(self) -> Any:
        """Every image with its objects: a :class:`geocmid.data.boxformats.DetectionFolder`."""
        from geocmid.data.boxformats import read_detection_folder

        return read_detection_folder(self)

    def validate_files(self) -> dict[str, int]:
        """Read every label file (errors name the file and line) → images per split."""
        folder = self.read()
        return {f"{k} images": v for k, v in folder.counts().items()}


@dataclass
class TorchGeoDatasetEntry(Entry):
    """A dataset class of ``torchgeo.datasets`` (UC Merced, Potsdam, LEVIR-CD, ...) by name.

    Nothing is downloaded unless the user asks with ``geocmid catalog download NAME``.
    """

    kind: ClassVar[str] = "torchgeo_dataset"
    KEYS: ClassVar[dict[str, tuple[bool, str]]] = {
        **Entry.KEYS,
        "dataset": (True, "class name in torchgeo.datasets, e.g. UCMerced"),
        "root": (True, "folder holding (or receiving) the dataset files"),
        "args": (False, "other constructor arguments, e.g. {split: train}"),
        "task": (False, "what it is used for: classification, segmentation, change, detection"),
    }

    dataset: str = ""
    root: str = ""
    args: dict[str, Any] = field(default_factory=dict)
    task: str | None = None

    @property
    def root_path(self) -> Path:
        root = Path(self.root).expanduser()
        return (root if root.is_absolute() else self.base_dir / root).resolve()


ENTRY_KINDS: dict[str, type[Entry]] = {
    cls.kind: cls
    for cls in (
        ImageryEntry,
        RasterLabelsEntry,
        VectorLabelsEntry,
        BitemporalEntry,
        ImageFolderEntry,
        ChipSegmentationEntry,
        ChipChangeEntry,
        DetectionFolderEntry,
        TorchGeoDatasetEntry,
    )
}


def _parse_date(entry: Entry, value: Any) -> dt.date:
    if isinstance(value, dt.date):
        return value
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise entry.error("date", f"{value!r} is not a date", "write it as YYYY-MM-DD") from None


def parse_entry(raw: Any, name: str, source: Path | None, base_dir: Path) -> Entry:
    """Build a typed entry from a parsed YAML mapping, rejecting unknown keys and bad values."""
    where = f"catalog entry '{name}'" + (f" ({source})" if source else "")
    if not isinstance(raw, Mapping):
        raise ConfigError(where, "expected a mapping of keys (kind: ..., paths: ...)")
    kind = raw.get("kind")
    if kind not in ENTRY_KINDS:
        raise ConfigError(
            where + ", key 'kind'",
            f"unknown or missing kind {kind!r}{did_you_mean(str(kind), ENTRY_KINDS)}",
            f"use one of: {', '.join(ENTRY_KINDS)}",
        )
    cls = ENTRY_KINDS[kind]
    for key in raw:
        if key not in cls.KEYS:
            raise ConfigError(
                where,
                f"unknown key '{key}' for a {kind} entry{did_you_mean(str(key), cls.KEYS)}",
                f"valid keys: {', '.join(cls.KEYS)}",
            )
    for key, (required, help_text) in cls.KEYS.items():
        if required and raw.get(key) in (None, "", []):
            raise ConfigError(
                where, f"required key '{key}' is missing", f"add '{key}': {help_text}"
            )
    name = str(raw.get("name") or name)
    entry = cls(
        name=name, source=source, base_dir=base_dir, description=str(raw.get("description", ""))
    )
    entry.gdal_env = raw.get("gdal_env") or {}  # checked where it is applied
    values = {k: v for k, v in raw.items() if k not in Entry.KEYS}

    if isinstance(entry, ImageryEntry):
        entry.paths = [str(p) for p in _as_list(values.get("paths"))]
        bands = values["bands"]
        if isinstance(bands, int):
            bands = [f"b{i + 1}" for i in range(bands)]
        entry.bands = [str(b) for b in _as_list(bands)]
        if len(set(entry.bands)) != len(entry.bands):
            raise entry.error("bands", "band names repeat", "give each band a distinct name")
        entry.band_files = values.get("band_files")
        if entry.band_files is not None and "{band}" not in str(entry.band_files):
            raise entry.error(
                "band_files", "the pattern has no {band} placeholder", "e.g. 'B{band}.tif'"
            )
        if bool(entry.paths) == bool(entry.band_files):
            raise entry.error(None, "give exactly one of 'paths' or 'band_files'")
        entry.rgb = [str(b) for b in _as_list(values.get("rgb"))]
        missing = [b for b in entry.rgb if b not in entry.bands]
        if missing or (entry.rgb and len(entry.rgb) != 3):
            raise entry.error(
                "rgb", f"expected 3 of the entry's bands {entry.bands}, got {entry.rgb}"
            )
        entry.nodata = None if values.get("nodata") is None else float(values["nodata"])
        entry.date = None if values.get("date") is None else _parse_date(entry, values["date"])
        entry.date_pattern = values.get("date_pattern")
        if entry.date_pattern is not None and "(?P<date>" not in entry.date_pattern:
            raise entry.error("date_pattern", "the regex has no (?P<date>...) group")
        entry.date_format = str(values.get("date_format", "%Y%m%d"))
        entry.crs = values.get("crs")
        entry.res = None if values.get("res") is None else float(values["res"])
        entry.assign_crs = values.get("assign_crs")
        entry.stats = values.get("stats")
    elif isinstance(entry, RasterLabelsEntry):
        entry.paths = [str(p) for p in _as_list(values.get("paths"))]
        entry.class_masks = {int(k): str(v) for k, v in (values.get("class_masks") or {}).items()}
        if bool(entry.paths) == bool(entry.class_masks):
            raise entry.error(None, "give exactly one of 'paths' or 'class_masks'")
        entry.classes = _parse_classes(entry, values.get("classes"))
        entry.ignore_value = values.get("ignore_value")
        entry.align_with = values.get("align_with")
        entry.assign_crs = values.get("assign_crs")
    elif isinstance(entry, VectorLabelsEntry):
        entry.paths = [str(p) for p in _as_list(values.get("paths"))]
        entry.layer = values.get("layer")
        entry.class_attribute = values.get("class_attribute")
        entry.classes = _parse_classes(entry, values.get("classes"))
        entry.geometry = values.get("geometry")
        if entry.geometry not in (None, "polygons", "points", "boxes"):
            raise entry.error("geometry", f"{entry.geometry!r} is not polygons, points or boxes")
    elif isinstance(entry, BitemporalEntry):
        entry.before = str(values["before"])
        entry.after = str(values["after"])
        entry.change_labels = values.get("change_labels")
    elif isinstance(entry, ChipEntry):
        entry.parse_values(values)
    elif isinstance(entry, TorchGeoDatasetEntry):
        entry.dataset = str(values["dataset"])
        entry.root = str(values["root"])
        entry.args = dict(values.get("args") or {})
        entry.task = values.get("task")
    return entry
