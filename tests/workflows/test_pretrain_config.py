"""Pretraining configs: one set of defaults (CMIDTask's signature), plain Lightning CLI configs.

* ``CMIDTask()`` and ``geocmid pretrain`` with an empty config resolve to the same settings,
  and those are the paper's;
* the shipped ``recipes/pretrain-*.yaml`` run under a plain ``LightningCLI`` (no geocmid code
  path: class paths from the file, data-derived task arguments filled in ``setup``);
* overrides, the former schema's keys, callbacks by name, the DDP rule.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
import torch
import yaml

from geocmid.errors import ConfigError
from geocmid.workflows.pretrain import (
    OLD_KEYS,
    SEED,
    assemble,
    distributed_settings,
    pretrain,
    settings,
)

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
#: Narrow heads and a short queue: every code path of the method at a fraction of the cost.
TINY_MODEL = {
    "queue_size": 64, "proj_hidden": 64, "proj_dim": 32, "head_hidden": 64,
    "head_bottleneck": 32, "num_prototypes": 64,
}  # fmt: skip

torch.set_num_threads(1)

#: The paper's settings (official ResNet-50 config, spec §5) as the former schema had them.
PAPER = {
    "backbone": "resnet50", "mask_ratio": 0.6, "mask_block": 32, "queue_size": 65536,
    "proj_hidden": 2048, "proj_dim": 256, "temperature": 0.2, "head_hidden": 2048,
    "head_bottleneck": 256, "num_prototypes": 2048, "num_matches": 20, "student_temp": 0.1,
    "teacher_temp": [0.04, 0.07], "teacher_temp_warmup_epochs": 50, "center_momentum": 0.9,
    "focal_alpha": 0.2, "focal_gamma": 1.0, "fft_weight": 1.0, "drop_path_rate": 0.0,
    "ema_momentum": [0.996, 1.0], "optimizer": "adan", "base_lr": 4e-3,
    "lr_reference_batch": 256, "weight_decay": 0.02, "betas": None, "warmup_epochs": 10,
    "warmup_start": 0.01, "min_lr": 1e-6,
}  # fmt: skip
PAPER_DATA = {"chip_size": 224, "batch_size": 64, "chips_per_epoch": 16384, "num_workers": 4,
              "max_nodata": 0.5, "seed": 0}  # fmt: skip


def _plain(value):
    """Tuples as lists (YAML has only lists)."""
    return list(value) if isinstance(value, tuple) else value


def test_task_and_pretrain_resolve_the_same_defaults(
    demo_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    from geocmid.cmid.task import DATA_ARGS, CMIDTask
    from geocmid.datamodules import PretrainDataModule

    monkeypatch.chdir(tmp_path)  # the default run folder is relative: runs/cmid
    task = {k: _plain(v) for k, v in CMIDTask().hparams.items()}
    result = pretrain({"data": {"init_args": {"entry": "demo-2020"}}}, catalog=demo_catalog,
                      dry_run=True)  # fmt: skip
    resolved = result.config["model"]["init_args"]
    assert result.config["model"]["class_path"] == "geocmid.cmid.CMIDTask"
    assert set(resolved) == set(task)
    for key, value in task.items():
        assert resolved[key] == value, key  # data-derived ones: None on both sides
    assert all(resolved[k] is None for k in DATA_ARGS)
    # ... and they are the paper's; settings derived from the chip size and run length
    # (geocmid.cmid.derive: None means "the paper's rule", checked in tests/cmid) aside
    derived = {k for k in PAPER if task[k] is None and PAPER[k] is not None}
    assert derived <= {"mask_block", "num_matches", "teacher_temp_warmup_epochs",
                       "ema_momentum", "warmup_epochs", "queue_size"}, derived  # fmt: skip
    assert {k: task[k] for k in PAPER if k not in derived} == {
        k: v for k, v in PAPER.items() if k not in derived
    }
    data = result.config["data"]["init_args"]
    signature = inspect.signature(PretrainDataModule).parameters
    assert {k: data[k] for k in PAPER_DATA} == PAPER_DATA
    assert {k: signature[k].default for k in PAPER_DATA} == PAPER_DATA
    assert result.config["seed_everything"] == SEED == 322
    trainer = result.config["trainer"]
    assert trainer["max_epochs"] == 200 and trainer["use_distributed_sampler"] is False
    assert trainer["default_root_dir"] == "runs/cmid"
    # the data decide the rest; nothing was written
    assert result.data_args["in_chans"] == 4 and result.data_args["chip_size"] == 224
    assert result.data_args["bands"] == ["blue", "green", "red", "nir"]
    assert not (tmp_path / "runs").exists()

    # the command line resolves the same (its dry run prints the data-derived values filled in)
    from geocmid.cli import main

    assert main(["--catalog", str(demo_catalog), "pretrain", "--entry", "demo-2020",
                 "--dry-run"]) == 0  # fmt: skip
    printed = yaml.safe_load(capsys.readouterr().out)
    cli_model = printed["model"]["init_args"]
    assert {k: v for k, v in cli_model.items() if k not in DATA_ARGS} == {
        k: v for k, v in task.items() if k not in DATA_ARGS
    }
    assert {k: cli_model[k] for k in DATA_ARGS} == result.data_args
    assert printed["data"]["init_args"] == data and printed["trainer"] == trainer


def test_help_settings_are_the_signatures(capsys) -> None:
    """`geocmid pretrain --help` reads the defaults from the source: the same values."""
    from geocmid.cmid.callbacks import HealthMonitor, QuickLook
    from geocmid.cmid.task import CMIDTask
    from geocmid.datamodules import PretrainDataModule

    table = settings()
    for prefix, cls in (("model", CMIDTask), ("data", PretrainDataModule),
                        ("trainer.callbacks.HealthMonitor", HealthMonitor),
                        ("trainer.callbacks.QuickLook", QuickLook)):  # fmt: skip
        for name, param in inspect.signature(cls).parameters.items():
            default, text = table[f"{prefix}.{name}"]
            if param.default is inspect.Parameter.empty:
                assert repr(default) == "required", name
            else:
                assert default == param.default, name
            assert text, f"{prefix}.{name} has no help text"
    from lightning.pytorch import Trainer

    from geocmid.workflows.pretrain import TRAINER_DEFAULTS, TRAINER_SETTINGS

    trainer = inspect.signature(Trainer).parameters
    for key in TRAINER_SETTINGS:
        expected = TRAINER_DEFAULTS.get(key, trainer[key].default)
        assert table[f"trainer.{key}"][0] == expected, key
    from geocmid.cli import main

    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for line in ("--model.base_lr V lr per lr_reference_batch images", "(default: 0.004)",
                 "--data.chips_per_epoch V", "(default: 16384)", "--trainer.max_epochs V",
                 "(default: 200)", "--trainer.callbacks.QuickLook.every_n_epochs V"):  # fmt: skip
        assert line in shown, line


@pytest.mark.parametrize("name", ["pretrain-resnet50.yaml", "pretrain-swin-b.yaml"])
def test_paper_recipes_are_the_task_defaults(name: str) -> None:
    """The paper recipes write the method settings out; they must not drift from CMIDTask's."""
    from geocmid.cmid.task import CMIDTask

    task = {k: _plain(v) for k, v in CMIDTask().hparams.items()}
    recipe = yaml.safe_load((RECIPES / name).read_text())
    init = recipe["model"]["init_args"]
    for key, value in init.items():
        if key != "backbone":
            assert value == task[key], key
    data = recipe["data"]["init_args"]
    assert data["chip_size"] == 224 and data["batch_size"] == 64


