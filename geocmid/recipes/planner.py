"""The plan of a run (``geocmid run RECIPE --dry-run``): steps, inputs, windows, memory and time.

Training and prediction times come from steps of the steps' own models measured on this machine
(:mod:`geocmid.recipes.calibrate`), scaled by batch, chips, epochs and windows; each step's line
says what was measured, or "rough, not measured" when nothing could be (rough per-pixel
constants then). Data loading and other load on the machine are not in them. Memory figures are
rough rules of thumb.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from geocmid.recipes import steps as S
from geocmid.recipes.calibrate import (
    DEFAULT_BANDS,
    Estimate,
    duration,
    estimate_finetune,
    estimate_predict,
    estimate_pretrain,
    rough_factor,
)
from geocmid.recipes.checks import Facts, fit_config, model_card, pretrain_config
from geocmid.recipes.resolve import Resolved


@dataclass
class StepPlan:
    """One step: what it does, the command, whether it is done, its cost.

    ``estimate`` (training and prediction steps) says where ``seconds`` comes from: a measured
    step or rough constants."""

    name: str
    summary: str
    commands: list[str] = field(default_factory=list)
    done: bool = False
    seconds: float = 0.0
    memory_gb: float = 0.0
    estimate: Estimate | None = None


def _memory(estimate: Estimate | None, batch: int, size: int, fallback: float) -> float:
    """Peak host memory (GB) of a step of ``batch`` × ``size``² from the estimate's first
    measured step (its baseline, state and scaled transient memory), else ``fallback`` (a rough
    constant formula)."""
    if estimate is not None and estimate.measured:
        measured = estimate.measured[0].memory_gb(batch, size)
        if measured is not None:
            return measured
    return fallback


def _pretrain_plan(res: Resolved, facts: Facts) -> StepPlan:
    cfg = pretrain_config(res)
    model, data = cfg["model"]["init_args"], cfg["data"]["init_args"]
    backbone = model.get("backbone") or "resnet50"
    epochs = cfg["trainer"]["max_epochs"]
    chips, chip = data.get("chips_per_epoch") or 16384, data.get("chip_size") or 224
    done = S.pretrain_complete(res)
    estimate = None
    if not done:  # nothing to measure for a step that will be skipped
        bands = len(facts.training_bands) if facts.training_bands else None
        estimate = estimate_pretrain(cfg, res.spec["device"], res.spec["threads"], bands)
    batch = data.get("batch_size") or 64
    rough = 1.0 + batch * chip**2 * 2 * 2400 / 1e9 * rough_factor(backbone, "cpu")
    memory = _memory(estimate, batch, chip, rough)
    return StepPlan(
        "pretrain",
        f"CMID {backbone} on '{data.get('entry')}': {epochs} epochs × {chips} chips of {chip} "
        f"px, then export → {res.export_stem}.safetensors",
        [S.pretrain_call(res).display(), f"geocmid export ... {res.export_stem}"],
        done, estimate.seconds if estimate else 0.0, memory, estimate,
    )  # fmt: skip


def _finetune_model(res: Resolved, config: dict[str, Any]) -> dict[str, Any]:
    """The finetune step's ``model.init_args``; with ``weights: pretrain`` the encoder is the
    pretrain step's architecture (its export's card decides), unless ``set`` names one."""
    args = dict(config["model"].get("init_args", {}))
    step = res.steps["finetune"]
    if step["weights"] == "pretrain" and "pretrain" in res.steps:
        named = {"model.backbone", "model.init_args.backbone"} & set(step["set"])
        backbone = pretrain_config(res)["model"]["init_args"].get("backbone")
        if backbone and not named:
            args["backbone"] = backbone
    return args


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
    done = S.finetune_complete(res)
    estimate = None
    if not done:
        model = {**config["model"], "init_args": _finetune_model(res, config)}
        bands = len(facts.training_bands) if facts.training_bands else None
        spec = res.spec
        estimate = estimate_finetune({**config, "model": model}, spec["device"], spec["threads"],
                                     bands, epochs)  # fmt: skip
    memory = _memory(estimate, batch, chip, 1.0 + batch * pair * chip**2 * 2400 / 1e9)
    weights = step["weights"] or "random initialisation"
    return StepPlan(
        "finetune",
        f"{facts.task} {m.get('model', m.get('backbone', ''))} on '{d.get('entry')}'"
        + (f" / '{d.get('labels')}'" if d.get("labels") else "")
        + f": {epochs} epochs, ~{chips} chips of {chip} px; encoder from {weights}",
        [S.finetune_call(res).display()], done, estimate.seconds if estimate else 0.0, memory,
        estimate,
    )  # fmt: skip


def windows(width: int, height: int, window: int, overlap: int) -> int:
    """Windows over a ``width`` × ``height`` px grid (one when the scene is smaller)."""
    stride = max(window - overlap, 1)

    def n(size: int) -> int:
        return 1 if size <= window else math.ceil((size - overlap) / stride)

    return n(width) * n(height)


def _predict_model(res: Resolved) -> tuple[str, dict[str, Any]] | None:
    """The predict step's network as (task class path, init args), without reading weights:
    the finetune step's config, or the card beside a given checkpoint (None: no card)."""
    from geocmid.registry import TASKS

    if res.steps["predict"]["model"] == "finetune" and "finetune" in res.steps:
        config = fit_config(res)
        return str(config["model"]["class_path"]), _finetune_model(res, config)
    card = model_card(res)
    if not card or card.get("task") not in TASKS:
        return None
    args = {"model": card.get("model"), "backbone": card.get("architecture"),
            "num_classes": len(card.get("classes") or []) or None}  # fmt: skip
    return TASKS[card["task"]].task_class, {k: v for k, v in args.items() if v is not None}


