"""Bad recipes get one clear error naming the key and its line; the dry-run plan."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geocmid.cli import main
from tests.recipes.conftest import RECIPES


def _recipe(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    shutil.copy(RECIPES / "finetune-change.yaml", tmp_path)
    shutil.copy(RECIPES / "pretrain-resnet18-cpu.yaml", tmp_path)
    return path


def _error(capsys, args: list[str]) -> str:
    assert main(args) == 2
    return capsys.readouterr().err


def test_unknown_key_has_line_and_suggestion(tmp_path, capsys) -> None:
    path = _recipe(tmp_path, "run_dir: x\nsteps:\n  demo_data: {}\n  predict:\n    scenes: a\n"
                   "    windw: 256\n")  # fmt: skip
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "line 6" in err and "windw" in err and "did you mean 'window'" in err


def test_unknown_step_and_bad_type(tmp_path, capsys) -> None:
    path = _recipe(tmp_path, "steps:\n  pretrian: {config: x.yaml}\n")
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "line 2" in err and "did you mean 'pretrain'" in err
    path = _recipe(tmp_path, "steps:\n  demo_data:\n    size: big\n")
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "line 3" in err and "steps.demo_data.size" in err and "whole number" in err


def test_override_errors_name_the_command_line(capsys) -> None:
    err = _error(capsys, ["run", str(RECIPES / "quickstart.yaml"), "steps.predict.windw=3",
                          "--dry-run"])  # fmt: skip
    assert "command line" in err and "did you mean 'window'" in err


def test_missing_config_and_missing_link(tmp_path, capsys) -> None:
    path = _recipe(tmp_path, "steps:\n  finetune:\n    config: nope.yaml\n")
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "nope.yaml" in err and "not found" in err and "line 3" in err
    path = _recipe(tmp_path, "steps:\n  finetune:\n    config: finetune-change.yaml\n"
                   "    weights: pretrain\n")  # fmt: skip
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "no pretrain step" in err and "line 4" in err


def test_pretrain_set_key_checked(tmp_path, capsys) -> None:
    path = _recipe(tmp_path, "steps:\n  pretrain:\n    config: pretrain-resnet18-cpu.yaml\n"
                   "    set: {data.chip_sise: 64}\n")  # fmt: skip
    err = _error(capsys, ["run", str(path), "--dry-run"])
    assert "steps.pretrain.set.data.chip_sise" in err and "line 4" in err
    assert "did you mean 'chip_size'" in err


def _write(path: Path, bands: int, origin: tuple[float, float], crs: str = "EPSG:32633") -> None:
    data = np.random.default_rng(0).integers(1, 1000, (bands, 64, 64), dtype=np.uint16)
    with rasterio.open(
        path, "w", driver="GTiff", width=64, height=64, count=bands, dtype="uint16", crs=crs,
        transform=from_origin(*origin, 2.0, 2.0), nodata=0,
    ) as dst:  # fmt: skip
        dst.write(data)


def _predict_recipe(tmp_path: Path, model: Path, scenes: list[Path]) -> Path:
    listed = ", ".join(str(s) for s in scenes)
    return _recipe(tmp_path, f"steps:\n  predict:\n    model: {model}\n    scenes: [{listed}]\n")


def test_band_mismatch_and_disjoint_dates(quickstart: Path, tmp_path, capsys) -> None:
    model = quickstart / "finetune" / "checkpoints" / "last.ckpt"
    a, b, far = tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "far.tif"
    _write(a, 3, (500000, 5000000))
    _write(b, 4, (500000, 5000000))
    _write(far, 4, (600000, 5000000))
    err = _error(capsys, ["run", str(_predict_recipe(tmp_path, model, [a, b])), "--dry-run"])
    assert "3 bands" in err and "trained on 4" in err
    err = _error(capsys, ["run", str(_predict_recipe(tmp_path, model, [b, far])), "--dry-run"])
    assert "do not overlap" in err
    err = _error(capsys, ["run", str(_predict_recipe(tmp_path, model, [b])), "--dry-run"])
    assert "two dated scenes" in err


def test_dry_run_plan(quickstart: Path, capsys) -> None:
    demo = quickstart / "demo"
    model = quickstart / "finetune" / "checkpoints" / "last.ckpt"
    args = ["run", str(RECIPES / "change-map.yaml"), f"catalog={demo / 'catalog'}",
            f"steps.predict.model={model}", "--dry-run"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "EPSG:32633" in out and "EPSG:3035" in out and "overlap of the dates" in out
    assert "windows of 256 px" in out and "estimate (rough)" in out and "GB" in out
    assert "warped onto the first's grid" in out


@pytest.mark.parametrize("name", ["pretrain-gpu.yaml"])
def test_gpu_recipe_needs_an_entry(name: str, tmp_path, capsys) -> None:
    err = _error(capsys, ["run", str(RECIPES / name), f"catalog={tmp_path}", "--dry-run"])
    assert "steps.pretrain.entry" in err
