"""The ``motion_ctf`` preview: per tilt the aligned sum, the frame trajectory and the CTF spectrum; for the series
the defocus and fit resolution against tilt angle with suspicious tilts in red.

Files read (roles of the step's ``series.json``): ``stack`` (dose-weighted aligned sums, angle order),
``frame_shifts`` (STAR block ``frame_shifts``: per view and frame the fitted trajectory
``rlnMicrographShiftX/Y`` and the raw measurements ``tomoguideRawShiftX/Y``, px of the movie), ``ctf_star``
(per view rlnDefocusU/V (Å), rlnDefocusAngle (°), rlnCtfMaxResolution (Å), rlnCtfFigureOfMerit,
tomoguideCtfFailed/Reason) and ``ctf_preview`` (per view a (256, 256) image: left the spectrum, right the
fitted CTF², k = 0 at the centre, Nyquist of the CTF window at the edge). The tilt slider (angle order by
default), the points of the defocus plot and the bars select the same view.

Across the preview, between the images and the plots, CTFFIND's main diagnostic
(:class:`~tomoguide.widgets.ctf_plots.CtfProfilePlot`): the 1D spectrum against the fitted CTF² with the fit
quality per ring. It is computed for the view shown from what the
step stored: the view in ``stack`` is windowed and averaged again as the step did (same window, the tilted view's
defocus gradient rescaled to the recorded defocus), and :func:`~tomoguide.compute.ctffit.ctf_profile_1d` compares
it with the recorded fit (``ctf_star``). The frame-alignment step fitted the unweighted frame sum, while its stack
holds the dose-weighted sum: there the rings of late views look a little weaker than those the fit saw.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QSizePolicy, QSplitter, QVBoxLayout, QWidget

from tomoguide.pages.preview_series import SeriesSetPreview, read_stack, viewer_arrays
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry
from tomoguide.widgets.ctf_plots import (
    BACKGROUND,
    SUSPICIOUS_COLOUR,
    CtfProfilePlot,
    CtfSpectrumView,
    DefocusResolutionPlot,
    SuspiciousTilts,
    suspicious_tilts,
)
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer

FITTED_COLOUR = "#4fc3f7"
RAW_COLOUR = "#ffb74d"
MAX_FRAME_LABELS = 12


class TrajectoryPlot(QWidget):
    """The frame trajectory of one movie: the fitted (smooth) shifts as a line through numbered frames, the raw
    per-frame measurements as dots; x and y in px at the same scale."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.plot: pg.PlotItem = self.graphics.addPlot()
        self.plot.setAspectLocked(True)
        self.plot.showGrid(x=True, y=True, alpha=0.2)
        self.plot.setMenuEnabled(False)
        self.plot.setLabel("bottom", "Shift X (px)")
        self.plot.setLabel("left", "Shift Y (px)")
        self.plot.getViewBox().setDefaultPadding(0.15)  # room for the frame numbers
        self.plot.invertY(True)  # image convention: +Y downwards, like the aligned sum beside it
        self.fitted_item = pg.PlotDataItem(pen=pg.mkPen(FITTED_COLOUR, width=2), symbol="o", symbolSize=6,
                                           symbolBrush=FITTED_COLOUR, symbolPen=None, name="fitted")
        self.raw_item = pg.ScatterPlotItem(size=6, brush=pg.mkBrush(RAW_COLOUR), pen=None, name="measured")
        self.plot.addItem(self.fitted_item)
        self.plot.addItem(self.raw_item)
        self.labels: list[pg.TextItem] = []
        self.caption = QLabel("")
        self.caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.caption)

    def set_trajectory(self, frame_numbers: np.ndarray, fitted_xy_px: np.ndarray,
                       raw_xy_px: np.ndarray | None = None) -> None:
        """``frame_numbers`` (n,) 1-based; ``fitted_xy_px`` and ``raw_xy_px`` (n, 2) as (x, y) px."""
        frames = np.asarray(frame_numbers, dtype=int)
        fitted = np.asarray(fitted_xy_px, dtype=float).reshape(-1, 2)
        self.fitted_item.setData(fitted[:, 0], fitted[:, 1])
        if raw_xy_px is not None:
            raw = np.asarray(raw_xy_px, dtype=float).reshape(-1, 2)
            self.raw_item.setData(raw[:, 0], raw[:, 1])
        else:
            self.raw_item.clear()
        for t in self.labels:
            self.plot.removeItem(t)
        self.labels = []
        step = max(1, int(np.ceil(len(frames) / MAX_FRAME_LABELS)))
        for k, (f, (x, y)) in enumerate(zip(frames, fitted)):
            if k % step and k != len(frames) - 1:
                continue
            text = pg.TextItem(str(int(f)), color="#e0e0e0", anchor=(-0.3, 0.5))
            text.setPos(float(x), float(y))
            self.plot.addItem(text)
            self.labels.append(text)
        total = float(np.hypot(*(fitted[-1] - fitted[0]))) if len(fitted) > 1 else 0.0
        path = float(np.hypot(*np.diff(fitted, axis=0).T).sum()) if len(fitted) > 1 else 0.0
        self.caption.setText(f"<span style='color:{FITTED_COLOUR}'>— fitted</span> "
                             f"<span style='color:{RAW_COLOUR}'>● measured</span> · drift {total:.2f} px")
        self.caption.setToolTip(f"{len(frames)} frames; drift from the first to the last frame {total:.2f} px, "
                                f"along the path {path:.2f} px")
        self.plot.enableAutoRange()
        self.setEnabled(True)

    def clear(self) -> None:
        self.fitted_item.setData([], [])
        self.raw_item.clear()
        for t in self.labels:
            self.plot.removeItem(t)
        self.labels = []
        self.caption.setText("")
        self.setEnabled(False)


