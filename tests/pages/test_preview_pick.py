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
    assert "(automatic: median + k·MAD" in preview.threshold_label.text()
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
    # automatic again: the value is only known after a run; the line stays at the last run's threshold
    assert picked.params("pick").threshold is None and preview.line_value() == pytest.approx(value)
    assert "automatic from the next run on" in preview.threshold_label.text()
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    preview.refresh()
    assert preview.line_value() == pytest.approx(auto) and len(preview.picks()) == int((peaks >= auto).sum())
    assert "(automatic: median + k·MAD" in preview.threshold_label.text()
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
