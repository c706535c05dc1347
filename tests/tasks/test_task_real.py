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

pytestmark = pytest.mark.shared
REPO = Path(__file__).resolve().parents[2]
SMOKE = ("trainer.max_epochs=1", "trainer.limit_train_batches=2",
         "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false",
         "data.chip_size=64", "data.batch_size=2", "data.chips_per_epoch=4",
         "data.eval_chips=2")  # fmt: skip


def fit(catalog: Path, recipe: str, out: Path, *sets: str) -> dict:
    argv = ["--catalog", str(catalog), "fit", "--config", str(REPO / "recipes" / recipe),
            "--out", str(out), *[a for s in (*SMOKE, *sets) for a in ("--set", s)]]  # fmt: skip
    assert main(argv) == 0
    _, card = load_for_prediction(out / "checkpoints" / "last.ckpt")
    return card


@pytest.mark.slow
def test_spacenet_buildings_from_geojson(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-segmentation.yaml", tmp_path / "atl", "data.entry=atlanta",
               "data.labels=atlanta-buildings", "data.background=background")  # fmt: skip
    assert [c["name"] for c in card["classes"]] == ["background", "building"]
    assert card["in_chans"] == 1 and card["bands"] == ["pan"]


def test_nc_landsat_sparse_labels_band_files(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-segmentation.yaml", tmp_path / "nc", "data.entry=nc",
               "data.labels=nc-labels", "data.block_size=1.5",
               # sparse labels: two validation chips may hold no labelled pixel, which the
               # training guard rightly refuses (NaN metrics); validate on more chips
               "data.eval_chips=16", "trainer.limit_val_batches=8")  # fmt: skip
    assert card["num_classes"] == 7 and card["in_chans"] == 6


def test_taizhou_change_with_class_masks(real_catalog: Path, tmp_path: Path) -> None:
    card = fit(real_catalog, "finetune-change.yaml", tmp_path / "tz", "data.entry=taizhou")
    assert card["task"] == "change" and card["in_chans"] == 6
    assert [c["value"] for c in card["classes"]] == [0, 1]
