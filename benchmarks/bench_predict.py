"""Scene prediction against the plain windowed loop a competent user would write without geocmid.

Run from the repository root::

    .venv/bin/python benchmarks/bench_predict.py throughput [--size 4096] [--overlaps 0 64]
    .venv/bin/python benchmarks/bench_predict.py memory [--sizes 2048 4096 8192]

Both paths get the same scene, the same model (a 3-layer CNN, or a 1x1 convolution), the same
normalisation, window grid (origins ``i * (window - overlap)``, last window padded), batch size
and torch threads, and both write a tiled, deflate-compressed uint8 class GeoTIFF:

* ``geocmid``: :func:`geocmid.inference.predict_scene` (the public entry point that
  ``geocmid predict`` and :func:`geocmid.workflows.predict` call) with vectors and quick-look
  off. It also blends overlapping windows (softmax, weighted sum), keeps resumable block files,
  writes a COG (with overviews) and a summary JSON: that is what it exists for, and its cost is
  measured here, not removed.
* ``plain``: rasterio window reads → the same normalisation → the same model (``argmax`` of the
  logits) → rasterio window writes of each window's centre (``overlap // 2`` px dropped on every
  side shared with a neighbour: the usual stitching without blending), nodata → 255.
* ``plain-cl``: the same loop with the model converted to channels-last (one line a competent
  user may add; geocmid's ``Predictor`` does it by default), so that what the memory layout
  buys and what geocmid's pipeline costs show apart.

1. ``throughput``: both paths alternated in one process (rotating order, warm-up round
   dropped), ``--rounds`` times per overlap; megapixels/s medians with IQR and min–max, and the
   median of the per-round ratios geocmid / plain. At overlap 0 the two class rasters must agree
   (checked; a mismatch is an error, so the comparison is of the same work).
2. ``memory``: each path in a fresh subprocess per scene size; the child imports torch, rasterio
   and geocmid and builds the model, records that RSS (the import baseline), resets the peak
   (``/proc/self/clear_refs``) and reports the peak RSS of the prediction above the baseline.

Scenes are synthetic smooth patterns (uint8, 3 bands, tiled 512², nodata 0 never present)
written to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import fairness  # noqa: E402

MEAN, STD = 128.0, 60.0


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


def make_model(kind: str = "conv", width: int = 32) -> Any:
    """``conv``: 3 conv layers (3x3), the forward pass dominates as a real model's does;
    ``perpixel``: one 1x1 convolution, so the pipeline's own memory and time show."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "perpixel":
        return nn.Conv2d(3, 2, 1).eval()
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
        nn.Conv2d(width, 2, 3, padding=1),
    ).eval()  # fmt: skip


def card(bands: int = 3) -> dict[str, Any]:
    return {
        "name": "bench", "bands": list(range(1, bands + 1)), "in_chans": bands,
        "mean": [MEAN] * bands, "std": [STD] * bands,
        "classes": [{"value": 0, "name": "a"}, {"value": 1, "name": "b"}],
    }  # fmt: skip


def n_windows(length: int, window: int, overlap: int) -> int:
    """Windows along one axis, geocmid's grid (``AxisLayout.n_windows``)."""
    return 1 if length <= window else math.ceil((length - window) / (window - overlap)) + 1


def plain_loop(model: Any, scene: Path, out: Path, window: int, overlap: int, batch: int) -> int:
    """The plain windowed loop: read a batch of windows, normalise, model, argmax, write centres.

    Returns the number of windows run.
    """
    import rasterio
    import torch
    from rasterio.windows import Window

    with rasterio.open(scene) as src:
        h, w, bands, nodata = src.height, src.width, src.count, src.nodata
        stride = window - overlap
        origins = [
            (i * stride, j * stride)
            for i in range(n_windows(h, window, overlap))
            for j in range(n_windows(w, window, overlap))
        ]
        profile = src.profile.copy()
        profile.update(
            count=1, dtype="uint8", nodata=255, tiled=True, blockxsize=512, blockysize=512,
            compress="deflate",
        )  # fmt: skip
        lo, hi = overlap // 2, overlap - overlap // 2
        with rasterio.open(out, "w", **profile) as dst:
            for k in range(0, len(origins), batch):
                chunk = origins[k : k + batch]
                x = np.zeros((len(chunk), bands, window, window), np.float32)
                valid = np.zeros((len(chunk), window, window), bool)
                for b, (r, c) in enumerate(chunk):
                    hh, ww = min(window, h - r), min(window, w - c)
                    data = src.read(window=Window(c, r, ww, hh))
                    x[b, :, :hh, :ww] = data
                    valid[b, :hh, :ww] = True if nodata is None else (data != nodata).any(0)
                x -= MEAN
                x /= STD
                x *= valid[:, None]
                with torch.inference_mode():
                    cls = model(torch.from_numpy(x)).argmax(1).to(torch.uint8).numpy()
                cls[~valid] = 255
                for b, (r, c) in enumerate(chunk):
                    # keep the centre: drop lo px on a side shared with the previous window and
                    # stop hi px early on a side shared with the next one
                    r0 = lo if r > 0 else 0
                    c0 = lo if c > 0 else 0
                    r1 = min(window - hi if r + window < h else window, h - r)
                    c1 = min(window - hi if c + window < w else window, w - c)
                    dst.write(
                        cls[b, r0:r1, c0:c1], 1, window=Window(c + c0, r + r0, c1 - c0, r1 - r0)
                    )
    return len(origins)


