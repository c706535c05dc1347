"""Faults of files and machines end in one clear line and a non-zero exit, never a traceback
(unless --verbose); a recipe error is printed once."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from geocmid.cli import main
from tests.rasters import smooth_field, write_entry, write_raster

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"


@pytest.fixture
def truncated(tmp_path: Path) -> Path:
    """A catalog whose imagery file is a GeoTIFF cut in half (a broken download)."""
    path = write_raster(tmp_path / "img.tif", smooth_field((256, 256), bands=3))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    return tmp_path / "catalog"


def one_error_line(err: str) -> None:
    assert "Traceback" not in err, err
    assert err.count("error:") == 1, err


@pytest.mark.parametrize("command", [
    ["catalog", "stats", "img"],
    ["pretrain", "--config", str(RECIPES / "pretrain-resnet18-cpu.yaml"), "--entry", "img",
     "--dry-run"],
])  # fmt: skip
def test_a_truncated_geotiff_is_one_line_naming_the_file(
    truncated: Path, command: list[str], capsys
) -> None:
    code = main(["--catalog", str(truncated), *command])
    err = capsys.readouterr().err
    assert code == 2, err
    one_error_line(err)
    assert "img.tif" in err, err


def test_a_band_count_mismatch_is_refused_by_catalog_stats(tmp_path: Path, capsys) -> None:
    write_raster(tmp_path / "img.tif", smooth_field((64, 64), bands=4))
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: [r, g, b]\n")
    assert main(["--catalog", str(tmp_path / "catalog"), "catalog", "stats", "img"]) == 2
    err = capsys.readouterr().err
    one_error_line(err)
    assert "has 4 band(s)" in err and "declares 3" in err


def test_statistics_ignore_nan_and_inf_per_band(tmp_path: Path, capsys) -> None:
    image = np.stack([np.linspace(0, 1, 64 * 64).reshape(64, 64)] * 3).astype(np.float32)
    image[1, :8] = np.nan  # NaN rows in band 2
    image[2, 8:16] = np.inf  # +inf and -inf rows in band 3
    image[2, 16:20] = -np.inf
    write_raster(tmp_path / "img.tif", image)
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    assert main(["--catalog", str(tmp_path / "catalog"), "catalog", "stats", "img"]) == 0
    stats = json.loads((tmp_path / "catalog" / "img.stats.json").read_text())
    finite = np.isfinite(image).all(axis=0)  # non-finite pixels are nodata in every band
    for band in range(3):
        values = image[band][finite]
        assert np.isfinite(stats["mean"][band]) and np.isfinite(stats["std"][band])
        assert stats["mean"][band] == pytest.approx(values.mean(), abs=1e-5)
        assert stats["std"][band] == pytest.approx(values.std(), abs=1e-5)


def test_a_band_without_finite_pixels_is_refused(tmp_path: Path, capsys) -> None:
    image = np.ones((2, 32, 32), np.float32)
    image[1] = np.nan
    write_raster(tmp_path / "img.tif", image, nodata=-9999)
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: 2\n")
    assert main(["--catalog", str(tmp_path / "catalog"), "catalog", "stats", "img"]) == 2
    one_error_line(capsys.readouterr().err)


def test_a_sparse_raster_is_sampled_by_its_valid_blocks(tmp_path: Path) -> None:
    """A 4096² raster with one 40×40 patch of data: the decimated grid (step 5) hits ~64
    pixels of it; the statistics come from the block that holds it, at full resolution."""
    from geocmid.data.catalog import Catalog
    from geocmid.data.stats import compute_stats

    image = np.zeros((1, 4096, 4096), np.uint16)
    patch = np.arange(1, 1601, dtype=np.uint16).reshape(40, 40)
    image[0, 1000:1040, 3000:3040] = patch
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(tmp_path / "sparse.tif", "w", driver="GTiff", width=4096, height=4096,
                       count=1, dtype="uint16", nodata=0, tiled=True, blockxsize=256,
                       blockysize=256, compress="deflate", crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10)) as dst:  # fmt: skip
        dst.write(image)
    write_entry(tmp_path / "catalog", "s", "kind: imagery\npaths: ../sparse.tif\nbands: 1\n")
    stats = compute_stats(Catalog(tmp_path / "catalog").get("s"))
    assert stats["pixels_sampled"] == 1600
    assert stats["mean"][0] == pytest.approx(patch.mean())


def test_disk_full_and_permission_errors_are_one_line_naming_the_path(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    write_raster(tmp_path / "img.tif", smooth_field((64, 64), bands=3))
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    target = str(tmp_path / "catalog" / "img.stats.json")
    for code, words in ((errno.ENOSPC, "no space left"), (errno.EACCES, "permission denied")):

        def fail(stats: object, path: Path, code: int = code) -> None:
            raise OSError(code, os.strerror(code), target)

        monkeypatch.setattr("geocmid.data.stats.write_stats", fail)
        assert main(["--catalog", str(tmp_path / "catalog"), "catalog", "stats", "img"]) == 1
        err = capsys.readouterr().err
        one_error_line(err)
        assert words in err and target in err, err


def test_a_closed_stdout_stops_like_a_shell_tool(tmp_path: Path, capsys, monkeypatch) -> None:
    """`geocmid ... | head` closing the pipe: exit 141 (128 + SIGPIPE), no "unexpected" line."""
    write_raster(tmp_path / "img.tif", smooth_field((64, 64), bands=3))
    write_entry(tmp_path / "catalog", "img", "kind: imagery\npaths: ../img.tif\nbands: 3\n")

    def closed(*args: object, **kwargs: object) -> None:
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("geocmid.data.stats.write_stats", closed)
    assert main(["--catalog", str(tmp_path / "catalog"), "catalog", "stats", "img"]) == 141
    assert "unexpected" not in capsys.readouterr().err


class NotAState:
    """A Python object: torch.load(weights_only=True) refuses to unpickle it."""


def test_fit_ckpt_on_a_pickle_weights_only_refuses(tmp_path: Path, capsys) -> None:
    path = tmp_path / "foreign.ckpt"
    torch.save({"state_dict": {}, "thing": NotAState()}, path)
    code = main(["fit", "--config", str(RECIPES / "finetune-segmentation.yaml"),
                 "--ckpt", str(path)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    one_error_line(err)
    assert "foreign.ckpt" in err and "weights_only" in err and "fix:" in err


def test_unexpected_errors_are_one_line_unless_verbose(capsys, monkeypatch) -> None:
    import geocmid.cli.catalog as catalog_cli

    def boom(args: object) -> int:
        raise RuntimeError("boom")

    monkeypatch.setattr(catalog_cli, "cmd_list", boom)
    assert main(["catalog", "list"]) == 1
    err = capsys.readouterr().err
    one_error_line(err)
    assert "RuntimeError: boom" in err and "--verbose" in err
    with pytest.raises(RuntimeError, match="boom"):
        main(["catalog", "list", "--verbose"])


def test_a_recipe_error_is_printed_once_and_logged(tmp_path: Path, capsys, monkeypatch) -> None:
    from geocmid.errors import DataError

    def fail(res: object) -> None:
        raise DataError("demo folder", "cannot be written", "free some space")

    monkeypatch.setattr("geocmid.recipes.steps.run_demo", fail)
    run = tmp_path / "run"
    code = main(["run", str(RECIPES / "quickstart.yaml"), "--tiny", "--run-dir", str(run)])
    out = capsys.readouterr()
    assert code == 2
    assert (out.out + out.err).count("cannot be written") == 1, out
    assert "cannot be written" in (run / "logs" / "run.log").read_text()
    assert json.loads((run / "state.json").read_text())["demo_data"]["status"] == "failed"


@pytest.mark.slow
def test_sigterm_during_a_recipe_stops_cleanly_marks_interrupted_and_exits_130(
    tmp_path: Path,
) -> None:
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "geocmid", "run", str(RECIPES / "quickstart.yaml"), "--tiny",
         "--run-dir", str(run)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    state = run / "state.json"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if state.is_file() and json.loads(state.read_text()).get("pretrain", {}).get(
            "status"
        ) == "running" and (run / "pretrain" / "status.json").is_file():
            break  # training has started
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "rerun the same command to resume" in err
    assert "Traceback" not in err
    assert json.loads(state.read_text())["pretrain"]["status"] == "interrupted"
    assert json.loads((run / "pretrain" / "status.json").read_text())["status"] == "interrupted"


def write_tiled(path: Path, image: np.ndarray) -> Path:
    """``image`` as a tiled, deflate-compressed GeoTIFF (its blocks spread over the file)."""
    import rasterio
    from rasterio.transform import from_origin

    with rasterio.open(path, "w", driver="GTiff", width=image.shape[2], height=image.shape[1],
                       count=image.shape[0], dtype=image.dtype, crs="EPSG:32633",
                       transform=from_origin(500000, 5000000, 10, 10), tiled=True,
                       blockxsize=64, blockysize=64, compress="deflate") as dst:  # fmt: skip
        dst.write(image)
    return path


def test_predict_checks_every_input_before_any_block_runs(tmp_path: Path, capsys) -> None:
    """A truncated second scene is named before the first scene is predicted."""
    good = write_tiled(tmp_path / "good.tif", smooth_field((256, 256), bands=3))
    bad = write_tiled(tmp_path / "bad.tif", smooth_field((256, 256), seed=1, bands=3))
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    torch.jit.script(torch.nn.Conv2d(3, 2, 1)).save(str(tmp_path / "model.pt"))
    classes = [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}]
    card = {"name": "toy", "bands": [1, 2, 3], "in_chans": 3, "mean": [0.0] * 3,
            "std": [1000.0] * 3, "classes": classes}  # fmt: skip
    (tmp_path / "card.json").write_text(json.dumps(card))
    out = tmp_path / "out"
    code = main(["predict", str(good), str(bad), "-o", str(out), "--model",
                 str(tmp_path / "model.pt"), "--card", str(tmp_path / "card.json"),
                 "--window", "64", "--overlap", "16", "--block-size", "128",
                 "--no-progress"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2, err
    one_error_line(err)
    assert "bad.tif" in err and "truncated or corrupt" in err and "fix:" in err, err
    assert not out.exists() or not any(out.iterdir()), sorted(out.iterdir())  # no block ran


@pytest.mark.slow
def test_ctrl_c_during_pretraining_stops_cleanly_marks_interrupted_and_exits_130(
    tmp_path: Path,
) -> None:
    """SIGINT (Ctrl-C) shares SIGTERM's handler: the same clean stop, message and state."""
    from geocmid.data.synthetic import make_demo_dataset
    from geocmid.tasks.guards import read_status

    make_demo_dataset(tmp_path / "demo", size=160, seed=0)
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "geocmid", "pretrain", "--config",
         str(RECIPES / "pretrain-resnet18-cpu.yaml"), "--catalog", str(tmp_path / "demo/catalog"),
         "--entry", "demo-2020", "--run-dir", str(run), "--epochs", "500", "--chip-size", "64",
         "--batch-size", "2", "--set", "data.chips_per_epoch=2", "--set", "data.num_workers=0",
         "--set", "model.queue_size=64", "--set", "model.warmup_epochs=0",
         "--set", "trainer.callbacks.QuickLook=false",
         "--set", "trainer.callbacks.HealthMonitor=false"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    last = run / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not last.is_file():
        time.sleep(0.1)  # training has run a whole epoch (written atomically)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"still running 2 minutes after SIGINT:\n{out}{err}")
    assert proc.returncode == 130, out + err
    assert "Traceback" not in out + err, err
    lines = [line for line in err.splitlines() if "interrupted" in line]
    assert len(lines) == 1 and "rerun the same command to resume" in lines[0], err
    assert read_status(run)["status"] == "interrupted"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # intact: resumable
    assert ckpt["epoch"] < 499 and any("queue" in k for k in ckpt["state_dict"])


