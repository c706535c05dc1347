"""STAC in and out: STAC items as imagery, and a STAC Item describing every output map.

In: a STAC Item, an ItemCollection (``FeatureCollection`` of items) or a static Catalog /
Collection (``catalog.json``, items found recursively) is read with pystac; for every item the
assets holding the entry's ``bands`` are chosen by band name (the asset key, or a band's
``name`` / ``common_name`` in ``eo:bands`` / ``bands``: ``red``, ``nir``, ``B04`` …) and stacked
into one small GDAL VRT per item (the bands on the finest asset's grid, resampled bilinearly,
nothing copied), named ``<item id>_<YYYYMMDD>.vrt`` after the item's date. The VRTs are plain
rasters, so the entry is read exactly like one of local files (training, validation,
prediction), with dates from the items. In a catalog entry::

    kind: imagery
    paths: stac/catalog.json      # or an item / ItemCollection JSON, local or a URL
    bands: [red, green, blue, nir]

Out: :func:`output_item` builds the STAC Item written beside an output map (projection and
raster extensions, the model card as properties, ``derived_from`` links to the inputs).
Reference: STAC spec 1.1 (https://github.com/radiantearth/stac-spec), projection extension
v2, raster extension v1.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import numpy as np

from geocmid.data.paths import is_virtual, scheme
from geocmid.errors import ConfigError, DataError

#: ``date_pattern`` matching the VRT names written here.
STAC_DATE_PATTERN = r"_(?P<date>\d{8})\.vrt$"
_GDAL_TYPES = {
    "uint8": "Byte", "int8": "Int8", "uint16": "UInt16", "int16": "Int16", "uint32": "UInt32",
    "int32": "Int32", "float32": "Float32", "float64": "Float64",
}  # fmt: skip


def is_stac_document(path: str | os.PathLike[str]) -> bool:
    """True for a ``.json`` path holding (or naming) a STAC Item, ItemCollection or Catalog."""
    text = os.fspath(path)
    if not text.lower().endswith(".json"):
        return False
    if is_virtual(text) and scheme(text) not in (None, "file"):
        return True  # a remote JSON among raster paths can only be STAC
    try:
        with open(text[7:] if scheme(text) == "file" else text, encoding="utf-8") as handle:
            head = json.load(handle)
    except (OSError, ValueError):
        return False
    if not isinstance(head, dict):
        return False
    if head.get("type") == "FeatureCollection":  # an ItemCollection, not any GeoJSON
        features = head.get("features") or [{}]
        return isinstance(features[0], dict) and "stac_version" in features[0]
    return "stac_version" in head


def read_items(source: str | os.PathLike[str]) -> list[Any]:
    """The ``pystac.Item`` objects of an Item, ItemCollection or static Catalog / Collection.

    Raises:
        DataError: the document cannot be read, is not STAC, or holds no item.
    """
    import pystac

    text = os.fspath(source)
    try:
        raw = pystac.StacIO.default().read_json(text)
    except Exception as error:
        raise DataError(text, f"cannot be read as JSON ({error})", "check the path") from None
    kind = raw.get("type")
    try:
        if kind == "Feature":
            items = [pystac.Item.from_dict(raw, href=text)]
        elif kind == "FeatureCollection":
            items = list(pystac.ItemCollection.from_dict(raw, preserve_dict=False))
            for item in items:  # relative asset hrefs are relative to the collection file
                for asset in item.assets.values():
                    if not _is_absolute(asset.href):
                        asset.href = str(Path(text).parent / asset.href)
        elif kind in ("Catalog", "Collection"):
            catalog = pystac.read_file(text)
            items = list(catalog.get_items(recursive=True))  # type: ignore[union-attr]
        else:
            raise DataError(
                text,
                f"is not a STAC Item, ItemCollection or Catalog (type {kind!r})",
                "point to a STAC JSON document",
            )
    except (pystac.STACError, KeyError, TypeError) as error:
        raise DataError(text, f"is not valid STAC ({error})", "check the document") from None
    if not items:
        raise DataError(text, "holds no STAC item", "point to a catalog with items")
    return items


def _is_absolute(href: str) -> bool:
    return is_virtual(href) or Path(href).is_absolute()


def gdal_href(href: str) -> str:
    """An asset href as GDAL opens it: ``https://`` → ``/vsicurl/https://``, ``s3://b/k`` →
    ``/vsis3/b/k``, ``file:///x`` → ``/x``; other paths unchanged."""
    kind = scheme(href)
    if kind in ("http", "https"):
        return "/vsicurl/" + href
    if kind in ("s3", "gs"):
        return f"/vsi{kind}/" + href.split("://", 1)[1]
    if kind == "file":
        return href[len("file://") :]
    return href


