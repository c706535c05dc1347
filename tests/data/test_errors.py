"""Bad input gets one clear error (file or key, what is wrong, what to do) and exit code 2."""

from __future__ import annotations

from pathlib import Path

import pytest

from geocmid.cli import main
from tests.rasters import smooth_field, write_entry, write_raster


def run_validate(capsys, catalog: Path, name: str) -> tuple[int, str]:
    code = main(["--catalog", str(catalog), "catalog", "validate", name])
    out = capsys.readouterr()
    return code, out.out + out.err


@pytest.fixture
def cat(tmp_path: Path) -> Path:
    write_raster(tmp_path / "img.tif", smooth_field((64, 64), bands=3))
    return tmp_path / "catalog"


CASES = {
    "missing file": (
        "kind: imagery\npaths: ../nope.tif\nbands: 3\n",
        ["nope.tif", "file not found", "fix:"],
    ),
    "glob matches nothing": (
        "kind: imagery\npaths: ../tiles/*.tif\nbands: 3\n",
        ["tiles/*.tif", "matches no file", "fix:"],
    ),
    "band count": (
        "kind: imagery\npaths: ../img.tif\nbands: [red, green, blue, nir]\n",
        ["img.tif", "has 3 band(s)", "declares 4", "fix:"],
    ),
    "misspelt key": (
        "kind: imagery\npaths: ../img.tif\nbands: 3\nno_data: 0\n",
        ["unknown key 'no_data'", "did you mean 'nodata'", "fix:"],
    ),
    "unknown kind": (
        "kind: imagry\npaths: ../img.tif\nbands: 3\n",
        ["key 'kind'", "did you mean 'imagery'"],
    ),
    "missing required key": ("kind: imagery\npaths: ../img.tif\n", ["required key 'bands'"]),
    "bad yaml": ("kind: imagery\npaths: [../img.tif\n", ["not valid YAML", "line"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_entry_errors(cat: Path, capsys, case: str) -> None:
    text, expected = CASES[case]
    write_entry(cat, "bad", text)
    code, out = run_validate(capsys, cat, "bad")
    assert code == 2
    assert "error: catalog entry 'bad'" in out or "bad.yaml" in out or "nope.tif" in out
    for fragment in expected:
        assert fragment in out, f"{fragment!r} missing from: {out}"
    assert "Traceback" not in out


def test_corrupt_raster(cat: Path, capsys) -> None:
    (cat.parent / "broken.tif").write_bytes(b"II*\x00" + b"\x00" * 64)
    write_entry(cat, "broken", "kind: imagery\npaths: ../broken.tif\nbands: 1\n")
    code, out = run_validate(capsys, cat, "broken")
    assert code == 2 and "broken.tif" in out and "cannot be read as a raster" in out


def test_bitemporal_dates_that_do_not_overlap(cat: Path, capsys) -> None:
    write_raster(
        cat.parent / "far.tif", smooth_field((64, 64), bands=3), origin=(700_000.0, 5_500_000.0)
    )
    write_entry(cat, "a", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    write_entry(cat, "b", "kind: imagery\npaths: ../far.tif\nbands: 3\n")
    write_entry(cat, "pair", "kind: bitemporal\nbefore: a\nafter: b\n")
    code, out = run_validate(capsys, cat, "pair")
    assert code == 2 and "do not overlap" in out and "'a'" in out and "'b'" in out


def test_bitemporal_referring_to_a_missing_entry(cat: Path, capsys) -> None:
    write_entry(cat, "a", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    write_entry(cat, "pair", "kind: bitemporal\nbefore: a\nafter: aa\n")
    code, out = run_validate(capsys, cat, "pair")
    assert code == 2 and "no entry named 'aa'" in out


def test_vector_without_class_attribute(cat: Path, capsys) -> None:
    import geopandas as gpd
    import shapely

    gdf = gpd.GeoDataFrame(
        {"label": [1]},
        geometry=[shapely.box(500_000, 4_999_500, 500_100, 4_999_600)],
        crs="EPSG:32633",
    )
    gdf.to_file(cat.parent / "v.gpkg")
    write_entry(cat, "v", "kind: vector_labels\npaths: ../v.gpkg\nclass_attribute: lable\n")
    code, out = run_validate(capsys, cat, "v")
    assert code == 2 and "no attribute 'lable'" in out and "did you mean 'label'" in out


def test_validate_all_reports_each_failure(cat: Path, capsys) -> None:
    write_entry(cat, "good", "kind: imagery\npaths: ../img.tif\nbands: 3\n")
    write_entry(cat, "bad", "kind: imagery\npaths: ../img.tif\nbands: 4\n")
    code = main(["--catalog", str(cat), "catalog", "validate"])
    out = capsys.readouterr().out
    assert code == 2 and "ok      good" in out and "FAILED  bad" in out


def test_catalog_show_and_stats(cat: Path, capsys) -> None:
    img = smooth_field((64, 64), bands=3)
    img[:, :8] = 0
    write_raster(cat.parent / "nd.tif", img, nodata=0)
    write_entry(cat, "nd", "kind: imagery\npaths: ../nd.tif\nbands: [r, g, b]\ndate: 2021-06-01\n")
    assert main(["--catalog", str(cat), "catalog", "show", "nd"]) == 0
    out = capsys.readouterr().out
    for fragment in (
        "EPSG:32633",
        "(10.0, 10.0)",
        "64x64",
        "uint16",
        "nodata:     0.0",
        "2021-06-01",
        "r, g, b",
        "(500000, 4.99936e+06, 500640, 5e+06)",
    ):
        assert fragment in out, fragment
    assert main(["--catalog", str(cat), "catalog", "stats", "nd"]) == 0
    import json

    stats = json.loads((cat / "nd.stats.json").read_text())
    valid = img[:, 8:].reshape(3, -1).astype(float)
    assert stats["mean"] == pytest.approx(valid.mean(axis=1).tolist(), rel=1e-4)
    assert stats["std"] == pytest.approx(valid.std(axis=1).tolist(), rel=1e-4)
    assert main(["--catalog", str(cat), "catalog", "list"]) == 0
    assert "nd" in capsys.readouterr().out
