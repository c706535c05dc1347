"""A recipe's ``gdal_env``: set for every step's data access while the recipe runs, removed
afterwards (even when a step fails); bad option names and values named with their line."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin

from geocmid.cli import main
from geocmid.errors import DataError
from geocmid.recipes import steps as S

OPTIONS = ("GDAL_DISABLE_READDIR_ON_OPEN", "CPL_VSIL_CURL_ALLOWED_EXTENSIONS", "GDAL_HTTP_TIMEOUT")


def _envi(path: Path) -> Path:
    """An ENVI raster: GDAL finds its .hdr by listing the folder, which EMPTY_DIR turns off."""
    with rasterio.open(path, "w", driver="ENVI", width=4, height=4, count=1, dtype="uint8",
                       crs="EPSG:32633", transform=from_origin(0, 40, 10, 10)) as dst:  # fmt: skip
        dst.write(np.ones((1, 4, 4), np.uint8))
    return path


def _opens(path: Path) -> bool:
    try:
        with rasterio.open(path) as src:
            return src.driver == "ENVI"
    except rasterio.errors.RasterioIOError:
        return False


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in OPTIONS:
        monkeypatch.delenv(name, raising=False)


def test_recipe_gdal_env_is_seen_by_the_steps_and_removed_afterwards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    envi = _envi(tmp_path / "scene.img")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        f"run_dir: {tmp_path / 'run'}\n"
        "gdal_env:\n"
        "  GDAL_DISABLE_READDIR_ON_OPEN: EMPTY_DIR\n"
        "  CPL_VSIL_CURL_ALLOWED_EXTENSIONS: .tif\n"
        "  GDAL_HTTP_TIMEOUT: 30\n"
        "steps:\n  demo_data: {}\n"
    )
    seen: list[dict[str, object]] = []

    def step(res: object) -> None:  # the demo_data step, reading data as steps do
        seen.append({**{n: rasterio.env.get_gdal_config(n) for n in OPTIONS},
                     "environ": {n: os.environ.get(n) for n in OPTIONS},
                     "envi_opens": _opens(envi)})  # fmt: skip

    monkeypatch.setattr(S, "run_demo", step)
    assert _opens(envi)
    assert main(["run", str(recipe)]) == 0
    assert len(seen) == 1
    assert seen[0]["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
    assert seen[0]["CPL_VSIL_CURL_ALLOWED_EXTENSIONS"] == ".tif"
    assert seen[0]["environ"]["GDAL_HTTP_TIMEOUT"] == "30"  # worker processes inherit it
    assert seen[0]["envi_opens"] is False  # GDAL really read with the option
    for name in OPTIONS:  # gone afterwards: nothing leaks into later work (or tests)
        assert name not in os.environ and rasterio.env.get_gdal_config(name) is None
    assert _opens(envi)

    def failing(res: object) -> None:
        assert os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"
        raise DataError("demo", "broken on purpose")

    monkeypatch.setattr(S, "run_demo", failing)
    assert main(["run", str(recipe)]) == 2
    assert not any(name in os.environ for name in OPTIONS)


def test_recipe_gdal_env_user_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> None:
    monkeypatch.setenv("GDAL_HTTP_TIMEOUT", "5")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run_dir: {tmp_path / 'run'}\ngdal_env: {{GDAL_HTTP_TIMEOUT: 30}}\n"
                      "steps:\n  demo_data: {}\n")  # fmt: skip
    seen = []
    monkeypatch.setattr(S, "run_demo", lambda res: seen.append(os.environ["GDAL_HTTP_TIMEOUT"]))
    with pytest.warns(UserWarning, match="GDAL_HTTP_TIMEOUT=30 is not applied"):
        assert main(["run", str(recipe)]) == 0
    assert seen == ["5"] and os.environ["GDAL_HTTP_TIMEOUT"] == "5"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("gdal_env:\n  gdal_http_timeout: 30\n", ["line 2", "'gdal_env.gdal_http_timeout'",
                                                 "does not look like a GDAL configuration"]),
        ("gdal_env:\n  GDAL_HTTP_TIMEOUT: 30\n  AWS-REGION: eu\n",
         ["line 3", "'AWS-REGION'", "does not look like a GDAL configuration"]),
        ("gdal_env:\n  GDAL_HTTP_TIMEOUT: [1, 2]\n", ["line 2", "GDAL_HTTP_TIMEOUT",
                                                     "not a text or a number"]),
        ("gdal_env: [GDAL_HTTP_TIMEOUT]\n", ["line 1", "'gdal_env'", "a mapping"]),
    ],
)  # fmt: skip
def test_recipe_gdal_env_bad_keys_and_values_are_named(
    text: str, expected: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:  # fmt: skip
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(text + "steps:\n  demo_data: {}\n")
    assert main(["run", str(recipe), "--dry-run"]) == 2
    err = capsys.readouterr().err
    for part in expected:
        assert part in err, err


def test_recipe_gdal_env_override_on_the_command_line(tmp_path, capsys, clean_env) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"run_dir: {tmp_path / 'run'}\nsteps:\n  demo_data: {{}}\n")
    assert main(["run", str(recipe), "gdal_env.GDAL_HTTP_TIMEOUT=30", "--dry-run"]) == 0
    assert main(["run", str(recipe), "gdal_env.http_timeout=30", "--dry-run"]) == 2
    assert "command line" in capsys.readouterr().err
    assert "GDAL_HTTP_TIMEOUT" not in os.environ
