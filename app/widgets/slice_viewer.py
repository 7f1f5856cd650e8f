"""Orthogonal slices of a volume: XY, XZ and YZ side by side, each with a slider, contrast adapted to the data.

The volume is ``(nz, ny, nx)`` (MRC order, a tomogram with the tilt axis along Y). The three panes show:

* XY: the section ``volume[z]`` (rows = y, columns = x), as in IMOD's 3dmod Zap window;
* XZ: ``volume[:, y, :]`` (rows = z, columns = x), z = 0 at the *bottom* (the section seen from the front);
* YZ: ``volume[:, :, x].T`` (rows = y, columns = z), so it shares the XY pane's rows.

Each pane's slider picks its slice (starting at the centre); a yellow line in the other panes marks where it
cuts. The display range is the 0.5–99.5 percentile of a subsample of the whole volume (all slices use it, so
densities compare across slices). Optionally each slice is the average of ``2·half_thickness + 1`` neighbouring
slices (thicker slices show particles better in noisy tomograms). Scene coordinates: voxel (i, j) of a pane
covers [j, j+1) × [i, i+1), so overlays (picked particles) are added with :meth:`SliceViewer.add_overlay` at
voxel position + 0.5. A left click inside a pane emits ``voxel_clicked(x, y, z)``: the voxel coordinates of the
point (voxel i's centre at i; the clicked pane's own axis at its slice), for picking.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtWidgets import QGridLayout, QLabel, QSlider, QSpinBox, QVBoxLayout, QWidget, QHBoxLayout

Axis = Literal["xy", "xz", "yz"]
AXES: tuple[Axis, ...] = ("xy", "xz", "yz")
CONTRAST_PERCENTILES = (0.5, 99.5)
CURSOR_COLOUR = "#fff176"
BACKGROUND = "#202020"


def volume_levels(volume: np.ndarray, percentiles: tuple[float, float] = CONTRAST_PERCENTILES,
                  max_samples: int = 1 << 20) -> tuple[float, float]:
    """Display range (low, high) of a volume: percentiles of (a regular subsample of) its finite voxels."""
    flat = np.asarray(volume).reshape(-1)
    if flat.size > max_samples:
        flat = flat[:: flat.size // max_samples + 1]
    flat = np.asarray(flat, dtype=np.float32)
    flat = flat[np.isfinite(flat)]
    if flat.size == 0:
        return 0.0, 1.0
    lo, hi = np.percentile(flat, percentiles)
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def extract_slice(volume: np.ndarray, axis: Axis, index: int, half_thickness: int = 0) -> np.ndarray:
    """The 2D image a pane shows (float32): XY ``(ny, nx)``, XZ ``(nz, nx)`` (row 0 = z 0), YZ ``(ny, nz)``;
    the mean over ``index ± half_thickness`` (clipped to the volume)."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
    dim = {"xy": 0, "xz": 1, "yz": 2}[axis]
    n = vol.shape[dim]
    if not 0 <= index < n:
        raise IndexError(f"{axis} slice {index} out of range (0-{n - 1})")
    lo, hi = max(0, index - half_thickness), min(n, index + half_thickness + 1)
    block = np.take(vol, np.arange(lo, hi), axis=dim).astype(np.float32)
    image = block.mean(axis=dim)
    return image.T if axis == "yz" else image


class _Pane(QWidget):
    """One slice pane: a title, the image and its slider."""

    def __init__(self, axis: Axis, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.axis = axis
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        # XZ is drawn with z upwards (not inverted); XY and YZ with row 0 at the top like the tilt images
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=axis != "xz", enableMenu=False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)
        pen = pg.mkPen(CURSOR_COLOUR, width=1, style=Qt.PenStyle.DashLine, cosmetic=True)
        self.vline = pg.InfiniteLine(angle=90, movable=False, pen=pen)
        self.hline = pg.InfiniteLine(angle=0, movable=False, pen=pen)
        for line in (self.vline, self.hline):
            self.view.addItem(line, ignoreBounds=True)
        self.title = QLabel(axis.upper())
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setMinimum(0)
        self.slider.setMaximum(0)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.title)
        lay.addWidget(self.graphics, 1)
        lay.addWidget(self.slider)


