"""The console of the ``geocmid`` command: one log handler, quiet third parties, one-line errors.

* **One handler.** Everything (geocmid, Lightning, rasterio/GDAL, warnings) goes through a single
  handler on the root logger; Lightning's loggers propagate to it instead of printing on their
  own (which showed "Seed set to 0" twice).
* **GDAL at debug.** Messages GDAL sends through rasterio / pyogrio / fiona (``CPLE_*``
  warnings such as "INIT_DEST was set to NO_DATA, but a NoData value was not defined", driver
  chatter such as "Created 48 records") are shown as debug records: only with ``--verbose``.
  GDAL's own stderr printer (used outside a rasterio environment) is pointed at the null device
  unless ``--verbose`` or ``CPL_LOG`` is set. Errors still raise, and are reported as below.
* **Warnings.** Third-party deprecation warnings and Lightning hints that a geocmid user cannot
  act on are filtered; the rest are logged once through the handler.
* **Levels.** ``--quiet``: warnings and errors only; default: info; ``--verbose``: debug, and
  tracebacks of unexpected errors.
* **Errors.** :func:`describe_error` turns an exception into the one line the command prints:
  raster read failures (truncated or corrupt files), disk full, permission denied, checkpoints
  ``torch.load(weights_only=True)`` refuses.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import sys
import warnings
from typing import Any

#: Loggers whose records are GDAL/OGR messages (demoted to debug).
GDAL_LOGGERS = ("rasterio", "pyogrio", "fiona", "osgeo")
#: Loggers whose info records are shown with --verbose only.
LIGHTNING_LOGGERS = ("lightning", "pytorch_lightning")
#: Warning messages (regular expressions) that a user cannot act on.
IGNORED_WARNINGS = (
    r".*LeafSpec.*",  # Lightning's own use of a torch._pytree API
    r".*is smaller than the logging interval.*",  # tiny epochs: not a problem
    r".*args parameter is intended to run from within Python.*",
    r".*does not have many workers.*",  # num_workers is a data setting the configs document
    r".*GPU available but not used.*",
    r".*Checkpoint directory .* exists and is not empty.*",  # a resumed run writes there
    r".*The `srun` command is available.*",
)


class ConsoleFilter(logging.Filter):
    """Threshold and GDAL demotion of the console handler.

    Args:
        level: the least level shown (``logging.INFO``; ``WARNING`` with ``--quiet``).
    """

    def __init__(self, level: int) -> None:
        super().__init__()
        self.level = level

    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".")[0]
        if top in GDAL_LOGGERS and record.levelno < logging.ERROR:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        elif top in LIGHTNING_LOGGERS and record.levelno == logging.INFO:
            # hardware lines, tips, model summaries: the epoch lines say what matters
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno >= self.level


class _Formatter(logging.Formatter):
    """``INFO message`` for geocmid's own lines, ``WARNING message`` for others, and the
    logger name for debug records."""

    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno == logging.INFO:
            return text
        if record.levelno <= logging.DEBUG:
            return f"DEBUG {record.name}: {text}"
        return f"{record.levelname} {text}"


def setup(verbose: bool = False, quiet: bool = False) -> logging.Handler:
    """Configure logging and warnings for a command (idempotent); returns the console handler.

    Args:
        verbose: debug records, GDAL messages and tracebacks.
        quiet: warnings and errors only.
    """
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_geocmid_console", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._geocmid_console = True  # type: ignore[attr-defined]
    handler.setFormatter(_Formatter())
    handler.addFilter(ConsoleFilter(level))
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Lightning adds its own stdout handler when it is imported before any handler exists,
    # and sets propagate=False: undo both so that each line is printed once, by ours.
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                logger.removeHandler(h)
        logger.propagate = True
    if not verbose:
        os.environ.setdefault("CPL_LOG", os.devnull)  # GDAL's default stderr printer
        for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
        for pattern in IGNORED_WARNINGS:
            warnings.filterwarnings("ignore", message=pattern)
    logging.captureWarnings(True)
    os.environ["GEOCMID_CONSOLE"] = "verbose" if verbose else "quiet" if quiet else "normal"
    return handler


# ------------------------------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """SIGTERM (or SIGINT) received: the run stops cleanly and can be resumed."""


_SIGNAL: list[int] = []


def _raise_interrupt(signum: int, frame: Any) -> None:
    _SIGNAL.append(signum)
    raise Interrupted(signal.Signals(signum).name)


def raise_if_interrupted() -> None:
    """Raise :class:`Interrupted` again if SIGINT / SIGTERM arrived during this command.

    The handler raises where the main thread happens to be; when that is a finalizer (a file
    object's ``__del__`` in a checkpoint write, a garbage-collected tensor), Python prints and
    drops the exception and the run goes on. Long loops call this at safe points (the training
    guard: every batch), so the interrupt takes effect there.
    """
    if _SIGNAL:
        raise Interrupted(signal.Signals(_SIGNAL[-1]).name)


def install_signal_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`KeyboardInterrupt` in the main thread (Lightning then
    stops training cleanly; the workflow marks the run interrupted).

    Returns:
        the previous handlers, for :func:`restore_signal_handlers` when the command ends (a
        handler left behind would run in processes forked later, e.g. in a test session, and
        raise during their shutdown).
    """
    previous: dict[int, Any] = {}
    _SIGNAL.clear()  # a new command (tests run several in one process)
    try:
        for signum in (signal.SIGTERM, signal.SIGINT):
            previous[signum] = signal.signal(signum, _raise_interrupt)
    except ValueError:  # not the main thread (e.g. called from a test runner thread)
        return previous
    hook = sys.unraisablehook
    if not isinstance(hook, _QuietInterrupts):
        sys.unraisablehook = _QuietInterrupts(hook)
    return previous


class _QuietInterrupts:
    """``sys.unraisablehook`` that drops the interrupt raised inside a finalizer (Python would
    print "Exception ignored in ..." with a traceback; :func:`raise_if_interrupted` raises it
    again where it can stop the run) and passes everything else to the previous hook."""

    def __init__(self, previous: Any) -> None:
        self.previous = previous

    def __call__(self, unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, Interrupted):
            return
        self.previous(unraisable)


def restore_signal_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_signal_handlers` replaced; the command is over, so
    a signal it received no longer interrupts anything (:func:`raise_if_interrupted`)."""
    _SIGNAL.clear()
    for signum, handler in previous.items():
        with contextlib.suppress(ValueError):
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
    if isinstance(sys.unraisablehook, _QuietInterrupts):
        sys.unraisablehook = sys.unraisablehook.previous


def was_interrupted() -> bool:
    """Whether SIGINT / SIGTERM arrived during this command."""
    return bool(_SIGNAL)


# ------------------------------------------------------------------------------------------------
_PATH = re.compile(r"(/[^\s:'\"]+|[\w.\-/]+\.(?:tiff?|vrt|jp2|img|gpkg|ckpt|pt|pth|safetensors))")


def describe_error(error: BaseException) -> tuple[str, int] | None:
    """The one line (``where: problem`` + ``fix``) for an exception a user's files or machine
    cause, and the exit status; None for a programming error.

    Handles rasterio / GDAL read errors (``RasterioIOError``, ``CPLE_*``), ``OSError`` with
    ``ENOSPC`` / ``EDQUOT`` (disk full), ``EACCES`` / ``EPERM`` / ``EROFS`` (permissions) and
    other file errors, and pickles that ``torch.load(weights_only=True)`` refuses.
    """
    from geocmid.errors import DataError, GeocmidError, ModelError

    chain: list[BaseException] = []
    cause: BaseException | None = error
    while cause is not None and cause not in chain:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    for item in chain:
        if isinstance(item, GeocmidError):
            return item.format(), item.exit_code
    for item in chain:
        if isinstance(item, OSError) and item.errno in (errno.ENOSPC, errno.EDQUOT):
            where = item.filename or "the output folder"
            return (
                f"{where}: no space left on the device (disk full)\n"
                "  fix: free space or write elsewhere (--out / run_dir), then rerun the same "
                "command: finished work is kept",
                1,
            )
        if isinstance(item, OSError) and item.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            where = item.filename or "a file"
            return (
                f"{where}: permission denied ({os.strerror(item.errno)})\n"
                "  fix: choose a folder you can write to, or fix the file's permissions",
                1,
            )
    raster = [
        item for item in chain
        if (type(item).__module__ or "").startswith("rasterio")
        and type(item).__name__.endswith("Error")
    ]  # fmt: skip
    # the GDAL message that names the file (often the cause of "Read failed ...") first
    raster.sort(key=lambda item: _PATH.search(str(item)) is None)
    for item in raster[:1]:
        kind = type(item).__name__
        message = str(item).strip().splitlines()[0] if str(item).strip() else kind
        found = _PATH.search(message)
        where = found.group(1) if found else "a raster file"
        problem = message if not found else message.replace(found.group(1), "").strip(" :,")
        return (
            DataError(
                where,
                f"cannot be read: {problem or kind} (truncated or corrupt file?)",
                f"check it with `gdalinfo -checksum {where}`; re-download or re-export it",
            ).format(),
            2,
        )
    for item in chain:
        text = str(item)
        if "weights_only" in text or type(item).__name__ == "UnpicklingError":
            found = _PATH.search(text)
            where = found.group(1) if found else "checkpoint"
            return (
                ModelError(
                    where,
                    "is not a checkpoint geocmid can load safely (torch.load with "
                    "weights_only=True refuses the Python objects pickled in it)",
                    "use a checkpoint written by geocmid / Lightning (checkpoints/*.ckpt), or "
                    "re-save the weights as a state dict",
                ).format(),
                2,
            )
    for item in chain:
        if isinstance(item, OSError) and item.filename:
            return f"{item.filename}: {item.strerror or item}", 1
    return None


__all__ = [
    "ConsoleFilter",
    "Interrupted",
    "describe_error",
    "install_signal_handlers",
    "raise_if_interrupted",
    "setup",
    "was_interrupted",
]
