"""Time estimates of the dry-run plans from steps measured on this machine.

``geocmid run RECIPE --dry-run`` (:mod:`geocmid.recipes.planner`) and ``geocmid pretrain
--dry-run`` estimate how long training and prediction will take from steps timed here, in this
process, on the configured device:

* a **training step** of the step's own model on random input. Pretraining: the step
  :class:`~geocmid.cmid.task.CMIDTask` runs (the two-view transform, student and EMA-teacher
  passes with every loss, backward, the Adan / AdamW step, the EMA update), driven by hand as
  ``benchmarks/bench_cmid_step.py`` does. Fine-tuning: the task's own ``training_step``
  (forward, loss, metrics), backward and an AdamW step;
* a **forward pass** (eval mode, no gradients) of the fine-tuned model, for the validation
  chips and the prediction windows.

Each is timed after one warm-up step, at a small batch (:data:`MEASURE_BATCH`), for one to
:data:`TIMED_STEPS` steps within about :data:`BUDGET_S` seconds, keeping the fastest (the warm-up
alone when it took twice that: a high figure): on shared cores single steps can take many times
longer, and the fastest is the figure that repeats. On a CPU a chip or window larger than
:data:`MAX_EDGE` px is measured at a smaller edge the model accepts. Units: seconds per step of
``batch`` images of ``size`` px (:class:`Measured`); the estimates scale that linearly by images
(batch, chips per epoch, epochs, windows, test-time augmentation passes) and by pixels (the
configured edge² over the measured edge²). Models are built with random weights: nothing is
downloaded and nothing is written; the global random state is restored afterwards. Results are
cached for the life of the process per model, band count, size, batch, device and threads, so
several steps or plans share them; all measurements of a process together take at most about
:data:`TOTAL_BUDGET_S` seconds. ``GEOCMID_MEASURE=0`` turns measuring off.

What it cannot know: data loading (reading rasters, sampling, augmentation in the datamodule's
workers), Lightning's per-step costs (logging, callbacks, checkpoints), other load on the machine
now or during the run (shared cores make both vary), that larger batches cost less per image
(markedly on a GPU, where the estimate is then high), several devices, start-up costs, and how
far the pixel scaling is off for ViTs (global attention grows faster than the pixel count). When
a model cannot be built or run here, the estimate falls back to rough per-pixel constants
(:data:`ROUGH_S_PER_PX`) and says so ("rough, not measured").
"""

from __future__ import annotations

import contextlib
import inspect
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

#: Images per measured step: small, so that a measurement takes seconds.
MEASURE_BATCH = {"cpu": 2, "cuda": 8}
#: Most timed steps after the warm-up (the fastest is kept).
TIMED_STEPS = 3
#: Seconds one measurement may take (warm-up included; a step started before it runs to its end).
BUDGET_S = 5.0
#: Seconds all measurements of one process may take together (builds included); once spent,
#: further estimates fall back to the rough constants. Cached measurements are still used.
TOTAL_BUDGET_S = 30.0
#: Largest edge measured as is on a CPU (training, forward); larger ones are measured smaller.
MAX_EDGE = {"train": 128, "forward": 256}
#: Forward passes per window of each test-time augmentation (geocmid.inference.predictor).
TTA_PASSES = {"none": 1, "flips": 3, "d4": 8}
#: Seconds of a predict step besides the network (reading, mosaicking, COG and vector writing);
#: not measured.
PREDICT_OVERHEAD_S = 5.0
#: Bands assumed when neither the config nor the data (still to be written) tell.
DEFAULT_BANDS = 3

#: The fallback: seconds per chip pixel of one training image (ResNet-18, a 2-core CPU), a factor
#: for larger backbones and a GPU taken as ~40× faster; enough to tell minutes from hours.
ROUGH_S_PER_PX = {"pretrain": 5e-5, "finetune": 4e-5, "predict": 2e-5}
ROUGH_BACKBONE_FACTOR = {"resnet18": 1, "resnet34": 1.6, "resnet50": 2.5, "resnet101": 4,
                         "swin": 4, "vit": 3}  # fmt: skip
ROUGH_GPU_SPEED_UP = 40


