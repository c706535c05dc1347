"""``geocmid demo-data``: write a small synthetic georeferenced dataset to try geocmid with."""

from __future__ import annotations

import argparse

from geocmid.cli import HelpFormatter

EPILOG = """\
examples:
  geocmid demo-data demo/                       # 512x512 px scenes (about 1 km²)
  geocmid demo-data demo/ --size 2048 --seed 3  # a larger area, another landscape
  geocmid --catalog demo/catalog catalog list   # then look at what was written

The folder gets two dated scenes (the second in another CRS and resolution, with planted
changes), land-cover labels as raster and GPKG, building footprints and boxes, a change mask
and change polygons, 64x64 scene chips by class, quick-look PNGs and catalog entries.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo-data`` subcommand."""
    parser = subparsers.add_parser(
        "demo-data",
        help="write a synthetic demo dataset (scenes, labels, catalog)",
        description=__doc__.split("``: ", 1)[-1],
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder to create (new or empty)")
    parser.add_argument("--size", type=int, default=512, help="first-date scene size in pixels")
    parser.add_argument("--seed", type=int, default=0, help="landscape seed (same seed, same data)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier demo dataset in OUT_DIR"
    )
    parser.set_defaults(func=handler)


def handler(args: argparse.Namespace) -> int:
    """Write the dataset, list what was written and suggest the next command."""
    from geocmid.data.synthetic import make_demo_dataset
    from geocmid.errors import ConfigError

    if args.size < 64:
        raise ConfigError("--size", f"{args.size} pixels is too small", "use --size 64 or more")
    paths = make_demo_dataset(
        args.out_dir, size=args.size, seed=args.seed, overwrite=args.overwrite
    )
    print(f"wrote a synthetic demo dataset to {args.out_dir}:")
    for name, path in paths.items():
        print(f"  {name:18s} {path}")
    print("next, try:")
    print(f"  geocmid --catalog {paths['catalog']} catalog list")
    return 0
