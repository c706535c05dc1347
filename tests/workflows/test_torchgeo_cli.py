"""One config, three ways to run it: ``torchgeo fit``, ``geocmid fit`` and Python.

The shipped fine-tuning configs are plain Lightning CLI configs; the tasks read what they need
from the datamodule (bands, classes, statistics, chip size) when training starts, so no runner
has to fill anything in. Each run is a one-batch ``fast_dev_run`` on a 160-px demo dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from geocmid.cli import main
from geocmid.tasks import load_for_prediction
from geocmid.workflows.config import check_class_paths, load_config
from tests.workflows.conftest import RECIPES, TINY, TINY_EXTRA

SEGMENTATION = RECIPES / "finetune-segmentation.yaml"


def test_torchgeo_fit_runs_the_shipped_config(demo_catalog: Path, tmp_path: Path) -> None:
    from torchgeo.main import main as torchgeo_main

    root = tmp_path / "tg"
    torchgeo_main([
        "fit", "--config", str(SEGMENTATION), "--trainer.fast_dev_run=true",
        f"--data.init_args.catalog={demo_catalog}", f"--trainer.default_root_dir={root}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        *[f"--{key}={value}" for key, value in TINY.items()],
    ])  # fmt: skip
    # the config's callbacks ran: a checkpoint and the reports of the validation batch
    (ckpt,) = root.rglob("last.ckpt")
    assert list(root.rglob("confusion_val.csv")) and list(root.rglob("samples_val.png"))
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    # filled from the datamodule, although the config leaves them out
    assert hparams["in_channels"] == 4 and hparams["num_classes"] == 5
    assert hparams["chip_size"] == 32 and len(hparams["mean"]) == 4
    assert [c["name"] for c in hparams["classes"]][:2] == ["water", "forest"]
    model, card = load_for_prediction(ckpt)
    assert card["task"] == "segmentation" and card["bands"] == ["blue", "green", "red", "nir"]
    with torch.no_grad():
        assert model(torch.zeros(1, 4, 32, 32)).shape == (1, 5, 32, 32)


def test_geocmid_fit_runs_the_same_config(demo_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["--catalog", str(demo_catalog), "fit", "--config", str(SEGMENTATION),
            "--fast-dev-run", "--out", str(out), "--trainer.enable_progress_bar", "false",
            *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    assert main(argv) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["task"] == "segmentation" and card["in_chans"] == 4 and card["chip_size"] == 32
    assert (out / "reports" / "confusion_val.png").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    # the resolved config: a Lightning CLI config again, with what the task read from the data
    resolved = load_config(out / "config.yaml")
    check_class_paths(resolved, "config.yaml")
    assert resolved["model"]["init_args"]["in_channels"] == 4
    assert resolved["model"]["init_args"]["num_classes"] == 5
    assert resolved["data"]["init_args"]["catalog"] == str(demo_catalog)
    # and it evaluates a checkpoint unchanged
    assert main(["test", "--config", str(out / "config.yaml"),
                 "--ckpt", str(out / "checkpoints" / "last.ckpt")]) == 0  # fmt: skip
    assert (out / "test" / "config.yaml").is_file()


@pytest.mark.parametrize(
    ("name", "task", "report"),
    [
        ("finetune-change.yaml", "change", "confusion_val.csv"),
        ("finetune-classification-chips.yaml", "classification", "confusion_val.csv"),
        ("finetune-classification-folder.yaml", "classification", "samples_val.png"),
        ("finetune-detection.yaml", "detection", "detections_val.png"),
    ],
)
def test_torchgeo_fit_runs_every_finetune_config(
    demo_catalog: Path, tmp_path: Path, name: str, task: str, report: str
) -> None:
    from torchgeo.main import main as torchgeo_main

    root = tmp_path / "tg"
    options = {**TINY, **TINY_EXTRA.get(name, {})}
    torchgeo_main([
        "fit", "--config", str(RECIPES / name), "--trainer.fast_dev_run=true",
        f"--data.init_args.catalog={demo_catalog}", f"--trainer.default_root_dir={root}",
        "--trainer.accelerator=cpu", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        *[f"--{key}={value}" for key, value in options.items()],
    ])  # fmt: skip
    (ckpt,) = root.rglob("last.ckpt")
    assert list(root.rglob(report))
    _, card = load_for_prediction(ckpt)
    assert card["task"] == task and card["in_chans"] in (3, 4) and card["chip_size"] == 32


def test_geocmid_fit_runs_the_detection_config(demo_catalog: Path, tmp_path: Path) -> None:
    out = tmp_path / "det"
    name = "finetune-detection.yaml"
    options = {**TINY, **TINY_EXTRA[name], "trainer.enable_progress_bar": "false"}
    argv = ["--catalog", str(demo_catalog), "fit", "--config", str(RECIPES / name),
            "--fast-dev-run", "--out", str(out),
            *[a for k, v in options.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    assert main(argv) == 0
    card = json.loads((out / "model_card.json").read_text())
    assert card["task"] == "detection" and card["classes"][0]["name"] == "background"
    assert (out / "reports" / "detections_val.png").is_file()


def test_python_api_with_the_same_classes(demo_catalog: Path, tmp_path: Path) -> None:
    import lightning as L

    from geocmid.datamodules import FeatureChipDataModule
    from geocmid.tasks import ClassificationTask, load_task

    config = yaml.safe_load((RECIPES / "finetune-classification-chips.yaml").read_text())
    task = ClassificationTask(**config["model"]["init_args"])
    assert task.deferred and not hasattr(task, "model")
    dm = FeatureChipDataModule(**{**config["data"]["init_args"], "catalog": str(demo_catalog),
                                  "chip_size": 16, "batch_size": 4})  # fmt: skip
    trainer = L.Trainer(
        accelerator="cpu", fast_dev_run=True, logger=False, enable_progress_bar=False,
        enable_model_summary=False, use_distributed_sampler=False, default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(task, datamodule=dm)
    assert task.hparams["in_channels"] == 4 and task.hparams["chip_size"] == 16
    trainer.save_checkpoint(tmp_path / "c.ckpt")
    rebuilt, card = load_task(tmp_path / "c.ckpt")
    assert card["num_classes"] == task.hparams["num_classes"] and not rebuilt.deferred
    for name, tensor in rebuilt.model.state_dict().items():
        torch.testing.assert_close(tensor, task.model.state_dict()[name])


def test_a_task_without_data_says_what_is_missing(tmp_path: Path) -> None:
    from geocmid.errors import ConfigError, ModelError
    from geocmid.tasks import SegmentationTask

    task = SegmentationTask(backbone="resnet18")
    with pytest.raises(ConfigError, match="in_channels, num_classes, chip_size not given"):
        task.attach_data(None)
    with pytest.raises(ModelError, match=r"model.init_args.in_channels.*is 3 but the data"):
        SegmentationTask(backbone="resnet18", in_channels=3).fill_from_data(
            {"in_channels": 4, "num_classes": 2}, "demo"
        )


@pytest.mark.slow
def test_weights_bring_their_card_statistics(
    demo_catalog: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The old `normalisation: auto`: an export's statistics normalise the data (stats_from)."""
    from geocmid.models import create_backbone
    from geocmid.models.weights import export_backbone

    bands = ["blue", "green", "red", "nir"]
    card = {
        "bands": bands,
        "mean": [500.0, 600.0, 700.0, 800.0],
        "std": [100.0] * 4,
        "gsd": 2.0,
        "pretraining": {"method": "CMID", "data": "demo-2020", "epochs": 3},
    }
    weights, _ = export_backbone(create_backbone("resnet18", 4, img_size=32), tmp_path / "enc",
                                 card)  # fmt: skip
    out = tmp_path / "run"
    argv = ["--catalog", str(demo_catalog), "fit", "--config", str(SEGMENTATION),
            "--fast-dev-run", "--out", str(out), "--weights", str(weights), "--backbone", "null",
            "--set", "trainer.enable_progress_bar=false",
            *[a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]]  # fmt: skip
    assert main(argv) == 0
    written = json.loads((out / "model_card.json").read_text())
    assert written["mean"] == card["mean"] and written["std"] == card["std"]
    # the encoder's provenance travels into the fine-tuned card
    assert written["gsd"] == 2.0 and written["pretraining"] == card["pretraining"]
    assert written["format"] == "geocmid-card/2" and written["geocmid_version"]
    resolved = load_config(out / "config.yaml")
    assert resolved["data"]["init_args"]["stats_from"] == str(weights)
    assert resolved["model"]["init_args"]["backbone"] == "resnet18"  # read from the card
    # evaluating needs neither the export nor the architecture: the checkpoint has both
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={v}")]
    test = ["--catalog", str(demo_catalog), "test", "--config", str(SEGMENTATION),
            "--backbone", "null", "--ckpt", str(out / "checkpoints" / "last.ckpt"),
            "--out", str(out), *sets]  # fmt: skip
    assert main(test) == 0
    assert load_config(out / "test" / "config.yaml")["data"]["init_args"]["stats_from"].endswith(
        "last.ckpt"
    )
    # a 3-band encoder on 4-band data: one clear error, before any training
    rgb = {"bands": ["r", "g", "b"], "mean": [1.0] * 3, "std": [1.0] * 3}
    three, _ = export_backbone(create_backbone("resnet18", 3, img_size=32), tmp_path / "e3", rgb)
    argv[argv.index(str(weights))] = str(three)
    argv[argv.index(str(out))] = str(tmp_path / "run3")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "trained on 3 bands (r, g, b) but the data has 4" in err and "Traceback" not in err


def test_weights_card_names_the_backbone_unless_the_command_line_does(tmp_path: Path) -> None:
    """`--weights EXPORT` with a config that names another backbone (the shipped configs name
    one for training from scratch) trains the card's architecture; `--set model.backbone=X`
    on the command line still decides."""
    from geocmid.models import create_backbone
    from geocmid.models.weights import export_backbone
    from geocmid.workflows.training import prepare_config

    weights, _ = export_backbone(create_backbone("resnet18", 4, img_size=32), tmp_path / "enc",
                                 {"bands": ["b", "g", "r", "n"]})  # fmt: skip
    config = load_config(SEGMENTATION)
    config["model"]["init_args"]["backbone"] = "resnet50"
    raw, _, _ = prepare_config(config, weights=weights)
    assert raw["model"]["init_args"]["backbone"] == "resnet18"
    raw, _, _ = prepare_config(config, weights=weights, overrides=["model.backbone=resnet34"])
    assert raw["model"]["init_args"]["backbone"] == "resnet34"
