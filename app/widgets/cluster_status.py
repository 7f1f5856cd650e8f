"""The workers of the step executor and their state (issue 18): a small table for the settings dialog.

Reads :meth:`tomoguide.cluster.Executor.workers` every ``interval_ms`` (default 2 s): one row per worker (its name,
host, state — idle, busy, pending for a SLURM job still queued —, threads, memory limit, units it holds), and a line
that says which executor it is. Qt only: the executor is given, nothing here starts one.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QLabel, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget

COLUMNS = ("Worker", "Host", "State", "Threads", "Memory", "Units")


class ClusterStatus(QWidget):
    """The executor's description and its workers, refreshed by a timer while shown."""

    def __init__(self, executor: Any, parent: QWidget | None = None, *, interval_ms: int = 2000) -> None:
        super().__init__(parent)
        self.executor = executor
        self.summary = QLabel()
        self.summary.setWordWrap(True)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QTableWidget.EditTrigger.NoEditTriggers)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.summary)
        lay.addWidget(self.table)
        self.timer = QTimer(self)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self.refresh)
        self.timer.start()
        self.refresh()

    def refresh(self) -> None:
        """Read the workers again."""
        try:
            workers = list(self.executor.workers())
            text = self.executor.describe()
        except Exception as exc:  # noqa: BLE001 - a scheduler that went away is a message, not a crash
            workers, text = [], f"workers not reachable: {exc}"
        if not workers:
            text += " — no workers running now (they start with the first step that has units to spread)" \
                if getattr(self.executor, "kind", "") != "inline" else ""
        self.summary.setText(f"Executor: {text}")
        self.table.setRowCount(len(workers))
        for r, w in enumerate(workers):
            mem = "" if not w.memory_limit_bytes else f"{w.memory_limit_bytes / 2**30:.1f} GiB"
            for c, value in enumerate((w.name, w.host, w.state, str(w.threads), mem, str(w.processing))):
                self.table.setItem(r, c, QTableWidgetItem(value))
        self.table.resizeColumnsToContents()
