"""Block masks, mask upsampling and mean filling (spec §2.5–2.6)."""

from __future__ import annotations

import pytest
import torch

from geocmid.cmid.masking import BlockMaskGenerator, mean_fill, upsample_mask
from geocmid.errors import ConfigError


@pytest.mark.parametrize(
    ("size", "block", "token_stride", "ratio", "masked_blocks"),
    [
        (224, 32, 4, 0.6, 30),  # official: ceil(49 · 0.6) = 30 of 49 blocks
        (64, 32, 4, 0.6, 3),  # ceil(4 · 0.6) = ceil(2.4)
        (96, 32, 16, 0.6, 6),  # ViT: 9 blocks of 2×2 tokens, ceil(5.4)
        (320, 32, 4, 0.6, 60),  # 100 blocks: 100 · 0.6 = 60.00000000000001 must not give 61
        (160, 32, 4, 0.4, 10),  # 25 · 0.4 = 10.000000000000002 in floating point
    ],
)
def test_exact_block_count_and_structure(
    size: int, block: int, token_stride: int, ratio: float, masked_blocks: int
) -> None:
    gen = BlockMaskGenerator(size, block, token_stride, ratio)
    assert gen.num_masked == masked_blocks
    masks = gen(8, generator=torch.Generator().manual_seed(1))
    t = block // token_stride
    n = size // block
    assert masks.shape == (8, size // token_stride, size // token_stride)
    assert masks.dtype == torch.bool
    # each block is all-masked or all-unmasked, and exactly `masked_blocks` are masked
    blocks = masks.reshape(8, n, t, n, t).permute(0, 1, 3, 2, 4).reshape(8, n * n, t * t)
    assert torch.all(blocks.all(-1) | ~blocks.any(-1))
    assert blocks.all(-1).sum(1).tolist() == [masked_blocks] * 8


def test_masks_differ_between_images() -> None:
    masks = BlockMaskGenerator(224)(16, generator=torch.Generator().manual_seed(0))
    assert len({m.flatten().tolist().__str__() for m in masks}) > 1


@pytest.mark.parametrize(
    ("args", "setting"),
    [((100, 32, 4, 0.6), "chip_size"), ((64, 30, 4, 0.6), "chip_size"),
     ((64, 32, 3, 0.6), "mask_block"), ((64, 32, 4, 0.0), "mask_ratio")],
)  # fmt: skip
def test_invalid_geometry_names_the_setting(args: tuple, setting: str) -> None:
    with pytest.raises(ConfigError, match=f"setting '{setting}'"):
        BlockMaskGenerator(*args)


def test_upsample_mask() -> None:
    m = torch.tensor([[[1, 0], [0, 1]]], dtype=torch.bool)
    up = upsample_mask(m, 2)
    expected = torch.tensor([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]).bool()
    assert torch.equal(up[0], expected)


def test_mean_fill_per_image_per_band() -> None:
    # image 0, band 0: [[1, 2], [3, 6]] mean 3; band 1: [[0, 0], [0, 8]] mean 2
    x = torch.tensor([[[[1.0, 2.0], [3.0, 6.0]], [[0.0, 0.0], [0.0, 8.0]]]])
    x = torch.cat([x, x * 10])  # image 1: means 30 and 20
    mask = torch.tensor([[[True, False], [False, False]], [[False, False], [False, True]]])
    out = mean_fill(x, mask)
    assert out[0, :, 0, 0].tolist() == [3.0, 2.0]
    assert out[1, :, 1, 1].tolist() == [30.0, 20.0]
    unmasked = ~mask.unsqueeze(1).expand_as(x)
    assert torch.equal(out[unmasked], x[unmasked])
    # with a validity mask, nodata pixels do not enter the mean
    valid = torch.tensor([[[True, True], [True, False]]] * 2)
    out = mean_fill(x, mask, valid)
    assert out[0, :, 0, 0].tolist() == [2.0, 0.0]
