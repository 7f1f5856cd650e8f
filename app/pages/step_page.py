"""The generic step page, built from a step's declaration: title, help, form, checks, Run/Cancel, progress, log,
error and preview.

Layout: on the left the form (in a scroll area), the issues the run would meet (errors refuse the run,
warnings are shown), Run and Cancel, the progress bar with the step's message and an estimated time left, the
error box (a readable message, the traceback folded) and the log; on the right the preview (top) and the help
panel (the step's help, then the help of the field that has the focus).

Every accepted parameter change is saved at once through :func:`~tomoguide.runner.set_params_checked` (a value
the step's own checks refuse is not saved: the form goes back to the saved value and says why); the page says
which steps became stale. Before a run that could make finished later steps stale (Run on a done step), the page
asks, listing them (:meth:`StepPage.confirm_rerun`); after it, it says whether they stayed done (identical
results) or became stale. While a run is active the page owns the project through its :class:`StepWorker`: the
form is disabled and ``running_changed(True)`` tells the wizard to lock navigation.
"""

from __future__ import annotations

import html
import re
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from PySide6.QtCore import QCoreApplication, QDeadlineTimer, Qt, Signal
from PySide6.QtWidgets import (
    QFrame,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSplitter,
    QTextBrowser,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from tomoguide.pages.form import ERROR_COLOUR, WARNING_COLOUR, ParamForm
from tomoguide.pages.previews import Preview, make_preview
from tomoguide.pages.worker import StepWorker, eta_text
from tomoguide.project import Project
from tomoguide.runner import ParamsRefused, StepRun, deliberate_values, set_params_checked
from tomoguide.steps import registry
from tomoguide.steps.base import Issue, Step, format_quantity

STATUS_COLOURS = {
    "pending": "#757575",
    "running": "#1565c0",
    "done": "#2e7d32",
    "stale": "#ef6c00",
    "failed": "#c62828",
    "interrupted": "#6a1b9a",
    "skipped": "#9e9e9e",
}


_HELP_PARAGRAPH = re.compile(r"<p>\s*<b>(?P<head>[^<]*)</b>.*?</p>", re.DOTALL)


def split_help(help_html: str) -> tuple[str, str, str]:
    """A step's help as ``(what_to_check, good_result, rest)``: its "What to check." and "A good result."
    paragraphs (empty when absent) and everything else in its order. The page shows what to check first, where
    it is seen without scrolling."""
    check = good = ""
    rest = help_html
    for m in list(_HELP_PARAGRAPH.finditer(help_html)):
        head = m.group("head").strip().lower()
        if head.startswith("what to check") and not check:
            check = m.group(0)
        elif head.startswith("a good result") and not good:
            good = m.group(0)
        else:
            continue
        rest = rest.replace(m.group(0), "", 1)
    return check, good, rest.strip()


def ordered_help_html(help_html: str) -> str:
    """The help with "What to check" first (in a highlighted box), then "A good result", then the rest."""
    check, good, rest = split_help(help_html)
    head = (f"<div style='background:#fff8e1;padding:6px'>{check}</div>" if check else "")
    return head + good + rest


def truth_folder(project: Project) -> Path | None:
    """The simulator's truth folder of the project's data, when it has one (:func:`tomoguide.score.locate_truth`:
    recorded in the project, or the ``truth`` folder beside the session folder that ``tomoguide simulate`` /
    ``demo`` wrote). None for real data."""
    from tomoguide.score import TruthNotFound, locate_truth

    try:
        return locate_truth(project)[0]
    except (TruthNotFound, ValueError, OSError):
        return None


def issues_html(issues: list[Issue]) -> str:
    """Issues as HTML lines with a symbol and colour per level."""
    lines = []
    for i in issues:
        colour = {"error": ERROR_COLOUR, "warning": WARNING_COLOUR}.get(i.level, "#455a64")
        symbol = {"error": "✖", "warning": "⚠"}.get(i.level, "ℹ")
        lines.append(f"<span style='color:{colour}'>{symbol} {html.escape(i.message)}</span>")
    return "<br>".join(lines)


class StepPage(QWidget):
    """The page of one step. ``status_changed(step_id)`` after every change of the project that the wizard's
    step list should show; ``running_changed(bool)`` when a run starts or ends."""

    status_changed = Signal(str)
    running_changed = Signal(bool)

    def __init__(self, project: Project, step_cls: type[Step], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.step_cls = step_cls
        self.step_id = step_cls.id
        self.worker: StepWorker | None = None
        self.last_issues: list[Issue] = []
        self.progress_history: list[tuple[float | None, str]] = []
        self._run_started = 0.0
        self.last_stale: list[str] = []
        self.at_risk: list[str] = []
        self.last_outcome: str | None = None
        self.focused_field: str | None = None
        self._build()
        self.refresh()

    # -- layout ----------------------------------------------------------------------------------------------
    def _build(self) -> None:
        index = registry.ids().index(self.step_id) + 1
        self.title_label = QLabel(f"<h2 style='margin:0'>{index}. {html.escape(self.step_cls.title, quote=False)}</h2>")
        self.summary_label = QLabel(html.escape(self.step_cls.summary, quote=False))
        self.summary_label.setWordWrap(True)
        self.status_label = QLabel("")
        self.status_label.setObjectName("status_label")
        self.status_label.setWordWrap(True)

        self.form = ParamForm(self.step_cls.Params, self.project.data.steps[self.step_id].params,
                              deliberate=deliberate_values(self.project, self.step_id))
        self.form.committed.connect(self._on_committed)
        self.form.refused.connect(self._on_refused)
        self.form.field_focused.connect(self.show_field_help)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(self.form)
        scroll.setMinimumHeight(120)
        self.form_scroll = scroll
        if self.form.advanced_toggle is not None:
            self.form.advanced_toggle.toggled.connect(lambda _: self._fit_form())

        self.saved_label = QLabel("")
        self.saved_label.setObjectName("saved_label")
        self.saved_label.setWordWrap(True)
        self.issues_label = QLabel("")
        self.issues_label.setObjectName("issues_label")
        self.issues_label.setWordWrap(True)
        self.issues_label.setTextFormat(Qt.TextFormat.RichText)

        self.run_button = QPushButton("Run")
        self.run_button.setToolTip("Run this step (Ctrl+R)")
        self.run_button.setDefault(True)
        self.run_button.clicked.connect(self.run_step)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.setToolTip("Stop the run; the project stays as it was before it (Esc)")
        self.cancel_button.setEnabled(False)
        self.cancel_button.clicked.connect(self.cancel_run)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setTextVisible(True)
        self.progress_bar.setFormat("%p%")
        self.progress_label = QLabel("")
        self.progress_label.setObjectName("progress_label")
        self.progress_label.setWordWrap(True)
        self.eta_label = QLabel("")
        self.eta_label.setObjectName("eta_label")
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress_bar, 1)
        progress_line = QHBoxLayout()
        progress_line.addWidget(self.progress_label, 1)
        progress_line.addWidget(self.eta_label)

        self.error_label = QLabel("")
        self.error_label.setObjectName("error_label")
        self.error_label.setWordWrap(True)
        self.error_label.setStyleSheet(f"color: {ERROR_COLOUR}; font-weight: bold;")
        self.error_details_button = QToolButton()
        self.error_details_button.setText("Details (traceback)")
        self.error_details_button.setCheckable(True)
        self.error_details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.error_details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.error_details_button.setAutoRaise(True)
        self.error_details = QPlainTextEdit()
        self.error_details.setReadOnly(True)
        self.error_details.setMaximumHeight(160)
        self.error_details.setVisible(False)
        self.error_details_button.toggled.connect(self._toggle_details)
        self.error_box = QWidget()
        eb = QVBoxLayout(self.error_box)
        eb.setContentsMargins(0, 0, 0, 0)
        eb.addWidget(self.error_label)
        eb.addWidget(self.error_details_button)
        eb.addWidget(self.error_details)
        self.error_box.setVisible(False)

        self.log_view = QPlainTextEdit()
        self.log_view.setObjectName("log_view")
        self.log_view.setReadOnly(True)
        self.log_view.setPlaceholderText("The log of the run appears here.")
        self.log_view.setMaximumBlockCount(5000)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(8, 8, 8, 8)
        ll.addWidget(self.title_label)
        ll.addWidget(self.summary_label)
        ll.addWidget(self.status_label)
        ll.addWidget(scroll, 4)
        ll.addWidget(self.saved_label)
        ll.addWidget(self.issues_label)
        ll.addLayout(buttons)
        ll.addLayout(progress_line)
        ll.addWidget(self.error_box)
        # "Check against the truth" (tomoguide.pages.truth_panel), for projects on simulated data: folded
        self.truth_toggle: QToolButton | None = None
        self.truth_panel: QWidget | None = self._make_truth_panel()
        if self.truth_panel is not None:
            self.truth_toggle = QToolButton()
            self.truth_toggle.setObjectName("truth_toggle")
            self.truth_toggle.setText("Check against the truth")
            self.truth_toggle.setToolTip("The simulated data's truth is known: how far this step's results are "
                                         "from it")
            self.truth_toggle.setCheckable(True)
            self.truth_toggle.setChecked(False)
            self.truth_toggle.setArrowType(Qt.ArrowType.RightArrow)
            self.truth_toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self.truth_toggle.setAutoRaise(True)
            self.truth_toggle.toggled.connect(self._toggle_truth)
            self.truth_panel.setVisible(False)
            ll.addWidget(self.truth_toggle)
            ll.addWidget(self.truth_panel)
        log_title = QLabel("<b>Log</b>")
        ll.addWidget(log_title)
        ll.addWidget(self.log_view, 1)

        self.preview: Preview = make_preview(self.project, self.step_id)
        # a preview that edits the step's parameters (the exclusion page's marks) keeps the form and status in step
        marks_changed = getattr(self.preview, "marks_changed", None)
        if marks_changed is not None:
            marks_changed.connect(self._on_preview_changed_params)
        self.help_view = QTextBrowser()
        self.help_view.setObjectName("help_view")
        self.help_view.setOpenExternalLinks(True)
        self.show_field_help(None)
        right = QSplitter(Qt.Orientation.Vertical)
        preview_box = QWidget()
        pl = QVBoxLayout(preview_box)
        pl.setContentsMargins(8, 8, 8, 0)
        pl.addWidget(QLabel("<b>Preview</b>"))
        pl.addWidget(self.preview, 1)
        right.addWidget(preview_box)
        right.addWidget(self.help_view)
        # the preview gets most of the height; the help shows "What to check" first, so a short panel is enough
        right.setStretchFactor(0, 4)
        right.setStretchFactor(1, 1)
        right.setSizes([590, 190])
        self._fit_form()

        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(left)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([520, 560])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)

    def _make_truth_panel(self) -> QWidget | None:
        """The truth panel of this step, when the project's data have a truth folder and the panel exists."""
        if truth_folder(self.project) is None:
            return None
        from tomoguide.pages.truth_panel import TruthPanel

        panel = TruthPanel(self.project, self.step_id)
        panel.setObjectName("truth_panel")
        return panel

    def _toggle_truth(self, shown: bool) -> None:
        if self.truth_panel is None or self.truth_toggle is None:
            return
        self.truth_panel.setVisible(shown)
        self.truth_toggle.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)
        if shown:
            self._refresh_truth()

    def _refresh_truth(self) -> None:
        panel = self.truth_panel
        if panel is not None and panel.isVisible() and hasattr(panel, "refresh"):
            try:
                panel.refresh()
            except Exception as exc:  # noqa: BLE001 - a scoring problem must not break the page
                self.saved_label.setText(f"<span style='color:{ERROR_COLOUR}'>The truth panel failed: "
                                         f"{html.escape(f'{type(exc).__name__}: {exc}')}</span>")

    def _fit_form(self) -> None:
        """Let the form take the height it needs (it scrolls beyond 60 % of the page); the log gets the rest."""
        self.form.adjustSize()
        self.form_scroll.setMaximumHeight(self.form.sizeHint().height() + 2 * self.form_scroll.frameWidth() + 24)

    # -- state -----------------------------------------------------------------------------------------------
    def is_running(self) -> bool:
        return self.worker is not None

    def _on_preview_changed_params(self) -> None:
        if self.is_running():
            return
        self.form.set_values(self.project.data.steps[self.step_id].params)
        self._update_status()
        self.update_issues()
        self._update_buttons()
        self.status_changed.emit(self.step_id)

    def refresh(self) -> None:
        """Re-read the step's state from the project: values, status, checks, last error, log, preview."""
        st = self.project.data.steps[self.step_id]
        if not self.is_running():
            self.form.set_values(st.params)
            self.log_view.setPlainText("\n".join(line for line in st.log if "Traceback" not in line))
            if st.status == "failed" and st.error:
                tb = next((line for line in reversed(st.log) if "Traceback" in line), "")
                self.show_error(f"The last run failed: {st.error}", tb)
            else:
                self.error_box.setVisible(False)
            if st.status == "done" and self.last_outcome is None:
                self.progress_bar.setRange(0, 1000)
                self.progress_bar.setValue(1000)
                last = st.log[-1] if st.log else ""
                self.progress_label.setText(f"Last run finished {st.finished or ''}" + (f": {last}" if last else "."))
            elif self.last_outcome is None:
                self.progress_bar.setValue(0)
                self.progress_label.setText("")
        self._update_status()
        self.update_issues()
        self.preview.refresh()
        self._refresh_truth()
        self._update_buttons()

    def _update_status(self) -> None:
        st = self.project.data.steps[self.step_id]
        status = "running" if self.is_running() else st.status
        colour = STATUS_COLOURS.get(status, "#757575")
        text = f"Status: <b style='color:{colour}'>{status}</b>"
        if status == "done" and st.finished:
            text += f" (finished {html.escape(st.finished)})"
        if status == "stale" and st.stale_reason:
            text += f" — {html.escape(st.stale_reason)}; run it again"
        if status == "interrupted" and st.error:
            text += f" — {html.escape(st.error)}"
        if self.project.readonly:
            text += " — <i>opened read-only (another program holds the project)</i>"
        self.status_label.setText(text)

    def update_issues(self) -> list[Issue]:
        """Check the run's inputs and parameters now (as a run would) and show the issues above Run."""
        try:
            self.last_issues = StepRun(self.project, self.step_id).check_issues()
        except Exception as exc:  # noqa: BLE001 - a check that crashes must not break the page
            self.last_issues = [Issue("error", f"the checks failed: {type(exc).__name__}: {exc}")]
        self.form.set_check_issues(self.last_issues)
        if self.last_issues:
            self.issues_label.setText(issues_html(self.last_issues))
        else:
            ready = ("✔ Done and up to date; Run computes it again." if self.project.is_up_to_date(self.step_id)
                     else "✔ Ready to run.")
            self.issues_label.setText(f"<span style='color:{STATUS_COLOURS['done']}'>{ready}</span>")
        self._update_buttons()
        return self.last_issues

    def _update_buttons(self) -> None:
        running = self.is_running()
        blocked = any(i.level == "error" for i in self.last_issues)
        self.run_button.setEnabled(not running and not blocked and not self.project.readonly)
        self.run_button.setToolTip("Fix the errors listed above first" if blocked else "Run this step (Ctrl+R)")
        self.cancel_button.setEnabled(running)
        self.form.setEnabled(not running and not self.project.readonly)

    # -- help ------------------------------------------------------------------------------------------------
    def show_field_help(self, name: str | None) -> None:
        """Show the step's help — "What to check" first, where it is seen without scrolling — preceded by the help
        of field ``name`` (the focused field)."""
        parts = [f"<h3>{html.escape(self.step_cls.title, quote=False)}</h3>", ordered_help_html(self.step_cls.help)]
        if name is not None:
            m = self.form.meta[name]
            unit = "" if m.unit in ("", "1") else f" ({html.escape(m.unit)})"
            default = "empty" if m.default in (None, "") else html.escape(format_quantity(m.default, m.unit))
            extra = f"Default: {default}."
            if m.empty_means:
                extra += f" Empty means: {html.escape(m.empty_means)}."
            if m.suggest != (None, None):
                lo, hi = m.suggest
                span = f"{'' if lo is None else f'{lo:g}'} – {'' if hi is None else f'{hi:g}'}"
                extra += f" Usual range: {html.escape(format_quantity(span, m.unit) if hi is not None else span)}."
            if m.has_tutorial:
                shown = "empty" if m.tutorial in (None, "") else format_quantity(m.tutorial, m.unit)
                extra += f" Tutorial: {html.escape(shown)}."
                if m.tutorial_note:
                    extra += f" {html.escape(m.tutorial_note)}"
            chosen = self.form.deliberate.get(name)
            if isinstance(chosen, dict) and chosen.get("why"):
                extra += f" This project's preset sets {html.escape(str(chosen.get('value')))}: " \
                         f"{html.escape(str(chosen['why']))}."
            parts.insert(0, f"<div style='background:#e3f2fd;padding:6px'><b>{html.escape(m.title)}{unit}</b>"
                            f"<p>{html.escape(m.help)}</p><p><i>{extra}</i></p></div>")
        self.help_view.setHtml("".join(parts))
        self.help_view.verticalScrollBar().setValue(0)
        self.focused_field = name

    # -- parameters ------------------------------------------------------------------------------------------
    def _on_committed(self, name: str, value: Any) -> None:
        if self.is_running() or self.project.readonly:
            return
        title = self.form.meta[name].title
        try:
            stale = set_params_checked(self.project, {self.step_id: {name: value}})
        except (ValidationError, ParamsRefused) as exc:  # refused: show why, keep (and show) the saved value
            self.form.set_values(self.project.data.steps[self.step_id].params)
            reason = "; ".join(i.message for i in exc.issues) if isinstance(exc, ParamsRefused) else str(exc)
            self.saved_label.setText(f"<span style='color:{ERROR_COLOUR}'>Not saved: {html.escape(title)} — "
                                     f"{html.escape(reason)}</span>")
            self.update_issues()
            return
        text = f"Saved: {html.escape(title)}."
        if stale:
            titles = ", ".join(registry.get(s).title for s in stale)
            text += (f" <span style='color:{STATUS_COLOURS['stale']}'>Now stale (run again): "
                     f"{html.escape(titles)}.</span>")
        self.saved_label.setText(text)
        self.last_stale = stale
        self.update_issues()
        self._update_status()
        self.preview.refresh()
        self.status_changed.emit(self.step_id)

    def _on_refused(self, name: str, reason: str) -> None:
        title = self.form.meta[name].title
        self.saved_label.setText(f"<span style='color:{ERROR_COLOUR}'>Not saved: {html.escape(title)} — "
                                 f"{html.escape(reason)}.</span>")

    # -- running ---------------------------------------------------------------------------------------------
    def confirm_rerun(self, at_risk: list[str]) -> bool:
        """Ask before a run that may make the finished later steps ``at_risk`` stale (tests replace
        QMessageBox.question)."""
        titles = "\n".join(f"  • {registry.get(s).title}" for s in at_risk)
        answer = QMessageBox.question(
            self, "Run this step again?",
            f"{len(at_risk)} later step{'s are' if len(at_risk) > 1 else ' is'} done with the present results of "
            f"“{self.step_cls.title}”:\n\n{titles}\n\n"
            f"If this run gives the same results, they stay done. If its results differ, they become stale and "
            f"must be run again (their present results are kept, and come back if you return to these "
            f"settings).\n\nRun “{self.step_cls.title}” again?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def run_step(self) -> bool:
        """Check, ask when finished later steps could become stale, then start the run in a worker thread; False
        (with the reasons shown) when refused or not confirmed."""
        if self.is_running() or self.project.readonly:
            return False
        issues = self.update_issues()
        if any(i.level == "error" for i in issues):
            self.progress_label.setText("The run was refused: fix the errors listed above.")
            return False
        at_risk = self.project.steps_at_risk(self.step_id)
        if at_risk and not self.confirm_rerun(at_risk):
            self.progress_label.setText("Not run: the later steps stay as they are.")
            return False
        self.at_risk = at_risk
        self.error_box.setVisible(False)
        self.form.set_values(self.project.data.steps[self.step_id].params)  # drop refused text: runs use saved values
        self.log_view.clear()
        self.progress_history = []
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_label.setText("Starting…")
        self.eta_label.setText("")
        self.worker = StepWorker(self.project, self.step_id)
        self.worker.progress.connect(self._on_progress)
        self.worker.log.connect(self.log_view.appendPlainText)
        self.worker.started_run.connect(self._on_started)
        self.worker.failed.connect(self._on_failed)
        self.worker.refused.connect(self._on_refused_run)
        self.worker.cancelled.connect(self._on_cancelled)
        self.worker.succeeded.connect(self._on_succeeded)
        self.worker.finished_run.connect(self._on_finished)
        self._run_started = time.monotonic()
        self._update_buttons()
        self.running_changed.emit(True)
        self.worker.start()
        return True

    def cancel_run(self) -> None:
        """Ask the running step to stop; the project is restored to its state before the run."""
        if self.worker is not None:
            self.worker.cancel()
            self.cancel_button.setEnabled(False)
            self.progress_label.setText("Cancelling…")

    def wait_for_run(self, timeout_s: float = 30.0) -> bool:
        """Wait (processing events) until the run has ended; True when it did within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while self.worker is not None and time.monotonic() < deadline:
            self.worker.wait(QDeadlineTimer(50))
            QCoreApplication.processEvents()
        return self.worker is None

    def _on_started(self) -> None:
        self.issues_label.setText("Running…")
        self._update_status()
        self.status_changed.emit(self.step_id)

    def _on_progress(self, fraction: float | None, message: str) -> None:
        self.progress_history.append((fraction, message))
        if fraction is None:
            self.progress_bar.setRange(0, 0)
        else:
            self.progress_bar.setRange(0, 1000)
            self.progress_bar.setValue(int(1000 * max(0.0, min(1.0, fraction))))
        self.progress_label.setText(message)
        self.eta_label.setText(eta_text(fraction, time.monotonic() - self._run_started))

    def show_error(self, message: str, traceback_text: str) -> None:
        self.error_label.setText(message)
        self.error_details.setPlainText(traceback_text)
        self.error_details_button.setVisible(bool(traceback_text))
        self.error_details_button.setChecked(False)
        self.error_box.setVisible(True)

    def _toggle_details(self, shown: bool) -> None:
        self.error_details.setVisible(shown)
        self.error_details_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def _on_failed(self, message: str, traceback_text: str) -> None:
        self.progress_label.setText("Failed.")
        self.eta_label.setText("")
        # a dead end ("0 particles: lower the threshold") is the step's message, not a bug: no traceback to unfold
        self.show_error(message, traceback_text if "Traceback" in traceback_text else "")

    def _on_refused_run(self, issues: list[Issue]) -> None:
        self.progress_label.setText("The run was refused:")
        self.issues_label.setText(issues_html(issues))

    def _on_cancelled(self) -> None:
        self.progress_label.setText("Cancelled: the project is as it was before the run.")
        self.eta_label.setText("")
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)

    def _on_succeeded(self, state: Any) -> None:
        elapsed = time.monotonic() - self._run_started
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(1000)
        self.progress_label.setText(f"Done in {elapsed:.1f} s." + (f" {state.log[-1]}" if state.log else ""))
        self.eta_label.setText("")
        if self.at_risk:
            stale = [s for s in self.at_risk if not self.project.is_up_to_date(s)]
            self.last_stale = stale
            if stale:
                titles = ", ".join(registry.get(s).title for s in stale)
                self.saved_label.setText(f"<span style='color:{STATUS_COLOURS['stale']}'>The results changed: now "
                                         f"stale (run again): {html.escape(titles)}.</span>")
            else:
                self.saved_label.setText(f"<span style='color:{STATUS_COLOURS['done']}'>Identical results: the "
                                         f"{len(self.at_risk)} later step(s) stay done.</span>")
            self.at_risk = []

    def _on_finished(self, outcome: str) -> None:
        worker = self.worker
        if worker is not None:
            worker.wait()
            worker.deleteLater()
        self.worker = None
        self.last_outcome = outcome
        log_text = self.log_view.toPlainText()
        self.refresh()
        if outcome != "done":  # keep what the run logged
            self.log_view.setPlainText(log_text)
        self.running_changed.emit(False)
        self.status_changed.emit(self.step_id)
