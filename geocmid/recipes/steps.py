"""Each step as the workflow call it makes, the config it builds, and what makes it complete.

Steps call the workflow layer (:mod:`geocmid.workflows`) with typed configs and overrides, the
same functions ``geocmid pretrain | export | fit | predict`` call, so validation and behaviour
stay in one place and an interrupted step resumes through the workflow's own resume
(pretraining's ``last.ckpt``, fine-tuning's ``ckpt``, prediction's block store). Training
steps are a config file plus ``(key, value)`` overrides in the one override syntax of
:func:`geocmid.workflows.config.apply_overrides`; the plan prints them as the equivalent command.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geocmid.recipes.checks import Facts
from geocmid.recipes.resolve import Resolved
from geocmid.registry import TASKS


@dataclass
class TrainingCall:
    """A training step as a config file and its overrides (in order).

    Attributes:
        command: ``pretrain`` or ``fit`` (the equivalent ``geocmid`` command, for the plan).
        config: the training config file (Lightning CLI layout).
        overrides: ``(dotted key, value)`` pairs, applied in order.
        weights: encoder weights (fit only).
        ckpt: checkpoint to resume from (fit only).
    """

    command: str
    config: Path
    overrides: list[tuple[str, Any]] = field(default_factory=list)
    weights: str | None = None
    ckpt: str | None = None

    def display(self) -> str:
        """The equivalent command line (what a user would type to run this step alone)."""
        parts = [f"geocmid {self.command} --config {shlex.quote(str(self.config))}"]
        final = dict(self.overrides)  # a later override of a key wins: show the last only
        parts += [f"--set {shlex.quote(f'{key}={_text(value)}')}" for key, value in final.items()]
        if self.weights:
            parts.append(f"--weights {self.weights}")
        if self.ckpt:
            parts.append(f"--ckpt {self.ckpt}")
        return " ".join(parts)


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _accelerator(res: Resolved) -> str:
    return "cpu" if res.spec["device"] == "cpu" else "gpu"


def _common(res: Resolved, name: str) -> list[tuple[str, Any]]:
    """Overrides every training step gets: device, run folder, catalog."""
    items: list[tuple[str, Any]] = [
        ("trainer.accelerator", _accelerator(res)),
        ("trainer.default_root_dir", str(res.step_dir(name))),
    ]
    if res.catalog is not None:
        items.append(("data.catalog", str(res.catalog)))
    return items


def pretrain_call(res: Resolved) -> TrainingCall:
    """The pretrain step's config and overrides (recipe shortcuts, then its ``set`` block)."""
    step = res.steps["pretrain"]
    items = _common(res, "pretrain")
    for key, target in (("entry", "data.entry"), ("backbone", "model.backbone"),
                        ("epochs", "trainer.max_epochs")):  # fmt: skip
        if step[key] is not None:
            items.append((target, step[key]))
    items += list(step["set"].items())
    return TrainingCall("pretrain", res.configs["pretrain"], items)


def finetune_call(res: Resolved) -> TrainingCall:
    """The finetune step's config and overrides; resumes an interrupted fine-tuning."""
    step = res.steps["finetune"]
    items = _common(res, "finetune") + list(step["set"].items())
    for key in ("entry", "labels"):
        if step[key] is not None:
            items.append((f"data.{key}", step[key]))
    if step["epochs"] is not None:
        items.append(("trainer.max_epochs", step["epochs"]))
    last = res.step_dir("finetune") / "checkpoints" / "last.ckpt"
    resume = last.is_file() and not finetune_complete(res)
    return TrainingCall(
        "fit", res.configs["finetune"], items, res.weights(), str(last) if resume else None
    )


def run_demo(res: Resolved) -> None:
    from geocmid.data.synthetic import make_demo_dataset

    step = res.steps["demo_data"]
    assert res.demo_dir is not None
    make_demo_dataset(res.demo_dir, size=step["size"], seed=step["seed"])


def run_pretrain(res: Resolved) -> None:
    """Pretrain (or resume), then export the backbone next to the run."""
    from geocmid.workflows.export import export
    from geocmid.workflows.pretrain import pretrain

    call = pretrain_call(res)
    result = pretrain(call.config, overrides=call.overrides)
    exit_if_worker_rank()
    export(result.last_checkpoint, res.export_stem, overwrite=True)


def run_finetune(res: Resolved) -> None:
    from geocmid.workflows.training import fit

    call = finetune_call(res)
    fit(call.config, overrides=call.overrides, weights=call.weights, ckpt=call.ckpt)
    exit_if_worker_rank()


def exit_if_worker_rank() -> None:
    """End the extra processes of a multi-device run after training.

    Lightning's DDP re-launches this very command once per extra rank; those processes have
    done their share of the training and must not export, predict or report (rank 0 does,
    once).
    """
    import os

    rank = os.environ.get("RANK") or os.environ.get("LOCAL_RANK") or "0"
    node = os.environ.get("NODE_RANK") or os.environ.get("GROUP_RANK") or "0"
    if int(rank) != 0 or int(node) != 0:
        raise SystemExit(0)


def scene_inputs(res: Resolved, facts: Facts) -> dict[str, Any]:
    """The scenes as ``PredictRequest`` fields: catalog entries (read as training reads them)
    or raster files."""
    if facts.scenes and all(s.entry for s in facts.scenes):
        return {"entries": [s.entry for s in facts.scenes], "catalog": res.catalog}
    return {"inputs": [str(s.path) for s in facts.scenes]}


def predict_request(res: Resolved, facts: Facts) -> Any:
    """The predict step as a :class:`geocmid.workflows.predict.PredictRequest`."""
    from geocmid.workflows.predict import PredictRequest

    step = res.steps["predict"]
    device = res.spec["device"]
    return PredictRequest(
        model=str(res.model()),
        **scene_inputs(res, facts),
        output=str(res.maps_dir),
        name=step["name"],
        window=step["window"],
        overlap=step["overlap"],
        block_size=step["block_size"],
        batch_size=step["batch_size"],
        tta=step["tta"],
        min_area=step["min_area"],
        simplify=step["simplify"],
        device="cuda" if device == "gpu" else device,
        probabilities=step["probabilities"],
        geojson=step["geojson"],
        vectors=step["vectors"],
        progress=False,
        # some final outputs but not all (an interrupted assembly, a deleted file): predict
        # refuses to replace them otherwise; an interrupted block run has none and resumes
        overwrite=any(p.is_file() for p in predict_outputs(res, facts.task).values()),
    )


def run_predict(res: Resolved, facts: Facts) -> None:
    from geocmid.workflows.predict import predict

    for kind, path in predict(predict_request(res, facts)).outputs.items():
        print(f"[predict] {kind:14s} {path}", flush=True)


def predict_outputs(res: Resolved, task: str | None) -> dict[str, Path]:
    from geocmid.inference.run import OutputOptions, output_paths

    step = res.steps["predict"]
    options = OutputOptions(
        probabilities=step["probabilities"], vectors=step["vectors"], geojson=step["geojson"]
    )
    return output_paths(res.maps_dir, step["name"], task or "segmentation", options)


def demo_complete(res: Resolved) -> bool:
    return res.demo_dir is not None and (res.demo_dir / "catalog" / "demo-pair.yaml").is_file()


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
    record = TASKS.get(task or "segmentation", TASKS["segmentation"])
    keys = [k for k in record.outputs if k in outputs]
    return all(outputs[k].is_file() for k in keys)