@dataclass(frozen=True)
class Measured:
    """One measured step: ``seconds`` per step of ``batch`` images of ``size`` px."""

    what: str  # "CMID step", "training step" or "forward pass"
    seconds: float
    batch: int
    size: int
    device: str
    threads: int
    precision: str = "32-true"
    #: Host memory (bytes) around the measurement, on Linux CPUs (0: not measured): the
    #: process before the model was built (imports), the model's and optimizer's tensors
    #: (weights, moments, queues), and the rest of a step's peak (activations, gradients,
    #: allocator slack at ``batch`` × ``size``²).
    baseline_bytes: int = 0
    state_bytes: int = 0
    step_bytes: int = 0
    #: Seconds of a step that do not grow with its images (optimizer update, EMA, per-step
    #: overheads): from a second timing at twice the batch (0: not measured, all per image).
    fixed_seconds: float = 0.0

    def memory_gb(self, batch: int, size: int) -> float | None:
        """Peak host memory (GB) of a step of ``batch`` images of ``size`` px: the baseline,
        the state, and the step's transient memory scaled by images and pixels; None when the
        memory was not measured."""
        if not self.baseline_bytes:
            return None
        scale = batch / self.batch * (size / self.size) ** 2
        return (self.baseline_bytes + self.state_bytes + self.step_bytes * scale) / 1e9

    def per_image(self, size: int | None = None) -> float:
        """Seconds per image of ``size`` px (default: the measured size), scaled by pixels;
        the step's fixed part left out."""
        scale = 1.0 if size is None else (size / self.size) ** 2
        return (self.seconds - self.fixed_seconds) / self.batch * scale

    def step_seconds(self, batch: int, size: int | None = None) -> float:
        """Seconds of one step of ``batch`` images of ``size`` px: the fixed part plus the
        per-image part."""
        return self.fixed_seconds + batch * self.per_image(size)

    def describe(self) -> str:
        """E.g. ``0.42 s per CMID step of batch 2 at 64 px on cpu, 2 threads``."""
        threads = f"{self.threads} thread" + ("s" if self.threads != 1 else "")
        where = f"cpu, {threads}" if self.device == "cpu" else self.device
        mixed = f", {self.precision}" if "mixed" in self.precision else ""
        return (f"{self.seconds:.2f} s per {self.what} of batch {self.batch} at {self.size} px "
                f"on {where}{mixed}")  # fmt: skip


@dataclass(frozen=True)
class Estimate:
    """Seconds a step will take and what the figure rests on."""

    seconds: float
    measured: tuple[Measured, ...] = ()
    problem: str | None = None  # why nothing was measured (rough constants used)

    @property
    def is_measured(self) -> bool:
        return bool(self.measured)

    @property
    def basis(self) -> str:
        """``measured: …`` naming the measured steps, or ``rough, not measured: why``."""
        if self.measured:
            memory = "; memory from the same step" if self.measured[0].baseline_bytes else ""
            return "measured: " + "; ".join(m.describe() for m in self.measured) + memory
        return "rough, not measured" + (f": {self.problem}" if self.problem else "")

    def text(self) -> str:
        """``~3 min (measured: 0.42 s per CMID step of batch 2 at 96 px on cpu, 2 threads)``."""
        return f"~{duration(self.seconds)} ({self.basis})"


