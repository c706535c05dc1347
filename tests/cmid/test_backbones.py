"""Backbone factory and the masked student path."""

from __future__ import annotations

import pytest
import torch

from geocmid.errors import ConfigError, ModelError
from geocmid.models import MaskedBackbone, create_backbone


@pytest.mark.parametrize(
    ("name", "bands", "size", "channels", "stride", "token_stride"),
    [
        ("resnet18", 3, 64, 512, 32, 4),
        ("resnet50", 13, 64, 2048, 32, 4),
        ("swin_tiny", 4, 64, 768, 32, 4),
        ("swin_tiny", 3, 96, 768, 32, 4),
        ("vit_small", 13, 64, 384, 16, 16),
    ],
)
def test_geometry(
    name: str, bands: int, size: int, channels: int, stride: int, token_stride: int
) -> None:
    bb = create_backbone(name, bands, img_size=size).eval()
    assert (bb.out_channels, bb.stride, bb.token_stride) == (channels, stride, token_stride)
    x = torch.randn(2, bands, size, size)
    with torch.no_grad():
        tokens = bb.embed(x)
        out = bb(x)
    assert tokens.shape == (2, bb.embed_dim, size // token_stride, size // token_stride)
    assert out.shape == (2, channels, size // stride, size // stride)


def test_swin_runs_other_sizes_divisible_by_32() -> None:
    bb = create_backbone("swin_tiny", 3, img_size=64).eval()
    with torch.no_grad():
        assert bb(torch.randn(1, 3, 128, 128)).shape == (1, 768, 4, 4)


@pytest.mark.parametrize("name", ["resnet18", "swin_tiny", "vit_small"])
def test_zero_mask_token_is_identity_and_trained_token_changes_only_masked_input(
    name: str,
) -> None:
    torch.manual_seed(0)
    bb = create_backbone(name, 3, img_size=64).eval()
    masked = MaskedBackbone(bb).eval()
    x = torch.randn(2, 3, 64, 64)
    t = 64 // bb.token_stride
    mask = torch.zeros(2, t, t, dtype=torch.bool)
    mask[:, : t // 2] = True
    with torch.no_grad():
        plain = bb(x)
        # zero-init additive token: identical to the plain backbone
        torch.testing.assert_close(masked(x, mask), plain)
        masked.mask_token.fill_(1.0)
        torch.testing.assert_close(masked(x, None), plain)
        assert not torch.allclose(masked(x, mask), plain)
        # additive, at token level: equals embedding + token where masked
        tokens = bb.embed(x) + mask[:, None].float()
        torch.testing.assert_close(masked(x, mask), bb.forward_tokens(tokens))


def test_mask_shape_is_checked() -> None:
    masked = MaskedBackbone(create_backbone("resnet18", 3))
    with pytest.raises(ModelError, match="token grid"):
        masked(torch.randn(1, 3, 64, 64), torch.zeros(1, 4, 4))


def test_unknown_backbone_names_the_setting() -> None:
    with pytest.raises(ConfigError, match=r"setting .backbone.*did you mean .resnet50."):
        create_backbone("resnet5O", 3)
