"""Check a catalog entry against its files before anything reads pixels.

``validate_entry`` opens headers only, so it is cheap enough to run before every command: files
exist and are readable rasters/vectors, band counts match the declaration, georeferencing is
present (or supplied by the entry), class attributes exist, ``align_with`` masks are the size of
the grid their imagery entry is read on (:func:`geocmid.data.sources.imagery_source`: its ``res``,
else its finest file), and bitemporal dates overlap.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

import pyogrio
import shapely
from rasterio.crs import CRS
from rasterio.warp import transform_bounds

from geocmid.data.catalog.schema import (
    BitemporalEntry,
    Entry,
    ImageFolderEntry,
    ImageryEntry,
    RasterLabelsEntry,
    TorchGeoDatasetEntry,
    VectorLabelsEntry,
)
from geocmid.data.catalog.store import Catalog
from geocmid.data.rasters import (
    RasterInfo,
    check_readable,
    parse_crs,
    raster_info,
    refuse_unwarped,
)
from geocmid.data.sources import (
    Grid,
    file_date,
    imagery_source,
    refuse_stacked_pixel_grids,
)
from geocmid.errors import ConfigError, DataError, did_you_mean, several_files


@dataclass
class EntryReport:
    """What validation learnt about an entry (used by `catalog show`)."""

    entry: Entry
    rasters: list[RasterInfo] = field(default_factory=list)
    vector_info: list[dict] = field(default_factory=list)
    image_counts: dict[str, int] = field(default_factory=dict)


def readable_infos(files: list[Path], where: str) -> list[RasterInfo]:
    """The headers of ``files``, each file's blocks sampled (:func:`check_readable`).

    Raises:
        DataError: one error for every file that cannot be opened or read (how many, the first
            few named, :func:`geocmid.errors.several_files`), not only for the first.
    """
    infos: list[RasterInfo] = []
    failures: list[DataError] = []
    for path in files:
        try:
            info = raster_info(path)
            check_readable(info.path)
        except DataError as error:
            failures.append(error)
        else:
            infos.append(info)
    if failures:
        raise several_files(failures, len(files), where)
    return infos


def validate_imagery(entry: ImageryEntry) -> list[RasterInfo]:
    infos = readable_infos(entry.files(), entry.where)
    expected = 1 if entry.band_files else len(entry.bands)
    for info in infos:
        if info.count != expected:
            declared = ", ".join(entry.bands)
            raise DataError(
                str(info.path),
                f"has {info.count} band(s), but {entry.where} declares {expected}"
                + ("" if entry.band_files else f" ({declared})"),
                "list one name per band of the file in 'bands', in file order",
            )
        check_georeferencing(info, entry.assign_crs)
    keys = entry.band_file_groups()[0] if entry.band_files else entry.files()
    key_infos = {str(i.path): i for i in infos}
    refuse_stacked_pixel_grids(
        [str(k) for k in keys if key_infos[str(k)].georeferencing == "none"], entry.where
    )
    parse_crs(entry.crs, f"{entry.where}, key 'crs'")
    parse_crs(entry.assign_crs, f"{entry.where}, key 'assign_crs'")
    if entry.date_pattern:
        for path in keys:  # names the first file whose name holds no readable date
            file_date(str(path), entry.date_pattern, entry.date_format)
    return infos


def check_georeferencing(info: RasterInfo, assign_crs: str | None) -> None:
    """One rule for every command: a file must be on a grid (a geotransform, or no
    georeferencing at all read on its pixel grid with ``assign_crs``), never GCPs/RPCs only.

    Raises:
        DataError: GCP/RPC-only files (warp them first), or no CRS and no ``assign_crs``.
    """
    if info.georeferencing in ("gcps", "rpcs"):
        raise refuse_unwarped(info.path, info.georeferencing, info.crs)
    if info.georeferenced or assign_crs is not None:
        return
    if info.georeferencing == "none":
        raise DataError(
            str(info.path),
            "has no georeferencing (no CRS, no geotransform, no world file)",
            "georeference it (a world file beside it, e.g. .pgw/.jgw/.tfw, plus 'assign_crs'), "
            "or set 'assign_crs' to read it on its pixel grid (north-up, one CRS unit per "
            "pixel, top-left corner at 0, 0)",
        )
    raise DataError(
        str(info.path),
        "has a geotransform but no CRS",
        "set 'assign_crs' in its catalog entry to the CRS its coordinates are in",
    )


def entry_grid(entry: ImageryEntry) -> Grid:
    """The grid ``entry`` is read on (training and prediction alike), its files checked first.

    Its ``crs``/``res`` if given, else the finest file's (band file or tile); the extent covers
    every file (:func:`geocmid.data.sources.imagery_source`).
    """
    validate_imagery(entry)
    return imagery_source(entry).grid


def _grid_origin(entry: ImageryEntry) -> str:
    """Where the resolution of ``entry``'s grid comes from, in words."""
    if entry.res is not None:
        return "its 'res'"
    if entry.band_files:
        return "its finest band file"
    return "its finest file"


