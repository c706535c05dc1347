"""Two dated scenes read on one grid, in the ``[T=2, C, H, W]`` layout of TorchGeo's change task."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd
import rasterio.transform
import torch
from geopandas import GeoDataFrame
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice

from geocmid.data.datasets.raster import CatalogRasterDataset
from geocmid.errors import DataError

Sample = dict[str, Any]


class BitemporalDataset(GeoDataset):
    """Before and after imagery on the ``before`` grid, plus optional change labels.

    ``after`` must already be warped to ``before``'s CRS and resolution (the factory does
    this). The index is the intersection of both footprints, so every chip has both dates;
    ``valid`` is False wherever either date is nodata.

    Samples: ``image`` ``[2, C, H, W]`` float32, ``valid`` ``[H, W]`` bool, optional ``mask``
    ``[H, W]`` long, plus ``bounds`` and ``transform``.
    """

    def __init__(
        self,
        before: CatalogRasterDataset,
        after: CatalogRasterDataset,
        labels: GeoDataset | None = None,
        transforms: Callable[[Sample], Sample] | None = None,
        name: str = "bitemporal pair",
    ) -> None:
        self.before, self.after, self.labels = before, after, labels
        self.transforms = transforms
        footprint = before.index.geometry.union_all() & after.index.geometry.union_all()
        if footprint.is_empty or footprint.area == 0:
            raise DataError(
                name,
                "the two dates do not overlap",
                "pair two scenes of the same area (check both entries with `catalog show`)",
            )
        interval = pd.IntervalIndex.from_tuples(
            [(before.index.index.left.min(), after.index.index.right.max())],
            closed="both",
            name="datetime",
        )
        self.index = GeoDataFrame(
            {"filepath": ["<bitemporal>"]}, index=interval, geometry=[footprint], crs=before.crs
        )
        self._res = before.res

    def _read(self, dataset: GeoDataset, x: slice, y: slice, key: str) -> torch.Tensor | None:
        try:
            return dataset[x, y][key]
        except IndexError:  # the chip's corner lies outside this date's footprint
            return None

    def __getitem__(self, index: GeoSlice) -> Sample:
        x, y, t = self._disambiguate_slice(index)
        before = self.before[x, y]
        after = self._read(self.after, x, y, "image")
        if after is None:
            after = torch.zeros_like(before["image"])
            valid_after = torch.zeros_like(before["valid"])
        else:
            valid_after = self.after[x, y]["valid"]
        sample: Sample = {
            "image": torch.stack([before["image"], after]),
            "valid": before["valid"] & valid_after,
            "bounds": self._slice_to_tensor((x, y, t)),
            "transform": torch.tensor(
                rasterio.transform.from_origin(x.start, y.stop, x.step, y.step)
            ),
        }
        if self.labels is not None:
            mask = self._read(self.labels, x, y, "mask")
            if mask is not None:
                sample["mask"] = mask
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
