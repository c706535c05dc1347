"""Prediction benchmarks: throughput against the bare forward pass, and peak memory vs scene size.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py throughput [--size 4096] [--window 512]
    .venv/bin/python benchmarks/bench_predict.py memory [--sizes 2048 8192 16384]

1. ``throughput``: megapixels/s of ``predict_scene`` end to end (reading, normalising, blending,
   block files, COG writing) divided by megapixels/s of the model's forward pass alone on the
   same windows (tensors already in memory), in the same process. Target: >= 0.85.
2. ``memory``: peak RSS (``ru_maxrss`` of a fresh subprocess per run) of ``predict_scene`` and of
   a naive whole-scene accumulator (the scene and per-class sums held in memory) for several
   scene sizes. Target: geocmid flat within 20 %.

Scenes are synthetic smooth patterns written to a temporary folder (uint8, 3 bands, tiled).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "inference"))


def make_scene(path: Path, size: int, bands: int = 3) -> Path:
    """A ``size`` x ``size`` uint8 scene written strip by strip (bounded memory)."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    profile = dict(
        driver="GTiff", width=size, height=size, count=bands, dtype="uint8", crs="EPSG:32618",
        transform=from_origin(500000, 4000000, 1.0, 1.0), tiled=True, blockxsize=512,
        blockysize=512, nodata=0,
    )  # fmt: skip
    cols = np.arange(size, dtype=np.float32)
    with rasterio.open(path, "w", **profile) as ds:
        for r0 in range(0, size, 512):
            rows = np.arange(r0, min(r0 + 512, size), dtype=np.float32)[:, None]
            strip = np.stack(
                [
                    128 + 100 * np.sin(rows / (40 + 17 * b)) * np.cos(cols / (55 + 9 * b))
                    for b in range(bands)
                ]
            ).astype(np.uint8)
            strip[strip == 0] = 1
            ds.write(strip, window=Window(0, r0, size, strip.shape[1]))
    return path


