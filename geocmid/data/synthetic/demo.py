"""A complete small demo dataset: two dated scenes, labels, vectors, scene chips and a catalog."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np

from geocmid.data.synthetic.changes import plan_changes, write_change_mask
from geocmid.data.synthetic.landscape import Landscape
from geocmid.data.synthetic.scene import DEFAULT_CENTER, Scene, grid_covering, write_scene
from geocmid.data.synthetic.spectra import CLASSES, URBAN, WATER
from geocmid.data.synthetic.vectors import (
    boxes_frame,
    building_frame,
    change_frame,
    landcover_frame,
    write_gpkg,
)
from geocmid.errors import ConfigError

DATES = ("2020-06-01", "2021-06-01")
#: Top-level names a demo dataset folder holds (anything else makes --overwrite refuse).
DEMO_CONTENT = {"imagery", "labels", "scenes", "catalog", "quicklooks", "README.txt"}


def stretch_rgb(rgb: np.ndarray, valid: np.ndarray, lo_hi=(2.0, 98.0)) -> np.ndarray:
    """Percentile-stretch ``(3, H, W)`` bands to ``(H, W, 3)`` uint8 (nodata → black)."""
    out = np.zeros((*rgb.shape[1:], 3), np.uint8)
    if not valid.any():
        return out
    for b in range(3):
        lo, hi = np.percentile(rgb[b][valid], lo_hi)
        scaled = np.clip((rgb[b].astype(np.float32) - lo) / max(hi - lo, 1e-6), 0, 1)
        out[..., b] = np.where(valid, np.rint(scaled * 255), 0)
    return out


def write_quicklook(tif: str | os.PathLike, png: str | os.PathLike, rgb=("red", "green", "blue")):
    """Write an RGB quick-look PNG (2–98 % stretch) of a synthetic scene."""
    import rasterio
    from PIL import Image

    with rasterio.open(tif) as src:
        idx = [src.descriptions.index(b) + 1 for b in rgb]
        data, valid = src.read(idx), src.read_masks(1) > 0
    Path(png).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stretch_rgb(data, valid)).save(png)
    return Path(png)


def write_scene_chips(
    scene: Scene, labels: str | os.PathLike, root: str | os.PathLike, *, chip: int = 64,
    stride: int = 32, min_fraction: float = 0.7,
) -> dict[str, int]:  # fmt: skip
    """Cut RGB chips (UC Merced style ``root/<class_name>/<n>.png``) by dominant class.

    A chip is kept when it has no nodata and is urban (≥ 25 % roofs and streets), water (≥ 50 %)
    or one class covers ``min_fraction`` of it. The stretch
    is the scene's (not per chip), so chips of one class look alike. Returns chips per class.
    """
    import rasterio
    from PIL import Image

    with rasterio.open(scene.path) as src:
        idx = [src.descriptions.index(b) + 1 for b in ("red", "green", "blue")]
        rgb, valid = src.read(idx), src.read_masks(1) > 0
    with rasterio.open(labels) as src:
        cls = src.read(1)
    image = stretch_rgb(rgb, valid)
    counts = {CLASSES[c][0]: 0 for c in CLASSES}
    for r in range(0, scene.height - chip + 1, stride):
        for c in range(0, scene.width - chip + 1, stride):
            window = cls[r : r + chip, c : c + chip]
            if not valid[r : r + chip, c : c + chip].all():
                continue
            frac = np.bincount(window.ravel(), minlength=len(CLASSES) + 1) / window.size
            # A village chip is mostly gardens, so a quarter of roofs and streets makes it urban;
            # likewise half of it water makes a river chip. Otherwise one class must dominate.
            if frac[URBAN] >= 0.25:
                top = URBAN
            elif frac[WATER] >= 0.5:
                top = WATER
            else:
                top = int(frac.argmax())
                if top == 0 or frac[top] < min_fraction:
                    continue
            name = CLASSES[top][0]
            folder = Path(root) / name
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[r : r + chip, c : c + chip]).save(
                folder / f"{counts[name]:04d}.png"
            )
            counts[name] += 1
    return counts


def _classes(mapping: dict[int, tuple[str, str]]) -> dict[int, dict[str, str]]:
    return {k: {"name": name, "color": colour} for k, (name, colour) in mapping.items()}


def _catalog(scenes: tuple[Scene, Scene]) -> dict[str, dict]:
    """Catalog entries (lead's schema); paths relative to the catalog folder."""
    first, second = scenes
    bands = list(first.bands)
    building = {1: {"name": "building", "color": "#e31a1c"}}
    return {
        "demo-2020": {
            "kind": "imagery",
            "description": f"Synthetic {len(bands)}-band scene, {first.transform.a:g} m, "
            f"{first.crs}, first date",
            "paths": f"../imagery/scene_{DATES[0]}.tif",
            "bands": bands,
            "rgb": ["red", "green", "blue"],
            "nodata": 0,
            "date": DATES[0],
        },
        "demo-2021": {
            "kind": "imagery",
            "description": f"Synthetic {len(bands)}-band scene, {second.transform.a:g} m, "
            f"{second.crs}, second date with planted changes",
            "paths": f"../imagery/scene_{DATES[1]}.tif",
            "bands": bands,
            "rgb": ["red", "green", "blue"],
            "nodata": 0,
            "date": DATES[1],
        },
        "demo-landcover": {
            "kind": "raster_labels",
            "description": "Land-cover classes of the first date (0 = unlabelled)",
            "paths": "../labels/landcover.tif",
            "classes": _classes(CLASSES),
            "ignore_value": 0,
        },
        "demo-landcover-vector": {
            "kind": "vector_labels",
            "description": "Land-cover polygons of the first date",
            "paths": "../labels/landcover.gpkg",
            "class_attribute": "class",
            "classes": _classes(CLASSES),
        },
        "demo-buildings": {
            "kind": "vector_labels",
            "description": "Building footprints of the first date",
            "paths": "../labels/buildings.gpkg",
            "class_attribute": "class",
            "classes": building,
        },
        "demo-building-boxes": {
            "kind": "vector_labels",
            "description": "Building bounding boxes of the first date (object detection)",
            "paths": "../labels/building_boxes.gpkg",
            "class_attribute": "class",
            "geometry": "boxes",
            "classes": building,
        },
        "demo-change": {
            "kind": "raster_labels",
            "description": "Change between the dates on the first date's grid (255 = nodata)",
            "paths": "../labels/change_2020_2021.tif",
            "classes": {
                0: {"name": "no change", "color": "#000000"},
                1: {"name": "change", "color": "#ff0000"},
            },
            "ignore_value": 255,
        },
        "demo-pair": {
            "kind": "bitemporal",
            "description": "First and second date with change labels",
            "before": "demo-2020",
            "after": "demo-2021",
            "change_labels": "demo-change",
        },
        "demo-scenes": {
            "kind": "image_folder",
            "description": "64x64 RGB chips by dominant land-cover class (scene classification)",
            "root": "../scenes",
            "extensions": [".png"],
        },
    }


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if not out_dir.exists():
        return
    if not out_dir.is_dir():
        raise ConfigError(str(out_dir), "exists and is not a folder", "choose another OUT_DIR")
    content = {p.name for p in out_dir.iterdir()}
    if not content:
        return
    if not overwrite:
        raise ConfigError(
            str(out_dir), "exists and is not empty",
            "choose a new or empty folder, or pass --overwrite to replace a demo dataset",
        )  # fmt: skip
    foreign = sorted(content - DEMO_CONTENT)
    if foreign:
        raise ConfigError(
            str(out_dir),
            f"holds files that a demo dataset does not write: {', '.join(foreign[:5])}",
            "--overwrite only replaces an earlier demo dataset; choose another folder",
        )  # fmt: skip


def _write_stats(folder: Path) -> None:
    """Store the statistics of the demo's imagery entries (as `geocmid catalog stats` does), so
    that training on the demo does not estimate them again, with a warning, in every run."""
    from geocmid.data.catalog import Catalog, ImageryEntry
    from geocmid.data.stats import compute_stats, write_stats

    catalog = Catalog(folder)
    for name in catalog.names():
        entry = catalog.get(name)
        if isinstance(entry, ImageryEntry):
            write_stats(compute_stats(entry), catalog.stats_path(name))


def make_demo_dataset(
    out_dir: str | os.PathLike, *, size: int = 512, seed: int = 0, overwrite: bool = False
) -> dict[str, Path]:
    """Write the demo dataset into ``out_dir`` and return the paths written, by name.

    First date: ``size``×``size`` pixels, 4 bands, 2 m, EPSG:32633; second date: same area in
    EPSG:3035 at 3 m with planted changes. The folder is built under a temporary name and renamed
    when complete; the same ``seed`` gives the same files.

    Raises:
        ConfigError: ``out_dir`` is not empty (and ``overwrite`` is False, or it holds files
            that are not from a demo dataset).
    """
    import yaml

    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    tmp = out_dir.with_name(f".{out_dir.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        land = Landscape(seed=seed, center=DEFAULT_CENTER, crs="EPSG:32633")
        first = write_scene(
            tmp / "imagery" / f"scene_{DATES[0]}.tif", width=size, height=size, res=2.0,
            crs="EPSG:32633", seed=seed, landscape=land,
            labels_path=tmp / "labels" / "landcover.tif",
        )  # fmt: skip
        zones = plan_changes(land, first.footprint, seed=seed)
        origin, width, height = grid_covering(first.bounds, first.crs, "EPSG:3035", 3.0)
        second = write_scene(
            tmp / "imagery" / f"scene_{DATES[1]}.tif", width=width, height=height, res=3.0,
            crs="EPSG:3035", origin=origin, seed=seed + 1, landscape=land, changes=zones,
        )  # fmt: skip
        labels = tmp / "labels"
        write_change_mask(labels / "change_2020_2021.tif", first, second)
        write_gpkg(landcover_frame(labels / "landcover.tif"), labels / "landcover.gpkg")
        buildings = building_frame(first)
        write_gpkg(buildings, labels / "buildings.gpkg")
        write_gpkg(boxes_frame(buildings), labels / "building_boxes.gpkg")
        write_gpkg(
            change_frame(labels / "change_2020_2021.tif", zones, land.crs),
            labels / "change_2020_2021.gpkg",
        )
        write_scene_chips(first, labels / "landcover.tif", tmp / "scenes")
        for date, scene in zip(DATES, (first, second), strict=True):
            write_quicklook(scene.path, tmp / "quicklooks" / f"scene_{date}.png")
        catalog = tmp / "catalog"
        catalog.mkdir()
        for name, entry in _catalog((first, second)).items():
            text = yaml.safe_dump(entry, sort_keys=False, default_flow_style=None, width=100)
            header = f"# {name}.yaml: synthetic demo data (geocmid demo-data, seed {seed})\n"
            (catalog / f"{name}.yaml").write_text(header + text)
        _write_stats(catalog)
        (tmp / "README.txt").write_text(
            "Synthetic demo data written by `geocmid demo-data` (geocmid.data.synthetic).\n"
            f"seed={seed} size={size}; catalog entries in catalog/, quick-looks in quicklooks/.\n"
        )
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out_dir.rename(old)
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    rel = {
        "demo-2020": f"imagery/scene_{DATES[0]}.tif",
        "demo-2021": f"imagery/scene_{DATES[1]}.tif",
        "landcover": "labels/landcover.tif",
        "landcover_vector": "labels/landcover.gpkg",
        "buildings": "labels/buildings.gpkg",
        "building_boxes": "labels/building_boxes.gpkg",
        "change": "labels/change_2020_2021.tif",
        "change_vector": "labels/change_2020_2021.gpkg",
        "scenes": "scenes",
        "catalog": "catalog",
        "quicklooks": "quicklooks",
    }
    return {k: out_dir / v for k, v in rel.items()}
