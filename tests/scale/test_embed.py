"""Embeddings to GeoParquet and similarity search: a chip's nearest neighbour is itself, and
its translated copy ranks next."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
import toymodels
from torch import nn

from geocmid.inference.card import ModelCard
from geocmid.inference.embed import EmbedSettings, embed_scene, nearest, read_embeddings
from tests.inference.conftest import write_scene

CHIP = 32


class Backbone(nn.Module):
    """A fixed 5x5 conv + ReLU: feature map [B, 8, H, W] (width 8)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(3, 8, 5, padding=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


class Crashing(Backbone):
    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.calls = limit, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError("killed")
        return super().forward(x)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    """160 x 192 px: faint noise, a striped patch filling chip (32, 32) and a copy of the patch
    shifted by (+66, +99) px, i.e. not on the chip grid (it fills most of chip (96, 128))."""
    rng = np.random.default_rng(0)
    data = rng.normal(0, 0.05, (3, 160, 192)).astype(np.float32)
    rows, cols = np.mgrid[0:CHIP, 0:CHIP]
    patch = np.stack([np.sin(cols / 2.0), np.cos(rows / 3.0), np.sin((rows + cols) / 4.0)]) * 2
    data[:, 32:64, 32:64] += patch
    data[:, 98:130, 131:163] += patch
    return write_scene(tmp_path / "scene.tif", data)


def card() -> ModelCard:
    return ModelCard.from_dict(toymodels.card(in_chans=3))


def test_embed_writes_geoparquet_and_similar_chips_are_found(scene, tmp_path):
    out = tmp_path / "emb.parquet"
    result = embed_scene(Backbone(), card(), scene, out, EmbedSettings(chip=CHIP), progress=False)
    assert result.chips == 5 * 6 and result.width == 8
    frame = read_embeddings(out)
    assert isinstance(frame, gpd.GeoDataFrame) and frame.crs.to_epsg() == 32618
    assert len(frame) == 30 and len(frame["embedding"].iloc[0]) == 8  # backbone width
    assert frame["model_fingerprint"].nunique() == 1
    first = frame[(frame.row == 32) & (frame.col == 32)]
    # Chip (row 32, col 32) is the square from x 500320 to 500640, y 3999360 to 3999680.
    assert first.geometry.iloc[0].bounds == (500320.0, 3999360.0, 500640.0, 3999680.0)
    query = int(first.index[0])
    copy = int(frame[(frame.row == 96) & (frame.col == 128)].index[0])
    hits = nearest(frame, query, k=3)
    assert list(hits.index[:2]) == [query, copy]
    assert hits["similarity"].iloc[0] == pytest.approx(1.0)
    assert hits["similarity"].iloc[1] > hits["similarity"].iloc[2]
    # A point in the chip, and the vector itself, give the same answer.
    by_point = nearest(out, (500400.0, 3999500.0), k=2)
    assert list(by_point.index) == [query, copy]
    by_vector = nearest(frame, frame["embedding"].iloc[query], k=2)
    assert list(by_vector.index) == [query, copy]


def test_embed_resumes_after_an_interruption(scene, tmp_path):
    out = tmp_path / "emb.parquet"
    settings = EmbedSettings(chip=CHIP, batch_size=4)
    with pytest.raises(RuntimeError, match="killed"):
        embed_scene(Crashing(limit=5), card(), scene, out, settings, progress=False)
    assert not out.exists()
    done = list(tmp_path.glob(".emb.parquet.geocmid-work/blocks/*.npz"))
    assert 0 < len(done) < 5
    resumed = embed_scene(Crashing(limit=10**6), card(), scene, out, settings, progress=False)
    assert resumed.strips_run == 5 - len(done)
    full = embed_scene(
        Backbone(), card(), scene, tmp_path / "full.parquet", settings, progress=False
    )
    assert full.strips_run == 5
    a, b = read_embeddings(out), read_embeddings(tmp_path / "full.parquet")
    np.testing.assert_array_equal(np.stack(a["embedding"]), np.stack(b["embedding"]))
    assert a.geometry.equals(b.geometry)


@pytest.mark.slow
def test_cli_embed_a_geocmid_export(scene, tmp_path):
    """`geocmid embed` on a `geocmid export` backbone (resnet18): vector length = its width."""
    from geocmid.cli import main
    from geocmid.models.backbones import create_backbone
    from geocmid.models.weights import export_backbone

    torch.manual_seed(0)
    backbone = create_backbone("resnet18", 3, img_size=CHIP)
    export_backbone(
        backbone, tmp_path / "r18", {"bands": [1, 2, 3], "mean": [0.0] * 3, "std": [1.0] * 3}
    )
    out = tmp_path / "emb.parquet"
    args = ["embed", str(scene), "--model", str(tmp_path / "r18.safetensors"), "-o", str(out)]
    assert main([*args, "--chip", str(CHIP), "--no-progress"]) == 0
    frame = read_embeddings(out)
    assert len(frame) == 30 and len(frame["embedding"].iloc[0]) == backbone.out_channels == 512
    assert main([*args, "--chip", str(CHIP), "--no-progress"]) == 2  # exists: one-line error
