"""The configuration system: class_path allow-list, overrides, config files, GeocmidCLI defaults.

Nothing here trains: a config is read, checked and (for the CLI defaults) instantiated only.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from geocmid.errors import ConfigError
from geocmid.workflows.config import (
    TRUSTED_ENV,
    apply_overrides,
    check_class_paths,
    load_config,
    parse_overrides,
)
from geocmid.workflows.training import prepare_config

REPO = Path(__file__).resolve().parents[2]
SEGMENTATION = REPO / "recipes" / "finetune-segmentation.yaml"
TASK = "geocmid.tasks.segmentation.SegmentationTask"
DATA = "geocmid.datamodules.SegmentationDataModule"


def config(**sections: object) -> dict:
    base: dict = {"model": {"class_path": TASK}, "data": {"class_path": DATA}}
    base.update(sections)
    return base


# ---- class_path allow-list ----------------------------------------------------------------------
@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, Path]:
    """A module on sys.path whose import writes a marker file (stands in for any code)."""
    marker = tmp_path / "imported.txt"
    (tmp_path / "geocmid_evil_plugin.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "class Task:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv(TRUSTED_ENV, raising=False)
    return "geocmid_evil_plugin", marker


def test_a_function_is_refused_as_model() -> None:
    with pytest.raises(ConfigError, match=r"model.class_path: 'geocmid.tasks.load_task' is a "
                       r"function, not a class"):  # fmt: skip
        check_class_paths(config(model={"class_path": "geocmid.tasks.load_task"}), "f.yaml")


def test_a_non_lightning_class_is_refused_as_data() -> None:
    bad = config(data={"class_path": "geocmid.data.catalog.Catalog"})
    with pytest.raises(ConfigError, match=r"not a subclass of .*LightningDataModule") as info:
        check_class_paths(bad, "f.yaml")
    assert "f.yaml: data.class_path" in str(info.value)
    callback = config(trainer={"callbacks": [{"class_path": "geocmid.tasks.SegmentationTask"}]})
    with pytest.raises(ConfigError, match=r"trainer.callbacks\[0\].class_path.*Callback"):
        check_class_paths(callback, "f.yaml")


@pytest.mark.parametrize(
    "where",
    ["model", "data", "callback", "logger", "nested", "optimizer"],
)
def test_an_untrusted_module_is_never_imported(evil_module: tuple[str, Path], where: str) -> None:
    module, marker = evil_module
    path = f"{module}.Task"
    placed = {
        "model": config(model={"class_path": path}),
        "data": config(data={"class_path": path}),
        "callback": config(trainer={"callbacks": [{"class_path": path}]}),
        "logger": config(trainer={"logger": {"class_path": path}}),
        "nested": config(model={"class_path": TASK, "init_args": {"loss": {"class_path": path}}}),
        "optimizer": config(optimizer={"class_path": path}),
    }[where]
    with pytest.raises(ConfigError, match="outside the trusted modules") as info:
        check_class_paths(placed, "f.yaml")
    assert f"{TRUSTED_ENV}={module}" in info.value.fix
    assert not marker.exists(), "the untrusted module was imported"


def test_the_whole_fit_path_refuses_before_importing(
    evil_module: tuple[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geocmid.cli import main

    module, marker = evil_module
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(SEGMENTATION.read_text().replace(TASK, f"{module}.Task"))
    assert main(["fit", "--config", str(cfg), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "outside the trusted modules" in err and "Traceback" not in err
    assert not marker.exists()
    assert not (tmp_path / "run").exists()


def test_trusting_a_package_by_environment(
    evil_module: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    module, marker = evil_module
    monkeypatch.setenv(TRUSTED_ENV, f"somepkg, {module}")
    with pytest.raises(ConfigError, match=r"not a subclass of .*LightningModule"):
        check_class_paths(config(model={"class_path": f"{module}.Task"}), "f.yaml")
    assert marker.exists(), "a trusted module is imported and checked"


def test_allowed_class_paths_pass() -> None:
    check_class_paths(load_config(SEGMENTATION), str(SEGMENTATION))
    short = config(
        model={"class_path": "SegmentationTask"},  # jsonargparse resolves among subclasses
        trainer={"logger": [{"class_path": "lightning.pytorch.loggers.CSVLogger"}],
                 "callbacks": [{"class_path": "EarlyStopping"}]},
        optimizer={"class_path": "torch.optim.AdamW"},
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.ReduceLROnPlateau"},
    )  # fmt: skip
    check_class_paths(short, "f.yaml")


# ---- overrides ----------------------------------------------------------------------------------
def test_override_values_are_read_as_yaml() -> None:
    pairs = parse_overrides([
        "model.init_args.lr=1e-3", "trainer.max_epochs=5", "data.split=[0.8, 0.1, 0.1]",
        "model.weights=null", "model.freeze_backbone=true", "data.entry=demo-2020",
        "model.lr=.5", "data.labels= x=y ",
    ])  # fmt: skip
    assert pairs == [
        ("model.init_args.lr", 0.001), ("trainer.max_epochs", 5),
        ("data.split", [0.8, 0.1, 0.1]), ("model.weights", None),
        ("model.freeze_backbone", True), ("data.entry", "demo-2020"), ("model.lr", 0.5),
        ("data.labels", "x=y"),
    ]  # fmt: skip
    assert isinstance(pairs[0][1], float) and isinstance(pairs[1][1], int)
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_overrides(["model.lr"])


def test_overrides_reach_init_args_and_leave_the_input_alone() -> None:
    original = load_config(SEGMENTATION)
    out = apply_overrides(original, [
        "model.lr=1e-3", "data.chip_size=32", "model.init_args.backbone=resnet34",
        "trainer.callbacks.0.init_args.monitor=val_OA", "seed_everything=7",
    ])  # fmt: skip
    assert out["model"]["init_args"]["lr"] == 0.001
    assert out["model"]["init_args"]["backbone"] == "resnet34"
    assert out["data"]["init_args"]["chip_size"] == 32
    assert out["trainer"]["callbacks"][0]["init_args"]["monitor"] == "val_OA"
    assert out["seed_everything"] == 7
    assert original["model"]["init_args"]["lr"] == 1.0e-3 and "lr" not in original["model"]
    assert original["data"]["init_args"]["chip_size"] == 64
    with pytest.raises(ConfigError, match="not an index"):
        apply_overrides(original, ["trainer.callbacks.5.init_args.monitor=x"])
    with pytest.raises(ConfigError, match=r"'trainer\.max_epochs' is a value"):
        apply_overrides(original, ["trainer.max_epochs.x=1"])


@pytest.mark.parametrize(
    ("override", "where", "message"),
    [
        ("model.lrr=1e-3", "model.init_args.lrr", "has no argument 'lrr' (did you mean 'lr'?)"),
        ("data.chipsize=32", "data.init_args.chipsize", "did you mean 'chip_size'?"),
        ("trainer.max_epoch=3", "trainer.max_epoch", "did you mean 'max_epochs'?"),
        ("trainr.max_epochs=3", "key 'trainr'", "did you mean 'trainer'?"),
    ],
)
def test_an_unknown_key_is_named(override: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        prepare_config(SEGMENTATION, overrides=[override])
    text = str(info.value)
    assert where in text and message in text


def test_stats_from_follows_the_weights_unless_the_config_decides(tmp_path: Path) -> None:
    raw, _, _ = prepare_config(SEGMENTATION, weights="enc.safetensors", catalog="cat")
    assert raw["data"]["init_args"]["stats_from"] == "enc.safetensors"
    assert raw["model"]["init_args"]["weights"] == "enc.safetensors"
    assert raw["data"]["init_args"]["catalog"] == "cat"
    raw, _, _ = prepare_config(SEGMENTATION, weights="enc.safetensors",
                               overrides=["data.stats_from=null", "data.catalog=mine"])  # fmt: skip
    assert raw["data"]["init_args"]["stats_from"] is None
    assert raw["data"]["init_args"]["catalog"] == "mine"
    ckpt = tmp_path / "run.ckpt"
    ckpt.write_bytes(b"")
    raw, _, path = prepare_config(SEGMENTATION, stage="test", ckpt=ckpt, weights="enc.safetensors")
    assert path == str(ckpt) and raw["model"]["init_args"]["weights"] is None
    assert raw["data"]["init_args"]["stats_from"] == str(ckpt)  # the statistics it trained with
    assert raw["trainer"]["default_root_dir"].endswith("finetune-segmentation/test")
    with pytest.raises(ConfigError, match="needs a checkpoint"):
        prepare_config(SEGMENTATION, stage="validate")


# ---- config files -------------------------------------------------------------------------------
def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n model: x\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 3"):
        load_config(bad)
    old = tmp_path / "old.yaml"
    old.write_text("model: {class_path: x}\ncheckpoint:\n  monitor: val_OA\n")
    with pytest.raises(ConfigError, match=r"trainer\.callbacks ModelCheckpoint"):
        load_config(old)
    short = tmp_path / "short.yaml"
    short.write_text(SEGMENTATION.read_text().replace(TASK, "segmentation"))
    with pytest.raises(ConfigError, match=f"class_path: {TASK}"):
        prepare_config(short)


# ---- GeocmidCLI defaults ------------------------------------------------------------------------
def test_cli_defaults_checkpoint_loggers_and_reports(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from geocmid.tasks.reports import ReportCallback
    from geocmid.workflows.config import GeocmidCLI

    raw = apply_overrides(load_config(SEGMENTATION), [
        f"trainer.default_root_dir={tmp_path}", "trainer.callbacks=null", "data.catalog=nowhere",
    ])  # fmt: skip
    cli = GeocmidCLI(args=raw, run=False)
    checkpoint = cli.trainer.checkpoint_callback
    assert isinstance(checkpoint, ModelCheckpoint)
    assert checkpoint.monitor == "val_mIoU" and checkpoint.mode == "max"  # the task registry's
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints" and checkpoint.save_last
    assert any(isinstance(c, ReportCallback) for c in cli.trainer.callbacks)
    assert {type(lg) for lg in cli.trainer.loggers} == {CSVLogger, TensorBoardLogger}
    assert Path(cli.trainer.log_dir) == tmp_path
    assert cli.model.deferred  # in_channels & co. come from the data in setup
