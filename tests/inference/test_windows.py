"""Window layout, blocks, regions and blending weights."""

from __future__ import annotations

import numpy as np
import pytest

from geocmid.errors import ConfigError
from geocmid.inference.windows import AxisLayout, Layout


@pytest.mark.parametrize(
    ("length", "size", "overlap", "group"),
    [(100, 32, 8, 2), (257, 64, 32, 3), (31, 64, 16, 2), (500, 96, 0, 1), (1000, 128, 64, 1)],
)
def test_axis_weights_sum_to_one_and_regions_tile(length, size, overlap, group):
    axis = AxisLayout(length, size, overlap, group)
    total = np.zeros(length)
    covered_by = [set() for _ in range(length)]
    for i in range(axis.n_windows):
        o = axis.origin(i)
        w = axis.weights(i)
        assert (w > 0).all()
        stop = min(o + size, length)
        total[o:stop] += w[: stop - o]
        for p in range(o, stop):
            covered_by[p].add(i // group)
    # Hann ramps of neighbours sum to one; scene-border sides are not ramped at all.
    np.testing.assert_allclose(total, 1.0, atol=1e-6)
    assert axis.weights(0)[0] == 1.0
    last = axis.n_windows - 1
    assert axis.weights(last)[min(size, length - axis.origin(last)) - 1] == 1.0
    # Regions tile [0, length) once, and each region's contributors are exactly the blocks
    # whose windows touch it.
    seen = np.zeros(length, int)
    for key in axis.all_regions():
        start, stop = axis.region_span(key)
        seen[start:stop] += 1
        for p in range(start, stop):
            assert covered_by[p] == set(AxisLayout.contributors(key))
    assert (seen == 1).all()


def test_every_window_in_exactly_one_block():
    layout = Layout.create(700, 500, 128, 32, block_size=300)
    windows = [w for b in layout.blocks() for w in layout.block_windows(b)]
    assert len(windows) == len(set(windows)) == layout.n_windows


def test_bad_overlap_is_a_config_error():
    with pytest.raises(ConfigError, match="overlap"):
        Layout.create(100, 100, 64, 40)
