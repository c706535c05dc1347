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
from pathlib import Path
from typing import Any

import geopandas as gpd
import lightning as L
import numpy as np
import pandas as pd
import shapely
import torch
from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset
from torchgeo.datasets.utils import GeoSlice, stack_samples
from torchgeo.samplers import GeoSampler

from geocmid.data.catalog import Catalog, ClassInfo, ImageryEntry, VectorLabelsEntry
from geocmid.data.catalog.schema import DEFAULT_COLORS
from geocmid.data.datamodules import entry_normalizer
from geocmid.data.datasets import imagery_dataset
from geocmid.data.sampling import rank_and_world_size, rank_seed, spatial_split_regions
from geocmid.data.stats import Normalize
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


class FeatureChipDataModule(L.LightningDataModule):
    """Scene-classification chips around labelled points / polygons, spatially split.

    Args:
        entry: imagery entry.
        labels: vector_labels entry (points or polygons with a class attribute).
        catalog: catalog folder.
        chip_size: chip edge in pixels.
        batch_size: chips per batch.
        split: area fractions of train, val and test.
        block_size: edge of the split blocks, in chips.
        chips_per_epoch: training chips per epoch (default: every training feature once).
        num_workers: data-loading processes.
        seed: seed of the split and the order.
        mean, std: normalisation statistics (raw units); default: the entry's.
        augment: random flips / rotations of training chips.
    """

    def __init__(
        self,
        entry: str,
        labels: str,
        catalog: str | Path | None = None,
        chip_size: int = 64,
        batch_size: int = 16,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        block_size: float = 4.0,
        chips_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self._log_hyperparams = False  # names shared with the task's (mean, std, labels)
        self.catalog = Catalog(catalog)
        self.dataset: FeatureChipDataset | None = None
        self.splits: list[np.ndarray] = []
        self.class_table: list[ClassInfo] = []
        self.stats: tuple[list[float], list[float]] | None = None

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.catalog.get_kind(self.hparams.entry, ImageryEntry).bands]

    @property
    def classes(self) -> list[ClassInfo]:
        self.setup()
        return self.class_table

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        self.setup()
        assert self.stats is not None
        return self.stats

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        image_entry = self.catalog.get_kind(hp.entry, ImageryEntry)
        label_entry = self.catalog.get_kind(hp.labels, VectorLabelsEntry)
        if hp.mean is not None and hp.std is not None:
            normalize = Normalize(hp.mean, hp.std)
        else:
            normalize = entry_normalizer(image_entry)
        self.stats = (
            [float(v) for v in normalize.mean.ravel()],
            [float(1.0 / v) for v in normalize.scale.ravel()],
        )
        image = imagery_dataset(image_entry, transforms=normalize)
        centres, labels, self.class_table = read_features(label_entry, image.crs)
        self.dataset = FeatureChipDataset(image, centres, labels)
        footprint = image.index.geometry.union_all()
        chip = hp.chip_size * image.res[0]
        regions = spatial_split_regions(footprint, hp.split, hp.block_size * chip, hp.seed)
        boxes = shapely.box(
            centres[:, 0] - chip / 2, centres[:, 1] - chip / 2,
            centres[:, 0] + chip / 2, centres[:, 1] + chip / 2,
        )  # fmt: skip
        # a chip belongs to a split only if it lies wholly inside that split's blocks
        self.splits = [np.flatnonzero(shapely.contains(r, boxes)) for r in regions]
        for name, ids in zip(("train", "val", "test"), self.splits, strict=False):
            if len(ids) == 0:
                raise ConfigError(
                    f"data split {name}",
                    f"no feature's {hp.chip_size}-pixel chip lies inside its blocks "
                    f"({len(centres)} features in {label_entry.where})",
                    "raise data.block_size, lower data.chip_size, or add labelled features",
                )
        counts = [
            np.bincount(labels[s], minlength=len(self.class_table)).tolist() for s in self.splits
        ]
        log.info("chips per class (train, val, test): %s", counts)

    def _loader(self, split: int, shuffle: bool) -> DataLoader:
        self.setup()
        hp = self.hparams
        assert self.dataset is not None
        ids = self.splits[split]
        if shuffle:
            _, world = rank_and_world_size()
            length = max(hp.batch_size, (hp.chips_per_epoch or len(ids)) // world)
            sampler = FeatureChipSampler(
                self.dataset, hp.chip_size, ids, True, length, rank_seed(hp.seed)
            )
        else:
            sampler = FeatureChipSampler(self.dataset, hp.chip_size, ids)
        dataset = self.dataset
        if shuffle and hp.augment:
            dataset = FeatureChipDataset(
                dataset.image, dataset.centres, dataset.labels, random_flips
            )
        return DataLoader(
            dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
            collate_fn=stack_samples, drop_last=shuffle and len(sampler) >= hp.batch_size,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(0, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2, shuffle=False)