def _band_names(asset: Any) -> list[list[str]]:
    """Per band of an asset, the names it answers to (lower case)."""
    fields = asset.extra_fields
    bands = fields.get("eo:bands") or fields.get("bands") or []
    out = []
    for band in bands:
        names = [band.get("name"), band.get("common_name"), band.get("eo:common_name")]
        out.append([str(n).lower() for n in names if n])
    return out


def choose_assets(item: Any, bands: Sequence[str], where: str) -> list[tuple[str, int]]:
    """``(gdal path, 1-based band)`` of each wanted band in ``item``.

    A band matches an asset whose key is the band name (case-insensitive; its first band), or a
    band of an asset whose ``eo:bands`` / ``bands`` entry has that ``name`` or ``common_name``.

    Raises:
        ConfigError: a band is in no asset (the message lists the item's assets and band names).
    """
    chosen = []
    for band in bands:
        want = str(band).lower()
        found = None
        for key, asset in item.assets.items():
            if key.lower() == want:
                found = (asset, 1)
                break
        if found is None:
            for asset in item.assets.values():
                names = _band_names(asset)
                hit = [k for k, n in enumerate(names) if want in n]
                if hit:
                    found = (asset, hit[0] + 1)
                    break
        if found is None:
            known = {k: [n for ns in _band_names(a) for n in ns] for k, a in item.assets.items()}
            raise ConfigError(
                f"{where}: STAC item '{item.id}'",
                f"has no asset for band '{band}' (assets and their band names: {known})",
                "name the bands as the item's asset keys or eo:bands names / common names",
            )
        asset, index = found
        chosen.append((gdal_href(asset.get_absolute_href() or asset.href), index))
    return chosen


def item_date(item: Any) -> dt.date | None:
    """The item's ``datetime``, else its ``start_datetime``, as a date."""
    stamp = item.datetime or item.common_metadata.start_datetime
    return stamp.date() if stamp else None


@dataclass(frozen=True)
class _Header:
    width: int
    height: int
    transform: Any
    crs: Any
    dtype: str
    nodata: float | None


def _header(path: str) -> _Header:
    import rasterio

    try:
        with rasterio.open(path) as src:
            return _Header(
                src.width, src.height, src.transform, src.crs, src.dtypes[0], src.nodata
            )
    except rasterio.errors.RasterioIOError as error:
        raise DataError(path, f"STAC asset cannot be opened ({error})", "check the href") from None


def item_vrt(item: Any, bands: Sequence[str], folder: Path, where: str) -> Path:
    """Write (once) a VRT stacking the item's ``bands`` and return its path.

    The grid is the finest asset's (all assets must share one CRS); coarser assets are
    resampled bilinearly by GDAL when read. Rewritten only when its content changes.
    """
    chosen = choose_assets(item, bands, where)
    headers = [_header(path) for path, _ in chosen]
    crs = {h.crs.to_string() if h.crs else None for h in headers}
    if len(crs) != 1:
        raise DataError(
            f"{where}: STAC item '{item.id}'",
            f"its assets are in different CRS {sorted(map(str, crs))}",
            "choose bands of one projection",
        )
    target = min(headers, key=lambda h: abs(h.transform.a))
    dtype = np.result_type(*[h.dtype for h in headers]).name
    lines = [
        f'<VRTDataset rasterXSize="{target.width}" rasterYSize="{target.height}">',
        f"  <SRS>{escape(target.crs.to_wkt())}</SRS>" if target.crs else "",
        "  <GeoTransform>" + ", ".join(repr(v) for v in target.transform.to_gdal())
        + "</GeoTransform>",
    ]  # fmt: skip
    t = target.transform
    for n, ((path, index), h, name) in enumerate(zip(chosen, headers, bands, strict=True), 1):
        # Destination window of the whole source on the target grid (same CRS).
        x0 = (h.transform.c - t.c) / t.a
        y0 = (h.transform.f - t.f) / t.e
        xs, ys = h.width * h.transform.a / t.a, h.height * h.transform.e / t.e
        nodata = f"<NODATA>{h.nodata!r}</NODATA>" if h.nodata is not None else ""
        lines += [
            f'  <VRTRasterBand dataType="{_GDAL_TYPES.get(dtype, "Float64")}" band="{n}">',
            f"    <Description>{escape(str(name))}</Description>",
            f"    <NoDataValue>{h.nodata!r}</NoDataValue>" if h.nodata is not None else "",
            '    <ComplexSource resampling="bilinear">',
            f'      <SourceFilename relativeToVRT="0">{escape(path)}</SourceFilename>',
            f"      <SourceBand>{index}</SourceBand>",
            f'      <SrcRect xOff="0" yOff="0" xSize="{h.width}" ySize="{h.height}"/>',
            f'      <DstRect xOff="{x0!r}" yOff="{y0!r}" xSize="{xs!r}" ySize="{ys!r}"/>',
            f"      {nodata}",
            "    </ComplexSource>",
            "  </VRTRasterBand>",
        ]
    lines.append("</VRTDataset>")
    text = "\n".join(line for line in lines if line.strip()) + "\n"
    date = item_date(item)
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", item.id)
    path = Path(folder) / (f"{safe}_{date:%Y%m%d}.vrt" if date else f"{safe}.vrt")
    if not path.exists() or path.read_text() != text:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return path


