"""`geocmid fit` on the real chip datasets of ``../shared/data/chips``, one per task, scored on
the held-out split against the trivial baseline of the metric.

For each task this writes a temporary catalog entry over the shared set, runs ``geocmid fit``
(a subprocess of the installed CLI) with the shipped ``recipes/finetune-*chips*.yaml`` and a
short CPU budget (ResNet-18 encoder, **random init**: no ImageNet weights are available
offline), then ``geocmid test`` on the run's ``last.ckpt`` (the last epoch, not the best one by
validation: where the set has no test split the validation images are the test images, and
picking by them would flatter the figure). It prints one table:

| task | dataset | held-out split |
|---|---|---|
| classification (OA) | NWPU-RESISC12 (`train/`, `test/`; val drawn from train) | `test/` |
| segmentation (mIoU) | Dubai aerial Tiles 1-6, no split shipped: train 1,3,4,5, val 2 | Tile 6 |
| detection (mAP@0.5) | DOTA8 YOLO-OBB (`images/train`, `images/val`) | `images/val` (= val) |
| detection-airbus (mAP@0.5) | Airbus aircraft sample, no split shipped: a split file | every 4th |
| change (F1, IoU) | WHU-CD LGPNet samples (`train/`, `test/`; val drawn from train) | `test/` |

Baselines, on the same held-out split and with the same metric definition: OA of always
predicting the training split's majority class; mIoU (torchmetrics macro Jaccard, ignored
pixels left out, as the task computes it) of predicting the training pixels' majority class
everywhere; change F1/IoU of all-no-change (0 by definition; all-change is given too);
detection mAP@0.5 of predicting nothing (0).

The script exits 1 with one line per failure when a fit fails, trains zero steps, or a metric is
NaN or missing.

    python benchmarks/bench_chip_tasks.py [--tasks classification segmentation detection
        detection-airbus change]
        [--out results.json] [--work runs/bench-chip-tasks] [--max-epochs N]

DOTA8 has 4 training images of 15 classes: a random-init detector scores 0 on it in any CPU
budget, so the Airbus aircraft sample (201 boxes, 195 of them whole aircraft) is scored too.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
CHIPS = REPO.parent / "shared/data/chips"
RECIPES = REPO / "recipes"

def _dubai_classes() -> str:
    """The Dubai colour table and ignored colour as the shipped catalog entry defines them."""
    shipped = yaml.safe_load((REPO / "data_catalog" / "dubai-aerial.yaml").read_text())
    return yaml.safe_dump({k: shipped[k] for k in ("classes", "ignore_colors")}, sort_keys=False)


DUBAI_CLASSES = _dubai_classes()

#: Lightning / task settings shared by every run (quiet console, no per-epoch clutter).
COMMON = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
          "trainer.enable_model_summary=false", "data.num_workers=0", "seed_everything=0",
          "model.backbone=resnet18", "model.weights=null"]  # fmt: skip

#: The CPU-sized detector of tests/detection (FPN 64 channels, fewer proposals).
DETECTOR = [
    "model.fpn_channels=64",
    "model.anchor_sizes=[8, 16, 32, 64, 128]",
    "model.scheduler=none",
    "model.backbone_lr=null",
    "model.detector_options={rpn_pre_nms_top_n_train: 300, rpn_post_nms_top_n_train: 150, "
    "rpn_pre_nms_top_n_test: 150, rpn_post_nms_top_n_test: 100, box_batch_size_per_image: 64}",
]


def airbus_split(chips: Path, catalog: Path, split: str) -> Path:
    """A split file of the Airbus sample, which ships none: every 4th image (sorted) held out."""
    images = sorted((chips / "detection/airbus-aircraft/data/valid").glob("*.jpg"))
    chosen = [f.name for i, f in enumerate(images) if (i % 4 == 3) == (split == "val")]
    path = catalog / f"airbus-{split}.txt"
    path.write_text("\n".join(chosen) + "\n")
    return path


TASKS: dict[str, dict[str, Any]] = {
    "classification": {
        "dataset": "NWPU-RESISC12",
        "entry": lambda c, cat: (
            "kind: image_folder\n"
            f"root: {c / 'classification/nwpu-resisc12/NWPU-RESISC12'}\n"
            "splits: {train: train, test: test}\n"
        ),
        "recipe": "finetune-chips-classification.yaml",
        # 256-px JPEGs resized to 96 px; the encoder trains at the head's rate (random init)
        "set": [
            "data.chip_size=96",
            "data.batch_size=32",
            "trainer.max_epochs=5",
            "model.lr=1e-3",
            "model.backbone_lr=null",
        ],
        "metrics": [("OA", "test_OA")],
        "unit": "images",
    },
    "segmentation": {
        "dataset": "Dubai aerial (Tiles 1-6)",
        "entry": lambda c, cat: (
            "kind: chip_segmentation\n"
            f"root: {c / 'segmentation/dubai-aerial/Semantic segmentation dataset'}\n"
            "image_dir: images\nmask_dir: masks\nmask_format: colors\n"
            + DUBAI_CLASSES
            + "splits:\n  train: ['Tile 1', 'Tile 3', 'Tile 4', 'Tile 5']\n"
            "  val: ['Tile 2']\n  test: ['Tile 6']\n"
        ),
        "recipe": "finetune-chips-segmentation.yaml",
        "set": [
            "data.chip_size=128",
            "data.batch_size=8",
            "data.chips_per_epoch=96",
            "trainer.max_epochs=4",
            "model.lr=1e-3",
            "model.backbone_lr=null",
        ],
        "metrics": [("mIoU", "test_mIoU")],
        "unit": "tiles",
    },
    "detection": {
        "dataset": "DOTA8 (YOLO-OBB)",
        "entry": lambda c, cat: (
            "kind: detection_folder\n"
            f"root: {c / 'detection/dota8-obb/datasets/dota8'}\n"
            "format: yolo_obb\n"
            f"classes: {c / 'detection/dota8-obb/dota8.yaml'}\n"
            "splits: {train: images/train, val: images/val}\n"
        ),
        "recipe": "finetune-detection-chips.yaml",
        # 1024-px crops read at half resolution, 256-px windows
        "set": [
            "data.chip_size=256",
            "data.scale=0.5",
            "data.batch_size=2",
            "data.chips_per_epoch=32",
            "data.eval_chips=64",
            "trainer.max_epochs=3",
            *DETECTOR,
        ],
        "metrics": [("mAP@0.5", "test_map_50"), ("OBB mAP@0.5", "test_obb_map_50")],
        "unit": "images",
    },
    "detection-airbus": {
        "dataset": "Airbus aircraft (8 images)",
        "entry": lambda c, cat: (
            "kind: detection_folder\n"
            f"root: {c / 'detection/airbus-aircraft/data'}\n"
            "format: polygon_csv\nimage_dir: valid\nlabels: annotations.csv\n"
            f"splits: {{train: {airbus_split(c, cat, 'train')}, "
            f"val: {airbus_split(c, cat, 'val')}}}\n"
        ),
        "recipe": "finetune-detection-chips.yaml",
        # 2560-px images read at half resolution (aircraft ~50 px), 256-px windows
        "set": [
            "data.chip_size=256",
            "data.scale=0.5",
            "data.batch_size=2",
            "data.chips_per_epoch=48",
            "data.eval_chips=64",
            "trainer.max_epochs=4",
            *DETECTOR,
        ],
        "metrics": [("mAP@0.5", "test_map_50"), ("OBB mAP@0.5", "test_obb_map_50")],
        "unit": "images",
    },
    "change": {
        "dataset": "WHU-CD (LGPNet samples)",
        "entry": lambda c, cat: (
            "kind: chip_change\n"
            f"root: {c / 'change/whu-cd-lgpnet/samples/WHU'}\n"
            "before_dir: image1\nafter_dir: image2\nlabel_dir: label\n"
            "splits: {train: train, test: test}\n"
        ),
        "recipe": "finetune-chips-change.yaml",
        "set": [
            "data.chip_size=128",
            "data.batch_size=8",
            "data.chips_per_epoch=64",
            "trainer.max_epochs=4",
            "model.lr=1e-3",
            "model.backbone_lr=null",
        ],
        "metrics": [("change F1", "test_change_F1"), ("change IoU", "test_change_IoU")],
        "unit": "pairs",
    },
}


class Failure(Exception):
    """A task whose figure cannot be trusted: the message is the one line printed."""


def load_average() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def cli(args: list[str], log: Path) -> tuple[int, str, float]:
    """Run the installed ``geocmid`` CLI; returns exit code, output and wall seconds."""
    exe = Path(sys.executable).with_name("geocmid")
    cmd = [str(exe)] if exe.is_file() else [sys.executable, "-m", "geocmid"]
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - t0
    text = proc.stdout + proc.stderr
    log.write_text("$ geocmid " + " ".join(args) + "\n" + text)
    return proc.returncode, text, wall


def last_error(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if "rror" in ln:
            return ln[:300]
    return lines[-1][:300] if lines else "(no output)"


def datamodule(config: dict[str, Any]) -> Any:
    """The run's datamodule, built from its resolved config and set up (for split sizes)."""
    data = config["data"]
    module, _, name = data["class_path"].rpartition(".")
    dm = getattr(importlib.import_module(module), name)(**data["init_args"])
    dm.setup("fit")
    with contextlib.suppress(Exception):  # the sizes are a courtesy; the fit succeeded
        dm.setup("test")
    return dm


