"""The `geocmid` command itself: version, help that lists every command, argument errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocmid import __version__
from geocmid.cli import COMMAND_MODULES, main

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_version_and_help_list_every_command(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0 and __version__ in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for command in ("catalog", "demo-data", "pretrain", "export", "fit", "predict", "run"):
        assert command in text
    assert len(COMMAND_MODULES) >= 7


@pytest.mark.parametrize(
    "command", ["catalog", "demo-data", "pretrain", "export", "fit", "predict", "run"]
)
def test_every_command_has_help_with_an_example(command: str, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "example" in capsys.readouterr().out.lower()


def test_unknown_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["catalog", "list", "--nope"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_recipe_overrides_may_follow_options(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = str(RECIPES / "quickstart.yaml")
    assert main(["run", recipe, "--dry-run", "--tiny", "steps.pretrain.epochs=3"]) == 0
    assert "--epochs 3" in capsys.readouterr().out
    assert main(["run", recipe, "--dry-run", "steps.predict.overlapp=24"]) == 2
    assert "did you mean 'overlap'" in capsys.readouterr().err
