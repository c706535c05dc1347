"""``geocmid pretrain`` / ``geocmid export`` end to end on tiny generated and real GeoTIFFs.

Runs are as small as CMID allows (64 px chips, batch 2, one step per epoch, narrow heads) so the
whole module stays within a few tens of seconds on two CPU cores.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from geocmid.cli import main
from geocmid.models.weights import strip_prefixes
from tests.rasters import smooth_field, write_entry, write_raster

#: Narrow heads and a short queue: the method's code paths, at a fraction of the cost.
TINY_MODEL = {
    "queue_size": 64, "proj_hidden": 64, "proj_dim": 32, "head_hidden": 64,
    "head_bottleneck": 32, "num_prototypes": 64,
}  # fmt: skip


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3-band (with RGB) and a 13-band scene, 128 px, with stored statistics."""
    root = tmp_path_factory.mktemp("pretrain-data")
    write_raster(root / "rgb.tif", smooth_field((128, 128), seed=1, bands=3))
    write_raster(root / "s2.tif", smooth_field((128, 128), seed=2, bands=13), res=20.0)
    cat = root / "catalog"
    write_entry(cat, "rgb", "kind: imagery\npaths: ../rgb.tif\nbands: [r, g, b]\nrgb: [r, g, b]\n")
    bands = ", ".join(f"B{i:02d}" for i in range(1, 14))
    write_entry(cat, "s2", f"kind: imagery\npaths: ../s2.tif\nbands: [{bands}]\n")
    rng = np.random.default_rng(0)
    for c, level in (("dark", 700), ("bright", 1300)):  # labelled chips for the kNN probe
        for i in range(5):
            img = (level + 30 * rng.standard_normal((3, 32, 32))).astype(np.uint16)
            write_raster(root / "chips" / c / f"{i}.tif", img)
    write_entry(cat, "chips", "kind: image_folder\nroot: ../chips\n")
    for name in ("rgb", "s2"):  # stats once, so every run does not re-estimate them
        assert main(["--catalog", str(cat), "catalog", "stats", name]) == 0
    return cat


def write_config(path: Path, catalog: Path, entry: str, backbone: str, run_dir: Path, **extra):
    """A tiny Lightning CLI pretraining config; ``extra`` updates ``model`` / ``data`` init_args
    and ``trainer`` (``{"model": {"mask_ratio": 0.5}}``)."""
    cfg = {
        "trainer": {
            "max_epochs": 1, "accelerator": "cpu", "limit_train_batches": 1,
            "default_root_dir": str(run_dir),
            "callbacks": [{"class_path": "geocmid.cmid.callbacks.QuickLook",
                           "init_args": {"every_n_epochs": 1}}],
        },
        "model": {"class_path": "geocmid.cmid.CMIDTask",
                  "init_args": {"backbone": backbone, "warmup_epochs": 1, **TINY_MODEL}},
        "data": {"class_path": "geocmid.datamodules.PretrainDataModule",
                 "init_args": {"catalog": str(catalog), "entry": entry, "chip_size": 64,
                               "batch_size": 2, "chips_per_epoch": 4, "num_workers": 0}},
    }  # fmt: skip
    for section, values in extra.items():
        node = cfg[section] if section == "trainer" else cfg[section]["init_args"]
        node.update(values)
    path.write_text(yaml.safe_dump(cfg))
    return path


