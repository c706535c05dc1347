"""``geocmid predict``: run a trained model over scenes and write georeferenced outputs."""

from __future__ import annotations

import argparse
import os
from typing import Any

from geocmid.registry import TASK_NAMES

EPILOG = """\
examples:
  # a model fine-tuned with `geocmid fit` (task, classes and normalisation come from it)
  geocmid predict --model runs/seg/checkpoints/best.ckpt scene.tif -o out/

  # land cover of one scene: class COG, polygons (GPKG), summary JSON, quick-look PNG
  geocmid predict --model model.pt --card card.json scene.tif -o out/ --tta flips

  # a catalog imagery entry, read exactly as training reads it (one file per band at mixed
  # resolutions, nodata override, assign_crs) on the entry's grid; the outputs share that grid
  geocmid --catalog data_catalog predict --entry s2-2021 --model runs/seg/checkpoints/best.ckpt \\
      -o out/

  # change between two imagery entries, or the two dates of one bitemporal entry
  geocmid --catalog demo/catalog predict --entry demo-2020 --entry demo-2021 \\
      --model runs/change/checkpoints/best.ckpt -o out/
  geocmid --catalog demo/catalog predict --entry demo-pair \\
      --model runs/change/checkpoints/best.ckpt -o out/

  # change between two dates (read on the first date's grid), with probabilities and GeoJSON
  geocmid predict --task change --model change.pt --card card.json 2000.tif 2003.tif -o out/ \\
      --probabilities --geojson

  # tree crowns as boxes, merged across windows of 400 px with 100 px overlap
  geocmid predict --task detection --model trees.pt --card card.json tile.tif -o out/ \\
      --window 400 --overlap 100

  # many scenes as one Dask job on 4 local worker processes (GPU per worker with --device auto)
  geocmid predict --model model.pt --card card.json tiles/*.tif -o out/ --workers 4

  # without Dask (e.g. a job array): two worker processes, then one assemble step
  geocmid predict --model model.pt --card card.json big.tif -o out/ --part 1/2 &
  geocmid predict --model model.pt --card card.json big.tif -o out/ --part 2/2 &
  wait; geocmid predict --model model.pt --card card.json big.tif -o out/

An entry of several files (tiles, or several scenes of band files) is predicted as one mosaic
on the entry's grid, the first file with data winning a pixel as in training; to map files one
by one, pass them as SCENE paths. An interrupted run resumes when the same command is run
again. --part auto reads the rank and world size of torch.distributed / torchrun (RANK,
WORLD_SIZE).
"""


