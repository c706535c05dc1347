"""Bad input gets one clear error: unknown label values, empty label files, band mismatch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geocmid.cli import main
from geocmid.datamodules import FeatureChipDataModule, SegmentationDataModule
from geocmid.errors import DataError
from tests.rasters import write_entry, write_raster

REPO = Path(__file__).resolve().parents[2]


def test_label_values_missing_from_the_class_table(clear_catalog: Path, tmp_path: Path) -> None:
    labels = np.ones((64, 64), np.uint8)
    labels[:8, :8] = 9
    write_raster(tmp_path / "bad.tif", labels, nodata=0)
    write_entry(clear_catalog, "bad-labels", f"kind: raster_labels\npaths: {tmp_path}/bad.tif\n"
                "classes: {1: a, 2: b}\n")  # fmt: skip
    dm = SegmentationDataModule("img", labels="bad-labels", catalog=clear_catalog, chip_size=32)
    with pytest.raises(DataError, match=r"label values \[9\] are not in the class table \[1, 2\]"):
        dm.setup()


def test_empty_label_files(clear_catalog: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="empty label file"):
        FeatureChipDataModule("img", "empty-points", catalog=clear_catalog).setup()
    with pytest.raises(DataError, match="empty label file"):
        SegmentationDataModule("img", labels="empty-points", catalog=clear_catalog).setup()
    write_raster(tmp_path / "nothing.tif", np.zeros((64, 64), np.uint8), nodata=0)
    write_entry(clear_catalog, "no-labels", f"kind: raster_labels\npaths: {tmp_path}/nothing.tif\n"
                "classes: {1: a}\n")  # fmt: skip
    with pytest.raises(DataError, match="no labelled pixel"):
        SegmentationDataModule("img", labels="no-labels", catalog=clear_catalog).setup()


def test_cli_band_mismatch_exits_2(clear_catalog: Path, tmp_path: Path, capsys) -> None:
    from geocmid.models import create_backbone
    from geocmid.models.weights import export_backbone

    path, _ = export_backbone(create_backbone("resnet18", 4, img_size=32), tmp_path / "r18-4",
                              {"bands": ["b", "g", "r", "nir"]})  # fmt: skip
    argv = ["--catalog", str(clear_catalog), "fit", "--config",
            str(REPO / "recipes" / "finetune-segmentation.yaml"), "--set", "data.entry=img",
            "--set", "data.labels=labels", "--weights", str(path),
            "--out", str(tmp_path / "o")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trained on 4 bands (b, g, r, nir) but the data has 3" in err and "fix:" in err


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["model.class_path=segmentatoin"], "did you mean 'segmentation'"),
        (["model.model=unett"], "model.init_args.model: must be one of 'unet', 'upernet'"),
        (["model.lrr=1e-3"], "has no argument 'lrr' (did you mean 'lr'?)"),
        (["data.block_size=1.0", "data.chip_size=64"], "narrower than 1.5 chips hold no chip"),
    ],
)
def test_cli_config_errors_exit_2(
    clear_catalog: Path, tmp_path: Path, capsys, sets, message
) -> None:
    argv = ["--catalog", str(clear_catalog), "fit", "--config",
            str(REPO / "recipes" / "finetune-segmentation.yaml"), "--set", "data.entry=img",
            "--set", "data.labels=labels", "--max-epochs", "1", "--out", str(tmp_path / "o"),
            *[a for s in sets for a in ("--set", s)]]  # fmt: skip
    assert main(argv) == 2
    assert message in capsys.readouterr().err
