"""The ``geocmid`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``;
heavy imports (torch, rasterio) happen inside the handlers so that ``geocmid --help`` is instant.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from geocmid import __version__
from geocmid.errors import GeocmidError

#: Subcommand modules, in the order they are listed by ``geocmid --help``.
COMMAND_MODULES = ["catalog", "demo", "pretrain", "export", "fit", "predict", "run"]

DESCRIPTION = """\
geocmid: CMID self-supervised pretraining and georeferenced mapping on TorchGeo.

Describe your data once in a catalog (data_catalog/*.yaml), then pretrain, fine-tune
and map with the subcommands below. Run `geocmid COMMAND --help` for examples.
"""

EPILOG = """\
examples:
  geocmid demo-data demo/                 # generate a small georeferenced demo dataset
  geocmid --catalog demo/catalog catalog list
  geocmid --catalog demo/catalog catalog show demo-scenes
  geocmid run recipes/quickstart.yaml     # demo data to a change map in one command
"""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep hand-written line breaks in descriptions and show defaults."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="geocmid", description=DESCRIPTION, epilog=EPILOG, formatter_class=HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"geocmid {__version__}")
    parser.add_argument(
        "--catalog",
        default=os.environ.get("GEOCMID_CATALOG", "data_catalog"),
        help="catalog folder of data entries (environment variable GEOCMID_CATALOG)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="show debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"geocmid.cli.{name}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geocmid`` console script; returns the exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse cannot take positionals after options; commands that take KEY=VALUE overrides
    # (set_defaults(trailing_overrides=DEST)) accept them anywhere on the line.
    dest = getattr(args, "trailing_overrides", None)
    if dest:
        getattr(args, dest).extend(e for e in extra if "=" in e and not e.startswith("-"))
        extra = [e for e in extra if "=" not in e or e.startswith("-")]
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s"
    )
    # Lightning prints through its own console handler: without this every line shows twice
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).propagate = False
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        result = args.func(args)
    except GeocmidError as error:
        print(f"error: {error.format()}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
