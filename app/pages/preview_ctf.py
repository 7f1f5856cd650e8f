"""The ``ctf_estimate`` preview: the CTF viewer of the tilt series.

Per tilt the image and its CTF spectrum (left half the measured spectrum, right half the fitted CTF², a dashed
ring at the fit resolution); for the series the defocus U/V and fit resolution against tilt, failed and
suspicious fits in red (:func:`~tomoguide.widgets.ctf_plots.suspicious_tilts`). It is the CTF part of the
``motion_ctf`` preview (:class:`~tomoguide.pages.preview_motion.MotionCtfPreview`) without the frame trajectory:
the step writes the same roles (``stack``, ``ctf_star``, ``ctf_preview``, ``flags["ctf_failed"]``).
"""

from __future__ import annotations

from PySide6.QtWidgets import QWidget

from tomoguide.pages.preview_motion import MotionCtfPreview
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry


class CtfEstimatePreview(MotionCtfPreview):
    """ctf_estimate: tilt image, spectrum with the fitted rings, defocus and resolution against tilt."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.trajectory.hide()  # no frames here: the defocus plot takes the whole lower row

    def show_series(self, entry: SeriesEntry) -> None:
        super().show_series(entry)
        g = entry.geometry
        self.viewer.title_label.setText(f"<b>{entry.name}</b> tilt images ({g.image_shape_px[1]}×"
                                        f"{g.image_shape_px[0]} px, {g.pixel_size_binned_A:.2f} Å/px)")
