"""Fine-tuning datamodules: :class:`SupervisedGeoDataModule` plus what fine-tuning needs.

Adds to the data layer's supervised datamodule:

* normalisation by given statistics (``mean`` / ``std``, or ``stats_from`` a pretrained
  encoder's model card) instead of the entry's;
* an optional background class for vector labels that only outline the foreground (pixels
  outside every feature are otherwise *unlabelled*);
* up-front label checks: an empty label file, or label values missing from the class table, is a
  :class:`DataError` before training starts rather than a crash in the first batch;
* what a task needs to be built: bands, class table, statistics actually used.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.data.catalog import (
    BitemporalEntry,
    ClassInfo,
    ImageryEntry,
    RasterLabelsEntry,
    VectorLabelsEntry,
)
from geocmid.data.datasets import ClassLookup
from geocmid.data.stats import Normalize, entry_normalizer
from geocmid.datamodules.base import stats_from_card
from geocmid.datamodules.geo import SupervisedGeoDataModule
from geocmid.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

#: Label rasters up to this many pixels are read whole for the up-front value check.
CHECK_PIXELS = 50_000_000


class SegmentationDataModule(SupervisedGeoDataModule):
    """Imagery + mask labels (or a bitemporal pair + change labels) for dense fine-tuning.

    Args (besides those of :class:`SupervisedGeoDataModule`):
        mean, std: per-band statistics in raw units to normalise with; default: the image
            entry's stored statistics.
        stats_from: a geocmid export (``.safetensors`` / ``.json``) or fine-tuned checkpoint
            whose model card's statistics to normalise with (``mean`` / ``std`` win if given;
            weights without a card: the entry's statistics). ``geocmid fit --weights`` sets it.
        background: name of a class 0 to add when the labels are vectors without one (pixels
            outside every feature then train as background instead of being ignored).
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
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        background: str | None = None,
        stats_from: str | None = None,
    ) -> None:
        super().__init__(
            entry, labels, catalog, chip_size, batch_size, split, block_size,
            chips_per_epoch, eval_chips, num_workers, max_nodata, seed,
        )  # fmt: skip
        self.stats: tuple[list[float], list[float]] | None = None
        # The task's hparams share names (labels, mean, std) with other meanings; Lightning
        # refuses to merge differing values, and `geocmid fit` saves the whole config anyway.
        self._log_hyperparams = False

    # ---- what the task needs ------------------------------------------------------------------
    @property
    def is_change(self) -> bool:
        return isinstance(self.catalog.get(self.hparams.entry), BitemporalEntry)

    def image_entry(self) -> ImageryEntry:
        entry = self.catalog.get(self.hparams.entry)
        name = entry.before if isinstance(entry, BitemporalEntry) else self.hparams.entry
        return self.catalog.get_kind(name, ImageryEntry)

    def label_entry(self) -> RasterLabelsEntry | VectorLabelsEntry:
        entry = self.catalog.get(self.hparams.entry)
        name = entry.change_labels if isinstance(entry, BitemporalEntry) else self.hparams.labels
        return self.catalog.get(name)  # type: ignore[return-value]

    @property
    def bands(self) -> list[str]:
        return [str(b) for b in self.image_entry().bands]

    @property
    def classes(self) -> list[ClassInfo]:
        self.setup()
        assert self.lookup is not None
        return list(self.lookup.classes)

    @property
    def normalisation(self) -> tuple[list[float], list[float]]:
        """``(mean, std)`` the images are normalised with (raw units, one per band)."""
        self.setup()
        assert self.stats is not None
        return self.stats

    # ---- building -----------------------------------------------------------------------------
    def _build(self) -> Any:
        hp = self.hparams
        self._check_labels(self.label_entry() if hp.labels or self.is_change else None)
        dataset = super()._build()
        image_entry = self.image_entry()
        mean, std = hp.mean, hp.std
        if mean is None or std is None:
            card = stats_from_card(hp.stats_from, self.bands, image_entry.where)
            mean, std = card if card else (None, None)
        if mean is not None and std is not None:
            n = len(image_entry.bands)
            if len(mean) != n or len(std) != n:
                raise ModelError(
                    "normalisation statistics",
                    f"have {len(mean)} means / {len(std)} stds for {n} bands of "
                    f"{image_entry.where}",
                    "use statistics of the same bands (or leave data.mean / data.std out)",
                )
            normalize = Normalize(mean, std)
            self.stats = ([float(v) for v in mean], [float(v) for v in std])
            if self.is_change:
                dataset.transforms = lambda s: self._map_mask(normalize(s))
            else:  # IntersectionDataset(image, labels): the image dataset normalises
                dataset.datasets[0].transforms = normalize
        else:
            default = entry_normalizer(image_entry)  # the entry's stored statistics
            self.stats = (
                [float(v) for v in default.mean.ravel()],
                [float(1.0 / v) for v in default.scale.ravel()],
            )
        label_entry = self.label_entry()
        assert self.lookup is not None
        if (
            hp.background
            and isinstance(label_entry, VectorLabelsEntry)
            and not any(c.value == 0 for c in self.lookup.classes)
        ):
            classes = [ClassInfo(0, hp.background, "#000000"), *self.lookup.classes]
            self.lookup = ClassLookup(classes, None, self.lookup.where)
        return dataset

    def _eval_loader(self, split: int) -> Any:
        loader = super()._eval_loader(split)
        if len(loader.sampler) == 0:
            hp = self.hparams
            raise ConfigError(
                f"data split {('train', 'val', 'test')[split]}",
                f"no {hp.chip_size}-pixel chip fits in its blocks (block_size {hp.block_size})",
                "raise data.block_size (chips must fit inside a block) or data.split's share",
            )
        return loader

    def _check_labels(self, entry: RasterLabelsEntry | VectorLabelsEntry | None) -> None:
        """Fail early on empty label files and on values missing from the class table."""
        if entry is None:
            return
        if isinstance(entry, VectorLabelsEntry):
            check_vector_labels(entry)
        elif not entry.class_masks:
            check_raster_labels(entry)
        else:
            check_class_masks(entry)


