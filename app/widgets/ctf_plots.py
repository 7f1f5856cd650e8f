"""Per-tilt plots for CTF and per-view results: defocus and fit resolution against tilt, a CTF spectrum viewer,
CTFFIND's 1D diagnostic (:class:`CtfProfilePlot`: the spectrum's equal-phase average against the fitted CTF² with
the fit quality per ring) and a bar plot of one value per tilt.

Conventions: views are given in *angle order* (ascending nominal tilt, as every tilt-series step writes them);
signals and indices refer to that view index. Defocus is given in Å (positive = underfocus, RELION's
``rlnDefocusU/V``) and plotted in µm; fit resolution in Å (larger = worse). Suspicious tilts
(:func:`suspicious_tilts`) are drawn in red: a failed fit (red ✕), a defocus far from the smooth trend of its
neighbours, or a fit resolution much worse than its neighbours'. Clicking a point or bar emits
``view_clicked(view_index)`` and makes that view the current one (a vertical line marks it).

The CTF spectrum viewer shows a CTFFIND-style diagnostic image (k = 0 at the centre; left half the measured,
background-subtracted spectrum, right half the fitted CTF²) with the split marked and, when the Nyquist
resolution of the image edge is known, a dashed circle at a given resolution (e.g. the fit resolution).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

BACKGROUND = "#202020"
SUSPICIOUS_COLOUR = "#e53935"
U_COLOUR = "#4fc3f7"
V_COLOUR = "#ffb74d"
RES_COLOUR = "#aed581"
CURRENT_COLOUR = "#fff176"
BAR_COLOUR = "#78909c"


# ---------------------------------------------------------------------------------------------------------------
# which tilts look wrong (pure numpy)
# ---------------------------------------------------------------------------------------------------------------

def neighbour_median(values: np.ndarray, valid: np.ndarray | None = None, half_window: int = 2) -> np.ndarray:
    """Median of the valid, finite values among the ``half_window`` views on each side of each view (the view
    itself left out), in the order given; NaN where a view has no valid neighbour. (n,) float64."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) if valid is None else (np.asarray(valid, dtype=bool) & np.isfinite(v))
    n = len(v)
    out = np.full(n, np.nan)
    for i in range(n):
        lo, hi = max(0, i - half_window), min(n, i + half_window + 1)
        idx = np.arange(lo, hi)
        idx = idx[(idx != i) & ok[lo:hi]]
        if idx.size:
            out[i] = float(np.median(v[idx]))
    return out


