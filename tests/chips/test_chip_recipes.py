"""The benchmark recipes (pretrain → export → fine-tune → report on chip datasets) plan on data
laid out as each benchmark ships it (dry run: configs and overrides checked, nothing run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geocmid.cli import main
from tests.chips.fixtures import blobs, levir_layout, write_png
from tests.rasters import write_entry

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Entries named as the shipped ones (nwpu-resisc45, dubai-aerial, levir-cd-folders)."""
    root = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(0)
    for c in ("beach", "forest"):
        for i in range(6):
            write_png(
                root / "nwpu" / c / f"{c}_{i}.jpg", rng.integers(0, 255, (48, 48, 3), np.uint8)
            )
    for t in range(3):
        mask = np.where(blobs(rng, 64)[..., None], (60, 16, 152), (254, 221, 58)).astype(np.uint8)
        write_png(
            root / "dubai" / f"Tile {t}" / "images" / "a.jpg",
            rng.integers(0, 255, (64, 64, 3), np.uint8),
        )
        write_png(root / "dubai" / f"Tile {t}" / "masks" / "a.png", mask)
    levir_layout(root / "LEVIR-CD", size=64)
    cat = root / "catalog"
    write_entry(cat, "nwpu-resisc45", "kind: image_folder\nroot: ../nwpu\n")
    write_entry(cat, "dubai-aerial", "kind: chip_segmentation\nroot: ../dubai\n"
                "mask_format: colors\nclasses: {0: {name: building, color: '#3C1098'}, "
                "1: {name: vegetation, color: '#FEDD3A'}}\n"
                "splits: {train: 'Tile 0', val: 'Tile 1', test: 'Tile 2'}\n")  # fmt: skip
    write_entry(cat, "levir-cd-folders", "kind: chip_change\nroot: ../LEVIR-CD\n"
                "splits: {train: train, val: val, test: test}\n")  # fmt: skip
    return cat


@pytest.mark.parametrize("name", ["scene-classification", "segmentation", "change"])
def test_benchmark_recipes_plan(name: str, catalog: Path, tmp_path: Path, capsys) -> None:
    args = ["run", str(RECIPES / f"benchmark-{name}.yaml"), "--dry-run", "--tiny",
            f"catalog={catalog}", "device=cpu", "--run-dir", str(tmp_path / "run")]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "1. pretrain" in out and "2. finetune" in out and "encoder from pretrain" in out
    assert "3. report" in out and "--dry-run: nothing was run" in out
    assert not (tmp_path / "run" / "pretrain").exists()
