"""Previews: what a step page shows of its results, by step id.

:func:`preview_factories` maps a step id to a factory ``(project, step_id) -> Preview``; a step without an entry
gets :class:`MetricsPreview` (its metrics as a table), so every registered step has a page with a preview.
A :class:`Preview` reads the project's recorded outputs in :meth:`Preview.refresh`, which the step page calls
when the page opens and after every run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QSplitter,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)
from PySide6.QtCore import Qt

from tomoguide.project import Project
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer


class Preview(QWidget):
    """Base of a step's preview: ``refresh()`` re-reads the step's outputs from the project."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project = project
        self.step_id = step_id
        self.note = QLabel("")
        self.note.setObjectName("preview_note")
        self.note.setWordWrap(True)

    def has_results(self) -> bool:
        """Whether the step has recorded outputs that exist (done, or stale from an earlier run)."""
        st = self.project.data.steps[self.step_id]
        if st.status not in ("done", "stale", "skipped") or not st.outputs:
            return False
        return all((self.project.dir / rel).exists() for rel in st.outputs.values())

    def status_note(self) -> str:
        st = self.project.data.steps[self.step_id]
        if not self.has_results():
            return "No results yet: run the step to see them here."
        if st.status == "stale":
            return f"Results of an earlier run — stale ({st.stale_reason or 'settings changed'}); run again."
        return f"Results of the run finished {st.finished or ''}".strip()

    def refresh(self) -> None:
        """Re-read the step's outputs from the project (every preview implements it)."""
        raise TypeError(f"{type(self).__name__} must implement refresh()")


