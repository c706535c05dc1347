"""Areas in square metres, in any CRS: true (ellipsoidal) areas, whatever the map projection.

* Equal-area projected CRS (Albers, Lambert azimuthal / cylindrical equal area, Mollweide,
  sinusoidal, Equal Earth …: :func:`is_equal_area`): planar area times the square of the
  linear unit (feet → metres …), which is the true area by construction.
* Geographic CRS: geodesic area on the CRS's own ellipsoid (``pyproj.Geod``, Karney 2013), so
  a pixel of 1 x 1 degree near the pole is correctly smaller than one at the equator; polygon
  edges are densified first so that edges along parallels stay on their parallel.
* Any other projected CRS (UTM, Web Mercator, Lambert conformal …): polygons are densified in
  the projection, carried to the CRS's own geographic CRS and measured geodesically as above;
  pixel areas are each pixel's corners carried to longitude/latitude and measured with the
  ellipsoid's area element ``M N cos φ dφ dλ``, averaged along each row. In EPSG:3857 at
  60° N a 1 km² field is therefore 1 km², not the 4 km² of the planar area.
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


#: Words in a projection method's name that make it equal-area (areas are planar there).
EQUAL_AREA_METHODS = (
    "equal area", "equal-area", "mollweide", "sinusoidal", "equal earth", "eckert iv",
    "eckert vi", "goode", "bonne", "quartic authalic", "collignon",
)  # fmt: skip
#: Points sampled along each row when averaging a row's pixel areas.
ROW_SAMPLES = 16


@lru_cache(maxsize=16)
def _geod(wkt: str) -> pyproj.Geod:
    return pyproj.CRS.from_wkt(wkt).get_geod() or pyproj.Geod(ellps="WGS84")


@lru_cache(maxsize=16)
def _proj_crs(wkt: str) -> pyproj.CRS:
    return pyproj.CRS.from_wkt(wkt)


def is_equal_area(crs: CRS) -> bool:
    """Whether a projected CRS preserves areas (its projection method is equal-area)."""
    proj = _proj_crs(crs.to_wkt())
    operation = proj.coordinate_operation
    method = (operation.method_name if operation is not None else "") or ""
    return any(word in method.lower() for word in EQUAL_AREA_METHODS)


def area_method(crs: CRS | None) -> str:
    """How :func:`geometry_areas_m2` measures in ``crs``, in words (attribute descriptions)."""
    if crs is None:
        return "area in m²: NULL (the raster has no CRS)"
    if crs.is_geographic:
        return "geodesic area in m² on the CRS's ellipsoid (pyproj.Geod)"
    name = _proj_crs(crs.to_wkt()).name
    if is_equal_area(crs):
        return f"area in m², planar in the equal-area CRS {name}"
    return (
        f"geodesic area in m² on the ellipsoid of {name} (not the planar area of this "
        "projection, which is not equal-area)"
    )


@lru_cache(maxsize=16)
def _to_geographic(wkt: str) -> pyproj.Transformer:
    proj = _proj_crs(wkt)
    return pyproj.Transformer.from_crs(proj, proj.geodetic_crs, always_xy=True)


def _unit_factor(crs: CRS) -> float:
    """Metres per CRS linear unit."""
    try:
        return float(crs.linear_units_factor[1])
    except Exception:  # rasterio raises CRSError when the unit is unknown
        return 1.0


def _ellipsoidal_pixel_areas(
    transform: Affine, crs: CRS, cols: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """Area in m² on the CRS's ellipsoid of the pixels with top-left corners ``(cols, rows)``.

    Each pixel's corners are carried to longitude/latitude; its area is the quadrilateral's
    area in (λ, φ) radians times ``M(φ) N(φ) cos φ`` at its centre (the ellipsoid's area
    element, M and N the meridional and prime-vertical radii of curvature): exact to second
    order in the pixel size.
    """
    transformer = _to_geographic(crs.to_wkt())
    geod = _geod(crs.to_wkt())
    lon, lat = [], []
    for dc, dr in ((0, 0), (1, 0), (1, 1), (0, 1)):
        x, y = transform * (cols + dc, rows + dr)
        lo, la = transformer.transform(x, y)
        lon.append(np.radians(lo))
        lat.append(np.radians(la))
    quad = 0.0
    for k in range(4):
        quad = quad + lon[k] * lat[(k + 1) % 4] - lon[(k + 1) % 4] * lat[k]
    quad = np.abs(quad) / 2.0
    phi = sum(lat) / 4.0
    e2 = geod.es
    w = 1.0 - e2 * np.sin(phi) ** 2
    m = geod.a * (1.0 - e2) / w**1.5
    n = geod.a / np.sqrt(w)
    return quad * m * n * np.cos(phi)


def pixel_area_rows(
    transform: Affine, crs: CRS | None, row0: int, nrows: int, width: int | None = None
) -> np.ndarray:
    """Area in m² of one pixel in each of the rows ``[row0, row0 + nrows)``: ``[nrows]`` float64.

    NaN when there is no CRS. Geographic and Mercator-like grids: exact (pixels of a row have
    equal area); other projections: the mean over up to :data:`ROW_SAMPLES` pixels of the row
    (``width`` pixels wide; default: the first pixel), each measured on the ellipsoid
    (:func:`_ellipsoidal_pixel_areas`).
    """
    if crs is None:
        return np.full(nrows, np.nan)
    planar = abs(transform.determinant) * _unit_factor(crs) ** 2
    if not crs.is_geographic:
        if is_equal_area(crs):
            return np.full(nrows, planar)
        cols = np.unique(np.linspace(0, max((width or 1) - 1, 0), ROW_SAMPLES).round())
        rows = np.arange(row0, row0 + nrows, dtype=np.float64)
        cc, rr = np.meshgrid(cols, rows)
        return _ellipsoidal_pixel_areas(transform, crs, cc, rr).mean(axis=1)
    geod = _geod(crs.to_wkt())
    out = np.empty(nrows)
    for n in range(nrows):
        r = row0 + n
        corners = [transform @ (c, rr) for c, rr in ((0, r), (1, r), (1, r + 1), (0, r + 1))]
        lons, lats = zip(*corners, strict=True)
        out[n] = abs(geod.polygon_area_perimeter(lons, lats)[0])
    return out


def geometry_areas_m2(geoms: np.ndarray | list, crs: CRS | None) -> np.ndarray:
    """Area in m² of each shapely geometry given in ``crs`` coordinates: ``[N]`` float64.

    True areas in every CRS (see the module docstring); NaN without a CRS.
    """
    geoms = np.asarray(geoms, dtype=object)
    if crs is None:
        return np.full(len(geoms), np.nan)
    if not crs.is_geographic and is_equal_area(crs):
        return shapely.area(geoms) * _unit_factor(crs) ** 2
    geod = _geod(crs.to_wkt())
    if not crs.is_geographic:
        # Straight edges of the projection are curves on the ellipsoid: densify each polygon's
        # edges to 1/64 of its extent before carrying it to geographic coordinates.
        bounds = shapely.bounds(geoms)
        extent = np.maximum(bounds[:, 2] - bounds[:, 0], bounds[:, 3] - bounds[:, 1])
        dense = shapely.segmentize(geoms, np.maximum(extent / 64.0, 1e-9))
        transformer = _to_geographic(crs.to_wkt())
        lonlat = shapely.transform(
            dense, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1]))
        )
        return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in lonlat], np.float64)
    # Raster polygon edges follow parallels, not geodesics: densify them (<= 0.01°) so a long
    # east-west edge is not replaced by the geodesic bowing towards the pole.
    dense = shapely.segmentize(geoms, DENSIFY_DEGREES)
    return np.array([abs(geod.geometry_area_perimeter(g)[0]) for g in dense], np.float64)
