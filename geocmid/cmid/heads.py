"""CMID heads: pixel-shuffle MIM decoder, MoCo projector, dense DINO head (spec §3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.models.modules.heads import MoCoProjectionHead
from torch import Tensor, nn


class PixelShuffleDecoder(nn.Module):
    """SimMIM-style linear decoder: 1×1 conv ``C → stride²·out_ch`` then PixelShuffle(stride).

    Args:
        in_channels: channels ``C`` of the final feature map.
        stride: backbone output stride in pixels (32 ResNet/Swin, 16 ViT) = upsampling factor.
        out_channels: number of bands to reconstruct.

    Shapes: ``[B, C, h, w]`` → ``[B, out_channels, h·stride, w·stride]``.
    """

    def __init__(self, in_channels: int, stride: int, out_channels: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, stride * stride * out_channels, kernel_size=1)
        self.shuffle = nn.PixelShuffle(stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.shuffle(self.proj(x))


def moco_projector(in_dim: int, hidden_dim: int = 2048, out_dim: int = 256) -> nn.Module:
    """MoCo-v2 projector ``Linear(C→2048) → ReLU → Linear(2048→256)``, no BatchNorm (lightly's)."""
    return MoCoProjectionHead(in_dim, hidden_dim, out_dim, num_layers=2, batch_norm=False)


class NormedLinear(nn.Module):
    """Weight-normalised linear layer without bias whose gain ``g`` is fixed at 1.

    ``y = x · (v / ‖v‖)ᵀ`` with one norm per output row: ``torch.nn.utils.weight_norm`` with
    ``g`` frozen at 1 (DINO's ``norm_last_layer``), written out so the module deep-copies and
    needs no deprecated hook.
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)  # nn.Linear's default init

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, F.normalize(self.weight, dim=1))


class DenseDINOHead(nn.Module):
    """DINO head applied token-wise (spec §3.3 "LocalHead").

    ``Linear(C→hidden) [BN] GELU → Linear(hidden→hidden) [BN] GELU → Linear(hidden→bottleneck)
    → L2-normalise → NormedLinear(bottleneck→prototypes)``.

    Args:
        in_dim: token channels ``C``.
        hidden_dim: 2048.
        bottleneck_dim: 256.
        num_prototypes: ``K`` = 2048.
        use_bn: BatchNorm1d in the hidden layers (True for ResNet, False for Swin/ViT); the
            statistics are over all tokens of the batch, as Conv1d+BN1d over positions would be.

    Shapes: ``[T, C]`` tokens → ``[T, K]`` logits.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        num_prototypes: int = 2048,
        use_bn: bool = False,
    ) -> None:
        super().__init__()

        def norm() -> nn.Module:
            return nn.BatchNorm1d(hidden_dim) if use_bn else nn.Identity()

        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, hidden_dim),
            norm(),
            nn.GELU(),
            nn.Linear(hidden_dim, bottleneck_dim),
        )
        self.last_layer = NormedLinear(bottleneck_dim, num_prototypes)

    def forward(self, x: Tensor) -> Tensor:
        return self.last_layer(F.normalize(self.mlp(x), dim=-1))
