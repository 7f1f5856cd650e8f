"""The recent-projects list, shared by the wizard's start screen and the command line (no Qt here).

``tomoguide new``, ``tomoguide demo`` (with or without the wizard) and ``tomoguide run`` put their project first in
the list, as opening a project in the wizard does, so a project made from the command line appears on the start
screen. The list is ``recent_projects.json`` in the settings folder: ``$TOMOGUIDE_CONFIG_DIR`` when that is set
(tests point it at a temporary folder), otherwise platformdirs' user config folder for "tomoguide". Nothing here
is global: every call reads the environment. A list that cannot be written (a read-only home) is not an error
for the command that tried: the project itself is unaffected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

RECENT_FILE = "recent_projects.json"
MAX_RECENT = 10
PROJECT_FILE = "project.json"


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


def recent_projects(*, existing_only: bool = True) -> list[Path]:
    """Recently used project folders, newest first (those whose project.json is gone are left out)."""
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
    from tomoguide.project import atomic_write_text

    project_dir = Path(project_dir).resolve()
    paths = [project_dir] + [p for p in recent_projects(existing_only=False) if p != project_dir]
    paths = paths[:MAX_RECENT]
    atomic_write_text(config_dir() / RECENT_FILE, json.dumps({"projects": [str(p) for p in paths]}, indent=1))
    return paths


def remember_project(project_dir: Path) -> None:
    """:func:`add_recent_project` for the command line: a list that cannot be written is skipped silently."""
    try:
        add_recent_project(project_dir)
    except OSError:
        pass
