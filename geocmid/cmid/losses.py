"""CMID losses (spec §4): focal-L1 + focal frequency MIM, MoCo InfoNCE with a queue, dense DINO.

MIM terms are computed in fp32 with autocast disabled (spec §12.7): the FFT and the sums over
masked pixels are not safe in fp16.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightly.loss import DINOLoss
from lightly.models.modules.memory_bank import MemoryBankModule
from torch import Tensor, nn


def _no_autocast(t: Tensor) -> torch.autocast:
    return torch.autocast(device_type=t.device.type, enabled=False)


def focal_l1_masked(
    pred: Tensor, target: Tensor, mask: Tensor, alpha: float = 0.2, gamma: float = 1.0
) -> Tensor:
    """Focal-L1 reconstruction loss averaged over masked pixels and channels (spec §4.1).

    ``d = |pred − target|``, ``ℓ = d·(2σ(α·d) − 1)^γ``,
    ``L = Σ_{b,c,i,j} ℓ·M / (Σ_{b,i,j} M + 1e-5) / C``.

    Args:
        pred: ``[B, C, H, W]`` decoder output.
        target: ``[B, C, H, W]`` normalised crop.
        mask: ``[B, H, W]`` pixel weights, 1 = masked (and valid), 0 = ignored.
        alpha: focal scale α (0.2).
        gamma: focal exponent γ (1).

    Returns:
        scalar fp32 loss.
    """
    with _no_autocast(pred):
        pred, target, m = pred.float(), target.float(), mask.float().unsqueeze(1)
        d = (pred - target).abs()
        loss = d * (2 * torch.sigmoid(alpha * d) - 1) ** gamma
        return (loss * m).sum() / (m.sum() + 1e-5) / pred.shape[1]


def focal_frequency_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Focal Frequency Loss on the "mixed" image, batch-averaged spectra (spec §4.1).

    ``M_f = M + 0.001(1 − M)``, ``x̃ = M_f·x̂ + (1 − M_f)·(½ sg(x̂) + ½ x)``;
    ``F̄ = mean_b FFT2_ortho(·)``; ``D = |F̄(x̃) − F̄(x)|²``; ``w = log(1 + √D) / max``, NaN → 0,
    clipped to [0, 1], detached; ``L = mean(w·D)`` over channels and frequencies.

    Args:
        pred: ``[B, C, H, W]`` decoder output ``x̂``.
        target: ``[B, C, H, W]`` normalised crop ``x``.
        mask: ``[B, H, W]`` pixel mask ``M`` (1 = masked).

    Returns:
        scalar fp32 loss.
    """
    with _no_autocast(pred):
        pred, target = pred.float(), target.float()
        m = mask.float().unsqueeze(1)
        m_f = m + 0.001 * (1 - m)
        mixed = m_f * pred + (1 - m_f) * (0.5 * pred.detach() + 0.5 * target)
        f_pred = torch.fft.fft2(mixed, norm="ortho").mean(0)
        f_true = torch.fft.fft2(target, norm="ortho").mean(0)
        diff = f_pred - f_true
        dist = diff.real**2 + diff.imag**2  # [C, H, W]
        w = torch.log1p(dist.sqrt())
        w = torch.nan_to_num(w / w.max(), nan=0.0).clamp(0.0, 1.0).detach()
        return (w * dist).mean()


