"""CMID pretraining on chip datasets: plain image folders and TorchGeo's benchmark datasets.

Chips of any size are brought to one square ``chip_size`` in the loader: a random square crop
with the image's shorter side (the largest square inside it, at a random position), resized to
``chip_size`` when its side differs (bilinear, antialiased). The CMID two-view transform
(:class:`~geocmid.cmid.views.CMIDViewTransform`, unchanged) then takes each view's random
resized crop (scale 0.3–1, aspect 3/4–4/3) of that square on the device, as the paper's
``RandomResizedCrop`` does on Million-AID's variously sized images. On square chips the two
steps are exactly ``RandomResizedCrop``; on oblong chips the views see the largest square.

Loader batches hold the file dtype (uint8 JPEG/PNG stay uint8) and are normalised on the
device (:meth:`ChipPretrainDataModule.on_after_batch_transfer`), as
:class:`~geocmid.datamodules.PretrainDataModule` does for georeferenced imagery; labels are
ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from geocmid.data.catalog import Catalog, Entry, TorchGeoDatasetEntry
from geocmid.data.catalog.schema import ChipEntry, ImageFolderEntry
from geocmid.data.chipsets import (
    RASTERIO_SUFFIXES,
    band_names,
    image_header,
    read_image,
    records,
)
from geocmid.data.stats import Normalize
from geocmid.datamodules.base import CatalogDataModule, worker_init
from geocmid.datamodules.chipsets import image_stats
from geocmid.errors import ConfigError, DataError

log = logging.getLogger(__name__)

#: Folders up to this many images are validated whole before pretraining (every header and
#: mask); larger ones (Million-AID: 1 M images) have the band count of a sample checked.
FULL_CHECK = 20_000
#: Pillow modes decoded and resized by Pillow itself (8-bit, up to 4 bands).
_PIL_FAST = {"L": np.uint8, "RGB": np.uint8, "RGBA": np.uint8}


def random_square(height: int, width: int) -> tuple[int, int, int]:
    """``(y, x, side)`` of a random square of side ``min(height, width)`` inside the image."""
    side = min(height, width)
    y = int(torch.randint(height - side + 1, ()))
    x = int(torch.randint(width - side + 1, ()))
    return y, x, side


def resize_square(array: np.ndarray, size: int) -> np.ndarray:
    """``[C, s, s]`` → ``[C, size, size]`` (bilinear, antialiased), in the input's dtype."""
    if array.shape[-1] == size:
        return array
    x = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None]
    out = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)[0].numpy()
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(array.dtype)


def load_square(path: Path, size: int) -> np.ndarray:
    """Decode ``path`` and return a random largest square of it at ``size`` px, ``[C, S, S]``
    in the file's dtype. 8-bit JPEG/PNG go through Pillow's crop + resize in one call
    (``Image.resize(box=...)``); other files through :func:`~geocmid.data.chipsets.read_image`
    and :func:`resize_square`."""
    if Path(path).suffix.lower() not in RASTERIO_SUFFIXES:
        with Image.open(path) as img:
            if img.mode in _PIL_FAST:
                y, x, side = random_square(img.height, img.width)
                box = (x, y, x + side, y + side)
                if side == size:
                    out = img.crop(box) if (side, side) != img.size else img
                else:
                    out = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
                array = np.asarray(out)
                return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
    array = read_image(path)
    y, x, side = random_square(*array.shape[-2:])
    return resize_square(array[:, y : y + side, x : x + side], size)


class SquareChips(Dataset):
    """Images as random largest squares at ``size`` px: ``{"image": [C, S, S]}`` file dtype.

    Args:
        files: image files (any size; one band count).
        size: output edge in pixels.
    """

    def __init__(self, files: Sequence[Path], size: int) -> None:
        self.files, self.size = list(files), size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": torch.from_numpy(np.ascontiguousarray(load_square(self.files[i], self.size)))
        }


