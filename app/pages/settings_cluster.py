"""The cluster settings dialog (issue 18): where the steps' units run — inline, local worker processes or a SLURM
cluster — with the SLURM job settings, saved to ``<config_dir>/cluster.json`` (:mod:`tomoguide.cluster`), and the
workers of the running executor (:class:`~tomoguide.widgets.cluster_status.ClusterStatus`).

``$TOMOGUIDE_CLUSTER`` overrides the choice saved here (the dialog says so).
"""

from __future__ import annotations

import os
from typing import Any

from PySide6.QtWidgets import (
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QLineEdit,
    QMessageBox,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from tomoguide.cluster import ENV_VAR, KINDS, ClusterSettings, SlurmSettings, load_settings, save_settings
from tomoguide.widgets.cluster_status import ClusterStatus

KIND_TEXT = {"local": "local — one worker process per core of this computer (default)",
             "slurm": "slurm — Dask workers in SLURM jobs (sbatch)",
             "inline": "inline — this program only, one unit after another (debugging)"}


class ClusterSettingsDialog(QDialog):
    """Edit the cluster settings; OK saves them (the next step run uses them)."""

    def __init__(self, parent: QWidget | None = None, *, executor: Any = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Where steps run")
        try:
            settings = load_settings()
            problem = ""
        except ValueError as exc:
            settings, problem = ClusterSettings(), f"{exc}: the defaults are shown; OK overwrites the file"
        self.kind = QComboBox()
        for k in KINDS:
            self.kind.addItem(KIND_TEXT[k], k)
        self.kind.setCurrentIndex(list(KINDS).index(settings.kind))
        self.workers = QSpinBox()
        self.workers.setRange(0, 4096)
        self.workers.setSpecialValueText("one per core")
        self.workers.setValue(settings.workers or 0)
        self.workers.setToolTip("Local worker processes, one core each. The work a step does in this program "
                                "itself (the averaging steps' searches) keeps to as many cores, so a smaller "
                                "number leaves the other cores free.")
        self.retries = QSpinBox()
        self.retries.setRange(0, 100)
        self.retries.setValue(settings.retries)
        self.retries.setToolTip(ClusterSettings.model_fields["retries"].description or "")
        form = QFormLayout()
        form.addRow("Run the steps' units", self.kind)
        form.addRow("Local workers", self.workers)
        form.addRow("Retries of a failed unit", self.retries)

        s = settings.slurm
        self.slurm_box = QGroupBox("SLURM jobs")
        sf = QFormLayout(self.slurm_box)
        self.queue = QLineEdit(s.queue or "")
        self.account = QLineEdit(s.account or "")
        self.cores = _spin(1, 1024, s.cores)
        self.processes = _spin(1, 1024, s.processes)
        self.memory = QLineEdit(s.memory)
        self.walltime = QLineEdit(s.walltime)
        self.extra = QLineEdit("; ".join(s.job_extra_directives))
        self.extra.setPlaceholderText("e.g. --gres=gpu:1; --constraint=a100")
        self.min_jobs = _spin(0, 10000, s.min_jobs)
        self.max_jobs = _spin(1, 10000, s.max_jobs)
        self.python = QLineEdit(s.python or "")
        self.python.setPlaceholderText("this program's Python")
        self.log_dir = QLineEdit(s.log_directory or "")
        for label, w, name in (("Partition", self.queue, "queue"), ("Account", self.account, "account"),
                               ("Cores per job", self.cores, "cores"), ("Workers per job", self.processes, "processes"),
                               ("Memory per job", self.memory, "memory"), ("Time limit", self.walltime, "walltime"),
                               ("Extra #SBATCH lines", self.extra, "job_extra_directives"),
                               ("Jobs kept when idle", self.min_jobs, "min_jobs"),
                               ("Most jobs at once", self.max_jobs, "max_jobs"),
                               ("Python on the nodes", self.python, "python"),
                               ("Job logs folder", self.log_dir, "log_directory")):
            w.setToolTip(SlurmSettings.model_fields[name].description or "")
            sf.addRow(label, w)
        self.kind.currentIndexChanged.connect(self._enable)
        self.problem = QLabel(problem)
        self.problem.setWordWrap(True)
        self.problem.setVisible(bool(problem))
        env = os.environ.get(ENV_VAR)
        self.env_note = QLabel(f"${ENV_VAR}={env} is set: it overrides the choice saved here." if env else "")
        self.env_note.setVisible(bool(env))
        self.status = ClusterStatus(executor) if executor is not None else None
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        lay = QVBoxLayout(self)
        lay.addLayout(form)
        lay.addWidget(self.slurm_box)
        lay.addWidget(self.problem)
        lay.addWidget(self.env_note)
        if self.status is not None:
            lay.addWidget(self.status)
        lay.addWidget(buttons)
        self._enable()

    def _enable(self) -> None:
        kind = self.kind.currentData()
        self.slurm_box.setEnabled(kind == "slurm")
        self.workers.setEnabled(kind == "local")

    def settings(self) -> ClusterSettings:
        """The settings as the dialog shows them (pydantic validates: a bad value raises naming the field)."""
        slurm = SlurmSettings(
            queue=self.queue.text().strip() or None, account=self.account.text().strip() or None,
            cores=self.cores.value(), processes=self.processes.value(), memory=self.memory.text().strip(),
            walltime=self.walltime.text().strip(),
            job_extra_directives=[d.strip() for d in self.extra.text().split(";") if d.strip()],
            min_jobs=self.min_jobs.value(), max_jobs=self.max_jobs.value(),
            python=self.python.text().strip() or None, log_directory=self.log_dir.text().strip() or None)
        return ClusterSettings(kind=self.kind.currentData(), workers=self.workers.value() or None,
                               retries=self.retries.value(), slurm=slurm)

    def accept(self) -> None:
        try:
            s = self.settings()
        except ValueError as exc:
            QMessageBox.warning(self, "Cluster settings", str(exc))
            return
        if s.slurm.min_jobs > s.slurm.max_jobs:
            QMessageBox.warning(self, "Cluster settings", "Jobs kept when idle must not exceed Most jobs at once")
            return
        save_settings(s)
        super().accept()


def _spin(lo: int, hi: int, value: int) -> QSpinBox:
    w = QSpinBox()
    w.setRange(lo, hi)
    w.setValue(value)
    return w

