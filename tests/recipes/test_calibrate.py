"""Dry-run time estimates from measured steps (geocmid.recipes.calibrate): scaling, the fallback
to rough constants, the plan's wording, and one real measurement of a tiny model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from geocmid.recipes import calibrate as C

REPO = Path(__file__).resolve().parents[2]

CMID = C.Measured("CMID step", 0.4, 2, 96, "cpu", 2)
TRAIN = C.Measured("training step", 0.3, 2, 64, "cpu", 2)
FORWARD = C.Measured("forward pass", 0.1, 2, 64, "cpu", 2)


@pytest.fixture
def fixed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Measurements replaced by fixed step times (deterministic estimates)."""
    monkeypatch.setattr(C, "measure_cmid", lambda *a, **k: CMID)
    monkeypatch.setattr(C, "measure_task", lambda *a, train=True, **k: TRAIN if train else FORWARD)


def _pretrain(epochs: int = 2, chips: int = 32, chip: int = 96) -> dict[str, Any]:
    return {
        "model": {"class_path": "geocmid.cmid.CMIDTask", "init_args": {"backbone": "resnet18"}},
        "data": {"init_args": {"chip_size": chip, "batch_size": 8, "chips_per_epoch": chips}},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
    }


def _finetune(epochs: int = 6, chips: int = 96, evals: int = 16) -> dict[str, Any]:
    return {
        "model": {"class_path": "geocmid.tasks.change.ChangeTask",
                  "init_args": {"model": "fcsiamdiff", "backbone": "resnet18"}},
        "data": {"class_path": "geocmid.datamodules.SegmentationDataModule",
                 "init_args": {"chip_size": 64, "batch_size": 8, "chips_per_epoch": chips,
                               "eval_chips": evals}},
        "trainer": {"max_epochs": epochs, "accelerator": "cpu"},
    }  # fmt: skip


def test_pretrain_estimate_scales_with_chips_epochs_and_pixels(fixed: None) -> None:
    base = C.estimate_pretrain(_pretrain())
    assert base.is_measured and base.seconds == pytest.approx(2 * 32 * 0.4 / 2)
    assert C.estimate_pretrain(_pretrain(chips=64)).seconds == pytest.approx(2 * base.seconds)
    assert C.estimate_pretrain(_pretrain(epochs=6)).seconds == pytest.approx(3 * base.seconds)
    # a chip twice the measured edge: four times the pixels
    assert C.estimate_pretrain(_pretrain(chip=192)).seconds == pytest.approx(4 * base.seconds)
    assert "measured: 0.40 s per CMID step of batch 2 at 96 px on cpu, 2 threads" in base.text()


def test_a_steps_fixed_part_is_not_scaled_per_image(monkeypatch) -> None:
    """A step of 0.4 s at batch 2 of which 0.3 s do not grow with the images (optimizer, EMA):
    a batch-8 step costs 0.3 + 8 × 0.05 = 0.7 s, not 4 × 0.4 = 1.6 s."""
    step = C.Measured("CMID step", 0.4, 2, 96, "cpu", 2, fixed_seconds=0.3)
    assert step.per_image() == pytest.approx(0.05)
    assert step.step_seconds(8) == pytest.approx(0.7)
    assert step.step_seconds(8, 192) == pytest.approx(0.3 + 8 * 0.2)  # 4x the pixels
    monkeypatch.setattr(C, "measure_cmid", lambda *a, **k: step)
    # 2 epochs × 32 chips at batch 8 = 8 steps of 0.7 s
    assert C.estimate_pretrain(_pretrain()).seconds == pytest.approx(8 * 0.7)


def test_finetune_and_predict_estimates_scale(fixed: None) -> None:
    base = C.estimate_finetune(_finetune())
    per_epoch = 96 * 0.3 / 2 + 16 * 0.1 / 2  # training chips + validation chips
    assert base.seconds == pytest.approx(6 * per_epoch)
    assert C.estimate_finetune(_finetune(epochs=12)).seconds == pytest.approx(2 * base.seconds)
    more = C.estimate_finetune(_finetune(chips=192)).seconds
    assert more - base.seconds == pytest.approx(6 * 96 * 0.3 / 2)
    assert "training step" in base.basis and "forward pass" in base.basis

    def predict(windows: int, tta: str = "none") -> float:
        args = {"model": "fcsiamdiff", "backbone": "resnet18"}
        path = "geocmid.tasks.change.ChangeTask"
        return C.estimate_predict(path, args, 4, windows, 64, "cpu", None, tta).seconds

    overhead = C.PREDICT_OVERHEAD_S
    assert predict(10) - overhead == pytest.approx(10 * 0.1 / 2)
    assert predict(20) - overhead == pytest.approx(2 * (predict(10) - overhead))
    assert predict(10, "d4") - overhead == pytest.approx(8 * (predict(10) - overhead))


