"""Learning evidence: CMID vs TorchGeo's MoCo v2 and BYOL vs random init, kNN and linear probes.

On a labelled image-folder set (default: the NWPU-RESISC45 12-class subset in ``../shared``), a
ResNet-18 is pretrained on the *train* images without labels by each method at an equal budget,
then probed on frozen global-average-pooled features: kNN top-1 (k = 20, cosine, DINO-style
``exp(sim / 0.07)`` votes: :func:`geocmid.cmid.callbacks.knn_accuracy`) and linear-probe top-1
(multinomial logistic regression on standardised features, L-BFGS, fixed L2), both trained on the
train folder and scored on the fixed held-out *test* folder. Labels are read only by the probes.

Budgets (``--budgets``, minutes) are **equal CPU time** by default (``time.process_time`` of
this process, all threads: on a shared machine wall time measures the neighbours): each
method's CPU time per step is measured first (a throwaway run, not counted), and it then trains
``budget / step time`` optimizer steps with its schedules set for that many steps; the report
gives steps, images seen, CPU and wall seconds. ``--budget-kind images`` makes the budgets
thousands of images seen instead.

Methods (all ResNet-18, batch 64, the same normalised chips, seeds fixed):

* ``cmid``: :class:`geocmid.cmid.CMIDTask` with its defaults, i.e. the paper's settings and what
  geocmid derives for the chip size, the run length and the number of images (mask block, matches,
  warm-ups, EMA, key queue), told the data as geocmid's chip datamodule tells it; nothing tuned
  here;
* ``moco``: ``torchgeo.tasks.MoCo`` version 2 with MoCo v2's settings (2-layer 2048→128 head,
  T = 0.07, 65,536 queue, key momentum 0.999, SGD lr 0.03 × batch / 256, wd 1e-4), its own
  augmentations at the chip size;
* ``byol``: ``torchgeo.tasks.BYOL`` with its defaults (Adam lr 1e-3); its augmentation resizes to
  224 px, which is replaced by the same augmentation at the chip size (else it computes 12× the
  pixels of the others at 64 px);
* ``random``: the randomly initialised network (no training).

Before the probes every network's BatchNorm statistics are re-estimated on the clean train
images (train mode, no gradients), the same for all methods, so random init is not handicapped by
its untouched running statistics.

Run (short budgets on a shared 2-core CPU; the issue's target needs ≥ 20 minutes)::

    .venv/bin/python benchmarks/bench_probe.py --budgets 2,4 --chip-size 64
    .venv/bin/python benchmarks/bench_probe.py --budgets 20,40,80 --chip-size 64 --threads 2 \\
        --out runs/bench_probe.json                      # the issue's full curve
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader

DEFAULT_DATA = Path(__file__).resolve().parents[1] / (
    "../shared/data/chips/classification/nwpu-resisc12/NWPU-RESISC12"
)
METHODS = ("cmid", "moco", "byol", "random")


# ------------------------------------------------------------------------------------------------
# data
def load_split(root: Path, size: int) -> tuple[Tensor, Tensor, list[str]]:
    """``root/<class>/*.jpg|png|tif`` → float ``[N, 3, size, size]`` in [0, 1], labels, classes."""
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        sys.exit(f"error: {root} has no class folders; give --data a folder with train/ and test/")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in (".jpg", ".jpeg", ".png", ".tif", ".tiff"):
                continue
            with Image.open(path) as img:
                img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
                images.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
                labels.append(label)
    x = torch.stack(images).float() / 255.0
    return x, torch.tensor(labels), classes


class Chips(torch.utils.data.Dataset):
    """Unlabelled normalised chips as ``{"image": [3, S, S]}`` samples (what the tasks read)."""

    def __init__(self, images: Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i]}


# ------------------------------------------------------------------------------------------------
# methods: each builds a Lightning module and says how to get its backbone's pooled features
def build(
    method: str, size: int, batch: int, mean: list[float], std: list[float],
    cmid_set: dict[str, Any] | None = None,
) -> Any:  # fmt: skip
    """The Lightning task of ``method`` for 3-band ``size`` px chips and per-device ``batch``;
    ``cmid_set``: CMIDTask arguments overriding its defaults (ablations, named in the report)."""
    warnings.filterwarnings("ignore", message=".*MoCo v2.*")
    if method == "cmid":
        from geocmid.cmid.task import CMIDTask

        return CMIDTask(
            "resnet18", in_chans=3, chip_size=size, bands=["red", "green", "blue"],
            rgb_bands=["red", "green", "blue"], mean=[m * 255 for m in mean],
            std=[s * 255 for s in std], data="bench_probe", batch_size=batch,
            **(cmid_set or {}),
        )  # fmt: skip
    if method == "moco":
        from torchgeo.tasks import MoCo

        return MoCo(
            "resnet18", in_channels=3, version=2, layers=2, hidden_dim=2048, output_dim=128,
            lr=0.03 * batch / 256, weight_decay=1e-4, momentum=0.9, temperature=0.07,
            memory_bank_size=65536, moco_momentum=0.999, size=size,
        )  # fmt: skip
    if method == "byol":
        from torchgeo.tasks import BYOL
        from torchgeo.tasks.byol import SimCLRAugmentation

        task = BYOL("resnet18", in_channels=3)
        task.model.augment = SimCLRAugmentation((size, size))
        return task
    if method == "random":
        import timm

        return timm.create_model("resnet18", in_chans=3, num_classes=0)
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def encoder(method: str, task: Any) -> nn.Module:
    """The network whose pooled features are probed (CMID: the exported student backbone)."""
    if method == "cmid":
        backbone = task.model.backbone

        class Pooled(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.backbone = backbone

            def forward(self, x: Tensor) -> Tensor:
                return self.backbone(x).mean(dim=(2, 3))

        return Pooled()
    if method == "moco":
        return task.backbone
    if method == "byol":
        return task.model.backbone.model
    return task


# ------------------------------------------------------------------------------------------------
# probes
@torch.no_grad()
def recalibrate_bn(net: nn.Module, images: Tensor, batch: int = 100) -> None:
    """Re-estimate BatchNorm running statistics on ``images`` (cumulative average, train mode)."""
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    for i in range(0, len(images), batch):
        net(images[i : i + batch])
    for m, mom in zip(bns, saved, strict=True):
        m.momentum = mom
    net.eval()


@torch.no_grad()
def features(net: nn.Module, images: Tensor, batch: int = 100) -> Tensor:
    net.eval()
    return torch.cat([net(images[i : i + batch]).float() for i in range(0, len(images), batch)])


def linear_probe(
    train_z: Tensor, train_y: Tensor, test_z: Tensor, test_y: Tensor, l2: float = 1e-3
) -> float:
    """Top-1 of a multinomial logistic regression on standardised features (L-BFGS, fixed L2)."""
    mu, sd = train_z.mean(0), train_z.std(0).clamp_min(1e-6)
    a, b = (train_z - mu) / sd, (test_z - mu) / sd
    classes = int(train_y.max()) + 1
    lin = nn.Linear(a.shape[1], classes)
    opt = torch.optim.LBFGS(lin.parameters(), lr=1.0, max_iter=500, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(lin(a), train_y) + l2 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float((lin(b).argmax(1) == test_y).float().mean())


def probe(net: nn.Module, data: dict[str, Tensor]) -> dict[str, float]:
    from geocmid.cmid.callbacks import embedding_health, knn_accuracy

    recalibrate_bn(net, data["train_x"])
    tr, te = features(net, data["train_x"]), features(net, data["test_x"])
    health = embedding_health(tr)
    return {
        "knn": 100 * knn_accuracy(tr, data["train_y"], te, data["test_y"], k=20),
        "linear": 100 * linear_probe(tr, data["train_y"], te, data["test_y"]),
        "feat_std_norm": float(health["std_norm"]),
    }


# ------------------------------------------------------------------------------------------------
# training at a budget
class StepTimer:
    """Lightning callback: CPU time (this process, all threads) of each optimizer step."""

    def __init__(self) -> None:
        import lightning as L

        class _CB(L.Callback):
            def __init__(cb) -> None:
                cb.starts: list[float] = []
                cb.ends: list[float] = []
                cb.losses: list[float] = []

            def on_train_batch_start(cb, *args: Any) -> None:
                cb.starts.append(time.process_time())

            def on_train_batch_end(cb, trainer: Any, task: Any, outputs: Any, *args: Any) -> None:
                cb.ends.append(time.process_time())
                loss = outputs["loss"] if isinstance(outputs, dict) else outputs
                cb.losses.append(float(loss))

        self.callback = _CB()


def fit(task: Any, chips: Tensor, batch: int, steps: int, seed: int) -> StepTimer:
    import lightning as L

    timer = StepTimer()
    loader = DataLoader(
        Chips(chips), batch_size=batch, shuffle=True, drop_last=True, num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip

    class Data(L.LightningDataModule):
        """The loader, plus what geocmid's chip datamodule tells CMIDTask about the data (the
        number of distinct images sizes its key queue); the other tasks ignore it."""

        def train_dataloader(self) -> DataLoader:
            return loader

        def task_args(self) -> dict[str, Any]:
            return {"batch_size": batch, "chip_size": chips.shape[-1], "num_images": len(chips)}

    trainer = L.Trainer(
        max_steps=steps, max_epochs=-1, accelerator="cpu", devices=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer.callback], num_sanity_val_steps=0,
    )  # fmt: skip
    trainer.fit(task, datamodule=Data())
    if trainer.global_step != steps:
        raise RuntimeError(f"trained {trainer.global_step} of {steps} steps")
    losses = timer.callback.losses
    if not losses or not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite or missing losses: {losses[-5:]}")
    return timer


def step_time(method: str, make: Callable[[], Any], chips: Tensor, batch: int, seed: int) -> float:
    """Median CPU time of an optimizer step (steps 3–5 of a throwaway run)."""
    torch.manual_seed(seed)
    timer = fit(make(), chips, batch, 5, seed)
    cb = timer.callback
    times = [e - s for s, e in zip(cb.starts[2:], cb.ends[2:], strict=True)]
    return float(np.median(times))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help="folder with train/<class>/ and test/<class>/ images")  # fmt: skip
    parser.add_argument("--budgets", default="2,4",
                        help="comma-separated: minutes (time) or 1000s of images")  # fmt: skip
    parser.add_argument("--budget-kind", choices=("time", "images"), default="time")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cmid-set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a CMIDTask default (YAML value), e.g. "
                        "ema_momentum=[0.99,1.0]; an ablation, not the derived settings")
    args = parser.parse_args(argv)
    import yaml

    cmid_set: dict[str, Any] = {}
    for item in args.cmid_set:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--cmid-set {item!r}: use KEY=VALUE")
        cmid_set[key.strip()] = yaml.safe_load(value)

    torch.set_num_threads(args.threads)
    os.environ.setdefault("PL_DISABLE_FORK", "1")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    if not (args.data / "train").is_dir() or not (args.data / "test").is_dir():
        print(f"error: {args.data} needs train/ and test/ class folders", file=sys.stderr)
        return 2
    size, batch = args.chip_size, args.batch_size
    train_x, train_y, classes = load_split(args.data / "train", size)
    test_x, test_y, test_classes = load_split(args.data / "test", size)
    if test_classes != classes:
        print("error: train/ and test/ have different classes", file=sys.stderr)
        return 2
    mean = train_x.mean(dim=(0, 2, 3))
    std = train_x.std(dim=(0, 2, 3))

    def norm(x: Tensor) -> Tensor:
        return (x - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)

    data = {"train_x": norm(train_x), "train_y": train_y, "test_x": norm(test_x), "test_y": test_y}
    print(
        f"data: {len(train_x)} train (unlabelled for pretraining) / {len(test_x)} test images, "
        f"{len(classes)} classes, {size} px, batch {batch}, {args.threads} thread(s)",
        flush=True,
    )
    budgets = [float(b) for b in args.budgets.split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results: list[dict[str, Any]] = []

    def make_factory(method: str) -> Callable[[], Any]:
        return lambda: build(method, size, batch, mean.tolist(), std.tolist(), cmid_set)

    if "random" in methods:
        torch.manual_seed(args.seed)
        r = probe(encoder("random", build("random", size, batch, [], [])), data)
        results.append({"method": "random", "budget": 0, "steps": 0, "images": 0, "wall_s": 0,
                        "cpu_s": 0, **r})  # fmt: skip
        print(f"random init: kNN {r['knn']:.1f}  linear {r['linear']:.1f}", flush=True)
    step_s: dict[str, float] = {}
    for budget in budgets:
        for method in (m for m in methods if m != "random"):
            make = make_factory(method)
            if args.budget_kind == "time":
                if method not in step_s:
                    step_s[method] = step_time(method, make, data["train_x"], batch, args.seed)
                    print(f"{method}: {step_s[method]:.2f} CPU s/step", flush=True)
                steps = max(1, int(budget * 60 / step_s[method]))
            else:
                steps = max(1, round(budget * 1000 / batch))
            torch.manual_seed(args.seed)
            task = make()
            t0, c0 = time.perf_counter(), time.process_time()
            timer = fit(task, data["train_x"], batch, steps, args.seed)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            r = probe(encoder(method, task), data)
            row = {"method": method, "budget": budget, "steps": steps, "images": steps * batch,
                   "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                   "first_loss": timer.callback.losses[0],
                   "last_loss": float(np.mean(timer.callback.losses[-5:])), **r}  # fmt: skip
            if method == "cmid":
                if cmid_set:
                    row["cmid_set"] = cmid_set
                s, g = task.run_schedule(), task.model.geometry
                row["derived"] = {
                    "mask_block": g.mask_block, "masked_fraction": round(g.masked_fraction, 3),
                    "grid": g.grid_size, "num_matches": g.num_matches,
                    "warmup_steps": s.warmup_steps,
                    "teacher_temp_warmup_steps": s.teacher_temp_warmup_steps,
                    "ema_start": round(s.ema_start, 4),
                    "queue_size": task.hparams["queue_size"],
                }  # fmt: skip
            results.append(row)
            print(
                f"{method:6s} budget {budget:g}: {steps} steps ({steps * batch} images, "
                f"{cpu:.0f} CPU s, {wall:.0f} s wall)  kNN {r['knn']:.1f}  "
                f"linear {r['linear']:.1f}  "
                f"loss {row['first_loss']:.3f} → {row['last_loss']:.3f}"
                + (f"  derived {row['derived']}" if "derived" in row else ""),
                flush=True,
            )
            if args.out:
                _write(args.out, args, results)
    unit = "min" if args.budget_kind == "time" else "k images"
    print(f"\n| method | budget ({unit}) | steps | images seen | CPU s | kNN | linear |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['budget']:g} | {r['steps']} | {r['images']} | "
              f"{r['cpu_s']} | {r['knn']:.1f} | {r['linear']:.1f} |")  # fmt: skip
    if args.out:
        _write(args.out, args, results)
    return 0


def _write(path: Path, args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    meta = {k: str(v) for k, v in vars(args).items()}
    tmp.write_text(json.dumps({"args": meta, "results": results}, indent=1))
    tmp.replace(path)


if __name__ == "__main__":
    raise SystemExit(main())
