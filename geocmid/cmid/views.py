"""CMID two-view transform on batched, already-normalised tensors (spec §2, with the §9.1 fix).

Everything here is a batched tensor op, so it can run on the accelerator in Lightning's
``on_after_batch_transfer``. Input is ``{"image": [B, C, S, S]}`` (optionally ``"valid": [B, S, S]``
bool, True = real data); output is the CMID batch of spec §2.8 plus correspondence grids:

===================  =========================  ==============================================
key                  shape                      meaning
===================  =========================  ==============================================
``img``              ``[B, C, s, s]``           view 1 (crop + flip only), MIM target
``mim_img``          ``[B, C, s, s]``           view 1 with masked pixels mean-filled
``mask``             ``[B, s/ts, s/ts]`` bool   view-1 block mask at token resolution
``view``             ``[B, C, s, s]``           view 2 (crop + flip + photometric), MIM target
``view_mim_img``     ``[B, C, s, s]``           view 2 mean-filled
``view_mask``        ``[B, s/ts, s/ts]`` bool   view-2 block mask
``grid``             ``[B, N, N, 2]``           (y, x) of view-1 feature-cell centres, source px
``view_grid``        ``[B, N, N, 2]``           same for view 2
``crop``/``view_crop`` ``[B, 4]`` float         (top, left, h, w) of the crop in source px
``flip``/``view_flip`` ``[B]`` bool             horizontal flip applied after cropping
``valid``/``view_valid`` ``[B, s, s]`` bool     only when the input had ``valid``
===================  =========================  ==============================================

``s`` = output size (default: input size S), ``ts`` = token stride, ``N = s / stride``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from geocmid.cmid.masking import BlockMaskGenerator, mean_fill, upsample_mask
from geocmid.errors import ConfigError

# ITU-R BT.601 luma weights, used for saturation and greyscale on RGB bands.
_LUMA = (0.299, 0.587, 0.114)
# raw mean / std of the authors' normalisation (MillionAID RGB, spec §2.4): 2.49, 2.67, 2.38
_MILLIONAID_RAW_OFFSET = 2.5


def _uniform(shape: Sequence[int], low: float, high: float, gen: torch.Generator | None) -> Tensor:
    """Uniform samples on the generator's device (CPU by default); small parameter tensors only."""
    device = gen.device if gen is not None else "cpu"
    return torch.rand(*shape, generator=gen, device=device) * (high - low) + low


def _bernoulli(shape: Sequence[int], p: float, gen: torch.Generator | None) -> Tensor:
    return _uniform(shape, 0.0, 1.0, gen) < p


