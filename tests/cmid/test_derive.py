"""Settings derived from the chip size, the backbone and the run length (issue #13).

The mask geometry and the matches must keep the paper's meaning at every chip size (60 % of the
chip masked, 20/49 of the feature grid matched); schedules must leave their warm-ups in a short
run and reproduce the paper's numbers in a long one.
"""

from __future__ import annotations

import pytest
import torch

from geocmid.cmid.derive import (
    PAPER_MATCH_FRACTION,
    PAPER_QUEUE_SIZE,
    derive_geometry,
    derive_queue_size,
    derive_schedule,
    masked_fraction,
    teacher_temperature_at,
)
from geocmid.cmid.masking import BlockMaskGenerator
from geocmid.cmid.task import check_chip_size
from geocmid.errors import ConfigError

# (family, chip) → (mask block, masked blocks, feature grid N, matches)
EXPECTED = {
    ("resnet", 64): (16, 10, 2, 2),
    ("resnet", 96): (24, 10, 3, 4),
    ("resnet", 224): (32, 30, 7, 20),  # the paper's geometry
    ("resnet", 512): (32, 154, 16, 104),
    ("swin", 64): (16, 10, 2, 2),
    ("swin", 96): (24, 10, 3, 4),
    ("swin", 224): (32, 30, 7, 20),
    ("swin", 512): (32, 154, 16, 104),
    ("vit", 64): (16, 10, 4, 7),
    ("vit", 96): (16, 22, 6, 15),
    ("vit", 224): (32, 30, 14, 80),
    ("vit", 512): (32, 154, 32, 418),
}


@pytest.mark.parametrize(("family", "chip"), sorted(EXPECTED))
def test_derived_geometry_keeps_the_papers_shares(family: str, chip: int) -> None:
    g = derive_geometry(chip, family, 0.6)
    assert (g.mask_block, g.num_masked, g.grid_size, g.num_matches) == EXPECTED[family, chip]
    assert abs(g.masked_fraction - 0.6) <= 0.03  # 224 px: 30/49 = 61.2 % like the paper
    assert abs(g.match_share - PAPER_MATCH_FRACTION) <= 0.5 / g.grid_size**2 + 1e-9
    # the masks actually drawn cover that fraction of the chip
    gen = BlockMaskGenerator(chip, g.mask_block, g.token_stride, 0.6)
    mask = gen(3, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, chip // g.token_stride, chip // g.token_stride)
    assert mask.float().mean(dim=(1, 2)).tolist() == pytest.approx([g.masked_fraction] * 3)


def test_recipe_block_on_small_chips_is_an_error_naming_the_fix() -> None:
    # the example: 32 px blocks on 64 px chips mask 3 of 4 blocks
    assert masked_fraction(64, 32, 0.6) == 0.75
    with pytest.raises(ConfigError, match=r"(?s)mask_block.*2×2 blocks.*75%, not 60%.*16 px here"):
        derive_geometry(64, "resnet", 0.6, mask_block=32)
    with pytest.raises(ConfigError, match=r"model.init_args.mask_block.*75%"):
        check_chip_size("resnet18", 64, 32)
    check_chip_size("resnet18", 64, None)  # derived: fine
    check_chip_size("resnet18", 224, 32)  # the paper's


def test_impossible_geometry_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"no mask block masks 60% ± 3%.*48 px"):
        derive_geometry(48, "vit", 0.6)
    with pytest.raises(ConfigError, match=r"chip_size.*not a multiple of the resnet output stride"):
        derive_geometry(80, "resnet", 0.6)
    with pytest.raises(ConfigError, match=r"num_matches.*20 matches.*2×2.*\(4 cells\)"):
        derive_geometry(64, "resnet", 0.6, num_matches=20)
    with pytest.raises(ConfigError, match=r"mask_block.*token stride"):
        derive_geometry(224, "vit", 0.6, mask_block=8)


def test_explicit_values_win() -> None:
    g = derive_geometry(224, "resnet", 0.5, mask_block=16, num_matches=9)
    assert (g.mask_block, g.num_masked, g.num_matches) == (16, 98, 9)
    assert derive_geometry(224, "resnet", 0.6, match_fraction=1.0).num_matches == 49


def test_short_run_leaves_its_warmups_and_gets_a_moving_teacher() -> None:
    # the hand-corrected run: 480 steps; derived EMA start ≈ 0.99 (not 0.996)
    s = derive_schedule(480, 48)
    assert s.ema_start == pytest.approx(1 - 1 / 96) and s.ema_end == 1.0
    assert s.warmup_steps == 24 and s.teacher_temp_warmup_steps == 120
    assert teacher_temperature_at(0, 0.04, 0.07, 120) == pytest.approx(0.04)
    assert teacher_temperature_at(60, 0.04, 0.07, 120) == pytest.approx(0.055)
    assert teacher_temperature_at(479, 0.04, 0.07, 120) == pytest.approx(0.07)


def test_paper_run_gets_the_papers_schedule() -> None:
    # MillionAID ≈ 990 k images, global batch 256, 200 epochs
    per_epoch = 990_000 // 256
    s = derive_schedule(200 * per_epoch, per_epoch)
    assert s.ema_start == 0.996
    assert s.warmup_steps == 10 * per_epoch  # 10 epochs
    assert s.teacher_temp_warmup_steps == 50 * per_epoch  # 50 epochs


def test_schedule_in_steps_or_epochs() -> None:
    s = derive_schedule(
        1000, 100, warmup_steps=7, teacher_temp_warmup_epochs=2.5, ema_momentum=(0.9, 0.95)
    )
    assert (s.warmup_steps, s.teacher_temp_warmup_steps) == (7, 250)
    assert (s.ema_start, s.ema_end) == (0.9, 0.95)
    with pytest.raises(ConfigError, match="warmup_fraction"):
        derive_schedule(100, 10, warmup_fraction=1.5)


def test_queue_holds_at_most_half_a_key_per_image() -> None:
    assert derive_queue_size(600, 128) == 256  # NWPU-RESISC12 train, batch 64: 2 steps' keys
    assert derive_queue_size(100, 128) == 128  # never shorter than one step's keys
    assert derive_queue_size(None, 128) == PAPER_QUEUE_SIZE == 65536  # scenes: unbounded chips
    assert derive_queue_size(1_000_000, 512) == 65536  # Million-AID: the paper's
    assert derive_queue_size(100_000, 512) == 49_664  # 97 steps of 512 keys ≤ 50,000
    with pytest.raises(ValueError):
        derive_queue_size(600, 0)