def geocmid_predict(
    model: Any, scene: Path, out_dir: Path, window: int, overlap: int, batch: int
) -> Path:
    """:func:`geocmid.inference.predict_scene`; returns the class raster's path."""
    from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

    result = predict_scene(
        Predictor(model, card()), [scene], out_dir,  # geocmid's defaults (channels-last)
        settings=RunSettings(window=window, overlap=overlap, batch_size=batch),
        options=OutputOptions(vectors=False, quicklook=False), progress=False,
    )  # fmt: skip
    return Path(result.outputs["classes"])


def _agreement(a: Path, b: Path) -> float:
    import rasterio

    with rasterio.open(a) as fa, rasterio.open(b) as fb:
        x, y = fa.read(1).astype(np.int32), fb.read(1).astype(np.int32)
    return float((x == y).mean())


def throughput(
    size: int, window: int, overlaps: list[int], batch: int, rounds: int, width: int,
    model_kind: str = "conv",
) -> list[dict[str, Any]]:  # fmt: skip
    import copy

    import torch

    model = make_model(model_kind, width)
    # Predictor(model) moves the model it is given to its device and memory format (as
    # nn.Module.to does): geocmid gets its own copy, the plain loop the NCHW model a user has,
    # and "plain-cl" the plain loop with the one-line channels-last conversion, to show what
    # the layout alone is worth.
    g_model = copy.deepcopy(model)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    rows = []
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        scene = make_scene(tmp / "scene.tif", size)
        mpx = size * size / 1e6
        for overlap in overlaps:
            outs = {"geocmid": tmp / "g", "plain": tmp / "p", "plain-cl": tmp / "pcl"}

            def run_geocmid(overlap: int = overlap, outs: dict[str, Path] = outs) -> None:
                shutil.rmtree(outs["geocmid"], ignore_errors=True)
                geocmid_predict(g_model, scene, outs["geocmid"], window, overlap, batch)

            def run_plain(
                overlap: int = overlap, outs: dict[str, Path] = outs, key: str = "plain",
                net: Any = model,
            ) -> None:  # fmt: skip
                shutil.rmtree(outs[key], ignore_errors=True)
                outs[key].mkdir()
                plain_loop(net, scene, outs[key] / "classes.tif", window, overlap, batch)

            def run_plain_cl(overlap: int = overlap, outs: dict[str, Path] = outs) -> None:
                run_plain(overlap, outs, "plain-cl", cl_model)

            times = fairness.alternate(
                {"geocmid": run_geocmid, "plain": run_plain, "plain-cl": run_plain_cl}, rounds
            )
            agree = _agreement(outs["geocmid"] / "scene_classes.tif", outs["plain"] / "classes.tif")
            if overlap == 0 and agree < 0.999:
                raise SystemExit(f"overlap 0: the two class rasters agree on only {agree:.4f}")
            g = fairness.spread([mpx / t for t in times["geocmid"]])
            p = fairness.spread([mpx / t for t in times["plain"]])
            pcl = fairness.spread([mpx / t for t in times["plain-cl"]])
            ratio = fairness.paired_ratio(times["plain"], times["geocmid"])
            ratio_cl = fairness.paired_ratio(times["plain-cl"], times["geocmid"])
            windows = n_windows(size, window, overlap) ** 2
            print(f"\nscene {size}², window {window}, overlap {overlap} ({windows} windows), "
                  f"batch {batch}, model {model_kind}; {fairness.load_average()}")  # fmt: skip
            print(f"  geocmid  Mpx/s {fairness.fmt(g)}")
            print(f"  plain    Mpx/s {fairness.fmt(p)}")
            print(f"  plain-cl Mpx/s {fairness.fmt(pcl)}")
            print(f"  geocmid / plain throughput (per-round) {fairness.fmt(ratio)}")
            print(f"  geocmid / plain-cl throughput (per-round) {fairness.fmt(ratio_cl)}")
            print(f"  class rasters agree on {agree:.4%} of pixels")
            rows.append({
                "overlap": overlap, "windows": windows, "geocmid_mpx_s": g, "plain_mpx_s": p,
                "plain_cl_mpx_s": pcl, "ratio": ratio, "ratio_plain_cl": ratio_cl,
                "agreement": agree, "load": fairness.load_average(),
            })  # fmt: skip
    return rows


