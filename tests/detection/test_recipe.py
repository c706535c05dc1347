"""`geocmid run recipes/detection-chips.yaml` on a DOTA labelTxt folder writes a report with the
mAPs and sample panels (profile tiny: seconds)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocmid.cli import main
from tests.detection.dota_data import dota_entry, write_dota_folder

RECIPE = Path(__file__).parents[2] / "recipes" / "detection-chips.yaml"


@pytest.mark.slow
def test_detection_recipe_reports_map_and_panels(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    root = tmp_path / "DOTA"
    write_dota_folder(root, {"train": 3, "val": 2}, size=128, count=3)
    dota_entry(tmp_path / "catalog", "dota-v1", root)
    run = tmp_path / "run"
    code = main(["--catalog", str(tmp_path / "catalog"), "run", str(RECIPE), "--tiny",
                 "--run-dir", str(run), "steps.finetune.set.data.scale=1.0"])  # fmt: skip
    assert code == 0
    report = (run / "report.md").read_text()
    assert "| val_map_50 |" in report
    assert "detections_val.png" in report
    assert (run / "finetune" / "reports" / "detections_val.png").is_file()