def _predict_plan(res: Resolved, facts: Facts) -> StepPlan:
    step = res.steps["predict"]
    if not facts.scenes:
        return StepPlan("predict", f"{facts.task or 'map'} of the scenes (pending: data)")
    grid = facts.scenes[0]
    n = windows(grid.width, grid.height, step["window"], step["overlap"])
    done = S.predict_complete(res, facts.task)
    estimate = None
    if not done:
        spec = _predict_model(res)
        class_path, args = spec if spec else ("", {})
        estimate = estimate_predict(
            class_path, args, grid.count or DEFAULT_BANDS, n, step["window"], res.spec["device"],
            res.spec["threads"], step["tta"], step["batch_size"],
        )  # fmt: skip
    block = min(step["block_size"], max(grid.width, grid.height))
    blocks = block**2 * (grid.count * 2 + 4) * 4 * 3 / 1e9  # read, blend and write buffers
    rough = 0.8 + step["batch_size"] * step["window"] ** 2 * 1200 / 1e9
    memory = blocks + _memory(estimate, step["batch_size"], step["window"], rough)
    what = {"change": "change map", "segmentation": "class map"}.get(facts.task or "", "map")
    return StepPlan(
        "predict",
        f"{what} on the {grid.name} grid: {n} windows of {step['window']} px "
        f"(overlap {step['overlap']}) → {res.maps_dir}/{step['name']}_* (COG, GPKG, QML styles)",
        [S.predict_request(res, facts).display()], done, estimate.seconds if estimate else 0.0,
        memory, estimate,
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
        plans.append(_pretrain_plan(res, facts))
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
        state = "done, skipped" if p.done else f"~{duration(p.seconds)}"
        if p.done and changed_since_run(res, p.name):
            state = f"done with other settings: refused unless --redo {p.name}"
            refused.append(p.name)
        if p.memory_gb:
            state += f", ~{p.memory_gb:.1f} GB" if not p.done else ""
        lines.append(f"  {i}. {p.name:9s} {p.summary}  [{state}]")
        if p.estimate is not None and not p.done:
            lines.append(f"       estimate: {p.estimate.text()}")
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
    lines += ["", f"estimate (rough): ~{duration(total)} on {spec['device']}, peak memory "
              f"~{peak:.1f} GB" + _sources(todo)]  # fmt: skip
    for text in facts.warnings:
        lines.append(f"warning: {text}")
    if refused:
        redo = " ".join(f"--redo {name}" for name in refused)
        lines.append(f"warning: steps {', '.join(refused)} were made with other settings; the "
                     f"run will stop there: add {redo} (or use --run-dir NEW_FOLDER)")  # fmt: skip
    return "\n".join(lines)


def _sources(todo: list[StepPlan]) -> str:
    """What the total's times rest on: measured steps, rough constants or both."""
    measured = [p.name for p in todo if p.estimate and p.estimate.is_measured]
    rough = [p.name for p in todo if p.estimate and not p.estimate.is_measured]
    parts = []
    if measured:
        parts.append(f"{', '.join(measured)} from steps measured here")
    if rough:
        parts.append(f"{', '.join(rough)} rough, not measured")
    if not parts:
        return ""
    return "; " + ", ".join(parts) + " (data loading and other load not included)"
