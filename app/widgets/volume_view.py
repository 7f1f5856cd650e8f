"""A 3D view of a volume (tomogram, average): vispy maximum-intensity projection or isosurface.

Two ways to show it:

* on a platform with OpenGL windows (X11, Wayland, macOS, Windows) :class:`VolumeView` embeds an interactive
  vispy canvas (rotate with the mouse);
* on Qt's ``offscreen`` platform (tests, screenshots, CI), which cannot host an OpenGL widget, it renders the
  volume to an image with vispy's EGL backend (``EGL_PLATFORM=surfaceless``, Mesa's software OpenGL) and shows
  that image; :func:`render_volume` does this for any caller.

Volumes are ``(nz, ny, nx)`` arrays (any real dtype), shown with z up.
"""

from __future__ import annotations

import os
from typing import Literal

import numpy as np
from PySide6.QtCore import Qt
from PySide6.QtGui import QGuiApplication, QImage, QPixmap
from PySide6.QtWidgets import QLabel, QVBoxLayout, QWidget

Method = Literal["mip", "iso"]
NO_GL_PLATFORMS = ("offscreen", "minimal", "vnc")


def qt_can_host_opengl() -> bool:
    """Whether the running Qt platform can show an OpenGL canvas (False for ``offscreen``)."""
    app = QGuiApplication.instance()
    name = QGuiApplication.platformName() if app is not None else os.environ.get("QT_QPA_PLATFORM", "")
    return name not in NO_GL_PLATFORMS


def _normalised(volume: np.ndarray) -> np.ndarray:
    vol = np.asarray(volume, dtype=np.float32)
    if vol.ndim != 3:
        raise ValueError(f"volume: expected (nz, ny, nx), got shape {vol.shape}")
    lo, hi = np.percentile(vol, (0.5, 99.9))
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((vol - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def _build_scene(canvas: object, volume: np.ndarray, method: Method, threshold: float,
                 azimuth_deg: float, elevation_deg: float) -> object:
    from vispy import scene

    view = canvas.central_widget.add_view()  # type: ignore[attr-defined]
    vol = _normalised(volume)
    # an isosurface is shaded: map the data range to mid greys so that the lighting shows the shape
    kwargs = {"threshold": threshold, "clim": (0.0, 1.6)} if method == "iso" else {"clim": (0.0, 1.0)}
    visual = scene.visuals.Volume(vol, parent=view.scene, method=method, cmap="grays", **kwargs)
    nz, ny, nx = vol.shape
    view.camera = scene.cameras.TurntableCamera(fov=30.0, azimuth=azimuth_deg, elevation=elevation_deg,
                                                center=(nx / 2.0, ny / 2.0, nz / 2.0))
    view.camera.scale_factor = 1.15 * float(max(vol.shape))  # the box fills most of the view
    return visual


def render_volume(volume: np.ndarray, *, method: Method = "mip", threshold: float = 0.5,
                  size_px: tuple[int, int] = (400, 400), azimuth_deg: float = 30.0,
                  elevation_deg: float = 25.0) -> np.ndarray:
    """Render ``volume`` offscreen (vispy EGL); returns an RGBA ``uint8`` image of shape ``(h, w, 4)``.

    ``threshold`` is the isosurface level on the volume scaled to [0, 1] (0.5-99.9 percentile range).
    Raises ``RuntimeError`` when no EGL/OpenGL is available.
    """
    os.environ.setdefault("EGL_PLATFORM", "surfaceless")
    from vispy import scene

    try:
        canvas = scene.SceneCanvas(size=size_px, show=False, app="egl", bgcolor="black")
    except Exception as exc:  # noqa: BLE001 - no EGL on this machine
        raise RuntimeError(f"cannot render 3D offscreen (vispy EGL backend): {exc}") from exc
    try:
        _build_scene(canvas, volume, method, threshold, azimuth_deg, elevation_deg)
        image = np.asarray(canvas.render(alpha=True))
    finally:
        canvas.close()
    return image


class VolumeView(QWidget):
    """Shows a volume in 3D: an interactive vispy canvas, or a rendered image on the offscreen platform."""

    def __init__(self, parent: QWidget | None = None, *, size_px: tuple[int, int] = (400, 400)) -> None:
        super().__init__(parent)
        self._size_px = size_px
        self._lay = QVBoxLayout(self)
        self._lay.setContentsMargins(0, 0, 0, 0)
        self.interactive = qt_can_host_opengl()
        self._canvas: object | None = None
        self.image_label = QLabel("No volume")
        self.image_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.image_label.setMinimumSize(200, 200)
        self._lay.addWidget(self.image_label)
        self.last_image: np.ndarray | None = None

    @property
    def canvas(self) -> object | None:
        """The interactive vispy SceneCanvas (None on the offscreen platform)."""
        return self._canvas

    def set_volume(self, volume: np.ndarray, *, method: Method = "mip", threshold: float = 0.5) -> None:
        """Show ``volume`` ``(nz, ny, nx)`` as a maximum-intensity projection or an isosurface."""
        if self.interactive:
            from vispy import scene

            if self._canvas is not None:
                self._canvas.close()  # type: ignore[attr-defined]
                self._canvas = None
            canvas = scene.SceneCanvas(keys=None, show=False, app="pyside6", bgcolor="black")
            _build_scene(canvas, volume, method, threshold, 30.0, 25.0)
            self._canvas = canvas
            self.image_label.hide()
            self._lay.addWidget(canvas.native)
            return
        try:
            image = render_volume(volume, method=method, threshold=threshold, size_px=self._size_px)
        except RuntimeError as exc:
            self.image_label.setText(str(exc))
            self.image_label.setWordWrap(True)
            return
        self.last_image = image
        rgba = np.ascontiguousarray(image)
        qimage = QImage(rgba.data, rgba.shape[1], rgba.shape[0], rgba.strides[0], QImage.Format.Format_RGBA8888)
        self.image_label.setPixmap(QPixmap.fromImage(qimage.copy()))

    def closeEvent(self, event: object) -> None:  # noqa: N802 - Qt API
        if self._canvas is not None:
            self._canvas.close()  # type: ignore[attr-defined]
            self._canvas = None
        super().closeEvent(event)  # type: ignore[arg-type]
