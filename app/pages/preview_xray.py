"""The ``xray_erase`` preview: before/after of the current view with the replaced pixels marked, and the number of
replaced patches per view.

"Before" is the ``motion_ctf`` stack of the same series, "after" the cleaned stack; the ``mask`` stack marks
the replaced pixels (non-zero). Every connected patch of the mask (8-connectivity) gets a red circle around it
(diameter in image pixels: the patch plus 4 px on each side, at least 24 px, so that single pixels are found
in the whole view and the patch stays visible inside the circle when zoomed in) and its pixels a light red
overlay.
Image coordinates: pixel (row y, column x) covers [x, x+1) × [y, y+1) in the viewer's scene, so a patch's
marker sits at its centre of mass + 0.5 px. The bar plot shows the patch count the step reported per view
(``info["replaced_per_view"]``, or the number of mask patches when absent); clicking a bar shows that view.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
import scipy.ndimage
from PySide6.QtCore import QRectF, Qt
from PySide6.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QSplitter, QVBoxLayout, QWidget

from tomoguide.pages.preview_series import SeriesSetPreview, read_stack, viewer_arrays
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry, SeriesSet
from tomoguide.widgets.ctf_plots import SUSPICIOUS_COLOUR, TiltBarPlot
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer

SOURCE_STEP = "motion_ctf"
MIN_MARKER_PX = 24.0  # circle diameter in image pixels: at least this, or the patch plus a margin of 4 px


def mask_patches(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Patches of a 2D mask (non-zero = replaced), 8-connected: centres (k, 2) as (x, y) px (centre of mass,
    0-based pixel indices) and sizes (k,) in pixels."""
    m = np.asarray(mask) != 0
    labels, k = scipy.ndimage.label(m, structure=np.ones((3, 3), bool))
    if k == 0:
        return np.zeros((0, 2)), np.zeros(0, dtype=int)
    idx = np.arange(1, k + 1)
    com = np.asarray(scipy.ndimage.center_of_mass(m, labels, idx), dtype=float).reshape(-1, 2)  # (y, x)
    sizes = np.asarray(scipy.ndimage.sum_labels(m, labels, idx), dtype=int)
    return com[:, ::-1], sizes