def check_aligned(infos: list[RasterInfo], reference: ImageryEntry) -> None:
    """``align_with`` masks borrow the grid ``reference`` is read on: each must be its size."""
    grid = entry_grid(reference)
    for info in infos:
        if (info.width, info.height) != (grid.width, grid.height):
            xres, yres = grid.res
            res = f"{xres:g}" if xres == yres else f"{xres:g}x{yres:g}"
            metres = grid.crs is not None and grid.crs.linear_units in ("metre", "meter")
            raise DataError(
                str(info.path),
                f"is {info.width}x{info.height} pixels, but '{reference.name}' is read on a "
                f"{grid.width}x{grid.height}-pixel grid ({res} {'m' if metres else 'CRS units'} "
                f"pixels, the resolution of {_grid_origin(reference)}), and align_with masks "
                "share that grid pixel for pixel",
                f"make the mask {grid.width}x{grid.height} pixels on that grid, set 'res' in "
                f"'{reference.name}' to the resolution the mask was made at, or georeference "
                "the mask and remove 'align_with'",
            )


def validate_raster_labels(entry: RasterLabelsEntry, catalog: Catalog | None) -> list[RasterInfo]:
    infos = readable_infos(entry.files(), entry.where)
    for info in infos:
        if info.count != 1:
            raise DataError(str(info.path), f"label rasters need 1 band, this one has {info.count}")
    if entry.align_with:
        if catalog is None:
            raise entry.error("align_with", "needs a catalog to look the imagery entry up")
        reference = catalog.get_kind(
            entry.align_with, ImageryEntry, f"{entry.where}, key 'align_with'"
        )
        check_aligned(infos, reference)
    else:
        for info in infos:
            if info.georeferencing in ("gcps", "rpcs"):
                raise refuse_unwarped(info.path, info.georeferencing, info.crs)
            if not info.georeferenced and entry.assign_crs is None:
                raise DataError(
                    str(info.path),
                    "has no CRS or georeferencing",
                    "set 'align_with: IMAGERY_ENTRY' if it is pixel-aligned with that imagery",
                )
    if not entry.classes:
        raise entry.error("classes", "no classes declared", "add classes: {value: name, ...}")
    return infos


def validate_vector_labels(entry: VectorLabelsEntry) -> list[dict]:
    infos = []
    for path in entry.files():
        try:
            info = pyogrio.read_info(path, layer=entry.layer)
        except Exception as error:  # pyogrio raises several DataSource/Layer error types
            raise DataError(
                str(path),
                f"cannot be read as a vector file ({error})",
                "check the file and 'layer'",
            ) from None
        fields = list(info["fields"])
        if entry.class_attribute and entry.class_attribute not in fields:
            raise DataError(
                str(path),
                f"has no attribute '{entry.class_attribute}'"
                f"{did_you_mean(entry.class_attribute, fields)}; its attributes are {fields}",
                f"set 'class_attribute' in {entry.where} to the attribute holding the class",
            )
        if not info.get("crs"):
            raise DataError(str(path), "has no CRS", "assign one in QGIS or with ogr2ogr -a_srs")
        if entry.class_attribute:
            check_class_values(path, entry)
        infos.append({"path": path, **info})
    return infos


