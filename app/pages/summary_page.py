"""The wizard's last page, after the last step: the map the workflow produced and what it means.

Shows (from :func:`tomoguide.results.final_summary`): the resolution at FSC 0.143 and the Nyquist limit, the
particle count, voxel size and symmetry, and what that resolution means for them; the files (merged map, half
maps, mask, particles STAR) with their full paths, selectable and copied with one button; "Open folder"; "Open
in ChimeraX / napari / 3dmod" for the viewers found on PATH, and the command line to use (copyable) for the
others; the export command when the command line has one, else the paths; beside it the FSC plot and the map's
slices and isosurface. Before any averaging step is done it says which step to run next.

For tests, :meth:`SummaryPage.open_url` (the folder) and :meth:`SummaryPage.start_program` (a viewer) are the
only places that reach outside the program; replace them to check what would be opened.
"""

from __future__ import annotations

import html
import subprocess
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices, QGuiApplication
from PySide6.QtWidgets import (
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QScrollArea,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tomoguide.project import Project
from tomoguide.results import (
    MAP_FILES,
    FinalSummary,
    ViewerCommand,
    export_commands,
    export_usage,
    final_summary,
    viewer_commands,
)
from tomoguide.widgets.fsc_plot import FscPlot
from tomoguide.widgets.map_view import MapView

TITLE = "Summary: your map"


class SummaryPage(QWidget):
    """The end of the workflow (see the module docstring). :meth:`refresh` re-reads the project."""

    def __init__(self, project: Project, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.summary: FinalSummary | None = None
        self.viewers: list[ViewerCommand] = []
        self.viewer_buttons: dict[str, QPushButton] = {}
        self.viewer_lines: dict[str, QLineEdit] = {}
        self.opened: list[Any] = []  # what the buttons opened (URLs and argv), newest last
        self._shown_key: Any = None

        self.title_label = QLabel(f"<h2 style='margin:0'>{TITLE}</h2>")
        self.status_label = QLabel("")
        self.status_label.setObjectName("summary_status")
        self.status_label.setWordWrap(True)
        self.resolution_label = QLabel("")
        self.resolution_label.setObjectName("summary_resolution")
        self.resolution_label.setWordWrap(True)
        self.resolution_label.setTextFormat(Qt.TextFormat.RichText)
        self.meaning_label = QLabel("")
        self.meaning_label.setObjectName("summary_meaning")
        self.meaning_label.setWordWrap(True)
        self.meaning_label.setTextFormat(Qt.TextFormat.RichText)
        self.meaning_label.setStyleSheet("background:#fff8e1; padding:6px;")

        self.files_box = QWidget()
        self.files_grid = QGridLayout(self.files_box)
        self.files_grid.setContentsMargins(0, 0, 0, 0)
        self.files_grid.setColumnStretch(1, 1)
        self.path_edits: dict[str, QLineEdit] = {}

        self.open_folder_button = QPushButton("Open folder")
        self.open_folder_button.setObjectName("open_folder")
        self.open_folder_button.setToolTip("Open the folder with the map, the half maps and the particles in the "
                                           "file manager")
        self.open_folder_button.clicked.connect(self.open_folder)
        self.copy_paths_button = QPushButton("Copy paths")
        self.copy_paths_button.setObjectName("copy_paths")
        self.copy_paths_button.setToolTip("Copy the files' full paths (one a line) to the clipboard")
        self.copy_paths_button.clicked.connect(self.copy_paths)
        buttons = QHBoxLayout()
        buttons.addWidget(self.open_folder_button)
        buttons.addWidget(self.copy_paths_button)
        buttons.addStretch(1)

        self.viewers_box = QWidget()
        self.viewers_grid = QGridLayout(self.viewers_box)
        self.viewers_grid.setContentsMargins(0, 0, 0, 0)
        self.viewers_grid.setColumnStretch(1, 1)
        self.export_label = QLabel("")
        self.export_label.setObjectName("summary_export")
        self.export_label.setWordWrap(True)
        self.export_label.setTextFormat(Qt.TextFormat.RichText)
        self.export_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(8, 8, 8, 8)
        ll.addWidget(self.title_label)
        ll.addWidget(self.status_label)
        ll.addWidget(self.resolution_label)
        ll.addWidget(self.meaning_label)
        ll.addWidget(QLabel("<b>Files</b>"))
        ll.addWidget(self.files_box)
        ll.addLayout(buttons)
        ll.addWidget(QLabel("<b>Look at the map in a 3D viewer</b>"))
        ll.addWidget(self.viewers_box)
        ll.addWidget(QLabel("<b>Export</b>"))
        ll.addWidget(self.export_label)
        ll.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setWidget(left)

        self.fsc_plot = FscPlot()
        self.map_view = MapView(size_px=(300, 300))
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.fsc_plot)
        right.addWidget(self.map_view)
        right.setSizes([300, 500])
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(scroll)
        split.addWidget(right)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setSizes([560, 520])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(split)
        self.refresh()

    # -- content ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        from tomoguide.steps import registry

        try:
            self.summary = final_summary(self.project)
        except Exception as exc:  # noqa: BLE001 - a damaged record is said, not raised into the wizard
            self.summary = None
            self.status_label.setText(f"Cannot read the results: {type(exc).__name__}: {exc}")
        s = self.summary
        key = None if s is None else (s.step_id, str(s.folder), tuple(map(str, s.files.values())), s.resolution_A,
                                      s.complete, s.next_step, s.meaning and tuple(s.meaning))
        if key is not None and key == self._shown_key:
            return  # nothing changed: keep the widgets (and what the user selected in them)
        self._shown_key = key
        self._clear_grid(self.files_grid)
        self._clear_grid(self.viewers_grid)
        self.path_edits = {}
        self.viewer_buttons = {}
        self.viewer_lines = {}
        if s is None:
            nxt = self.project.first_not_done()
            title = registry.get(nxt).title if nxt in registry.ids() else nxt
            self.status_label.setText(
                "No map yet: the summary fills in when an averaging step (initial model, refinement) is done."
                + (f" Next step to run: “{title}”." if nxt else ""))
            self.resolution_label.setText("")
            self.meaning_label.setText("")
            self.meaning_label.setVisible(False)
            self.fsc_plot.clear()
            self.map_view.clear()
            self.export_label.setText("")
            for b in (self.open_folder_button, self.copy_paths_button):
                b.setEnabled(False)
            return
        if s.complete:
            self.status_label.setText(f"The workflow is done. The final map is the result of “{s.step_title}”.")
        else:
            nxt = registry.get(s.next_step).title if s.next_step in registry.ids() else s.next_step
            self.status_label.setText(f"The workflow is not finished (next: “{nxt}”); the best map so far is the "
                                      f"result of “{s.step_title}”.")
        res = (f"Resolution <b>{s.resolution_A:.2f} Å</b> at FSC 0.143" if s.resolution_A
               else "No resolution (no half maps)")
        parts = [res, f"Nyquist <b>{s.nyquist_A:.2f} Å</b> ({s.voxel_A:g} Å voxels)", f"box {s.box_px} px",
                 f"symmetry {html.escape(s.symmetry)}"]
        if s.n_particles is not None:
            parts.append(f"{s.n_particles} particles")
        self.resolution_label.setText(" · ".join(parts))
        self.meaning_label.setText("".join(f"<p style='margin:2px'>{html.escape(m)}</p>" for m in s.meaning))
        self.meaning_label.setVisible(True)
        labels = dict(MAP_FILES)
        for r, (role, path) in enumerate(s.files.items()):
            name = QLabel(role)
            name.setToolTip(labels.get(role, role))
            edit = QLineEdit(str(path))
            edit.setObjectName(f"path_{role}")
            edit.setReadOnly(True)
            edit.setCursorPosition(len(str(path)))  # the file's name in view; the field scrolls to the rest
            edit.setToolTip(f"{labels.get(role, role)} — select and copy")
            self.path_edits[role] = edit
            self.files_grid.addWidget(name, r, 0)
            self.files_grid.addWidget(edit, r, 1)
        for b in (self.open_folder_button, self.copy_paths_button):
            b.setEnabled(True)
        maps = [s.files[r] for r in ("map", "half1", "half2") if r in s.files]
        self.viewers = viewer_commands(maps) if maps else []
        for r, v in enumerate(self.viewers):
            button = QPushButton(f"Open in {v.name}")
            button.setObjectName(f"open_{v.name.lower()}")
            button.setEnabled(v.found is not None)
            button.setToolTip(f"Runs: {v.command_line}" if v.found else f"{v.name} is not on PATH: install it, or "
                              "run the command beside this button where it is")
            button.clicked.connect(lambda _=False, v=v: self.launch(v))
            line = QLineEdit(v.command_line)
            line.setObjectName(f"command_{v.name.lower()}")
            line.setReadOnly(True)
            line.setCursorPosition(0)
            line.setToolTip("The command line that opens the map (select and copy)"
                            + (f"; {v.note}" if v.note else ""))
            copy = QPushButton("Copy")
            copy.setObjectName(f"copy_{v.name.lower()}")
            copy.clicked.connect(lambda _=False, text=v.command_line: self._copy(text))
            self.viewer_buttons[v.name] = button
            self.viewer_lines[v.name] = line
            self.viewers_grid.addWidget(button, r, 0)
            self.viewers_grid.addWidget(line, r, 1)
            self.viewers_grid.addWidget(copy, r, 2)
        usage = export_usage()
        commands = export_commands(self.project.dir)
        if commands:
            self.export_label.setText("On the command line (select and copy):<br>" + "<br>".join(
                f"<tt>{html.escape(c)}</tt>" for c in commands))
        elif usage:
            self.export_label.setText(f"<tt>{html.escape(usage)}</tt> (on the command line)")
        else:
            self.export_label.setText(
                "tomoguide has no export command yet: the files above are the results — MRC maps with the voxel "
                "size in their header (ChimeraX, RELION, IMOD read them) and a RELION 5 STAR file of the "
                "particles with their refined poses. Copy them with “Copy paths”.")
        self._show_plots(s)

    def _show_plots(self, s: FinalSummary) -> None:
        from tomoguide.pages.preview_average import show_fsc, show_map_file

        show_fsc(self.fsc_plot, s.record)
        mass = s.record.info.get("mass_kDa") if s.record is not None else None
        show_map_file(self.map_view, s.files.get("map"), voxel_A=s.voxel_A, name="final map",
                      mass_kDa=float(mass) if mass else None)

    @staticmethod
    def _clear_grid(grid: QGridLayout) -> None:
        while grid.count():
            item = grid.takeAt(0)
            w = item.widget() if item is not None else None
            if w is not None:
                w.setParent(None)
                w.deleteLater()

    # -- actions ---------------------------------------------------------------------------------------------
    def paths_text(self) -> str:
        """The files' paths, one a line."""
        return "\n".join(str(p) for p in (self.summary.files.values() if self.summary else []))

    def copy_paths(self) -> None:
        self._copy(self.paths_text())

    def _copy(self, text: str) -> None:
        QGuiApplication.clipboard().setText(text)

    def open_folder(self) -> None:
        """Open the results' folder in the file manager."""
        if self.summary is not None:
            self.open_url(QUrl.fromLocalFile(str(self.summary.folder)))

    def launch(self, viewer: ViewerCommand) -> None:
        """Start a viewer on the map (only when it was found on PATH)."""
        if viewer.found is not None:
            self.start_program(viewer.argv)

    def open_url(self, url: QUrl) -> None:
        self.opened.append(url)
        QDesktopServices.openUrl(url)

    def start_program(self, argv: list[str]) -> None:
        self.opened.append(list(argv))
        subprocess.Popen(argv, start_new_session=True, stdout=subprocess.DEVNULL,  # noqa: S603 - a viewer
                         stderr=subprocess.DEVNULL)

    def folder(self) -> Path | None:
        return None if self.summary is None else self.summary.folder
