"""The CMID method: two-view transform, block masks, heads, losses, EMA teacher, model."""

from geocmid.cmid.ema import ema_update, momentum_at, teacher_temperature
from geocmid.cmid.heads import DenseDINOHead, PixelShuffleDecoder, moco_projector
from geocmid.cmid.losses import (
    DenseDistillLoss,
    MoCoQueueLoss,
    focal_frequency_loss,
    focal_l1_masked,
    infonce,
    mim_loss,
    position_match,
)
from geocmid.cmid.masking import BlockMaskGenerator, mean_fill, upsample_mask
from geocmid.cmid.model import CMIDModel
from geocmid.cmid.views import (
    CMIDViewTransform,
    Photometric,
    collate_two_views,
    correspondence_grid,
)

__all__ = [
    "BlockMaskGenerator",
    "CMIDModel",
    "CMIDViewTransform",
    "DenseDINOHead",
    "DenseDistillLoss",
    "MoCoQueueLoss",
    "Photometric",
    "PixelShuffleDecoder",
    "collate_two_views",
    "correspondence_grid",
    "ema_update",
    "focal_frequency_loss",
    "focal_l1_masked",
    "infonce",
    "mean_fill",
    "mim_loss",
    "moco_projector",
    "momentum_at",
    "position_match",
    "teacher_temperature",
    "upsample_mask",
]
