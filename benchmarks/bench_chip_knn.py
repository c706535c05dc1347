"""kNN top-1 of a short CMID pretraining run on a plain RGB image folder against random init.

Pretrains (``geocmid pretrain``) on the train images of a folder-per-class tree with split
folders (by default NWPU-RESISC12 from ``../shared/data/chips``: 600 train / 180 test images,
12 classes), exports the student backbone (``geocmid export``) and scores a weighted cosine kNN
(k=20, T=0.07, :func:`geocmid.cmid.callbacks.knn_accuracy`) of the test images against the
train images on GAP features, for the export and for the same architecture at random init.

    python benchmarks/bench_chip_knn.py [--epochs 3] [--chip-size 64] [--out runs/bench-knn]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from geocmid.cli import main as cli
from geocmid.cmid.callbacks import knn_accuracy
from geocmid.data.catalog import Catalog
from geocmid.data.chipsets import read_image, records

DEFAULT_ROOT = (
    Path(__file__).resolve().parents[2]
    / "shared/data/chips/classification/nwpu-resisc12/NWPU-RESISC12"
)
TINY = {"queue_size": 1024, "proj_hidden": 512, "proj_dim": 128, "head_hidden": 512,
        "head_bottleneck": 128, "num_prototypes": 1024}  # fmt: skip


def features(model: torch.nn.Module, files: list[Path], size: int, mean, std) -> torch.Tensor:
    m = torch.tensor(mean)[:, None, None]
    s = torch.tensor(std)[:, None, None]
    out = []
    with torch.no_grad():
        for i in range(0, len(files), 64):
            batch = torch.stack([
                F.interpolate(torch.from_numpy(read_image(f)).float()[None], (size, size),
                              mode="bilinear", antialias=True)[0]
                for f in files[i : i + 64]
            ])  # fmt: skip
            out.append(model((batch - m) / s).mean((2, 3)))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--chip-size", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chips", type=int, default=0, help="chips per epoch (0: every image)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-chip-knn"))
    parser.add_argument("--export", type=Path, help="score this export instead of pretraining")
    parser.add_argument("--limit", type=int, default=0, help="images per split (0: all)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    cat = args.out / "catalog"
    cat.mkdir(parents=True, exist_ok=True)
    (cat / "folder.yaml").write_text(
        f"kind: image_folder\nroot: {args.root}\nsplits: {{train: train, test: test}}\n"
    )
    t0 = time.time()
    export = args.export or args.out / "backbone"
    if args.export is None:
        run = args.out / "run"
        argv = ["--catalog", str(cat), "pretrain", "--entry", "folder", "--backbone", "resnet18",
                "--chip-size", str(args.chip_size), "--batch-size", str(args.batch_size),
                "--epochs", str(args.epochs), "--run-dir", str(run),
                "--set", "data.num_workers=0", "--set", "model.warmup_epochs=1",
                *(["--set", f"data.chips_per_epoch={args.chips}"] if args.chips else []),
                *[a for k, v in TINY.items() for a in ("--set", f"model.{k}={v}")]]  # fmt: skip
        assert cli(argv) == 0
        assert cli(["export", str(run / "checkpoints/last.ckpt"), str(export), "--overwrite"]) == 0
    minutes = (time.time() - t0) / 60
    from geocmid.models.backbones import create_backbone
    from geocmid.models.weights import load_backbone

    trained, card = load_backbone(export.with_suffix(".safetensors"))
    recs = records(Catalog(cat).get("folder"))
    assert recs.labels is not None
    split = {s: [i for i, x in enumerate(recs.splits) if x == s] for s in ("train", "test")}
    if args.limit:
        split = {s: ids[:: max(1, len(ids) // args.limit)] for s, ids in split.items()}
    files = {s: [recs.files[i][0] for i in ids] for s, ids in split.items()}
    labels = {s: torch.tensor([recs.labels[i] for i in ids]) for s, ids in split.items()}
    torch.manual_seed(0)
    random = create_backbone("resnet18", in_chans=3)
    for name, model in (("CMID export", trained), ("random init", random)):
        model.eval()
        z = {s: features(model, files[s], args.chip_size, card.mean, card.std) for s in files}
        acc = knn_accuracy(z["train"], labels["train"], z["test"], labels["test"], 20, 0.07)
        print(f"{name:12s} kNN top-1 {acc:.3f} ({len(files['test'])} test / "
              f"{len(files['train'])} train images, {len(recs.classes)} classes)")  # fmt: skip
    if args.export is None:
        print(
            f"pretraining + export: {minutes:.1f} min, {args.epochs} epochs, chip {args.chip_size}"
        )


if __name__ == "__main__":
    main()
