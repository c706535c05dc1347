"""Item 2 of issue #12: dates in file names are found anywhere in the name, in common formats,
and `catalog validate` names the file whose name holds no readable date."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from geocmid.cli import main
from geocmid.data.catalog import Catalog
from geocmid.data.datasets import dataset_from_entry
from geocmid.data.sources import parse_date
from tests.rasters import write_entry, write_raster


def _dates(catalog: Path, name: str) -> list[tuple[pd.Timestamp, pd.Timestamp]]:
    ds = dataset_from_entry(Catalog(catalog).get(name))
    index = ds.index.sort_values("filepath")
    return [(iv.left, iv.right) for iv in index.index]


def test_readme_pattern_matches_inside_names(tmp_path: Path) -> None:
    """The README's '(?P<date>\\d{8})' on naip_20220701.tif and on a Sentinel-2 name."""
    image = np.ones((1, 8, 8), np.uint16)
    write_raster(tmp_path / "naip" / "naip_20220701.tif", image)
    write_raster(tmp_path / "s2" / "S2B_MSIL2A_20230719T103629_tile.tif", image)
    for name, folder in (("naip", "naip"), ("s2", "s2")):
        write_entry(
            tmp_path / "cat", name,
            f"kind: imagery\npaths: ../{folder}\nbands: [b]\ndate_pattern: '(?P<date>\\d{{8}})'\n",
        )  # fmt: skip
    [(mint, maxt)] = _dates(tmp_path / "cat", "naip")
    assert mint == pd.Timestamp("2022-07-01") and maxt.date() == mint.date()
    [(mint, _)] = _dates(tmp_path / "cat", "s2")
    assert mint == pd.Timestamp("2023-07-19")


def test_common_formats_are_recognised(tmp_path: Path) -> None:
    """Date+time (Sentinel-2 product time), ISO dates and Landsat day-of-year, no date_format."""
    image = np.ones((1, 8, 8), np.uint16)
    names = {
        "s2t": ("S2A_MSIL1C_20230719T103629_N0509.tif", r"_(?P<date>\d{8}T\d{6})_"),
        "iso": ("ortho_2021-03-04_rgb.tif", r"(?P<date>\d{4}-\d{2}-\d{2})"),
        "doy": ("LC80440342016187LGN00.tif", r"\d{6}(?P<date>\d{7})LGN"),
    }
    for name, (filename, pattern) in names.items():
        write_raster(tmp_path / name / filename, image)
        write_entry(
            tmp_path / "cat", name,
            f"kind: imagery\npaths: ../{name}\nbands: [b]\ndate_pattern: '{pattern}'\n",
        )  # fmt: skip
    [(mint, maxt)] = _dates(tmp_path / "cat", "s2t")
    assert mint == pd.Timestamp("2023-07-19T10:36:29")
    assert maxt - mint < pd.Timedelta(seconds=1), "a date with a time is a one-second interval"
    [(mint, _)] = _dates(tmp_path / "cat", "iso")
    assert mint == pd.Timestamp("2021-03-04")
    [(mint, _)] = _dates(tmp_path / "cat", "doy")
    assert mint == pd.Timestamp("2016-07-05"), "day 187 of 2016 (a leap year)"


def test_parse_date_never_reads_a_wrong_date() -> None:
    assert parse_date("2023071")[0] == pd.Timestamp("2023-03-12")  # %Y%j, not 2023-07-01
    assert parse_date("04032021", "%d%m%Y")[0] == pd.Timestamp("2021-03-04")
    with pytest.raises(ValueError, match="not a date"):
        parse_date("20231345")


def test_validate_names_the_file_without_a_date(tmp_path: Path, capsys) -> None:
    image = np.ones((1, 8, 8), np.uint16)
    write_raster(tmp_path / "tiles" / "tile_20220701.tif", image)
    write_raster(tmp_path / "tiles" / "tile_latest.tif", image, origin=(500_080.0, 5_000_000.0))
    write_entry(
        tmp_path / "cat", "tiles",
        "kind: imagery\npaths: ../tiles\nbands: [b]\ndate_pattern: '(?P<date>\\d{8})'\n",
    )  # fmt: skip
    assert main(["--catalog", str(tmp_path / "cat"), "catalog", "validate", "tiles"]) != 0
    err = capsys.readouterr().err
    assert "tile_latest.tif" in err and "date_pattern" in err
    assert "Traceback" not in err

    write_raster(tmp_path / "bad" / "tile_20221345.tif", image)
    write_entry(
        tmp_path / "cat", "bad",
        "kind: imagery\npaths: ../bad\nbands: [b]\ndate_pattern: '(?P<date>\\d{8})'\n",
    )  # fmt: skip
    assert main(["--catalog", str(tmp_path / "cat"), "catalog", "validate", "bad"]) != 0
    err = capsys.readouterr().err
    assert "tile_20221345.tif" in err and "'20221345' is not a date" in err
