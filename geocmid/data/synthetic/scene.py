"""Writing synthetic scenes (multi-band GeoTIFFs) and their label rasters, block by block.

Every block is drawn from the landscape at its pixel centres and written at once, so memory is
bounded by the block size whatever the scene size, and a tile of a mosaic can be written alone.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely

from geocmid.data.synthetic.landscape import ChangeZone, Landscape, Sample, _inside
from geocmid.data.synthetic.spectra import CLASSES, band_tables, resolve_bands

#: Default landscape centre (UTM 33N, about 45° N 15° E).
DEFAULT_CENTER = (500_000.0, 5_000_000.0)
#: Digital number per unit reflectance for each output dtype.
SCALES = {"uint16": 10_000.0, "int16": 10_000.0, "uint8": 500.0, "float32": 1.0}


@dataclass
class Scene:
    """A written synthetic scene: its grid, bands, valid footprint and the landscape behind it."""

    path: Path
    crs: str
    transform: object  # affine.Affine
    width: int
    height: int
    bands: tuple[str, ...]
    nodata: float
    footprint: shapely.Polygon | None  # valid area in the scene CRS (None = whole raster)
    landscape: Landscape
    changes: tuple[ChangeZone, ...] = ()
    labels_path: Path | None = None
    extra: dict = field(default_factory=dict)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) of the raster in its CRS."""
        t = self.transform
        return (t.c, t.f + self.height * t.e, t.c + self.width * t.a, t.f)


def default_footprint(
    bounds: tuple[float, float, float, float], seed: int, lo: float = 0.06, hi: float = 0.16
) -> shapely.Polygon:
    """A sheared quadrilateral touching each raster edge, like a satellite swath in a tile.

    Each corner of the raster loses a triangle (about 15–25 % of the area in all).
    """
    minx, miny, maxx, maxy = bounds
    w, h = maxx - minx, maxy - miny
    t = np.random.default_rng([seed, 2]).uniform(lo, hi, 4)
    return shapely.Polygon(
        [
            (minx + t[0] * w, maxy),
            (minx, miny + t[3] * h),
            (maxx - t[2] * w, miny),
            (maxx, maxy - t[1] * h),
        ]
    )


def grid_covering(
    bounds: tuple[float, float, float, float], src_crs: str, dst_crs: str, res: float
) -> tuple[tuple[float, float], int, int]:
    """Origin (upper-left, snapped to ``res``), width and height of a ``dst_crs`` grid covering
    ``bounds`` given in ``src_crs``."""
    from rasterio.warp import transform_bounds

    minx, miny, maxx, maxy = transform_bounds(src_crs, dst_crs, *bounds, densify_pts=21)
    x0, y1 = np.floor(minx / res) * res, np.ceil(maxy / res) * res
    width = int(np.ceil((maxx - x0) / res))
    height = int(np.ceil((y1 - miny) / res))
    return (float(x0), float(y1)), width, height


def _valid(footprint: shapely.Polygon | None, x: np.ndarray, y: np.ndarray, shape) -> np.ndarray:
    """Pixel centres inside the footprint (exact half-plane tests for convex footprints)."""
    if footprint is None:
        return np.ones(shape, bool)
    ring = shapely.get_coordinates(shapely.orient_polygons(footprint).exterior)
    if footprint.convex_hull.equals(footprint) and len(ring) <= 9:
        ok = np.ones(shape, bool)
        for (ax, ay), (bx, by) in itertools.pairwise(ring):
            ok &= (bx - ax) * (y - ay) - (by - ay) * (x - ax) >= 0
        return ok
    return _inside(footprint, x, y, shape)


