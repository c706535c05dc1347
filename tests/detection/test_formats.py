"""Detection label formats read the right boxes: generated files and the real chip datasets.

Coordinates are checked against values computed by hand from the files' text (quoted in each
test), so a wrong axis order, a missing denormalisation or an off-by-one clip fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from geocmid.data.boxformats import parse_dota, parse_nwpu, parse_yolo, read_detection_folder
from geocmid.data.catalog import Catalog, validate
from geocmid.errors import ConfigError, DataError
from tests.detection.dota_data import dota_entry, write_dota_folder

CHIPS = "chips/detection"
NWPU_CLASSES = ("[airplane, ship, storage tank, baseball diamond, tennis court, "
                "basketball court, ground track field, harbor, bridge, vehicle]")  # fmt: skip


def _entry(catalog: Path, name: str, text: str) -> Path:
    catalog.mkdir(parents=True, exist_ok=True)
    (catalog / f"{name}.yaml").write_text(text)
    return catalog


def _image(path: Path, width: int, height: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), 90, np.uint8)).save(path)
    return path


# ---- DOTA labelTxt -------------------------------------------------------------------------------
def test_dota_labeltxt_header_difficulty_and_boxes() -> None:
    text = (
        "imagesource:GoogleEarth\n"
        "gsd:0.146343590398\n"
        "10.0 20.0 50.0 20.0 50.0 40.0 10.0 40.0 plane 0\n"
        "100 100 120 110 110 130 90 120 storage-tank 1\n"
        "\n"
    )
    quads, classes, difficult, meta = parse_dota(text, "a.txt")
    assert meta == {"imagesource": "GoogleEarth", "gsd": "0.146343590398"}
    assert classes == ["plane", "storage-tank"] and difficult.tolist() == [False, True]
    np.testing.assert_array_equal(quads[1], [[100, 100], [120, 110], [110, 130], [90, 120]])
    with pytest.raises(DataError, match=r"a\.txt, line 3.*has 8 fields"):
        parse_dota("imagesource:x\ngsd:1\n1 2 3 4 5 6 7 8\n", "a.txt")
    with pytest.raises(DataError, match=r"line 1: difficulty '2' is not 0 or 1"):
        parse_dota("1 2 3 4 5 6 7 8 plane 2\n", "a.txt")


def test_dota_folder_negatives_clipping_and_axis_aligned_boxes(tmp_path: Path) -> None:
    root = tmp_path / "dota"
    write_dota_folder(root, {"train": 3, "val": 2}, size=96, count=2)
    # an object reaching past the right edge (x to 110 in a 96-px image) and one wholly outside
    label = root / "train" / "labelTxt" / "P0000.txt"
    label.write_text(label.read_text() + "80 10 110 10 110 30 80 30 ship 0\n"
                     "120 10 130 10 130 20 120 20 ship 0\n")  # fmt: skip
    catalog = tmp_path / "catalog"
    dota_entry(catalog, "dota", root)
    folder = read_detection_folder(Catalog(catalog).get("dota"))
    assert folder.counts() == {"train": 3, "val": 2} and folder.oriented
    first = folder.records[0]
    assert first.meta["gsd"] == "0.146343590398" and first.dropped == 1
    np.testing.assert_allclose(first.boxes[-1], [80, 10, 96, 30])  # clipped to the image
    np.testing.assert_allclose(first.polygons[-1][:, 0], [80, 110, 110, 80])  # corners kept
    negatives = [r for r in folder.records if len(r) == 0]
    assert [r.image.name for r in negatives] == ["P0002.png", "P0004.png"]
    assert any("wholly outside" in n for n in folder.notes)
    # catalog validate reads every label file and counts the images per split
    report = validate(Catalog(catalog).get("dota"))
    assert report.image_counts == {"train images": 3, "val images": 2}


def test_missing_label_file_is_an_error_unless_negative(tmp_path: Path) -> None:
    root = tmp_path / "dota"
    write_dota_folder(root, {"train": 2, "val": 2}, size=64, count=1)
    (root / "val" / "labelTxt" / "P0003.txt").unlink()
    catalog = tmp_path / "catalog"
    dota_entry(catalog, "dota", root)
    with pytest.raises(DataError, match=r"(?s)labelTxt/P0003\.txt.*image P0003\.png.*empty label"):
        validate(Catalog(catalog).get("dota"))
    dota_entry(catalog, "dota", root, missing_labels="negative")
    folder = read_detection_folder(Catalog(catalog).get("dota"))
    assert len(folder.split("val")[1]) == 0
    dota_entry(catalog, "dota", root, format="dot")
    with pytest.raises(ConfigError, match=r"unknown format 'dot'.*did you mean 'dota'"):
        Catalog(catalog).get("dota")


# ---- YOLO-OBB: the real DOTA8 crops --------------------------------------------------------------
def test_yolo_obb_denormalised_on_real_dota8(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / CHIPS / "dota8-obb"
    catalog = _entry(tmp_path, "dota8", f"kind: detection_folder\nroot: {root}/datasets/dota8\n"
                     "format: yolo_obb\nclasses: ../../dota8.yaml\n"
                     "splits: {train: images/train, val: images/val}\n")  # fmt: skip
    folder = read_detection_folder(Catalog(catalog).get("dota8"))
    assert folder.counts() == {"train": 4, "val": 4} and len(folder.class_names) == 15
    assert sum(len(r) for r in folder.records) == 110 + 13 + 4 + 2 + 4
    by_name = {r.image.stem: r for r in folder.records}
    # P1142 label: "0 0.779296 0.690429 0.625976 0.451171 0.88965 0.266601 1.04199 0.51465"
    # × 1024 → DOTA's integer pixel corners; the 4th corner lies past the right edge (1067)
    plane = by_name["P1142__1024__0___824"]
    assert plane.classes == ["plane"] and (plane.width, plane.height) == (1024, 1024)
    np.testing.assert_allclose(
        plane.polygons[0], [[798, 707], [641, 462], [911, 273], [1067, 527]], atol=0.01
    )
    np.testing.assert_allclose(plane.boxes[0], [641, 273, 1024, 707], atol=0.01)
    # P0861: 105 ships + 5 harbours; first line "1 0.813477 0.523437 0.814453 0.504882 ..."
    ships = by_name["P0861__1024__0___1648"]
    assert ships.classes.count("ship") == 105 and ships.classes.count("harbor") == 5
    np.testing.assert_allclose(ships.polygons[0][0], [833, 536], atol=0.01)
    # normalised values below 0 and above 1 (truncated objects) stay as corners
    corners = np.concatenate([r.polygons.reshape(-1, 2) for r in folder.records])
    assert corners.min() < -70 and corners.max() > 1080
    assert all(((r.boxes >= 0) & (r.boxes <= 1024)).all() for r in folder.records)


# ---- NWPU VHR-10 ---------------------------------------------------------------------------------
def test_nwpu_vhr10_spaces_crlf_and_one_based_ids(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / CHIPS / "nwpu-vhr10/data/NWPU_VHR"
    catalog = _entry(tmp_path, "nwpu", f"kind: detection_folder\nroot: {root}\nformat: nwpu\n"
                     "image_dir: positive_image_set\nlabel_dir: ground_truth\n"
                     f"classes: {NWPU_CLASSES}\n")  # fmt: skip
    folder = read_detection_folder(Catalog(catalog).get("nwpu"))
    assert len(folder.records) == 10 and sum(len(r) for r in folder.records) == 61
    assert not folder.oriented
    by_name = {r.image.stem: r for r in folder.records}
    # 017.txt line 1: "( 52,515),(152,594),1 " (space in the bracket, trailing space)
    np.testing.assert_array_equal(by_name["017"].boxes[0], [52, 515, 152, 594])
    assert by_name["017"].classes[0] == "airplane"
    # 133.txt line 1: "(259,248),(423,350), 6 " → basketball court (id 6)
    np.testing.assert_array_equal(by_name["133"].boxes[0], [259, 248, 423, 350])
    assert by_name["133"].classes[:2] == ["basketball court"] * 2
    # 081.txt has CRLF line ends: "(640, 51),(677,110),5 \r\n" → tennis court
    np.testing.assert_array_equal(by_name["081"].boxes[3], [640, 51, 677, 110])
    assert by_name["081"].classes[3] == "tennis court"
    assert sorted(set(c for r in folder.records for c in r.classes)) == sorted(folder.class_names)
    _quads, classes, _ = parse_nwpu("(1,2),(3,4),11\n", "x.txt")
    assert classes == ["11"]
    with pytest.raises(DataError, match=r"x\.txt, line 1.*is not '\(x1,y1\),\(x2,y2\),class_id'"):
        parse_nwpu("1,2,3,4,5\n", "x.txt")


# ---- polygon CSV: Airbus aircraft ----------------------------------------------------------------
def test_airbus_polygon_csv_only_images_present(shared_data: Path, tmp_path: Path) -> None:
    root = shared_data / CHIPS / "airbus-aircraft/data"
    text = "format: polygon_csv\nimage_dir: valid\nlabels: annotations.csv\n"
    catalog = _entry(tmp_path, "airbus", f"kind: detection_folder\nroot: {root}\n{text}")
    folder = read_detection_folder(Catalog(catalog).get("airbus"))
    assert len(folder.records) == 8 and folder.class_names == ["Airplane", "Truncated_airplane"]
    # the CSV lists 3,425 boxes of 103 images; the 217 rows of the 8 images present are read
    assert sum(len(r) for r in folder.records) == 217
    assert any("3208 object(s) of 95 image(s)" in n for n in folder.notes)
    record = next(r for r in folder.records if r.image.name.startswith("ef8ff443"))
    row = '"[(397, 1694), (491, 1694), (491, 1813), (397, 1813), (397, 1694)]",Airplane'
    assert row in (root / "annotations.csv").read_text()
    np.testing.assert_array_equal(record.boxes[0], [397, 1694, 491, 1813])


def test_polygon_csv_boxes_past_the_edge_are_clipped(tmp_path: Path) -> None:
    _image(tmp_path / "ds/img/a.jpg", 64, 48)
    _image(tmp_path / "ds/img/b.jpg", 64, 48)
    (tmp_path / "ds/boxes.csv").write_text(
        "id,image_id,geometry,class\n"
        '1,a.jpg,"[(-10, 5), (30, 5), (30, 25), (-10, 25), (-10, 5)]",car\n'
        '2,a.jpg,"POLYGON ((40 30, 70 30, 70 60, 40 60, 40 30))",car\n'
        '3,a.jpg,"[(70, 0), (90, 0), (90, 10), (70, 10)]",car\n'
        '4,gone.jpg,"[(1, 1), (5, 1), (5, 5), (1, 5)]",car\n'
    )
    catalog = _entry(tmp_path / "cat", "csv", f"kind: detection_folder\nroot: {tmp_path}/ds\n"
                     "format: polygon_csv\nimage_dir: img\nlabels: boxes.csv\n"
                     "missing_labels: negative\n")  # fmt: skip
    folder = read_detection_folder(Catalog(catalog).get("csv"))
    a, b = folder.records
    np.testing.assert_array_equal(a.boxes, [[0, 5, 30, 25], [40, 30, 64, 48]])
    assert a.dropped == 1 and len(b) == 0  # b.jpg has no row: a negative, as asked
    assert any("1 object(s) of 1 image(s)" in n for n in folder.notes)


def test_yolo_and_voc_negatives(tmp_path: Path) -> None:
    quads, _classes, _ = parse_yolo("2 0.5 0.25 0.2 0.1\n", "y.txt", 200, 100, oriented=False)
    np.testing.assert_allclose(quads[0], [[80, 20], [120, 20], [120, 30], [80, 30]])
    _image(tmp_path / "ds/images/a.png", 32, 32)
    _image(tmp_path / "ds/images/b.png", 32, 32)
    (tmp_path / "ds/labels").mkdir()
    (tmp_path / "ds/labels/a.xml").write_text(
        "<annotation><filename>a.png</filename><object><name>car</name><difficult>1</difficult>"
        "<bndbox><xmin>2</xmin><ymin>3</ymin><xmax>12</xmax><ymax>9</ymax></bndbox></object>"
        "</annotation>"
    )
    (tmp_path / "ds/labels/b.xml").write_text("<annotation><filename>b.png</filename>"
                                              "</annotation>")  # fmt: skip
    catalog = _entry(tmp_path / "cat", "voc",
                     f"kind: detection_folder\nroot: {tmp_path}/ds\nformat: voc\n")  # fmt: skip
    a, b = read_detection_folder(Catalog(catalog).get("voc")).records
    np.testing.assert_array_equal(a.boxes, [[2, 3, 12, 9]])
    assert a.difficult.tolist() == [True] and len(b) == 0
