"""GDAL virtual paths and URLs in catalog entries and predict: passed through, not mangled."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import toymodels

from geocmid.data.catalog import Catalog, validate
from geocmid.data.paths import GdalPath, apply_gdal_env, as_path, file_identity, is_remote
from geocmid.data.sources import imagery_source
from geocmid.errors import ConfigError, DataError
from geocmid.inference import OutputOptions, Predictor, RunSettings, predict_scene
from tests.inference.conftest import write_scene
from tests.scale.conftest import scene_data

SETTINGS = RunSettings(window=64, overlap=16, block_size=100, batch_size=4)


@pytest.fixture
def zipped(tmp_path: Path) -> tuple[Path, Path]:
    """``(scene.tif, data/scenes.zip)`` where the zip holds ``inner/scene.tif``."""
    scene = write_scene(tmp_path / "scene.tif", scene_data(150, 170)[:, :, :], nodata=None)
    (tmp_path / "data").mkdir()
    archive = tmp_path / "data" / "scenes.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(scene, "inner/scene.tif")
    return scene, archive


def test_paths_keep_what_the_user_wrote():
    for text in (
        "/vsicurl/https://example.org/a/scene.tif",
        "https://example.org/a/scene.tif",
        "s3://bucket/key/scene.tif",
        "/vsis3/bucket/key/scene.tif",
    ):
        path = as_path(text, Path("/catalog"))
        assert isinstance(path, GdalPath) and isinstance(path, Path)
        assert str(path) == os.fspath(path) == text  # not https:/example.org, not /catalog/s3:
        assert path.name == "scene.tif" and path.stem == "scene"
        assert is_remote(text)
    relative = as_path("/vsizip/data/scenes.zip/inner/scene.tif", Path("/catalog"))
    assert str(relative) == "/vsizip//catalog/data/scenes.zip/inner/scene.tif"
    assert as_path("file:///tmp/x.tif") == Path("/tmp/x.tif")
    assert not is_remote("/vsizip//tmp/a.zip/x.tif") and is_remote("/vsizip//vsicurl/http://h/a.zip")


def test_catalog_entry_reads_vsizip_and_file_url_like_the_plain_file(zipped, tmp_path, monkeypatch):
    scene, _ = zipped
    # set, then delete: monkeypatch then removes what the entry's gdal_env sets when the test
    # ends (a bare delenv of an unset variable records nothing, and EMPTY_DIR would leak into
    # later tests: GDAL's ENVI driver cannot find its .hdr beside the file then)
    monkeypatch.setenv("GDAL_DISABLE_READDIR_ON_OPEN", "")
    monkeypatch.delenv("GDAL_DISABLE_READDIR_ON_OPEN")
    monkeypatch.setattr("geocmid.data.paths._APPLIED", {})
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    # A relative archive (relative to the YAML folder, like every catalog path), a file:// URL,
    # and remote entries that must come back untouched without any network access.
    (catalog_dir / "zipped.yaml").write_text(
        "kind: imagery\npaths: /vsizip/../data/scenes.zip/inner/scene.tif\nbands: [a, b, c]\n"
        "gdal_env: {GDAL_DISABLE_READDIR_ON_OPEN: EMPTY_DIR}\n"
    )
    (catalog_dir / "url.yaml").write_text(
        f"kind: imagery\npaths: file://{scene}\nbands: [a, b, c]\n"
    )
    (catalog_dir / "plain.yaml").write_text(f"kind: imagery\npaths: {scene}\nbands: [a, b, c]\n")
    (catalog_dir / "remote.yaml").write_text(
        "kind: imagery\nbands: [a, b, c]\npaths:\n"
        "  - /vsicurl/https://example.org/cogs/scene.tif\n  - s3://bucket/cogs/scene.tif\n"
    )
    catalog = Catalog(catalog_dir)
    remote = catalog.get("remote").files()
    assert [str(p) for p in remote] == [
        "/vsicurl/https://example.org/cogs/scene.tif",
        "s3://bucket/cogs/scene.tif",
    ]
    reads = {}
    for name in ("plain", "zipped", "url"):
        entry = catalog.get(name)
        validate(entry)  # header checks only; "file not found" was the bug for /vsizip/
        with imagery_source(entry).reader() as reader:
            reads[name] = reader.read(0, 150, 0, 170)[0]
    assert str(catalog.get("zipped").files()[0]).startswith("/vsizip//")
    assert os.environ["GDAL_DISABLE_READDIR_ON_OPEN"] == "EMPTY_DIR"  # the entry's gdal_env
    np.testing.assert_array_equal(reads["zipped"], reads["plain"])
    np.testing.assert_array_equal(reads["url"], reads["plain"])
    assert np.nanstd(reads["plain"]) > 0


def test_missing_file_inside_an_archive_is_named_by_validation(zipped, tmp_path):
    catalog_dir = tmp_path / "catalog"
    catalog_dir.mkdir()
    (catalog_dir / "bad.yaml").write_text(
        "kind: imagery\npaths: /vsizip/../data/scenes.zip/inner/nope.tif\nbands: [a, b, c]\n"
    )
    with pytest.raises(DataError, match=r"nope\.tif"):
        validate(Catalog(catalog_dir).get("bad"))
    (catalog_dir / "bad.yaml").write_text(
        "kind: imagery\npaths: /vsizip/../data/*.zip/inner/scene.tif\nbands: [a, b, c]\n"
    )
    with pytest.raises(ConfigError, match="wildcard"):
        Catalog(catalog_dir).get("bad").files()


def test_gdal_env_is_set_and_conflicts_are_refused(monkeypatch):
    monkeypatch.delenv("GDAL_HTTP_TIMEOUT", raising=False)
    monkeypatch.setattr("geocmid.data.paths._APPLIED", {})
    apply_gdal_env({"GDAL_HTTP_TIMEOUT": 7, "AWS_NO_SIGN_REQUEST": True}, "entry 'a'")
    assert os.environ["GDAL_HTTP_TIMEOUT"] == "7"
    apply_gdal_env({"GDAL_HTTP_TIMEOUT": "7"}, "entry 'b'")  # same value: fine
    with pytest.raises(ConfigError, match="entry 'a' set GDAL_HTTP_TIMEOUT=7"):
        apply_gdal_env({"GDAL_HTTP_TIMEOUT": 9}, "entry 'c'")
    with pytest.raises(ConfigError, match="not a GDAL option"):
        apply_gdal_env({"timeout": 9}, "entry 'd'")
    monkeypatch.delenv("AWS_NO_SIGN_REQUEST", raising=False)


def test_predict_vsizip_and_file_url_inputs_match_the_local_file(zipped, tmp_path):
    scene, archive = zipped
    predictor = Predictor(toymodels.TinyCNN(seed=1), toymodels.card())
    options = OutputOptions(vectors=False, quicklook=False)
    outputs = {}
    for label, path in (
        ("plain", str(scene)),
        ("zip", f"/vsizip/{archive}/inner/scene.tif"),
        ("url", f"file://{scene}"),
    ):
        result = predict_scene(
            predictor, [path], tmp_path / label, "s", SETTINGS, options, progress=False
        )
        with rasterio.open(result.outputs["classes"]) as ds:
            outputs[label] = (ds.read(), ds.transform, ds.crs)
            assert path in ds.tags().get("geocmid:inputs", path)  # provenance as written
        assert result.summary["inputs"] == [path]  # recorded as written
    for label in ("zip", "url"):  # the same pixels on the same grid as the local file
        np.testing.assert_array_equal(outputs[label][0], outputs["plain"][0])
        assert outputs[label][1:] == outputs["plain"][1:]
    with rasterio.open(tmp_path / "zip" / "s_classes.tif") as ds:
        assert ds.crs.to_epsg() == 32618 and len(np.unique(ds.read(1))) > 1
    ident = file_identity(f"/vsizip/{archive}/inner/scene.tif")
    assert ident["size"] == archive.stat().st_size  # the archive's, without reading the data


def test_cli_predict_takes_a_vsizip_scene(zipped, tmp_path):
    import json

    import torch

    from geocmid.cli import main

    _, archive = zipped
    (tmp_path / "m").mkdir()
    torch.jit.script(toymodels.TinyCNN(seed=1)).save(str(tmp_path / "m" / "model.pt"))
    (tmp_path / "m" / "card.json").write_text(json.dumps(toymodels.card()))
    code = main(
        [
            "predict", f"/vsizip/{archive}/inner/scene.tif", "-o", str(tmp_path / "out"),
            "--model", str(tmp_path / "m" / "model.pt"), "--card", str(tmp_path / "m/card.json"),
            "--window", "64", "--overlap", "16", "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    assert (tmp_path / "out" / "scene_classes.tif").exists()
