"""Every CMID loss term against hand-computed values (spec §4)."""

from __future__ import annotations

import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from geocmid.cmid.losses import (
    DenseDistillLoss,
    MoCoQueueLoss,
    focal_frequency_loss,
    focal_l1_masked,
    gather_tokens,
    infonce,
    mim_loss,
    position_match,
)


def test_focal_l1_masked_by_hand() -> None:
    # B=1, C=2, H=1, W=2; only pixel 0 is masked; |d| = 1 (band 0) and 2 (band 1) there
    pred = torch.tensor([[[[1.0, 5.0]], [[-2.0, 5.0]]]])
    target = torch.zeros(1, 2, 1, 2)
    mask = torch.tensor([[[1.0, 0.0]]])
    # ℓ = d·(2σ(0.2 d) − 1) = d·tanh(0.1 d); Σ over masked / (1 + 1e-5) / C
    expected = (1 * math.tanh(0.1) + 2 * math.tanh(0.2)) / (1 + 1e-5) / 2
    assert focal_l1_masked(pred, target, mask).item() == pytest.approx(expected, rel=1e-6)


def test_focal_frequency_loss_by_hand() -> None:
    # 1×2 images: the orthonormal 2-D DFT of [a, b] is [(a + b)/√2, (a − b)/√2]
    pred = torch.tensor([[[[2.0, 0.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 1.0]]]])
    mask = torch.ones(1, 1, 2)  # all masked: the mixed image is the prediction
    # F(pred) = [√2, √2], F(target) = [1/√2, −1/√2] → D = [0.5, 4.5]
    w0 = math.log(1 + math.sqrt(0.5)) / math.log(1 + math.sqrt(4.5))
    expected = (w0 * 0.5 + 1.0 * 4.5) / 2
    loss = focal_frequency_loss(pred, target, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_focal_frequency_loss_mixing_and_batch_average() -> None:
    """Unmasked pixels enter as 0.001·x̂ + 0.999·(½ sg(x̂) + ½ x); spectra are batch means."""
    pred = torch.tensor([[[[1.0, 3.0]]], [[[-1.0, 1.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 2.0]]], [[[0.0, 0.0]]]])
    mask = torch.tensor([[[1.0, 0.0]], [[1.0, 0.0]]])
    mixed1 = [1.0, 0.001 * 3 + 0.999 * (1.5 + 1.0)]  # image 0
    mixed2 = [-1.0, 0.001 * 1 + 0.999 * (0.5 + 0.0)]  # image 1
    mean_p = [(a + b) / 2 for a, b in zip(mixed1, mixed2, strict=True)]
    mean_t = [0.0, 1.0]

    def dft(v: list[float]) -> list[float]:
        return [(v[0] + v[1]) / math.sqrt(2), (v[0] - v[1]) / math.sqrt(2)]

    d = [(p - t) ** 2 for p, t in zip(dft(mean_p), dft(mean_t), strict=True)]
    w = [math.log(1 + math.sqrt(x)) for x in d]
    expected = sum(wi / max(w) * di for wi, di in zip(w, d, strict=True)) / 2
    loss = focal_frequency_loss(pred, target, mask)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()  # the weight is detached and unmasked pixels pass only 0.001 of the gradient
    assert pred.grad is not None and torch.isfinite(pred.grad).all()


def test_mim_losses_run_in_fp32_under_autocast_and_skip_nodata() -> None:
    pred = torch.randn(2, 3, 8, 8)
    target = torch.randn(2, 3, 8, 8)
    mask = torch.ones(2, 8, 8, dtype=torch.bool)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        rec, fft = mim_loss(pred.bfloat16(), target, mask)
    assert rec.dtype == fft.dtype == torch.float32
    # invalid pixels change nothing, whatever the prediction there
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    valid[:, :, :2] = False
    wild = pred.clone()
    wild[:, :, :, :2] = 1e6
    a = mim_loss(pred, target, mask, valid)
    b = mim_loss(wild, target, mask, valid)
    assert a[0].item() == pytest.approx(b[0].item()) and a[1].item() == pytest.approx(b[1].item())


def test_infonce_on_2d_vectors() -> None:
    q = torch.tensor([[1.0, 0.0]])
    k = torch.tensor([[1.0, 0.0]])
    queue = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    # logits [1, 0, −1] / 0.2 = [5, 0, −5]
    expected = -math.log(math.exp(5) / (math.exp(5) + 1 + math.exp(-5)))
    assert infonce(q, k, queue, 0.2).item() == pytest.approx(expected, rel=1e-5)


def test_moco_queue_loss_is_symmetric_snapshot_then_enqueue() -> None:
    loss_fn = MoCoQueueLoss(size=8, dim=2, temperature=0.2)
    queue0 = loss_fn.queue.bank.clone()
    assert torch.allclose(queue0.norm(dim=1), torch.ones(8))  # normalised along features (§9.3)
    q1, q2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    k1, k2 = torch.tensor([[0.6, 0.8]]), torch.tensor([[0.8, -0.6]])
    loss = loss_fn(q1, q2, k1, k2)
    expected = 0.5 * (infonce(q1, k2, queue0) + infonce(q2, k1, queue0))
    assert loss.item() == pytest.approx(expected.item())
    # k2 then k1 enqueued at the pointer
    assert torch.equal(loss_fn.queue.bank[:2], torch.cat([k2, k1]))
    assert torch.equal(loss_fn.queue.bank[2:], queue0[2:]) and int(loss_fn.queue.bank_ptr) == 2
    loss_fn.eval()  # no enqueue outside training
    loss_fn(q1, q2, k1, k2)
    assert int(loss_fn.queue.bank_ptr) == 2


def _queue_rank(rank: int, port: int, out: mp.SimpleQueue) -> None:
    torch.set_num_threads(1)  # a forked child must not reuse the parent's intra-op thread pool
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.manual_seed(0)  # same initial queue on both ranks
    loss_fn = MoCoQueueLoss(size=16, dim=2)
    k1 = torch.full((2, 2), 10.0 * rank + 1)
    k2 = torch.full((2, 2), 10.0 * rank + 2)
    loss_fn(k1, k2, k1, k2)
    dense = DenseDistillLoss(num_prototypes=2, center_momentum=0.5)
    t = torch.full((3, 2), float(rank))  # rank 0 logits 0, rank 1 logits 1
    dense(t, t, t, t, teacher_temp=0.04)
    out.put(
        (rank, loss_fn.queue.bank[:8].tolist(), int(loss_fn.queue.bank_ptr), dense.center.tolist())
    )
    dist.destroy_process_group()


def test_queue_gathers_once_across_two_ranks() -> None:
    """Two gloo ranks: each key enters the queue exactly once (fix §9.3); centre is all-reduced."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("fork")  # fork: no re-import of torch in the children (fast)
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_queue_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = dict((r[0], r[1:]) for r in (out.get() for _ in procs))
    for p in procs:
        p.join(20)
    assert all(p.exitcode == 0 for p in procs)
    expected = [[v, v] for v in (2.0, 2.0, 1.0, 1.0, 12.0, 12.0, 11.0, 11.0)]
    for rank in range(2):
        bank, ptr, center = results[rank]
        assert ptr == 8  # 2 ranks × (k2, k1) × 2 keys: each key once, no duplicates
        assert bank == expected
        # all-reduced mean 0.5, updated once per pair: 0.5·0 + 0.5·0.5, then 0.5·0.25 + 0.5·0.5
        assert torch.tensor(center).flatten().tolist() == pytest.approx([0.375, 0.375])


def test_position_match_keeps_k_nearest() -> None:
    # student cells at x = 0, 1, 2, 3 (y = 0); teacher cells at x = 0.1, 2.5, 9, 9
    gs = torch.tensor([[[[0.0, 0.0], [0.0, 1.0]], [[0.0, 2.0], [0.0, 3.0]]]])
    gt = torch.tensor([[[[0.0, 0.1], [0.0, 2.5]], [[0.0, 9.0], [0.0, 9.0]]]])
    idx_s, idx_t = position_match(gs, gt, k=3)
    # distances to nearest: 0.1 (→0), 0.9 (→0), 0.5 (→1), 0.5 (→1)
    assert idx_s[0].tolist()[0] == 0 and sorted(idx_s[0].tolist()) == [0, 2, 3]
    assert dict(zip(idx_s[0].tolist(), idx_t[0].tolist(), strict=True)) == {0: 0, 2: 1, 3: 1}
    assert position_match(gs, gt, k=20)[0].shape == (1, 4)  # capped at N² cells


def test_gather_tokens() -> None:
    f = torch.arange(2 * 3 * 4.0).view(2, 3, 2, 2)  # B=2, C=3, 2×2 cells
    tokens = gather_tokens(f, torch.tensor([[3], [0]]))
    assert tokens.tolist() == [[3.0, 7.0, 11.0], [12.0, 16.0, 20.0]]


def test_dense_distillation_by_hand() -> None:
    loss_fn = DenseDistillLoss(num_prototypes=2, student_temp=0.1, center_momentum=0.9)
    s_a, t_a = torch.tensor([[0.1, 0.0]]), torch.tensor([[0.02, 0.0]])
    s_b, t_b = torch.tensor([[0.0, 0.2]]), torch.tensor([[0.0, 0.04]])
    tau = 0.04

    def ce(s: list[float], t: list[float]) -> float:
        pt = [math.exp(v / tau) for v in t]
        pt = [v / sum(pt) for v in pt]
        zs = [v / 0.1 for v in s]
        lse = math.log(sum(math.exp(v) for v in zs))
        return -sum(p * (z - lse) for p, z in zip(pt, zs, strict=True))

    # the authors update the centre after each pair (spec §4.3.5): pair A uses c = 0, then
    # c ← 0.9·0 + 0.1·t_a = [0.002, 0]; pair B uses that centre, then c ← 0.9c + 0.1·t_b
    c_a = [0.002, 0.0]
    expected = 0.5 * (ce([0.1, 0.0], [0.02, 0.0]) + ce([0.0, 0.2], [0.0 - c_a[0], 0.04 - c_a[1]]))
    loss = loss_fn(s_a, t_a, s_b, t_b, teacher_temp=tau)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    c = [0.9 * c_a[0] + 0.1 * 0.0, 0.9 * c_a[1] + 0.1 * 0.04]
    torch.testing.assert_close(loss_fn.center.flatten(), torch.tensor(c))
    # the centre is subtracted from the teacher logits on the next call (and updated per pair)
    c2 = [0.9 * c[0] + 0.1 * 0.02, 0.9 * c[1]]
    expected2 = 0.5 * (
        ce([0.1, 0.0], [0.02 - c[0], -c[1]]) + ce([0.0, 0.2], [-c2[0], 0.04 - c2[1]])
    )
    assert loss_fn(s_a, t_a, s_b, t_b, teacher_temp=tau).item() == pytest.approx(
        expected2, rel=1e-6
    )
