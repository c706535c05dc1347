"""Each task trains from the CLI on the real samples (skipped when ../shared/data is absent).

Smoke-sized runs (a few steps): they prove the data, the model and the CLI fit together on real
files with their quirks (ENVI pairs with BMP class masks, per-band files, sparse labels, a
GeoJSON of single-class footprints on a 1-band uint16 image).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geocmid.cli import main
from geocmid.tasks import load_for_prediction
from tests.rasters import write_entry

pytestmark = pytest.mark.shared
REPO = Path(__file__).resolve().parents[2]
SMOKE = ("trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false",
         "data.chip_size=64", "data.batch_size=2", "data.chips_per_epoch=4",
         "data.eval_chips=2")  # fmt: skip


@pytest.fixture
def real_catalog(tmp_path: Path, shared_data: Path) -> Path:
    s = shared_data
    entries = {
        "atlanta": f"kind: imagery\npaths: {s}/segmentation/spacenet-atlanta/sample_geotiff.tif\n"
        "bands: [pan]\n",
        "atlanta-buildings": "kind: vector_labels\n"
        f"paths: {s}/segmentation/spacenet-atlanta/geotiff_labels.geojson\n"
        "classes: {1: building}\n",
        "nc": f"kind: imagery\nband_files: {s}/segmentation/nc-landsat/lsat7_2000_{{band}}.tif\n"
        "bands: ['10', '20', '30', '40', '50', '70']\n",
        "nc-labels": "kind: raster_labels\n"
        f"paths: {s}/segmentation/nc-landsat/landsat96_labelled_pixels.tif\n"
        "classes: {1: c1, 2: c2, 3: c3, 4: c4, 5: c5, 6: c6, 7: c7}\n",
        "tz-2000": f"kind: imagery\npaths: {s}/change/taizhou-landsat/Taizhou/2000TM\nbands: 6\n"
        "date: 2000-05-01\n",
        "tz-2003": f"kind: imagery\npaths: {s}/change/taizhou-landsat/Taizhou/2003TM\nbands: 6\n"
        "date: 2003-05-01\n",
        "tz-change": "kind: raster_labels\nclass_masks:\n"
        f"  1: {s}/change/taizhou-landsat/Taizhou/change.bmp\n"
        f"  0: {s}/change/taizhou-landsat/Taizhou/unchanged.bmp\n"
        "classes: {0: no change, 1: change}\nignore_value: 255\nalign_with: tz-2000\n",
        "taizhou": "kind: bitemporal\nbefore: tz-2000\nafter: tz-2003\nchange_labels: tz-change\n",
    }
    for name, text in entries.items():
        write_entry(tmp_path / "catalog", name, text)
    return tmp_path / "catalog"


def fit(catalog: Path, recipe: str, out: Path, *sets: str) -> dict:
    argv = ["--catalog", str(catalog), "fit", "--config", str(REPO / "recipes" / recipe),
            "--out", str(out), *[a for s in (*SMOKE, *sets) for a in ("--set", s)]]  # fmt: skip
    assert main(argv) == 0
    _, card = load_for_prediction(out / "checkpoints" / "last.ckpt")
    return card


def test_spacenet_buildings_from_geojson(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-segmentation.yaml", tmp_path / "atl", "data.entry=atlanta",
               "data.labels=atlanta-buildings", "data.background=background")  # fmt: skip
    assert [c["name"] for c in card["classes"]] == ["background", "building"]
    assert card["in_chans"] == 1 and card["bands"] == ["pan"]


def test_nc_landsat_sparse_labels_band_files(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-segmentation.yaml", tmp_path / "nc", "data.entry=nc",
               "data.labels=nc-labels", "data.block_size=1.5")  # fmt: skip
    assert card["num_classes"] == 7 and card["in_chans"] == 6


def test_taizhou_change_with_class_masks(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-change.yaml", tmp_path / "tz", "data.entry=taizhou")
    assert card["task"] == "change" and card["in_chans"] == 6
    assert [c["value"] for c in card["classes"]] == [0, 1]