def _is_class_value(value: object) -> bool:
    """An integer class value: an int, a float with no fraction (GPKG/Shapefile reals) or a
    text of an integer (a text column holding codes)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, str):
        try:
            int(value.strip())
        except ValueError:
            return False
        return True
    if isinstance(value, numbers.Integral):
        return True
    return isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer()


def check_class_values(path: Path, entry: VectorLabelsEntry) -> None:
    """Every feature's class attribute holds an integer class value (what is burnt into the
    label raster), else one error naming the file, the column, the offending values and their
    counts, and the fix.

    Raises:
        DataError: some values are text, fractional or otherwise not class values.
    """
    import pandas as pd

    column = str(entry.class_attribute)
    frame = pyogrio.read_dataframe(path, layer=entry.layer, columns=[column], read_geometry=False)
    values = frame[column]
    present = values[values.notna()]
    bad = present[[not _is_class_value(v) for v in present.tolist()]]
    if bad.empty:
        return
    counts = pd.Series([repr(v) for v in bad.tolist()]).value_counts()
    shown = ", ".join(f"{v} ({n}x)" for v, n in counts.head(5).items())
    more = f" and {len(counts) - 5} more" if len(counts) > 5 else ""
    names = {c.name: c.value for c in entry.classes}
    named = [v for v in counts.index if v.strip("'\"") in names]
    table = ", ".join(f"{k} -> {v}" for k, v in names.items())
    hint = f"; these are class names: recode them to their values ({table})" if named else ""
    raise DataError(
        str(path),
        f"attribute '{column}' holds {len(bad)} value(s) of {len(values)} that are not integer "
        f"class values: {shown}{more}{hint}",
        f"make '{column}' an integer column holding the class values of {entry.where} "
        f"({sorted(names.values())}), e.g. in QGIS's field calculator, or point "
        "'class_attribute' at the column that holds them",
    )


def footprint_in(
    info: RasterInfo, crs: CRS | None, assign_crs: CRS | None = None
) -> shapely.Polygon:
    """The bounding box of ``info`` expressed in ``crs`` (the file read as ``assign_crs`` if
    given, as its entry's ``assign_crs`` makes every reader do)."""
    src_crs = assign_crs or info.crs
    bounds = info.bounds
    if info.georeferencing == "none":  # read on its north-up pixel grid (sources.PIXEL_GRID)
        bounds = (0.0, -float(info.height), float(info.width), 0.0)
    if src_crs == crs:
        return shapely.box(*bounds)
    return shapely.box(*transform_bounds(src_crs, crs, *bounds, densify_pts=21))


def validate_bitemporal(entry: BitemporalEntry, catalog: Catalog) -> list[RasterInfo]:
    catalog.check_references(entry)
    before = catalog.get_kind(entry.before, ImageryEntry)
    after = catalog.get_kind(entry.after, ImageryEntry)
    before_infos, after_infos = validate_imagery(before), validate_imagery(after)
    if len(before.bands) != len(after.bands):
        raise entry.error(
            None,
            f"'{before.name}' has {len(before.bands)} bands "
            f"but '{after.name}' has {len(after.bands)}",
            "both dates need the same bands in the same order",
        )
    # in the CRS of the grid the pair is read on: the first date's (its 'crs', else its files')
    crs = imagery_source(before).grid.crs
    before_crs = parse_crs(before.assign_crs, f"{before.where}, key 'assign_crs'")
    after_crs = parse_crs(after.assign_crs, f"{after.where}, key 'assign_crs'")
    a = shapely.union_all([footprint_in(i, crs, before_crs) for i in before_infos])
    b = shapely.union_all([footprint_in(i, crs, after_crs) for i in after_infos])
    if not a.intersects(b) or a.intersection(b).area == 0:
        raise DataError(
            entry.where,
            f"the dates do not overlap: '{before.name}' covers {tuple(round(v) for v in a.bounds)} "
            f"and '{after.name}' covers {tuple(round(v) for v in b.bounds)} (in {crs.to_string()})",
            "pair two scenes of the same area",
        )
    if entry.change_labels:
        validate(catalog.get(entry.change_labels), catalog)
    return before_infos + after_infos


def validate_image_folder(entry: ImageFolderEntry) -> dict[str, int]:
    root = entry.root_path
    if not root.is_dir():
        raise entry.error("root", f"folder not found: {root}", "point 'root' at the class folders")
    exts = tuple(e.lower() for e in entry.extensions)
    counts = {
        d.name: sum(1 for f in d.iterdir() if f.suffix.lower() in exts)
        for d in sorted(root.iterdir())
        if d.is_dir()
    }
    if not counts:
        raise entry.error("root", f"{root} has no class sub-folders", "make one folder per class")
    for name in entry.classes:
        if name not in counts:
            raise entry.error(
                "classes", f"no folder for class '{name}'{did_you_mean(name, counts)}"
            )
    empty = [c for c, n in counts.items() if n == 0]
    if empty:
        raise entry.error(
            "root", f"class folder(s) {empty} hold no {', '.join(exts)} image", "check 'extensions'"
        )
    return counts


def torchgeo_dataset_class(entry: TorchGeoDatasetEntry) -> type:
    """The ``torchgeo.datasets`` class of ``entry``, with its arguments checked."""
    import inspect

    import torchgeo.datasets

    cls = getattr(torchgeo.datasets, entry.dataset, None)
    if not isinstance(cls, type):
        names = [n for n in dir(torchgeo.datasets) if n[:1].isupper()]
        raise entry.error(
            "dataset",
            f"torchgeo.datasets has no '{entry.dataset}'{did_you_mean(entry.dataset, names)}",
            "use a dataset class name of TorchGeo, e.g. UCMerced, LEVIRCD, OSCD",
        )
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "root", "download"}
    for key in entry.args:
        if key not in accepted:
            raise entry.error(
                "args",
                f"{entry.dataset} takes no argument '{key}'{did_you_mean(key, accepted)}",
                f"its arguments: {', '.join(sorted(accepted))}",
            )
    return cls


