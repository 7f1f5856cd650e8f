"""Previews of motion_ctf, xray_erase and preprocess_for_alignment (issue 5 item 5), checked against the files the
steps wrote on the simulator's tiny data set, and the suspicious-tilt rules of the CTF plot on made-up numbers."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtWidgets import QApplication

from tomoguide.compute.io.mrc import read_mrc
from tomoguide.compute.io.star import read_ctf_star, read_star, write_star
from tomoguide.demo import demo_import_params
from tomoguide.pages.preview_motion import MotionCtfPreview
from tomoguide.pages.preview_series import SeriesPreview
from tomoguide.pages.preview_xray import XrayPreview
from tomoguide.pages.previews import make_preview
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps.records import SeriesSet
from tomoguide.widgets.ctf_plots import CURRENT_COLOUR, neighbour_median, robust_trend, suspicious_tilts
from tomoguide.widgets.tiltseries_viewer import bin_image

pytestmark = pytest.mark.gui

STEPS = ("import_movies", "motion_ctf", "xray_erase", "preprocess_for_alignment")


@pytest.fixture(scope="module")
def processed(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    proj = Project.create(tmp_path_factory.mktemp("issue5_previews") / "proj",
                          params={"import_movies": demo_import_params(tiny_dataset / "data"),
                                  "preprocess_for_alignment": {"binning": 4}})
    for step in STEPS:
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    yield proj
    proj.close()


def _settle(widget, size=(1000, 700)) -> None:  # type: ignore[no-untyped-def]
    widget.resize(*size)
    widget.show()
    for _ in range(3):
        QApplication.processEvents()


def _click(qtbot, plot_widget, plot, x: float, y: float) -> None:  # type: ignore[no-untyped-def]
    """A real left click on the data point (x, y) of ``plot`` inside ``plot_widget.graphics``."""
    pos = plot_widget.view_position(plot, x, y)
    qtbot.mouseClick(plot_widget.graphics.viewport(), Qt.MouseButton.LeftButton,
                     pos=QPoint(round(pos.x()), round(pos.y())))


def _series(project: Project, step: str) -> tuple[SeriesSet, Path]:
    return SeriesSet.load(project.output_path(step, "series"))


# ---------------------------------------------------------------------------------------------------------------
# the rules, on numbers made up for them
# ---------------------------------------------------------------------------------------------------------------

def test_suspicious_tilt_rules() -> None:
    tilt = np.arange(-60.0, 61.0, 6.0)
    n = len(tilt)
    rng = np.random.default_rng(0)
    trend = 30000.0 + 40.0 * tilt  # defocus changing smoothly with tilt, Å
    u = trend + 150.0 + rng.normal(0.0, 60.0, n)
    v = trend - 150.0 + rng.normal(0.0, 60.0, n)
    res = 6.0 + 0.05 * np.abs(tilt) + rng.normal(0.0, 0.2, n)
    clean = suspicious_tilts(u, v, res, tilt_deg=tilt)
    assert clean.indices() == []  # noise of 60 Å around a smooth trend: nothing flagged
    u[7] += 4000.0
    v[7] += 4000.0  # a jump of 0.4 µm
    res[14] *= 2.0  # twice as bad as its neighbours
    failed = np.zeros(n, bool)
    failed[3] = True
    u[19] = np.nan  # no defocus at all counts as failed
    s = suspicious_tilts(u, v, res, failed, tilt)
    assert s.indices() == [3, 7, 14, 19]
    assert list(np.nonzero(s.failed)[0]) == [3, 19]
    assert list(np.nonzero(s.defocus_outlier)[0]) == [7]
    assert list(np.nonzero(s.resolution_outlier)[0]) == [14]
    assert "defocus" in s.reasons_text[7] and "fit resolution" in s.reasons_text[14]
    # the trend follows the steady change up to the ends: within the noise of the true line there
    ok = ~s.any
    np.testing.assert_allclose(s.defocus_trend_A[ok], trend[ok], atol=150.0)
    assert s.defocus_trend_A[7] == pytest.approx(trend[7], abs=150.0)  # the jump is not in its own trend
    np.testing.assert_allclose(neighbour_median(np.array([1.0, 5.0, 2.0, 9.0]), half_window=1), [5.0, 1.5, 7.0, 2.0])
    # a parabola is followed exactly, and wild points (a quarter of them) do not pull it
    curve = 30000.0 + 20.0 * tilt + 0.5 * tilt**2
    wild = curve.copy()
    wild[[2, 6, 11, 15, 18]] += [9e4, -5e4, 7e4, 3e4, 8e4]
    trend_w, sd_w = robust_trend(tilt, wild, min_sd=1.0)
    np.testing.assert_allclose(trend_w, curve, rtol=1e-9)
    assert sd_w == 1.0  # the residuals of the good points are 0: the floor
    trend_l, _ = robust_trend(tilt[:5], curve[:5] + [0, 0, 1e5, 0, 0])  # 5 points: a line, still not pulled
    assert np.abs(trend_l - curve[:5]).max() < 0.2 * np.ptp(curve[:5])
    with pytest.raises(ValueError, match="failed: 3 values for 21 tilts"):
        suspicious_tilts(u, v, res, failed[:3])


# ---------------------------------------------------------------------------------------------------------------
# motion_ctf
# ---------------------------------------------------------------------------------------------------------------

def test_motion_preview_matches_the_files(qtbot, processed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(processed, "motion_ctf")
    qtbot.addWidget(preview)
    assert isinstance(preview, MotionCtfPreview)
    _settle(preview)
    sset, base = _series(processed, "motion_ctf")
    entry = sset.series[0]
    tilts = np.asarray(entry.geometry.tilt_angles_deg)
    n = len(tilts)
    ctf = read_ctf_star(entry.path("ctf_star", base))
    shifts = read_star(entry.path("frame_shifts", base))["frame_shifts"]
    stack, _ = read_mrc(entry.path("stack", base))
    spectra, _ = read_mrc(entry.path("ctf_preview", base))
    assert preview.series_combo.currentText() == entry.name
    # starts on the tilt nearest 0°, the aligned sum of that tilt, display-binned like the import viewer
    i0 = int(np.argmin(np.abs(tilts)))
    assert preview.current_view() == i0
    b = preview.viewer.display_binning()
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(stack[i0], b))
    # the defocus plot: one point per tilt for U, V and the resolution, at the file's values
    plot = preview.defocus_plot
    for item, column, scale in ((plot.defocus_u_item, "rlnDefocusU", 1e4), (plot.defocus_v_item, "rlnDefocusV", 1e4),
                                (plot.resolution_item, "rlnCtfMaxResolution", 1.0)):
        assert plot.point_indices(item) == list(range(n))
        xy = np.array([[p.pos().x(), p.pos().y()] for p in item.points()])
        np.testing.assert_allclose(xy[:, 0], tilts)
        np.testing.assert_allclose(xy[:, 1], ctf[column].to_numpy() / scale, rtol=1e-6)
    assert entry.flags["ctf_failed"] == [False] * n
    expected = suspicious_tilts(ctf["rlnDefocusU"], ctf["rlnDefocusV"], ctf["rlnCtfMaxResolution"],
                                tilt_deg=tilts).indices()
    assert plot.red_indices(plot.defocus_u_item) == expected
    # a real click on the point of the second-highest tilt selects it everywhere
    k = n - 2
    _click(qtbot, plot, plot.defocus_plot, tilts[k], ctf["rlnDefocusU"].iloc[k] / 1e4)
    assert preview.current_view() == k and plot.current_index() == k
    assert f"{tilts[k]:+.1f}°" in preview.viewer.info_label.text()
    assert f"dose {entry.geometry.dose_e_A2[k]:.2f} e⁻/Å²" in preview.viewer.info_label.text()
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(stack[k], b))
    current = [p for p in plot.defocus_u_item.points() if p.pen().color().name() == CURRENT_COLOUR]
    assert [int(p.data()) for p in current] == [k]
    # the trajectory of that tilt: the fitted line through every frame, the raw measurements as dots
    rows = shifts[shifts["tomoguideViewIndex"] == k].sort_values("rlnMicrographFrameNumber")
    x, y = preview.trajectory.fitted_item.getData()
    np.testing.assert_allclose(x, rows["rlnMicrographShiftX"])
    np.testing.assert_allclose(y, rows["rlnMicrographShiftY"])
    raw = preview.trajectory.raw_item.getData()
    np.testing.assert_allclose(raw[0], rows["tomoguideRawShiftX"])
    np.testing.assert_allclose(raw[1], rows["tomoguideRawShiftY"])
    assert [t.toPlainText() for t in preview.trajectory.labels] == [str(f) for f in rows["rlnMicrographFrameNumber"]]
    # the spectrum half and half, with the fit resolution's ring where that resolution lies
    np.testing.assert_array_equal(preview.spectrum.image_item.image, spectra[k])
    nyquist = 2 * ctf["rlnMicrographPixelSize"].iloc[k]
    assert preview.spectrum.ring_radius_px == pytest.approx(spectra.shape[-1] / 2 * nyquist
                                                            / ctf["rlnCtfMaxResolution"].iloc[k])
    assert f"V {ctf['rlnDefocusV'].iloc[k] / 1e4:.3f} µm" in preview.tilt_info.text()
    # the slider drives the plot back
    preview.viewer.set_position(0)
    assert plot.current_index() == 0 and preview.spectrum.image_item.image is not None


def test_motion_preview_highlights_the_flagged_tilts(qtbot, processed: Project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = processed.output_path("motion_ctf", "series").parent
    copy = tmp_path / "motion_copy"
    shutil.copytree(src, copy)
    data = json.loads((copy / "series.json").read_text())
    entry = data["series"][0]
    n = len(entry["geometry"]["tilt_angles_deg"])
    entry["flags"]["ctf_failed"][n - 2] = True  # flagged in series.json only
    (copy / "series.json").write_text(json.dumps(data))
    star = copy / entry["files"]["ctf_star"]
    blocks = read_star(star)
    table = blocks["micrographs"]
    table.loc[1, "tomoguideCtfFailed"] = 1  # flagged in the STAR file only
    table.loc[1, "tomoguideCtfReason"] = "no_Thon_rings"
    table.loc[3, ["rlnDefocusU", "rlnDefocusV"]] += 20000.0  # 2 µm off the trend
    write_star(star, blocks)
    preview = make_preview(processed, "motion_ctf")
    qtbot.addWidget(preview)
    _settle(preview)
    preview.show_set(*SeriesSet.load(copy))
    plot = preview.defocus_plot
    flagged = [1, 3, n - 2]
    for item in (plot.defocus_u_item, plot.defocus_v_item, plot.resolution_item):
        assert plot.red_indices(item) == flagged
    assert [int(p.data()) for p in plot.defocus_u_item.points() if p.symbol() == "x"] == [1, n - 2]
    assert "3 suspicious" in plot.caption.text()
    preview.select_view(1)
    assert "CTF fit failed" in preview.tilt_info.text() and "no_Thon_rings" in preview.tilt_info.text()
    preview.select_view(3)
    assert "defocus" in preview.tilt_info.text() and "Suspicious" in preview.tilt_info.text()
    preview.select_view(0)
    assert "Suspicious" not in preview.tilt_info.text()


# ---------------------------------------------------------------------------------------------------------------
# xray_erase
# ---------------------------------------------------------------------------------------------------------------

def test_xray_preview_before_after_and_marks(qtbot, processed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(processed, "xray_erase")
    qtbot.addWidget(preview)
    assert isinstance(preview, XrayPreview)
    _settle(preview)
    sset, base = _series(processed, "xray_erase")
    entry = sset.series[0]
    msset, mbase = _series(processed, "motion_ctf")
    before, _ = read_mrc(msset.series[0].path("stack", mbase))
    after, _ = read_mrc(entry.path("stack", base))
    mask, _ = read_mrc(entry.path("mask", base))
    counts = entry.info["replaced_per_view"]
    assert counts == processed.data.steps["xray_erase"].metrics["series"][entry.name]["patches_per_view"]
    # the bar plot: one bar per view at its tilt, the reported counts
    np.testing.assert_array_equal(preview.bars.values, counts)
    assert sum(counts) > 0
    # it starts on the view with the most patches; click the bar of another view with patches, then come back
    k = int(np.argmax(counts))
    assert preview.viewer.current_index() == k
    tilts = entry.geometry.tilt_angles_deg
    other = max((j for j in range(len(counts)) if counts[j] and j != k), key=lambda j: abs(j - k))
    _click(qtbot, preview.bars, preview.bars.plot, tilts[other], 0.5 * counts[other])
    assert preview.viewer.current_index() == other and preview.bars.current_index() == other
    assert f"{counts[other]} patches" in preview.view_info.text()
    _click(qtbot, preview.bars, preview.bars.plot, tilts[k], 0.5 * counts[k])
    assert preview.viewer.current_index() == k
    assert preview.bars.bar_colours()[k] == CURRENT_COLOUR
    # red circles: one per replaced patch, every replaced pixel inside one, each centred on replaced pixels
    markers = preview.marker_positions()
    assert len(markers) == counts[k]
    sizes = np.array([p.size() for p in preview.markers.points()])
    ys, xs = np.nonzero(mask[k])
    centres = np.stack([xs + 0.5, ys + 0.5], axis=1)  # pixel centres in the viewer's scene
    dist = np.hypot(*(centres[:, None, :] - markers[None, :, :]).transpose(2, 0, 1))
    assert np.all((dist <= sizes[None, :] / 2).any(axis=1))
    assert np.all(dist.min(axis=0) < 2.0)
    assert f"{counts[k]} patches, {len(xs)} pixels replaced" in preview.view_info.text()
    # before/after: only the marked pixels differ; the toggle keeps the view
    outside = mask[k] == 0
    np.testing.assert_array_equal(before[k][outside], after[k][outside])
    assert np.all(before[k][mask[k] != 0] != after[k][mask[k] != 0])
    np.testing.assert_array_equal(preview.shown_image(), after[k])
    preview.toggle.click()
    assert preview.showing == "before" and preview.viewer.current_index() == k
    np.testing.assert_array_equal(preview.shown_image(), before[k])
    b = preview.viewer.display_binning()
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(before[k], b))
    assert "before" in preview.viewer.title_label.text() and preview.toggle.text() == "Show after"
    preview.set_showing("after")
    assert not preview.toggle.isChecked()
    np.testing.assert_allclose(preview.viewer.image_item.image, bin_image(after[k], b))
    preview.mark_box.setChecked(False)
    assert not preview.markers.isVisible() and not preview.overlay.isVisible()


# ---------------------------------------------------------------------------------------------------------------
# preprocess_for_alignment, and the previews before any run
# ---------------------------------------------------------------------------------------------------------------

def test_binned_series_preview(qtbot, processed: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(processed, "preprocess_for_alignment")
    qtbot.addWidget(preview)
    assert isinstance(preview, SeriesPreview)
    _settle(preview)
    sset, base = _series(processed, "preprocess_for_alignment")
    entry = sset.series[0]
    stack, info = read_mrc(entry.path("stack", base))
    px = entry.geometry.pixel_size_binned_A
    assert px == pytest.approx(info.voxel_size_A[0], rel=1e-4)
    assert px == pytest.approx(4 * _series(processed, "xray_erase")[0].series[0].geometry.pixel_size_binned_A)
    assert f"{px:.2f} Å/px" in preview.viewer.title_label.text()
    assert f"{px:.3f} Å/px" in preview.series_info.text()
    i = preview.viewer.current_index()
    np.testing.assert_allclose(preview.viewer.image_item.image,
                               bin_image(stack[i], preview.viewer.display_binning()))
    assert preview.viewer.stack_indices_in_order() == list(range(stack.shape[0]))
    text = preview.view_stats.text()  # normalised views: mean 0, SD 1 (tutorial)
    assert abs(stack[i].mean(dtype=np.float64)) < 1e-3 and "mean 0.000, SD 1.000" in text
    assert f"range {stack[i].min():.3f} to {stack[i].max():.3f}" in text


def test_previews_before_a_run(qtbot, tiny_dataset: Path, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Project.create(tmp_path / "p", params={"import_movies": demo_import_params(tiny_dataset / "data")}) as proj:
        for step, cls in (("motion_ctf", MotionCtfPreview), ("xray_erase", XrayPreview),
                          ("preprocess_for_alignment", SeriesPreview)):
            preview = make_preview(proj, step)
            qtbot.addWidget(preview)
            assert type(preview) is cls
            assert "No results yet" in preview.note.text()
            assert not preview.viewer.isEnabled() and preview.series_combo.count() == 0
