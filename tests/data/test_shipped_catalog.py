"""The example entries shipped in data_catalog/: they parse, and validate once their data exists."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from geocmid.cli import main
from geocmid.data.catalog import Catalog, TorchGeoDatasetEntry, validate
from geocmid.data.synthetic import make_demo_dataset
from geocmid.errors import ConfigError, DataError
from tests.rasters import write_entry

SHIPPED = Path(__file__).resolve().parents[2] / "data_catalog"
PAPER_DATASETS = {"ucmerced", "potsdam", "vaihingen", "levir-cd", "oscd", "dota", "millionaid"}


def test_every_shipped_entry_parses_and_names_its_kind() -> None:
    catalog = Catalog(SHIPPED)
    entries = {e.name: e for e in catalog.all()}
    assert set(entries) >= PAPER_DATASETS
    assert {"demo-2020", "demo-2021", "demo-pair", "demo-change", "demo-scenes"} <= set(entries)
    for name in PAPER_DATASETS:
        assert isinstance(entries[name], TorchGeoDatasetEntry)


@pytest.mark.parametrize("name", sorted(PAPER_DATASETS))
def test_public_datasets_are_never_fetched_implicitly(name: str, tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "data_catalog")
    entry = Catalog(tmp_path / "data_catalog").get(name)
    with pytest.raises(DataError) as error:
        validate(entry)
    assert "files are not in" in error.value.problem
    assert "catalog download" in (error.value.fix or "") or "by hand" in (error.value.fix or "")
    assert not (tmp_path / "data").exists(), "validation must not create or download anything"


def test_shipped_demo_entries_validate_once_demo_data_exists(tmp_path: Path) -> None:
    shutil.copytree(SHIPPED, tmp_path / "data_catalog")
    make_demo_dataset(tmp_path / "demo", size=256)
    catalog = Catalog(tmp_path / "data_catalog")
    for name in catalog.names():
        if name.startswith("demo-"):
            validate(catalog.get(name), catalog)


def test_torchgeo_entry_errors(tmp_path: Path, capsys) -> None:
    cat = tmp_path / "cat"
    write_entry(cat, "typo", "kind: torchgeo_dataset\ndataset: UCMerceed\nroot: x\n")
    write_entry(
        cat, "badarg", "kind: torchgeo_dataset\ndataset: UCMerced\nroot: x\nargs: {splt: a}\n"
    )
    catalog = Catalog(cat)
    with pytest.raises(ConfigError, match="did you mean 'UCMerced'"):
        validate(catalog.get("typo"))
    with pytest.raises(ConfigError, match="did you mean 'split'"):
        validate(catalog.get("badarg"))
    assert main(["--catalog", str(cat), "catalog", "show", "typo"]) == 2
    assert "UCMerceed" in capsys.readouterr().err
