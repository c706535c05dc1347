"""Samplers: rank-aware random chips, nodata rejection, spatially disjoint splits, and how
many chips a region can actually yield (the preflight of every training run).

Where a chip may lie: a chip of ``S`` pixels lies inside a region when its centre lies in the
region eroded by ``S/2`` along x and along y (:func:`chip_centres`; half a pixel of tolerance, so
a scene exactly one chip wide yields that one chip). TorchGeo's ``RandomPatchSampler`` erodes
by half the chip *diagonal* ("purposefully conservative"), so a tile or split block narrower
than ``S·√2`` yielded no chip at all although whole chips fit in it; geocmid reads chips
axis-aligned on the file's grid (no rotation augmentation reads outside the chip), so the
square erosion is exact for the axis-aligned regions it samples (scenes, tiles, split blocks).
:class:`ChipSampler` is ``RandomPatchSampler`` with that erosion.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import shapely
import torch
from geopandas import GeoSeries
from shapely.geometry.base import BaseGeometry
from torch.utils.data import Dataset, Sampler, get_worker_info
from torchgeo.datasets import GeoDataset
from torchgeo.samplers import RandomPatchSampler

Sample = dict[str, Any]


class ChipBatch(Sequence[Sample]):
    """Samples of one batch already stacked: what a dataset's ``__getitems__`` returns when it
    read the whole batch into one preallocated array per key.

    torch's DataLoader hands ``__getitems__``'s result to the collate function:
    :func:`geocmid.datamodules.base.collate` returns :attr:`batch` as it is (no per-sample
    dicts, no second copy by ``torch.stack``); any other collate function sees a sequence of
    ordinary samples (views into the batch), so the result is the same either way.

    Args:
        batch: key → tensor ``[B, ...]`` (every tensor has the same first dimension).
    """

    def __init__(self, batch: dict[str, torch.Tensor]) -> None:
        self.batch = batch
        self._len = len(next(iter(batch.values()))) if batch else 0

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Sample:  # type: ignore[override]
        if not -self._len <= index < self._len:
            raise IndexError(f"sample {index} of a batch of {self._len}")
        return {key: value[index] for key, value in self.batch.items()}

    def fits(self, sample: Sample) -> bool:
        """Whether ``sample`` has this batch's keys, dtypes and shapes (can replace one)."""
        return sample.keys() == self.batch.keys() and all(
            isinstance(v, torch.Tensor)
            and v.dtype == self.batch[k].dtype
            and v.shape == self.batch[k].shape[1:]
            for k, v in sample.items()
        )

    def replace(self, index: int, sample: Sample) -> None:
        """Copy ``sample`` (one that :meth:`fits`) into position ``index``."""
        for key, value in sample.items():
            self.batch[key][index] = value

    def nodata_fractions(self) -> list[float]:
        """:func:`nodata_fraction` of every sample (``valid [B, H, W]``), in order."""
        valid = self.batch.get("valid")
        if valid is None:
            return [0.0] * self._len
        array = valid.numpy()
        size = max(array[0].size, 1) if self._len else 1
        # per chip, as nodata_fraction counts (same float, bit for bit)
        return [1.0 - np.count_nonzero(chip) / size for chip in array]


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
    if valid is None:
        return 0.0
    # count_nonzero: ~15 µs a 256² chip, against ~100 µs for numpy's bool mean and more for a
    # torch reduction (thread-pool start-up)
    array = valid.numpy()
    return 1.0 - np.count_nonzero(array) / max(array.size, 1)


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
        area = dataset.index.geometry.union_all()
        if region is not None:
            area = area & region
        core = chip_centres(area, size, dataset.res)
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
        if self.max_tries < 1:
            raise ValueError(f"max_tries is {self.max_tries}: no chip can be read")
        sample = self.dataset[query]
        return self._accept(sample, nodata_fraction(sample))

    def _accept(self, sample: Sample, fraction: float) -> Sample:
        """``sample`` (the requested chip, ``fraction`` nodata) or the first of up to
        ``max_tries - 1`` replacement draws within ``max_nodata``, else the least empty."""
        if fraction <= self.max_nodata:
            return sample
        self.rejected += 1
        best, best_fraction = sample, fraction
        for _ in range(1, self.max_tries):
            sample = self.dataset[self.random_query()]
            fraction = nodata_fraction(sample)
            if fraction <= self.max_nodata:
                return sample
            self.rejected += 1
            if fraction < best_fraction:
                best, best_fraction = sample, fraction
        self.gave_up += 1
        return best

    def __getitems__(self, queries: Sequence[Any]) -> Sequence[Sample]:
        """The samples of a batch of queries (torch's DataLoader calls this with a batch
        sampler): read in one call where the dataset can (its own ``__getitems__``, e.g. a
        :class:`ChipBatch`), then chips with too much nodata replaced one by one, in order, so
        the chips, draws and counters are those of ``[self[q] for q in queries]``."""
        getitems = getattr(self.dataset, "__getitems__", None)
        if getitems is None or self.max_tries < 1:
            return [self[q] for q in queries]
        samples = getitems(list(queries))
        if isinstance(samples, ChipBatch):
            fractions = samples.nodata_fractions()
        else:
            samples = list(samples)
            fractions = [nodata_fraction(sample) for sample in samples]
        for i, fraction in enumerate(fractions):
            if fraction <= self.max_nodata:
                continue
            chosen = self._accept(samples[i], fraction)
            if isinstance(samples, ChipBatch):
                if samples.fits(chosen):
                    samples.replace(i, chosen)
                    continue
                samples = list(samples)  # a replacement of another kind: plain samples
            samples[i] = chosen
        return samples

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


