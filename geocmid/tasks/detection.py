"""Object detection fine-tuning: TorchGeo's ``ObjectDetection`` on a CMID ResNet + FPN.

:class:`DetectionTask` keeps TorchGeo's training step (``bbox_xyxy`` / ``label`` batches, loss
dict) and replaces its model with :func:`~geocmid.tasks.detection_model.build_detector`, whose
encoder comes from :func:`geocmid.tasks.encoders.load_encoder` (geocmid export, CMID release or
random). Validation / test compute mAP over the whole epoch (``val_map`` = mAP@0.5:0.95,
``val_map_50`` = mAP@0.5, torchmetrics' COCO evaluation);
:class:`~geocmid.tasks.reports.ReportCallback` draws a panel of sample predictions into
``<log dir>/reports/detections_<stage>.png``. The data-derived arguments (``in_channels``,
``num_classes``, ``classes``, ``bands``, ``mean``, ``std``, ``chip_size``) may be left out: they
are read from the datamodule in ``setup`` (:class:`~geocmid.tasks.common.DataArgsMixin`).
Checkpoints carry a model card, so :func:`load_detector_for_prediction` needs nothing but the
checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import AdamW
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau
from torchgeo.tasks import ObjectDetection
from torchmetrics import MetricCollection
from torchmetrics.detection.mean_ap import MeanAveragePrecision

from geocmid.errors import ConfigError, ModelError
from geocmid.models.card import CHECKPOINT_KEY
from geocmid.tasks.common import DataArgsMixin, rgb_indices, task_card
from geocmid.tasks.detection_model import (
    DEFAULT_ANCHORS,
    DetectorForPrediction,
    build_detector,
    encoder_of,
)
from geocmid.tasks.encoders import EncoderSource, freeze, load_encoder, param_groups

log = logging.getLogger(__name__)

#: Same card format and checkpoint key as the other fine-tuning tasks (tasks/common.py).


class DetectionTask(DataArgsMixin, ObjectDetection):
    """Faster R-CNN / RetinaNet / FCOS with a CMID ResNet encoder.

    Args:
        model: ``faster-rcnn``, ``retinanet`` or ``fcos``.
        backbone: ResNet name (``resnet18/34/50/101``); may be omitted with a geocmid export.
        weights: encoder weights: geocmid export (``.safetensors`` + card), CMID release /
            state dict (``.pth``), or None for random initialisation.
        in_channels: bands of the data (checked against the encoder; None: the datamodule's).
        num_classes: object classes + 1 (background; None: the datamodule's).
        classes: class names (or ``{"name": ...}`` dicts) in label order: the K object
            classes (label k ↔ ``classes[k - 1]``), or all ``num_classes`` with the
            background first (as the datamodule gives them; None: the datamodule's).
        bands: band names (for the model card; None: the datamodule's).
        mean, std: per-band normalisation (raw units) the chips were normalised with (card;
            None: the datamodule's).
        chip_size: training chip edge in pixels (card; None: the datamodule's).
        anchor_sizes: base anchor edge per pyramid level, pixels (strides 4..128).
        lr: learning rate of the head; ``backbone_lr``: of the encoder (default ``lr``).
        weight_decay: AdamW weight decay.
        scheduler: ``plateau`` (on ``val_map``), ``cosine`` (per step) or ``none``.
        patience: plateau patience in epochs.
        freeze_backbone: keep the encoder fixed (train FPN + heads only).
        adapt_in_chans: let a release checkpoint with another band count adapt its stem.
        score_thresh: detections below this score are dropped at inference.
        panel_score: predictions drawn on the sample panels from this score on.
        detector_options: extra torchvision constructor arguments (see ``build_detector``).
        fpn_channels: channels per pyramid level (256 as torchvision; 64 is far cheaper on CPU).
    """

    monitor = "val_map"
    mode = "max"
    #: task name in model cards and in ``geocmid fit``
    card_task = "detection"
    #: keep ``weights`` (a path, not a torchvision enum here) in the hyperparameters
    ignore = None

    def __init__(
        self,
        model: str = "faster-rcnn",
        backbone: str | None = "resnet50",
        weights: str | None = None,
        in_channels: int | None = None,
        num_classes: int | None = None,
        classes: Sequence[str | dict[str, Any]] | None = None,
        bands: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        chip_size: int | None = None,
        anchor_sizes: Sequence[int] = DEFAULT_ANCHORS,
        lr: float = 1e-4,
        backbone_lr: float | None = None,
        weight_decay: float = 1e-4,
        scheduler: str = "plateau",
        patience: int = 10,
        freeze_backbone: bool = False,
        adapt_in_chans: bool = False,
        score_thresh: float = 0.05,
        panel_score: float = 0.3,
        detector_options: dict[str, Any] | None = None,
        fpn_channels: int = 256,
    ) -> None:
        if scheduler not in ("plateau", "cosine", "none"):
            raise ConfigError("setting 'scheduler'", f"unknown scheduler '{scheduler}'",
                              "use plateau, cosine or none")  # fmt: skip
        if (
            classes is not None
            and num_classes is not None
            and len(classes) not in (num_classes - 1, num_classes)
        ):
            raise ConfigError(
                "setting 'classes'", f"names {len(classes)} classes but num_classes is "
                f"{num_classes} (object classes + background)", "make them agree",
            )  # fmt: skip
        self.weights = weights
        self.source: EncoderSource | None = None
        self._samples: dict[str, Any] | None = None
        # skip ObjectDetection.__init__ (fixed signature); BaseTask saves *our* arguments. The
        # zero-argument-style super() also gives this frame the __class__ cell Lightning's
        # save_hyperparameters looks for.
        super(ObjectDetection, self).__init__()

    # ---- model ----------------------------------------------------------------------------------
    def build_model(self) -> None:
        hp = self.hparams
        source = load_encoder(
            hp["weights"], hp["backbone"], hp["in_channels"], img_size=hp["chip_size"],
            adapt_in_chans=hp["adapt_in_chans"],
        )  # fmt: skip
        if source.backbone.in_chans != hp["in_channels"]:  # export bands checked by load_encoder
            raise ModelError(
                f"encoder {source.path or source.backbone.name}",
                f"takes {source.backbone.in_chans} bands but the data has {hp['in_channels']}",
                "use imagery with the encoder's bands, or other weights",
            )  # fmt: skip
        self.source = source
        self.model = build_detector(
            hp["model"], source.backbone, hp["num_classes"], hp["anchor_sizes"],
            score_thresh=hp["score_thresh"], options=hp["detector_options"],
            fpn_channels=hp["fpn_channels"],
        )  # fmt: skip
        if hp["freeze_backbone"]:
            freeze(self.encoder)

    @property
    def encoder(self) -> nn.Module:
        """The geocmid backbone inside the detector (``.model`` holds the timm weights)."""
        return encoder_of(self.model)

    def build_losses(self) -> None:
        """The torchvision detectors compute their own losses."""

    def build_metrics(self) -> None:
        # COCO evaluation over the whole epoch: per-batch mAPs averaged would not be an mAP
        metrics = MetricCollection(
            {"map": MeanAveragePrecision(box_format="xyxy", iou_type="bbox")}
        )
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")
        # oriented references (batches with ``polygon``): the same COCO evaluation on polygon
        # masks (``{stage}_obb_map``, ``{stage}_obb_map_50``), see :func:`obb_masks`
        self.val_obb = MeanAveragePrecision(iou_type="segm")
        self.test_obb = MeanAveragePrecision(iou_type="segm")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        groups = param_groups(self.model, self.encoder, hp["lr"], hp["backbone_lr"],
                              hp["weight_decay"])  # fmt: skip
        optimizer = AdamW(groups)
        if hp["scheduler"] == "cosine":
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            sched = CosineAnnealingLR(optimizer, T_max=steps)
            return {
                "optimizer": optimizer,
                "lr_scheduler": {"scheduler": sched, "interval": "step"},
            }
        if hp["scheduler"] == "plateau":
            sched = ReduceLROnPlateau(optimizer, mode="max", patience=hp["patience"])
            config = {"scheduler": sched, "monitor": self.monitor, "strict": False}
            return {"optimizer": optimizer, "lr_scheduler": config}
        return optimizer

    # ---- steps ----------------------------------------------------------------------------------
    @staticmethod
    def targets(batch: dict[str, Any]) -> list[dict[str, Tensor]]:
        """Reference boxes per chip; objects flagged ``difficult`` become COCO crowd regions
        (``iscrowd``: neither missed nor false positives when detected, as DOTA scores them)."""
        out = [
            {"boxes": b.reshape(-1, 4).float(), "labels": lab.long()}
            for b, lab in zip(batch["bbox_xyxy"], batch["label"], strict=True)
        ]
        for target, flags in zip(out, batch.get("difficult") or [], strict=False):
            target["iscrowd"] = flags.long()
        return out

    def training_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> Tensor:
        losses = self.model(batch["image"], self.targets(batch))
        loss: Tensor = sum(losses.values())  # type: ignore[assignment]
        size = batch["image"].shape[0]
        self.log_dict({f"train_{k}": v for k, v in losses.items()}, batch_size=size)
        self.log("train_loss", loss, batch_size=size, prog_bar=True)
        return loss

    def _eval_step(self, stage: str, batch: dict[str, Any], batch_idx: int) -> None:
        targets = self.targets(batch)
        predictions = self.model(batch["image"])
        getattr(self, f"{stage}_metrics").update(predictions, targets)
        if "polygon" in batch:
            size = tuple(batch["image"].shape[-2:])
            preds, refs = obb_masks(predictions, targets, batch["polygon"], size)
            getattr(self, f"{stage}_obb").update(preds, refs)

    def report_samples(self, batch: dict[str, Any], n: int = 4) -> dict[str, Any]:
        """Up to ``n`` chips of ``batch`` with reference and predicted boxes, on the CPU (for
        :class:`~geocmid.tasks.reports.ReportCallback`)."""
        keys = ("image", "bbox_xyxy", "label", "polygon")
        batch = {k: batch[k][:n] for k in keys if k in batch}
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            predictions = self.model(batch["image"])
        self.model.train(was_training)
        targets = [{k: v.cpu() for k, v in t.items()} for t in self.targets(batch)]
        for target, corners in zip(targets, batch.get("polygon") or [], strict=False):
            target["polygons"] = corners.cpu()  # oriented references, drawn as polygons
        return {
            "images": batch["image"].detach().cpu(),
            "targets": targets,
            "predictions": [{k: v.detach().cpu() for k, v in p.items()} for p in predictions],
        }

    def validation_step(
        self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        self._eval_step("val", batch, batch_idx)

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step("test", batch, batch_idx)

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self.model(batch["image"])

    def _end_epoch(self, stage: str) -> None:
        metrics = getattr(self, f"{stage}_metrics")
        values = metrics.compute()
        metrics.reset()
        scalars = {k: v for k, v in values.items() if isinstance(v, Tensor) and v.numel() == 1}
        scalars.pop(f"{stage}_classes", None)
        obb = getattr(self, f"{stage}_obb")
        if obb.groundtruth_labels:  # oriented references were scored this epoch
            values = obb.compute()
            for key in ("map", "map_50", "map_75", "mar_100"):
                scalars[f"{stage}_obb_{key}"] = values[key]
        obb.reset()
        self.log_dict({k: v.float() for k, v in scalars.items()}, sync_dist=True)

    def on_validation_epoch_end(self) -> None:
        self._end_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._end_epoch("test")

    # ---- reports and card -------------------------------------------------------------------
    def rgb_indices(self) -> list[int]:
        """Band indices drawn as red, green, blue on the sample panels."""
        return rgb_indices(self.hparams.get("bands"), self.hparams["in_channels"])

    def object_classes(self) -> list[str]:
        """Names of labels 1..K (whatever form ``classes`` was given in)."""
        hp = self.hparams
        given = [c["name"] if isinstance(c, dict) else str(c) for c in hp.get("classes") or []]
        if len(given) == hp["num_classes"]:
            given = given[1:]  # background first, as geocmid fit passes the class table
        return given or [f"class {k}" for k in range(1, hp["num_classes"])]

    def model_card(self) -> dict[str, Any]:
        """The task's :class:`~geocmid.models.card.ModelCard` as a dict; classes start with
        the detectors' background (value 0)."""
        names = ["background", *self.object_classes()]
        classes = [{"value": k, "name": n} for k, n in enumerate(names)]  # default palette
        return task_card("detection", self.hparams, self.encoder.name, classes)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.model_card()


def obb_masks(
    predictions: list[dict[str, Tensor]], targets: list[dict[str, Tensor]],
    polygons: list[Tensor], size: tuple[int, int],
) -> tuple[list[dict[str, Tensor]], list[dict[str, Tensor]]]:  # fmt: skip
    """Predictions and oriented references as masks for torchmetrics' ``segm`` mAP.

    The mAP for oriented boxes needs the IoU of two polygons; torchmetrics' COCO evaluation
    (pycocotools) computes it on masks, so each reference quadrilateral (``polygons``: per chip
    ``[N, 8]`` corners in chip pixels) is drawn into a ``size`` mask (PIL, pixel centres inside
    the polygon), and each predicted box into a rectangle mask. The detectors predict
    axis-aligned boxes: this scores them against the oriented references, as DOTA's task 1
    scores a horizontal detector. Pixel-level IoU differs from exact polygon IoU by about
    ``perimeter / area`` of the smaller object (≤ 0.1 for objects of 40 px and more).

    Returns:
        ``(predictions, targets)`` with ``masks`` ``[N, H, W]`` bool added.
    """
    import numpy as np
    from PIL import Image, ImageDraw

    h, w = size
    preds, refs = [], []
    for pred, target, poly in zip(predictions, targets, polygons, strict=True):
        masks = np.zeros((len(poly), h, w), dtype=bool)
        for k, corners in enumerate(poly.reshape(-1, 4, 2).tolist()):
            canvas = Image.new("1", (w, h))
            ImageDraw.Draw(canvas).polygon([(x - 0.5, y - 0.5) for x, y in corners], fill=1)
            masks[k] = np.asarray(canvas, dtype=bool)
        refs.append({**target, "masks": torch.from_numpy(masks)})
        boxes = pred["boxes"].detach().round().long().clamp(min=0).tolist()
        pmasks = torch.zeros((len(boxes), h, w), dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes):
            pmasks[k, y0:y1, x0:x1] = True
        preds.append({"masks": pmasks, "scores": pred["scores"].detach().cpu(),
                      "labels": pred["labels"].detach().cpu()})  # fmt: skip
    refs = [{k: v.cpu() for k, v in r.items()} for r in refs]
    return preds, refs


def load_detector_for_prediction(checkpoint: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained detector for the prediction engine → ``(module, card)``.

    The module maps normalised ``[B, C, H, W]`` chips to a list of ``B`` dicts with ``boxes``
    (pixel xyxy), ``scores`` and ``labels`` (indices into ``card["classes"]``, 0 = background).
    The encoder file named at training time is not needed: all weights are in the checkpoint.
    """
    from geocmid.tasks import load_task

    task, card = load_task(checkpoint)
    if card.get("task") != "detection":
        raise ModelError(f"checkpoint '{checkpoint}'", "is not a geocmid detection checkpoint",
                         "pass a checkpoint written by training a DetectionTask")  # fmt: skip
    return DetectorForPrediction(task.model, card["in_chans"]), card


def build_detection_datamodule(config: dict[str, Any]) -> Any:
    """A :class:`~geocmid.datamodules.DetectionDataModule` from the ``data`` config section.

    ``config`` holds the datamodule's arguments (``labels``, ``entry``, ``catalog``,
    ``chip_size``, ...), either flat or under ``init_args`` (Lightning CLI layout).
    """
    from geocmid.datamodules import DetectionDataModule

    args = dict(config.get("init_args", config))
    args.pop("class_path", None)
    return DetectionDataModule(**args)


def build_detection_task(config: dict[str, Any], datamodule: Any = None) -> DetectionTask:
    """A :class:`DetectionTask` from the ``model`` config section, completed from the data.

    ``in_channels``, ``num_classes``, ``classes``, ``bands``, ``mean``, ``std`` and
    ``chip_size`` are taken from ``datamodule`` (set up here) when it is given and the config
    leaves them out, so the returned task is built; without a datamodule they are read in
    ``setup`` when training starts.
    """
    args = dict(config.get("init_args", config))
    args.pop("class_path", None)
    task = DetectionTask(**args)
    if datamodule is not None:
        datamodule.setup("fit")
        task.attach_data(datamodule)
    return task


def build_detection(
    model_config: dict[str, Any], data_config: dict[str, Any]
) -> tuple[DetectionTask, Any]:
    """Task and datamodule together; a geocmid export's normalisation is used for the data.

    Chips are normalised with the encoder's card statistics when ``model.weights`` is a geocmid
    export whose card has them and ``data`` gives no ``mean``/``std``/``stats_from`` (the
    encoder learnt its features on data normalised that way).
    """
    model_args = dict(model_config.get("init_args", model_config))
    data_args = dict(data_config.get("init_args", data_config))
    data_args.pop("class_path", None)
    weights = model_args.get("weights")
    if weights and not any(data_args.get(k) is not None for k in ("mean", "std", "stats_from")):
        data_args["stats_from"] = str(weights)
    datamodule = build_detection_datamodule(data_args)
    return build_detection_task(model_args, datamodule), datamodule
