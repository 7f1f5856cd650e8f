"""The ``pick`` preview (issue 7 items 1 and 6): picks drawn on the tomogram's slices, and the score histogram.

Per tilt series (chooser at the top):

* the ``reconstruct`` step's tomogram (MRC ``(nz, ny, nx)``) in a :class:`SliceViewer`, with the picks of the last
  run (``particles.star``, RELION 5) drawn as squares ``box_px`` wide (the display box size of the step) in every
  pane, for the particles whose centre lies within ± half a box of the slice shown; the nearer the particle's
  centre to the slice, the more opaque its square (and the cross at its centre). Oriented picks (surface models)
  also get a line from the centre along the particle's z axis ``A · (0, 0, 1)`` (the surface normal), half a box
  long, projected on the pane. Scene coordinates: voxel ``i`` spans ``[i, i + 1)``, so a
  particle at voxel ``(x, y, z)`` (0-based, corner origin, :class:`~tomoguide.compute.io.coords.ParticleTable`)
  is drawn at ``(x + 0.5, y + 0.5)`` in XY, ``(x + 0.5, z + 0.5)`` in XZ and ``(z + 0.5, y + 0.5)`` in YZ;
* for template matching, the histogram of the score-volume peaks (``scores.npz``: ``<name>_hist_counts``,
  ``<name>_hist_edges``, ``<name>_peak_scores``) as bars, bins whose centre is at or above the threshold in
  colour, the others grey, and the threshold as a draggable vertical line. Releasing the line writes
  ``threshold`` through :meth:`Project.set_params` (the step becomes stale) and emits :attr:`marks_changed`, so
  that the step page refreshes its form; "Automatic" writes ``None`` back (the noise-model threshold of
  :func:`tomoguide.compute.pick.automatic_threshold`, per tomogram). With the automatic threshold the noise model
  of the last run (the step's metrics ``noise_mean``, ``noise_sigma``, ``noise_n``) is drawn over the bars as a
  curve: the noise peaks expected per bin, ``noise_n · bin width · N(score; mean, sigma)``, and the label says
  how the threshold was chosen.

A run that failed (e.g. no particle above the threshold: the step names the threshold, the highest score and what
to change) shows its message in the note at the top, and the line under the slices says in red that there are no
picks because of it.

Clicking (methods ``surface`` and ``manual``; the slices' ``voxel_clicked``, any pane, the clicked pane's own
coordinate being its slice) edits the step's parameters through :meth:`Project.set_params` (the project file
records the clicks; the step becomes stale) and emits :attr:`marks_changed`. Clicked points are stored in Å from
the tomogram centre (:func:`tomoguide.steps.pick.px_to_centred_A`: voxel ``(n − 1) / 2`` is 0):

* ``surface``: a click adds ``[tomogram, x_A, y_A, z_A, object]`` to ``surface_points`` for the current object
  (the "Object" number; "New object" starts the next one); a click within :data:`POINT_REMOVE_PX` voxels of a
  point of the tomogram removes it instead. The points on the shown slices are drawn as dots (a colour per
  object), and the ellipsoid fitted to each object's points (as the run will fit it,
  :func:`tomoguide.steps.pick.fit_surface_model`'s fit) as its outline in each pane;
* ``manual``: a click adds ``[tomogram, x_A, y_A, z_A]`` to ``manual_points``; a click within a particle radius
  (the step's ``outer_radius_A``) of a pick removes that pick instead. The clicked picks are drawn as dashed
  orange squares ``box_px`` wide (the run's picks, drawn green, coincide once it has run).

Before the step has run the tomogram is shown without picks (when the reconstruction exists), with the
"No results yet" note.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSpinBox, QSplitter, QVBoxLayout, QWidget

from tomoguide.compute.euler import euler_to_matrix
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
NOISE_COLOUR = "#e0e0e0"
FAILED_COLOUR = "#ff5252"
MANUAL_COLOUR = "#ff9800"
#: a colour per surface object (cycled)
OBJECT_COLOURS = ("#ff4081", "#40c4ff", "#ffd740", "#b388ff", "#69f0ae", "#ff6e40")
#: a click this close (voxels, 3D) to a contour point removes the point instead of adding one
POINT_REMOVE_PX = 1.5


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
        self._axes: np.ndarray | None = None  # (n, 3) the picks' z axes A · (0, 0, 1) when they have angles

        self.slices = SliceViewer()
        self.slices.slice_changed.connect(lambda *_: self.draw_picks())
        self.overlays: dict[Axis, pg.ScatterPlotItem] = {}
        self.centres: dict[Axis, pg.ScatterPlotItem] = {}
        self.axis_lines: dict[Axis, pg.PlotDataItem] = {}
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
            # oriented picks (surface models): a line from the centre along the particle's z axis (the normal)
            arrow = pg.PlotDataItem(connect="pairs", pen=pg.mkPen(PICK_COLOUR, width=1.5, cosmetic=True))
            arrow.setZValue(6)
            self.slices.panes[a].view.addItem(arrow, ignoreBounds=True)
            self.axis_lines[a] = arrow
        # clicked points: contour dots, fitted outlines, manual picks
        self.contour_marks: dict[Axis, pg.ScatterPlotItem] = {}
        self.outlines: dict[Axis, pg.PlotDataItem] = {}
        self.manual_marks: dict[Axis, pg.ScatterPlotItem] = {}
        self.manual_centres: dict[Axis, pg.ScatterPlotItem] = {}
        for a in AXES:
            dots = pg.ScatterPlotItem(pxMode=True, symbol="o", size=7)
            dots.setZValue(8)
            self.slices.panes[a].view.addItem(dots, ignoreBounds=True)
            self.contour_marks[a] = dots
            line = pg.PlotDataItem(connect="finite")
            line.setZValue(7)
            self.slices.panes[a].view.addItem(line, ignoreBounds=True)
            self.outlines[a] = line
            boxes = pg.ScatterPlotItem(pxMode=False, symbol="s", brush=None)
            boxes.setZValue(6)
            self.slices.panes[a].view.addItem(boxes, ignoreBounds=True)
            self.manual_marks[a] = boxes
            cross = pg.ScatterPlotItem(pxMode=True, symbol="x", size=9, pen=pg.mkPen(MANUAL_COLOUR, width=1.5),
                                       brush=pg.mkBrush(MANUAL_COLOUR))
            cross.setZValue(6)
            self.slices.panes[a].view.addItem(cross, ignoreBounds=True)
            self.manual_centres[a] = cross
        self._fits: dict[tuple[str, int], Any] = {}
        self._fit_errors: dict[tuple[str, int], str] = {}
        self._fits_key: Any = None
        self.slices.voxel_clicked.connect(self.on_voxel_clicked)
        self.click_info = QLabel("")
        self.click_info.setObjectName("click_info")
        self.click_info.setWordWrap(True)
        self.click_info.setTextFormat(Qt.TextFormat.RichText)
        self.object_spin = QSpinBox()
        self.object_spin.setObjectName("object_number")
        self.object_spin.setRange(1, 999)
        self.object_spin.setPrefix("Object ")
        self.object_spin.setToolTip("The object (vesicle) the next clicks belong to; one surface is fitted per "
                                    "object")
        self.object_spin.valueChanged.connect(lambda _: self.draw_clicks())
        self.new_object_button = QPushButton("New object")
        self.new_object_button.setObjectName("new_object")
        self.new_object_button.setToolTip("Start the outline of another vesicle or membrane")
        self.new_object_button.clicked.connect(self.new_object)
        self.undo_button = QPushButton("Remove last")
        self.undo_button.setObjectName("remove_last")
        self.undo_button.setToolTip("Remove the last point clicked (of this object, or the last manual pick)")
        self.undo_button.clicked.connect(self.remove_last)
        self.clear_button = QPushButton("Clear")
        self.clear_button.setObjectName("clear_clicks")
        self.clear_button.setToolTip("Remove all points of this object (surface) or all picks of this tomogram "
                                     "(manual)")
        self.clear_button.clicked.connect(self.clear_clicks)
        self.click_box = QWidget()
        cl = QHBoxLayout(self.click_box)
        cl.setContentsMargins(0, 0, 0, 0)
        cl.addWidget(self.click_info, 1)
        cl.addWidget(self.object_spin)
        cl.addWidget(self.new_object_button)
        cl.addWidget(self.undo_button)
        cl.addWidget(self.clear_button)
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
        # a short title that fits the plot (the long explanation is the tooltip)
        self.plot.setTitle(f"Peak scores · <span style='color:{NOISE_COLOUR}'>━ noise model</span> · drag the "
                           "line to set the threshold", size="9pt")
        self.plot.setToolTip("Histogram of the score-volume peaks in the specimen; the curve is the noise model of "
                             "the automatic threshold (noise peaks expected per bin); drag the vertical line to set "
                             "the threshold, release to save it")
        self.plot.setMinimumSize(220, 160)
        self.above_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=ABOVE_COLOUR, pen=None)
        self.below_bars = pg.BarGraphItem(x0=[], x1=[], height=[], brush=BELOW_COLOUR, pen=None)
        self.plot.addItem(self.below_bars)
        self.plot.addItem(self.above_bars)
        # the noise model of the automatic threshold: noise peaks expected per bin
        self.noise_curve = pg.PlotDataItem(pen=pg.mkPen(NOISE_COLOUR, width=2, cosmetic=True))
        self.noise_curve.setZValue(8)
        self.plot.addItem(self.noise_curve)
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
        self.auto_button.setToolTip("Forget the threshold set here: automatic, from a noise model of each "
                                    "tomogram's peak scores")
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
        # the slices get most of the height (the picks must be visible); the histogram keeps room for its axes,
        # title and the threshold line under it (a squeezed layout would draw them over each other)
        self.plot.setMinimumHeight(120)
        hist_box.setMinimumHeight(190)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.slices)
        split.addWidget(hist_box)
        split.setChildrenCollapsible(False)
        split.setSizes([560, 220])
        split.setStretchFactor(0, 4)
        split.setStretchFactor(1, 1)
        self.body.addWidget(self.click_box)
        self.body.addWidget(split, 1)
        self.body.addWidget(self.count_label)
        self.refresh()

    # -- loading ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.note.setText(self.status_note())
        self._load_results()
        self._fits_key = None  # the model or the points may have changed
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

    def status_note(self) -> str:
        """The base note, or the message of a failed last run."""
        st = self.project.data.steps[self.step_id]
        if st.status == "failed" and st.error:
            return f"The last run failed: {st.error}"
        return super().status_note()

    def failure(self) -> str:
        """The message of the last run when it failed, else ''."""
        st = self.project.data.steps[self.step_id]
        return st.error or "" if st.status == "failed" else ""

    def series_metrics(self) -> dict[str, Any]:
        """The last run's metrics of the tomogram shown ({} when none)."""
        if self._entry is None:
            return {}
        m = self.project.data.steps[self.step_id].metrics.get("series", {}).get(self._entry.name, {})
        return m if isinstance(m, dict) else {}

    def automatic_text(self) -> str:
        """How the last run's automatic threshold was chosen, in words (from the step's metrics)."""
        m = self.series_metrics()
        if "noise_mean" not in m:
            return "noise model of the peak scores"
        text = (f"noise model of the peak scores, noise {m['noise_mean']:.3f} ± {m['noise_sigma']:.3f}, "
                f"{m.get('noise_expected_false', 1.0):g} noise peak expected above {m['noise_threshold']:.3f}")
        if m.get("threshold_how") == "particles":
            text += ", raised into the gap below the particles"
        return text

    def box_px(self) -> float:
        """The display box size (px of the tomogram), from the step's parameters (empty: 1.2 × the particle's
        diameter at the shown tomogram's voxel size, :func:`tomoguide.steps.pick.display_box_px`)."""
        from tomoguide.steps.pick import display_box_px

        voxel = float(self._entry.geometry.pixel_size_binned_A) if self._entry is not None else 10.0
        return float(display_box_px(self.project.params(self.step_id), voxel))

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
            for item in (*self.overlays.values(), *self.centres.values(), *self.axis_lines.values()):
                item.clear()
            self.slices.set_volume(volume, voxel, name=entry.name)
            self._volume_key = key
        self._entry = entry
        self.series_info.setText(f"{nx}×{ny}×{nz} voxels · {voxel:.2f} Å/voxel")
        if self.table is not None:
            mine = self.table.tomo_name == entry.name
            self._xyz = self.table.xyz_px[mine]
            self._axes = (None if self.table.angles_deg is None
                          else euler_to_matrix(self.table.angles_deg[mine]).reshape(-1, 3, 3)[:, :, 2])
        else:
            self._xyz = np.zeros((0, 3))
            self._axes = None
        self.draw_picks()
        self.show_histogram()

    def clear_series(self) -> None:
        self._entry = None
        self._volume_key = None
        self._xyz = np.zeros((0, 3))
        self.slices.clear()
        self._axes = None
        for item in (*self.overlays.values(), *self.centres.values(), *self.axis_lines.values(),
                     *self.contour_marks.values(), *self.manual_marks.values(), *self.manual_centres.values(),
                     *self.outlines.values()):
            item.clear()
        self.count_label.setText("")
        self.click_box.setVisible(False)
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
            if self._axes is not None and len(rows):
                u_col, v_col = {"xy": (0, 1), "xz": (0, 2), "yz": (2, 1)}[a]
                tip = uv + (box / 2.0) * self._axes[rows][:, [u_col, v_col]]
                seg = np.stack([uv, tip], axis=1).reshape(-1, 2)
                self.axis_lines[a].setData(seg[:, 0], seg[:, 1], connect="pairs")
            else:
                self.axis_lines[a].setData([], [])
            shown[a] = len(rows)
        n = len(self._xyz)
        failed = self.failure()
        if failed:  # the message itself is in the note above (and on the step page)
            text = (f"<span style='color:{FAILED_COLOUR}'><b>No picks: the last run failed</b> (the message above "
                    f"says why and what to change)</span>")
        elif self.table is None:
            text = "No picks yet: run the step." if not self.results_error else ""
        else:
            st = self.project.data.steps[self.step_id]
            text = (f"<b>{n} pick{'s' if n != 1 else ''}</b> in {self._entry.name} · squares {box:g} px wide around "
                    f"the picks within ±{box / 2:g} px of each slice (XY {shown['xy']}, XZ {shown['xz']}, "
                    f"YZ {shown['yz']}); fainter = centre further from the slice")
            if st.status == "stale":
                text += f" — <span style='color:{PENDING_COLOUR}'>picks of the last run: run the step again</span>"
        self.count_label.setText(text)
        self.draw_clicks()

    # -- the histogram and the threshold ---------------------------------------------------------------------
    def histogram(self) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
        """``(counts (bins,), edges (bins + 1,), peak scores (n,))`` of the current tomogram, or None (also when
        the method is not template matching)."""
        if self._entry is None or self.method() != "template":
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
            self.noise_curve.setData([], [])
            return
        counts, edges, _ = hist
        thr, _ = self.current_threshold()
        curve = self.noise_model_curve()
        if curve is not None:
            self.noise_curve.setData(*curve)
        else:
            self.noise_curve.setData([], [])
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

    def noise_model_curve(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(scores (k,), noise peaks expected per bin (k,))`` of the last run's noise model over the histogram's
        range (bins of the histogram), or None without a model."""
        hist = self.histogram()
        m = self.series_metrics()
        if hist is None or not all(k in m for k in ("noise_mean", "noise_sigma", "noise_n")):
            return None
        edges = hist[1]
        width = float(edges[1] - edges[0])
        x = np.linspace(float(edges[0]), float(edges[-1]), 400)
        u = (x - float(m["noise_mean"])) / float(m["noise_sigma"])
        y = float(m["noise_n"]) * width * np.exp(-0.5 * u * u) / (float(m["noise_sigma"]) * np.sqrt(2 * np.pi))
        return x, y

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
            text += f" (automatic: {self.automatic_text()})"
        elif automatic:
            text += (f" — <span style='color:{PENDING_COLOUR}'>automatic from the next run on (the line shows the "
                     f"last run's threshold): run the step again</span>")
        elif st.status == "stale":
            text += f" — <span style='color:{PENDING_COLOUR}'>not applied yet: run the step again</span>"
        self.threshold_label.setText(text)

    def set_threshold(self, value: float | None) -> None:
        """Write ``threshold`` (None: automatic) into the step's parameters; emits :attr:`marks_changed`. When the
        project restores a kept run of these parameters (e.g. back to automatic after a run with a value), its
        picks, histogram and threshold are shown."""
        if self.project.readonly:
            return
        v = None if value is None else round(float(value), 4)
        before = self.project.data.steps[self.step_id].run_dir
        self.project.set_params(self.step_id, {"threshold": v})
        if self.project.data.steps[self.step_id].run_dir != before:  # a kept run came back
            self.refresh()
        else:
            self.note.setText(self.status_note())
            self.show_histogram()
            self.draw_picks()
        self.marks_changed.emit()

    # -- clicking: surface contour points and manual picks ----------------------------------------------------
    def method(self) -> str:
        return str(self.project.params(self.step_id).method)

    def _tomo_geometry(self) -> tuple[str, tuple[int, int, int], float] | None:
        """(name, (nx, ny, nz), voxel Å) of the tomogram shown, or None."""
        vol = self.slices.volume
        if self._entry is None or vol is None:
            return None
        nz, ny, nx = vol.shape
        return self._entry.name, (nx, ny, nz), float(self._entry.geometry.pixel_size_binned_A)

    def surface_points_px(self) -> tuple[np.ndarray, np.ndarray]:
        """The current tomogram's contour points: ``(xyz (n, 3)`` voxels, ``object numbers (n,))``, and nothing
        else (rows of other tomograms are kept in the parameter but not returned)."""
        from tomoguide.steps.pick import centred_A_to_px

        geo = self._tomo_geometry()
        rows = [r for r in self.project.params(self.step_id).surface_points if geo and r[0] == geo[0]]
        if geo is None or not rows:
            return np.zeros((0, 3)), np.zeros(0, dtype=int)
        xyz = centred_A_to_px([r[1:4] for r in rows], geo[1], geo[2])
        return xyz, np.array([int(r[4]) for r in rows], dtype=int)

    def manual_points_px(self) -> np.ndarray:
        """The current tomogram's manual picks ``(n, 3)`` voxel (x, y, z)."""
        from tomoguide.steps.pick import centred_A_to_px

        geo = self._tomo_geometry()
        rows = [r for r in self.project.params(self.step_id).manual_points if geo and r[0] == geo[0]]
        if geo is None or not rows:
            return np.zeros((0, 3))
        return centred_A_to_px([r[1:4] for r in rows], geo[1], geo[2])

    def current_object(self) -> int:
        """The object (model number, 0-based) the next contour clicks belong to."""
        return int(self.object_spin.value()) - 1

    def fits(self) -> dict[tuple[str, int], Any]:
        """The surfaces fitted to the current contour points, per (tomogram, object) with enough points
        (:class:`tomoguide.compute.surface.Ellipsoid` in Å from the tomogram centre); cached per parameters."""
        from tomoguide.compute import surface
        from tomoguide.steps.pick import surface_groups

        params = self.project.params(self.step_id)
        key = (tuple(map(tuple, params.surface_points)), params.surface_model)
        if key != self._fits_key:
            self._fits, self._fit_errors = {}, {}
            for k, pts in surface_groups(params.surface_points).items():
                try:
                    self._fits[k] = surface.fit_ellipsoid(pts, params.surface_model)
                except ValueError as exc:
                    self._fit_errors[k] = str(exc)
            self._fits_key = key
        return self._fits

    def on_voxel_clicked(self, x: float, y: float, z: float) -> None:
        """A click in a pane at voxel (x, y, z): add or remove a contour point or a manual pick (see the module
        docstring); nothing for the other methods or a read-only project."""
        from tomoguide.steps.pick import px_to_centred_A

        method = self.method()
        geo = self._tomo_geometry()
        if method not in ("surface", "manual") or geo is None or self.project.readonly:
            return
        name, shape, voxel = geo
        here = np.array([x, y, z], dtype=np.float64)
        params = self.project.params(self.step_id)
        xyz_A = [round(float(v), 2) for v in px_to_centred_A(here, shape, voxel)[0]]
        if method == "surface":
            rows = [list(r) for r in params.surface_points]
            mine = [i for i, r in enumerate(rows) if r[0] == name]
            near = self._nearest(mine, rows, here, shape, voxel, POINT_REMOVE_PX)
            if near is not None:
                del rows[near]
            else:
                rows.append([name, *xyz_A, self.current_object()])
            self._write({"surface_points": rows})
        else:
            rows = [list(r) for r in params.manual_points]
            mine = [i for i, r in enumerate(rows) if r[0] == name]
            near = self._nearest(mine, rows, here, shape, voxel, max(params.outer_radius_A / voxel, 1.0))
            if near is not None:
                del rows[near]
            else:
                rows.append([name, *xyz_A])
            self._write({"manual_points": rows})

    @staticmethod
    def _nearest(indices: list[int], rows: list[list[Any]], here_px: np.ndarray, shape: tuple[int, int, int],
                 voxel: float, radius_px: float) -> int | None:
        """Index (into ``rows``) of the row among ``indices`` nearest to ``here_px`` within ``radius_px``."""
        from tomoguide.steps.pick import centred_A_to_px

        if not indices:
            return None
        xyz = centred_A_to_px([rows[i][1:4] for i in indices], shape, voxel)
        d = np.linalg.norm(xyz - here_px, axis=1)
        k = int(np.argmin(d))
        return indices[k] if d[k] <= radius_px else None

    def new_object(self) -> None:
        """Make the next clicks start another object: one more than the highest object of this tomogram."""
        _, objects = self.surface_points_px()
        self.object_spin.setValue(int(objects.max()) + 2 if len(objects) else 1)

    def remove_last(self) -> None:
        """Remove the last contour point of the current object (surface) or the last pick of this tomogram."""
        geo = self._tomo_geometry()
        if geo is None or self.project.readonly:
            return
        params = self.project.params(self.step_id)
        if self.method() == "surface":
            rows = [list(r) for r in params.surface_points]
            mine = [i for i, r in enumerate(rows) if r[0] == geo[0] and int(r[4]) == self.current_object()]
            if mine:
                del rows[mine[-1]]
                self._write({"surface_points": rows})
        elif self.method() == "manual":
            rows = [list(r) for r in params.manual_points]
            mine = [i for i, r in enumerate(rows) if r[0] == geo[0]]
            if mine:
                del rows[mine[-1]]
                self._write({"manual_points": rows})

    def clear_clicks(self) -> None:
        """Remove every point of the current object (surface) or every pick of this tomogram (manual)."""
        geo = self._tomo_geometry()
        if geo is None or self.project.readonly:
            return
        params = self.project.params(self.step_id)
        if self.method() == "surface":
            rows = [list(r) for r in params.surface_points
                    if not (r[0] == geo[0] and int(r[4]) == self.current_object())]
            self._write({"surface_points": rows})
        elif self.method() == "manual":
            self._write({"manual_points": [list(r) for r in params.manual_points if r[0] != geo[0]]})

    def _write(self, values: dict[str, Any]) -> None:
        self.project.set_params(self.step_id, values)
        self.note.setText(self.status_note())
        self.draw_picks()
        self.marks_changed.emit()

    def draw_clicks(self) -> None:
        """Contour points on each pane's slice, the fitted outlines, the manual picks, and the help line."""
        method = self.method()
        geo = self._tomo_geometry()
        active = method in ("surface", "manual") and geo is not None
        self.click_box.setVisible(active)
        for item in (*self.contour_marks.values(), *self.manual_marks.values(), *self.manual_centres.values(),
                     *self.outlines.values()):
            item.clear()
        if not active or geo is None:
            return
        name, shape, voxel = geo
        editable = not self.project.readonly
        for w in (self.undo_button, self.clear_button, self.new_object_button, self.object_spin):
            w.setEnabled(editable)
        self.object_spin.setVisible(method == "surface")
        self.new_object_button.setVisible(method == "surface")
        if method == "surface":
            self._draw_surface(name, shape, voxel)
        else:
            self._draw_manual()

    def _draw_surface(self, name: str, shape: tuple[int, int, int], voxel: float) -> None:
        from tomoguide.steps.pick import centred_A_to_px

        xyz, objects = self.surface_points_px()
        for a in AXES:
            rows, uv, _ = particles_near_slice(xyz, a, self.slices.index(a), 1.0)  # on the slice (±0.5 voxel)
            brushes = [pg.mkBrush(OBJECT_COLOURS[int(objects[r]) % len(OBJECT_COLOURS)]) for r in rows]
            self.contour_marks[a].setData(pos=uv, brush=brushes, pen=pg.mkPen("#000000", width=1), data=rows)
        # the fitted outlines where each pane's plane cuts the surfaces
        fits = {k: e for k, e in self.fits().items() if k[0] == name}
        centre = (np.asarray(shape, dtype=np.float64) - 1.0) / 2.0
        for a in AXES:
            depth_axis, u_col, v_col = {"xy": (2, 0, 1), "xz": (1, 0, 2), "yz": (0, 2, 1)}[a]
            plane_A = (self.slices.index(a) - centre[depth_axis]) * voxel
            us: list[np.ndarray] = []
            vs: list[np.ndarray] = []
            colours = []
            for (_, obj), ell in fits.items():
                ring = ell.section(plane_A, 180, axis=depth_axis)
                if len(ring) == 0:
                    continue
                px = centred_A_to_px(ring, shape, voxel) + 0.5
                us += [px[:, u_col], px[:1, u_col], [np.nan]]
                vs += [px[:, v_col], px[:1, v_col], [np.nan]]
                colours.append(obj)
            if us:
                colour = OBJECT_COLOURS[colours[0] % len(OBJECT_COLOURS)] if len(set(colours)) == 1 else "#ffffff"
                self.outlines[a].setData(np.concatenate(us), np.concatenate(vs), connect="finite",
                                         pen=pg.mkPen(colour, width=1.5, style=Qt.PenStyle.DashLine, cosmetic=True))
        obj = self.current_object()
        own = objects == obj
        z_here = {int(round(z)) for z in xyz[own, 2]}
        text = (f"<b>Surface picking</b>: click on the outline of a vesicle or membrane in a slice, then move the "
                f"Z slider and click on two or three more slices; click on a dot to remove it. "
                f"Object {obj + 1}: {int(own.sum())} point{'s' if own.sum() != 1 else ''}")
        if z_here:
            zs = ", ".join(map(str, sorted(z_here)))
            text += f" on {len(z_here)} slice{'s' if len(z_here) != 1 else ''} (Z {zs})"
        key = (name, obj)
        if key in self._fits:
            e = self._fits[key]
            size = " × ".join(f"{2 * v:.0f}" for v in e.axes) if e.kind == "ellipsoid" else f"{2 * e.axes[0]:.0f}"
            text += f" — {e.kind} fitted, diameter {size} Å, points {e.rms_A:.1f} Å from it (RMS)"
        elif key in self._fit_errors and own.sum() > 0:
            text += f" — <span style='color:{PENDING_COLOUR}'>{self._fit_errors[key]}</span>"
        n_obj = len(set(objects.tolist()))
        if n_obj > 1 or (n_obj == 1 and obj not in objects):
            text += f"; {n_obj} object{'s' if n_obj != 1 else ''} in this tomogram"
        self.click_info.setText(text)

    def _draw_manual(self) -> None:
        xyz = self.manual_points_px()
        box = self.box_px()
        colour = pg.mkColor(MANUAL_COLOUR)
        for a in AXES:
            rows, uv, dist = particles_near_slice(xyz, a, self.slices.index(a), box)
            alpha = (255 * (1.0 - 0.75 * dist / max(box / 2.0, 1e-9))).astype(int)
            pens = [pg.mkPen(colour.red(), colour.green(), colour.blue(), int(al), width=2,
                             style=Qt.PenStyle.DashLine, cosmetic=True) for al in alpha]
            self.manual_marks[a].setData(pos=uv, size=box, symbol="s", pen=pens, brush=None, pxMode=False, data=rows)
            self.manual_centres[a].setData(pos=uv, data=rows)
        on_slice = len(particles_near_slice(xyz, "xy", self.slices.index("xy"), box)[0])
        self.click_info.setText(f"<b>Manual picking</b>: click on a particle to add it at the slice shown, on a pick "
                                f"to remove it. {len(xyz)} pick{'s' if len(xyz) != 1 else ''} in this tomogram "
                                f"({on_slice} near this Z slice, dashed orange).")
