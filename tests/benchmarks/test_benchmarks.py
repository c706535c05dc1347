"""Smoke tests of the benchmark scripts: their rules and their baselines, not their figures."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import bench_gpu  # noqa: E402
import bench_predict  # noqa: E402
import fairness  # noqa: E402


def test_spread_and_ratio() -> None:
    s = fairness.spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s["median"], s["q1"], s["q3"], s["min"], s["max"], s["n"]) == (3, 2, 4, 1, 5, 5)
    r = fairness.paired_ratio([2.0, 4.0, 9.0], [1.0, 2.0, 3.0])
    assert r["median"] == 2.0 and r["max"] == 3.0


def test_alternate_rotates_and_drops_warmup() -> None:
    order: list[str] = []
    paths = {n: (lambda n=n: order.append(n)) for n in "abc"}
    times = fairness.alternate(paths, rounds=3, warmup=1)
    # rotating order: no path always runs first
    assert order == list("abc") + list("bca") + list("cab") + list("abc")
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 3, "c": 3}


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="Linux only")
def test_peak_is_measured_from_the_reset() -> None:
    big = np.ones(40 * 2**20 // 8)  # 40 MiB, freed before the reset
    del big
    fairness.reset_peak()
    before = fairness.peak_mib()
    assert before - fairness.rss_mib() < 5  # the freed 40 MiB no longer counts
    small = np.ones(20 * 2**20 // 8)
    assert fairness.peak_mib() - before > 15
    del small


@pytest.mark.parametrize("overlap", [0, 32])
def test_plain_loop_maps_what_geocmid_maps(tmp_path: Path, overlap: int) -> None:
    """The baseline does the same job: same class on (nearly) every pixel, on the same grid."""
    import rasterio

    scene = bench_predict.make_scene(tmp_path / "scene.tif", 200)  # 200: a padded last window
    model = bench_predict.make_model("perpixel")
    plain = tmp_path / "plain.tif"
    n = bench_predict.plain_loop(model, scene, plain, 128, overlap, batch=4)
    assert n == bench_predict.n_windows(200, 128, overlap) ** 2
    ours = bench_predict.geocmid_predict(model, scene, tmp_path / "g", 128, overlap, 4)
    with rasterio.open(plain) as a, rasterio.open(ours) as b, rasterio.open(scene) as s:
        assert a.transform == b.transform == s.transform and a.shape == b.shape == s.shape
        x, y = a.read(1), b.read(1)
    assert len(np.unique(x)) == 2  # both classes occur, so agreement is not trivial
    assert (x == y).mean() > 0.999


def test_bench_gpu_exits_0_without_cuda(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(sys, "argv", ["bench_gpu.py"])
    assert bench_gpu.main() == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == [
        "bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False); nothing run."
    ]
