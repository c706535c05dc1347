"""EMA teacher and schedules (spec §3.2, §4.3.7, fix §9.5).

The teacher update must run **after** ``optimizer.step()`` (Lightning: ``on_train_batch_end``), so
the teacher follows the weights the student has just reached, not last step's (fix of §9.5).
"""

from __future__ import annotations

from collections.abc import Iterable

from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn


def momentum_at(step: int, total_steps: int, base: float = 0.996, end: float = 1.0) -> float:
    """EMA momentum ``τ_k = end − (end − base)·(cos(π k / K) + 1) / 2``, ``K = total_steps``.

    τ_0 = base (0.996), τ_K = end (1). lightly's ``cosine_schedule`` divides by ``max_steps − 1``,
    so we pass ``K + 1`` to get exactly the spec's ``cos(π k / K)``.
    """
    return cosine_schedule(min(step, total_steps), total_steps + 1, base, end)


def teacher_temperature(
    epoch: int, start: float = 0.04, end: float = 0.07, warmup_epochs: int = 50
) -> float:
    """Teacher temperature for ``epoch`` (0-based): linear ``start → end`` over ``warmup_epochs``.

    As DINO's ``linspace(start, end, warmup_epochs)``: epoch 0 → ``start``, epoch
    ``warmup_epochs − 1`` and later → ``end``.
    """
    if warmup_epochs <= 1 or epoch >= warmup_epochs - 1:
        return end
    return start + (end - start) * max(epoch, 0) / (warmup_epochs - 1)


def ema_update(pairs: Iterable[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """``θ_t ← τ·θ_t + (1 − τ)·θ_s`` for every (student, teacher) pair; parameters only.

    Buffers (BatchNorm running statistics) are not averaged: the teacher runs in train mode and
    uses batch statistics, as in the official code.
    """
    for student, teacher in pairs:
        update_momentum(student, teacher, momentum)
