"""The model side of prediction: what a model must look like and how a batch goes through it.

Model contracts (any ``torch.nn.Module`` or plain callable):

- ``segmentation``: ``[B, C, H, W]`` float → logits ``[B, K, H, W]`` (``K == 1``: sigmoid).
- ``change``: ``[B, 2, C, H, W]`` (date 1, date 2) → logits ``[B, K, H, W]``; a model that takes the
  two dates as two tensors ``model(a, b)`` is declared with ``change_input="pair"``.
- ``classification``: ``[B, C, H, W]`` → logits ``[B, K]``.
- ``detection``: ``[B, C, H, W]`` → list of ``B`` dicts with ``boxes`` ``[N, 4]`` (window pixels,
  ``x0, y0, x1, y1``), ``scores`` ``[N]`` and ``labels`` ``[N]`` (class index into the card), the
  torchvision detection output format.

Inputs are normalised ``(x - mean) / std`` with the card's statistics; padding and nodata pixels
are 0 after normalisation (the band mean).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch

from geocmid.errors import ConfigError, ModelError
from geocmid.inference.card import ModelCard
from geocmid.registry import TASK_NAMES

Task = Literal["segmentation", "change", "classification", "detection"]
TASKS: tuple[str, ...] = TASK_NAMES  # the task registry's names
#: Test-time augmentation choices: names of sets of dihedral transforms.
TTA_CHOICES = ("none", "flips", "d4")
#: Precisions (Lightning's names, as ``trainer.precision``) → the autocast dtype (None: fp32).
PRECISIONS: dict[str, torch.dtype | None] = {
    "32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16,
}  # fmt: skip


def check_device(device: str) -> None:
    """Raise :class:`ConfigError` (naming ``--device``) for a device this machine lacks: CUDA
    without a usable GPU, MPS off Apple silicon, or a name torch does not know."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ConfigError("--device", f"'{device}' is not a torch device ({error})",
                          "use cpu, cuda, cuda:N or auto") from None  # fmt: skip
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "--device", f"'{device}': this machine has no usable CUDA GPU",
            "use --device cpu, or --device auto (a GPU where there is one)",
        )  # fmt: skip
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "--device", f"'{device}': Apple's MPS is not available here",
            "use --device cpu, or --device auto",
        )  # fmt: skip


@runtime_checkable
class SegmentationModel(Protocol):
    def __call__(self, x: torch.Tensor, /) -> torch.Tensor:
        """``[B, C, H, W]`` → logits ``[B, K, H, W]``."""
        ...


@runtime_checkable
class ChangeModel(Protocol):
    """A change model sees both dates stacked on dim 1: ``[B, 2, C, H, W]`` → ``[B, K, H, W]``.

    Models written as ``forward(a, b)`` (two ``[B, C, H, W]`` tensors) are used with
    ``Predictor(change_input="pair")``.
    """

    def __call__(self, x: torch.Tensor, /) -> torch.Tensor: ...


@runtime_checkable
class DetectionModel(Protocol):
    def __call__(self, x: torch.Tensor, /) -> list[dict[str, torch.Tensor]]:
        """``[B, C, H, W]`` → per image ``{"boxes": [N, 4], "scores": [N], "labels": [N]}``."""
        ...