def register(subparsers: Any) -> None:
    """Add the ``predict`` subcommand."""
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "predict",
        help="predict scenes with a trained model into georeferenced rasters and vectors",
        description=(
            "Run a model over one or more scenes (or two dated scenes for change) in\n"
            "overlapping, blended windows, block by block with bounded memory, and write\n"
            "a class COG on the input grid, vectors (GPKG), a summary JSON and a quick-look.\n"
            "Scenes are raster files, or catalog imagery entries (--entry) read exactly as\n"
            "training reads them."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", metavar="SCENE", help="input rasters (or use --entry)")
    parser.add_argument(
        "--entry",
        action="append",
        default=[],
        metavar="NAME",
        help="catalog imagery entry to predict (repeat for two dates), or a bitemporal entry; "
        "the catalog is `geocmid --catalog DIR`",
    )
    parser.add_argument("-o", "--output", required=True, help="output folder")
    parser.add_argument(
        "--model",
        required=True,
        help="checkpoint from `geocmid fit` (.ckpt), TorchScript/.pt2 file or module:factory",
    )
    parser.add_argument(
        "--card", help="model card JSON (bands, mean, std, classes); not needed for .ckpt"
    )
    parser.add_argument(
        "--task",
        default=None,
        help="what the model predicts (default: from the checkpoint, else segmentation)",
        choices=TASK_NAMES,
    )
    parser.add_argument(
        "--name", help="output name stem (default: input file stem(s) or entry name(s))"
    )
    parser.add_argument("--window", type=int, default=512, help="window size, pixels")
    parser.add_argument("--overlap", type=int, default=64, help="window overlap, pixels")
    parser.add_argument("--block-size", type=int, default=2048, help="block size, pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument(
        "--tta", default="none", choices=["none", "flips", "d4"], help="test-time augmentation"
    )
    parser.add_argument(
        "--device", default="cpu", help="torch device, e.g. cuda:0, or auto (a GPU if there is one)"
    )
    parser.add_argument(
        "--precision", default="32-true", type=_precision,
        choices=["32-true", "bf16-mixed", "16-mixed"],
        help="model precision, as Lightning's trainer.precision: bf16-mixed / 16-mixed run the "
        "model under autocast (about 2x faster on recent GPUs, half the activation memory; "
        "16-mixed needs CUDA; Lightning's short names 32 / bf16 / 16 work too); logits are turned "
        "into probabilities in float32 (default: %(default)s)",
    )  # fmt: skip
    parser.add_argument("--bands", help="1-based image bands to use, e.g. 4,3,2")
    parser.add_argument(
        "--grid",
        default="first",
        choices=["first", "second", "intersection"],
        help="change: grid the two dates are read on",
    )
    parser.add_argument("--resampling", default="bilinear", help="change: warping resampling")
    parser.add_argument(
        "--pair-input", action="store_true", help="change model takes two tensors (a, b)"
    )
    parser.add_argument(
        "--background",
        default="auto",
        help="class value not turned into polygons ('auto': the model card's background or "
        "no-change class; 'none': vectorise every class)",
    )
    parser.add_argument("--probabilities", action="store_true", help="write the probability COG")
    parser.add_argument("--no-vectors", action="store_true", help="skip polygons")
    parser.add_argument("--simplify", type=float, default=0.0, help="polygon simplification, px")
    parser.add_argument("--min-area", type=float, default=0.0, help="drop polygons below, m²")
    parser.add_argument("--geojson", action="store_true", help="also write GeoJSON (EPSG:4326)")
    parser.add_argument("--iou", type=float, default=0.5, help="detection merge IoU")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--part", help="i/n: compute only part i of n of the blocks (or 'auto')")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run the blocks of every scene as one Dask job on a local cluster of N worker "
        "processes (docs/scale-out.md)",
    )
    parser.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run the job on an existing Dask cluster, e.g. tcp://10.0.0.5:8786",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=handler)


def _parse_part(text: str | None) -> tuple[int, int] | None:
    from geocmid.errors import ConfigError

    if text is None:
        return None
    if text == "auto":
        rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
        return (rank + 1, world) if world > 1 else None
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError as error:
        raise ConfigError("--part", f"'{text}' is not i/n", "use e.g. --part 1/4") from error
    return i, n


def _precision(text: str) -> str:
    """Lightning's short precision names too: ``32``, ``bf16``, ``16`` (and ``16-true``-style
    spellings are left for the choices check to refuse)."""
    return {"32": "32-true", "bf16": "bf16-mixed", "16": "16-mixed"}.get(text, text)


def handler(args: argparse.Namespace) -> int:
    """Build the request, predict every scene, print where the outputs are."""
    from geocmid.workflows.predict import PredictRequest, predict

    request = PredictRequest(
        model=args.model,
        inputs=list(args.inputs),
        entries=list(args.entry),
        catalog=getattr(args, "catalog", None),
        output=args.output,
        card=args.card,
        task=args.task,
        name=args.name,
        window=args.window,
        overlap=args.overlap,
        block_size=args.block_size,
        batch_size=args.batch_size,
        tta=args.tta,
        device=args.device,
        precision=args.precision,
        bands=tuple(int(b) for b in args.bands.split(",")) if args.bands else None,
        grid=args.grid,
        resampling=args.resampling,
        pair_input=args.pair_input,
        background=args.background,
        probabilities=args.probabilities,
        vectors=not args.no_vectors,
        geojson=args.geojson,
        simplify=args.simplify,
        min_area=args.min_area,
        iou=args.iou,
        overwrite=args.overwrite,
        part=_parse_part(args.part),
        progress=not args.no_progress,
        workers=args.workers,
        scheduler=args.scheduler,
    )
    for run in predict(request).runs:
        for kind, path in run.outputs.items() if run.complete else ():
            print(f"{kind:14s} {path}")
    return 0
