"""The ``ctf_estimate`` preview: the CTF viewer of the tilt series.

Per tilt the image and its CTF spectrum (left half the measured spectrum, right half the fitted CTF², a dashed
ring at the fit resolution); for the series the defocus U/V and fit resolution against tilt, failed and
suspicious fits in red (:func:`~tomoguide.widgets.ctf_plots.suspicious_tilts`). It is the CTF part of the
``motion_ctf`` preview (:class:`~tomoguide.pages.preview_motion.MotionCtfPreview`) without the frame trajectory:
the step writes the same roles (``stack``, ``ctf_star``, ``ctf_preview``, ``flags["ctf_failed"]``). Above the
plots, one line gives the series' tilt-direction verdict (``info["tilt_direction"]``: as given, inverted and
corrected, or undecided) with its confidence.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtWidgets import QLabel, QWidget

from tomoguide.pages.preview_motion import MotionCtfPreview
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry


def tilt_direction_text(direction: dict[str, Any] | None) -> str:
    """One rich-text line for the tilt-direction result of a series (empty when the check was off)."""
    if not direction:
        return ""
    z = direction.get("z")
    conf = f"z = {z:+.1f}, " if isinstance(z, (int, float)) else ""
    counts = (f"{conf}{direction.get('n_as_given', 0)} of {direction.get('n_views', 0)} tilted views agree with the "
              "geometry")
    note = direction.get("note", "")
    verdict = direction.get("verdict")
    colour = {"as given": "#2e7d32", "inverted": "#c62828"}.get(str(verdict), "#ef6c00")
    return f"<b>Tilt direction:</b> <span style='color:{colour}'>{note}</span> ({counts})"


class CtfEstimatePreview(MotionCtfPreview):
    """ctf_estimate: tilt image, spectrum with the fitted rings, defocus and resolution against tilt."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.trajectory.hide()  # no frames here: the defocus plot takes the whole lower row
        self.direction_info = QLabel("")
        self.direction_info.setObjectName("tilt_direction_info")
        self.direction_info.setWordWrap(True)
        self.direction_info.setTextFormat(Qt.TextFormat.RichText)
        self.body.insertWidget(0, self.direction_info)
        self._show_direction(self.current_entry())  # the base class showed the first series already

    def _show_direction(self, entry: SeriesEntry | None) -> None:
        if not hasattr(self, "direction_info"):  # called from the base class's __init__
            return
        text = tilt_direction_text(entry.info.get("tilt_direction")) if entry is not None else ""
        self.direction_info.setText(text)
        self.direction_info.setVisible(bool(text))

    def show_series(self, entry: SeriesEntry) -> None:
        super().show_series(entry)
        g = entry.geometry
        self.viewer.title_label.setText(f"<b>{entry.name}</b> tilt images ({g.image_shape_px[1]}×"
                                        f"{g.image_shape_px[0]} px, {g.pixel_size_binned_A:.2f} Å/px)")
        self._show_direction(entry)

    def clear_series(self) -> None:
        super().clear_series()
        self._show_direction(None)
