"""Pretraining-chip throughput: geocmid's reader against plain rasterio windowed reads.

Writes a 2x2 mosaic of generated GeoTIFFs (4096² each by default, 4 bands, uint16, tiled,
deflate), draws one list of random 256² chip windows, and reads exactly those windows with

* ``raw``: hand-written rasterio windowed reads (one cached handle per file and worker),
* ``torchgeo``: a plain TorchGeo ``RasterDataset`` (rasterio.merge per chip),
* ``geocmid``: the pretraining loader path (``CatalogRasterDataset`` + valid mask + nodata
  rejection, chips in their file type; conversion to float and normalisation run per batch on
  the device, after the loader),

through the same DataLoader set-up (batch 16), with 0 and 2 workers. Prints chips/s and the
ratio of each path to ``raw`` at the same worker count (target for geocmid: >= 0.9).

    python benchmarks/bench_chips.py [--size 4096] [--chips 1024] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import stack_samples
from torchgeo.samplers import RandomPatchSampler

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import imagery_dataset
from geocmid.data.sampling import NodataRejectingDataset
from geocmid.data.synthetic.landscape import Landscape
from geocmid.data.synthetic.scene import write_scene

RES = 2.0
ORIGIN = (500_000.0, 5_000_000.0)


def make_mosaic(folder: Path, size: int) -> list[Path]:
    landscape = Landscape(seed=0, center=(ORIGIN[0] + size * RES, ORIGIN[1] - size * RES))
    paths = []
    for i in range(2):
        for j in range(2):
            path = folder / f"tile_{i}{j}.tif"
            if not path.exists():
                t0 = time.perf_counter()
                write_scene(
                    path,
                    width=size,
                    height=size,
                    origin=(ORIGIN[0] + j * size * RES, ORIGIN[1] - i * size * RES),
                    res=RES,
                    landscape=landscape,
                    nodata_border=False,
                )
                print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s")
            paths.append(path)
    return paths


class RawWindows(Dataset):
    """Plain rasterio: each chip read window by window from the files it touches."""

    def __init__(self, files: list[Path], res: float) -> None:
        self.files = [str(f) for f in files]
        self.res = res
        self.handles: dict[str, rasterio.DatasetReader] = {}
        self.pid = os.getpid()
        self.bounds = []
        for f in self.files:
            with rasterio.open(f) as src:
                self.bounds.append(src.bounds)

    def __getitem__(self, query: tuple[slice, slice]) -> dict:
        x, y = query
        width = round((x.stop - x.start) / self.res)
        height = round((y.stop - y.start) / self.res)
        if self.pid != os.getpid():  # never share GDAL handles across a fork
            self.handles, self.pid = {}, os.getpid()
        out = np.zeros((4, height, width), np.uint16)
        for path, b in zip(self.files, self.bounds, strict=True):
            if x.start >= b.right or x.stop <= b.left or y.start >= b.top or y.stop <= b.bottom:
                continue
            src = self.handles.get(path) or self.handles.setdefault(path, rasterio.open(path))
            col, row = round((x.start - b.left) / self.res), round((b.top - y.stop) / self.res)
            c0, r0 = max(col, 0), max(row, 0)
            c1, r1 = min(col + width, src.width), min(row + height, src.height)
            src.read(
                window=Window(c0, r0, c1 - c0, r1 - r0),
                out=out[:, r0 - row : r1 - row, c0 - col : c1 - col],
            )
        return {"image": torch.from_numpy(out.astype(np.float32))}

    def __len__(self) -> int:
        return 0


class ListSampler(torch.utils.data.Sampler):
    def __init__(self, queries: list) -> None:
        self.queries = queries

    def __iter__(self):
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def chips_per_second(dataset: Dataset, queries: list, workers: int, batch: int = 16) -> float:
    loader = DataLoader(
        dataset,
        batch_size=batch,
        sampler=ListSampler(queries),
        num_workers=workers,
        collate_fn=stack_samples,
    )
    start = time.perf_counter()
    n = sum(len(b["image"]) for b in loader)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="tile edge in pixels")
    parser.add_argument("--chips", type=int, default=1024, help="chips read per measurement")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--repeats", type=int, default=2, help="warm passes per path (best kept)")
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "geocmid-bench-chips"
    )
    args = parser.parse_args()
    # DataLoader workers run torch single-threaded; do the same in the main process so that
    # workers=0 measures reading, not intra-op thread start-up on tiny tensors (all paths alike).
    torch.set_num_threads(1)
    args.cache.mkdir(parents=True, exist_ok=True)
    files = make_mosaic(args.cache, args.size)
    cat = args.cache / "catalog"
    cat.mkdir(exist_ok=True)
    (cat / "mosaic.yaml").write_text(
        "kind: imagery\npaths: ../tile_*.tif\nbands: [blue, green, red, nir]\nnodata: 0\n"
    )
    entry = Catalog(cat).get("mosaic")
    geo = imagery_dataset(entry)
    queries = list(RandomPatchSampler(geo, size=args.chip_size, length=args.chips, generator=0))

    class Plain(RasterDataset):
        filename_glob = "tile_*.tif"

    def paths() -> dict[str, Dataset]:
        """Fresh readers: new GDAL handles start with an empty block cache."""
        geocmid = imagery_dataset(entry, native_dtype=True)  # as PretrainDataModule reads
        return {
            "raw": RawWindows(files, RES),
            "torchgeo": Plain([str(f) for f in files]),
            "geocmid": NodataRejectingDataset(geocmid, args.chip_size, max_nodata=1.0),
        }

    print(
        f"{len(files)} tiles of {args.size}², {len(queries)} chips of {args.chip_size}², batch 16"
    )
    print("cold = first read of the chips by fresh handles (tiles in the OS page cache, blocks not")
    print("decoded yet); warm = best of the next passes (decoded blocks in GDAL's cache)")
    for workers in args.workers:
        cold: dict[str, float] = {}
        warm: dict[str, float] = {}
        for name, ds in paths().items():
            cold[name] = chips_per_second(ds, queries, workers)
            warm[name] = max(chips_per_second(ds, queries, workers) for _ in range(args.repeats))
        for label, rates in (("cold", cold), ("warm", warm)):
            line = ", ".join(
                f"{n} {r:7.1f} chips/s ({r / rates['raw']:.2f}x raw)" for n, r in rates.items()
            )
            print(f"workers={workers} {label}: {line}")


if __name__ == "__main__":
    main()
