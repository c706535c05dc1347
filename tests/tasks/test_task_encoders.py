"""Encoder initialisation: exported CMID weights land unchanged in every downstream model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geocmid.errors import ConfigError, ModelError
from geocmid.models import create_backbone
from geocmid.models.weights import export_backbone, load_backbone
from geocmid.tasks.change import ChangeTask
from geocmid.tasks.classification import ClassificationTask, encoder_part
from geocmid.tasks.encoders import encoder_differences, smp_encoder_keys
from geocmid.tasks.segmentation import SegmentationTask

RESNET = smp_encoder_keys("resnet")


@pytest.mark.parametrize("decoder", ["unet", "upernet", "fpn", "deeplabv3+"])
def test_smp_decoders_start_from_the_export(rgb_export: Path, decoder: str) -> None:
    exported, _ = load_backbone(rgb_export)
    task = SegmentationTask(model=decoder, backbone=None, weights=str(rgb_export), in_channels=3,
                            num_classes=3, chip_size=64)  # fmt: skip
    assert task.hparams["backbone"] == "resnet18"  # taken from the card
    assert encoder_differences(exported, task.model.encoder, RESNET) == []
    n_encoder = len([k for k in task.model.encoder.state_dict() if "num_batches" not in k])
    assert n_encoder == len([k for k in exported.model.state_dict() if "num_batches" not in k])


def test_random_start_differs_from_the_export(rgb_export: Path) -> None:
    exported, _ = load_backbone(rgb_export)
    task = SegmentationTask(backbone="resnet18", in_channels=3, num_classes=3, chip_size=64)
    assert encoder_differences(exported, task.model.encoder, RESNET)


def test_swin_upernet_tiny_load_and_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    swin = create_backbone("swin_tiny", 3, img_size=64)
    path, _ = export_backbone(swin, tmp_path / "swin", {"bands": ["r", "g", "b"]})
    task = SegmentationTask(model="upernet", backbone="swin_tiny", weights=str(path), in_channels=3,
                            num_classes=2, chip_size=64)  # fmt: skip
    assert encoder_differences(swin, task.model.encoder, smp_encoder_keys("swin")) == []
    with torch.no_grad():
        assert task.model.eval()(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


@pytest.mark.parametrize("model", ["fcsiamdiff", "fcsiamconc", "unet"])
def test_change_models_share_the_export(rgb_export: Path, model: str) -> None:
    exported, _ = load_backbone(rgb_export)
    task = ChangeTask(model=model, backbone="resnet18", weights=str(rgb_export), in_channels=3,
                      num_classes=2, chip_size=64)  # fmt: skip
    enc = task.model.encoder
    diff = encoder_differences(exported, enc, RESNET)
    if model == "unet":  # early fusion: the stem is split over the two dates
        assert diff == ["conv1.weight"]
        stem = exported.model.conv1.weight
        assert torch.equal(enc.model.conv1.weight, torch.cat([stem, stem], 1) / 2)
    else:
        assert diff == []
    with torch.no_grad():
        assert task.model.eval()(torch.randn(2, 2, 3, 64, 64)).shape == (2, 2, 64, 64)


def test_changevit_takes_a_vit_encoder(tmp_path: Path) -> None:
    vit = create_backbone("vit_small", 3, img_size=32)
    path, _ = export_backbone(vit, tmp_path / "vit", {})
    task = ChangeTask(model="changevit", backbone="vit_small", weights=str(path), in_channels=3,
                      num_classes=2, chip_size=32)  # fmt: skip
    assert encoder_differences(vit, task.model.encoder) == []
    with pytest.raises(ConfigError, match="ViT"):
        ChangeTask(model="changevit", backbone="resnet18", in_channels=3, num_classes=2,
                   chip_size=32)  # fmt: skip


def test_classifier_starts_from_the_export_and_probes_linearly(rgb_export: Path) -> None:
    exported, _ = load_backbone(rgb_export)
    task = ClassificationTask(backbone=None, weights=str(rgb_export), in_channels=3,
                              num_classes=4, chip_size=64, freeze_backbone=True)  # fmt: skip
    assert encoder_differences(exported, task.model) == []
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    assert trainable == {"fc.weight", "fc.bias"}
    assert len(encoder_part(task.model)) > 0


def test_backbone_learning_rate_is_separate(rgb_export: Path) -> None:
    task = SegmentationTask(backbone="resnet18", weights=str(rgb_export), in_channels=3,
                            num_classes=3, chip_size=64, lr=1e-3, backbone_lr=1e-5,
                            scheduler="none")  # fmt: skip
    groups = {g["name"]: g for g in task.configure_optimizers().param_groups}
    assert groups["encoder"]["lr"] == 1e-5 and groups["head"]["lr"] == 1e-3
    n_enc = sum(p.numel() for p in task.model.encoder.parameters())
    assert sum(p.numel() for p in groups["encoder"]["params"]) == n_enc


def test_band_count_mismatch_is_a_clear_error(rgb_export: Path) -> None:
    with pytest.raises(
        ModelError, match=r"trained on 3 bands \(red, green, blue\) but the data has 4"
    ):
        SegmentationTask(weights=str(rgb_export), backbone=None, in_channels=4, num_classes=2,
                         chip_size=64)  # fmt: skip
    with pytest.raises(ModelError, match="resnet18"):
        SegmentationTask(weights=str(rgb_export), backbone="resnet50", in_channels=3,
                         num_classes=2, chip_size=64)  # fmt: skip


def test_loading_an_export_says_so_in_one_info_line(rgb_export: Path, caplog) -> None:
    import logging

    from geocmid.models.card import ModelCard
    from geocmid.tasks.encoders import card_fingerprint

    caplog.set_level(logging.DEBUG)
    SegmentationTask(model="unet", backbone=None, weights=str(rgb_export), in_channels=3,
                     num_classes=3, chip_size=64)  # fmt: skip
    lines = [r for r in caplog.records if r.getMessage().startswith("encoder weights:")]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO, caplog.text
    total = len(create_backbone("resnet18", 3).model.state_dict())
    fingerprint = card_fingerprint(ModelCard.from_file(rgb_export.with_suffix(".json")))
    assert lines[0].getMessage() == (
        f"encoder weights: {rgb_export} (resnet18, {total} of {total} tensors loaded; "
        f"card fingerprint {fingerprint})"
    )
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


def test_a_release_checkpoint_gets_the_same_line(tmp_path: Path, caplog) -> None:
    import logging

    backbone = create_backbone("resnet18", 3)
    torch.save({"model": backbone.model.state_dict()}, tmp_path / "release.pth")
    caplog.set_level(logging.INFO)
    ClassificationTask(backbone="resnet18", weights=str(tmp_path / "release.pth"),
                       in_channels=3, num_classes=2, chip_size=64)  # fmt: skip
    total = len(backbone.model.state_dict())
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith(f"encoder weights: {tmp_path / 'release.pth'} (resnet18, ")
               and f"of {total} tensors loaded" in m for m in messages), messages  # fmt: skip
    assert not any(m.startswith("weights ") for m in messages), messages  # one line, not two


def test_encoder_tensors_without_a_place_downstream_are_a_warning(rgb_export: Path, caplog) -> None:
    import logging

    from geocmid.tasks.encoders import copy_encoder

    exported, _ = load_backbone(rgb_export)
    target = create_backbone("resnet18", 3).model
    del target.layer4  # a downstream encoder without the last stage
    caplog.set_level(logging.INFO)
    report = copy_encoder(exported, target)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    n = len([k for k in exported.model.state_dict() if k.startswith("layer4.")])
    assert len(report.unused) == n and len(warnings) == 1, warnings
    assert f"{n} of {len(exported.model.state_dict())} tensors of resnet18" in warnings[0]
    assert "layer4.0.conv1.weight" in warnings[0] and "more" in warnings[0], warnings


def test_fine_tuning_weights_are_channels_last_unless_turned_off(rgb_export: Path) -> None:
    """Channels-last is a layout only: the export lands unchanged, outputs agree with NCHW."""
    exported, _ = load_backbone(rgb_export)
    kw = {"backbone": None, "weights": str(rgb_export), "in_channels": 3, "num_classes": 3,
          "chip_size": 64}  # fmt: skip
    torch.manual_seed(0)
    cl = SegmentationTask(**kw)
    torch.manual_seed(0)  # the same decoder initialisation
    nchw = SegmentationTask(**kw, channels_last=False)
    stem = next(p for p in cl.model.encoder.parameters() if p.ndim == 4)
    assert stem.is_contiguous(memory_format=torch.channels_last) and not stem.is_contiguous()
    assert next(p for p in nchw.model.encoder.parameters() if p.ndim == 4).is_contiguous()
    assert encoder_differences(exported, cl.model.encoder, RESNET) == []
    x = torch.randn(2, 3, 64, 64)
    cl.eval(), nchw.eval()
    with torch.no_grad():
        torch.testing.assert_close(cl(x), nchw(x), atol=1e-4, rtol=1e-4)
    clf = ClassificationTask(backbone="resnet18", in_channels=3, num_classes=4, chip_size=64)
    conv = next(p for p in clf.model.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
