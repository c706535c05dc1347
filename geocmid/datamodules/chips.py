"""Scene-classification chips around labelled points / polygons, spatially split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import shapely
from torch.utils.data import DataLoader
from torchgeo.datasets.utils import stack_samples

from geocmid.data.catalog import Catalog, ClassInfo, ImageryEntry, VectorLabelsEntry
from geocmid.data.chips import FeatureChipDataset, FeatureChipSampler, random_flips, read_features
from geocmid.data.datasets import imagery_dataset
from geocmid.data.sampling import rank_and_world_size, rank_seed, spatial_split_regions
from geocmid.data.stats import Normalize, entry_normalizer
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.errors import ConfigError

log = logging.getLogger(__name__)


class FeatureChipDataModule(CatalogDataModule):
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
        stats_from: export / checkpoint whose model card's statistics to use (see
            :class:`~geocmid.datamodules.SegmentationDataModule`).
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
        stats_from: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
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
        card = None
        if hp.mean is None or hp.std is None:
            card = stats_from_card(hp.stats_from, self.bands, image_entry.where)
        if hp.mean is not None and hp.std is not None:
            normalize = Normalize(hp.mean, hp.std)
        elif card is not None:
            normalize = Normalize(*card)
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
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(0, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2, shuffle=False)