def stac_files(source: str | os.PathLike[str], bands: Sequence[str], folder: Path,
               where: str) -> list[Path]:  # fmt: skip
    """One VRT per item of a STAC document, stacking ``bands`` (see the module docstring)."""
    items = read_items(source)
    return sorted(item_vrt(item, bands, folder, where) for item in items)


# -- out: a STAC Item beside each output map ---------------------------------------------------


def output_item(
    name: str,
    raster: Path | None,
    grid: Any,
    card: dict[str, Any],
    fingerprint: str,
    inputs: Sequence[str],
    assets: dict[str, Path],
    dates: Sequence[dt.date | None] = (),
    created: dt.datetime | None = None,
) -> Any:
    """The STAC Item describing one prediction's outputs.

    Args:
        name: the item id (the output name stem).
        raster: the class COG (its asset gets the raster extension), or None.
        grid: the output grid (``crs``, ``transform``, ``width``, ``height``).
        card: the model card (stored as ``geocmid:model_card``).
        fingerprint: the model weights' hash (``geocmid:model_fingerprint``).
        inputs: input paths / URLs (``derived_from`` links) or entry labels.
        assets: output kind → file, linked relative to the item.
        dates: the inputs' dates; one date → ``datetime``, several → ``start/end_datetime``;
            none known → the prediction time.
        created: the prediction time (default: now, UTC).

    Returns:
        a ``pystac.Item`` with the projection (v2) and raster extensions.
    """
    import pystac
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import DataType, RasterBand, RasterExtension
    from rasterio.warp import transform_bounds, transform_geom
    from shapely.geometry import box, mapping

    created = created or dt.datetime.now(dt.UTC).replace(microsecond=0)
    left, bottom, right, top = grid.bounds
    footprint = mapping(box(left, bottom, right, top))
    if grid.crs is not None:
        geometry = transform_geom(grid.crs, "EPSG:4326", footprint, precision=7)
        bbox = list(transform_bounds(grid.crs, "EPSG:4326", *grid.bounds, densify_pts=21))
    else:  # not georeferenced: no place on Earth
        geometry, bbox = None, None
    known = sorted(d for d in dates if d is not None)
    props: dict[str, Any] = {
        "created": created.isoformat().replace("+00:00", "Z"),
        "geocmid:model_card": card,
        "geocmid:model_fingerprint": fingerprint,
        "geocmid:task": card.get("task"),
    }
    when: dt.datetime | None
    if len(known) == 1:
        when = dt.datetime.combine(known[0], dt.time(), dt.UTC)
    elif known:
        when = None
        props["start_datetime"] = f"{known[0].isoformat()}T00:00:00Z"
        props["end_datetime"] = f"{known[-1].isoformat()}T00:00:00Z"
    else:
        when = created
    item = pystac.Item(name, geometry, bbox, when, props)
    proj = ProjectionExtension.ext(item, add_if_missing=True)
    epsg = grid.crs.to_epsg() if grid.crs is not None else None
    proj.apply(
        code=f"EPSG:{epsg}" if epsg else None,
        wkt2=None if epsg or grid.crs is None else grid.crs.to_wkt(),
        shape=[grid.height, grid.width],
        transform=list(grid.transform)[:6],
        bbox=[left, bottom, right, top],
    )
    roles = {"classes": ["data"], "probabilities": ["data"], "quicklook": ["overview"]}
    media = {
        ".tif": pystac.MediaType.COG, ".gpkg": "application/geopackage+sqlite3",
        ".geojson": pystac.MediaType.GEOJSON, ".json": pystac.MediaType.JSON,
        ".png": pystac.MediaType.PNG,
    }  # fmt: skip
    for kind, path in assets.items():
        asset = pystac.Asset(
            href=f"./{Path(path).name}",
            media_type=media.get(Path(path).suffix),
            roles=roles.get(kind, ["metadata"] if kind == "summary" else ["data"]),
        )
        item.add_asset(kind, asset)
        if raster is not None and Path(path) == Path(raster):
            import rasterio

            with rasterio.open(raster) as src:
                RasterExtension.ext(asset, add_if_missing=True).apply(
                    [
                        RasterBand.create(
                            nodata=src.nodata,
                            data_type=DataType(src.dtypes[b]),
                            spatial_resolution=abs(src.res[0]),
                        )
                        for b in range(src.count)
                    ]
                )
    for source in inputs:
        if source.startswith("entry:"):
            continue
        item.add_link(pystac.Link("derived_from", source, media_type=None, title="input"))
    return item


