"""``CMIDTask``: CMID pretraining as a TorchGeo task (Lightning module), spec §5–§6.

A :class:`torchgeo.tasks.BaseTask` subclass whose settings are flat, typed ``__init__`` arguments
with the paper's defaults. This signature is *the* definition of the pretraining defaults: the
``geocmid pretrain`` workflow, its ``--help`` and the configs in ``recipes/`` all read it. A
config such as::

    model:
      class_path: geocmid.cmid.CMIDTask
      init_args: {backbone: resnet18, mask_ratio: 0.6, base_lr: 4.0e-3}
    data:
      class_path: geocmid.datamodules.PretrainDataModule
      init_args: {entry: demo-2020, catalog: demo/catalog}

runs the same under ``geocmid pretrain``, ``torchgeo fit``, a plain ``LightningCLI`` and from
Python. What the data decide (band count and names, RGB bands, normalisation statistics, ground
sampling distance, chip size, per-device batch: :data:`DATA_ARGS`) may be left unset:
:meth:`CMIDTask.setup` takes it from ``trainer.datamodule`` (:func:`fill_data_args`), builds the
networks then and writes the values into ``hparams``, so checkpoints carry them. Values that are
set are checked against the data.

It expects batches ``{"image": [B, C, S, S] normalised, "valid": [B, S, S] bool}`` such as
:class:`geocmid.datamodules.PretrainDataModule` yields (it normalises on the device); the
two-view transform, block masks and mean-fill run batched on the accelerator at the start of
``training_step``.

Per step it logs every loss term, the learning rate, the EMA momentum and the teacher temperature.
The EMA teacher is updated in ``on_train_batch_end``, i.e. after ``optimizer.step()`` (fix §9.5),
and only on steps where the optimizer actually stepped (gradient accumulation).
"""

from __future__ import annotations

import inspect
import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.optim import AdamW, Optimizer
from torch.optim.lr_scheduler import LambdaLR
from torchgeo.tasks import BaseTask

from geocmid.cmid.derive import (
    EMA_HORIZON_FRACTION,
    PAPER_MATCH_FRACTION,
    PAPER_QUEUE_SIZE,
    PAPER_TEACHER_TEMP_WARMUP_FRACTION,
    PAPER_WARMUP_FRACTION,
    CMIDSchedule,
    derive_queue_size,
    derive_schedule,
    teacher_temperature_at,
)
from geocmid.cmid.ema import momentum_at
from geocmid.cmid.losses import MoCoQueueLoss
from geocmid.cmid.model import CMIDModel, _check_chip_size
from geocmid.cmid.views import CMIDViewTransform
from geocmid.errors import ConfigError, did_you_mean
from geocmid.models.backbones import family_of

log = logging.getLogger(__name__)

#: Optimizers accepted by ``optimizer=``.
OPTIMIZERS = ("adan", "adamw")

#: Arguments passed on to :class:`~geocmid.cmid.model.CMIDModel` (the method's settings).
METHOD_ARGS = (
    "mask_ratio", "mask_block", "queue_size", "proj_hidden", "proj_dim", "temperature",
    "head_hidden", "head_bottleneck", "num_prototypes", "match_fraction", "num_matches",
    "student_temp", "center_momentum", "focal_alpha", "focal_gamma", "fft_weight",
)  # fmt: skip

#: Schedule arguments (counted in optimizer steps, epochs or shares of the run).
SCHEDULE_ARGS = (
    "teacher_temp", "teacher_temp_warmup_steps", "teacher_temp_warmup_epochs",
    "teacher_temp_warmup_fraction", "ema_momentum", "ema_horizon_fraction", "warmup_steps",
    "warmup_epochs", "warmup_fraction",
)  # fmt: skip

#: Parameter names never weight-decayed besides ≤ 1-D ones (ViT position embedding and tokens).
NO_DECAY_NAMES = ("pos_embed", "cls_token", "dist_token", "reg_token")

#: Arguments the data decide; left unset (None) they are filled from ``trainer.datamodule``.
DATA_ARGS = (
    "in_chans", "bands", "rgb_bands", "mean", "std", "gsd", "data", "chip_size", "batch_size",
)  # fmt: skip

#: Where the task's arguments sit in a Lightning CLI config (for error messages).
MODEL_KEY = "model.init_args"


