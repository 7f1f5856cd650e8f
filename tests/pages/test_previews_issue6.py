"""Previews of align, assign_alignment, ctf_estimate, exclude, ctf_correct, preprocess_for_reconstruction and
reconstruct (issue 6 items 4 and 8), checked against the files the steps wrote on the simulator's tiny data set;
the exclusion page: marks made with the space key and the check boxes become the step's parameters, and a run
applies them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import QApplication

from tomoguide.compute.io.mrc import read_mrc
from tomoguide.compute.io.star import read_ctf_star
from tomoguide.demo import demo_params
from tomoguide.pages.preview_align import AlignPreview, AssignPreview, ResidualBarPlot, high_residuals
from tomoguide.pages.preview_ctf import CtfEstimatePreview
from tomoguide.pages.preview_exclude import ExcludePreview, effective_marks, format_series_lists
from tomoguide.pages.preview_series import SeriesPreview
from tomoguide.pages.preview_tomogram import TomogramPreview, bin_volume
from tomoguide.pages.previews import make_preview
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.exclude import parse_series_lists
from tomoguide.steps.records import SeriesSet
from tomoguide.widgets.ctf_plots import BAR_COLOUR, CURRENT_COLOUR, SUSPICIOUS_COLOUR
from tomoguide.widgets.slice_viewer import extract_slice, volume_levels
from tomoguide.widgets.tiltseries_viewer import bin_image

pytestmark = pytest.mark.gui

WORKFLOW = [s.id for s in registry.workflow()]


def _project(tiny_dataset: Path, folder: Path, until: str) -> Project:
    from tomoguide import synth

    proj = Project.create(folder, params=demo_params(tiny_dataset / "data", synth.PRESETS["tiny"]))
    for step in WORKFLOW[: WORKFLOW.index(until) + 1]:
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    return proj


@pytest.fixture(scope="module")
def reconstructed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    proj = _project(tiny_dataset, tmp_path_factory.mktemp("issue6_previews") / "proj", "reconstruct")
    yield proj
    proj.close()


def _settle(widget, size=(1000, 760)) -> None:  # type: ignore[no-untyped-def]
    widget.resize(*size)
    widget.show()
    for _ in range(3):
        QApplication.processEvents()


def _entry(project: Project, step: str, output: str = "series"):  # type: ignore[no-untyped-def]
    sset, base = SeriesSet.load(project.output_path(step, output))
    return sset.series[0], base


# ---------------------------------------------------------------------------------------------------------------
# align and assign_alignment
# ---------------------------------------------------------------------------------------------------------------

def test_alignment_refined_with_markers_through_the_step_and_page(  # type: ignore[no-untyped-def]
        qtbot, tiny_dataset: Path, tmp_path: Path) -> None:
    """The tiny preset has 16 particles: with the defaults (at least 6 markers) the step refines with them, records
    them and the page says so; asked for more markers than there are particles, it keeps patch tracking and says
    why."""
    from tomoguide import synth
    from tomoguide import truth as truth_mod

    proj = _project(tiny_dataset, tmp_path / "p", "align")
    try:
        m = proj.data.steps["align"].metrics["series"]["TS_01"]
        assert m["n_markers"] is not None and m["n_markers"] >= 8
        entry, base = _entry(proj, "align")
        with np.load(entry.path("markers", base)) as z:
            assert z["positions_px"].shape[:2] == (entry.geometry.n_views, m["n_markers"])
            assert float(z["patch_tilt_axis_deg"]) == pytest.approx(m["patch_tilt_axis_deg"])
        assert entry.geometry.tilt_axis_deg == pytest.approx(m["tilt_axis_deg"])
        assert entry.info["mean_residual_px"] == pytest.approx(m["mean_residual_px"])
        # the alignment lands on the truth (7 views over ±30°, 16 particles: the markers bring the axis within
        # 0.3° of the truth on this specimen, tests/compute/test_align.py checks it at the step's binning)
        err = truth_mod.alignment_errors(tiny_dataset / "truth", proj.output_path("align", "series"))
        assert err["series"]["TS_01"]["shift_rms_px"] < 1.0
        preview = make_preview(proj, "align")
        qtbot.addWidget(preview)
        _settle(preview)
        text = preview.summary.text()
        assert f"refined with <b>{m['n_markers']} particles as markers</b>" in text
        assert f"patch tracking alone: axis {m['patch_tilt_axis_deg']:.2f}°" in text
        # the markers found on the shown view are drawn on it (squares), hidden with the check box
        with np.load(entry.path("markers", base)) as z:
            located = np.asarray(z["positions_px"])
        k = preview.current_view()
        ny, nx = entry.geometry.image_shape_px
        expected = located[k][np.isfinite(located[k]).all(axis=1)] + [nx / 2.0, ny / 2.0]
        assert len(expected) > 0 and preview.marker_item.isVisible() and preview.markers_box.isEnabled()
        np.testing.assert_allclose(np.c_[preview.marker_item.getData()], expected)
        assert f"□ {len(expected)} markers" in preview.view_info.text()
        preview.markers_box.setChecked(False)
        assert not preview.marker_item.isVisible()
        # more markers asked for than there are particles: patch tracking is kept
        params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
        params["align"] = {**params.get("align", {}), "min_markers": 40}
        proj.set_params("align", params["align"])
        assert run_to_end(StepRun(proj, "align")).status == "done"
        m = proj.data.steps["align"].metrics["series"]["TS_01"]
        assert m["n_markers"] is None and m["tilt_axis_deg"] == m["patch_tilt_axis_deg"]
        entry, _ = _entry(proj, "align")
        assert "markers" not in entry.files
        preview = make_preview(proj, "align")
        qtbot.addWidget(preview)
        _settle(preview)
        assert "as markers" not in preview.summary.text() and not preview.markers_box.isEnabled()
        assert not preview.marker_item.isVisible()
    finally:
        proj.close()


def test_align_summary_names_weak_and_far_views_and_axis_notes() -> None:
    """The align page's summary repeats what the step recorded: weak views bridged over and views found far away
    (1-based, as the exclusion lists), and the tilt-axis notes (escaped: they hold '<' only by accident)."""
    from tomoguide.pages.preview_align import _view_notes

    assert _view_notes({}) == ""
    text = _view_notes({"weak_views": [3, 40], "widened_views": [27],
                        "axis_notes": ["TS_07: warning: the fitted tilt axis -94.01° is <b>8°</b> off"]})
    assert "views 4, 41 weak" in text and "views 28 found far away" in text
    assert "&lt;b&gt;8°&lt;/b&gt;" in text and "<br>" in text


def test_align_preview_tracks_residuals_and_aligned_series(qtbot, reconstructed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(reconstructed, "align")
    qtbot.addWidget(preview)
    assert isinstance(preview, AlignPreview)
    _settle(preview)
    entry, base = _entry(reconstructed, "align")
    g = entry.geometry
    stack, _ = read_mrc(entry.path("stack", base))
    interp, _ = read_mrc(entry.path("interp", base))
    tracks = np.load(entry.path("tracks", base))
    residuals = np.asarray(entry.info["residual_per_view_px"])
    # summary: the fitted geometry and the mean residual the step recorded
    text = preview.summary.text()
    assert f"{g.tilt_axis_deg:.2f}°" in text and f"{g.tilt_offset_deg:+.2f}°" in text
    assert f"mean residual {entry.info['mean_residual_px']:.2f} px" in text
    assert f"{tracks['positions_px'].shape[1]} patches" in text and f"{int(tracks['rejected'].sum())} rejected" in text
    # the bars: one per view at its tilt, the residuals; the high ones red
    np.testing.assert_allclose(preview.bars.values, residuals)
    colours = preview.bars.bar_colours()
    high = high_residuals(residuals)
    for k in range(g.n_views):
        assert (colours[k] == SUSPICIOUS_COLOUR) == bool(high[k])
        assert (colours[k] == CURRENT_COLOUR) == (k == preview.bars.current_index() and not high[k])
    np.testing.assert_array_equal(high_residuals(np.array([1.0, 1.1, 0.9, 3.0, np.nan])), [0, 0, 0, 1, 0])
    bars = ResidualBarPlot()
    qtbot.addWidget(bars)
    bars.set_data(np.array([-20.0, -10.0, 0.0, 10.0]), np.array([1.0, 1.1, 0.9, 3.0]))
    bars.set_current(0)
    assert bars.bar_colours() == [CURRENT_COLOUR, BAR_COLOUR, BAR_COLOUR, SUSPICIOUS_COLOUR]
    assert "1 view(s) above" in bars.caption.text()
    # every view: circles where the file says the patches were tracked, rejected ones apart
    positions, rejected = tracks["positions_px"], tracks["rejected"]
    ny, nx = stack.shape[1:]
    for k in range(g.n_views):
        preview.select_view(k)
        assert preview.bars.current_index() == k
        np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(stack[k], preview.viewer.display_binning()))
        ok = np.all(np.isfinite(positions[k]), axis=1)
        good = np.array([[p.pos().x(), p.pos().y()] for p in preview.tracked_item.points()]).reshape(-1, 2)
        bad = np.array([[p.pos().x(), p.pos().y()] for p in preview.rejected_item.points()]).reshape(-1, 2)
        np.testing.assert_allclose(good, positions[k][ok & ~rejected] + [nx / 2, ny / 2])
        np.testing.assert_allclose(bad, positions[k][ok & rejected] + [nx / 2, ny / 2])
        assert f"{int((ok & ~rejected).sum())} tracked" in preview.view_info.text()
        assert f"residual {residuals[k]:.2f} px" in preview.view_info.text()
    assert len(good) + len(bad) > 0
    # the interpolated aligned series replaces the stack, on the same view; the tracks are hidden there
    k = g.n_views - 2
    preview.select_view(k)
    preview.aligned_box.click()
    assert preview.showing == "interp" and preview.viewer.current_index() == k
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(interp[k], preview.viewer.display_binning()))
    assert not preview.tracked_item.isVisible() and "aligned" in preview.viewer.title_label.text()
    preview.set_showing("stack")
    assert preview.tracked_item.isVisible() and not preview.aligned_box.isChecked()


def test_assign_and_binned_series_previews(qtbot, reconstructed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(reconstructed, "assign_alignment")
    qtbot.addWidget(preview)
    assert isinstance(preview, AssignPreview)
    _settle(preview)
    entry, base = _entry(reconstructed, "assign_alignment")
    g = entry.geometry
    src, _ = _entry(reconstructed, "align")
    assert g.binning == 1 and g.tilt_axis_deg == src.geometry.tilt_axis_deg
    stack, _ = read_mrc(entry.path("stack", base))
    assert stack.shape[1:] == tuple(g.image_shape_px)
    shift = np.abs(np.asarray(g.xf)[:, :, 2]).max()
    assert f"tilt axis {g.tilt_axis_deg:.2f}°" in preview.series_info.text()
    assert f"shifts up to {shift:.1f} px" in preview.series_info.text()
    i = preview.viewer.current_index()
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(stack[i], preview.viewer.display_binning()))
    for step in ("ctf_correct", "preprocess_for_reconstruction"):
        p = make_preview(reconstructed, step)
        qtbot.addWidget(p)
        assert type(p) is SeriesPreview
        e, b = _entry(reconstructed, step)
        st, _ = read_mrc(e.path("stack", b))
        assert p.viewer.isEnabled() and f"{e.geometry.pixel_size_binned_A:.2f} Å/px" in p.viewer.title_label.text()
        np.testing.assert_allclose(p.viewer.image_item.image,
                                   bin_image(st[p.viewer.current_index()], p.viewer.display_binning()))


# ---------------------------------------------------------------------------------------------------------------
# ctf_estimate
# ---------------------------------------------------------------------------------------------------------------

def test_ctf_estimate_preview(qtbot, reconstructed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(reconstructed, "ctf_estimate")
    qtbot.addWidget(preview)
    assert isinstance(preview, CtfEstimatePreview)
    _settle(preview)
    entry, base = _entry(reconstructed, "ctf_estimate")
    ctf = read_ctf_star(entry.path("ctf_star", base))
    spectra, _ = read_mrc(entry.path("ctf_preview", base))
    tilts = np.asarray(entry.geometry.tilt_angles_deg)
    plot = preview.defocus_plot
    xy = np.array([[p.pos().x(), p.pos().y()] for p in plot.defocus_u_item.points()])
    np.testing.assert_allclose(xy[:, 0], tilts)
    np.testing.assert_allclose(xy[:, 1], ctf["rlnDefocusU"].to_numpy() / 1e4, rtol=1e-6)
    assert not preview.trajectory.isVisible()
    k = 1
    preview.select_view(k)
    np.testing.assert_array_equal(preview.spectrum.image_item.image, spectra[k])
    assert f"fit resolution {ctf['rlnCtfMaxResolution'].iloc[k]:.1f} Å" in preview.tilt_info.text()
    assert "tilt images" in preview.viewer.title_label.text()


# ---------------------------------------------------------------------------------------------------------------
# reconstruct
# ---------------------------------------------------------------------------------------------------------------

def test_tomogram_slices(qtbot, reconstructed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(reconstructed, "reconstruct")
    qtbot.addWidget(preview)
    assert isinstance(preview, TomogramPreview)
    _settle(preview)
    entry, base = _entry(reconstructed, "reconstruct", "tomograms")
    vol, info = read_mrc(entry.path("tomogram", base))
    nz, ny, nx = vol.shape
    sv = preview.slices
    assert (sv.index("xy"), sv.index("xz"), sv.index("yz")) == ((nz - 1) // 2, (ny - 1) // 2, (nx - 1) // 2)
    np.testing.assert_array_equal(sv.image("xy"), vol[(nz - 1) // 2])
    np.testing.assert_array_equal(sv.image("xz"), vol[:, (ny - 1) // 2, :])
    np.testing.assert_array_equal(sv.image("yz"), vol[:, :, (nx - 1) // 2].T)
    sv.set_index("xy", 3)
    sv.set_index("yz", nx - 1)
    np.testing.assert_array_equal(sv.image("xy"), vol[3])
    np.testing.assert_array_equal(sv.image("yz"), vol[:, :, nx - 1].T)
    assert sv.panes["xz"].hline.value() == 3.5 and sv.panes["xy"].vline.value() == nx - 0.5
    # contrast from the volume's percentiles, the same in every pane
    lo, hi = np.percentile(vol, (0.5, 99.5))  # of a regular subsample for large volumes: within 1 % of the range
    assert sv.levels == pytest.approx((lo, hi), abs=0.01 * (hi - lo))
    for a in ("xy", "xz", "yz"):
        assert tuple(sv.panes[a].image_item.levels) == pytest.approx(sv.levels)
    assert f"{info.voxel_size_A[0]:.2f} Å/voxel" in preview.series_info.text()
    assert f"{nx}×{ny}×{nz} voxels" in sv.title_label.text()
    # a click in a pane gives the voxel under the mouse (for picking later)
    clicks: list[tuple[float, float, float]] = []
    sv.voxel_clicked.connect(lambda x, y, z: clicks.append((x, y, z)))
    pane = sv.panes["xz"]
    scene = pane.view.mapViewToScene(QPointF(10.5, 20.5))  # column x 10, row z 20
    pos = pane.graphics.mapFromScene(scene)
    qtbot.mouseClick(pane.graphics.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(pos.x(), pos.y()))
    assert len(clicks) == 1 and clicks[0] == pytest.approx((10.0, sv.index("xz"), 20.0), abs=0.6)
    assert sv.pane_to_voxel("yz", 5.5, 7.5) == (float(sv.index("yz")), 7.0, 5.0)
    # thicker slices: the mean of the neighbours
    sv.thickness.setValue(2)
    np.testing.assert_allclose(sv.image("xy"), vol[1:6].mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(extract_slice(vol, "xz", 0, 1), vol[:, 0:2, :].mean(axis=1), rtol=1e-5, atol=1e-7)
    with pytest.raises(IndexError):
        extract_slice(vol, "xy", nz)
    assert volume_levels(np.full((2, 2, 2), 3.0)) == (3.0, 4.0)
    # the binned copy for 3D: block means
    cube = np.arange(4 * 6 * 8, dtype=np.float32).reshape(4, 6, 8)
    binned = bin_volume(cube, max_side=4)
    assert binned.shape == (2, 3, 4)
    assert binned[0, 0, 0] == pytest.approx(cube[:2, :2, :2].mean())


# ---------------------------------------------------------------------------------------------------------------
# exclude: marks -> parameters -> run
# ---------------------------------------------------------------------------------------------------------------

def test_effective_marks_and_lists() -> None:
    sugg = [{"view": 0, "target": "view"}, {"view": 3, "target": "ctf"}, {"view": 5, "target": "view"}]
    views, fits = effective_marks(7, [False] * 6 + [True], sugg, True, [2], [4], [5])
    assert np.flatnonzero(views).tolist() == [0, 2, 6] and np.flatnonzero(fits).tolist() == [3, 4]
    views, fits = effective_marks(7, None, sugg, False, [], [4], [])
    assert not views.any() and np.flatnonzero(fits).tolist() == [4]
    text = format_series_lists({"TS_01": [0, 1, 2, 6], "TS_02": [40], "TS_03": []})
    assert text == "TS_01: 1-3,7; TS_02: 41"
    assert parse_series_lists(text, ["TS_01", "TS_02", "TS_03"], "views") == {"TS_01": [0, 1, 2, 6],
                                                                              "TS_02": [40], "TS_03": []}


def test_exclusion_page_marks_then_run(qtbot, tiny_dataset: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proj = _project(tiny_dataset, tmp_path / "p", "ctf_estimate")
    try:
        preview = make_preview(proj, "exclude")
        qtbot.addWidget(preview)
        assert isinstance(preview, ExcludePreview)
        _settle(preview)
        # before the step ran: the CTF estimation's views and fits are there to mark
        entry, base = _entry(proj, "ctf_estimate")
        stack, _ = read_mrc(entry.path("stack", base))
        n = entry.geometry.n_views
        assert "run the step" in preview.note.text() and preview.viewer.isEnabled()
        assert preview.defocus_plot.point_indices(preview.defocus_plot.defocus_u_item) == list(range(n))
        assert not preview.excluded_views.any() and "not applied yet" in preview.state_label.text()
        # the suggestions shown before the run are the step's own (same checks, same thresholds)
        before = [(s["view"], s["reason"]) for s in preview.suggestions]
        # space on the view at the highest tilt: marked, red, and in the step's parameters
        k = n - 1
        preview.select_view(k)
        np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(stack[k], preview.viewer.display_binning()))
        qtbot.keyClick(preview.viewer.slider, Qt.Key.Key_Space)
        assert preview.excluded_views.tolist() == [i == k for i in range(n)]
        assert preview.frame.isVisible() and preview.frame.pen().color() == QColor(SUSPICIOUS_COLOUR)
        assert preview.view_box.isChecked() and not preview.fit_box.isEnabled()
        plot = preview.defocus_plot
        assert plot.red_indices(plot.defocus_u_item) == [k]
        assert proj.params("exclude").views == f"{entry.name}: {k + 1}"
        # Shift+space on view 2 marks its CTF fit only
        preview.select_view(1)
        qtbot.keyClick(preview.viewer.slider, Qt.Key.Key_Space, Qt.KeyboardModifier.ShiftModifier)
        assert proj.params("exclude").ctf_fits == f"{entry.name}: 2"
        assert plot.red_indices(plot.defocus_u_item) == [1, k] and not preview.frame.isVisible()
        assert preview.fit_box.isChecked() and "CTF fit excluded" in preview.tilt_info.text()
        assert preview.excluded_fits.tolist() == [i == 1 for i in range(n)]
        # and again: the fit is kept (an excluded fit makes the step fail under pandas 3, reported to the lead:
        # fill_excluded_fits writes into a read-only to_numpy() view)
        qtbot.keyClick(preview.viewer.slider, Qt.Key.Key_Space, Qt.KeyboardModifier.ShiftModifier)
        assert proj.params("exclude").ctf_fits == "" and not preview.fit_box.isChecked()
        assert plot.red_indices(plot.defocus_u_item) == [k]
        # the check box marks view 1, then un-marks it again
        preview.select_view(0)
        preview.view_box.click()
        assert proj.params("exclude").views == f"{entry.name}: 1,{k + 1}"
        preview.view_box.click()
        assert proj.params("exclude").views == f"{entry.name}: {k + 1}"
        assert f"views <b>{k + 1}</b>" in preview.state_label.text() and "not applied yet" in preview.state_label.text()
        # running the step applies the marks: the view excluded in the geometry, the fit flagged
        assert run_to_end(StepRun(proj, "exclude")).status == "done"
        preview.refresh()
        out, _ = _entry(proj, "exclude")
        assert [(s["view"], s["reason"]) for s in out.info["suggestions"]] == before
        assert out.geometry.excluded == [i == k for i in range(n)]
        assert out.flags["ctf_excluded"] == [False] * n
        assert not preview.pending() and "applied by the last run" in preview.state_label.text()
        # un-marking makes it pending again; the parameters say so
        preview.select_view(k)
        qtbot.keyClick(preview.viewer.slider, Qt.Key.Key_Space)
        assert proj.params("exclude").views == "" and proj.data.steps["exclude"].status == "stale"
        assert preview.pending() and "the last run excluded views" in preview.state_label.text()
        # a suggestion that excludes a view: un-marking it puts the view in "keep"
        preview.suggestions = [{"view": 2, "reason": "dark_view", "message": "much darker", "target": "view"}]
        preview.update_marks()
        assert preview.excluded_views[2] and "dark view" in preview.suggestion_list.item(0).text()
        preview.suggestion_list.itemClicked.emit(preview.suggestion_list.item(0))
        assert preview.current_view() == 2
        qtbot.keyClick(preview.viewer.slider, Qt.Key.Key_Space)
        assert proj.params("exclude").keep == f"{entry.name}: 3" and not preview.excluded_views[2]
    finally:
        proj.close()


def test_previews_before_a_run(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Project.create(tmp_path / "p", params={}) as proj:
        for step, cls in (("align", AlignPreview), ("assign_alignment", AssignPreview),
                          ("ctf_estimate", CtfEstimatePreview), ("exclude", ExcludePreview),
                          ("reconstruct", TomogramPreview)):
            preview = make_preview(proj, step)
            qtbot.addWidget(preview)
            assert type(preview) is cls and preview.series_combo.count() == 0
            if step == "exclude":
                assert "run the CTF estimation first" in preview.note.text()
                assert not preview.view_box.isEnabled()
            else:
                assert "No results yet" in preview.note.text()
