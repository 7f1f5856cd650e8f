"""Where the wizard keeps its settings: window geometry (QSettings, INI file) and the recent-projects list (JSON);
and the project's settings dialog (:class:`ProjectSettingsDialog`: how many runs of each step are kept for a way
back and the disk they may use, with what they use now).

The folder is ``$TOMOGUIDE_CONFIG_DIR`` when that is set (tests point it at a temporary folder), otherwise
platformdirs' user config folder for "tomoguide". Nothing here is global: every call reads the environment.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tomoguide.project import PROJECT_FILE, Project, Retention, atomic_write_text

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


class ProjectSettingsDialog(QDialog):
    """The project's settings: runs kept per step (the current one included) and the disk budget of the earlier
    runs, with their present use. Accepting saves them (:meth:`Project.set_retention`), which deletes at once the
    earlier runs beyond the new limits."""

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.setWindowTitle("Project settings")
        fields = Retention.model_fields
        self.keep_runs = QSpinBox()
        self.keep_runs.setRange(1, 100)
        self.keep_runs.setValue(project.data.settings.keep_runs)
        self.keep_runs.setToolTip(fields["keep_runs"].description or "")
        self.budget = QDoubleSpinBox()
        self.budget.setRange(0.0, 1e6)
        self.budget.setDecimals(1)
        self.budget.setSuffix(" GB")
        self.budget.setValue(project.data.settings.budget_GB)
        self.budget.setToolTip(fields["budget_GB"].description or "")
        n, used = project.kept_runs()
        self.usage_label = QLabel(f"Earlier runs kept now: {n}, using {used / 1e9:.2f} GB "
                                  f"(beyond the current runs).")
        self.usage_label.setObjectName("usage_label")
        self.usage_label.setWordWrap(True)
        help_label = QLabel("When you change a setting and change it back, a kept run with the same settings and "
                            "inputs comes back at once instead of being computed again. The oldest runs go first "
                            "when there are more than this, or when they use more disk than the budget.")
        help_label.setWordWrap(True)
        form = QFormLayout()
        form.addRow(fields["keep_runs"].title or "keep_runs", self.keep_runs)
        form.addRow(fields["budget_GB"].title or "budget_GB", self.budget)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.usage_label)
        lay.addWidget(help_label)
        lay.addWidget(buttons)

    def accept(self) -> None:
        if not self.project.readonly:
            self.project.set_retention(keep_runs=self.keep_runs.value(), budget_GB=self.budget.value())
        super().accept()