def mim_loss(
    pred: Tensor,
    target: Tensor,
    mask: Tensor,
    valid: Tensor | None = None,
    alpha: float = 0.2,
    gamma: float = 1.0,
    fft_weight: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """Per-view MIM terms ``(L_rec, L_fft)``; the view loss is ``L_rec + fft_weight·L_fft``.

    With ``valid`` (``[B, H, W]`` bool), invalid (nodata) pixels drop out of the focal-L1 sum and
    are zeroed in both images before the FFT, so nodata neither trains nor shows in the spectrum.
    """
    m = mask.bool()
    if valid is not None:
        m = m & valid
        keep = valid.unsqueeze(1)
        pred = pred * keep
        target = target * keep
    rec = focal_l1_masked(pred, target, m, alpha, gamma)
    fft = focal_frequency_loss(pred, target, m) * fft_weight
    return rec, fft


def infonce(query: Tensor, key: Tensor, negatives: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo InfoNCE: ``CE([q·k, q·Qᵀ] / T, label 0)`` averaged over the batch.

    Args:
        query: ``[B, D]`` L2-normalised student embeddings.
        key: ``[B, D]`` L2-normalised teacher embeddings (no gradient needed).
        negatives: ``[K, D]`` queue of L2-normalised keys.
        temperature: T (0.2).
    """
    with _no_autocast(query):
        q, k, neg = query.float(), key.float().detach(), negatives.float().detach()
        pos = (q * k).sum(dim=1, keepdim=True)
        logits = torch.cat([pos, q @ neg.T], dim=1) / temperature
        labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
        return F.cross_entropy(logits, labels)


class MoCoQueueLoss(nn.Module):
    """Symmetrised MoCo-v2 loss with a FIFO key queue (spec §4.2, fix §9.3).

    ``L_g = ½[ℓ(q₁, k₂) + ℓ(q₂, k₁)]`` against one queue snapshot taken before the update; then
    ``[k₂; k₁]`` is enqueued. The queue is lightly's ``MemoryBankModule`` with
    ``gather_distributed=True``: keys are all-gathered exactly once per step, and the queue starts
    as random vectors normalised along the feature axis.

    lightly registers the queue (``bank``) and its write position (``bank_ptr``) as
    non-persistent buffers; here they are made persistent, so checkpoints carry them and a
    resumed run continues with the queue it had. A checkpoint without them (geocmid ≤ 0.x)
    loads with a fresh random queue.

    Args:
        size: queue length K (65,536).
        dim: embedding size D (256).
        temperature: T (0.2).
    """

    def __init__(self, size: int = 65536, dim: int = 256, temperature: float = 0.2) -> None:
        super().__init__()
        self.temperature = temperature
        self.queue = MemoryBankModule((size, dim), gather_distributed=True, feature_dim_first=False)
        # lightly ≥ 1.5 keeps these out of the state dict; the resume must not lose them
        self.queue._non_persistent_buffers_set.discard("bank")
        self.queue._non_persistent_buffers_set.discard("bank_ptr")

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str],
    ) -> None:  # fmt: skip
        for name in ("bank", "bank_ptr"):  # checkpoints written before the queue was saved
            key = f"{prefix}queue.{name}"
            if key not in state_dict:
                state_dict[key] = getattr(self.queue, name).detach().clone()
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, q1: Tensor, q2: Tensor, k1: Tensor, k2: Tensor) -> Tensor:
        """Args: ``q*`` student ``[B, D]`` and ``k*`` teacher ``[B, D]``, all L2-normalised."""
        _, negatives = self.queue(k1, update=False)
        loss = 0.5 * (
            infonce(q1, k2, negatives, self.temperature)
            + infonce(q2, k1, negatives, self.temperature)
        )
        if self.training:
            self.queue(torch.cat([k2, k1]).detach().float(), update=True)
        return loss


def position_match(grid_s: Tensor, grid_t: Tensor, k: int = 20) -> tuple[Tensor, Tensor]:
    """Match student cells to their nearest teacher cells; keep the ``k`` closest (spec §4.3).

    Args:
        grid_s: ``[B, N, N, 2]`` student-view cell centres in the shared source pixel frame.
        grid_t: ``[B, N, N, 2]`` teacher-view cell centres in the same frame.
        k: number of matches kept per image (20); capped at ``N²`` for small chips.

    Returns:
        ``(idx_s, idx_t)``, each ``[B, k]`` long indices into the flattened ``N·N`` cells:
        student cell ``idx_s[b, i]`` is matched with teacher cell ``idx_t[b, i]``.
    """
    b = grid_s.shape[0]
    gs = grid_s.reshape(b, -1, 2).float()
    gt = grid_t.reshape(b, -1, 2).float()
    dist = torch.cdist(gs, gt)  # [B, P, P]
    d_min, nearest = dist.min(dim=2)  # per student cell
    k = min(k, gs.shape[1])
    idx_s = d_min.topk(k, dim=1, largest=False).indices
    idx_t = nearest.gather(1, idx_s)
    return idx_s, idx_t


def gather_tokens(feats: Tensor, idx: Tensor) -> Tensor:
    """``[B, C, h, w]`` feature map + ``[B, k]`` cell indices → ``[B·k, C]`` tokens."""
    c = feats.shape[1]
    tokens = feats.flatten(2).transpose(1, 2)  # [B, h·w, C]
    picked = tokens.gather(1, idx.unsqueeze(-1).expand(-1, -1, c))
    return picked.reshape(-1, c)


def dino_cross_entropy(
    student: Tensor, teacher: Tensor, center: Tensor, student_temp: float, teacher_temp: float
) -> Tensor:
    """``mean_rows Σ_K −softmax((z_t − c)/τ_t) · log softmax(z_s/τ_s)`` (spec §4.3.4), fp32.

    Args:
        student: ``[T, K]`` student logits (row i ↔ row i of ``teacher``).
        teacher: ``[T, K]`` teacher logits (no gradient).
        center: ``[1, 1, K]`` or ``[K]`` centre ``c``.
    """
    p_t = F.softmax((teacher.float().detach() - center.reshape(1, -1)) / teacher_temp, dim=-1)
    log_p_s = F.log_softmax(student.float() / student_temp, dim=-1)
    return -(p_t * log_p_s).sum(dim=-1).mean()


class DenseDistillLoss(nn.Module):
    """Symmetrised DINO cross-entropy on position-matched tokens (spec §4.3).

    For the pairs A = (student masked view 1, teacher view 2) and B = (student masked view 2,
    teacher view 1), each with matched tokens flattened into the batch (``[B·k, K]`` logits):
    ``ℓ = mean_rows Σ_K −softmax((z_t − c)/τ_t) · log softmax(z_s/τ_s)`` and
    ``L_loc = ½(ℓ_A + ℓ_B)``.

    Centre: as the authors' code, **once per pair**: ``ℓ_A`` is computed with ``c``, then
    ``c ← m·c + (1 − m)·mean(z_t,A)``; ``ℓ_B`` uses that centre and updates it again with
    ``z_t,B``. The update is lightly's ``DINOLoss.update_center`` (all-reduced across ranks).
    The centre is a persistent buffer (checkpoints carry it).

    Args:
        num_prototypes: K (2048).
        student_temp: τ_s (0.1).
        center_momentum: m (0.9).
    """

    def __init__(
        self, num_prototypes: int = 2048, student_temp: float = 0.1, center_momentum: float = 0.9
    ) -> None:
        super().__init__()
        self.student_temp = student_temp
        self.dino = DINOLoss(
            output_dim=num_prototypes,
            warmup_teacher_temp=0.04,
            teacher_temp=0.04,
            warmup_teacher_temp_epochs=1,
            student_temp=student_temp,
            center_momentum=center_momentum,
        )

    @property
    def center(self) -> Tensor:
        """``[1, 1, K]`` running centre of the teacher logits."""
        return self.dino.center

    def pair(self, student: Tensor, teacher: Tensor, teacher_temp: float) -> Tensor:
        """``ℓ`` of one (student, teacher) pair with the current centre, then the centre update."""
        with _no_autocast(student):
            loss = dino_cross_entropy(
                student, teacher, self.center, self.student_temp, teacher_temp
            )
            if self.training:
                self.dino.update_center(teacher.float().detach()[None])
        return loss

    def forward(
        self,
        student_a: Tensor,
        teacher_a: Tensor,
        student_b: Tensor,
        teacher_b: Tensor,
        teacher_temp: float,
    ) -> Tensor:
        """Each argument is ``[T, K]`` logits; row i of student_x ↔ row i of teacher_x."""
        loss_a = self.pair(student_a, teacher_a, teacher_temp)
        loss_b = self.pair(student_b, teacher_b, teacher_temp)
        return 0.5 * (loss_a + loss_b)
