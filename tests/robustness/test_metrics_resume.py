"""A run that resumes from last.ckpt keeps the metrics of the epochs before the interruption."""

from __future__ import annotations

import csv
from pathlib import Path

from geocmid.workflows.lightning_cli import AppendingCSVLogger


def test_resumed_run_appends_to_metrics_csv(tmp_path: Path) -> None:
    (tmp_path / "metrics.csv").write_text("epoch,step,val_OA\n0,9,0.4688\n")
    logger = AppendingCSVLogger(tmp_path, name="", version="")
    logger.log_metrics({"epoch": 1, "val_OA": 0.5, "train_loss": 1.25}, step=19)
    logger.save()
    rows = list(csv.DictReader((tmp_path / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert rows[0]["val_OA"] == "0.4688" and rows[1]["train_loss"] == "1.25"
