"""A map (subtomogram average, reference, particle) on screen: its central slices and a 3D isosurface.

* :class:`CentralSlices`: the central XY, XZ and YZ sections of a cube side by side (same orientation rules as
  :mod:`tomoguide.widgets.slice_viewer`: XY ``volume[c]`` rows = y from the top, XZ ``volume[:, c, :]`` with z
  upwards, YZ ``volume[:, :, c].T`` rows = y, columns = z), one grey scale for the three panes.
* :class:`IsoSurfaceView`: the map as a shaded isosurface at a level chosen with a slider (in σ of the map above
  its mean), rendered by vispy (an interactive canvas where Qt can host OpenGL, else an image rendered offscreen
  with vispy's EGL backend, see :mod:`tomoguide.widgets.volume_view`). Beside the slider: the level in σ and in
  map units, and the volume it encloses (nm³).
* :class:`MapView`: both, with a title (box, voxel size).

Maps are ``(nz, ny, nx)`` = (z, y, x) float arrays; the 3D view shows x to the right, y into the screen, z up
(vispy's x, y, z = the array's last, middle and first axes). The default isosurface level is
:func:`default_level`: the level whose enclosed volume equals the particle's molecular volume when its mass is
known (1.21 Å³ per Da, protein at 0.83 Da/Å³), else the mean + 1.5 σ of the map.
"""

from __future__ import annotations

import os

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget

from tomoguide.widgets.slice_viewer import volume_levels
from tomoguide.widgets.volume_view import qt_can_host_opengl

BACKGROUND = "#202020"
SURFACE_RGBA = (0.93, 0.80, 0.45, 1.0)
#: Å³ per dalton of protein (density 1.37 g/cm³ ≈ 0.83 Da/Å³)
A3_PER_DA = 1.21
#: slider resolution in σ
SIGMA_STEP = 0.05
DEFAULT_SIGMA = 1.5


