"""STAC in (a generated static catalog as an imagery entry) and out (an Item beside each map)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import toymodels
from rasterio.transform import from_origin

from geocmid.data.catalog import Catalog, validate
from geocmid.data.sources import file_date, imagery_source
from geocmid.data.stac import validate_item
from geocmid.errors import ConfigError
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.inference.conftest import write_scene

DATES = [dt.date(2021, 6, 1), dt.date(2022, 6, 3)]


def make_item(folder: Path, n: int, date: dt.date) -> pystac.Item:
    """An item with a 10 m red band (B04) and a 20 m nir band (B08) as separate COG assets."""
    rng = np.random.default_rng(n)
    red = rng.integers(100, 2000, (1, 60, 80)).astype(np.uint16)
    nir = rng.integers(100, 4000, (1, 30, 40)).astype(np.uint16)
    write_scene(folder / f"red{n}.tif", red, transform=from_origin(500000, 4000000, 10, 10))
    write_scene(folder / f"nir{n}.tif", nir, transform=from_origin(500000, 4000000, 20, 20))
    item = pystac.Item(
        f"scene-{n}",
        {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]},
        [0, 0, 1, 1],
        dt.datetime.combine(date, dt.time(10, 30), dt.UTC),
        {},
    )
    for key, band, common in (("B04", "red", "red"), ("B08", "nir", "nir")):
        item.add_asset(
            key,
            pystac.Asset(
                str(folder / f"{band}{n}.tif"),
                media_type=pystac.MediaType.COG,
                extra_fields={"eo:bands": [{"name": key, "common_name": common}]},
            ),
        )
    return item


@pytest.fixture
def stac_catalog(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    catalog = pystac.Catalog("scenes", "two dates of one place")
    for n, date in enumerate(DATES):
        catalog.add_item(make_item(data, n, date))
    catalog.normalize_hrefs(str(tmp_path / "stac"))
    catalog.make_all_asset_hrefs_relative()
    catalog.save(pystac.CatalogType.SELF_CONTAINED)
    return tmp_path / "stac" / "catalog.json"


def test_static_stac_catalog_as_an_imagery_entry(stac_catalog, tmp_path):
    cat_dir = tmp_path / "catalog"
    cat_dir.mkdir()
    (cat_dir / "s2.yaml").write_text(
        "kind: imagery\npaths: ../stac/catalog.json\nbands: [red, nir]\n"
    )
    (cat_dir / "bycode.yaml").write_text(
        "kind: imagery\npaths: ../stac/catalog.json\nbands: [B08, B04]\n"
    )
    (cat_dir / "bad.yaml").write_text("kind: imagery\npaths: ../stac/catalog.json\nbands: [swir]\n")
    catalog = Catalog(cat_dir)
    entry = catalog.get("s2")
    files = entry.files()
    assert len(files) == 2 and all(f.suffix == ".vrt" for f in files)
    validate(entry)
    # Dates from the items.
    dates = [file_date(str(f), entry.date_pattern)[0] for f in files]
    assert [d.date() if hasattr(d, "date") else d for d in dates] == DATES or [
        dt.datetime.fromtimestamp(d, dt.UTC).date() for d in dates
    ] == DATES
    # Band order and pixels: red is the B04 file itself; nir (20 m) lands on the 10 m grid.
    source = imagery_source(entry)
    assert source.grid.width == 80 and source.grid.height == 60
    with source.reader() as reader:
        data, valid = reader.read(0, 60, 0, 80)
    assert valid.all()
    with rasterio.open(tmp_path / "data" / "red0.tif") as ds:
        np.testing.assert_array_equal(data[0], ds.read(1))
    with rasterio.open(tmp_path / "data" / "nir0.tif") as ds:
        nir = ds.read(1).astype(float)
    coarse = data[1].astype(float).reshape(30, 2, 40, 2).mean(axis=(1, 3))
    assert np.corrcoef(coarse.ravel(), nir.ravel())[0, 1] > 0.9
    # Asset choice by asset key (B04, B08) gives the same pixels, in the asked order.
    with imagery_source(catalog.get("bycode")).reader() as reader:
        swapped, _ = reader.read(0, 60, 0, 80)
    np.testing.assert_array_equal(swapped[::-1], data)
    with pytest.raises(ConfigError, match="no asset for band 'swir'"):
        catalog.get("bad").files()


def test_item_collection_and_single_item_as_entries(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    items = [make_item(data, n, d) for n, d in enumerate(DATES)]
    (tmp_path / "items.json").write_text(json.dumps(pystac.ItemCollection(items).to_dict()))
    items[1].set_self_href(str(tmp_path / "item1.json"))
    items[1].save_object(include_self_link=False)
    (tmp_path / "a.yaml").write_text("kind: imagery\npaths: items.json\nbands: [red, nir]\n")
    (tmp_path / "b.yaml").write_text("kind: imagery\npaths: item1.json\nbands: [red]\n")
    catalog = Catalog(tmp_path)
    assert len(catalog.get("a").files()) == 2
    one = catalog.get("b").files()
    assert len(one) == 1 and one[0].name == "scene-1_20220603.vrt"


def test_stac_item_beside_a_prediction_validates(tmp_path):
    rows, cols = np.mgrid[0:90, 0:110].astype(np.float32)
    pixels = np.stack([np.sin(rows / 9), np.cos(cols / 7), rows / 90]).astype(np.float32)
    scene = write_scene(tmp_path / "scene.tif", pixels)
    result = predict_scene(
        Predictor(toymodels.TinyCNN(seed=1), toymodels.card()), [scene], tmp_path / "out",
        settings=RunSettings(window=64, overlap=16), options=OutputOptions(probabilities=True),
        progress=False,
    )  # fmt: skip
    path = result.outputs["stac"]
    assert path == tmp_path / "out" / "scene_item.json"
    data = json.loads(path.read_text())
    validate_item(data)  # core STAC 1.1 schema, offline; extension fields via pystac
    item = pystac.Item.from_dict(data)
    assert item.properties["proj:code"] == "EPSG:32618"
    assert item.properties["proj:shape"] == [90, 110]
    assert item.properties["proj:transform"][:3] == [10.0, 0.0, 500000.0]
    assert item.properties["geocmid:model_card"]["classes"][1]["name"] == "class1"
    bands = item.assets["classes"].extra_fields["raster:bands"]
    with rasterio.open(result.outputs["classes"]) as ds:
        assert bands == [
            {"nodata": ds.nodata, "data_type": ds.dtypes[0], "spatial_resolution": 10.0}
        ]
    assert set(item.assets) >= {"classes", "probabilities", "vectors", "summary", "quicklook"}
    assert item.assets["classes"].href == "./scene_classes.tif"
    assert [link.href for link in item.links if link.rel == "derived_from"] == [str(scene)]
    # The footprint is where the scene is: UTM 18N at 500 km easting, ~36.1 N, -75 E.
    west, south, _, north = item.bbox
    assert -75.01 < west < -74.99 and 36.1 < south < north < 36.2
    broken = {**data, "properties": {k: v for k, v in data["properties"].items()
                                     if k != "proj:shape"}}  # fmt: skip
    with pytest.raises(ValueError, match="proj:shape"):
        validate_item(broken)
    no_time = {**data, "properties": {k: v for k, v in data["properties"].items()
                                      if k != "datetime"}}  # fmt: skip
    with pytest.raises(pystac.errors.STACValidationError):
        validate_item(no_time)
