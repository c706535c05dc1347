"""Downstream tasks (classification, segmentation, change) initialised from CMID backbones.

The task classes are TorchGeo tasks (``torchgeo.tasks.Classification`` / ``SemanticSegmentation``
/ ``ChangeDetection``) with geocmid's encoder initialisation, optimiser groups, reports and
model card; they run from ``geocmid fit``, from ``torchgeo fit`` / Lightning CLI configs, and from
Python. Task modules are imported lazily so that ``import geocmid.tasks.encoders`` stays light;
which tasks exist is said once, by the registry (:data:`geocmid.registry.TASKS`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Any

from geocmid.errors import ModelError
from geocmid.registry import TASKS, TaskRecord, get_task  # no heavy imports

if TYPE_CHECKING:
    from torch import nn


def task_class(name: str) -> type:
    """The task class for a task name of the registry (``segmentation``, ``change``, ...)."""
    if name not in TASKS:
        raise ModelError(
            "model card 'task'", f"unknown task '{name}'", f"one of {', '.join(TASKS)}"
        )
    return TASKS[name].load_task_class()


def __getattr__(name: str) -> Any:  # lazy: from geocmid.tasks import SegmentationTask
    for record in TASKS.values():
        if record.task_class.rsplit(".", 1)[1] == name:
            return record.load_task_class()
    raise AttributeError(name)


def load_task(checkpoint: str | Path) -> tuple[Any, dict[str, Any]]:
    """Rebuild a fine-tuned task from its Lightning checkpoint → ``(task, card)``.

    No initial-weight file is needed (the encoder is rebuilt random, then the checkpoint's
    weights are loaded). ``torch.load`` runs with ``weights_only=True``.
    """
    import torch

    from geocmid.models.card import CHECKPOINT_KEY, ModelCard

    path = Path(checkpoint)
    if not path.is_file():
        raise ModelError(f"checkpoint '{path}'", "does not exist", "check the path")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling errors of all kinds: a foreign or damaged file
        raise ModelError(f"checkpoint '{path}'", f"cannot be read ({exc})") from exc
    card = ckpt.get(CHECKPOINT_KEY) if isinstance(ckpt, dict) else None
    if not card:
        raise ModelError(
            f"checkpoint '{path}'",
            "is not a geocmid fine-tuning checkpoint (no model card inside)",
            "pass a checkpoint written by `geocmid fit`",
        )
    cls = task_class(card["task"])
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    hparams = {k: v for k, v in ckpt["hyper_parameters"].items() if k in accepted}
    hparams["weights"] = None  # every weight, encoder included, comes from the state dict
    # any card layout (geocmid-task/1 checkpoints included) read through the one ModelCard
    card = ModelCard.from_dict(card, where=f"model card in checkpoint '{path}'").to_dict()
    if hparams.get("backbone") is None and card.get("architecture"):
        hparams["backbone"] = card["architecture"]
    task = cls(**hparams)
    task.load_state_dict(ckpt["state_dict"])
    task.eval()
    return task, dict(card)


def load_for_prediction(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """A fine-tuned network ready for :class:`geocmid.inference.Predictor` → ``(model, card)``.

    The model maps normalised ``[B, C, H, W]`` → logits ``[B, K, H, W]`` (segmentation),
    ``[B, K]`` (classification), or ``[B, 2, C, H, W]`` → ``[B, K, H, W]`` (change), in eval
    mode. The card holds ``task``, ``classes`` (``[{value, name, color}]``, in logit order),
    ``bands``, ``mean`` / ``std`` (raw units), ``chip_size``, ``in_chans``.
    """
    task, card = load_task(checkpoint)
    if card["task"] == "detection":
        from geocmid.tasks.detection_model import DetectorForPrediction

        return DetectorForPrediction(task.model, card["in_chans"]).eval(), card
    return task.model.eval(), card


__all__ = ["TASKS", "TaskRecord", "get_task", "load_for_prediction", "load_task", "task_class"]
