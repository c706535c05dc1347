"""Polygons from class rasters, dissolved across block borders, and grids of scene classes.

The class raster is read block by block. Polygons are traced in *pixel* coordinates, where the
corners of neighbouring blocks are exact integers, so a polygon cut by a block border is rejoined
by a union without slivers; only then are coordinates mapped through the affine transform.
Areas are in m² (geodesic in a geographic CRS); mean probability is the mean, over the polygon's
pixels, of the probability of its class.
"""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from affine import Affine
from rasterio.features import rasterize, shapes
from rasterio.windows import Window

from geocmid.inference.areas import geometry_areas_m2
from geocmid.inference.card import ModelCard
from geocmid.inference.reader import Grid
from geocmid.inference.windows import Layout

COLUMNS = ["class_value", "class_name", "area_m2", "mean_prob", "pixels", "geometry"]


def to_map(geoms: np.ndarray, transform: Affine) -> np.ndarray:
    """Apply a pixel→map affine transform to shapely geometries (vectorised)."""
    a, b, c, d, e, f = transform[:6]
    matrix = np.array([[a, d], [b, e]])
    return shapely.transform(geoms, lambda xy: xy @ matrix + np.array([c, f]))


def polygons(
    class_tif: Path,
    prob_tif: Path,
    card: ModelCard,
    background: int | None,
    simplify_px: float = 0.0,
    min_area_m2: float = 0.0,
    block: int = 2048,
) -> gpd.GeoDataFrame:
    """Polygons of every class except ``background`` from a class raster and its probabilities."""
    value_to_index = {c.value: k for k, c in enumerate(card.classes)}
    done: list[tuple[object, int, float, int]] = []  # geometry (pixel space), value, prob sum, n
    pending: list[tuple[object, int, float, int]] = []  # touching an inner block border
    with rasterio.open(class_tif) as cls_ds, rasterio.open(prob_tif) as prob_ds:
        height, width, nodata = cls_ds.height, cls_ds.width, cls_ds.nodata
        grid = Grid(cls_ds.crs, cls_ds.transform, width, height)
        for r0 in range(0, height, block):
            for c0 in range(0, width, block):
                window = Window(c0, r0, min(block, width - c0), min(block, height - r0))
                cls = cls_ds.read(1, window=window)
                mask = cls != nodata
                if background is not None:
                    mask &= cls != background
                if not mask.any():
                    continue
                conf = _class_probability(prob_ds.read(window=window), cls, value_to_index)
                local = Affine.translation(c0, r0)
                found = [
                    (shapely.geometry.shape(g), int(v)) for g, v in shapes(cls, mask, 4, local)
                ]
                ids = rasterize(
                    ((g, n + 1) for n, (g, _) in enumerate(found)),
                    out_shape=cls.shape,
                    transform=local,
                    dtype="int32",
                )
                counts = np.bincount(ids.ravel(), minlength=len(found) + 1)
                sums = np.bincount(ids.ravel(), weights=conf.ravel(), minlength=len(found) + 1)
                r1, c1 = r0 + window.height, c0 + window.width
                for n, (geom, value) in enumerate(found):
                    x0, y0, x1, y1 = geom.bounds
                    inner = (x0 <= c0 and c0 > 0) or (y0 <= r0 and r0 > 0)
                    inner = inner or (x1 >= c1 and c1 < width) or (y1 >= r1 and r1 < height)
                    record = (geom, value, float(sums[n + 1]), int(counts[n + 1]))
                    (pending if inner else done).append(record)
    done.extend(_dissolve(pending))
    return _frame(done, grid, card, simplify_px, min_area_m2)


def _class_probability(
    probs: np.ndarray, cls: np.ndarray, value_to_index: dict[int, int]
) -> np.ndarray:
    """Probability (percent) of each pixel's own class: ``[h, w]`` float64."""
    index = np.zeros(cls.shape, np.int64)
    for value, k in value_to_index.items():
        index[cls == value] = k
    return np.take_along_axis(probs, index[None], axis=0)[0].astype(np.float64)