def flatten_metrics(metrics: dict[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    """Nested metrics as (dotted key, text) rows; lists of numbers are summarised."""
    rows: list[tuple[str, str]] = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(flatten_metrics(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
            arr = np.asarray(value, dtype=float)
            rows.append((name, f"{len(arr)} values, {arr.min():g} to {arr.max():g} (mean {arr.mean():g})"))
        elif isinstance(value, float):
            rows.append((name, f"{value:.6g}"))
        else:
            rows.append((name, str(value)))
    return rows


class MetricsPreview(Preview):
    """The generic preview: a table of the step's metrics."""

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.table = QTableWidget(0, 2)
        self.table.setHorizontalHeaderLabels(["Metric", "Value"])
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addWidget(self.table, 1)
        self.refresh()

    def refresh(self) -> None:
        self.note.setText(self.status_note())
        st = self.project.data.steps[self.step_id]
        rows = flatten_metrics(st.metrics) if self.has_results() else []
        self.table.setRowCount(len(rows))
        for r, (k, v) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(k))
            self.table.setItem(r, 1, QTableWidgetItem(v))


class ImportPreview(Preview):
    """The import step: what the session folder holds (before any run: :func:`~tomoguide.steps.import_movies.
    survey`), a table of the imported tilt series and the frame sums in a tilt-series viewer."""

    COLUMNS = ("Series", "Tilts", "Range\n(°)", "Pixel\n(Å)", "Dose/tilt\n(e⁻/Å²)",
               "Total dose\n(e⁻/Å²)", "Tilt axis\n(°)", "Frames", "Gain\norientation")

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self.series: list[Any] = []
        self.found = QPlainTextEdit()
        self.found.setObjectName("found_report")
        self.found.setReadOnly(True)
        self.found.setLineWrapMode(QPlainTextEdit.LineWrapMode.NoWrap)
        self.found.setToolTip("What the session folder holds with the current settings: per tilt series the mdoc, "
                              "the movies found (and where) or missing, the gain, the tilt axis, pixel size and dose "
                              "with where each comes from")
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setObjectName("series_table")
        self.table.setHorizontalHeaderLabels(list(self.COLUMNS))
        # every column as wide as its contents (the series name is never cut to "TS…"); the table scrolls
        # sideways when the preview is narrow
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.verticalHeader().setVisible(False)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.itemSelectionChanged.connect(self._on_select)
        self.viewer = TiltSeriesViewer()
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(self.found)
        split.addWidget(self.table)
        split.addWidget(self.viewer)
        split.setStretchFactor(0, 1)
        split.setStretchFactor(1, 1)
        split.setStretchFactor(2, 3)
        split.setSizes([130, 120, 380])
        lay = QVBoxLayout(self)
        lay.setContentsMargins(0, 0, 0, 0)
        lay.addWidget(self.note)
        lay.addWidget(split, 1)
        self.refresh()

    def found_text(self) -> str:
        """The survey of the session folder with the step's current parameters, as text (no movie is read)."""
        from tomoguide.compute.io.errors import FormatError
        from tomoguide.steps.import_movies import format_survey, survey

        try:
            params = self.project.params(self.step_id)
        except ValueError as exc:
            return f"Invalid settings: {exc}"
        if not params.files_dir:
            return "Choose the session folder (Files directory): what it holds is listed here before the run."
        if getattr(params, "source", "movies") == "tilt series":
            from tomoguide.steps.import_tilt_series import survey_text

            return "Found before the run (tilt series without movies):\n" + survey_text(params)
        try:
            return "Found before the run:\n" + format_survey(survey(params))
        except (FormatError, OSError) as exc:
            return str(exc)

    def refresh(self) -> None:
        from tomoguide.steps.import_movies import load_series

        self.note.setText(self.status_note())
        self.found.setPlainText(self.found_text())
        self.series = []
        if self.has_results():
            try:
                self.series = load_series(self.project.output_path(self.step_id, "tilt_series"))
            except (OSError, ValueError) as exc:
                self.note.setText(f"Cannot read the results: {exc}")
        self.table.blockSignals(True)
        self.table.setRowCount(len(self.series))
        for r, s in enumerate(self.series):
            tilts = [t.tilt_deg for t in s.tilts]
            doses = [t.dose_e_A2 for t in s.tilts]
            frames = sorted({t.n_frames for t in s.tilts})
            go = s.gain_orientation
            gain_text = ("no gain" if s.gain is None else "not detected" if go is None
                         else f"{go.name} ({go.confidence:.0f})" if go.decided else f"undecided ({go.name}?)")
            cells = [s.name, str(len(s.tilts)), f"{min(tilts):+.0f} … {max(tilts):+.0f}",
                     f"{s.geometry.pixel_size_A:.3f}", f"{float(np.median(doses)):.2f}", f"{sum(doses):.1f}",
                     f"{s.geometry.tilt_axis_deg:.1f}",
                     "/".join(str(f) for f in frames), gain_text]
            for c, text in enumerate(cells):
                item = QTableWidgetItem(text)
                gain_tip = ("no gain reference" if s.gain is None else
                            f"gain {s.gain} ({s.gain_source})" + ("" if go is None else
                            f"; orientation {go.name}, confidence {go.confidence:.1f} (≥ 5 decides), score "
                            f"{go.score:.3f}, runner-up {go.second}"))
                item.setToolTip(f"{s.name}: tilts {min(tilts):+.1f}° to {max(tilts):+.1f}°; tilt axis from "
                                f"{s.tilt_axis_source}, pixel size from {s.pixel_size_source}; {s.mdoc}; {gain_tip}")
                if c > 0:
                    item.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
                self.table.setItem(r, c, item)
        self.table.blockSignals(False)
        self.viewer.setVisible(bool(self.series))
        if self.series:
            self.table.selectRow(0)
            self._on_select()
        else:
            self.viewer.clear()

    def framesums_path(self, name: str) -> Path:
        return self.project.output_path(self.step_id, "previews") / f"{name}_framesums.mrc"

    def _on_select(self) -> None:
        import mrcfile

        rows = {i.row() for i in self.table.selectedIndexes()}
        if not rows or not self.series:
            return
        s = self.series[min(rows)]
        path = self.framesums_path(s.name)
        try:
            with mrcfile.open(path, permissive=True) as m:
                stack = np.asarray(m.data, dtype=np.float32)
        except (OSError, ValueError) as exc:
            self.viewer.clear()
            self.note.setText(f"{path}: cannot read the frame sums: {exc}")
            return
        if stack.ndim == 2:
            stack = stack[None]
        self.viewer.set_series(stack, np.array([t.tilt_deg for t in s.tilts]),
                               np.array([t.acquisition_order for t in s.tilts]),
                               np.array([t.dose_e_A2 for t in s.tilts]),
                               np.array([t.prior_dose_e_A2 for t in s.tilts]), name=s.name)


PreviewFactory = Callable[[Project, str], Preview]


def preview_factories() -> dict[str, PreviewFactory]:
    """Step id -> preview factory, for the steps with a preview of their own."""
    from tomoguide.pages.preview_motion import MotionCtfPreview
    from tomoguide.pages.preview_series import SeriesPreview
    from tomoguide.pages.preview_xray import XrayPreview
    from tomoguide.pages.preview_align import AlignPreview, AssignPreview
    from tomoguide.pages.preview_ctf import CtfEstimatePreview
    from tomoguide.pages.preview_exclude import ExcludePreview
    from tomoguide.pages.preview_pick import PickPreview
    from tomoguide.pages.preview_tomogram import TomogramPreview
    from tomoguide.pages.preview_extract import ExtractPreview
    from tomoguide.pages.preview_average import AveragePreview

    return {"import_movies": ImportPreview, "motion_ctf": MotionCtfPreview, "xray_erase": XrayPreview,
            "preprocess_for_alignment": SeriesPreview, "align": AlignPreview, "assign_alignment": AssignPreview,
            "ctf_estimate": CtfEstimatePreview, "exclude": ExcludePreview, "ctf_correct": SeriesPreview,
            "preprocess_for_reconstruction": SeriesPreview, "reconstruct": TomogramPreview,
            "pick": PickPreview, "extract": ExtractPreview, "extract_fine": ExtractPreview,
            "initial_model": AveragePreview, "refine": AveragePreview, "reconstruct_particle": AveragePreview,
            "refine_fine": AveragePreview}


def make_preview(project: Project, step_id: str) -> Preview:
    """The preview widget of ``step_id`` (the metrics table when the step has none of its own)."""
    factory = preview_factories().get(step_id, MetricsPreview)
    return factory(project, step_id)
