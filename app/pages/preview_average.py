"""The preview of the averaging steps (``initial_model``, ``refine``, ``reconstruct_particle``, ``refine_fine``).

Reads the step's output ``average`` (a folder with :class:`~tomoguide.steps.average_records.AverageRecord`
``average.json``) and shows:

* the map (merged map by default; the half maps and the mask from a chooser) as central slices and a 3D
  isosurface with a level slider (:class:`~tomoguide.widgets.map_view.MapView`);
* the FSC between the half maps with the 0.143 line and the resolution (:class:`~tomoguide.widgets.fsc_plot.FscPlot`);
* the angular distribution of the particles' poses from ``particles.star`` (rlnAngleRot/Tilt), folded into the
  symmetry's asymmetric unit (:class:`~tomoguide.widgets.angdist.AngularDistribution`);
* the per-iteration history (a table of every recorded value and a plot of the resolution per iteration).

:func:`render_average_figures` writes the FSC plot and the map view of an average folder to PNG files (for the
README), from a script with an offscreen QApplication.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from tomoguide.pages.previews import Preview
from tomoguide.project import Project
from tomoguide.widgets.angdist import AngularDistribution
from tomoguide.widgets.fsc_plot import FscPlot
from tomoguide.widgets.map_view import MapView

OUTPUT = "average"
MAP_CHOICES = (("map", "merged map"), ("half1", "half map 1"), ("half2", "half map 2"), ("mask", "mask"))
HISTORY_COLOUR = "#4fc3f7"


def history_columns(history: list[dict[str, Any]]) -> list[str]:
    """The keys of the history's entries, in order of first appearance."""
    return list(dict.fromkeys(k for entry in history for k in entry))


def resolution_key(columns: list[str]) -> str | None:
    """The history key holding the resolution in Å (``resolution_A`` or the first key naming a resolution)."""
    if "resolution_A" in columns:
        return "resolution_A"
    return next((c for c in columns if "resolution" in c.lower()), None)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list) and len(value) > 4:
        return f"[{len(value)} values]"
    return str(value)


def show_fsc(plot: FscPlot, record: Any) -> None:
    """Show the record's FSC curves (or clear the plot when it has none)."""
    fsc = record.fsc
    if fsc is None:
        plot.clear()
        plot.resolution_label.setText("No FSC for this map (no half maps)")
        return
    chosen = "masked, phase-randomisation corrected" if fsc.fsc_corrected else "masked"
    plot.set_curves(fsc.freq_per_A, masked=fsc.fsc_masked, unmasked=fsc.fsc_unmasked,
                    corrected=fsc.fsc_corrected or None, reference=fsc.fsc_vs_reference or None,
                    resolution_A=fsc.resolution_A, threshold=fsc.threshold, note=f"from the {chosen} FSC")