class SliceViewer(QWidget):
    """Three orthogonal slices of a volume ``(nz, ny, nx)`` with sliders; ``slice_changed(axis, index)``."""

    slice_changed = Signal(str, int)
    voxel_clicked = Signal(float, float, float)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._volume: np.ndarray | None = None
        self._voxel_A = 0.0
        self._levels = (0.0, 1.0)
        self.panes: dict[Axis, _Pane] = {a: _Pane(a) for a in AXES}
        for a, pane in self.panes.items():
            pane.slider.valueChanged.connect(lambda v, a=a: self._on_slider(a, v))
            pane.graphics.scene().sigMouseClicked.connect(lambda ev, a=a: self._on_click(a, ev))
        self.title_label = QLabel("No volume")
        self.title_label.setObjectName("volume_title")
        self.title_label.setWordWrap(True)
        self.thickness = QSpinBox()
        self.thickness.setRange(0, 10)
        self.thickness.setPrefix("Average ±")
        self.thickness.setSuffix(" slices")
        self.thickness.setToolTip("Show each slice as the mean of its neighbours (thicker slices, less noise)")
        self.thickness.valueChanged.connect(lambda _: self._redraw_all())
        self.info_label = QLabel("")
        self.info_label.setObjectName("slice_info")
        self.info_label.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.title_label, 1)
        top.addWidget(self.thickness)
        grid = QGridLayout()
        grid.setContentsMargins(0, 0, 0, 0)
        grid.addWidget(self.panes["xy"], 0, 0)
        grid.addWidget(self.panes["yz"], 0, 1)
        grid.addWidget(self.panes["xz"], 1, 0)
        grid.setColumnStretch(0, 3)
        grid.setColumnStretch(1, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 2)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(top)
        lay.addLayout(grid, 1)
        lay.addWidget(self.info_label)
        self.setEnabled(False)

    # -- data ------------------------------------------------------------------------------------------------
    def set_volume(self, volume: np.ndarray, voxel_size_A: float = 0.0, name: str = "") -> None:
        """Show ``volume`` (nz, ny, nx), each slider at the centre; contrast from the volume's percentiles."""
        vol = np.asarray(volume)
        if vol.ndim != 3:
            raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
        self._volume = vol
        self._voxel_A = float(voxel_size_A)
        self._levels = volume_levels(vol)
        nz, ny, nx = vol.shape
        voxel = f" at {voxel_size_A:.2f} Å/voxel" if voxel_size_A > 0 else ""
        self.title_label.setText(f"<b>{name}</b> — {nx}×{ny}×{nz} voxels (X×Y×Z){voxel}" if name
                                 else f"{nx}×{ny}×{nz} voxels (X×Y×Z){voxel}")
        for a, n in zip(AXES, (nz, ny, nx)):
            s = self.panes[a].slider
            s.blockSignals(True)
            s.setMaximum(n - 1)
            s.setValue((n - 1) // 2)
            s.blockSignals(False)
        self.setEnabled(True)
        self._redraw_all()
        for pane in self.panes.values():
            pane.view.autoRange(padding=0.0)

    def clear(self) -> None:
        self._volume = None
        for pane in self.panes.values():
            pane.image_item.clear()
        self.title_label.setText("No volume")
        self.info_label.setText("")
        self.setEnabled(False)

    @property
    def volume(self) -> np.ndarray | None:
        return self._volume

    @property
    def levels(self) -> tuple[float, float]:
        """The display range shared by the three panes."""
        return self._levels

    def index(self, axis: Axis) -> int:
        """The slice shown by pane ``axis`` (z for XY, y for XZ, x for YZ)."""
        return int(self.panes[axis].slider.value())

    def set_index(self, axis: Axis, index: int) -> None:
        """Show slice ``index`` in pane ``axis``."""
        self.panes[axis].slider.setValue(int(index))

    def image(self, axis: Axis) -> np.ndarray | None:
        """The image shown in pane ``axis``."""
        return self.panes[axis].image_item.image

    def add_overlay(self, axis: Axis, item: pg.GraphicsObject) -> None:
        """Add a graphics item (e.g. a ScatterPlotItem of picked particles) to pane ``axis``'s scene."""
        self.panes[axis].view.addItem(item)

    def pane_to_voxel(self, axis: Axis, u: float, v: float) -> tuple[float, float, float]:
        """Voxel coordinates (x, y, z) (voxel i's centre at i) of the scene point (u, v) of pane ``axis``."""
        here = float(self.index(axis))
        a, b = u - 0.5, v - 0.5
        if axis == "xy":
            return a, b, here
        if axis == "xz":
            return a, here, b
        return here, b, a  # yz: columns are z, rows are y

    def _on_click(self, axis: Axis, ev: object) -> None:
        if self._volume is None or ev.button() != Qt.MouseButton.LeftButton:  # type: ignore[attr-defined]
            return
        pane = self.panes[axis]
        pos = ev.scenePos()  # type: ignore[attr-defined]
        if not pane.view.sceneBoundingRect().contains(pos):
            return
        p = pane.view.mapSceneToView(pos)
        image = pane.image_item.image
        if image is None or not (0 <= p.x() < image.shape[1] and 0 <= p.y() < image.shape[0]):
            return
        self.voxel_clicked.emit(*self.pane_to_voxel(axis, float(p.x()), float(p.y())))

    # -- drawing ---------------------------------------------------------------------------------------------
    def _on_slider(self, axis: Axis, value: int) -> None:
        if self._volume is None:
            return
        self._draw(axis)
        self._update_cursors()
        self.slice_changed.emit(axis, int(value))

    def _redraw_all(self) -> None:
        if self._volume is None:
            return
        for a in AXES:
            self._draw(a)
        self._update_cursors()

    def _draw(self, axis: Axis) -> None:
        assert self._volume is not None
        pane = self.panes[axis]
        image = extract_slice(self._volume, axis, pane.slider.value(), self.thickness.value())
        pane.image_item.setImage(image, levels=self._levels, autoLevels=False)
        pane.image_item.setRect(QRectF(0.0, 0.0, float(image.shape[1]), float(image.shape[0])))
        i = pane.slider.value()
        pos = f" · {i * self._voxel_A / 10.0:.1f} nm" if self._voxel_A > 0 else ""
        name = {"xy": "Z", "xz": "Y", "yz": "X"}[axis]
        pane.title.setText(f"<b>{axis.upper()}</b> · {name} = {i} / {pane.slider.maximum()}{pos}")

    def _update_cursors(self) -> None:
        z, y, x = (self.index(a) + 0.5 for a in AXES)
        # XY pane: the XZ cut (y) is a horizontal line, the YZ cut (x) a vertical one; and so on
        self.panes["xy"].vline.setPos(x)
        self.panes["xy"].hline.setPos(y)
        self.panes["xz"].vline.setPos(x)
        self.panes["xz"].hline.setPos(z)
        self.panes["yz"].vline.setPos(z)
        self.panes["yz"].hline.setPos(y)
        lo, hi = self._levels
        self.info_label.setText(f"Slices at X {int(x)}, Y {int(y)}, Z {int(z)} · display range {lo:.3g} to {hi:.3g} "
                                f"(0.5–99.5 percentiles of the volume)")