def _memory_child(kind: str, scene: str, out: str, window: int, overlap: int, batch: int,
                  model_kind: str) -> None:  # fmt: skip
    """Runs in a fresh process; prints JSON with the import baseline and the peak above it."""
    import rasterio  # noqa: F401
    import torch  # noqa: F401

    import geocmid.inference  # noqa: F401

    model = make_model(model_kind)
    base = fairness.rss_mib()
    fairness.reset_peak()
    if kind == "geocmid":
        geocmid_predict(model, Path(scene), Path(out), window, overlap, batch)
    else:
        Path(out).mkdir(parents=True, exist_ok=True)
        plain_loop(model, Path(scene), Path(out) / "classes.tif", window, overlap, batch)
    peak = fairness.peak_mib()
    print(json.dumps({"import_rss_mib": base, "peak_above_import_mib": peak - base}))


def memory(
    sizes: list[int], window: int, overlap: int, batch: int, model_kind: str
) -> list[dict[str, Any]]:
    rows = []
    print(f"peak RSS above the import baseline (torch + rasterio + geocmid + model), window "
          f"{window}, overlap {overlap}, batch {batch}, model {model_kind}; a fresh process per "
          f"run")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        for n, size in enumerate(sizes):
            scene = make_scene(tmp / f"scene{size}.tif", size)
            row: dict[str, Any] = {"scene_px": size}
            kinds = ["geocmid", "plain"] if n % 2 == 0 else ["plain", "geocmid"]
            for kind in kinds:
                out = tmp / f"out-{kind}-{size}"
                done = subprocess.run(
                    [sys.executable, __file__, "_child", kind, str(scene), str(out), str(window),
                     str(overlap), str(batch), model_kind],
                    capture_output=True, text=True,
                )  # fmt: skip
                if done.returncode:
                    raise SystemExit(f"{kind} child failed:\n{done.stderr[-2000:]}")
                child = json.loads(done.stdout.strip().splitlines()[-1])
                row[f"{kind}_import_mib"] = round(child["import_rss_mib"], 1)
                row[f"{kind}_peak_above_import_mib"] = round(child["peak_above_import_mib"], 1)
                shutil.rmtree(out, ignore_errors=True)
            scene.unlink()
            row["load"] = fairness.load_average()
            rows.append(row)
            print(
                f"  {size:>6}²: geocmid +{row['geocmid_peak_above_import_mib']:7.1f} MiB, "
                f"plain +{row['plain_peak_above_import_mib']:7.1f} MiB "
                f"(import baseline {row['geocmid_import_mib']:.0f} MiB); {row['load']}",
                flush=True,
            )
    return rows


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        a = sys.argv[2:]
        _memory_child(a[0], a[1], a[2], int(a[3]), int(a[4]), int(a[5]), a[6])
        return
    doc = __doc__ or ""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="bench", required=True)
    t = sub.add_parser("throughput")
    t.add_argument("--size", type=int, default=4096)
    t.add_argument("--window", type=int, default=512)
    t.add_argument("--overlaps", type=int, nargs="+", default=[0, 64])
    t.add_argument("--batch-size", type=int, default=8, help="geocmid's default")
    t.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up)")
    t.add_argument("--width", type=int, default=32, help="conv channels of the model")
    t.add_argument("--model", choices=["conv", "perpixel"], default="conv")
    t.add_argument("--json", type=Path, help="also write the figures here")
    m = sub.add_parser("memory")
    m.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096, 8192])
    m.add_argument("--window", type=int, default=512)
    m.add_argument("--overlap", type=int, default=64)
    m.add_argument("--batch-size", type=int, default=8)
    m.add_argument("--model", choices=["perpixel", "conv"], default="perpixel")
    m.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.bench == "throughput":
        rows = throughput(
            args.size,
            args.window,
            args.overlaps,
            args.batch_size,
            args.rounds,
            args.width,
            args.model,
        )
    else:
        rows = memory(args.sizes, args.window, args.overlap, args.batch_size, args.model)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