def split_sizes(dm: Any) -> dict[str, int]:
    for attr in ("images", "index"):  # detection_folder, chipsets
        value = getattr(dm, attr, None)
        if isinstance(value, dict) and "train" in value:
            return {s: len(value.get(s, [])) for s in ("train", "val", "test")}
    splits = getattr(dm, "splits", None)  # ImageFolderDataModule: [train, val, test] indices
    if isinstance(splits, list) and len(splits) == 3:
        return {s: len(ids) for s, ids in zip(("train", "val", "test"), splits, strict=True)}
    return {}


# ---- trivial baselines ---------------------------------------------------------------------------
def baseline(task: str, dm: Any) -> str:
    if task == "classification":
        from geocmid.data.chipsets import records

        labels = np.asarray(records(dm.catalog.get(dm.hparams.entry)).labels)
        train, test = (np.asarray(dm.splits[0]), np.asarray(dm.splits[2]))
        majority = np.bincount(labels[train]).argmax()
        return f"majority class OA {np.mean(labels[test] == majority):.3f}"
    if task.startswith("detection"):
        return "no detections mAP 0"
    from geocmid.data.chipsets import mask_decoder

    entry = dm.catalog.get(dm.hparams.entry)
    decode = mask_decoder(entry)
    files = dm.recs.files

    def masks(split: str) -> list[np.ndarray]:
        return [decode(files[i][-1]) for i in dm.index[split]]

    if task == "change":
        m = np.concatenate([x.ravel() for x in masks("test")])
        p = float(np.mean(m[m != 255] == 1))
        return f"all-no-change F1 0, IoU 0; all-change F1 {2 * p / (1 + p):.3f}, IoU {p:.3f}"
    import torch
    from torchmetrics.classification import MulticlassJaccardIndex

    n = len(dm.recs.classes)
    counts = sum(np.bincount(x[x != 255].ravel(), minlength=n) for x in masks("train"))
    majority = int(np.argmax(counts))
    metric = MulticlassJaccardIndex(n, average="macro", ignore_index=255)
    for x in masks("test"):
        t = torch.from_numpy(x.astype(np.int64))
        metric.update(torch.full_like(t, majority), t)
    name = dm.recs.classes[majority]
    return f"all-'{name}' (train majority) mIoU {float(metric.compute()):.3f}"


