"""Tiny models for prediction tests and benchmarks (no weights files, deterministic)."""

from __future__ import annotations

import torch
from torch import nn


def card(in_chans: int = 3, classes: int = 2, mean: float = 0.0, std: float = 1.0) -> dict:
    """A model card dict for ``in_chans`` bands and ``classes`` classes."""
    return {
        "name": "toy",
        "bands": list(range(1, in_chans + 1)),
        "in_chans": in_chans,
        "mean": [mean] * in_chans,
        "std": [std] * in_chans,
        "classes": [{"value": k, "name": f"class{k}"} for k in range(classes)],
    }


class PerPixel(nn.Module):
    """A 1x1 convolution: each output pixel depends on its own input pixel only."""

    def __init__(self, in_chans: int = 3, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_chans, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PerPixelChange(nn.Module):
    """Change model: 1x1 conv on the difference of the two dates ``[B, 2, C, H, W]``."""

    def __init__(self, in_chans: int = 3, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv = nn.Conv2d(in_chans, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x[:, 1] - x[:, 0])


class PairChange(PerPixelChange):
    """The same change model written as ``forward(a, b)``."""

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.conv(b - a)


class TinyCNN(nn.Module):
    """A small 3x3 CNN (context-dependent, so window borders matter)."""

    def __init__(self, in_chans: int = 3, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.net = nn.Sequential(
            nn.Conv2d(in_chans, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, classes, 3, padding=1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SceneClassifier(nn.Module):
    """Global average pooling + linear: scene logits ``[B, K]``."""

    def __init__(self, in_chans: int = 3, classes: int = 2, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(in_chans, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(-2, -1)))


class IdDetector(nn.Module):
    """Finds objects painted as ids in band 1: one box per id > 0 (bounding box of its pixels)."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in x:
            ids = image[0].round().long()
            boxes, scores, labels = [], [], []
            for value in torch.unique(ids):
                if value <= 0:
                    continue
                rows, cols = torch.nonzero(ids == value, as_tuple=True)
                boxes.append(
                    torch.stack([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]).float()
                )
                scores.append(0.9)
                labels.append(1)
            out.append(
                {
                    "boxes": torch.stack(boxes) if boxes else torch.zeros(0, 4),
                    "scores": torch.tensor(scores),
                    "labels": torch.tensor(labels, dtype=torch.long),
                }
            )
        return out


class FixedBoxDetector(nn.Module):
    """Returns the same box ``[10, 10, 50, 50]`` (window pixels) in every window."""

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        box = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
        return [
            {"boxes": box, "scores": torch.tensor([0.8]), "labels": torch.tensor([1])} for _ in x
        ]


def per_pixel_factory() -> nn.Module:
    """``module:callable`` factory used by the CLI tests."""
    return PerPixel()


class AbsDiffChange(nn.Module):
    """Change where the mean absolute difference of the normalised dates exceeds ``threshold``."""

    def __init__(self, threshold: float = 1.0) -> None:
        super().__init__()
        self.threshold = threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (x[:, 1] - x[:, 0]).abs().mean(1, keepdim=True) - self.threshold
        return torch.cat([-4 * score, 4 * score], 1)


class Threshold(nn.Module):
    """Class 1 where the (normalised) first band is above 0."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-4 * x[:, :1], 4 * x[:, :1]], 1)
