"""A tilt-series viewer: one image at a time, a slider over the tilts, angle or acquisition order.

The stack is given in *angle order* (ascending tilt, as the import step writes it) with, per tilt, the tilt angle
(degrees), the acquisition order (0 = first image taken) and the dose (e⁻/Å² of that tilt, and the dose received
before it). The slider walks the tilts in angle order or in the order they were acquired (dose-symmetric: 0°,
+3°, −3°, −6°, +6°, …). Contrast adapts to each image: the display range is the 0.5–99.5 percentile of its
pixel values. Raw frame sums are dominated by shot noise, so the image is shown binned for display (mean over
b×b pixels; "auto" picks the largest b of 1, 2, 4, 8 that keeps at least 128 px on the short side), which makes
particles and the ice visible; the contrast range is taken from the binned image. Image row 0 is shown at the
top, as in IMOD and SerialEM.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QSlider, QVBoxLayout, QWidget

Order = Literal["angle", "acquisition"]
CONTRAST_PERCENTILES = (0.5, 99.5)
DISPLAY_BINNINGS = (1, 2, 4, 8)
MIN_DISPLAY_PX = 128


def auto_binning(shape: tuple[int, ...]) -> int:
    """Largest display binning in :data:`DISPLAY_BINNINGS` that keeps ≥ 128 px on the short side (≥ 1)."""
    short = min(shape[-2:])
    return max([b for b in DISPLAY_BINNINGS if short // b >= MIN_DISPLAY_PX] or [1])


def bin_image(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``×``factor`` blocks (edges that do not fill a block are dropped); float32."""
    image = np.asarray(image, dtype=np.float32)
    if factor <= 1:
        return image
    ny, nx = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor).mean(axis=(1, 3))


