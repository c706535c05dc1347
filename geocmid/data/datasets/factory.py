"""Catalog entries → TorchGeo datasets, validated first so failures are plain-worded."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
from rasterio.crs import CRS as RIO_CRS

from geocmid.data.catalog import (
    BitemporalEntry,
    Catalog,
    Entry,
    ImageFolderEntry,
    ImageryEntry,
    RasterLabelsEntry,
    TorchGeoDatasetEntry,
    VectorLabelsEntry,
    validate,
)
from geocmid.data.datasets.bitemporal import BitemporalDataset
from geocmid.data.datasets.folder import ImageFolderDataset
from geocmid.data.datasets.labels import CatalogVectorDataset, ClassMaskDataset
from geocmid.data.datasets.raster import CatalogRasterDataset
from geocmid.data.rasters import parse_crs
from geocmid.data.sources import Grid, build_source, imagery_source
from geocmid.errors import ConfigError

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def imagery_dataset(
    entry: ImageryEntry,
    *,
    crs: Any = None,
    res: float | tuple[float, float] | None = None,
    grid: Grid | None = None,
    transforms: Transform | None = None,
    check: bool = True,
    native_dtype: bool = False,
) -> CatalogRasterDataset:
    """A :class:`CatalogRasterDataset` over an imagery entry, read through the entry's
    :func:`~geocmid.data.sources.imagery_source` (the grid prediction uses too), warped to
    ``crs``/``res`` or read on ``grid`` if given."""
    if check:
        validate(entry)
    return CatalogRasterDataset(
        source=imagery_source(entry, crs=crs, res=res, grid=grid),
        is_image=True,
        date_format=entry.date_format,
        date=pd.Timestamp(entry.date) if entry.date else None,
        transforms=transforms,
        native_dtype=native_dtype,
    )


def _reference_grid(
    entry: RasterLabelsEntry, catalog: Catalog | None
) -> tuple[RIO_CRS, Any] | None:
    """``align_with``: the CRS and transform of the grid the imagery entry is read on."""
    if not entry.align_with or catalog is None:
        return None
    reference = catalog.get_kind(entry.align_with, ImageryEntry)
    grid = imagery_source(reference).grid
    return grid.crs, grid.transform


def raster_labels_dataset(
    entry: RasterLabelsEntry,
    catalog: Catalog | None = None,
    *,
    crs: Any = None,
    res: float | tuple[float, float] | None = None,
    grid: Grid | None = None,
    check: bool = True,
) -> CatalogRasterDataset:
    """Raster labels as a mask dataset (``mask`` key holds the raw class values).

    ``crs``/``res`` warp the labels (e.g. to the imagery's); ``grid`` reads them on exactly that
    grid (the imagery dataset's ``source.grid``), so chips on the imagery's pixel lattice take
    the windowed fast path for labels too.
    """
    if check:
        validate(entry, catalog)
    reference_grid = _reference_grid(entry, catalog)
    assign_crs = parse_crs(entry.assign_crs, f"{entry.where}, key 'assign_crs'")
    if entry.class_masks:
        ignore = 255 if entry.ignore_value is None else int(entry.ignore_value)
        files = dict(zip(entry.class_masks, entry.files(), strict=True))
        first = next(iter(files.values()))
        source = build_source(
            [first], bands=["mask"], crs=crs, res=res, grid=grid, assign_crs=assign_crs,
            reference_grid=reference_grid, is_image=False, name=entry.name,
        )  # fmt: skip
        return ClassMaskDataset(files, ignore_value=ignore, source=source)
    source = build_source(
        entry.files(), bands=["mask"], crs=crs, res=res, grid=grid, nodata=entry.ignore_value,
        assign_crs=assign_crs, reference_grid=reference_grid, is_image=False, name=entry.name,
    )  # fmt: skip
    return CatalogRasterDataset(source=source, is_image=False)


def vector_labels_dataset(
    entry: VectorLabelsEntry,
    *,
    crs: Any,
    res: float | tuple[float, float],
    task: str = "semantic_segmentation",
    check: bool = True,
) -> CatalogVectorDataset:
    """Vector labels rasterised on the fly onto ``crs``/``res`` (use the imagery's)."""
    if check:
        validate(entry)
    return CatalogVectorDataset(
        entry.files(),
        crs=crs,
        res=res,
        label_name=entry.class_attribute,
        task=task,
        layer=entry.layer,
    )


def bitemporal_dataset(
    entry: BitemporalEntry, catalog: Catalog, transforms: Transform | None = None
) -> BitemporalDataset:
    """Both dates on the first date's grid, with change labels if any.

    The second date and raster change labels are read on exactly the first date's grid (what
    ``geocmid predict`` does with ``--grid first``), warped where their files are not on it.
    """
    validate(entry, catalog)
    before = imagery_dataset(catalog.get_kind(entry.before, ImageryEntry), check=False)
    grid = before.source.grid
    after = imagery_dataset(catalog.get_kind(entry.after, ImageryEntry), grid=grid, check=False)
    labels = None
    if entry.change_labels:
        label_entry = catalog.get(entry.change_labels)
        if isinstance(label_entry, RasterLabelsEntry):
            labels = raster_labels_dataset(label_entry, catalog, grid=grid, check=False)
        elif isinstance(label_entry, VectorLabelsEntry):
            labels = vector_labels_dataset(label_entry, crs=before.crs, res=before.res, check=False)
    return BitemporalDataset(before, after, labels, transforms=transforms, name=entry.where)


def image_folder_dataset(
    entry: ImageFolderEntry, transforms: Transform | None = None
) -> ImageFolderDataset:
    """Every image of a folder-per-class entry (all its splits), labels in class order."""
    from geocmid.data.chipsets import image_folder_records

    validate(entry)
    recs = image_folder_records(entry)
    if recs.labels is None:
        raise ConfigError(
            entry.where, "has no classes ('labels: none')",
            "use an image_folder entry with one sub-folder per class",
        )  # fmt: skip
    return ImageFolderDataset(
        entry.root_path,
        classes=recs.classes,
        extensions=tuple(entry.extensions),
        transforms=transforms,
        samples=[(g[0], label) for g, label in zip(recs.files, recs.labels, strict=True)],
    )


def torchgeo_dataset(entry: TorchGeoDatasetEntry, download: bool = False, **kwargs: Any) -> Any:
    """Instantiate the entry's TorchGeo dataset; ``download=True`` only when the user asked."""
    import inspect

    from geocmid.data.catalog.validate import torchgeo_dataset_class, validate_torchgeo_dataset

    cls = torchgeo_dataset_class(entry)
    args = {**entry.args, **kwargs}
    if download:
        if "download" not in inspect.signature(cls.__init__).parameters:
            raise ConfigError(
                entry.where,
                f"TorchGeo cannot download {entry.dataset}",
                f"fetch it by hand into {entry.root_path} (see TorchGeo's documentation)",
            )
        entry.root_path.mkdir(parents=True, exist_ok=True)
        return cls(root=str(entry.root_path), download=True, **args)
    validate_torchgeo_dataset(entry)
    return cls(root=str(entry.root_path), **args)


def dataset_from_entry(entry: Entry, catalog: Catalog | None = None, **kwargs: Any) -> Any:
    """The natural TorchGeo dataset of any entry (vector labels need ``crs`` and ``res``)."""
    if isinstance(entry, ImageryEntry):
        return imagery_dataset(entry, **kwargs)
    if isinstance(entry, RasterLabelsEntry):
        return raster_labels_dataset(entry, catalog, **kwargs)
    if isinstance(entry, VectorLabelsEntry):
        return vector_labels_dataset(entry, **kwargs)
    if isinstance(entry, BitemporalEntry):
        if catalog is None:
            raise ConfigError(entry.where, "bitemporal entries need their catalog")
        return bitemporal_dataset(entry, catalog, **kwargs)
    if isinstance(entry, ImageFolderEntry):
        return image_folder_dataset(entry, **kwargs)
    if isinstance(entry, TorchGeoDatasetEntry):
        return torchgeo_dataset(entry, **kwargs)
    raise ConfigError(entry.where, f"no dataset for kind {entry.kind}")


def read_labels_on_grid(
    labels: Entry | str | Path, grid: Grid, catalog: Catalog | None = None, rows: int = 1024
) -> tuple[Any, Any]:
    """Reference labels on exactly ``grid`` (a map's), read by the code training reads them
    with: a raster label entry (``align_with``, ``assign_crs``, ``class_masks``,
    ``ignore_value``) through its :class:`~geocmid.data.sources.RasterSource`, a vector label
    entry rasterised with its class attribute, or a plain raster file.

    Args:
        labels: a raster or vector label entry, or a raster file path.
        grid: the grid to read on (files not on it are warped, nearest neighbour).
        catalog: the entry's catalog (``align_with``).
        rows: rows read at a time (memory stays bounded by ``rows`` x ``grid.width``).

    Returns:
        ``(values [H, W] int64, valid [H, W] bool)``: class values; ``valid`` is False where
        the labels have no data, no feature or the ignore value.

    Raises:
        DataError / ConfigError: unreadable labels or a label entry of another kind.
    """
    import numpy as np

    values = np.zeros((grid.height, grid.width), np.int64)
    valid = np.zeros((grid.height, grid.width), bool)
    if isinstance(labels, VectorLabelsEntry):
        return _rasterize_vector_labels(labels, grid)
    if isinstance(labels, RasterLabelsEntry):
        dataset = raster_labels_dataset(labels, catalog, grid=grid)
        ignore = labels.ignore_value
    elif isinstance(labels, Entry):
        raise ConfigError(labels.where, f"a {labels.kind} entry cannot be reference labels")
    else:
        source = build_source([labels], bands=["mask"], grid=grid, is_image=False)
        dataset = CatalogRasterDataset(source=source, is_image=False)
        ignore = None
    if isinstance(dataset, ClassMaskDataset):
        readers = dataset._class_readers()
        ignore = dataset.ignore_value
        for r0 in range(0, grid.height, rows):
            r1 = min(grid.height, r0 + rows)
            out = np.full((r1 - r0, grid.width), ignore, np.int64)
            for value, reader in readers.items():
                mask, ok = reader.read(r0, r1, 0, grid.width)
                out[(mask[0] != 0) & ok] = value
            values[r0:r1] = out
            valid[r0:r1] = out != ignore
        return values, valid
    with dataset.source.reader() as reader:
        for r0 in range(0, grid.height, rows):
            r1 = min(grid.height, r0 + rows)
            data, ok = reader.read(r0, r1, 0, grid.width)
            values[r0:r1] = data[0].astype(np.int64)
            valid[r0:r1] = ok
    if ignore is not None:
        valid &= values != int(ignore)
    return values, valid


def _rasterize_vector_labels(entry: VectorLabelsEntry, grid: Grid) -> tuple[Any, Any]:
    """Vector labels burnt onto ``grid`` with their class attribute (features in file order,
    later ones on top, as TorchGeo's VectorDataset rasterises them)."""
    import geopandas as gpd
    import numpy as np
    from rasterio.features import rasterize

    validate(entry)
    values = np.zeros((grid.height, grid.width), np.int64)
    covered = np.zeros((grid.height, grid.width), np.uint8)
    for path in entry.files():
        frame = gpd.read_file(path, layer=entry.layer)
        if grid.crs is not None and frame.crs is not None:
            frame = frame.to_crs(grid.crs.to_wkt())
        if entry.class_attribute:
            codes = [int(str(v).strip()) if isinstance(v, str) else int(v)
                     for v in frame[entry.class_attribute]]  # fmt: skip
        else:
            codes = [1] * len(frame)
        shapes = [(g, c) for g, c in zip(frame.geometry, codes, strict=True) if g is not None]
        if not shapes:
            continue
        shape = (grid.height, grid.width)
        burnt = rasterize(shapes, out_shape=shape, transform=grid.transform, fill=-1,
                          dtype="int32")  # fmt: skip
        values[burnt >= 0] = burnt[burnt >= 0]
        covered[burnt >= 0] = 1
    return values, covered.astype(bool)
