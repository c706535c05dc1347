"""Areas in square metres, in any CRS.

Projected CRS: planar area times the square of the linear unit (feet → metres …).
Geographic CRS: geodesic area on the CRS's own ellipsoid (``pyproj.Geod``), so a pixel of
1 x 1 degree near the pole is correctly smaller than one at the equator; polygon edges are
densified first so that edges along parallels stay on their parallel.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pyproj
import shapely
from affine import Affine
from rasterio.crs import CRS

#: Longest edge, in degrees, when measuring polygons in a geographic CRS.
DENSIFY_DEGREES = 0.01


@lru_cache(maxsize=16)
def _geod(wkt: str) -> pyproj.Geod:
    return pyproj.CRS.from_wkt(wkt).get_geod() or pyproj.Geod(ellps="WGS84")


def _unit_factor(crs: CRS) -> float:
    """Metres per CRS linear unit."""
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # rasterio raises CRSError when the unit is unknown
        return 1.0


def pixel_area_rows(transform: Affine, crs: CRS | None, row0: int, nrows: int) -> np.ndarray:
    """Area in m² of one pixel in each of the rows ``[row0, row0 + nrows)``: ``[nrows]`` float64.

    Pixels of a row have equal area in both cases (north-up grid); NaN when there is no CRS.
    """
    if crs is None:
        return np.full(nrows, np.nan)
    if not crs.is_geographic:
        return np.full(nrows, abs(transform.determinant) * _unit_factor(crs) ** 2)
    geod = _geod(crs.to_wkt())
    out = np.empty(nrows)
    for n in range(nrows):
        r = row0 + n
        corners = [transform @ (c, rr) for c, rr in ((0, r), (1, r), (1, r + 1), (0, r + 1))]
        lons, lats = zip(*corners, strict=True)
        out[n] = abs(geod.polygon_area_perimeter(lons, lats)[0])
    return out


def geometry_areas_m2(geoms: np.ndarray | list, crs: CRS | None) -> np.ndarray:
    """Area in m² of each shapely geometry given in ``crs`` coordinates: ``[N]`` float64."""
    geoms = np.asarray(geoms, dtype=object)
    if crs is None:
        return np.full(len(geoms), np.nan)
    if not crs.is_geographic:
        return shapely.area(geoms) * _unit_factor(crs) ** 2
    geod = _geod(crs.to_wkt())
    # Raster polygon edges follow parallels, not geodesics: densify them (<= 0.01°) so a long
    # east-west edge is not replaced by the geodesic bowing towards the pole.
    dense = shapely.segmentize(geoms, DENSIFY_DEGREES)
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in dense], np.float64)