@pytest.mark.slow
def test_plain_lightning_cli_runs_the_recipe(demo_catalog: Path, tmp_path: Path) -> None:
    """No geocmid code path: LightningCLI reads the class paths from the recipe and fits."""
    from lightning.pytorch.cli import LightningCLI

    tiny = [f"--model.init_args.{k}={v}" for k, v in TINY_MODEL.items()]
    cli = LightningCLI(
        args=["fit", "--config", str(RECIPES / "pretrain-resnet18-cpu.yaml"),
              "--trainer.fast_dev_run=true", f"--trainer.default_root_dir={tmp_path}",
              f"--data.init_args.catalog={demo_catalog}", "--data.init_args.chip_size=64",
              "--data.init_args.batch_size=2", *tiny],
        save_config_kwargs={"overwrite": True},
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    hp = cli.model.hparams  # filled in from the datamodule in setup
    assert hp["in_chans"] == 4 and hp["bands"] == ["blue", "green", "red", "nir"]
    assert hp["chip_size"] == 64 and hp["batch_size"] == 2 and len(hp["mean"]) == 4
    assert cli.model.rgb_indices == [2, 1, 0] and hp["data"] == "demo-2020"


def test_overrides_and_callbacks_by_name(demo_catalog: Path) -> None:
    raw, _ = assemble(
        RECIPES / "pretrain-resnet18-cpu.yaml",
        ["model.mask_ratio=0.5", "data.chip_size=64", "trainer.max_epochs=7",
         "trainer.callbacks.QuickLook.every_n_epochs=3", "trainer.callbacks.RankStateDump=true",
         "trainer.callbacks.HealthMonitor=false", "seed_everything=1"],
    )  # fmt: skip
    assert raw["model"]["init_args"]["mask_ratio"] == 0.5
    assert raw["data"]["init_args"]["chip_size"] == 64 and raw["trainer"]["max_epochs"] == 7
    names = {c["class_path"].rsplit(".", 1)[-1]: c for c in raw["trainer"]["callbacks"]}
    assert set(names) == {"QuickLook", "RankStateDump"} and raw["seed_everything"] == 1
    assert names["QuickLook"]["init_args"]["every_n_epochs"] == 3
    # a config that names no callbacks gets the health and quick-look ones
    bare, _ = assemble({}, ["data.entry=x"], catalog=demo_catalog)
    assert [c["class_path"] for c in bare["trainer"]["callbacks"]] == [
        "geocmid.cmid.callbacks.HealthMonitor", "geocmid.cmid.callbacks.QuickLook"
    ]  # fmt: skip
    assert bare["data"]["init_args"]["catalog"] == str(demo_catalog)


#: Every key of the former flat schema (sections data/model/optim/trainer/health/debug, run_dir).
OLD_SCHEMA = (
    [f"data.{k}" for k in ("catalog", "entry", "chip_size", "batch_size", "chips_per_epoch",
                           "num_workers", "max_nodata", "seed")]
    + [f"model.{k}" for k in ("backbone", "in_chans", "bands", "rgb_bands", "pretrained",
                              "mask_ratio", "mask_block", "queue_size", "proj_hidden",
                              "proj_dim", "temperature", "head_hidden", "head_bottleneck",
                              "num_prototypes", "num_matches", "student_temp", "teacher_temp",
                              "teacher_temp_warmup_epochs", "center_momentum", "focal_alpha",
                              "focal_gamma", "fft_weight", "drop_path_rate", "ema_momentum")]
    + [f"optim.{k}" for k in ("optimizer", "base_lr", "lr_reference_batch", "weight_decay",
                              "betas", "warmup_epochs", "warmup_start", "min_lr")]
    + [f"trainer.{k}" for k in ("max_epochs", "devices", "num_nodes", "accelerator",
                                "precision", "strategy", "accumulate_grad_batches",
                                "limit_train_batches", "log_every_n_steps",
                                "gradient_clip_val", "seed")]
    + [f"health.{k}" for k in ("every_n_epochs", "knn_entry", "knn_k", "knn_temperature",
                               "knn_max_images", "quicklook_every_n_epochs")]
    + ["debug.dump_rank_state", "run_dir"]
)  # fmt: skip


@pytest.mark.parametrize("old", OLD_SCHEMA)
def test_every_old_key_has_a_new_home(old: str) -> None:
    """OLD_KEYS (what recipes translate with) maps each former key to one the config takes;
    the former key itself is refused, naming the new one when it moved."""
    new = OLD_KEYS.get(old, old)
    value = True if old == "debug.dump_rank_state" else None
    raw, _ = assemble(RECIPES / "pretrain-resnet18-cpu.yaml", [(new, value)])
    if new.startswith("trainer.callbacks."):
        name = new.split(".")[2]
        assert any(c["class_path"].endswith(name) for c in raw["trainer"]["callbacks"])
    if old in OLD_KEYS:
        with pytest.raises(ConfigError, match=f"now '{new}'"):
            assemble(RECIPES / "pretrain-resnet18-cpu.yaml", [(old, value)])


def test_ddp_rule() -> None:
    cpu2 = distributed_settings({"devices": 2, "accelerator": "cpu"}, "resnet50")
    assert cpu2 == {"strategy": {"class_path": "lightning.pytorch.strategies.DDPStrategy",
                                 "init_args": {"broadcast_buffers": False}}}  # fmt: skip
    assert distributed_settings({"devices": 1, "accelerator": "cpu"}, "resnet50") == {}
    gpu = distributed_settings({"devices": 4, "accelerator": "gpu"}, "resnet50")
    assert gpu["sync_batchnorm"] is True and gpu["strategy"]["init_args"] == {
        "broadcast_buffers": False
    }
    assert "sync_batchnorm" not in distributed_settings({"devices": 4, "accelerator": "gpu"},
                                                        "swin_base")  # fmt: skip
    nodes = distributed_settings({"devices": 1, "num_nodes": 2, "accelerator": "gpu"}, "resnet18")
    assert "strategy" in nodes and nodes["sync_batchnorm"]
    assert (
        distributed_settings({"devices": 2, "strategy": "ddp_spawn"}, "resnet18").get("strategy")
        is None
    )  # another strategy chosen on purpose is left alone
    given = {"class_path": "lightning.pytorch.strategies.DDPStrategy",
             "init_args": {"find_unused_parameters": True}}  # fmt: skip
    out = distributed_settings({"devices": 2, "strategy": given, "accelerator": "cpu"}, "vit_small")
    assert out["strategy"]["init_args"] == {"find_unused_parameters": True,
                                            "broadcast_buffers": False}  # fmt: skip