@dataclass
class MotionCtfSeries:
    """What the preview reads for one series: the frame shifts (one DataFrame per view) and, when the CTF was
    estimated, the CTF table (one row per view, angle order), the failed flags and the preview stack."""

    shifts: list[pd.DataFrame]
    ctf: pd.DataFrame | None
    failed: np.ndarray
    ctf_preview: np.ndarray | None
    nyquist_A: float | None
    motion_failed: np.ndarray | None = None  # (n_views,) bool: frames not aligned (flags["motion_failed"])


def load_motion_ctf(entry: SeriesEntry, base: Path) -> MotionCtfSeries:
    """Read the frame shifts and CTF files of one series of the ``motion_ctf`` output."""
    from tomoguide.compute.io.star import read_ctf_star, read_star

    n = entry.geometry.n_views
    shifts: list[pd.DataFrame] = [pd.DataFrame() for _ in range(n)]
    if "frame_shifts" in entry.files:
        table = read_star(entry.path("frame_shifts", base))["frame_shifts"]
        for i, df in table.groupby("tomoguideViewIndex"):
            if 0 <= int(i) < n:
                shifts[int(i)] = df.sort_values("rlnMicrographFrameNumber")
    failed = np.asarray(entry.flags.get("ctf_failed", [False] * n), dtype=bool)
    ctf = preview = nyquist = None
    if "ctf_star" in entry.files:
        ctf = read_ctf_star(entry.path("ctf_star", base))
        if len(ctf) != n:
            raise ValueError(f"{entry.path('ctf_star', base)}: {len(ctf)} rows for {n} views")
        if "tomoguideCtfFailed" in ctf:
            failed = failed | (ctf["tomoguideCtfFailed"].to_numpy(dtype=float) != 0)
        if "rlnMicrographPixelSize" in ctf:
            nyquist = 2.0 * float(ctf["rlnMicrographPixelSize"].iloc[0])
        if "ctf_preview" in entry.files:
            preview = read_stack(entry.path("ctf_preview", base))
    motion_failed = np.asarray(entry.flags.get("motion_failed", [False] * n), dtype=bool)
    return MotionCtfSeries(shifts=shifts, ctf=ctf, failed=failed, ctf_preview=preview, nyquist_A=nyquist,
                           motion_failed=motion_failed)


