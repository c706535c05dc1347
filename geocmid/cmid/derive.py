"""Settings CMID derives from the chip size, the backbone and the run length (issue #13).

The paper trains 224 px crops for ~780 k optimizer steps (MillionAID, 200 epochs at a global
batch of 256). Copied verbatim onto a 64 px chip or a run of a few hundred steps, its constants
stop meaning what they meant: 32 px mask blocks make a 2×2 block grid where ⌈4·0.6⌉ = 3 blocks
(75 %) are masked; 20 matches are all the cells of a 2×2 feature map; epoch-counted warm-ups
never end; an EMA of 0.996 averages the teacher over ~250 steps, most of a short run. This module
keeps what the constants *mean* and derives the numbers:

* **mask block** (:func:`derive_mask_block`): the largest block ≤ 32 px (the paper's) that is a
  multiple of the token stride, tiles the chip, and masks ``⌈n²·ratio⌉ / n²`` within
  :data:`MASK_RATIO_TOLERANCE` of ``mask_ratio`` (the paper's 224 px chip masks 30/49 = 61.2 %);
* **matches** (:func:`derive_geometry`): ``round(match_fraction · N²)`` of the ``N × N`` feature
  grid, default the paper's share 20/49;
* **schedules** (:func:`derive_schedule`): lr and teacher-temperature warm-ups as fractions of the
  run (the paper's 10/200 and 50/200 epochs) unless given in steps or epochs; the EMA start
  momentum ``min(0.996, 1 − 1/(ema_horizon_fraction · total_steps))`` so the teacher averages over
  at most a fifth of the run (the paper's 0.996 from 1,250 steps on);
* **key queue** (:func:`derive_queue_size`): the paper's 65,536 keys unless the pretraining set
  has fewer distinct images than that can hold as negatives (a chip dataset of a few hundred
  images), then at most half a key per image.

Every derived value is also settable explicitly; explicit values that break the method's
geometry raise :class:`~geocmid.errors.ConfigError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from geocmid.errors import ConfigError
from geocmid.models.backbones import GEOMETRY

#: The paper's mask block (px) and the largest block geocmid derives.
PAPER_MASK_BLOCK = 32
#: The paper's share of matched cells: 20 of the 7 × 7 grid.
PAPER_MATCH_FRACTION = 20 / 49
#: Largest |masked fraction − mask_ratio| accepted (the paper's 224 px chip is off by 0.012).
MASK_RATIO_TOLERANCE = 0.03
#: The paper's EMA start momentum (cosine to 1 over the run).
PAPER_EMA_START = 0.996
#: The paper's MoCo key queue length.
PAPER_QUEUE_SIZE = 65536


def masked_fraction(chip_size: int, mask_block: int, mask_ratio: float) -> float:
    """Fraction of the chip masked: ``⌈n²·ratio⌉ / n²`` with ``n = chip_size / mask_block``."""
    n = chip_size // mask_block
    # round first: 10 * 0.6 is 6.000000000000001 in floating point and must not ceil to 7
    return math.ceil(round(n * n * mask_ratio, 9)) / (n * n)


def _block_candidates(chip_size: int, token_stride: int) -> list[int]:
    """Blocks ≤ 32 px (largest first) that are multiples of the token stride and tile the chip."""
    top = max(PAPER_MASK_BLOCK, token_stride)
    return [
        b for b in range(top, 0, -1) if b % token_stride == 0 and chip_size % b == 0
    ]  # fmt: skip


def derive_mask_block(
    chip_size: int, family: str, mask_ratio: float, tolerance: float = MASK_RATIO_TOLERANCE
) -> int:
    """The largest mask block (px) that keeps the masked fraction at ``mask_ratio``.

    Args:
        chip_size: square chip edge in px.
        family: ``resnet``, ``swin`` or ``vit`` (token stride 4, 4, 16 px).
        mask_ratio: wanted masked fraction.
        tolerance: largest accepted ``|masked fraction − mask_ratio|``.

    Returns:
        block edge in px: ≤ 32, a multiple of the token stride, dividing ``chip_size``.
        224 px → 32 (30/49 blocks, 61.2 %); 96 px → 24 (ResNet/Swin, 10/16, 62.5 %) or 16
        (ViT, 22/36, 61.1 %); 64 px → 16 (10/16, 62.5 %).

    Raises:
        ConfigError: naming ``mask_block`` when no block within the tolerance exists.
    """
    _, token_stride = GEOMETRY[family]
    candidates = _block_candidates(chip_size, token_stride)
    for block in candidates:
        if abs(masked_fraction(chip_size, block, mask_ratio) - mask_ratio) <= tolerance + 1e-9:
            return block
    tried = ", ".join(
        f"{b} px → {masked_fraction(chip_size, b, mask_ratio):.0%}" for b in candidates
    )
    raise ConfigError(
        "setting 'mask_block'",
        f"no mask block masks {mask_ratio:.0%} ± {tolerance:.0%} of a {chip_size} px chip with "
        f"the {family} token stride ({token_stride} px): {tried or 'no block tiles the chip'}",
        f"use a chip size with more blocks (e.g. {max(64, chip_size * 2)} px), or a mask_ratio "
        "one of these blocks reaches",
    )


@dataclass(frozen=True)
class CMIDGeometry:
    """Mask and match geometry of one chip size and backbone family.

    Attributes:
        chip_size: chip edge (px).
        family: backbone family.
        stride: backbone output stride (px per feature cell).
        token_stride: px per mask token (ResNet/Swin stem 4, ViT patch 16).
        mask_block: mask block edge (px).
        mask_ratio: configured ratio.
        num_masked: blocks masked per image.
        grid_size: ``N``, feature cells per side (chip / stride).
        num_matches: position-matched cells per image (local loss).
    """

    chip_size: int
    family: str
    stride: int
    token_stride: int
    mask_block: int
    mask_ratio: float
    num_masked: int
    grid_size: int
    num_matches: int

    @property
    def blocks_per_side(self) -> int:
        return self.chip_size // self.mask_block

    @property
    def masked_fraction(self) -> float:
        """Masked share of the chip (``num_masked / blocks²``)."""
        return self.num_masked / self.blocks_per_side**2

    @property
    def match_share(self) -> float:
        """Matched share of the feature grid (``num_matches / N²``)."""
        return self.num_matches / self.grid_size**2


def derive_geometry(
    chip_size: int,
    family: str,
    mask_ratio: float,
    mask_block: int | None = None,
    match_fraction: float = PAPER_MATCH_FRACTION,
    num_matches: int | None = None,
    tolerance: float = MASK_RATIO_TOLERANCE,
) -> CMIDGeometry:
    """Mask block and matches for a chip; explicit values are checked, unset ones derived.

    Args:
        chip_size: square chip edge in px (a multiple of the backbone output stride).
        family: ``resnet``, ``swin`` or ``vit``.
        mask_ratio: fraction of blocks to mask, in (0, 1].
        mask_block: explicit block edge (px), or None to derive it (:func:`derive_mask_block`).
        match_fraction: matched share of the ``N × N`` grid when ``num_matches`` is None.
        num_matches: explicit matched cells per image (1 … N²), or None.
        tolerance: largest accepted ``|masked fraction − mask_ratio|``.

    Raises:
        ConfigError: naming ``chip_size``, ``mask_block``, ``mask_ratio``, ``num_matches`` or
            ``match_fraction`` and the fix.
    """
    stride, token_stride = GEOMETRY[family]
    if not 0.0 < mask_ratio <= 1.0:
        raise ConfigError("setting 'mask_ratio'", f"must be in (0, 1], got {mask_ratio}")
    if chip_size <= 0 or chip_size % stride:
        good = max(stride, round(chip_size / stride) * stride)
        raise ConfigError(
            "setting 'chip_size'",
            f"chip size {chip_size} px is not a multiple of the {family} output stride "
            f"({stride} px)",
            f"use a chip size divisible by {stride}, e.g. {good}",
        )
    if mask_block is None:
        block = derive_mask_block(chip_size, family, mask_ratio, tolerance)
    else:
        block = int(mask_block)
        if block <= 0 or block % token_stride:
            raise ConfigError(
                "setting 'mask_block'",
                f"mask block {block} px is not a multiple of the {family} token stride "
                f"({token_stride} px)",
                f"use a multiple of {token_stride}, or leave mask_block unset (null) to derive it",
            )
        if chip_size % block:
            raise ConfigError(
                "setting 'chip_size'",
                f"chip size {chip_size} px is not a multiple of the mask block ({block} px)",
                f"use a chip size divisible by {math.lcm(block, stride)}, or leave mask_block "
                "unset (null) to derive it",
            )
        frac = masked_fraction(chip_size, block, mask_ratio)
        if abs(frac - mask_ratio) > tolerance + 1e-9:
            n = chip_size // block
            raise ConfigError(
                "setting 'mask_block'",
                f"{block} px blocks on a {chip_size} px chip make {n}×{n} blocks of which "
                f"⌈{n * n}·{mask_ratio}⌉ = {round(frac * n * n)} are masked ({frac:.0%}, not "
                f"{mask_ratio:.0%})",
                "leave mask_block unset (null) to derive it "
                f"({derive_mask_block(chip_size, family, mask_ratio, tolerance)} px here)"
                if _block_exists(chip_size, family, mask_ratio, tolerance)
                else "use a larger chip",
            )
    n_grid = chip_size // stride
    cells = n_grid * n_grid
    if num_matches is None:
        if not 0.0 < match_fraction <= 1.0:
            raise ConfigError(
                "setting 'match_fraction'", f"must be in (0, 1], got {match_fraction}"
            )
        matches = min(cells, max(1, round(match_fraction * cells)))
    else:
        matches = int(num_matches)
        if not 1 <= matches <= cells:
            raise ConfigError(
                "setting 'num_matches'",
                f"{matches} matches but a {chip_size} px chip has a {n_grid}×{n_grid} "
                f"{family} feature grid ({cells} cells)",
                "leave num_matches unset (null): match_fraction of the grid is used "
                f"({min(cells, max(1, round(PAPER_MATCH_FRACTION * cells)))} here)",
            )
    n_blocks = (chip_size // block) ** 2
    return CMIDGeometry(
        chip_size=chip_size,
        family=family,
        stride=stride,
        token_stride=token_stride,
        mask_block=block,
        mask_ratio=mask_ratio,
        num_masked=math.ceil(round(n_blocks * mask_ratio, 9)),
        grid_size=n_grid,
        num_matches=matches,
    )


def _block_exists(chip_size: int, family: str, mask_ratio: float, tolerance: float) -> bool:
    try:
        derive_mask_block(chip_size, family, mask_ratio, tolerance)
    except ConfigError:
        return False
    return True


# ------------------------------------------------------------------------------------------------
#: The paper's lr warm-up as a share of the run (10 of 200 epochs).
PAPER_WARMUP_FRACTION = 10 / 200
#: The paper's teacher-temperature warm-up as a share of the run (50 of 200 epochs).
PAPER_TEACHER_TEMP_WARMUP_FRACTION = 50 / 200
#: Longest teacher averaging window (1 / (1 − τ)) as a share of the run.
EMA_HORIZON_FRACTION = 0.2


@dataclass(frozen=True)
class CMIDSchedule:
    """Step-counted schedules of one run (all counts in optimizer steps).

    Attributes:
        total_steps: optimizer steps of the whole run.
        warmup_steps: linear lr warm-up.
        teacher_temp_warmup_steps: linear teacher-temperature warm-up.
        ema_start: EMA momentum at step 0 (cosine to ``ema_end`` at ``total_steps``).
        ema_end: EMA momentum at the end.
    """

    total_steps: int
    warmup_steps: int
    teacher_temp_warmup_steps: int
    ema_start: float
    ema_end: float


def _steps(
    name: str, steps: int | None, epochs: float | None, fraction: float,
    total: int, steps_per_epoch: float,
) -> int:  # fmt: skip
    if steps is not None:
        if steps < 0:
            raise ConfigError(f"setting '{name}_steps'", f"must be >= 0, got {steps}")
        return int(steps)
    if epochs is not None:
        if epochs < 0:
            raise ConfigError(f"setting '{name}_epochs'", f"must be >= 0, got {epochs}")
        return round(epochs * steps_per_epoch)
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(f"setting '{name}_fraction'", f"must be in [0, 1], got {fraction}")
    return round(fraction * total)


def derive_schedule(
    total_steps: int,
    steps_per_epoch: float,
    *,
    warmup_steps: int | None = None,
    warmup_epochs: float | None = None,
    warmup_fraction: float = PAPER_WARMUP_FRACTION,
    teacher_temp_warmup_steps: int | None = None,
    teacher_temp_warmup_epochs: float | None = None,
    teacher_temp_warmup_fraction: float = PAPER_TEACHER_TEMP_WARMUP_FRACTION,
    ema_momentum: tuple[float, float] | None = None,
    ema_horizon_fraction: float = EMA_HORIZON_FRACTION,
) -> CMIDSchedule:
    """Warm-up lengths and EMA momenta of a run of ``total_steps`` optimizer steps.

    Each warm-up is taken from ``*_steps`` if set, else ``*_epochs`` × ``steps_per_epoch``, else
    ``*_fraction`` × ``total_steps`` (defaults: the paper's 10/200 and 50/200 epochs). The EMA
    momentum is ``ema_momentum`` if set, else ``(min(0.996, 1 − 1/(h·T)), 1)`` with
    ``h = ema_horizon_fraction``: the teacher's averaging window ``1/(1 − τ)`` is at most ``h`` of
    the run (0.996 = the paper's from ``T ≥ 1250``; ``T = 480`` gives 0.990).

    Raises:
        ConfigError: a negative count or a fraction outside [0, 1].
    """
    total = max(int(total_steps), 1)
    warm = _steps("warmup", warmup_steps, warmup_epochs, warmup_fraction, total, steps_per_epoch)
    temp = _steps(
        "teacher_temp_warmup", teacher_temp_warmup_steps, teacher_temp_warmup_epochs,
        teacher_temp_warmup_fraction, total, steps_per_epoch,
    )  # fmt: skip
    if ema_momentum is not None:
        start, end = (float(v) for v in ema_momentum)
    else:
        if not 0.0 < ema_horizon_fraction <= 1.0:
            raise ConfigError(
                "setting 'ema_horizon_fraction'", f"must be in (0, 1], got {ema_horizon_fraction}"
            )
        horizon = max(ema_horizon_fraction * total, 1.0)
        start, end = min(PAPER_EMA_START, 1.0 - 1.0 / horizon), 1.0
    for value in (start, end):
        if not 0.0 <= value <= 1.0:
            raise ConfigError("setting 'ema_momentum'", f"values must be in [0, 1], got {value}")
    return CMIDSchedule(total, warm, temp, start, end)


def teacher_temperature_at(step: int, start: float, end: float, warmup_steps: int) -> float:
    """Teacher temperature at optimizer ``step``: linear ``start → end`` over ``warmup_steps``.

    The per-step form of DINO's per-epoch ``linspace(start, end, warmup_epochs)`` (spec §4.3.7):
    step 0 → ``start``, step ≥ ``warmup_steps`` → ``end``.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(end)
    return float(start + (end - start) * max(step, 0) / warmup_steps)


def derive_queue_size(num_images: int | None, keys_per_step: int) -> int:
    """Key-queue length for a pretraining set of ``num_images`` distinct images.

    CMID enqueues both views' keys of every image of a step (``keys_per_step`` = 2 × the global
    batch). The paper's 65,536-key queue holds the keys of ~33 k images, ~3 % of Million-AID's
    1 M, so nearly every entry is a true negative. On a set of a few hundred images the same
    queue holds every image ~50 times over: an image's own earlier keys sit among its negatives,
    and the InfoNCE term pushes apart views of the same image. The queue is therefore capped at
    ``num_images / 2`` keys (the views of at most a quarter of the images), rounded down to a
    whole number of steps' keys, and never shorter than one step's keys.

    Measured (``benchmarks/bench_probe.py``, 600 NWPU-RESISC12 images, ResNet-18, 64 px, batch
    64, 20 CPU-minutes): 65,536 keys → kNN / linear top-1 46.7 / 43.9 %; 256 (this rule) →
    47.8 / 48.9 %.

    Args:
        num_images: distinct images the pretraining samples from; ``None`` when unbounded
            (random chips of georeferenced scenes): the paper's length.
        keys_per_step: keys enqueued per optimizer step (2 × batch × devices), > 0.

    Returns:
        the queue length K, a multiple of ``keys_per_step`` when below the paper's.
    """
    if keys_per_step <= 0:
        raise ValueError(f"keys_per_step must be > 0, got {keys_per_step}")
    if num_images is None:
        return PAPER_QUEUE_SIZE
    steps = (int(num_images) // 2) // keys_per_step
    return min(PAPER_QUEUE_SIZE, max(steps, 1) * keys_per_step)
