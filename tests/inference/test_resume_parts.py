"""Atomic outputs, resuming after an interruption, and splitting blocks across processes."""

from __future__ import annotations

import errno
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import rasterio
import toymodels

from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.inference.conftest import write_scene

SETTINGS = RunSettings(window=128, overlap=32, block_size=200, batch_size=4)
OPTIONS = OutputOptions(probabilities=True, quicklook=True)
N_BLOCKS = len(SETTINGS.layout(600, 700, "segmentation").blocks())  # 3 x 4


class Crash(RuntimeError):
    pass


class CrashingCNN(toymodels.TinyCNN):
    """The same weights as TinyCNN(seed=1), but dies after ``limit`` forward passes."""

    def __init__(self, limit: int) -> None:
        super().__init__(seed=1)
        self.limit, self.calls = limit, 0

    def forward(self, x):
        self.calls += 1
        if self.calls > self.limit:
            raise Crash("killed")
        return super().forward(x)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    rows, cols = np.mgrid[0:600, 0:700].astype(np.float32)
    data = np.stack([np.sin(rows / 40) * np.cos(cols / 30), np.cos(rows / 9), np.sin(cols / 13)])
    data[:, 500:, :100] = np.nan  # float nodata as NaN
    return write_scene(tmp_path / "big.tif", data.astype(np.float32), nodata=np.nan)


def files(folder: Path) -> dict[str, object]:
    """Rasters and PNG byte for byte; GPKG (which stores a write date) and JSON by content."""
    out: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix in (".tif", ".png"):
            out[p.name] = p.read_bytes()
        elif p.suffix == ".gpkg":
            frame = gpd.read_file(p)
            out[p.name] = (
                frame.drop(columns="geometry").to_dict("list"),
                frame.geometry.to_wkb().tolist(),
            )
        elif p.name.endswith("_summary.json"):
            out[p.name] = json.loads(p.read_text())["classes"]
        elif p.name.endswith("_item.json"):  # the STAC item, less its creation time
            item = json.loads(p.read_text())
            out[p.name] = {k: v for k, v in item.items() if k != "properties"}
        else:
            out[p.name] = None
    return out


def test_resume_after_interruption_gives_identical_files(scene, tmp_path):
    card = toymodels.card()
    full = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), card),
        [scene],
        tmp_path / "full",
        settings=SETTINGS,
        options=OPTIONS,
        progress=False,
    )
    with rasterio.open(full.outputs["classes"]) as ds:
        assert ds.overviews(1)  # 700 px > one tile: the COG has overviews
    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        predict_scene(
            Predictor(CrashingCNN(limit=5), card),
            [scene],
            out,
            settings=SETTINGS,
            options=OPTIONS,
            progress=False,
        )
    # Nothing under a final name; some completed blocks kept for the rerun.
    assert not [p for p in out.iterdir() if not p.name.startswith(".")]
    done = list(out.glob(".*.geocmid-work/blocks/*.npz"))
    assert 0 < len(done) < N_BLOCKS
    counter = CrashingCNN(limit=10**9)
    resumed = predict_scene(
        Predictor(counter, card), [scene], out, settings=SETTINGS, options=OPTIONS, progress=False
    )
    assert resumed.blocks_run == N_BLOCKS - len(done)
    assert counter.calls < 40  # not everything was recomputed
    assert files(tmp_path / "full") == files(out)


@pytest.mark.slow
def test_two_processes_give_the_single_process_result(scene, tmp_path):
    card = toymodels.card()
    single = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), card),
        [scene],
        tmp_path / "one",
        settings=SETTINGS,
        options=OPTIONS,
        progress=False,
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import toymodels
        from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
        part = (int(sys.argv[1]), 2)
        r = predict_scene(
            Predictor(toymodels.TinyCNN(seed=1), toymodels.card()), [{str(scene)!r}],
            {str(tmp_path / "two")!r}, settings=RunSettings(**{SETTINGS.__dict__!r}),
            options=OutputOptions(probabilities=True, quicklook=True), part=part, progress=False,
        )
        assert not r.complete and r.blocks_run == {N_BLOCKS // 2}, r
        """
    )
    workers = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], stderr=subprocess.PIPE, text=True)
        for i in (1, 2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=300)
        assert worker.returncode == 0, err
    assembled = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), card),
        [scene],
        tmp_path / "two",
        settings=SETTINGS,
        options=OPTIONS,
        progress=False,
    )
    assert assembled.blocks_run == 0
    assert files(tmp_path / "one") == files(tmp_path / "two")
    assert single.summary["classes"] == assembled.summary["classes"]


@pytest.mark.slow
def test_second_run_into_the_same_output_is_refused_with_the_holders_pid(scene, tmp_path):
    """A second run of one output (here in another process) is refused, naming the first
    run's PID; --part runs share the lock; once the holder is gone the lock is free again."""
    from geocmid.errors import ConfigError
    from geocmid.inference.store import RunLock

    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path;"
            "from geocmid.inference.store import RunLock;"
            f"RunLock(Path({str(out / '.big.geocmid-lock')!r})).acquire();"
            "print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):
            predict_scene(
                Predictor(toymodels.TinyCNN(seed=1), toymodels.card()),
                [scene],
                out,
                settings=SETTINGS,
                progress=False,
            )
        with pytest.raises(ConfigError, match=f"PID {holder.pid}"):  # a part too
            RunLock(out / ".big.geocmid-lock", exclusive=False).acquire()
    finally:
        holder.kill()
        holder.wait()
    # Part runs share the lock; a plain run is refused while they hold it.
    a = RunLock(out / ".big.geocmid-lock", exclusive=False).acquire()
    b = RunLock(out / ".big.geocmid-lock", exclusive=False).acquire()
    with pytest.raises(ConfigError, match="another geocmid predict run"):
        RunLock(out / ".big.geocmid-lock").acquire()
    a.release()
    b.release()
    result = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), toymodels.card()),
        [scene],
        out,
        settings=SETTINGS,
        progress=False,
    )
    assert result.complete
    assert not list(out.glob(".*"))  # lock file and work folder removed


@pytest.mark.parametrize(
    ("code", "words"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "cannot be written (Permission denied)")],
)
def test_full_disk_or_no_permission_while_saving_blocks_is_one_clear_error(
    scene, tmp_path, monkeypatch, code, words
):
    """ENOSPC / EACCES while saving a block: a DataError naming the blocks folder and the fix,
    which the CLI prints as one line (exit 2); the blocks saved before are kept."""
    import os

    from geocmid.errors import DataError

    real = np.savez
    calls = {"n": 0}

    def savez(handle, **arrays):
        calls["n"] += 1
        if calls["n"] > 2:
            raise OSError(code, os.strerror(code))
        real(handle, **arrays)

    monkeypatch.setattr(np, "savez", savez)
    out = tmp_path / "out"
    with pytest.raises(DataError) as info:
        predict_scene(
            Predictor(toymodels.TinyCNN(seed=1), toymodels.card()),
            [scene],
            out,
            settings=SETTINGS,
            progress=False,
        )
    message = str(info.value)
    assert words in message
    assert str(out / ".big.geocmid-work" / "blocks") in message
    assert "-o" in message  # the fix names another output folder
    assert len(list(out.glob(".big.geocmid-work/blocks/*.npz"))) == 2
    assert not list(out.glob(".big.geocmid-work/blocks/*.tmp"))
    monkeypatch.setattr(np, "savez", real)  # space freed: the rerun resumes and finishes
    again = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), toymodels.card()),
        [scene],
        out,
        settings=SETTINGS,
        progress=False,
    )
    assert again.blocks_run == N_BLOCKS - 2