def percentile_levels(image: np.ndarray, percentiles: tuple[float, float] = CONTRAST_PERCENTILES,
                      max_samples: int = 65536) -> tuple[float, float]:
    """Display range (low, high) of a 2D image from percentiles of (a subsample of) its finite values."""
    flat = np.asarray(image, dtype=np.float32).ravel()
    if flat.size > max_samples:
        flat = flat[:: flat.size // max_samples + 1]
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(flat, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


class TiltSeriesViewer(QWidget):
    """Shows a stack ``(n_tilts, ny, nx)`` one tilt at a time; ``index_changed(int)`` gives the stack index."""

    index_changed = Signal(int)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._stack: np.ndarray | None = None
        self._tilt_deg = np.zeros(0)
        self._order_idx = np.zeros(0, dtype=int)
        self._acq = np.zeros(0, dtype=int)
        self._dose = np.zeros(0)
        self._prior = np.zeros(0)
        self._name = ""
        self._order: Order = "angle"
        self._levels = (0.0, 1.0)

        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground("#202020")
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)

        self.title_label = QLabel("No tilt series")
        self.title_label.setObjectName("tilt_title")
        self.info_label = QLabel("")
        self.info_label.setObjectName("tilt_info")
        self.info_label.setWordWrap(True)
        self.title_label.setWordWrap(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.setMaximum(0)
        self.slider.setPageStep(1)
        self.slider.setToolTip("Move through the tilts (← → keys when the slider has the focus)")
        self.slider.valueChanged.connect(self._show_position)
        self.order_combo = QComboBox()
        self.order_combo.addItem("Angle order", "angle")
        self.order_combo.addItem("Acquisition order", "acquisition")
        self.order_combo.setToolTip("Walk the tilts by tilt angle, or in the order the microscope took them")
        self.order_combo.currentIndexChanged.connect(lambda _: self.set_order(self.order_combo.currentData()))
        self.bin_combo = QComboBox()
        self.bin_combo.addItem("Bin: auto", 0)
        for b in DISPLAY_BINNINGS:
            self.bin_combo.addItem(f"Bin ×{b}", b)
        self.bin_combo.setToolTip("Average b×b pixels for display: noisy frame sums show more when binned")
        self.bin_combo.currentIndexChanged.connect(lambda _: self._show_position(self.slider.value()))

        # the title gets the whole width (a long one wraps into a line or two, not a narrow column of words); the
        # display choices on the line below it
        choices = QHBoxLayout()
        choices.addWidget(self.bin_combo)
        choices.addWidget(self.order_combo)
        choices.addStretch(1)
        bottom = QHBoxLayout()
        bottom.addWidget(self.slider, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.title_label)
        lay.addLayout(choices)
        lay.addWidget(self.graphics, 1)
        lay.addLayout(bottom)
        lay.addWidget(self.info_label)
        self.setEnabled(False)

    # -- data ------------------------------------------------------------------------------------------------
    def set_series(self, stack: np.ndarray, tilt_deg: np.ndarray, acquisition_order: np.ndarray,
                   dose_e_A2: np.ndarray, prior_dose_e_A2: np.ndarray | None = None, name: str = "") -> None:
        """Show a stack ``(n, ny, nx)`` in angle order with per-tilt angle (°), acquisition order and dose (e⁻/Å²)."""
        stack = np.asarray(stack)
        if stack.ndim != 3:
            raise ValueError(f"stack: expected (n_tilts, ny, nx), got shape {stack.shape}")
        n = stack.shape[0]
        for label, arr in (("tilt_deg", tilt_deg), ("acquisition_order", acquisition_order), ("dose_e_A2", dose_e_A2)):
            if len(arr) != n:
                raise ValueError(f"{label}: {len(arr)} values for {n} images")
        self._stack = stack
        self._tilt_deg = np.asarray(tilt_deg, dtype=float)
        self._acq = np.asarray(acquisition_order, dtype=int)
        self._dose = np.asarray(dose_e_A2, dtype=float)
        self._prior = (np.asarray(prior_dose_e_A2, dtype=float) if prior_dose_e_A2 is not None
                       else np.full(n, np.nan))
        self._name = name
        self.title_label.setText(f"<b>{name}</b> — {n} tilts, {stack.shape[2]}×{stack.shape[1]} px (frame sums)")
        self.setEnabled(True)
        self.slider.blockSignals(True)
        self.slider.setMaximum(n - 1)
        self.slider.blockSignals(False)
        self._rebuild_order()
        # start on the tilt nearest 0°
        self.show_index(int(np.argmin(np.abs(self._tilt_deg))))
        self.view.autoRange(padding=0.0)

    def clear(self) -> None:
        self._stack = None
        self.image_item.clear()
        self.title_label.setText("No tilt series")
        self.info_label.setText("")
        self.setEnabled(False)

    # -- navigation ------------------------------------------------------------------------------------------
    @property
    def order(self) -> Order:
        return self._order

    def set_order(self, order: Order) -> None:
        """Walk the slider in "angle" or "acquisition" order (the image shown stays the same)."""
        if order not in ("angle", "acquisition"):
            raise ValueError(f"order must be 'angle' or 'acquisition', not {order!r}")
        current = self.current_index() if self._stack is not None else None
        self._order = order
        idx = self.order_combo.findData(order)
        if self.order_combo.currentIndex() != idx:
            self.order_combo.blockSignals(True)
            self.order_combo.setCurrentIndex(idx)
            self.order_combo.blockSignals(False)
        self._rebuild_order()
        if current is not None:
            self.show_index(current)

    def _rebuild_order(self) -> None:
        n = 0 if self._stack is None else self._stack.shape[0]
        if self._order == "angle":
            self._order_idx = np.argsort(self._tilt_deg, kind="stable")
        else:
            self._order_idx = np.argsort(self._acq, kind="stable")
        assert len(self._order_idx) == n

    def stack_indices_in_order(self) -> list[int]:
        """Stack indices in the slider's order."""
        return [int(i) for i in self._order_idx]

    def current_index(self) -> int:
        """Index into the stack of the image shown."""
        return int(self._order_idx[self.slider.value()])

    def show_index(self, stack_index: int) -> None:
        """Show the image ``stack_index`` (moves the slider to it)."""
        pos = int(np.nonzero(self._order_idx == stack_index)[0][0])
        if self.slider.value() == pos:
            self._show_position(pos)
        else:
            self.slider.setValue(pos)

    def set_position(self, position: int) -> None:
        """Move the slider to ``position`` (0 = first in the current order)."""
        self.slider.setValue(position)

    @property
    def levels(self) -> tuple[float, float]:
        """Display range of the image shown (0.5 and 99.5 percentiles of the displayed, binned image)."""
        return self._levels

    def display_binning(self) -> int:
        """The binning used for display (the chosen one, or the automatic one)."""
        chosen = int(self.bin_combo.currentData() or 0)
        if chosen:
            return chosen
        return 1 if self._stack is None else auto_binning(self._stack.shape)

    def _show_position(self, pos: int) -> None:
        if self._stack is None:
            return
        i = int(self._order_idx[pos])
        raw = self._stack[i]
        image = bin_image(raw, self.display_binning())
        self._levels = percentile_levels(image)
        self.image_item.setImage(image, levels=self._levels, autoLevels=False)
        self.image_item.setRect(QRectF(0.0, 0.0, float(raw.shape[1]), float(raw.shape[0])))
        prior = self._prior[i]
        prior_text = "" if not np.isfinite(prior) else f", {prior:.1f} e⁻/Å² before it"
        order_text = "angle order" if self._order == "angle" else "acquisition order"
        self.info_label.setText(
            f"Tilt {self._tilt_deg[i]:+.1f}°  ·  acquired #{self._acq[i] + 1} of {len(self._acq)}  ·  "
            f"dose {self._dose[i]:.2f} e⁻/Å²{prior_text}  ·  image {pos + 1}/{len(self._order_idx)} in "
            f"{order_text}")
        self.index_changed.emit(i)
