"""Score the map of a run against reference labels (the ``evaluate`` step).

The labels are read onto the map's grid (nearest neighbour), pixels that are nodata in the map or
ignored in the labels are left out. Binary / change maps get precision, recall, F1 and IoU of the
positive class; every map gets overall accuracy and per-class IoU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.recipes import steps as S
from geocmid.recipes.checks import Facts
from geocmid.recipes.resolve import Resolved, is_raster_path


def _labels(res: Resolved) -> tuple[Path, int | None]:
    from geocmid.data.catalog import Catalog, RasterLabelsEntry

    name = res.steps["evaluate"]["labels"]
    if is_raster_path(name):
        return Path(name), None
    entry = Catalog(res.catalog).get_kind(name, RasterLabelsEntry, res.recipe.where(
        "steps.evaluate.labels"))  # fmt: skip
    files = entry.resolve_paths(entry.paths, "paths", (".tif", ".tiff", ".vrt"))
    return files[0], entry.ignore_value


def _to_index(array: np.ndarray, lut: dict[int, int]) -> np.ndarray:
    """Class values → indices ``0..K-1`` (−1 for values outside the table)."""
    out = np.full(array.shape, -1, np.int64)
    for value, index in lut.items():
        out[array == value] = index
    return out


def scores(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Confusion-matrix scores of two equal-shape class arrays (already masked, 1-D)."""
    cm = np.bincount(ref * num_classes + pred, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    tp = np.diag(cm).astype(float)
    iou = tp / np.maximum(cm.sum(0) + cm.sum(1) - tp, 1)
    out: dict[str, Any] = {
        "pixels": int(cm.sum()),
        "overall_accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "iou": [float(v) for v in iou],
        "mIoU": float(iou.mean()),
        "confusion": cm.tolist(),
    }
    if num_classes == 2:
        p = tp[1] / max(cm[:, 1].sum(), 1)
        r = tp[1] / max(cm[1].sum(), 1)
        out.update(precision=float(p), recall=float(r), f1=float(2 * p * r / max(p + r, 1e-9)))
        out["positive_fraction_reference"] = float(cm[1].sum() / max(cm.sum(), 1))
        out["positive_fraction_map"] = float(cm[:, 1].sum() / max(cm.sum(), 1))
    return out


def evaluate_step(res: Resolved, facts: Facts) -> dict[str, Any]:
    """Write ``maps/NAME_evaluation.json`` and return the scores."""
    import rasterio
    from rasterio.warp import Resampling, reproject

    from geocmid.data.rasters import open_raster

    outputs = S.predict_outputs(res, facts.task)
    path, ignore = _labels(res)
    with rasterio.open(outputs["classes"]) as src:
        pred, nodata = src.read(1), src.nodata
        ref = np.full(pred.shape, 255 if ignore is None else ignore, np.int32)
        with open_raster(path) as lab:  # a missing or broken label file: a plain error
            reproject(
                rasterio.band(lab, 1), ref, dst_transform=src.transform, dst_crs=src.crs,
                resampling=Resampling.nearest, src_nodata=lab.nodata,
                dst_nodata=255 if ignore is None else ignore,
            )  # fmt: skip
    valid = np.ones(pred.shape, bool)
    if nodata is not None:
        valid &= pred != nodata
    if ignore is not None:
        valid &= ref != ignore
    card = json.loads(outputs["summary"].read_text()).get("model_card", {})
    # The class raster and the labels both hold class *values* (e.g. 1..5); score on indices.
    values = [int(c["value"]) for c in card.get("classes", [])] or sorted(
        set(np.unique(pred[valid]).tolist()) | set(np.unique(ref[valid]).tolist())
    )
    lut = {v: i for i, v in enumerate(values)}
    pred_i, ref_i = _to_index(pred, lut), _to_index(ref, lut)
    valid &= (pred_i >= 0) & (ref_i >= 0)
    result = scores(pred_i[valid], ref_i[valid], len(values))
    result["classes"] = values
    result["labels"] = str(path)
    target = res.maps_dir / f"{res.steps['predict']['name']}_evaluation.json"
    target.write_text(json.dumps(result, indent=2))
    print(f"[evaluate] {target}: " + ", ".join(
        f"{k} {result[k]:.3f}" for k in ("f1", "precision", "recall", "mIoU", "overall_accuracy")
        if k in result))  # fmt: skip
    return result
