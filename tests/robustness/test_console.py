"""Quiet console: GDAL chatter at debug, each line once, third-party deprecations filtered,
no progress bars off a terminal, --quiet / --verbose on every command; a tiny quickstart prints
no GDAL warning and no line twice, and trains at least one step per epoch."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path

import pytest

from geocmid.cli import console, main

REPO = Path(__file__).resolve().parents[2]
GDAL_WARNING = "CPLE_AppDefined in INIT_DEST was set to NO_DATA, but a NoData value was not defined"


@pytest.fixture(autouse=True)
def _restore_logging():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    with warnings.catch_warnings():
        yield
    root.handlers[:] = handlers
    root.setLevel(level)
    os.environ.pop("GEOCMID_CONSOLE", None)


def test_gdal_messages_are_debug_and_lightning_lines_print_once(capsys) -> None:
    from lightning.fabric.utilities.seed import seed_everything

    console.setup()
    logging.getLogger("rasterio._env").warning(GDAL_WARNING)
    seed_everything(7)
    logging.getLogger("geocmid.train").info("epoch 1/1: 2 step(s)")
    err = capsys.readouterr().err
    assert "INIT_DEST" not in err and "Seed set to" not in err  # debug: --verbose only
    assert err.count("epoch 1/1: 2 step(s)") == 1
    console.setup(verbose=True)
    logging.getLogger("rasterio._env").warning(GDAL_WARNING)
    seed_everything(7)
    err = capsys.readouterr().err
    assert err.count("INIT_DEST") == 1 and err.count("Seed set to 7") == 1, err


def test_quiet_shows_warnings_only_and_deprecations_are_filtered(capsys) -> None:
    console.setup(quiet=True)
    logging.getLogger("geocmid.train").info("an info line")
    logging.getLogger("geocmid.data").warning("a warning the user can act on")
    warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated", DeprecationWarning, 1)
    err = capsys.readouterr().err
    assert "an info line" not in err and "LeafSpec" not in err
    assert "a warning the user can act on" in err


def test_progress_bars_only_on_a_terminal() -> None:
    from geocmid.workflows.lightning_cli import show_progress

    assert not show_progress()  # pytest captures stderr: not a terminal


@pytest.mark.parametrize("flag", ["-q", "--quiet", "-v", "--verbose"])
def test_every_command_takes_quiet_and_verbose_anywhere(flag: str, capsys) -> None:
    for argv in (["catalog", "list", flag], [flag, "catalog", "list"]):
        assert main(["--catalog", str(REPO / "data_catalog"), *argv]) == 0
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    assert "--quiet" in capsys.readouterr().out


@pytest.mark.slow
def test_a_tiny_quickstart_prints_no_gdal_warning_no_line_twice_and_trains(tmp_path: Path) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-m", "geocmid", "run", str(REPO / "recipes" / "quickstart.yaml"),
         "--tiny", "--run-dir", str(run)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=1200,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    for noise in ("INIT_DEST", "Warning 1:", "CPLE_", "LeafSpec", "Traceback", "has no statistics",
                  "it/s]"):  # fmt: skip
        assert noise not in output, f"{noise!r} in:\n{output}"
    lines = [line for line in output.splitlines() if line.strip()]
    twice = [line for line, n in Counter(lines).items() if n > 1]
    assert not twice, f"printed more than once: {twice}\n{output}"
    assert "it/s]" not in (run / "logs" / "run.log").read_text()  # no progress bars in the log
    for step in ("pretrain", "finetune"):  # each epoch took a step: global_step ≥ epochs
        status = json.loads((run / step / "status.json").read_text())
        assert status["status"] == "done" and status["global_step"] >= status["epoch"] + 1 >= 1
