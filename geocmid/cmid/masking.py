"""Block masks and mean filling for CMID's masked image modelling (spec §2.5–2.6).

Masks live at *token* resolution (one entry per ``token_stride`` × ``token_stride`` pixels);
they are upsampled to pixels with :func:`upsample_mask` where the input or the loss needs them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from geocmid.errors import ConfigError


class BlockMaskGenerator:
    """Random square-block masks with an exact number of masked blocks.

    The chip is a ``n × n`` grid of ``block``-pixel blocks (``n = size / block``); exactly
    ``ceil(n² · ratio)`` blocks are drawn uniformly without replacement for every image, and each
    block spans ``(block / token_stride)²`` tokens.

    Args:
        size: chip size in pixels (square).
        block: mask block size in pixels (32 for ResNet/Swin; a multiple of 16 for ViT).
        token_stride: pixels per token of the masked stage (4 ResNet/Swin, 16 ViT).
        ratio: fraction of blocks to mask, in (0, 1].
    """

    def __init__(self, size: int, block: int = 32, token_stride: int = 4, ratio: float = 0.6):
        if block <= 0 or size % block:
            raise ConfigError(
                "setting 'chip_size'",
                f"chip size {size} px is not a multiple of the mask block ({block} px)",
                f"use a chip size divisible by {block}, e.g. {max(block, size // block * block)}",
            )
        if block % token_stride:
            raise ConfigError(
                "setting 'mask_block'",
                f"mask block {block} px is not a multiple of the token stride ({token_stride} px)",
                f"use a mask block divisible by {token_stride}",
            )
        if not 0.0 < ratio <= 1.0:
            raise ConfigError("setting 'mask_ratio'", f"must be in (0, 1], got {ratio}")
        self.size = size
        self.block = block
        self.token_stride = token_stride
        self.ratio = ratio
        self.blocks_per_side = size // block
        self.tokens_per_block = block // token_stride
        n_blocks = self.blocks_per_side**2
        # round first: 10 * 0.6 is 6.000000000000001 in floating point and must not ceil to 7
        self.num_masked = math.ceil(round(n_blocks * ratio, 9))

    @property
    def token_size(self) -> int:
        """Side of the returned mask, in tokens (``size / token_stride``)."""
        return self.size // self.token_stride

    def __call__(
        self,
        batch_size: int,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw ``batch_size`` masks → BoolTensor ``[B, size/token_stride, size/token_stride]``."""
        n = self.blocks_per_side
        scores = torch.rand(batch_size, n * n, device=device, generator=generator)
        chosen = scores.argsort(dim=1)[:, : self.num_masked]
        blocks = torch.zeros(batch_size, n * n, dtype=torch.bool, device=device)
        blocks.scatter_(1, chosen, True)
        return upsample_mask(blocks.view(batch_size, n, n), self.tokens_per_block)


def upsample_mask(mask: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upsampling of ``[B, h, w]`` to ``[B, h·factor, w·factor]`` (dtype kept)."""
    return mask.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def mean_fill(x: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor:
    """Replace masked pixels of each band by that band's mean over the image.

    The mean is over *all* pixels of the image (masked included, as in the official code), or over
    its valid pixels when ``valid`` is given, so nodata never leaks into the fill value.

    Args:
        x: ``[B, C, H, W]`` normalised images.
        mask: ``[B, H, W]`` pixel mask, 1/True = masked.
        valid: optional ``[B, H, W]`` bool, True = real data.

    Returns:
        ``[B, C, H, W]``: ``x`` outside the mask, the per-image per-band mean inside.
    """
    if valid is None:
        mean = x.mean(dim=(2, 3), keepdim=True)
    else:
        w = valid.unsqueeze(1).to(x.dtype)
        mean = (x * w).sum(dim=(2, 3), keepdim=True) / w.sum(dim=(2, 3), keepdim=True).clamp_min(1)
    return torch.where(mask.unsqueeze(1).bool(), mean.expand_as(x), x)
