"""Dask-distributed prediction throughput: megapixels/s with 1 and 2 local workers.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict_dask.py [--size 1024] [--repeats 5] [--workers 1 2]

Two local clusters (one per worker count, one thread per worker, started before timing and kept)
predict the same synthetic scene (after one untimed warm-up round: worker imports and model
loading happen once per worker, not per job), alternating between them ``--repeats`` times so
that load from other processes on the machine hits both alike; each run writes a fresh output
folder, so every block is computed. A single-process ``predict_scene`` run (torch's default
threads) is timed in the same rotation for reference. Reported: the median megapixels/s (scene
pixels /
wall time of the whole call, including assembly and COG writing) and the min-max spread, and
the ratio of medians against 1 worker. ``--device auto`` gives each worker its GPU when it has
one. The model is a small 3x3 CNN (32 channels), enough that the forward pass dominates.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests" / "inference"))


def build_model() -> Any:
    """A deterministic 3x3 CNN, 3 bands → 4 classes (module-level: picklable for workers)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 4, 3, padding=1),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024, help="scene side, pixels")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--block-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto (per worker)")
    parser.add_argument("--json", help="also write the figures to this JSON file")
    args = parser.parse_args()

    import distributed
    from bench_predict import make_scene

    from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
    from geocmid.inference.distributed import SceneRun, predict_scenes
    from geocmid.inference.loading import resolve_device

    card = {
        "name": "bench", "bands": [1, 2, 3], "in_chans": 3, "mean": [128.0] * 3,
        "std": [60.0] * 3, "classes": [{"value": k, "name": f"c{k}"} for k in range(4)],
    }  # fmt: skip
    settings = RunSettings(window=args.window, overlap=32, block_size=args.block_size)
    options = OutputOptions(vectors=False, quicklook=False)
    predictor = Predictor(build_model(), card, device=resolve_device(args.device))
    megapixels = args.size * args.size / 1e6
    with tempfile.TemporaryDirectory(prefix="geocmid-bench-dask-") as tmp:
        scene = make_scene(Path(tmp) / "scene.tif", args.size)
        clients = {}
        for n in args.workers:
            cluster = distributed.LocalCluster(
                n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                silence_logs=logging.ERROR,
            )  # fmt: skip
            clients[n] = distributed.Client(cluster)
        times: dict[str, list[float]] = {"single process": []}
        times.update({f"{n} worker(s)": [] for n in args.workers})
        run = 0
        for repeat in range(args.repeats + 1):  # round 0 warms up (imports, model loading)
            for label in times:
                run += 1
                out = Path(tmp) / f"out{run}"
                start = time.perf_counter()
                if label == "single process":
                    predict_scene(predictor, [scene], out, "s", settings, options, progress=False)
                else:
                    n = int(label.split()[0])
                    predict_scenes(
                        predictor, [SceneRun([scene], "s")], out, settings, options,
                        client=clients[n], progress=False,
                    )  # fmt: skip
                if repeat:
                    times[label].append(time.perf_counter() - start)
        for client in clients.values():
            cluster = client.cluster
            client.close()
            cluster.close()
    rows = {}
    base = None
    for label, values in times.items():
        rates = [megapixels / t for t in values]
        median = statistics.median(rates)
        if label.startswith(f"{args.workers[0]} worker"):
            base = median
        rows[label] = {"median_mpx_s": median, "min": min(rates), "max": max(rates)}
    print(f"scene {args.size} x {args.size} px, window {args.window}, block {args.block_size}, "
          f"{args.repeats} alternated repeats, device {args.device}")  # fmt: skip
    for label, row in rows.items():
        ratio = f"  x{row['median_mpx_s'] / base:.2f} vs {args.workers[0]} worker" if base else ""
        print(
            f"{label:16s} median {row['median_mpx_s']:.3f} MPx/s "
            f"(min {row['min']:.3f}, max {row['max']:.3f}){ratio}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": rows}, indent=1))


if __name__ == "__main__":
    main()