def duration(seconds: float) -> str:
    """``45 s`` below 90 s, ``4 min`` below 90 min, ``2.5 h`` / ``14 h`` below two days, else
    ``9 days``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    hours = seconds / 3600
    if hours < 48:
        return f"{hours:.1f} h" if hours < 10 else f"{hours:.0f} h"
    return f"{hours / 24:.0f} days"


# ---- estimates ----------------------------------------------------------------------------------
def estimate_pretrain(
    config: Mapping[str, Any],
    device: str | None = None,
    threads: int | None = None,
    in_chans: int | None = None,
) -> Estimate:
    """Seconds of CMID pretraining with a Lightning CLI ``config`` (model / data / trainer).

    ``epochs × chips per epoch`` images at the chip size, each costing the measured CMID step
    per image. ``device`` defaults to ``trainer.accelerator``; ``in_chans`` to the config's
    ``in_chans`` / ``bands`` (else :data:`DEFAULT_BANDS`). Never raises.
    """
    model = dict(config.get("model", {}).get("init_args") or {})
    data = dict(config.get("data", {}).get("init_args") or {})
    trainer = dict(config.get("trainer") or {})
    backbone = str(model.get("backbone") or "resnet50")
    epochs = int(trainer.get("max_epochs") or 1)
    chip = int(data.get("chip_size") or model.get("chip_size") or 224)
    batch = int(data.get("batch_size") or model.get("batch_size") or 64)
    chips = int(data.get("chips_per_epoch") or 16384)
    chips = min(chips, _batches(trainer.get("limit_train_batches"), chips) * batch)
    device = torch_device(device or trainer.get("accelerator"))
    bands = in_chans or model.get("in_chans") or len(model.get("bands") or []) or DEFAULT_BANDS
    images = epochs * chips
    try:
        step = measure_cmid(model, int(bands), chip, device, threads, _precision(trainer))
    except Exception as error:  # an estimate never stops a dry run
        rough = images * chip**2 * ROUGH_S_PER_PX["pretrain"] * rough_factor(backbone, device)
        return Estimate(rough, problem=_reason(error))
    return Estimate(images / batch * step.step_seconds(batch, chip), (step,))


def estimate_finetune(
    config: Mapping[str, Any],
    device: str | None = None,
    threads: int | None = None,
    in_chans: int | None = None,
    epochs: int | None = None,
) -> Estimate:
    """Seconds of fine-tuning with a ``geocmid fit`` ``config``: per epoch, the training chips
    at the measured training step per image, plus the validation chips at the measured forward
    pass per image in each validated epoch. Never raises."""
    m = dict(config.get("model", {}).get("init_args") or {})
    d = dict(config.get("data", {}).get("init_args") or {})
    t = dict(config.get("trainer") or {})
    data_class = str(config.get("data", {}).get("class_path", ""))
    epochs = int(epochs or t.get("max_epochs") or 1)
    chip = int(d.get("chip_size") or m.get("chip_size") or 64)
    batch = int(d.get("batch_size") or 8)
    chips, evals = (
        int(d[key] if d.get(key) is not None else _default(data_class, key, fallback))
        for key, fallback in (("chips_per_epoch", 256), ("eval_chips", 64))
    )
    chips = min(chips, _batches(t.get("limit_train_batches"), chips) * batch)
    evals = min(evals, _batches(t.get("limit_val_batches"), evals) * batch)
    device = torch_device(device or t.get("accelerator"))
    class_path = str(config.get("model", {}).get("class_path", ""))
    bands = in_chans or m.get("in_channels") or len(m.get("bands") or []) or DEFAULT_BANDS
    try:
        train = measure_task(class_path, m, int(bands), chip, device, threads, train=True)
        forward = measure_task(class_path, m, int(bands), chip, device, threads, train=False)
    except Exception as error:
        pair = 2 if _task_name(class_path) == "change" else 1
        rough = (epochs * chips * 1.3 * pair * chip**2 * ROUGH_S_PER_PX["finetune"]
                 * rough_factor(m.get("backbone"), device))  # fmt: skip
        return Estimate(rough, problem=_reason(error))
    every = int(t.get("check_val_every_n_epoch") or 1)
    validated = epochs // max(every, 1)
    seconds = (epochs * chips / batch * train.step_seconds(batch, chip)
               + validated * evals / batch * forward.step_seconds(batch, chip))  # fmt: skip
    return Estimate(seconds, (train, forward))


def estimate_predict(
    class_path: str,
    init_args: Mapping[str, Any],
    in_chans: int,
    windows: int,
    window: int,
    device: str | None = None,
    threads: int | None = None,
    tta: str = "none",
    batch: int = 8,
) -> Estimate:
    """Seconds of a map: ``windows`` × test-time augmentation passes forward passes of the
    fine-tuned model (``class_path`` / ``init_args``, as ``geocmid fit`` builds it) at the window
    size in batches of ``batch``, plus :data:`PREDICT_OVERHEAD_S` for reading and writing.
    Never raises."""
    device = torch_device(device)
    passes = windows * TTA_PASSES.get(tta, 1)
    try:
        forward = measure_task(class_path, init_args, in_chans, window, device, threads,
                               train=False)  # fmt: skip
    except Exception as error:
        pair = 2 if _task_name(class_path) == "change" else 1
        factor = rough_factor(init_args.get("backbone"), device)
        rough = PREDICT_OVERHEAD_S + windows * window**2 * pair * ROUGH_S_PER_PX["predict"] * factor
        return Estimate(rough, problem=_reason(error))
    seconds = passes / batch * forward.step_seconds(batch, window)
    return Estimate(PREDICT_OVERHEAD_S + seconds, (forward,))


def rough_factor(backbone: str | None, device: str) -> float:
    """The fallback's cost of ``backbone`` relative to ResNet-18 on a CPU."""
    b = str(backbone or "resnet18")
    f = next((v for k, v in ROUGH_BACKBONE_FACTOR.items() if b.startswith(k)), 2.0)
    return f / (ROUGH_GPU_SPEED_UP if device != "cpu" else 1)