def lr_factor(
    step: int, total_steps: int, warmup_steps: int, base_lr: float, min_lr: float, start: float
) -> float:
    """Multiplier of ``base_lr`` at optimizer step ``step`` (spec §5 schedule).

    ``lr(k) = [min_lr + (lr − min_lr)·½(1 + cos(π k / K))] · w(k)`` with the warmup factor
    ``w(k) = start + (1 − start)·k / warmup_steps`` for ``k < warmup_steps``, else 1 (the
    official code multiplies the cosine value by the warmup factor).
    """
    k = min(max(step, 0), total_steps)
    cosine = min_lr + (base_lr - min_lr) * 0.5 * (1 + math.cos(math.pi * k / max(total_steps, 1)))
    warm = start + (1 - start) * k / warmup_steps if k < warmup_steps else 1.0
    return cosine * warm / base_lr


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters split into decayed and not decayed ones.

    Not decayed: ≤ 1-D parameters (biases, norms; timm's ``filter_bias_and_bn``, spec §5) and the
    ViT position embedding and class/register tokens (:data:`NO_DECAY_NAMES`, timm's
    ``no_weight_decay``). The CNN/Swin mask token is 4-D, so it *is* decayed, as the authors'.
    """
    decay, no_decay = [], []
    for name, p in module.named_parameters():
        if p.requires_grad:
            leaf = name.rsplit(".", 1)[-1]
            (no_decay if p.ndim <= 1 or leaf in NO_DECAY_NAMES else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


@torch.no_grad()
def ema_foreach(model: CMIDModel, momentum: float) -> None:
    """``θ_t ← τ θ_t + (1 − τ) θ_s`` over every (student, teacher) pair, as one fused op.

    Same update as :meth:`CMIDModel.update_teacher` (parameters only; BN statistics are not
    averaged), but ``torch._foreach_lerp_`` updates all tensors in one kernel launch per group
    instead of two out-of-place ops per parameter: on ResNet-50 + heads that is ~45 M floats.
    """
    teacher, student = [], []
    for s, t in model._ema_pairs():
        for ps, pt in zip(s.parameters(), t.parameters(), strict=True):
            teacher.append(pt.data)
            student.append(ps.data.to(pt.dtype))
    torch._foreach_lerp_(teacher, student, 1.0 - momentum)


def check_chip_size(
    backbone: str,
    chip_size: int | None,
    mask_block: int | None,
    chip_key: str = "data.init_args.chip_size",
    block_key: str = f"{MODEL_KEY}.mask_block",
    mask_ratio: float = 0.6,
) -> None:
    """:class:`ConfigError` naming the setting unless the chip fits the mask geometry and stride.

    The chip edge (pixels) must be a multiple of the backbone's output stride (32 ResNet/Swin,
    16 ViT) and of the mask block; the mask block a multiple of the token stride (4 / 16 px) and
    masking ``mask_ratio`` of the chip (:func:`~geocmid.cmid.derive.derive_geometry`);
    ``mask_block=None`` checks that one can be derived. With ``chip_size=None`` only the mask
    block is checked. ``chip_key`` / ``block_key`` are the config keys named in the error.
    """
    family = family_of(backbone)
    if chip_size is None:
        if mask_block is None:
            return
        # a placeholder chip of 10 × 10 blocks checks the mask block alone
        size = math.lcm(int(mask_block), 32) * 10
        mask_ratio = 0.6
    else:
        size = chip_size
    try:
        _check_chip_size(size, mask_block, family, mask_ratio)
    except ConfigError as error:
        key = block_key if error.where.endswith("'mask_block'") else chip_key
        if error.where.endswith("'mask_ratio'"):
            key = f"{MODEL_KEY}.mask_ratio"
        raise ConfigError(f"setting '{key}'", error.problem, error.fix) from None


def data_args_of(datamodule: Any) -> dict[str, Any]:
    """What a datamodule says about the task's :data:`DATA_ARGS` (None where it cannot tell).

    Uses ``datamodule.task_args()`` when it has one (as
    :class:`~geocmid.datamodules.PretrainDataModule` does), else its ``bands`` and its
    ``chip_size`` / ``batch_size`` hyperparameters.
    """
    if datamodule is None:
        return {}
    if callable(getattr(datamodule, "task_args", None)):
        return dict(datamodule.task_args())
    hp = getattr(datamodule, "hparams", {}) or {}
    bands = getattr(datamodule, "bands", None)
    return {
        "bands": list(bands) if bands else None,
        "chip_size": hp.get("chip_size"),
        "batch_size": hp.get("batch_size") or getattr(datamodule, "batch_size", None),
    }


def fill_data_args(args: Mapping[str, Any], derived: Mapping[str, Any]) -> dict[str, Any]:
    """The task's :data:`DATA_ARGS` completed from what the data say (``derived``).

    Unset (None) arguments take the data's value; set ones are checked against it: band count
    and names, chip size, per-device batch and normalisation statistics must agree (the data are
    what the model sees, and the checkpoint and model card must say so). ``rgb_bands``, ``gsd``
    and ``data`` may differ from the data's; ``rgb_bands`` must name three of the bands.

    Args:
        args: the task's arguments (``hparams``).
        derived: :func:`data_args_of` of the datamodule.

    Returns:
        the values of :data:`DATA_ARGS` to use (unchanged ones included).

    Raises:
        ConfigError: naming ``model.init_args.KEY`` and what the data have.
    """
    out = {k: args.get(k) for k in DATA_ARGS}
    where = f"data entry '{derived['data']}'" if derived.get("data") else "the data"
    bands = list(derived["bands"]) if derived.get("bands") else None
    if bands is not None:
        if out["in_chans"] is not None and int(out["in_chans"]) != len(bands):
            raise ConfigError(
                f"setting '{MODEL_KEY}.in_chans'",
                f"is {out['in_chans']} but {where} has {len(bands)} bands ({', '.join(bands)})",
                f"set it to {len(bands)}, or leave it unset (null) to follow the data",
            )
        if out["bands"] is not None and list(out["bands"]) != bands:
            raise ConfigError(
                f"setting '{MODEL_KEY}.bands'",
                f"is {list(out['bands'])} but {where} has bands {bands}",
                "use the data's bands in file order, or leave it unset (null)",
            )
        out["bands"], out["in_chans"] = bands, len(bands)
    elif out["bands"] is not None and out["in_chans"] is None:
        out["in_chans"] = len(out["bands"])
    for key in ("chip_size", "batch_size"):
        value = derived.get(key)
        if value is None:
            continue
        if out[key] is not None and int(out[key]) != int(value):
            raise ConfigError(
                f"setting '{MODEL_KEY}.{key}'",
                f"is {out[key]} but the datamodule's {key} is {value}",
                f"set data.init_args.{key} only and leave {MODEL_KEY}.{key} unset (null)",
            )
        out[key] = int(value)
    for key in ("mean", "std"):
        if derived.get(key) is None:
            continue
        value = [float(v) for v in derived[key]]
        given = out[key]
        if given is not None and (
            len(given) != len(value) or not np.allclose(given, value, rtol=1e-5, atol=0)
        ):
            raise ConfigError(
                f"setting '{MODEL_KEY}.{key}'",
                f"is {list(given)} but the data are normalised with {value} (the entry's "
                "statistics)",
                "leave it unset (null): the model card must record the statistics the data use",
            )
        out[key] = value
    for key in ("rgb_bands", "gsd", "data"):
        if out[key] is None and derived.get(key) is not None:
            out[key] = derived[key]
    if out["rgb_bands"] is not None:
        rgb, known = list(out["rgb_bands"]), out["bands"]
        if len(rgb) != 3 or (known is not None and any(b not in known for b in rgb)):
            raise ConfigError(
                f"setting '{MODEL_KEY}.rgb_bands'",
                f"{rgb} are not three of the bands {list(known or [])}",
                "name the red, green and blue bands of the data (the catalog entry's 'rgb')",
            )
        out["rgb_bands"] = rgb
    if out["gsd"] is not None:
        out["gsd"] = float(out["gsd"])
    return out


class CMIDTask(BaseTask):
    """CMID self-supervised pretraining of a ResNet, Swin or ViT backbone (any band count).

    The defaults are the paper's (official ResNet-50 / Swin-B configs, spec §5). Arguments marked
    *(data)* may be left unset: :meth:`setup` fills them from ``trainer.datamodule``.

    Args:
        backbone: resnet18/34/50/101, swin_tiny/small/base, vit_small/base.
        in_chans: (data) number of bands.
        chip_size: (data) square chip edge in px; a multiple of the mask block and of the
            backbone's output stride (32 ResNet/Swin, 16 ViT).
        bands: (data) band names in channel order (model card, quick-look).
        rgb_bands: (data) red, green, blue band names: enable hue/saturation/grey augmentation and
            set the quick-look colours (default: the catalog entry's rgb).
        mean: (data) per-band mean of the data, raw units (model card).
        std: (data) per-band standard deviation of the data, raw units (model card).
        gsd: (data) ground sampling distance, CRS units per pixel (model card).
        data: (data) name of the pretraining data (model card provenance).
        pretrained: weight file to start the student (and teacher) from.
        mask_ratio: fraction of the chip masked (the paper's 0.6).
        mask_block: mask block edge in px; unset: derived from the chip and the token stride so
            the masked fraction stays within 3 points of mask_ratio (32 at 224 px, 24 at 96,
            16 at 64; geocmid.cmid.derive).
        queue_size: MoCo key queue length; unset: the paper's 65,536, capped on chip datasets
            at half a key per distinct image (600 images, batch 64 → 256;
            geocmid.cmid.derive.derive_queue_size).
        proj_hidden: MoCo projector hidden size.
        proj_dim: MoCo embedding size.
        temperature: InfoNCE temperature.
        head_hidden: dense DINO head hidden size.
        head_bottleneck: dense DINO head bottleneck size.
        num_prototypes: dense DINO prototypes.
        match_fraction: share of the feature grid position-matched per image (local loss);
            the paper's 20 of 7×7.
        num_matches: matched cells per image; unset: match_fraction of the grid.
        student_temp: DINO student temperature.
        teacher_temp: DINO teacher temperature, [start, end] of its linear warmup.
        teacher_temp_warmup_fraction: teacher temperature warmup as a share of the run's
            optimizer steps (the paper's 50 of 200 epochs).
        teacher_temp_warmup_steps: the warmup in optimizer steps (wins over the others).
        teacher_temp_warmup_epochs: the warmup in epochs (wins over the fraction).
        center_momentum: DINO centre momentum.
        focal_alpha: focal-L1 alpha.
        focal_gamma: focal-L1 gamma.
        fft_weight: focal frequency loss weight.
        drop_path_rate: stochastic depth of Swin / ViT (paper: 0; ResNets ignore it).
        ema_momentum: EMA teacher momentum, [start, end] of its cosine over all steps; unset:
            [min(0.996, 1 − 1/(ema_horizon_fraction × total steps)), 1] (0.996: the paper's).
        ema_horizon_fraction: longest teacher averaging window 1/(1 − τ) as a share of the run.
        photometric: overrides of geocmid.cmid.views.Photometric (view-2 augmentation; the
            defaults are the authors' strengths: brightness/contrast 0.4, saturation 0.2, hue
            0.1 at p 0.8, blur p 1, noise p 0.6, grey p 0.2), e.g. {brightness: 0.2}.
        optimizer: adan (timm Adan, betas 0.98/0.92/0.99: the paper's) or adamw.
        base_lr: lr per lr_reference_batch images: the lr used is base_lr × global batch /
            lr_reference_batch.
        lr_reference_batch: global batch that base_lr refers to.
        batch_size: (data) per-device batch, for the lr scaling.
        weight_decay: decoupled weight decay of >= 2-D parameters (not biases and norms).
        betas: optimizer betas (default: the optimizer's own).
        warmup_fraction: linear lr warmup (from warmup_start × lr) as a share of the run's
            optimizer steps (the paper's 10 of 200 epochs).
        warmup_steps: the lr warmup in optimizer steps (wins over the others).
        warmup_epochs: the lr warmup in epochs, fractions allowed (wins over the fraction).
        warmup_start: warmup start factor.
        min_lr: final lr of the cosine schedule.
        view_seed: seed of crops, flips, masks and augmentation (each rank derives its own);
            unset: the run's seed_everything.
        channels_last: keep the networks' 4-D weights channels-last (NHWC), which oneDNN on
            CPUs and tensor cores on GPUs run faster (ResNet-50 forward + backward, batch 8,
            224 px: 1.3x on a 2-core CPU, ``benchmarks/bench_cmid_step.py``); results equal
            up to float rounding.
        model_kwargs: deprecated (checkpoints of older geocmid): the method settings as one
            dict; its values win over the flat arguments.
    """

    ignore = None
    monitor = "train/loss"

    def __init__(
        self,
        backbone: str = "resnet50",
        in_chans: int | None = None,
        chip_size: int | None = None,
        bands: list[str] | None = None,
        rgb_bands: list[str] | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        gsd: float | None = None,
        data: str | None = None,
        pretrained: str | None = None,
        mask_ratio: float = 0.6,
        mask_block: int | None = None,
        queue_size: int | None = None,
        proj_hidden: int = 2048,
        proj_dim: int = 256,
        temperature: float = 0.2,
        head_hidden: int = 2048,
        head_bottleneck: int = 256,
        num_prototypes: int = 2048,
        match_fraction: float = PAPER_MATCH_FRACTION,
        num_matches: int | None = None,
        student_temp: float = 0.1,
        teacher_temp: tuple[float, float] = (0.04, 0.07),
        teacher_temp_warmup_fraction: float = PAPER_TEACHER_TEMP_WARMUP_FRACTION,
        teacher_temp_warmup_steps: int | None = None,
        teacher_temp_warmup_epochs: float | None = None,
        center_momentum: float = 0.9,
        focal_alpha: float = 0.2,
        focal_gamma: float = 1.0,
        fft_weight: float = 1.0,
        drop_path_rate: float = 0.0,
        ema_momentum: tuple[float, float] | None = None,
        ema_horizon_fraction: float = EMA_HORIZON_FRACTION,
        photometric: dict[str, Any] | None = None,
        optimizer: str = "adan",
        base_lr: float = 4e-3,
        lr_reference_batch: int = 256,
        batch_size: int | None = None,
        weight_decay: float = 0.02,
        betas: list[float] | None = None,
        warmup_fraction: float = PAPER_WARMUP_FRACTION,
        warmup_steps: int | None = None,
        warmup_epochs: float | None = None,
        warmup_start: float = 0.01,
        min_lr: float = 1e-6,
        view_seed: int | None = None,
        channels_last: bool = True,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if str(optimizer).lower() not in OPTIMIZERS:
            raise ConfigError(
                f"setting '{MODEL_KEY}.optimizer'",
                f"unknown optimizer '{optimizer}'"
                f"{did_you_mean(str(optimizer).lower(), OPTIMIZERS)}",
                "use adan (the paper's) or adamw",
            )
        try:
            family_of(backbone)
        except ConfigError as error:
            raise ConfigError(f"setting '{MODEL_KEY}.backbone'", error.problem, error.fix) from None
        for key, value in (("teacher_temp", teacher_temp), ("ema_momentum", ema_momentum)):
            if value is not None and len(value) != 2:
                raise ConfigError(
                    f"setting '{MODEL_KEY}.{key}'", f"needs two values [start, end], got {value}"
                )
        if bands is not None and in_chans is not None and len(bands) != in_chans:
            raise ConfigError(
                f"setting '{MODEL_KEY}.bands'",
                f"lists {len(bands)} bands but in_chans is {in_chans}",
                "give one band name per input channel",
            )
        self.model: CMIDModel
        self.views: CMIDViewTransform
        self.last_views: dict[str, Tensor] | None = None  # last batch, for quick-looks / health
        self._generator: torch.Generator | None = None
        self._ema_step = -1
        self.ema_tau = float(ema_momentum[0]) if ema_momentum is not None else 0.996
        self.schedule: CMIDSchedule | None = None  # derived in configure_optimizers
        self._queue_derived = False  # queue_size was derived from the data (not given)
        super().__init__()

    # ------------------------------------------------------------------------------------------
    @property
    def built(self) -> bool:
        """Whether the networks exist (built once in_chans and chip_size are known)."""
        return "model" in self._modules

    def configure_models(self) -> None:
        """Build the networks now if the band count and chip size are known, else in setup."""
        self._absorb_model_kwargs()
        hp = self.hparams
        check_chip_size(
            hp["backbone"], hp["chip_size"], hp["mask_block"], chip_key=f"{MODEL_KEY}.chip_size",
            mask_ratio=hp["mask_ratio"],
        )  # fmt: skip
        if hp["in_chans"] is not None and hp["chip_size"] is not None:
            self._build()

    def _absorb_model_kwargs(self) -> None:
        """The ``model_kwargs`` dict of old checkpoints → the flat arguments."""
        legacy = dict(self.hparams.get("model_kwargs") or {})
        if not legacy:
            return
        backbone_kwargs = legacy.pop("backbone_kwargs", None) or {}
        if "drop_path_rate" in backbone_kwargs:
            legacy["drop_path_rate"] = backbone_kwargs["drop_path_rate"]
        unknown = sorted(set(legacy) - {*METHOD_ARGS, *SCHEDULE_ARGS, "drop_path_rate"})
        if unknown:
            raise ConfigError(
                f"setting '{MODEL_KEY}.model_kwargs'",
                f"unknown key '{unknown[0]}'{did_you_mean(unknown[0], METHOD_ARGS)}",
                f"give the method settings as CMIDTask arguments ({', '.join(METHOD_ARGS)})",
            )
        self.hparams.update(legacy)
        self.hparams["model_kwargs"] = None

    def _build(self) -> None:
        hp = self.hparams
        family = family_of(hp["backbone"])
        backbone_kwargs = {"drop_path_rate": hp["drop_path_rate"]} if family != "resnet" else {}
        method = {k: hp[k] for k in METHOD_ARGS}
        if method["queue_size"] is None:  # the data are not known yet: setup() resizes it
            method["queue_size"] = PAPER_QUEUE_SIZE
        self.model = CMIDModel(
            hp["backbone"],
            int(hp["in_chans"]),
            int(hp["chip_size"]),
            pretrained_path=hp["pretrained"],
            **method,
            backbone_kwargs=backbone_kwargs,
        )
        if hp.get("channels_last", True):  # old checkpoints lack the key
            self.model.to(memory_format=torch.channels_last)
        self.views = self._view_transform()

    def _view_transform(self) -> CMIDViewTransform:
        """The model's two-view transform with the configured photometric strengths.

        The brightness jitter scales raw values, so it needs each band's raw mean / std: taken
        from ``mean`` / ``std`` when known (else the authors' statistics are assumed).
        """
        hp = self.hparams
        photometric = dict(hp["photometric"] or {})
        if "raw_offset" not in photometric and hp["mean"] is not None and hp["std"] is not None:
            photometric["raw_offset"] = [
                float(m) / float(s) if float(s) > 0 else 0.0
                for m, s in zip(hp["mean"], hp["std"], strict=True)
            ]
        return self.model.view_transform(self.rgb_indices, **photometric)

    def setup(self, stage: str) -> None:
        """Fill the data-derived arguments from ``trainer.datamodule``, then build the networks.

        The filled values go into ``hparams`` (checkpoints and the model card carry them); set
        values are checked against the data (:func:`fill_data_args`). ``view_seed`` unset takes
        the run's ``seed_everything``.
        """
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        data_args = data_args_of(datamodule)
        filled = fill_data_args(self.hparams, data_args)
        if self.built:
            for key in ("in_chans", "chip_size"):
                if filled[key] != self.hparams[key]:
                    raise ConfigError(
                        f"setting '{MODEL_KEY}.{key}'",
                        f"the model was built for {self.hparams[key]} but the data have "
                        f"{filled[key]}",
                        f"leave {MODEL_KEY}.{key} unset (null) to follow the data",
                    )
        self.hparams.update(filled)
        if self.hparams["view_seed"] is None:
            # Lightning exports the run's seed: one seed_everything seeds weights and views
            self.hparams["view_seed"] = int(os.environ.get("PL_GLOBAL_SEED", 0))
        # the hyperparameters loggers record (merged with the datamodule's, which must agree)
        initial = getattr(self, "_hparams_initial", None)
        if initial is not None:
            initial.update({k: self.hparams[k] for k in (*DATA_ARGS, "view_seed")})
        self._fill_queue_size(data_args.get("num_images"))
        if self.built:
            # built before the RGB bands were known: the views follow the filled names
            self.views = self._view_transform()
            self._resize_queue()
            return
        missing = [k for k in ("in_chans", "chip_size") if self.hparams[k] is None]
        if missing:
            raise ConfigError(
                f"setting '{MODEL_KEY}.{missing[0]}'",
                "is not set and there is no datamodule to take it from",
                f"set {' and '.join(missing)}, or train with a datamodule such as "
                "geocmid.datamodules.PretrainDataModule",
            )
        chip_key = "data.init_args.chip_size" if datamodule is not None else None
        check_chip_size(
            self.hparams["backbone"], self.hparams["chip_size"], self.hparams["mask_block"],
            chip_key=chip_key or f"{MODEL_KEY}.chip_size", mask_ratio=self.hparams["mask_ratio"],
        )  # fmt: skip
        self._build()

    def _fill_queue_size(self, num_images: int | None) -> None:
        """``queue_size`` unset → derived from the data's distinct images (``num_images``, None
        for scenes) and the keys enqueued per step (:func:`derive_queue_size`); logged."""
        if self.hparams["queue_size"] is not None:
            return
        batch = self.hparams["batch_size"]
        world = self._trainer.world_size if self._trainer else 1
        keys = 2 * int(batch) * world if batch else 2
        size = derive_queue_size(num_images, keys)
        self.hparams["queue_size"] = size
        self._queue_derived = True  # a resumed checkpoint's own length wins (on_load_checkpoint)
        initial = getattr(self, "_hparams_initial", None)
        if initial is not None:
            initial["queue_size"] = size
        if num_images is not None and size < PAPER_QUEUE_SIZE:
            log.info(
                "MoCo queue: %d keys (the data hold %d distinct images; the paper's %d would "
                "hold each ~%.0f times; --set model.queue_size=N to choose another)",
                size, num_images, PAPER_QUEUE_SIZE, PAPER_QUEUE_SIZE / max(num_images, 1),
            )  # fmt: skip

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """A derived queue length follows the checkpoint being resumed: it was derived from the
        batch it was trained with, and a resume with another batch must not change it."""
        bank = checkpoint.get("state_dict", {}).get("model.global_loss.queue.bank")
        derived = self._queue_derived and self.built
        if derived and bank is not None and int(bank.shape[0]) != self.hparams["queue_size"]:
            self.hparams["queue_size"] = int(bank.shape[0])
            self._resize_queue()

    def _resize_queue(self) -> None:
        """A model built before the queue length was known gets a fresh queue of that length
        (before training: a checkpoint's queue loads after setup)."""
        loss = self.model.global_loss
        if loss.queue.size[0] != int(self.hparams["queue_size"]):
            self.model.global_loss = MoCoQueueLoss(
                int(self.hparams["queue_size"]), int(self.hparams["proj_dim"]), loss.temperature
            ).to(next(self.model.parameters()).device)

    @property
    def rgb_indices(self) -> list[int] | None:
        """Channel indices of ``rgb_bands`` (None when no RGB bands are named)."""
        rgb, bands = self.hparams["rgb_bands"], self.hparams["bands"]
        if not rgb:
            return None
        if bands is None or any(b not in bands for b in rgb):
            raise ConfigError(
                f"setting '{MODEL_KEY}.rgb_bands'",
                f"{list(rgb)} are not all among the bands {list(bands or [])}",
                "name three of the data's bands (the catalog entry's 'rgb')",
            )
        return [list(bands).index(b) for b in rgb]

    def forward(self, x: Tensor) -> Tensor:
        """Student backbone features ``[B, C_out, S/stride, S/stride]`` of a normalised image."""
        return self.model.backbone(x)

    # ------------------------------------------------------------------------------------------
    def _view_generator(self, device: torch.device) -> torch.Generator:
        """Per-rank generator of the crops, flips, masks and augmentation draws.

        Seeded from (seed, rank, global step) so ranks differ and a resumed run does not replay
        the crops of its first epochs.
        """
        if self._generator is None or self._generator.device != device:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            step = self.trainer.global_step if self._trainer is not None else 0
            base = self.hparams["view_seed"]
            base = int(os.environ.get("PL_GLOBAL_SEED", 0)) if base is None else int(base)
            seed = np.random.SeedSequence([base, rank, step]).generate_state(1)[0]
            self._generator = torch.Generator(device=device).manual_seed(int(seed))
        return self._generator

    def on_train_start(self) -> None:
        self._generator = None  # reseed after a resume (global_step is restored by now)
        self._ema_step = self.trainer.global_step

    def make_views(self, batch: dict[str, Any]) -> dict[str, Tensor]:
        """``{"image", ["valid"]}`` (normalised, on the device) → the two-view CMID batch.

        Runs inside ``training_step`` rather than ``on_after_batch_transfer``: Lightning calls only
        one of the module's and the datamodule's batch hooks, and the datamodule's normalises.
        Autocast is off: crops, blur and mean-fill are cheap and exact in fp32.
        """
        image = batch["image"]
        if image.shape[1] != self.hparams["in_chans"]:
            raise ConfigError(
                "setting 'in_chans'",
                f"the data has {image.shape[1]} bands but the model was built for "
                f"{self.hparams['in_chans']}",
                "set in_chans (and bands) to the data's band count",
            )
        inputs = {"image": image.float()}
        if "valid" in batch:
            inputs["valid"] = batch["valid"].bool()
        with torch.autocast(image.device.type, enabled=False):
            views = self.views(inputs, self._view_generator(image.device))
        if "bounds" in batch:
            views["bounds"] = batch["bounds"]  # kept for diagnostics (which chips a rank saw)
        return views

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """All CMID losses of one batch; returns the total loss."""
        if "img" not in batch:
            batch = self.make_views(batch)
        losses = self.model.forward_losses(batch, self.teacher_temperature())
        self.last_views = batch
        bs = batch["img"].shape[0]
        self.log_dict(
            {f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"},
            on_step=True, on_epoch=True, batch_size=bs,
        )  # fmt: skip
        self.log("train/loss", losses["loss"].detach(), on_step=True, on_epoch=True,
                 prog_bar=True, batch_size=bs)  # fmt: skip
        self.log_dict(
            {
                "train/lr": self.trainer.optimizers[0].param_groups[0]["lr"],
                "train/ema_momentum": self.ema_tau,
                "train/teacher_temp": self.teacher_temperature(),
            },
            on_step=True, on_epoch=False, batch_size=bs,
        )  # fmt: skip
        return losses["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """EMA teacher update, after ``optimizer.step()`` and only when the optimizer stepped."""
        step = self.trainer.global_step
        if step > self._ema_step:
            sched = self.run_schedule()
            self.ema_tau = momentum_at(step - 1, sched.total_steps, sched.ema_start, sched.ema_end)
            ema_foreach(self.model, self.ema_tau)
            self._ema_step = step

    # ------------------------------------------------------------------------------------------
    def per_device_batch(self) -> int:
        """Per-device batch size: ``batch_size`` (filled from the datamodule in :meth:`setup`)."""
        size = self.hparams["batch_size"]
        if not size:
            raise ConfigError(
                f"setting '{MODEL_KEY}.batch_size'",
                "the per-device batch size is unknown (no datamodule with a batch_size)",
                "set batch_size, or train with a datamodule that has one",
            )
        return int(size)

    def global_batch(self) -> int:
        """Images per optimizer step: batch × devices × nodes × gradient accumulation."""
        t = self.trainer
        return self.per_device_batch() * t.world_size * t.accumulate_grad_batches

    def configure_optimizers(self) -> Any:
        """Adan/AdamW, wd on ≥ 2-D parameters, per-step warmup + cosine LambdaLR (spec §5)."""
        hp = self.hparams
        lr = hp["base_lr"] * self.global_batch() / hp["lr_reference_batch"]
        groups = param_groups(self.model, hp["weight_decay"])
        betas = tuple(hp["betas"]) if hp["betas"] else None
        opt: Optimizer
        if hp["optimizer"].lower() == "adan":
            from timm.optim import Adan

            # foreach: one multi-tensor update instead of timm's per-parameter loop on CPU
            # (~20 % of a CPU step, benchmarks/bench_cmid_step.py)
            opt = Adan(groups, lr=lr, **({"betas": betas} if betas else {}), eps=1e-8,
                       foreach=True)  # fmt: skip
        else:
            opt = AdamW(groups, lr=lr, **({"betas": betas} if betas else {}), foreach=True)
        self.schedule = None
        sched = self.run_schedule()
        total, warmup = sched.total_steps, sched.warmup_steps
        min_lr, start = min(hp["min_lr"], lr), hp["warmup_start"]

        def factor(step: int) -> float:
            return lr_factor(step, total, warmup, lr, min_lr, start)

        sched = LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def run_schedule(self) -> CMIDSchedule:
        """Warm-ups and EMA momenta of this run in optimizer steps (derived once per fit).

        From the trainer's ``estimated_stepping_batches`` and the task's schedule arguments
        (:func:`~geocmid.cmid.derive.derive_schedule`).
        """
        if self.schedule is None:
            hp, t = self.hparams, self.trainer
            total = max(int(t.estimated_stepping_batches), 1)
            epochs = t.max_epochs if (t.max_epochs or 0) > 0 else None
            per_epoch = total / epochs if epochs else float(total)
            ema = hp["ema_momentum"]
            self.schedule = derive_schedule(
                total, per_epoch,
                warmup_steps=hp["warmup_steps"], warmup_epochs=hp["warmup_epochs"],
                warmup_fraction=hp["warmup_fraction"],
                teacher_temp_warmup_steps=hp["teacher_temp_warmup_steps"],
                teacher_temp_warmup_epochs=hp["teacher_temp_warmup_epochs"],
                teacher_temp_warmup_fraction=hp["teacher_temp_warmup_fraction"],
                ema_momentum=tuple(ema) if ema is not None else None,
                ema_horizon_fraction=hp["ema_horizon_fraction"],
            )  # fmt: skip
        return self.schedule

    def teacher_temperature(self, step: int | None = None) -> float:
        """DINO teacher temperature at optimizer ``step`` (default: the trainer's global step)."""
        step = self.trainer.global_step if step is None else step
        start, end = self.hparams["teacher_temp"]
        sched = self.run_schedule()
        return teacher_temperature_at(step, start, end, sched.teacher_temp_warmup_steps)

    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_embeddings(self, x: Tensor) -> Tensor:
        """L2-normalised teacher GAP features ``[B, C_out]`` of normalised images, eval mode."""
        teacher = self.model.teacher
        was_training = teacher.training
        teacher.eval()
        try:
            feats = teacher(x.to(self.device, torch.float32)).float().mean(dim=(2, 3))
        finally:
            teacher.train(was_training)
        return nn.functional.normalize(feats, dim=1)


def paper_settings() -> dict[str, Any]:
    """The CMID method settings (:class:`CMIDModel` keyword arguments) at :class:`CMIDTask`'s
    defaults, i.e. the paper's (Muhtar et al., TGRS 2023; the authors' configs)."""
    params = inspect.signature(CMIDTask.__init__).parameters
    settings = {name: params[name].default for name in METHOD_ARGS}
    settings["queue_size"] = PAPER_QUEUE_SIZE  # the task's default (None) derives it from data
    return settings
