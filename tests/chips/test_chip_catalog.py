"""Chip dataset catalog kinds on the real chip samples (quirks of each set) and tiny fixtures."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image

from geocmid.cli import main
from geocmid.data.catalog import Catalog, validate
from geocmid.data.chipsets import read_image, records, split_indices
from geocmid.errors import ConfigError, DataError
from tests.chips.fixtures import levir_layout, write_png
from tests.rasters import write_entry

#: The Dubai masks' real colours (classes.json's do not match the pixels: SOURCE.txt).
DUBAI_CLASSES = """classes:
  0: {name: building, color: '#3C1098'}
  1: {name: land, color: '#8429F6'}
  2: {name: road, color: '#6EC1E4'}
  3: {name: vegetation, color: '#FEDD3A'}
  4: {name: water, color: '#E2A929'}
  5: {name: unlabeled, color: '#9B9B9B'}
"""


def chips(shared_data: Path) -> Path:
    root = shared_data / "chips"
    if not (root / "MANIFEST.md").exists():
        pytest.skip("chip samples not found")
    return root


def dubai_entry(cat: Path, shared: Path, extra: str = "ignore_colors: ['#000000']\n") -> None:
    root = chips(shared) / "segmentation/dubai-aerial/Semantic segmentation dataset"
    write_entry(
        cat, "dubai",
        f"kind: chip_segmentation\nroot: '{root}'\nmask_format: colors\n{DUBAI_CLASSES}{extra}",
    )  # fmt: skip


@pytest.mark.slow
def test_dubai_colour_masks_palette_and_rgb(tmp_path: Path, shared_data: Path) -> None:
    dubai_entry(tmp_path, shared_data)
    entry = Catalog(tmp_path).get("dubai")
    report = validate(entry)  # decodes all 54 masks, palette (Tile 2, 4) and RGB ones
    assert report.image_counts == {"pairs": 54}
    from geocmid.data.chipsets import mask_decoder

    recs = records(entry)
    tile2 = next(g for g in recs.files if "Tile 2" in str(g[1]))
    with Image.open(tile2[1]) as img:  # a palette PNG: its indices are not the classes
        assert img.mode == "P"
    mask = mask_decoder(entry)(tile2[1])
    assert set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
    assert len(set(np.unique(mask).tolist()) - {255}) >= 3  # several real classes, not one


def test_dubai_black_pixels_name_file_colour_and_count(tmp_path: Path, shared_data: Path) -> None:
    dubai_entry(tmp_path, shared_data, extra="")
    with pytest.raises(DataError) as error:
        validate(Catalog(tmp_path).get("dubai"))
    message = str(error.value)
    assert "image_part_" in error.value.where and "masks" in error.value.where
    assert "#000000" in message and "pixels" in message and "ignore_colors" in message
    assert main(["--catalog", str(tmp_path), "catalog", "validate"]) != 0


def test_dubai_classes_json_colours_do_not_match(tmp_path: Path, shared_data: Path) -> None:
    root = chips(shared_data) / "segmentation/dubai-aerial/Semantic segmentation dataset"
    shipped = json.loads((root / "classes.json").read_text())["classes"]
    table = "".join(
        f"  {i}: {{name: '{c['title']}', color: '{c['color']}'}}\n" for i, c in enumerate(shipped)
    )
    write_entry(
        tmp_path, "d", f"kind: chip_segmentation\nroot: '{root}'\nmask_format: colors\n"
        f"classes:\n{table}",
    )  # fmt: skip
    with pytest.raises(DataError, match=r"#3c1098 \(RGB 60,16,152\) \(\d+ pixels\)"):
        validate(Catalog(tmp_path).get("d"))


def test_whu_layouts_pair_and_split(tmp_path: Path, shared_data: Path) -> None:
    base = chips(shared_data) / "change"
    write_entry(
        tmp_path, "lgp", f"kind: chip_change\nroot: {base}/whu-cd-lgpnet/samples/WHU\n"
        "before_dir: image1\nafter_dir: image2\nsplits: {train: train, test: test}\n",
    )  # fmt: skip
    write_entry(
        tmp_path, "scm", f"kind: chip_change\nroot: {base}/whu-cd-ucdscm/data/samples_WHU-CD\n"
        "before_dir: prev\nafter_dir: curr\n",
    )  # fmt: skip
    cat = Catalog(tmp_path)
    lgp = cat.get("lgp")
    assert validate(lgp).image_counts == {"test": 4, "train": 4}
    recs = records(lgp)
    names = {(g[0].parent.name, g[1].parent.name, g[2].parent.name) for g in recs.files}
    assert names == {("image1", "image2", "label")}
    from geocmid.data.chipsets import mask_decoder

    decode = mask_decoder(lgp)
    nearly_empty = [
        g for g in recs.files if g[2].parent.parent.name == "train" and g[2].stem == "2"
    ]
    share = decode(nearly_empty[0][2]).mean()  # train/2.tif: 0.01 % changed (0/255 → 0/1)
    assert 0 < share < 0.001
    assert read_image(recs.files[0][0]).dtype == np.uint8  # LZW TIFF, no CRS: read on pixels
    assert validate(cat.get("scm")).image_counts == {"pairs": 3}


def test_nwpu_split_folders(tmp_path: Path, shared_data: Path) -> None:
    root = chips(shared_data) / "classification/nwpu-resisc12/NWPU-RESISC12"
    write_entry(
        tmp_path, "n", f"kind: image_folder\nroot: {root}\nsplits: {{train: train, test: test}}\n"
    )
    entry = Catalog(tmp_path).get("n")
    counts = validate(entry).image_counts
    assert len(counts) == 12 and set(counts.values()) == {65}  # classes, not split folders
    recs = records(entry)
    idx = split_indices(recs, (0.7, 0.15, 0.15), seed=0)
    assert len(idx["test"]) == 180  # the benchmark's test folder, kept
    assert len(idx["val"]) + len(idx["train"]) == 600
    assert all(recs.splits[i] == "train" for i in idx["val"])  # val drawn from train only
    val_classes = {recs.labels[i] for i in idx["val"]}
    assert len(val_classes) == 12  # stratified


@pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
def test_multiband_16bit_and_float_tiffs_unlabelled(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i, dtype in enumerate(("uint16", "float32")):
        data = (rng.random((5, 40, 48)) * 3000).astype(dtype)
        path = tmp_path / "chips" / "sub" / f"c{i}.tif"
        path.parent.mkdir(parents=True, exist_ok=True)
        with rasterio.open(path, "w", driver="GTiff", width=48, height=40, count=5,
                           dtype=dtype) as dst:  # fmt: skip
            dst.write(data)
        back = read_image(path)
        assert back.dtype == np.dtype(dtype) and back.shape == (5, 40, 48)
        np.testing.assert_array_equal(back, data)
    write_entry(
        tmp_path / "cat", "ms", "kind: image_folder\nroot: ../chips\nlabels: none\nbands: 5\n"
    )
    entry = Catalog(tmp_path / "cat").get("ms")
    assert validate(entry).image_counts == {"images": 2}
    write_entry(
        tmp_path / "cat", "bad", "kind: image_folder\nroot: ../chips\nlabels: none\nbands: 4\n"
    )
    with pytest.raises(ConfigError, match="names 4 bands but the images have 5"):
        validate(Catalog(tmp_path / "cat").get("bad"))


def test_levir_naming_split_file_and_missing_counterpart(tmp_path: Path) -> None:
    root = levir_layout(tmp_path / "LEVIR-CD", size=32)
    write_entry(
        tmp_path / "cat", "levir",
        "kind: chip_change\nroot: ../LEVIR-CD\nsplits: {train: train, val: val, test: test}\n",
    )  # fmt: skip
    entry = Catalog(tmp_path / "cat").get("levir")
    assert validate(entry).image_counts == {"test": 2, "train": 4, "val": 2}
    # a split file listing names (as many benchmarks ship train.txt / test.txt)
    (tmp_path / "test.txt").write_text("train_0.png\ntrain_1\n")
    write_entry(
        tmp_path / "cat", "listed",
        "kind: chip_change\nroot: ../LEVIR-CD/train\nsplits: {train: ../../test.txt}\n",
    )  # fmt: skip
    assert validate(Catalog(tmp_path / "cat").get("listed")).image_counts == {"train": 2}
    (root / "val" / "B" / "val_1.png").unlink()
    with pytest.raises(DataError, match=r"val_1.png.*no counterpart in 'B'"):
        validate(entry)


def test_mask_size_and_value_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "d" / "images" / "a.png", np.zeros((16, 16, 3), np.uint8))
    write_png(tmp_path / "d" / "masks" / "a.png", np.full((16, 12), 7, np.uint8))
    write_entry(tmp_path / "cat", "s", "kind: chip_segmentation\nroot: ../d\nclasses: [a, b]\n")
    with pytest.raises(DataError, match="is 12x16 pixels but"):
        validate(Catalog(tmp_path / "cat").get("s"))
    write_png(tmp_path / "d" / "masks" / "a.png", np.full((16, 16), 7, np.uint8))
    with pytest.raises(DataError, match=r"values not in the class table: 7 \(256 pixels\)"):
        validate(Catalog(tmp_path / "cat").get("s"))
    write_entry(tmp_path / "cat", "t", "kind: chip_segmentation\nroot: ../d\nclasses: [a]\n"
                "splits: {val: x}\n")  # fmt: skip
    with pytest.raises(ConfigError, match="no 'train' split"):
        Catalog(tmp_path / "cat").get("t")


def test_validate_names_every_unreadable_image_of_a_folder(tmp_path: Path, capsys) -> None:
    """Three corrupt images of one class folder: one error for the entry naming all three."""
    rng = np.random.default_rng(0)
    for c in ("beach", "forest"):
        for i in range(4):
            write_png(tmp_path / "imgs" / c / f"{c}_{i}.png", rng.integers(0, 255, (32, 32, 3),
                                                                          np.uint8))  # fmt: skip
    for i in (0, 1, 3):
        (tmp_path / "imgs" / "forest" / f"forest_{i}.png").write_bytes(b"not an image" * 10)
    write_entry(tmp_path / "cat", "scenes", "kind: image_folder\nroot: ../imgs\n")
    code = main(["--catalog", str(tmp_path / "cat"), "catalog", "validate"])
    out = capsys.readouterr().out
    assert code == 2, out
    assert out.count("FAILED") == 1 and "3 of 8 files cannot be read" in out, out
    for i in (0, 1, 3):
        assert f"forest_{i}.png" in out, out
    assert "forest_2.png" not in out and "Traceback" not in out, out


def test_validate_names_every_label_that_cannot_be_decoded(tmp_path: Path, capsys) -> None:
    """Label PNGs cut short (their headers read, their pixels do not): all of them named."""
    root = levir_layout(tmp_path / "LEVIR-CD", size=64, counts={"train": 4, "val": 2})
    for i in (0, 1, 2):
        label = root / "train" / "label" / f"train_{i}.png"
        data = label.read_bytes()
        label.write_bytes(data[: len(data) // 2])
    write_entry(tmp_path / "cat", "levir", "kind: chip_change\nroot: ../LEVIR-CD\n"
                "splits: {train: train, val: val}\n")  # fmt: skip
    code = main(["--catalog", str(tmp_path / "cat"), "catalog", "validate", "levir"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "3 of 6 label files cannot be read" in err and "cannot be decoded" in err, err
    for i in (0, 1, 2):
        assert f"train_{i}.png" in err, err
