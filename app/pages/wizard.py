"""The wizard's main window: the step list (with each step's status), the step pages, Back/Next.

* The step list shows every registered step with a status icon and colour (pending, running, done, stale,
  failed, interrupted, skipped); any step can be opened from it. A step whose results come from elsewhere (an
  entry point: tilt series, alignment or CTF read from files) carries a badge ("· from files", "· imported"); a
  step the chosen entry does not need is greyed "· not needed" and Next passes it.
* Next is enabled only when the current step is done and up to date (or optional and skipped). After the last
  step comes the summary page (:class:`~tomoguide.pages.summary_page.SummaryPage`: the map, its resolution and
  what it means, its files, the 3D viewers); a finished project opens on it.
* Step titles are shown whole: the list is as wide as its longest title needs (no "…").
* Keys: Alt+Left / Alt+Right (Back / Next), Ctrl+R (Run), Esc (Cancel the run), Ctrl+W (close).
* The window's size and position are kept in the settings file (:mod:`tomoguide.pages.settings`).
* While a step runs, navigation is locked (the run owns the project). Closing the window then asks; "Yes"
  cancels the run, waits for the runner to restore the step's previous state and save, and releases the lock.
* Project > Settings… opens :class:`~tomoguide.pages.settings.ProjectSettingsDialog` (runs kept, disk budget).
* :func:`open_project_interactive` opens a project as a person would: a lock left by a program that cannot be
  checked from here is offered for removal with what is known about its owner, a damaged project file offers the
  backup, and data that moved are asked for once (and checked to be the same data).
"""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QByteArray, QSize, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QColor, QIcon, QKeySequence, QPainter, QPen, QPixmap, QShortcut
from PySide6.QtWidgets import (
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMainWindow,
    QMessageBox,
    QPushButton,
    QSplitter,
    QStackedWidget,
    QVBoxLayout,
    QWidget,
)

from tomoguide.pages.settings import ProjectSettingsDialog, qsettings
from tomoguide.pages.step_page import STATUS_COLOURS, StepPage
from tomoguide.pages.summary_page import TITLE as SUMMARY_TITLE
from tomoguide.pages.summary_page import SummaryPage
from tomoguide.project import BACKUP_FILE, Project, ProjectError, ProjectLockedError
from tomoguide.steps import registry

DEFAULT_SIZE = QSize(1320, 860)
STATUS_SYMBOLS = {"pending": "", "running": "▶", "done": "✓", "stale": "!", "failed": "✕", "interrupted": "‖",
                  "skipped": "–"}


def status_icon(status: str, size: int = 20) -> QIcon:
    """A filled circle in the status colour with a symbol (drawn, no icon files needed)."""
    pix = QPixmap(size, size)
    pix.fill(Qt.GlobalColor.transparent)
    p = QPainter(pix)
    p.setRenderHint(QPainter.RenderHint.Antialiasing)
    colour = QColor(STATUS_COLOURS.get(status, "#757575"))
    if status == "pending":
        p.setPen(QPen(colour, 2))
        p.setBrush(Qt.BrushStyle.NoBrush)
    else:
        p.setPen(Qt.PenStyle.NoPen)
        p.setBrush(colour)
    p.drawEllipse(2, 2, size - 4, size - 4)
    symbol = STATUS_SYMBOLS.get(status, "")
    if symbol:
        p.setPen(QColor("white"))
        font = p.font()
        font.setBold(True)
        font.setPixelSize(int(size * 0.6))
        p.setFont(font)
        p.drawText(pix.rect(), Qt.AlignmentFlag.AlignCenter, symbol)
    p.end()
    return QIcon(pix)


