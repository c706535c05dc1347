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


@pytest.mark.parametrize(
    "command", ["catalog", "demo-data", "pretrain", "export", "fit", "predict", "embed", "run"]
)
def test_every_usage_line_lists_quiet_and_verbose(command: str, capsys) -> None:
    """The usage lines (argparse's, or pretrain's hand-written one) show -q and -v."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    usage = " ".join(capsys.readouterr().out.split("\n\n", 1)[0].split())
    assert "[-q] [-v]" in usage, usage


def test_unknown_arguments_exit_2(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["catalog", "list", "--nope"])
    assert exit_info.value.code == 2
    assert "unrecognized arguments: --nope" in capsys.readouterr().err


def test_recipe_overrides_may_follow_options(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = str(RECIPES / "quickstart.yaml")
    assert main(["run", recipe, "--dry-run", "--tiny", "steps.pretrain.epochs=3"]) == 0
    out = capsys.readouterr().out  # the pretrain step's command line, old or config form
    assert "--epochs 3" in out or "--set trainer.max_epochs=3" in out
    assert main(["run", recipe, "--dry-run", "steps.predict.overlapp=24"]) == 2
    assert "did you mean 'overlap'" in capsys.readouterr().err


def test_fit_options_become_one_list_of_overrides() -> None:
    from geocmid.cli import build_parser
    from geocmid.cli.fit import overrides_of

    args, extra = build_parser().parse_known_args([
        "fit", "-c", "x.yaml", "--set", "model.lr=1e-3", "--trainer.max_epochs", "3",
        "--model.init_args.backbone=resnet34", "--max-epochs", "4", "--freeze-backbone",
        "--batch-size", "2", "--out", "runs/x",
    ])  # fmt: skip
    assert not extra
    assert overrides_of(args) == [
        ("model.lr", 0.001), ("trainer.max_epochs", 3), ("model.init_args.backbone", "resnet34"),
        ("trainer.default_root_dir", "runs/x"), ("trainer.max_epochs", 4),
        ("model.freeze_backbone", True), ("data.batch_size", 2),
    ]  # fmt: skip


def test_fit_config_errors_exit_2_without_traceback(tmp_path: Path, capsys) -> None:
    assert main(["fit", "--config", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "config file not found" in err and "fix:" in err and "Traceback" not in err
    bad = tmp_path / "bad.yaml"
    bad.write_text((RECIPES / "finetune-segmentation.yaml").read_text())
    assert main(["fit", "-c", str(bad), "--set", "model.scheduler=cosin"]) == 2
    assert "model.init_args.scheduler: must be one of" in capsys.readouterr().err
    assert main(["fit", "-c", str(bad), "--model.init_args.lrr", "1"]) == 2
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["test", "-c", str(bad)]) == 2
    assert "needs a checkpoint" in capsys.readouterr().err
