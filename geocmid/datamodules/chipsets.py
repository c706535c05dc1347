"""Datamodules over chip datasets: plain tiles with labels, read on their pixel grid.

* :class:`ChipSegmentationDataModule`: a ``chip_segmentation`` entry (image + value or colour
  mask) for :class:`~geocmid.tasks.segmentation.SegmentationTask` (mIoU, per-class IoU);
* :class:`ChipChangeDataModule`: a ``chip_change`` entry (A / B / label) for
  :class:`~geocmid.tasks.change.ChangeTask` (change F1 / IoU / precision / recall);
* scene classification of an ``image_folder`` entry is
  :class:`~geocmid.datamodules.folder.ImageFolderDataModule`.

Training draws ``chips_per_epoch`` random ``chip_size`` windows (a random tile, a random
position, random flips / 90° rotations); validation and test cover every tile with a grid of
windows (the last row / column shifted inwards to end at the tile edge), so every labelled
pixel of the split is scored (pixels where shifted windows overlap count twice). Tiles smaller
than a window are padded (image 0, mask ignored): a warning gives the numbers and the fix, and
a chip size larger than every training tile that would make each chip mostly padding is refused
(:func:`check_padding`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from geocmid.data.catalog import Catalog, ClassInfo
from geocmid.data.catalog.schema import ChipChangeEntry, ChipEntry, ChipSegmentationEntry
from geocmid.data.chipsets import (
    IGNORE_INDEX,
    ChipRecords,
    MaskDecoder,
    band_names,
    image_header,
    mask_decoder,
    read_image,
    records,
    split_indices,
)
from geocmid.datamodules.base import CatalogDataModule, stats_from_card, worker_init
from geocmid.errors import ConfigError, DataError, ModelError

log = logging.getLogger(__name__)

#: Training tiles read to estimate per-band statistics (every 4th pixel of each).
STATS_FILES = 32


def image_stats(
    files: Sequence[Path], max_files: int = STATS_FILES, seed: int = 0
) -> tuple[list[float], list[float]]:
    """Per-band mean and std (raw units) over up to ``max_files`` images (every 4th pixel)."""
    rng = np.random.default_rng(seed)
    chosen = [files[i] for i in sorted(rng.permutation(len(files))[:max_files])]
    total = square = None
    count = 0
    for f in chosen:
        image = read_image(f)[:, ::4, ::4]
        pixels = image.reshape(image.shape[0], -1).astype(np.float64)
        s, q = pixels.sum(1), (pixels**2).sum(1)
        total = s if total is None else total + s
        square = q if square is None else square + q
        count += pixels.shape[1]
    assert total is not None and square is not None
    mean = total / count
    std = np.sqrt(np.maximum(square / count - mean**2, 0.0)).clip(min=1e-6)
    return mean.tolist(), std.tolist()


def grid_windows(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left corners of ``size`` windows covering a ``height`` × ``width`` tile, the last
    row / column shifted to end at the edge (one window at 0 when the tile is smaller)."""

    def starts(n: int) -> list[int]:
        if n <= size:
            return [0]
        out = list(range(0, n - size + 1, size))
        return out if out[-1] == n - size else [*out, n - size]

    return [(y, x) for y in starts(height) for x in starts(width)]


#: Refused when every training tile is smaller than the chip and more than this share of each
#: chip would be padding.
MAX_PADDING = 0.5


def check_padding(sizes: Sequence[tuple[int, int]], chip_size: int, where: str) -> float:
    """Warn once when training tiles are smaller than ``chip_size`` (their chips are padded:
    image 0, mask ignored), with the numbers and the fix; refuse when every tile is smaller and
    more than :data:`MAX_PADDING` of each chip would be padding.

    Args:
        sizes: ``(height, width)`` of each training tile.
        chip_size: the window edge in pixels.
        where: the catalog entry, for messages.

    Returns:
        the expected share of padded pixels in a training chip (a random tile each).

    Raises:
        ConfigError: every tile is smaller than the chip and mostly padding.
    """
    s = chip_size
    shares = [1.0 - min(h, s) * min(w, s) / (s * s) for h, w in sizes]
    small = [(h, w) for h, w in sizes if h < s or w < s]
    if not small:
        return 0.0
    share = float(np.mean(shares))
    side = min(min(h, w) for h, w in sizes)
    areas = sorted(small, key=lambda hw: hw[0] * hw[1])
    lo, hi = areas[0], areas[-1]
    size = f"{lo[1]}x{lo[0]} px" if lo == hi else f"{lo[1]}x{lo[0]} to {hi[1]}x{hi[0]} px"
    multiple = side // 32 * 32
    hint = f" (e.g. {multiple}, a multiple of 32 as the encoders need)" if multiple >= 32 else ""
    fix = f"set data.chip_size to at most {side}, the smallest tile side{hint}"
    text = (
        f"{len(small)} of {len(sizes)} training tiles are smaller than the chip size "
        f"({size}, data.chip_size = {s}): {share:.0%} of the pixels of training chips would be "
        "padding (image 0, mask ignored)"
    )
    if len(small) == len(sizes) and min(shares) > MAX_PADDING:
        raise ConfigError(where, text + ", so the model would learn mostly from padding", fix)
    log.warning("%s: %s; %s", where, text, fix)
    return share


