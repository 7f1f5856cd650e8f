"""The wizard's main window: the step list (with each step's status), the step pages, Back/Next.

* The step list shows every registered step with a status icon and colour (pending, running, done, stale,
  failed, interrupted, skipped); any step can be opened from it.
* Next is enabled only when the current step is done and up to date (or optional and skipped).
* Keys: Alt+Left / Alt+Right (Back / Next), Ctrl+R (Run), Esc (Cancel the run), Ctrl+W (close).
* The window's size and position are kept in the settings file (:mod:`tomoguide.pages.settings`).
* While a step runs, navigation is locked (the run owns the project). Closing the window then asks; "Yes"
  cancels the run, waits for the runner to restore the step's previous state and save, and releases the lock.
"""

from __future__ import annotations

from PySide6.QtCore import QByteArray, QSize, Qt, Signal
from PySide6.QtGui import QAction, QCloseEvent, QColor, QIcon, QKeySequence, QPainter, QPen, QPixmap, QShortcut
from PySide6.QtWidgets import (
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

from tomoguide.pages.settings import qsettings
from tomoguide.pages.step_page import STATUS_COLOURS, StepPage
from tomoguide.project import Project
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
        self.step_list.setMinimumWidth(170)
        self.step_list.setMaximumWidth(320)
        self.step_list.setSpacing(2)
        # long step titles wrap instead of hiding behind a horizontal scroll bar
        self.step_list.setWordWrap(True)
        self.step_list.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        for i, step_cls in enumerate(self.steps):
            item = QListWidgetItem(f"{i + 1}. {step_cls.title}")
            item.setToolTip(step_cls.summary)
            self.step_list.addItem(item)
        self.step_list.currentRowChanged.connect(self._on_row_changed)
        self.stack = QStackedWidget()
        for _ in self.steps:
            self.stack.addWidget(QWidget())  # placeholders: pages are built when first shown

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
        split.setSizes([250, 1070])
        self.setCentralWidget(split)

        menu = self.menuBar().addMenu("&Project")
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
        self.statusBar().showMessage(f"Project saved in {project.dir / 'project.json'}")
        self.refresh_statuses()
        ids = [s.id for s in self.steps]
        first = start_step if start_step in ids else project.first_not_done()
        self.go_to(ids.index(first) if first in ids else len(ids) - 1)

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
        return self.page(self.current_index())

    def running_page(self) -> StepPage | None:
        return next((p for p in self.pages.values() if p.is_running()), None)

    def go_to(self, index: int) -> None:
        if self.running_page() is not None or not 0 <= index < len(self.steps):
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
        self.current_page().run_step()

    def cancel_current(self) -> None:
        page = self.running_page()
        if page is not None:
            page.cancel_run()

    def _on_row_changed(self, index: int) -> None:
        if index < 0:
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
        if index < 0 or index >= len(self.steps) - 1 or self.running_page() is not None:
            return False
        step_cls = self.steps[index]
        if self.project.is_up_to_date(step_cls.id):
            return True
        return bool(step_cls.optional) and self.project.data.steps[step_cls.id].status == "skipped"

    def refresh_statuses(self) -> None:
        for i, step_cls in enumerate(self.steps):
            status = self.step_status(step_cls.id)
            item = self.step_list.item(i)
            item.setIcon(status_icon(status))
            item.setForeground(QColor("#212121" if status != "pending" else "#616161"))
            st = self.project.data.steps[step_cls.id]
            tip = f"{step_cls.summary}\nStatus: {status}"
            if status == "stale" and st.stale_reason:
                tip += f" ({st.stale_reason})"
            if status == "failed" and st.error:
                tip += f": {st.error}"
            item.setToolTip(tip)
            item.setData(Qt.ItemDataRole.UserRole, status)
        self._update_nav()

    def _update_nav(self) -> None:
        running = self.running_page() is not None
        index = self.current_index()
        self.back_button.setEnabled(not running and index > 0)
        self.next_button.setEnabled(self.can_go_next())
        self.step_list.setEnabled(not running)
        if running:
            self.nav_hint.setText("A step is running: Esc cancels it.")
        elif index < len(self.steps) - 1 and not self.next_button.isEnabled():
            self.nav_hint.setText("Run this step to go on.")
        elif index == len(self.steps) - 1 and self.project.is_up_to_date(self.steps[index].id):
            self.nav_hint.setText("All steps are done.")
        else:
            self.nav_hint.setText("")

    def _on_running_changed(self, running: bool) -> None:
        self.refresh_statuses()
        self.statusBar().showMessage("Running…" if running else f"Project saved in {self.project.dir / 'project.json'}")

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