def check_vector_labels(entry: VectorLabelsEntry) -> None:
    """Raise :class:`DataError` for a label file without features or with unknown classes."""
    import pyogrio

    for path in entry.files():
        count = pyogrio.read_info(path, layer=entry.layer).get("features", -1)
        if count == 0:
            raise DataError(
                str(path),
                "holds no features (empty label file)",
                "add labelled features or drop it",
            )
        if not (entry.class_attribute and entry.classes):
            continue
        frame = pyogrio.read_dataframe(
            path, layer=entry.layer, columns=[entry.class_attribute], read_geometry=False
        )
        found = set(frame[entry.class_attribute].dropna().astype(int).unique().tolist())
        unknown = sorted(found - {c.value for c in entry.classes})
        if unknown:
            raise DataError(
                str(path),
                f"class values {unknown[:10]} in '{entry.class_attribute}' are not in the "
                f"class table {[c.value for c in entry.classes]} of {entry.where}",
                "add them to 'classes' in the catalog entry",
            )


def check_raster_labels(entry: RasterLabelsEntry) -> None:
    """Read small label rasters whole: every value known, at least one labelled pixel."""
    from geocmid.data.rasters import open_raster

    known = {c.value for c in entry.classes}
    for path in entry.files():
        with open_raster(path) as src:
            if src.width * src.height > CHECK_PIXELS:
                continue  # checked lazily, chip by chip, by ClassLookup
            data = src.read(1)
            ignore = entry.ignore_value if entry.ignore_value is not None else src.nodata
        values = set(np.unique(data).astype(np.int64).tolist())
        if ignore is not None:
            values.discard(int(ignore))
        if not values:
            raise DataError(
                str(path),
                "holds no labelled pixel (every pixel is nodata / ignore_value)",
                "check the file and 'ignore_value' of " + entry.where,
            )
        unknown = sorted(values - known)
        if unknown:
            raise DataError(
                str(path),
                f"label values {unknown[:10]} are not in the class table {sorted(known)}",
                f"add them to 'classes' of {entry.where}, or set 'ignore_value'",
            )


def check_class_masks(entry: RasterLabelsEntry) -> None:
    """Every class mask must mark at least one pixel."""
    from geocmid.data.rasters import open_raster

    for value, path in zip(entry.class_masks, entry.files(), strict=True):
        with open_raster(path) as src:
            if src.width * src.height > CHECK_PIXELS:
                continue
            if not np.any(src.read()):
                raise DataError(
                    str(path), f"the mask of class {value} marks no pixel (empty label file)"
                )
