"""CMIDModel end to end: loss terms, gradients, teacher EMA, geometry errors, overfitting."""

from __future__ import annotations

import pytest
import torch

from geocmid.cmid import CMIDModel
from geocmid.cmid.task import paper_settings
from geocmid.errors import ConfigError

SMALL = {
    **paper_settings(),
    "queue_size": 64,
    "proj_hidden": 64,
    "proj_dim": 32,
    "head_hidden": 64,
    "head_bottleneck": 32,
    "num_prototypes": 64,
}


def _batch(model: CMIDModel, bands: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    image = torch.randn(4, bands, size, size, generator=gen)
    valid = torch.ones(4, size, size, dtype=torch.bool)
    valid[0, :, :8] = False  # some nodata
    return model.view_transform()({"image": image, "valid": valid}, gen)


def test_loss_terms_gradients_and_teacher() -> None:
    torch.manual_seed(0)
    model = CMIDModel("resnet18", 4, 64, **SMALL)
    out = model.forward_losses(_batch(model, 4, 64), teacher_temp=0.04)
    assert set(out) == {"loss_rec", "loss_fft", "loss_mim", "loss_global", "loss_local", "loss"}
    total = out["loss_mim"] + out["loss_global"] + out["loss_local"]
    assert out["loss"].item() == pytest.approx(total.item())
    assert out["loss_mim"].item() == pytest.approx((out["loss_rec"] + out["loss_fft"]).item())
    out["loss"].backward()
    assert model.student.mask_token.grad is not None
    assert model.decoder.proj.weight.grad is not None
    assert model.local_head.last_layer.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in model.teacher.parameters())
    # teacher starts equal to the student, then follows it by EMA
    s = model.backbone.model.conv1.weight
    t = model.teacher.model.conv1.weight
    assert torch.equal(s, t)
    with torch.no_grad():
        s.add_(1.0)
    model.update_teacher(0.75)
    torch.testing.assert_close(t, s - 0.75)


@pytest.mark.parametrize(
    ("name", "size", "setting", "problem"),
    [
        ("resnet18", 80, "chip_size", "not a multiple of the resnet output stride .32 px"),
        ("swin_tiny", 100, "chip_size", "not a multiple of the swin output stride .32 px"),
        # 48 px ViT: 3×3 blocks of 16 px mask 67 %, one 48 px block 100 %: no block fits 60 %
        ("vit_small", 48, "mask_block", "no mask block masks 60%"),
    ],
)
def test_invalid_chip_size_names_the_setting(
    name: str, size: int, setting: str, problem: str
) -> None:
    with pytest.raises(ConfigError, match=f"setting '{setting}'.*{problem}"):
        CMIDModel(name, 3, size, **SMALL)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "bands", "steps"),
    [("resnet18", 3, 6), ("resnet18", 13, 6), ("swin_tiny", 3, 6), ("vit_small", 13, 6)],
)
def test_loss_falls_when_overfitting_a_fixed_batch(name: str, bands: int, steps: int) -> None:
    torch.manual_seed(0)
    model = CMIDModel(name, bands, 64, **SMALL)
    model.global_loss.eval()  # frozen queue: a fixed batch would otherwise fill it with positives
    batch = _batch(model, bands, 64)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    history = []
    for _ in range(steps):
        out = model.forward_losses(batch, teacher_temp=0.04)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        model.update_teacher(0.99)  # after the optimizer step (fix §9.5)
        history.append({k: v.item() for k, v in out.items()})
    assert all(torch.isfinite(torch.tensor(list(h.values()))).all() for h in history)
    assert history[-1]["loss_mim"] < 0.8 * history[0]["loss_mim"]
    assert min(h["loss"] for h in history[-2:]) < 0.9 * history[0]["loss"]
