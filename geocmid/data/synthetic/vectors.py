"""Vector labels of synthetic scenes: land-cover polygons, buildings, boxes and changes (GPKG)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import shapely

from geocmid.data.synthetic.landscape import CHANGE_KINDS, ChangeZone
from geocmid.data.synthetic.scene import Scene, _partial
from geocmid.data.synthetic.spectra import CLASSES


def _to_crs(geoms: np.ndarray, src: str, dst: str) -> np.ndarray:
    """Reproject shapely geometries (densified first, so edges bend like the real projection)."""
    from pyproj import CRS, Transformer

    if CRS.from_user_input(src).equals(CRS.from_user_input(dst)):
        return geoms
    tr = Transformer.from_crs(src, dst, always_xy=True)
    geoms = shapely.segmentize(geoms, 25.0)
    return shapely.transform(geoms, lambda xy: np.column_stack(tr.transform(xy[:, 0], xy[:, 1])))


def polygonize(path: str | os.PathLike, *, values=None, block: int = 2048):
    """Polygons of equal-valued pixels of a single-band raster, block by block.

    Polygons are split at block edges (``block`` pixels), which keeps memory bounded.

    Returns:
        GeoDataFrame with a ``value`` column, in the raster's CRS.
    """
    import geopandas as gpd
    import rasterio
    from rasterio.features import shapes
    from rasterio.windows import Window

    geoms, vals = [], []
    with rasterio.open(path) as src:
        for row0 in range(0, src.height, block):
            for col0 in range(0, src.width, block):
                win = Window(
                    col0, row0, min(block, src.width - col0), min(block, src.height - row0)
                )
                data = src.read(1, window=win)
                mask = np.isin(data, values) if values is not None else data != src.nodata
                for geom, value in shapes(data, mask=mask, transform=src.window_transform(win)):
                    geoms.append(shapely.geometry.shape(geom))
                    vals.append(int(value))
        crs = src.crs
    return gpd.GeoDataFrame({"value": np.array(vals, dtype=np.int64)}, geometry=geoms, crs=crs)


def landcover_frame(label_path: str | os.PathLike):
    """Land-cover polygons (``class``, ``class_name``) from a class raster, in its CRS."""
    gdf = polygonize(label_path, values=list(CLASSES))
    gdf = gdf.rename(columns={"value": "class"})
    gdf["class_name"] = [CLASSES[c][0] for c in gdf["class"]]
    return gdf[["class", "class_name", "geometry"]]


def building_frame(scene: Scene, *, new_only: bool = False):
    """Building footprints (rotated rectangles) inside the scene's valid area, in its CRS.

    Columns: ``class`` (1), ``class_name`` ("building"), ``new`` (built between the dates,
    only with change zones), ``area_m2``. Buildings are clipped to the valid footprint.
    """
    import geopandas as gpd
    from rasterio.warp import transform_bounds

    land = scene.landscape
    bounds = transform_bounds(scene.crs, land.crs, *scene.bounds, densify_pts=21)
    found = land.buildings(bounds, scene.changes)
    polys = _to_crs(found["polygons"], land.crs, scene.crs)
    region = scene.footprint if scene.footprint is not None else shapely.box(*scene.bounds)
    region = region.intersection(shapely.box(*scene.bounds))
    keep = shapely.contains(region, shapely.centroid(polys))
    if new_only:
        keep &= found["new"]
    polys = shapely.intersection(polys[keep], region)
    return gpd.GeoDataFrame(
        {
            "class": np.ones(len(polys), dtype=np.int64),
            "class_name": ["building"] * len(polys),
            "new": found["new"][keep],
            "area_m2": shapely.area(polys),
        },
        geometry=polys,
        crs=scene.crs,
    )


def boxes_frame(buildings):
    """Axis-aligned bounding boxes of building polygons (for object detection)."""
    boxes = buildings.copy()
    boxes["geometry"] = shapely.envelope(buildings.geometry.values)
    return boxes


def change_frame(mask_path: str | os.PathLike, zones: tuple[ChangeZone, ...], zones_crs: str):
    """Change polygons (mask value 1): ``class`` 1 and ``change_type`` from their zone."""
    gdf = polygonize(mask_path, values=[1])
    polys = _to_crs(np.array([z.polygon for z in zones], dtype=object), zones_crs, str(gdf.crs))
    points = shapely.point_on_surface(gdf.geometry.values)
    kinds = np.zeros(len(gdf), dtype=np.int64)
    for zone, poly in zip(zones, polys, strict=True):
        kinds[shapely.contains(poly.buffer(5.0), points)] = zone.kind
    gdf = gdf.rename(columns={"value": "class"})
    gdf["change_type"] = [CHANGE_KINDS.get(int(k), "other") for k in kinds]
    gdf["area_m2"] = gdf.geometry.area
    return gdf[["class", "change_type", "area_m2", "geometry"]]


def write_gpkg(gdf, path: str | os.PathLike, layer: str | None = None) -> Path:
    """Write a GeoDataFrame as GeoPackage atomically (temporary name, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    tmp.unlink(missing_ok=True)
    quiet = logging.getLogger("pyogrio")  # it logs every write at INFO
    level = quiet.level
    quiet.setLevel(logging.WARNING)
    try:
        gdf.to_file(tmp, driver="GPKG", layer=layer or path.stem, engine="pyogrio")
        os.replace(tmp, path)
    finally:
        quiet.setLevel(level)
        tmp.unlink(missing_ok=True)
    return path
