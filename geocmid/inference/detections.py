"""Detections from overlapping windows: merged across windows, then mapped to map coordinates.

Each window reports boxes in its own pixels; the engine moves them to scene pixels and flags the
sides lying on an inner window border ("cut": the object continues outside the window). Merging,
per class, greedy by score:

- two boxes from different windows with IoU >= ``iou`` are the same object: keep the best;
- a cut box and another box from a different window are pieces of one object when they overlap
  along every axis where one of them is cut, and have 1-D IoU >= ``iou`` along every axis where
  neither is cut: they are replaced by their union (one box for an object cut by a border).

Boxes from the same window are never merged: the detector already separated them.
"""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import shapely

from geocmid.inference.areas import geometry_areas_m2
from geocmid.inference.card import ModelCard
from geocmid.inference.engine import CUT_BOTTOM, CUT_LEFT, CUT_RIGHT, CUT_TOP
from geocmid.inference.reader import Grid
from geocmid.inference.vectorize import to_map

#: Columns of a box row (scene pixels): see ``engine._window_boxes``.
X0, Y0, X1, Y1, SCORE, LABEL, CUT, WROW, WCOL = range(9)


def _iou_1d(a0: float, a1: float, b0: float, b1: float) -> float:
    inter = max(0.0, min(a1, b1) - max(a0, b0))
    union = max(a1, b1) - min(a0, b0)
    return inter / union if union > 0 else 0.0


def _same_object(a: np.ndarray, b: np.ndarray, iou: float) -> bool:
    cut_a, cut_b = int(a[CUT]), int(b[CUT])
    if not (cut_a or cut_b):
        inter = max(0.0, min(a[X1], b[X1]) - max(a[X0], b[X0])) * max(
            0.0, min(a[Y1], b[Y1]) - max(a[Y0], b[Y0])
        )
        union = (a[X1] - a[X0]) * (a[Y1] - a[Y0]) + (b[X1] - b[X0]) * (b[Y1] - b[Y0]) - inter
        return union > 0 and inter / union >= iou
    cut = cut_a | cut_b
    for lo, hi, flags in ((X0, X1, CUT_LEFT | CUT_RIGHT), (Y0, Y1, CUT_TOP | CUT_BOTTOM)):
        overlap = min(a[hi], b[hi]) - max(a[lo], b[lo])
        if cut & flags:
            if overlap <= 0:
                return False
        elif _iou_1d(a[lo], a[hi], b[lo], b[hi]) < iou:
            return False
    return True


def merge_boxes(rows: np.ndarray, iou: float = 0.5) -> np.ndarray:
    """Merge duplicates and pieces of boxes found by overlapping windows.

    Args:
        rows: ``[N, 9]`` boxes in scene pixels (x0, y0, x1, y1, score, label, cut, window row, col).
        iou: IoU (2-D for whole boxes, 1-D along uncut axes for pieces) above which boxes match.

    Returns:
        ``[M, 9]`` merged boxes, best score first (ties: top-left first), deterministic.
    """
    if len(rows) == 0:
        return rows.reshape(0, 9)
    order = np.lexsort((rows[:, X0], rows[:, Y0], -rows[:, SCORE]))
    rows = rows[order]
    tree = shapely.STRtree(shapely.box(rows[:, X0], rows[:, Y0], rows[:, X1], rows[:, Y1]))
    used = np.zeros(len(rows), bool)
    kept = []
    for n in range(len(rows)):
        if used[n]:
            continue
        used[n] = True
        box = rows[n].copy()
        windows = {(box[WROW], box[WCOL])}
        grown = True
        while grown:  # a merged box can reach further pieces (objects across 4 windows)
            grown = False
            query = shapely.box(box[X0], box[Y0], box[X1], box[Y1])
            for m in np.sort(tree.query(query)):
                other = rows[m]
                if used[m] or other[LABEL] != box[LABEL] or (other[WROW], other[WCOL]) in windows:
                    continue
                if not _same_object(box, other, iou):
                    continue
                used[m] = True
                if int(box[CUT]) or int(other[CUT]):
                    box[[X0, Y0]] = np.minimum(box[[X0, Y0]], other[[X0, Y0]])
                    box[[X1, Y1]] = np.maximum(box[[X1, Y1]], other[[X1, Y1]])
                    box[CUT] = float(int(box[CUT]) | int(other[CUT]))
                    windows.add((other[WROW], other[WCOL]))
                    grown = True
        kept.append(box)
    return np.array(kept)


def boxes_frame(rows: np.ndarray, grid: Grid, card: ModelCard) -> gpd.GeoDataFrame:
    """Boxes as polygons in map coordinates with class, score and area (m²)."""
    geoms = shapely.box(rows[:, X0], rows[:, Y0], rows[:, X1], rows[:, Y1]) if len(rows) else []
    geoms = to_map(np.asarray(geoms, dtype=object), grid.transform) if len(rows) else np.array([])
    labels = rows[:, LABEL].astype(np.int64) if len(rows) else np.zeros(0, np.int64)
    return gpd.GeoDataFrame(
        {
            "class_value": np.array([card.classes[k].value for k in labels], np.int64),
            "class_name": [card.classes[k].name for k in labels],
            "score": rows[:, SCORE] if len(rows) else np.zeros(0),
            "area_m2": geometry_areas_m2(geoms, grid.crs) if len(rows) else np.zeros(0),
        },
        geometry=gpd.GeoSeries(list(geoms), crs=grid.crs),
        crs=grid.crs,
    )
