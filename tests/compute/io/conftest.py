"""Shared fixtures for the reader/writer tests: the real files in ``../shared/data`` beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest


def _repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file():
            return parent
    return here.parents[3]


SHARED_DATA = (_repo_root() / ".." / "shared" / "data").resolve()
if not SHARED_DATA.is_dir():  # a fresh clone: the bundled, licence-permitting subset (tests/data/SOURCES.md)
    SHARED_DATA = _repo_root() / "tests" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path of the shared real-data folder (``<repo>/../shared/data``); skips when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not present at {SHARED_DATA}")
    return SHARED_DATA
