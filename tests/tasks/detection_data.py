"""Generated detection data: bright rectangles on a textured background, as GeoTIFF + GPKG."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import shapely

from tests.rasters import write_entry, write_raster

ORIGIN = (500_000.0, 5_000_000.0)
RES = 1.0


def rectangles_scene(
    folder: Path, size: int = 384, count: int = 60, bands: int = 3, seed: int = 0
) -> tuple[Path, Path, np.ndarray]:
    """Write ``scene.tif`` (uint16, EPSG:32633, 1 m) and ``boxes.gpkg``; return pixel boxes.

    Rectangles are 10-26 px, never touching, 3σ brighter than a blotchy background, so a
    detector has a clear signal but must still find edges (the texture has bright blobs too).
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(0, 1, (size // 8, size // 8))
    background = np.kron(noise, np.ones((8, 8)))[:size, :size]  # blotches ~8 px
    image = 1000 + 120 * background + rng.normal(0, 40, (size, size))
    boxes: list[tuple[int, int, int, int]] = []
    while len(boxes) < count:
        w, h = rng.integers(10, 27, 2)
        x0, y0 = rng.integers(2, size - 2 - w), rng.integers(2, size - 2 - h)
        cand = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        if all(
            cand[0] > b[2] + 3 or cand[2] < b[0] - 3 or cand[1] > b[3] + 3 or cand[3] < b[1] - 3
            for b in boxes
        ):
            boxes.append(cand)
    for x0, y0, x1, y1 in boxes:
        image[y0:y1, x0:x1] += 500
    stack = np.stack([image * (1 + 0.1 * b) for b in range(bands)]).astype(np.uint16)
    tif = write_raster(folder / "scene.tif", stack, origin=ORIGIN, res=RES)
    px = np.array(boxes, dtype=float)
    polys = shapely.box(
        ORIGIN[0] + px[:, 0] * RES, ORIGIN[1] - px[:, 3] * RES,
        ORIGIN[0] + px[:, 2] * RES, ORIGIN[1] - px[:, 1] * RES,
    )  # fmt: skip
    gdf = gpd.GeoDataFrame({"class": np.ones(len(px), int)}, geometry=polys, crs="EPSG:32633")
    gpkg = folder / "boxes.gpkg"
    gdf.to_file(gpkg, driver="GPKG")
    return tif, gpkg, px


def rectangles_catalog(folder: Path, **kw: object) -> Path:
    """A catalog with ``rects`` (imagery) and ``rect-boxes`` (vector_labels, boxes)."""
    tif, gpkg, _ = rectangles_scene(folder / "data", **kw)  # type: ignore[arg-type]
    bands = "[" + ", ".join(f"b{i}" for i in range(1, 4)) + "]"
    catalog = folder / "catalog"
    write_entry(catalog, "rects", f"kind: imagery\npaths: {tif}\nbands: {bands}\n")
    write_entry(
        catalog, "rect-boxes",
        f"kind: vector_labels\npaths: {gpkg}\nclass_attribute: class\ngeometry: boxes\n"
        "classes: {1: rectangle}\n",
    )  # fmt: skip
    return catalog
