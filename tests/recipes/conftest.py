"""Recipes run end to end in profile tiny, on one shared demo dataset and one quickstart run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from geocmid.cli import main

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

torch.set_num_threads(1)  # tiny models: threads cost more than they give on shared CPUs


def analyst_recipes() -> list[Path]:
    """Analyst recipes of recipes/ (the pretrain-*/finetune-* files are training configs)."""
    configs = ("pretrain-resnet", "pretrain-swin", "finetune-")
    return sorted(p for p in RECIPES.glob("*.yaml") if not p.name.startswith(configs))


@pytest.fixture(scope="session")
def quickstart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny quickstart run (demo data, pretrain, fine-tune, change map, report): its folder."""
    work = tmp_path_factory.mktemp("quickstart")
    cwd = os.getcwd()
    os.chdir(work)
    try:
        assert main(["run", str(RECIPES / "quickstart.yaml"), "--tiny"]) == 0
    finally:
        os.chdir(cwd)
    return work / "runs" / "quickstart"
