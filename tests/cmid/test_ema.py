"""EMA momentum and teacher-temperature schedules; EMA after the optimizer step (fix §9.5)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from geocmid.cmid.ema import ema_update, momentum_at, teacher_temperature


def test_momentum_schedule_matches_spec_equation() -> None:
    total = 1000
    for k in (0, 1, 250, 500, 999, 1000):
        expected = 1 - (1 - 0.996) * (math.cos(math.pi * k / total) + 1) / 2
        assert momentum_at(k, total) == pytest.approx(expected, abs=1e-12)
    assert momentum_at(0, total) == pytest.approx(0.996)
    assert momentum_at(500, total) == pytest.approx(0.998)
    assert momentum_at(total, total) == 1.0
    assert momentum_at(total + 5, total) == 1.0


def test_teacher_temperature_warmup_per_epoch() -> None:
    assert teacher_temperature(0) == pytest.approx(0.04)
    assert teacher_temperature(49) == pytest.approx(0.07)
    assert teacher_temperature(300) == pytest.approx(0.07)
    # linear in between (DINO's linspace over 50 epochs)
    assert teacher_temperature(1) == pytest.approx(0.04 + 0.03 / 49)
    assert teacher_temperature(10) - teacher_temperature(9) == pytest.approx(0.03 / 49)


def test_ema_update_after_optimizer_step() -> None:
    student = nn.Linear(2, 1, bias=False)
    teacher = nn.Linear(2, 1, bias=False)
    teacher.load_state_dict(student.state_dict())
    teacher.requires_grad_(False)
    with torch.no_grad():
        student.weight.copy_(torch.tensor([[1.0, 2.0]]))
        teacher.weight.copy_(torch.tensor([[0.0, 0.0]]))
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    student(torch.tensor([[1.0, 1.0]])).sum().backward()  # grad = [1, 1]
    opt.step()  # student → [0.5, 1.5]
    ema_update([(student, teacher)], 0.9)  # teacher follows the *new* student weights
    torch.testing.assert_close(teacher.weight, torch.tensor([[0.05, 0.15]]))
    assert teacher.weight.grad is None
