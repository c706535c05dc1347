"""The CMID method: two-view transform, block masks, heads, losses, EMA teacher, model, task.

``geocmid.cmid.CMIDTask`` (the Lightning task, a ``model.class_path`` in configs) and the
pretraining callbacks are imported on first use: they pull in TorchGeo's and Lightning's task
machinery, which the method's building blocks do not need.
"""

from typing import Any

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

_LAZY = {
    "CMIDTask": "geocmid.cmid.task",
    "HealthMonitor": "geocmid.cmid.callbacks",
    "KNNProbe": "geocmid.cmid.callbacks",
    "QuickLook": "geocmid.cmid.callbacks",
    "RankStateDump": "geocmid.cmid.callbacks",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'geocmid.cmid' has no attribute '{name}'")


__all__ = [
    "BlockMaskGenerator",
    "CMIDModel",
    "CMIDTask",
    "CMIDViewTransform",
    "DenseDINOHead",
    "DenseDistillLoss",
    "HealthMonitor",
    "KNNProbe",
    "MoCoQueueLoss",
    "Photometric",
    "PixelShuffleDecoder",
    "QuickLook",
    "RankStateDump",
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
