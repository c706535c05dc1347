"""`geocmid embed` on chip datasets: one row per image (path, label, split, embedding), null
geometry for plain images and footprints for georeferenced ones, resumable; similarity search
by an image's path and by a query image (a flipped copy ranks next to its original)."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch
import toymodels
from PIL import Image

from geocmid.data.catalog import Catalog
from geocmid.errors import ConfigError, DataError
from geocmid.inference.card import ModelCard
from geocmid.inference.embed import EmbedSettings, nearest, read_embeddings
from geocmid.inference.embed_chips import embed_chips
from tests.chips.fixtures import levir_layout, write_png
from tests.rasters import write_entry, write_raster
from tests.scale.test_embed import Backbone, Crashing

NWPU = "chips/classification/nwpu-resisc12/NWPU-RESISC12"
COLOURS = {"fields": [(200, 180, 60), (60, 200, 90), (180, 60, 200)],
           "water": [(20, 40, 150), (40, 140, 160), (120, 30, 40)]}  # fmt: skip


def texture(colour: tuple[int, int, int], seed: int, size: int = 40) -> np.ndarray:
    """``[size, size + 8, 3]`` uint8: a colour with stripes and noise (not symmetric)."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0 : size + 8]
    stripes = 30 * np.sin(cols / (2 + seed) + rows / 5.0)[..., None]
    image = np.asarray(colour, float) + stripes + rng.normal(0, 8, (size, size + 8, 3))
    return image.clip(0, 255).astype(np.uint8)


@pytest.fixture
def chips(tmp_path: Path) -> tuple[Catalog, Path]:
    """An image_folder entry: 2 class folders of 3 PNGs each, plus a left-right flipped copy of
    fields/f0.png as fields/f0_flipped.png; train/val by split files."""
    root = tmp_path / "chips"
    for label, colours in COLOURS.items():
        for i, colour in enumerate(colours):
            write_png(root / label / f"{label[0]}{i}.png", texture(colour, i))
    original = np.asarray(Image.open(root / "fields" / "f0.png"))
    write_png(root / "fields" / "f0_flipped.png", np.ascontiguousarray(original[:, ::-1]))
    (root / "val.txt").write_text("w2\n")
    (root / "train.txt").write_text("\n".join(["f0", "f1", "f2", "f0_flipped", "w0", "w1"]))
    write_entry(tmp_path / "cat", "chips", f"kind: image_folder\nroot: {root}\n"
                "splits: {train: train.txt, val: val.txt}\n")  # fmt: skip
    return Catalog(tmp_path / "cat"), root


def card(chip: int = 32) -> ModelCard:
    return ModelCard.from_dict({**toymodels.card(in_chans=3, mean=120.0, std=60.0),
                                "chip_size": chip})  # fmt: skip


def test_embed_chip_folder_rows_and_nearest_by_path_and_by_image(chips, tmp_path):
    catalog, root = chips
    out = tmp_path / "chips.parquet"
    result = embed_chips(Backbone(), card(), catalog.get("chips"), out, progress=False)
    assert (result.chips, result.width, result.strips_run) == (7, 8, 1)
    frame = read_embeddings(out)
    assert isinstance(frame, gpd.GeoDataFrame) and frame.crs is None
    assert frame.geometry.isna().all()  # plain images: no footprint
    rows = frame.set_index("path")
    assert rows.loc["fields/f0_flipped.png", "label"] == "fields"
    assert rows.loc["water/w2.png", ["label", "split"]].tolist() == ["water", "val"]
    assert rows.loc["water/w0.png", ["height", "width"]].tolist() == [40, 48]
    assert len(frame["embedding"].iloc[0]) == 8
    assert frame.attrs["geocmid"]["chip"] == 32 and frame.attrs["geocmid"]["kind"] == "chips"
    # By path: the image itself, then its flipped copy.
    hits = nearest(frame, "fields/f0.png", k=3)
    assert hits["path"].tolist()[:2] == ["fields/f0.png", "fields/f0_flipped.png"]
    assert hits["similarity"].iloc[0] == pytest.approx(1.0)
    assert hits["rank"].tolist() == [0, 1, 2]
    # By a query image that is not in the file (an upside-down copy of w1, other size too).
    w1 = np.asarray(Image.open(root / "water" / "w1.png"))
    query = write_png(tmp_path / "query.png", np.ascontiguousarray(w1[::-1, :40]))
    by_image = nearest(out, str(query), k=2, model=Backbone())
    assert by_image["path"].iloc[0] == "water/w1.png"
    with pytest.raises(DataError, match="needs the model"):
        nearest(frame, query, k=2)
    with pytest.raises(DataError, match="neither an image path"):
        nearest(frame, "fields/nope.png")


