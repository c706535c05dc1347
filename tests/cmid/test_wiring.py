"""Which tensor feeds which branch, and which outputs meet in each loss (issue #13).

Spies replace the networks' forward passes in :meth:`CMIDModel.forward_losses`: backbones return
feature maps that carry a tag of their input (which batch tensor, student or teacher), the cell
index and the image index; heads pass features through. Recorders on the loss functions then
show exactly what met where. The coordinate-image tests push an image whose pixel values are
their own source coordinates through the real two-view transform, so every output pixel says
which ground it shows.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

import geocmid.cmid.losses as losses_mod
import geocmid.cmid.model as model_mod
from geocmid.cmid import CMIDModel
from geocmid.cmid.losses import position_match
from geocmid.cmid.masking import mean_fill, upsample_mask
from geocmid.cmid.task import paper_settings
from geocmid.cmid.views import CMIDViewTransform, Photometric, crop_resize

SMALL = {
    **paper_settings(), "queue_size": 64, "proj_hidden": 16, "proj_dim": 8, "head_hidden": 16,
    "head_bottleneck": 8, "num_prototypes": 16,
}  # fmt: skip
INPUTS = ("img", "mim_img", "view", "view_mim_img")
STUDENT, TEACHER = 10.0, 20.0  # tag = role + 1 + index of the input in INPUTS


def _which(x: Tensor, batch: dict[str, Tensor]) -> str:
    hits = [k for k in INPUTS if batch[k].shape == x.shape and torch.equal(batch[k], x)]
    assert len(hits) == 1, f"input matches {hits or 'no batch tensor'}"
    return hits[0]


def _tag(role: float, name: str) -> float:
    return role + 1 + INPUTS.index(name)


class Wired:
    """A CMIDModel at 128 px (4×4 ResNet grid) whose networks are spies and losses recorders."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        torch.manual_seed(0)
        # projector and local head are identities here: embeddings and logits are 512-D
        settings = {**SMALL, "proj_dim": 512, "num_prototypes": 512}
        self.model = model = CMIDModel("resnet18", 3, 128, **settings)
        self.calls: dict[str, list[Any]] = {"student": [], "teacher": [], "mim": [], "nce": []}
        self.calls["dense"] = []
        c, n = model.student.backbone.out_channels, 128 // 32

        def feats(x: Tensor, tag: float) -> Tensor:
            b = x.shape[0]
            f = torch.zeros(b, c, n, n)
            f[:, 0] = tag
            f[:, 1] = 1.0
            f[:, 2] = torch.arange(n * n, dtype=torch.float32).view(n, n)
            f[:, 3] = torch.arange(b, dtype=torch.float32).view(b, 1, 1)
            return f

        def student(x: Tensor, mask: Tensor) -> Tensor:
            name = _which(x, self.batch)
            self.calls["student"].append((name, mask))
            return feats(x, _tag(STUDENT, name))

        def teacher(x: Tensor) -> Tensor:
            name = _which(x, self.batch)
            self.calls["teacher"].append(name)
            return feats(x, _tag(TEACHER, name))

        def decoder(f: Tensor) -> Tensor:  # every pixel carries the tag of its features
            return f[:, :1].repeat_interleave(32, 2).repeat_interleave(32, 3).expand(-1, 3, -1, -1)

        def identity(x: Tensor) -> Tensor:
            return x

        monkeypatch.setattr(model.student, "forward", student)
        monkeypatch.setattr(model.teacher, "forward", teacher)
        monkeypatch.setattr(model.decoder, "forward", decoder)
        for head in ("projector", "teacher_projector", "local_head", "teacher_local_head"):
            monkeypatch.setattr(getattr(model, head), "forward", identity)
        real_mim, real_nce = model_mod.mim_loss, losses_mod.infonce
        real_pair = model.local_loss.pair

        def mim(pred: Tensor, target: Tensor, mask: Tensor, valid: Tensor | None, *a: Any):
            self.calls["mim"].append((pred, target, mask, valid))
            return real_mim(pred, target, mask, valid, *a)

        def nce(q: Tensor, k: Tensor, negatives: Tensor, temperature: float) -> Tensor:
            self.calls["nce"].append((q, k))
            return real_nce(q, k, negatives, temperature)

        def pair(student: Tensor, teacher: Tensor, temp: float) -> Tensor:
            self.calls["dense"].append((student, teacher))
            return real_pair(student, teacher, temp)

        monkeypatch.setattr(model_mod, "mim_loss", mim)
        monkeypatch.setattr(losses_mod, "infonce", nce)
        monkeypatch.setattr(model.local_loss, "pair", pair)
        gen = torch.Generator().manual_seed(3)
        image = torch.randn(6, 3, 160, 160, generator=gen)
        valid = torch.ones(6, 160, 160, dtype=torch.bool)
        valid[1, :, :20] = False
        self.batch = CMIDViewTransform(128, 32, 4, model.mask_block, 0.6)(
            {"image": image, "valid": valid}, gen
        )
        self.out = model.forward_losses(self.batch, teacher_temp=0.05)