#: Tolerance of :func:`chip_centres`, in pixels (under half a pixel: the snapped chip stays in).
CENTRE_TOLERANCE = 0.49


def chip_centres(
    region: BaseGeometry,
    size: int,
    res: tuple[float, float] | Sequence[float],
    tolerance: float = CENTRE_TOLERANCE,
) -> BaseGeometry:
    """Where the centre of a ``size``-pixel chip may lie so that the chip is inside ``region``.

    The region eroded by a square of half-edge ``size/2 - 0.49`` pixels (mitre joins: exact for
    regions made of axis-aligned boxes; edges at an angle erode slightly less). Empty when no
    chip fits.

    Args:
        region: polygon(s) in CRS units.
        size: chip edge in pixels.
        res: pixel size ``(x, y)`` in CRS units.
        tolerance: pixels the centre may lie outside the exact erosion (0.5: its area in
            pixels is the number of distinct chip positions).
    """
    rx, ry = abs(float(res[0])), abs(float(res[1]))
    if region.is_empty:
        return region
    half = (size / 2 - tolerance) * rx
    if not math.isclose(rx, ry):  # erode a region scaled to square pixels, then scale back
        import shapely.affinity

        squashed = shapely.affinity.scale(region, 1.0, rx / ry, origin=(0, 0))
        core = squashed.buffer(-half, join_style="mitre")
        return shapely.affinity.scale(core, 1.0, ry / rx, origin=(0, 0))
    return region.buffer(-half, join_style="mitre")


class ChipSampler(RandomPatchSampler):
    """TorchGeo's ``RandomPatchSampler`` whose chips may lie anywhere they fit.

    Chip centres are drawn in :func:`chip_centres` of the region (square erosion) instead of the
    region eroded by half the chip diagonal, so tiles and split blocks between one chip and
    ``chip·√2`` wide yield chips. Same arguments as ``RandomPatchSampler``; ``size`` in pixels.
    """

    def __init__(
        self, dataset: GeoDataset, *, size: int, length: int | None = None,
        roi: BaseGeometry | None = None, generator: Any = None,
    ) -> None:  # fmt: skip
        super().__init__(dataset, size=size, length=length, roi=roi, generator=generator)
        self.chip_size = int(size)
        self.centres = chip_centres(self.geometry, int(size), dataset.res)
        self.series = GeoSeries([self.centres])

    def __iter__(self) -> Iterator[tuple[slice, slice]]:
        if self.centres.is_empty:
            return iter(())
        return super().__iter__()


def random_chips(
    dataset: GeoDataset, size: int, length: int, roi: BaseGeometry | None, seed: int
) -> ChipSampler:
    """A :class:`ChipSampler` seeded for this rank."""
    return ChipSampler(dataset, size=size, length=length, roi=roi, generator=rank_seed(seed))


