"""Loading the authors' CMID checkpoints (synthetic, with the released key names) and exports."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from geocmid.errors import ConfigError, ModelError
from geocmid.models import Backbone, MaskedBackbone, ModelCard, create_backbone
from geocmid.models.weights import (
    export_backbone,
    guess_architecture,
    load_backbone,
    load_weights,
    mmcls_swin_to_timm,
)


# ---------------------------------------------------------------- timm → mmcls (test-side inverse)
def timm_merge_to_mmcls(t: torch.Tensor) -> torch.Tensor:
    """timm channel index kw·2C + kh·C + c → mmcls (nn.Unfold) index c·4 + kh·2 + kw."""
    if t.ndim == 2:
        out, four_c = t.shape
        return t.reshape(out, 2, 2, four_c // 4).permute(0, 3, 2, 1).reshape(out, four_c)
    return t.reshape(2, 2, -1).permute(2, 1, 0).reshape(-1)


def timm_swin_to_mmcls(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in sd.items():
        m = re.match(r"layers\.(\d)\.downsample\.(.*)", k)
        if m:
            out[f"stages.{int(m.group(1)) - 1}.downsample.{m.group(2)}"] = (
                v if v.is_meta else timm_merge_to_mmcls(v)
            )
            continue
        k = k.replace("patch_embed.proj.", "patch_embed.projection.")
        k = re.sub(r"^layers\.", "stages.", k)
        k = k.replace(".attn.", ".attn.w_msa.")
        k = k.replace(".mlp.fc1.", ".ffn.layers.0.0.").replace(".mlp.fc2.", ".ffn.layers.1.")
        k = re.sub(r"^norm\.", "norm3.", k)
        out[k] = v
        if k.endswith("relative_position_bias_table"):  # mmcls keeps the index as a buffer
            out[k.replace("bias_table", "index")] = torch.zeros(49, 49, dtype=torch.long)
    return out


def test_mmcls_patch_merging_reorder_matches_unfold() -> None:
    """mmcls merges 2×2 neighbours with nn.Unfold; converted weights must give timm the same map."""
    torch.manual_seed(0)
    c, h = 4, 6
    x = torch.randn(2, h, h, c)  # NHWC tokens
    norm, red = nn.LayerNorm(4 * c), nn.Linear(4 * c, 2 * c, bias=False)
    nn.init.normal_(norm.weight)
    nn.init.normal_(norm.bias)
    unfolded = nn.Unfold(kernel_size=2, stride=2)(x.permute(0, 3, 1, 2))  # [B, 4C, L]
    mmcls_out = red(norm(unfolded.transpose(1, 2))).reshape(2, h // 2, h // 2, 2 * c)

    timm_merge = timm.models.swin_transformer.PatchMerging(dim=c, out_dim=2 * c)
    sd = {
        "stages.0.downsample.norm.weight": norm.weight.data,
        "stages.0.downsample.norm.bias": norm.bias.data,
        "stages.0.downsample.reduction.weight": red.weight.data,
    }
    conv, _ = mmcls_swin_to_timm(sd)
    timm_merge.load_state_dict({k.replace("layers.1.downsample.", ""): v for k, v in conv.items()})
    torch.testing.assert_close(timm_merge(x), mmcls_out)


def test_mmcls_swin_checkpoint_loads_into_timm_swin(
    tmp_path: Path, make_backbone: Callable[..., Backbone]
) -> None:
    """Swin-T with mmcls names (full CMID checkpoint layout) → same outputs as the source model."""
    torch.manual_seed(0)
    src = make_backbone("swin_tiny", 3, 64).eval()
    mm = timm_swin_to_mmcls(src.model.state_dict())
    ckpt = {f"online_encoder.model.{k}": v for k, v in mm.items()}
    ckpt["online_encoder.model.mask_token"] = torch.full((1, 1, 96), 0.5)
    ckpt["online_encoder.projector.layers.0.weight"] = torch.zeros(2, 2)  # a head: dropped
    torch.save({"model": ckpt, "epoch": 3}, tmp_path / "cmid_swin.pth")

    dst = MaskedBackbone(make_backbone("swin_tiny", 3, 64)).eval()
    report = load_weights(dst, tmp_path / "cmid_swin.pth")
    assert report.ok and report.architecture == "swin_tiny_patch4_window7_224"
    assert sum("relative_position_index" in k for k in report.ignored) == 12
    assert "mask_token" in report.adapted
    assert torch.equal(dst.mask_token.flatten(), torch.full((96,), 0.5))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst.backbone(x), src(x))


def test_released_swin_b_key_names_map_onto_timm() -> None:
    """Key names and shapes only (meta tensors): mmcls Swin-B as released → timm swin_base."""
    with torch.device("meta"):
        ref = timm.create_model("swin_base_patch4_window7_224", num_classes=0)
    target = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    mm = timm_swin_to_mmcls(ref.state_dict())
    # spot-check names and shapes of the released checkpoint (spec §7.1)
    released = {
        "patch_embed.projection.weight": (128, 3, 4, 4),
        "stages.0.blocks.0.attn.w_msa.qkv.weight": (384, 128),
        "stages.2.blocks.17.attn.w_msa.relative_position_bias_table": (169, 16),
        "stages.0.blocks.0.ffn.layers.0.0.weight": (512, 128),
        "stages.3.blocks.1.ffn.layers.1.weight": (1024, 4096),
        "stages.2.downsample.reduction.weight": (1024, 2048),
        "stages.2.downsample.norm.weight": (2048,),
        "norm3.weight": (1024,),
    }
    for k, shape in released.items():
        assert tuple(mm[k].shape) == shape, k
    assert not any(k.startswith("stages.3.downsample") for k in mm)
    assert guess_architecture(mm) == ("swin", "swin_base_patch4_window7_224", "mmcls")
    conv, ignored = mmcls_swin_to_timm(mm)
    assert {k: tuple(v.shape) for k, v in conv.items()} == target
    assert len(ignored) == 24  # one relative_position_index per block


def _cmid_resnet_checkpoint(path: Path, arch: str = "resnet50", bands: int = 3) -> nn.Module:
    src = create_backbone(arch, bands)
    with torch.no_grad():
        for p in src.parameters():
            p.normal_()
    ckpt = {f"online_encoder.model.{k}": v for k, v in src.model.state_dict().items()}
    ckpt["online_encoder.model.mask_token"] = torch.ones(1, 64, 1, 1)
    ckpt["branch_encoder.model.conv1.weight"] = torch.zeros(1)  # teacher: dropped
    torch.save({"model": ckpt, "optimizer": {}, "epoch": 199}, path)
    return src


def test_cmid_resnet50_full_checkpoint(
    tmp_path: Path, make_backbone: Callable[..., Backbone]
) -> None:
    src = _cmid_resnet_checkpoint(tmp_path / "cmid_r50.pth")
    dst = make_backbone("resnet50", 3)
    report = load_weights(dst, tmp_path / "cmid_r50.pth")
    assert report.ok and report.architecture == "resnet50"
    assert len(report.loaded) == len(src.model.state_dict())
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_extracted_backbone_and_band_adaptation(tmp_path: Path) -> None:
    src = create_backbone("resnet18", 3)
    torch.save(src.model.state_dict(), tmp_path / "r18.pth")  # extract.py layout: bare keys
    dst = create_backbone("resnet18", 13, pretrained_path=str(tmp_path / "r18.pth"))
    assert dst.model.conv1.weight.shape[1] == 13
    report = load_weights(dst, tmp_path / "r18.pth")
    assert report.adapted == ["conv1.weight"] and report.ok
    with pytest.raises(ModelError, match=r"1 mismatched: \('conv1.weight'"):
        load_weights(dst, tmp_path / "r18.pth", adapt_in_chans=False)


def test_other_architecture_is_a_clear_model_error(
    tmp_path: Path, make_backbone: Callable[..., Backbone]
) -> None:
    _cmid_resnet_checkpoint(tmp_path / "cmid_r50.pth")
    with pytest.raises(ModelError, match="holds resnet50 weights but the backbone is resnet18"):
        load_weights(create_backbone("resnet18", 3), tmp_path / "cmid_r50.pth")
    with pytest.raises(ModelError, match="holds resnet50 weights but the backbone is swin_tiny"):
        load_weights(make_backbone("swin_tiny", 3, 64), tmp_path / "cmid_r50.pth")
    torch.save({"model": {"foo.weight": torch.zeros(1)}}, tmp_path / "junk.pth")
    with pytest.raises(ModelError, match="no recognisable"):
        load_weights(create_backbone("resnet18", 3), tmp_path / "junk.pth")


def test_pickled_code_is_refused(tmp_path: Path) -> None:
    torch.save({"model": nn.Linear(1, 1)}, tmp_path / "evil.pth")  # a pickled module, not tensors
    with pytest.raises(ModelError, match="cannot be read"):
        load_weights(create_backbone("resnet18", 3), tmp_path / "evil.pth")


def test_partial_checkpoint_reports_missing_keys(tmp_path: Path, caplog) -> None:
    sd = create_backbone("resnet18", 3).model.state_dict()
    sd.pop("layer4.1.bn2.weight")
    sd["layer9.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"1 missing: layer4\.1\.bn2\.weight"):
        load_weights(create_backbone("resnet18", 3), tmp_path / "partial.pth")
    with caplog.at_level("INFO", logger="geocmid.models"):
        report = load_weights(
            create_backbone("resnet18", 3), tmp_path / "partial.pth", strict=False
        )
    assert report.missing == ["layer4.1.bn2.weight"] and report.unexpected == ["layer9.weight"]
    assert "1 unexpected: layer9.weight" in caplog.text


def test_vit_pos_embed_resampled_for_another_chip_size(
    tmp_path: Path, make_backbone: Callable[..., Backbone]
) -> None:
    torch.save(make_backbone("vit_small", 3, 224).model.state_dict(), tmp_path / "v.pth")
    report = load_weights(make_backbone("vit_small", 3, 64), tmp_path / "v.pth")
    assert report.adapted == ["pos_embed"] and report.ok


def test_safetensors_export_roundtrip(tmp_path: Path) -> None:
    src = create_backbone("resnet18", 4, img_size=64).eval()
    card = {
        "bands": ["red", "green", "blue", "nir"],
        "mean": [0.1] * 4,
        "std": [0.2] * 4,
        "gsd": 0.6,
        "pretraining": {"method": "CMID", "data": "naip-sample", "epochs": 2},
    }
    w, c = export_backbone(MaskedBackbone(src), tmp_path / "out" / "naip_r18", card)
    assert w.name == "naip_r18.safetensors" and c.name == "naip_r18.json"
    assert not list((tmp_path / "out").glob("*.part"))
    dst, got = load_backbone(tmp_path / "out" / "naip_r18.safetensors")
    assert isinstance(got, ModelCard) and got.format == "geocmid-card/2"
    assert got.architecture == "resnet18" and got.in_chans == 4 and got.chip_size == 64
    assert got.task == "backbone" and got.family == "resnet" and got.stride == 32
    assert got.mean == (0.1,) * 4 and got.std == (0.2,) * 4 and got.out_channels == 512
    assert got.gsd == 0.6 and got.pretraining["epochs"] == 2 and got.geocmid_version
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst.eval()(x), src(x))
    c.unlink()  # the card is also in the safetensors header
    assert load_backbone(w)[1] == got
    # an export also loads through load_weights (e.g. as pretrained_path)
    assert load_weights(create_backbone("resnet18", 4), w).ok
    with pytest.raises(ConfigError, match="'bands': has 3 entries but in_chans is 4"):
        export_backbone(src, tmp_path / "bad", {"bands": ["r", "g", "b"]})
    with pytest.raises(ModelError, match="'in_chans': says 3, the exported backbone has 4"):
        export_backbone(src, tmp_path / "bad", {"in_chans": 3})
    assert not list(tmp_path.glob("bad*"))


def test_old_layout_exports_still_load(tmp_path: Path, caplog) -> None:
    """Exports before geocmid-card/2: keys under 'model.', card with normalisation{mean, std}."""
    src = create_backbone("resnet18", 3, img_size=32)
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()},  # Backbone keys: 'model.*'
        str(tmp_path / "old.safetensors"),
    )
    old_card = {
        "format": "geocmid-backbone/1", "architecture": "resnet18", "family": "resnet",
        "in_chans": 3, "chip_size": 32, "out_channels": 512, "stride": 32,
        "geocmid_version": "0.1.0", "backbone": "resnet18", "bands": ["r", "g", "b"],
        "weights": "student backbone (timm layout, keys prefixed 'model.')",
        "normalisation": {"mean": [1.0, 2.0, 3.0], "std": [4.0, 5.0, 6.0]},
        "pretraining": {"method": "CMID", "epochs": 3},
    }  # fmt: skip
    (tmp_path / "old.json").write_text(json.dumps(old_card))
    with caplog.at_level("DEBUG", logger="geocmid.models"):
        dst, card = load_backbone(tmp_path / "old.safetensors")
    assert "removing the 'model.' prefix" in caplog.text
    assert card.mean == (1.0, 2.0, 3.0) and card.std == (4.0, 5.0, 6.0)
    assert card.task == "backbone" and "weights" not in card.extra
    sd = dst.model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in src.model.state_dict().items())
    # re-exporting writes the new layout: plain timm keys, card/2
    w, c = export_backbone(dst, tmp_path / "new", card)
    assert set(load_file(str(w))) == set(src.model.state_dict())
    assert json.loads(c.read_text())["format"] == "geocmid-card/2"


def test_create_backbone_loads_strictly(tmp_path: Path) -> None:
    """pretrained_path (backbones → loading, no import of weights) refuses a partial file."""
    sd = create_backbone("resnet18", 3).model.state_dict()
    sd.pop("fc.weight", None)
    sd.pop("layer2.0.conv1.weight")
    torch.save(sd, tmp_path / "partial.pth")
    with pytest.raises(ModelError, match=r"1 missing: layer2\.0\.conv1\.weight"):
        create_backbone("resnet18", 3, pretrained_path=str(tmp_path / "partial.pth"))
