"""Dask-distributed scene prediction: same bytes as one process, survives a killed worker."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import toymodels

from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.inference.conftest import write_scene
from tests.scale.conftest import output_files, scene_data

pytest.importorskip("distributed")
from geocmid.inference.distributed import (
    SceneRun,
    loaded_models,
    predict_scenes,
)

SETTINGS = RunSettings(window=64, overlap=16, block_size=100, batch_size=4)
OPTIONS = OutputOptions(probabilities=True, quicklook=True)


class KillOnce(toymodels.TinyCNN):
    """TinyCNN(seed=1) whose worker process dies (SIGKILL-like ``os._exit``) at its 3rd forward
    pass, once per test: the first process to create ``marker`` dies."""

    def __init__(self, marker: str) -> None:
        super().__init__(seed=1)
        self.marker, self.calls = marker, 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 3:
            try:
                fd = os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                os._exit(1)
        return super().forward(x)


@pytest.fixture
def scenes(tmp_path: Path) -> list[Path]:
    return [
        write_scene(tmp_path / f"s{k}.tif", scene_data(230 + 40 * k, 260, seed=k), nodata=None)
        for k in range(2)
    ]


def single(scene: Path, out: Path) -> dict[str, object]:
    predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), toymodels.card()), [scene], out,
        settings=SETTINGS, options=OPTIONS, progress=False,
    )  # fmt: skip
    return output_files(out)


@pytest.mark.slow
def test_two_workers_many_scenes_bitwise_equal_to_one_process(client, scenes, tmp_path):
    results = predict_scenes(
        Predictor(toymodels.TinyCNN(seed=1), toymodels.card()),
        [SceneRun([s]) for s in scenes],
        tmp_path / "dask",
        SETTINGS,
        OPTIONS,
        client=client,
        progress=False,
    )
    assert [r.blocks_run for r in results] == [9, 9]  # 3 x 3 blocks each, all on workers
    got = output_files(tmp_path / "dask")
    want = {**single(scenes[0], tmp_path / "one"), **single(scenes[1], tmp_path / "one")}
    assert sorted(got) == sorted(want)
    assert got == want
    assert not list((tmp_path / "dask").glob(".*"))  # work folders and locks removed
    # Both workers ran blocks, each with the model loaded once.
    assert sorted(client.run(loaded_models).values()) == [1, 1]


def test_killed_worker_job_finishes_with_same_output(client, scenes, tmp_path):
    marker = tmp_path / "killed.pid"
    model = KillOnce(str(marker))
    results = predict_scenes(
        Predictor(model, toymodels.card()), [SceneRun([scenes[0]])], tmp_path / "dask",
        SETTINGS, OPTIONS, client=client, progress=False,
    )  # fmt: skip
    assert marker.exists()  # a worker did die mid-block
    assert results[0].complete
    assert output_files(tmp_path / "dask") == single(scenes[0], tmp_path / "one")


@pytest.mark.slow
def test_cli_workers_loads_a_torchscript_model_on_each_worker(scenes, tmp_path):
    """`geocmid predict --workers 1` (the CLI path: a TorchScript file, which cannot be pickled,
    loaded by the worker itself) writes the bytes one process writes, for two scenes."""
    import json

    import torch

    from geocmid.cli import main

    (tmp_path / "m").mkdir()
    torch.jit.script(toymodels.TinyCNN(seed=1)).save(str(tmp_path / "m" / "model.pt"))
    (tmp_path / "m" / "card.json").write_text(json.dumps(toymodels.card()))
    args = ["--model", str(tmp_path / "m" / "model.pt"), "--card", str(tmp_path / "m/card.json")]
    args += ["--window", "64", "--overlap", "16", "--block-size", "100", "--no-progress"]
    files = [str(s) for s in scenes]
    assert main(["predict", *files, "-o", str(tmp_path / "one"), *args]) == 0
    assert main(["predict", *files, "-o", str(tmp_path / "dask"), "--workers", "1", *args]) == 0
    want = output_files(tmp_path / "one")
    assert {"s0_classes.tif", "s1_classes.tif", "s0_item.json", "s1.gpkg"} <= set(want)
    assert output_files(tmp_path / "dask") == want
