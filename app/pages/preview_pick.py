"""The ``pick`` preview (issue 7 items 1 and 6): picks drawn on the tomogram's slices, and the score histogram.

Per tilt series (chooser at the top):

* the ``reconstruct`` step's tomogram (MRC ``(nz, ny, nx)``) in a :class:`SliceViewer`, with the picks of the last
  run (``particles.star``, RELION 5) drawn as squares ``box_px`` wide (the display box size of the step) in every
  pane, for the particles whose centre lies within ± half a box of the slice shown; the nearer the particle's
  centre to the slice, the more opaque its square (and the cross at its centre). Scene coordinates: voxel ``i`` spans ``[i, i + 1)``, so a
  particle at voxel ``(x, y, z)`` (0-based, corner origin, :class:`~tomoguide.compute.io.coords.ParticleTable`)
  is drawn at ``(x + 0.5, y + 0.5)`` in XY, ``(x + 0.5, z + 0.5)`` in XZ and ``(z + 0.5, y + 0.5)`` in YZ;
* for template matching, the histogram of the score-volume peaks (``scores.npz``: ``<name>_hist_counts``,
  ``<name>_hist_edges``, ``<name>_peak_scores``) as bars, bins whose centre is at or above the threshold in
  colour, the others grey, and the threshold as a draggable vertical line. Releasing the line writes
  ``threshold`` through :meth:`Project.set_params` (the step becomes stale) and emits :attr:`marks_changed`, so
  that the step page refreshes its form; "Automatic" writes ``None`` back (median + k·MAD, per tomogram).

Before the step has run the tomogram is shown without picks (when the reconstruction exists), with the
"No results yet" note.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from tomoguide.pages.preview_series import SeriesSetPreview
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry, SeriesSet
from tomoguide.widgets.slice_viewer import AXES, Axis, SliceViewer

INPUT_STEP = "reconstruct"
PICK_COLOUR = "#00e676"
ABOVE_COLOUR = "#26a69a"
BELOW_COLOUR = "#9e9e9e"
THRESHOLD_COLOUR = "#ff9800"
PENDING_COLOUR = "#ff9800"


def particles_near_slice(xyz_px: np.ndarray, axis: Axis, index: int, box_px: float
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Particles whose centre is within ± ``box_px / 2`` of slice ``index`` of pane ``axis``.

    ``xyz_px``: ``(n, 3)`` voxel coordinates (x, y, z), voxel i's centre at i. Returns ``(rows (k,) int`` indices
    into ``xyz_px``, ``uv (k, 2)`` float scene coordinates in the pane (voxel centre at i + 0.5; XY: (x, y), XZ:
    (x, z), YZ: (z, y)), ``distance (k,)`` |centre − slice| in voxels``)``.
    """
    xyz = np.asarray(xyz_px, dtype=np.float64).reshape(-1, 3)
    depth_col, u_col, v_col = {"xy": (2, 0, 1), "xz": (1, 0, 2), "yz": (0, 2, 1)}[axis]
    dist = np.abs(xyz[:, depth_col] - float(index))
    rows = np.flatnonzero(dist <= box_px / 2.0)
    uv = xyz[rows][:, [u_col, v_col]] + 0.5
    return rows, uv, dist[rows]