class TorchGeoSquareChips(Dataset):
    """A TorchGeo dataset's ``image`` as random largest squares at ``size`` px (labels dropped)."""

    def __init__(self, dataset: Any, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        image = self.dataset[i]["image"]
        image = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
        if image.ndim == 4:  # bitemporal: the first date
            image = image[0]
        y, x, side = random_square(*image.shape[-2:])
        out = resize_square(image[:, y : y + side, x : x + side], self.size)
        return {"image": torch.from_numpy(np.ascontiguousarray(out))}


class _Repeat(Dataset):
    """``length`` items drawn from ``dataset`` in turn (a new random square each time)."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> Any:
        return self.dataset[i % len(self.dataset)]  # type: ignore[arg-type]


def pretrain_images(entry: ChipEntry) -> list[Path]:
    """The images a chip entry pretrains on: its ``train`` split if it defines splits, else
    all; both dates of change pairs; never label files."""
    recs = records(entry)
    ids = [i for i, s in enumerate(recs.splits) if s == "train"] or range(len(recs.files))
    keep = 1 if isinstance(entry, ImageFolderEntry) else len(recs.files[0]) - 1
    return [f for i in ids for f in recs.files[i][:keep]]


class ChipPretrainDataModule(CatalogDataModule):
    """Unlabelled chips of an ``image_folder`` / ``chip_segmentation`` / ``chip_change`` or
    ``torchgeo_dataset`` entry for CMID pretraining (see the module docstring).

    Args:
        entry: catalog entry (name, or path of its YAML file).
        catalog: catalog folder (default: $GEOCMID_CATALOG, else data_catalog).
        chip_size: square chip edge in px fed to the two-view transform.
        batch_size: chips per batch on each device.
        chips_per_epoch: chips per epoch (default: every image once; more repeats images with
            new random squares).
        num_workers: data-loading processes per device.
        seed: seed of the statistics' sample.
    """

    def __init__(
        self,
        entry: str,
        catalog: str | Path | None = None,
        chip_size: int = 224,
        batch_size: int = 64,
        chips_per_epoch: int | None = None,
        num_workers: int = 4,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size, num_workers)
        self.save_hyperparameters()
        self.catalog = Catalog(catalog)
        self.entry: Entry = self.catalog.get(entry)
        if not isinstance(self.entry, ChipEntry | TorchGeoDatasetEntry):
            raise ConfigError(
                self.entry.where,
                f"is a {self.entry.kind} entry; this datamodule reads chip datasets",
                "use geocmid.datamodules.PretrainDataModule for imagery entries",
            )
        self.dataset: Dataset | None = None
        self.band_list: list[str] = []
        self.normalize: Normalize | None = None
        self.stats: tuple[list[float], list[float]] | None = None
        self.num_images: int | None = None  # distinct images of the pretraining set

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        hp, entry = self.hparams, self.entry
        if isinstance(entry, ChipEntry):
            files = pretrain_images(entry)
            bands = image_header(files[0])[0]
            if len(files) <= FULL_CHECK:
                entry.validate_files()
            else:  # large folders: the headers of an even sample
                for f in files[:: len(files) // FULL_CHECK]:
                    if image_header(f)[0] != bands:
                        raise DataError(
                            str(f), f"has {image_header(f)[0]} band(s), {files[0]} has {bands}",
                            f"every image of {entry.where} needs the same bands",
                        )  # fmt: skip
            self.band_list = band_names(entry, bands)
            self.stats = image_stats(files, seed=hp.seed)
            dataset: Dataset = SquareChips(files, hp.chip_size)
            self.num_images = len(files)
        else:
            from geocmid.data.datasets.factory import torchgeo_dataset

            base = torchgeo_dataset(entry)
            if len(base) == 0:
                raise DataError(entry.where, "holds no image", "check 'root' and 'args'")
            dataset = TorchGeoSquareChips(base, hp.chip_size)
            self.num_images = len(base)
            rng = np.random.default_rng(hp.seed)
            sample = [dataset[int(i)]["image"].double() for i in rng.permutation(len(base))[:32]]
            pixels = torch.cat([s.flatten(1) for s in sample], 1)
            self.stats = (pixels.mean(1).tolist(), pixels.std(1).clamp(min=1e-6).tolist())
            n = len(self.stats[0])
            self.band_list = ["red", "green", "blue"] if n == 3 else [f"b{i + 1}" for i in range(n)]
        if hp.chips_per_epoch is not None:
            dataset = _Repeat(dataset, int(hp.chips_per_epoch))
        if len(dataset) < hp.batch_size:  # type: ignore[arg-type]
            raise DataError(
                entry.where,
                f"has {len(dataset)} image(s) per epoch, fewer than one batch of "  # type: ignore[arg-type]
                f"{hp.batch_size}: every epoch would train zero steps",
                "lower data.batch_size or raise data.chips_per_epoch",
            )
        self.normalize = Normalize(*self.stats)
        self.dataset = dataset

    @property
    def bands(self) -> list[str]:
        self.setup()
        return self.band_list

    def task_args(self) -> dict[str, Any]:
        """What the data decide for :class:`~geocmid.cmid.task.CMIDTask` (its ``DATA_ARGS``):
        bands, RGB bands (``red``/``green``/``blue`` if so named), statistics (raw units),
        entry name, chip size, per-device batch and the number of distinct images (which
        sizes the key queue). No GSD: chips carry none."""
        self.setup()
        assert self.stats is not None
        rgb = ["red", "green", "blue"]
        return {
            "bands": list(self.band_list),
            "rgb_bands": rgb if all(b in self.band_list for b in rgb) else None,
            "mean": [float(v) for v in self.stats[0]],
            "std": [float(v) for v in self.stats[1]],
            "gsd": None,
            "data": self.entry.name,
            "chip_size": int(self.hparams.chip_size),
            "batch_size": int(self.hparams.batch_size),
            # distinct images (not chips per epoch): the key queue is sized from it
            "num_images": self.num_images,
        }

    def on_after_batch_transfer(self, batch: dict[str, Any], dataloader_idx: int) -> dict[str, Any]:
        """Normalise each batch on its device (per-band statistics of the training images)."""
        self.setup()
        assert self.normalize is not None
        return self.normalize.batch(batch)

    def train_dataloader(self) -> DataLoader:
        self.setup()
        hp = self.hparams
        return DataLoader(
            self.dataset, batch_size=hp.batch_size, shuffle=True, num_workers=hp.num_workers,
            worker_init_fn=worker_init if hp.num_workers > 0 else None,
            drop_last=True, persistent_workers=hp.num_workers > 0,
        )  # fmt: skip


def pretrain_datamodule_for(entry: str, catalog: str | Path | None = None) -> str | None:
    """Class path of the pretraining datamodule for catalog entry ``entry``:
    :class:`ChipPretrainDataModule` for chip datasets and ``torchgeo_dataset`` entries, None
    (keep the default, :class:`~geocmid.datamodules.PretrainDataModule`) for anything else or
    when the entry cannot be loaded (the default datamodule then reports the problem)."""
    from geocmid.errors import GeocmidError

    try:
        kind = Catalog(catalog).get(entry)
    except GeocmidError:
        return None
    if isinstance(kind, ChipEntry | TorchGeoDatasetEntry):
        return f"{__name__.rsplit('.', 1)[0]}.ChipPretrainDataModule"
    return None
