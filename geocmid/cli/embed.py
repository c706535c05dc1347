"""``geocmid embed``: one backbone vector per chip of a scene, written to GeoParquet."""

from __future__ import annotations

import argparse
from typing import Any

EPILOG = """\
examples:
  # a CMID backbone exported by `geocmid export`, 224 px chips of a scene
  geocmid embed --model exports/resnet50-naip.safetensors scene.tif -o emb.parquet

  # a catalog imagery entry, 64 px chips every 32 px, on a GPU
  geocmid --catalog data_catalog embed --entry naip-2021 --model exports/r50.safetensors \\
      --chip 64 --stride 32 --device cuda -o emb.parquet

  # a chip dataset (image_folder / chip_segmentation / chip_change entry): one row per image
  geocmid --catalog data_catalog embed --entry nwpu-resisc45 --model exports/r50.safetensors \
      --chip 224 -o nwpu.parquet

then, in Python ("where else looks like this?"):
  from geocmid.inference.embed import nearest
  nearest("emb.parquet", (x, y), k=20).to_file("matches.gpkg")   # x, y in the file's CRS
  nearest("nwpu.parquet", "train/beach/beach_001.jpg", k=10)      # an image of a chip entry

An interrupted run resumes when the same command is run again.
"""


def register(subparsers: Any) -> None:
    """Add the ``embed`` subcommand."""
    from geocmid.cli import HelpFormatter

    parser = subparsers.add_parser(
        "embed",
        help="write per-chip backbone embeddings of a scene to GeoParquet",
        description=(
            "Cut a scene (or a catalog imagery entry) into chips, run a pretrained backbone\n"
            "on each, and write one row per chip to GeoParquet: its polygon in the scene's\n"
            "CRS, the embedding (global average of the final feature map) and the model's\n"
            "fingerprint. A chip dataset entry (folders of plain images) gives one row per\n"
            "image instead: its path, label and the embedding. Bounded memory, resumable."
        ),
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("scene", nargs="?", metavar="SCENE", help="input raster (or --entry)")
    parser.add_argument(
        "--entry", metavar="NAME", help="catalog imagery or chip-dataset entry instead of SCENE"
    )
    parser.add_argument("-o", "--output", required=True, help="output .parquet file")
    parser.add_argument(
        "--model",
        required=True,
        help="`geocmid export` backbone (.safetensors / .json), or TorchScript / module:factory "
        "with --card",
    )
    parser.add_argument("--card", help="model card JSON (not needed for a geocmid export)")
    parser.add_argument(
        "--chip", type=int, default=0,
        help="chip edge, px (default: the card's); chip datasets: images are resized to it",
    )  # fmt: skip
    parser.add_argument("--stride", type=int, default=0, help="px between chips (default: chip)")
    parser.add_argument("--batch-size", type=int, default=16, help="chips per forward pass")
    parser.add_argument("--min-valid", type=float, default=0.5, help="least valid fraction")
    parser.add_argument("--bands", help="1-based image bands to use, e.g. 4,3,2")
    parser.add_argument("--device", default="cpu", help="torch device, or auto")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=handler)


def load_embedder(model: str, card: str | None, device: str) -> tuple[Any, Any]:
    """``(backbone, card)`` from a ``geocmid export`` or a model file + card JSON."""
    from pathlib import Path

    from geocmid.errors import ModelError
    from geocmid.inference.card import ModelCard
    from geocmid.inference.loading import load_model, resolve_device

    device = resolve_device(device)
    if Path(model).suffix in (".safetensors", ".json"):
        from geocmid.models.weights import load_backbone

        backbone, model_card = load_backbone(model)
        return backbone.to(device), model_card
    if card is None:
        raise ModelError(model, "needs a model card", "pass --card card.json (bands, mean, std)")
    return load_model(model, device), ModelCard.from_file(card)


def handler(args: argparse.Namespace) -> int:
    from geocmid.errors import ConfigError
    from geocmid.inference.embed import EmbedSettings, embed_scene
    from geocmid.inference.loading import resolve_device

    if bool(args.scene) == bool(args.entry):
        raise ConfigError("SCENE / --entry", "give exactly one", "pass a raster or --entry NAME")
    scene: Any = args.scene
    settings = EmbedSettings(args.chip, args.stride, args.batch_size, args.min_valid)
    bands = tuple(int(b) for b in args.bands.split(",")) if args.bands else None
    if args.entry:
        from geocmid.data.catalog import Catalog
        from geocmid.data.catalog.schema import ChipEntry
        from geocmid.inference.reader import entry_sources

        catalog = Catalog(getattr(args, "catalog", None))
        found = catalog.get(args.entry)
        if isinstance(found, ChipEntry):
            from geocmid.inference.embed_chips import embed_chips

            backbone, card = load_embedder(args.model, args.card, args.device)
            result = embed_chips(backbone, card, found, args.output, settings, bands=bands,
                                 device=resolve_device(args.device), overwrite=args.overwrite,
                                 progress=not args.no_progress)  # fmt: skip
            print(f"embeddings     {result.path}  ({result.chips} images x {result.width} "
                  "values)")  # fmt: skip
            return 0
        sources = entry_sources(catalog, [args.entry])
        if len(sources) != 1:
            raise ConfigError(f"--entry {args.entry}", "holds two dates", "name one date's entry")
        scene = sources[0]
    backbone, card = load_embedder(args.model, args.card, args.device)
    result = embed_scene(
        backbone,
        card,
        scene,
        args.output,
        settings,
        bands=bands,
        device=resolve_device(args.device),
        overwrite=args.overwrite,
        progress=not args.no_progress,
    )
    print(f"embeddings     {result.path}  ({result.chips} chips x {result.width} values)")
    return 0