def validate_torchgeo_dataset(entry: TorchGeoDatasetEntry) -> None:
    """The class and arguments exist, and the files are there (never downloads)."""
    import inspect

    cls = torchgeo_dataset_class(entry)
    root = entry.root_path
    if not root.is_dir() or not any(root.iterdir()):
        downloadable = "download" in inspect.signature(cls.__init__).parameters
        raise DataError(
            entry.where,
            f"the {entry.dataset} files are not in {root}",
            f"download them with `geocmid catalog download {entry.name}`"
            if downloadable
            else f"TorchGeo cannot download {entry.dataset}: fetch it by hand into {root} "
            "(see TorchGeo's documentation of the dataset)",
        )


def validate(entry: Entry, catalog: Catalog | None = None) -> EntryReport:
    """Validate ``entry`` (and what it refers to); raise a :class:`GeocmidError` if unusable."""
    report = EntryReport(entry)
    if callable(getattr(entry, "validate_files", None)):  # kinds that check their own files
        report.image_counts = entry.validate_files()  # type: ignore[attr-defined]
        return report
    if isinstance(entry, ImageryEntry):
        report.rasters = validate_imagery(entry)
    elif isinstance(entry, RasterLabelsEntry):
        report.rasters = validate_raster_labels(entry, catalog)
    elif isinstance(entry, VectorLabelsEntry):
        report.vector_info = validate_vector_labels(entry)
    elif isinstance(entry, BitemporalEntry):
        if catalog is None:
            raise ConfigError(entry.where, "bitemporal entries need the catalog they live in")
        report.rasters = validate_bitemporal(entry, catalog)
    elif callable(getattr(entry, "validate_files", None)):  # chip datasets (catalog/chips.py)
        report.image_counts = entry.validate_files()
    elif isinstance(entry, TorchGeoDatasetEntry):
        validate_torchgeo_dataset(entry)
    return report


__all__ = ["EntryReport", "validate", "validate_imagery"]