def _dissolve(parts: list[tuple[object, int, float, int]]) -> list[tuple[object, int, float, int]]:
    """Union same-class parts that touch across block borders; sum their statistics."""
    out = []
    for value in sorted({v for _, v, _, _ in parts}):
        mine = [p for p in parts if p[1] == value]
        merged = shapely.get_parts(shapely.union_all([p[0] for p in mine]))
        tree = shapely.STRtree(merged)
        sums, counts = np.zeros(len(merged)), np.zeros(len(merged), np.int64)
        points = shapely.point_on_surface(np.array([p[0] for p in mine], dtype=object))
        hits = tree.query(points, predicate="within")
        for part_index, merged_index in zip(*hits, strict=True):
            sums[merged_index] += mine[part_index][2]
            counts[merged_index] += mine[part_index][3]
        out.extend(
            (g, value, float(s), int(n)) for g, s, n in zip(merged, sums, counts, strict=True)
        )
    return out


def _frame(
    records: list[tuple[object, int, float, int]],
    grid: Grid,
    card: ModelCard,
    simplify_px: float,
    min_area_m2: float,
) -> gpd.GeoDataFrame:
    names = {c.value: c.name for c in card.classes}
    geoms = np.array([r[0] for r in records], dtype=object)
    if simplify_px > 0 and len(geoms):
        geoms = shapely.simplify(geoms, simplify_px, preserve_topology=True)
    geoms = to_map(geoms, grid.transform) if len(geoms) else geoms
    frame = gpd.GeoDataFrame(
        {
            "class_value": np.array([r[1] for r in records], np.int64),
            "class_name": [names[r[1]] for r in records],
            "area_m2": geometry_areas_m2(geoms, grid.crs) if len(geoms) else np.zeros(0),
            "mean_prob": np.array([r[2] / max(r[3], 1) / 100.0 for r in records], np.float64),
            "pixels": np.array([r[3] for r in records], np.int64),
        },
        geometry=gpd.GeoSeries(list(geoms), crs=grid.crs),
        crs=grid.crs,
    )
    if min_area_m2 > 0:
        frame = frame[~(frame["area_m2"] < min_area_m2)]
    # A stable order (top-left first) makes outputs comparable between runs.
    order = np.lexsort(
        (
            frame.geometry.bounds["minx"].to_numpy(),
            -frame.geometry.bounds["maxy"].to_numpy(),
            frame["class_value"].to_numpy(),
        )
    )
    return frame.iloc[order].reset_index(drop=True)


def scene_cells(
    cells: np.ndarray,
    probs: np.ndarray,
    valid_fraction: np.ndarray,
    layout: Layout,
    grid: Grid,
    card: ModelCard,
    min_valid: float = 0.5,
) -> gpd.GeoDataFrame:
    """A grid of classified cells (one per window) with class and probabilities per class.

    Cells with less than ``min_valid`` valid pixels are left out (nodata).
    """
    keep = valid_fraction >= min_valid
    cells, probs, valid_fraction = cells[keep], probs[keep], valid_fraction[keep]
    size = layout.size
    boxes = []
    for i, j in cells:
        r0, c0 = layout.rows.origin(int(i)), layout.cols.origin(int(j))
        boxes.append(shapely.box(c0, r0, min(c0 + size, grid.width), min(r0 + size, grid.height)))
    geoms = to_map(np.array(boxes, dtype=object), grid.transform) if boxes else np.array([])
    best = probs.argmax(axis=1) if len(probs) else np.zeros(0, np.int64)
    columns: dict[str, object] = {
        "class_value": np.array([card.classes[k].value for k in best], np.int64),
        "class_name": [card.classes[k].name for k in best],
        "probability": probs.max(axis=1) if len(probs) else np.zeros(0),
        "valid_fraction": valid_fraction,
        "area_m2": geometry_areas_m2(geoms, grid.crs) if len(geoms) else np.zeros(0),
    }
    for k, c in enumerate(card.classes):
        columns[f"prob_{c.name}"] = probs[:, k] if len(probs) else np.zeros(0)
    return gpd.GeoDataFrame(
        columns, geometry=gpd.GeoSeries(list(geoms), crs=grid.crs), crs=grid.crs
    )
