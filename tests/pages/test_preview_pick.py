"""The picking page's preview (issue 7 items 1 and 6), on the simulator's tiny set run through ``pick``: the boxes
sit where particles.star says, the histogram is the one in scores.npz, and dragging the threshold line writes the
step's ``threshold`` parameter (the step becomes stale)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPoint, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtWidgets import QApplication

from tomoguide.compute.io.coords import read_relion_particles
from tomoguide.compute.io.mrc import read_mrc
from tomoguide.demo import demo_params
from tomoguide.pages.preview_pick import PickPreview, particles_near_slice
from tomoguide.pages.previews import make_preview
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.pick import centre_shapes
from tomoguide.steps.records import SeriesSet

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def picked(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    from tomoguide import synth

    proj = Project.create(tmp_path_factory.mktemp("pick_preview") / "proj",
                          params=demo_params(tiny_dataset / "data", synth.PRESETS["tiny"]))
    ids = registry.ids()
    for step in ids[: ids.index("pick") + 1]:
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    yield proj
    proj.close()


def _settle(widget, size=(1000, 900)) -> None:  # type: ignore[no-untyped-def]
    widget.resize(*size)
    widget.show()
    for _ in range(3):
        QApplication.processEvents()


def _truth_table(project: Project):  # type: ignore[no-untyped-def]
    """The picks read independently from the STAR file, with the tomogram entry."""
    sset, base = SeriesSet.load(project.output_path("reconstruct", "tomograms"))
    shapes = {s.name: tuple(reversed(s.info["shape_zyx"])) for s in sset.series}
    table = read_relion_particles(project.output_path("pick", "particles"), centre_shapes(shapes),
                                  sset.series[0].geometry.pixel_size_binned_A)
    return table, sset.series[0], base


def _overlay_xy(preview: PickPreview, axis: str) -> np.ndarray:
    pts = preview.overlays[axis].points()  # type: ignore[index]
    return np.array([[p.pos().x(), p.pos().y()] for p in pts]).reshape(-1, 2)


def _expected(xyz: np.ndarray, axis: str, index: int, box: float) -> np.ndarray:
    """Scene positions written out per pane (voxel i's centre at i + 0.5)."""
    depth, u, v = {"xy": (2, 0, 1), "xz": (1, 0, 2), "yz": (0, 2, 1)}[axis]
    near = np.abs(xyz[:, depth] - index) <= box / 2
    return np.column_stack([xyz[near, u] + 0.5, xyz[near, v] + 0.5])


def _sorted(a: np.ndarray) -> np.ndarray:
    return a[np.lexsort(a.T[::-1])] if len(a) else a


def test_picks_drawn_where_the_star_says(qtbot, picked: Project) -> None:  # type: ignore[no-untyped-def]
    preview = make_preview(picked, "pick")
    qtbot.addWidget(preview)
    assert isinstance(preview, PickPreview)
    _settle(preview)
    table, entry, base = _truth_table(picked)
    xyz = table.xyz_px[table.tomo_name == entry.name]
    n = int(picked.data.steps["pick"].metrics["series"][entry.name]["n_particles"])
    assert len(xyz) == n > 0
    np.testing.assert_allclose(preview.picks(), xyz)
    assert f"{n} picks" in preview.count_label.text()
    # the tomogram of the reconstruction is the one shown
    vol, _ = read_mrc(entry.path("tomogram", base))
    sv = preview.slices
    np.testing.assert_array_equal(sv.image("xy"), vol[sv.index("xy")])
    # a small display box, so that the slices hold only some of the picks; then go to a particle's slices
    picked.set_params("pick", {"box_px": 12})
    preview.draw_picks()
    box = 12.0
    p = xyz[0]
    sv.set_index("xy", int(round(p[2])))
    sv.set_index("xz", int(round(p[1])))
    sv.set_index("yz", int(round(p[0])))
    for axis in ("xy", "xz", "yz"):
        want = _expected(xyz, axis, sv.index(axis), box)
        got = _overlay_xy(preview, axis)
        assert 0 < len(want) < len(xyz) or axis != "xy"
        np.testing.assert_allclose(_sorted(got), _sorted(want))
        assert all(s.size() == box for s in preview.overlays[axis].points())  # type: ignore[index]
    # the particle under the XY cursor: its box is centred on it in every pane
    assert np.any(np.all(np.isclose(_overlay_xy(preview, "xy"), [p[0] + 0.5, p[1] + 0.5]), axis=1))
    assert np.any(np.all(np.isclose(_overlay_xy(preview, "xz"), [p[0] + 0.5, p[2] + 0.5]), axis=1))
    assert np.any(np.all(np.isclose(_overlay_xy(preview, "yz"), [p[2] + 0.5, p[1] + 0.5]), axis=1))
    # moving the slider redraws: far from every particle nothing is drawn
    empty_z = [z for z in range(vol.shape[0]) if np.all(np.abs(xyz[:, 2] - z) > box / 2)]
    if empty_z:
        sv.set_index("xy", empty_z[0])
        assert len(_overlay_xy(preview, "xy")) == 0
    # the helper on hand-made points
    rows, uv, dist = particles_near_slice(np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 20.0]]), "yz", 4, 4.0)
    assert rows.tolist() == [1] and uv.tolist() == [[20.5, 6.5]] and dist.tolist() == [1.0]  # YZ: depth x, (z, y)
    rows, uv, dist = particles_near_slice(np.array([[1.0, 2.0, 3.0], [5.0, 6.0, 20.0]]), "xz", 3, 2.0)
    assert rows.tolist() == [0] and uv.tolist() == [[1.5, 3.5]] and dist.tolist() == [1.0]


