"""Each step as the geocmid command it runs, and what makes it complete.

Steps call the existing commands in-process (``geocmid.cli.main``), so validation and behaviour
stay in one place and an interrupted step resumes through the command's own resume (pretrain's
``last.ckpt``, fit's ``--ckpt last.ckpt``, predict's block store).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from geocmid.recipes.checks import Facts
from geocmid.recipes.resolve import Resolved

TASK_OUTPUTS = {
    "segmentation": ("classes", "vectors", "summary"),
    "change": ("classes", "vectors", "summary"),
    "classification": ("vectors", "summary"),
    "detection": ("vectors", "summary"),
}


def _value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _sets(values: dict[str, Any]) -> list[str]:
    return [a for key, value in values.items() for a in ("--set", f"{key}={_value(value)}")]


def _accelerator(res: Resolved) -> str:
    return "cpu" if res.spec["device"] == "cpu" else "gpu"


def catalog_args(res: Resolved) -> list[str]:
    return ["--catalog", str(res.catalog)] if res.catalog is not None else []


def demo_argv(res: Resolved) -> list[str]:
    step = res.steps["demo_data"]
    return ["demo-data", str(res.demo_dir), "--size", str(step["size"]), "--seed",
            str(step["seed"])]  # fmt: skip


def pretrain_argv(res: Resolved) -> list[str]:
    step = res.steps["pretrain"]
    sets = {"trainer.accelerator": _accelerator(res)}
    if res.catalog is not None:
        sets["data.catalog"] = str(res.catalog)
    sets.update(step["set"])
    argv = [*catalog_args(res), "pretrain", "--config", str(res.configs["pretrain"])]
    argv += ["--run-dir", str(res.step_dir("pretrain")), *_sets(sets)]
    for key, flag in (("entry", "--entry"), ("backbone", "--backbone"), ("epochs", "--epochs")):
        if step[key] is not None:
            argv += [flag, str(step[key])]
    return argv


def export_argv(res: Resolved) -> list[str]:
    ckpt = res.step_dir("pretrain") / "checkpoints" / "last.ckpt"
    return ["export", str(ckpt), str(res.export_stem), "--overwrite"]


def finetune_argv(res: Resolved) -> list[str]:
    step = res.steps["finetune"]
    sets = {"trainer.accelerator": _accelerator(res), **step["set"]}
    for key in ("entry", "labels"):
        if step[key] is not None:
            sets[f"data.{key}"] = step[key]
    argv = [*catalog_args(res), "fit", "--config", str(res.configs["finetune"])]
    argv += ["--out", str(res.step_dir("finetune")), *_sets(sets)]
    if res.weights():
        argv += ["--weights", res.weights()]
    if step["epochs"] is not None:
        argv += ["--max-epochs", str(step["epochs"])]
    last = res.step_dir("finetune") / "checkpoints" / "last.ckpt"
    if last.is_file() and not finetune_complete(res):
        argv += ["--ckpt", str(last)]  # resume an interrupted fine-tuning
    return argv


def scene_paths(facts: Facts) -> list[str]:
    return [str(s.path) for s in facts.scenes]


def predict_argv(res: Resolved, facts: Facts) -> list[str]:
    step = res.steps["predict"]
    argv = ["predict", "--model", str(res.model()), *scene_paths(facts)]
    argv += ["-o", str(res.maps_dir), "--name", step["name"], "--no-progress"]
    for key in ("window", "overlap", "block_size", "batch_size", "tta", "min_area", "simplify"):
        argv += [f"--{key.replace('_', '-')}", str(step[key])]
    device = res.spec["device"]
    argv += ["--device", "cuda" if device == "gpu" else device]
    for key, flag in (("probabilities", "--probabilities"), ("geojson", "--geojson")):
        if step[key]:
            argv.append(flag)
    if not step["vectors"]:
        argv.append("--no-vectors")
    if any(p.is_file() for p in predict_outputs(res, facts.task).values()):
        # some final outputs but not all (an interrupted assembly, a deleted file): predict
        # refuses to replace them otherwise; an interrupted block run has none and resumes
        argv.append("--overwrite")
    return argv


def predict_outputs(res: Resolved, task: str | None) -> dict[str, Path]:
    from geocmid.inference.run import OutputOptions, output_paths

    step = res.steps["predict"]
    options = OutputOptions(
        probabilities=step["probabilities"], vectors=step["vectors"], geojson=step["geojson"]
    )
    return output_paths(res.maps_dir, step["name"], task or "segmentation", options)


def demo_complete(res: Resolved) -> bool:
    return (res.demo_dir / "catalog" / "demo-pair.yaml").is_file()


def pretrain_complete(res: Resolved) -> bool:
    stem = res.export_stem
    return stem.with_suffix(".safetensors").is_file() and stem.with_suffix(".json").is_file()


def finetune_complete(res: Resolved) -> bool:
    root = res.step_dir("finetune")
    ckpts = root / "checkpoints"
    # fit writes model_card.json after training ends: with last.ckpt it marks a finished fit
    return (root / "model_card.json").is_file() and (ckpts / "last.ckpt").is_file()


def predict_complete(res: Resolved, task: str | None) -> bool:
    outputs = predict_outputs(res, task)
    keys = [k for k in TASK_OUTPUTS.get(task or "segmentation", ()) if k in outputs]
    return all(outputs[k].is_file() for k in keys)
