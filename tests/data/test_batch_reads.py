"""Batch reads (``__getitems__``): the same chips, bit for bit, as reading them one by one.

torch's DataLoader hands a whole batch of queries to ``dataset.__getitems__`` when the dataset
has one; :class:`CatalogRasterDataset` then reads the batch into one array per key and
:class:`NodataRejectingDataset` replaces nodata-heavy chips in it. Whatever the layout (tiles
with seams and holes, scattered chip files, a scene warped to another CRS) and however many
workers, the batches must equal ``stack_samples([ds[q] for q in queries])``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchgeo.datasets.utils import stack_samples

from geocmid.data.catalog import Catalog
from geocmid.data.datasets import CatalogRasterDataset, imagery_dataset
from geocmid.data.sampling import ChipBatch, ChipSampler, NodataRejectingDataset
from geocmid.datamodules.base import collate, loader
from tests.rasters import smooth_field, write_entry, write_raster

ORIGIN = (500_000.0, 5_000_000.0)
RES = 10.0


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Catalog:
    """Three layouts of one kind of imagery (4 bands, uint16, nodata 0).

    * ``tiles``: 2x2 tiles of 48² with nodata holes; two of them overlap by 8 columns;
    * ``chips``: 12 separate 20² chip files with gaps between them;
    * ``warped``: one 96² scene read in EPSG:3035 (every chip through a WarpedVRT).
    """
    root = tmp_path_factory.mktemp("batch")
    image = smooth_field((96, 96), seed=5, bands=4)
    image[:, 40:60, 10:30] = 0  # a nodata hole
    image[:, 70:90, 70:96] = 0
    for i in range(2):
        for j in range(2):
            c0 = j * 40 if i == 0 else j * 48  # top row: tiles overlap by 8 columns
            tile = image[:, i * 48 : (i + 1) * 48, c0 : c0 + 48]
            origin = (ORIGIN[0] + c0 * RES, ORIGIN[1] - i * 48 * RES)
            write_raster(root / "tiles" / f"t{i}{j}.tif", tile, origin=origin, res=RES, nodata=0)
    for k in range(12):
        r0, c0 = (k // 4) * 30 + 2, (k % 4) * 24 + 1
        chip = image[:, r0 : r0 + 20, c0 : c0 + 20]
        origin = (ORIGIN[0] + c0 * RES, ORIGIN[1] - r0 * RES)
        write_raster(root / "chips" / f"c{k:02d}.tif", chip, origin=origin, res=RES, nodata=0)
    write_raster(root / "scene.tif", image, origin=ORIGIN, res=RES, nodata=0)
    cat = root / "catalog"
    bands = "bands: [b, g, r, n]\n"
    write_entry(cat, "tiles", f"kind: imagery\npaths: ../tiles\n{bands}")
    write_entry(cat, "chips", f"kind: imagery\npaths: ../chips\n{bands}")
    write_entry(cat, "warped", f"kind: imagery\npaths: ../scene.tif\n{bands}crs: EPSG:3035\n")
    return Catalog(cat)


def chip_queries(ds: CatalogRasterDataset, size: int, count: int, seed: int) -> list[Any]:
    return list(ChipSampler(ds, size=size, length=count, generator=seed))


def assert_same(batch: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert list(batch) == list(expected)
    for key, value in expected.items():
        assert batch[key].dtype == value.dtype, key
        assert batch[key].shape == value.shape, key
        assert torch.equal(batch[key], value), key


@pytest.mark.parametrize("name", ["tiles", "chips", "warped"])
@pytest.mark.parametrize("native", [True, False])
def test_a_batch_read_equals_the_stacked_samples(catalog: Catalog, name: str, native: bool) -> None:
    ds = imagery_dataset(catalog.get(name), native_dtype=native)
    size = 12 if name == "chips" else 24
    queries = chip_queries(ds, size, 24, seed=3)
    batch = ds.__getitems__(queries)
    assert isinstance(batch, ChipBatch), "chips on the grid are read as one batch"
    expected = stack_samples([ds[q] for q in queries])
    assert_same(collate(batch), expected)
    assert_same(stack_samples(batch), expected)  # other collate functions see plain samples
    assert batch.batch["image"].dtype == (torch.uint16 if native else torch.float32)
    if name != "warped":
        assert not batch.batch["valid"].all() or name == "chips", "holes are in some chips"


def test_off_grid_or_mixed_size_queries_are_read_one_by_one(catalog: Catalog) -> None:
    ds = imagery_dataset(catalog.get("tiles"), native_dtype=True)
    queries = chip_queries(ds, 16, 4, seed=0)
    x, y = queries[0][:2]
    shifted = (slice(x.start + 3.0, x.stop + 3.0), y)  # off the pixel lattice
    bigger = (slice(x.start, x.stop + 2 * RES), slice(y.start, y.stop + 2 * RES))
    for odd, stackable in ((shifted, True), (bigger, False)):
        samples = ds.__getitems__([*queries[1:], odd])
        assert isinstance(samples, list) and len(samples) == 4
        if stackable:
            assert_same(stack_samples(samples), stack_samples([ds[q] for q in [*queries[1:], odd]]))


def nodata_chips(catalog: Catalog, max_nodata: float, max_tries: int) -> NodataRejectingDataset:
    ds = imagery_dataset(catalog.get("tiles"), native_dtype=True)
    return NodataRejectingDataset(ds, 24, max_nodata=max_nodata, seed=1, max_tries=max_tries)


@pytest.mark.parametrize(("max_nodata", "max_tries"), [(0.05, 20), (0.0, 2), (1.0, 20)])
def test_nodata_rejection_in_batches_draws_the_same_chips(
    catalog: Catalog, max_nodata: float, max_tries: int
) -> None:
    batched = nodata_chips(catalog, max_nodata, max_tries)
    single = nodata_chips(catalog, max_nodata, max_tries)
    queries = chip_queries(batched.dataset, 24, 48, seed=11)
    for start in range(0, len(queries), 16):
        part = queries[start : start + 16]
        assert_same(collate(batched.__getitems__(part)), stack_samples([single[q] for q in part]))
    assert (batched.rejected, batched.gave_up) == (single.rejected, single.gave_up)
    if max_nodata < 1:
        assert batched.rejected > 0, "the test draws chips that are rejected"
    if max_tries == 2:
        assert batched.gave_up > 0, "and chips that give up"


class OneByOne(Dataset):
    """The wrapped dataset without ``__getitems__``: the DataLoader reads sample by sample."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __getitem__(self, query: Any) -> dict[str, Any]:
        return self.dataset[query]

    def __len__(self) -> int:
        return 0


