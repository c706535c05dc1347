"""Two-view transform: crops at known offsets, flips, correspondence grids (fix §9.1), aug."""

from __future__ import annotations

import pytest
import torch

from geocmid.cmid.losses import position_match
from geocmid.cmid.views import (
    CMIDViewTransform,
    Photometric,
    collate_two_views,
    correspondence_grid,
    crop_resize,
    sample_crop_boxes,
)
from geocmid.errors import ConfigError


def _coords(size: int) -> torch.Tensor:
    """[1, 2, S, S] image whose bands hold each pixel's centre (y, x) in source pixels."""
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    return torch.stack([ys, xs])[None].float()


def test_crop_at_known_pixel_offsets_with_and_without_flip() -> None:
    x = torch.arange(64.0).view(1, 1, 8, 8)
    box = torch.tensor([[2.0, 3.0, 4.0, 4.0]])  # top 2, left 3, 4×4 px
    out = crop_resize(x, box, torch.tensor([False]), 4)
    assert torch.equal(out[0, 0], x[0, 0, 2:6, 3:7])
    flipped = crop_resize(x, box, torch.tensor([True]), 4)
    assert torch.equal(flipped[0, 0], x[0, 0, 2:6, 3:7].flip(-1))
    # upsampling ×2, pixel-centre convention: output pixel 0 samples top + ½·4/8 = 2.25
    up = crop_resize(_coords(8), box, torch.tensor([False]), 8)
    assert up[0, :, 0, 0].tolist() == pytest.approx([2.25, 3.25])


def test_grid_cell_centres_in_source_pixels() -> None:
    box = torch.tensor([10.0, 20.0, 64.0, 32.0])  # top, left, h, w
    g = correspondence_grid(box, False, 2)
    assert g.shape == (2, 2, 2)
    assert g[0, 0].tolist() == [26.0, 28.0]  # (10 + 0.5·32, 20 + 0.5·16)
    assert g[1, 1].tolist() == [58.0, 44.0]  # (10 + 1.5·32, 20 + 1.5·16)
    gf = correspondence_grid(box, True, 2)  # flipped: column 0 shows the right half of the box
    assert gf[0, 0].tolist() == [26.0, 44.0] and gf[0, 1].tolist() == [26.0, 28.0]


