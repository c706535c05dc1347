"""Scene classification from a folder-per-class tree (an ``image_folder`` catalog entry)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

from geocmid.data.catalog import (
    Catalog,
    ClassInfo,
    ImageFolderEntry,
)
from geocmid.data.catalog.schema import DEFAULT_COLORS
from geocmid.data.chips import random_flips
from geocmid.data.chipsets import band_names, image_folder_records, split_indices
from geocmid.data.datasets import image_folder_dataset
from geocmid.data.stats import Normalize
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.errors import DataError

log = logging.getLogger(__name__)


class ImageFolderDataModule(CatalogDataModule):
    """Scene classification from a folder-per-class tree (an ``image_folder`` catalog entry).

    The entry's split folders / files are used as the benchmark defines them (NWPU-RESISC45's
    ``train``/``test``); splits it lacks are drawn from ``train``, stratified by class and
    seeded (``split`` gives the shares); statistics default to per-band mean / std over
    the training images (or pass ``mean``/``std``, e.g. the encoder's card). Images of another
    size than ``chip_size`` are resized (bilinear).

    Args:
        entry: image_folder entry; catalog: catalog folder.
        chip_size: image edge fed to the model, in pixels.
        batch_size, split, num_workers, seed: as for the other datamodules.
        mean, std: normalisation statistics (raw units).
        stats_from: export / checkpoint whose model card's statistics to use (see
            :class:`~geocmid.datamodules.SegmentationDataModule`).
        augment: random flips / 90° rotations of training images.
    """

    def __init__(
        self,
        entry: str,
        catalog: str | Path | None = None,
        chip_size: int = 64,
        batch_size: int = 16,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        augment: bool = True,
        stats_from: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self._log_hyperparams = False
        self.catalog = Catalog(catalog)
        self.dataset: Any = None
        self.splits: list[list[int]] = []
        self.stats: tuple[list[float], list[float]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        entry = self.catalog.get_kind(hp.entry, ImageFolderEntry)
        dataset = image_folder_dataset(entry)
        if len(dataset.classes) < 2:
            raise DataError(
                entry.where,
                f"has {len(dataset.classes)} class folder(s) ({', '.join(dataset.classes)}); "
                "scene classification needs at least 2",
                "add one sub-folder of images per class",
            )
        # split folders / files of the entry are kept; missing val / test are drawn from
        # train (stratified by class, seeded) with the `split` shares
        recs = image_folder_records(entry)
        index = split_indices(recs, hp.split, hp.seed)
        self.splits = [index["train"], index["val"], index["test"]]
        card = None
        if (hp.mean is None or hp.std is None) and hp.stats_from:
            bands = band_names(entry, len(dataset[0]["image"]))
            card = stats_from_card(hp.stats_from, bands, entry.where)
        if hp.mean is not None and hp.std is not None:
            self.stats = ([float(v) for v in hp.mean], [float(v) for v in hp.std])
        elif card is not None:
            self.stats = card
        else:
            # Running sums, one image at a time: a UC Merced-sized folder never sits in memory.
            total = square = None
            count = 0
            for i in self.splits[0]:
                pixels = dataset[i]["image"].flatten(1).double()
                total = pixels.sum(1) if total is None else total + pixels.sum(1)
                square = (pixels**2).sum(1) if square is None else square + (pixels**2).sum(1)
                count += pixels.shape[1]
            assert total is not None and square is not None
            mean = total / count
            var = (square - count * mean**2) / max(count - 1, 1)
            self.stats = (mean.tolist(), var.clamp(min=0).sqrt().clamp(min=1e-6).tolist())
        self.band_count = len(self.stats[0])
        self.band_list = band_names(entry, self.band_count)
        self.dataset = dataset
        self._normalize = Normalize(*self.stats)

    @property
    def bands(self) -> list[str]:
        self.setup()
        return self.band_list

    @property
    def classes(self) -> list[ClassInfo]:
        self.setup()
        return [
            ClassInfo(i, name, DEFAULT_COLORS[i % len(DEFAULT_COLORS)])
            for i, name in enumerate(self.dataset.classes)
        ]

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        self.setup()
        assert self.stats is not None
        return self.stats

    def _transform(self, train: bool) -> Any:
        size = self.hparams.chip_size
        augment = train and self.hparams.augment

        def transform(sample: dict[str, Any]) -> dict[str, Any]:
            sample = self._normalize(sample)
            image = sample["image"]
            if image.shape[-2:] != (size, size):
                image = F.interpolate(image[None], (size, size), mode="bilinear")[0]
            sample["image"] = image
            return random_flips(sample) if augment else sample

        return transform

    def _loader(self, split: int) -> DataLoader:
        self.setup()
        hp = self.hparams
        train = split == 0
        dataset = _Transformed(Subset(self.dataset, self.splits[split]), self._transform(train))
        return DataLoader(
            dataset, batch_size=hp.batch_size, shuffle=train, num_workers=hp.num_workers,
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            drop_last=train and len(dataset) > hp.batch_size,
            generator=torch.Generator().manual_seed(hp.seed) if train else None,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader(0)

    def val_dataloader(self) -> DataLoader:
        return self._loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._loader(2)


class _Transformed(torch.utils.data.Dataset):
    def __init__(self, dataset: Any, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.transform(dict(self.dataset[i]))
