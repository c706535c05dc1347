"""Folder-per-class image trees (UC Merced style) as a TorchGeo ``NonGeoDataset``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torchgeo.datasets import NonGeoDataset

from geocmid.data.chipsets import read_image

Sample = dict[str, Any]


class ImageFolderDataset(NonGeoDataset):
    """Images under ``root/<class>/`` with integer labels in ``classes`` order.

    Samples: ``image`` ``[C, H, W]`` float32 (raw pixel values), ``label`` long scalar.
    """

    def __init__(
        self,
        root: Path,
        classes: list[str] | None = None,
        extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".tif", ".tiff"),
        transforms: Callable[[Sample], Sample] | None = None,
        samples: list[tuple[Path, int]] | None = None,
    ) -> None:
        self.root = Path(root)
        self.classes = classes or sorted(d.name for d in self.root.iterdir() if d.is_dir())
        self.transforms = transforms
        exts = tuple(e.lower() for e in extensions)
        # ``samples``: (file, class index) pairs found elsewhere (split folders, recursion:
        # geocmid.data.chipsets.image_folder_records)
        self.samples = samples if samples is not None else [
            (f, label)
            for label, name in enumerate(self.classes)
            for f in sorted((self.root / name).iterdir())
            if f.suffix.lower() in exts
        ]  # fmt: skip

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        path, label = self.samples[index]
        array = read_image(path)  # Pillow for JPEG/PNG, rasterio for TIFF
        sample: Sample = {
            "image": torch.from_numpy(array.astype(np.float32)),
            "label": torch.tensor(label, dtype=torch.long),
        }
        if self.transforms is not None:
            sample = self.transforms(sample)
        return sample
