"""Test set-up shared by every test: offscreen Qt, CPU backend, and small data sets made on the fly."""

from __future__ import annotations

import os

# Before anything imports Qt: render offscreen (no display in CI), and keep computations on the CPU.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("TOMOGUIDE_DEVICE", "cpu")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The real files written by others (../shared/data); tests that need them skip without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_user_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Settings and recent-project lists go to a temporary folder, never the real user's."""
    home = tmp_path_factory.mktemp("userdirs")
    monkeypatch.setenv("TOMOGUIDE_CONFIG_DIR", str(home))
