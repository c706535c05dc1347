"""`kill -9` after the first epoch's checkpoint, then the same command again: training continues
from that epoch (same MoCo queue for pretraining), up to the same schedule, and says so."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from geocmid.cli import main
from geocmid.tasks.guards import TrainingGuard, read_status

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}

pytestmark = pytest.mark.slow  # two short training runs each (about a minute on 2 cores)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from geocmid.data.synthetic import make_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "demo"
    make_demo_dataset(out, size=160, seed=0)
    return out / "catalog"


def kill_after_first_checkpoint(argv: list[str], last: Path, cwd: Path) -> dict[str, Any]:
    """Run ``geocmid ARGV`` in a subprocess, SIGKILL it once ``last`` holds epoch 0; returns
    that checkpoint."""
    proc = subprocess.Popen([sys.executable, "-m", "geocmid", *argv], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.monotonic() + 600
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                pytest.fail(f"the run ended (rc {proc.returncode}) before it was killed:\n{out}")
            if last.is_file():  # written atomically: complete when it exists
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.1)
        else:
            pytest.fail("no checkpoint within 10 minutes")
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 0, "killed after the first epoch's checkpoint"
    return ckpt


def first_epoch_state(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Record the epoch and model state at the start of the first epoch the rerun trains."""
    seen: dict[str, Any] = {}
    original = TrainingGuard.on_train_epoch_start

    def spy(self: TrainingGuard, trainer: Any, pl_module: Any) -> None:
        if not seen:
            seen["epoch"] = trainer.current_epoch
            seen["global_step"] = trainer.global_step
            seen["state"] = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
        original(self, trainer, pl_module)

    monkeypatch.setattr(TrainingGuard, "on_train_epoch_start", spy)
    return seen


@pytest.mark.slow
def test_pretraining_killed_after_an_epoch_resumes_with_the_same_queue(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run = tmp_path / "run"
    argv = [
        "pretrain", "--config", str(REPO / "recipes" / "pretrain-resnet18-cpu.yaml"),
        "--catalog", str(demo), "--entry", "demo-2020", "--run-dir", str(run),
        "--epochs", "3", "--chip-size", "64", "--batch-size", "2",
        "--set", "data.chips_per_epoch=2", "--set", "data.num_workers=0",
        "--set", "model.queue_size=64", "--set", "model.warmup_epochs=0",
        "--set", "trainer.callbacks.QuickLook=false",
        "--set", "trainer.callbacks.HealthMonitor=false",
    ]  # fmt: skip
    ckpt = kill_after_first_checkpoint(argv, run / "checkpoints" / "last.ckpt", tmp_path)
    assert read_status(run)["status"] == "running"  # killed: nobody could mark it
    state = ckpt["state_dict"]
    queue = {k: v for k, v in state.items() if "queue" in k}
    assert queue, f"the MoCo queue is not in the checkpoint: {sorted(state)[:20]}"
    centre = {k: v for k, v in state.items() if k.endswith(".center")}  # DINO / dense centre
    assert centre, f"the DINO centre is not in the checkpoint: {sorted(state)[:20]}"
    assert all(v.abs().sum() > 0 for v in centre.values()), "the centre was updated in epoch 0"
    teacher = {k: v for k, v in state.items() if ".teacher" in k}  # EMA teacher, heads, BN stats
    assert {k.split(".teacher")[1].split(".")[0] for k in teacher} >= {"", "_projector",
                                                                       "_local_head"}  # fmt: skip

    seen = first_epoch_state(monkeypatch)
    torch.set_num_threads(1)
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "resuming from" in out.err + out.out
    assert seen["epoch"] == 1 and seen["global_step"] == ckpt["global_step"] == 1
    # the queue, centre and EMA teacher the killed run had, not fresh random / zero / copied ones
    for key, value in {**queue, **centre, **teacher}.items():
        assert torch.equal(seen["state"][key], value), key
    student = {k.replace(".teacher.", ".student.backbone."): v for k, v in teacher.items()}
    assert any(not torch.equal(state[k], v) for k, v in student.items() if k in state), (
        "the teacher is an average of the student, not a copy of it"
    )
    final = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 2 and final["global_step"] == 3  # the same schedule: 3 epochs
    assert read_status(run)["status"] == "done"


@pytest.mark.slow
def test_fit_killed_after_an_epoch_resumes_from_it(
    demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    out_dir = tmp_path / "fit"
    argv = [
        "--catalog", str(demo), "fit", "--config", str(REPO / "recipes" / "finetune-change.yaml"),
        "--out", str(out_dir), "--max-epochs", "3", "--set", "data.chip_size=32",
        "--set", "data.batch_size=2", "--set", "data.eval_chips=2",
        "--set", "trainer.limit_train_batches=2", "--set", "trainer.limit_val_batches=1",
        "--set", "trainer.num_sanity_val_steps=0",
    ]  # fmt: skip
    ckpt = kill_after_first_checkpoint(argv, out_dir / "checkpoints" / "last.ckpt", tmp_path)
    weights = {k: v for k, v in ckpt["state_dict"].items() if v.is_floating_point()}

    seen = first_epoch_state(monkeypatch)
    torch.set_num_threads(1)
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "resuming from" in out.err + out.out
    assert seen["epoch"] == 1 and seen["global_step"] == ckpt["global_step"] == 2
    for key, value in weights.items():  # the killed run's weights, not a fresh start
        assert torch.equal(seen["state"][key], value), key
    final = torch.load(out_dir / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)  # fmt: skip
    assert final["epoch"] == 2 and final["global_step"] == 6
    assert read_status(out_dir)["status"] == "done"