def torch_device(device: str | None) -> str:
    """A recipe's / trainer's device name as torch names it (``gpu`` → ``cuda``; ``auto``: cuda
    when there is one). Nothing is checked: an unusable device fails the measurement."""
    name = str(device or "cpu").lower()
    if name == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" + name[3:] if name.startswith("gpu") else name


# ---- measurements -------------------------------------------------------------------------------
_CACHE: dict[tuple[Any, ...], Measured | BaseException] = {}
_SPENT = [0.0]  # seconds measured so far in this process


def measure_cmid(
    init_args: Mapping[str, Any],
    in_chans: int,
    chip: int,
    device: str = "cpu",
    threads: int | None = None,
    precision: str = "32-true",
) -> Measured:
    """Time the CMID training step of ``CMIDTask(**init_args)`` with ``in_chans`` bands.

    Measured at ``chip`` px, or on a CPU at a smaller edge the mask geometry allows when
    ``chip`` > ``MAX_EDGE["train"]`` (then ``Measured.size`` says which).

    Raises:
        Exception: whatever building or running the model raised (cached too).
    """
    from geocmid.models.backbones import family_of

    backbone = str(init_args.get("backbone") or "resnet50")
    sizes = _sizes(chip, device, "train", _cmid_edges(backbone, chip, init_args))
    family_of(backbone)  # an unknown name fails here, with its own message

    def build(size: int, batch: int, dev: Any) -> Callable[..., None]:
        return _cmid_step(init_args, in_chans, chip, size, batch, dev, precision)

    key = ("cmid", _frozen(init_args), in_chans, chip)
    return _measure(key, "CMID step", sizes, device, threads, precision, build)


