"""Exports hold plain timm keys: timm, TorchGeo and geocmid load every tensor, strictly.

The one-liners here are the ones the README gives; each must load 0 missing / 0 unexpected keys
and give back the exported tensors bit for bit.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from geocmid.errors import ModelError
from geocmid.models import Backbone, ModelCard, create_backbone
from geocmid.models.weights import export_backbone, load_backbone

# (short name, bands, chip size): a 4-band ResNet, Swin with windows shrunk by a small chip, and
# a ViT whose position embedding is sized for its chip
CASES = [("resnet18", 4, 64), ("swin_tiny", 3, 64), ("vit_small", 5, 32)]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def export(request, tmp_path_factory) -> Iterator[tuple[Backbone, Path, ModelCard]]:
    torch.set_num_threads(1)
    name, bands, size = request.param
    torch.manual_seed(0)
    backbone = create_backbone(name, bands, img_size=size)
    with torch.no_grad():  # make every tensor distinct from a fresh init, buffers included
        for key, t in backbone.model.state_dict().items():
            if t.is_floating_point():
                t.uniform_(0.5, 1.5) if key.endswith("running_var") else t.normal_(0, 0.1)
    folder = tmp_path_factory.mktemp(name)
    weights, card_path = export_backbone(backbone, folder / name, {"bands": list("abcde"[:bands])})
    yield backbone, weights, ModelCard.from_file(card_path)
    shutil.rmtree(folder, ignore_errors=True)  # up to 110 MB per backbone; CI disks are small


def assert_same(loaded: dict[str, torch.Tensor], backbone: Backbone) -> None:
    source = backbone.model.state_dict()
    assert loaded.keys() == source.keys()
    assert all(torch.equal(loaded[k], v) for k, v in source.items())


def test_keys_are_exactly_timm_keys(export) -> None:
    _, weights, card = export
    with torch.device("meta"):
        reference = timm.create_model(card.architecture, num_classes=0, in_chans=card.in_chans)
    assert set(load_file(str(weights))) == set(reference.state_dict())
    assert not any(k.startswith("model.") for k in load_file(str(weights)))


def test_timm_one_liner_is_strict_and_complete(export, caplog) -> None:
    backbone, weights, card = export
    n, s = card.in_chans, card.chip_size
    with caplog.at_level(logging.INFO, logger="timm"):
        model = timm.create_model(
            card.architecture, pretrained=True, num_classes=0,
            pretrained_cfg_overlay=dict(file=str(weights), num_classes=0, input_size=(n, s, s)),
        )  # fmt: skip
    assert not [r for r in caplog.records if "keys" in r.getMessage().lower()]  # no missing/unexp.
    assert_same(model.state_dict(), backbone)
    # the card builds the same call
    assert_same(timm.create_model(**card.timm_kwargs(weights)).state_dict(), backbone)
    x = torch.randn(1, n, s, s)
    with torch.no_grad():
        features = model.eval().forward_features(x)
        ours = backbone.eval()(x)
    if card.family == "resnet":  # same final map (timm Swin is NHWC, ViT keeps the class token)
        torch.testing.assert_close(features, ours)


def test_torchgeo_loader_finds_every_key(export) -> None:
    from torchgeo.tasks.utils import load_state_dict

    backbone, weights, card = export
    if card.family == "swin":
        pytest.skip(
            "torchgeo's load_state_dict expects a Linear / Identity last child, Swin's is a head"
        )
    kw = {} if card.family == "resnet" else {"img_size": card.chip_size}
    model = timm.create_model(card.architecture, num_classes=0, in_chans=card.in_chans, **kw)
    missing, unexpected = load_state_dict(model, load_file(str(weights)))
    assert missing == [] and unexpected == []
    assert_same(model.state_dict(), backbone)


def test_torchgeo_tasks_take_a_resnet_export(export) -> None:
    backbone, weights, card = export
    if card.family != "resnet":
        pytest.skip("TorchGeo's smp encoders use timm names for Swin / ViT ('tu-' prefix)")
    from torchgeo.tasks import Classification, SemanticSegmentation
    from torchgeo.tasks.utils import load_state_dict

    state = load_file(str(weights))
    cls = Classification(model=card.architecture, in_channels=card.in_chans, num_classes=3)
    missing, unexpected = load_state_dict(cls.model, state)
    assert unexpected == [] and set(missing) == {"fc.weight", "fc.bias"}  # the new head only
    seg = SemanticSegmentation(
        model="unet", backbone=card.architecture, in_channels=card.in_chans, num_classes=2
    )
    seg.model.encoder.load_state_dict(state)  # strict (raises on any key that does not fit)
    assert_same(seg.model.encoder.state_dict(), backbone)


def test_geocmid_load_backbone_equals_the_export(export) -> None:
    backbone, weights, card = export
    loaded, got = load_backbone(weights)
    assert got == card and loaded.name == backbone.name
    assert_same(loaded.model.state_dict(), backbone)


@pytest.mark.parametrize("damage", ["rename", "drop"])
def test_a_damaged_file_names_the_key(export, tmp_path: Path, damage: str) -> None:
    _, weights, card = export
    state = load_file(str(weights))
    key = sorted(k for k in state if k.endswith(".weight"))[0]
    value = state.pop(key)
    if damage == "rename":
        state[key.replace(".weight", ".wieght")] = value
    save_file(state, str(tmp_path / "bad.safetensors"))
    card.to_file(tmp_path / "bad.json")
    with pytest.raises(ModelError, match=rf"1 missing: {key}") as info:
        load_backbone(tmp_path / "bad.safetensors")
    if damage == "rename":
        assert f"1 unexpected: {key.replace('.weight', '.wieght')}" in str(info.value)
    assert info.value.fix and "NAME.json" in info.value.fix
    # timm's one-liner (with the card's overlay) is strict too
    with pytest.raises(RuntimeError, match=key):
        timm.create_model(**card.timm_kwargs(tmp_path / "bad.safetensors"))


def test_export_cli_writes_a_card2_export(tmp_path: Path) -> None:
    """`geocmid export` on a CMID checkpoint (synthetic: the student's keys and hyperparameters)."""
    from geocmid.cli import main

    torch.manual_seed(0)
    student = create_backbone("resnet18", 3, img_size=32)
    state = {f"model.student.backbone.{k}": v for k, v in student.state_dict().items()}
    state["model.teacher.backbone.model.conv1.weight"] = torch.zeros(1)  # not exported
    hp = {"backbone": "resnet18", "in_chans": 3, "chip_size": 32, "bands": ["r", "g", "b"],
          "mean": [10.0, 20.0, 30.0], "std": [1.0, 2.0, 3.0], "gsd": 10.0, "data": "rgb",
          "pretrained": None, "optimizer": "adamw", "base_lr": 1e-3}  # fmt: skip
    ckpt = {"state_dict": state, "hyper_parameters": hp, "global_step": 7, "epoch": 1}
    torch.save(ckpt, tmp_path / "last.ckpt")
    assert main(["export", str(tmp_path / "last.ckpt"), str(tmp_path / "out" / "r18")]) == 0
    card = ModelCard.from_file(tmp_path / "out" / "r18.json")
    assert card.format == "geocmid-card/2" and card.task == "backbone"
    assert (card.architecture, card.in_chans, card.chip_size, card.gsd) == ("resnet18", 3, 32, 10.0)
    assert card.mean == (10.0, 20.0, 30.0) and card.bands == ("r", "g", "b")
    assert card.pretraining["data"] == "rgb" and card.pretraining["steps"] == 7
    model = timm.create_model(**card.timm_kwargs(tmp_path / "out" / "r18.safetensors"))
    assert_same(model.state_dict(), student)
    # a checkpoint whose student does not fit its hyperparameters names the keys
    state.pop("model.student.backbone.model.layer1.0.conv1.weight")
    torch.save(ckpt, tmp_path / "bad.ckpt")
    with pytest.raises(ModelError, match=r"1 missing: layer1\.0\.conv1\.weight"):
        from geocmid.workflows.export import export

        export(tmp_path / "bad.ckpt", tmp_path / "bad")
