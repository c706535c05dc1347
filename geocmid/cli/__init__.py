"""The ``geocmid`` command.

Each subcommand lives in its own module of this package and exposes ``register(subparsers)``;
heavy imports (torch, rasterio) happen inside the handlers so that ``geocmid --help`` is instant.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

from geocmid import __version__
from geocmid.cli import console
from geocmid.errors import GeocmidError

#: Subcommand modules, in the order they are listed by ``geocmid --help``.
COMMAND_MODULES = ["catalog", "demo", "pretrain", "export", "fit", "predict", "embed", "run"]

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
    _console_flags(parser)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"geocmid.cli.{name}")
        module.register(subparsers)
    for sub in subparsers.choices.values():  # listed in every command's --help
        _console_flags(sub)
        for nested in _subparsers_of(sub):
            _console_flags(nested)
    return parser


def _console_flags(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet`` and ``-v/--verbose``; main() takes them anywhere on the line."""
    group = parser.add_argument_group("console")
    group.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                       help="warnings and errors only (no progress, no info lines)")  # fmt: skip
    group.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging, GDAL messages, tracebacks")  # fmt: skip


def _subparsers_of(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    out: list[argparse.ArgumentParser] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            out += list(action.choices.values())
    return out


def _take_console_flags(argv: list[str]) -> tuple[list[str], bool, bool]:
    """Remove ``-q/--quiet``, ``-v/--verbose`` (anywhere, before a ``--``) from ``argv``."""
    out, verbose, quiet = [], False, False
    for i, token in enumerate(argv):
        if token == "--":
            out += argv[i:]
            break
        if token in ("-v", "--verbose"):
            verbose = True
        elif token in ("-q", "--quiet"):
            quiet = True
        elif token in ("-vq", "-qv"):
            verbose = quiet = True
        else:
            out.append(token)
    return out, verbose, quiet


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``geocmid`` console script; returns the exit status."""
    argv, verbose, quiet = _take_console_flags(list(sys.argv[1:] if argv is None else argv))
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
    args.verbose, args.quiet = verbose, quiet and not verbose
    console.setup(verbose=args.verbose, quiet=args.quiet)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    previous = console.install_signal_handlers()
    try:
        try:
            result = args.func(args)
        except GeocmidError as error:
            print(f"error: {error.format()}", file=sys.stderr)
            return error.exit_code
        except KeyboardInterrupt:
            return _interrupted()
        except BrokenPipeError:
            # stdout closed by its reader (`geocmid ... | head`): stop as a shell tool does
            # (128 + SIGPIPE), without the flush error at exit; the work may be unfinished
            with contextlib.suppress(OSError, ValueError):  # a stdout without a file
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141
        except SystemExit:
            if console.was_interrupted():  # Lightning turns Ctrl-C into sys.exit(1)
                return _interrupted()
            raise
        except Exception as error:  # one line, not a traceback, unless --verbose
            if args.verbose:
                raise
            described = console.describe_error(error)
            if described is None:
                text = str(error).strip().splitlines()[0] if str(error).strip() else ""
                print(
                    f"error: {type(error).__name__}: {text}\n"
                    "  (unexpected: rerun with --verbose for the traceback, and report it)",
                    file=sys.stderr,
                )
                return 1
            line, code = described
            print(f"error: {line}", file=sys.stderr)
            return code
        return int(result or 0)

    finally:
        console.restore_signal_handlers(previous)


def _interrupted() -> int:
    print(
        "interrupted: stopped cleanly; rerun the same command to resume from the last "
        "checkpoint (finished steps are kept)",
        file=sys.stderr,
    )
    return 130


if __name__ == "__main__":
    sys.exit(main())
