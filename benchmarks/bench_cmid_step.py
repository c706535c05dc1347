"""CMID's training step against the authors' step structure, TorchGeo's BYOL and MoCo, and where
its time goes.

All on random input in one process (no data loading), same backbone, batch and chip size, every
comparison alternated in rounds (rotating order, warm-up dropped; see ``fairness.py``):

1. **Step vs the authors' step structure** (hand-driven steps, no Lightning, so only the step
   differs). Both use the same networks and losses (geocmid's ``CMIDModel``, built twice from one
   seed) and timm's Adan:

   * ``geocmid``: the step ``CMIDTask`` runs: channels-last weights (``channels_last=True``),
     views on the device, ``forward_losses``, backward,
     ``Adan(foreach=True)`` (one multi-tensor update; timm picks it by default only on CUDA),
     ``zero_grad(set_to_none=True)``, the fused EMA (``ema_foreach``);
   * ``authors``: the official loop's structure: NCHW weights (PyTorch's default), the same
     views and losses, backward, Adan with
     timm's default (the per-parameter loop on the CPU, as the official configuration runs it),
     ``loss.item()`` for the logger every step (a host sync), then the per-parameter EMA
     (``MomentumUpdater``: two ops per tensor; here ``CMIDModel.update_teacher``).

   A micro-comparison times the teacher on the two views as two passes of B (the official code,
   geocmid today) against one pass of 2B (possible only where the method allows it: with
   BatchNorm in train mode the batch statistics change, so not for the ResNets).

2. **CMID vs BYOL vs MoCo under Lightning**: ``CMIDTask``, ``torchgeo.tasks.BYOL`` and
   ``torchgeo.tasks.MoCo`` with the same Trainer settings; each round fits every task for
   ``--lightning-steps`` + 1 steps (fresh Trainer; the first step of each fit is dropped); a step
   is the gap between consecutive ``on_train_batch_start`` calls (forward, backward, optimizer,
   EMA, logging).

3. **Profile** (``torch.profiler``) of ``--profile-steps`` geocmid steps: time per phase (views,
   forward + losses, backward, optimizer, EMA) and the top operators by self CPU time.

    python benchmarks/bench_cmid_step.py                 # ResNet-50, 224 px, batch 8 (headline)
    python benchmarks/bench_cmid_step.py --small         # ResNet-18, 96 px, batch 8
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.data import DataLoader

from geocmid.cmid.task import CMIDTask, ema_foreach, param_groups

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairness

TEACHER_TEMP = 0.04
TAU = 0.996
LR = 1e-4


class _StepTimer(L.Callback):
    """Timestamps of every ``on_train_batch_start`` plus the end of training."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())


class HandStep:
    """One CMID model + optimizer driven by hand; :meth:`step` is one training step."""

    def __init__(self, args: argparse.Namespace, device: torch.device, structure: str) -> None:
        from timm.optim import Adan

        torch.manual_seed(0)
        self.task = CMIDTask(args.backbone, args.bands, args.size, batch_size=args.batch)
        self.model = self.task.model.to(device).train()
        if structure == "authors":  # the official code keeps PyTorch's default NCHW weights
            self.model.to(memory_format=torch.contiguous_format)
        self.structure = structure
        foreach = None if structure == "authors" else True  # CMIDTask.configure_optimizers
        self.opt = Adan(param_groups(self.model, 0.02), lr=LR, eps=1e-8, foreach=foreach)
        self.gen = torch.Generator(device=device).manual_seed(0)
        self.x = {"image": torch.randn(args.batch, args.bands, args.size, args.size, device=device)}
        self.amp = torch.autocast(
            device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed"
        )
        self.losses: list[float] = []

    def step(self) -> None:
        with record_function("views"), torch.autocast(self.x["image"].device.type, enabled=False):
            views = self.task.views(self.x, self.gen)
        with record_function("forward_losses"), self.amp:
            loss = self.model.forward_losses(views, TEACHER_TEMP)["loss"]
        with record_function("backward"):
            loss.backward()
        with record_function("optimizer"):
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        if self.structure == "authors":
            self.losses.append(loss.item())  # the official logger reads the loss every step
            with record_function("ema"):
                self.model.update_teacher(TAU)  # per-parameter MomentumUpdater
        else:
            with record_function("ema"):
                ema_foreach(self.model, TAU)


def sync_of(device: torch.device) -> Callable[[], None] | None:
    return torch.cuda.synchronize if device.type == "cuda" else None


