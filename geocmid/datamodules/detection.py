"""Imagery + boxes → chips for TorchGeo's detection task, with spatially disjoint splits."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import geopandas as gpd
import shapely
from torch.utils.data import DataLoader
from torchgeo.samplers import RandomPatchSampler

from geocmid.data.boxes import VECTOR_SUFFIXES, class_index, read_boxes
from geocmid.data.catalog import Catalog, ClassInfo, ImageryEntry, VectorLabelsEntry
from geocmid.data.datasets import imagery_dataset
from geocmid.data.detection import BOX_FILE_SUFFIXES, BoxChipDataset, _image_entry, collate_boxes
from geocmid.data.sampling import (
    FixedSampler,
    rank_and_world_size,
    rank_seed,
    spatial_split_regions,
)
from geocmid.data.stats import Normalize, compute_stats, entry_normalizer
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)


class DetectionDataModule(CatalogDataModule):
    """Imagery + boxes → chips for TorchGeo's detection task, with spatially disjoint splits.

    Labels are either a catalog ``vector_labels`` entry (with ``entry`` naming the imagery), or
    box files: vector files (with ``entry``), or DeepForest CSV / Pascal VOC XML whose images
    are then the imagery (``entry`` omitted).

    Args:
        labels: catalog entry name, or one or more box files (``.csv``, ``.xml``, vector).
        entry: imagery entry (needed for vector labels; for CSV/VOC: their own images).
        catalog: catalog folder.
        object_classes: class names in label order (default: the entry's classes, or the
            values found in the files). Named so as not to clash with the task's ``classes``.
        column_order: CSV column names in file order, for headerless CSVs.
        class_attribute: vector attribute holding the class (default: the entry's).
        area: ``"images"`` (the whole imagery is annotated) or ``"labels"`` (only the boxes'
            bounding rectangle is).
        chip_size: chip edge in pixels.
        batch_size: chips per batch.
        split: area fractions of train, val and test.
        block_size: edge of the split blocks, in chips (small images are cut into equal blocks).
        chips_per_epoch: training chips per epoch (all ranks).
        eval_chips: fixed val / test chips.
        min_visible: see :class:`BoxChipDataset`.
        min_size: see :class:`BoxChipDataset` (pixels).
        num_workers: data-loading processes.
        seed: split and sampling seed.
        mean, std: per-band statistics (raw units) to normalise with, e.g. from the encoder's
            model card; default: the imagery's statistics.
        stats_from: export / checkpoint whose model card's statistics to use (see
            :class:`~geocmid.datamodules.SegmentationDataModule`).
    """

    def __init__(
        self,
        labels: str | Sequence[str],
        entry: str | None = None,
        catalog: str | Path | None = None,
        object_classes: Sequence[str] | None = None,
        column_order: Sequence[str] | None = None,
        class_attribute: str | None = None,
        area: str = "images",
        chip_size: int = 128,
        batch_size: int = 4,
        split: Sequence[float] = (0.7, 0.15, 0.15),
        block_size: float = 2.0,
        chips_per_epoch: int = 64,
        eval_chips: int = 16,
        min_visible: float = 0.3,
        min_size: float = 2.0,
        num_workers: int = 0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        stats_from: str | None = None,
    ) -> None:
        super().__init__(batch_size, num_workers)
        # mean/std stay out of the hparams: Lightning refuses to log a datamodule whose initial
        # hparams differ from the task's (the task records the statistics actually used)
        self.save_hyperparameters(ignore=["mean", "std"])
        # chip_size is a task argument too (None there until setup): Lightning refuses to merge
        # differing values for the loggers; the run's config.yaml records the datamodule's
        self._log_hyperparams = False
        self.mean = None if mean is None else [float(v) for v in mean]
        self.std = None if std is None else [float(v) for v in std]
        if area not in ("images", "labels"):
            raise ConfigError("setting 'area'", f"must be 'images' or 'labels', got {area!r}")
        self.catalog = Catalog(catalog) if catalog is not None or entry is not None else None
        self.dataset: BoxChipDataset | None = None
        self.regions: list[Any] = []
        self.class_names: list[str] = []
        self.image_entry: ImageryEntry | None = None
        self.stats: tuple[list[float], list[float]] = ([], [])

    # -- building -------------------------------------------------------------------------------
    def _label_files(self) -> tuple[list[Path], VectorLabelsEntry | None]:
        labels = self.hparams.labels
        names = [labels] if isinstance(labels, str | Path) else list(labels)
        if len(names) == 1 and Path(names[0]).suffix.lower() not in BOX_FILE_SUFFIXES:
            if self.catalog is None:
                self.catalog = Catalog(None)
            label_entry = self.catalog.get_kind(str(names[0]), VectorLabelsEntry)
            return label_entry.files(), label_entry
        return [Path(n) for n in names], None

    def _build(self) -> BoxChipDataset:
        hp = self.hparams
        files, label_entry = self._label_files()
        attribute = hp.class_attribute or (label_entry.class_attribute if label_entry else None)
        if hp.entry is not None:
            assert self.catalog is not None
            self.image_entry = self.catalog.get_kind(hp.entry, ImageryEntry)
            image = imagery_dataset(self.image_entry)
        elif any(f.suffix.lower() in VECTOR_SUFFIXES for f in files):
            raise ConfigError("setting 'entry'", "vector labels need an imagery entry",
                              "pass entry=NAME of the imagery the boxes lie on")  # fmt: skip
        else:
            image = None
        frames = [
            read_boxes(f, column_order=hp.column_order, class_attribute=attribute,
                       layer=label_entry.layer if label_entry else None)
            for f in files
        ]  # fmt: skip
        if image is None:
            images = sorted(
                {Path(p) for frame in frames for p in frame["image"]}
                | {Path(p) for f in frames for p in f.attrs.get("negatives", [])}
            )
            self.image_entry = _image_entry(images)
            self.image_entry.stats = compute_stats(self.image_entry)  # nowhere to store them
            image = imagery_dataset(self.image_entry)
        assert self.image_entry is not None
        image.transforms = self._normalizer(self.image_entry)
        boxes = gpd.GeoDataFrame(
            gpd.pd.concat([f.to_crs(image.crs) for f in frames], ignore_index=True), crs=image.crs
        )
        if boxes.empty:
            raise DataError(
                ", ".join(str(f) for f in files),
                "hold no object (only images without objects)",
                "a detector needs labelled objects to learn",
            )
        boxes["geometry"] = shapely.envelope(boxes.geometry.values)  # stay axis-aligned
        classes = hp.object_classes or (label_entry.classes if label_entry else None)
        where = label_entry.where if label_entry else ", ".join(str(f) for f in files)
        boxes["label"], self.class_names = class_index(boxes, classes, where)
        area = shapely.box(*boxes.total_bounds) if hp.area == "labels" else None
        return BoxChipDataset(image, boxes, area, hp.min_visible, hp.min_size)

    def _normalizer(self, entry: ImageryEntry) -> Normalize:
        mean, std = self.mean, self.std
        if mean is None and std is None:
            card = stats_from_card(self.hparams.stats_from, list(entry.bands), entry.where)
            if card is not None:
                mean, std = card
        if mean is None and std is None:
            normalize = entry_normalizer(entry)
            self.stats = ([float(v) for v in normalize.mean.ravel()],
                          [float(1 / v) for v in normalize.scale.ravel()])  # fmt: skip
            return normalize
        n = len(entry.bands)
        if mean is None or std is None or len(mean) != n or len(std) != n:
            raise ConfigError(
                "settings 'mean' / 'std'", f"need one value per band ({n} bands of {entry.where})",
                "give both, one number per band, or neither (use the imagery's statistics)",
            )  # fmt: skip
        self.stats = (mean, std)
        return Normalize(mean, std)

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp = self.hparams
        self.dataset = self._build()
        footprint = shapely.union_all(self.dataset.index.geometry.values)
        self.regions = spatial_split_regions(footprint, hp.split, self._block(footprint), hp.seed)
        half = math.hypot(*self.dataset.res) * hp.chip_size / 2
        for name, region, fraction in zip(
            ("train", "val", "test"), self.regions, hp.split, strict=False
        ):
            if fraction > 0 and region.buffer(-half).is_empty:
                raise ConfigError(
                    f"{name} split",
                    f"its region is too small for {hp.chip_size}-pixel chips "
                    f"(labelled area {self._size_px(footprint)} pixels)",
                    "use a smaller chip_size, larger block_size, or more imagery",
                )

    def _size_px(self, footprint: shapely.Geometry) -> str:
        xmin, ymin, xmax, ymax = footprint.bounds
        assert self.dataset is not None
        return (
            f"{(xmax - xmin) / self.dataset.res[0]:.0f}×{(ymax - ymin) / self.dataset.res[1]:.0f}"
        )

    def _block(self, footprint: shapely.Geometry) -> float:
        """Block edge in CRS units: ``block_size`` chips, evened out so no sliver is left over."""
        assert self.dataset is not None
        block = self.hparams.block_size * self.hparams.chip_size * self.dataset.res[0]
        xmin, ymin, xmax, ymax = footprint.bounds
        side = max(xmax - xmin, ymax - ymin)
        # a block a hair larger than side/n tiles the area in exactly n blocks per row
        return side / max(1, round(side / block)) * (1 + 1e-9)

    def imagery_bands(self) -> list[str]:
        """Band names of the imagery, read without computing statistics or reading chips."""
        if self.image_entry is not None:
            return list(self.image_entry.bands)
        if self.hparams.entry is not None:
            assert self.catalog is not None
            return list(self.catalog.get_kind(self.hparams.entry, ImageryEntry).bands)
        files, _ = self._label_files()
        frame = read_boxes(files[0], column_order=self.hparams.column_order)
        return list(_image_entry([Path(frame["image"].iloc[0])]).bands)

    # -- properties the task needs ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """Object classes + 1 (torchvision detectors reserve label 0 for background)."""
        self.setup()
        return len(self.class_names) + 1

    @property
    def classes(self) -> list[ClassInfo]:
        """Background (value 0) then the object classes 1..K, as ``geocmid fit`` expects."""
        self.setup()
        palette = ["#e31a1c", "#1f78b4", "#33a02c", "#ff7f00", "#6a3d9a", "#b15928"]
        return [ClassInfo(0, "background", "#000000")] + [
            ClassInfo(k, name, palette[(k - 1) % len(palette)])
            for k, name in enumerate(self.class_names, start=1)
        ]

    @property
    def in_chans(self) -> int:
        self.setup()
        assert self.image_entry is not None
        return len(self.image_entry.bands)

    @property
    def bands(self) -> list[str]:
        self.setup()
        assert self.image_entry is not None
        return list(self.image_entry.bands)

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` per band, raw units, that the chips are normalised with."""
        self.setup()
        return self.stats

    # -- loaders --------------------------------------------------------------------------------
    def _sampler(self, split: int, length: int, seed: int) -> RandomPatchSampler:
        return RandomPatchSampler(
            self.dataset, size=self.hparams.chip_size, length=length, roi=self.regions[split],
            generator=seed,
        )  # fmt: skip

    def _loader(self, sampler: Any, **kw: Any) -> DataLoader:
        hp = self.hparams
        return DataLoader(
            self.dataset, batch_size=hp.batch_size, sampler=sampler, num_workers=hp.num_workers,
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            collate_fn=collate_boxes, persistent_workers=hp.num_workers > 0, **kw,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        _, world = rank_and_world_size()
        length = max(hp.batch_size, hp.chips_per_epoch // world)
        return self._loader(self._sampler(0, length, rank_seed(hp.seed)), drop_last=True)

    def _eval_loader(self, split: int) -> DataLoader:
        self.setup()
        queries = list(self._sampler(split, self.hparams.eval_chips, self.hparams.seed + split))
        return self._loader(FixedSampler(queries))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(1)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(2)