def read_angles(star_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(rot, tilt) in degrees of every particle of a particles STAR (``rlnAngleRot``, ``rlnAngleTilt``)."""
    from tomoguide.compute.io.star import read_particles_star

    df = read_particles_star(star_path).particles
    for col in ("rlnAngleRot", "rlnAngleTilt"):
        if col not in df.columns:
            raise ValueError(f"{star_path}: data_particles/{col}: no particle orientations")
    return df["rlnAngleRot"].to_numpy(np.float64), df["rlnAngleTilt"].to_numpy(np.float64)


def _inside(rec: Any, field: str, folder: Path) -> bool:
    """Whether the record's file ``field`` exists inside its folder (a tampered name leading out is not shown)."""
    try:
        return rec.path(field, folder).exists()
    except (KeyError, ValueError):
        return False


class HistoryView(QWidget):
    """The per-iteration history: resolution per iteration (plot) and every recorded value (table)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot = pg.PlotWidget()
        self.plot.setObjectName("history_plot")
        self.plot.setBackground("#202020")
        self.plot.setMenuEnabled(False)
        self.plot.setMinimumHeight(140)
        self.plot.setLabel("bottom", "iteration")
        self.plot.setLabel("left", "resolution (Å)")
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.curve = self.plot.plot([], [], pen=pg.mkPen(HISTORY_COLOUR, width=2), symbol="o", symbolSize=6,
                                    symbolBrush=HISTORY_COLOUR)
        self.table = QTableWidget(0, 0)
        self.table.setObjectName("history_table")
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.table.fontMetrics().height() + 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.plot, 2)
        lay.addWidget(self.table, 3)

    def set_history(self, history: list[dict[str, Any]]) -> None:
        cols = history_columns(history)
        self.table.clear()
        self.table.setColumnCount(len(cols))
        self.table.setHorizontalHeaderLabels(cols)
        self.table.setRowCount(len(history))
        for r, entry in enumerate(history):
            for c, key in enumerate(cols):
                item = QTableWidgetItem(_cell(entry[key]) if key in entry else "")
                item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        key = resolution_key(cols)
        x, y = [], []
        if key is not None:
            for i, entry in enumerate(history):
                v = entry.get(key)
                if isinstance(v, (int, float)) and np.isfinite(v):
                    x.append(float(entry.get("iteration", i + 1)))
                    y.append(float(v))
        self.curve.setData(x, y)
        self.plot.setVisible(bool(x))
        if x:  # whole iterations on the axis
            step = max(1, int(np.ceil((max(x) - min(x) + 1) / 8)))
            self.plot.getAxis("bottom").setTickSpacing(major=step, minor=step)

    def clear(self) -> None:
        self.set_history([])


class AveragePreview(Preview):
    """initial_model / refine / reconstruct_particle / refine_fine: map, FSC, angular distribution, history."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.record: Any = None
        self.folder = Path()
        self.summary = QLabel("")
        self.summary.setObjectName("average_summary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.map_combo = QComboBox()
        self.map_combo.setObjectName("map_choice")
        self.map_combo.setToolTip("The map to show")
        self.map_combo.currentIndexChanged.connect(lambda _: self.show_map())
        self.fsc_plot = FscPlot()
        self.angdist = AngularDistribution()
        self.history = HistoryView()
        self.tabs = QTabWidget()
        self.tabs.setObjectName("average_tabs")
        self.tabs.addTab(self.fsc_plot, "FSC")
        self.tabs.addTab(self.angdist, "Angles")
        self.tabs.setTabToolTip(1, "Angular distribution of the particles' view directions")
        self.tabs.addTab(self.history, "History")
        self.tabs.setTabToolTip(2, "The resolution and other values per iteration")
        # slices along the top, the 3D view and the tabs (FSC first) side by side below
        self.map_view = MapView(size_px=(300, 300), side=self.tabs)
        row = QHBoxLayout()
        row.addWidget(QLabel("Show:"))
        row.addWidget(self.map_combo)
        row.addStretch(1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addWidget(self.summary)
        lay.addLayout(row)
        lay.addWidget(self.map_view, 1)
        self.refresh()

    def refresh(self) -> None:
        from tomoguide.steps.average_records import AverageRecord

        self.note.setText(self.status_note())
        self.record = None
        if self.has_results():
            try:
                self.record, self.folder = AverageRecord.load(self.project.output_path(self.step_id, OUTPUT))
            except (OSError, ValueError) as exc:
                self.note.setText(f"Cannot read the average: {exc}")
        if self.record is None:
            self.summary.setText("")
            self.map_combo.blockSignals(True)
            self.map_combo.clear()
            self.map_combo.blockSignals(False)
            self.map_view.clear()
            self.fsc_plot.clear()
            self.angdist.clear()
            self.history.clear()
            self.tabs.setTabEnabled(0, True)
            return
        rec = self.record
        self.map_combo.blockSignals(True)
        self.map_combo.clear()
        for field, label in MAP_CHOICES:
            rel = getattr(rec, field)
            if rel and _inside(rec, field, self.folder):
                self.map_combo.addItem(label, field)
        self.map_combo.blockSignals(False)
        show_fsc(self.fsc_plot, rec)
        self.history.set_history(rec.history)
        # no FSC (an initial model): that tab off, the history (or the angles) shown instead
        if rec.fsc is None:
            self.tabs.setCurrentIndex(2 if rec.history else 1)
        self.tabs.setTabEnabled(0, rec.fsc is not None)
        n_text = ""
        try:
            rot, tilt = read_angles(rec.path("particles", self.folder))
            self.angdist.set_angles(rot, tilt, symmetry=rec.symmetry)
            n_text = f" · {len(rot)} particles"
        except (OSError, ValueError, KeyError) as exc:
            self.angdist.clear()
            self.angdist.caption.setText(f"No angular distribution: {exc}")
        res = f"resolution <b>{rec.resolution_A:.2f} Å</b>" if rec.resolution_A else "no resolution (no half maps)"
        nyq = 2.0 * rec.voxel_A
        self.summary.setText(f"{res} (Nyquist {nyq:.2f} Å) · symmetry {rec.symmetry} · box {rec.box_px} px of "
                             f"{rec.voxel_A:.2f} Å{n_text}"
                             + (f" · {len(rec.history)} iterations" if rec.history else ""))
        self.show_map()

    def map_path(self) -> Path | None:
        """The file of the map chosen in the chooser."""
        if self.record is None or self.map_combo.count() == 0:
            return None
        field = self.map_combo.currentData()
        return self.record.path(field, self.folder)

    def show_map(self) -> None:
        mass = self.record.info.get("mass_kDa")
        show_map_file(self.map_view, self.map_path(), voxel_A=float(self.record.voxel_A),
                      name=self.map_combo.currentText(), mass_kDa=float(mass) if mass else None)


def show_map_file(view: Any, path: Path | None, *, voxel_A: float, name: str, mass_kDa: float | None) -> None:
    """The MRC map at ``path`` in the map view ``view`` (cleared when None; the reason in its title when the file
    cannot be read); the voxel size from the file's header, else ``voxel_A`` (Å)."""
    from tomoguide.compute.io.mrc import read_mrc

    if path is None:
        view.clear()
        return
    try:
        volume, info = read_mrc(path)
    except (OSError, ValueError) as exc:
        view.clear()
        view.title.setText(f"{path}: cannot read it: {exc}")
        return
    view.set_map(np.asarray(volume, np.float32), voxel_A=float(info.voxel_size_A[0]) or voxel_A, name=name,
                 mass_kDa=mass_kDa)


def render_average_figures(average_dir: Path, out_dir: Path) -> list[Path]:
    """Write ``fsc.png`` (the FSC plot, 720×460) and ``map3d.png`` (the merged map's central slices and
    isosurface at the default level, 720×820) of the average in ``average_dir`` (a folder with average.json, or
    the file) into ``out_dir``; returns the two paths. Creates an offscreen QApplication when none exists."""
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.pages.screenshots import offscreen_app
    from tomoguide.steps.average_records import AverageRecord

    offscreen_app("tomoguide-figures")
    record, folder = AverageRecord.load(Path(average_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    plot = FscPlot()
    show_fsc(plot, record)
    plot.resize(720, 460)
    plot.show()
    view = MapView(size_px=(520, 520))
    volume, info = read_mrc(folder / record.map)
    mass = record.info.get("mass_kDa")
    view.set_map(np.asarray(volume, np.float32), voxel_A=float(info.voxel_size_A[0]) or record.voxel_A,
                 name=f"{record.symmetry} average" + (f", {record.resolution_A:.1f} Å" if record.resolution_A else ""),
                 mass_kDa=float(mass) if mass else None)
    view.resize(720, 820)
    view.show()
    try:
        for _ in range(5):
            QApplication.processEvents()
        for widget, name in ((plot, "fsc.png"), (view, "map3d.png")):
            path = out / name
            if not widget.grab().save(str(path)):
                raise OSError(f"{path}: could not write the figure")
            written.append(path)
    finally:
        for widget in (plot, view):
            widget.close()
            widget.deleteLater()
        QApplication.processEvents()
    return written