def measure_task(
    class_path: str,
    init_args: Mapping[str, Any],
    in_chans: int,
    size: int,
    device: str = "cpu",
    threads: int | None = None,
    train: bool = True,
) -> Measured:
    """Time a training step (``train``) or a forward pass of a fine-tuning task's network.

    The task is ``class_path(**init_args)`` with random weights, ``in_chans`` bands (per date)
    and the class count of ``init_args`` (``num_classes``, ``classes``, ``class_weights``;
    else 2). Segmentation, change and classification tasks are supported.

    Raises:
        Exception: the task is not supported, or building / running it failed (cached too).
    """
    if not class_path:
        raise ValueError("no model to build (no model card beside the checkpoint)")
    task = _task_name(class_path)
    if task not in ("segmentation", "change", "classification"):
        raise NotImplementedError(f"no measured step for {task or class_path} tasks")
    kind = "train" if train else "forward"
    sizes = _sizes(size, device, kind, [e for e in range(32 * (size // 32), 31, -32)])

    def build(edge: int, batch: int, dev: Any) -> Callable[..., None]:
        return _task_step(class_path, task, init_args, in_chans, edge, batch, dev, train)

    key = (kind, class_path, _frozen(init_args), in_chans, size)
    what = "training step" if train else "forward pass"
    return _measure(key, what, sizes, device, threads, "32-true", build)


_ENABLED = [True]


@contextlib.contextmanager
def measuring(enabled: bool) -> Iterator[None]:
    """Measure steps (True) or fall back to the rough constants (False) inside the block: a
    real run prints its plan without paying seconds of measuring before it starts."""
    saved = _ENABLED[0]
    _ENABLED[0] = enabled
    try:
        yield
    finally:
        _ENABLED[0] = saved


def _measure(
    key: tuple[Any, ...],
    what: str,
    sizes: list[int],
    device: str,
    threads: int | None,
    precision: str,
    build: Callable[[int, int, Any], Callable[..., None]],
) -> Measured:
    """Build at the first size that works (of ``sizes``), warm up, time; cached by ``key``."""
    if os.environ.get("GEOCMID_MEASURE", "1") == "0":
        raise RuntimeError("GEOCMID_MEASURE=0")
    if not _ENABLED[0]:
        raise RuntimeError("measured with --dry-run only")
    import torch

    kind = "cpu" if device == "cpu" else "cuda"
    batch = MEASURE_BATCH.get(kind, 2)
    with _threads(threads if device == "cpu" else None):
        n_threads = torch.get_num_threads()
        full = (*key, device, n_threads, precision, batch)
        if full in _CACHE:
            cached = _CACHE[full]
            if isinstance(cached, BaseException):
                raise cached
            return cached
        if _SPENT[0] >= TOTAL_BUDGET_S:
            raise RuntimeError(f"measuring time used up ({TOTAL_BUDGET_S:.0f} s)")
        started = time.perf_counter()
        before = _proc_status("VmRSS")  # the process as the real run also has it (imports)
        try:
            dev = torch.device(device)
            if dev.type == "cuda" and not torch.cuda.is_available():
                raise RuntimeError("CUDA is not available here")
            step = None
            error: BaseException | None = None
            for size in sizes:  # the smaller edge first; the configured one if it fails
                try:
                    with _quiet(dev):
                        step = build(size, 2 * batch, dev)  # timed at batch and 2 × batch
                    break
                except Exception as e:
                    error = error or e
            if step is None:
                assert error is not None
                raise error
            memory = _HostMemory(before if dev.type == "cpu" else 0)
            memory.start()
            timed = step  # narrowed from Optional for the closures below
            with _quiet(dev):
                seconds = _time(lambda: timed(batch), dev, after_warm_up=memory.after_warm_up)
                # twice the batch, when there is time: what a step costs whatever its images
                # (optimizer, EMA) is then not scaled by the run's batch as if it were per image
                fixed = 0.0
                if seconds <= BUDGET_S and time.perf_counter() - started < 2 * BUDGET_S:
                    double = _time(lambda: timed(2 * batch), dev)
                    fixed = min(max(2 * seconds - double, 0.0), seconds)
            state = getattr(step, "state_bytes", lambda: 0)()  # after a step: optimizer moments
            measured = Measured(what, seconds, batch, size, device, n_threads, precision,
                                *memory.result(state), fixed_seconds=fixed)  # fmt: skip
        except Exception as error:
            _CACHE[full] = error
            raise
        finally:
            step = None
            if device != "cpu" and torch.cuda.is_available():
                torch.cuda.empty_cache()
            _SPENT[0] += time.perf_counter() - started
        _CACHE[full] = measured
        return measured


def _proc_status(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes from ``/proc/self/status`` (Linux; 0
    elsewhere)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def tensor_bytes(*objects: Any) -> int:
    """Bytes of the distinct tensor storages of modules (parameters, buffers, and a gradient
    per trainable parameter: they exist at a training step's peak) and optimizers (their state:
    moments, previous gradients)."""
    import torch

    seen: dict[int, int] = {}
    grads = 0

    def add(t: Any) -> None:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            storage = t.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()

    for obj in objects:
        if isinstance(obj, torch.nn.Module):
            for t in (*obj.parameters(), *obj.buffers()):
                add(t)
        elif isinstance(obj, torch.optim.Optimizer):
            for group in obj.param_groups:
                grads += sum(p.numel() * p.element_size() for p in group["params"])
            for state in obj.state.values():
                for t in state.values():
                    add(t)
    return sum(seen.values()) + grads


class _HostMemory:
    """Resident memory around a measured step (Linux): ``baseline`` before the model was
    built (imports); :meth:`start` after building resets the peak (``/proc/self/clear_refs``
    5); :meth:`after_warm_up` reads the peak of the first step. The state (weights, optimizer
    moments, queues) is counted exactly from its tensors (:func:`tensor_bytes`); the rest of
    the peak is the step's own memory (activations, gradients, allocator slack), which scales
    with images and pixels. ``baseline`` 0 (another OS, a GPU): nothing is measured."""

    def __init__(self, baseline: int) -> None:
        self.baseline, self.peak, self.started = baseline, 0, False

    def start(self) -> None:
        if not self.baseline:
            return
        try:
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")
            self.started = True
        except OSError:
            self.started = False

    def after_warm_up(self) -> None:
        if self.started:
            self.peak = _proc_status("VmHWM")

    def result(self, state: int) -> tuple[int, int, int]:
        """``(baseline, state, step)`` bytes, or zeros when not measured."""
        if not (self.started and self.peak and state):
            return 0, 0, 0
        return self.baseline, state, max(self.peak - self.baseline - state, 0)


def _time(
    step: Callable[[], None], device: Any, after_warm_up: Callable[[], None] | None = None
) -> float:
    """Seconds of the fastest of 1 to :data:`TIMED_STEPS` steps after one warm-up, more steps
    while within :data:`BUDGET_S` (the warm-up's own time when it alone took twice as long).
    ``after_warm_up`` runs right after the warm-up step (memory accounting)."""
    import torch

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    start = time.perf_counter()
    step()
    sync()
    warm = time.perf_counter() - start
    if after_warm_up is not None:
        after_warm_up()
    if warm > 2 * BUDGET_S:  # a step this long: its first run is the figure (a high one)
        return warm
    spent, times = warm, []
    while len(times) < TIMED_STEPS and (not times or spent < BUDGET_S):
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
        spent += times[-1]
    return min(times) if times else warm


def _cmid_step(
    init_args: Mapping[str, Any],
    in_chans: int,
    chip: int,
    size: int,
    batch: int,
    device: Any,
    precision: str,
) -> Callable[..., None]:
    """One hand-driven CMID step as :class:`CMIDTask` runs it (views, losses, backward,
    optimizer, EMA), on random input."""
    import torch

    from geocmid.cmid.task import CMIDTask, ema_foreach, param_groups

    accepted = set(inspect.signature(CMIDTask.__init__).parameters) - {"self"}
    args = {k: v for k, v in init_args.items() if k in accepted}
    bands = [f"b{i}" for i in range(in_chans)]
    args.update(in_chans=in_chans, chip_size=size, batch_size=batch, pretrained=None,
                bands=bands, rgb_bands=bands[:3] if in_chans >= 3 else None, mean=None,
                std=None, model_kwargs=None)  # fmt: skip
    if size != chip:  # the configured mask geometry is the configured chip's
        args.update(mask_block=None, num_matches=None)
    task = CMIDTask(**args)
    model = task.model.to(device).train()
    views = task.views
    groups = param_groups(model, float(args.get("weight_decay", 0.02)))
    if str(args.get("optimizer", "adan")).lower() == "adan":
        from timm.optim import Adan

        optimizer: Any = Adan(groups, lr=1e-4, eps=1e-8, foreach=True)
    else:
        optimizer = torch.optim.AdamW(groups, lr=1e-4, foreach=True)
    teacher_temp = float((args.get("teacher_temp") or (0.04, 0.07))[0])
    generator = torch.Generator(device=device).manual_seed(0)
    batch_in = {
        "image": torch.randn(batch, in_chans, size, size, device=device),
        "valid": torch.ones(batch, size, size, dtype=torch.bool, device=device),
    }
    amp = _autocast(device, precision)

    def step(n: int = batch) -> None:
        part = {k: v[:n] for k, v in batch_in.items()}
        with torch.autocast(device.type, enabled=False):
            two = views(part, generator)
        with amp():
            loss = model.forward_losses(two, teacher_temp)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema_foreach(model, 0.996)

    step.state_bytes = lambda: tensor_bytes(model, optimizer)  # type: ignore[attr-defined]
    return step


def _task_step(
    class_path: str,
    task_name: str,
    init_args: Mapping[str, Any],
    in_chans: int,
    size: int,
    batch: int,
    device: Any,
    train: bool,
) -> Callable[..., None]:
    """A fine-tuning task's training step (its ``training_step``, backward, AdamW) or forward
    pass (eval, no gradients: the prediction contract's input) on random input."""
    import torch

    from geocmid.registry import import_dotted

    cls = import_dotted(class_path)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    args = {k: v for k, v in init_args.items() if k in accepted}
    classes = _num_classes(args)
    args.update(weights=None, in_channels=in_chans, num_classes=classes, chip_size=size)
    for key in ("classes", "labels"):  # names only; a list of another length would not fit
        if args.get(key) is not None and len(args[key]) != classes:
            args[key] = None
    task = cls(**args).to(device)
    dates = (2,) if task_name == "change" else ()
    image = torch.randn(batch, *dates, in_chans, size, size, device=device)
    if task_name == "classification":
        target = {"label": torch.randint(0, classes, (batch,), device=device)}
    else:
        target = {"mask": torch.randint(0, classes, (batch, size, size), device=device)}
    if not train:
        net = task.model.eval()

        def forward(n: int = batch) -> None:
            with torch.inference_mode():
                net(image[:n])

        forward.state_bytes = lambda: tensor_bytes(net)  # type: ignore[attr-defined]
        return forward
    task.train()
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    batch_in = {"image": image, **target}

    def step(n: int = batch) -> None:
        loss = task.training_step({k: v[:n] for k, v in batch_in.items()}, 0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step.state_bytes = lambda: tensor_bytes(task, optimizer)  # type: ignore[attr-defined]
    return step


# ---- helpers ------------------------------------------------------------------------------------
def _sizes(size: int, device: str, kind: str, smaller: list[int]) -> list[int]:
    """Edges to try: on a CPU above ``MAX_EDGE[kind]``, the largest of ``smaller`` within it
    first; always ``size`` itself last."""
    cap = MAX_EDGE[kind]
    if device == "cpu" and size > cap:
        fit = [e for e in smaller if e <= cap]
        if fit:
            return [max(fit), size]
    return [size]


def _cmid_edges(backbone: str, chip: int, init_args: Mapping[str, Any]) -> list[int]:
    """Chip edges below ``chip`` the CMID mask geometry accepts (largest first)."""
    from geocmid.cmid.task import check_chip_size
    from geocmid.errors import ConfigError
    from geocmid.models.backbones import GEOMETRY, family_of

    stride = GEOMETRY[family_of(backbone)][0]
    out = []
    for edge in range(stride * (min(chip, MAX_EDGE["train"]) // stride), stride - 1, -stride):
        try:
            check_chip_size(backbone, edge, None, mask_ratio=init_args.get("mask_ratio", 0.6))
        except ConfigError:
            continue
        out.append(edge)
    return out


def _batches(limit: Any, images: int) -> int:
    """Batches a trainer's ``limit_*_batches`` allows (an int; a fraction or None: all)."""
    if isinstance(limit, int) and not isinstance(limit, bool) and limit >= 0:
        return limit
    return images


def _num_classes(args: Mapping[str, Any]) -> int:
    for key in ("num_classes",):
        if args.get(key):
            return int(args[key])
    for key in ("classes", "class_weights", "labels"):
        if args.get(key):
            return len(args[key])
    return 2


def _task_name(class_path: str) -> str | None:
    from geocmid.registry import task_of_class_path

    return task_of_class_path(class_path)


def _default(class_path: str, key: str, fallback: int) -> int:
    """The default of ``key`` in the signature of ``class_path`` (a datamodule), else
    ``fallback``."""
    from geocmid.registry import import_dotted

    try:
        params = inspect.signature(import_dotted(class_path).__init__).parameters
        value = params[key].default
    except Exception:
        return fallback
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else fallback


def _precision(trainer: Mapping[str, Any]) -> str:
    return str(trainer.get("precision") or "32-true")


def _autocast(device: Any, precision: str) -> Callable[[], Any]:
    import torch

    if "bf16" in precision:
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and device.type == "cuda":
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext


def _frozen(args: Mapping[str, Any]) -> str:
    return repr(sorted((str(k), repr(v)) for k, v in args.items()))


def _reason(error: BaseException) -> str:
    """One short line saying why nothing was measured."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text if len(text) <= 80 else text[:77] + "..."


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``n`` (what the run will use) while measuring."""
    import torch

    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(old)


@contextlib.contextmanager
def _quiet(device: Any) -> Iterator[None]:
    """No warnings (``self.log`` without a trainer), and the global random state untouched."""
    import torch

    devices = [device] if device.type == "cuda" else []
    with warnings.catch_warnings(), torch.random.fork_rng(devices=devices):
        warnings.simplefilter("ignore")
        yield


__all__ = [
    "Estimate",
    "Measured",
    "duration",
    "estimate_finetune",
    "estimate_predict",
    "estimate_pretrain",
    "measure_cmid",
    "measure_task",
]