def sample_crop_boxes(
    batch_size: int,
    size: int,
    scale: tuple[float, float] = (0.3, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    generator: torch.Generator | None = None,
    attempts: int = 10,
) -> Tensor:
    """RandomResizedCrop parameters for a square ``size`` px source, batched.

    Same law as torchvision's ``RandomResizedCrop.get_params``: up to ``attempts`` draws of area
    fraction ~ U(scale) and log-aspect ~ U(log ratio); the first draw that fits wins, else the whole
    chip (a square chip's aspect 1 lies inside any sensible ``ratio``).

    Returns:
        float ``[B, 4]`` = (top, left, h, w) in integer source pixels (CPU or generator device).
    """
    shape = (batch_size, attempts)
    area = size * size * _uniform(shape, scale[0], scale[1], generator)
    log_r = _uniform(shape, math.log(ratio[0]), math.log(ratio[1]), generator)
    aspect = torch.exp(log_r)
    w = torch.round(torch.sqrt(area * aspect))
    h = torch.round(torch.sqrt(area / aspect))
    ok = (w > 0) & (w <= size) & (h > 0) & (h <= size)
    first = torch.where(ok.any(1), ok.float().argmax(1), torch.full_like(ok[:, 0], -1, dtype=int))
    idx = first.clamp_min(0).unsqueeze(1)
    h = torch.where(first >= 0, h.gather(1, idx).squeeze(1), torch.full_like(h[:, 0], size))
    w = torch.where(first >= 0, w.gather(1, idx).squeeze(1), torch.full_like(w[:, 0], size))
    # integer offsets uniform in [0, size - h] like torchvision's randint(0, size - h + 1)
    top = torch.floor(_uniform((batch_size,), 0, 1, generator) * (size - h + 1)).clamp(max=size - h)
    left = torch.floor(_uniform((batch_size,), 0, 1, generator) * (size - w + 1)).clamp(
        max=size - w
    )
    return torch.stack([top, left, h, w], dim=1)


def crop_resize(
    x: Tensor, boxes: Tensor, flips: Tensor, out_size: int, mode: str = "bilinear"
) -> Tensor:
    """Crop ``boxes`` out of ``x`` and resample them to ``out_size`` px, flipping where asked.

    Pixel ``i`` of the source covers ``[i, i + 1)``; output pixel ``u`` samples the source at
    ``left + (u + ½)·w / out_size`` (mirrored inside the box when flipped), as ``grid_sample``
    with ``align_corners=False``.

    Args:
        x: ``[B, C, H, W]`` float.
        boxes: ``[B, 4]`` (top, left, h, w) in source pixels.
        flips: ``[B]`` bool, horizontal flip after the crop.
        out_size: output side in pixels.
        mode: ``"bilinear"`` for images, ``"nearest"`` for masks.

    Returns:
        ``[B, C, out_size, out_size]``.
    """
    b, _, height, width = x.shape
    boxes = boxes.to(device=x.device, dtype=torch.float32)
    top, left, h, w = boxes.unbind(1)
    sign = 1.0 - 2.0 * flips.to(device=x.device, dtype=torch.float32)
    theta = torch.zeros(b, 2, 3, device=x.device)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2 * left + w) / width - 1
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2 * top + h) / height - 1
    grid = F.affine_grid(theta, [b, 1, out_size, out_size], align_corners=False)
    src = x if x.dtype in (torch.float32, torch.float64) else x.float()
    out = F.grid_sample(
        src, grid.to(src.dtype), mode=mode, padding_mode="border", align_corners=False
    )
    return out.to(x.dtype)


