"""Score the map of a run against reference labels (the ``evaluate`` step), on held-out areas.

The labels are read onto the map's grid by the code training reads them with
(:func:`geocmid.data.datasets.factory.read_labels_on_grid`: ``align_with``, ``assign_crs``,
``class_masks``, vector labels rasterised with their class attribute; nearest neighbour where a
file is on another grid). Pixels that are nodata in the map or ignored in the labels are left
out, and so is every pixel outside the *scored area* (``steps.evaluate.areas``):

* ``test`` (default): the test split of the fine-tuning (the spatially disjoint blocks
  ``data.split`` kept out of training and validation), rebuilt from the finetune step's
  resolved ``config.yaml``. A recipe without a finetune step (a model trained elsewhere) is
  scored on the whole map, and the report says so;
* a vector file of polygons: the areas the user names;
* ``all``: the whole map, training area included (the report warns that the scores are then
  optimistic).

Binary / change maps get precision, recall, F1 and IoU of the positive class; every map gets
overall accuracy and per-class IoU. The evaluation JSON records the scored area.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.recipes import steps as S
from geocmid.recipes.checks import Facts
from geocmid.recipes.resolve import Resolved, is_raster_path


def _labels(res: Resolved) -> tuple[Any, Any, str]:
    """The evaluate step's labels: ``(entry or raster path, catalog, label for messages)``."""
    from geocmid.data.catalog import Catalog

    name = res.steps["evaluate"]["labels"]
    if is_raster_path(name):
        return Path(name), None, str(name)
    catalog = Catalog(res.catalog)
    entry = catalog.get(name)
    return entry, catalog, name


def held_out_area(res: Resolved, grid: Any) -> tuple[np.ndarray | None, dict[str, Any]]:
    """The pixels of ``grid`` to score (``None``: every pixel) and a description of them.

    Raises:
        ConfigError: ``areas`` names no known area, the fine-tuning kept no test split, or its
            configuration cannot be read back.
    """
    from geocmid.errors import ConfigError

    choice = res.steps["evaluate"].get("areas") or "test"
    where = res.recipe.where("steps.evaluate.areas")
    if choice == "all":
        return None, {
            "kind": "whole map",
            "note": "includes the areas the model was trained and validated on: optimistic",
        }
    if choice != "test":
        path = Path(choice)
        if not path.is_file():
            raise ConfigError(
                where, f"{choice!r} is neither 'test', 'all' nor a vector file",
                "name a GPKG / GeoJSON / Shapefile of the areas to score, 'test' or 'all'",
            )  # fmt: skip
        import geopandas as gpd

        frame = gpd.read_file(path)
        return _rasterize_area(frame.geometry.union_all(), frame.crs, grid), {
            "kind": "areas named by the user", "source": str(path),
        }  # fmt: skip
    if "finetune" not in res.steps:
        return None, {
            "kind": "whole map",
            "note": "the model was not fine-tuned by this recipe, so no area of the map is known "
            "to have been trained on",
        }
    region, crs, split = _test_split(res, where)
    mask = _rasterize_area(region, crs, grid)
    return mask, {
        "kind": "test split of the fine-tuning",
        "source": str(res.step_dir("finetune") / "config.yaml"),
        "split": split,
    }


def _test_split(res: Resolved, where: str) -> tuple[Any, Any, list[float]]:
    """The fine-tuning datamodule's test region (shapely geometry in its CRS), rebuilt from
    the resolved config the finetune step wrote."""
    import yaml

    from geocmid.errors import ConfigError
    from geocmid.workflows.config import _import_trusted

    path = res.step_dir("finetune") / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            where, f"the fine-tuning's resolved config {path} is missing, so its test split "
            "is unknown", "run the finetune step first, or set steps.evaluate.areas",
        )  # fmt: skip
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    cls = _import_trusted(str(data.get("class_path")), f"{path}: data.class_path")
    module = cls(**(data.get("init_args") or {}))
    module.setup("test")
    regions = getattr(module, "regions", None)
    split = [float(v) for v in getattr(module.hparams, "split", [])]
    if regions is None or len(regions) < 3 or regions[2].is_empty:
        raise ConfigError(
            where, f"the fine-tuning kept no test area (data.split {split})",
            "fine-tune with a test share in data.split (e.g. [0.7, 0.15, 0.15]), or set "
            "steps.evaluate.areas to a vector file of held-out areas",
        )  # fmt: skip
    return regions[2], module.dataset.crs, split


