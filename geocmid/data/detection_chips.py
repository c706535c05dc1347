"""Detection chip datasets: plain images with objects → fixed-size chips with their boxes.

Images are read **on their pixel grid** (never as a geographic footprint): a chip is a window
``(image, x0, y0)`` in pixels of the image (after the optional ``scale``), and its objects are
given in chip pixels (x right, y down from the chip's top-left corner).

Two image sources feed :class:`DetectionChipDataset`:

* :class:`FolderSource`: a ``detection_folder`` catalog entry read by
  :func:`geocmid.data.boxformats.read_detection_folder`;
* :class:`TorchGeoDOTASource`: TorchGeo's own :class:`torchgeo.datasets.DOTA` (its files laid out
  as TorchGeo expects; never downloaded here), oriented boxes.

Samples hold ``image`` ``[C, S, S]`` float32 (normalised; padding 0 where a chip reaches past a
small image), ``bbox_xyxy`` ``[N, 4]`` float32 axis-aligned boxes clipped to the chip,
``label`` ``[N]`` int64 in 1..K (0 is the detectors' background), ``polygon`` ``[N, 8]``
float32 corners (x1, y1, ..., x4, y4) in chip pixels, unclipped, and ``difficult`` ``[N]`` bool.
"""

from __future__ import annotations

import logging
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from geocmid.data.boxformats import ImageObjects, image_size
from geocmid.errors import DataError

log = logging.getLogger(__name__)
Sample = dict[str, Any]
#: A chip query: (image index, x0, y0) in pixels of the scaled image.
Window = tuple[int, int, int]


