"""Previews of steps whose output is a :class:`~tomoguide.steps.records.SeriesSet` (``series.json``).

:class:`SeriesSetPreview` is the shared base: it reads the step's ``series`` output, offers a chooser when there
are several tilt series and calls :meth:`SeriesSetPreview.show_series` for the chosen one.
:class:`SeriesPreview` is the generic preview of a binning step (``preprocess_for_alignment`` and later binning
steps): the chosen series' stack in the :class:`TiltSeriesViewer`, with its pixel size, binning and image size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PySide6.QtWidgets import QComboBox, QHBoxLayout, QLabel, QVBoxLayout, QWidget

from tomoguide.pages.previews import Preview
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry, SeriesSet
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer


def read_stack(path: Path) -> np.ndarray:
    """An MRC stack ``(n, ny, nx)`` (memory-mapped when large; a single image becomes ``(1, ny, nx)``)."""
    from tomoguide.compute.io.mrc import read_mrc

    data, _ = read_mrc(path)
    return data[None] if data.ndim == 2 else data


def viewer_arrays(entry: SeriesEntry) -> dict[str, np.ndarray]:
    """Per-view arrays of a series for :meth:`TiltSeriesViewer.set_series`: tilt angle (°), acquisition order,
    dose and dose before (e⁻/Å²); unknown values become the view index and NaN."""
    g = entry.geometry
    n = g.n_views
    return {"tilt_deg": np.asarray(g.tilt_angles_deg, dtype=float),
            "acquisition_order": np.asarray(g.acquisition_order if g.acquisition_order is not None else range(n)),
            "dose_e_A2": np.asarray(g.dose_e_A2 if g.dose_e_A2 is not None else [np.nan] * n, dtype=float),
            "prior_dose_e_A2": np.asarray(g.prior_dose_e_A2 if g.prior_dose_e_A2 is not None else [np.nan] * n,
                                          dtype=float)}


def _number(value: float) -> str:
    """A density for display: 3 decimals (no "-0.000") up to 10⁴, else 4 significant digits."""
    v = float(value)
    if abs(v) < 5e-4:
        v = 0.0
    return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.4g}"


class SeriesSetPreview(Preview):
    """Base of the previews of ``series`` outputs: a note, a series chooser (``series_combo``) and a body.

    Subclasses build their widgets in ``self.body`` (a QVBoxLayout) before calling :meth:`refresh`, and
    implement :meth:`show_series` / :meth:`clear_series`. :meth:`show_set` shows a set read elsewhere (a copy,
    for tests or comparisons).
    """

    output_name = "series"

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.sset: SeriesSet | None = None
        self.base = Path()
        self.series_combo = QComboBox()
        self.series_combo.setObjectName("series_combo")
        self.series_combo.setToolTip("The tilt series to show")
        self.series_combo.currentIndexChanged.connect(self._on_series)
        self.series_info = QLabel("")
        self.series_info.setObjectName("series_info")
        self.series_info.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(QLabel("Tilt series:"))
        top.addWidget(self.series_combo)
        top.addWidget(self.series_info, 1)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addLayout(top)
        self.body = QVBoxLayout()
        self.body.setContentsMargins(0, 0, 0, 0)
        lay.addLayout(self.body, 1)

    # -- loading ---------------------------------------------------------------------------------------------
    def refresh(self) -> None:
        self.note.setText(self.status_note())
        if not self.has_results():
            self.show_set(None, Path())
            return
        path = self.project.output_path(self.step_id, self.output_name)
        try:
            sset, base = SeriesSet.load(path)
        except (OSError, ValueError) as exc:
            self.note.setText(f"{path}: cannot read the results: {exc}")
            self.show_set(None, Path())
            return
        self.show_set(sset, base)

    def show_set(self, sset: SeriesSet | None, base: Path) -> None:
        """Show ``sset`` (file names relative to ``base``), or nothing (``None``)."""
        previous = self.series_combo.currentText()
        self.sset, self.base = sset, Path(base)
        self.series_combo.blockSignals(True)
        self.series_combo.clear()
        for name in (sset.names() if sset else []):
            self.series_combo.addItem(name)
        self.series_combo.blockSignals(False)
        self.series_combo.setEnabled(bool(sset and len(sset.series) > 1))
        if not sset or not sset.series:
            self.series_info.setText("")
            self.clear_series()
            return
        idx = max(self.series_combo.findText(previous), 0)
        self.series_combo.setCurrentIndex(idx)
        self._on_series(idx)

    def current_entry(self) -> SeriesEntry | None:
        if self.sset is None or not self.sset.series:
            return None
        return self.sset.series[max(self.series_combo.currentIndex(), 0)]

    def select_series(self, name: str) -> None:
        """Show the tilt series ``name``."""
        idx = self.series_combo.findText(name)
        if idx < 0:
            raise KeyError(f"no tilt series {name!r} (there are: {self.series_combo.count()})")
        self.series_combo.setCurrentIndex(idx)

    def _on_series(self, idx: int) -> None:
        entry = self.current_entry()
        if entry is None or idx < 0:
            return
        g = entry.geometry
        ny, nx = g.image_shape_px
        self.series_info.setText(f"{g.n_views} views · {nx}×{ny} px · {g.pixel_size_binned_A:.3f} Å/px "
                                 f"(binning ×{g.binning:g})")
        try:
            self.show_series(entry)
        except (OSError, ValueError, KeyError) as exc:
            self.clear_series()
            self.note.setText(f"{entry.name}: cannot show the results: {exc}")

    # -- for subclasses ------------------------------------------------------------------------------------
    def show_series(self, entry: SeriesEntry) -> None:
        """Show one series' results (every subclass implements it)."""
        raise TypeError(f"{type(self).__name__} must implement show_series()")

    def clear_series(self) -> None:
        """Empty the preview (every subclass implements it)."""
        raise TypeError(f"{type(self).__name__} must implement clear_series()")


class SeriesPreview(SeriesSetPreview):
    """The chosen series' stack in the tilt-series viewer, with its pixel size (binning steps)."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.viewer = TiltSeriesViewer()
        self.viewer.index_changed.connect(self._on_view)
        self.view_stats = QLabel("")
        self.view_stats.setObjectName("view_stats")
        self.body.addWidget(self.viewer, 1)
        self.body.addWidget(self.view_stats)
        self._stack: np.ndarray | None = None
        self.refresh()

    def show_series(self, entry: SeriesEntry) -> None:
        stack = read_stack(entry.path("stack", self.base))
        g = entry.geometry
        self._stack = stack
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        self.viewer.title_label.setText(
            f"<b>{entry.name}</b> — {stack.shape[0]} views, {stack.shape[2]}×{stack.shape[1]} px at "
            f"<b>{g.pixel_size_binned_A:.2f} Å/px</b> (binned ×{g.binning:g} from {g.pixel_size_A:.3f} Å/px)")

    def clear_series(self) -> None:
        self._stack = None
        self.viewer.clear()
        self.view_stats.setText("")

    def _on_view(self, i: int) -> None:
        if self._stack is None:
            return
        view = np.asarray(self._stack[i], dtype=np.float64)
        self.view_stats.setText(f"This view: mean {_number(view.mean())}, SD {_number(view.std())}, "
                                f"range {_number(view.min())} to {_number(view.max())}")