class PickPreview(SeriesSetPreview):
    """pick: the tomogram with the picks, the peak-score histogram and its threshold (a step parameter)."""

    marks_changed = Signal()

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.table: Any = None  # ParticleTable of the last run, or None
        self.scores: dict[str, np.ndarray] = {}
        self.results_error = ""
        self._entry: SeriesEntry | None = None
        self._volume_key: tuple[str, float] | None = None
        self._xyz = np.zeros((0, 3))

        self.slices = SliceViewer()
        self.slices.slice_changed.connect(lambda *_: self.draw_picks())
        self.overlays: dict[Axis, pg.ScatterPlotItem] = {}
        self.centres: dict[Axis, pg.ScatterPlotItem] = {}
        for a in AXES:
            item = pg.ScatterPlotItem(pxMode=False, symbol="s", brush=None)
            item.setZValue(5)
            # ignoreBounds: boxes over the edge must not widen the view (the viewer fits the image)
            self.slices.panes[a].view.addItem(item, ignoreBounds=True)
            self.overlays[a] = item
            # a cross at each centre in the slice's reach: readable even where big boxes overlap
            mark = pg.ScatterPlotItem(pxMode=True, symbol="+", size=9, pen=pg.mkPen(PICK_COLOUR, width=1.5),
                                      brush=pg.mkBrush(PICK_COLOUR))
            mark.setZValue(6)
            self.slices.panes[a].view.addItem(mark, ignoreBounds=True)
            self.centres[a] = mark
        self.count_label = QLabel("")
        self.count_label.setObjectName("pick_count")
        self.count_label.setWordWrap(True)
        self.count_label.setTextFormat(Qt.TextFormat.RichText)

        self.plot = pg.PlotWidget()
        self.plot.setObjectName("score_histogram")
        self.plot.setBackground("#202020")
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "peak score (correlation)")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.plot.setLabel("left", "peaks")
        self.plot.setTitle("Score histogram of the peaks — drag the line to set the threshold")
        self.plot.setMinimumSize(220, 160)
        self.above_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=ABOVE_COLOUR, pen=None)
        self.below_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=BELOW_COLOUR, pen=None)
        self.plot.addItem(self.below_bars)
        self.plot.addItem(self.above_bars)
        self.threshold_line = pg.InfiniteLine(angle=90, movable=True,
                                              pen=pg.mkPen(THRESHOLD_COLOUR, width=2, cosmetic=True),
                                              hoverPen=pg.mkPen(THRESHOLD_COLOUR, width=4, cosmetic=True),
                                              label="{value:.3f}",
                                              labelOpts={"position": 0.9, "color": THRESHOLD_COLOUR})
        self.threshold_line.setZValue(10)
        self.threshold_line.setToolTip("Drag to set the score threshold; release to save it (run the step again)")
        self.threshold_line.sigPositionChanged.connect(lambda *_: self._update_histogram_colours())
        self.threshold_line.sigPositionChangeFinished.connect(lambda *_: self.set_threshold(self.line_value()))
        self.plot.addItem(self.threshold_line, ignoreBounds=True)
        self.threshold_label = QLabel("")
        self.threshold_label.setObjectName("threshold_info")
        self.threshold_label.setWordWrap(True)
        self.threshold_label.setTextFormat(Qt.TextFormat.RichText)
        self.auto_button = QPushButton("Automatic threshold")
        self.auto_button.setObjectName("auto_threshold")
        self.auto_button.setToolTip("Forget the threshold set here: median + k·MAD of each score volume")
        self.auto_button.clicked.connect(lambda: self.set_threshold(None))

        hist_box = QWidget()
        hl = QVBoxLayout(hist_box)
        hl.setContentsMargins(0, 0, 0, 0)
        hl.addWidget(self.plot, 1)
        row = QHBoxLayout()
        row.addWidget(self.threshold_label, 1)
        row.addWidget(self.auto_button)
        hl.addLayout(row)
        self.hist_box = hist_box
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.slices)
        split.addWidget(hist_box)
        split.setChildrenCollapsible(False)
        split.setSizes([520, 200])
        self.body.addWidget(split, 1)
        self.body.addWidget(self.count_label)
        self.refresh()

    # -- loading ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.note.setText(self.status_note())
        self._load_results()
        st = self.project.data.steps[INPUT_STEP]
        path = (self.project.dir / st.outputs["tomograms"]) if "tomograms" in st.outputs else None
        if path is None or st.status not in ("done", "stale", "skipped") or not path.exists():
            self.note.setText(self.note.text() + " (The tomograms are not reconstructed yet.)")
            self.show_set(None, Path())
            return
        try:
            sset, base = SeriesSet.load(path)
        except (OSError, ValueError) as exc:
            self.note.setText(f"{path}: cannot read the tomograms: {exc}")
            self.show_set(None, Path())
            return
        self.show_set(sset, base)

    def _load_results(self) -> None:
        """Read the last run's particles and scores (nothing when the step has no results)."""
        from tomoguide.compute.io.coords import read_relion_particles
        from tomoguide.steps.pick import centre_shapes

        self.table, self.scores, self.results_error = None, {}, ""
        if not self.has_results():
            return
        outputs = self.project.data.steps[self.step_id].outputs
        try:
            sset, _ = SeriesSet.load(self.project.output_path(INPUT_STEP, "tomograms"))
            shapes = {s.name: tuple(int(n) for n in reversed(s.info["shape_zyx"])) for s in sset.series}
            voxel_A = float(sset.series[0].geometry.pixel_size_binned_A)
            self.table = read_relion_particles(self.project.output_path(self.step_id, "particles"),
                                               centre_shapes(shapes), voxel_A)  # type: ignore[arg-type]
            if "scores" in outputs:
                with np.load(self.project.output_path(self.step_id, "scores")) as z:
                    self.scores = {k: np.asarray(z[k]) for k in z.files}
        except (OSError, ValueError, KeyError) as exc:
            self.table, self.scores = None, {}
            self.results_error = str(exc)
            self.note.setText(f"Cannot read the picks: {exc}")

    def box_px(self) -> float:
        """The display box size (px of the tomogram), from the step's parameters."""
        return float(self.project.params(self.step_id).box_px)

    def show_series(self, entry: SeriesEntry) -> None:
        from tomoguide.compute.io.mrc import read_mrc

        path = entry.path("tomogram", self.base)
        key = (str(path), path.stat().st_mtime)
        nz, ny, nx = entry.info.get("shape_zyx", (0, 0, 0))
        voxel = entry.geometry.pixel_size_binned_A
        if key != self._volume_key or self.slices.volume is None:
            volume, info = read_mrc(path)
            if volume.ndim != 3:
                raise ValueError(f"{path}: expected a volume, got shape {volume.shape}")
            nz, ny, nx = volume.shape
            voxel = float(info.voxel_size_A[0])
            for item in (*self.overlays.values(), *self.centres.values()):
                item.clear()
            self.slices.set_volume(volume, voxel, name=entry.name)
            self._volume_key = key
        self._entry = entry
        self.series_info.setText(f"{nx}×{ny}×{nz} voxels · {voxel:.2f} Å/voxel")
        if self.table is not None:
            self._xyz = self.table.xyz_px[self.table.tomo_name == entry.name]
        else:
            self._xyz = np.zeros((0, 3))
        self.draw_picks()
        self.show_histogram()

    def clear_series(self) -> None:
        self._entry = None
        self._volume_key = None
        self._xyz = np.zeros((0, 3))
        self.slices.clear()
        for item in (*self.overlays.values(), *self.centres.values()):
            item.clear()
        self.count_label.setText("")
        self.show_histogram()

    # -- the picks on the slices -----------------------------------------------------------------------------
    def picks(self) -> np.ndarray:
        """The current tomogram's picks ``(n, 3)`` voxel (x, y, z) of the last run."""
        return self._xyz

    def draw_picks(self) -> None:
        """Squares ``box_px`` wide around the picks within ± half a box of each pane's slice."""
        if self._entry is None or self.slices.volume is None:
            return
        box = self.box_px()
        shown = {}
        for a in AXES:
            rows, uv, dist = particles_near_slice(self._xyz, a, self.slices.index(a), box)
            alpha = (255 * (1.0 - 0.75 * dist / max(box / 2.0, 1e-9))).astype(int)
            pens = [pg.mkPen(pg.mkColor(PICK_COLOUR).red(), pg.mkColor(PICK_COLOUR).green(),
                             pg.mkColor(PICK_COLOUR).blue(), int(al), width=2, cosmetic=True) for al in alpha]
            self.overlays[a].setData(pos=uv, size=box, symbol="s", pen=pens, brush=None, pxMode=False,
                                     data=rows)
            self.centres[a].setData(pos=uv, data=rows, pen=pens, brush=None)
            shown[a] = len(rows)
        n = len(self._xyz)
        if self.table is None:
            text = "No picks yet: run the step." if not self.results_error else ""
        else:
            st = self.project.data.steps[self.step_id]
            text = (f"<b>{n} pick{'s' if n != 1 else ''}</b> in {self._entry.name} · squares {box:g} px wide around "
                    f"the picks within ±{box / 2:g} px of each slice (XY {shown['xy']}, XZ {shown['xz']}, "
                    f"YZ {shown['yz']}); fainter = centre further from the slice")
            if st.status == "stale":
                text += f" — <span style='color:{PENDING_COLOUR}'>picks of the last run: run the step again</span>"
        self.count_label.setText(text)

    # -- the histogram and the threshold ---------------------------------------------------------------------
    def histogram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(counts (bins,), edges (bins + 1,), peak scores (n,))`` of the current tomogram, or None."""
        if self._entry is None:
            return None
        name = self._entry.name
        keys = (f"{name}_hist_counts", f"{name}_hist_edges", f"{name}_peak_scores")
        if not all(k in self.scores for k in keys):
            return None
        counts, edges, peaks = (np.asarray(self.scores[k], dtype=np.float64) for k in keys)
        return counts, edges, peaks

    def current_threshold(self) -> tuple[float | None, bool]:
        """``(threshold, automatic)``: the parameter when set, else the automatic value the last run used."""
        value = self.project.params(self.step_id).threshold
        if value is not None:
            return float(value), False
        if self._entry is None:
            return None, True
        m = self.project.data.steps[self.step_id].metrics.get("series", {}).get(self._entry.name, {})
        thr = m.get("threshold")
        return (float(thr) if thr is not None else None), True

    def line_value(self) -> float:
        return float(self.threshold_line.value())

    def show_histogram(self) -> None:
        hist = self.histogram()
        self.hist_box.setVisible(hist is not None)
        if hist is None:
            self.above_bars.setOpts(x0=[], x1=[], height=[])
            self.below_bars.setOpts(x0=[], x1=[], height=[])
            return
        counts, edges, _ = hist
        thr, _ = self.current_threshold()
        # setValue emits sigPositionChanged (recolours, updates the line's label), never ...ChangeFinished
        lo, hi = float(edges[0]), float(edges[-1])
        if thr is not None:  # a value set outside the peaks' range must not be clamped by the bounds
            lo, hi = min(lo, float(thr)), max(hi, float(thr))
        self.threshold_line.setBounds((lo, hi))
        self.threshold_line.setValue(float(thr) if thr is not None else float(edges[0]))
        self.threshold_line.setMovable(not self.project.readonly)
        self.auto_button.setEnabled(not self.project.readonly)
        self.plot.setXRange(float(edges[0]), float(edges[-1]), padding=0.02)
        self.plot.setYRange(0.0, float(max(counts.max(), 1.0)) * 1.05, padding=0.0)
        self._update_histogram_colours()

    def bar_heights(self) -> tuple[np.ndarray, np.ndarray]:
        """Heights of the coloured (above) and grey (below) bars, each ``(bins,)`` (0 where the bin is the other
        colour), in bin order."""
        hist = self.histogram()
        if hist is None:
            return np.zeros(0), np.zeros(0)
        n = len(hist[0])

        def full(item: pg.BarGraphItem) -> np.ndarray:
            out = np.zeros(n)
            idx = np.asarray(item.opts.get("data") if item.opts.get("data") is not None else [], dtype=int)
            out[idx] = np.asarray(item.opts["height"], dtype=float)
            return out

        return full(self.above_bars), full(self.below_bars)

    def _update_histogram_colours(self) -> None:
        hist = self.histogram()
        if hist is None:
            return
        counts, edges, peaks = hist
        thr = self.line_value()
        centres = 0.5 * (edges[:-1] + edges[1:])
        above = centres >= thr
        for item, sel in ((self.above_bars, above), (self.below_bars, ~above)):
            idx = np.flatnonzero(sel)
            item.setOpts(x0=edges[:-1][idx], x1=edges[1:][idx], height=counts[idx], data=idx)
        value, automatic = self.current_threshold()
        st = self.project.data.steps[self.step_id]
        n_above = int(np.sum(peaks >= thr))
        text = f"Threshold <b>{thr:.3f}</b>: {n_above} of {len(peaks)} peaks at or above it"
        if value is None or abs(value - thr) > 1e-12:
            text += f" — <span style='color:{PENDING_COLOUR}'>release to save</span>"
        elif automatic and st.status == "done":  # the last run had no threshold set: this is its automatic one
            text += " (automatic: median + k·MAD of the score volume)"
        elif automatic:
            text += (f" — <span style='color:{PENDING_COLOUR}'>automatic from the next run on (the line shows the "
                     f"last run's threshold): run the step again</span>")
        elif st.status == "stale":
            text += f" — <span style='color:{PENDING_COLOUR}'>not applied yet: run the step again</span>"
        self.threshold_label.setText(text)

    def set_threshold(self, value: float | None) -> None:
        """Write ``threshold`` (None: automatic) into the step's parameters; emits :attr:`marks_changed`."""
        if self.project.readonly:
            return
        v = None if value is None else round(float(value), 4)
        self.project.set_params(self.step_id, {"threshold": v})
        self.note.setText(self.status_note())
        self.show_histogram()
        self.draw_picks()
        self.marks_changed.emit()
