"""The ``exclude`` page's preview: where the trainee marks views and CTF fits as excluded (issue 6 item 4).

It shows the step's *input* (the ``ctf_estimate`` output: tilt images, CTF spectra and fits), so that views can
be marked before the step has run; then running the step applies the marks. Per tilt series:

* the tilt-series viewer; the current view framed in red with "EXCLUDED" when it is marked;
* the CTF spectrum of the current view, and defocus / fit resolution against tilt, excluded views and fits in
  red (a failed fit keeps its ✕);
* check boxes "Exclude this view" (key: space) and "Exclude this CTF fit" (Shift+space);
* the automatic suggestions with their reasons (a click shows that view; red while they exclude something);
* what is marked and whether the last run applied it (the step is stale until it runs again).

Marks are the step's parameters, nothing else: a change writes ``views``, ``ctf_fits`` and ``keep`` through
:meth:`Project.set_params` as IMOD view lists per series (1-based, :func:`format_series_lists`). The marks shown
are what a run would produce (:func:`effective_marks`, the rule of :meth:`Exclude.run`): the input's excluded
views, the suggestions when "apply suggestions" is on (unless the view is in ``keep``), the views and fits
listed, minus the views in ``keep``. Un-marking a view that a suggestion excludes puts it in ``keep``.

Suggestions come from the last run of the step when it has results, otherwise they are computed here with the
step's own function (:func:`tomoguide.steps.exclude.series_suggestions`) on the input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QEvent, QObject, QRectF, Qt, Signal
from PySide6.QtGui import QBrush, QColor, QKeyEvent
from PySide6.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QSplitter,
    QVBoxLayout,
    QWidget,
)

from tomoguide.pages.preview_motion import MotionCtfSeries, load_motion_ctf
from tomoguide.pages.preview_series import SeriesSetPreview, read_stack, viewer_arrays
from tomoguide.project import Project
from tomoguide.steps.records import SeriesEntry, SeriesSet
from tomoguide.widgets.ctf_plots import SUSPICIOUS_COLOUR, CtfSpectrumView, DefocusResolutionPlot
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer

INPUT_STEP = "ctf_estimate"
LIST_FIELDS = ("views", "ctf_fits", "keep")
PENDING_COLOUR = "#ff9800"


# ---------------------------------------------------------------------------------------------------------------
# the marks (pure logic)
# ---------------------------------------------------------------------------------------------------------------

def format_series_lists(lists: dict[str, Any]) -> str:
    """``{"TS_01": [0, 1, 2, 6], "TS_02": [40]}`` (0-based) -> ``"TS_01: 1-3,7; TS_02: 41"``; empty lists left
    out. The inverse of :func:`tomoguide.steps.exclude.parse_series_lists`."""
    from tomoguide.compute.io.imod import format_view_list

    return "; ".join(f"{name}: {format_view_list([int(i) + 1 for i in views])}"
                     for name, views in lists.items() if len(views))


def effective_marks(n_views: int, base_excluded: Any, suggestions: list[dict[str, Any]], apply_suggestions: bool,
                    views: Any, ctf_fits: Any, keep: Any) -> tuple[np.ndarray, np.ndarray]:
    """What a run of the step excludes in one series: ``(views (n,) bool, CTF fits (n,) bool)`` (a fit counts
    only where its view is kept). ``views``, ``ctf_fits``, ``keep``: 0-based indices; ``suggestions``: dicts
    with ``view`` (0-based) and ``target`` ("view" or "ctf"). Same rule as :meth:`Exclude.run`."""
    bad_view = np.zeros(n_views, bool)
    if base_excluded is not None and len(base_excluded) == n_views:
        bad_view |= np.asarray(base_excluded, dtype=bool)
    bad_fit = np.zeros(n_views, bool)
    keep_set = {int(i) for i in keep}
    bad_view[[int(i) for i in views if 0 <= int(i) < n_views]] = True
    bad_fit[[int(i) for i in ctf_fits if 0 <= int(i) < n_views]] = True
    if apply_suggestions:
        for s in suggestions:
            v = int(s["view"])
            if v in keep_set or not 0 <= v < n_views:
                continue
            (bad_view if s.get("target", "view") == "view" else bad_fit)[v] = True
    bad_view[[i for i in keep_set if 0 <= i < n_views]] = False
    return bad_view, bad_fit & ~bad_view


class _KeyFilter(QObject):
    """Space on any child of the page: mark the current view; Shift+space: its CTF fit."""

    def __init__(self, preview: ExcludePreview) -> None:
        super().__init__(preview)
        self.preview = preview

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:  # noqa: N802 - Qt API
        if event.type() == QEvent.Type.KeyPress and isinstance(event, QKeyEvent) and event.key() == Qt.Key.Key_Space:
            return self.preview.handle_space(event)
        return False


class ExcludePreview(SeriesSetPreview):
    """exclude: mark views and CTF fits (space / check boxes), with the suggestions; marks = step parameters."""

    marks_changed = Signal()

    def __init__(self, project: Project, step_id: str, parent: QWidget | None = None) -> None:
        super().__init__(project, step_id, parent)
        self._entry: SeriesEntry | None = None
        self.data: MotionCtfSeries | None = None
        self.suggestions: list[dict[str, Any]] = []
        self.excluded_views = np.zeros(0, bool)
        self.excluded_fits = np.zeros(0, bool)
        self._suggestion_cache: dict[tuple[str, str, float, float], list[dict[str, Any]]] = {}
        self.marks_error = ""

        self.viewer = TiltSeriesViewer()
        self.viewer.index_changed.connect(self._on_view)
        self.viewer.info_label.hide()
        self.frame = pg.QtWidgets.QGraphicsRectItem()
        self.frame.setPen(pg.mkPen(SUSPICIOUS_COLOUR, width=5, cosmetic=True))
        self.frame.setZValue(10)
        self.frame.setVisible(False)
        self.viewer.view.addItem(self.frame, ignoreBounds=True)
        self.frame_text = pg.TextItem(html=f"<b style='color:{SUSPICIOUS_COLOUR};font-size:13pt'>EXCLUDED</b>",
                                      anchor=(0, 0), fill=pg.mkBrush(0, 0, 0, 170))
        self.frame_text.setZValue(11)
        self.frame_text.setVisible(False)
        self.viewer.view.addItem(self.frame_text, ignoreBounds=True)
        self.spectrum = CtfSpectrumView()
        self.defocus_plot = DefocusResolutionPlot()
        self.defocus_plot.view_clicked.connect(self.select_view)
        self.view_box = QCheckBox("Exclude this view (space)")
        self.view_box.setObjectName("exclude_view")
        self.view_box.setToolTip("Leave this tilt image out of every later step (space key)")
        self.view_box.clicked.connect(lambda on: self.set_view_excluded(self.current_view(), bool(on)))
        self.fit_box = QCheckBox("Exclude this CTF fit (Shift+space)")
        self.fit_box.setObjectName("exclude_fit")
        self.fit_box.setToolTip("Keep the view but not its CTF fit: its defocus is taken from the other tilts' trend")
        self.fit_box.clicked.connect(lambda on: self.set_fit_excluded(self.current_view(), bool(on)))
        self.tilt_info = QLabel("")
        self.tilt_info.setObjectName("exclude_tilt_info")
        self.tilt_info.setWordWrap(True)
        self.tilt_info.setTextFormat(Qt.TextFormat.RichText)
        self.suggestion_list = QListWidget()
        self.suggestion_list.setObjectName("suggestions")
        self.suggestion_list.setToolTip("Automatic suggestions; click one to show its view")
        self.suggestion_list.itemClicked.connect(self._on_suggestion)
        self.state_label = QLabel("")
        self.state_label.setObjectName("exclude_state")
        self.state_label.setWordWrap(True)
        self.state_label.setTextFormat(Qt.TextFormat.RichText)

        left = QWidget()
        ll = QVBoxLayout(left)
        ll.setContentsMargins(0, 0, 0, 0)
        ll.addWidget(self.viewer, 1)
        boxes = QHBoxLayout()
        boxes.addWidget(self.view_box)
        boxes.addWidget(self.fit_box)
        boxes.addStretch(1)
        ll.addLayout(boxes)
        right = QSplitter(Qt.Orientation.Vertical)
        right.addWidget(self.spectrum)
        right.addWidget(self.defocus_plot)
        top = QSplitter(Qt.Orientation.Horizontal)
        top.addWidget(left)
        top.addWidget(right)
        sugg = QWidget()
        sl = QVBoxLayout(sugg)
        sl.setContentsMargins(0, 0, 0, 0)
        sl.addWidget(QLabel("<b>Suggestions</b> (click one to see its view)"))
        sl.addWidget(self.suggestion_list, 1)
        split = QSplitter(Qt.Orientation.Vertical)
        split.addWidget(top)
        split.addWidget(sugg)
        for s, sizes in ((top, [520, 480]), (right, [300, 300]), (split, [560, 140])):
            s.setChildrenCollapsible(False)
            s.setSizes(sizes)
        for w in (self.viewer, self.spectrum, self.defocus_plot):
            w.setMinimumSize(160, 120)
        self.body.addWidget(split, 1)
        self.body.addWidget(self.tilt_info)
        self.body.addWidget(self.state_label)

        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self._key_filter = _KeyFilter(self)
        for w in (self, self.viewer.slider, self.viewer.graphics, self.spectrum.graphics, self.defocus_plot.graphics,
                  self.suggestion_list, self.view_box, self.fit_box, self.series_combo):
            w.installEventFilter(self._key_filter)
        self.refresh()

    # -- loading: the input of the step ----------------------------------------------------------------------
    def input_ready(self) -> bool:
        st = self.project.data.steps[INPUT_STEP]
        if st.status not in ("done", "stale", "skipped") or "series" not in st.outputs:
            return False
        return (self.project.dir / st.outputs["series"]).exists()

    def refresh(self) -> None:
        self.note.setText(self.status_note())
        if not self.input_ready():
            self.note.setText("Nothing to mark yet: run the CTF estimation first.")
            self.show_set(None, Path())
            return
        path = self.project.output_path(INPUT_STEP, "series")
        try:
            sset, base = SeriesSet.load(path)
        except (OSError, ValueError) as exc:
            self.note.setText(f"{path}: cannot read the CTF estimation: {exc}")
            self.show_set(None, Path())
            return
        self.show_set(sset, base)

    def status_note(self) -> str:
        st = self.project.data.steps[self.step_id]
        if not self.has_results():
            return ("Mark the views and CTF fits to exclude (space, or the check boxes), then run the step to apply "
                    "the marks.")
        if st.status == "stale":
            return f"The marks differ from the last run ({st.stale_reason or 'settings changed'}): run the step again."
        return f"Marks applied by the run finished {st.finished or ''}".strip()

    def _output_entry(self, name: str) -> SeriesEntry | None:
        if not self.has_results():
            return None
        try:
            sset, _ = SeriesSet.load(self.project.output_path(self.step_id, "series"))
        except (OSError, ValueError, KeyError):
            return None
        return next((s for s in sset.series if s.name == name), None)

    def _suggestions_for(self, entry: SeriesEntry) -> list[dict[str, Any]]:
        out = self._output_entry(entry.name)
        if out is not None and "suggestions" in out.info:
            return [dict(s) for s in out.info["suggestions"]]
        from tomoguide.compute.io.mrc import read_mrc
        from tomoguide.compute.io.star import read_ctf_star
        from tomoguide.steps.exclude import series_suggestions

        params = self.project.params(self.step_id)
        stack_path = entry.path("stack", self.base)
        key = (entry.name, str(stack_path), float(params.max_astigmatism_A), float(params.min_residual_jump_px),
               float(params.min_tracking_jump_px))
        if key not in self._suggestion_cache:
            # memory-mapped: the checks read only a subsampled centre of each view (this runs on the GUI thread,
            # once per series, before the step has run)
            stack, _ = read_mrc(stack_path, mmap=True)
            table = read_ctf_star(entry.path("ctf_star", self.base)) if "ctf_star" in entry.files else None
            found = series_suggestions(entry, stack, table, params)
            self._suggestion_cache[key] = [{"view": s.view, "reason": s.reason, "message": s.message,
                                            "target": s.target} for s in found]
        return self._suggestion_cache[key]

    def show_series(self, entry: SeriesEntry) -> None:
        self._entry = entry
        self.data = load_motion_ctf(entry, self.base)
        stack = read_stack(entry.path("stack", self.base))
        self.suggestions = self._suggestions_for(entry)
        self.viewer.set_series(stack, **viewer_arrays(entry), name=entry.name)
        self.viewer.title_label.setText(f"<b>{entry.name}</b> — {stack.shape[0]} views (input of the step: the "
                                        f"CTF estimation)")
        self.frame.setRect(QRectF(0.0, 0.0, float(stack.shape[2]), float(stack.shape[1])))
        self.frame_text.setPos(4.0, 4.0)
        d = self.data
        self.spectrum.setVisible(d.ctf_preview is not None)
        self.defocus_plot.setVisible(d.ctf is not None)
        self.fit_box.setVisible(d.ctf is not None)
        if d.ctf is not None:
            self.defocus_plot.set_data(np.asarray(entry.geometry.tilt_angles_deg, float),
                                       d.ctf["rlnDefocusU"].to_numpy(float), d.ctf["rlnDefocusV"].to_numpy(float),
                                       d.ctf["rlnCtfMaxResolution"].to_numpy(float), d.failed)
        self.update_marks()

    def clear_series(self) -> None:
        self._entry = None
        self.data = None
        self.suggestions = []
        self.excluded_views = self.excluded_fits = np.zeros(0, bool)
        self.viewer.clear()
        self.spectrum.clear()
        self.defocus_plot.clear()
        self.suggestion_list.clear()
        self.frame.setVisible(False)
        self.frame_text.setVisible(False)
        self.view_box.setEnabled(False)
        self.fit_box.setEnabled(False)
        self.tilt_info.setText("")
        self.state_label.setText("")

    # -- the marks -------------------------------------------------------------------------------------------
    def marked_lists(self) -> dict[str, dict[str, list[int]]]:
        """The step's ``views``, ``ctf_fits`` and ``keep`` parameters parsed: field -> series -> 0-based views."""
        from tomoguide.steps.exclude import parse_series_lists

        params = self.project.params(self.step_id)
        names = self.sset.names() if self.sset else []
        return {f: parse_series_lists(getattr(params, f), names, f) for f in LIST_FIELDS}

    def update_marks(self) -> None:
        """Recompute what a run would exclude from the parameters, and show it everywhere."""
        entry = self._entry
        if entry is None:
            return
        n = entry.geometry.n_views
        try:
            lists = self.marked_lists()
            self.marks_error = ""
        except ValueError as exc:
            self.marks_error = str(exc)
            lists = {f: {entry.name: []} for f in LIST_FIELDS}
        params = self.project.params(self.step_id)
        self.excluded_views, self.excluded_fits = effective_marks(
            n, entry.geometry.excluded, self.suggestions, bool(params.apply_suggestions),
            lists["views"].get(entry.name, []), lists["ctf_fits"].get(entry.name, []), lists["keep"].get(entry.name, []))
        editable = not self.marks_error and not self.project.readonly
        self.view_box.setEnabled(editable)
        # the plot: excluded views and fits in red
        if self.data is not None and self.data.ctf is not None and len(self.defocus_plot.highlighted) == n:
            self.defocus_plot.highlighted = self.excluded_views | self.excluded_fits
            self.defocus_plot._refresh_points()
            k = int((self.excluded_views | self.excluded_fits).sum())
            marked = (f"<span style='color:{SUSPICIOUS_COLOUR}'>red: {k} excluded view(s) or fit(s)</span>" if k
                      else "nothing excluded")
            self.defocus_plot.caption.setText(f"{marked} · ✕ failed fit · click a point to show its view")
        self._fill_suggestions()
        self._update_state()
        if self.viewer.isEnabled():
            self._on_view(self.current_view())

    def _fill_suggestions(self) -> None:
        entry = self._entry
        assert entry is not None
        tilts = entry.geometry.tilt_angles_deg
        params = self.project.params(self.step_id)
        self.suggestion_list.clear()
        if not self.suggestions:
            self.suggestion_list.addItem(QListWidgetItem("No suggestions: every view and fit looks normal."))
        for s in self.suggestions:
            v = int(s["view"])
            what = "view" if s.get("target", "view") == "view" else "CTF fit"
            active = bool(self.excluded_views[v] or (what == "CTF fit" and self.excluded_fits[v]))
            state = "excluded" if active else ("kept" if params.apply_suggestions else "not applied")
            item = QListWidgetItem(f"View {v + 1} ({tilts[v]:+.1f}°) · {s['reason'].replace('_', ' ')} → exclude the "
                                   f"{what} [{state}]: {s['message']}")
            item.setData(Qt.ItemDataRole.UserRole, v)
            if active:
                item.setForeground(QBrush(QColor(SUSPICIOUS_COLOUR)))
            self.suggestion_list.addItem(item)

    def applied_marks(self) -> tuple[list[int], list[int]] | None:
        """1-based views and CTF fits the last run excluded in the current series (None before any run)."""
        entry = self._entry
        if entry is None or not self.has_results():
            return None
        m = self.project.data.steps[self.step_id].metrics.get("series", {}).get(entry.name)
        if m is None:
            return None
        return [int(v) for v in m.get("excluded_views", [])], [int(v) for v in m.get("excluded_ctf_fits", [])]

    def pending(self) -> bool:
        """Whether the marks shown are not (all) applied: the step must run (again)."""
        st = self.project.data.steps[self.step_id]
        applied = self.applied_marks()
        marked = ([int(i) + 1 for i in np.flatnonzero(self.excluded_views)],
                  [int(i) + 1 for i in np.flatnonzero(self.excluded_fits)])
        return applied is None or applied != marked or st.status != "done"

    def _update_state(self) -> None:
        from tomoguide.compute.io.imod import format_view_list

        views = format_view_list([int(i) + 1 for i in np.flatnonzero(self.excluded_views)]) or "none"
        fits = format_view_list([int(i) + 1 for i in np.flatnonzero(self.excluded_fits)]) or "none"
        text = f"Marked: views <b>{views}</b> · CTF fits <b>{fits}</b> (1-based, angle order)"
        applied = self.applied_marks()
        if self.marks_error:
            text += f"<br><span style='color:{SUSPICIOUS_COLOUR}'>Cannot read the marks: {self.marks_error}</span>"
        elif self.pending():
            if applied is None:
                text += f" — <span style='color:{PENDING_COLOUR}'>not applied yet: run the step</span>"
            else:
                av = format_view_list(applied[0]) or "none"
                af = format_view_list(applied[1]) or "none"
                text += (f" — <span style='color:{PENDING_COLOUR}'>not applied yet (the last run excluded views {av}, "
                         f"fits {af}): run the step again</span>")
        else:
            text += " — applied by the last run"
        self.state_label.setText(text)

    def _write(self, name: str, lists: dict[str, dict[str, list[int]]]) -> None:
        values = {f: format_series_lists({k: sorted(set(v)) for k, v in lists[f].items()}) for f in LIST_FIELDS}
        self.project.set_params(self.step_id, values)
        self.note.setText(self.status_note())
        self.update_marks()
        self.marks_changed.emit()

    def set_view_excluded(self, view_index: int, excluded: bool) -> None:
        """Mark (or un-mark) a view; writes the step's parameters."""
        entry = self._entry
        if entry is None or self.marks_error or self.project.readonly:
            return
        name = entry.name
        lists = self.marked_lists()
        if excluded:
            lists["views"][name] = sorted(set(lists["views"][name]) | {view_index})
            lists["keep"][name] = [i for i in lists["keep"][name] if i != view_index]
        else:
            lists["views"][name] = [i for i in lists["views"][name] if i != view_index]
            bad_view, _ = self._marks_from(lists)
            if bad_view[view_index]:  # still excluded by a suggestion or by the input: overrule it
                lists["keep"][name] = sorted(set(lists["keep"][name]) | {view_index})
        self._write(name, lists)

    def set_fit_excluded(self, view_index: int, excluded: bool) -> None:
        """Mark (or un-mark) the CTF fit of a kept view; writes the step's parameters."""
        entry = self._entry
        if entry is None or self.marks_error or self.project.readonly or self.excluded_views[view_index]:
            return
        name = entry.name
        lists = self.marked_lists()
        if excluded:
            lists["ctf_fits"][name] = sorted(set(lists["ctf_fits"][name]) | {view_index})
        else:
            lists["ctf_fits"][name] = [i for i in lists["ctf_fits"][name] if i != view_index]
            _, bad_fit = self._marks_from(lists)
            if bad_fit[view_index]:  # a CTF suggestion: keep the view with its fit
                lists["keep"][name] = sorted(set(lists["keep"][name]) | {view_index})
        self._write(name, lists)

    def _marks_from(self, lists: dict[str, dict[str, list[int]]]) -> tuple[np.ndarray, np.ndarray]:
        entry = self._entry
        assert entry is not None
        params = self.project.params(self.step_id)
        return effective_marks(entry.geometry.n_views, entry.geometry.excluded, self.suggestions,
                               bool(params.apply_suggestions), lists["views"][entry.name],
                               lists["ctf_fits"][entry.name], lists["keep"][entry.name])

    def toggle_view(self) -> None:
        """Mark or un-mark the current view (the space key)."""
        if self._entry is not None:
            i = self.current_view()
            self.set_view_excluded(i, not bool(self.excluded_views[i]))

    def toggle_fit(self) -> None:
        """Mark or un-mark the current view's CTF fit (Shift+space)."""
        if self._entry is not None:
            i = self.current_view()
            self.set_fit_excluded(i, not bool(self.excluded_fits[i]))

    def handle_space(self, event: QKeyEvent) -> bool:
        if self._entry is None:
            return False
        if event.modifiers() & Qt.KeyboardModifier.ShiftModifier:
            self.toggle_fit()
        else:
            self.toggle_view()
        return True

    # -- views -----------------------------------------------------------------------------------------------
    def select_view(self, view_index: int) -> None:
        """Show view ``view_index`` (angle order) everywhere."""
        self.viewer.show_index(view_index)

    def current_view(self) -> int:
        return self.viewer.current_index()

    def _on_suggestion(self, item: QListWidgetItem) -> None:
        v = item.data(Qt.ItemDataRole.UserRole)
        if v is not None:
            self.select_view(int(v))

    def _on_view(self, i: int) -> None:
        entry, d = self._entry, self.data
        if entry is None or d is None or i >= len(self.excluded_views):
            return
        view_out, fit_out = bool(self.excluded_views[i]), bool(self.excluded_fits[i])
        self.frame.setVisible(view_out)
        self.frame_text.setVisible(view_out)
        for box, on in ((self.view_box, view_out), (self.fit_box, fit_out)):
            box.blockSignals(True)
            box.setChecked(on)
            box.blockSignals(False)
        self.fit_box.setEnabled(not view_out and not self.marks_error and not self.project.readonly)
        g = entry.geometry
        parts = [f"<b>View {i + 1}/{g.n_views}, tilt {g.tilt_angles_deg[i]:+.1f}°</b>"
                 + (f" · <span style='color:{SUSPICIOUS_COLOUR}'><b>view excluded</b></span>" if view_out else "")
                 + (f" · <span style='color:{SUSPICIOUS_COLOUR}'><b>CTF fit excluded</b></span>" if fit_out else "")]
        if d.ctf is not None:
            row = d.ctf.iloc[i]
            self.defocus_plot.set_current(i)
            parts.append(f"Defocus U {row['rlnDefocusU'] / 1e4:.3f} µm, V {row['rlnDefocusV'] / 1e4:.3f} µm · fit "
                         f"resolution {row['rlnCtfMaxResolution']:.1f} Å")
            if d.ctf_preview is not None:
                self.spectrum.set_image(d.ctf_preview[i], d.nyquist_A, float(row["rlnCtfMaxResolution"]),
                                        caption="dashed ring: fit resolution")
        reasons = [f"{s['reason'].replace('_', ' ')}: {s['message']}" for s in self.suggestions if int(s["view"]) == i]
        if reasons:
            parts.append(f"<span style='color:{PENDING_COLOUR}'>Suggested: {'; '.join(reasons)}</span>")
        self.tilt_info.setText("<br>".join(parts))
