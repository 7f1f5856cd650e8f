"""Previews: the tilt-series viewer, the import preview against the step's outputs, the generic metrics table,
and the 3D volume view rendered offscreen."""

from __future__ import annotations

from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide.pages.previews import ImportPreview, MetricsPreview, flatten_metrics, make_preview
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.import_movies import load_series
from tomoguide.widgets.tiltseries_viewer import TiltSeriesViewer, auto_binning, bin_image, percentile_levels

pytestmark = pytest.mark.gui


def test_viewer_orders_and_contrast(qtbot) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(1)
    tilts = np.array([-6.0, -3.0, 0.0, 3.0, 6.0])  # angle order
    acq = np.array([3, 2, 0, 1, 4])  # dose-symmetric: 0, +3, -3, -6, +6
    dose = np.full(5, 3.0)
    prior = acq * 3.0
    stack = (rng.normal(100.0, 10.0, (5, 32, 40)) + np.arange(5)[:, None, None] * 50).astype(np.float32)
    viewer = TiltSeriesViewer()
    qtbot.addWidget(viewer)
    viewer.set_series(stack, tilts, acq, dose, prior, name="TS_x")
    assert viewer.current_index() == 2  # starts at the tilt nearest 0°
    assert "+0.0°" in viewer.info_label.text() and "acquired #1 of 5" in viewer.info_label.text()
    assert viewer.stack_indices_in_order() == [0, 1, 2, 3, 4]
    viewer.set_order("acquisition")
    assert viewer.stack_indices_in_order() == [2, 3, 1, 0, 4]
    assert viewer.current_index() == 2  # the same image stays shown
    viewer.set_position(2)  # third acquired: -3°
    assert viewer.current_index() == 1
    text = viewer.info_label.text()
    assert "-3.0°" in text and "dose 3.00 e⁻/Å²" in text and "6.0 e⁻/Å² before it" in text
    assert "acquisition order" in text
    # contrast adapts to the image shown: its 0.5 and 99.5 percentiles
    lo, hi = viewer.levels
    np.testing.assert_allclose((lo, hi), np.percentile(stack[1], (0.5, 99.5)), rtol=1e-5)
    assert viewer.image_item.image.shape == (32, 40)  # row-major: rows are y
    np.testing.assert_array_equal(viewer.image_item.image, stack[1])
    viewer.set_position(4)
    assert viewer.levels[0] > lo + 100  # the brighter image got its own range
    assert viewer.display_binning() == 1  # 32 px: too small to bin
    with pytest.raises(ValueError, match="dose_e_A2: 4 values for 5 images"):
        viewer.set_series(stack, tilts, acq, dose[:4])
    assert percentile_levels(np.zeros((4, 4))) == (0.0, 1.0)


def test_import_preview_matches_the_outputs(qtbot, project_dir: Path) -> None:  # type: ignore[no-untyped-def]
    with Project.open(project_dir) as project:
        empty = make_preview(project, "import_movies")
        qtbot.addWidget(empty)
        assert isinstance(empty, ImportPreview)
        assert empty.table.rowCount() == 0 and not empty.viewer.isEnabled()
        assert "No results yet" in empty.note.text()
        run = StepRun(project, "import_movies")
        run.preflight()
        run_to_end(run)
        empty.refresh()
        series = load_series(project.output_path("import_movies", "tilt_series"))
        assert empty.table.rowCount() == len(series) == 2
        for r, s in enumerate(series):
            assert empty.table.item(r, 0).text() == s.name
            assert empty.table.item(r, 1).text() == str(len(s.tilts))
            assert float(empty.table.item(r, 3).text()) == pytest.approx(s.geometry.pixel_size_A, abs=1e-3)
            assert float(empty.table.item(r, 5).text()) == pytest.approx(sum(t.dose_e_A2 for t in s.tilts), abs=0.05)
        empty.table.selectRow(1)
        with mrcfile.open(empty.framesums_path("TS_02")) as m:
            sums = np.asarray(m.data)
        viewer = empty.viewer
        assert viewer.isEnabled() and "TS_02" in viewer.title_label.text()
        np.testing.assert_array_equal(viewer.image_item.image, sums[viewer.current_index()])
        assert [round(series[1].tilts[i].tilt_deg) for i in viewer.stack_indices_in_order()] == [-6, -3, 0, 3, 6]


