"""HealthMonitor on chip datasets: collapse metrics and the kNN probe during chip pretraining,
the probe's memory / query split, and the errors for entries that hold no class per image."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from geocmid.cli import main
from geocmid.cmid.callbacks import HealthMonitor, KNNProbe, labelled_images
from geocmid.data.chipsets import read_image
from geocmid.errors import ConfigError
from tests.chips.fixtures import write_png
from tests.cmid.test_pretrain_cli import TINY_MODEL, metrics
from tests.rasters import write_entry

torch.set_num_threads(1)

NWPU = "chips/classification/nwpu-resisc12/NWPU-RESISC12"


@pytest.fixture
def nwpu(shared_data: Path, tmp_path: Path) -> Path:
    """A catalog with the real NWPU-RESISC12 chips as they ship: train/ and test/ folders of
    12 class folders (50 + 15 images per class); skips without ../shared."""
    root = shared_data / NWPU
    if not (root / "train").is_dir():
        pytest.skip(f"{root} not found")
    cat = tmp_path / "cat"
    write_entry(cat, "nwpu", f"kind: image_folder\nroot: {root}\n"
                "splits: {train: train, test: test}\n")  # fmt: skip
    return cat


@pytest.mark.slow
@pytest.mark.shared
def test_chip_pretraining_logs_health_and_knn_every_epoch(
    nwpu: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    hm = "trainer.callbacks.HealthMonitor"
    args = ["--catalog", str(nwpu), "pretrain", "--entry", "nwpu", "--backbone", "resnet18",
            "--chip-size", "64", "--batch-size", "4", "--epochs", "2", "--run-dir", str(run),
            "--set", "data.num_workers=0", "--set", "trainer.limit_train_batches=1",
            "--set", f"{hm}.knn_entry=nwpu", "--set", f"{hm}.knn_max_images=48",
            "--set", f"{hm}.knn_k=5", "--set", "trainer.callbacks.QuickLook=false",
            *[a for k, v in TINY_MODEL.items() for a in ("--set", f"model.{k}={v}")]]  # fmt: skip
    with caplog.at_level(logging.INFO, logger="geocmid.cmid.callbacks"):
        assert main(args) == 0
    rows = [r for r in metrics(run) if r.get("health/feat_std")]
    assert [int(r["epoch"]) for r in rows] == [0, 1]  # every epoch
    for row in rows:
        for key in ("health/feat_std", "health/feat_std_norm", "health/feat_cos"):
            assert np.isfinite(float(row[key])), key
        assert 0.0 <= float(row["health/knn_acc"]) <= 1.0
    lines = [r.getMessage() for r in caplog.records if r.name == "geocmid.cmid.callbacks"]
    assert any("'nwpu'" in m and "train images as memory" in m and "test images as queries" in m
               and "12 classes" in m for m in lines), lines  # fmt: skip
    health = [m for m in lines if " health: " in m]
    assert [m.split(" health:")[0] for m in health] == ["epoch 1/2", "epoch 2/2"]
    assert "feature std " in health[0] and "(healthy > 0.1), mean cosine " in health[0]
    assert "kNN top-1 " in health[0] and "% on 'nwpu' (chance 8 %)" in health[0]


@pytest.mark.shared
def test_knn_probe_memory_is_the_train_split_and_queries_the_test_split(nwpu: Path) -> None:
    # the whole split, before thinning: 600 train images as memory, 180 test images as queries
    source = labelled_images("nwpu", nwpu)
    assert source.queries is not None and source.query_split == "test"
    memory_files = {source.paths[i] for i in source.memory}
    query_files = {source.paths[i] for i in source.queries}
    assert (len(memory_files), len(query_files)) == (600, 180)
    assert not memory_files & query_files
    assert all("/NWPU-RESISC12/train/" in p for p in memory_files)
    assert all("/NWPU-RESISC12/test/" in p for p in query_files)
    # the probe as loaded (thinned to at most 96 images)
    mean, std = [90.0, 95.0, 85.0], [45.0, 40.0, 38.0]
    probe = KNNProbe.from_entry("nwpu", nwpu, 32, mean, std, max_images=96, k=3)
    assert probe.paths is not None and len(probe.paths) == len(probe.images)
    memory = {p for p, q in zip(probe.paths, probe.query.tolist(), strict=True) if not q}
    queries = {p for p, q in zip(probe.paths, probe.query.tolist(), strict=True) if q}
    assert memory and queries and not memory & queries  # never the same image on both sides
    assert all("/train/" in p for p in memory) and all("/test/" in p for p in queries)
    assert len(probe.images) <= 96 and probe.num_classes == 12
    # thinned evenly: every class on both sides
    assert set(probe.labels[~probe.query].tolist()) == set(range(12))
    assert set(probe.labels[probe.query].tolist()) == set(range(12))
    # the pretraining normalisation, at the pretraining chip size
    first = torch.from_numpy(read_image(Path(probe.paths[0])).astype(np.float32))
    first = F.interpolate(first[None], size=(32, 32), mode="bilinear", antialias=True)[0]
    m, s = torch.tensor(mean)[:, None, None], torch.tensor(std)[:, None, None]
    assert torch.allclose(probe.images[0].float(), (first - m) / s, atol=1e-2)
    assert 0.0 <= probe.accuracy(lambda x: x.mean(dim=(2, 3))) <= 1.0


def test_knn_probe_prefers_val_and_splits_plain_folders_the_same_way_each_time(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for c in ("field", "water"):
            for i in range(n):
                write_png(tmp_path / "d" / split / c / f"{i}.png",
                          rng.integers(0, 255, (16, 16, 3), np.uint8))  # fmt: skip
    cat = tmp_path / "cat"
    write_entry(cat, "three", "kind: image_folder\nroot: ../d\n"
                "splits: {train: train, val: val, test: test}\n")  # fmt: skip
    write_entry(cat, "plain", "kind: image_folder\nroot: ../d/train\n")
    probe = KNNProbe.from_entry("three", cat, 16, [128.0] * 3, [64.0] * 3, k=3)
    assert probe.paths is not None
    assert [("/val/" in p) for p in probe.paths] == probe.query.tolist()  # queries: val only
    assert int(probe.query.sum()) == 4 and int((~probe.query).sum()) == 8
    # no split in the entry: a fixed holdout (1 in 4 here), identical on every call
    a, b = (KNNProbe.from_entry("plain", cat, 16, [128.0] * 3, [64.0] * 3, k=3, holdout=4)
            for _ in range(2))  # fmt: skip
    assert a.paths == b.paths and torch.equal(a.query, b.query) and int(a.query.sum()) == 2


def test_knn_probe_on_a_torchgeo_classification_entry(tmp_path: Path) -> None:
    root = tmp_path / "ucmerced"
    rng = np.random.default_rng(0)
    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, level in (("agricultural", 60), ("beach", 190)):
        for i in range(6):
            name = f"{c}{i:02d}.tif"  # UCMerced's names; PNG content reads the same
            img = (level + 10 * rng.standard_normal((16, 16, 3))).clip(0, 255).astype(np.uint8)
            write_png(root / "UCMerced_LandUse" / "Images" / c / name, img)
            names["train" if i < 3 else "val" if i < 5 else "test"].append(name)
    for split, files in names.items():
        (root / f"uc_merced-{split}.txt").write_text("\n".join(files) + "\n")
    write_entry(tmp_path / "cat", "ucm", f"kind: torchgeo_dataset\ndataset: UCMerced\n"
                f"root: {root}\ntask: classification\n")  # fmt: skip
    probe = KNNProbe.from_entry("ucm", tmp_path / "cat", 16, [128.0] * 3, [64.0] * 3, k=3)
    assert probe.paths is not None
    assert [p.startswith("val[") for p in probe.paths] == probe.query.tolist()
    assert int(probe.query.sum()) == 4 and int((~probe.query).sum()) == 6
    assert probe.chance == 0.5  # the classes TorchGeo found (its folders)
    assert probe.accuracy(lambda x: x.mean(dim=(2, 3))) == 1.0  # dark vs bright scenes


def test_entries_without_a_class_per_image_are_refused_by_name(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    for i in range(4):
        write_png(tmp_path / "imgs" / f"{i}.png", np.full((32, 32, 3), 40 * i, np.uint8))
    cat = tmp_path / "cat"
    write_entry(cat, "unlabelled", "kind: image_folder\nroot: ../imgs\nlabels: none\n")
    write_entry(cat, "tiles", "kind: chip_segmentation\nroot: ../imgs\nclasses: {0: a, 1: b}\n")
    with pytest.raises(ConfigError, match=r"entry 'unlabelled' has no labels .*kNN probe"):
        KNNProbe.from_entry("unlabelled", cat, 32, [0.0] * 3, [1.0] * 3)
    with pytest.raises(ConfigError, match="entry 'tiles' is a chip_segmentation entry"):
        HealthMonitor(knn_entry="tiles", knn_catalog=str(cat)).check(None)
    # the command refuses it before training, in one line naming the setting and the entry
    args = ["--catalog", str(cat), "pretrain", "--entry", "unlabelled", "--chip-size", "32",
            "--batch-size", "2", "--backbone", "resnet18", "--run-dir", str(tmp_path / "run"),
            "--set", "trainer.callbacks.HealthMonitor.knn_entry=unlabelled",
            "--dry-run"]  # fmt: skip
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "setting 'trainer.callbacks.HealthMonitor.knn_entry': entry 'unlabelled' has no" in err
    assert not (tmp_path / "run" / "checkpoints").exists()