class Fixed(Sampler):
    def __init__(self, queries: Sequence[Any]) -> None:
        self.queries = list(queries)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.queries)

    def __len__(self) -> int:
        return len(self.queries)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_batches_equal_per_sample_batches(catalog: Catalog, workers: int) -> None:
    """Through geocmid's loader (batch reads, shared-memory batches in workers) and through a
    plain DataLoader reading one chip at a time: the same batches, rejection included (each
    worker seeds its own replacement draws, and gets the same batches either way)."""
    queries = chip_queries(imagery_dataset(catalog.get("tiles")), 24, 48, seed=2)
    batched = loader(nodata_chips(catalog, 0.05, 20), Fixed(queries), 8, workers)
    plain = DataLoader(
        OneByOne(nodata_chips(catalog, 0.05, 20)), batch_size=8, sampler=Fixed(queries),
        num_workers=workers, collate_fn=stack_samples,
    )  # fmt: skip
    got, expected = list(batched), list(plain)
    assert len(got) == len(expected) == 6
    for a, b in zip(got, expected, strict=True):
        assert_same(a, b)
        assert a["image"].dtype == torch.uint16
        assert np.array_equal(a["valid"].numpy(), (a["image"].numpy() != 0).any(axis=1))


def test_plain_files_are_read_without_rasterio_read_checks(catalog: Catalog) -> None:
    """Windows inside plain files go to rasterio's ``_read`` (what ``read`` ends in); the
    pixels and the valid mask are those of ``read``, seams and holes included."""
    ds = imagery_dataset(catalog.get("tiles"), native_dtype=True)
    reader = ds.source.reader()
    grid_files = sorted(ds.source.files)
    for rows, cols in [((0, 24), (0, 24)), ((40, 72), (30, 70)), ((10, 58), (20, 60))]:
        data, valid = reader.read(*rows, *cols)
        expected = np.zeros_like(data)
        for path in grid_files:  # later tiles fill only where earlier ones left nodata
            hd = reader.handle(path)
            assert hd is not None and hd.direct and hd.match == 0 and isinstance(hd.match, int)
            r0, r1 = max(rows[0], hd.row), min(rows[1], hd.row + hd.height)
            c0, c1 = max(cols[0], hd.col), min(cols[1], hd.col + hd.width)
            if r1 <= r0 or c1 <= c0:
                continue
            window = ((r0 - hd.row, r1 - hd.row), (c0 - hd.col, c1 - hd.col))
            part = hd.dataset.read(window=window)
            target = expected[:, r0 - rows[0] : r1 - rows[0], c0 - cols[0] : c1 - cols[0]]
            empty = (target == 0).all(axis=0)
            target[:, empty] = part[:, empty]
        np.testing.assert_array_equal(data, expected)
        np.testing.assert_array_equal(valid, (expected != 0).any(axis=0))
    reader.close()


