"""Previews of ``align`` and ``assign_alignment``.

``align`` (:class:`AlignPreview`): the binned series the alignment was measured on, with the patch tracks of the
current view drawn over it (tracked patches as small cyan circles, patches the model rejected as outliers in
orange; untracked ones are not drawn), the residual of every view as bars against tilt (views whose residual is
more than twice the series' median in red) and the fitted tilt axis, tilt-angle offset and mean residual. When
the step wrote the interpolated, aligned stack (role ``interp``), "Show aligned series" puts it in the viewer.

Tracks (role ``tracks``, npz): ``positions_px`` (n_views, n_patches, 2) as (x, y) px of the binned stack from the
image centre ((n − 1)/2), NaN where the patch was not tracked; ``rejected`` (n_patches,) bool. Pixel (row y,
column x) covers [x, x+1) × [y, y+1) in the viewer's scene, so a position p is drawn at p + n/2.

``assign_alignment`` (:class:`AssignPreview`): the full-size series in the viewer, with the geometry it received.
"""

from __future__ import annotations

import html

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QSplitter, QWidget

from tomoguide.geometry import TiltSeriesGeometry
from tomoguide.pages.preview_series import SeriesPreview, SeriesSetPreview, read_stack, viewer_arrays
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry
from tomoguide.widgets.ctf_plots import BAR_COLOUR, CURRENT_COLOUR, SUSPICIOUS_COLOUR, TiltBarPlot
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer

TRACK_COLOUR = "#4dd0e1"
REJECTED_COLOUR = "#ff9800"
HIGH_RESIDUAL_FACTOR = 2.0
MARKER_COLOUR = "#ffeb3b"  # particles used as fiducial markers
TRACK_MARKER_PX = 4.0  # marker diameter on screen (small: 80 % overlapping patches are dense)


def high_residuals(residual_px: np.ndarray, factor: float = HIGH_RESIDUAL_FACTOR) -> np.ndarray:
    """Views whose residual (px) is more than ``factor`` × the median of the finite residuals; (n,) bool."""
    r = np.asarray(residual_px, dtype=np.float64)
    finite = np.isfinite(r)
    if not finite.any():
        return np.zeros(len(r), bool)
    return finite & (r > factor * float(np.median(r[finite])))


def _view_notes(info: dict) -> str:
    """Summary additions from the align step's record: weak views bridged over, views found with the widened
    search (a jump), and the tilt-axis notes (1-based view numbers, as in the exclusion lists)."""
    parts = []
    weak = info.get("weak_views") or []
    if weak:
        parts.append(f"views {', '.join(str(i + 1) for i in weak)} weak (dark or blank?): bridged over, down-weighted")
    wide = info.get("widened_views") or []
    if wide:
        parts.append(f"views {', '.join(str(i + 1) for i in wide)} found far away (a jump?)")
    text = "".join(f" · {p}" for p in parts)
    for note in info.get("axis_notes") or []:
        text += f"<br><span style='color:#b36b00'>{html.escape(note)}</span>"
    return text


def alignment_summary(g: TiltSeriesGeometry) -> str:
    """One line: tilt axis, tilt-angle offset and the range of the per-view shifts (px at the record's binning)."""
    text = f"tilt axis {g.tilt_axis_deg:.2f}° · tilt offset {g.tilt_offset_deg:+.2f}°"
    if g.xf is not None:
        shifts = np.asarray(g.xf, dtype=np.float64)[:, :, 2]
        text += (f" · shifts up to {float(np.abs(shifts).max()):.1f} px "
                 f"({float(np.abs(shifts).max()) * g.pixel_size_binned_A / 10.0:.1f} nm)")
    else:
        text += " · not aligned"
    n_ex = int(sum(g.excluded))
    return text + (f" · {n_ex} view(s) excluded" if n_ex else "")


