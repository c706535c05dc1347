"""Checkpoints are streamed to a temporary file and renamed (FileCheckpointIO): same bytes as
Lightning's, no second in-memory copy, never a partial file."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest
import torch

from geocmid.tasks.guards import FileCheckpointIO


class _Unpicklable:
    def __reduce__(self) -> tuple:
        raise RuntimeError("cannot pickle this")


def test_save_is_atomic_and_loads_back(tmp_path: Path) -> None:
    io = FileCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    state = {"state_dict": {"w": torch.arange(10.0)}, "global_step": 3}
    io.save_checkpoint(state, path)
    assert torch.equal(io.load_checkpoint(path)["state_dict"]["w"], state["state_dict"]["w"])
    # a save that fails half-way leaves the previous checkpoint whole and no temporary file
    with pytest.raises(RuntimeError, match="cannot pickle"):
        io.save_checkpoint({"global_step": 4, "bad": _Unpicklable()}, path)
    assert io.load_checkpoint(path)["global_step"] == 3
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]


def test_save_holds_no_copy_of_the_checkpoint_in_memory(tmp_path: Path) -> None:
    """Lightning's TorchCheckpointIO serialises into a BytesIO first (a full extra copy)."""
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

    state = {"w": torch.zeros(4_000_000)}  # 16 MB
    peaks = {}
    for name, io in (("lightning", TorchCheckpointIO()), ("geocmid", FileCheckpointIO())):
        tracemalloc.start()
        io.save_checkpoint(state, tmp_path / f"{name}.ckpt")
        peaks[name] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks["lightning"] > 16e6 and peaks["geocmid"] < 4e6, peaks
    assert (tmp_path / "geocmid.ckpt").stat().st_size == (
        tmp_path / "lightning.ckpt"
    ).stat().st_size


def test_geocmid_cli_trainers_use_it(tmp_path: Path) -> None:
    from geocmid.workflows.lightning_cli import GeocmidCLI

    boring = "lightning.pytorch.demos.boring_classes"
    args = {
        "model": {"class_path": f"{boring}.BoringModel"},
        "data": {"class_path": f"{boring}.BoringDataModule"},
        "trainer": {"default_root_dir": str(tmp_path), "accelerator": "cpu", "logger": False},
        "seed_everything": 0,
    }
    cli = GeocmidCLI(args=args)
    assert isinstance(cli.trainer.strategy.checkpoint_io, FileCheckpointIO)