def test_embed_chips_resumes_and_matches_an_uninterrupted_run(chips, tmp_path):
    catalog, _ = chips
    entry = catalog.get("chips")
    out = tmp_path / "emb.parquet"
    settings = EmbedSettings(batch_size=1)
    with pytest.raises(RuntimeError, match="killed"):
        embed_chips(Crashing(limit=3), card(), entry, out, settings, progress=False, group=2)
    assert not out.exists()
    done = list(tmp_path.glob(".emb.parquet.geocmid-work/blocks/*.npz"))
    assert len(done) == 1  # groups of 2 images: the first saved, the second interrupted
    resumed = embed_chips(Crashing(limit=10**6), card(), entry, out, settings, progress=False,
                          group=2)  # fmt: skip
    assert resumed.strips_run == 3 and resumed.chips == 7  # 4 groups, one from the work folder
    assert not (tmp_path / ".emb.parquet.geocmid-work").exists()
    full = embed_chips(Backbone(), card(), entry, tmp_path / "full.parquet", progress=False)
    a, b = read_embeddings(out), read_embeddings(full.path)
    assert a["path"].tolist() == b["path"].tolist()
    np.testing.assert_allclose(np.stack(a["embedding"]), np.stack(b["embedding"]), atol=1e-5)
    with pytest.raises(DataError, match="already exists"):
        embed_chips(Backbone(), card(), entry, out, progress=False)


def test_embed_chips_georeferenced_tiffs_get_footprints_and_no_label_column(tmp_path):
    """TIFF chips with a CRS: their footprints, in the first one's CRS; labels: none."""
    root = tmp_path / "tifs"
    rng = np.random.default_rng(1)
    write_raster(root / "a.tif", rng.integers(0, 255, (3, 16, 16), np.uint8), crs="EPSG:32633")
    write_raster(root / "b.tif", rng.integers(0, 255, (3, 16, 16), np.uint8), crs="EPSG:32633",
                 origin=(500_160.0, 5_000_000.0))  # fmt: skip
    write_entry(tmp_path / "cat", "tifs", f"kind: image_folder\nroot: {root}\nlabels: none\n")
    entry = Catalog(tmp_path / "cat").get("tifs")
    out = tmp_path / "tifs.parquet"
    embed_chips(Backbone(), card(16), entry, out, progress=False)
    frame = read_embeddings(out)
    assert frame.crs.to_epsg() == 32633 and "label" not in frame
    assert frame.geometry.iloc[0].bounds == (500_000.0, 4_999_840.0, 500_160.0, 5_000_000.0)
    assert frame.geometry.iloc[1].bounds[0] == 500_160.0
    hits = nearest(frame, (500_080.0, 4_999_900.0), k=1)  # a point: the chip holding it
    assert hits["path"].tolist() == ["a.tif"]