@pytest.fixture(scope="module")
def wired() -> Wired:
    with pytest.MonkeyPatch.context() as mp:
        yield Wired(mp)


def _embed_tag(z: Tensor) -> float:
    """Tag of L2-normalised pooled spy features (channel 0 / channel 1), one for all rows."""
    tags = z[:, 0] / z[:, 1]
    assert (tags - tags.mean()).abs().max() < 1e-4, "rows of different origin"
    return round(tags.mean().item(), 3)


def test_student_sees_only_masked_views_with_their_own_masks(wired: Wired) -> None:
    b = wired.batch
    seen = {name: mask for name, mask in wired.calls["student"]}
    assert sorted(seen) == ["mim_img", "view_mim_img"] and len(wired.calls["student"]) == 2
    assert torch.equal(seen["mim_img"], b["mask"])
    assert torch.equal(seen["view_mim_img"], b["view_mask"])


def test_teacher_sees_only_unmasked_views(wired: Wired) -> None:
    assert sorted(wired.calls["teacher"]) == ["img", "view"]


def test_mim_reconstructs_each_view_from_its_own_masked_copy(wired: Wired) -> None:
    b, calls = wired.batch, wired.calls["mim"]
    assert len(calls) == 2
    by_target = {_which(target, b): (pred, mask, valid) for pred, target, mask, valid in calls}
    assert sorted(by_target) == ["img", "view"]  # targets are the unmasked views
    for target, own in (("img", ""), ("view", "view_")):
        pred, mask, valid = by_target[target]
        assert pred.unique().tolist() == [_tag(STUDENT, f"{own}mim_img")]
        assert torch.equal(mask, upsample_mask(b[f"{own}mask"], 4))
        assert torch.equal(valid, b[f"{own}valid"])


def test_global_loss_pairs_each_student_view_with_the_other_teacher_view(wired: Wired) -> None:
    calls = wired.calls["nce"]
    assert len(calls) == 2
    pairs = sorted((_embed_tag(q), _embed_tag(k)) for q, k in calls)
    assert pairs == sorted(
        [(_tag(STUDENT, "mim_img"), _tag(TEACHER, "view")),
         (_tag(STUDENT, "view_mim_img"), _tag(TEACHER, "img"))]
    )  # fmt: skip
    # the queue receives teacher keys only: [k2; k1] of this step
    queue = wired.model.global_loss.queue
    n = wired.batch["img"].shape[0]
    assert int(queue.bank_ptr) == 2 * n
    assert _embed_tag(queue.bank[:n]) == _tag(TEACHER, "view")
    assert _embed_tag(queue.bank[n : 2 * n]) == _tag(TEACHER, "img")


def test_dense_loss_pairs_matched_cells_of_opposite_views(wired: Wired) -> None:
    b, calls = wired.batch, wired.calls["dense"]
    assert len(calls) == 2
    k = wired.model.num_matches
    seen = set()
    for student, teacher in calls:
        s_tag, t_tag = student[:, 0].unique().item(), teacher[:, 0].unique().item()
        seen.add((s_tag, t_tag))
        s_grid = "grid" if s_tag == _tag(STUDENT, "mim_img") else "view_grid"
        t_grid = "view_grid" if s_grid == "grid" else "grid"
        # rows are (image, matched cell); the same image on both sides
        assert torch.equal(student[:, 3], teacher[:, 3])
        img = student[:, 3].long()
        gs = b[s_grid].reshape(len(b["img"]), -1, 2)
        gt = b[t_grid].reshape(len(b["img"]), -1, 2)
        ps, pt = gs[img, student[:, 2].long()], gt[img, teacher[:, 2].long()]
        # each teacher cell is the student cell's nearest in the teacher view ...
        nearest = torch.cdist(ps[:, None], gt[img]).squeeze(1).min(dim=1).values
        torch.testing.assert_close((ps - pt).norm(dim=1), nearest)
        # ... and the student cells are the k closest to the teacher view
        d_all = torch.cdist(gs, gt).min(dim=2).values  # [B, N²]
        kth = d_all.sort(dim=1).values[:, k - 1]
        assert ((ps - pt).norm(dim=1) <= kth[img] + 1e-4).all()
        assert len(student) == len(b["img"]) * k
    assert seen == {
        (_tag(STUDENT, "mim_img"), _tag(TEACHER, "view")),
        (_tag(STUDENT, "view_mim_img"), _tag(TEACHER, "img")),
    }
    # the test has power: the swapped grids would have picked other cells
    swapped = position_match(b["view_grid"], b["grid"], k)[0]
    assert not torch.equal(swapped, position_match(b["grid"], b["view_grid"], k)[0])


