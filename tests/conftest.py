"""Shared fixtures: the real samples in ../shared/data and tiny generated rasters."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("GEOCMID_SHARED_DATA", REPO.parent / "shared" / "data"))

warnings.filterwarnings("ignore", category=UserWarning, module="torchgeo")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real remote-sensing samples (skips the test when they are absent)."""
    if not (SHARED_DATA / "MANIFEST.md").exists():
        pytest.skip(f"real samples not found at {SHARED_DATA}")
    return SHARED_DATA
