"""Fixtures for the scale-out tests: a small Dask cluster, tiny scenes, tiny models."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pyogrio
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))  # toymodels


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A local Dask cluster of 2 worker processes (one thread each), shared by a module."""
    distributed = pytest.importorskip("distributed")
    import logging

    cluster = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",  # any free port: no clash with another cluster
        silence_logs=logging.ERROR,
    )
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


def output_files(folder: Path) -> dict[str, object]:
    """Rasters and PNG byte for byte; GPKG layers and JSON by content (write dates left out)."""
    out: dict[str, object] = {}
    for p in sorted(folder.iterdir()):
        if p.suffix in (".tif", ".png"):
            out[p.name] = p.read_bytes()
        elif p.suffix == ".gpkg":  # every layer (the map layer, and styles when written)
            layers = {}
            for layer, _ in pyogrio.list_layers(p):
                frame = gpd.read_file(p, layer=layer)
                geometry = frame.geometry.to_wkb().tolist() if "geometry" in frame else None
                table = frame.drop(columns=["geometry"], errors="ignore")
                table = table[[c for c in table.columns if "date" not in c]].to_dict("list")
                layers[layer] = (table, geometry)
            out[p.name] = layers
        elif p.name.endswith("_summary.json"):
            out[p.name] = json.loads(p.read_text())["classes"]
        elif p.name.endswith("_item.json"):  # the STAC item, less its times
            item = json.loads(p.read_text())
            props = item.pop("properties")
            out[p.name] = (item, {k: v for k, v in props.items() if "datetime" not in k
                                  and k != "created"})  # fmt: skip
        else:
            out[p.name] = p.read_bytes() if p.is_file() else None
    return out


def scene_data(height: int, width: int, seed: int = 0) -> np.ndarray:
    rows, cols = np.mgrid[0:height, 0:width].astype(np.float32)
    data = np.stack(
        [np.sin(rows / 40 + seed) * np.cos(cols / 30), np.cos(rows / 9), np.sin(cols / 13 + seed)]
    ).astype(np.float32)
    data[:, -40:, :50] = np.nan
    return data
