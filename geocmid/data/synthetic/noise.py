"""Deterministic hashing and value noise as functions of map coordinates.

Everything the synthetic landscape draws is a pure function of map coordinates (metres) and a
seed, so any window of any scene can be generated on its own and adjacent tiles join exactly.
Noise is classic lattice value noise: random values on a square lattice (from a fixed random
table, tiled every :data:`TABLE_SIZE` cells) smoothly interpolated between lattice points.
"""

from __future__ import annotations

import functools

import numpy as np

#: Side of the random lattice table; noise repeats every ``TABLE_SIZE`` cells of each octave.
TABLE_SIZE = 1024
_MASK = TABLE_SIZE - 1


@functools.lru_cache(maxsize=4)
def _table(seed: int) -> np.ndarray:
    """Return the (TABLE_SIZE, TABLE_SIZE) float32 table of uniform values in [-1, 1)."""
    rng = np.random.default_rng([seed, 0x5EED])
    table = rng.random((TABLE_SIZE, TABLE_SIZE), dtype=np.float32) * 2.0 - 1.0
    table.setflags(write=False)
    return table


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on a uint64 array (wrapping arithmetic is intended)."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def hash_u64(*ints: np.ndarray | int, seed: int) -> np.ndarray:
    """Hash integer arrays (broadcast together) and a seed to uint64 values."""
    with np.errstate(over="ignore"):
        h = np.full((), np.uint64(seed & 0xFFFFFFFFFFFFFFFF), dtype=np.uint64)
        h = _mix(h + np.uint64(0x9E3779B97F4A7C15))
        for value in ints:
            v = np.asarray(value, dtype=np.int64).astype(np.uint64)
            h = _mix(h ^ (v * np.uint64(0xD6E8FEB86659FD93) + np.uint64(0x2545F4914F6CDD1D)))
    return h


def hash01(*ints: np.ndarray | int, seed: int) -> np.ndarray:
    """Hash integer arrays to float64 values uniform in [0, 1)."""
    return (hash_u64(*ints, seed=seed) >> np.uint64(11)).astype(np.float64) * (2.0**-53)


def value_noise(x: np.ndarray, y: np.ndarray, cell: float, key: int, seed: int = 0) -> np.ndarray:
    """Smooth value noise in [-1, 1] at map coordinates ``x``, ``y`` (metres).

    Args:
        x, y: coordinates that broadcast together. A row ``(1, W)`` of x with a column
            ``(H, 1)`` of y (an axis-aligned pixel grid) takes a fast separable path; any other
            shapes (e.g. reprojected coordinates) take the general path. Both give identical
            values for the same point.
        cell: lattice spacing in metres (feature size).
        key: selects an independent noise field.
        seed: selects the random table.

    Returns:
        float32 array of the broadcast shape.
    """
    table = _table(seed)
    off = hash_u64(key, seed=seed + 7919)
    ox = int(off & np.uint64(_MASK))
    oy = int((off >> np.uint64(20)) & np.uint64(_MASK))
    fx = np.asarray(x, dtype=np.float64) / cell
    fy = np.asarray(y, dtype=np.float64) / cell
    ixf = np.floor(fx)
    iyf = np.floor(fy)
    tx = (fx - ixf).astype(np.float32)
    ty = (fy - iyf).astype(np.float32)
    sx = tx * tx * (np.float32(3.0) - np.float32(2.0) * tx)
    sy = ty * ty * (np.float32(3.0) - np.float32(2.0) * ty)
    ix = ixf.astype(np.int64)
    iy = iyf.astype(np.int64)
    one = np.float32(1.0)
    if fx.ndim == 2 and fy.ndim == 2 and fx.shape[0] == 1 and fy.shape[1] == 1:
        # Separable grid: interpolate a small sub-table along y once per row, then along x.
        x1, y1 = ix[0], iy[:, 0]
        x0, y0 = int(x1.min()), int(y1.min())
        ux = (np.arange(x0, int(x1.max()) + 2) + ox) & _MASK
        uy = (np.arange(y0, int(y1.max()) + 2) + oy) & _MASK
        sub = table[np.ix_(uy, ux)]
        xr, yr = x1 - x0, y1 - y0
        syc = sy[:, 0][:, None]
        rows = sub[yr] * (one - syc) + sub[yr + 1] * syc
        return rows[:, xr] * (one - sx) + rows[:, xr + 1] * sx
    flat = table.ravel()
    ix0 = (ix + ox) & _MASK
    ix1 = (ix + 1 + ox) & _MASK
    iy0 = ((iy + oy) & _MASK) * TABLE_SIZE
    iy1 = ((iy + 1 + oy) & _MASK) * TABLE_SIZE
    r0 = flat[iy0 + ix0] * (one - sy) + flat[iy1 + ix0] * sy
    r1 = flat[iy0 + ix1] * (one - sy) + flat[iy1 + ix1] * sy
    return r0 * (one - sx) + r1 * sx


def fbm(
    x: np.ndarray,
    y: np.ndarray,
    cell: float,
    octaves: int,
    key: int,
    seed: int = 0,
    gain: float = 0.5,
) -> np.ndarray:
    """Fractal (multi-octave) value noise, roughly in [-1, 1] (std ≈ 0.3), float32.

    ``cell`` is the largest feature size in metres; each further octave halves it and scales
    its amplitude by ``gain``.
    """
    total = None
    amp, norm = 1.0, 0.0
    for octave in range(octaves):
        layer = value_noise(x, y, cell / 2.0**octave, key * 97 + octave, seed)
        layer *= np.float32(amp)
        total = layer if total is None else total + layer
        norm += amp
        amp *= gain
    assert total is not None
    return total / np.float32(norm)