@dataclass
class Predictor:
    """A model ready for prediction: the callable, its card and its task.

    Args:
        model: the network (see the module docstring for the per-task contract).
        card: a :class:`ModelCard` or the card dictionary.
        task: one of ``segmentation``, ``change``, ``classification``, ``detection``.
        device: torch device the model runs on (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
        change_input: ``"stacked"`` (one ``[B, 2, C, H, W]`` tensor) or ``"pair"`` (two tensors).
        background: class value not turned into polygons (``None``: vectorise every class).
        precision: ``"32-true"`` (default), ``"bf16-mixed"`` or ``"16-mixed"`` (CUDA only): the
            model runs under ``torch.autocast`` with that dtype; logits become float32 before
            the softmax, so probabilities and everything after them stay float32.
        channels_last: run a ``torch.nn.Module`` in channels-last memory format (inputs too):
            the same results to ~1e-5 and ~1.25× the CPU throughput of a ResNet-18 U-Net
            (256² windows, 1 thread); the layout GPUs' tensor cores want under mixed precision.

    Raises:
        ConfigError: an unknown task, change input or precision, or 16-mixed off CUDA.
    """

    model: Callable[..., Any]
    card: ModelCard | dict[str, Any]
    task: Task = "segmentation"
    device: str = "cpu"
    change_input: Literal["stacked", "pair"] = "stacked"
    background: int | None = 0
    precision: str = "32-true"
    channels_last: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.card, dict):
            self.card = ModelCard.from_dict(self.card)
        if self.task not in TASKS:
            raise ConfigError("task", f"'{self.task}' is not a task", f"use one of {TASKS}")
        if self.change_input not in ("stacked", "pair"):
            raise ConfigError("change_input", f"'{self.change_input}'", "use 'stacked' or 'pair'")
        if self.precision not in PRECISIONS:
            raise ConfigError(
                "--precision", f"'{self.precision}' is not a precision",
                f"use one of {', '.join(PRECISIONS)}",
            )  # fmt: skip
        check_device(self.device)
        if self.precision == "16-mixed" and torch.device(self.device).type != "cuda":
            raise ConfigError(
                "--precision", f"16-mixed needs a CUDA device, not '{self.device}'",
                "use bf16-mixed on the CPU, or --device cuda",
            )  # fmt: skip
        if isinstance(self.model, torch.nn.Module):
            self.model = self.model.to(self.device).eval()
            if self.channels_last and not isinstance(self.model, torch.jit.ScriptModule):
                self.model = self.model.to(memory_format=torch.channels_last)
        else:
            self.channels_last = False  # a plain callable: its layout is its own

    def _input(self, batch: np.ndarray) -> torch.Tensor:
        """A normalised numpy batch as a tensor on the device (channels-last when set)."""
        x = torch.from_numpy(batch).to(self.device)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """``torch.autocast`` for a mixed precision, else a no-op."""
        dtype = PRECISIONS[self.precision]
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(torch.device(self.device).type, dtype=dtype)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the model's weights, computed once (the resume store compares it per scene)."""
        from geocmid.inference.store import fingerprint_model

        return fingerprint_model(self.model)

    @property
    def model_card(self) -> ModelCard:
        assert isinstance(self.card, ModelCard)
        return self.card

    def normalise(self, x: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Normalise raw pixels ``[..., C, H, W]`` in place; invalid pixels become 0.

        ``valid`` is a boolean ``[..., H, W]`` mask broadcastable to ``x`` without the band axis.
        """
        card = self.model_card
        mean = np.asarray(card.mean, np.float32)[:, None, None]
        std = np.asarray(card.std, np.float32)[:, None, None]
        x -= mean
        x *= 1.0 / std
        # Non-finite values (NaN bands, a zero std) become 0 like nodata: one isfinite pass
        # where np.nan_to_num makes three.
        bad = ~np.isfinite(x)
        if bad.any():
            x[bad] = 0.0
        x *= np.expand_dims(valid, -3)
        return x

    # ---- dense tasks ------------------------------------------------------------------------
    def dense_probabilities(self, batch: np.ndarray, tta: str = "none") -> np.ndarray:
        """Per-pixel class probabilities for a normalised batch.

        Args:
            batch: ``[B, C, H, W]`` (segmentation) or ``[B, 2, C, H, W]`` (change), float32.
            tta: ``"none"``, ``"flips"`` (identity + horizontal + vertical flip) or ``"d4"``
                (all 8 flips/rotations; needs square windows). Probabilities are averaged.

        Returns:
            ``[B, K, H, W]`` float32 probabilities summing to 1 over K.
        """
        x = self._input(batch)
        total: torch.Tensor | None = None
        transforms = _tta_transforms(tta)
        with torch.inference_mode(), self._autocast():
            for forward, inverse in transforms:
                probs = inverse(self._dense_once(forward(x)))
                total = probs if total is None else total + probs
        assert total is not None
        total = total / len(transforms)
        return total.float().cpu().numpy()

    def _dense_once(self, x: torch.Tensor) -> torch.Tensor:
        if self.task == "change" and self.change_input == "pair":
            logits = self.model(x[:, 0], x[:, 1])
        else:
            logits = self.model(x)
        if not isinstance(logits, torch.Tensor) or logits.ndim != 4:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits)
            raise ModelError(
                "model output",
                f"expected per-pixel logits [B, K, H, W] for task '{self.task}', got {shape}",
                "check the task type or the model's forward()",
            )
        return self._to_probabilities(logits, spatial=x.shape[-2:])

    def _to_probabilities(
        self, logits: torch.Tensor, spatial: Sequence[int] | None
    ) -> torch.Tensor:
        k_expected = self.model_card.num_classes
        k = logits.shape[1]
        if spatial is not None and tuple(logits.shape[-2:]) != tuple(spatial):
            raise ModelError(
                "model output",
                f"spatial size {tuple(logits.shape[-2:])} differs from the window {tuple(spatial)}",
                "return logits at input resolution (upsample inside the model)",
            )
        logits = logits.float()
        if k == 1 and k_expected == 2:  # one-logit binary model
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        if k != k_expected:
            raise ModelError(
                "model output",
                f"has {k} classes but the model card lists {k_expected}",
                "make the card's 'classes' match the model head",
            )
        return torch.softmax(logits, dim=1)

    # ---- scene classification and detection ---------------------------------------------------
    def class_probabilities(self, batch: np.ndarray) -> np.ndarray:
        """``[B, C, H, W]`` normalised → ``[B, K]`` float32 probabilities."""
        with torch.inference_mode(), self._autocast():
            logits = self.model(self._input(batch))
            if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
                raise ModelError(
                    "model output",
                    "expected scene logits [B, K] for task 'classification'",
                    "check the task type or the model's forward()",
                )
            return self._to_probabilities(logits, spatial=None).cpu().numpy()

    def detect(self, batch: np.ndarray) -> list[dict[str, np.ndarray]]:
        """``[B, C, H, W]`` normalised → per window ``boxes [N, 4]``, ``scores``, ``labels [N]``."""
        with torch.inference_mode(), self._autocast():
            out = self.model(self._input(batch))
        if not isinstance(out, list | tuple) or len(out) != batch.shape[0]:
            raise ModelError(
                "model output",
                "expected a list with one {boxes, scores, labels} dict per window",
                "return torchvision-style detections",
            )
        result = []
        for item in out:
            try:
                boxes = item["boxes"].detach().float().cpu().numpy().reshape(-1, 4)
                scores = item["scores"].detach().float().cpu().numpy().reshape(-1)
                labels = item["labels"].detach().cpu().numpy().reshape(-1).astype(np.int64)
            except (KeyError, TypeError, AttributeError) as error:
                raise ModelError(
                    "model output", f"a detection dict is malformed ({error})", "return tensors"
                ) from error
            if np.any(labels < 0) or np.any(labels >= self.model_card.num_classes):
                raise ModelError(
                    "model output",
                    "a detection label is not an index into the card's classes",
                    "labels must be 0..K-1 in card order",
                )
            result.append({"boxes": boxes, "scores": scores, "labels": labels})
        return result


def _tta_transforms(
    tta: str,
) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
    """Pairs (forward, inverse) acting on the last two (spatial) dims."""

    def ident(t: torch.Tensor) -> torch.Tensor:
        return t

    def flip(dims: tuple[int, ...]) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: torch.flip(t, dims)

    def rot(k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda t: torch.rot90(t, k, (-2, -1))

    if tta == "none":
        return [(ident, ident)]
    if tta == "flips":
        return [(ident, ident), (flip((-1,)), flip((-1,))), (flip((-2,)), flip((-2,)))]
    if tta == "d4":
        pairs = [(rot(k), rot(-k)) for k in range(4)]
        for k in range(4):
            fwd_rot, inv_rot = rot(k), rot(-k)
            pairs.append(
                (
                    lambda t, r=fwd_rot: r(torch.flip(t, (-1,))),
                    lambda t, r=inv_rot: torch.flip(r(t), (-1,)),
                )
            )
        return pairs
    raise ConfigError(
        "tta", f"'{tta}' is not a test-time augmentation", f"use one of {TTA_CHOICES}"
    )
