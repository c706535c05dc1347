"""Unlabelled chips from an imagery entry for CMID pretraining."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torchgeo.datasets import GeoDataset

from geocmid.data.catalog import (
    Catalog,
    ImageryEntry,
)
from geocmid.data.datasets import (
    imagery_dataset,
)
from geocmid.data.sampling import (
    ChipSampler,
    NodataRejectingDataset,
    SplitCapacity,
    rank_and_world_size,
    rank_seed,
    split_capacity,
)
from geocmid.data.stats import Normalize, entry_normalizer
from geocmid.datamodules.base import CatalogDataModule, loader

log = logging.getLogger(__name__)


class PretrainDataModule(CatalogDataModule):
    """Unlabelled chips from one imagery entry for self-supervised pretraining.

    Loader batches hold raw pixel values; the Trainer normalises them on the device through
    :meth:`on_after_batch_transfer` (call it yourself when iterating the loader by hand).
    :meth:`task_args` tells :class:`~geocmid.cmid.task.CMIDTask` what the data decide (bands,
    statistics, chip size ...). The defaults are the paper's (224 px chips, 64 per GPU).

    Args:
        entry: imagery catalog entry to pretrain on (name, or path of its YAML file).
        catalog: catalog folder (default: $GEOCMID_CATALOG, else data_catalog).
        chip_size: square chip edge in px (a multiple of the mask block and backbone stride).
        batch_size: chips per batch on each device.
        chips_per_epoch: chips per epoch over all devices together.
        num_workers: data-loading processes per device.
        max_nodata: chips with a larger nodata fraction (0-1) are redrawn.
        seed: chip sampling seed (each rank derives its own from it).
    """

    def __init__(
        self,
        entry: str,
        catalog: str | Path | None = None,
        chip_size: int = 224,
        batch_size: int = 64,
        chips_per_epoch: int = 16384,
        num_workers: int = 4,
        max_nodata: float = 0.5,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.catalog = Catalog(catalog)
        self.entry = self.catalog.get_kind(entry, ImageryEntry)
        self.dataset: GeoDataset | None = None
        self.normalize: Normalize | None = None

    @property
    def bands(self) -> list[str]:
        return list(self.entry.bands)

    def task_args(self) -> dict[str, Any]:
        """What the data decide for :class:`~geocmid.cmid.task.CMIDTask` (its ``DATA_ARGS``).

        Band names, RGB bands, normalisation statistics (raw units; computed now if the entry
        has none), ground sampling distance (CRS units per pixel), entry name, chip size and
        per-device batch. Opens the rasters (:meth:`setup`).
        """
        self.setup()
        entry, hp = self.entry, self.hparams
        assert self.dataset is not None and entry.stats
        gsd = float(entry.res) if entry.res else float(self.dataset.res[0])
        return {
            "bands": list(entry.bands),
            "rgb_bands": list(entry.rgb) or None,
            "mean": [float(v) for v in entry.stats["mean"]],
            "std": [float(v) for v in entry.stats["std"]],
            "gsd": gsd,
            "data": entry.name,
            "chip_size": int(hp.chip_size),
            "batch_size": int(hp.batch_size),
        }

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            self.normalize = entry_normalizer(self.entry)
            # Chips travel from the workers in their file type and become float on the device.
            self.dataset = imagery_dataset(self.entry, native_dtype=True)

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise each batch on its device (per-band statistics of the entry; nodata → 0)."""
        self.setup()
        assert self.normalize is not None
        return self.normalize.batch(batch)

    def preflight(self) -> SplitCapacity:
        """Count the chips the entry can yield (tiles or scenes smaller than a chip yield none;
        chips over ``max_nodata`` nodata are not usable) and refuse, before training, an entry
        with fewer usable chips than one batch.

        Raises:
            ConfigError: no chip fits, or fewer usable chips than ``batch_size`` (the numbers).
            DataError: every probed chip is nodata.
        """
        from geocmid.datamodules.geo import check_capacity

        self.setup()
        assert self.dataset is not None
        hp = self.hparams
        capacity = split_capacity(
            self.dataset, self.dataset.index.geometry.union_all(), hp.chip_size,
            self.dataset.res, name=f"pretraining ({self.entry.name})", max_nodata=hp.max_nodata,
            seed=hp.seed, origin=tuple(self.dataset.index.total_bounds[:2]),  # type: ignore[arg-type]
        )  # fmt: skip
        check_capacity(
            capacity, hp.batch_size,
            "use a smaller data.chip_size (a multiple of the mask block) or data.batch_size, "
            "or larger scenes / tiles",
        )  # fmt: skip
        log.debug("%s", capacity.describe())
        return capacity

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        _, world = rank_and_world_size()
        sampler = ChipSampler(
            self.dataset,
            size=hp.chip_size,
            length=max(hp.batch_size, hp.chips_per_epoch // world),
            generator=rank_seed(hp.seed),
        )
        chips = NodataRejectingDataset(self.dataset, hp.chip_size, hp.max_nodata, hp.seed)
        return loader(chips, sampler, hp.batch_size, hp.num_workers, drop_last=True)