class ResidualBarPlot(TiltBarPlot):
    """Residual per view (px) as bars; the high ones (:func:`high_residuals`) red, the current one (if not high)
    yellow."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__("px", parent)  # short: the plot may be low; the caption names it
        self.plot.getAxis("left").enableAutoSIPrefix(False)  # residuals below 1 px: no "(x0.001)"
        self.high = np.zeros(0, bool)

    def set_data(self, tilt_deg: np.ndarray, values: np.ndarray) -> None:
        self.high = high_residuals(values)
        super().set_data(tilt_deg, np.nan_to_num(np.asarray(values, dtype=np.float64)))
        n_high = int(self.high.sum())
        self.caption.setText(f"Residual per view (px) · " + (
            f"<span style='color:{SUSPICIOUS_COLOUR}'>{n_high} view(s) above {HIGH_RESIDUAL_FACTOR:g}× the "
            f"median in red</span>" if n_high else "no view stands out"))

    def bar_colours(self) -> list[str]:
        high = self.high if len(self.high) == len(self.values) else np.zeros(len(self.values), bool)
        # a high residual stays red when its view is the current one (the dashed line marks the current view)
        return [SUSPICIOUS_COLOUR if high[i] else (CURRENT_COLOUR if i == self._current else BAR_COLOUR)
                for i in range(len(self.values))]


class AlignPreview(SeriesSetPreview):
    """align: binned series with patch tracks, residual per view, tilt axis / offset / mean residual."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.stack: np.ndarray | None = None
        self.interp: np.ndarray | None = None
        self.positions = np.zeros((0, 0, 2))
        self.rejected = np.zeros(0, bool)
        self.markers = np.zeros((0, 0, 2))  # (n, K, 2) located marker positions, px from the raw centre
        self.residuals = np.zeros(0)
        self.showing = "stack"
        self._entry: SeriesEntry | None = None
        self.viewer = TiltSeriesViewer()
        self.viewer.index_changed.connect(self._on_view)
        self.tracked_item = pg.ScatterPlotItem(symbol="o", size=TRACK_MARKER_PX, brush=None,
                                               pen=pg.mkPen(TRACK_COLOUR, width=1.0))
        self.rejected_item = pg.ScatterPlotItem(symbol="o", size=TRACK_MARKER_PX, brush=None,
                                                pen=pg.mkPen(REJECTED_COLOUR, width=1.0))
        self.marker_item = pg.ScatterPlotItem(symbol="s", size=TRACK_MARKER_PX + 4.0, brush=None,
                                              pen=pg.mkPen(MARKER_COLOUR, width=1.2))
        for item in (self.tracked_item, self.rejected_item, self.marker_item):
            item.setZValue(10)
            self.viewer.view.addItem(item)
        self.tracks_box = QCheckBox("Show patch tracks")
        self.tracks_box.setChecked(True)
        self.tracks_box.toggled.connect(lambda _: self._draw_tracks())
        self.markers_box = QCheckBox("Show markers")
        self.markers_box.setToolTip("The particles the alignment was refined with, where they were found in this view")
        self.markers_box.setChecked(True)
        self.markers_box.toggled.connect(lambda _: self._draw_tracks())
        self.aligned_box = QCheckBox("Show aligned series")
        self.aligned_box.setObjectName("show_aligned")
        self.aligned_box.setToolTip("The interpolated, aligned stack the step wrote for viewing (tilt axis vertical)")
        self.aligned_box.toggled.connect(lambda on: self.set_showing("interp" if on else "stack"))
        self.bars = ResidualBarPlot()
        self.bars.view_clicked.connect(self.select_view)
        self.summary = QLabel("")
        self.summary.setObjectName("align_summary")
        self.summary.setWordWrap(True)
        self.summary.setTextFormat(Qt.TextFormat.RichText)
        self.view_info = QLabel("")
        self.view_info.setObjectName("align_view_info")
        self.view_info.setWordWrap(True)
        self.viewer.info_label.hide()
        boxes = QHBoxLayout()
        boxes.addWidget(self.tracks_box)
        boxes.addWidget(self.markers_box)
        boxes.addWidget(self.aligned_box)
        boxes.addStretch(1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.viewer)
        split.addWidget(self.bars)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([480, 170])
        split.setChildrenCollapsible(False)
        self.bars.setMinimumHeight(120)
        self.body.addWidget(self.summary)
        self.body.addLayout(boxes)
        self.body.addWidget(split, 1)
        self.body.addWidget(self.view_info)
        self.refresh()

    # -- series ----------------------------------------------------------------------------------------------
    def show_series(self, entry: SeriesEntry) -> None:
        g = entry.geometry
        n = g.n_views
        self._entry = entry
        self.stack = read_stack(entry.path("stack", self.base))
        self.interp = read_stack(entry.path("interp", self.base)) if "interp" in entry.files else None
        if "tracks" in entry.files:
            with np.load(entry.path("tracks", self.base)) as z:
                self.positions = np.asarray(z["positions_px"], dtype=np.float64)
                self.rejected = np.asarray(z["rejected"], dtype=bool)
        else:
            self.positions, self.rejected = np.zeros((n, 0, 2)), np.zeros(0, bool)
        self.residuals = np.asarray(entry.info.get("residual_per_view_px", [np.nan] * n), dtype=np.float64)
        tilts = np.asarray(g.tilt_angles_deg, dtype=np.float64)
        self.bars.set_data(tilts, self.residuals)
        mean = entry.info.get("mean_residual_px")
        n_patches = self.positions.shape[1]
        mean_text = f"<b>mean residual {mean:.2f} px</b>" if mean is not None else "mean residual unknown"
        marker_text = ""
        self.markers = np.zeros((n, 0, 2))
        if "markers" in entry.files:
            with np.load(entry.path("markers", self.base)) as z:
                self.markers = np.asarray(z["positions_px"], dtype=np.float64)
                patch_axis = float(z["patch_tilt_axis_deg"])
                n_markers = int(np.asarray(z["points_px"]).shape[0])
            marker_text = (f" · refined with <b>{n_markers} particles as markers</b> (patch tracking alone: "
                           f"axis {patch_axis:.2f}°)")
        self.summary.setText(f"Tilt axis <b>{g.tilt_axis_deg:.2f}°</b> · tilt-angle offset "
                             f"<b>{g.tilt_offset_deg:+.2f}°</b> · {mean_text} "
                             f"({mean * g.pixel_size_binned_A / 10.0 if mean is not None else float('nan'):.2f} nm) · "
                             f"{n_patches} patches, <span style='color:{REJECTED_COLOUR}'>{int(self.rejected.sum())} "
                             f"rejected</span>{marker_text}{_view_notes(entry.info)}")
        self.aligned_box.setEnabled(self.interp is not None)
        self.aligned_box.setToolTip("The interpolated, aligned stack the step wrote for viewing" if self.interp
                                    is not None else "The step wrote no aligned stack (set 'Aligned stack binning')")
        if self.interp is None and self.showing == "interp":
            self.showing = "stack"
            self.aligned_box.blockSignals(True)
            self.aligned_box.setChecked(False)
            self.aligned_box.blockSignals(False)
        self._load_viewer()

    def clear_series(self) -> None:
        self._entry = None
        self.stack = self.interp = None
        self.positions, self.rejected = np.zeros((0, 0, 2)), np.zeros(0, bool)
        self.markers = np.zeros((0, 0, 2))
        self.viewer.clear()
        self.bars.set_data(np.zeros(0), np.zeros(0))
        self.tracked_item.clear()
        self.marker_item.clear()
        self.rejected_item.clear()
        self.summary.setText("")
        self.view_info.setText("")
        self.aligned_box.setEnabled(False)

    def set_showing(self, which: str) -> None:
        """Show the binned series the tracks were measured on (``"stack"``) or the aligned one (``"interp"``)."""
        if which not in ("stack", "interp"):
            raise ValueError(f"showing: 'stack' or 'interp', not {which!r}")
        if which == "interp" and self.interp is None:
            raise ValueError("this series has no aligned (interpolated) stack")
        self.showing = which
        if self.aligned_box.isChecked() != (which == "interp"):
            self.aligned_box.blockSignals(True)
            self.aligned_box.setChecked(which == "interp")
            self.aligned_box.blockSignals(False)
        self._load_viewer()

    def _load_viewer(self) -> None:
        entry = self._entry
        if entry is None or self.stack is None:
            return
        current = self.viewer.current_index() if self.viewer.isEnabled() else None
        stack = self.interp if self.showing == "interp" and self.interp is not None else self.stack
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        what = "aligned (interpolated) series" if stack is self.interp else "series the alignment was measured on"
        self.viewer.title_label.setText(f"<b>{entry.name}</b> — {what}, {stack.shape[2]}×{stack.shape[1]} px")
        if current is not None and current < stack.shape[0]:
            self.viewer.show_index(current)

    # -- view ------------------------------------------------------------------------------------------------
    def select_view(self, view_index: int) -> None:
        self.viewer.show_index(view_index)

    def current_view(self) -> int:
        return self.viewer.current_index()

    def track_positions(self, view_index: int) -> tuple[np.ndarray, np.ndarray]:
        """Scene positions (k, 2) (x, y) of the tracked and of the rejected patches on a view (NaN left out)."""
        if self.stack is None or not self.positions.size:
            return np.zeros((0, 2)), np.zeros((0, 2))
        ny, nx = self.stack.shape[1:]
        p = self.positions[view_index] + np.array([nx / 2.0, ny / 2.0])
        ok = np.all(np.isfinite(p), axis=1)
        rej = self.rejected if len(self.rejected) == len(p) else np.zeros(len(p), bool)
        return p[ok & ~rej], p[ok & rej]

    def marker_positions(self, view_index: int) -> np.ndarray:
        """Scene positions (k, 2) (x, y) of the markers found on a view (none where the step used none)."""
        if self.stack is None or not self.markers.size or view_index >= self.markers.shape[0]:
            return np.zeros((0, 2))
        ny, nx = self.stack.shape[1:]
        p = self.markers[view_index] + np.array([nx / 2.0, ny / 2.0])
        return p[np.all(np.isfinite(p), axis=1)]

    def _draw_tracks(self) -> None:
        raw = self.showing == "stack" and self.stack is not None
        visible = self.tracks_box.isChecked() and raw
        self.tracked_item.setVisible(visible)
        self.rejected_item.setVisible(visible)
        self.markers_box.setEnabled(bool(self.markers.size))
        show_markers = self.markers_box.isChecked() and raw and bool(self.markers.size)
        self.marker_item.setVisible(show_markers)
        if show_markers:
            self.marker_item.setData(pos=self.marker_positions(self.viewer.current_index()))
        if not visible:
            return
        good, bad = self.track_positions(self.viewer.current_index())
        self.tracked_item.setData(pos=good)
        self.rejected_item.setData(pos=bad)

    def _on_view(self, i: int) -> None:
        entry = self._entry
        if entry is None:
            return
        self._draw_tracks()
        self.bars.set_current(i)
        g = entry.geometry
        good, bad = self.track_positions(i)
        r = self.residuals[i] if i < len(self.residuals) else float("nan")
        high = bool(self.bars.high[i]) if i < len(self.bars.high) else False
        res_text = f"residual {r:.2f} px" if np.isfinite(r) else "residual unknown"
        if high:
            res_text = f"<span style='color:{SUSPICIOUS_COLOUR}'>{res_text} (high)</span>"
        shift = ""
        if g.xf is not None:
            dx, dy = np.asarray(g.xf[i])[:, 2]
            shift = f" · shift ({dx:+.1f}, {dy:+.1f}) px"
        excluded = " · <b>excluded</b>" if g.excluded[i] else ""
        if self.markers.size:
            excluded = (f", <span style='color:{MARKER_COLOUR}'>□ {len(self.marker_positions(i))} markers</span>"
                        f"{excluded}")
        self.view_info.setText(f"<b>Tilt {g.tilt_angles_deg[i]:+.1f}°</b> (view {i + 1}/{g.n_views}) · {res_text}"
                               f"{shift} · <span style='color:{TRACK_COLOUR}'>○ {len(good)} tracked</span>, "
                               f"<span style='color:{REJECTED_COLOUR}'>○ {len(bad)} rejected</span>{excluded}")


class AssignPreview(SeriesPreview):
    """assign_alignment: the full-size series with the alignment it received (SeriesPreview + summary)."""

    def show_series(self, entry: SeriesEntry) -> None:
        super().show_series(entry)
        g = entry.geometry
        self.series_info.setText(f"{self.series_info.text()} · {alignment_summary(g)}")
