"""Samplers: rank-aware random chips, nodata rejection and spatially disjoint splits."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import shapely
import torch
from shapely.geometry.base import BaseGeometry
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import RandomPatchSampler

Sample = dict[str, Any]


def rank_and_world_size() -> tuple[int, int]:
    """This process's rank and the world size (torch.distributed, else launcher env vars)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def rank_seed(seed: int, rank: int | None = None) -> int:
    """Seed for ``rank``: every rank draws different chips, reproducibly."""
    rank = rank_and_world_size()[0] if rank is None else rank
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def nodata_fraction(sample: Sample) -> float:
    """Share of pixels with no data in any date/band (0 when the sample has no ``valid``)."""
    valid = sample.get("valid")
    # numpy: a torch reduction pays thread-pool start-up that dwarfs the work on one chip
    return 0.0 if valid is None else 1.0 - float(valid.numpy().mean())


class NodataRejectingDataset(Dataset):
    """Wraps a GeoDataset; a chip with more than ``max_nodata`` nodata is replaced by a new draw.

    Replacement chips are drawn uniformly inside the dataset's footprint (or ``region`` of it,
    e.g. one split, so replacements never cross into another split), on its pixel grid,
    with a generator seeded per rank and worker, so epochs keep their length and ranks stay
    distinct. After ``max_tries`` the least-empty candidate is returned (and counted).

    Args:
        dataset: the GeoDataset to read chips from (samples must carry ``valid``).
        size: chip size in pixels.
        max_nodata: largest accepted nodata fraction, 0-1.
        seed: base seed of the replacement draws.
        max_tries: candidates drawn per requested chip before giving up.
        region: where replacement chips may lie (default: the whole footprint).
    """

    def __init__(
        self, dataset: GeoDataset, size: int, max_nodata: float = 0.5, seed: int = 0,
        max_tries: int = 20, region: BaseGeometry | None = None,
    ) -> None:  # fmt: skip
        self.dataset = dataset
        self.size = size
        self.max_nodata = max_nodata
        self.seed = seed
        self.max_tries = max_tries
        self.rejected = 0
        self.gave_up = 0
        self._rng: np.random.Generator | None = None
        res = dataset.res
        half = math.hypot(size * res[0], size * res[1]) / 2
        area = dataset.index.geometry.union_all()
        if region is not None:
            area = area & region
        core = area.buffer(-half)
        self._region = core if not core.is_empty else area

    @property
    def rng(self) -> np.random.Generator:
        if self._rng is None:
            worker = get_worker_info()
            self._rng = np.random.default_rng([rank_seed(self.seed), worker.id if worker else 0])
        return self._rng

    def random_query(self) -> tuple[slice, slice]:
        """A chip on the pixel grid whose centre lies in the (eroded) footprint."""
        xres, yres = self.dataset.res
        x0, y0, _, _ = self.dataset.index.total_bounds
        point = self._region.representative_point()
        for _ in range(100):
            minx, miny, maxx, maxy = self._region.bounds
            candidate = shapely.Point(self.rng.uniform(minx, maxx), self.rng.uniform(miny, maxy))
            if self._region.contains(candidate):
                point = candidate
                break
        col = round((point.x - x0) / xres - self.size / 2)
        row = round((point.y - y0) / yres - self.size / 2)
        xmin, ymin = x0 + col * xres, y0 + row * yres
        return slice(xmin, xmin + self.size * xres), slice(ymin, ymin + self.size * yres)

    def __getitem__(self, query: Any) -> Sample:
        best: Sample | None = None
        best_fraction = 2.0
        for attempt in range(self.max_tries):
            sample = self.dataset[query if attempt == 0 else self.random_query()]
            fraction = nodata_fraction(sample)
            if fraction <= self.max_nodata:
                return sample
            self.rejected += 1
            if fraction < best_fraction:
                best, best_fraction = sample, fraction
        self.gave_up += 1
        assert best is not None
        return best

    def __len__(self) -> int:
        return len(self.dataset)


class FixedSampler(Sampler):
    """The same list of queries every epoch (validation and test chips)."""

    def __init__(self, queries: Sequence[Any]) -> None:
        self.queries = list(queries)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


def spatial_split_regions(
    footprint: BaseGeometry,
    fractions: Sequence[float],
    block_size: float,
    seed: int = 0,
) -> list[BaseGeometry]:
    """Cut ``footprint`` into square blocks and deal them out to splits by area.

    Chips sampled inside one region never overlap another region (samplers erode regions by
    the chip's half-diagonal), which makes train / val / test spatially disjoint.

    Args:
        footprint: the area covered by the data, in the dataset's CRS.
        fractions: share of the area of each split (e.g. 0.7, 0.15, 0.15); sums to 1.
        block_size: block edge in CRS units; at least a few chips wide.
        seed: seed of the block assignment.
    """
    if not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"split fractions {list(fractions)} do not sum to 1")
    xmin, ymin, xmax, ymax = footprint.bounds
    blocks = [
        cell
        for x in np.arange(xmin, xmax, block_size)
        for y in np.arange(ymin, ymax, block_size)
        if not (
            cell := footprint.intersection(shapely.box(x, y, x + block_size, y + block_size))
        ).is_empty
    ]
    order = np.random.default_rng(seed).permutation(len(blocks))
    total = sum(b.area for b in blocks)
    regions: list[list[BaseGeometry]] = [[] for _ in fractions]
    area = [0.0 for _ in fractions]
    # Deal blocks to the split furthest below its target share; every split gets a block first.
    for i, block_index in enumerate(order):
        if i < len(fractions):
            target = i
        else:
            target = int(np.argmin([a / total - f for a, f in zip(area, fractions, strict=True)]))
        regions[target].append(blocks[block_index])
        area[target] += blocks[block_index].area
    return [shapely.union_all(r) for r in regions]


def random_chips(
    dataset: GeoDataset, size: int, length: int, roi: BaseGeometry | None, seed: int
) -> RandomPatchSampler:
    """TorchGeo's ``RandomPatchSampler`` seeded for this rank."""
    return RandomPatchSampler(dataset, size=size, length=length, roi=roi, generator=rank_seed(seed))