class WizardWindow(QMainWindow):
    """The wizard on an open project (the window owns it and closes it when the window closes)."""

    closed = Signal()
    start_screen_requested = Signal()

    def __init__(self, project: Project, *, start_step: str | None = None, remember_geometry: bool = True,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.remember_geometry = remember_geometry
        self.steps = list(registry.workflow())
        self.pages: dict[str, StepPage] = {}
        self.setWindowTitle(f"tomoguide — {project.data.name or project.dir.name}")

        self.step_list = QListWidget()
        self.step_list.setObjectName("step_list")
        self.step_list.setIconSize(QSize(20, 20))
        self.step_list.setSpacing(2)
        # whole titles: no wrapping (QListView lays wrapped items out badly) and no "…"; the list is made as wide
        # as the longest title needs (see step_list_width)
        self.step_list.setWordWrap(False)
        self.step_list.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.step_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for i, step_cls in enumerate(self.steps):
            item = QListWidgetItem(f"{i + 1}. {step_cls.title}")
            item.setToolTip(step_cls.summary)
            self.step_list.addItem(item)
        self.summary_index = len(self.steps)
        summary_item = QListWidgetItem(f"→ {SUMMARY_TITLE}")
        summary_item.setToolTip("The end of the workflow: the final map, its resolution and what it means, its "
                                "files, and how to open it in a 3D viewer")
        self.step_list.addItem(summary_item)
        self.summary_page: SummaryPage | None = None
        width = self.step_list_width()
        self.step_list.setMinimumWidth(width)
        self.step_list.setMaximumWidth(width + 80)
        self.step_list.currentRowChanged.connect(self._on_row_changed)
        self.stack = QStackedWidget()
        for _ in range(len(self.steps) + 1):
            self.stack.addWidget(QWidget())  # placeholders: pages are built when first shown (the summary last)

        self.back_button = QPushButton("◀ Back")
        self.back_button.setToolTip("Previous step (Alt+Left)")
        self.back_button.clicked.connect(self.go_back)
        self.next_button = QPushButton("Next ▶")
        self.next_button.setToolTip("Next step (Alt+Right); enabled when this step is done")
        self.next_button.clicked.connect(self.go_next)
        self.nav_hint = QLabel("")
        self.nav_hint.setObjectName("nav_hint")
        nav = QHBoxLayout()
        nav.addWidget(self.back_button)
        nav.addWidget(self.nav_hint, 1, Qt.AlignmentFlag.AlignCenter)
        nav.addWidget(self.next_button)

        side = QWidget()
        sl = QVBoxLayout(side)
        sl.setContentsMargins(6, 6, 0, 6)
        project_label = QLabel(f"<b>{project.data.name or project.dir.name}</b><br>"
                               f"<small>{project.dir}</small>")
        project_label.setWordWrap(True)
        project_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        sl.addWidget(project_label)
        sl.addWidget(self.step_list, 1)
        main = QWidget()
        ml = QVBoxLayout(main)
        ml.setContentsMargins(0, 0, 6, 6)
        ml.addWidget(self.stack, 1)
        ml.addLayout(nav)
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(side)
        split.addWidget(main)
        split.setStretchFactor(1, 1)
        split.setSizes([width + 12, max(600, DEFAULT_SIZE.width() - width - 12)])
        self.setCentralWidget(split)

        menu = self.menuBar().addMenu("&Project")
        settings = QAction("Settings…", self)
        settings.triggered.connect(self.show_settings)
        menu.addAction(settings)
        start = QAction("Start screen…", self)
        start.triggered.connect(self._to_start_screen)
        menu.addAction(start)
        close = QAction("Close", self)
        close.setShortcut(QKeySequence("Ctrl+W"))
        close.triggered.connect(self.close)
        menu.addAction(close)
        self.addAction(close)

        for keys, slot in (("Alt+Left", self.go_back), ("Alt+Right", self.go_next),
                           ("Ctrl+R", self.run_current), ("Esc", self.cancel_current)):
            sc = QShortcut(QKeySequence(keys), self)
            sc.setContext(Qt.ShortcutContext.WindowShortcut)
            sc.activated.connect(slot)

        self.resize(DEFAULT_SIZE)
        if remember_geometry:
            geometry = qsettings().value("wizard/geometry")
            if isinstance(geometry, QByteArray) and not geometry.isEmpty():
                self.restoreGeometry(geometry)
        self.statusBar().showMessage("; ".join(project.notes) if project.notes
                                     else f"Project saved in {project.dir / 'project.json'}")
        self.refresh_statuses()
        ids = [s.id for s in self.steps]
        first = start_step if start_step in ids else project.first_not_done()
        # a finished project opens on its summary
        self.go_to(ids.index(first) if first in ids else self.summary_index)

    def step_list_width(self) -> int:
        """The width the step list needs to show every title whole (text, icon, margins, scroll bar)."""
        fm = self.step_list.fontMetrics()
        text = max(fm.horizontalAdvance(self.step_list.item(i).text()) for i in range(self.step_list.count()))
        icon = self.step_list.iconSize().width()
        scroll = self.step_list.verticalScrollBar().sizeHint().width()
        return text + icon + scroll + 2 * self.step_list.frameWidth() + 4 * self.step_list.spacing() + 24

    # -- pages -----------------------------------------------------------------------------------------------
    def page(self, index_or_id: int | str) -> StepPage:
        """The page of a step (built on first use)."""
        index = index_or_id if isinstance(index_or_id, int) else [s.id for s in self.steps].index(index_or_id)
        step_cls = self.steps[index]
        if step_cls.id not in self.pages:
            page = StepPage(self.project, step_cls)
            page.status_changed.connect(lambda _id: self.refresh_statuses())
            page.running_changed.connect(self._on_running_changed)
            old = self.stack.widget(index)
            self.stack.insertWidget(index, page)
            self.stack.removeWidget(old)
            old.deleteLater()
            self.pages[step_cls.id] = page
        return self.pages[step_cls.id]

    def current_index(self) -> int:
        return self.step_list.currentRow()

    def current_page(self) -> StepPage:
        """The current step's page (the last step's page while the summary is shown)."""
        return self.page(min(self.current_index(), len(self.steps) - 1))

    def show_summary(self) -> SummaryPage:
        """Show the summary page (built on first use, refreshed every time)."""
        self.go_to(self.summary_index)
        assert self.summary_page is not None
        return self.summary_page

    def _summary(self) -> SummaryPage:
        if self.summary_page is None:
            page = SummaryPage(self.project)
            old = self.stack.widget(self.summary_index)
            self.stack.insertWidget(self.summary_index, page)
            self.stack.removeWidget(old)
            old.deleteLater()
            self.summary_page = page
        return self.summary_page

    def running_page(self) -> StepPage | None:
        return next((p for p in self.pages.values() if p.is_running()), None)

    def go_to(self, index: int) -> None:
        if self.running_page() is not None or not 0 <= index <= self.summary_index:
            return
        if self.step_list.currentRow() != index:
            self.step_list.setCurrentRow(index)
        else:
            self._on_row_changed(index)

    def go_back(self) -> None:
        if self.back_button.isEnabled():
            self.go_to(self.current_index() - 1)

    def go_next(self) -> None:
        if self.next_button.isEnabled():
            self.go_to(self.current_index() + 1)

    def run_current(self) -> None:
        if self.current_index() < len(self.steps):
            self.current_page().run_step()

    def cancel_current(self) -> None:
        page = self.running_page()
        if page is not None:
            page.cancel_run()

    def _on_row_changed(self, index: int) -> None:
        if index < 0:
            return
        if index == self.summary_index:
            summary = self._summary()
            summary.refresh()
            self.stack.setCurrentIndex(index)
            self._update_nav()
            return
        page = self.page(index)
        page.refresh()
        self.stack.setCurrentIndex(index)
        self._update_nav()

    # -- status ----------------------------------------------------------------------------------------------
    def step_status(self, step_id: str) -> str:
        page = self.pages.get(step_id)
        if page is not None and page.is_running():
            return "running"
        st = self.project.data.steps[step_id]
        if st.status == "done" and not self.project.is_up_to_date(step_id):
            return "stale"
        return st.status

    def can_go_next(self) -> bool:
        index = self.current_index()
        if index < 0 or index >= len(self.steps) or self.running_page() is not None:
            return False
        step_cls = self.steps[index]
        if self.project.is_up_to_date(step_cls.id) or not self.project.is_needed(step_cls.id):
            return True
        return bool(step_cls.optional) and self.project.data.steps[step_cls.id].status == "skipped"

    def step_badge(self, step_id: str) -> str:
        """The badge after a step's title: "not needed", "from files", "imported" or "" (computed)."""
        if not self.project.is_needed(step_id):
            return "not needed"
        return self.project.origin(step_id) or ""

    def refresh_statuses(self) -> None:
        widened = False
        for i, step_cls in enumerate(self.steps):
            status = self.step_status(step_cls.id)
            item = self.step_list.item(i)
            badge = self.step_badge(step_cls.id)
            text = f"{i + 1}. {step_cls.title}" + (f"  · {badge}" if badge else "")
            if item.text() != text:
                item.setText(text)
                widened = True
            item.setIcon(status_icon(status))
            item.setForeground(QColor("#212121" if status != "pending" and badge != "not needed" else "#616161"))
            st = self.project.data.steps[step_cls.id]
            tip = f"{step_cls.summary}\nStatus: {status}"
            if status == "stale" and st.stale_reason:
                tip += f" ({st.stale_reason})"
            if status == "failed" and st.error:
                tip += f": {st.error}"
            if badge == "not needed":
                tip += "\nNot needed: the project enters the workflow after this step (see the start screen)."
            elif badge:
                tip += f"\nResults {badge}: this step reads them instead of computing them."
            item.setToolTip(tip)
            item.setData(Qt.ItemDataRole.UserRole, status)
        if widened:
            self.step_list.setMinimumWidth(max(self.step_list.minimumWidth(), self.step_list_width()))
        done = self.project.is_up_to_date(self.steps[-1].id)
        summary_item = self.step_list.item(self.summary_index)
        summary_item.setIcon(status_icon("done" if done else "pending"))
        summary_item.setForeground(QColor("#212121" if done else "#616161"))
        if self.summary_page is not None and self.current_index() == self.summary_index:
            self.summary_page.refresh()
        self._update_nav()

    def _update_nav(self) -> None:
        running = self.running_page() is not None
        index = self.current_index()
        self.back_button.setEnabled(not running and index > 0)
        self.next_button.setEnabled(self.can_go_next())
        self.step_list.setEnabled(not running)
        if running:
            self.nav_hint.setText("A step is running: Esc cancels it.")
        elif index == self.summary_index:
            self.nav_hint.setText("The end of the workflow." if self.project.is_up_to_date(self.steps[-1].id)
                                  else "The workflow is not finished yet.")
        elif index < len(self.steps) and not self.next_button.isEnabled():
            self.nav_hint.setText("Run this step to go on.")
        elif index == len(self.steps) - 1 and self.project.is_up_to_date(self.steps[index].id):
            self.nav_hint.setText("All steps are done: Next shows the summary.")
        else:
            self.nav_hint.setText("")

    def _on_running_changed(self, running: bool) -> None:
        self.refresh_statuses()
        self.statusBar().showMessage("Running…" if running else f"Project saved in {self.project.dir / 'project.json'}")

    def show_settings(self) -> ProjectSettingsDialog:
        """The project's settings (runs kept, disk budget); non-modal, returned for tests."""
        dialog = ProjectSettingsDialog(self.project, self)
        dialog.accepted.connect(self.refresh_statuses)
        dialog.open()
        return dialog

    # -- closing ---------------------------------------------------------------------------------------------
    def _to_start_screen(self) -> None:
        self.start_screen_requested.emit()  # show it first, so that closing this window does not quit
        self.close()

    def confirm_close_while_running(self) -> bool:
        """Ask whether to cancel the running step and close (tests replace QMessageBox.question)."""
        answer = QMessageBox.question(
            self, "A step is running",
            "A step is still running. Cancel it and close the project?\n\n"
            "The step goes back to its state before this run; nothing else changes.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No, QMessageBox.StandardButton.No)
        return answer == QMessageBox.StandardButton.Yes

    def closeEvent(self, event: QCloseEvent) -> None:  # noqa: N802 - Qt API
        page = self.running_page()
        if page is not None:
            if not self.confirm_close_while_running():
                event.ignore()
                return
            page.cancel_run()
            while not page.wait_for_run(timeout_s=5.0):
                self.statusBar().showMessage("Waiting for the step to stop…")
        if self.remember_geometry:
            settings = qsettings()
            settings.setValue("wizard/geometry", self.saveGeometry())
            settings.sync()
        self.project.close()
        event.accept()
        self.closed.emit()
        super().closeEvent(event)


# ---------------------------------------------------------------------------------------------------------------
# opening a project as a person would
# ---------------------------------------------------------------------------------------------------------------


def ask(parent: QWidget | None, title: str, text: str) -> bool:
    """A Yes/No question (tests replace QMessageBox.question)."""
    answer = QMessageBox.question(parent, title, text,
                                  QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                  QMessageBox.StandardButton.No)
    return answer == QMessageBox.StandardButton.Yes


def ask_folder(parent: QWidget | None, title: str, start: str) -> str:
    """A folder chosen by the user ("" when cancelled; tests replace QFileDialog.getExistingDirectory)."""
    return QFileDialog.getExistingDirectory(parent, title, start)


def open_project_interactive(project_dir: Path, parent: QWidget | None = None) -> Project | None:
    """Open a project, asking what only the user can decide; None (after saying why) when it stays closed.

    * Locked by a program that cannot be checked from here (another machine, or not tomoguide): the owner is
      named and the lock offered for removal ("Break the lock?"). A lock held by a running tomoguide on this
      machine is only reported.
    * A damaged project file: the backup (the previous saved state) is offered.
    * Data not where they were (moved): the new folder is asked for once and checked to hold the same data
      (names, sizes and hashes of the mdocs); the project remembers it."""
    project: Project | None = None
    use_backup = break_lock = False
    for _ in range(4):
        try:
            project = Project.open(project_dir, use_backup=use_backup, break_lock=break_lock)
            break
        except ProjectLockedError as exc:
            if exc.can_break and not break_lock and ask(
                    parent, "Project locked",
                    f"{exc}\n\nBreak the lock? Only do this when no tomoguide is working on this project any "
                    f"more (the program named above has stopped)."):
                break_lock = True
                continue
            QMessageBox.warning(parent, "Project in use", str(exc))
            return None
        except ProjectError as exc:
            if not use_backup and (Path(project_dir) / BACKUP_FILE).exists() and ask(
                    parent, "Cannot open the project", f"{exc}\n\nOpen the backup (the previous saved state)?"):
                use_backup = True
                continue
            QMessageBox.warning(parent, "Cannot open the project", str(exc))
            return None
    if project is None:
        return None
    while project.missing_data:
        key = project.missing_data[0]
        old = project.data.data_paths[key].abs
        folder = ask_folder(parent, f"The data moved: where is {Path(old).name} now? (was {old})",
                            str(Path(old).parent if Path(old).parent.exists() else project.dir))
        if not folder:
            QMessageBox.information(parent, "Data not found",
                                    f"{old}: not there any more. The project opens; the steps that read the data "
                                    f"cannot run until you tell tomoguide where they are (open the project again, "
                                    f"or `tomoguide relocate {project.dir} --data NEW_FOLDER`).")
            break
        try:
            project.relocate(folder, key=key)
        except ProjectError as exc:
            QMessageBox.warning(parent, "Not the same data", str(exc))
    return project