def _drag(widget, start: QPointF, end: QPointF) -> None:  # type: ignore[no-untyped-def]
    """A real left-button drag on a QGraphicsView's viewport (press, moves with the button held, release)."""
    vp = widget.viewport()
    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton
    mods = Qt.KeyboardModifier.NoModifier

    def send(kind: QEvent.Type, pos: QPointF, button: Qt.MouseButton, buttons: Qt.MouseButton) -> None:
        glob = QPointF(vp.mapToGlobal(QPoint(int(pos.x()), int(pos.y()))))
        QApplication.sendEvent(vp, QMouseEvent(kind, pos, glob, button, buttons, mods))
        QApplication.processEvents()

    send(QEvent.Type.MouseButtonPress, start, left, left)
    for t in np.linspace(0.1, 1.0, 8):
        send(QEvent.Type.MouseMove, start + (end - start) * float(t), none, left)
    send(QEvent.Type.MouseButtonRelease, end, left, none)


def test_histogram_and_threshold_drag(qtbot, picked: Project) -> None:  # type: ignore[no-untyped-def]
    picked.set_params("pick", {"threshold": None})
    if picked.data.steps["pick"].status != "done":  # the other test changed the box size
        assert run_to_end(StepRun(picked, "pick")).status == "done"
    preview = make_preview(picked, "pick")
    qtbot.addWidget(preview)
    _settle(preview)
    assert isinstance(preview, PickPreview)
    entry_name = preview.series_combo.currentText()
    with np.load(picked.output_path("pick", "scores")) as z:
        counts, edges, peaks = (z[f"{entry_name}_{k}"] for k in ("hist_counts", "hist_edges", "peak_scores"))
    auto = float(picked.data.steps["pick"].metrics["series"][entry_name]["threshold"])
    # the bars are the npz histogram; coloured at or above the (automatic) threshold, grey below
    assert preview.line_value() == pytest.approx(auto)
    above, below = preview.bar_heights()
    np.testing.assert_array_equal(above + below, counts)
    centres = 0.5 * (edges[:-1] + edges[1:])
    np.testing.assert_array_equal(above > 0, (centres >= auto) & (counts > 0))
    np.testing.assert_array_equal(below > 0, (centres < auto) & (counts > 0))
    np.testing.assert_allclose(preview.above_bars.opts["x0"], edges[:-1][centres >= auto])
    assert f"{int((peaks >= auto).sum())} of {len(peaks)} peaks" in preview.threshold_label.text()
    assert "(automatic: noise model" in preview.threshold_label.text()
    # a real mouse drag of the line to a lower score: the parameter is written, the step is stale
    plot = preview.plot
    vb = plot.getPlotItem().vb
    target = float(0.5 * (auto + np.median(peaks)))

    def widget_pos(x: float) -> QPointF:
        y = 0.5 * float(counts.max())
        return QPointF(plot.mapFromScene(vb.mapViewToScene(QPointF(x, y))))

    assert picked.data.steps["pick"].status == "done"
    with qtbot.waitSignal(preview.marks_changed, timeout=2000):
        _drag(plot, widget_pos(auto), widget_pos(target))
    value = picked.params("pick").threshold
    assert value is not None and value == pytest.approx(target, abs=2 * (edges[1] - edges[0]))
    assert picked.data.steps["pick"].status == "stale"
    assert "run again" in preview.note.text() and "run the step again" in preview.threshold_label.text()
    above, below = preview.bar_heights()
    np.testing.assert_array_equal(above > 0, (centres >= value) & (counts > 0))
    assert f"{int((peaks >= value).sum())} of {len(peaks)} peaks" in preview.threshold_label.text()
    # running the step again with it: the picks are the peaks above it, and the page shows them
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    preview.refresh()
    assert len(preview.picks()) == int((peaks >= value).sum()) > int((peaks >= auto).sum())
    assert f"{len(preview.picks())} picks" in preview.count_label.text()
    assert preview.line_value() == pytest.approx(value) and "run" not in preview.threshold_label.text()
    # the line released at a set value writes exactly that (rounded to 4 decimals); "Automatic" writes None
    preview.threshold_line.setValue(0.4567891)
    with qtbot.waitSignal(preview.marks_changed, timeout=1000):
        preview.threshold_line.sigPositionChangeFinished.emit(preview.threshold_line)
    assert picked.params("pick").threshold == 0.4568
    with qtbot.waitSignal(preview.marks_changed, timeout=1000):
        preview.auto_button.click()
    # automatic again: the project restores the kept automatic run (its picks and threshold are shown); without
    # one the value is only known after a run and the line stays at the last run's threshold
    assert picked.params("pick").threshold is None
    if picked.data.steps["pick"].status != "done":
        assert preview.line_value() == pytest.approx(value)
        assert "automatic from the next run on" in preview.threshold_label.text()
        assert run_to_end(StepRun(picked, "pick")).status == "done"
        preview.refresh()
    assert preview.line_value() == pytest.approx(auto) and len(preview.picks()) == int((peaks >= auto).sum())
    assert "(automatic: noise model" in preview.threshold_label.text()
    # on the step's page: moving the line updates the form and the status (stale: run again)
    from tomoguide.pages.step_page import StepPage
    from tomoguide.steps.pick import Pick

    page = StepPage(picked, Pick)
    qtbot.addWidget(page)
    assert isinstance(page.preview, PickPreview)
    page.preview.threshold_line.setValue(0.3333)
    page.preview.threshold_line.sigPositionChangeFinished.emit(page.preview.threshold_line)
    assert page.form.values()["threshold"] == pytest.approx(0.3333)
    assert "stale" in page.status_label.text().lower() and "run it again" in page.status_label.text()
    # a new preview reads the saved value
    picked.set_params("pick", {"threshold": 0.25})
    again = make_preview(picked, "pick")
    qtbot.addWidget(again)
    assert isinstance(again, PickPreview) and again.line_value() == pytest.approx(0.25)
    picked.set_params("pick", {"threshold": None})


