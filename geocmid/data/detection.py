"""Detection chips: imagery + boxes in map coordinates → chips with boxes in chip pixels.

:class:`BoxChipDataset` is a TorchGeo ``GeoDataset``: indexed by a ``[x, y]`` slice like any
other, it returns the image chip and the boxes that fall in it, clipped to the chip and given in
chip pixel coordinates (``bbox_xyxy`` ``[N, 4]`` float32, x right / y down from the top-left
corner; ``label`` ``[N]`` int64 in 1..K, 0 being the detectors' background). Boxes that keep
less than ``min_visible`` of their area, or are narrower than ``min_size`` pixels after
clipping, are dropped: such remnants teach the detector to fire on object edges.

:class:`DetectionDataModule` splits the labelled area into spatially disjoint train / val /
test regions (:func:`~geocmid.data.sampling.spatial_split_regions`) and feeds the TorchGeo
detection task through :func:`collate_boxes` (variable box counts per chip).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import rasterio
import shapely
import torch
from torch import Tensor
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice

from geocmid.data.boxes import VECTOR_SUFFIXES
from geocmid.data.catalog import ImageryEntry
from geocmid.errors import DataError

log = logging.getLogger(__name__)
Sample = dict[str, Any]
BOX_FILE_SUFFIXES = (".csv", ".xml", *VECTOR_SUFFIXES)


class BoxChipDataset(GeoDataset):
    """Image chips with the boxes inside them, in chip pixels.

    Args:
        image: imagery dataset (samples carry ``image`` ``[C, H, W]`` and ``valid``).
        boxes: box polygons in ``image.crs`` with an int ``label`` column (1..K).
        area: labelled area (map coordinates); chips are only drawn inside it.
        min_visible: smallest share (0-1) of a box's area that must lie inside the chip.
        min_size: smallest width and height, in pixels, of a clipped box.
    """

    def __init__(
        self, image: GeoDataset, boxes: gpd.GeoDataFrame, area: shapely.Geometry | None = None,
        min_visible: float = 0.3, min_size: float = 2.0,
    ) -> None:  # fmt: skip
        self.image = image
        self.boxes = boxes.reset_index(drop=True)
        self.min_visible = min_visible
        self.min_size = min_size
        self._bounds = shapely.bounds(self.boxes.geometry.values)  # [N, 4] minx miny maxx maxy
        self._labels = self.boxes["label"].to_numpy(np.int64)
        self._tree = shapely.STRtree(self.boxes.geometry.values)
        index = image.index.copy()
        if area is not None:
            index["geometry"] = index.geometry.intersection(area)
            index = index[~index.geometry.is_empty]
        if index.empty:
            raise DataError("detection labels", "do not overlap the imagery",
                            "check that boxes and imagery cover the same place")  # fmt: skip
        self.index = index
        self._res = image.res

    def boxes_in(self, x: slice, y: slice) -> tuple[Tensor, Tensor]:
        """Boxes inside the map window ``x`` × ``y`` → (``[N, 4]`` chip-pixel xyxy, ``[N]``)."""
        xres, yres = x.step or self.res[0], y.step or self.res[1]
        width, height = (x.stop - x.start) / xres, (y.stop - y.start) / yres
        hits = self._tree.query(shapely.box(x.start, y.start, x.stop, y.stop))
        b = self._bounds[np.sort(hits)]
        # map → chip pixels: x right from the left edge, y down from the top edge
        px = np.stack(
            [(b[:, 0] - x.start) / xres, (y.stop - b[:, 3]) / yres,
             (b[:, 2] - x.start) / xres, (y.stop - b[:, 1]) / yres], axis=1,
        )  # fmt: skip
        area = (px[:, 2] - px[:, 0]) * (px[:, 3] - px[:, 1])
        clipped = np.clip(px, 0, [width, height, width, height])
        w, h = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        keep = (w >= self.min_size) & (h >= self.min_size)
        keep &= w * h >= self.min_visible * np.maximum(area, 1e-9)
        labels = self._labels[np.sort(hits)][keep]
        return torch.from_numpy(clipped[keep].astype(np.float32)), torch.from_numpy(labels)

    def __getitem__(self, index: GeoSlice) -> Sample:
        x, y, _ = self._disambiguate_slice(index)
        sample = self.image[index]
        boxes, labels = self.boxes_in(x, y)
        sample["bbox_xyxy"], sample["label"] = boxes.reshape(-1, 4), labels
        return sample


#: Per-object sample keys (a different count per chip): collated as lists.
BOX_KEYS = ("bbox_xyxy", "label", "polygon", "difficult", "bbox", "labels")


def collate_boxes(samples: Sequence[Sample]) -> Sample:
    """Stack images (``[B, C, H, W]``) and fixed-size keys; keep per-object keys
    (:data:`BOX_KEYS`: boxes, labels, corners, difficulty) as lists of tensors."""
    out: Sample = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in BOX_KEYS or not isinstance(values[0], Tensor):
            out[key] = values
        else:
            out[key] = torch.stack(values)
    return out


def _image_entry(files: Sequence[Path]) -> ImageryEntry:
    """An in-memory imagery entry over the images that CSV / VOC labels refer to."""
    with rasterio.open(files[0]) as src:
        bands = [d or f"b{i}" for i, d in enumerate(src.descriptions, start=1)]
    return ImageryEntry(
        name=f"images of {files[0].name}" + (f" (+{len(files) - 1})" if len(files) > 1 else ""),
        source=None, base_dir=files[0].parent, paths=[str(f) for f in files], bands=bands,
    )  # fmt: skip
