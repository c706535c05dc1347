"""Chip-folder pretraining loader throughput against plain Pillow / rasterio decoding.

Reads the same image files (by default the NWPU-RESISC45 train images of
``../shared/data/chips``; any folder with ``--root``) through

* ``plain``: a hand-written Dataset: Pillow decode (rasterio for TIFF), the same random largest
  square, resized to ``--size`` with Pillow (bilinear), returned as a uint8 ``[C, S, S]`` tensor;
* ``geocmid``: the pretraining loader path (:class:`geocmid.datamodules.chip_pretrain.SquareChips`,
  what :class:`~geocmid.datamodules.ChipPretrainDataModule` feeds the two-view transform):
  the same output dtype and shape, the same work,

through the same DataLoader set-up (batch 32, shuffled), with 0 and 2 workers, alternated in
one process (``fairness.alternate``), and prints images/s with the spread and the median of the
per-round ratios geocmid / plain (target >= 0.9).

    python benchmarks/bench_chip_loader.py [--root DIR] [--images 256] [--size 224] [--rounds 5]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from fairness import alternate, fmt, load_average, paired_ratio, spread
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from geocmid.data.chipsets import list_images, read_image
from geocmid.datamodules.chip_pretrain import SquareChips

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[2]
    / "shared/data/chips/classification/nwpu-resisc12/NWPU-RESISC12/train"
)


class PlainChips(Dataset):
    """Pillow (rasterio for TIFF) decode + random largest square + Pillow bilinear resize."""

    def __init__(self, files: list[Path], size: int) -> None:
        self.files, self.size = files, size

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        path = self.files[i]
        if path.suffix.lower() in (".tif", ".tiff"):
            array = read_image(path).transpose(1, 2, 0)
            img = Image.fromarray(array.squeeze())
        else:
            img = Image.open(path)
            img.load()
        side = min(img.size)
        x = int(torch.randint(img.width - side + 1, ()))
        y = int(torch.randint(img.height - side + 1, ()))
        img = img.crop((x, y, x + side, y + side)).resize(
            (self.size, self.size), Image.Resampling.BILINEAR
        )
        array = np.asarray(img)
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        return {"image": torch.from_numpy(np.ascontiguousarray(array))}


def consume(dataset: Dataset, workers: int) -> int:
    loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=workers)
    n = 0
    for batch in loader:
        n += len(batch["image"])
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    files = list_images(args.root, (".jpg", ".jpeg", ".png", ".tif", ".tiff"))[: args.images]
    if not files:
        raise SystemExit(f"no images under {args.root}")
    ours, plain = SquareChips(files, args.size), PlainChips(files, args.size)
    a, b = ours[0]["image"], plain[0]["image"]
    assert a.dtype == b.dtype and a.shape == b.shape, (a.shape, b.shape)
    print(f"{len(files)} images from {args.root}, {tuple(a.shape)} {a.dtype}; {load_average()}")
    for workers in args.workers:
        times = alternate(
            {"plain": lambda w=workers: consume(plain, w),
             "geocmid": lambda w=workers: consume(ours, w)},
            rounds=args.rounds,
        )  # fmt: skip
        for name, seconds in times.items():
            rate = [len(files) / s for s in seconds]
            print(f"workers={workers} {name:8s} images/s {fmt(spread(rate), 1)}")
        ratio = paired_ratio(times["plain"], times["geocmid"])  # time ratio = throughput ratio
        print(f"workers={workers} geocmid/plain throughput ratio {fmt(ratio, 3)}")
    print(load_average())


if __name__ == "__main__":
    main()
