"""Loading a model for the command line: the one place to swap when task checkpoints exist.

Accepted:
- a ``geocmid fit`` checkpoint (``.ckpt``), with its model card inside;

- a TorchScript file (``.pt``, ``.pth``, ``.ts``, ``.jit``): ``torch.jit.load``;
- a ``torch.export`` program (``.pt2``): ``torch.export.load(...).module()``;
- ``package.module:callable``: a factory returning the model (called with no arguments).

Nothing is downloaded; pickled checkpoints are never unpickled.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geocmid.errors import ModelError
from geocmid.inference.card import ModelCard
from geocmid.inference.predictor import Predictor, check_device


def resolve_device(device: str) -> str:
    """``"auto"`` → ``"cuda"`` when this process sees a CUDA GPU, else ``"cpu"``; any other
    value is returned as given (``"cpu"``, ``"cuda:1"``)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    check_device(device)  # one clear line for a device this machine lacks
    return device


def load_model(spec: str, device: str = "cpu") -> Any:
    """Load a model from a file or a ``module:callable`` factory (see the module docstring)."""
    device = resolve_device(device)
    path = Path(spec)
    if path.suffix in (".pt", ".pth", ".ts", ".jit", ".pt2"):
        if not path.exists():
            raise ModelError(spec, "does not exist", "pass an exported model file")
        try:
            if path.suffix == ".pt2":
                return torch.export.load(str(path)).module()
            return torch.jit.load(str(path), map_location=device)
        except Exception as error:
            raise ModelError(
                spec,
                f"is not a TorchScript / torch.export model ({type(error).__name__}: {error})",
                "export the model with torch.jit.script / torch.export, or use module:callable",
            ) from error
    if ":" in spec:
        module_name, _, attr = spec.partition(":")
        try:
            factory = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as error:
            raise ModelError(
                spec, f"cannot be imported ({error})", "check module:callable"
            ) from error
        return factory()
    raise ModelError(
        spec,
        "is neither a model file (.pt, .pth, .ts, .pt2) nor module:callable",
        "pass e.g. model.pt or mypackage.models:build_model",
    )


def load_predictor(
    model: str,
    card: str | Path | None,
    task: str | None,
    device: str = "cpu",
    change_input: str = "stacked",
    background: int | None = 0,
    precision: str = "32-true",
) -> Predictor:
    """Build a :class:`Predictor` from a model spec and a model card.

    A ``geocmid fit`` checkpoint (``.ckpt``) carries its own card and task; other model files
    need ``card`` (a JSON file) and ``task``. ``device="auto"`` picks this process's GPU
    when it has one (see :func:`resolve_device`).
    """
    device = resolve_device(device)
    if Path(model).suffix == ".ckpt":
        from geocmid.tasks import load_for_prediction

        module, card_dict = load_for_prediction(model)
        card_task = card_dict.get("task", "segmentation")
        if task is not None and task != card_task:
            raise ModelError(
                model,
                f"is a {card_task} model, not {task}",
                f"drop --task or use --task {card_task}",
            )
        return Predictor(
            model=module.to(device),
            card=ModelCard.from_dict(card_dict),
            task=card_task,  # type: ignore[arg-type]
            device=device,
            change_input=change_input,  # type: ignore[arg-type]
            background=background,
            precision=precision,
        )
    if card is None:
        raise ModelError(
            model, "needs a model card", "pass --card card.json (bands, mean, std, classes)"
        )
    return Predictor(
        model=load_model(model, device),
        card=ModelCard.from_file(card),
        task=task or "segmentation",  # type: ignore[arg-type]
        device=device,
        change_input=change_input,  # type: ignore[arg-type]
        background=background,
        precision=precision,
    )


@dataclass(frozen=True)
class ModelLoader:
    """How to load a predictor, sent to Dask workers so that each loads the model itself, once.

    Calling it returns :func:`load_predictor` ``(model, card, task, device, ...)``; the device is
    resolved in the calling process, so ``device="auto"`` gives each worker its own GPU when it
    has one. Picklable (plain strings), unlike a loaded TorchScript model.
    """

    model: str
    card: str | None = None
    task: str | None = None
    device: str = "cpu"
    change_input: str = "stacked"
    background: int | None = 0
    precision: str = "32-true"

    def __call__(self) -> Predictor:
        return load_predictor(
            self.model,
            self.card,
            self.task,
            device=self.device,
            change_input=self.change_input,
            background=self.background,
            precision=self.precision,
        )
