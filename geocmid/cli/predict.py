"""``geocmid predict``: run a trained model over scenes and write georeferenced outputs."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

EPILOG = """\
examples:
  # a model fine-tuned with `geocmid fit` (task, classes and normalisation come from it)
  geocmid predict --model runs/seg/checkpoints/best.ckpt scene.tif -o out/

  # land cover of one scene: class COG, polygons (GPKG), summary JSON, quick-look PNG
  geocmid predict --model model.pt --card card.json scene.tif -o out/ --tta flips

  # change between two dates (read on the first date's grid), with probabilities and GeoJSON
  geocmid predict --task change --model change.pt --card card.json 2000.tif 2003.tif -o out/ \\
      --probabilities --geojson

  # tree crowns as boxes, merged across windows of 400 px with 100 px overlap
  geocmid predict --task detection --model trees.pt --card card.json tile.tif -o out/ \\
      --window 400 --overlap 100

  # two worker processes, then one assemble step (same folder, same settings)
  geocmid predict --model model.pt --card card.json big.tif -o out/ --part 1/2 &
  geocmid predict --model model.pt --card card.json big.tif -o out/ --part 2/2 &
  wait; geocmid predict --model model.pt --card card.json big.tif -o out/

An interrupted run resumes when the same command is run again. --part auto reads the rank and
world size of torch.distributed / torchrun (RANK, WORLD_SIZE).
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
            "a class COG on the input grid, vectors (GPKG), a summary JSON and a quick-look."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", metavar="SCENE", help="input rasters")
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
        choices=["segmentation", "change", "classification", "detection"],
    )
    parser.add_argument("--name", help="output name stem (default: input file stem(s))")
    parser.add_argument("--window", type=int, default=512, help="window size, pixels")
    parser.add_argument("--overlap", type=int, default=64, help="window overlap, pixels")
    parser.add_argument("--block-size", type=int, default=2048, help="block size, pixels")
    parser.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    parser.add_argument(
        "--tta", default="none", choices=["none", "flips", "d4"], help="test-time augmentation"
    )
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cuda:0")
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
        default="0",
        help="class value not turned into polygons ('none': vectorise every class)",
    )
    parser.add_argument("--probabilities", action="store_true", help="write the probability COG")
    parser.add_argument("--no-vectors", action="store_true", help="skip polygons")
    parser.add_argument("--simplify", type=float, default=0.0, help="polygon simplification, px")
    parser.add_argument("--min-area", type=float, default=0.0, help="drop polygons below, m²")
    parser.add_argument("--geojson", action="store_true", help="also write GeoJSON (EPSG:4326)")
    parser.add_argument("--iou", type=float, default=0.5, help="detection merge IoU")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--part", help="i/n: compute only part i of n of the blocks (or 'auto')")
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


def handler(args: argparse.Namespace) -> int:
    """Load the model, run every scene, print where the outputs are."""
    from geocmid.errors import ConfigError
    from geocmid.inference.engine import RunSettings
    from geocmid.inference.loading import load_predictor
    from geocmid.inference.run import OutputOptions, predict_scene

    log = logging.getLogger("geocmid.predict")
    background = None if args.background.lower() == "none" else int(args.background)
    predictor = load_predictor(
        args.model,
        args.card,
        args.task,
        device=args.device,
        change_input="pair" if args.pair_input else "stacked",
        background=background,
    )
    bands = tuple(int(b) for b in args.bands.split(",")) if args.bands else None
    settings = RunSettings(args.window, args.overlap, args.block_size, args.batch_size, args.tta)
    options = OutputOptions(
        probabilities=args.probabilities,
        vectors=not args.no_vectors,
        simplify=args.simplify,
        min_area=args.min_area,
        geojson=args.geojson,
        iou=args.iou,
    )
    part = _parse_part(args.part)
    if predictor.task == "change":
        if len(args.inputs) != 2:
            raise ConfigError("SCENE", "change needs exactly two scenes", "pass DATE1 DATE2")
        runs = [args.inputs]
    else:
        if args.name and len(args.inputs) > 1:
            raise ConfigError("--name", "cannot name several scenes' outputs", "drop --name")
        runs = [[scene] for scene in args.inputs]
    for scenes in runs:
        result = predict_scene(
            predictor,
            scenes,
            args.output,
            args.name,
            settings,
            options,
            grid=args.grid,
            resampling=args.resampling,
            bands=bands,
            overwrite=args.overwrite,
            part=part,
            progress=not args.no_progress,
        )
        if not result.complete:
            log.info("%s: part done; run again without --part to assemble", " ".join(scenes))
            continue
        for kind, path in result.outputs.items():
            print(f"{kind:14s} {path}")
    return 0