def test_fallback_to_rough_constants_when_measuring_fails(monkeypatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> C.Measured:
        raise RuntimeError("cannot build the model offline")

    monkeypatch.setattr(C, "measure_cmid", broken)
    monkeypatch.setattr(C, "measure_task", broken)
    pre = C.estimate_pretrain(_pretrain())
    assert not pre.is_measured
    assert pre.seconds == pytest.approx(2 * 32 * 96**2 * C.ROUGH_S_PER_PX["pretrain"])
    assert pre.basis == "rough, not measured: cannot build the model offline"
    fine = C.estimate_finetune(_finetune())
    assert not fine.is_measured and fine.seconds > 0
    pred = C.estimate_predict("geocmid.tasks.change.ChangeTask", {}, 4, 10, 64)
    assert not pred.is_measured and pred.seconds > C.PREDICT_OVERHEAD_S
    # a task without a measured step (detection) falls back without being patched
    monkeypatch.undo()
    detection = {**_finetune(), "model": {"class_path": "geocmid.tasks.detection.DetectionTask"}}
    assert "rough, not measured" in C.estimate_finetune(detection).basis


def test_off_switch_and_sizes(monkeypatch) -> None:
    monkeypatch.setenv("GEOCMID_MEASURE", "0")
    assert not C.estimate_pretrain(_pretrain()).is_measured
    # a large chip is measured smaller on a CPU (and at full size if that fails), not on a GPU
    assert C._sizes(224, "cpu", "train", [128, 96]) == [128, 224]
    assert C._sizes(224, "cuda", "train", [128, 96]) == [224]
    assert C._sizes(96, "cpu", "train", [96, 64]) == [96]
    assert C.torch_device("gpu") == "cuda" and C.torch_device("cpu") == "cpu"
    assert [C.duration(s) for s in (45, 600, 3 * 3600, 20 * 3600, 9 * 86400)] == [
        "45 s", "10 min", "3.0 h", "20 h", "9 days"
    ]  # fmt: skip


def test_plan_names_the_measured_step(fixed: None, tmp_path: Path, capsys) -> None:
    from geocmid.cli import main

    run = tmp_path / "run"
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    assert main(["run", recipe, "--dry-run", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    # pretrain: 2 epochs × 32 chips of 96 px at 0.2 s per image = 13 s
    assert ("estimate: ~13 s (measured: 0.40 s per CMID step of batch 2 at 96 px on cpu, "
            "2 threads)") in out  # fmt: skip
    assert "0.30 s per training step of batch 2 at 64 px" in out
    assert "pretrain, finetune from steps measured here" in out
    assert not run.exists()  # a dry run writes nothing


def test_plan_memory_from_the_measured_step(monkeypatch, tmp_path: Path, capsys) -> None:
    """The plan's memory is the measured baseline + state + the step's memory scaled to the
    configured batch and chip (quickstart pretraining: batch 8 at 96 px, measured batch 2)."""
    from geocmid.cli import main

    cmid = C.Measured("CMID step", 0.4, 2, 96, "cpu", 2, "32-true", int(0.9e9), int(0.6e9),
                      int(0.05e9))  # fmt: skip
    monkeypatch.setattr(C, "measure_cmid", lambda *a, **k: cmid)
    monkeypatch.setattr(C, "measure_task", lambda *a, train=True, **k: TRAIN if train else FORWARD)
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    assert main(["run", recipe, "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "[~13 s, ~1.7 GB]" in out  # 0.9 + 0.6 + 4 × 0.05
    assert "2 threads; memory from the same step)" in out
    assert "peak memory ~1.7 GB" in out


def test_plan_says_rough_when_measuring_fails(monkeypatch, tmp_path: Path, capsys) -> None:
    from geocmid.cli import main

    def broken(*args: Any, **kwargs: Any) -> C.Measured:
        raise RuntimeError("no model here")

    monkeypatch.setattr(C, "measure_cmid", broken)
    monkeypatch.setattr(C, "measure_task", broken)
    recipe = str(REPO / "recipes" / "quickstart.yaml")
    assert main(["run", recipe, "--dry-run", "--run-dir", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "(rough, not measured: no model here)" in out
    assert "pretrain, finetune rough, not measured" in out and "estimate (rough)" in out


def test_pretrain_dry_run_line_is_a_yaml_comment(fixed: None) -> None:
    from geocmid.cli.pretrain import estimate_line

    line = estimate_line(_pretrain())
    assert line.startswith("# estimate: ~13 s (measured: 0.40 s per CMID step")
    assert "2 epoch(s) × 32 chips of 96 px" in line and yaml.safe_load(line) is None


def test_a_real_measurement_of_a_tiny_cmid_step(monkeypatch) -> None:
    """One real CMID step timing (ResNet-18, 64 px, 1 thread): cached, threads and random
    state left as they were."""
    monkeypatch.setenv("GEOCMID_MEASURE", "1")  # off for the rest of the suite (conftest)
    monkeypatch.setattr(C, "_SPENT", [0.0])  # other tests' dry runs may have used the budget
    threads, state = torch.get_num_threads(), torch.get_rng_state()
    args = {"backbone": "resnet18", "queue_size": 256, "proj_hidden": 64, "head_hidden": 64,
            "num_prototypes": 64}  # fmt: skip
    measured = C.measure_cmid(args, 3, 64, "cpu", threads=1)
    assert measured.what == "CMID step" and measured.batch == 2 and measured.size == 64
    assert 0 < measured.seconds < 60 and measured.threads == 1
    assert 0 <= measured.fixed_seconds <= measured.seconds  # timed at batch 2 and 4
    assert C.measure_cmid(args, 3, 64, "cpu", threads=1) is measured  # cached
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), state)
    # once the process's measuring time is spent, estimates fall back to the rough constants
    monkeypatch.setattr(C, "_SPENT", [C.TOTAL_BUDGET_S])
    with pytest.raises(RuntimeError, match="measuring time used up"):
        C.measure_cmid({**args, "queue_size": 128}, 3, 64, "cpu", threads=1)
    assert C.measure_cmid(args, 3, 64, "cpu", threads=1) is measured  # the cache still serves


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux /proc only")
def test_a_real_memory_measurement_in_a_fresh_process() -> None:
    """In a fresh process (as a dry run is): the import baseline, the exact state (ResNet-18
    student + teacher, Adan's moments, gradients) and the step's own memory, which scales."""
    import json
    import os
    import subprocess
    import sys

    code = (
        "import json; from geocmid.recipes import calibrate as C; "
        "m = C.measure_cmid({'backbone': 'resnet18', 'queue_size': 256, 'proj_hidden': 64, "
        "'head_hidden': 64, 'num_prototypes': 64}, 3, 64, 'cpu', threads=1); "
        "print(json.dumps([m.baseline_bytes, m.state_bytes, m.step_bytes, m.memory_gb(2, 64), "
        "m.memory_gb(8, 128)]))"
    )
    env = {**os.environ, "GEOCMID_MEASURE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300, check=True)  # fmt: skip
    baseline, state, step, small, large = json.loads(done.stdout.strip().splitlines()[-1])
    params = 11.2e6 * 4  # ResNet-18 without its classifier, float32
    assert baseline > 200e6  # torch and geocmid imported
    assert 6 * params < state < 9 * params  # student, teacher, 4 Adan states, gradients, heads
    assert 1e6 < step < 500e6  # activations of 2 chips of 64 px, with allocator slack
    assert large - small == pytest.approx(15 * step / 1e9)  # 4x the images, 4x the pixels


def test_real_runs_print_the_plan_without_measuring(monkeypatch) -> None:
    """``geocmid run`` without --dry-run plans inside ``measuring(False)``: no seconds spent."""
    monkeypatch.setenv("GEOCMID_MEASURE", "1")
    args = {"backbone": "resnet18", "queue_size": 64}
    with C.measuring(False), pytest.raises(RuntimeError, match="--dry-run only"):
        C.measure_cmid(args, 3, 32, "cpu", threads=1)