def test_generic_preview_is_a_metrics_table(qtbot, project_dir: Path, two_steps) -> None:  # type: ignore[no-untyped-def]
    rows = dict(flatten_metrics({"a": 1.23456789, "b": {"c": [1, 2, 3]}, "d": "x"}))
    assert rows == {"a": "1.23457", "b.c": "3 values, 1 to 3 (mean 2)", "d": "x"}
    with Project.open(project_dir) as project:
        # every registered step has a preview; those without their own get the metrics table
        for step_cls in registry.workflow():
            preview = make_preview(project, step_cls.id)
            qtbot.addWidget(preview)
            assert isinstance(preview, ImportPreview if step_cls.id == "import_movies" else MetricsPreview)


def test_volume_view_renders_offscreen(qtbot) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.widgets.volume_view import VolumeView, qt_can_host_opengl, render_volume

    z, y, x = np.mgrid[:32, :32, :32] - 15.5
    sphere = (np.sqrt(x**2 + y**2 + z**2) < 8).astype(np.float32)
    try:
        image = render_volume(sphere, method="mip", size_px=(96, 96))
    except RuntimeError as exc:
        pytest.skip(f"no EGL OpenGL on this machine: {exc}")
    assert image.shape == (96, 96, 4) and image.dtype == np.uint8
    centre = image[40:56, 40:56, :3].mean()
    corner = image[:12, :12, :3].mean()
    assert centre > 200 and corner < 10  # the bright sphere in the middle, black around it
    iso = render_volume(sphere, method="iso", threshold=0.5, size_px=(96, 96))
    assert iso[40:56, 40:56, :3].mean() > 50 and iso[:12, :12, :3].mean() < 10
    view = VolumeView(size_px=(96, 96))
    qtbot.addWidget(view)
    view.set_volume(sphere)
    if qt_can_host_opengl():  # X11/Xvfb: an interactive vispy canvas
        assert view.interactive and view.canvas is not None
    else:  # offscreen Qt: the view shows an image rendered through EGL
        assert not view.interactive and view.canvas is None
        assert view.last_image is not None and view.last_image.shape == (96, 96, 4)
        assert view.image_label.pixmap().width() == 96


def test_viewer_bins_noisy_frame_sums_for_display(qtbot) -> None:  # type: ignore[no-untyped-def]
    assert [auto_binning((n, n)) for n in (64, 255, 256, 512, 4096)] == [1, 1, 2, 4, 8]
    image = np.arange(24, dtype=np.float32).reshape(4, 6)
    np.testing.assert_allclose(bin_image(image, 2), [[3.5, 5.5, 7.5], [15.5, 17.5, 19.5]])
    rng = np.random.default_rng(3)
    stack = rng.poisson(3.0, (2, 512, 512)).astype(np.float32)
    viewer = TiltSeriesViewer()
    qtbot.addWidget(viewer)
    viewer.set_series(stack, np.array([0.0, 3.0]), np.array([0, 1]), np.array([3.0, 3.0]))
    assert viewer.display_binning() == 4
    shown = viewer.image_item.image
    assert shown.shape == (128, 128)
    np.testing.assert_allclose(shown, bin_image(stack[0], 4))
    assert viewer.image_item.mapRectToParent(viewer.image_item.boundingRect()).width() == 512  # same scene size
    viewer.bin_combo.setCurrentIndex(viewer.bin_combo.findData(1))
    assert viewer.image_item.image.shape == (512, 512)
    assert viewer.levels == percentile_levels(stack[0])