def _window(array: np.ndarray, y: int, x: int, size: int, fill: float) -> np.ndarray:
    """``array[..., y:y+size, x:x+size]``, padded with ``fill`` past the edges."""
    out = array[..., y : y + size, x : x + size]
    h, w = out.shape[-2:]
    if (h, w) != (size, size):
        pad = [(0, 0)] * (out.ndim - 2) + [(0, size - h), (0, size - w)]
        out = np.pad(out, pad, constant_values=fill)
    return out


class PairedChips(Dataset):
    """Windows of image tiles with their labels.

    Args:
        files: per tile ``(image, mask)`` or ``(before, after, label)``.
        decode: label file → ``[H, W]`` uint8 class indices (255 ignore).
        size: window edge in pixels.
        mean, std: per-band statistics (raw units) the images are normalised with.
        windows: ``(tile, y, x)`` of each item (evaluation), or None for random windows.
        length: items per epoch with random windows.
        augment: random flips and 90° rotations (random windows only).

    Items: ``image`` float32 ``[C, S, S]`` (or ``[2, C, S, S]`` for pairs), ``mask`` long
    ``[S, S]`` (class indices, 255 ignored).
    """

    def __init__(
        self,
        files: Sequence[tuple[Path, ...]],
        decode: MaskDecoder | Callable[[Path], np.ndarray],
        size: int,
        mean: Sequence[float],
        std: Sequence[float],
        windows: list[tuple[int, int, int]] | None = None,
        length: int = 0,
        augment: bool = False,
    ) -> None:
        self.files, self.decode, self.size = list(files), decode, size
        self.mean = np.asarray(mean, dtype=np.float32)[:, None, None]
        self.scale = 1.0 / np.asarray(std, dtype=np.float32)[:, None, None]
        self.windows, self.length, self.augment = windows, length, augment
        self._cache: tuple[int, np.ndarray, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.windows) if self.windows is not None else self.length

    def _tile(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == i:
            return self._cache[1], self._cache[2]
        group = self.files[i]
        images = [read_image(f) for f in group[:-1]]
        image = images[0] if len(images) == 1 else np.stack(images)
        mask = self.decode(group[-1])
        if mask.shape != image.shape[-2:]:
            raise DataError(
                str(group[-1]),
                f"is {mask.shape[1]}x{mask.shape[0]} pixels but {group[0]} is "
                f"{image.shape[-1]}x{image.shape[-2]}",
                "pairs must share their pixel grid",
            )
        image = (image.astype(np.float32) - self.mean) * self.scale
        self._cache = (i, image, mask)
        return image, mask

    def __getitem__(self, k: int) -> dict[str, torch.Tensor]:
        if self.windows is not None:
            i, y, x = self.windows[k]
        else:
            i = int(torch.randint(len(self.files), ()))
        image, mask = self._tile(i)
        if self.windows is None:
            h, w = mask.shape
            y = int(torch.randint(max(h - self.size, 0) + 1, ()))
            x = int(torch.randint(max(w - self.size, 0) + 1, ()))
        img = _window(image, y, x, self.size, 0.0)
        lab = _window(mask, y, x, self.size, IGNORE_INDEX)
        if self.augment:
            flips = torch.rand(3)
            if flips[0] < 0.5:
                img, lab = img[..., ::-1], lab[..., ::-1]
            if flips[1] < 0.5:
                img, lab = img[..., ::-1, :], lab[..., ::-1, :]
            if flips[2] < 0.5:
                img, lab = np.swapaxes(img, -1, -2), np.swapaxes(lab, -1, -2)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "mask": torch.from_numpy(np.ascontiguousarray(lab)).long(),
        }


