"""The benchmark recipes (pretrain → export → fine-tune → report on chip datasets) plan on data
laid out as each benchmark ships it (dry run: configs and overrides checked, nothing run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocmid.cli import main
from tests.chips.fixtures import benchmark_catalog

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Entries named as the shipped ones (nwpu-resisc45, dubai-aerial, levir-cd-folders)."""
    return benchmark_catalog(tmp_path_factory.mktemp("bench"))


@pytest.mark.parametrize("name", ["scene-classification", "segmentation", "change"])
def test_benchmark_recipes_plan(name: str, catalog: Path, tmp_path: Path, capsys) -> None:
    args = ["run", str(RECIPES / f"benchmark-{name}.yaml"), "--dry-run", "--tiny",
            f"catalog={catalog}", "device=cpu", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1. pretrain" in out and "2. finetune" in out and "encoder from pretrain" in out
    assert "3. report" in out and "--dry-run: nothing was run" in out
    assert not (tmp_path / "run" / "pretrain").exists()
