"""Where the wizard keeps its settings: window geometry (QSettings, INI file) and the recent-projects list (JSON,
:mod:`tomoguide.recent`, which the command line updates too);
and the project's settings dialog (:class:`ProjectSettingsDialog`: how many runs of each step are kept for a way
back and the disk they may use, with what they use now).

The folder is ``$TOMOGUIDE_CONFIG_DIR`` when that is set (tests point it at a temporary folder), otherwise
platformdirs' user config folder for "tomoguide". Nothing here is global: every call reads the environment.
"""

from __future__ import annotations

from PySide6.QtCore import QSettings
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tomoguide.project import Project, Retention
from tomoguide.recent import MAX_RECENT, RECENT_FILE, add_recent_project, config_dir, recent_projects

__all__ = ["MAX_RECENT", "RECENT_FILE", "SETTINGS_FILE", "ProjectSettingsDialog", "add_recent_project", "config_dir",
           "qsettings", "recent_projects"]

SETTINGS_FILE = "tomoguide.ini"


def qsettings() -> QSettings:
    """A QSettings object backed by ``<config_dir>/tomoguide.ini`` (window geometry, last folders)."""
    return QSettings(str(config_dir() / SETTINGS_FILE), QSettings.Format.IniFormat)


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
        # where the steps' units run (this computer's cores, a SLURM cluster): tomoguide.cluster, issue 18
        self.cluster_button = QPushButton("Where steps run (cluster)…")
        self.cluster_button.clicked.connect(self.show_cluster_settings)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.usage_label)
        lay.addWidget(help_label)
        lay.addWidget(self.cluster_button)
        lay.addWidget(buttons)

    def show_cluster_settings(self) -> QDialog:
        """Open the cluster settings (with the workers of this session's executor); returns the dialog."""
        from tomoguide.cluster import session_executor
        from tomoguide.pages.settings_cluster import ClusterSettingsDialog

        try:
            executor = session_executor()
        except ValueError:  # a damaged settings file: the dialog says so and can overwrite it
            executor = None
        dialog = ClusterSettingsDialog(self, executor=executor)
        dialog.open()
        return dialog

    def accept(self) -> None:
        if not self.project.readonly:
            self.project.set_retention(keep_runs=self.keep_runs.value(), budget_GB=self.budget.value())
        super().accept()
