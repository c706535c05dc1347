"""Window layout, blocks of windows and blending weights.

The layout is global: along each axis, window ``i`` starts at pixel ``i * stride`` and is ``size``
pixels long; the last window may run past the scene and is padded. It depends only on the scene
size, the window size and the overlap, never on how the work is split, so results do not depend
on the block size, the number of processes or on resuming.

Work is split into *blocks*: groups of ``group`` consecutive windows per axis. Each window belongs
to exactly one block, so every window is run exactly once. A block covers the pixel *extent* of
its windows. Along an axis, the extents of neighbouring blocks share an ``overlap``-wide *edge*
region; the rest is the block's *core*. In 2-D a block's extent is cut into up to 3 x 3 regions:
the core x core region is final as soon as the block is done; the others also receive
contributions from neighbouring blocks and are stored as partial weighted sums, finished when all
their contributors are done (see :mod:`geocmid.inference.assemble`).

Blending weights are separable Hann ramps (``sin²``) over the overlap, so the weights of two
overlapping windows sum to one; on sides that touch the scene border there is no ramp, so border
pixels are never down-weighted towards zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from geocmid.errors import ConfigError

#: A region key along one axis: ``("core", b)`` or ``("edge", b)`` (between blocks b and b + 1).
AxisKey = tuple[str, int]
RegionKey = tuple[AxisKey, AxisKey]


@dataclass(frozen=True)
class AxisLayout:
    """Windows and blocks along one axis.

    Args:
        length: scene length in pixels.
        size: window length in pixels.
        overlap: pixels shared by consecutive windows (``0 <= overlap <= size // 2``).
        group: windows per block (``>= 1``).
    """

    length: int
    size: int
    overlap: int
    group: int

    def __post_init__(self) -> None:
        if self.size < 1 or self.length < 1:
            raise ConfigError("window", "window and scene sizes must be positive", "check sizes")
        if not 0 <= self.overlap <= self.size // 2:
            raise ConfigError(
                "overlap",
                f"{self.overlap} px is not within 0..{self.size // 2} (half the window)",
                "choose an overlap of at most half the window size",
            )

    @property
    def stride(self) -> int:
        return self.size - self.overlap

    @property
    def n_windows(self) -> int:
        if self.length <= self.size:
            return 1
        return math.ceil((self.length - self.size) / self.stride) + 1

    @property
    def n_blocks(self) -> int:
        return math.ceil(self.n_windows / self.group)

    def origin(self, i: int) -> int:
        """First pixel of window ``i`` (the window is ``[origin, origin + size)``)."""
        return i * self.stride

    def block_windows(self, b: int) -> range:
        return range(b * self.group, min((b + 1) * self.group, self.n_windows))

    def block_extent(self, b: int) -> tuple[int, int]:
        """Pixel range ``[start, stop)`` covered by block ``b``'s windows, clipped to the scene."""
        windows = self.block_windows(b)
        return self.origin(windows[0]), min(self.length, self.origin(windows[-1]) + self.size)

    def regions(self, b: int) -> list[tuple[AxisKey, int, int]]:
        """Regions ``(key, start, stop)`` of block ``b``'s extent in pixel order (no empty ones)."""
        start, stop = self.block_extent(b)
        core_start = self.block_extent(b - 1)[1] if b > 0 else start
        core_stop = self.block_extent(b + 1)[0] if b < self.n_blocks - 1 else stop
        out: list[tuple[AxisKey, int, int]] = []
        if b > 0 and core_start > start:
            out.append((("edge", b - 1), start, core_start))
        if core_stop > core_start:
            out.append((("core", b), core_start, core_stop))
        if b < self.n_blocks - 1 and stop > core_stop:
            out.append((("edge", b), core_stop, stop))
        return out

    def region_span(self, key: AxisKey) -> tuple[int, int]:
        """Pixel range of a region given its key."""
        kind, b = key
        if kind == "edge":
            return self.block_extent(b + 1)[0], self.block_extent(b)[1]
        return next((s, e) for k, s, e in self.regions(b) if k == key)

    def all_regions(self) -> list[AxisKey]:
        """Every region key in pixel order (each once)."""
        keys: list[AxisKey] = []
        for b in range(self.n_blocks):
            keys.extend(k for k, _, _ in self.regions(b) if k not in keys)
        return keys

    @staticmethod
    def contributors(key: AxisKey) -> tuple[int, ...]:
        kind, b = key
        return (b,) if kind == "core" else (b, b + 1)

    def weights(self, i: int) -> np.ndarray:
        """Blending weights ``[size]`` (float32) of window ``i``; no ramp on scene-border sides."""
        return _ramp(self.size, self.overlap, i > 0, i < self.n_windows - 1)


@lru_cache(maxsize=64)
def _ramp(size: int, overlap: int, ramp_up: bool, ramp_down: bool) -> np.ndarray:
    w = np.ones(size, np.float64)
    if overlap > 0:
        # Half-pixel offset keeps every weight > 0 and makes up + down ramps sum to exactly 1.
        t = (np.arange(overlap) + 0.5) / overlap
        up = np.sin(0.5 * np.pi * t) ** 2
        if ramp_up:
            w[:overlap] = up
        if ramp_down:
            w[size - overlap :] = up[::-1]
    out = w.astype(np.float32)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class Layout:
    """Windows and blocks of a scene: a pair of :class:`AxisLayout` (rows, cols)."""

    rows: AxisLayout
    cols: AxisLayout

    @classmethod
    def create(
        cls, height: int, width: int, size: int, overlap: int, block_size: int = 2048
    ) -> Layout:
        """Lay out ``size``-pixel windows with ``overlap`` over a ``height x width`` scene.

        ``block_size`` (pixels) sets how many windows a block groups (at least one): the unit of
        memory, of resuming and of splitting across processes.
        """
        stride = size - overlap
        group = max(1, round(max(block_size - overlap, stride) / max(stride, 1)))
        return cls(
            rows=AxisLayout(height, size, overlap, group),
            cols=AxisLayout(width, size, overlap, group),
        )

    @property
    def size(self) -> int:
        return self.rows.size

    @property
    def n_windows(self) -> int:
        return self.rows.n_windows * self.cols.n_windows

    def blocks(self) -> list[tuple[int, int]]:
        """All block ids ``(block_row, block_col)`` in row-major order."""
        return [(i, j) for i in range(self.rows.n_blocks) for j in range(self.cols.n_blocks)]

    def block_windows(self, block: tuple[int, int]) -> Iterator[tuple[int, int]]:
        """Window ids ``(row, col)`` of a block."""
        for i in self.rows.block_windows(block[0]):
            for j in self.cols.block_windows(block[1]):
                yield i, j

    def block_extent(self, block: tuple[int, int]) -> tuple[int, int, int, int]:
        """``(row0, row1, col0, col1)`` pixel extent of a block (clipped to the scene)."""
        r0, r1 = self.rows.block_extent(block[0])
        c0, c1 = self.cols.block_extent(block[1])
        return r0, r1, c0, c1

    def window_weights(self, window: tuple[int, int]) -> np.ndarray:
        """2-D blending weights ``[size, size]`` of a window."""
        return np.outer(self.rows.weights(window[0]), self.cols.weights(window[1]))

    def block_regions(
        self, block: tuple[int, int]
    ) -> list[tuple[RegionKey, tuple[int, int, int, int]]]:
        """Regions of a block extent as ``(key, (row0, row1, col0, col1))`` in scene pixels."""
        return [
            ((rk, ck), (r0, r1, c0, c1))
            for rk, r0, r1 in self.rows.regions(block[0])
            for ck, c0, c1 in self.cols.regions(block[1])
        ]

    def region_contributors(self, key: RegionKey) -> list[tuple[int, int]]:
        """Blocks whose windows touch a region, in a fixed order (the summation order)."""
        return [
            (i, j) for i in AxisLayout.contributors(key[0]) for j in AxisLayout.contributors(key[1])
        ]

    def all_regions(self) -> list[tuple[RegionKey, tuple[int, int, int, int]]]:
        """Every region of the scene once, row-major; together they tile the scene exactly."""
        out = []
        for rk in self.rows.all_regions():
            r0, r1 = self.rows.region_span(rk)
            for ck in self.cols.all_regions():
                c0, c1 = self.cols.region_span(ck)
                out.append(((rk, ck), (r0, r1, c0, c1)))
        return out


def region_name(key: RegionKey) -> str:
    """A file-friendly name of a region key, e.g. ``core3-edge2``."""
    return f"{key[0][0]}{key[0][1]}-{key[1][0]}{key[1][1]}"


def is_final(key: RegionKey) -> bool:
    """A region is final when only one block contributes to it (core x core)."""
    return key[0][0] == "core" and key[1][0] == "core"
