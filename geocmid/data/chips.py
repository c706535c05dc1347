"""Scene-classification chips cut from imagery around labelled vector features.

Each labelled feature (a point, or a polygon's representative point) becomes one chip centred on
it; the chip's label is the feature's class. :class:`FeatureChipSampler` yields the chips'
georeferenced queries, :class:`FeatureChipDataset` reads the image chip for a query and looks its
label up (the feature at the query's centre). :class:`FeatureChipDataModule` splits the features
spatially (blocks dealt to train / val / test; a chip must lie inside its split's blocks), so no
pixel of a validation chip is seen in training.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
import torch
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice
from torchgeo.samplers import GeoSampler

from geocmid.data.catalog import ClassInfo, VectorLabelsEntry
from geocmid.data.catalog.schema import DEFAULT_COLORS
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)
Sample = dict[str, Any]


def read_features(
    entry: VectorLabelsEntry, crs: Any
) -> tuple[np.ndarray, np.ndarray, list[ClassInfo]]:
    """Feature centres ``[N, 2]`` (in ``crs``), class indices ``[N]`` and the class table.

    Raises:
        DataError: a file holds no feature, or a class value is missing from the class table.
        ConfigError: the entry has no class attribute (one class cannot be classified).
    """
    if not entry.class_attribute:
        raise ConfigError(
            entry.where,
            "has no 'class_attribute'",
            "scene classification needs a class per feature",
        )
    frames = []
    for path in entry.files():
        frame = gpd.read_file(path, layer=entry.layer)
        if len(frame) == 0:
            raise DataError(
                str(path), "holds no features (empty label file)", "add labelled features"
            )
        frames.append(frame.to_crs(crs))
    features = gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=frames[0].crs)
    features = features[features.geometry.notna() & ~features.geometry.is_empty]
    values = features[entry.class_attribute].astype(int).to_numpy()
    classes = list(entry.classes) or [
        ClassInfo(int(v), f"class_{v}", DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
        for i, v in enumerate(sorted(set(values.tolist())))
    ]
    index_of = {c.value: i for i, c in enumerate(classes)}
    unknown = sorted(set(values.tolist()) - set(index_of))
    if unknown:
        raise DataError(
            entry.where,
            f"class values {unknown[:10]} in '{entry.class_attribute}' are not in the class table "
            f"{list(index_of)}",
            "add them to 'classes' in the catalog entry",
        )
    points = shapely.point_on_surface(features.geometry.to_numpy())  # inside, even for C-shapes
    centres = np.stack([shapely.get_x(points), shapely.get_y(points)], axis=1)
    return centres, np.array([index_of[v] for v in values], dtype=np.int64), classes


class FeatureChipDataset(GeoDataset):
    """Image chips with the class of the feature at their centre.

    Args:
        image: the imagery dataset (normalising transform included).
        centres: feature centres ``[N, 2]`` in the image CRS.
        labels: class index per feature ``[N]``.
        transforms: applied to each ``{"image", "label"}`` sample.

    Samples: ``image`` ``[C, H, W]`` float32, ``label`` long scalar, ``bounds``.
    """

    def __init__(
        self,
        image: GeoDataset,
        centres: np.ndarray,
        labels: np.ndarray,
        transforms: Any = None,
    ) -> None:
        self.image = image
        self.centres = centres
        self.labels = labels
        self.transforms = transforms
        self.index = image.index
        self._res = image.res

    def label_at(self, x: float, y: float) -> int:
        """Class index of the feature nearest to ``(x, y)``."""
        d = np.hypot(self.centres[:, 0] - x, self.centres[:, 1] - y)
        return int(self.labels[int(d.argmin())])

    def __getitem__(self, query: GeoSlice) -> Sample:
        x, y, _ = self._disambiguate_slice(query)
        chip = self.image[x, y]
        sample: Sample = {
            "image": chip["image"],
            "label": torch.tensor(self.label_at((x.start + x.stop) / 2, (y.start + y.stop) / 2)),
            "bounds": chip.get("bounds"),
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return {k: v for k, v in sample.items() if v is not None}


class FeatureChipSampler(GeoSampler):
    """Queries of ``size``-pixel chips centred on features ``ids`` of a :class:`FeatureChipDataset`.

    Args:
        dataset: the chip dataset.
        size: chip edge in pixels.
        ids: feature indices to visit (one split's).
        shuffle: visit in a new random order every epoch.
        length: chips per epoch (features repeat or are subsampled); default: ``len(ids)``.
        generator: seed of the order.
    """

    def __init__(
        self,
        dataset: FeatureChipDataset,
        size: int,
        ids: Sequence[int],
        shuffle: bool = False,
        length: int | None = None,
        generator: int = 0,
    ) -> None:
        # GeoSampler's own __init__ computes ROI hits we do not use: chips are feature-centred
        self.index, self.res = dataset.index, dataset.res
        self.dataset = dataset
        self.size = size
        self.ids = np.asarray(ids, dtype=np.int64)
        self.shuffle = shuffle
        self.length = len(self.ids) if length is None else length
        self.rng = np.random.default_rng(generator)

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        order = self.ids
        if self.shuffle:
            reps = -(-self.length // max(len(self.ids), 1))
            order = np.concatenate([self.rng.permutation(self.ids) for _ in range(reps)])
        rx, ry = self.dataset.res
        half_x, half_y = self.size * rx / 2, self.size * ry / 2
        for i in order[: self.length]:
            cx, cy = self.dataset.centres[i]
            yield slice(cx - half_x, cx + half_x, rx), slice(cy - half_y, cy + half_y, ry)

    def __len__(self) -> int:
        return min(self.length, len(self.ids)) if not self.shuffle else self.length


def random_flips(sample: Sample) -> Sample:
    """Random horizontal / vertical flips and 90° rotation (scene labels are orientation-free)."""
    image = sample["image"]
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
    if torch.rand(()) < 0.5:
        image = image.flip(-2)
    if torch.rand(()) < 0.5:
        image = image.transpose(-1, -2)
    sample["image"] = image.contiguous()
    return sample