def write_item(item: Any, path: Path) -> None:
    """Write ``item`` as JSON to ``path`` (temporary name, then rename)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(item.to_dict(include_self_link=False, transform_hrefs=False),
                              indent=1))  # fmt: skip
    os.replace(tmp, path)


def validate_item(data: dict[str, Any]) -> None:
    """Validate an item dict offline: the core STAC 1.1 Item schema bundled with pystac, and the
    projection / raster fields read back through pystac's extension classes.

    Raises:
        pystac.errors.STACValidationError: the core schema check failed.
        ValueError: a declared extension's fields are missing or malformed.
    """
    import pystac
    import pystac.validation
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    core = {**data, "stac_extensions": []}  # extension schemas would be downloaded
    pystac.validation.validate_dict(core, pystac.STACObjectType.ITEM)
    item = pystac.Item.from_dict(data)
    if not ProjectionExtension.has_extension(item):
        raise ValueError("the projection extension is not declared")
    proj = ProjectionExtension.ext(item)
    if proj.shape is None or proj.transform is None or len(proj.transform) not in (6, 9):
        raise ValueError("proj:shape / proj:transform are missing")
    for key, asset in item.assets.items():
        if RasterExtension.has_extension(item) and "raster:bands" in asset.extra_fields:
            bands = RasterExtension.ext(asset).bands or []
            if not all(b.data_type is not None for b in bands):
                raise ValueError(f"asset {key}: raster:bands without data_type")


def parse_when(value: Any) -> dt.date | None:
    """A date from an entry's ``date`` value (date, datetime or ISO text), else None."""
    if isinstance(value, dt.datetime):
        return value.date()
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str):
        try:
            return dt.date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def stac_folder(base: Path, name: str) -> Path:
    """Where the VRTs of an entry's STAC items are kept: ``.geocmid-stac/<entry>`` beside it."""
    return Path(base) / ".geocmid-stac" / name


def entry_files(entry: Any, source: Path) -> list[Path]:
    """The VRTs of a catalog imagery entry whose ``paths`` name a STAC document; the entry's
    ``date_pattern`` is set to read the items' dates from the VRT names unless it has one."""
    bands = list(getattr(entry, "bands", []) or [])
    if not bands:
        raise ConfigError(
            f"{entry.where}, key 'bands'",
            "a STAC entry needs the band names to pick the assets",
            "e.g. bands: [red, green, blue, nir]",
        )
    files = stac_files(source, bands, stac_folder(entry.base_dir, entry.name), entry.where)
    if getattr(entry, "date_pattern", "") is None and all(
        re.search(STAC_DATE_PATTERN, f.name) for f in files
    ):
        entry.date_pattern = STAC_DATE_PATTERN
    return files
