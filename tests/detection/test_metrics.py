"""The detection scores: oriented references use polygon IoU, difficult objects are not scored."""

from __future__ import annotations

import math

import torch
from torchmetrics.detection.mean_ap import MeanAveragePrecision

from geocmid.tasks.detection import DetectionTask, obb_masks
from tests.detection.dota_data import rotated_rect


def _scores(batch: dict, predictions: list[dict]) -> tuple[float, float]:
    """(mAP@0.5 of boxes, mAP@0.5 against the oriented references) of one batch."""
    targets = DetectionTask.targets(batch)
    box = MeanAveragePrecision(iou_type="bbox")
    box.update(predictions, targets)
    obb = MeanAveragePrecision(iou_type="segm")
    obb.update(*obb_masks(predictions, targets, batch["polygon"], (64, 64)))
    return float(box.compute()["map_50"]), float(obb.compute()["map_50"])


def _batch(quads: list, difficult: list[bool]) -> dict:
    polys = torch.tensor([q.ravel().tolist() for q in quads], dtype=torch.float32)
    corners = polys.reshape(-1, 4, 2)
    boxes = torch.cat([corners.min(1).values, corners.max(1).values], 1)
    return {"bbox_xyxy": [boxes], "label": [torch.ones(len(quads), dtype=torch.long)],
            "polygon": [polys], "difficult": [torch.tensor(difficult)]}  # fmt: skip


def test_turned_object_scores_by_polygon_iou() -> None:
    # a 40 × 8 px object turned by 45°: its axis-aligned box (34 × 34 px) covers it 320 / 1152
    # → IoU 0.28 with the polygon, below 0.5; an upright one is scored the same either way
    turned = rotated_rect(32, 32, 40, 8, math.pi / 4)
    upright = rotated_rect(32, 32, 40, 8, 0.0)
    for quad, expected_obb in ((turned, 0.0), (upright, 1.0)):
        batch = _batch([quad], [False])
        prediction = [{"boxes": batch["bbox_xyxy"][0], "scores": torch.tensor([0.9]),
                       "labels": torch.tensor([1])}]  # fmt: skip
        box_map, obb_map = _scores(batch, prediction)
        assert box_map == 1.0 and obb_map == expected_obb


def test_difficult_objects_are_neither_missed_nor_false() -> None:
    easy, hard = rotated_rect(16, 16, 20, 12, 0.0), rotated_rect(46, 46, 20, 12, 0.0)
    batch = _batch([easy, hard], [False, True])
    found_easy = [{"boxes": batch["bbox_xyxy"][0][:1], "scores": torch.tensor([0.9]),
                   "labels": torch.tensor([1])}]  # fmt: skip
    assert _scores(batch, found_easy) == (1.0, 1.0)  # the difficult one is not missed
    batch["difficult"] = [torch.tensor([False, False])]
    box_map, obb_map = _scores(batch, found_easy)
    assert box_map < 0.6 and obb_map < 0.6  # scored: half the objects found
