"""Paths GDAL understands but Python's ``pathlib`` mangles: virtual file systems and URLs.

GDAL reads far more than local files: ``/vsizip/archive.zip/scene.tif`` (inside an archive),
``/vsicurl/https://host/scene.tif`` and ``https://host/scene.tif`` (HTTP range requests),
``/vsis3/bucket/key.tif`` and ``s3://bucket/key.tif`` (object stores), ``file:///data/x.tif``,
and the other ``/vsi*/`` handlers (https://gdal.org/en/stable/user/virtual_file_systems.html).
``pathlib.Path`` collapses ``//`` (``https://host`` → ``https:/host``), joins ``s3://…`` onto a
local folder and says such files do not exist. Everything here keeps them as the exact string
the user wrote and asks GDAL (through rasterio) instead of the local disk:

- :func:`is_virtual` / :func:`is_remote`: what a path is;
- :class:`GdalPath`: a ``Path`` that keeps the original string (``str()`` / ``os.fspath``) and
  answers ``exists()`` / ``is_file()`` by opening the dataset's header with GDAL, so code written
  for local paths passes it through untouched;
- :func:`as_path`: a string as a local ``Path`` or a :class:`GdalPath`, relative local paths
  joined to a base folder;
- :func:`file_identity`: what identifies a file's content for resume fingerprints, without
  reading the data (local: size and mtime; inside a local archive: the archive's; remote: the
  dataset header);
- :func:`apply_gdal_env`: GDAL configuration options (``AWS_NO_SIGN_REQUEST``,
  ``GDAL_HTTP_TIMEOUT`` …) from a catalog entry, set for the whole process;
- :func:`gdal_env_scope`: a recipe's ``gdal_env``, set while the recipe runs and removed
  afterwards (:func:`gdal_option_problem` says what is wrong with an option).

Checking a remote file opens its header only (a few range requests), never the whole file.
"""

from __future__ import annotations

import contextlib
import os
import re
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

from geocmid.errors import ConfigError, DataError

#: URL schemes rasterio / GDAL open (rasterio turns them into ``/vsi*/`` paths).
URL_SCHEMES = ("http", "https", "s3", "gs", "az", "oss", "file", "zip", "tar", "gzip", "ftp")
#: ``/vsi*/`` handlers that reach the network.
REMOTE_VSI = (
    "/vsicurl", "/vsis3", "/vsigs", "/vsiaz", "/vsiadls", "/vsioss", "/vsiswift", "/vsiwebhdfs",
    "/vsihdfs",
)  # fmt: skip
_CONCRETE_PATH = type(Path())
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: GDAL configuration options set by catalog entries in this process, and by which entry.
_APPLIED: dict[str, tuple[str, str]] = {}