def last_ckpt(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def metrics(run_dir: Path) -> list[dict[str, str]]:
    rows = []
    for f in sorted((run_dir / "csv").glob("version_*/metrics.csv")):
        rows += list(csv.DictReader(f.open()))
    return rows


@pytest.mark.slow
def test_resnet_pretrain_resume_and_export(catalog: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", catalog, "rgb", "resnet18", run_dir)
    assert main(["pretrain", "--config", str(config)]) == 0
    ckpt = last_ckpt(run_dir)
    assert ckpt["global_step"] == 1
    hp = ckpt["hyper_parameters"]  # the data-derived values, filled in from the datamodule
    assert hp["bands"] == ["r", "g", "b"] and hp["in_chans"] == 3 and hp["chip_size"] == 64
    from geocmid.data.catalog import Catalog

    stats = Catalog(catalog).get("rgb").stats
    assert hp["mean"] == pytest.approx(stats["mean"]) and hp["batch_size"] == 2
    # the run folder's config is a plain Lightning CLI config that reproduces the run
    written = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert written["model"]["class_path"] == "geocmid.cmid.CMIDTask"
    assert written["trainer"]["limit_train_batches"] == 1  # an int stays one batch
    from lightning.pytorch.cli import LightningCLI

    cli = LightningCLI(args=["--config", str(run_dir / "config.yaml")], run=False)
    parsed = {k: v for k, v in cli.model.hparams.items() if v is not None}
    assert parsed == {k: hp[k] for k in parsed}  # the data-derived ones are left to the data
    assert parsed["queue_size"] == 64 and cli.datamodule.hparams["entry"] == "rgb"
    assert list((run_dir / "quicklook").glob("recon_epoch0001.png"))
    assert list((run_dir / "tensorboard").glob("version_0/events.out.tfevents.*"))
    rows = metrics(run_dir)
    for key in ("train/loss_step", "train/loss_mim_step", "train/loss_global_step",
                "train/loss_local_step", "train/lr", "train/ema_momentum", "train/teacher_temp",
                "health/feat_std", "health/feat_cos"):  # fmt: skip
        assert any(r.get(key) for r in rows), key

    # the same command with more epochs continues from last.ckpt
    assert main(["pretrain", "--config", str(config), "--epochs", "2"]) == 0
    ckpt = last_ckpt(run_dir)
    assert ckpt["global_step"] == 2
    # last.ckpt is written at each epoch's end (RunCheckpoint), when Lightning has processed the
    # epoch but not yet counted it completed; a resume from it starts the next epoch
    assert ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"] == 2
    assert list((run_dir / "quicklook").glob("recon_epoch0002.png"))
    # it trained the second epoch only (logged as a new version: the first one's metrics stay)
    second = list(csv.DictReader((run_dir / "csv" / "version_1" / "metrics.csv").open()))
    assert second and {r["epoch"] for r in second} == {"1"}
    assert (run_dir / "csv" / "version_0" / "metrics.csv").is_file()

    # export: safetensors + card; loads into TorchGeo's classification and segmentation tasks
    out = tmp_path / "export" / "r18"
    assert main(["export", str(run_dir / "checkpoints" / "last.ckpt"), str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())
    assert card["architecture"] == "resnet18" and card["in_chans"] == 3
    assert card["bands"] == ["r", "g", "b"] and len(card["mean"]) == 3 and card["gsd"] == 10.0
    assert card["chip_size"] == 64 and card["pretraining"]["epochs"] == 2
    assert card["pretraining"]["data"] == "rgb" and card["geocmid_version"]
    state = strip_prefixes(load_file(out.with_suffix(".safetensors")))
    student = {
        k.removeprefix("model.student.backbone.model."): v
        for k, v in ckpt["state_dict"].items()
        if k.startswith("model.student.backbone.model.")
    }
    assert state.keys() == student.keys()
    assert all(torch.equal(state[k], student[k]) for k in state)

    from torchgeo.tasks import Classification, SemanticSegmentation

    cls = Classification(model="resnet18", in_channels=3, num_classes=4)
    result = cls.model.load_state_dict(state, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == {"fc.weight", "fc.bias"}
    seg = SemanticSegmentation(model="unet", backbone="resnet18", in_channels=3, num_classes=2)
    seg.model.encoder.load_state_dict(state)  # strict: every encoder key is in the export
    for module in (cls.model, seg.model.encoder):
        loaded = module.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())

    # refuses to overwrite; wrong expected backbone and non-CMID checkpoints are clear errors
    assert main(["export", str(run_dir / "checkpoints" / "last.ckpt"), str(out)]) == 2
    ck = str(run_dir / "checkpoints" / "last.ckpt")
    assert main(["export", ck, str(out), "--overwrite", "--backbone", "swin_tiny"]) == 2


@pytest.mark.slow
def test_swin_on_13_bands(catalog: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", catalog, "s2", "swin_tiny", run_dir)
    assert main(["pretrain", "--config", str(config)]) == 0
    ckpt = last_ckpt(run_dir)
    assert ckpt["hyper_parameters"]["in_chans"] == 13 and ckpt["global_step"] == 1
    assert ckpt["hyper_parameters"]["gsd"] == 20.0
    out = tmp_path / "swin.safetensors"
    assert main(["export", str(run_dir / "checkpoints" / "last.ckpt"), str(out)]) == 0
    from geocmid.models.weights import load_backbone

    backbone, card = load_backbone(out)
    assert card["architecture"].startswith("swin_tiny") and backbone.in_chans == 13
    assert len(card["bands"]) == 13


def test_vit_on_3_bands_with_dotted_overrides(catalog: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", catalog, "rgb", "resnet18", run_dir)
    args = ["pretrain", "--config", str(config), "--backbone", "vit_small",
            "--set", "model.mask_ratio=0.5", "--model.optimizer", "adamw",
            "--trainer.callbacks.HealthMonitor.knn_entry", "chips",
            "--set", "trainer.callbacks.HealthMonitor.knn_k=3"]  # fmt: skip
    assert main(args) == 0
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    model = resolved["model"]["init_args"]
    assert model["backbone"] == "vit_small"
    assert model["mask_ratio"] == 0.5 and model["optimizer"] == "adamw"
    monitor = [c for c in resolved["trainer"]["callbacks"] if c["class_path"].endswith("Monitor")]
    assert monitor[0]["init_args"]["knn_entry"] == "chips"
    assert monitor[0]["init_args"]["knn_k"] == 3
    assert last_ckpt(run_dir)["hyper_parameters"]["mask_ratio"] == 0.5
    assert any(r.get("health/knn_acc") for r in metrics(run_dir))


@pytest.mark.shared
def test_real_geotiff(shared_data: Path, tmp_path: Path) -> None:
    tif = shared_data / "geotiff" / "rasterio" / "RGB.byte.tif"
    if not tif.is_file():
        pytest.skip(f"{tif} not found")
    cat = tmp_path / "catalog"
    write_entry(cat, "rgbbyte", f"kind: imagery\npaths: {tif}\nbands: [r, g, b]\nrgb: [r, g, b]\n")
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", cat, "rgbbyte", "resnet18", run_dir)
    assert main(["pretrain", "--config", str(config)]) == 0
    hp = last_ckpt(run_dir)["hyper_parameters"]
    assert hp["in_chans"] == 3 and hp["gsd"] == pytest.approx(300.0379266750948)


# ------------------------------------------------------------------------------------------------
# errors: one clear message, exit status 2, nothing trained
@pytest.mark.parametrize(
    ("extra", "args", "message"),
    [
        ({"model": {"mask_ration": 0.5}}, [], "did you mean 'mask_ratio'"),
        ({}, ["--set", "data.chipsize=64"], "did you mean 'chip_size'"),
        ({}, ["--set", "trainer.max_epoch=2"], "did you mean 'max_epochs'"),
        ({"data": {"chip_size": 48}}, [], "data.init_args.chip_size"),
        ({"model": {"backbone": "vit_small"}, "data": {"chip_size": 72}}, [],
         "data.init_args.chip_size"),  # not a multiple of the ViT stride (80 px is fine now)
        ({"model": {"mask_block": 30}}, [], "model.init_args.mask_block"),
        ({"model": {"in_chans": 4}}, [], "model.init_args.in_chans"),
        ({"model": {"bands": ["b", "g", "r"]}}, [], "model.init_args.bands"),
        ({"model": {"backbone": "resnet51"}}, [], "did you mean 'resnet50'"),
        ({"model": {"optimizer": "adamx"}}, [], "did you mean 'adamw'"),
        ({"data": {"batch_size": "eight"}}, [], "expected int"),
        ({"data": {"entry": None}}, [], "data.init_args.entry"),
        ({}, ["--trainer.callbacks.HealthMonitor.knn_entry", "rgb"],
         "trainer.callbacks.HealthMonitor.knn_entry"),
        ({}, ["--set", "optim.base_lr=1e-3"], "it is now 'model.base_lr'"),
        ({}, ["--set", "trainer.callbacks.QuickLok.every_n_epochs=1"], "did you mean 'QuickLook'"),
    ],
)  # fmt: skip
def test_config_errors(catalog, tmp_path, capsys, extra, args, message) -> None:
    config = write_config(
        tmp_path / "c.yaml", catalog, "rgb", "resnet18", tmp_path / "run", **extra
    )
    assert main(["pretrain", "--config", str(config), "--dry-run", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert not (tmp_path / "run").exists()


def test_old_config_layout_is_refused_with_the_new_keys(tmp_path: Path, capsys) -> None:
    old = {"data": {"entry": "rgb"}, "optim": {"base_lr": 1e-3}, "run_dir": str(tmp_path / "r")}
    (tmp_path / "old.yaml").write_text(yaml.safe_dump(old))
    assert main(["pretrain", "--config", str(tmp_path / "old.yaml"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "former `geocmid pretrain` schema" in err and "now 'model.base_lr'" in err


def test_dry_run_prints_resolved_config(catalog: Path, tmp_path: Path, capsys) -> None:
    config = write_config(tmp_path / "c.yaml", catalog, "s2", "resnet18", tmp_path / "run")
    assert main(["pretrain", "--config", str(config), "--dry-run", "--chip-size", "96"]) == 0
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["data"]["init_args"]["chip_size"] == 96
    model = resolved["model"]["init_args"]
    assert model["in_chans"] == 13 and len(model["bands"]) == 13 and model["chip_size"] == 96
    assert model["gsd"] == 20.0 and model["data"] == "s2"
    assert resolved["trainer"]["max_epochs"] == 1 and resolved["seed_everything"] == 322
    assert not (tmp_path / "run").exists()


def test_export_rejects_foreign_checkpoints(tmp_path: Path, capsys) -> None:
    bogus = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}, "epoch": 0}, bogus)
    assert main(["export", str(bogus), str(tmp_path / "x")]) == 2
    assert "not a CMID pretraining checkpoint" in capsys.readouterr().err
    assert main(["export", str(tmp_path / "missing.ckpt"), str(tmp_path / "x")]) == 2
    assert not list(tmp_path.glob("x*"))


def test_failed_resume_leaves_the_run_record_alone(catalog: Path, tmp_path: Path, capsys) -> None:
    """Rerunning a run folder with a config its last.ckpt does not fit is one clear error (with
    the keys that differ), and the run's config.yaml and status.json stay those of the run."""
    run_dir = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", catalog, "rgb", "resnet18", run_dir)
    assert main(["pretrain", "--config", str(config)]) == 0
    before = {n: (run_dir / n).read_text() for n in ("config.yaml", "status.json")}
    other = write_config(tmp_path / "d.yaml", catalog, "rgb", "resnet34", run_dir)
    capsys.readouterr()
    assert main(["pretrain", "--config", str(other)]) != 0
    err = capsys.readouterr().err
    assert "does not fit this model" in err and "layer" in err  # the differing keys are named
    assert {n: (run_dir / n).read_text() for n in before} == before