def correspondence_grid(box: Tensor, flip: Tensor | bool, n: int) -> Tensor:
    """Centres of the ``n × n`` feature cells of a crop, in the source chip's pixel frame.

    This is the fix of spec §9.1: the crop's true pixel offset is used, so cells of two crops of the
    same chip that cover the same ground get the same coordinates. Cell ``(k, l)`` of an unflipped
    crop sits at ``(top + (k + ½)·h/n, left + (l + ½)·w/n)``; a flipped crop shows source column
    ``left + w − (l + ½)·w/n`` in its cell column ``l``.

    Args:
        box: ``[..., 4]`` (top, left, h, w) in source pixels.
        flip: ``[...]`` bool (or a Python bool), horizontal flip after cropping.
        n: cells per side (output size / backbone stride).

    Returns:
        ``[..., n, n, 2]`` float, (y, x) in source pixels.
    """
    box = box.float()
    top, left, h, w = box.unbind(-1)
    flip_t = torch.as_tensor(flip, device=box.device, dtype=torch.bool).expand_as(top)
    frac = (torch.arange(n, device=box.device, dtype=torch.float32) + 0.5) / n  # [n]
    ys = top[..., None] + frac * h[..., None]  # [..., n]
    xs_frac = torch.where(flip_t[..., None], 1.0 - frac, frac)
    xs = left[..., None] + xs_frac * w[..., None]  # [..., n]
    yy = ys[..., :, None].expand(*ys.shape, n)
    xx = xs[..., None, :].expand(*xs.shape[:-1], n, n)
    return torch.stack([yy, xx], dim=-1)


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int = 7) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (px) per image, reflect padding.

    Args:
        x: ``[B, C, H, W]``.
        sigma: ``[B]`` standard deviations in pixels (> 0).
        kernel_size: odd number of taps (7 = the largest kernel of the official augmentation).
    """
    b, c, h, w = x.shape
    r = kernel_size // 2
    taps = torch.arange(-r, r + 1, device=x.device, dtype=x.dtype)
    k = torch.exp(-0.5 * (taps[None] / sigma.to(x)[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # [B*C, taps]
    y = F.pad(x.reshape(1, b * c, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k[:, None, None, :], groups=b * c)
    y = F.conv2d(y, k[:, None, :, None], groups=b * c)
    return y.reshape(b, c, h, w)


def hue_rotation(angle: Tensor) -> Tensor:
    """``[B, 3, 3]`` rotations of RGB space about the grey axis by ``angle`` radians.

    A linear stand-in for an HSV hue shift that works on normalised (signed) values.
    """
    u = torch.full((3,), 1 / math.sqrt(3), device=angle.device, dtype=angle.dtype)
    cross = torch.tensor(
        [[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]],
        device=angle.device,
        dtype=angle.dtype,
    )
    cos, sin = angle.cos()[:, None, None], angle.sin()[:, None, None]
    eye = torch.eye(3, device=angle.device, dtype=angle.dtype)
    return cos * eye + sin * cross + (1 - cos) * torch.outer(u, u)


class Photometric:
    """Band-agnostic photometric augmentation of view 2, on normalised ``[B, C, H, W]`` tensors.

    Mirrors the official view-2 pipeline (spec §2.3) in a form that holds for any band count.
    The defaults are the authors' strengths:

    * jitter (prob ``jitter_p``, the authors' ColorJitter 0.4/0.4/0.2/0.1 at p = 0.8):

      - brightness: the raw values are scaled by ``b ~ U(1 ± brightness)``; on normalised data
        ``x ← b·x + (b − 1)·r`` with ``r = raw_offset`` = per-band raw mean / std (so that
        ``r + x`` is the raw value over the std). ``raw_offset=None`` uses the authors'
        MillionAID statistics (mean / std ≈ 2.49, 2.67, 2.38, i.e. 2.5 for every band);
      - contrast: ``x ← μ + g·(x − μ)`` around each image's band mean ``μ``, ``g`` = shared
        ``U(1 ± gain)`` × per-band ``U(1 ± band_jitter)``, plus an additive offset (normalised
        units) shared ``U(± offset)`` + per-band ``U(± band_jitter)`` (geocmid's per-band terms
        stand in for hue on non-RGB bands);
      - with ``rgb_indices`` a hue rotation by ``U(± hue)·2π`` and a saturation factor
        ``U(1 ± saturation)``;
    * Gaussian blur, σ ~ U(blur_sigma) px (prob ``blur_p``);
    * Gaussian noise, std ~ U(noise_std) normalised units (prob ``noise_p``; the official variance
      10–50 on the 0–255 scale is ≈ 0.09–0.2 after its normalisation);
    * greyscale of the RGB bands (prob ``grey_p``, only with ``rgb_indices``).

    Solarisation is left out on purpose: it needs a bounded intensity range, which normalised
    multispectral data does not have.
    """

    def __init__(
        self,
        rgb_indices: Sequence[int] | None = None,
        jitter_p: float = 0.8,
        brightness: float = 0.4,
        gain: float = 0.4,
        offset: float = 0.0,
        band_jitter: float = 0.1,
        raw_offset: Sequence[float] | None = None,
        hue: float = 0.1,
        saturation: float = 0.2,
        blur_p: float = 1.0,
        blur_sigma: tuple[float, float] = (0.1, 2.0),
        noise_p: float = 0.6,
        noise_std: tuple[float, float] = (0.09, 0.2),
        grey_p: float = 0.2,
    ) -> None:
        if rgb_indices is not None and len(rgb_indices) != 3:
            raise ConfigError(
                "setting 'rgb_indices'",
                f"needs exactly 3 band indices (red, green, blue), got {list(rgb_indices)}",
            )
        self.rgb = list(rgb_indices) if rgb_indices is not None else None
        self.jitter_p, self.gain, self.offset, self.band_jitter = (
            jitter_p,
            gain,
            offset,
            band_jitter,
        )
        self.brightness = brightness
        self.raw_offset = list(raw_offset) if raw_offset is not None else None
        self.hue, self.saturation = hue, saturation
        self.blur_p, self.blur_sigma = blur_p, blur_sigma
        self.noise_p, self.noise_std = noise_p, noise_std
        self.grey_p = grey_p

    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Augment ``x`` ``[B, C, H, W]`` (normalised); returns a new tensor of the same shape."""
        b, c = x.shape[:2]
        dev = x.device

        def u(shape: Sequence[int], lo: float, hi: float) -> Tensor:
            return _uniform(shape, lo, hi, generator).to(dev, x.dtype)

        def p(prob: float) -> Tensor:
            return _bernoulli((b,), prob, generator).to(dev).view(b, 1, 1, 1)

        # 1) colour / radiometric jitter
        on = p(self.jitter_p)
        r = (
            torch.tensor(self.raw_offset, device=dev, dtype=x.dtype).view(1, c, 1, 1)
            if self.raw_offset is not None
            else torch.full((1, c, 1, 1), _MILLIONAID_RAW_OFFSET, device=dev, dtype=x.dtype)
        )
        bright = u((b,), 1 - self.brightness, 1 + self.brightness).view(b, 1, 1, 1)
        x_b = bright * x + (bright - 1) * r  # raw × b, in normalised units
        mu = x_b.mean(dim=(2, 3), keepdim=True)
        g = u((b, 1), 1 - self.gain, 1 + self.gain) * u(
            (b, c), 1 - self.band_jitter, 1 + self.band_jitter
        )
        o = u((b, 1), -self.offset, self.offset) + u((b, c), -self.band_jitter, self.band_jitter)
        y = mu + g.view(b, c, 1, 1) * (x_b - mu) + o.view(b, c, 1, 1)
        if self.rgb is not None:
            rgb = y[:, self.rgb]
            angle = u((b,), -self.hue, self.hue) * 2 * math.pi
            rgb = torch.einsum("bij,bjhw->bihw", hue_rotation(angle), rgb)
            luma = torch.tensor(_LUMA, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
            grey = (rgb * luma).sum(1, keepdim=True)
            s = u((b,), 1 - self.saturation, 1 + self.saturation).view(b, 1, 1, 1)
            y = y.clone()
            y[:, self.rgb] = grey + s * (rgb - grey)
        x = torch.where(on, y, x)
        # 2) blur
        sigma = u((b,), *self.blur_sigma)
        x = torch.where(p(self.blur_p), gaussian_blur(x, sigma), x)
        # 3) noise (drawn on the data's device: it is as large as the batch)
        std = u((b,), *self.noise_std).view(b, 1, 1, 1)
        noise_gen = generator if generator is not None and generator.device == dev else None
        noise = torch.randn(x.shape, device=dev, dtype=x.dtype, generator=noise_gen)
        x = torch.where(p(self.noise_p), x + std * noise, x)
        # 4) greyscale (RGB only)
        if self.rgb is not None:
            luma = torch.tensor(_LUMA, device=dev, dtype=x.dtype).view(1, 3, 1, 1)
            grey = (x[:, self.rgb] * luma).sum(1, keepdim=True).expand(-1, 3, -1, -1)
            y = x.clone()
            y[:, self.rgb] = grey
            x = torch.where(p(self.grey_p), y, x)
        return x


class CMIDViewTransform:
    """Batch ``{"image", ["valid"]}`` → the two-view CMID batch documented in this module.

    Args:
        size: output chip size in pixels (square; a multiple of ``mask_block`` and ``stride``).
        stride: backbone output stride (32 ResNet/Swin, 16 ViT); grid ``N = size / stride``.
        token_stride: pixels per mask token (4 ResNet/Swin, 16 ViT).
        mask_block: mask block size in pixels (default 32).
        mask_ratio: fraction of blocks masked (0.6).
        scale: RandomResizedCrop area range (0.3, 1.0).
        ratio: RandomResizedCrop aspect range (3/4, 4/3).
        flip_p: horizontal-flip probability (0.5).
        photometric: view-2 augmentation; default :class:`Photometric` ``()`` (no RGB ops).
    """

    def __init__(
        self,
        size: int,
        stride: int = 32,
        token_stride: int = 4,
        mask_block: int = 32,
        mask_ratio: float = 0.6,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        photometric: Photometric | None = None,
    ) -> None:
        if size % stride:
            raise ConfigError(
                "setting 'chip_size'",
                f"chip size {size} px is not a multiple of the backbone stride ({stride} px)",
                f"use a chip size divisible by {math.lcm(stride, mask_block)}",
            )
        self.size = size
        self.stride = stride
        self.grid_size = size // stride
        self.masks = BlockMaskGenerator(size, mask_block, token_stride, mask_ratio)
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p
        self.photometric = photometric if photometric is not None else Photometric()

    def _crop(
        self, x: Tensor, valid: Tensor | None, gen: torch.Generator | None
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor]:
        b, src = x.shape[0], x.shape[-1]
        boxes = sample_crop_boxes(b, src, self.scale, self.ratio, gen).to(x.device)
        flips = _bernoulli((b,), self.flip_p, gen).to(x.device)
        out = crop_resize(x, boxes, flips, self.size)
        v = None
        if valid is not None:
            v = crop_resize(valid[:, None].float(), boxes, flips, self.size, mode="nearest")
            v = v[:, 0] > 0.5
        return out, v, boxes, flips

    def __call__(self, batch: dict[str, Tensor], generator: torch.Generator | None = None) -> dict:
        """Build both views, their masks, mean-filled copies and grids (see module docstring)."""
        x = batch["image"]
        if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
            raise ConfigError(
                "batch 'image'",
                f"expected square chips [B, C, S, S], got shape {tuple(x.shape)}",
                "sample square chips (e.g. RandomPatchSampler with size=(S, S))",
            )
        valid = batch.get("valid")
        out: dict[str, Tensor] = {}
        for prefix, augment in (("", False), ("view_", True)):
            img, v, boxes, flips = self._crop(x, valid, generator)
            if augment:
                img = self.photometric(img, generator)
            mask_dev = generator.device if generator is not None else x.device
            mask = self.masks(x.shape[0], device=mask_dev, generator=generator).to(x.device)
            pix = upsample_mask(mask, self.masks.token_stride)
            name = "img" if prefix == "" else "view"
            out[name] = img
            out[f"{prefix}mim_img"] = mean_fill(img, pix, v)
            out[f"{prefix}mask"] = mask
            out[f"{prefix}grid"] = correspondence_grid(boxes, flips, self.grid_size)
            out[f"{prefix}crop"] = boxes
            out[f"{prefix}flip"] = flips
            if v is not None:
                out[f"{prefix}valid"] = v
        return out


def collate_two_views(
    samples: Sequence[dict[str, Tensor]],
    transform: CMIDViewTransform,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """``collate_fn`` alternative: stack ``{"image": [C, S, S]}`` samples, then transform them.

    Prefer running ``transform`` on the device (``on_after_batch_transfer``); this is for CPU-side
    pipelines and tests.
    """
    batch = {"image": torch.stack([s["image"] for s in samples]).float()}
    if all("valid" in s for s in samples):
        batch["valid"] = torch.stack([s["valid"].bool() for s in samples])
    return transform(batch, generator)
