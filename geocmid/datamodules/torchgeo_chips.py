"""Fine-tuning on ``torchgeo_dataset`` entries through TorchGeo's own dataset classes.

UC Merced, NWPU-RESISC45, Million-AID (classification), Potsdam2D, Vaihingen2D, LoveDA
(segmentation), LEVIR-CD, OSCD (change) …: :class:`TorchGeoChipDataModule` instantiates the
entry's class once per split the class defines (its ``split`` argument); a split it lacks
(LEVIR-CD has no ``val``) is drawn from ``train`` at random (seeded). Nothing is downloaded
(``geocmid catalog download NAME`` does that, on request).

Samples become what geocmid's tasks take: classification images are normalised and resized to
``chip_size``; segmentation and change tiles are cut into ``chip_size`` windows as
:mod:`geocmid.datamodules.chipsets` does for chip folders (random training windows, a grid of
windows covering every evaluation tile).
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Subset

from geocmid.data.catalog import Catalog, ClassInfo, TorchGeoDatasetEntry
from geocmid.data.classes import default_color
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.datamodules.chipsets import PairedChips, grid_windows
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TASKS = ("classification", "segmentation", "change")


def dataset_splits(cls: type) -> tuple[str, ...]:
    """The values a TorchGeo dataset class's ``split`` argument takes (from its annotation)."""
    param = inspect.signature(cls.__init__).parameters.get("split")
    if param is None:
        return ()
    found = re.findall(r"'(\w+)'", str(param.annotation))
    if not found and isinstance(getattr(cls, "splits", None), Sequence | dict):
        found = list(getattr(cls, "splits"))  # noqa: B009
    return tuple(found)


def _numpy(value: Any) -> np.ndarray:
    return value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


class TorchGeoTiles(PairedChips):
    """:class:`PairedChips` over a TorchGeo segmentation / change dataset: tile ``i`` is
    ``dataset[i]`` (``image`` ``[C, H, W]`` or ``[2, C, H, W]``; ``mask`` class indices)."""

    def __init__(self, dataset: Dataset, *args: Any, **kwargs: Any) -> None:
        super().__init__(list(range(len(dataset))), lambda p: p, *args, **kwargs)  # type: ignore[arg-type]
        self.dataset = dataset

    def _tile(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1], self._cache[2]
        sample = self.dataset[i]  # type: ignore[index]
        image = _numpy(sample["image"]).astype(np.float32)
        mask = _numpy(sample["mask"])
        mask = mask.reshape(mask.shape[-2:]).astype(np.uint8)  # LEVIR-CD: [1, H, W]
        image = (image - self.mean) * self.scale
        self._cache = (i, image, mask)
        return image, mask


class _Classify(Dataset):
    """A TorchGeo classification dataset, normalised and resized to ``size``."""

    def __init__(
        self, dataset: Dataset, size: int, mean: Sequence[float], std: Sequence[float],
        augment: bool,
    ) -> None:  # fmt: skip
        self.dataset, self.size, self.augment = dataset, size, augment
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        sample = self.dataset[i]
        image = (torch.as_tensor(sample["image"]).float() - self.mean) / self.std
        if image.shape[-2:] != (self.size, self.size):
            image = F.interpolate(image[None], (self.size, self.size), mode="bilinear")[0]
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
            if torch.rand(()) < 0.5:
                image = image.flip(-2)
        return {"image": image.contiguous(), "label": torch.as_tensor(sample["label"]).long()}