def read_image(path: Path) -> np.ndarray:
    """``[C, H, W]`` float32 raw pixel values of a plain image (JPEG/PNG: PIL; TIFF: rasterio).

    No georeferencing is read or needed. Palette images are expanded to RGB.

    Raises:
        DataError: the file cannot be decoded.
    """
    if path.suffix.lower() not in (".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as image:
                if image.mode in ("P", "PA", "CMYK", "YCbCr"):
                    image = image.convert("RGB")
                array = np.asarray(image)
        except OSError as error:
            raise DataError(str(path), f"cannot be read as an image ({error})",
                            "re-export it (PNG, JPEG or TIFF)") from None  # fmt: skip
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return array.astype(np.float32)
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return src.read().astype(np.float32)
    except rasterio.errors.RasterioIOError as error:
        raise DataError(str(path), f"cannot be read as an image ({error})",
                        "re-export it (PNG, JPEG or TIFF)") from None  # fmt: skip


class FolderSource:
    """The images of a detection folder with their objects (read up front, pixels on demand).

    Args:
        records: the images' objects (:class:`~geocmid.data.boxformats.ImageObjects`).
        class_names: class names in label order.
    """

    def __init__(self, records: Sequence[ImageObjects], class_names: Sequence[str]) -> None:
        self.records = list(records)
        self.class_names = list(class_names)
        self.sizes = [(r.width, r.height) for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def name(self, i: int) -> str:
        return self.records[i].image.name

    def load(self, i: int) -> tuple[np.ndarray, ImageObjects]:
        record = self.records[i]
        image = read_image(record.image)
        if image.shape[1:] != (record.height, record.width):
            raise DataError(str(record.image), "changed size while being read", "re-export it")
        return image, record


class TorchGeoDOTASource:
    """TorchGeo's :class:`~torchgeo.datasets.DOTA` (oriented boxes) as an image source.

    Args:
        dataset: a ``DOTA`` instance with ``bbox_orientation="oriented"``.
        split: split name recorded on the objects.

    TorchGeo's DOTA reader skips the ``imagesource``/``gsd`` header and does not expose the
    difficulty flag: every object counts in the mAP.
    """

    def __init__(self, dataset: Any, split: str) -> None:
        if getattr(dataset, "bbox_orientation", "oriented") != "oriented":
            raise DataError(
                "TorchGeo DOTA",
                "needs bbox_orientation='oriented' here",
                "geocmid derives the axis-aligned boxes from the corners",
            )
        self.dataset = dataset
        self.split = split
        count = {"1.0": 15, "1.5": 16, "2.0": 18}.get(str(dataset.version), len(dataset.classes))
        self.class_names = list(dataset.classes[:count])
        root = Path(dataset.root)
        self.paths = [root / p for p in dataset.sample_df["image_path"]]
        self.sizes = [image_size(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i].name

    def load(self, i: int) -> tuple[np.ndarray, ImageObjects]:
        sample = self.dataset[i]
        image = sample["image"].numpy().astype(np.float32)
        quads = sample["bbox"].reshape(-1, 4, 2).double().numpy()
        names = [self.class_names[int(k)] for k in sample["labels"]]
        width, height = self.sizes[i]
        record = ImageObjects(self.paths[i], width, height, quads, names,
                              np.zeros(len(names), bool), split=self.split)  # fmt: skip
        return image, record


class DetectionChipDataset(Dataset):
    """Chips of detection images with the objects inside them.

    Args:
        source: :class:`FolderSource` or :class:`TorchGeoDOTASource`.
        class_names: detector label ``k`` ↔ ``class_names[k - 1]``.
        chip_size: chip edge in pixels (of the scaled image).
        scale: resampling factor applied to images and objects (0.5 halves both).
        min_visible: smallest share (0-1) of an object's box (within its image) that must lie
            inside the chip for it to be kept.
        min_size: smallest width and height, in pixels, of a clipped box.
        transforms: applied to ``image`` before padding (normalisation).
        augment: random horizontal / vertical flips (training).
        cache_images: decoded images kept per process (large JPEGs cost 0.1-0.5 s each).
        difficult: ``ignore`` (difficult objects kept, flagged), ``keep`` (flag cleared).
    """

    def __init__(
        self,
        source: Any,
        class_names: Sequence[str],
        chip_size: int,
        scale: float = 1.0,
        min_visible: float = 0.3,
        min_size: float = 2.0,
        transforms: Callable[[Sample], Sample] | None = None,
        augment: bool = False,
        cache_images: int = 8,
        difficult: str = "ignore",
    ) -> None:
        self.source = source
        self.labels = {name: k for k, name in enumerate(class_names, start=1)}
        self.chip_size = int(chip_size)
        self.scale = float(scale)
        self.min_visible = min_visible
        self.min_size = min_size
        self.transforms = transforms
        self.augment = augment
        self.cache_images = cache_images
        self.difficult = difficult
        self._cache: OrderedDict[int, tuple[np.ndarray, ImageObjects]] = OrderedDict()
        self.sizes = [
            (max(1, round(w * self.scale)), max(1, round(h * self.scale))) for w, h in source.sizes
        ]

    def __len__(self) -> int:
        return len(self.source)

    def image(self, i: int) -> tuple[np.ndarray, ImageObjects]:
        """Image ``i`` scaled (raw values ``[C, H, W]``) and its objects (cached)."""
        if i in self._cache:
            self._cache.move_to_end(i)
            return self._cache[i]
        image, record = self.source.load(i)
        if self.scale != 1.0:
            w, h = self.sizes[i]
            tensor = torch.from_numpy(image)[None]
            image = torch.nn.functional.interpolate(
                tensor, size=(h, w), mode="bilinear", antialias=self.scale < 1, align_corners=False
            )[0].numpy()
        self._cache[i] = (image, record)
        while len(self._cache) > self.cache_images:
            self._cache.popitem(last=False)
        return image, record

    def __getitem__(self, window: Window) -> Sample:
        i, x0, y0 = (int(v) for v in window)
        image, record = self.image(i)
        s = self.chip_size
        chip = image[:, y0 : y0 + s, x0 : x0 + s]
        h, w = chip.shape[1:]
        sample: Sample = {"image": torch.from_numpy(np.ascontiguousarray(chip))}
        if self.transforms is not None:
            sample = self.transforms(sample)
        if (h, w) != (s, s):  # chip past a small image's edge: pad (after normalisation) with 0
            padded = torch.zeros((chip.shape[0], s, s), dtype=sample["image"].dtype)
            padded[:, :h, :w] = sample["image"]
            sample["image"] = padded
        polys, boxes, labels, difficult = self.objects(record, x0, y0, w, h)
        if self.augment:
            sample["image"], polys, boxes = self._flip(sample["image"], polys, boxes)
        sample["bbox_xyxy"] = torch.from_numpy(boxes.astype(np.float32)).reshape(-1, 4)
        sample["label"] = torch.from_numpy(labels)
        sample["polygon"] = torch.from_numpy(polys.astype(np.float32)).reshape(-1, 8)
        sample["difficult"] = torch.from_numpy(difficult)
        return sample

    def objects(
        self, record: ImageObjects, x0: int, y0: int, w: int, h: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Objects of the window → (corners ``[N, 4, 2]``, boxes ``[N, 4]`` clipped to the
        window, labels ``[N]``, difficult ``[N]``), in window pixels."""
        if not len(record):
            return np.zeros((0, 4, 2)), np.zeros((0, 4)), np.zeros(0, np.int64), np.zeros(0, bool)
        polys = record.polygons * self.scale - [x0, y0]
        full = record.boxes * self.scale - [x0, y0, x0, y0]  # clipped to the image
        clipped = np.clip(full, 0, [w, h, w, h])
        bw, bh = clipped[:, 2] - clipped[:, 0], clipped[:, 3] - clipped[:, 1]
        area = (full[:, 2] - full[:, 0]) * (full[:, 3] - full[:, 1])
        keep = (bw >= self.min_size) & (bh >= self.min_size)
        keep &= bw * bh >= self.min_visible * np.maximum(area, 1e-9)
        labels = np.array([self.labels[c] for c in record.classes], dtype=np.int64)
        difficult = record.difficult & (self.difficult == "ignore")
        return polys[keep], clipped[keep], labels[keep], difficult[keep]

    def _flip(
        self, image: Tensor, polys: np.ndarray, boxes: np.ndarray
    ) -> tuple[Tensor, np.ndarray, np.ndarray]:
        s = self.chip_size
        flips = torch.rand(2).tolist()  # torch: seeded per worker and by seed_everything
        if flips[0] < 0.5:  # left-right
            image = image.flip(-1)
            polys = polys.copy()
            polys[..., 0] = s - polys[..., 0]
            boxes = np.stack([s - boxes[:, 2], boxes[:, 1], s - boxes[:, 0], boxes[:, 3]], 1)
        if flips[1] < 0.5:  # top-bottom
            image = image.flip(-2)
            polys = polys.copy()
            polys[..., 1] = s - polys[..., 1]
            boxes = np.stack([boxes[:, 0], s - boxes[:, 3], boxes[:, 2], s - boxes[:, 1]], 1)
        return image, polys, boxes


def grid_windows(sizes: Sequence[tuple[int, int]], chip_size: int,
                 images: Sequence[int]) -> list[Window]:  # fmt: skip
    """Windows tiling each image (the last row / column flush with its edge; an image smaller
    than a chip gets one window at 0, 0, padded)."""
    out: list[Window] = []
    for i in images:
        w, h = sizes[i]
        xs = _starts(w, chip_size)
        ys = _starts(h, chip_size)
        out += [(i, x, y) for y in ys for x in xs]
    return out


def _starts(length: int, chip: int) -> list[int]:
    if length <= chip:
        return [0]
    n = int(np.ceil(length / chip))
    return sorted({min(k * chip, length - chip) for k in range(n)})


class RandomWindowSampler(Sampler[Window]):
    """``length`` random chip windows over ``images``, images drawn in proportion to their area.

    Args:
        sizes: ``(width, height)`` of every image (scaled).
        chip_size: chip edge in pixels.
        images: indices of the images to draw from.
        length: windows per epoch.
        seed: base seed (the epoch number is added, so epochs differ and runs repeat).
    """

    def __init__(self, sizes: Sequence[tuple[int, int]], chip_size: int, images: Sequence[int],
                 length: int, seed: int = 0) -> None:  # fmt: skip
        if not images:
            raise DataError("training split", "holds no image", "give the train split images")
        self.sizes, self.chip, self.images = sizes, chip_size, list(images)
        self.length, self.seed, self.epoch = length, seed, 0
        area = np.array([sizes[i][0] * sizes[i][1] for i in self.images], dtype=float)
        self.p = area / area.sum()

    def __iter__(self) -> Iterator[Window]:
        rng = np.random.default_rng(self.seed + self.epoch)
        self.epoch += 1
        picks = rng.choice(len(self.images), size=self.length, p=self.p)
        for k in picks:
            i = self.images[k]
            w, h = self.sizes[i]
            x = int(rng.integers(0, max(1, w - self.chip + 1)))
            y = int(rng.integers(0, max(1, h - self.chip + 1)))
            yield (i, x, y)

    def __len__(self) -> int:
        return self.length


__all__ = [
    "DetectionChipDataset",
    "FolderSource",
    "RandomWindowSampler",
    "TorchGeoDOTASource",
    "grid_windows",
    "read_image",
]