class _PairedChipDataModule(CatalogDataModule):
    """Shared by the segmentation and change chip datamodules (see the module docstring).

    Args:
        entry: catalog entry name (or path of its YAML file).
        catalog: catalog folder (default: $GEOCMID_CATALOG, else data_catalog).
        chip_size: window edge in pixels (a multiple of 32 for the usual encoders).
        batch_size: windows per batch.
        split: train / val / test shares for splits the entry does not define (by tile).
        chips_per_epoch: random training windows per epoch (default: one per training tile,
            times the windows that fit in the first tile).
        num_workers: data-loading processes.
        seed: seed of the split and the statistics' sample.
        mean, std: per-band statistics (raw units); default: estimated on training tiles.
        stats_from: a geocmid export / fine-tuned checkpoint whose card statistics to use.
        augment: random flips / 90° rotations of training windows.
    """

    entry_kind: type[ChipEntry] = ChipEntry

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
        self._log_hyperparams = False  # names shared with the task's (mean, std)
        self.catalog = Catalog(catalog)
        self.recs: ChipRecords | None = None
        self.index: dict[str, list[int]] = {}
        self.stats: tuple[list[float], list[float]] | None = None
        self.band_list: list[str] = []

    def chip_entry(self) -> ChipEntry:
        return self.catalog.get_kind(self.hparams.entry, self.entry_kind)

    def setup(self, stage: str | None = None) -> None:
        if self.recs is not None:
            return
        hp = self.hparams
        entry = self.chip_entry()
        entry.validate_files()
        recs = records(entry)
        self.index = split_indices(recs, hp.split, hp.seed)
        if not self.index["train"]:
            raise ConfigError(
                entry.where, "the train split holds no tile", "add tiles or check 'splits'"
            )
        self.band_list = band_names(entry, image_header(recs.files[0][0])[0])
        train_sizes = [image_header(recs.files[i][0])[1:] for i in self.index["train"]]
        check_padding(train_sizes, hp.chip_size, entry.where)
        if hp.mean is not None and hp.std is not None:
            stats = ([float(v) for v in hp.mean], [float(v) for v in hp.std])
        else:
            stats = stats_from_card(hp.stats_from, self.band_list, entry.where)
            if stats is None:
                train = [f for i in self.index["train"] for f in recs.files[i][:-1]]
                stats = image_stats(train, seed=hp.seed)
        if len(stats[0]) != len(self.band_list) or len(stats[1]) != len(self.band_list):
            raise ModelError(
                "normalisation statistics",
                f"have {len(stats[0])} means / {len(stats[1])} stds for "
                f"{len(self.band_list)} bands of {entry.where}",
                "use statistics of the same bands (or leave data.mean / data.std out)",
            )
        self.stats = stats
        self.decode = mask_decoder(entry)  # type: ignore[arg-type]
        self.class_table = list(entry.classes)  # type: ignore[attr-defined]
        self.recs = recs

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

    def _dataset(self, split: str) -> PairedChips:
        self.setup()
        assert self.recs is not None and self.stats is not None
        hp, ids = self.hparams, self.index[split]
        if not ids:
            raise ConfigError(
                f"data split {split} of {self.chip_entry().where}",
                "holds no tile",
                "define it in the entry's 'splits' or raise data.split's share",
            )
        files = [self.recs.files[i] for i in ids]
        if split == "train":
            length = hp.chips_per_epoch
            if length is None:
                _, h, w = image_header(files[0][0])
                length = len(files) * len(grid_windows(h, w, hp.chip_size))
            return PairedChips(
                files, self.decode, hp.chip_size, *self.stats, length=length, augment=hp.augment
            )
        windows = []
        for t, group in enumerate(files):
            _, h, w = image_header(group[0])
            windows += [(t, y, x) for y, x in grid_windows(h, w, hp.chip_size)]
        return PairedChips(files, self.decode, hp.chip_size, *self.stats, windows=windows)

    def _loader(self, split: str) -> DataLoader:
        hp = self.hparams
        dataset = self._dataset(split)
        train = split == "train"
        return DataLoader(
            dataset, batch_size=hp.batch_size, shuffle=False, num_workers=hp.num_workers,
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            drop_last=train and len(dataset) > hp.batch_size,
            persistent_workers=hp.num_workers > 0,
        )  # fmt: skip

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class ChipSegmentationDataModule(_PairedChipDataModule):
    """Image tiles + value or colour-coded masks (a ``chip_segmentation`` entry) for
    :class:`~geocmid.tasks.segmentation.SegmentationTask`. Arguments: see
    :class:`_PairedChipDataModule`. Masks map to class indices in the order of the entry's
    class table; ``ignore_value`` / ``ignore_colors`` pixels are 255 (ignored)."""

    entry_kind = ChipSegmentationEntry


class ChipChangeDataModule(_PairedChipDataModule):
    """Bitemporal tiles + change labels (a ``chip_change`` entry: LEVIR-CD / WHU-CD layouts)
    for :class:`~geocmid.tasks.change.ChangeTask`: ``image`` ``[B, 2, C, S, S]``, ``mask``
    ``[B, S, S]`` (0 no change, 1 change, 255 ignored). Statistics cover both dates.
    Arguments: see :class:`_PairedChipDataModule`."""

    entry_kind = ChipChangeEntry