class TorchGeoChipDataModule(CatalogDataModule):
    """A ``torchgeo_dataset`` entry for :class:`~geocmid.tasks.classification.ClassificationTask`,
    :class:`~geocmid.tasks.segmentation.SegmentationTask` or
    :class:`~geocmid.tasks.change.ChangeTask` (see the module docstring).

    Args:
        entry: ``torchgeo_dataset`` entry; its ``task`` says what it is for.
        catalog: catalog folder.
        chip_size: classification: image edge after resizing; segmentation / change: window.
        batch_size, num_workers, seed: as for the other datamodules.
        split: train / val / test shares for splits the dataset class lacks.
        chips_per_epoch: random training windows per epoch (segmentation / change; default:
            one per training tile).
        mean, std: per-band statistics in the dataset's units; default: estimated on up to
            32 training samples.
        stats_from: a geocmid export / checkpoint whose card statistics to use.
        augment: random flips (and 90° rotations for windows) in training.
    """

    def __init__(
        self,
        entry: str,
        catalog: str | Path | None = None,
        chip_size: int = 256,
        batch_size: int = 8,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        chips_per_epoch: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stats_from: str | None = None,
        augment: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self._log_hyperparams = False
        self.catalog = Catalog(catalog)
        self.datasets: dict[str, Dataset] = {}
        self.stats: tuple[list[float], list[float]] | None = None

    def tg_entry(self) -> TorchGeoDatasetEntry:
        return self.catalog.get_kind(self.hparams.entry, TorchGeoDatasetEntry)

    @property
    def task(self) -> str:
        entry = self.tg_entry()
        if entry.task not in TASKS:
            raise entry.error(
                "task",
                f"is {entry.task!r}; this datamodule trains {', '.join(TASKS)}",
                "set its task (detection: geocmid.datamodules.DetectionFolderDataModule)",
            )
        return str(entry.task)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        from geocmid.data.catalog.validate import torchgeo_dataset_class
        from geocmid.data.datasets.factory import torchgeo_dataset

        hp, entry = self.hparams, self.tg_entry()
        self.task  # noqa: B018  (checks the entry's task first)
        cls = torchgeo_dataset_class(entry)
        available = dataset_splits(cls)
        args = {k: v for k, v in entry.args.items() if k != "split"}
        built = {
            s: torchgeo_dataset(entry, **args, split=s) if available else None
            for s in ("train", "val", "test")
            if s in available or (s == "train" and not available)
        }
        if built.get("train") is None:
            built["train"] = torchgeo_dataset(entry)
        train = built["train"]
        if len(train) == 0:
            raise DataError(entry.where, "the train split holds no sample", "check 'root'")
        rng = np.random.default_rng(hp.seed)
        order = rng.permutation(len(train)).tolist()
        start, parts = 0, {}
        for i, name in enumerate(("val", "test"), start=1):
            if built.get(name) is None:
                n = max(1, round(hp.split[i] * len(train)))
                parts[name] = Subset(train, order[start : start + n])
                start += n
        if parts:
            built.update(parts)
            built["train"] = Subset(train, order[start:])
        self.class_table = self._classes(cls, train)
        self.band_list = self._bands(cls, train)
        stats = None
        if hp.mean is not None and hp.std is not None:
            stats = ([float(v) for v in hp.mean], [float(v) for v in hp.std])
        else:
            stats = stats_from_card(hp.stats_from, self.band_list, entry.where)
        if stats is None:
            ids = rng.permutation(len(built["train"]))[:32]  # type: ignore[arg-type]
            images = [_numpy(built["train"][int(i)]["image"]).astype(np.float64) for i in ids]
            pixels = np.concatenate(
                [np.moveaxis(im.reshape(-1, *im.shape[-3:]), 1, 0).reshape(im.shape[-3], -1)
                 for im in images], axis=1,
            )  # fmt: skip
            stats = (pixels.mean(1).tolist(), pixels.std(1).clip(min=1e-6).tolist())
        self.stats = stats
        self.datasets = {k: v for k, v in built.items() if v is not None}

    def _classes(self, cls: type, dataset: Any) -> list[ClassInfo]:
        if self.task == "change":
            return [ClassInfo(0, "no change", "#000000"), ClassInfo(1, "change", "#ff0000")]
        names = getattr(dataset, "classes", None) or getattr(cls, "classes", None)
        if not names:
            raise ConfigError(
                self.tg_entry().where, f"TorchGeo's {cls.__name__} names no classes",
                "use a chip_segmentation / image_folder entry with a class table",
            )  # fmt: skip
        return [ClassInfo(i, str(n), default_color(i)) for i, n in enumerate(names)]

    def _bands(self, cls: type, dataset: Any) -> list[str]:
        image = _numpy(dataset[0]["image"])
        count = image.shape[-3]
        for attr in ("bands", "rgb_bands", "all_bands"):
            names = getattr(dataset, attr, None)
            if isinstance(names, Sequence) and len(names) == count:
                return [str(n) for n in names]
        return ["red", "green", "blue"] if count == 3 else [f"b{i + 1}" for i in range(count)]

    @property
    def bands(self) -> list[str]:
        self.setup()
        return self.band_list

    @property
    def classes(self) -> list[ClassInfo]:
        self.setup()
        return self.class_table

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        self.setup()
        assert self.stats is not None
        return self.stats

    def _loader(self, split: str) -> DataLoader:
        self.setup()
        assert self.stats is not None
        hp, base = self.hparams, self.datasets.get(split)
        if base is None or len(base) == 0:  # type: ignore[arg-type]
            raise ConfigError(
                f"data split {split} of {self.tg_entry().where}", "holds no sample",
                "raise data.split's share for it",
            )  # fmt: skip
        train = split == "train"
        dataset: Dataset
        if self.task == "classification":
            dataset = _Classify(base, hp.chip_size, *self.stats, augment=train and hp.augment)
        elif train:
            length = hp.chips_per_epoch or len(base)  # type: ignore[arg-type]
            dataset = TorchGeoTiles(
                base, hp.chip_size, *self.stats, length=length, augment=hp.augment
            )
        else:
            windows = []
            for t in range(len(base)):  # type: ignore[arg-type]
                h, w = _numpy(base[t]["mask"]).shape[-2:]
                windows += [(t, y, x) for y, x in grid_windows(h, w, hp.chip_size)]
            dataset = TorchGeoTiles(base, hp.chip_size, *self.stats, windows=windows)
        return DataLoader(
            dataset, batch_size=hp.batch_size, shuffle=train and self.task == "classification",
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            num_workers=hp.num_workers, drop_last=train and len(dataset) > hp.batch_size,
            persistent_workers=hp.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