def test_pick_preview_before_a_run(qtbot, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with Project.create(tmp_path / "p", params={}) as proj:
        preview = make_preview(proj, "pick")
        qtbot.addWidget(preview)
        assert isinstance(preview, PickPreview)
        assert "No results yet" in preview.note.text()
        assert preview.series_combo.count() == 0 and not preview.slices.isEnabled()
        assert preview.histogram() is None and preview.picks().shape == (0, 3)


# ---------------------------------------------------------------------------------------------------------------
# surface-model and manual picking by clicking in the slices
# ---------------------------------------------------------------------------------------------------------------

SHOTS = Path("/tmp/pick_shots")


def _click_voxel(qtbot, preview: PickPreview, axis: str, u: float, v: float) -> None:  # type: ignore[no-untyped-def]
    """A real left click on pane ``axis`` at scene point (u, v) (voxel i's centre at i + 0.5)."""
    pane = preview.slices.panes[axis]  # type: ignore[index]
    scene = pane.view.mapViewToScene(QPointF(u, v))
    pos = pane.graphics.mapFromScene(scene)
    qtbot.mouseClick(pane.graphics.viewport(), Qt.MouseButton.LeftButton, pos=pos)
    QApplication.processEvents()


def _geometry(project: Project) -> tuple[str, np.ndarray, float]:
    sset, _ = SeriesSet.load(project.output_path("reconstruct", "tomograms"))
    s = sset.series[0]
    return s.name, np.array(list(reversed(s.info["shape_zyx"])), dtype=float), float(s.geometry.pixel_size_binned_A)


def test_surface_and_manual_picking_by_clicking(qtbot, picked: Project) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.pages.step_page import StepPage
    from tomoguide.steps.pick import Pick

    name, shape, voxel = _geometry(picked)
    centre_px = (shape - 1) / 2
    page = StepPage(picked, Pick)
    qtbot.addWidget(page)
    page.resize(1500, 950)
    page.show()
    QApplication.processEvents()
    preview = page.preview
    assert isinstance(preview, PickPreview)
    assert not preview.click_box.isVisible()  # template matching: no clicking
    page.form.set_value("method", "surface")  # as the trainee chooses it in the form
    QApplication.processEvents()
    assert picked.params("pick").method == "surface" and preview.click_box.isVisible()
    for hidden in ("surface_points", "manual_points"):  # edited here, not in the form
        f = page.form.fields[hidden]
        assert not f.row.isVisible() and not f.label.isVisible() and not f.message.isVisible()
    assert not preview.hist_box.isVisible()
    # nothing clicked yet: the page says what to do and refuses to run
    assert "no contour points yet" in page.issues_label.text() and not page.run_button.isEnabled()
    sv = preview.slices
    # a vesicle of radius 0.3 × the width about (cx, cy, cz): its outline clicked on three XY slices
    radius = 0.3 * shape[0]
    c = np.array([centre_px[0] - 0.05 * shape[0], centre_px[1] + 0.05 * shape[1], centre_px[2]])
    slices_z = [int(c[2]) - 4, int(c[2]), int(c[2]) + 3]
    intended = []
    for k, z in enumerate(slices_z):
        sv.set_index("xy", z)
        r = np.sqrt(radius**2 - (z - c[2]) ** 2)
        for t in np.linspace(0, 2 * np.pi, 7, endpoint=False) + 0.4 * k:
            x, y = c[0] + r * np.cos(t), c[1] + r * np.sin(t)
            _click_voxel(qtbot, preview, "xy", x + 0.5, y + 0.5)
            intended.append([x, y, z])
    rows = picked.params("pick").surface_points
    assert len(rows) == 21 and all(r[0] == name and r[4] == 0 for r in rows)
    got_px = np.array([r[1:4] for r in rows]) / voxel + centre_px  # stored in Å from the tomogram centre
    np.testing.assert_allclose(got_px[:, 2], np.array(intended)[:, 2])  # z = the slice shown, exactly
    np.testing.assert_allclose(got_px[:, :2], np.array(intended)[:, :2], atol=1.0)  # within a screen pixel
    assert picked.data.steps["pick"].status == "stale"  # the clicks changed the parameters
    assert page.form.values()["surface_points"] == [list(r) for r in rows]  # the page's form kept in step
    assert "Ready to run" in page.issues_label.text() and page.run_button.isEnabled()
    # on the last slice: its 7 dots, and the fitted outline passes through them
    dots = np.array([[p.pos().x(), p.pos().y()] for p in preview.contour_marks["xy"].points()])
    assert len(dots) == 7
    ox, oy = preview.outlines["xy"].getData()
    outline = np.column_stack([ox, oy])
    outline = outline[np.isfinite(outline).all(axis=1)]
    assert len(outline) > 50
    gap = np.min(np.linalg.norm(dots[:, None, :] - outline[None, :, :], axis=2), axis=1)
    assert gap.max() < 1.5, gap
    fit = preview.fits()[(name, 0)]
    assert fit.kind == "sphere" and abs(fit.axes[0] / voxel - radius) < 1.0
    np.testing.assert_allclose(fit.centre / voxel + centre_px, c, atol=1.0)
    info = preview.click_info.text()
    assert "Object 1: 21 points on 3 slices" in info and "sphere fitted" in info
    # the outline in the XZ pane too (the slice through the vesicle's centre)
    sv.set_index("xz", int(round(c[1])))
    assert len(preview.outlines["xz"].getData()[0]) > 50
    # a click on a dot removes it; clicking there again adds it back
    last = got_px[-1]
    _click_voxel(qtbot, preview, "xy", last[0] + 0.5, last[1] + 0.5)
    assert len(picked.params("pick").surface_points) == 20
    _click_voxel(qtbot, preview, "xy", last[0] + 0.5, last[1] + 0.5)
    assert len(picked.params("pick").surface_points) == 21
    # a second object: three clicks, "Remove last" and "Clear" act on it only
    preview.new_object_button.click()
    assert preview.current_object() == 1
    for dx in (-3.0, 0.0, 3.0):
        _click_voxel(qtbot, preview, "xy", 0.12 * shape[0] + dx, 0.12 * shape[1] + abs(dx))
    assert sum(r[4] == 1 for r in picked.params("pick").surface_points) == 3
    preview.undo_button.click()
    assert sum(r[4] == 1 for r in picked.params("pick").surface_points) == 2
    preview.clear_button.click()
    assert [list(r) for r in picked.params("pick").surface_points] == [list(r) for r in rows]
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.grab().save(str(SHOTS / "surface_clicked.png"))
    # run from the page: the particles lie on the clicked sphere, within the clicked slices
    page.run_button.click()
    assert page.wait_for_run(120) and picked.data.steps["pick"].status == "done", page.error_label.text()
    picks = preview.picks()
    assert len(picks) > 10
    d = np.linalg.norm((picks - c) * [1, 1, 1], axis=1)
    np.testing.assert_allclose(d, radius, rtol=0.04)
    assert picks[:, 2].min() >= min(slices_z) - 1e-6 and picks[:, 2].max() <= max(slices_z) + 1e-6
    assert f"{len(picks)} picks" in preview.count_label.text()
    # each pick's orientation line points away from the vesicle's centre (the outward normal, seen in XY)
    lx, ly = preview.axis_lines["xy"].getData()
    seg = np.column_stack([lx, ly]).reshape(-1, 2, 2)
    assert len(seg) == len(preview.overlays["xy"].points()) > 0
    out = seg[:, 0] - (c[:2] + 0.5)
    along = seg[:, 1] - seg[:, 0]
    cosine = np.sum(out * along, axis=1) / np.linalg.norm(out, axis=1) / np.linalg.norm(along, axis=1)
    assert cosine.min() > 0.95
    page.grab().save(str(SHOTS / "surface_picked.png"))

    # manual picking: click to add three particles, click on one again to remove it
    page.form.set_value("method", "manual")
    QApplication.processEvents()
    assert "Manual picking" in preview.click_info.text() and not preview.object_spin.isVisible()
    z0 = int(c[2])
    sv.set_index("xy", z0)
    targets = [(0.25, 0.3), (0.6, 0.7), (0.75, 0.25)]
    for fx, fy in targets:
        _click_voxel(qtbot, preview, "xy", fx * shape[0] + 0.5, fy * shape[1] + 0.5)
    manual = picked.params("pick").manual_points
    assert len(manual) == 3 and all(r[0] == name for r in manual)
    np.testing.assert_allclose(np.array([r[1:] for r in manual]) / voxel + centre_px,
                               [[fx * shape[0], fy * shape[1], z0] for fx, fy in targets], atol=1.0)
    assert len(preview.manual_marks["xy"].points()) == 3
    # a click near (within a particle radius of) the second pick removes it
    _click_voxel(qtbot, preview, "xy", 0.6 * shape[0] + 1.5, 0.7 * shape[1] + 0.5)
    manual = picked.params("pick").manual_points
    assert len(manual) == 2 and len(preview.manual_marks["xy"].points()) == 2
    page.grab().save(str(SHOTS / "manual_clicked.png"))
    page.run_button.click()
    assert page.wait_for_run(60) and picked.data.steps["pick"].status == "done", page.error_label.text()
    np.testing.assert_allclose(preview.picks(), np.array([r[1:] for r in manual]) / voxel + centre_px, atol=1e-3)
    # saved and reopened: the project file holds the clicks
    reopened = Project.open(picked.dir, readonly=True)
    assert reopened.params("pick").manual_points == picked.params("pick").manual_points
    assert reopened.params("pick").surface_points == picked.params("pick").surface_points
    assert len(reopened.params("pick").surface_points) == 21
    picked.set_params("pick", {"method": "template", "surface_points": [], "manual_points": []})
