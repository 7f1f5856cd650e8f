"""The Fourier shell correlation between half maps against spatial frequency, with the threshold and the resolution.

The x axis is the spatial frequency in Å⁻¹ (linear, 0 to Nyquist), its tick labels the resolution in Å
(1 / frequency; "∞" at 0). Curves: the FSC of the masked half maps (thick), of the unmasked ones, the
phase-randomisation-corrected one when given, and the FSC against a reference when given; a dashed line at the
threshold (0.143, gold standard) and a vertical line at the resolution (frequency 1 / resolution) labelled in Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

BACKGROUND = "#202020"
MASKED_COLOUR = "#4fc3f7"
UNMASKED_COLOUR = "#9e9e9e"
CORRECTED_COLOUR = "#81c784"
REFERENCE_COLOUR = "#ce93d8"
THRESHOLD_COLOUR = "#fff176"
RESOLUTION_COLOUR = "#ff8a65"


def resolution_tick_label(freq_per_A: float) -> str:
    """A tick label of the frequency axis: the resolution ``1 / freq_per_A`` in Å ("∞" at 0, "" below 0)."""
    if freq_per_A < -1e-12:
        return ""
    if abs(freq_per_A) <= 1e-12:
        return "∞"
    res = 1.0 / freq_per_A
    return f"{res:.0f}" if res >= 20 else f"{res:.1f}"


def crossing_frequency(freq_per_A: Sequence[float], fsc: Sequence[float], threshold: float = 0.143) -> float | None:
    """The frequency (Å⁻¹) where ``fsc`` first drops below ``threshold`` after shell 0, linearly interpolated
    between the two shells around it; None when it never does."""
    f = np.asarray(freq_per_A, dtype=np.float64)
    c = np.asarray(fsc, dtype=np.float64)
    below = np.flatnonzero(c[1:] < threshold)
    if below.size == 0:
        return None
    i = int(below[0]) + 1
    c0, c1 = c[i - 1], c[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    return float(f[i - 1] + t * (f[i] - f[i - 1]))


class ResolutionAxis(pg.AxisItem):
    """A bottom axis in Å⁻¹ whose tick labels are resolutions in Å."""

    def tickStrings(self, values: list[float], scale: float, spacing: float) -> list[str]:  # noqa: N802 - Qt API
        return [resolution_tick_label(v * scale) for v in values]


class FscPlot(QWidget):
    """FSC curves against frequency, the threshold line and the resolution (see the module docstring)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.axis = ResolutionAxis(orientation="bottom")
        self.plot = pg.PlotWidget(axisItems={"bottom": self.axis})
        self.plot.setObjectName("fsc_plot")
        self.plot.setBackground(BACKGROUND)
        self.plot.setMenuEnabled(False)
        # small enough that the legend and the resolution line below always get their height (a layout that
        # cannot fit its minimum sizes draws its widgets over each other: the legend over the axis title)
        self.plot.setMinimumSize(220, 110)
        self.plot.setLabel("bottom", "Resolution (Å)")
        self.plot.setLabel("left", "FSC")
        self.plot.showGrid(x=True, y=True, alpha=0.15)
        self.plot.getAxis("bottom").enableAutoSIPrefix(False)
        self.curves = {
            "masked": self.plot.plot([], [], pen=pg.mkPen(MASKED_COLOUR, width=2.5), name="masked"),
            "unmasked": self.plot.plot([], [], pen=pg.mkPen(UNMASKED_COLOUR, width=1.5), name="unmasked"),
            "corrected": self.plot.plot([], [], pen=pg.mkPen(CORRECTED_COLOUR, width=1.5),
                                        name="masked, corrected"),
            "reference": self.plot.plot([], [], pen=pg.mkPen(REFERENCE_COLOUR, width=1.5,
                                                             style=Qt.PenStyle.DashDotLine),
                                        name="vs reference"),
        }
        self.threshold_line = pg.InfiniteLine(
            pos=0.143, angle=0, movable=False,
            pen=pg.mkPen(THRESHOLD_COLOUR, width=1, style=Qt.PenStyle.DashLine, cosmetic=True),
            label="0.143", labelOpts={"position": 0.02, "color": THRESHOLD_COLOUR, "anchors": [(0, 1), (0, 1)]})
        self.zero_line = pg.InfiniteLine(pos=0.0, angle=0, movable=False, pen=pg.mkPen("#606060", width=1))
        self.resolution_line = pg.InfiniteLine(
            pos=0.0, angle=90, movable=False, pen=pg.mkPen(RESOLUTION_COLOUR, width=1.5, cosmetic=True),
            label="", labelOpts={"position": 0.5, "color": RESOLUTION_COLOUR, "fill": "#202020c0",
                                 "anchors": [(0, 0.5), (0, 0.5)]})
        for item in (self.zero_line, self.threshold_line, self.resolution_line):
            self.plot.addItem(item, ignoreBounds=True)
        # the legend under the plot, where it never hides a curve
        self.legend_label = QLabel("")
        self.legend_label.setObjectName("fsc_legend")
        self.legend_label.setTextFormat(Qt.TextFormat.RichText)
        self.legend_label.setWordWrap(True)
        self.resolution_label = QLabel("")
        self.resolution_label.setObjectName("fsc_resolution")
        self.resolution_label.setWordWrap(True)
        self.resolution_label.setTextFormat(Qt.TextFormat.RichText)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.plot, 1)
        lay.addWidget(self.legend_label)
        lay.addWidget(self.resolution_label)
        self.resolution_A: float | None = None
        self.threshold = 0.143
        self.clear()

    def set_curves(self, freq_per_A: Sequence[float], *, masked: Sequence[float],
                   unmasked: Sequence[float] | None = None, corrected: Sequence[float] | None = None,
                   reference: Sequence[float] | None = None, resolution_A: float | None = None,
                   threshold: float = 0.143, note: str = "") -> None:
        """Plot the curves (each the length of ``freq_per_A``, Å⁻¹; empty or None ones are hidden) and mark
        ``resolution_A`` (Å, where the chosen curve crosses ``threshold``)."""
        f = np.asarray(freq_per_A, dtype=np.float64)
        if f.ndim != 1 or f.size < 2:
            raise ValueError(f"freq_per_A: expected at least 2 frequencies, got shape {f.shape}")
        given = {"masked": masked, "unmasked": unmasked, "corrected": corrected, "reference": reference}
        for name, values in given.items():
            item = self.curves[name]
            if values is None or len(values) == 0:
                item.setData([], [])
                item.setVisible(False)
                continue
            v = np.asarray(values, dtype=np.float64)
            if v.shape != f.shape:
                raise ValueError(f"FSC {name}: {v.size} values for {f.size} frequencies")
            item.setData(f, v)
            item.setVisible(True)
        self._sync_legend()
        self.threshold = float(threshold)
        self.threshold_line.setPos(self.threshold)
        self.threshold_line.label.setFormat(f"{self.threshold:g}")
        nyquist_A = 1.0 / float(f[-1]) if f[-1] > 0 else float("nan")
        self.resolution_A = None if resolution_A is None or not np.isfinite(resolution_A) else float(resolution_A)
        if self.resolution_A is not None and self.resolution_A > 0:
            self.resolution_line.setVisible(True)  # first: a hidden line's label ignores new text
            self.resolution_line.setPos(1.0 / self.resolution_A)
            # the label on the side of the line with more room (left of it near Nyquist)
            side = (1, 0.5) if 1.0 / self.resolution_A > 0.6 * float(f[-1]) else (0, 0.5)
            self.resolution_line.label.anchors = [side, side]
            self.resolution_line.label.setFormat(f" {self.resolution_A:.1f} Å ")
            self.resolution_label.setText(
                f"Resolution <b>{self.resolution_A:.2f} Å</b> at FSC = {self.threshold:g} "
                f"(Nyquist {nyquist_A:.2f} Å)")
        else:
            self.resolution_line.setVisible(False)
            self.resolution_label.setText(f"No resolution recorded (Nyquist {nyquist_A:.2f} Å)")
        # the note (which curve gives the resolution) in the tooltip: the line under the plot stays short
        self.resolution_label.setToolTip(f"The resolution is read {note}." if note else "")
        self.plot.setXRange(0.0, float(f[-1]), padding=0.01)
        lows = [float(np.nanmin(np.asarray(v, float))) for v in given.values() if v is not None and len(v)]
        self.plot.setYRange(min(-0.05, *lows) if lows else -0.05, 1.05, padding=0.0)
        self.setEnabled(True)

    def _sync_legend(self) -> None:
        colours = {"masked": MASKED_COLOUR, "unmasked": UNMASKED_COLOUR, "corrected": CORRECTED_COLOUR,
                   "reference": REFERENCE_COLOUR}
        parts = [f"<span style='color:{colours[name]}'>━━</span>&nbsp;{item.name()}"
                 for name, item in self.curves.items() if item.isVisible()]
        self.legend_label.setText(" &nbsp; ".join(parts))

    def legend_names(self) -> list[str]:
        """The names of the curves shown (as in the legend)."""
        return [item.name() for item in self.curves.values() if item.isVisible()]

    def curve(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(x, y)`` of curve ``name`` (masked, unmasked, corrected, reference) as plotted."""
        x, y = self.curves[name].getData()
        return (np.zeros(0) if x is None else np.asarray(x)), (np.zeros(0) if y is None else np.asarray(y))

    def resolution_line_text(self) -> str:
        """The label on the resolution line ("" when hidden)."""
        return self.resolution_line.label.toPlainText().strip() if self.resolution_line.isVisible() else ""

    def resolution_line_frequency(self) -> float | None:
        """Where the resolution line stands (Å⁻¹), None when hidden."""
        return float(self.resolution_line.value()) if self.resolution_line.isVisible() else None

    def clear(self) -> None:
        for item in self.curves.values():
            item.setData([], [])
            item.setVisible(False)
        self._sync_legend()
        self.resolution_line.setVisible(False)
        self.resolution_label.setText("")
        self.resolution_A = None
        self.setEnabled(False)
