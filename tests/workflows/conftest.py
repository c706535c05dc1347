"""A small demo dataset (``geocmid demo-data``) shared by the workflow tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocmid.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
#: Options that make a fine-tuning config a seconds-long fast_dev_run on 2 busy cores.
TINY = {"data.init_args.chip_size": 32, "data.init_args.batch_size": 2}
#: Per config, what else the tiny demo needs (detection: the whole scene is annotated there).
TINY_EXTRA = {
    "finetune-detection.yaml": {
        "data.init_args.area": "images",
        "model.init_args.fpn_channels": 32,
    },
}

torch.set_num_threads(1)  # tiny models: threads cost more than they give on shared CPUs


@pytest.fixture(scope="session")
def demo_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The catalog folder of a 256-px demo dataset (imagery, labels, pair, boxes, scenes):
    the smallest on which every shipped fine-tuning config finds chips in all three splits."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    assert main(["demo-data", str(out), "--size", "256"]) == 0
    return out / "catalog"
