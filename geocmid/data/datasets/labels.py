"""Label sources: class-value lookup tables, class-mask rasters and vector labels."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio.transform
import torch
from torch import Tensor
from torchgeo.datasets import VectorDataset
from torchgeo.datasets.utils import GeoSlice

from geocmid.data.catalog.schema import ClassInfo
from geocmid.data.datasets.raster import CatalogRasterDataset
from geocmid.data.sources import SourceReader
from geocmid.errors import DataError

#: Index written into training masks where the label is unknown (losses ignore it).
IGNORE_INDEX = 255


class ClassLookup:
    """Maps the class values of a label source to contiguous indices ``0..K-1``.

    Values outside the class table raise a :class:`DataError` naming the source, because a
    silently dropped class is the most expensive mistake in a training run.
    """

    def __init__(self, classes: Sequence[ClassInfo], ignore_value: float | None, where: str):
        self.classes = list(classes)
        self.ignore_value = ignore_value
        self.where = where
        values = [c.value for c in self.classes]
        self.values = torch.tensor(values, dtype=torch.long)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.classes]

    def __call__(self, mask: Tensor) -> Tensor:
        """``mask`` of class values (any integer or float dtype) → indices, ignore → 255."""
        mask = mask.long()
        out = torch.full_like(mask, IGNORE_INDEX)
        known = torch.zeros_like(mask, dtype=torch.bool)
        for index, value in enumerate(self.values.tolist()):
            hit = mask == value
            out[hit] = index
            known |= hit
        if self.ignore_value is not None:
            known |= mask == int(self.ignore_value)
        if not bool(known.all()):
            unknown = sorted(set(mask[~known].unique().tolist()))[:10]
            raise DataError(
                self.where,
                f"label values {unknown} are not in the class table {self.values.tolist()}",
                "add them to 'classes', or set 'ignore_value' if they mean 'unlabelled'",
            )
        return out


class ClassMaskDataset(CatalogRasterDataset):
    """Labels given as one binary mask per class (non-zero = that class), pixel-aligned.

    Reads every class's mask for the chip and composes a value mask; pixels in no mask get
    ``ignore_value`` (e.g. Taizhou's change / no-change masks leave some pixels unlabelled).
    Every mask is read on the grid of the first one (the dataset's source grid).
    """

    def __init__(self, class_files: dict[int, Path], *, ignore_value: int, **kwargs: Any) -> None:
        self.class_files = {v: str(p) for v, p in class_files.items()}
        self.ignore_value = ignore_value
        first = next(iter(self.class_files.values()))
        super().__init__([first], bands=["mask"], is_image=False, **kwargs)
        self.class_sources = {
            v: self.source.with_layers([[(path, 1)]]) for v, path in self.class_files.items()
        }

    def _class_readers(self) -> dict[int, SourceReader]:
        readers = getattr(self, "_readers", None)
        if readers is None or getattr(self, "_readers_pid", None) != os.getpid():
            readers = {v: source.reader() for v, source in self.class_sources.items()}
            self._readers, self._readers_pid = readers, os.getpid()
        return readers

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.pop("_readers", None)
        state.pop("_readers_pid", None)
        return state

    def __getitem__(self, index: GeoSlice) -> dict[str, Any]:
        x, y, t = self._disambiguate_slice(index)
        window = self.chip_window((x, y, t))
        if window is not None:
            readers = self._class_readers()
            masks = [
                (value, torch.from_numpy(readers[value].read(*window)[0][0].astype(np.int64)))
                for value in self.class_files
            ]
        else:
            masks = [
                (value, self._merge_or_stack([path], (x, y, t), None, self.crs)[0])
                for value, path in self.class_files.items()
            ]
        out = torch.full_like(masks[0][1], self.ignore_value, dtype=torch.long)
        for value, mask in masks:
            out[mask != 0] = value
        return {
            "mask": out,
            "bounds": self._slice_to_tensor((x, y, t)),
            "transform": torch.tensor(
                rasterio.transform.from_origin(x.start, y.stop, x.step, y.step)
            ),
        }


class CatalogVectorDataset(VectorDataset):
    """Vector labels rasterised on the fly; ``label_name`` attribute values are burnt in."""

    def __init__(self, files: Sequence[Path], **kwargs: Any) -> None:
        self.filename_glob = "*"
        super().__init__(paths=[str(f) for f in files], **kwargs)
