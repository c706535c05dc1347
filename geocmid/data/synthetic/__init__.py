"""Realistic synthetic georeferenced data: scenes, labels, change pairs, scene chips.

A :class:`Landscape` is a pure function of map coordinates (fields, forest, a river, villages
with buildings and roads); :func:`write_scene` draws it into a GeoTIFF block by block (any size,
any band set, any CRS), and :func:`make_demo_dataset` writes a complete small dataset with catalog
entries (``geocmid demo-data OUT_DIR``).
"""

from geocmid.data.synthetic.changes import plan_changes, write_change_mask
from geocmid.data.synthetic.demo import make_demo_dataset, write_quicklook, write_scene_chips
from geocmid.data.synthetic.landscape import CHANGE_KINDS, ChangeZone, Landscape
from geocmid.data.synthetic.scene import Scene, default_footprint, grid_covering, write_scene
from geocmid.data.synthetic.spectra import CLASSES, SENTINEL2_BANDS, resolve_bands
from geocmid.data.synthetic.vectors import (
    boxes_frame,
    building_frame,
    change_frame,
    landcover_frame,
    write_gpkg,
)

__all__ = [
    "CHANGE_KINDS", "CLASSES", "SENTINEL2_BANDS", "ChangeZone", "Landscape", "Scene",
    "boxes_frame", "building_frame", "change_frame", "default_footprint", "grid_covering",
    "landcover_frame", "make_demo_dataset", "plan_changes", "resolve_bands", "write_change_mask",
    "write_gpkg", "write_quicklook", "write_scene", "write_scene_chips",
]  # fmt: skip
