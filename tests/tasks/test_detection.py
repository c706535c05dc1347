"""Object detection: box sources, chips, encoder loading, learnability, real neon-trees sample.

Training runs pin torch to one thread: on a shared 2-core box, OpenMP with 2 threads is 5-10x
slower than 1 thread as soon as another process competes for the cores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import rasterio
import torch

from geocmid.data.boxes import read_boxes
from geocmid.datamodules import DetectionDataModule
from geocmid.errors import DataError, ModelError
from geocmid.models.backbones import create_backbone
from geocmid.models.weights import export_backbone
from geocmid.tasks import load_for_prediction
from geocmid.tasks.detection import (
    build_detection,
    load_detector_for_prediction,
)
from geocmid.tasks.encoders import encoder_differences
from geocmid.tasks.reports import ReportCallback
from tests.rasters import smooth_field, write_raster
from tests.tasks.detection_data import rectangles_catalog

NEON = "detection/neon-trees"
#: Cheap Faster R-CNN for 128-px chips on CPU (fewer proposals and RoI samples).
FAST = {
    "rpn_pre_nms_top_n_train": 600, "rpn_post_nms_top_n_train": 300,
    "rpn_pre_nms_top_n_test": 300, "rpn_post_nms_top_n_test": 150,
    "box_batch_size_per_image": 128,
}  # fmt: skip
MODEL = {"model": "faster-rcnn", "backbone": "resnet18", "fpn_channels": 64,
         "detector_options": FAST, "scheduler": "none"}  # fmt: skip


@pytest.fixture
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _trainer(root: Path, **kw: object) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=str(root), num_sanity_val_steps=0,
        use_distributed_sampler=False, **kw,
    )  # fmt: skip


# ---- box sources --------------------------------------------------------------------------------
def test_pixel_csv_and_voc_agree_and_lie_inside_image(shared_data: Path) -> None:
    folder = shared_data / NEON
    csv = read_boxes(folder / "OSBS_029.csv")
    voc = read_boxes(folder / "OSBS_029.xml")
    assert len(csv) == len(voc) == 61
    np.testing.assert_allclose(csv.geometry.bounds.values, voc.geometry.bounds.values)
    with rasterio.open(folder / "OSBS_029.tif") as src:
        left, bottom, right, top = src.bounds
        assert csv.crs == src.crs
    b = csv.total_bounds
    assert left <= b[0] and bottom <= b[1] and b[2] <= right + 1e-6 and b[3] <= top
    # first row 203,67,227,90 px → 10 cm pixels from the top-left corner
    np.testing.assert_allclose(csv.geometry.iloc[0].bounds,
                               (left + 20.3, top - 9.0, left + 22.7, top - 6.7))  # fmt: skip


def test_truth_csv_with_xmin_xmax_ymin_ymax_order(shared_data: Path, tmp_path: Path) -> None:
    folder = shared_data / NEON
    truth = read_boxes(folder / "2018_SJER_3_252000_4107000_image_477_truth.csv")
    assert len(truth) == 7 and truth.crs.to_epsg() == 32611
    w = truth.geometry.bounds
    assert ((w.maxx - w.minx) > 0.5).all() and ((w.maxy - w.miny) > 0.5).all()  # ≥ 5 px
    image = folder / "2018_SJER_3_252000_4107000_image_477.tif"
    with rasterio.open(image) as src:
        res = src.res
    # first row: xmin=1, xmax=82, ymin=103, ymax=235 → 81 × 132 pixels
    assert w.iloc[0].maxx - w.iloc[0].minx == pytest.approx(81 * res[0])
    assert w.iloc[0].maxy - w.iloc[0].miny == pytest.approx(132 * res[1])
    # the same rows without a header need column_order
    lines = (folder / "2018_SJER_3_252000_4107000_image_477_truth.csv").read_text().splitlines()
    bare = tmp_path / "bare.csv"
    bare.write_text("\n".join(lines[1:]) + "\n")
    order = ["image_path", "xmin", "xmax", "ymin", "ymax", "label"]
    again = read_boxes(bare, image=image, column_order=order)
    np.testing.assert_allclose(again.geometry.bounds.values, w.values)
    with pytest.raises(DataError, match=r"(?s)line 2.*not a box.*column_order"):
        read_boxes(bare, image=image, column_order=["image_path", "xmin", "ymin", "xmax", "ymax"])


def _georef_image(tmp_path: Path, size: int = 100) -> Path:
    return write_raster(tmp_path / "img.tif", smooth_field((size, size)), res=0.5)


def test_bad_box_files_name_file_and_row(tmp_path: Path) -> None:
    _georef_image(tmp_path)
    empty = tmp_path / "empty.csv"
    empty.write_text("image_path,xmin,ymin,xmax,ymax,label\n")
    with pytest.raises(DataError, match=r"empty\.csv.*no boxes"):
        read_boxes(empty)
    outside = tmp_path / "outside.csv"
    outside.write_text(
        "image_path,xmin,ymin,xmax,ymax,label\nimg.tif,1,1,20,20,Tree\nimg.tif,90,90,130,99,Tree\n"
    )
    with pytest.raises(DataError, match=r"outside\.csv, line 3.*outside the image img\.tif"):
        read_boxes(outside)
    text = "image_path,xmin,ymin,xmax,ymax,label\nimg.tif,1,x,20,20,Tree\n"
    (tmp_path / "nan.csv").write_text(text)
    with pytest.raises(DataError, match=r"line 2.*ymin='x' is not a number"):
        read_boxes(tmp_path / "nan.csv")
    xml = tmp_path / "bad.xml"
    xml.write_text(
        "<annotation><filename>img.tif</filename><object><name>T</name><bndbox><xmin>5</xmin>"
        "<ymin>5</ymin><xmax>500</xmax><ymax>9</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DataError, match=r"bad\.xml, object 1.*outside"):
        read_boxes(xml)
    import geopandas as gpd

    gpd.GeoDataFrame({"class": []}, geometry=[], crs="EPSG:32633").to_file(tmp_path / "e.gpkg")
    with pytest.raises(DataError, match=r"e\.gpkg.*empty"):
        read_boxes(tmp_path / "e.gpkg")


def test_images_without_objects_are_negatives(tmp_path: Path) -> None:
    """A VOC file without <object> and DeepForest's 0,0,0,0 row name images without objects:
    they are read (and chipped) as negatives instead of refused."""
    with_boxes = _georef_image(tmp_path, size=200)  # 100 m wide, then the empty one east of it
    empty = write_raster(tmp_path / "empty.tif", smooth_field((200, 200)), res=0.5,
                         origin=(500_100.0, 5_000_000.0))  # fmt: skip
    voc = tmp_path / "empty.xml"
    voc.write_text("<annotation><filename>empty.tif</filename></annotation>")
    frame = read_boxes(voc)
    assert frame.empty and frame.attrs["negatives"] == [str(empty)]
    csv = tmp_path / "boxes.csv"
    csv.write_text("image_path,xmin,ymin,xmax,ymax,label\nimg.tif,10,10,30,30,Tree\n"
                   "empty.tif,0,0,0,0,Tree\n")  # fmt: skip
    frame = read_boxes(csv)
    assert len(frame) == 1 and frame.attrs["negatives"] == [str(empty)]
    dm = DetectionDataModule([str(csv)], chip_size=32, block_size=2.0)
    dm.setup()
    assert dm.image_entry is not None and sorted(dm.image_entry.paths) == sorted(
        [str(empty), str(with_boxes)]
    )
    # a chip inside the object-free image (x 500 100-500 150 m) has no box
    sample = dm.dataset[(slice(500_110, 500_126, 0.5), slice(4_999_960, 4_999_976, 0.5))]
    assert sample["image"].shape[-2:] == (32, 32) and sample["bbox_xyxy"].shape == (0, 4)
    with pytest.raises(DataError, match=r"hold no object"):
        DetectionDataModule([str(voc)], chip_size=32).setup()


def test_not_georeferenced_image_is_refused(shared_data: Path) -> None:
    with pytest.raises(DataError, match=r"SOAP_061\.png.*not georeferenced"):
        read_boxes(shared_data / NEON / "SOAP_061.xml")


# ---- chips --------------------------------------------------------------------------------------
def test_chips_clip_boxes_and_drop_remnants(tmp_path: Path) -> None:
    catalog = rectangles_catalog(tmp_path, size=256, count=20)
    dm = DetectionDataModule("rect-boxes", entry="rects", catalog=catalog, chip_size=64,
                             block_size=2, min_visible=0.3)  # fmt: skip
    dm.setup()
    ds = dm.dataset
    assert ds is not None and dm.num_classes == 2 and dm.class_names == ["rectangle"]
    x0, _, _, y1 = ds.index.total_bounds
    # a 64-px window at the top-left: every box is inside [0, 64] and at least 2 px wide
    for dx in range(0, 192, 37):
        q = (slice(x0 + dx, x0 + dx + 64, 1.0), slice(y1 - 64 - dx, y1 - dx, 1.0))
        sample = ds[q]
        boxes = sample["bbox_xyxy"]
        assert sample["image"].shape == (3, 64, 64)
        assert ((boxes >= 0) & (boxes <= 64)).all()
        assert ((boxes[:, 2:] - boxes[:, :2]) >= 2).all()
        assert (sample["label"] == 1).all()
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape[0] == 4 and isinstance(batch["bbox_xyxy"], list)


def test_splits_are_spatially_disjoint(tmp_path: Path) -> None:
    catalog = rectangles_catalog(tmp_path, size=256, count=10)
    dm = DetectionDataModule("rect-boxes", entry="rects", catalog=catalog, chip_size=64)
    dm.setup()
    for i in range(3):
        for j in range(i + 1, 3):
            assert dm.regions[i].intersection(dm.regions[j]).area == pytest.approx(0, abs=1e-6)


# ---- encoder ------------------------------------------------------------------------------------
def test_encoder_weights_equal_export_and_band_mismatch(tmp_path: Path) -> None:
    catalog = rectangles_catalog(tmp_path, size=256, count=10)
    torch.manual_seed(3)
    backbone = create_backbone("resnet18", 3, img_size=64)
    export = tmp_path / "enc"
    export_backbone(backbone, export, {"bands": ["b1", "b2", "b3"]})
    data = {"labels": "rect-boxes", "entry": "rects", "catalog": str(catalog), "chip_size": 64}
    task, _ = build_detection({**MODEL, "backbone": None, "weights": f"{export}.safetensors"}, data)
    assert encoder_differences(backbone, task.encoder.model) == []
    assert task.encoder.name == "resnet18"

    four = create_backbone("resnet18", 4, img_size=64)
    export_backbone(four, tmp_path / "enc4", {})
    with pytest.raises(ModelError, match=r"trained on 4 bands.*data has 3"):
        build_detection({**MODEL, "weights": str(tmp_path / "enc4.safetensors")}, data)


# ---- learning -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_learns_rectangles_and_reloads_for_prediction(tmp_path: Path, one_thread: None) -> None:
    """30 steps on bright rectangles: mAP@0.5 must clear 0.3.

    Chance is near 0: a detector without signal proposes boxes of the right size at random
    places, and a 10-26 px random box overlaps a reference box with IoU ≥ 0.5 in well under
    5 % of draws (rectangles cover ~12 % of the scene). Runs reach ~0.8; 0.3 leaves room for
    seeds and thread counts while still failing any non-learning model.
    """
    torch.manual_seed(0)
    catalog = rectangles_catalog(tmp_path, size=384, count=60)
    data = {"labels": "rect-boxes", "entry": "rects", "catalog": str(catalog),
            "chip_size": 128, "block_size": 1.5, "batch_size": 4, "chips_per_epoch": 120,
            "eval_chips": 8}  # fmt: skip
    task, dm = build_detection({**MODEL, "lr": 5e-4}, data)
    trainer = _trainer(tmp_path / "run", max_epochs=1, callbacks=[ReportCallback()])
    trainer.fit(task, dm)
    map50 = float(trainer.callback_metrics["val_map_50"])
    assert map50 > 0.3, f"mAP@0.5 {map50:.3f} after 30 steps"
    assert 0 <= float(trainer.callback_metrics["val_map"]) <= map50
    assert (tmp_path / "run" / "reports" / "detections_val.png").is_file()

    ckpt = tmp_path / "det.ckpt"
    trainer.save_checkpoint(ckpt)
    module, card = load_detector_for_prediction(ckpt)
    assert card["task"] == "detection" and [c["name"] for c in card["classes"]] == [
        "background", "rectangle",
    ]  # fmt: skip
    assert len(card["mean"]) == card["in_chans"] == 3
    batch = next(iter(dm.val_dataloader()))
    out = module(batch["image"][:2])
    assert len(out) == 2 and set(out[0]) == {"boxes", "scores", "labels"}
    task.eval()
    with torch.no_grad():
        ref = task.model(batch["image"][:2])
    torch.testing.assert_close(out[0]["boxes"], ref[0]["boxes"])
    # `geocmid predict` loads fine-tuned checkpoints of every task through one function
    generic, generic_card = load_for_prediction(ckpt)
    assert generic_card == card
    torch.testing.assert_close(generic(batch["image"][:2])[0]["boxes"], ref[0]["boxes"])
    with pytest.raises(ModelError, match=r"expected \[B, 3, H, W\]"):
        module(torch.zeros(1, 4, 64, 64))


def test_trains_on_real_neon_trees(shared_data: Path, tmp_path: Path, one_thread: None) -> None:
    torch.manual_seed(0)
    data = {"labels": str(shared_data / NEON / "OSBS_029.csv"), "chip_size": 128,
            "block_size": 1.5, "batch_size": 2, "chips_per_epoch": 8, "eval_chips": 2}  # fmt: skip
    task, dm = build_detection({**MODEL, "lr": 5e-4}, data)
    assert dm.class_names == ["Tree"] and dm.in_chans == 3
    trainer = _trainer(tmp_path / "run", max_epochs=1)
    trainer.fit(task, dm)
    metrics = trainer.callback_metrics
    assert torch.isfinite(metrics["train_loss"]) and "val_map_50" in metrics
