"""The ``reconstruct`` preview: orthogonal slices (XY, XZ, YZ) of the chosen tomogram, and on request a 3D view.

Reads the step's output ``tomograms`` (a :class:`~tomoguide.steps.records.SeriesSet` whose entries have the role
``tomogram``: an MRC volume (nz, ny, nx) with the voxel size in its header). The slices are shown by
:class:`~tomoguide.widgets.slice_viewer.SliceViewer` (contrast from the volume's 0.5–99.5 percentiles). "Show in
3D" renders a copy binned to at most :data:`MAX_3D_VOXELS` per side with
:class:`~tomoguide.widgets.volume_view.VolumeView` (maximum-intensity projection of the inverted densities, so
that protein, dark in cryo-ET, shows bright).
"""

from __future__ import annotations

import numpy as np
from PySide6.QtWidgets import QHBoxLayout, QPushButton, QSplitter, QWidget
from PySide6.QtCore import Qt

from tomoguide.pages.preview_series import SeriesSetPreview
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry
from tomoguide.widgets.slice_viewer import SliceViewer

MAX_3D_VOXELS = 128


def bin_volume(volume: np.ndarray, max_side: int = MAX_3D_VOXELS) -> np.ndarray:
    """A copy binned by the smallest integer factor that brings every side to ≤ ``max_side`` (mean over b³
    blocks; edges that do not fill a block are dropped); float32 ``(nz//b, ny//b, nx//b)``."""
    vol = np.asarray(volume, dtype=np.float32)
    b = max(1, int(np.ceil(max(vol.shape) / max_side)))
    if b == 1:
        return vol.copy()
    nz, ny, nx = (s // b * b for s in vol.shape)
    return vol[:nz, :ny, :nx].reshape(nz // b, b, ny // b, b, nx // b, b).mean(axis=(1, 3, 5))


class TomogramPreview(SeriesSetPreview):
    """reconstruct: the tomogram of the chosen tilt series as three orthogonal slices; a 3D view on request."""

    output_name = "tomograms"

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.slices = SliceViewer()
        self.volume_view: QWidget | None = None
        self.show_3d = QPushButton("Show in 3D")
        self.show_3d.setObjectName("show_3d")
        self.show_3d.setToolTip("A maximum-intensity projection of a binned copy (rotate it with the mouse)")
        self.show_3d.clicked.connect(self.render_3d)
        self.split = QSplitter(Qt.Orientation.Horizontal)
        self.split.addWidget(self.slices)
        buttons = QHBoxLayout()
        buttons.addStretch(1)
        buttons.addWidget(self.show_3d)
        self.body.addWidget(self.split, 1)
        self.body.addLayout(buttons)
        self._volume: np.ndarray | None = None
        self.refresh()

    def show_series(self, entry: SeriesEntry) -> None:
        from tomoguide.compute.io.mrc import read_mrc

        volume, info = read_mrc(entry.path("tomogram", self.base))
        if volume.ndim != 3:
            raise ValueError(f"{entry.path('tomogram', self.base)}: expected a volume, got shape {volume.shape}")
        self._volume = volume
        nz, ny, nx = volume.shape
        voxel = float(info.voxel_size_A[0])
        method = entry.info.get("method", "")
        self.series_info.setText(f"{method + ' · ' if method else ''}{nx}×{ny}×{nz} voxels · {voxel:.2f} Å/voxel "
                                 f"· thickness {nz * voxel / 10.0:.0f} nm")
        self.slices.set_volume(volume, voxel, name=entry.name)
        self.show_3d.setEnabled(True)
        if self.volume_view is not None:
            self.volume_view.hide()

    def clear_series(self) -> None:
        self._volume = None
        self.slices.clear()
        self.show_3d.setEnabled(False)
        if self.volume_view is not None:
            self.volume_view.hide()

    def render_3d(self) -> None:
        """Show the binned tomogram in a :class:`VolumeView` beside the slices."""
        from tomoguide.widgets.volume_view import VolumeView

        if self._volume is None:
            return
        if self.volume_view is None:
            self.volume_view = VolumeView(size_px=(360, 360))
            self.split.addWidget(self.volume_view)
            total = max(self.split.width(), 800)
            self.split.setSizes([total - 380, 380])
        self.volume_view.show()
        self.volume_view.set_volume(-bin_volume(self._volume), method="mip")  # type: ignore[attr-defined]