class MotionCtfPreview(SeriesSetPreview):
    """motion_ctf: aligned sum (tilt-series viewer), trajectory, CTF spectrum and the defocus plot."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.data: MotionCtfSeries | None = None
        self.suspicious: SuspiciousTilts | None = None
        self.viewer = TiltSeriesViewer()
        self.viewer.index_changed.connect(self._on_view)
        self.trajectory = TrajectoryPlot()
        self.spectrum = CtfSpectrumView()
        self.profile_plot = CtfProfilePlot()
        self.stack: np.ndarray | None = None
        self._profiles: dict[tuple[str, int], Any] = {}
        self.defocus_plot = DefocusResolutionPlot()
        self.defocus_plot.view_clicked.connect(self.select_view)
        self.tilt_info = QLabel("")
        self.tilt_info.setObjectName("tilt_ctf_info")
        self.tilt_info.setWordWrap(True)
        self.tilt_info.setTextFormat(Qt.TextFormat.RichText)

        # three rows (splitters, so the user can resize): aligned sum | spectrum; CTFFIND's 1D plot across the
        # whole width (its rings need the width); trajectory | defocus plot. The viewer's own line (tilt,
        # acquisition, dose) is repeated in tilt_info, under the whole grid
        self.viewer.info_label.hide()
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(self.viewer)
        top.addWidget(self.spectrum)
        bottom = QSplitter(Qt.Orientation.Horizontal)
        bottom.addWidget(self.trajectory)
        bottom.addWidget(self.defocus_plot)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.profile_plot)
        split.addWidget(bottom)
        for s, sizes in ((top, [500, 500]), (bottom, [400, 600]), (split, [520, 260, 320])):
            s.setChildrenCollapsible(False)
            for k in range(len(sizes)):
                s.setStretchFactor(k, 1)
            s.setSizes(sizes)
        for w in (self.viewer, self.spectrum, self.trajectory, self.defocus_plot):
            w.setMinimumSize(160, 120)
        self.profile_plot.setMinimumSize(160, 160)  # the plot's axes and the legend line below, never overlapping
        self.body.addWidget(split, 1)
        self.body.addWidget(self.tilt_info)
        self.refresh()

    # -- series ----------------------------------------------------------------------------------------------
    def show_series(self, entry: SeriesEntry) -> None:
        self.data = load_motion_ctf(entry, self.base)
        stack = read_stack(entry.path("stack", self.base))
        d = self.data
        if d.ctf is not None:
            tilts = np.asarray(entry.geometry.tilt_angles_deg, dtype=float)
            self.suspicious = suspicious_tilts(d.ctf["rlnDefocusU"].to_numpy(float),
                                               d.ctf["rlnDefocusV"].to_numpy(float),
                                               d.ctf["rlnCtfMaxResolution"].to_numpy(float), d.failed, tilts)
            self.defocus_plot.set_data(tilts, d.ctf["rlnDefocusU"].to_numpy(float),
                                       d.ctf["rlnDefocusV"].to_numpy(float),
                                       d.ctf["rlnCtfMaxResolution"].to_numpy(float), d.failed,
                                       suspicious=self.suspicious)
        else:
            self.suspicious = None
            self.defocus_plot.clear()
            self.spectrum.clear()
        self.defocus_plot.setVisible(d.ctf is not None)
        self.spectrum.setVisible(d.ctf_preview is not None)
        self.profile_plot.setVisible(d.ctf is not None)
        self.stack = stack
        self._profiles = {}
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        gain = ""
        step = self.project.data.steps.get(self.step_id)
        m = ((step.metrics or {}).get("series") or {}).get(entry.name, {}) if step is not None else {}
        if m.get("gain_orientation"):
            conf = m.get("gain_orientation_confidence")
            gain = (f" · gain {m['gain_orientation']} ({m.get('gain_orientation_source', '')}"
                    + (f", confidence {conf:.0f}" if conf is not None else "") + ")")
        self.viewer.title_label.setText(
            f"<b>{entry.name}</b> aligned sums{gain}")

    def clear_series(self) -> None:
        self.data = None
        self.suspicious = None
        self.stack = None
        self._profiles = {}
        self.viewer.clear()
        self.trajectory.clear()
        self.spectrum.clear()
        self.profile_plot.clear()
        self.defocus_plot.clear()
        self.tilt_info.setText("")

    # -- CTFFIND's 1D plot ------------------------------------------------------------------------------------
    def ctf_settings(self) -> tuple[int, tuple[float, float]]:
        """(window box in px, fitted band (low, high) in Å) of the run that made the results shown."""
        st = self.project.data.steps[self.step_id]
        values = dict(st.run_params or st.params or {})
        if self.step_id == "motion_ctf":
            return (int(values.get("ctf_window_px", 512)),
                    (float(values.get("ctf_res_low_A", 30.0)), float(values.get("ctf_res_high_A", 7.0))))
        return (int(values.get("box_px", 512)),
                (float(values.get("res_low_A", 50.0)), float(values.get("res_high_A", 5.0))))

    def profile(self, i: int) -> Any:
        """The :class:`~tomoguide.compute.ctffit.CtfProfile` of view ``i`` of the series shown (cached)."""
        from tomoguide.compute.ctffit import CtfFit, ctf_profile_1d, power_spectrum

        d, entry, stack = self.data, self.current_entry(), self.stack
        if d is None or d.ctf is None or entry is None or stack is None:
            return None
        key = (entry.name, int(i))
        if key in self._profiles:
            return self._profiles[key]
        row = d.ctf.iloc[i]
        g = entry.geometry
        px = float(row["rlnMicrographPixelSize"]) if "rlnMicrographPixelSize" in d.ctf else g.pixel_size_binned_A
        volt = float(row["rlnVoltage"]) if "rlnVoltage" in d.ctf else g.optics.voltage_kV
        cs = float(row["rlnSphericalAberration"]) if "rlnSphericalAberration" in d.ctf else g.optics.cs_mm
        amp = float(row["rlnAmplitudeContrast"]) if "rlnAmplitudeContrast" in d.ctf else g.optics.amplitude_contrast
        fit = CtfFit(float(row["rlnDefocusU"]), float(row["rlnDefocusV"]), float(row["rlnDefocusAngle"]),
                     phase_shift_rad=float(np.radians(row["rlnPhaseShift"])) if "rlnPhaseShift" in d.ctf else 0.0,
                     fit_resolution_A=float(row["rlnCtfMaxResolution"]), voltage_kV=volt, cs_mm=cs,
                     amplitude_contrast=amp, pixel_size_A=px)
        box, band = self.ctf_settings()
        image = np.asarray(stack[i], np.float32)
        box = min(box, (min(image.shape) // 2) * 2)
        spec = power_spectrum(image, pixel_size_A=px, box=box, tilt_deg=float(g.tilt_angles_deg[i]),
                              tilt_axis_deg=g.tilt_axis_deg, defocus_handedness=g.defocus_handedness,
                              reference_defocus_A=fit.defocus_mean_A, tilt_mode="rescale", voltage_kV=volt,
                              cs_mm=cs)
        prof = ctf_profile_1d(spec, fit, res_range_A=band)
        self._profiles[key] = prof
        return prof

    def show_profile(self, i: int) -> None:
        try:
            prof = self.profile(i)
        except (ValueError, KeyError, IndexError) as exc:
            self.profile_plot.clear(f"No 1D profile: {exc}")
            return
        if prof is None:
            self.profile_plot.clear()
            return
        cc = prof.correlation()
        source = " (from the dose-weighted sum)" if self.step_id == "motion_ctf" else ""
        self.profile_plot.set_profile(prof, caption=f"CC {cc:.2f} in the band (shaded) · fit resolution "
                                                    f"{prof.fit_resolution_A:.1f} Å")
        self.profile_plot.caption.setToolTip(
            f"1D fit{source}: correlation of the spectrum's profile with the fitted CTF² over the fitted band "
            f"(shaded); the fit resolution is where the fit quality per ring drops below 0.3")

    # -- view ------------------------------------------------------------------------------------------------
    def select_view(self, view_index: int) -> None:
        """Show view ``view_index`` (angle order) everywhere."""
        self.viewer.show_index(view_index)

    def current_view(self) -> int:
        return self.viewer.current_index()

    def _on_view(self, i: int) -> None:
        d = self.data
        if d is None:
            return
        shifts = d.shifts[i]
        if len(shifts):
            raw = (shifts[["tomoguideRawShiftX", "tomoguideRawShiftY"]].to_numpy(float)
                   if "tomoguideRawShiftX" in shifts else None)
            self.trajectory.set_trajectory(shifts["rlnMicrographFrameNumber"].to_numpy(int),
                                           shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(float),
                                           raw)
        else:
            self.trajectory.clear()
        entry = self.current_entry()
        parts = [self.viewer.info_label.text()]
        if entry is not None:
            g = entry.geometry
            drift = ""
            if len(shifts):
                xy = shifts[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(float)
                drift = f" · drift {float(np.hypot(*(xy[-1] - xy[0]))):.2f} px over {len(xy)} frames"
            dose = f"dose {g.dose_e_A2[i]:.2f} e⁻/Å²" if g.dose_e_A2 is not None else "dose unknown"
            prior = f" ({g.prior_dose_e_A2[i]:.1f} before)" if g.prior_dose_e_A2 is not None else ""
            acq = f" · acquired #{g.acquisition_order[i] + 1}" if g.acquisition_order is not None else ""
            parts = [f"<b>Tilt {g.tilt_angles_deg[i]:+.1f}°</b> · {dose}{prior}{acq}{drift}"]
        if d.motion_failed is not None and i < len(d.motion_failed) and d.motion_failed[i]:
            parts.append(f"<span style='color:{SUSPICIOUS_COLOUR}'>⚠ Frames not aligned: they did not correlate "
                         "(a dark, blank or featureless movie?); the plain sum is shown, flagged for the exclusion "
                         "step</span>")
        if d.ctf is not None:
            row = d.ctf.iloc[i]
            self.defocus_plot.set_current(i)
            text = (f"Defocus U {row['rlnDefocusU'] / 1e4:.3f} µm, V {row['rlnDefocusV'] / 1e4:.3f} µm, "
                    f"angle {row['rlnDefocusAngle']:.0f}° · fit resolution "
                    f"{row['rlnCtfMaxResolution']:.1f} Å · score {row['rlnCtfFigureOfMerit']:.3f}")
            parts.append(text)
            if d.ctf_preview is not None:
                self.spectrum.set_image(d.ctf_preview[i], d.nyquist_A, float(row["rlnCtfMaxResolution"]),
                                        caption="dashed ring: fit resolution")
            self.show_profile(i)
            assert self.suspicious is not None
            if self.suspicious.any[i]:
                reason = self.suspicious.reasons_text[i]
                if d.failed[i] and "tomoguideCtfReason" in d.ctf and str(row["tomoguideCtfReason"]) not in ("-", ""):
                    reason += f" ({row['tomoguideCtfReason']})"
                parts.append(f"<span style='color:{SUSPICIOUS_COLOUR}'>⚠ Suspicious: {reason}</span>")
        self.tilt_info.setText("<br>".join(parts))
