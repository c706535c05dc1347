"""Planting changes between two dates: new buildings, forest clearings and floods.

Change zones are chosen by looking at the first date's landscape over a region, so that each kind
of change lands where it makes sense (construction on open land next to a village, a clear-cut
inside a forest, a flood on fields along the river).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import shapely
from shapely import affinity

from geocmid.data.synthetic.landscape import (
    BLOCK_P,
    BLOCK_Q,
    STREET_HALF,
    ChangeZone,
    Landscape,
)
from geocmid.data.synthetic.spectra import CROPLAND, FOREST, GRASSLAND


def plan_changes(
    landscape: Landscape, region: shapely.Polygon, *, seed: int = 0, per_km2: float = 0.6
) -> tuple[ChangeZone, ...]:
    """Choose change zones inside ``region`` (a polygon in the landscape CRS).

    About ``per_km2`` zones of each kind per km² (at least one of each where the landscape
    allows). Zones never overlap one another.
    """
    rng = np.random.default_rng([seed, landscape.seed, 3])
    minx, miny, maxx, maxy = region.bounds
    spacing = max(6.0, math.sqrt(region.area) / 300.0)
    xs = np.arange(minx + spacing / 2, maxx, spacing)
    ys = np.arange(maxy - spacing / 2, miny, -spacing)
    s = landscape.sample(xs[None, :], ys[:, None])
    xx, yy = np.meshgrid(xs, ys)
    inside = shapely.contains_xy(region.buffer(-20.0), xx, yy)
    open_land = np.isin(s.cls, (CROPLAND, GRASSLAND)) & inside
    urban = landscape.urban_field(xx, yy) > 0.5
    n = max(1, round(region.area / 1e6 * per_km2))
    zones: list[ChangeZone] = []

    def add(kind: int, polygon: shapely.Polygon) -> bool:
        if any(polygon.buffer(10.0).intersects(z.polygon) for z in zones):
            return False
        zones.append(ChangeZone(kind, polygon))
        return True

    # 1. New buildings: a whole street block of open land next to the built-up area.
    p, q = landscape._village_frame(xx, yy)
    bp, bq = np.floor(p / BLOCK_P).astype(np.int64), np.floor(q / BLOCK_Q).astype(np.int64)
    keys, inv, counts = np.unique(bp * 1_000_003 + bq, return_inverse=True, return_counts=True)
    full = counts >= 0.8 * BLOCK_P * BLOCK_Q / spacing**2
    open_frac = np.bincount(inv.ravel(), open_land.ravel(), len(keys)) / counts
    urban_frac = dict(
        zip(keys, np.bincount(inv.ravel(), urban.ravel(), len(keys)) / counts, strict=True)
    )
    candidates = []
    for key in keys[full & (open_frac > 0.97)]:
        i, j = divmod(int(key), 1_000_003)
        if j > 500_000:  # undo the floor-division wrap of negative block rows
            i, j = i + 1, j - 1_000_003
        near = [urban_frac.get((i + di) * 1_000_003 + j + dj, 0.0) for di, dj in
                ((1, 0), (-1, 0), (0, 1), (0, -1))]  # fmt: skip
        if max(near) > 0.3:
            candidates.append((i, j))
    a = landscape.params["village_angle"]
    vx, vy = landscape.params["village"]
    for i, j in [candidates[k] for k in rng.permutation(len(candidates))][:n]:
        rect = shapely.box(
            i * BLOCK_P - STREET_HALF, j * BLOCK_Q - STREET_HALF,
            (i + 1) * BLOCK_P + STREET_HALF, (j + 1) * BLOCK_Q + STREET_HALF,
        )  # fmt: skip
        rect = affinity.rotate(rect, a, origin=(0, 0), use_radians=True)
        add(1, affinity.translate(rect, vx, vy))

    # 2. Forest clearings: rotated rectangles almost entirely inside a forest.
    forest_idx = np.flatnonzero((s.cls == FOREST).ravel() & inside.ravel())
    placed = 0
    for k in rng.permutation(forest_idx)[:300]:
        if placed >= n:
            break
        w, h = rng.uniform(60, 110), rng.uniform(35, 60)
        rect = affinity.rotate(shapely.box(-w / 2, -h / 2, w / 2, h / 2), rng.uniform(0, 180))
        rect = affinity.translate(rect, xx.flat[k], yy.flat[k])
        hit = shapely.contains_xy(rect, xx, yy)
        if hit.sum() and (s.cls[hit] == FOREST).mean() > 0.9 and inside[hit].all():
            placed += add(2, rect)

    # 3. Floods: an ellipse along the river over fields and meadows on its bank.
    bank = landscape.river_distance(xx, yy)
    flood_idx = np.flatnonzero(((bank > 3) & (bank < 25) & open_land & ~urban).ravel())
    placed = 0
    for k in rng.permutation(flood_idx)[:200]:
        if placed >= n:
            break
        x0, y0 = xx.flat[k], yy.flat[k]
        angles = np.radians(np.arange(0, 180, 10))
        b0 = landscape.river_distance(np.array(x0), np.array(y0))
        along = np.abs(
            landscape.river_distance(x0 + 40 * np.cos(angles), y0 + 40 * np.sin(angles)) - b0
        )
        ellipse = affinity.scale(
            shapely.Point(0, 0).buffer(1.0, 16), rng.uniform(110, 170), rng.uniform(45, 70)
        )
        ellipse = affinity.rotate(
            ellipse, angles[np.argmin(along)], use_radians=True, origin=(0, 0)
        )
        ellipse = affinity.translate(ellipse, x0, y0)
        hit = shapely.contains_xy(ellipse, xx, yy)
        if hit.sum() and urban[hit].mean() < 0.02 and inside[hit].mean() > 0.95:
            placed += add(3, ellipse)
    return tuple(sorted(zones, key=lambda z: z.kind))


def write_change_mask(path, before, after, *, blocksize: int = 512) -> Path:
    """Write the change mask of ``after`` against ``before`` on the ``before`` grid.

    Args:
        path: output GeoTIFF (uint8: 0 no change, 1 change, 255 nodata/unlabelled).
        before, after: :class:`~geocmid.data.synthetic.scene.Scene` s of one landscape; the
            change zones are ``after.changes``. Pixels outside either scene's valid footprint
            (the second reprojected onto the first grid) are 255.
    """
    import os

    import rasterio
    from rasterio.windows import Window

    from geocmid.data.synthetic.scene import _partial, _profile, _Sampler, _valid
    from geocmid.data.synthetic.vectors import _to_crs

    path = Path(path)
    sampler = _Sampler(before.landscape, before.crs, before.transform, after.changes)
    after_area = after.footprint if after.footprint is not None else shapely.box(*after.bounds)
    after_area = _to_crs(np.array([after_area], dtype=object), after.crs, before.crs)[0]
    profile = _profile(before.crs, before.transform, before.width, before.height, 1, "uint8", 255,
                       True, blocksize, "deflate")  # fmt: skip
    tmp = _partial(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write_colormap(1, {0: (0, 0, 0, 255), 1: (255, 0, 0, 255), 255: (0, 0, 0, 0)})
            for row0 in range(0, before.height, blocksize):
                for col0 in range(0, before.width, blocksize):
                    h = min(blocksize, before.height - row0)
                    w = min(blocksize, before.width - col0)
                    sample, x, y = sampler(row0, col0, h, w)
                    valid = _valid(before.footprint, x, y, (h, w))
                    valid &= _valid(shapely.make_valid(after_area), x, y, (h, w))
                    mask = np.where(valid, (sample.change > 0).astype(np.uint8), 255)
                    dst.write(mask.astype(np.uint8), 1, window=Window(col0, row0, w, h))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
