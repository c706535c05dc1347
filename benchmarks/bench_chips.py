"""Pretraining-chip loading: geocmid's reader against plain rasterio reads and TorchGeo's own path.

Writes a 2x2 mosaic of generated GeoTIFFs (``--size``² each, 4 bands, uint16, tiled, deflate;
cached in ``--cache``), draws one list of random ``--chip-size``² chip queries with TorchGeo's
``RandomPatchSampler`` (TorchGeo 0.10's name for the deprecated ``RandomGeoSampler``) and
reads exactly those chips, batch 16, through a DataLoader with 0 and 2 workers, by

* ``raw``: hand-written rasterio windowed reads (one handle per file and process) into a uint16
  array, plus the per-pixel valid mask (any band ≠ nodata): the same dtype and keys that
  geocmid ships through the workers;
* ``geocmid``: the pretraining path of ``PretrainDataModule`` (``imagery_dataset(entry,
  native_dtype=True)`` wrapped in ``NodataRejectingDataset``, through
  ``geocmid.datamodules.base.loader``, which reads each batch with one ``__getitems__`` call
  into one array per key, in shared memory inside workers): chips in their file dtype
  (uint16) with ``valid``; conversion to float and normalisation run on the device after the
  loader, so not here. Before timing, the first batches of ``raw`` and ``geocmid`` are checked
  to hold the same chips and masks, bit for bit;
* ``torchgeo``: a plain ``torchgeo.datasets.RasterDataset`` over the same files with the same
  queries (TorchGeo's own path; it merges the tiles a chip touches with ``rasterio.merge`` and
  ships float32, which is its design, so its figures include that).

Measurements (all paths alternated within each round, order rotating, median with IQR and
min–max over ``--rounds`` rounds, ratio to ``raw`` per round):

* ``cold``: every round builds fresh datasets and a fresh DataLoader (new GDAL handles, empty
  block caches, new worker processes, so worker start-up is included); the tiles are in the OS
  page cache after the first round, so cold means "not decoded yet", not "on disk";
* ``warm``: one DataLoader per path built once, ``persistent_workers=True`` when workers > 0,
  one untimed pass, then timed passes over the same chips (each batch goes to the same worker
  every pass, so its GDAL block cache holds the blocks).

    python benchmarks/bench_chips.py [--size 4096] [--chips 512] [--workers 0 2] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch.utils.data import DataLoader, Dataset, Sampler
from torchgeo.datasets import RasterDataset
from torchgeo.datasets.utils import stack_samples
from torchgeo.samplers import RandomPatchSampler

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import imagery_dataset
from geocmid.data.sampling import NodataRejectingDataset
from geocmid.data.synthetic.landscape import Landscape
from geocmid.data.synthetic.scene import write_scene
from geocmid.datamodules.base import loader as geocmid_loader

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fairness

RES = 2.0
ORIGIN = (500_000.0, 5_000_000.0)
BATCH = 16


def make_mosaic(folder: Path, size: int) -> list[Path]:
    landscape = Landscape(seed=0, center=(ORIGIN[0] + size * RES, ORIGIN[1] - size * RES))
    paths = []
    for i in range(2):
        for j in range(2):
            path = folder / f"tile_{i}{j}.tif"
            if not path.exists():
                t0 = time.perf_counter()
                write_scene(
                    path, width=size, height=size,
                    origin=(ORIGIN[0] + j * size * RES, ORIGIN[1] - i * size * RES), res=RES,
                    landscape=landscape, nodata_border=False,
                )  # fmt: skip
                print(f"wrote {path.name} in {time.perf_counter() - t0:.1f} s", flush=True)
            paths.append(path)
    return paths


class RawWindows(Dataset):
    """Plain rasterio: each chip read window by window from the files it touches, uint16 out,
    with the valid mask (any band ≠ nodata)."""

    def __init__(self, files: list[Path], res: float, bands: int, nodata: int = 0) -> None:
        self.files = [str(f) for f in files]
        self.res = res
        self.bands = bands
        self.nodata = nodata
        self.handles: dict[str, Any] = {}
        self.pid = os.getpid()
        self.bounds = []
        for f in self.files:
            with rasterio.open(f) as src:
                self.bounds.append(src.bounds)

    def __getitem__(self, query: tuple[slice, slice]) -> dict[str, Any]:
        x, y = query[0], query[1]
        width = round((x.stop - x.start) / self.res)
        height = round((y.stop - y.start) / self.res)
        if self.pid != os.getpid():  # never share GDAL handles across a fork
            self.handles, self.pid = {}, os.getpid()
        out = np.full((self.bands, height, width), self.nodata, np.uint16)
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
        valid = (out != self.nodata).any(0)
        return {"image": torch.from_numpy(out), "valid": torch.from_numpy(valid)}

    def __len__(self) -> int:
        return 0


class ListSampler(Sampler):
    """The same chip queries, in the same order, for every path and pass."""

    def __init__(self, queries: list[Any]) -> None:
        self.queries = queries

    def __iter__(self) -> Iterator[Any]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def one_pass(loader: DataLoader) -> tuple[int, str]:
    n, dtype = 0, ""
    for batch in loader:
        n += len(batch["image"])
        dtype = str(batch["image"].dtype)
    return n, dtype


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, default=4096, help="tile edge in pixels")
    parser.add_argument("--chips", type=int, default=512, help="chips read per pass")
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per measurement")
    parser.add_argument("--modes", nargs="+", default=["cold", "warm"], choices=["cold", "warm"])
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "geocmid-bench-chips"
    )
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    # DataLoader workers run torch single-threaded; do the same in the main process so that
    # workers=0 measures reading, not intra-op thread start-up on small tensors (all paths alike).
    torch.set_num_threads(1)
    folder = args.cache / str(args.size)
    folder.mkdir(parents=True, exist_ok=True)
    files = make_mosaic(folder, args.size)
    cat = folder / "catalog"
    cat.mkdir(exist_ok=True)
    (cat / "mosaic.yaml").write_text(
        "kind: imagery\npaths: ../tile_*.tif\nbands: [blue, green, red, nir]\nnodata: 0\n"
    )
    entry = Catalog(cat).get("mosaic")

    class Plain(RasterDataset):
        filename_glob = "tile_*.tif"

    plain = Plain([str(f) for f in files])
    queries = list(RandomPatchSampler(plain, size=args.chip_size, length=args.chips, generator=0))

    def datasets() -> dict[str, Dataset]:
        """Fresh readers: new GDAL handles start with an empty block cache."""
        geo = imagery_dataset(entry, native_dtype=True)  # as PretrainDataModule reads
        return {
            "raw": RawWindows(files, RES, bands=4),
            "geocmid": NodataRejectingDataset(geo, args.chip_size, max_nodata=1.0),
            "torchgeo": Plain([str(f) for f in files]),
        }

    def make_loader(name: str, ds: Dataset, workers: int) -> DataLoader:
        sampler = ListSampler(queries)
        if name == "geocmid":  # geocmid's own loader (persistent workers when workers > 0)
            return geocmid_loader(ds, sampler, BATCH, workers)
        return DataLoader(
            ds, batch_size=BATCH, sampler=sampler, num_workers=workers,
            collate_fn=stack_samples, persistent_workers=workers > 0,
        )  # fmt: skip

    check = {n: next(iter(make_loader(n, d, 0))) for n, d in datasets().items() if n != "torchgeo"}
    for key in ("image", "valid"):
        if not torch.equal(check["raw"][key], check["geocmid"][key]):
            raise SystemExit(f"raw and geocmid read different '{key}' for the same chips")
    print(
        f"{len(files)} tiles of {args.size}², {len(queries)} chips of {args.chip_size}², "
        f"batch {BATCH}, {args.rounds} rounds; {fairness.load_average()}",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    dtypes: dict[str, str] = {}
    for workers in args.workers:
        for mode in args.modes:
            fns: dict[str, Callable[[], None]] = {}
            if mode == "warm":
                loaders = {n: make_loader(n, d, workers) for n, d in datasets().items()}
                for n, ld in loaders.items():
                    dtypes[n] = one_pass(ld)[1]  # warm-up pass (forks persistent workers)

                def warm(ld: DataLoader) -> Callable[[], None]:
                    def run() -> None:
                        one_pass(ld)

                    return run

                fns = {n: warm(ld) for n, ld in loaders.items()}
            else:
                # built before timing (indexing files is set-up, not reading); none has opened a
                # GDAL handle yet, so each timed pass starts with empty block caches
                fresh: dict[str, list[Dataset]] = {"raw": [], "geocmid": [], "torchgeo": []}
                for _ in range(args.rounds + 1):
                    for n, d in datasets().items():
                        fresh[n].append(d)

                def cold(
                    name: str, pool: list[Dataset], workers: int = workers
                ) -> Callable[[], None]:
                    def run() -> None:
                        ld = make_loader(name, pool.pop(), workers)
                        dtypes[name] = one_pass(ld)[1]
                        del ld  # persistent workers end with their loader

                    return run

                fns = {n: cold(n, pool) for n, pool in fresh.items()}
            times = fairness.alternate(fns, args.rounds, warmup=0 if mode == "warm" else 1)
            print(f"\nworkers={workers} {mode}; {fairness.load_average()}")
            row: dict[str, Any] = {
                "workers": workers, "mode": mode, "load": fairness.load_average()
            }  # fmt: skip
            for name, ts in times.items():
                rate = fairness.spread([len(queries) / t for t in ts])
                ratio = fairness.paired_ratio(times["raw"], ts)
                row[name] = {"chips_s": rate, "x_raw": ratio, "dtype": dtypes.get(name)}
                extra = "" if name == "raw" else f"; {name}/raw {fairness.fmt(ratio, 2)}"
                print(f"  {name:<8} ({dtypes.get(name)}) chips/s {fairness.fmt(rate, 1)}{extra}")
            results.append(row)
            if mode == "warm":
                del loaders
    if dtypes.get("raw") != dtypes.get("geocmid"):
        raise SystemExit(f"raw ships {dtypes.get('raw')} but geocmid {dtypes.get('geocmid')}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
