"""GPU readiness: one pretraining step, one fit step and one prediction per precision.

For each precision (Lightning names: ``32-true``, ``bf16-mixed``, ``16-mixed``), on one CUDA
device, with the models in channels-last memory format (``--no-channels-last`` to compare) and
optionally ``torch.compile`` (``--compile``, in place via ``nn.Module.compile``):

* **pretrain**: ``CMIDTask`` (ResNet-50, 224 px, batch 32 by default) under a Lightning Trainer
  with ``precision=P`` (what ``geocmid pretrain --precision P`` / ``trainer.precision`` set),
  random normalised chips from a pinned-memory DataLoader; images/s over the timed steps;
* **fit**: ``SegmentationTask`` (U-Net on the same backbone, 5 classes) the same way (what a fit
  config's ``trainer: {precision: P}`` sets);
* **predict**: :func:`geocmid.inference.predict_scene` of a generated ``--scene``² uint8 scene
  with that U-Net on the device. ``Predictor`` has no precision setting, so mixed precision is
  applied by wrapping the call in ``torch.autocast`` (the model runs on the calling thread;
  probabilities are cast to fp32 before softmax); megapixels/s.

Each line gives the throughput (median over ``--steps`` steps after ``--warmup``, synchronised)
and the peak GPU memory (``torch.cuda.max_memory_allocated`` since the part started). Runs in
well under 5 minutes on one recent GPU with the defaults. Without CUDA it prints one line and
exits 0 (``--allow-cpu`` runs the same code on the CPU with fp32/bf16 only, tiny sizes, to check
the script itself; its figures mean nothing).

    python benchmarks/bench_gpu.py [--precisions 32-true bf16-mixed 16-mixed] [--compile]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
CLASSES = 5


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _prepare(module: torch.nn.Module, args: argparse.Namespace) -> None:
    if args.channels_last:
        module.to(memory_format=torch.channels_last)
    if args.compile:
        module.compile()


def _fit_steps(task: Any, batches: list[dict[str, torch.Tensor]], args: argparse.Namespace,
               precision: str) -> list[float]:  # fmt: skip
    """Seconds per optimizer step of ``task`` under a Lightning Trainer (warm-up excluded)."""
    import lightning as L
    from torch.utils.data import DataLoader

    class Timer(L.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []

        def on_train_batch_start(self, *a: Any) -> None:
            _sync()
            self.stamps.append(time.perf_counter())

        def on_train_end(self, *a: Any) -> None:
            _sync()
            self.stamps.append(time.perf_counter())

    timer = Timer()
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=len(batches), accelerator=args.accelerator, devices=1,
        precision=precision, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=[timer], num_sanity_val_steps=0,
    )  # fmt: skip
    loader = DataLoader(
        batches, batch_size=None, pin_memory=args.accelerator == "gpu", num_workers=0
    )  # already batched; pinned so the host→device copies can be non-blocking
    trainer.fit(task, loader)
    gaps = [b - a for a, b in zip(timer.stamps, timer.stamps[1:], strict=False)]
    return gaps[args.warmup :]


def _step_line(part: str, steps: list[float], batch: int) -> str:
    s = statistics.median(steps)
    rate = batch / s
    return f"{part:<9} {rate:9.1f} img/s  ({s * 1e3:7.1f} ms/step)  peak {_peak_gib():6.2f} GiB"


def pretrain(args: argparse.Namespace, precision: str) -> str:
    from geocmid.cmid.task import CMIDTask

    torch.manual_seed(0)
    task = CMIDTask(args.backbone, 3, args.size, batch_size=args.batch)
    _prepare(task.model.student, args)
    _prepare(task.model.teacher, args)
    n = args.warmup + args.steps
    batches = [{"image": torch.randn(args.batch, 3, args.size, args.size)} for _ in range(n)]
    _reset_peak()
    steps = _fit_steps(task, batches, args, precision)
    return _step_line("pretrain", steps, args.batch)


def segmentation_task(args: argparse.Namespace) -> Any:
    from geocmid.tasks.segmentation import SegmentationTask

    torch.manual_seed(0)
    return SegmentationTask(
        model="unet", backbone=args.backbone, weights=None, in_channels=3, num_classes=CLASSES,
        chip_size=args.size, bands=["red", "green", "blue"], mean=[0.0] * 3, std=[1.0] * 3,
        scheduler="none",
    )  # fmt: skip


def fit(args: argparse.Namespace, precision: str) -> str:
    task = segmentation_task(args)
    _prepare(task.model, args)
    n = args.warmup + args.steps
    batches = [
        {
            "image": torch.randn(args.batch, 3, args.size, args.size),
            "mask": torch.randint(0, CLASSES, (args.batch, args.size, args.size)),
        }
        for _ in range(n)
    ]
    _reset_peak()
    steps = _fit_steps(task, batches, args, precision)
    return _step_line("fit", steps, args.batch)


def predict(args: argparse.Namespace, precision: str, scene: Path, tmp: Path) -> str:
    import contextlib

    from bench_predict import card

    from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene

    device = "cuda" if args.accelerator == "gpu" else "cpu"
    model = segmentation_task(args).model.to(device).eval()
    _prepare(model, args)
    c = card()
    c["classes"] = [{"value": k, "name": f"c{k}"} for k in range(CLASSES)]
    predictor = Predictor(model, c, device=device)
    dtype = AUTOCAST[precision]
    settings = RunSettings(window=args.window, overlap=64, batch_size=args.predict_batch)
    times = []
    _reset_peak()
    for rep in range(1 + args.predict_repeats):  # the first run warms up (and compiles)
        amp = (
            torch.autocast(torch.device(device).type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        _sync()
        t0 = time.perf_counter()
        with amp:
            predict_scene(
                predictor, [scene], tmp / f"{precision}-{rep}", settings=settings,
                options=OutputOptions(vectors=False, quicklook=False), progress=False,
            )  # fmt: skip
        _sync()
        if rep:
            times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    mpx = args.scene**2 / 1e6
    return f"predict   {mpx / s:9.1f} Mpx/s  ({s:7.2f} s/scene)  peak {_peak_gib():6.2f} GiB"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--parts", nargs="+", default=["pretrain", "fit", "predict"],
                   choices=["pretrain", "fit", "predict"])  # fmt: skip
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=224, help="chip size, px")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=10, help="timed steps per part")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--scene", type=int, default=4096, help="prediction scene edge, px")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--predict-batch", type=int, default=16)
    p.add_argument("--predict-repeats", type=int, default=2)
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile the networks")
    p.add_argument("--allow-cpu", action="store_true", help="check the script on the CPU")
    args = p.parse_args()
    if not torch.cuda.is_available() and not args.allow_cpu:
        print("bench_gpu.py needs a CUDA device (torch.cuda.is_available() is False); nothing run.")
        return 0
    args.accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if args.accelerator == "cpu":
        args.precisions = [q for q in args.precisions if q != "16-mixed"]
    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    warnings.filterwarnings("ignore")
    import lightning.pytorch  # noqa: F401  (sets its loggers to INFO on import: quiet them after)

    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU (script check)"
    print(
        f"{name}; torch {torch.__version__}; {args.backbone}, {args.size} px, batch {args.batch}; "
        f"channels-last {args.channels_last}; compile {args.compile}"
    )
    from bench_predict import make_scene

    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp_str:
        tmp = Path(tmp_str)
        scene = make_scene(tmp / "scene.tif", args.scene) if "predict" in args.parts else None
        for precision in args.precisions:
            print(f"\n{precision}")
            for part in args.parts:
                if part == "pretrain":
                    line = pretrain(args, precision)
                elif part == "fit":
                    line = fit(args, precision)
                else:
                    assert scene is not None
                    line = predict(args, precision, scene, tmp)
                print(f"  {line}", flush=True)
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