@pytest.mark.parametrize("flip", [False, True])
def test_grid_matches_the_pixels_each_feature_cell_sees(flip: bool) -> None:
    """Mean source coordinate of the output pixels in cell (k, l) == grid[k, l]."""
    size, n, out = 96, 3, 96
    box = torch.tensor([[8.0, 24.0, 60.0, 72.0]])
    crop = crop_resize(_coords(size), box, torch.tensor([flip]), out)  # [1, 2, 96, 96]
    cells = crop[0].reshape(2, n, out // n, n, out // n).mean(dim=(2, 4)).permute(1, 2, 0)
    torch.testing.assert_close(cells, correspondence_grid(box[0], flip, n), atol=1e-2, rtol=0)


def test_matched_cells_of_overlapping_crops_land_on_the_same_source_pixels() -> None:
    """Two crops overlapping by a known offset: matches are exact and point to the same ground."""
    size, n = 128, 4
    src = _coords(size)
    # view 1: rows 0..63, cols 0..63; view 2: rows 32..95, cols 32..95, flipped
    b1, b2 = torch.tensor([[0.0, 0.0, 64.0, 64.0]]), torch.tensor([[32.0, 32.0, 64.0, 64.0]])
    f1, f2 = torch.tensor([False]), torch.tensor([True])
    g1, g2 = correspondence_grid(b1, f1, n), correspondence_grid(b2, f2, n)
    idx1, idx2 = position_match(g1, g2, k=4)
    c1 = crop_resize(src, b1, f1, 64)[0].reshape(2, n, 16, n, 16).mean(dim=(2, 4)).reshape(2, -1)
    c2 = crop_resize(src, b2, f2, 64)[0].reshape(2, n, 16, n, 16).mean(dim=(2, 4)).reshape(2, -1)
    # the 4 best matches are the 2×2 overlapping cells, at distance 0
    assert sorted(idx1[0].tolist()) == [10, 11, 14, 15]
    torch.testing.assert_close(c1[:, idx1[0]], c2[:, idx2[0]], atol=1e-2, rtol=0)


def test_crop_boxes_follow_random_resized_crop_law() -> None:
    boxes = sample_crop_boxes(2000, 224, generator=torch.Generator().manual_seed(0))
    top, left, h, w = boxes.unbind(1)
    area = h * w / 224**2
    assert torch.all((top >= 0) & (left >= 0) & (top + h <= 224) & (left + w <= 224))
    assert area.min() >= 0.29 and area.max() <= 1.0
    assert (w / h).min() >= 0.74 and (w / h).max() <= 1.35
    assert torch.equal(boxes, boxes.round())  # integer pixel offsets and sizes


def test_transform_outputs_and_masking() -> None:
    t = CMIDViewTransform(64, stride=32, token_stride=4)
    img = torch.randn(3, 13, 64, 64)
    valid = torch.ones(3, 64, 64, dtype=torch.bool)
    valid[:, :, :8] = False
    out = t({"image": img, "valid": valid}, torch.Generator().manual_seed(0))
    for key in ("img", "mim_img", "view", "view_mim_img"):
        assert out[key].shape == (3, 13, 64, 64)
    assert out["mask"].shape == out["view_mask"].shape == (3, 16, 16)
    assert out["grid"].shape == out["view_grid"].shape == (3, 2, 2, 2)
    assert out["valid"].shape == (3, 64, 64) and out["valid"].dtype == torch.bool
    # masked pixels hold a constant per image and band; unmasked pixels are untouched
    pix = out["mask"].repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None].expand_as(img)
    assert torch.equal(out["mim_img"][~pix], out["img"][~pix])
    filled = out["mim_img"][0, 0][pix[0, 0]]
    assert torch.all(filled == filled[0])
    # view 1 is a pure crop: with a full-size unflipped box it equals the input
    full = torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3)
    torch.testing.assert_close(
        crop_resize(img, full, torch.zeros(3).bool(), 64), img, atol=1e-4, rtol=0
    )


def test_transform_is_reproducible_with_a_generator() -> None:
    t = CMIDViewTransform(64)
    batch = {"image": torch.randn(2, 3, 64, 64)}
    a = t(batch, torch.Generator().manual_seed(5))
    b = t(batch, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_photometric_is_band_agnostic_and_rgb_ops_touch_only_rgb() -> None:
    x = torch.randn(4, 13, 32, 32)
    gen = torch.Generator().manual_seed(0)
    y = Photometric()(x, gen)
    assert y.shape == x.shape and torch.isfinite(y).all() and not torch.equal(x, y)
    grey_only = Photometric(
        rgb_indices=[3, 2, 1], jitter_p=0.0, blur_p=0.0, noise_p=0.0, grey_p=1.0
    )
    y = grey_only(x, gen)
    others = [i for i in range(13) if i not in (1, 2, 3)]
    assert torch.equal(y[:, others], x[:, others])
    assert torch.equal(y[:, 1], y[:, 2]) and torch.equal(y[:, 2], y[:, 3])
    luma = 0.299 * x[:, 3] + 0.587 * x[:, 2] + 0.114 * x[:, 1]
    torch.testing.assert_close(y[:, 1], luma)
    with pytest.raises(ConfigError, match="rgb_indices"):
        Photometric(rgb_indices=[0, 1])


def test_collate_and_size_errors() -> None:
    t = CMIDViewTransform(64)
    out = collate_two_views([{"image": torch.randn(4, 64, 64)} for _ in range(2)], t)
    assert out["img"].shape == (2, 4, 64, 64)
    with pytest.raises(ConfigError, match="setting 'chip_size'"):
        CMIDViewTransform(80)
    with pytest.raises(ConfigError, match="square chips"):
        t({"image": torch.randn(1, 3, 64, 32)})