def step_comparison(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    names = ["geocmid", "authors"]
    steps = {n: HandStep(args, device, n) for n in names}
    times = fairness.alternate(
        {n: s.step for n, s in steps.items()}, args.rounds, args.warmup, sync_of(device)
    )
    print(f"\n(1) training step, hand-driven, s/step; {fairness.load_average()}")
    out: dict[str, Any] = {"load": fairness.load_average()}
    for n, ts in times.items():
        s = fairness.spread(ts)
        line = f"  {n:<13} {fairness.fmt(s)}"
        if n != "geocmid":
            r = fairness.paired_ratio(times[n], times["geocmid"])
            line += f"\n      {n}/geocmid time (per round; > 1: geocmid faster) {fairness.fmt(r)}"
            out[f"{n}_over_geocmid"] = r
        print(line)
        out[n] = s
    model = steps["geocmid"].model
    x = steps["geocmid"].x["image"]

    def two_passes() -> None:
        with torch.no_grad():
            model.teacher(x)
            model.teacher(x)

    def one_pass() -> None:
        with torch.no_grad():
            model.teacher(torch.cat([x, x]))

    t = fairness.alternate(
        {"2xB": two_passes, "1x2B": one_pass}, args.rounds, args.warmup, sync_of(device)
    )
    r = fairness.paired_ratio(t["2xB"], t["1x2B"])
    print(f"  teacher on two views: two passes of B {fairness.fmt(fairness.spread(t['2xB']))} s")
    print(f"                        one pass of 2B  {fairness.fmt(fairness.spread(t['1x2B']))} s")
    print(f"      two/one time (per round) {fairness.fmt(r)}")
    out["teacher_two_over_one"] = r
    del steps
    return out


def lightning_comparison(args: argparse.Namespace) -> dict[str, Any]:
    from torchgeo.tasks import BYOL, MoCo
    from torchgeo.tasks.byol import SimCLRAugmentation

    L.seed_everything(0, verbose=False)
    byol = BYOL(model=args.backbone, in_channels=args.bands)
    byol.model.augment = SimCLRAugmentation((args.size, args.size))  # its default is 256 px
    tasks: dict[str, L.LightningModule] = {
        "CMID": CMIDTask(args.backbone, args.bands, args.size, batch_size=args.batch),
        "BYOL": byol,
        "MoCo": MoCo(model=args.backbone, in_channels=args.bands, size=args.size, version=3),
    }
    n = args.lightning_steps + 1
    data = [{"image": torch.randn(args.bands, args.size, args.size)} for _ in range(n * args.batch)]
    gaps: dict[str, list[float]] = {k: [] for k in tasks}
    names = list(tasks)
    for r in range(args.lightning_rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            timer = _StepTimer()
            trainer = L.Trainer(
                max_epochs=1, limit_train_batches=n, accelerator=args.accelerator, devices=1,
                precision=args.precision, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
            )  # fmt: skip
            trainer.fit(tasks[name], DataLoader(data, batch_size=args.batch))
            st = timer.stamps
            gaps[name] += [b - a for a, b in itertools.pairwise(st[1:])]  # first step dropped
            # printed as they come, so partial figures survive an interrupted run
            print(
                f"  round {r} {name}: " + " ".join(f"{g:.3f}" for g in gaps[name][-n + 1 :]),
                flush=True,
            )
    print(f"\n(2) training step under Lightning, s/step; {fairness.load_average()}")
    out: dict[str, Any] = {"load": fairness.load_average()}
    for name, g in gaps.items():
        s = fairness.spread(g)
        out[name] = s
        rel = (
            ""
            if name == "CMID"
            else f"   CMID/{name} (medians) {out['CMID']['median'] / s['median']:.2f}"
        )
        print(f"  {name:<5} {fairness.fmt(s)}{rel}")
    print("  (MoCo v3; BYOL with SimCLR augmentation at the chip size)")
    return out


def profile_steps(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    step = HandStep(args, device, "geocmid")
    for _ in range(args.warmup):
        step.step()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(args.profile_steps):
            step.step()
    averages = prof.key_averages()
    phases = {e.key: e.cpu_time_total / 1e6 / args.profile_steps for e in averages
              if e.key in ("views", "forward_losses", "backward", "optimizer", "ema")}  # fmt: skip
    total = sum(phases.values())
    print(f"\n(3) profile of {args.profile_steps} geocmid steps; {fairness.load_average()}")
    for key in ("views", "forward_losses", "backward", "optimizer", "ema"):
        v = phases.get(key, 0.0)
        print(f"  {key:<15} {v:8.3f} s/step  {v / total:6.1%}")
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(averages.table(sort_by=sort, row_limit=args.top_ops, max_name_column_width=40))
    return phases


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--small", action="store_true", help="resnet18, 96 px (batch unchanged)")
    p.add_argument("--rounds", type=int, default=7, help="timed rounds of part 1")
    p.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    p.add_argument("--lightning-rounds", type=int, default=3, help="rounds of part 2")
    p.add_argument("--lightning-steps", type=int, default=3, help="timed steps per fit")
    p.add_argument("--profile-steps", type=int, default=2)
    p.add_argument("--top-ops", type=int, default=15)
    p.add_argument("--parts", nargs="+", default=["step", "lightning", "profile"],
                   choices=["step", "lightning", "profile"])  # fmt: skip
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    if args.small:
        args.backbone, args.size = "resnet18", 96
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    print(
        f"backbone {args.backbone}, batch {args.batch}, {args.size} px, {args.bands} bands, "
        f"{args.accelerator} ({torch.get_num_threads()} threads), {args.precision}; "
        f"{fairness.load_average()}"
    )
    result: dict[str, Any] = {"config": vars(args) | {"json": None}}
    if "step" in args.parts:
        result["step"] = step_comparison(args, device)
    if "lightning" in args.parts:
        result["lightning"] = lightning_comparison(args)
    if "profile" in args.parts:
        result["profile_s_per_step"] = profile_steps(args, device)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main()
