"""Imagery + labels with spatially disjoint train / val / test regions.

Sampling is rank-aware by construction (each rank seeds its own sampler), so trainers must run
with ``use_distributed_sampler=False``; Lightning would otherwise re-split each rank's chips.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset, IntersectionDataset

from geocmid.data.catalog import (
    BitemporalEntry,
    Catalog,
    ImageryEntry,
    RasterLabelsEntry,
    VectorLabelsEntry,
)
from geocmid.data.datasets import (
    ClassLookup,
    bitemporal_dataset,
    imagery_dataset,
    raster_labels_dataset,
    vector_labels_dataset,
)
from geocmid.data.sampling import (
    ChipSampler,
    FixedSampler,
    NodataRejectingDataset,
    SplitCapacity,
    rank_and_world_size,
    rank_seed,
    spatial_split_regions,
    split_capacity,
)
from geocmid.data.stats import entry_normalizer
from geocmid.datamodules.base import CatalogDataModule, loader
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class SupervisedGeoDataModule(CatalogDataModule):
    """Imagery + labels with spatially disjoint train / val / test regions.

    ``labels`` is a raster_labels or vector_labels entry (masks), or omitted when ``entry`` is a
    bitemporal entry carrying its own change labels. Masks are mapped to class indices
    ``0..K-1``, unlabelled pixels to ``IGNORE_INDEX`` (255).

    Args:
        entry: imagery or bitemporal entry.
        labels: label entry (not needed for a bitemporal entry with change labels).
        catalog: catalog folder.
        chip_size: chip edge in pixels.
        batch_size: chips per batch.
        split: area fractions of train, val and test.
        block_size: edge of the split blocks, in chips (blocks are dealt to splits).
        chips_per_epoch: training chips per epoch; val/test use fixed chips.
        num_workers: data-loading processes.
        max_nodata: training chips with a larger nodata fraction (0-1) are redrawn inside the
            train region (1 keeps every chip; nodata pixels are ignored by the loss anyway).
        seed: seed of the split and of the sampling.
    """

    def __init__(
        self,
        entry: str,
        labels: str | None = None,
        catalog: str | Path | None = None,
        chip_size: int = 128,
        batch_size: int = 8,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        block_size: float = 2.0,
        chips_per_epoch: int = 256,
        eval_chips: int = 64,
        num_workers: int = 0,
        max_nodata: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.catalog = Catalog(catalog)
        self.dataset: GeoDataset | None = None
        self.regions: list[Any] = []
        self.lookup: ClassLookup | None = None

    def _build(self) -> GeoDataset:
        hp = self.hparams
        entry = self.catalog.get(hp.entry)
        if isinstance(entry, BitemporalEntry):
            before = self.catalog.get_kind(entry.before, ImageryEntry)
            if entry.change_labels is None:
                raise ConfigError(entry.where, "no change_labels to train on", "add change_labels")
            label_entry = self.catalog.get(entry.change_labels)
            dataset = bitemporal_dataset(entry, self.catalog, transforms=self._transform(before))
            ignore = ignore_value_of(dataset.labels, label_entry)
            self.lookup = ClassLookup(label_entry.classes, ignore, label_entry.where)
            return dataset
        image_entry = self.catalog.get_kind(hp.entry, ImageryEntry)
        if hp.labels is None:
            raise ConfigError(image_entry.where, "needs a label entry", "pass labels=ENTRY")
        image = imagery_dataset(image_entry, transforms=entry_normalizer(image_entry))
        label_entry = self.catalog.get(hp.labels)
        if isinstance(label_entry, RasterLabelsEntry):
            labels = raster_labels_dataset(label_entry, self.catalog, crs=image.crs, res=image.res)
        elif isinstance(label_entry, VectorLabelsEntry):
            labels = vector_labels_dataset(label_entry, crs=image.crs, res=image.res)
        else:
            raise ConfigError(label_entry.where, f"a {label_entry.kind} entry cannot be labels")
        self.lookup = ClassLookup(
            label_entry.classes, ignore_value_of(labels, label_entry), label_entry.where
        )
        return IntersectionDataset(image, labels, transforms=self._map_mask)

    def _transform(self, image_entry: ImageryEntry) -> Any:
        normalize = entry_normalizer(image_entry)

        def transform(sample: dict[str, Any]) -> dict[str, Any]:
            return self._map_mask(normalize(sample))

        return transform

    def _map_mask(self, sample: dict[str, Any]) -> dict[str, Any]:
        if "mask" in sample and self.lookup is not None:
            mask = self.lookup(sample["mask"])
            if "valid" in sample:
                mask[~sample["valid"]] = 255
            sample["mask"] = mask
        return sample

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        if hp.block_size < 1.5:
            # Samplers keep a chip's centre half a diagonal (0.71 chip) inside its region, so a
            # block narrower than ~1.42 chips holds no chip at all and a split comes out empty.
            raise ConfigError(
                "setting 'block_size'",
                f"is {hp.block_size} chips; split blocks narrower than 1.5 chips hold no chip",
                "use block_size >= 1.5 (2-4 is typical)",
            )
        self.dataset = self._build()
        footprint = self.dataset.index.geometry.union_all()
        block = hp.block_size * hp.chip_size * self.dataset.res[0]
        self.regions = spatial_split_regions(footprint, hp.split, block, hp.seed)

    @property
    def num_classes(self) -> int:
        self.setup()
        assert self.lookup is not None
        return len(self.lookup.classes)

    def _sampler(self, split: int, length: int, seed: int) -> ChipSampler:
        return ChipSampler(
            self.dataset, size=self.hparams.chip_size, length=length, roi=self.regions[split],
            generator=seed,
        )  # fmt: skip

    def preflight(self, splits: Sequence[str] = ("train", "val")) -> list[SplitCapacity]:
        """Count the chips each split can yield and refuse, before training, a split that holds
        no chip, no usable chip (nodata / no labelled pixel) or, for training, fewer usable chips
        than one batch.

        Returns:
            one :class:`~geocmid.data.sampling.SplitCapacity` per split checked.

        Raises:
            ConfigError: a split too small for the chip size or the batch (the numbers, and
                which setting to change).
            DataError: a split whose probed chips are all nodata or unlabelled.
        """
        self.setup()
        assert self.dataset is not None
        hp = self.hparams
        names = ("train", "val", "test")
        origin = tuple(self.dataset.index.total_bounds[:2])
        out = []
        for name in splits:
            i = names.index(name)
            if i >= len(self.regions) or float(hp.split[i]) <= 0:
                continue
            capacity = split_capacity(
                self.dataset, self.regions[i], hp.chip_size, self.dataset.res, name=name,
                max_nodata=hp.max_nodata if name == "train" else 1.0, seed=hp.seed + i,
                origin=origin,  # type: ignore[arg-type]
            )  # fmt: skip
            check_capacity(capacity, hp.batch_size if name == "train" else 1, _SPLIT_FIX)
            out.append(capacity)
            log.debug("%s", capacity.describe())
        return out

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        _, world = rank_and_world_size()
        sampler = self._sampler(
            0, max(hp.batch_size, hp.chips_per_epoch // world), rank_seed(hp.seed)
        )
        if next(iter(self._sampler(0, 1, hp.seed)), None) is None:
            # TorchGeo's sampler would yield nothing: an epoch of zero steps that "succeeds"
            raise ConfigError(
                "data split train",
                f"no {hp.chip_size}-pixel chip fits in its blocks (block_size {hp.block_size} "
                f"chips, split {list(hp.split)}): the area is too small for these settings",
                "use a smaller data.chip_size, a larger share of data.split for training, or "
                "more imagery",
            )
        chips = self.dataset
        if hp.max_nodata < 1:
            # Redraws stay in the train region, so splits remain spatially disjoint.
            chips = NodataRejectingDataset(
                self.dataset, hp.chip_size, hp.max_nodata, hp.seed, region=self.regions[0]
            )
        return loader(chips, sampler, hp.batch_size, hp.num_workers, drop_last=True)

    def _eval_loader(self, split: int) -> DataLoader:
        self.setup()
        hp = self.hparams
        queries = list(self._sampler(split, hp.eval_chips, hp.seed + split))
        return loader(self.dataset, FixedSampler(queries), hp.batch_size, hp.num_workers)

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(2)


_SPLIT_FIX = (
    "use a smaller data.chip_size, a larger data.block_size or share of data.split for this "
    "split, a smaller data.batch_size, or more imagery"
)


def check_capacity(capacity: SplitCapacity, batch_size: int, fix: str) -> None:
    """Raise when ``capacity`` is empty, all nodata / unlabelled, or smaller than one batch.

    Raises:
        ConfigError: no chip position, or fewer usable chips than ``batch_size``.
        DataError: none of the probed chips is usable.
    """
    where = f"data split '{capacity.name}'"
    if capacity.positions == 0:
        raise ConfigError(
            where, f"no {capacity.chip_size}-px chip fits: {capacity.describe()}", fix
        )
    if capacity.probed and capacity.usable == 0:
        raise DataError(
            where, f"every probed chip is nodata or unlabelled: {capacity.describe()}",
            "check the entry's 'nodata' and the labels' coverage of this area; raise "
            "data.max_nodata, or change data.seed / data.split so valid data falls in it",
        )  # fmt: skip
    if capacity.chips < batch_size:
        raise ConfigError(
            where, f"fewer usable chips than one batch of {batch_size}: {capacity.describe()}",
            fix,
        )  # fmt: skip


def ignore_value_of(
    labels: GeoDataset, entry: RasterLabelsEntry | VectorLabelsEntry
) -> float | None:
    """The label value meaning "unlabelled" for a label dataset.

    Raster labels: ``ignore_value`` or the files' nodata. Vector labels: pixels outside every
    feature burn as 0, which is unlabelled unless 0 is a declared class.
    """
    if isinstance(entry, VectorLabelsEntry):
        return None if any(c.value == 0 for c in entry.classes) else 0
    if entry.ignore_value is not None:
        return entry.ignore_value
    ignore = getattr(labels, "ignore_value", None)  # class-mask labels
    return ignore if ignore is not None else getattr(labels, "nodata_value", None)
