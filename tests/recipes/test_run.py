"""`geocmid run`: the quickstart, every recipe in tiny mode, reruns and resumes."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import rasterio

from geocmid.cli import main
from tests.recipes.conftest import RECIPES, analyst_recipes

# every test here runs recipes end to end (the tiny quickstart once, then each recipe tiny)
pytestmark = pytest.mark.slow


def test_quickstart_writes_map_polygons_styles_report(quickstart: Path) -> None:
    maps = quickstart / "maps"
    scene = quickstart / "demo" / "imagery" / "scene_2020-06-01.tif"
    with rasterio.open(maps / "change_classes.tif") as out, rasterio.open(scene) as ref:
        assert (out.crs, out.transform, out.shape) == (ref.crs, ref.transform, ref.shape)
    for name in ("change.gpkg", "change_summary.json", "change_quicklook.png"):
        assert (maps / name).is_file()
    qml = (maps / "change_classes.qml").read_text()
    assert 'label="change"' in qml and 'color="#ff0000"' in qml
    assert 'attr="class_name"' in (maps / "change.qml").read_text()
    scores = json.loads((maps / "change_evaluation.json").read_text())
    assert scores["pixels"] > 0 and 0 <= scores["f1"] <= 1
    # The recipe scores the held-out test blocks only (never the training area); the tiny
    # demo's test blocks may hold no planted change, which the evaluation must then say.
    assert scores["scored_area"]["kind"] == "test split of the fine-tuning"
    if scores["positive_fraction_reference"] == 0:
        assert "holds no" in scores["warning"]
    report = (quickstart / "report.md").read_text()
    assert "maps/change_quicklook.png" in report and "f1" in report
    assert (quickstart / "recipe.yaml").is_file() and (quickstart / "logs" / "run.log").is_file()


def _run(args: list[str], cwd: Path) -> int:
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return main(args)
    finally:
        os.chdir(old)


def test_rerun_skips_complete_steps(quickstart: Path, capsys) -> None:
    work = quickstart.parent.parent
    stamp = (quickstart / "finetune" / "model_card.json").stat().st_mtime
    started = time.time()
    assert _run(["run", str(RECIPES / "quickstart.yaml"), "--tiny"], work) == 0
    out = capsys.readouterr().out
    for step in ("demo_data", "pretrain", "finetune", "predict"):
        assert f"[{step}] done (outputs complete), skipped" in out
    assert (quickstart / "finetune" / "model_card.json").stat().st_mtime == stamp
    assert time.time() - started < 15


def test_interrupted_predict_resumes(quickstart: Path, capsys) -> None:
    work = quickstart.parent.parent
    (quickstart / "maps" / "change_summary.json").unlink()  # as if killed before the end
    assert _run(["run", str(RECIPES / "quickstart.yaml"), "--tiny"], work) == 0
    out = capsys.readouterr().out
    assert "[finetune] done (outputs complete), skipped" in out
    assert "[predict] running" in out
    assert (quickstart / "maps" / "change_summary.json").is_file()


def test_changed_settings_refused_on_complete_step(quickstart: Path, capsys) -> None:
    work = quickstart.parent.parent
    args = ["run", str(RECIPES / "quickstart.yaml"), "steps.predict.overlap=8", "--tiny"]
    # the plan says so before anything runs, and only for the changed step
    assert _run([*args, "--dry-run"], work) == 0
    plan = capsys.readouterr().out
    assert "refused unless --redo predict" in plan and "--redo finetune" not in plan
    assert _run(args, work) == 2
    err = capsys.readouterr().err
    assert "step 'predict'" in err and "--redo predict" in err


@pytest.mark.parametrize("recipe", analyst_recipes(), ids=lambda p: p.stem)
def test_every_recipe_runs_tiny(recipe: Path, quickstart: Path, tmp_path: Path, capsys) -> None:
    demo = quickstart / "demo"
    args = ["run", str(recipe)]  # overrides right after the recipe, options after them
    text = recipe.read_text()
    if "demo_data" in text:
        args.append(f"steps.demo_data.out={demo}")  # reuse the quickstart's demo data
    if recipe.stem == "change-map":
        model = quickstart / "finetune" / "checkpoints" / "last.ckpt"
        args += [f"catalog={demo / 'catalog'}", f"steps.predict.model={model}"]
    if recipe.stem == "quickstart":
        args.append("steps.pretrain.epochs=1")  # the fixture ran it already: check a fresh folder
    if recipe.stem == "detection-chips":  # a chip dataset, not the demo: a generated DOTA folder
        from tests.detection.dota_data import dota_entry, write_dota_folder

        write_dota_folder(tmp_path / "DOTA", {"train": 3, "val": 2}, size=128, count=3)
        dota_entry(tmp_path / "catalog", "dota-v1", tmp_path / "DOTA")
        args.append(f"catalog={tmp_path / 'catalog'}")
    if recipe.stem.startswith("benchmark-"):  # chip datasets laid out as the benchmarks ship
        from tests.chips.fixtures import benchmark_catalog

        args += [f"catalog={benchmark_catalog(tmp_path / 'data')}", "device=cpu"]
    args += ["--tiny", "--run-dir", str(tmp_path / "run")]
    assert _run([*args, "--dry-run"], tmp_path) == 0
    assert "--dry-run: nothing was run" in capsys.readouterr().out
    assert _run(args, tmp_path) == 0
    run = tmp_path / "run"
    assert (run / "recipe.yaml").is_file()
    if "report:" in text:
        assert (run / "report.md").is_file()
    if "predict:" in text:
        assert list((run / "maps").glob("*_summary.json"))
        assert list((run / "maps").glob("*.qml"))
