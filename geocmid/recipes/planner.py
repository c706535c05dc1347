"""The plan of a run (``geocmid run RECIPE --dry-run``): steps, inputs, windows, memory and time.

Estimates are rough on purpose: costs per pixel measured on a 2-core CPU with ResNet-18 (and a
factor for larger backbones; a GPU is taken as ~40× faster), enough to tell minutes from hours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from geocmid.recipes import steps as S
from geocmid.recipes.checks import Facts, fit_config, pretrain_config
from geocmid.recipes.resolve import Resolved

#: CPU seconds per chip pixel of one training step (ResNet-18), measured on 2 cores.
PRETRAIN_S_PER_PX = 5e-5  # two views, student + EMA teacher
FINETUNE_S_PER_PX = 4e-5
PREDICT_S_PER_PX = 2e-5
BACKBONE_FACTOR = {"resnet18": 1, "resnet34": 1.6, "resnet50": 2.5, "resnet101": 4, "swin": 4,
                   "vit": 3}  # fmt: skip
GPU_SPEED_UP = 40


@dataclass
class StepPlan:
    """One step: what it does, the command, whether it is done, its rough cost."""

    name: str
    summary: str
    commands: list[str] = field(default_factory=list)
    done: bool = False
    seconds: float = 0.0
    memory_gb: float = 0.0


def _factor(backbone: str | None, device: str) -> float:
    b = str(backbone or "resnet18")
    f = next((v for k, v in BACKBONE_FACTOR.items() if b.startswith(k)), 2.0)
    return f / (GPU_SPEED_UP if device != "cpu" else 1)


def _pretrain_plan(res: Resolved) -> StepPlan:
    cfg = pretrain_config(res)
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    backbone = model.get("backbone") or "resnet50"
    epochs = cfg["trainer"]["max_epochs"]
    chips, chip = data.get("chips_per_epoch") or 16384, data.get("chip_size") or 224
    seconds = epochs * chips * chip**2 * PRETRAIN_S_PER_PX * _factor(backbone, res.spec["device"])
    batch = data.get("batch_size") or 64
    memory = 1.0 + batch * chip**2 * 2 * 2400 / 1e9 * _factor(backbone, "cpu")
    return StepPlan(
        "pretrain",
        f"CMID {backbone} on '{data.get('entry')}': {epochs} epochs × {chips} chips of {chip} "
        f"px, then export → {res.export_stem}.safetensors",
        [S.pretrain_call(res).display(), f"geocmid export ... {res.export_stem}"],
        S.pretrain_complete(res), seconds, memory,
    )  # fmt: skip


def _finetune_plan(res: Resolved, facts: Facts) -> StepPlan:
    config = fit_config(res)
    step = res.steps["finetune"]
    m, d = config["model"].get("init_args", {}), config["data"].get("init_args", {})
    t = config.get("trainer", {})
    epochs = step["epochs"] or t.get("max_epochs", 1)
    chip, batch = int(d.get("chip_size") or 64), int(d.get("batch_size") or 8)
    chips = d.get("chips_per_epoch") or 256
    if t.get("limit_train_batches"):
        chips = min(chips, int(t["limit_train_batches"]) * batch)
    pair = 2 if facts.task == "change" else 1
    seconds = (epochs * chips * 1.3 * pair * chip**2 * FINETUNE_S_PER_PX
               * _factor(m.get("backbone"), res.spec["device"]))  # fmt: skip
    memory = 1.0 + batch * pair * chip**2 * 2400 / 1e9
    weights = step["weights"] or "random initialisation"
    return StepPlan(
        "finetune",
        f"{facts.task} {m.get('model', m.get('backbone', ''))} on '{d.get('entry')}'"
        + (f" / '{d.get('labels')}'" if d.get("labels") else "")
        + f": {epochs} epochs, ~{chips} chips of {chip} px; encoder from {weights}",
        [S.finetune_call(res).display()], S.finetune_complete(res), seconds, memory,
    )  # fmt: skip


def windows(width: int, height: int, window: int, overlap: int) -> int:
    """Windows over a ``width`` × ``height`` px grid (one when the scene is smaller)."""
    stride = max(window - overlap, 1)

    def n(size: int) -> int:
        return 1 if size <= window else math.ceil((size - overlap) / stride)

    return n(width) * n(height)


def _predict_plan(res: Resolved, facts: Facts) -> StepPlan:
    step = res.steps["predict"]
    if not facts.scenes:
        return StepPlan("predict", f"{facts.task or 'map'} of the scenes (pending: data)")
    grid = facts.scenes[0]
    n = windows(grid.width, grid.height, step["window"], step["overlap"])
    pixels = n * step["window"] ** 2 * (2 if facts.task == "change" else 1)
    seconds = 5 + pixels * PREDICT_S_PER_PX * _factor(None, res.spec["device"])
    block = min(step["block_size"], max(grid.width, grid.height))
    memory = 0.8 + (block**2 * (grid.count * 2 + 4) * 4 * 3
                    + step["batch_size"] * step["window"] ** 2 * 1200) / 1e9  # fmt: skip
    what = {"change": "change map", "segmentation": "class map"}.get(facts.task or "", "map")
    return StepPlan(
        "predict",
        f"{what} on the {grid.name} grid: {n} windows of {step['window']} px "
        f"(overlap {step['overlap']}) → {res.maps_dir}/{step['name']}_* (COG, GPKG, QML styles)",
        [S.predict_request(res, facts).display()], S.predict_complete(res, facts.task),
        seconds, memory,
    )  # fmt: skip


def make_plan(res: Resolved, facts: Facts) -> list[StepPlan]:
    """The steps of ``res`` in run order with commands, completeness and estimates."""
    plans = []
    if "demo_data" in res.steps:
        step = res.steps["demo_data"]
        plans.append(StepPlan(
            "demo_data", f"synthetic demo data, {step['size']} px, seed {step['seed']} → "
            f"{res.demo_dir}",
            [f"geocmid demo-data {res.demo_dir} --size {step['size']} --seed {step['seed']}"],
            S.demo_complete(res), 3 + step["size"] / 60,
            0.5,
        ))  # fmt: skip
    if "pretrain" in res.steps:
        plans.append(_pretrain_plan(res))
    if "finetune" in res.steps:
        plans.append(_finetune_plan(res, facts))
    if "predict" in res.steps:
        plans.append(_predict_plan(res, facts))
    if "evaluate" in res.steps:
        labels = res.steps["evaluate"]["labels"]
        plans.append(StepPlan("evaluate", f"scores of the map against '{labels}'", seconds=2))
    if "report" in res.steps:
        plans.append(StepPlan("report", f"{res.run_dir}/report.md with maps, metrics, curves",
                              seconds=3))  # fmt: skip
    return plans


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def format_plan(res: Resolved, facts: Facts, plans: list[StepPlan]) -> str:
    """The dry-run text: steps, commands, inputs and footprints, windows, memory, time."""
    spec: dict[str, Any] = res.spec
    lines = [f"recipe '{spec['recipe']}' ({res.recipe.path}), profile {spec['profile']}"]
    if spec["description"]:
        lines.append(f"  {spec['description']}")
    lines += [f"run folder: {res.run_dir}", f"catalog: {res.catalog or '(global --catalog)'}", ""]
    lines.append("steps:")
    from geocmid.recipes.runner import changed_since_run

    refused = []
    for i, p in enumerate(plans, 1):
        state = "done, skipped" if p.done else f"~{_duration(p.seconds)}"
        if p.done and changed_since_run(res, p.name):
            state = f"done with other settings: refused unless --redo {p.name}"
            refused.append(p.name)
        if p.memory_gb:
            state += f", ~{p.memory_gb:.1f} GB" if not p.done else ""
        lines.append(f"  {i}. {p.name:9s} {p.summary}  [{state}]")
        for command in p.commands:
            lines.append("       " + command)
    if facts.scenes:
        lines += ["", "inputs:"]
        for s in facts.scenes:
            lines.append(
                f"  {s.name}: {s.path}  {s.crs}, {s.res:g} m, {s.width}×{s.height} px, "
                f"{s.count} bands, {s.area_km2:.2f} km², bounds "
                + ", ".join(f"{v:.0f}" for v in s.bounds)
            )
        if facts.overlap is not None:
            lines.append(f"  overlap of the dates: {facts.overlap:.0%} of the first")
    for text in facts.pending:
        lines.append(f"  pending {text}")
    todo = [p for p in plans if not p.done]
    total = sum(p.seconds for p in todo)
    peak = max((p.memory_gb for p in todo), default=0.0)
    lines += ["", f"estimate (rough): ~{_duration(total)} on {spec['device']}, peak memory "
              f"~{peak:.1f} GB"]  # fmt: skip
    for text in facts.warnings:
        lines.append(f"warning: {text}")
    if refused:
        redo = " ".join(f"--redo {name}" for name in refused)
        lines.append(f"warning: steps {', '.join(refused)} were made with other settings; the "
                     f"run will stop there: add {redo} (or use --run-dir NEW_FOLDER)")  # fmt: skip
    return "\n".join(lines)