def test_embed_chips_refuses_other_kinds_and_wrong_band_counts(chips, tmp_path):
    catalog, _ = chips
    scene = write_raster(tmp_path / "scene.tif", np.zeros((3, 8, 8), np.uint8))
    write_entry(tmp_path / "cat", "scene", f"kind: imagery\npaths: {scene}\nbands: [r, g, b]\n")
    with pytest.raises(ConfigError, match="not a chip dataset"):
        embed_chips(Backbone(), card(), Catalog(tmp_path / "cat").get("scene"),
                    tmp_path / "x.parquet", progress=False)  # fmt: skip
    four = ModelCard.from_dict(toymodels.card(in_chans=4))
    with pytest.raises(Exception, match="has 3 bands but the model takes 4"):
        embed_chips(Backbone(), four, catalog.get("chips"), tmp_path / "y.parquet",
                    progress=False)  # fmt: skip


def test_embed_chips_change_entry_gives_both_dates_and_no_label(tmp_path):
    """chip_change (LEVIR-CD layout): one row per date image, never the change labels."""
    root = levir_layout(tmp_path / "levir", size=32, counts={"train": 2, "test": 1})
    write_entry(tmp_path / "cat", "levir", f"kind: chip_change\nroot: {root}\n"
                "splits: {train: train, test: test}\n")  # fmt: skip
    out = tmp_path / "levir.parquet"
    embed_chips(Backbone(), card(), Catalog(tmp_path / "cat").get("levir"), out, progress=False)
    frame = read_embeddings(out)
    assert sorted(frame["path"]) == ["test/A/test_0.png", "test/B/test_0.png",
                                     "train/A/train_0.png", "train/A/train_1.png",
                                     "train/B/train_0.png", "train/B/train_1.png"]  # fmt: skip
    assert "label" not in frame
    assert frame.set_index("path").loc["test/B/test_0.png", "split"] == "test"


@pytest.mark.slow
@pytest.mark.shared
def test_cli_embed_nwpu_chips_nearest_is_itself_and_flipped_copies_rank_high(
    shared_data: Path, tmp_path: Path
) -> None:
    """The real NWPU-RESISC12 test images of 4 classes (60 JPEGs of 256 px) through `geocmid
    embed --entry` with a random-init ResNet-18 export at 224 px: every image's nearest
    neighbour is itself, and a left-right flipped copy of an image, given as a query image,
    finds its original in the top 3 (measured: rank 0-2 for all 60 images; at 64 px a random
    network is not flip-invariant enough, ranks reach 78 of 180)."""
    from geocmid.cli import main
    from geocmid.models.backbones import create_backbone
    from geocmid.models.weights import export_backbone, load_backbone

    root = shared_data / NWPU / "test"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    write_entry(tmp_path / "cat", "nwpu", f"kind: image_folder\nroot: {root}\n"
                "classes: [beach, forest, industrial_area, river]\n")  # fmt: skip
    torch.manual_seed(0)
    export_backbone(create_backbone("resnet18", 3, img_size=224), tmp_path / "r18",
                    {"bands": [1, 2, 3], "mean": [100.0] * 3, "std": [50.0] * 3})  # fmt: skip
    out = tmp_path / "nwpu.parquet"
    args = ["--catalog", str(tmp_path / "cat"), "embed", "--entry", "nwpu", "--model",
            str(tmp_path / "r18.safetensors"), "--chip", "224", "-o", str(out), "--no-progress"]
    assert main(args) == 0
    frame = read_embeddings(out)
    assert len(frame) == 60 and sorted(frame["label"].unique()) == [
        "beach", "forest", "industrial_area", "river"]  # fmt: skip
    assert frame["path"].iloc[0] == "beach/beach_551.jpg"
    assert len(frame["embedding"].iloc[0]) == 512 and frame.geometry.isna().all()
    for name in frame["path"]:
        assert nearest(frame, name, k=1)["path"].iloc[0] == name
    backbone, _ = load_backbone(tmp_path / "r18.safetensors")
    for name in frame["path"].iloc[::6]:  # 10 images, every class
        image = np.asarray(Image.open(root / name))
        flipped = write_png(tmp_path / "q" / name, np.ascontiguousarray(image[:, ::-1]))
        by_image = nearest(frame, flipped, k=3, model=backbone)
        assert name in by_image["path"].tolist(), by_image[["path", "similarity"]]
