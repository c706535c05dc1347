"""The recipe step ``embed`` ("where else looks like this?"): embeddings of a scene, the chips
most like a query chip as a GeoPackage (rank, similarity) and a PNG quick-look; a new query
reuses the embeddings; bad queries, models and scenes are named with their key."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import geopandas as gpd
import pytest

from geocmid.cli import main
from tests.recipes.conftest import RECIPES

CHIP = 32


def _recipe(tmp_path: Path, embed: str, extra: str = "") -> Path:
    """demo_data (96 px) + embed with a random-weight ResNet-18."""
    path = tmp_path / "recipe.yaml"
    path.write_text(
        f"run_dir: {tmp_path / 'run'}\n{extra}steps:\n  demo_data: {{size: 96}}\n"
        f"  embed:\n    scene: demo-2020\n    model: resnet18\n    chip: {CHIP}\n"
        f"    name: similar\n{embed}"
    )
    return path


def _run(args: list[str], cwd: Path) -> int:
    with contextlib.chdir(cwd):
        return main(args)


@pytest.mark.slow
def test_embed_step_maps_the_top_matches_and_reuses_embeddings(tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path, "    query: {row: 40, col: 40}\n    k: 3\n")
    assert _run(["run", str(recipe)], tmp_path) == 0
    run = tmp_path / "run"
    matches = gpd.read_file(run / "maps" / "similar.gpkg", layer="similar")
    assert matches["rank"].tolist() == [0, 1, 2, 3]  # the query chip and its 3 best matches
    assert matches["is_query"].tolist() == [True, False, False, False]
    assert (matches["row"].iloc[0], matches["col"].iloc[0]) == (32, 32)  # holds pixel (40, 40)
    assert matches["similarity"].iloc[0] == pytest.approx(1.0)
    assert matches["similarity"].is_monotonic_decreasing
    assert matches.crs.to_epsg() == 32633  # the demo's first date: UTM 33N, 2 m
    assert {round(g.area) for g in matches.geometry} == {(CHIP * 2) ** 2}
    png = run / "maps" / "similar_quicklook.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "embed" / "embeddings.parquet").is_file()
    out = capsys.readouterr().out
    assert "[embed] matches" in out and "reused" not in out
    # Another query: refused on the finished step, then searched again with --redo embed,
    # reusing the embeddings.
    recipe = _recipe(tmp_path, "    query: {row: 70, col: 10}\n    k: 3\n")
    assert _run(["run", str(recipe)], tmp_path) == 2
    assert "--redo embed" in capsys.readouterr().err
    assert _run(["run", str(recipe), "--redo", "embed"], tmp_path) == 0
    assert "(reused: same scene, model and chips)" in capsys.readouterr().out
    again = gpd.read_file(run / "maps" / "similar.gpkg")
    assert (again["row"].iloc[0], again["col"].iloc[0]) == (64, 0) and again["is_query"].iloc[0]


@pytest.mark.parametrize(
    ("embed", "expected"),
    [
        ("    query: [1, 2, 3]\n", ["steps.embed.query", "line 9", "[x, y]"]),
        ("    query: {row: 1, x: 2}\n", ["steps.embed.query", "{row: 120, col: 64}"]),
        ("    query: {row: 40, col: 40}\n    k: 0\n", ["steps.embed.k", "positive"]),
        ("    stride: 8\n", ["steps.embed.query", "step 'embed' needs 'query'"]),
        ("    query: [1, 2]\n    qurey: 3\n", ["did you mean 'query'"]),
    ],
)  # fmt: skip
def test_embed_step_bad_settings_are_named(embed, expected, tmp_path, capsys) -> None:
    recipe = _recipe(tmp_path, embed)
    assert main(["run", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in expected:
        assert part in err, err


def test_embed_step_model_and_query_checked_against_the_data(tmp_path, capsys) -> None:
    """Once the demo data exists, the dry run checks the query lies in the scene; a model
    'pretrain' needs the pretrain step, and a backbone name must be known."""
    recipe = _recipe(tmp_path, "    query: {row: 40, col: 40}\n    model: pretrain\n")
    recipe.write_text(recipe.read_text().replace("    model: resnet18\n", ""))
    assert main(["run", str(recipe), "--dry-run"]) == 2
    assert "no pretrain step" in capsys.readouterr().err
    recipe = _recipe(tmp_path, "    query: {row: 40, col: 40}\n")
    recipe.write_text(recipe.read_text().replace("resnet18", "resnet19"))
    assert main(["run", str(recipe), "--dry-run"]) == 2
    assert "steps.embed.model" in capsys.readouterr().err
    assert main(["demo-data", str(tmp_path / "run" / "demo"), "--size", "96"]) == 0
    recipe = _recipe(tmp_path, "    query: [100.0, 200.0]\n")
    assert main(["run", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "steps.embed.query" in err and "outside the scene" in err and "bounds" in err
    recipe = _recipe(tmp_path, "    query: {row: 40, col: 40}\n")
    assert main(["run", str(recipe), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "embed     embeddings of 32 px chips" in out and "(9 chips)" in out


@pytest.mark.slow
def test_where_else_recipe_dry_run_and_tiny_run(tmp_path, capsys) -> None:
    """recipes/where-else.yaml end to end in profile tiny: demo data, CMID pretraining, embed."""
    shutil.copy(RECIPES / "where-else.yaml", tmp_path)
    shutil.copy(RECIPES / "pretrain-resnet18-cpu.yaml", tmp_path)
    recipe = tmp_path / "where-else.yaml"
    args = ["run", str(recipe), "--tiny", "--run-dir", str(tmp_path / "run")]
    assert _run([*args, "--dry-run"], tmp_path) == 0
    out = capsys.readouterr().out
    assert "3. embed" in out and "--dry-run: nothing was run" in out
    assert _run(args, tmp_path) == 0
    matches = gpd.read_file(tmp_path / "run" / "maps" / "houses.gpkg")
    assert len(matches) == 6 and matches["is_query"].iloc[0]  # tiny: k 5
    assert (tmp_path / "run" / "maps" / "houses_quicklook.png").is_file()
    assert "GDAL_HTTP_TIMEOUT" not in os.environ  # the recipe's gdal_env is gone
