"""The work folder of a prediction run: completed blocks, written atomically, for resuming.

Layout (beside the outputs, removed when the run is complete)::

    .NAME.geocmid-work/
        state.json            # fingerprint of the run: inputs, model, settings
        blocks/b0003_0012.npz # one file per completed block, renamed into place when complete

A block file exists only when its block is complete, so a killed run resumes from the blocks it
finished. Several processes (``--part i/n``, Dask workers) can share one work folder: each writes
only its own blocks, and the final step assembles all of them.

A lock file ``.NAME.geocmid-lock`` beside the work folder (:class:`RunLock`) keeps a second run
of the same output from starting while one is running: a plain run (which assembles and then
removes the work folder) holds it exclusively, ``--part`` runs share it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from geocmid.errors import ConfigError, DataError

Block = tuple[int, int]


def fingerprint_model(model: Any) -> str:
    """A short hash of a model's weights (or its repr for plain callables)."""
    digest = hashlib.sha256()
    state = getattr(model, "state_dict", None)
    if callable(state):
        for name, tensor in sorted(state().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    else:
        digest.update(repr(getattr(model, "__qualname__", type(model).__qualname__)).encode())
    return digest.hexdigest()[:16]


class WorkDir:
    """Block files and run state of one prediction.

    Args:
        path: the work folder.
        fingerprint: JSON-serialisable description of everything that changes the result.
    """

    def __init__(self, path: Path, fingerprint: dict[str, Any]) -> None:
        self.path = Path(path)
        self.fingerprint = fingerprint
        self.blocks_dir = self.path / "blocks"

    @property
    def exists(self) -> bool:
        return (self.path / "state.json").exists()

    def prepare(self, overwrite: bool) -> bool:
        """Create the folder or check it belongs to this run; return True when resuming.

        Raises:
            ConfigError: the folder holds an unfinished run with other settings and
                ``overwrite`` is False.
        """
        state_file = self.path / "state.json"
        if state_file.exists():
            try:
                previous = json.loads(state_file.read_text())
            except json.JSONDecodeError:
                previous = None
            if previous == _jsonable(self.fingerprint):
                return True
            if not overwrite:
                raise ConfigError(
                    str(self.path),
                    "holds an unfinished run with different inputs, model or settings",
                    "rerun with the same settings to resume it, or pass --overwrite to discard it",
                )
            shutil.rmtree(self.path)
        try:
            self.blocks_dir.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(state_file, json.dumps(_jsonable(self.fingerprint), indent=1))
        except OSError as error:
            raise write_error(self.path.parent, error) from error
        return False

    def block_file(self, block: Block) -> Path:
        return self.blocks_dir / f"b{block[0]:04d}_{block[1]:04d}.npz"

    def is_done(self, block: Block) -> bool:
        return self.block_file(block).exists()

    def save_block(self, block: Block, arrays: dict[str, np.ndarray]) -> None:
        """Write a block's arrays under a temporary name, then rename (atomic on one filesystem)."""
        final = self.block_file(block)
        fd, tmp = tempfile.mkstemp(prefix=final.stem + ".", suffix=".tmp", dir=self.blocks_dir)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(tmp, final)
        except OSError as error:
            Path(tmp).unlink(missing_ok=True)
            raise write_error(self.blocks_dir, error) from error
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_block(self, block: Block) -> Any:
        """The block's arrays (a lazy ``NpzFile``; close it or use ``with``)."""
        return np.load(self.block_file(block))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def write_error(folder: Path, error: OSError) -> DataError:
    """One clear error for a write that failed in ``folder``: the disk is full, the folder is
    not writable, or another OS error (named by its ``strerror``)."""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return DataError(
            str(folder),
            "the disk is full (no space left to save prediction blocks)",
            "free space on that disk, or write to a folder on another disk with -o; "
            "rerunning the same command then resumes from the blocks already saved",
        )
    if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return DataError(
            str(folder),
            f"cannot be written ({error.strerror})",
            "choose an output folder you can write to (-o), or fix its permissions",
        )
    return DataError(
        str(folder),
        f"cannot be written ({error.strerror or error})",
        "check the disk and choose a folder you can write to",
    )


class RunLock:
    """An advisory lock that keeps two runs of one output from overlapping.

    ``exclusive=True`` (a run that assembles and removes the work folder) excludes every other
    run of the same output; ``exclusive=False`` (a ``--part`` run, which only adds blocks) shares
    the lock with other part runs. The lock is released when the process exits, however it ends
    (``fcntl.flock``), so a killed run never leaves a stale lock. The lock file records the
    holders' PIDs and host for the error message. No-op where ``fcntl`` is missing (Windows).

    Raises (on :meth:`acquire`):
        ConfigError: another run holds the lock; names its PID(s).
    """

    def __init__(self, path: Path, exclusive: bool = True, what: str = "") -> None:
        self.path = Path(path)
        self.exclusive = exclusive
        self.what = what
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            return self
        mode = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as error:
                raise write_error(self.path.parent, error) from error
            try:
                fcntl.flock(fd, mode | fcntl.LOCK_NB)
            except BlockingIOError:
                holders = _read_holders(fd)
                os.close(fd)
                raise self._busy(holders) from None
            # A finishing run removes the file after use: lock the file that is there now.
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        me = f"{os.getpid()} {socket.gethostname()}\n"
        if self.exclusive:
            os.ftruncate(fd, 0)
            os.pwrite(fd, me.encode(), 0)
        else:
            with open(fd, "a", closefd=False) as handle:
                handle.write(me)
        self._fd = fd
        return self

    def _busy(self, holders: list[str]) -> ConfigError:
        alive = [h for h in holders if _alive(h)] or holders
        pids = ", ".join(alive) or "unknown"
        return ConfigError(
            str(self.path.parent),
            f"another geocmid predict run{self.what} is writing here (PID {pids})",
            "wait for it to finish (or stop it), or write to another folder with -o; "
            "--part runs of one job may run together, a plain run waits for them",
        )

    def release(self, remove: bool = False) -> None:
        """Release the lock; ``remove`` deletes the lock file first (the run is complete)."""
        if self._fd is None:
            return
        if remove:
            self.path.unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_holders(fd: int) -> list[str]:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return []
    return list(dict.fromkeys(line.split()[0] for line in text.splitlines() if line.strip()))


def _alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