class XrayPreview(SeriesSetPreview):
    """xray_erase: before/after toggle, replaced pixels marked, patches per view as bars."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.before: np.ndarray | None = None
        self.after: np.ndarray | None = None
        self.mask: np.ndarray | None = None
        self.counts = np.zeros(0, dtype=int)
        self.showing = "after"
        self.viewer = TiltSeriesViewer()
        self.viewer.index_changed.connect(self._on_view)
        self.overlay = pg.ImageItem(axisOrder="row-major")
        self.overlay.setZValue(5)
        self.markers = pg.ScatterPlotItem(pxMode=False, symbol="o", brush=None,
                                          pen=pg.mkPen(SUSPICIOUS_COLOUR, width=2, cosmetic=True))
        self.markers.setZValue(10)
        self.viewer.view.addItem(self.overlay)
        self.viewer.view.addItem(self.markers)
        self.toggle = QPushButton("Show before")
        self.toggle.setObjectName("before_after")
        self.toggle.setCheckable(True)
        self.toggle.setToolTip("Switch between the image before X-ray erasing (from frame alignment) and after")
        self.toggle.toggled.connect(lambda on: self.set_showing("before" if on else "after"))
        self.mark_box = QCheckBox("Mark replaced pixels")
        self.mark_box.setChecked(True)
        self.mark_box.toggled.connect(self._on_marks)
        self.state_label = QLabel("")
        self.state_label.setObjectName("xray_state")
        self.view_info = QLabel("")
        self.view_info.setObjectName("xray_view_info")
        self.view_info.setWordWrap(True)
        self.bars = TiltBarPlot("Patches")
        self.bars.view_clicked.connect(self.select_view)
        self.bars.setMinimumHeight(90)
        self.viewer.info_label.hide()  # its tilt and dose are repeated in view_info, with the patch count
        self.view_info.setToolTip("Red circles mark the replaced patches; choose Bin ×1 and zoom in with the mouse "
                                  "wheel to see single pixels, and switch before/after.")

        controls = QHBoxLayout()
        controls.addWidget(self.toggle)
        controls.addWidget(self.mark_box)
        controls.addWidget(self.state_label, 1)
        top = QWidget()
        tl = QVBoxLayout(top)
        tl.setContentsMargins(0, 0, 0, 0)
        tl.addLayout(controls)
        tl.addWidget(self.viewer, 1)
        tl.addWidget(self.view_info)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(self.bars)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 1)
        split.setSizes([460, 110])
        self.body.addWidget(split, 1)
        self.refresh()

    # -- series ----------------------------------------------------------------------------------------------
    def before_stack(self, entry: SeriesEntry) -> np.ndarray | None:
        """The stack the step cleaned (the ``motion_ctf`` output of the same series), or None."""
        st = self.project.data.steps.get(SOURCE_STEP)
        if st is None or not st.outputs or "series" not in st.outputs:
            return None
        path = self.project.output_path(SOURCE_STEP, "series")
        if not path.exists():
            return None
        sset, base = SeriesSet.load(path)
        for s in sset.series:
            if s.name == entry.name:
                return read_stack(s.path("stack", base))
        return None

    def show_series(self, entry: SeriesEntry) -> None:
        self.after = read_stack(entry.path("stack", self.base))
        self.mask = read_stack(entry.path("mask", self.base)) if "mask" in entry.files else None
        try:
            self.before = self.before_stack(entry)
        except (OSError, ValueError) as exc:
            self.before = None
            self.note.setText(f"{self.note.text()} (cannot read the images before erasing: {exc})")
        if self.before is not None and self.before.shape != self.after.shape:
            self.before = None
        self.toggle.setEnabled(self.before is not None)
        self.toggle.setToolTip("" if self.before is not None else
                               "The frame-alignment images are not available (run that step again)")
        n = self.after.shape[0]
        reported = entry.info.get("replaced_per_view")
        if reported is not None and len(reported) == n:
            self.counts = np.asarray(reported, dtype=int)
        elif self.mask is not None:
            self.counts = np.array([len(mask_patches(self.mask[i])[1]) for i in range(n)])
        else:
            self.counts = np.zeros(n, dtype=int)
        self.bars.set_data(np.asarray(entry.geometry.tilt_angles_deg, dtype=float), self.counts)
        self.bars.caption.setText(f"{int(self.counts.sum())} patches replaced in {n} views; click a bar to show "
                                  "that view")
        if self.toggle.isChecked() and self.before is None:
            self.toggle.setChecked(False)
        self.showing = "before" if self.toggle.isChecked() else "after"
        stack = self.before if self.showing == "before" else self.after
        assert stack is not None
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        if self.counts.sum() > 0:  # start where there is something to see
            self.viewer.show_index(int(np.argmax(self.counts)))
        self._update_title()

    def clear_series(self) -> None:
        self.before = self.after = self.mask = None
        self.viewer.clear()
        self.overlay.clear()
        self.markers.clear()
        self.bars.set_data(np.zeros(0), np.zeros(0))
        self.view_info.setText("")
        self.state_label.setText("")

    def _update_title(self) -> None:
        entry = self.current_entry()
        if entry is None or self.after is None:
            return
        what = "before X-ray erasing (frame alignment output)" if self.showing == "before" else "after X-ray erasing"
        self.viewer.title_label.setText(f"<b>{entry.name}</b> — {what}")
        self.state_label.setText(f"Showing: <b>{self.showing}</b>")
        self.toggle.blockSignals(True)
        self.toggle.setChecked(self.showing == "before")
        self.toggle.setText("Show after" if self.showing == "before" else "Show before")
        self.toggle.blockSignals(False)

    # -- before/after ----------------------------------------------------------------------------------------
    def set_showing(self, which: str) -> None:
        """Show the images "before" or "after" erasing; the view, order, binning and zoom stay."""
        if which not in ("before", "after"):
            raise ValueError(f"which must be 'before' or 'after', not {which!r}")
        stack = self.before if which == "before" else self.after
        entry = self.current_entry()
        if stack is None or entry is None:
            self._update_title()
            return
        current = self.viewer.current_index()
        x_range, y_range = self.viewer.view.viewRange()
        self.showing = which
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        self.viewer.show_index(current)
        self.viewer.view.setRange(xRange=x_range, yRange=y_range, padding=0.0)
        self._update_title()

    def shown_image(self) -> np.ndarray:
        """The full-resolution image of the current view in the stack now shown (before or after)."""
        stack = self.before if self.showing == "before" else self.after
        assert stack is not None
        return np.asarray(stack[self.viewer.current_index()])

    # -- view ------------------------------------------------------------------------------------------------
    def select_view(self, view_index: int) -> None:
        self.viewer.show_index(view_index)

    def marker_positions(self) -> np.ndarray:
        """(k, 2) scene positions (x, y) of the red circles of the current view."""
        pts = self.markers.points()
        return np.array([[p.pos().x(), p.pos().y()] for p in pts]).reshape(-1, 2)

    def _on_marks(self, on: bool) -> None:
        self.markers.setVisible(on)
        self.overlay.setVisible(on)

    def _on_view(self, i: int) -> None:
        if self.after is None:
            return
        self.bars.set_current(i)
        n_px = 0
        if self.mask is not None:
            m = np.asarray(self.mask[i]) != 0
            centres, sizes = mask_patches(m)
            n_px = int(sizes.sum())
            diameters = np.maximum(MIN_MARKER_PX, 2.0 * np.sqrt(sizes / np.pi) + 8.0)
            self.markers.setData(pos=centres + 0.5, size=diameters)
            rgba = np.zeros((*m.shape, 4), np.uint8)
            rgba[m] = (229, 57, 53, 80)  # light: the replaced values stay visible through it
            self.overlay.setImage(rgba, autoLevels=False)
            self.overlay.setRect(QRectF(0.0, 0.0, float(m.shape[1]), float(m.shape[0])))
        else:
            self.markers.clear()
            self.overlay.clear()
        entry = self.current_entry()
        text = ""
        if entry is not None:
            g = entry.geometry
            dose = f" · dose {g.dose_e_A2[i]:.2f} e⁻/Å²" if g.dose_e_A2 is not None else ""
            text = f"<b>Tilt {g.tilt_angles_deg[i]:+.1f}°</b>{dose} · view {i + 1}/{g.n_views} · "
        self.view_info.setText(f"{text}<b>{int(self.counts[i])} patches, {n_px} pixels replaced</b> (red circles)")