def conv_model(width: int = 32):
    """A small fully convolutional network (3 conv layers): its forward pass dominates, as a
    real model's does."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2, 3, padding=1),
    ).eval()  # fmt: skip


def card() -> dict:
    import toymodels

    return toymodels.card(in_chans=3, mean=128.0, std=60.0)


def throughput(size: int, window: int, overlap: int, batch: int, repeats: int = 2) -> dict:
    import torch

    from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

    settings = RunSettings(window=window, overlap=overlap, batch_size=batch)
    predictor = Predictor(conv_model(), card())
    with tempfile.TemporaryDirectory() as tmp:
        scene = make_scene(Path(tmp) / "scene.tif", size)
        layout = settings.layout(size, size, "segmentation")
        # Baseline: the forward pass (softmax included) alone over the same windows.
        x = torch.randn(batch, 3, window, window)
        n = layout.n_windows
        predictor.dense_probabilities(x[:1].numpy())  # warm-up
        forward, e2e = [], []
        # Alternate baseline and end-to-end runs and keep the best of each: a shared machine's
        # load changes between runs.
        for rep in range(repeats):
            t0 = time.perf_counter()
            for k in range(0, n, batch):
                predictor.dense_probabilities(x[: min(batch, n - k)].numpy())
            forward.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            predict_scene(
                predictor, [scene], Path(tmp) / f"out{rep}", settings=settings,
                options=OutputOptions(vectors=False, quicklook=False), progress=False,
            )  # fmt: skip
            e2e.append(time.perf_counter() - t0)
        forward_s, e2e_s = min(forward), min(e2e)
    mpx = size * size / 1e6
    return {
        "scene_px": size,
        "windows": n,
        "forward_only_mpx_s": round(mpx / forward_s, 3),
        "end_to_end_mpx_s": round(mpx / e2e_s, 3),
        "ratio": round(forward_s / e2e_s, 3),
        "forward_runs_s": [round(v, 2) for v in forward],
        "end_to_end_runs_s": [round(v, 2) for v in e2e],
    }


def _memory_child(kind: str, scene: str, out: str, window: int, overlap: int) -> None:
    """Runs in a fresh process; prints peak RSS in MiB."""
    import resource

    import toymodels

    from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

    predictor = Predictor(toymodels.PerPixel(), card())
    if kind == "geocmid":
        predict_scene(
            predictor, [scene], out, settings=RunSettings(window=window, overlap=overlap),
            options=OutputOptions(vectors=False, quicklook=False), progress=False,
        )  # fmt: skip
    else:
        _naive(predictor, scene, out, window, overlap)
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _naive(predictor, scene: str, out: str, window: int, overlap: int) -> None:
    """What many tools do: whole scene and whole-scene accumulators in memory."""
    import rasterio

    from geocmid.inference.windows import Layout

    with rasterio.open(scene) as src:
        data = src.read().astype(np.float32)
        valid = src.dataset_mask() > 0
        profile = src.profile
    layout = Layout.create(data.shape[1], data.shape[2], window, overlap, block_size=10**9)
    num = np.zeros((2, *data.shape[1:]), np.float32)
    wsum = np.zeros(data.shape[1:], np.float32)
    for i in range(layout.rows.n_windows):
        for j in range(layout.cols.n_windows):
            r, c = layout.rows.origin(i), layout.cols.origin(j)
            x = np.zeros((1, 3, window, window), np.float32)
            tile = data[:, r : r + window, c : c + window]
            x[0, :, : tile.shape[1], : tile.shape[2]] = tile
            predictor.normalise(x[0], np.ones(x.shape[-2:], bool))
            p = predictor.dense_probabilities(x)[0, :, : tile.shape[1], : tile.shape[2]]
            w = layout.window_weights((i, j))[: tile.shape[1], : tile.shape[2]]
            num[:, r : r + window, c : c + window] += p * w
            wsum[r : r + window, c : c + window] += w
    cls = (num / wsum).argmax(0).astype(np.uint8)
    cls[~valid] = 255
    profile.update(count=1, nodata=255)
    with rasterio.open(Path(out) / "naive.tif", "w", **profile) as dst:
        dst.write(cls, 1)


def memory(sizes: list[int], window: int, overlap: int, naive: bool) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            scene = make_scene(Path(tmp) / f"scene{size}.tif", size)
            row: dict = {"scene_px": size}
            for kind in ["geocmid"] + (["naive"] if naive else []):
                out = Path(tmp) / f"out-{kind}-{size}"
                out.mkdir()
                t0 = time.perf_counter()
                done = subprocess.run(
                    [sys.executable, __file__, "_child", kind, str(scene), str(out),
                     str(window), str(overlap)],
                    capture_output=True, text=True, check=True,
                )  # fmt: skip
                row[f"{kind}_peak_rss_mib"] = round(
                    json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"], 1
                )
                row[f"{kind}_s"] = round(time.perf_counter() - t0, 1)
            scene.unlink()
            rows.append(row)
            print(json.dumps(row), flush=True)
    peaks = [r["geocmid_peak_rss_mib"] for r in rows]
    print(json.dumps({"geocmid_peak_spread": round(max(peaks) / min(peaks) - 1, 3)}))
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _memory_child(*sys.argv[2:5], int(sys.argv[5]), int(sys.argv[6]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", type=int, default=4096)
    t.add_argument("--window", type=int, default=512)
    t.add_argument("--overlap", type=int, default=64)
    t.add_argument("--batch-size", type=int, default=4)
    t.add_argument("--repeats", type=int, default=2)
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[2048, 8192, 16384])
    m.add_argument("--window", type=int, default=512)
    m.add_argument("--overlap", type=int, default=64)
    m.add_argument("--no-naive", action="store_true")
    args = parser.parse_args()
    if args.bench == "throughput":
        print(
            json.dumps(
                throughput(args.size, args.window, args.overlap, args.batch_size, args.repeats)
            )
        )
    else:
        memory(args.sizes, args.window, args.overlap, not args.no_naive)


if __name__ == "__main__":
    main()