def central_slices(volume: np.ndarray) -> dict[str, np.ndarray]:
    """The central sections of ``volume`` (nz, ny, nx), float32: ``xy`` (ny, nx) = ``volume[nz // 2]``, ``xz``
    (nz, nx) = ``volume[:, ny // 2, :]`` (row 0 = z 0, drawn at the bottom), ``yz`` (ny, nz) =
    ``volume[:, :, nx // 2].T``. The centre index ``n // 2`` is the map's centre voxel (box centre convention)."""
    vol = np.asarray(volume)
    if vol.ndim != 3:
        raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
    nz, ny, nx = vol.shape
    return {"xy": np.asarray(vol[nz // 2], np.float32), "xz": np.asarray(vol[:, ny // 2, :], np.float32),
            "yz": np.asarray(vol[:, :, nx // 2].T, np.float32)}


def map_stats(volume: np.ndarray) -> tuple[float, float]:
    """(mean, standard deviation) of all voxels (float64); σ = 1 for a constant map."""
    vol = np.asarray(volume, dtype=np.float64)
    sd = float(vol.std())
    return float(vol.mean()), sd if sd > 0 else 1.0


def level_enclosing(volume: np.ndarray, enclosed_A3: float, voxel_A: float) -> float:
    """The density level whose isosurface encloses ``enclosed_A3`` (Å³): the value of the k-th highest voxel,
    k = enclosed volume / voxel volume (at least 1, at most all voxels)."""
    flat = np.sort(np.asarray(volume, dtype=np.float64).ravel())
    k = int(round(enclosed_A3 / float(voxel_A) ** 3))
    k = min(max(k, 1), flat.size)
    return float(flat[flat.size - k])


def default_level(volume: np.ndarray, *, voxel_A: float = 0.0, mass_kDa: float | None = None) -> float:
    """A sensible isosurface level: enclosing the molecular volume of ``mass_kDa`` (×1.21 Å³/Da) when the mass
    and the voxel size are given, else mean + 1.5 σ; kept strictly inside the map's value range."""
    vol = np.asarray(volume, dtype=np.float64)
    if mass_kDa and voxel_A > 0:
        level = level_enclosing(vol, mass_kDa * 1e3 * A3_PER_DA, voxel_A)
    else:
        mean, sd = map_stats(vol)
        level = mean + DEFAULT_SIGMA * sd
    lo, hi = float(vol.min()), float(vol.max())
    if not lo < level < hi:
        level = lo + 0.5 * (hi - lo)
    return level


def enclosed_volume_A3(volume: np.ndarray, level: float, voxel_A: float) -> float:
    """The volume (Å³) of the voxels at or above ``level``."""
    return float(np.count_nonzero(np.asarray(volume) >= level)) * float(voxel_A) ** 3


def _normalise(volume: np.ndarray) -> tuple[np.ndarray, float, float]:
    """The volume scaled to [0, 1] over its full range (float32, C order) and that range (lo, hi)."""
    vol = np.asarray(volume, dtype=np.float32)
    lo, hi = float(vol.min()), float(vol.max())
    if hi <= lo:
        hi = lo + 1.0
    return np.ascontiguousarray((vol - lo) / (hi - lo), dtype=np.float32), lo, hi


def surface_colormap() -> object:
    """The vispy colormap that shades an isosurface in one colour.

    vispy's isosurface shader lights the *value* at the surface (value × (0.2 + diffuse) + specular) and then
    applies the colormap; the data it gets is :func:`iso_data` (threshold 0.5, values up to 1), so lit values run
    from about 0.1 (grazing) to 1 (facing the light) and above (specular highlights): dark, full and light
    :data:`SURFACE_RGBA`."""
    from vispy.color import Colormap

    dark = tuple(0.12 * c for c in SURFACE_RGBA[:3]) + (1.0,)
    light = tuple(min(1.0, 0.55 + 0.5 * c) for c in SURFACE_RGBA[:3]) + (1.0,)
    return Colormap([dark, SURFACE_RGBA, light], controls=[0.0, 0.8, 1.0])


#: the isosurface threshold on the data of :func:`iso_data`
ISO_THRESHOLD = 0.5


def iso_data(vol01: np.ndarray, threshold01: float) -> np.ndarray:
    """The data the isosurface is drawn from: the [0, 1] volume scaled so that ``threshold01`` becomes
    :data:`ISO_THRESHOLD` and clipped to [0, 1] (values well above the surface would otherwise wash its
    shading out to white); float32, same shape. The surface (where the value crosses the threshold) is the same."""
    t = max(float(threshold01), 1e-6)
    return np.clip(vol01 * (ISO_THRESHOLD / t), 0.0, 1.0).astype(np.float32)


def _build_iso_scene(canvas: object, vol01: np.ndarray, threshold01: float, azimuth_deg: float,
                     elevation_deg: float) -> object:
    """A Volume visual (isosurface method, shaded in one colour) of a [0, 1] volume in ``canvas``."""
    from vispy import scene

    view = canvas.central_widget.add_view()  # type: ignore[attr-defined]
    visual = scene.visuals.Volume(iso_data(vol01, threshold01), parent=view.scene, method="iso",
                                  threshold=ISO_THRESHOLD, clim=(0.0, 1.0), cmap=surface_colormap())
    nz, ny, nx = vol01.shape
    view.camera = scene.cameras.TurntableCamera(fov=30.0, azimuth=azimuth_deg, elevation=elevation_deg,
                                                center=(nx / 2.0, ny / 2.0, nz / 2.0))
    view.camera.scale_factor = view_extent(vol01, threshold01)
    return visual


def view_extent(vol01: np.ndarray, threshold01: float) -> float:
    """The camera's scale (voxels across the view): the object above the threshold fills most of it
    (2.4 × the 99th-percentile distance of its voxels from the box centre), between 0.3 and 1.15 × the box."""
    box = float(max(vol01.shape))
    idx = np.argwhere(vol01 >= threshold01)
    if idx.size == 0:
        return 1.15 * box
    centre = (np.asarray(vol01.shape) - 1) / 2.0
    r = float(np.percentile(np.linalg.norm(idx - centre, axis=1), 99.0))
    return float(np.clip(2.4 * r, 0.3 * box, 1.15 * box))


def render_isosurface(volume: np.ndarray, level: float, *, size_px: tuple[int, int] = (400, 400),
                      azimuth_deg: float = 30.0, elevation_deg: float = 25.0) -> np.ndarray:
    """Render the isosurface of ``volume`` (nz, ny, nx) at ``level`` (map units) offscreen with vispy's EGL
    backend; returns RGBA ``uint8`` (h, w, 4) on black. Raises ``RuntimeError`` when no EGL/OpenGL is available."""
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    from vispy import scene

    vol01, lo, hi = _normalise(volume)
    try:
        canvas = scene.SceneCanvas(size=size_px, show=False, app="egl", bgcolor="black")
    except Exception as exc:  # noqa: BLE001 - no EGL on this machine
        raise RuntimeError(f"cannot render 3D offscreen (vispy EGL backend): {exc}") from exc
    try:
        _build_iso_scene(canvas, vol01, (level - lo) / (hi - lo), azimuth_deg, elevation_deg)
        return np.asarray(canvas.render(alpha=True))
    finally:
        canvas.close()


class _ImagePane(QWidget):
    """A titled image pane (pyqtgraph, aspect locked)."""

    def __init__(self, title: str, *, invert_y: bool, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(BACKGROUND)
        self.graphics.setMinimumSize(80, 80)
        self.view = self.graphics.addViewBox(lockAspect=True, invertY=invert_y, enableMenu=False)
        self.view.setMouseEnabled(False, False)
        self.image_item = pg.ImageItem(axisOrder="row-major")
        self.view.addItem(self.image_item)
        self.title = QLabel(title)
        self.title.setAlignment(Qt.AlignmentFlag.AlignCenter)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(1)
        lay.addWidget(self.title)
        lay.addWidget(self.graphics, 1)

    def set_image(self, image: np.ndarray, levels: tuple[float, float]) -> None:
        ny, nx = image.shape
        self.image_item.setImage(image, levels=levels, autoLevels=False)
        self.image_item.setRect(QRectF(0.0, 0.0, float(nx), float(ny)))
        self.view.autoRange(padding=0.0)


class CentralSlices(QWidget):
    """The central XY, XZ and YZ sections of a volume in a row (see :func:`central_slices`), one grey scale
    (``percentiles`` of the whole volume)."""

    AXES = ("xy", "xz", "yz")

    def __init__(self, title: str = "", parent: QWidget | None = None, *,
                 percentiles: tuple[float, float] = (0.5, 99.5)) -> None:
        super().__init__(parent)
        self.percentiles = percentiles
        self.title = QLabel(title)
        self.title.setObjectName("slices_title")
        self.title.setVisible(bool(title))
        names = {"xy": "XY (central z)", "xz": "XZ (central y)", "yz": "YZ (central x)"}
        self.panes = {a: _ImagePane(names[a], invert_y=a != "xz") for a in self.AXES}
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        for a in self.AXES:
            row.addWidget(self.panes[a], 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.title)
        lay.addLayout(row, 1)
        self.levels = (0.0, 1.0)

    def set_volume(self, volume: np.ndarray, title: str | None = None) -> None:
        images = central_slices(volume)
        self.levels = volume_levels(np.asarray(volume, np.float32), self.percentiles)
        for a in self.AXES:
            self.panes[a].set_image(images[a], self.levels)
        if title is not None:
            self.title.setText(title)
            self.title.setVisible(bool(title))
        self.setEnabled(True)

    def image(self, axis: str) -> np.ndarray | None:
        """The image pane ``axis`` shows."""
        return self.panes[axis].image_item.image

    def clear(self) -> None:
        for pane in self.panes.values():
            pane.image_item.clear()
        self.setEnabled(False)


class IsoSurfaceView(QWidget):
    """A map's isosurface with a level slider (σ above the mean); ``level_changed(level)`` in map units.

    The slider runs from the mean to the map's maximum in steps of :data:`SIGMA_STEP` σ; it starts at
    :func:`default_level`. The caption gives the level in σ and map units and the enclosed volume in nm³.
    """

    level_changed = Signal(float)

    def __init__(self, parent: QWidget | None = None, *, size_px: tuple[int, int] = (360, 360)) -> None:
        super().__init__(parent)
        self._size_px = size_px
        self.interactive = qt_can_host_opengl()
        self._canvas: object | None = None
        self._visual: object | None = None
        self._volume: np.ndarray | None = None
        self._vol01: np.ndarray | None = None
        self._range = (0.0, 1.0)
        self._stats = (0.0, 1.0)
        self._voxel_A = 0.0
        self._level = 0.0
        self.last_image: np.ndarray | None = None
        self._pixmap: QPixmap | None = None
        self.render_error = ""
        self.image_label = QLabel("No map")
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(160, 160)
        # the rendered image must not force its size on the layout (it is centred and cut when larger)
        self.image_label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self.image_label.setStyleSheet("background: black; color: #cccccc")
        self.image_label.setWordWrap(True)
        self.slider = QSlider(Qt.Orientation.Horizontal)
        self.slider.setObjectName("iso_level")
        self.slider.setToolTip("Isosurface level in σ above the map's mean: lower shows more (and noise), "
                               "higher shows only the strongest densities")
        self.slider.setTracking(self.interactive)  # offscreen: render once, on release
        self.slider.valueChanged.connect(self._on_slider)
        self.caption = QLabel("")
        self.caption.setObjectName("iso_caption")
        self.caption.setWordWrap(True)
        self._view_lay = QVBoxLayout()
        self._view_lay.setContentsMargins(0, 0, 0, 0)
        self._view_lay.addWidget(self.image_label, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addLayout(self._view_lay, 1)
        row = QHBoxLayout()
        row.addWidget(QLabel("Level:"))
        row.addWidget(self.slider, 1)
        lay.addLayout(row)
        lay.addWidget(self.caption)
        self.setEnabled(False)

    # -- data ------------------------------------------------------------------------------------------------
    def set_volume(self, volume: np.ndarray, *, voxel_A: float = 0.0, level: float | None = None,
                   mass_kDa: float | None = None) -> None:
        """Show ``volume`` (nz, ny, nx) at ``level`` (map units; default :func:`default_level`)."""
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim != 3:
            raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
        self._volume = vol
        self._voxel_A = float(voxel_A)
        self._vol01, lo, hi = _normalise(vol)
        self._range = (lo, hi)
        self._stats = map_stats(vol)
        mean, sd = self._stats
        top = max(1, int(np.floor((hi - mean) / sd / SIGMA_STEP)))
        self.slider.blockSignals(True)
        self.slider.setRange(0, top)
        self.slider.blockSignals(False)
        start = default_level(vol, voxel_A=voxel_A, mass_kDa=mass_kDa) if level is None else float(level)
        self._level = float(np.clip(start, lo, hi))
        if self.interactive:
            self._make_canvas()  # the camera frames the object at this level
        self.setEnabled(True)
        self.set_level(start)

    def clear(self) -> None:
        self._volume = self._vol01 = None
        self.last_image = None
        self._pixmap = None
        self._close_canvas()
        self.image_label.show()
        self.image_label.setPixmap(QPixmap())
        self.image_label.setText("No map")
        self.caption.setText("")
        self.setEnabled(False)

    def level(self) -> float:
        """The isosurface level shown (map units)."""
        return self._level

    def level_sigma(self) -> float:
        """The level in σ above the mean."""
        mean, sd = self._stats
        return (self._level - mean) / sd

    def threshold01(self) -> float:
        """The level on the [0, 1] scale of the rendered volume (min → 0, max → 1)."""
        lo, hi = self._range
        return (self._level - lo) / (hi - lo)

    def set_level(self, level: float) -> None:
        """Show the isosurface at ``level`` (map units, clipped into the map's range); moves the slider to the
        nearest step without overriding the exact value."""
        if self._volume is None:
            return
        lo, hi = self._range
        eps = 1e-6 * (hi - lo)
        self._level = float(np.clip(level, lo + eps, hi - eps))
        mean, sd = self._stats
        self.slider.blockSignals(True)
        self.slider.setValue(int(round((self._level - mean) / sd / SIGMA_STEP)))
        self.slider.blockSignals(False)
        self._update_caption()
        self._draw()
        self.level_changed.emit(self._level)

    def _on_slider(self, value: int) -> None:
        mean, sd = self._stats
        self.set_level(mean + value * SIGMA_STEP * sd)

    def _update_caption(self) -> None:
        assert self._volume is not None
        text = f"level {self.level_sigma():.2f} σ ({self._level:.4g})"
        if self._voxel_A > 0:
            nm3 = enclosed_volume_A3(self._volume, self._level, self._voxel_A) / 1e3
            text += f" · encloses {nm3:,.0f} nm³ ({nm3 * 1e3 / A3_PER_DA / 1e3:,.0f} kDa of protein)"
        self.caption.setText(text)

    # -- drawing ---------------------------------------------------------------------------------------------
    def _close_canvas(self) -> None:
        if self._canvas is not None:
            self._canvas.native.setParent(None)  # type: ignore[attr-defined]
            self._canvas.close()  # type: ignore[attr-defined]
            self._canvas = None
            self._visual = None

    def _make_canvas(self) -> None:
        from vispy import scene

        assert self._vol01 is not None
        self._close_canvas()
        canvas = scene.SceneCanvas(keys=None, show=False, app="pyside6", bgcolor="black")
        self._visual = _build_iso_scene(canvas, self._vol01, self.threshold01(), 30.0, 25.0)
        self._canvas = canvas
        self.image_label.hide()
        self._view_lay.addWidget(canvas.native, 1)

    def _draw(self) -> None:
        if self._visual is not None:
            assert self._vol01 is not None
            self._visual.set_data(iso_data(self._vol01, self.threshold01()), clim=(0.0, 1.0))  # type: ignore[attr-defined]
            self._canvas.update()  # type: ignore[attr-defined]
            return
        assert self._volume is not None
        try:
            image = render_isosurface(self._volume, self._level, size_px=self._size_px)
        except RuntimeError as exc:
            self.render_error = str(exc)
            self.image_label.setText(f"No 3D view here: {exc}")
            return
        self.render_error = ""
        self.last_image = image
        rgba = np.ascontiguousarray(image)
        qimage = QImage(rgba.data, rgba.shape[1], rgba.shape[0], rgba.strides[0], QImage.Format.Format_RGBA8888)
        self._pixmap = QPixmap.fromImage(qimage.copy())
        self._fit_pixmap()

    def _fit_pixmap(self) -> None:
        """Show the rendered image scaled down to the label when the label is smaller (aspect kept)."""
        if self._pixmap is None:
            return
        w, h = self.image_label.width(), self.image_label.height()
        pix = self._pixmap
        if w < pix.width() or h < pix.height():
            pix = pix.scaled(max(w, 1), max(h, 1), Qt.AspectRatioMode.KeepAspectRatio,
                             Qt.TransformationMode.SmoothTransformation)
        self.image_label.setPixmap(pix)

    def resizeEvent(self, event: object) -> None:  # noqa: N802 - Qt API
        super().resizeEvent(event)  # type: ignore[arg-type]
        self._fit_pixmap()

    def render_image(self) -> np.ndarray | None:
        """The current 3D view as RGBA ``uint8`` (h, w, 4): the interactive canvas rendered, or the last
        offscreen image (None when nothing could be rendered)."""
        if self._canvas is not None:
            return np.asarray(self._canvas.render(alpha=True))  # type: ignore[attr-defined]
        return self.last_image

    def closeEvent(self, event: object) -> None:  # noqa: N802 - Qt API
        self._close_canvas()
        super().closeEvent(event)  # type: ignore[arg-type]


class MapView(QWidget):
    """A map's central slices (top row) and its isosurface with the level slider (below), with a title.

    ``side``: an optional widget put beside the isosurface (e.g. the FSC plot), the slices spanning both."""

    def __init__(self, parent: QWidget | None = None, *, size_px: tuple[int, int] = (360, 360),
                 side: QWidget | None = None) -> None:
        super().__init__(parent)
        self.title = QLabel("No map")
        self.title.setObjectName("map_title")
        self.title.setWordWrap(True)
        self.slices = CentralSlices()
        self.iso = IsoSurfaceView(size_px=size_px)
        self.side = side
        grid = QGridLayout(self)
        grid.setContentsMargins(0, 0, 0, 0)
        span = 2 if side is not None else 1
        grid.addWidget(self.title, 0, 0, 1, span)
        grid.addWidget(self.slices, 1, 0, 1, span)
        grid.addWidget(self.iso, 2, 0)
        if side is not None:
            grid.addWidget(side, 2, 1)
            grid.setColumnStretch(0, 4)
            grid.setColumnStretch(1, 5)
        grid.setRowStretch(1, 2)
        grid.setRowStretch(2, 5)

    def set_map(self, volume: np.ndarray, *, voxel_A: float = 0.0, name: str = "", level: float | None = None,
                mass_kDa: float | None = None) -> None:
        """Show ``volume`` (nz, ny, nx) with voxel size ``voxel_A`` (Å)."""
        vol = np.asarray(volume, dtype=np.float32)
        if vol.ndim != 3:
            raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
        nz, ny, nx = vol.shape
        voxel = f" · {voxel_A:.2f} Å/voxel ({nx * voxel_A / 10.0:.1f} nm box)" if voxel_A > 0 else ""
        self.title.setText(f"<b>{name}</b> — {nx}×{ny}×{nz} voxels{voxel}" if name else f"{nx}×{ny}×{nz} voxels{voxel}")
        self.slices.set_volume(vol)
        self.iso.set_volume(vol, voxel_A=voxel_A, level=level, mass_kDa=mass_kDa)

    def clear(self) -> None:
        self.title.setText("No map")
        self.slices.clear()
        self.iso.clear()
