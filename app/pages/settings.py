"""Where the wizard keeps its settings: window geometry (QSettings, INI file) and the recent-projects list (JSON).

The folder is ``$TOMOGUIDE_CONFIG_DIR`` when that is set (tests point it at a temporary folder), otherwise
platformdirs' user config folder for "tomoguide". Nothing here is global: every call reads the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PySide6.QtCore import QSettings

from tomoguide.project import PROJECT_FILE, atomic_write_text

RECENT_FILE = "recent_projects.json"
SETTINGS_FILE = "tomoguide.ini"
MAX_RECENT = 10


def config_dir() -> Path:
    """The settings folder (created when missing)."""
    env = os.environ.get("TOMOGUIDE_CONFIG_DIR")
    if env:
        folder = Path(env)
    else:
        import platformdirs

        folder = Path(platformdirs.user_config_dir("tomoguide", appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def qsettings() -> QSettings:
    """A QSettings object backed by ``<config_dir>/tomoguide.ini`` (window geometry, last folders)."""
    return QSettings(str(config_dir() / SETTINGS_FILE), QSettings.Format.IniFormat)


def recent_projects(*, existing_only: bool = True) -> list[Path]:
    """Recently opened project folders, newest first (those whose project.json is gone are left out)."""
    try:
        raw = json.loads((config_dir() / RECENT_FILE).read_text(encoding="utf-8"))
        paths = [Path(p) for p in raw.get("projects", []) if isinstance(p, str)]
    except (OSError, ValueError, AttributeError):
        return []
    if existing_only:
        paths = [p for p in paths if (p / PROJECT_FILE).is_file()]
    return paths


def add_recent_project(project_dir: Path) -> list[Path]:
    """Put ``project_dir`` first in the recent-projects list (at most :data:`MAX_RECENT`); returns the list."""
    project_dir = Path(project_dir).resolve()
    paths = [project_dir] + [p for p in recent_projects(existing_only=False) if p != project_dir]
    paths = paths[:MAX_RECENT]
    atomic_write_text(config_dir() / RECENT_FILE,
                      json.dumps({"projects": [str(p) for p in paths]}, indent=1))
    return paths