def scheme(path: str) -> str | None:
    """The URL scheme of ``path`` (``"https"``, ``"s3"``, ``"file"``), lower case, or None."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_virtual(path: str | os.PathLike[str]) -> bool:
    """True for a GDAL virtual file system path (``/vsi…/``) or a URL (``scheme://``)."""
    text = os.fspath(path)
    return text.startswith("/vsi") or scheme(text) is not None


def is_remote(path: str | os.PathLike[str]) -> bool:
    """True when reading ``path`` needs the network (``/vsicurl/``, ``/vsis3/``, ``https://``,
    ``s3://`` …, also nested as ``/vsizip//vsicurl/…``)."""
    text = os.fspath(path)
    kind = scheme(text)
    if kind is not None and kind not in ("file", "zip", "tar", "gzip"):
        return True
    return any(f"{prefix}/" in text for prefix in REMOTE_VSI)


def local_file(path: str | os.PathLike[str]) -> Path | None:
    """The local file holding ``path``'s bytes, when there is one: the path itself, the file of a
    ``file://`` URL, or the archive of ``/vsizip/`` / ``/vsitar/`` / ``/vsigzip/`` over a local
    file. None for remote paths."""
    text = os.fspath(path)
    if is_remote(text):
        return None
    if scheme(text) == "file":
        return Path(text[len("file://") :])
    for prefix in ("/vsizip/", "/vsitar/", "/vsigzip/"):
        if text.startswith(prefix):
            inner = text[len(prefix) :]
            inner = inner[1:] if inner.startswith("{") else inner  # /vsizip/{a.zip}/x
            for marker in (".zip", ".tar.gz", ".tgz", ".tar", ".gz", "}"):
                at = inner.lower().find(marker)
                if at >= 0:
                    return Path(inner[: at + len(marker)].rstrip("}"))
            return Path(inner)
    if text.startswith("/vsi"):
        return None
    return Path(text)


class GdalPath(_CONCRETE_PATH):  # type: ignore[valid-type,misc]
    """A virtual / remote path kept exactly as written (a ``Path``, for code typed for paths).

    ``str()`` and ``os.fspath()`` give the original string (so rasterio and GDAL receive it
    untouched); ``name``, ``stem`` and ``suffix`` work as for any path; ``exists()`` and
    ``is_file()`` open the dataset header through GDAL; ``resolve()`` and ``absolute()`` return
    the path itself. Paths derived from it (``parent``, ``/``) are plain ``PurePosixPath``;
    reading it as a local file (``stat``, ``open``) fails: hand it to rasterio / GDAL.
    """

    def __init__(self, raw: str | os.PathLike[str], *more: str) -> None:
        super().__init__(raw, *more)
        self._raw = os.fspath(raw) if not more else "/".join([os.fspath(raw), *more])

    def with_segments(self, *segments: Any) -> PurePosixPath:
        return PurePosixPath(*segments)

    def __str__(self) -> str:
        return self._raw

    def __fspath__(self) -> str:
        return self._raw

    def __repr__(self) -> str:
        return f"GdalPath({self._raw!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, GdalPath) and other._raw == self._raw

    def __hash__(self) -> int:
        return hash(self._raw)

    def __lt__(self, other: Any) -> bool:
        return str(self) < str(other)

    def exists(self) -> bool:
        return probe(self._raw) is None

    def is_file(self) -> bool:
        return self.exists()

    def is_dir(self) -> bool:
        return False

    def resolve(self, strict: bool = False) -> GdalPath:
        return self

    def absolute(self) -> GdalPath:
        return self

    def expanduser(self) -> GdalPath:
        return self

    def is_absolute(self) -> bool:
        return True


def as_path(path: str | os.PathLike[str], base: Path | None = None) -> Path:
    """``path`` as a :class:`GdalPath` (virtual / URL) or a local ``Path`` (``~`` expanded,
    relative paths joined to ``base``). A ``file://`` URL becomes its local path; a relative
    archive in ``/vsizip/`` / ``/vsitar/`` / ``/vsigzip/`` is taken relative to ``base`` too
    (``/vsizip/data.zip/x.tif`` → ``/vsizip//base/data.zip/x.tif``)."""
    text = os.fspath(path)
    if scheme(text) == "file":
        return Path(text[len("file://") :])
    if is_virtual(text):
        for prefix in ("/vsizip/", "/vsitar/", "/vsigzip/"):
            rest = text[len(prefix) :]
            relative = not rest.startswith(("/", "{")) and not is_virtual(rest)
            if text.startswith(prefix) and base is not None and relative:
                return GdalPath(prefix + str(Path(base).resolve() / rest))
        return GdalPath(text)
    local = Path(text).expanduser()
    return local if local.is_absolute() or base is None else base / local


def probe(path: str | os.PathLike[str]) -> str | None:
    """Open ``path``'s header with GDAL (no pixels read); None when it opens, else GDAL's
    message. For remote files this is a few HTTP range requests, never the whole file."""
    import rasterio

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            with rasterio.open(os.fspath(path)):
                return None
    except Exception as error:  # GDAL / rasterio errors of every kind
        return str(error)


def check_readable(path: str | os.PathLike[str], where: str) -> None:
    """Raise a :class:`DataError` naming ``path`` when GDAL cannot open it.

    The fix names what usually goes wrong with virtual and remote paths: the inner path of an
    archive, the network, credentials / ``AWS_NO_SIGN_REQUEST`` in the entry's ``gdal_env``.
    """
    problem = probe(path)
    if problem is None:
        return
    text = os.fspath(path)
    if is_remote(text):
        fix = (
            "check the URL and the network; for public buckets set gdal_env: "
            "{AWS_NO_SIGN_REQUEST: 'YES'} in the catalog entry, else provide credentials"
        )
    elif text.startswith(("/vsizip/", "/vsitar/")):
        fix = "check the archive path and the file's path inside it (e.g. unzip -l archive.zip)"
    else:
        fix = "check the path"
    raise DataError(f"{where}: {text}", f"cannot be opened by GDAL ({problem})", fix)


def file_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies the content of ``path`` without reading its data (resume fingerprints).

    Local file: absolute path, size, mtime. ``/vsizip/`` etc. over a local archive: the path as
    written plus the archive's size and mtime. Remote: the path as written plus the header GDAL
    reports (size, bands, dtype, transform, CRS), since object stores' ETags are not exposed.
    """
    text = os.fspath(path)
    local = local_file(text)
    if local is not None and not is_virtual(text):
        stat = local.stat()
        return {"path": str(local.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if local is not None and local.exists():
        stat = local.stat()
        return {"path": text, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    import rasterio

    with rasterio.open(text) as src:
        return {
            "path": text,
            "shape": [src.count, src.height, src.width],
            "dtypes": list(src.dtypes),
            "transform": list(src.transform)[:6],
            "crs": src.crs.to_string() if src.crs else None,
        }


def absolute(path: str | os.PathLike[str]) -> str:
    """The absolute local path, or a virtual / remote path unchanged."""
    text = os.fspath(path)
    return text if is_virtual(text) else str(Path(text).resolve())


#: What a GDAL configuration option's name looks like (``GDAL_HTTP_TIMEOUT``, ``AWS_REGION``).
GDAL_OPTION_NAME = re.compile(r"[A-Z][A-Z0-9_]*")


def gdal_option_problem(name: Any, value: Any) -> str | None:
    """Why ``name: value`` is not a GDAL configuration option, or None when it is one (an
    UPPER_CASE name; a text, number or true/false value)."""
    if not isinstance(name, str) or not GDAL_OPTION_NAME.fullmatch(name):
        return (f"'{name}' does not look like a GDAL configuration option (UPPER_CASE letters, "
                "digits and _, e.g. GDAL_HTTP_TIMEOUT)")  # fmt: skip
    if not isinstance(value, str | int | float | bool):
        return f"{name}: {value!r} is not a text or a number"
    return None


def gdal_option_text(value: str | float | bool) -> str:
    """An option's value as GDAL reads it (true/false → YES/NO)."""
    return ("YES" if value else "NO") if isinstance(value, bool) else str(value)


@contextlib.contextmanager
def gdal_env_scope(options: Mapping[str, Any] | None) -> Iterator[dict[str, str]]:
    """Set GDAL configuration options (already checked with :func:`gdal_option_problem`) in
    the environment while the block runs, and remove them afterwards.

    Environment variables, not ``rasterio.Env``: GDAL reads its options from the environment
    in every thread, and Dask / DataLoader worker processes started inside the block inherit
    them. An option already set in the environment (by the user) is kept as is, and so are
    options a catalog entry sets during the block (they stay set for the process, as
    :func:`apply_gdal_env` documents). Yields the options set.
    """
    applied: dict[str, str] = {}
    for name, value in (options or {}).items():
        text = gdal_option_text(value)
        if name not in os.environ:
            applied[name] = os.environ[name] = text
        elif os.environ[name] != text:
            warnings.warn(
                f"gdal_env {name}={text} is not applied: the environment already sets "
                f"{name}={os.environ[name]} (the environment wins)",
                stacklevel=3,
            )
    try:
        yield applied
    finally:
        for name, text in applied.items():
            if os.environ.get(name) == text:
                del os.environ[name]


def apply_gdal_env(options: Mapping[str, Any] | None, where: str) -> None:
    """Set GDAL configuration options for this process (and workers it starts).

    GDAL reads its configuration options from environment variables, so every reader (every
    thread, and Dask or DataLoader worker processes started afterwards) sees them. An option the
    user already set in the environment is kept as is.

    Args:
        options: option name → value, e.g. ``{"AWS_NO_SIGN_REQUEST": "YES"}``.
        where: the entry that sets them, for messages.

    Raises:
        ConfigError: not a mapping of names to scalars, or two entries set one option to
            different values.
    """
    if not options:
        return
    if not isinstance(options, Mapping):
        raise ConfigError(
            f"{where}, key 'gdal_env'",
            "expected a mapping of GDAL option names to values",
            "e.g. gdal_env: {AWS_NO_SIGN_REQUEST: 'YES', GDAL_HTTP_TIMEOUT: 30}",
        )
    for name, value in options.items():
        if not isinstance(value, str | int | float | bool) or not re.fullmatch(
            r"[A-Z][A-Z0-9_]*", str(name)
        ):
            raise ConfigError(
                f"{where}, key 'gdal_env'",
                f"{name!r}: {value!r} is not a GDAL option (UPPER_CASE name: scalar value)",
                "see https://gdal.org/en/stable/user/configoptions.html",
            )
        text = ("YES" if value else "NO") if isinstance(value, bool) else str(value)
        previous = _APPLIED.get(str(name))
        if previous is not None and previous[0] != text:
            raise ConfigError(
                f"{where}, key 'gdal_env'",
                f"sets {name}={text}, but {previous[1]} set {name}={previous[0]} in this run",
                "GDAL options apply to the whole process: give both entries the same value",
            )
        if previous is not None or str(name) in os.environ:
            continue  # set already, by an entry or by the user (whose environment wins)
        os.environ[str(name)] = text
        _APPLIED[str(name)] = (text, where)


def entry_path(pattern: str, base: Path, key: str, where: str) -> Path:
    """One virtual / URL path of a catalog entry (see :meth:`Entry.resolve_paths`): passed
    through untouched (relative archives of ``/vsizip/`` joined to ``base``); a ``file://`` URL
    becomes its local file. Existence is checked when the entry is validated (header only).

    Raises:
        ConfigError: a glob in a virtual path (GDAL cannot list remote folders reliably), or a
            ``file://`` URL whose file does not exist.
    """
    import glob

    path = as_path(pattern, base)
    if glob.has_magic(pattern) and scheme(pattern) != "file":
        raise ConfigError(
            f"{where}, key '{key}'",
            f"'{pattern}' is a GDAL virtual path / URL with a wildcard, which cannot be listed",
            "list the files one by one, or use a STAC catalog / ItemCollection for many files",
        )
    if not isinstance(path, GdalPath) and not path.exists():
        raise ConfigError(
            f"{where}, key '{key}'", f"file not found: {path} (from {pattern})", "check the URL"
        )
    return path