def _repeated_median_line(x: np.ndarray, v: np.ndarray) -> tuple[float, float]:
    """Siegel's repeated-median line (slope, intercept): per point the median of its slopes to the others, the
    slope is the median of those, the intercept the median of ``v − slope·x``. Resists up to half the points
    being wild. Slope 0 when all x are equal."""
    dx = x[None, :] - x[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        pair = (v[None, :] - v[:, None]) / dx
    rows = [float(np.median(r[np.isfinite(r)])) for r in pair if np.isfinite(r).any()]
    slope = float(np.median(rows)) if rows else 0.0
    return slope, float(np.median(v - slope * x))


def robust_trend(x: np.ndarray, values: np.ndarray, valid: np.ndarray | None = None, *, degree: int = 2,
                 n_sd: float = 3.0, min_sd: float = 0.0, iterations: int = 5) -> tuple[np.ndarray, float]:
    """A smooth trend of ``values`` against ``x`` that outliers do not pull: ``(trend (n,), robust SD)``.

    Starts from the repeated-median line through the valid, finite points, then refits a polynomial of degree
    ``degree`` (lower when there are few points: 2 needs ≥ 7 inliers, 1 needs ≥ 3) to the points within
    ``n_sd`` robust SDs of the trend, until the inliers stop changing. The robust SD is 1.4826 × the median
    absolute residual of all valid points, at least ``min_sd``. NaN trend when no point is valid."""
    xs = np.asarray(x, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(xs)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    if not ok.any():
        return np.full(len(v), np.nan), float(min_sd)
    centre = float(np.mean(xs[ok]))
    scale = float(np.ptp(xs[ok])) or 1.0
    u = (xs - centre) / scale  # well-conditioned polynomial fits
    slope, intercept = _repeated_median_line(u[ok], v[ok])
    trend = slope * u + intercept
    inliers = ok.copy()
    sd = float(min_sd)
    for _ in range(iterations):
        resid = v - trend
        sd = max(float(1.4826 * np.median(np.abs(resid[ok]))), float(min_sd))
        new = ok & (np.abs(resid) <= n_sd * sd)
        n_in = int(new.sum())
        deg = min(degree, 2 if n_in >= 7 else 1 if n_in >= 3 else 0)
        if n_in == 0 or (np.array_equal(new, inliers) and _ > 0):
            break
        inliers = new
        trend = np.polyval(np.polyfit(u[inliers], v[inliers], deg), u)
    resid = v - trend
    sd = max(float(1.4826 * np.median(np.abs(resid[ok]))), float(min_sd))
    return trend, sd


@dataclass
class SuspiciousTilts:
    """Per view (angle order) why it looks wrong. ``defocus_trend_A``: the series' smooth trend of the mean
    defocus (Å, :func:`robust_trend`);
    ``defocus_sd_A``: the robust SD of the mean defocus around that trend (Å, at least the floor used)."""

    failed: np.ndarray
    defocus_outlier: np.ndarray
    resolution_outlier: np.ndarray
    defocus_trend_A: np.ndarray
    defocus_sd_A: float
    reasons_text: list[str] = field(default_factory=list)

    @property
    def any(self) -> np.ndarray:
        """(n,) bool: failed, or an outlier in defocus or resolution."""
        return self.failed | self.defocus_outlier | self.resolution_outlier

    def indices(self) -> list[int]:
        return [int(i) for i in np.nonzero(self.any)[0]]


def suspicious_tilts(defocus_u_A: np.ndarray, defocus_v_A: np.ndarray, resolution_A: np.ndarray,
                     failed: np.ndarray | None = None, tilt_deg: np.ndarray | None = None, *, n_sd: float = 3.0,
                     min_sd_A: float = 100.0, resolution_factor: float = 1.5,
                     half_window: int = 2) -> SuspiciousTilts:
    """Flag tilts whose CTF fit looks wrong. Arrays (n,) in angle order; defocus in Å, resolution in Å.

    - failed: the fit said so (``failed``), or its defocus or resolution is not finite;
    - defocus outlier: the mean defocus ``(U + V) / 2`` differs from the smooth trend of the series
      (:func:`robust_trend` against ``tilt_deg``, or the view index when not given: a polynomial of degree ≤ 2
      that outliers do not pull; failed fits left out) by more than ``n_sd`` robust SDs; the robust SD is
      1.4826 × the median absolute difference over all valid views, at least ``min_sd_A``;
    - resolution outlier: the fit resolution is worse (larger) than ``resolution_factor`` × the median of its
      neighbours' fit resolutions.
    """
    u = np.asarray(defocus_u_A, dtype=np.float64)
    v = np.asarray(defocus_v_A, dtype=np.float64)
    res = np.asarray(resolution_A, dtype=np.float64)
    n = len(u)
    if not (len(v) == len(res) == n):
        raise ValueError(f"defocus U, V and resolution: {n}, {len(v)} and {len(res)} values")
    bad = np.zeros(n, bool) if failed is None else np.asarray(failed, dtype=bool).copy()
    if len(bad) != n:
        raise ValueError(f"failed: {len(bad)} values for {n} tilts")
    mean = 0.5 * (u + v)
    bad |= ~np.isfinite(mean) | ~np.isfinite(res)
    ok = ~bad
    x = np.arange(n, dtype=np.float64) if tilt_deg is None else np.asarray(tilt_deg, dtype=np.float64)
    if len(x) != n:
        raise ValueError(f"tilt_deg: {len(x)} values for {n} tilts")
    trend, sd = robust_trend(x, mean, ok, n_sd=n_sd, min_sd=min_sd_A)
    resid = mean - trend
    d_out = ok & np.isfinite(resid) & (np.abs(resid) > n_sd * sd)
    # the resolution is compared with neighbours that are not themselves defocus outliers or failed
    res_trend = neighbour_median(res, ok & ~d_out, half_window)
    r_out = ok & np.isfinite(res_trend) & (res > resolution_factor * res_trend)
    reasons = []
    for i in range(n):
        why = []
        if bad[i]:
            why.append("CTF fit failed")
        if d_out[i]:
            why.append(f"defocus {mean[i] / 1e4:.2f} µm is {abs(resid[i]) / sd:.1f} SD from the series' trend "
                       f"({trend[i] / 1e4:.2f} µm)")
        if r_out[i]:
            why.append(f"fit resolution {res[i]:.1f} Å, neighbours {res_trend[i]:.1f} Å")
        reasons.append("; ".join(why))
    return SuspiciousTilts(failed=bad, defocus_outlier=d_out, resolution_outlier=r_out, defocus_trend_A=trend,
                           defocus_sd_A=sd, reasons_text=reasons)


# ---------------------------------------------------------------------------------------------------------------
# plots
# ---------------------------------------------------------------------------------------------------------------

def _caption() -> QLabel:
    """A one-line caption under a plot that never widens it (long text is cut, the full text is the tooltip)."""
    label = QLabel("")
    label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
    label.setTextFormat(Qt.TextFormat.RichText)
    return label


def _finite_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep], np.nonzero(keep)[0]


class _PerTiltPlotBase(QWidget):
    """Shared parts: a dark pyqtgraph layout, the current-view markers, the click signal."""

    view_clicked = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.caption = _caption()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.caption)
        self._tilt_deg = np.zeros(0)
        self._current = -1
        self._current_lines: list[pg.InfiniteLine] = []

    def _add_current_line(self, plot: pg.PlotItem) -> None:
        line = pg.InfiniteLine(angle=90, movable=False, pen=pg.mkPen(CURRENT_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        line.setVisible(False)
        plot.addItem(line, ignoreBounds=True)
        self._current_lines.append(line)

    def current_index(self) -> int:
        """The current view index (−1 when none)."""
        return self._current

    def set_current(self, view_index: int) -> None:
        """Mark the view ``view_index`` (angle order) as the current one."""
        if not 0 <= view_index < len(self._tilt_deg):
            raise IndexError(f"view {view_index} out of range (0-{len(self._tilt_deg) - 1})")
        self._current = int(view_index)
        for line in self._current_lines:
            line.setPos(float(self._tilt_deg[view_index]))
            line.setVisible(True)
        self._update_current()

    def _update_current(self) -> None:
        """Hook for subclasses that mark the current view further; the base's line is already placed."""
        return None

    def view_position(self, plot: pg.PlotItem, x: float, y: float) -> QPointF:
        """Widget position (in ``self.graphics`` viewport coordinates) of the data point (x, y) of ``plot``."""
        scene = plot.vb.mapViewToScene(QPointF(x, y))
        return QPointF(self.graphics.mapFromScene(scene))

    def _clicked(self, view_index: int) -> None:
        self.set_current(view_index)
        self.view_clicked.emit(view_index)


class DefocusResolutionPlot(_PerTiltPlotBase):
    """Defocus U and V (µm) above, fit resolution (Å) below, against tilt angle (°); suspicious tilts in red.

    ``set_data`` takes per-view arrays in angle order; clicking a point emits ``view_clicked(view_index)``.
    The dashed grey line in the defocus plot is the series' smooth trend used to find defocus outliers.
    """

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.defocus_plot: pg.PlotItem = self.graphics.addPlot(row=0, col=0)
        self.resolution_plot: pg.PlotItem = self.graphics.addPlot(row=1, col=0)
        # no axis titles: at the preview's height the two would run into each other; the caption names the plots
        self.resolution_plot.setLabel("bottom", "Tilt angle (°)")
        self.resolution_plot.setXLink(self.defocus_plot)
        self.defocus_plot.getAxis("bottom").setStyle(showValues=False)  # shared with the plot below
        for p in (self.defocus_plot, self.resolution_plot):
            p.showGrid(x=True, y=True, alpha=0.2)
            p.setMenuEnabled(False)
            p.getAxis("left").enableAutoSIPrefix(False)
            p.getAxis("left").setWidth(52)
            self._add_current_line(p)
        self.resolution_plot.invertY(False)
        self.trend_item = pg.PlotDataItem(pen=pg.mkPen("#9e9e9e", width=1, style=Qt.PenStyle.DashLine),
                                          name="trend")
        self.defocus_u_item = pg.ScatterPlotItem(symbol="o", size=8, name="U", brush=pg.mkBrush(U_COLOUR),
                                                 pen=pg.mkPen(U_COLOUR))
        self.defocus_v_item = pg.ScatterPlotItem(symbol="t", size=8, name="V", brush=pg.mkBrush(V_COLOUR),
                                                 pen=pg.mkPen(V_COLOUR))
        self.resolution_item = pg.ScatterPlotItem(symbol="o", size=8, brush=pg.mkBrush(RES_COLOUR))
        self.resolution_line = pg.PlotDataItem(pen=pg.mkPen(RES_COLOUR, width=1))
        self.defocus_plot.addItem(self.trend_item)
        self.defocus_plot.addItem(self.defocus_u_item)
        self.defocus_plot.addItem(self.defocus_v_item)
        self.resolution_plot.addItem(self.resolution_line)
        self.resolution_plot.addItem(self.resolution_item)
        for item in (self.defocus_u_item, self.defocus_v_item, self.resolution_item):
            item.sigClicked.connect(self._on_points_clicked)
        self.graphics.ci.layout.setRowStretchFactor(0, 3)
        self.graphics.ci.layout.setRowStretchFactor(1, 2)
        self.suspicious: SuspiciousTilts | None = None
        self.highlighted = np.zeros(0, bool)
        self._u = self._v = self._res = np.zeros(0)

    def set_data(self, tilt_deg: np.ndarray, defocus_u_A: np.ndarray, defocus_v_A: np.ndarray,
                 resolution_A: np.ndarray, failed: np.ndarray | None = None,
                 suspicious: SuspiciousTilts | None = None) -> None:
        """Plot per-view (angle order) defocus U/V (Å), fit resolution (Å) and ``failed`` flags; the suspicious
        tilts are found with :func:`suspicious_tilts` unless given."""
        self._tilt_deg = np.asarray(tilt_deg, dtype=np.float64)
        self._u = np.asarray(defocus_u_A, dtype=np.float64)
        self._v = np.asarray(defocus_v_A, dtype=np.float64)
        self._res = np.asarray(resolution_A, dtype=np.float64)
        n = len(self._tilt_deg)
        if not (len(self._u) == len(self._v) == len(self._res) == n):
            raise ValueError(f"tilt angles, defocus U, V and resolution: {n}, {len(self._u)}, {len(self._v)} and "
                             f"{len(self._res)} values")
        self.suspicious = suspicious if suspicious is not None else suspicious_tilts(
            self._u, self._v, self._res, failed, self._tilt_deg)
        self.highlighted = self.suspicious.any.copy()
        self.trend_item.setData(self._tilt_deg, self.suspicious.defocus_trend_A / 1e4, connect="finite")
        x, y, _ = _finite_xy(self._tilt_deg, self._res)
        self.resolution_line.setData(x, y)
        self._current = min(self._current, n - 1) if n else -1
        self._refresh_points()
        n_bad = int(self.highlighted.sum())
        self.caption.setText(
            f"top: defocus (µm) <span style='color:{U_COLOUR}'>● U</span> <span style='color:{V_COLOUR}'>▲ V</span>"
            f" · bottom: fit resolution (Å) · "
            + (f"<span style='color:{SUSPICIOUS_COLOUR}'>{n_bad} suspicious tilt(s) in red</span>" if n_bad
               else "no suspicious tilts"))
        self.caption.setToolTip("Defocus U and V (µm) and the fit resolution (Å) of every tilt; the dashed line "
                                "is the series' smooth trend. Red: the fit failed (✕), the defocus is far from the "
                                "trend, or the fit resolution is much worse than the neighbours'. Click a point "
                                "to show that tilt.")
        for p in (self.defocus_plot, self.resolution_plot):
            p.enableAutoRange()

    def clear(self) -> None:
        for item in (self.defocus_u_item, self.defocus_v_item, self.resolution_item):
            item.clear()
        self.trend_item.setData([], [])
        self.resolution_line.setData([], [])
        self._tilt_deg = np.zeros(0)
        self.highlighted = np.zeros(0, bool)
        self.suspicious = None
        self._current = -1
        for line in self._current_lines:
            line.setVisible(False)
        self.caption.setText("")

    def _spots(self, y: np.ndarray, colour: str, symbol: str) -> list[dict]:
        assert self.suspicious is not None
        x, yy, idx = _finite_xy(self._tilt_deg, y)
        spots = []
        for xi, yi, i in zip(x, yy, idx):
            red = bool(self.highlighted[i])
            sym = "x" if self.suspicious.failed[i] else symbol
            current = i == self._current
            tip = self.suspicious.reasons_text[i]
            spots.append({"pos": (float(xi), float(yi)), "data": int(i), "symbol": sym,
                          "size": 12 if current else 8,
                          "brush": pg.mkBrush(SUSPICIOUS_COLOUR if red else colour),
                          "pen": pg.mkPen(CURRENT_COLOUR if current else (SUSPICIOUS_COLOUR if red else colour),
                                          width=2 if current else 1),
                          "tip": None if not tip else tip})
        return spots

    def _refresh_points(self) -> None:
        if self.suspicious is None:
            return
        for item, y, colour, symbol in ((self.defocus_u_item, self._u / 1e4, U_COLOUR, "o"),
                                        (self.defocus_v_item, self._v / 1e4, V_COLOUR, "t"),
                                        (self.resolution_item, self._res, RES_COLOUR, "o")):
            spots = self._spots(y, colour, symbol)
            item.setData([{k: v for k, v in s.items() if k != "tip"} for s in spots])

    def _update_current(self) -> None:
        self._refresh_points()

    def point_indices(self, item: pg.ScatterPlotItem) -> list[int]:
        """View indices of the points of ``item`` (a plot item of this widget), in plotting order."""
        return [int(p.data()) for p in item.points()]

    def red_indices(self, item: pg.ScatterPlotItem) -> list[int]:
        """View indices of the points of ``item`` drawn in red."""
        red = QColor(SUSPICIOUS_COLOUR)
        return [int(p.data()) for p in item.points() if p.brush().color().rgb() == red.rgb()]

    def _on_points_clicked(self, _item: pg.ScatterPlotItem, points: list, _ev: object = None) -> None:
        if len(points):
            self._clicked(int(points[0].data()))


class TiltBarPlot(_PerTiltPlotBase):
    """One value per view as bars against tilt angle (e.g. X-ray patches per view); the current view's bar is
    highlighted and clicking a bar emits ``view_clicked(view_index)``."""

    def __init__(self, y_label: str = "Count", parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.plot: pg.PlotItem = self.graphics.addPlot()
        self.plot.setLabel("left", y_label)
        self.plot.setLabel("bottom", "Tilt angle (°)")
        self.plot.showGrid(y=True, alpha=0.2)
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self._add_current_line(self.plot)
        self.bars = pg.BarGraphItem(x=[], height=[], width=1.0)
        self.plot.addItem(self.bars)
        self.values = np.zeros(0)
        self._width = 1.0
        self.plot.scene().sigMouseClicked.connect(self._on_scene_click)

    def set_data(self, tilt_deg: np.ndarray, values: np.ndarray) -> None:
        """Bars of ``values`` (n,) at the views' tilt angles (n,) in degrees, angle order."""
        self._tilt_deg = np.asarray(tilt_deg, dtype=np.float64)
        self.values = np.asarray(values, dtype=np.float64)
        if len(self.values) != len(self._tilt_deg):
            raise ValueError(f"values: {len(self.values)} for {len(self._tilt_deg)} tilts")
        steps = np.diff(np.unique(self._tilt_deg))
        self._width = 0.7 * float(steps.min()) if steps.size else 1.0
        self._current = min(self._current, len(self.values) - 1)
        self._draw()
        self.plot.enableAutoRange()

    def bar_colours(self) -> list[str]:
        """The colour of every bar (#rrggbb), in view order."""
        return [CURRENT_COLOUR if i == self._current else BAR_COLOUR for i in range(len(self.values))]

    def _draw(self) -> None:
        if not len(self.values):  # pyqtgraph 0.14 fails on empty per-bar pen/brush lists
            self.bars.setOpts(x=np.zeros(0), height=np.zeros(0), width=1.0)
            return
        self.bars.setOpts(x=self._tilt_deg, height=self.values, width=self._width, pen=pg.mkPen(None),
                          brushes=[pg.mkBrush(c) for c in self.bar_colours()])

    def _update_current(self) -> None:
        self._draw()

    def _on_scene_click(self, ev: object) -> None:
        if not len(self._tilt_deg):
            return
        pos = ev.scenePos()  # type: ignore[attr-defined]
        if not self.plot.vb.sceneBoundingRect().contains(pos):
            return
        x = self.plot.vb.mapSceneToView(pos).x()
        i = int(np.argmin(np.abs(self._tilt_deg - x)))
        if abs(self._tilt_deg[i] - x) <= self._width:
            self._clicked(i)


class CtfSpectrumView(QWidget):
    """A CTF diagnostic image (box, box), k = 0 at the centre: left half measured spectrum, right half fitted
    CTF² (values about 0-1; shown between its 1st and 99th percentiles). ``set_image(image, nyquist_A,
    ring_A)`` draws a dashed circle at the resolution ``ring_A`` (Å) when the image edge's resolution
    ``nyquist_A`` (Å, = 2 × the pixel size of the spectrum's window) is given."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)
        pen = pg.mkPen("#ffffff", width=1, style=Qt.PenStyle.DotLine)
        self.split_line = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.view.addItem(self.split_line, ignoreBounds=True)
        self.ring = pg.QtWidgets.QGraphicsEllipseItem()
        self.ring.setPen(pg.mkPen(CURRENT_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        self.ring.setVisible(False)
        self.view.addItem(self.ring, ignoreBounds=True)
        self.left_text = pg.TextItem("spectrum", color="#ffffff", anchor=(0, 0))
        self.right_text = pg.TextItem("fitted CTF²", color="#ffffff", anchor=(1, 0))
        self.ring_text = pg.TextItem("", color=CURRENT_COLOUR, anchor=(0.5, 0))
        for t in (self.left_text, self.right_text, self.ring_text):
            self.view.addItem(t, ignoreBounds=True)
        self.caption = _caption()
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.caption)
        self.ring_radius_px: float | None = None
        self.levels = (0.0, 1.0)

    def set_image(self, image: np.ndarray, nyquist_A: float | None = None, ring_A: float | None = None,
                  caption: str = "") -> None:
        image = np.asarray(image, dtype=np.float32)
        if image.ndim != 2:
            raise ValueError(f"CTF preview: expected a 2D image, got shape {image.shape}")
        ny, nx = image.shape
        finite = image[np.isfinite(image)]
        lo, hi = (np.percentile(finite, (1.0, 99.0)) if finite.size else (0.0, 1.0))
        self.levels = (float(lo), float(hi) if hi > lo else float(lo) + 1.0)
        self.image_item.setImage(image, levels=self.levels, autoLevels=False)
        self.image_item.setRect(QRectF(0.0, 0.0, float(nx), float(ny)))
        self.split_line.setPos(nx / 2.0)
        self.left_text.setPos(2.0, 2.0)
        self.right_text.setPos(nx - 2.0, 2.0)
        self.ring_radius_px = None
        if nyquist_A and ring_A and np.isfinite(ring_A) and ring_A >= nyquist_A:
            r = (min(nx, ny) / 2.0) * nyquist_A / ring_A
            self.ring_radius_px = float(r)
            self.ring.setRect(QRectF(nx / 2.0 - r, ny / 2.0 - r, 2 * r, 2 * r))
            self.ring.setVisible(True)
            self.ring_text.setText(f"{ring_A:.1f} Å")
            self.ring_text.setPos(nx / 2.0, ny / 2.0 + r)
            self.ring_text.setVisible(True)
        else:
            self.ring.setVisible(False)
            self.ring_text.setVisible(False)
        self.caption.setText(caption)
        self.view.autoRange(padding=0.0)
        self.setEnabled(True)

    def clear(self) -> None:
        self.image_item.clear()
        self.ring.setVisible(False)
        self.ring_text.setVisible(False)
        self.caption.setText("")
        self.setEnabled(False)


MEASURED_COLOUR = "#90caf9"
MODEL_COLOUR = "#ffb74d"
FIT_CC_COLOUR = "#81c784"
BAND_BRUSH = "#ffffff14"


class CtfProfilePlot(QWidget):
    """CTFFIND's main diagnostic: the 1D spectrum against the fitted CTF, with the fit quality per ring.

    Curves against spatial frequency (x axis in Å⁻¹, tick labels in Å): the background-subtracted equal-phase
    average of the spectrum (``measured``, scaled onto the model), the fitted ``CTF²`` (``model``) and the
    cross-correlation per ring (``ring_cc``, the fit quality); the fitted band shaded, a dashed line at the fit
    resolution. The legend sits under the plot, never over a curve or the axis title. Data: a
    :class:`~tomoguide.compute.ctffit.CtfProfile`."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from tomoguide.widgets.fsc_plot import ResolutionAxis

        self.axis = ResolutionAxis(orientation="bottom")
        self.plot = pg.PlotWidget(axisItems={"bottom": self.axis})
        self.plot.setObjectName("ctf_profile_plot")
        self.plot.setBackground(BACKGROUND)
        self.plot.setMenuEnabled(False)
        self.plot.setMinimumSize(200, 130)
        self.plot.setLabel("bottom", "Resolution (Å)")
        self.plot.setLabel("left", "CTF² · fit CC")
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.band = pg.LinearRegionItem(values=(0.0, 0.0), movable=False, brush=pg.mkBrush(BAND_BRUSH),
                                        pen=pg.mkPen(None))
        self.plot.addItem(self.band, ignoreBounds=True)
        self.model_item = self.plot.plot([], [], pen=pg.mkPen(MODEL_COLOUR, width=1.2), name="fitted CTF²")
        self.measured_item = self.plot.plot([], [], pen=pg.mkPen(MEASURED_COLOUR, width=1.5), name="spectrum")
        self.cc_item = self.plot.plot([], [], pen=pg.mkPen(FIT_CC_COLOUR, width=2.0), name="fit quality (CC)")
        self.fit_line = pg.InfiniteLine(angle=90, movable=False,
                                        pen=pg.mkPen(CURRENT_COLOUR, width=1, style=Qt.PenStyle.DashLine))
        self.plot.addItem(self.fit_line, ignoreBounds=True)
        self.legend_label = QLabel(
            f"<span style='color:{MEASURED_COLOUR}'>━</span>&nbsp;spectrum "
            f"<span style='color:{MODEL_COLOUR}'>━</span>&nbsp;fitted CTF² "
            f"<span style='color:{FIT_CC_COLOUR}'>━</span>&nbsp;fit quality "
            f"<b style='color:#b8a000'>┆</b>&nbsp;fit resolution")
        self.legend_label.setToolTip("spectrum: the background-subtracted power spectrum averaged on rings of "
                                     "equal CTF phase (astigmatism taken out); fit quality: the correlation of "
                                     "spectrum and fit over three rings around each frequency — where it drops "
                                     "below 0.3 is the fit resolution")
        self.legend_label.setObjectName("ctf_profile_legend")
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.caption = _caption()
        # one line under the plot: the legend, then the fit's figures (neither wraps nor forces the width, so the
        # plot keeps its height and nothing is drawn over its axis)
        self.legend_label.setWordWrap(False)
        self.legend_label.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.caption.setWordWrap(False)
        self.caption.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.legend_label)
        row.addSpacing(8)
        row.addWidget(self.caption, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.plot, 1)
        lay.addLayout(row)
        self.profile: object | None = None
        self.clear()

    def set_profile(self, profile: object, caption: str = "") -> None:
        """Show a :class:`~tomoguide.compute.ctffit.CtfProfile`."""
        k = np.asarray(getattr(profile, "k_per_A"), dtype=np.float64)
        lo, hi = getattr(profile, "band_per_A")
        start = max(0.75 * float(lo), float(k[1]) if k.size > 1 else 0.0)
        show = k >= start
        self.measured_item.setData(k[show], np.asarray(getattr(profile, "measured"))[show])
        self.model_item.setData(k[show], np.asarray(getattr(profile, "model"))[show])
        cc = np.asarray(getattr(profile, "ring_cc"), dtype=np.float64)
        ok = show & np.isfinite(cc)
        self.cc_item.setData(k[ok], cc[ok])
        self.band.setRegion((float(lo), float(hi)))
        fit_res = float(getattr(profile, "fit_resolution_A"))
        self.fit_line.setVisible(bool(np.isfinite(fit_res) and fit_res > 0))
        if self.fit_line.isVisible():
            self.fit_line.setPos(1.0 / fit_res)
        self.plot.setXRange(start, float(k[-1]), padding=0.01)
        self.plot.setYRange(-0.3, 1.15, padding=0.0)
        self.caption.setText(caption)
        self.profile = profile
        self.setEnabled(True)

    def curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of "measured", "model" or "cc" as plotted."""
        item = {"measured": self.measured_item, "model": self.model_item, "cc": self.cc_item}[name]
        x, y = item.getData()
        return (np.zeros(0) if x is None else np.asarray(x)), (np.zeros(0) if y is None else np.asarray(y))

    def clear(self, message: str = "") -> None:
        for item in (self.measured_item, self.model_item, self.cc_item):
            item.setData([], [])
        self.fit_line.setVisible(False)
        self.caption.setText(message)
        self.profile = None
        self.setEnabled(False)