def _rasterize_area(geometry: Any, crs: Any, grid: Any) -> np.ndarray:
    """``[H, W]`` bool: pixels of ``grid`` whose centre lies in ``geometry`` (given in
    ``crs``)."""
    import pyproj
    import shapely
    from rasterio.features import geometry_mask

    if crs is not None and grid.crs is not None:
        source = pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)
        target = pyproj.CRS.from_wkt(grid.crs.to_wkt())
        if not source.equals(target):
            t = pyproj.Transformer.from_crs(source, target, always_xy=True)
            geometry = shapely.transform(
                shapely.segmentize(geometry, max(grid.res) * 4),
                lambda xy: np.column_stack(t.transform(xy[:, 0], xy[:, 1])),
            )
    if geometry.is_empty:
        return np.zeros((grid.height, grid.width), bool)
    return geometry_mask(
        [geometry], out_shape=(grid.height, grid.width), transform=grid.transform, invert=True
    )


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
    """Write ``maps/NAME_evaluation.json`` and return the scores (on the scored area only).

    Raises:
        DataError: no labelled pixel of the map lies in the scored area.
    """
    import rasterio

    from geocmid.data.datasets.factory import read_labels_on_grid
    from geocmid.data.sources import Grid
    from geocmid.errors import DataError

    outputs = S.predict_outputs(res, facts.task)
    labels, catalog, label_name = _labels(res)
    with rasterio.open(outputs["classes"]) as src:
        pred, nodata = src.read(1), src.nodata
        grid = Grid(src.crs, src.transform, src.width, src.height)
    ref, valid = read_labels_on_grid(labels, grid, catalog)
    area, scored = held_out_area(res, grid)
    if nodata is not None:
        valid &= pred != nodata
    labelled = int(valid.sum())
    if area is not None:
        valid &= area
    card = json.loads(outputs["summary"].read_text()).get("model_card", {})
    # The class raster and the labels both hold class *values* (e.g. 1..5); score on indices.
    values = [int(c["value"]) for c in card.get("classes", [])] or sorted(
        set(np.unique(pred[valid]).tolist()) | set(np.unique(ref[valid]).tolist())
    )
    lut = {v: i for i, v in enumerate(values)}
    pred_i, ref_i = _to_index(pred, lut), _to_index(ref, lut)
    valid &= (pred_i >= 0) & (ref_i >= 0)
    if not valid.any():
        raise DataError(
            str(outputs["classes"]),
            f"no labelled pixel of the map lies in the scored area ({scored['kind']})",
            "check steps.evaluate.labels and steps.evaluate.areas cover the mapped area",
        )
    result = scores(pred_i[valid], ref_i[valid], len(values))
    result["classes"] = values
    result["labels"] = label_name
    scored["pixels"] = int(valid.sum())
    scored["fraction_of_labelled_map"] = round(int(valid.sum()) / max(labelled, 1), 4)
    result["scored_area"] = scored
    if len(values) == 2 and result["positive_fraction_reference"] == 0:
        result["warning"] = (
            f"the reference holds no '{card.get('classes', [{}, {}])[1].get('name', 'positive')}'"
            f" pixel in the scored area ({scored['kind']}, {scored['pixels']} pixels): F1, "
            "precision and recall say nothing here; name larger held-out areas with "
            "steps.evaluate.areas"
        )
        print(f"[evaluate] warning: {result['warning']}", flush=True)
    target = res.maps_dir / f"{res.steps['predict']['name']}_evaluation.json"
    target.write_text(json.dumps(result, indent=2))
    print(f"[evaluate] {target} ({describe_scored_area(scored)}): " + ", ".join(
        f"{k} {result[k]:.3f}" for k in ("f1", "precision", "recall", "mIoU", "overall_accuracy")
        if k in result))  # fmt: skip
    return result


def describe_scored_area(scored: dict[str, Any]) -> str:
    """One line saying which pixels were scored (for the console and the report)."""
    text = f"scored on the {scored['kind']}"
    if "fraction_of_labelled_map" in scored:
        text += f", {100 * scored['fraction_of_labelled_map']:.0f} % of the labelled map"
    if scored.get("note"):
        text += f"; {scored['note']}"
    return text
