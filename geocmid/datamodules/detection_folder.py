"""Detection chip datasets (plain images + object labels) → chips for the detection task.

:class:`DetectionFolderDataModule` reads a ``detection_folder`` catalog entry (DOTA labelTxt,
YOLO-OBB, NWPU VHR-10, polygon CSV, CSV, VOC), or a ``torchgeo_dataset`` entry of TorchGeo's
``DOTA`` through TorchGeo's own dataset class, and feeds
:class:`~geocmid.tasks.detection.DetectionTask`:

* images are read on their pixel grid (no CRS, no geographic footprint);
* under DDP every rank draws its own training windows (``chips_per_epoch`` shared out) and
  scores a disjoint share of the evaluation windows (torchmetrics gathers them);
* training draws ``chips_per_epoch`` random ``chip_size`` windows from the train images
  (flips as augmentation); validation and test tile their images in a fixed grid of windows,
  so every object of an evaluation image is scored once (objects cut by a window edge follow
  ``min_visible``);
* splits are the dataset's own (``splits`` of the entry, TorchGeo's train / val); without them
  the images are split at random (seeded, by image, never by chip);
* images without objects are kept: they are negatives the detector must stay silent on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader

from geocmid.data.catalog import Catalog, ClassInfo
from geocmid.data.catalog.schema import DetectionFolderEntry, TorchGeoDatasetEntry
from geocmid.data.detection import collate_boxes
from geocmid.data.detection_chips import (
    DetectionChipDataset,
    FolderSource,
    RandomWindowSampler,
    TorchGeoDOTASource,
    grid_windows,
)
from geocmid.data.sampling import rank_and_world_size, rank_seed
from geocmid.data.stats import Normalize
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)
SPLITS = ("train", "val", "test")
PALETTE = ["#e31a1c", "#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928"]


def torchgeo_dota_sources(entry: TorchGeoDatasetEntry) -> tuple[dict[str, Any], list[str]]:
    """TorchGeo ``DOTA`` train / val datasets of ``entry`` (never downloading) → sources.

    Raises:
        ConfigError: the entry is not TorchGeo's DOTA.
        DataError: the files are not laid out as TorchGeo expects (its message, and the fix).
    """
    if entry.dataset != "DOTA":
        raise ConfigError(
            f"{entry.where}, key 'dataset'", f"{entry.dataset} is not a detection dataset here",
            "detection reads TorchGeo's DOTA; other datasets: a detection_folder entry",
        )  # fmt: skip
    from torchgeo.datasets import DOTA
    from torchgeo.datasets.errors import DatasetNotFoundError

    args = {k: v for k, v in entry.args.items() if k not in ("split", "bbox_orientation")}
    sources: dict[str, Any] = {}
    for split in ("train", "val"):
        try:
            dataset = DOTA(root=str(entry.root_path), split=split, bbox_orientation="oriented",
                           download=False, checksum=False, **args)  # fmt: skip
        except DatasetNotFoundError:
            raise DataError(
                entry.where, f"TorchGeo's DOTA {split} files are not in {entry.root_path} "
                f"({split}/images, {split}/annotations/version<v>, samples.csv)",
                f"download them with `geocmid catalog download {entry.name}`",
            ) from None  # fmt: skip
        if len(dataset):
            sources[split] = TorchGeoDOTASource(dataset, split)
    if "train" not in sources:
        raise DataError(entry.where, "TorchGeo's DOTA lists no train image for this version",
                        "check samples.csv and args.version")  # fmt: skip
    return sources, next(iter(sources.values())).class_names


class DetectionFolderDataModule(CatalogDataModule):
    """Detection chip datasets → chips with boxes (and oriented corners) for DetectionTask.

    Args:
        entry: a ``detection_folder`` entry, or a ``torchgeo_dataset`` entry of TorchGeo's DOTA.
        catalog: catalog folder (None: ``$GEOCMID_CATALOG`` / ``data_catalog``).
        chip_size: chip edge in pixels (of the image after ``scale``).
        scale: resampling factor for images and boxes (0.5: half the pixels; large chips on a
            CPU, or matching the GSD the encoder was pretrained at).
        batch_size: chips per batch.
        split: image fractions of train, val, test when the dataset defines no split.
        chips_per_epoch: random training chips per epoch.
        eval_chips: most val / test chips (grid windows, evenly thinned; None: all).
        min_visible: smallest share of an object's box that a chip must hold to keep it.
        min_size: smallest box width and height in a chip, pixels.
        augment: random flips of training chips.
        num_workers: data-loading processes.
        seed: split seed.
        mean, std: per-band statistics (raw units); default: the train images' own.
        stats_from: export / checkpoint whose model card's statistics to use.
        cache_images: decoded images kept per loader process.
    """

    def __init__(
        self,
        entry: str,
        catalog: str | Path | None = None,
        chip_size: int = 256,
        scale: float = 1.0,
        batch_size: int = 4,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        chips_per_epoch: int = 64,
        eval_chips: int | None = 64,
        min_visible: float = 0.3,
        min_size: float = 2.0,
        augment: bool = True,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stats_from: str | None = None,
        cache_images: int = 8,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters(ignore=["mean", "std"])
        self._log_hyperparams = False  # chip_size is a task argument too (see DetectionDataModule)
        if chip_size < 16:
            raise ConfigError("setting 'chip_size'", f"{chip_size} px is too small", "use ≥ 64")
        if not 0 < scale <= 4:
            raise ConfigError("setting 'scale'", f"must be in (0, 4], got {scale}")
        if len(split) != 3 or min(split) < 0 or split[0] <= 0:
            raise ConfigError("setting 'split'", f"needs 3 fractions with train > 0, got {split}")
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        self.catalog = Catalog(catalog)
        self.sources: dict[str, Any] = {}
        self.images: dict[str, list[int]] = {}
        self.class_names: list[str] = []
        self.oriented = True
        self.difficult = "ignore"
        self.band_names: list[str] = []
        self.stats: tuple[list[float], list[float]] = ([], [])
        self.datasets: dict[str, DetectionChipDataset] = {}

    # -- building -------------------------------------------------------------------------------
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        hp = self.hparams
        entry = self.catalog.get(hp.entry)
        if isinstance(entry, DetectionFolderEntry):
            folder = entry.read()
            for note in folder.notes:
                log.info("%s: %s", entry.where, note)
            source = FolderSource(folder.records, folder.class_names)
            self.class_names, self.oriented = folder.class_names, folder.oriented
            self.difficult = entry.difficult
            splits = [r.split for r in folder.records]
            if any(splits):
                names = {s: [i for i, v in enumerate(splits) if v == s] for s in SPLITS}
            else:
                names = self._random_split(len(splits), entry.where)
            self.sources = {s: source for s in SPLITS}
            self.images = names
            bands = entry.bands
        elif isinstance(entry, TorchGeoDatasetEntry):
            sources, self.class_names = torchgeo_dota_sources(entry)
            if "val" in sources:  # TorchGeo's own train / val
                self.sources = {"train": sources["train"], "val": sources["val"],
                                "test": sources["val"]}  # fmt: skip
                self.images = {s: list(range(len(self.sources[s]))) for s in ("train", "val")}
                self.images["test"] = []
            else:  # carve a validation set out of train, by image
                self.sources = {s: sources["train"] for s in SPLITS}
                self.images = self._random_split(len(sources["train"]), entry.where)
            self.oriented, bands = True, ["red", "green", "blue"]
        else:
            raise ConfigError(
                f"setting 'entry' ({entry.where})",
                f"is {entry.kind}; this datamodule reads detection_folder entries or TorchGeo's "
                "DOTA (torchgeo_dataset)",
                "georeferenced imagery + boxes: use geocmid.datamodules.DetectionDataModule",
            )  # fmt: skip
        if not self.images["val"]:
            raise DataError(entry.where, "has no validation image",
                            "add a val split (or more images for the random split)")  # fmt: skip
        if not self.images["test"]:
            log.info("%s: no test split; testing uses the validation images", entry.where)
            self.images["test"] = self.images["val"]
            self.sources["test"] = self.sources["val"]
        train_source = self.sources["train"]
        first, _ = train_source.load(self.images["train"][0])
        n = first.shape[0]
        self.band_names = list(bands) if len(bands) == n else _band_names(n)
        normalize = self._normalizer(train_source, entry.where)
        for s in SPLITS:
            self.datasets[s] = DetectionChipDataset(
                self.sources[s], self.class_names, hp.chip_size, hp.scale, hp.min_visible,
                hp.min_size, normalize, augment=hp.augment and s == "train",
                cache_images=hp.cache_images, difficult=self.difficult,
            )  # fmt: skip
        counts = {s: len(v) for s, v in self.images.items()}
        log.info("%s: %d classes, images per split %s", entry.where, len(self.class_names), counts)

    def _random_split(self, count: int, where: str) -> dict[str, list[int]]:
        hp = self.hparams
        if count < 2:
            raise DataError(where, f"has {count} image; a train and a val image are needed",
                            "add images or define splits")  # fmt: skip
        order = np.random.default_rng(hp.seed).permutation(count).tolist()
        fr = np.asarray(hp.split, dtype=float) / sum(hp.split)
        n_val = max(1, round(fr[1] * count)) if fr[1] > 0 else 0
        n_test = round(fr[2] * count) if count - n_val > 1 else 0
        n_test = min(n_test, count - n_val - 1)
        return {"val": sorted(order[:n_val]), "test": sorted(order[n_val : n_val + n_test]),
                "train": sorted(order[n_val + n_test :])}  # fmt: skip

    def _normalizer(self, source: Any, where: str) -> Normalize:
        mean, std = self.mean, self.std
        if mean is None and std is None:
            card = stats_from_card(self.hparams.stats_from, self.band_names, where)
            if card is not None:
                mean, std = card
        if mean is None and std is None:
            mean, std = self._image_stats(source)
        n = len(self.band_names)
        if mean is None or std is None or len(mean) != n or len(std) != n:
            raise ConfigError(
                "settings 'mean' / 'std'", f"need one value per band ({n} bands in {where})",
                "give both, one number per band, or neither (use the images' statistics)",
            )  # fmt: skip
        self.stats = ([float(v) for v in mean], [float(v) for v in std])
        return Normalize(*self.stats)

    def _image_stats(self, source: Any) -> tuple[list[float], list[float]]:
        """Per-band mean / std of (up to 16 of) the train images, every 4th pixel."""
        ids = self.images["train"]
        ids = [ids[k] for k in np.linspace(0, len(ids) - 1, min(16, len(ids))).round().astype(int)]
        total = square = 0.0
        count = 0
        for i in dict.fromkeys(ids):
            pixels = source.load(i)[0][:, ::4, ::4]
            flat = pixels.reshape(pixels.shape[0], -1).astype(np.float64)
            total = total + flat.sum(1)
            square = square + (flat**2).sum(1)
            count += flat.shape[1]
        mean = np.asarray(total) / count
        std = np.sqrt(np.maximum(np.asarray(square) / count - mean**2, 0)).clip(min=1e-6)
        return mean.tolist(), std.tolist()

    # -- what the task reads ----------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Object classes + 1 (torchvision detectors reserve label 0 for background)."""
        self.setup()
        return len(self.class_names) + 1

    @property
    def classes(self) -> list[ClassInfo]:
        """Background (value 0) then the object classes 1..K."""
        self.setup()
        return [ClassInfo(0, "background", "#000000")] + [
            ClassInfo(k, name, PALETTE[(k - 1) % len(PALETTE)])
            for k, name in enumerate(self.class_names, start=1)
        ]

    @property
    def in_chans(self) -> int:
        self.setup()
        return len(self.band_names)

    @property
    def bands(self) -> list[str]:
        self.setup()
        return list(self.band_names)

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        self.setup()
        return self.stats

    # -- loaders --------------------------------------------------------------------------------
    def _loader(self, split: str, sampler: Any, **kw: Any) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.datasets[split], batch_size=hp.batch_size, sampler=sampler,
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            num_workers=hp.num_workers, collate_fn=collate_boxes,
            persistent_workers=hp.num_workers > 0, **kw,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        ds = self.datasets["train"]
        _, world = rank_and_world_size()  # each rank draws its own share (DDP)
        length = max(hp.batch_size, hp.chips_per_epoch // world)
        seed = hp.seed if world == 1 else rank_seed(hp.seed)
        sampler = RandomWindowSampler(ds.sizes, hp.chip_size, self.images["train"], length, seed)
        return self._loader("train", sampler, drop_last=True)

    def eval_windows(self, split: str) -> list[tuple[int, int, int]]:
        """The fixed grid windows of ``split`` (evenly thinned to ``eval_chips``)."""
        self.setup()
        ds = self.datasets[split]
        windows = grid_windows(ds.sizes, self.hparams.chip_size, self.images[split])
        most = self.hparams.eval_chips
        if most is not None and len(windows) > most:
            keep = np.linspace(0, len(windows) - 1, most).round().astype(int)
            windows = [windows[k] for k in dict.fromkeys(keep.tolist())]
        return windows

    def _eval_loader(self, split: str) -> DataLoader:
        rank, world = rank_and_world_size()  # ranks score disjoint windows; metrics sync
        return self._loader(split, self.eval_windows(split)[rank::world])

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test")


def _band_names(n: int) -> list[str]:
    return ["red", "green", "blue"] if n == 3 else [f"b{i}" for i in range(1, n + 1)]


__all__ = ["DetectionFolderDataModule", "torchgeo_dota_sources"]