# ---- one task ------------------------------------------------------------------------------------
def run_task(task: str, spec: dict[str, Any], work: Path, max_epochs: int | None) -> dict:
    folder = work / task
    if folder.exists():
        shutil.rmtree(folder)  # a leftover last.ckpt would resume instead of training afresh
    catalog = folder / "catalog"
    catalog.mkdir(parents=True)
    (catalog / "chips.yaml").write_text(spec["entry"](CHIPS, catalog))
    out = folder / "run"
    overrides = [*COMMON, *spec["set"], "data.entry=chips"]
    if max_epochs is not None:
        overrides.append(f"trainer.max_epochs={max_epochs}")
    args = ["--catalog", str(catalog), "fit", "--config", str(RECIPES / spec["recipe"]),
            "--out", str(out), *[a for o in overrides for a in ("--set", o)]]  # fmt: skip
    load_before = load_average()
    rc, text, fit_s = cli(args, folder / "fit.log")
    row: dict[str, Any] = {"task": task, "dataset": spec["dataset"], "load_before": load_before,
                           "fit_command": "geocmid " + " ".join(args), "fit_s": fit_s}  # fmt: skip
    if rc != 0:
        raise Failure(f"{task}: geocmid fit exited {rc}: {last_error(text)} (log {folder}/fit.log)")
    status = json.loads((out / "status.json").read_text())
    row["steps"], row["epochs"] = int(status.get("global_step", 0)), int(status.get("epoch", 0))
    if row["steps"] == 0:
        raise Failure(f"{task}: geocmid fit trained zero steps (log {folder}/fit.log)")
    ckpt = out / "checkpoints" / "last.ckpt"
    targs = ["--catalog", str(catalog), "test", "--config", str(out / "config.yaml"),
             "--ckpt", str(ckpt), "--set", "trainer.enable_progress_bar=false"]  # fmt: skip
    rc, text, test_s = cli(targs, folder / "test.log")
    row["test_command"], row["test_s"] = "geocmid " + " ".join(targs), test_s
    row["load_after"] = load_average()
    if rc != 0:
        raise Failure(
            f"{task}: geocmid test exited {rc}: {last_error(text)} (log {folder}/test.log)"
        )
    printed = dict(re.findall(r"^(test_\S+)\s+(-?[\d.]+|nan|-?inf)\s*$", text, re.M))
    row["metrics"] = {}
    for name, key in spec["metrics"]:
        value = float(printed.get(key, "nan"))
        row["metrics"][name] = value
        if not math.isfinite(value):
            raise Failure(f"{task}: {key} is {printed.get(key, 'missing')} after "
                          f"{row['steps']} steps (log {folder}/test.log)")  # fmt: skip
    config = yaml.safe_load((out / "config.yaml").read_text())
    dm = datamodule(config)
    row["sizes"] = split_sizes(dm)
    row["baseline"] = baseline(task, dm)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    head = ("| task | dataset | train / val / test | epochs / steps | fit + test wall (s) | "
            "metric (test) | trivial baseline | load before → after |")  # fmt: skip
    lines = [head, "|" + "---|" * 8]
    for r in rows:
        s = r["sizes"]
        sizes = f"{s.get('train', '?')} / {s.get('val', '?')} / {s.get('test', '?')} {r['unit']}"
        metric = ", ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items())
        lines.append(
            f"| {r['task']} | {r['dataset']} | {sizes} | {r['epochs']} / {r['steps']} | "
            f"{r['fit_s']:.0f} + {r['test_s']:.0f} | {metric} | {r['baseline']} | "
            f"{r['load_before']} → {r['load_after']} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS))
    parser.add_argument("--out", type=Path, help="write the rows as JSON here")
    parser.add_argument("--work", type=Path, default=REPO / "runs/bench-chip-tasks",
                        help="run folders (emptied per task)")  # fmt: skip
    parser.add_argument("--max-epochs", type=int, help="override every task's epochs")
    args = parser.parse_args()
    if not CHIPS.is_dir():
        print(f"bench_chip_tasks: {CHIPS} not found (the shared chip datasets)")
        return 1
    rows, failures = [], []
    for task in args.tasks:
        spec = TASKS[task]
        print(f"{task}: fitting on {spec['dataset']} (load {load_average()}) ...", flush=True)
        try:
            row = run_task(task, spec, args.work.resolve(), args.max_epochs)
        except Failure as error:
            failures.append(str(error))
            print(f"  FAILED: {error}", flush=True)
            continue
        row["unit"] = spec["unit"]
        rows.append(row)
        scores = ", ".join(f"{k} {v:.3f}" for k, v in row["metrics"].items())
        print(f"  {row['steps']} steps in {row['fit_s']:.0f} s; {scores}", flush=True)
    threads = os.environ.get("OMP_NUM_THREADS", "torch default")
    print(f"\nResNet-18, random init, CPU (threads: {threads}); settings per task in TASKS; "
          "last.ckpt scored on the held-out split")  # fmt: skip
    if rows:
        print(table(rows))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"rows": rows, "failures": failures}, indent=2))
    for line in failures:
        print(f"bench_chip_tasks: FAILED {line}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
