"""Sample prediction panels: chips with reference boxes (green; oriented references also as
their polygon, yellow) and predictions (red, score)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor


def display_rgb(image: Tensor, rgb: Sequence[int] = (0, 1, 2)) -> np.ndarray:
    """Normalised ``[C, H, W]`` → ``[H, W, 3]`` floats in 0-1 (2-98 % stretch per chip)."""
    idx = [i for i in rgb if i < image.shape[0]] or [0]
    bands = image[idx].detach().float().cpu().numpy()
    if len(idx) < 3:
        bands = np.repeat(bands[:1], 3, axis=0)
    lo, hi = np.percentile(bands, (2, 98), axis=(1, 2), keepdims=True)
    return np.clip((bands - lo) / np.maximum(hi - lo, 1e-6), 0, 1).transpose(1, 2, 0)


def save_panels(
    path: str | Path,
    images: Tensor,
    targets: Sequence[dict[str, Tensor]],
    predictions: Sequence[dict[str, Tensor]],
    class_names: Sequence[str] = (),
    min_score: float = 0.3,
    max_panels: int = 4,
    rgb: Sequence[int] = (0, 1, 2),
) -> Path:
    """Write a PNG with up to ``max_panels`` chips side by side.

    Args:
        path: output PNG.
        images: normalised ``[B, C, H, W]`` chips.
        targets: per chip ``{"boxes", "labels"}`` (reference, pixel xyxy), optionally
            ``"polygons"`` ``[N, 8]`` (oriented references' corners, pixels).
        predictions: per chip ``{"boxes", "scores", "labels"}``.
        class_names: names of labels 1..K (label 0 is background).
        min_score: predictions below this score are not drawn.
        max_panels: chips drawn at most.
        rgb: band indices shown as red, green, blue.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Polygon, Rectangle

    n = min(max_panels, len(images))
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.4), squeeze=False)
    for k, ax in enumerate(axes[0]):
        ax.imshow(display_rgb(images[k], rgb))
        for box in targets[k]["boxes"].tolist():
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                   edgecolor="lime", linewidth=1.2))  # fmt: skip
        for corners in targets[k].get("polygons", torch.zeros(0, 8)).reshape(-1, 4, 2).tolist():
            ax.add_patch(Polygon(corners, closed=True, fill=False, edgecolor="yellow",
                                 linewidth=0.8))  # fmt: skip
        pred = predictions[k]
        shown = 0
        for box, score, label in zip(
            pred["boxes"].tolist(), pred["scores"].tolist(), pred["labels"].tolist(), strict=True
        ):
            if score < min_score:
                continue
            shown += 1
            ax.add_patch(Rectangle(box[:2], box[2] - box[0], box[3] - box[1], fill=False,
                                   edgecolor="red", linewidth=1.0))  # fmt: skip
            name = class_names[label - 1] if 0 < label <= len(class_names) else str(label)
            ax.text(box[0], box[1], f"{name} {score:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(f"ref {len(targets[k]['boxes'])} / pred {shown} (≥{min_score})", fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
