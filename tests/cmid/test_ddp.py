"""Distributed pretraining: 2 CPU processes on gloo, launched by the CLI like a user would.

Checks the two properties DDP can silently break: ranks must draw *different* chips (the geo
sampler is rank-aware, Lightning's distributed sampler is off), and the MoCo queue and the DINO
centre must be *identical* on every rank (keys all-gathered once, centre all-reduced; buffers are
not broadcast, so equality is earned, not imposed).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.cmid.test_pretrain_cli import TINY_MODEL
from tests.rasters import smooth_field, write_entry, write_raster

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    write_raster(tmp_path / "img.tif", smooth_field((256, 256), seed=3, bands=3))
    cat = tmp_path / "catalog"
    write_entry(
        cat, "scene",
        "kind: imagery\npaths: ../img.tif\nbands: [r, g, b]\n"
        "stats: {mean: [1000, 1100, 1200], std: [250, 250, 250]}\n",
    )  # fmt: skip
    run_dir = tmp_path / "run"
    cfg = {
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "devices": 2, "strategy": "ddp",
            "limit_train_batches": 2, "default_root_dir": str(run_dir),
            "callbacks": [
                {"class_path": "geocmid.cmid.callbacks.QuickLook",
                 "init_args": {"every_n_epochs": 1}},
                {"class_path": "geocmid.cmid.callbacks.RankStateDump"},
            ],
        },
        "model": {"init_args": {"backbone": "resnet18", **TINY_MODEL}},
        "data": {"init_args": {"catalog": str(cat), "entry": "scene", "chip_size": 64,
                               "batch_size": 2, "chips_per_epoch": 8, "num_workers": 0}},
    }  # fmt: skip
    config = tmp_path / "ddp.yaml"
    config.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, "-m", "geocmid", "pretrain", "--config", str(config)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    ranks = [torch.load(run_dir / "debug" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert all(s["world_size"] == 2 for s in ranks)
    # each rank ran 2 steps of 2 chips, and no chip was drawn by both ranks
    b0, b1 = (s["bounds"] for s in ranks)
    assert b0.shape[0] == b1.shape[0] == 4
    assert not any(torch.equal(a, b) for a in b0 for b in b1)
    # queue: 2 steps × 2 key sets × (2 ranks × 2 chips) = 16 keys, identical on both ranks
    assert int(ranks[0]["queue_ptr"]) == int(ranks[1]["queue_ptr"]) == 16
    assert torch.equal(ranks[0]["queue"], ranks[1]["queue"])
    assert torch.equal(ranks[0]["center"], ranks[1]["center"])
    assert ranks[0]["center"].abs().sum() > 0  # the centre did move
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 2
    # the DDP rule: no buffer broadcast (equality above is earned), no SyncBN on CPUs
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())["trainer"]
    assert resolved["strategy"]["class_path"].endswith("DDPStrategy")
    assert resolved["strategy"]["init_args"]["broadcast_buffers"] is False
    assert resolved["sync_batchnorm"] is False
