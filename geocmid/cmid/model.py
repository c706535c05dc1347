"""The CMID model: masked student, EMA teacher, heads, queue and losses (spec §6).

Typical use from a Lightning task::

    model = CMIDModel("resnet50", in_chans=4, chip_size=224, **paper_settings())
    views = model.view_transform(rgb_indices=[0, 1, 2])  # in training_step
    losses = model.forward_losses(views(batch), teacher_temp)  # → losses["loss"]
    model.update_teacher(momentum_at(global_step, total_steps))  # on_train_batch_end, after step
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geocmid.cmid.derive import CMIDGeometry, derive_geometry
from geocmid.cmid.ema import ema_update
from geocmid.cmid.heads import DenseDINOHead, PixelShuffleDecoder, moco_projector
from geocmid.cmid.losses import (
    DenseDistillLoss,
    MoCoQueueLoss,
    gather_tokens,
    mim_loss,
    position_match,
)
from geocmid.cmid.masking import upsample_mask
from geocmid.cmid.views import CMIDViewTransform, Photometric
from geocmid.models.backbones import Backbone, create_backbone, family_of
from geocmid.models.masked import MaskedBackbone


def _gap_embed(projector: nn.Module, feats: Tensor) -> Tensor:
    """Global-average-pool ``[B, C, h, w]``, project, L2-normalise → ``[B, D]``."""
    return F.normalize(projector(feats.mean(dim=(2, 3))), dim=1)


class CMIDModel(nn.Module):
    """CMID student/teacher pair with its three losses.

    The method settings below are keyword-only and have no defaults here: the paper's values are
    defined once, as :class:`~geocmid.cmid.task.CMIDTask`'s defaults, and
    :func:`~geocmid.cmid.task.paper_settings` returns them.

    Args:
        backbone_name: ``resnet18/34/50/101``, ``swin_tiny/small/base``, ``vit_small/base``.
        in_chans: number of bands.
        chip_size: square chip size in pixels; must be a multiple of the backbone stride (32
            ResNet/Swin, 16 ViT) and of ``mask_block``.
        pretrained_path: optional weights for the student backbone (the teacher copies them).
        mask_ratio: fraction of the chip masked.
        mask_block: mask block size in pixels; None derives it from the chip so the masked
            fraction stays at ``mask_ratio`` (:func:`~geocmid.cmid.derive.derive_geometry`).
        queue_size: MoCo queue length.
        proj_hidden, proj_dim: MoCo projector sizes.
        temperature: InfoNCE temperature.
        head_hidden, head_bottleneck, num_prototypes: dense DINO head sizes.
        match_fraction: matched share of the feature grid when ``num_matches`` is None.
        num_matches: matched cells per image for the local loss (None: ``match_fraction``).
        student_temp: DINO student temperature.
        center_momentum: DINO centre momentum.
        focal_alpha, focal_gamma: focal-L1 α, γ.
        fft_weight: focal-frequency weight.
        backbone_kwargs: extra ``timm.create_model`` arguments (e.g. ``drop_path_rate``).

    The teacher temperature is a schedule of the run, so it is an argument of
    :meth:`forward_losses` (the task computes it per step).

    Attributes:
        geometry: the mask and match geometry (:class:`~geocmid.cmid.derive.CMIDGeometry`).
        student: :class:`MaskedBackbone` (export ``student.backbone``).
        teacher: plain :class:`Backbone`, EMA of the student, no gradients.
    """

    def __init__(
        self,
        backbone_name: str,
        in_chans: int,
        chip_size: int,
        pretrained_path: str | None = None,
        *,
        mask_ratio: float,
        mask_block: int | None,
        queue_size: int,
        proj_hidden: int,
        proj_dim: int,
        temperature: float,
        head_hidden: int,
        head_bottleneck: int,
        num_prototypes: int,
        match_fraction: float,
        num_matches: int | None,
        student_temp: float,
        center_momentum: float,
        focal_alpha: float,
        focal_gamma: float,
        fft_weight: float,
        backbone_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.geometry: CMIDGeometry = derive_geometry(
            chip_size, family_of(backbone_name), mask_ratio, mask_block, match_fraction, num_matches
        )
        student = create_backbone(
            backbone_name, in_chans, pretrained_path, img_size=chip_size, **(backbone_kwargs or {})
        )
        self.chip_size = chip_size
        self.in_chans = in_chans
        self.mask_ratio = mask_ratio
        self.mask_block = self.geometry.mask_block
        self.num_matches = self.geometry.num_matches
        self.focal_alpha, self.focal_gamma, self.fft_weight = focal_alpha, focal_gamma, fft_weight

        c = student.out_channels
        self.student = MaskedBackbone(student)
        self.decoder = PixelShuffleDecoder(c, student.stride, in_chans)
        self.projector = moco_projector(c, proj_hidden, proj_dim)
        use_bn = student.family == "resnet"  # spec §3.3: BN in the local head for ResNet only
        self.local_head = DenseDINOHead(c, head_hidden, head_bottleneck, num_prototypes, use_bn)

        # the teacher starts as an exact copy of the student and never receives gradients
        self.teacher = copy.deepcopy(student)
        self.teacher_projector = copy.deepcopy(self.projector)
        self.teacher_local_head = copy.deepcopy(self.local_head)
        for _, t in self._ema_pairs():
            t.requires_grad_(False)

        self.global_loss = MoCoQueueLoss(queue_size, proj_dim, temperature)
        self.local_loss = DenseDistillLoss(num_prototypes, student_temp, center_momentum)

    # ----------------------------------------------------------------------------------------
    @property
    def family(self) -> str:
        return self.student.family

    @property
    def backbone(self) -> Backbone:
        """The student backbone: what CMID exports (spec §3.2 "Released weights")."""
        return self.student.backbone

    def view_transform(
        self, rgb_indices: Sequence[int] | None = None, **photometric: Any
    ) -> CMIDViewTransform:
        """The two-view transform matching this model's geometry (chip size, strides, masks).

        Args:
            rgb_indices: band indices of red, green, blue, enabling hue/saturation/greyscale.
            **photometric: overrides for :class:`~geocmid.cmid.views.Photometric`.
        """
        return CMIDViewTransform(
            self.chip_size,
            stride=self.student.stride,
            token_stride=self.student.token_stride,
            mask_block=self.mask_block,
            mask_ratio=self.mask_ratio,
            photometric=Photometric(rgb_indices=rgb_indices, **photometric),
        )

    def _ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [
            (self.student.backbone, self.teacher),
            (self.projector, self.teacher_projector),
            (self.local_head, self.teacher_local_head),
        ]

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step ``θ_t ← τθ_t + (1−τ)θ_s``; call after ``optimizer.step()`` (fix §9.5)."""
        ema_update(self._ema_pairs(), momentum)

    # ----------------------------------------------------------------------------------------
    def forward_losses(self, batch: dict[str, Tensor], teacher_temp: float) -> dict[str, Tensor]:
        """All CMID loss terms for one two-view batch (spec §6).

        Args:
            batch: output of :meth:`view_transform` (keys ``img, mim_img, mask, view,
                view_mim_img, view_mask, grid, view_grid`` and optionally ``valid, view_valid``).
            teacher_temp: DINO teacher temperature of this step (> 0; the task's schedule,
                :func:`~geocmid.cmid.derive.teacher_temperature_at`).

        Returns:
            dict of scalars: ``loss_rec``, ``loss_fft``, ``loss_mim`` (= ½ Σ_views (rec + fft)),
            ``loss_global``, ``loss_local`` and ``loss`` = mim + global + local.
        """
        if isinstance(teacher_temp, int) or not teacher_temp > 0:
            raise ValueError(
                f"teacher_temp must be a positive temperature (float), got {teacher_temp!r}; "
                "forward_losses no longer takes an epoch"
            )
        x1, x2 = batch["img"], batch["view"]
        m1, m2 = batch["mask"], batch["view_mask"]
        ts = self.student.token_stride

        # student on the masked copies
        f1 = self.student(batch["mim_img"], m1)
        f2 = self.student(batch["view_mim_img"], m2)

        # MIM on both views
        rec1, fft1 = mim_loss(
            self.decoder(f1), x1, upsample_mask(m1, ts), batch.get("valid"),
            self.focal_alpha, self.focal_gamma, self.fft_weight,
        )  # fmt: skip
        rec2, fft2 = mim_loss(
            self.decoder(f2), x2, upsample_mask(m2, ts), batch.get("view_valid"),
            self.focal_alpha, self.focal_gamma, self.fft_weight,
        )  # fmt: skip
        loss_rec = 0.5 * (rec1 + rec2)
        loss_fft = 0.5 * (fft1 + fft2)

        # teacher on the unmasked views
        with torch.no_grad():
            g1 = self.teacher(x1)
            g2 = self.teacher(x2)
            k1 = _gap_embed(self.teacher_projector, g1)
            k2 = _gap_embed(self.teacher_projector, g2)

        # global: MoCo InfoNCE with queue
        q1 = _gap_embed(self.projector, f1)
        q2 = _gap_embed(self.projector, f2)
        loss_global = self.global_loss(q1, q2, k1, k2)

        # local: position-matched dense distillation
        s1_idx, t2_idx = position_match(batch["grid"], batch["view_grid"], self.num_matches)
        s2_idx, t1_idx = position_match(batch["view_grid"], batch["grid"], self.num_matches)
        student_a = self.local_head(gather_tokens(f1, s1_idx))
        student_b = self.local_head(gather_tokens(f2, s2_idx))
        with torch.no_grad():
            teacher_a = self.teacher_local_head(gather_tokens(g2, t2_idx))
            teacher_b = self.teacher_local_head(gather_tokens(g1, t1_idx))
        loss_local = self.local_loss(
            student_a, teacher_a, student_b, teacher_b, float(teacher_temp)
        )

        loss_mim = loss_rec + loss_fft
        return {
            "loss_rec": loss_rec,
            "loss_fft": loss_fft,
            "loss_mim": loss_mim,
            "loss_global": loss_global,
            "loss_local": loss_local,
            "loss": loss_mim + loss_global + loss_local,
        }


def _check_chip_size(size: int, block: int | None, family: str, mask_ratio: float = 0.6) -> None:
    """:class:`~geocmid.errors.ConfigError` unless ``size`` fits the stride and the mask geometry.

    ``block=None`` checks that a mask block can be derived (:func:`derive_geometry`).
    """
    derive_geometry(size, family, mask_ratio, block)