class _Sampler:
    """Samples a landscape on windows of a pixel grid, reprojecting when the CRS differs."""

    def __init__(self, landscape: Landscape, crs: str, transform, changes) -> None:
        self.landscape = landscape
        self.transform = transform
        self.changes = tuple(changes)
        self.crs = crs
        self.reproject = False
        self.local = threading.local()  # pyproj transformers are not thread-safe
        if str(crs) != str(landscape.crs):
            from pyproj import CRS

            self.reproject = not CRS.from_user_input(crs).equals(CRS.from_user_input(landscape.crs))

    def centres(self, row0: int, col0: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre map coordinates of a window: x ``(1, w)``, y ``(h, 1)``."""
        t = self.transform
        x = t.c + (col0 + np.arange(w) + 0.5) * t.a
        y = t.f + (row0 + np.arange(h) + 0.5) * t.e
        return x[None, :], y[:, None]

    def __call__(
        self, row0: int, col0: int, h: int, w: int
    ) -> tuple[Sample, np.ndarray, np.ndarray]:
        x, y = self.centres(row0, col0, h, w)
        if not self.reproject:
            return self.landscape.sample(x, y, self.changes), x, y
        if getattr(self.local, "proj", None) is None:
            from pyproj import Transformer

            self.local.proj = Transformer.from_crs(self.crs, self.landscape.crs, always_xy=True)
        xx, yy = np.broadcast_arrays(x, y)
        lx, ly = self.local.proj.transform(xx, yy)
        return self.landscape.sample(lx, ly, self.changes), x, y


def _map_ordered(fn, items: list, workers: int | None):
    """Yield ``fn(item)`` in order, computed by a few threads with bounded lookahead."""
    workers = workers or min(2, os.cpu_count() or 1)
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def render(sample: Sample, wavelengths: np.ndarray, dtype: str = "uint16", nodata: float = 0):
    """Turn a landscape sample into image bands ``(n_bands, H, W)`` of ``dtype``.

    Pixels with material 0 get ``nodata``; valid integer pixels are never equal to ``nodata``.
    Values are surface reflectance × :data:`SCALES` [dtype] plus a little haze.
    """
    spectra, haze, shade = band_tables(wavelengths)
    scale = SCALES[dtype]
    info = np.iinfo(dtype) if dtype != "float32" else None
    out = np.empty((len(wavelengths), *sample.mat.shape), dtype=dtype)
    valid = sample.mat != 0
    for b in range(len(wavelengths)):
        refl = spectra[:, b][sample.mat] * sample.gain
        refl = np.where(sample.shadow, refl * shade[b], refl) + haze[b] * sample.haze
        if info is None:
            band = refl.astype(np.float32)
        else:
            band = np.clip(np.rint(refl * scale), info.min, info.max)
            if info.min <= nodata <= info.max:
                band[band == nodata] = nodata + 1 if nodata < info.max else nodata - 1
        band[~valid] = nodata
        out[b] = band
    return out


def _profile(crs, transform, width, height, count, dtype, nodata, tiled, blocksize, compress):
    profile = {
        "driver": "GTiff", "crs": crs, "transform": transform, "width": width,
        "height": height, "count": count, "dtype": dtype, "nodata": nodata,
        "BIGTIFF": "IF_SAFER", "NUM_THREADS": "ALL_CPUS",
    }  # fmt: skip
    if tiled:
        profile.update(tiled=True, blockxsize=blocksize, blockysize=blocksize)
    if compress:
        profile["compress"] = compress
        if compress.lower() in ("deflate", "lzw", "zstd"):
            profile["predictor"] = 3 if dtype == "float32" else 2
        if compress.lower() == "deflate":
            profile["zlevel"] = 1  # 2.5x faster than the default level 6, files ~15 % larger
    return profile


def _partial(path: Path) -> Path:
    """Temporary sibling name (same extension, so drivers recognise it)."""
    return path.with_name(f".{path.stem}.partial{path.suffix}")


def write_scene(
    path: str | os.PathLike,
    *,
    width: int,
    height: int,
    bands: Sequence[str] | int = ("blue", "green", "red", "nir"),
    crs: str = "EPSG:32633",
    origin: tuple[float, float] | None = None,
    res: float = 2.0,
    nodata: float = 0,
    dtype: str = "uint16",
    seed: int = 0,
    landscape: Landscape | None = None,
    changes: Sequence[ChangeZone] = (),
    nodata_border: bool | shapely.Polygon = True,
    labels_path: str | os.PathLike | None = None,
    tiled: bool = True,
    blocksize: int = 512,
    compress: str | None = "deflate",
    workers: int | None = None,
) -> Scene:
    """Write a synthetic multi-band scene as a tiled GeoTIFF, block by block.

    Args:
        path: output GeoTIFF; written under a temporary name and renamed when complete.
        width, height: raster size in pixels.
        bands: band names (see :func:`~geocmid.data.synthetic.spectra.resolve_bands`) or 3/4/13.
        crs: CRS of the raster (any projected CRS in metres).
        origin: upper-left corner (x, y) in ``crs``; default: the scene is centred on the
            landscape centre.
        res: pixel size in metres.
        nodata: value outside the valid footprint (also written as the file's nodata).
        dtype: ``uint16``/``int16`` (reflectance × 10000), ``uint8`` (× 500) or ``float32``.
        seed: landscape seed (when ``landscape`` is not given) and footprint seed.
        landscape: the landscape to draw; share one across mosaic tiles and dates. Default: a new
            ``Landscape(seed)`` centred on the scene, in ``crs``.
        changes: change zones to apply (second date).
        nodata_border: True for a random swath-like footprint, False for none, or a footprint
            polygon in ``crs`` (share one polygon across mosaic tiles).
        labels_path: also write the land-cover class raster (uint8, 0 = unlabelled) here.
        tiled, blocksize, compress: GeoTIFF layout; blocks are also the unit of generation.
            Deflate uses level 1 (fast); recompress with GDAL if size matters more.
        workers: threads drawing blocks (numpy releases the GIL); default: up to 2. Blocks are
            written in order and at most ``2 * workers`` are held in memory; the output does not
            depend on ``workers``.

    Returns:
        The :class:`Scene` written.
    """
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    path = Path(path)
    names, wavelengths = resolve_bands(bands)
    if dtype not in SCALES:
        raise ValueError(f"dtype {dtype!r}: use one of {', '.join(SCALES)}")
    if origin is None:
        centre = landscape.center if landscape is not None else DEFAULT_CENTER
        if landscape is not None and str(landscape.crs) != str(crs):
            raise ValueError("give origin when the scene CRS differs from the landscape CRS")
        origin = (centre[0] - width * res / 2, centre[1] + height * res / 2)
    if landscape is None:
        cx, cy = origin[0] + width * res / 2, origin[1] - height * res / 2
        landscape = Landscape(seed=seed, center=(cx, cy), crs=crs)
    transform = from_origin(origin[0], origin[1], res, res)
    bounds = (origin[0], origin[1] - height * res, origin[0] + width * res, origin[1])
    if nodata_border is True:
        footprint = default_footprint(bounds, seed)
    elif nodata_border is False or nodata_border is None:
        footprint = None
    else:
        footprint = nodata_border
    sampler = _Sampler(landscape, crs, transform, changes)
    profile = _profile(crs, transform, width, height, len(names), dtype, nodata, tiled, blocksize,
                       compress)  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(path)
    label_dst = None
    tmp_labels = None
    try:
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.descriptions = names
            dst.update_tags(synthetic="geocmid", seed=str(landscape.seed), bands=",".join(names))
            if labels_path is not None:
                tmp_labels = _partial(Path(labels_path))
                tmp_labels.parent.mkdir(parents=True, exist_ok=True)
                lprof = _profile(crs, transform, width, height, 1, "uint8", 0, tiled, blocksize,
                                 compress)  # fmt: skip
                label_dst = rasterio.open(tmp_labels, "w", **lprof)
                label_dst.write_colormap(1, class_colormap())

            def block(window: Window) -> tuple[Window, np.ndarray, np.ndarray]:
                h, w = window.height, window.width
                sample, x, y = sampler(window.row_off, window.col_off, h, w)
                valid = _valid(footprint, x, y, (h, w))
                sample.mat[~valid] = 0
                sample.cls[~valid] = 0
                return window, render(sample, wavelengths, dtype, nodata), sample.cls

            windows = [
                Window(c, r, min(blocksize, width - c), min(blocksize, height - r))
                for r in range(0, height, blocksize)
                for c in range(0, width, blocksize)
            ]
            for window, image, classes in _map_ordered(block, windows, workers):
                dst.write(image, window=window)
                if label_dst is not None:
                    label_dst.write(classes, 1, window=window)
        if label_dst is not None:
            label_dst.close()
            os.replace(tmp_labels, labels_path)
        os.replace(tmp, path)
    finally:
        if label_dst is not None and not label_dst.closed:
            label_dst.close()
        for leftover in (tmp, tmp_labels):
            if leftover is not None and leftover.exists():
                leftover.unlink()
    return Scene(path, str(crs), transform, width, height, names, nodata, footprint, landscape,
                 tuple(changes), Path(labels_path) if labels_path else None)  # fmt: skip


def class_colormap() -> dict[int, tuple[int, int, int, int]]:
    """GDAL colour table of the land-cover classes (0 = unlabelled, transparent black)."""
    cmap = {0: (0, 0, 0, 0)}
    for value, (_, colour) in CLASSES.items():
        rgb = tuple(int(colour[i : i + 2], 16) for i in (1, 3, 5))
        cmap[value] = (*rgb, 255)
    return cmap