class SignalInFinalizer:
    """Sends this process SIGINT from its ``__del__``: the handler's exception is raised inside
    the finalizer, where Python prints and drops it (as when Ctrl-C lands while a checkpoint
    file is being closed)."""

    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # the handler runs at one of these bytecodes, inside __del__
            pass


@pytest.mark.slow
def test_a_ctrl_c_dropped_in_a_finalizer_still_stops_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from geocmid.data.synthetic import make_demo_dataset
    from geocmid.tasks.guards import TrainingGuard, read_status

    make_demo_dataset(tmp_path / "demo", size=160, seed=0)
    original = TrainingGuard.on_train_epoch_end

    def epoch_end(self: TrainingGuard, trainer: object, pl_module: object) -> None:
        original(self, trainer, pl_module)
        if getattr(trainer, "current_epoch", None) == 0:
            SignalInFinalizer()  # created and collected at once: Ctrl-C lost in its __del__

    monkeypatch.setattr(TrainingGuard, "on_train_epoch_end", epoch_end)
    run = tmp_path / "run"
    torch.set_num_threads(1)
    code = main([
        "pretrain", "--config", str(RECIPES / "pretrain-resnet18-cpu.yaml"), "--catalog",
        str(tmp_path / "demo" / "catalog"), "--entry", "demo-2020", "--run-dir", str(run),
        "--epochs", "3", "--chip-size", "64", "--batch-size", "2",
        "--set", "data.chips_per_epoch=2", "--set", "data.num_workers=0",
        "--set", "model.queue_size=64", "--set", "model.warmup_epochs=0",
        "--set", "trainer.callbacks.QuickLook=false",
        "--set", "trainer.callbacks.HealthMonitor=false",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 130, err  # not 0: three epochs trained as if Ctrl-C had not been pressed
    assert "rerun the same command to resume" in err and "Traceback" not in err, err
    status = read_status(run)
    assert status["status"] == "interrupted" and status["global_step"] == 1, status


def test_an_interrupt_dropped_in_a_finalizer_prints_no_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import sys

    from geocmid.cli import console

    reported: list[object] = []
    monkeypatch.setattr(sys, "unraisablehook", reported.append)
    previous = console.install_signal_handlers()
    try:
        SignalInFinalizer()
        assert console.was_interrupted()  # the handler ran, inside __del__
        with pytest.raises(console.Interrupted):
            console.raise_if_interrupted()
    finally:
        console.restore_signal_handlers(previous)
    assert reported == []  # not "Exception ignored in ... Traceback ..." on the console
    assert sys.unraisablehook == reported.append  # put back with the signal handlers
    console.raise_if_interrupted()  # the command is over: nothing pending
