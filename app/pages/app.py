"""The application: :func:`main` (``tomoguide`` and ``tomoguide gui``), the start screen and the window manager.

The start screen offers: a new project at one of the workflow's entry points (:data:`ENTRIES`: raw movies with
their .mdoc files; tilt series without movies; tilt series with an existing alignment and CTF; particles from
RELION 5 / WarpTools, enabled once the extraction step offers that source), each setting the parameters that entry
needs (:func:`entry_params`), opening a project folder, the recent projects (double-click; also those made or run from the
command line, :mod:`tomoguide.recent`), and "Try the demo" (simulates
the small data set in a worker thread, with a progress dialog, and opens its project). Opening a project shows
the wizard on the first step that is not done.
"""

from __future__ import annotations

import sys
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import (
    QApplication,
    QButtonGroup,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressDialog,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from tomoguide import __version__
from tomoguide.pages.settings import add_recent_project, recent_projects
from tomoguide.pages.wizard import WizardWindow, open_project_interactive
from tomoguide.pages.worker import FunctionWorker
from tomoguide.project import PROJECT_FILE, Project
from tomoguide.entries import ENTRIES, entry_params, particles_entry
from tomoguide.steps.import_movies import DEFAULT_PATTERN


def _path_row(edit: QLineEdit, browse: QPushButton) -> QWidget:
    w = QWidget()
    lay = QHBoxLayout(w)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(edit, 1)
    lay.addWidget(browse)
    return w


class StartScreen(QWidget):
    """The first window. Emits ``create_requested(movies_dir, pattern, project_dir)``, ``open_requested(dir)``
    and ``demo_requested(out_dir)``; :class:`AppController` does the work."""

    create_requested = Signal(Path, str, Path)
    #: a project at another entry point: its parameters (:func:`entry_params`) and the project folder
    create_entry_requested = Signal(object, Path)
    open_requested = Signal(Path)
    demo_requested = Signal(Path)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("tomoguide")
        title = QLabel(f"<h1 style='margin-bottom:0'>tomoguide</h1>"
                       f"<p>A guided wizard for cryo-electron tomography: from tilt-series movies to a "
                       f"subtomogram average. <small>version {__version__}</small></p>")
        title.setWordWrap(True)

        new_box = QGroupBox("New project")
        self.entry_group = QButtonGroup(self)
        self.entry_buttons: dict[str, QRadioButton] = {}
        entry_box = QWidget()
        el = QVBoxLayout(entry_box)
        el.setContentsMargins(0, 0, 0, 0)
        el.setSpacing(2)
        el.addWidget(QLabel("<b>Start from</b>"))
        particles_ok = particles_entry() is not None
        for key, text, help_text, _ in ENTRIES:
            b = QRadioButton(text)
            b.setObjectName(f"entry_{key.replace(' ', '_')}")
            b.setToolTip(help_text)
            if key == "particles" and not particles_ok:
                b.setEnabled(False)
                b.setToolTip(help_text + "\n\nNot available yet: the extraction step cannot read RELION 5 / "
                             "WarpTools particles in this version.")
            self.entry_group.addButton(b)
            self.entry_buttons[key] = b
            el.addWidget(b)
        self.entry_buttons["movies"].setChecked(True)
        self.entry_help = QLabel("")
        self.entry_help.setObjectName("entry_help")
        self.entry_help.setWordWrap(True)
        self.entry_help.setStyleSheet("color: #424242;")
        el.addWidget(self.entry_help)
        self.movies_edit = QLineEdit()
        self.movies_edit.setObjectName("movies_edit")
        self.movies_edit.setPlaceholderText(".mdoc files and movies")
        self.movies_edit.setToolTip("The folder with the SerialEM .mdoc files and the movies beside them")
        movies_browse = QPushButton("Browse…")
        movies_browse.clicked.connect(lambda: self._choose_dir(self.movies_edit, "Movies folder"))
        self.pattern_edit = QLineEdit(DEFAULT_PATTERN)
        self.pattern_edit.setObjectName("pattern_edit")
        self.pattern_edit.setToolTip("Which mdoc files to import (**/*.mdoc: every mdoc at any depth; *.mdoc: only "
                                     "those directly in the folder)")
        self.project_edit = QLineEdit()
        self.project_edit.setObjectName("project_edit")
        self.project_edit.setPlaceholderText("a new folder")
        self.project_edit.setToolTip("A new (or empty) folder for the project file and the results")
        project_browse = QPushButton("Browse…")
        project_browse.clicked.connect(lambda: self._choose_dir(self.project_edit, "Project folder"))
        self.create_button = QPushButton("Create project")
        self.create_button.setObjectName("create_button")
        self.create_button.clicked.connect(self._on_create)
        self.new_message = QLabel("")
        self.new_message.setObjectName("new_message")
        self.new_message.setWordWrap(True)
        self.new_message.setStyleSheet("color: #c62828;")
        self.alignment_edit = QLineEdit()
        self.alignment_edit.setObjectName("alignment_edit")
        self.alignment_edit.setPlaceholderText("NAME.xf + NAME.tlt, NAME.aln or NAME.star per tilt series")
        alignment_browse = QPushButton("Browse…")
        alignment_browse.clicked.connect(lambda: self._choose_dir(self.alignment_edit, "Alignment folder"))
        self.ctf_edit = QLineEdit()
        self.ctf_edit.setObjectName("ctf_edit")
        self.ctf_edit.setPlaceholderText("empty: the alignment folder")
        self.ctf_edit.setToolTip("NAME_ctf.txt (CTFFIND), NAME.defocus (ctfplotter), NAME.xml (Warp) or NAME.star "
                                 "(RELION 5) per tilt series")
        ctf_browse = QPushButton("Browse…")
        ctf_browse.clicked.connect(lambda: self._choose_dir(self.ctf_edit, "CTF folder"))
        self.particles_edit = QLineEdit()
        self.particles_edit.setObjectName("particles_edit")
        self.particles_edit.setPlaceholderText("particles.star (RELION 5 / WarpTools)")
        particles_browse = QPushButton("Browse…")
        particles_browse.clicked.connect(self._choose_particles)
        form = QFormLayout(new_box)
        form.addRow(entry_box)
        self.data_label = QLabel("Movies folder")
        self._rows: dict[str, list[QWidget]] = {}
        data_row = _path_row(self.movies_edit, movies_browse)
        form.addRow(self.data_label, data_row)
        pattern_label = QLabel("Pattern")
        form.addRow(pattern_label, self.pattern_edit)
        alignment_label, alignment_row = QLabel("Alignment folder"), _path_row(self.alignment_edit, alignment_browse)
        form.addRow(alignment_label, alignment_row)
        ctf_label, ctf_row = QLabel("CTF folder"), _path_row(self.ctf_edit, ctf_browse)
        form.addRow(ctf_label, ctf_row)
        particles_label, particles_row = QLabel("Particles file"), _path_row(self.particles_edit, particles_browse)
        form.addRow(particles_label, particles_row)
        self._rows = {"data": [self.data_label, data_row], "pattern": [pattern_label, self.pattern_edit],
                      "alignment": [alignment_label, alignment_row], "ctf": [ctf_label, ctf_row],
                      "particles": [particles_label, particles_row]}
        form.addRow("Project folder", _path_row(self.project_edit, project_browse))
        form.addRow("", self.create_button)
        form.addRow("", self.new_message)
        explain = QLabel(
            "<p>The project folder keeps <tt>project.json</tt> (every parameter and result, saved after each "
            "change) and one folder of results per step. The movies stay where they are.</p>"
            "<p>The wizard then walks you through the steps of the ScipionTomo apoferritin tutorial: import, "
            "frame alignment, CTF, tilt-series alignment, reconstruction, picking and subtomogram averaging. "
            "Each page explains what the step does and what a good result looks like.</p>")
        explain.setWordWrap(True)
        explain.setStyleSheet("color: #424242;")
        form.addRow(explain)

        open_box = QGroupBox("Open a project")
        self.open_button = QPushButton("Open project folder…")
        self.open_button.clicked.connect(self._on_open)
        self.recent_list = QListWidget()
        self.recent_list.setObjectName("recent_list")
        self.recent_list.itemActivated.connect(lambda item: self.open_requested.emit(Path(item.data(Qt.ItemDataRole.UserRole))))
        ol = QVBoxLayout(open_box)
        ol.addWidget(self.open_button)
        ol.addWidget(QLabel("Recent projects (double-click to open):"))
        ol.addWidget(self.recent_list, 1)

        demo_box = QGroupBox("Try the demo")
        self.demo_edit = QLineEdit(str(Path.home() / "tomoguide-demo"))
        self.demo_edit.setObjectName("demo_edit")
        self.demo_button = QPushButton("Try the demo")
        self.demo_button.setObjectName("demo_button")
        self.demo_button.setToolTip("Simulate a small apoferritin data set (with its ground truth) and open its "
                                    "project")
        self.demo_button.clicked.connect(lambda: self.demo_requested.emit(Path(self.demo_edit.text()).expanduser()))
        dl = QFormLayout(demo_box)
        dl.addRow(QLabel("Simulated apoferritin tilt series with known ground truth: the whole workflow in a few "
                         "minutes."))
        dl.addRow("Folder", self.demo_edit)
        dl.addRow("", self.demo_button)

        right = QVBoxLayout()
        right.addWidget(open_box, 1)
        right.addWidget(demo_box)
        columns = QHBoxLayout()
        columns.addWidget(new_box, 1)
        columns.addLayout(right, 1)
        lay = QVBoxLayout(self)
        lay.addWidget(title)
        lay.addLayout(columns, 1)
        self.resize(1040, 680)
        self.entry_group.buttonToggled.connect(lambda *_: self._on_entry_changed())
        self._on_entry_changed()
        self.refresh_recent()

    def entry(self) -> str:
        """The entry point chosen (a key of :data:`ENTRIES`)."""
        return next(k for k, b in self.entry_buttons.items() if b.isChecked())

    def _on_entry_changed(self) -> None:
        key = self.entry()
        _, _, help_text, fields = next(e for e in ENTRIES if e[0] == key)
        self.entry_help.setText(help_text)
        for name, widgets in self._rows.items():
            for w in widgets:
                w.setVisible(name in fields)
        self.data_label.setText("Movies folder" if key == "movies" else "Stacks folder")
        self.movies_edit.setPlaceholderText(".mdoc files and movies" if key == "movies" else
                                            "stacks (.st, .mrc) with NAME.rawtlt / NAME.tlt / NAME.st.mdoc")
        self.new_message.setText("")

    def _choose_particles(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Particles STAR file", self.particles_edit.text(),
                                              "STAR files (*.star);;All files (*)")
        if path:
            self.particles_edit.setText(path)

    def showEvent(self, event: object) -> None:  # noqa: N802 - Qt API
        """Re-read the recent projects whenever the screen is shown (the command line may have added some)."""
        self.refresh_recent()
        super().showEvent(event)  # type: ignore[arg-type]

    def refresh_recent(self) -> None:
        self.recent_list.clear()
        for p in recent_projects():
            item = QListWidgetItem(f"{p.name}    —    {p}")
            item.setData(Qt.ItemDataRole.UserRole, str(p))
            item.setToolTip(str(p))
            self.recent_list.addItem(item)
        if self.recent_list.count() == 0:
            item = QListWidgetItem("(none yet)")
            item.setFlags(Qt.ItemFlag.NoItemFlags)
            self.recent_list.addItem(item)

    def _choose_dir(self, edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(self, title, edit.text())
        if path:
            edit.setText(path)

    def _on_create(self) -> None:
        movies = self.movies_edit.text().strip()
        project = self.project_edit.text().strip()
        if self.entry() != "movies":
            if not project:
                self.new_message.setText("Choose a folder for the project.")
                return
            try:
                params = entry_params(self.entry(), data=movies, alignment=self.alignment_edit.text().strip(),
                                      ctf=self.ctf_edit.text().strip(), particles=self.particles_edit.text().strip())
            except ValueError as exc:
                self.new_message.setText(str(exc))
                return
            self.new_message.setText("")
            self.create_entry_requested.emit(params, Path(project).expanduser())
            return
        if not movies or not Path(movies).expanduser().is_dir():
            self.new_message.setText("Choose the folder with the .mdoc files and movies.")
            return
        if not project:
            self.new_message.setText("Choose a folder for the project.")
            return
        self.new_message.setText("")
        self.create_requested.emit(Path(movies).expanduser(), self.pattern_edit.text().strip() or DEFAULT_PATTERN,
                                   Path(project).expanduser())

    def _on_open(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a tomoguide project folder")
        if path:
            self.open_requested.emit(Path(path))


class AppController(QObject):
    """Keeps the start screen and the wizard windows; one wizard per project (the project's lock)."""

    project_opened = Signal(object)  # WizardWindow
    demo_finished = Signal(object)  # project dir or None

    def __init__(self, *, demo_preset: str = "small") -> None:
        super().__init__()
        self.demo_preset = demo_preset
        self.start = StartScreen()
        self.start.create_requested.connect(self.create_project)
        self.start.create_entry_requested.connect(self.create_project_with)
        self.start.open_requested.connect(self.open_project)
        self.start.demo_requested.connect(self.run_demo)
        self.wizards: list[WizardWindow] = []
        self.demo_worker: FunctionWorker | None = None
        self.demo_dialog: QProgressDialog | None = None

    def show_start(self) -> None:
        self.start.refresh_recent()
        self.start.show()
        self.start.raise_()

    def _error(self, title: str, text: str) -> None:
        QMessageBox.warning(self.start if self.start.isVisible() else None, title, text)

    def create_project(self, movies_dir: Path, pattern: str, project_dir: Path) -> WizardWindow | None:
        if (project_dir / PROJECT_FILE).exists():
            self.start.new_message.setText(f"{project_dir} already holds a project: open it instead.")
            return None
        try:
            project = Project.create(project_dir, params={"import_movies": {
                "files_dir": str(movies_dir.resolve()), "pattern": pattern}})
        except Exception as exc:  # noqa: BLE001 - ProjectError, OSError, ValidationError: say it
            self.start.new_message.setText(f"Cannot create the project: {exc}")
            return None
        return self._show_wizard(project)

    def create_project_with(self, params: dict, project_dir: Path) -> WizardWindow | None:
        """A new project with the parameters of an entry point (:func:`entry_params`)."""
        if (project_dir / PROJECT_FILE).exists():
            self.start.new_message.setText(f"{project_dir} already holds a project: open it instead.")
            return None
        try:
            project = Project.create(project_dir, params=params)
        except Exception as exc:  # noqa: BLE001 - ProjectError, OSError, ValidationError: say it
            self.start.new_message.setText(f"Cannot create the project: {exc}")
            return None
        return self._show_wizard(project)

    def open_project(self, project_dir: Path) -> WizardWindow | None:
        for w in self.wizards:
            if w.project.dir == Path(project_dir).resolve():
                w.raise_()
                return w
        # a stale lock offered for removal, the backup offered, moved data asked for (tomoguide.pages.wizard)
        project = open_project_interactive(Path(project_dir), self.start if self.start.isVisible() else None)
        if project is None:
            return None
        return self._show_wizard(project)

    def _show_wizard(self, project: Project) -> WizardWindow:
        add_recent_project(project.dir)
        window = WizardWindow(project)
        window.closed.connect(lambda w=window: self._on_wizard_closed(w))
        window.start_screen_requested.connect(self.show_start)
        self.wizards.append(window)
        window.show()
        self.start.hide()
        self.project_opened.emit(window)
        return window

    def _on_wizard_closed(self, window: WizardWindow) -> None:
        if window in self.wizards:
            self.wizards.remove(window)
        window.deleteLater()

    def run_demo(self, out_dir: Path) -> None:
        """Simulate the demo data in a worker thread (progress dialog), then open its project."""
        if self.demo_worker is not None:
            return
        from tomoguide.demo import prepare_demo

        preset = self.demo_preset
        title = f"Simulating the {preset} demo data set in {out_dir} …"
        dialog = QProgressDialog(title, "", 0, 1000, self.start)
        dialog.setMinimumWidth(480)
        dialog.setWindowTitle("Try the demo")
        dialog.setCancelButton(None)
        dialog.setMinimumDuration(0)
        dialog.setWindowModality(Qt.WindowModality.WindowModal)
        dialog.setValue(0)
        dialog.show()
        self.demo_dialog = dialog
        worker = FunctionWorker(lambda progress: prepare_demo(out_dir, preset=preset, progress=progress))
        worker.progress.connect(lambda f, m: (dialog.setValue(int(1000 * f)), dialog.setLabelText(f"{title}\n{m}")))
        worker.returned.connect(self._on_demo_ready)
        worker.errored.connect(lambda msg, tb: self._on_demo_failed(msg))
        worker.done.connect(self._on_demo_done)
        self.start.demo_button.setEnabled(False)
        self.demo_worker = worker
        worker.start()

    def _on_demo_ready(self, project_dir: Path) -> None:
        self._close_demo_dialog()
        self.open_project(Path(project_dir))
        self.demo_finished.emit(Path(project_dir))

    def _on_demo_failed(self, message: str) -> None:
        self._close_demo_dialog()
        self._error("The demo could not be prepared", message)
        self.demo_finished.emit(None)

    def _close_demo_dialog(self) -> None:
        if self.demo_dialog is not None:
            self.demo_dialog.close()
            self.demo_dialog.deleteLater()
            self.demo_dialog = None

    def _on_demo_done(self) -> None:
        if self.demo_worker is not None:
            self.demo_worker.wait()
            self.demo_worker.deleteLater()
            self.demo_worker = None
        self.start.demo_button.setEnabled(True)

    def close_all(self) -> None:
        for w in list(self.wizards):
            w.close()
        if self.demo_worker is not None:
            self.demo_worker.wait()
        self.start.close()


def main(project_dir: Path | None = None) -> int:
    """Start the wizard: the start screen, or the project ``project_dir``. Returns the exit status."""
    app = QApplication.instance() or QApplication(sys.argv[:1])
    app.setApplicationName("tomoguide")
    app.setQuitOnLastWindowClosed(True)
    controller = AppController()
    if project_dir is None or controller.open_project(Path(project_dir)) is None:
        controller.show_start()
    return int(app.exec())