# ------------------------------------------------------------------------------------------------
# preflight: how many chips a region can yield
@dataclass
class SplitCapacity:
    """How many chips a region (a split, or a whole entry) can yield.

    Attributes:
        name: the split (``train``, ``val``, ``test``, ``pretraining``).
        chip_size: chip edge in pixels.
        positions: distinct chip positions on the pixel grid whose chip lies inside the region.
        probed: chips read to estimate the nodata share (up to :data:`PROBE_CHIPS`).
        usable: probed chips with at most ``max_nodata`` nodata (and, with labels, at least one
            labelled pixel).
        max_nodata: the limit used, 0-1.
        largest_part: width × height in pixels of the largest part of the region.
        mean_nodata: mean nodata fraction of the probed chips, 0-1.
    """

    name: str
    chip_size: int
    positions: int
    probed: int = 0
    usable: int = 0
    max_nodata: float = 1.0
    largest_part: tuple[int, int] = (0, 0)
    mean_nodata: float = 0.0

    @property
    def chips(self) -> int:
        """Estimated usable distinct chips: positions × the usable share of the probes."""
        if self.probed == 0:
            return self.positions
        return round(self.positions * self.usable / self.probed)

    def describe(self) -> str:
        """One sentence with the numbers."""
        w, h = self.largest_part
        text = (
            f"split '{self.name}' holds {self.positions} distinct {self.chip_size}-px chip "
            f"position(s) (largest part {w}×{h} px)"
        )
        if self.probed:
            text += (
                f"; {self.usable} of {self.probed} probed chips have at most "
                f"{self.max_nodata:.0%} nodata and a valid target (mean nodata "
                f"{self.mean_nodata:.0%}), about {self.chips} usable chip(s)"
            )
        return text


#: Chips read per region by :func:`split_capacity` to estimate the nodata share.
PROBE_CHIPS = 16


def _largest_part(region: BaseGeometry, res: Sequence[float]) -> tuple[int, int]:
    parts = list(getattr(region, "geoms", [region]))
    if not parts or region.is_empty:
        return (0, 0)
    big = max(parts, key=lambda g: g.area)
    xmin, ymin, xmax, ymax = big.bounds
    return (round((xmax - xmin) / abs(res[0])), round((ymax - ymin) / abs(res[1])))


def usable_chip(sample: Sample, max_nodata: float, ignore_index: int | None = 255) -> bool:
    """A chip training can use: at most ``max_nodata`` nodata and, when it has a ``mask``, at
    least one pixel that is not ``ignore_index``."""
    if nodata_fraction(sample) > max_nodata:
        return False
    mask = sample.get("mask")
    if mask is not None and ignore_index is not None:
        return bool((mask != ignore_index).any())
    return True


def split_capacity(
    dataset: GeoDataset | Dataset,
    region: BaseGeometry,
    chip_size: int,
    res: Sequence[float],
    *,
    name: str = "train",
    max_nodata: float = 1.0,
    probe: int = PROBE_CHIPS,
    seed: int = 0,
    ignore_index: int | None = 255,
    origin: tuple[float, float] = (0.0, 0.0),
) -> SplitCapacity:
    """Count the chips ``region`` can yield and probe their nodata share.

    Positions are the distinct chip origins on the pixel grid whose chip lies inside ``region``
    (the area of :func:`chip_centres` in pixels). Up to ``probe`` chips at random positions
    (seeded) are read through ``dataset`` as training reads them; the usable share
    (:func:`usable_chip`) scales the positions into an estimate of usable chips.

    Args:
        dataset: the dataset chips are read from (``dataset[slice_x, slice_y]``).
        region: the split's region in CRS units.
        chip_size: chip edge in pixels.
        res: pixel size ``(x, y)``.
        name: split name for messages.
        max_nodata: largest accepted nodata fraction.
        probe: chips read (0: count positions only).
        seed: seed of the probe positions.
        ignore_index: mask value of unlabelled pixels.
        origin: a point of the pixel grid (the dataset's ``xmin, ymin``) to snap chips to.
    """
    rx, ry = abs(float(res[0])), abs(float(res[1]))
    centres = chip_centres(region, chip_size, (rx, ry))
    counted = chip_centres(region, chip_size, (rx, ry), tolerance=0.5)
    positions = 0 if centres.is_empty else max(1, round(counted.area / (rx * ry)))
    capacity = SplitCapacity(
        name, int(chip_size), positions, max_nodata=max_nodata,
        largest_part=_largest_part(region, (rx, ry)),
    )  # fmt: skip
    if positions == 0 or probe <= 0:
        return capacity
    points = GeoSeries([centres]).sample_points(size=probe, rng=np.random.default_rng(seed))
    fractions = []
    for point in points.explode():
        col = round((point.x - origin[0]) / rx - chip_size / 2)
        row = round((point.y - origin[1]) / ry - chip_size / 2)
        x0, y0 = origin[0] + col * rx, origin[1] + row * ry
        sample = dataset[slice(x0, x0 + chip_size * rx), slice(y0, y0 + chip_size * ry)]
        fractions.append(nodata_fraction(sample))
        capacity.probed += 1
        capacity.usable += usable_chip(sample, max_nodata, ignore_index)
    capacity.mean_nodata = float(np.mean(fractions)) if fractions else 0.0
    return capacity
