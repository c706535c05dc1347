"""The work folder of a prediction run: completed blocks, written atomically, for resuming.

Layout (beside the outputs, removed when the run is complete)::

    .NAME.geocmid-work/
        state.json            # fingerprint of the run: inputs, model, settings
        blocks/b0003_0012.npz # one file per completed block, renamed into place when complete

A block file exists only when its block is complete, so a killed run resumes from the blocks it
finished. Several processes (``--part i/n``) can share one work folder: each writes only its own
blocks, and the final step assembles all of them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
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
            raise DataError(
                str(self.path.parent),
                f"cannot be written ({error.strerror})",
                "choose a folder you can write to",
            ) from error
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
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load_block(self, block: Block) -> Any:
        """The block's arrays (a lazy ``NpzFile``; close it or use ``with``)."""
        return np.load(self.block_file(block))

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