def test_nodata_is_compared_as_an_integer_only_where_that_is_exact() -> None:
    from geocmid.data.sources import _nodata_match

    u16, i16, f32 = np.dtype(np.uint16), np.dtype(np.int16), np.dtype(np.float32)
    i64 = np.dtype(np.int64)
    assert _nodata_match(0.0, (u16, u16)) == 0 and isinstance(_nodata_match(0.0, (u16,)), int)
    assert isinstance(_nodata_match(-9999.0, (i16,)), int)
    for nodata, dtypes in [(-9999.0, (u16,)), (0.5, (u16,)), (0.0, (f32,)), (0.0, (u16, f32)),
                           (0.0, (i64,)), (None, (u16,)), (float("nan"), (u16,))]:  # fmt: skip
        kept = _nodata_match(nodata, dtypes)
        assert kept is nodata or (kept != kept and nodata != nodata), (nodata, dtypes)


def test_subclasses_with_their_own_getitem_are_read_one_by_one(catalog: Catalog) -> None:
    class Tagged(CatalogRasterDataset):
        def __getitem__(self, index: Any) -> dict[str, Any]:
            return {**super().__getitem__(index), "tag": torch.ones(1)}

    ds = imagery_dataset(catalog.get("tiles"), native_dtype=True)
    tagged = Tagged(source=ds.source, native_dtype=True)
    queries = chip_queries(ds, 16, 4, seed=0)
    samples = tagged.__getitems__(queries)
    assert isinstance(samples, list) and all("tag" in s for s in samples)


def test_sample_transform_and_bounds_are_torchgeos(catalog: Catalog) -> None:
    """What both read paths build by hand is what TorchGeo stores: the query's bounds and
    ``from_origin(west, north, xres, yres)`` as 9 coefficients (a flipped sign or a swapped
    origin would put every chip on the wrong ground)."""
    from rasterio.transform import from_origin

    ds = imagery_dataset(catalog.get("tiles"), native_dtype=True)
    queries = chip_queries(ds, 24, 6, seed=1)
    for query, sample in zip(queries, ds.__getitems__(queries), strict=True):
        x, y = query[0], query[1]
        b = sample["bounds"].tolist()
        assert b[0] == pytest.approx(x.start) and b[1] == pytest.approx(x.stop)
        assert b[3] == pytest.approx(y.start) and b[4] == pytest.approx(y.stop)
        assert b[2] == b[5] == RES
        expected = list(from_origin(x.start, y.stop, RES, RES))[:9]
        assert sample["transform"].tolist() == pytest.approx(expected)
        assert torch.equal(ds[query]["transform"], sample["transform"])
