"""Time one CMID training step against TorchGeo's BYOL / MoCo and against CMID's own network passes.

Everything runs in one process on random input (no data loading), same backbone, batch and chip:

1. **Task comparison**: optimizer steps of ``CMIDTask``, ``torchgeo.tasks.BYOL`` and
   ``torchgeo.tasks.MoCo`` under the same Lightning Trainer; a step is the time between two
   consecutive ``on_train_batch_start`` calls (forward, backward, optimizer, EMA, logging).
2. **Overhead**: a full CMID step (views + masks on the device, all losses, backward, optimizer,
   EMA) against the sum of its unavoidable network passes: student forward + backward on both
   masked views and teacher forward on both views. Target: ≤ 1.10.

Warm-up iterations are excluded; the median of the timed ones is reported.

    python benchmarks/bench_cmid_step.py                       # resnet50, batch 8, 224 px
    python benchmarks/bench_cmid_step.py --backbone resnet18 --iters 5
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader

from geocmid.cmid.task import CMIDTask, param_groups


class _StepTimer(L.Callback):
    """Timestamps of every ``on_train_batch_start`` plus the end of training."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_start(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())

    def on_train_end(self, *args: Any) -> None:
        self.stamps.append(time.perf_counter())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def lightning_steps(task: L.LightningModule, args: argparse.Namespace) -> list[float]:
    """Seconds per optimizer step of ``task`` under a Lightning Trainer (warm-up excluded)."""
    n = args.warmup + args.iters
    data = [{"image": torch.randn(args.bands, args.size, args.size)} for _ in range(n * args.batch)]
    timer = _StepTimer()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=n, accelerator=args.accelerator, devices=1,
        precision=args.precision, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer],
    )  # fmt: skip
    trainer.fit(task, DataLoader(data, batch_size=args.batch))
    gaps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return gaps[args.warmup :]


def cmid_task(args: argparse.Namespace) -> CMIDTask:
    return CMIDTask(args.backbone, args.bands, args.size, batch_size=args.batch)


def overhead(args: argparse.Namespace, device: torch.device) -> tuple[float, float, float]:
    """(full step s, network passes s, median per-pair ratio) of a hand-driven CMID step."""
    task = cmid_task(args).to(device)
    model = task.model.train()
    opt = torch.optim.AdamW(param_groups(model, 0.02), lr=1e-4)
    if args.optimizer == "adan":
        from timm.optim import Adan

        opt = Adan(param_groups(model, 0.02), lr=1e-4)
    gen = torch.Generator(device=device).manual_seed(0)
    x = {"image": torch.randn(args.batch, args.bands, args.size, args.size, device=device)}
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.precision == "bf16-mixed")

    def full() -> None:
        views = task.views(x, gen)
        with amp:
            loss = model.forward_losses(views, 0)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.update_teacher(0.996)

    views = task.views(x, gen)

    def passes() -> None:
        with amp:
            f1 = model.student(views["mim_img"], views["mask"])
            f2 = model.student(views["view_mim_img"], views["view_mask"])
            with torch.no_grad():
                model.teacher(views["img"])
                model.teacher(views["view"])
        (f1.float().mean() + f2.float().mean()).backward()
        model.zero_grad(set_to_none=True)

    # alternate full step and passes so each pair sees the same machine load; the median of the
    # per-pair ratios is robust to load that drifts over minutes (shared CPUs)
    pairs = []
    for i in range(args.warmup + args.iters):
        f, p = timed1(full, device), timed1(passes, device)
        if i >= args.warmup:
            pairs.append((f, p))
    full_t, pass_t = zip(*pairs, strict=True)
    ratio = statistics.median(f / p for f, p in pairs)
    return statistics.median(full_t), statistics.median(pass_t), ratio


def timed1(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--bands", type=int, default=3)
    p.add_argument("--iters", type=int, default=3, help="timed iterations")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--accelerator", default="cpu")
    p.add_argument("--precision", default="32-true", help="32-true or bf16-mixed")
    p.add_argument("--optimizer", default="adan", help="part 2 optimizer: adan or adamw")
    p.add_argument("--moco-version", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    p.add_argument("--skip-tasks", action="store_true", help="only part 2")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    device = torch.device("cuda" if args.accelerator in ("gpu", "cuda") else "cpu")
    print(
        f"backbone {args.backbone}, batch {args.batch}, {args.size} px, {args.bands} bands, "
        f"{args.accelerator} ({torch.get_num_threads()} threads), {args.precision}; "
        f"median of {args.iters} after {args.warmup} warm-up"
    )

    if not args.skip_tasks:
        from torchgeo.tasks import BYOL, MoCo
        from torchgeo.tasks.byol import SimCLRAugmentation

        L.seed_everything(0, verbose=False)
        cmid = statistics.median(lightning_steps(cmid_task(args), args))
        byol_task = BYOL(model=args.backbone, in_channels=args.bands)
        byol_task.model.augment = SimCLRAugmentation((args.size, args.size))  # default is 256
        byol = statistics.median(lightning_steps(byol_task, args))
        moco_task = MoCo(
            model=args.backbone, in_channels=args.bands, size=args.size,
            version=args.moco_version,
        )  # fmt: skip
        moco = statistics.median(lightning_steps(moco_task, args))
        print("\n(1) training step under Lightning (s/step)")
        print(f"  CMID  {cmid:8.3f}")
        print(f"  BYOL  {byol:8.3f}   CMID/BYOL = {cmid / byol:.2f}")
        print(f"  MoCo  {moco:8.3f}   CMID/MoCo = {cmid / moco:.2f}  (MoCo v{args.moco_version})")

    L.seed_everything(0, verbose=False)
    full, passes, ratio = overhead(args, device)
    print("\n(2) CMID step vs its own network passes (s)")
    print(f"  full step (views, losses, backward, {args.optimizer}, EMA)  {full:8.3f}")
    print(f"  student fwd+bwd ×2 views + teacher fwd ×2 views  {passes:8.3f}")
    verdict = "ok" if ratio <= 1.10 else "over target"
    print(f"  ratio = {ratio:.3f} (median of per-pair ratios; target ≤ 1.10: {verdict})")


if __name__ == "__main__":
    main()
