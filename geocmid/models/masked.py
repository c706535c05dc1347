"""Masked-input path of the CMID student: an additive, zero-initialised learned mask token.

The token is added (not substituted) at masked positions of the backbone's token map: after
the ResNet stem (stride 4), after the Swin patch-embed + LayerNorm (stride 4), or on the ViT patch
tokens before the position embedding (stride 16). Additive + zero-init means the masked student
starts out identical to the plain backbone (spec §3.1, ``replace=False``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from geocmid.errors import ModelError
from geocmid.models.backbones import Backbone


class MaskedBackbone(nn.Module):
    """Wrap a :class:`Backbone` so ``forward(x, mask)`` adds a learned token where ``mask`` is 1.

    Attributes:
        backbone: the wrapped backbone (its weights are what gets exported).
        mask_token: ``[1, embed_dim, 1, 1]`` parameter, zero-initialised.
    """

    def __init__(self, backbone: Backbone) -> None:
        super().__init__()
        self.backbone = backbone
        self.mask_token = nn.Parameter(torch.zeros(1, backbone.embed_dim, 1, 1))

    # Mirror the backbone's geometry so callers can treat both alike.
    @property
    def family(self) -> str:
        return self.backbone.family

    @property
    def out_channels(self) -> int:
        return self.backbone.out_channels

    @property
    def stride(self) -> int:
        return self.backbone.stride

    @property
    def token_stride(self) -> int:
        return self.backbone.token_stride

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        """Final feature map of ``x`` with the mask token added at masked tokens.

        Args:
            x: normalised image ``[B, C, H, W]`` (masked pixels already mean-filled by the caller).
            mask: ``[B, H / token_stride, W / token_stride]``, 1 (or True) = masked; None = no mask.

        Returns:
            ``[B, out_channels, H / stride, W / stride]``.
        """
        tokens = self.backbone.embed(x)
        if mask is not None:
            if mask.shape != (tokens.shape[0], *tokens.shape[2:]):
                raise ModelError(
                    "masked backbone input",
                    f"mask shape {tuple(mask.shape)} does not match the token grid "
                    f"{(tokens.shape[0], *tokens.shape[2:])} (token stride {self.token_stride})",
                    "build the mask with BlockMaskGenerator(token_stride=backbone.token_stride)",
                )
            tokens = tokens + self.mask_token * mask.unsqueeze(1).to(tokens.dtype)
        return self.backbone.forward_tokens(tokens)