# ------------------------------------------------------------------------------------------------
# the real two-view transform
IDENTITY = Photometric(jitter_p=0.0, blur_p=0.0, noise_p=0.0, grey_p=0.0)


def _coordinate_image(b: int, size: int) -> Tensor:
    """``[b, 3, size, size]``: (row centre, column centre, 0) of every source pixel."""
    ramp = torch.arange(size, dtype=torch.float32) + 0.5
    img = torch.stack([ramp.view(-1, 1).expand(size, size), ramp.view(1, -1).expand(size, size)])
    return torch.cat([img, torch.zeros(1, size, size)]).expand(b, -1, -1, -1).clone()


def _cell_centres(view: Tensor, n: int) -> Tensor:
    """Mean source (y, x) shown by each of the ``n × n`` cells of a coordinate view → [B,n,n,2]."""
    pooled = torch.nn.functional.avg_pool2d(view[:, :2], view.shape[-1] // n)
    return pooled.permute(0, 2, 3, 1)


@pytest.mark.parametrize(("source", "out", "stride"), [(160, 128, 32), (96, 96, 16), (64, 128, 32)])
def test_grids_show_the_ground_each_cell_covers(source: int, out: int, stride: int) -> None:
    """Crops, flips and resizes: grid = where the cell's pixels came from (± ½ px)."""
    gen = torch.Generator().manual_seed(1)
    tf = CMIDViewTransform(out, stride, 4, 16, 0.6, photometric=IDENTITY)
    batch = tf({"image": _coordinate_image(32, source)}, gen)
    n = out // stride
    for prefix, name in (("", "img"), ("view_", "view")):
        assert batch[f"{prefix}flip"].any() and not batch[f"{prefix}flip"].all()
        assert (batch[f"{prefix}crop"][:, :2] > 0).any()  # offsets are exercised
        true = _cell_centres(batch[name], n)
        assert (batch[f"{prefix}grid"] - true).abs().max() <= 0.5 + 1e-4


def test_matched_cells_cover_the_same_ground() -> None:
    """Every matched pair whose student cell lies in the teacher crop is ≤ ½ teacher cell apart."""
    gen = torch.Generator().manual_seed(2)
    out, stride, k = 128, 32, 7
    tf = CMIDViewTransform(out, stride, 4, 16, 0.6, photometric=IDENTITY)
    batch = tf({"image": _coordinate_image(32, 160)}, gen)
    n = out // stride
    t1, t2 = _cell_centres(batch["img"], n), _cell_centres(batch["view"], n)
    inside = 0
    for a, ta, tb, crop_b in (("grid", t1, t2, "view_crop"), ("view_grid", t2, t1, "crop")):
        other = "view_grid" if a == "grid" else "grid"
        idx_s, idx_t = position_match(batch[a], batch[other], k)
        ps = ta.reshape(32, -1, 2).gather(1, idx_s[..., None].expand(-1, -1, 2))
        pt = tb.reshape(32, -1, 2).gather(1, idx_t[..., None].expand(-1, -1, 2))
        top, left, h, w = batch[crop_b].unbind(1)
        lo, hi = torch.stack([top, left], 1)[:, None], torch.stack([top + h, left + w], 1)[:, None]
        within = ((ps >= lo) & (ps <= hi)).all(-1)
        half_cell = torch.stack([h, w], 1)[:, None] / n / 2
        assert ((ps - pt).abs() <= half_cell + 0.5)[within].all()
        inside += int(within.sum())
    assert inside >= 0.8 * 2 * 32 * k  # most matches lie in the overlap


def test_only_view_two_is_augmented_and_both_views_are_masked() -> None:
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(8, 4, 64, 64, generator=gen)
    tf = CMIDViewTransform(64, 32, 4, 16, 0.6)  # default photometric: blur always on
    batch = tf({"image": image}, gen)
    # view 1 is the plain crop; view 2 is not
    torch.testing.assert_close(batch["img"], crop_resize(image, batch["crop"], batch["flip"], 64))
    plain2 = crop_resize(image, batch["view_crop"], batch["view_flip"], 64)
    assert (batch["view"] - plain2).abs().mean() > 0.05
    for prefix, name in (("", "img"), ("view_", "view")):
        pix = upsample_mask(batch[f"{prefix}mask"], 4)
        assert pix.float().mean().item() == pytest.approx(10 / 16)  # derived 16 px blocks
        torch.testing.assert_close(batch[f"{prefix}mim_img"], mean_fill(batch[name], pix))
        masked = batch[f"{prefix}mim_img"] != batch[name]
        assert masked.any(1).float().mean() > 0.55  # the student's copy really is masked
        assert not masked.any(1)[~pix].any()
