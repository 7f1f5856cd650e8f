"""The "Check against the truth" panel of a wizard page: one step's scores against the simulator's truth.

API (one line): ``panel = TruthPanel(project, step_id)`` — a self-contained QWidget; call ``panel.refresh()`` when it
is shown and after the step ran. It finds the project's truth folder (:func:`tomoguide.score.locate_truth`; recorded
in the project when it was found by looking and no step is running), scores the step in a background thread
(:func:`tomoguide.score.score_step`: the same figures, grades and thresholds as ``tomoguide score``) and shows one
row per figure: what is measured, the grade (coloured), the value against the truth and the thresholds; the tooltip
of a row says what the figure means. Results are kept per run of the step, so showing the page again costs nothing.
For a project whose data did not come from ``tomoguide simulate`` it says so; for a step not run yet, "not run".
``panel.score`` holds the last :class:`~tomoguide.score.StepScore` (None before the first result); the ``scored``
signal carries it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from PySide6.QtCore import QCoreApplication, QThread, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPushButton,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

GRADE_COLOURS = {"good": "#c8e6c9", "acceptable": "#fff0b3", "poor": "#ffcdd2", "not run": "#e0e0e0",
                 "info": "#e3f2fd", "n/a": "#f5f5f5"}
COLUMNS = ("figure", "grade", "against the truth", "thresholds")


class _ScoreThread(QThread):
    """Scores one step off the GUI thread; ``done`` carries the StepScore or the exception."""

    done = Signal(object)

    def __init__(self, project: Any, step_id: str, truth_dir: Path) -> None:
        # parented to the application, not the panel: a page closed while scoring does not destroy a running thread
        super().__init__(QCoreApplication.instance())
        self.project, self.step_id, self.truth_dir = project, step_id, truth_dir

    def run(self) -> None:
        from tomoguide.score import score_step

        try:
            result: Any = score_step(self.project, self.step_id, self.truth_dir)
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            result = exc
        self.done.emit(result)


class TruthPanel(QWidget):
    """"Check against the truth" for step ``step_id`` of ``project`` (see the module docstring): ``refresh()``."""

    scored = Signal(object)

    def __init__(self, project: Any, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.step_id = step_id
        self.score: Any = None
        self.truth_dir: Path | None = None
        self._cache: dict[tuple[str, str, str], Any] = {}
        self._thread: _ScoreThread | None = None
        self._pending_key: tuple[str, str, str] | None = None

        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        top = QHBoxLayout()
        self.status_label = QLabel()
        self.status_label.setObjectName("truth_status")
        self.status_label.setWordWrap(True)
        top.addWidget(self.status_label, 1)
        self.check_button = QPushButton("Check again")
        self.check_button.setToolTip("Measure this step's results against the truth again")
        self.check_button.clicked.connect(lambda: self.refresh(force=True))
        top.addWidget(self.check_button)
        lay.addLayout(top)
        self.table = QTableWidget(0, len(COLUMNS))
        self.table.setObjectName("truth_table")
        self.table.setHorizontalHeaderLabels(list(COLUMNS))
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.NoSelection)
        self.table.setWordWrap(True)
        hdr = self.table.horizontalHeader()
        hdr.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        hdr.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        hdr.setSectionResizeMode(2, QHeaderView.ResizeMode.Stretch)
        hdr.setSectionResizeMode(3, QHeaderView.ResizeMode.ResizeToContents)
        lay.addWidget(self.table)
        self.table.setVisible(False)

    # -- public -------------------------------------------------------------------------------------------------
    def refresh(self, *, force: bool = False) -> None:
        """Find the truth, and score the step when it is done (in the background; the table fills when ready)."""
        from tomoguide.score import TruthNotFound, locate_truth, record_truth

        try:
            truth_dir, how = locate_truth(self.project)
        except (TruthNotFound, ValueError) as exc:
            self.truth_dir = None
            self._message(f"No truth to check against: {exc}")
            self.check_button.setEnabled(False)
            return
        self.truth_dir = truth_dir
        if how != "recorded" and not self.project.readonly and not any(
                st.status == "running" for st in self.project.data.steps.values()):
            try:
                record_truth(self.project, truth_dir)
            except Exception:  # noqa: BLE001 - recording is a convenience; scoring goes on
                pass
        st = self.project.data.steps[self.step_id]
        if st.status != "done":
            self.score = None
            self._message("<b>not run</b> — run this step, then its results are measured against the "
                          f"simulator's truth ({html.escape(str(truth_dir))}).")
            self.check_button.setEnabled(False)
            return
        self.check_button.setEnabled(True)
        key = (str(truth_dir), str(st.run_dir), str(st.hash))
        if not force and key in self._cache:
            self._show(self._cache[key])
            return
        if self._thread is not None and self._thread.isRunning():
            self._pending_key = key
            return
        self._message("Measuring this step's results against the truth…")
        self._pending_key = key
        thread = _ScoreThread(self.project, self.step_id, truth_dir)
        thread.done.connect(self._on_done)
        thread.finished.connect(thread.deleteLater)
        self._thread = thread
        thread.start()

    def wait(self, timeout_ms: int = 120_000) -> bool:
        """Wait for a scoring in progress (tests, closing); True when none is left running."""
        t = self._thread
        return True if t is None else bool(t.wait(timeout_ms))

    # -- internals ----------------------------------------------------------------------------------------------
    def _on_done(self, result: Any) -> None:
        self._thread = None
        if self._pending_key is not None and not isinstance(result, Exception):
            self._cache[self._pending_key] = result
        self._show(result)

    def _message(self, text: str) -> None:
        self.status_label.setText(text)
        self.table.setVisible(False)

    def _show(self, result: Any) -> None:
        if isinstance(result, Exception):
            self.score = None
            self._message(f"<span style='color:#b71c1c'>Could not measure against the truth: "
                          f"{html.escape(f'{type(result).__name__}: {result}')}</span>")
            return
        self.score = result
        grade = result.grade
        colour = GRADE_COLOURS.get(grade, "#ffffff")
        counts = {g: sum(m.grade == g for m in result.measures) for g in ("good", "acceptable", "poor")}
        answer = [m for m in result.measures if m.answer_key]
        extra = ""
        if answer:
            found = sum(m.grade == "good" for m in answer)
            extra = f"; answer key: {found} of {len(answer)} found"
        self.status_label.setText(
            f"This step against the truth: <span style='background:{colour};padding:1px 6px'><b>{grade}</b></span>"
            f" ({counts['good']} good, {counts['acceptable']} acceptable, {counts['poor']} poor{extra}). "
            f"<small>Truth: {html.escape(str(self.truth_dir))}; the same as <code>tomoguide score</code>.</small>")
        self.table.setRowCount(len(result.measures))
        for r, m in enumerate(result.measures):
            cells = (m.label, m.grade if m.grade != "info" else "", m.text, m.rule)
            for col, text in enumerate(cells):
                item = QTableWidgetItem(text)
                tip = m.meaning or m.label
                item.setToolTip(f"{m.label}: {tip}")
                if col == 1 or (col == 0 and m.answer_key):
                    item.setBackground(QColor(GRADE_COLOURS.get(m.grade, "#ffffff")))
                if m.answer_key and col == 0:
                    f = item.font()
                    f.setBold(True)
                    item.setFont(f)
                self.table.setItem(r, col, item)
        self.table.resizeRowsToContents()
        height = self.table.horizontalHeader().height() + sum(self.table.rowHeight(i)
                                                              for i in range(self.table.rowCount())) + 4
        self.table.setFixedHeight(min(height, 320))
        self.table.setVisible(True)
        self.scored.emit(result)
