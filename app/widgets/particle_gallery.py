"""A scrollable grid of particle thumbnails (``gallery.mrc`` of the extraction), the particle's name on hover.

Images are ``(m, B, B)`` (row 0 at the top, as the XY slices of :mod:`tomoguide.widgets.slice_viewer`); each
thumbnail is scaled to 8 bits between its own 1st and 99th percentiles (:func:`thumbnail_uint8`) and shown
``thumb_px`` wide. Clicking a thumbnail emits ``particle_selected(index)``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QIcon, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QLabel, QListView, QListWidget, QListWidgetItem, QVBoxLayout, QWidget

THUMB_PX = 72
PERCENTILES = (1.0, 99.0)


def thumbnail_uint8(image: np.ndarray, percentiles: tuple[float, float] = PERCENTILES) -> np.ndarray:
    """An image (ny, nx) as uint8 (ny, nx): its ``percentiles`` range stretched to 0–255 (clipped); flat → 128."""
    im = np.asarray(image, dtype=np.float32)
    if im.ndim != 2:
        raise ValueError(f"thumbnail: expected a 2D image, got shape {im.shape}")
    finite = im[np.isfinite(im)]
    if finite.size == 0:
        return np.full(im.shape, 128, np.uint8)
    lo, hi = np.percentile(finite, percentiles)
    if hi <= lo:
        return np.full(im.shape, 128, np.uint8)
    scaled = np.clip((np.nan_to_num(im, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.round(scaled * 255.0).astype(np.uint8)


def _pixmap(image_u8: np.ndarray, size_px: int) -> QPixmap:
    im = np.ascontiguousarray(image_u8)
    qimage = QImage(im.data, im.shape[1], im.shape[0], im.strides[0], QImage.Format.Format_Grayscale8).copy()
    return QPixmap.fromImage(qimage).scaled(size_px, size_px, Qt.AspectRatioMode.KeepAspectRatio,
                                            Qt.TransformationMode.SmoothTransformation)


class ParticleGallery(QWidget):
    """Thumbnails of particles in a scrollable, wrapping grid; ``particle_selected(index)`` on a click."""

    particle_selected = Signal(int)

    def __init__(self, parent: QWidget | None = None, *, thumb_px: int = THUMB_PX) -> None:
        super().__init__(parent)
        self.thumb_px = thumb_px
        self.list = QListWidget()
        self.list.setObjectName("particle_gallery")
        self.list.setViewMode(QListView.ViewMode.IconMode)
        self.list.setIconSize(QSize(thumb_px, thumb_px))
        self.list.setGridSize(QSize(thumb_px + 8, thumb_px + 8))
        self.list.setResizeMode(QListView.ResizeMode.Adjust)
        self.list.setMovement(QListView.Movement.Static)
        self.list.setUniformItemSizes(True)
        self.list.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.list.setStyleSheet("QListWidget { background: #202020; }")
        self.list.currentRowChanged.connect(self._on_row)
        self.caption = QLabel("")
        self.caption.setObjectName("gallery_caption")
        self.caption.setWordWrap(True)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.setSpacing(2)
        lay.addWidget(self.list, 1)
        lay.addWidget(self.caption)
        self.names: list[str] = []

    def set_images(self, images: np.ndarray, names: Sequence[str] | None = None, *, caption: str = "") -> None:
        """Show ``images`` (m, B, B) with ``names`` (m,) as tooltips (default "particle i", from 1)."""
        stack = np.asarray(images)
        if stack.ndim == 2:
            stack = stack[None]
        if stack.ndim != 3:
            raise ValueError(f"gallery: expected (m, B, B) images, got shape {stack.shape}")
        m = stack.shape[0]
        self.names = [str(n) for n in names] if names is not None else [f"particle {i + 1}" for i in range(m)]
        if len(self.names) != m:
            raise ValueError(f"gallery: {m} images but {len(self.names)} names")
        self.list.blockSignals(True)
        self.list.clear()
        for i in range(m):
            item = QListWidgetItem(QIcon(_pixmap(thumbnail_uint8(stack[i]), self.thumb_px)), "")
            item.setToolTip(self.names[i])
            item.setData(Qt.ItemDataRole.UserRole, i)
            item.setSizeHint(QSize(self.thumb_px + 8, self.thumb_px + 8))
            self.list.addItem(item)
        self.list.blockSignals(False)
        self.caption.setText(caption or f"{m} particles — hover for the name, click to show one")
        self.setEnabled(m > 0)

    def count(self) -> int:
        return self.list.count()

    def tooltip(self, index: int) -> str:
        return self.list.item(index).toolTip()

    def thumbnail(self, index: int) -> QPixmap:
        """The thumbnail of particle ``index`` (``thumb_px`` wide)."""
        return self.list.item(index).icon().pixmap(QSize(self.thumb_px, self.thumb_px))

    def select(self, index: int) -> None:
        """Select particle ``index`` (emits ``particle_selected``)."""
        self.list.setCurrentRow(int(index))

    def current(self) -> int:
        return int(self.list.currentRow())

    def _on_row(self, row: int) -> None:
        if row >= 0:
            self.particle_selected.emit(row)

    def clear(self) -> None:
        self.list.clear()
        self.names = []
        self.caption.setText("")
        self.setEnabled(False)
