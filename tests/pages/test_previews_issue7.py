"""Previews of the averaging steps (issue 7 item 6): the particle gallery and one particle's slices and weights
(extract), and the map, FSC, angular distribution and history of an average (initial_model, refine, ...),
checked on small outputs written here with the steps' records (a shell map with bumps, its noisy half maps and
their FSC computed with tomoguide.compute.fsc, random poses, a wedge-shaped weight volume)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PySide6.QtCore import QPoint, Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QApplication

from tomoguide.compute.euler import euler_to_matrix, matrix_to_euler
from tomoguide.compute.fsc import fsc, lowpass, resolution_at, soft_sphere_mask
from tomoguide.compute.io.mrc import write_mrc
from tomoguide.compute.io.star import write_particles_star
from tomoguide.compute.symmetry import symmetry_matrices
from tomoguide.pages.preview_average import AveragePreview, render_average_figures
from tomoguide.pages.preview_extract import ExtractPreview
from tomoguide.pages.previews import make_preview
from tomoguide.project import Project, StepState
from tomoguide.steps.average_records import AverageRecord, FSCCurve, ParticleStack
from tomoguide.widgets.angdist import (
    AngularDistribution,
    angular_histogram,
    asu_bins,
    direction_angles,
    fold_directions,
    view_directions,
)
from tomoguide.widgets.fsc_plot import FscPlot, ResolutionAxis, resolution_tick_label
from tomoguide.widgets.map_view import (
    SIGMA_STEP,
    MapView,
    central_slices,
    default_level,
    enclosed_volume_A3,
    map_stats,
)
from tomoguide.widgets.particle_gallery import ParticleGallery, thumbnail_uint8

pytestmark = pytest.mark.gui

SHOTS = Path("/tmp/pages_shots")
BOX = 40
VOXEL_A = 6.0


def _settle(widget, size=(1000, 760)) -> None:  # type: ignore[no-untyped-def]
    widget.resize(*size)
    widget.show()
    for _ in range(3):
        QApplication.processEvents()


def _shot(widget, name: str) -> None:  # type: ignore[no-untyped-def]
    SHOTS.mkdir(parents=True, exist_ok=True)
    assert widget.grab().save(str(SHOTS / name))


def shell_map(box: int = BOX, r_in: float = 9.0, r_out: float = 13.0, bump_px: float = 3.0) -> np.ndarray:
    """A hollow shell (radii in px about the centre ``box // 2``) with six Gaussian bumps on its outside along ±x,
    ±y, ±z (octahedral), smoothed; float32 (box, box, box)."""
    from scipy.ndimage import gaussian_filter

    c = np.arange(box) - box // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    vol = ((r >= r_in) & (r <= r_out)).astype(np.float64)
    for axis in np.vstack([np.eye(3), -np.eye(3)]):
        p = axis * (r_out + 1.5)
        vol += 1.5 * np.exp(-((x - p[0]) ** 2 + (y - p[1]) ** 2 + (z - p[2]) ** 2) / (2 * bump_px**2))
    return gaussian_filter(vol, 1.0).astype(np.float32)


def random_rotations(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) RELION Euler angles (°) of uniformly random rotations (from random unit quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.stack([np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
                  np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
                  np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1)], 1)
    return matrix_to_euler(m)


def _register(project: Project, step_id: str, output: str, folder: Path) -> None:
    """Record ``folder`` as the output of a finished ``step_id`` (kept parameters when the step is registered)."""
    st = project.data.steps.get(step_id) or StepState()
    st.status = "done"
    st.outputs = {output: project.relpath(folder)}
    st.finished = "2026-11-25T18:00:00"
    project.data.steps[step_id] = st
    project.save()


def write_average(folder: Path, rng: np.random.Generator, n_particles: int = 300) -> AverageRecord:
    """An average folder: map, noisy half maps, mask, their FSC (real), random poses, a 3-iteration history."""
    folder.mkdir(parents=True, exist_ok=True)
    truth = shell_map()
    noise = 0.6 * float(truth.std())
    h1 = truth + rng.normal(0, noise, truth.shape).astype(np.float32)
    h2 = truth + rng.normal(0, noise, truth.shape).astype(np.float32)
    mask = soft_sphere_mask(BOX, 17, 3)
    freqs, f_unmasked = fsc(h1, h2, voxel_A=VOXEL_A)
    _, f_masked = fsc(h1, h2, voxel_A=VOXEL_A, mask=mask)
    res = resolution_at(f_masked, freqs)
    merged = lowpass(0.5 * (h1 + h2), res, VOXEL_A)  # as the steps write it: low-passed to the resolution
    for name, vol in (("map", merged), ("half1", h1), ("half2", h2), ("mask", mask)):
        write_mrc(folder / f"{name}.mrc", vol, VOXEL_A)
    ang = random_rotations(n_particles, rng)
    df = pd.DataFrame({"rlnTomoName": ["TS_01"] * n_particles,
                       "rlnCenteredCoordinateXAngst": rng.uniform(-500, 500, n_particles),
                       "rlnCenteredCoordinateYAngst": rng.uniform(-500, 500, n_particles),
                       "rlnCenteredCoordinateZAngst": rng.uniform(-100, 100, n_particles),
                       "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2],
                       "rlnRandomSubset": 1 + np.arange(n_particles) % 2})
    write_particles_star(folder / "particles.star", df, {"rlnTomoTiltSeriesPixelSize": 1.5})
    rec = AverageRecord(voxel_A=VOXEL_A, box_px=BOX, symmetry="O", resolution_A=res,
                        fsc=FSCCurve(freq_per_A=freqs.tolist(), fsc_unmasked=f_unmasked.tolist(),
                                     fsc_masked=f_masked.tolist(), resolution_A=res),
                        history=[{"iteration": 1, "resolution_A": 40.0, "angular_step_deg": 7.5},
                                 {"iteration": 2, "resolution_A": 25.0, "angular_step_deg": 3.7},
                                 {"iteration": 3, "resolution_A": res, "angular_step_deg": 1.8, "converged": True}])
    rec.save(folder)
    return rec


def wedge_weights(box: int, max_tilt_deg: float = 60.0) -> np.ndarray:
    """Centred Fourier weights (box³) of a ±max_tilt single-axis (Y) tilt series: 1 where |kz| ≤ tan(max)·|kx|
    (and at k = 0), 0 in the missing wedge around kz."""
    c = np.arange(box) - box // 2
    kz, _, kx = np.meshgrid(c, c, c, indexing="ij")
    w = (np.abs(kz) <= np.tan(np.deg2rad(max_tilt_deg)) * np.abs(kx)).astype(np.float32)
    w[kz == 0] = 1.0
    return w


def write_particles(folder: Path, rng: np.random.Generator) -> tuple[ParticleStack, pd.DataFrame, np.ndarray]:
    """An extraction folder: 5 particles of TS_01 and 3 of TS_02 (24³ voxels), subtomos, weights, gallery."""
    b, names = 24, ["TS_01"] * 5 + ["TS_02"] * 3
    (folder / "subtomos").mkdir(parents=True, exist_ok=True)
    c = np.arange(b) - b // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    gallery = np.zeros((len(names), b, b), np.float32)
    rows = []
    for i, t in enumerate(names):
        shift = np.array([i - 4, 0, 0])  # each particle's blob off-centre by a different x
        data = np.exp(-((x - shift[0]) ** 2 + y**2 + z**2) / 8.0).astype(np.float32)
        data += rng.normal(0, 0.05, data.shape).astype(np.float32)
        pname = f"{t}_{i + 1:06d}"
        write_mrc(folder / "subtomos" / f"{pname}_data.mrc", data, 12.0)
        write_mrc(folder / "subtomos" / f"{pname}_weights.mrc", wedge_weights(b).astype(np.float16), 12.0)
        gallery[i] = data[b // 2 - 6:b // 2 + 6].mean(axis=0)
        rows.append({"rlnTomoName": t, "rlnTomoParticleName": f"{t}/{i + 1}",
                     "rlnCenteredCoordinateXAngst": 10.0 * i, "rlnCenteredCoordinateYAngst": -5.0 * i,
                     "rlnCenteredCoordinateZAngst": 1.0 * i, "rlnAngleRot": 0.0, "rlnAngleTilt": 0.0,
                     "rlnAnglePsi": 0.0, "rlnRandomSubset": 1 + i % 2,
                     "rlnImageName": f"subtomos/{pname}_data.mrc", "rlnCtfImage": f"subtomos/{pname}_weights.mrc"})
    df = pd.DataFrame(rows)
    write_particles_star(folder / "particles.star", df, {"rlnTomoTiltSeriesPixelSize": 2.0})
    write_mrc(folder / "gallery.mrc", gallery, 12.0, is_stack=True)
    rec = ParticleStack(voxel_A=12.0, box_px=b, binning=6, n_particles=len(names), tomo_names=["TS_01", "TS_02"])
    rec.save(folder)
    return rec, df, gallery


@pytest.fixture
def project(tmp_path: Path) -> Project:
    proj = Project.create(tmp_path / "proj")
    yield proj
    proj.close()


# ---------------------------------------------------------------------------------------------------------------
# widgets
# ---------------------------------------------------------------------------------------------------------------

def test_map_view_slices_default_level_and_slider(qtbot) -> None:  # type: ignore[no-untyped-def]
    vol = shell_map()
    mean, sd = map_stats(vol)
    assert default_level(vol) == pytest.approx(mean + 1.5 * sd)
    # the level that encloses a molecular mass: the enclosed volume is that mass × 1.21 Å³/Da (to one voxel)
    noisy = vol + np.random.default_rng(1).normal(0, 1e-3, vol.shape).astype(np.float32)  # no tied voxels
    level = default_level(noisy, voxel_A=VOXEL_A, mass_kDa=2000.0)
    assert enclosed_volume_A3(noisy, level, VOXEL_A) == pytest.approx(2000e3 * 1.21, abs=VOXEL_A**3)
    view = MapView(size_px=(200, 200))
    qtbot.addWidget(view)
    view.set_map(vol, voxel_A=VOXEL_A, name="shell")
    _settle(view, (520, 700))
    assert "40×40×40 voxels" in view.title.text() and "6.00 Å/voxel" in view.title.text()
    s = central_slices(vol)
    np.testing.assert_array_equal(view.slices.image("xy"), vol[BOX // 2])
    np.testing.assert_array_equal(view.slices.image("xz"), vol[:, BOX // 2, :])
    np.testing.assert_array_equal(view.slices.image("yz"), vol[:, :, BOX // 2].T)
    assert s["xy"].shape == (BOX, BOX)
    iso = view.iso
    assert iso.level() == pytest.approx(mean + 1.5 * sd, rel=1e-6)
    assert iso.slider.value() == round(1.5 / SIGMA_STEP)
    assert "level 1.50 σ" in iso.caption.text()
    nm3 = enclosed_volume_A3(vol, iso.level(), VOXEL_A) / 1e3
    assert f"encloses {nm3:,.0f} nm³" in iso.caption.text()
    _shot(view, "map_view.png")
    image_low = iso.render_image()
    if image_low is None:
        pytest.skip(f"no OpenGL to render the isosurface here: {iso.render_error}")
    # the slider moves the isosurface level; a higher level leaves only the bumps: fewer lit pixels
    with qtbot.waitSignal(iso.level_changed):
        iso.slider.setValue(round(3.0 / SIGMA_STEP))
    assert iso.level() == pytest.approx(mean + 3.0 * sd, rel=1e-6)
    assert iso.level_sigma() == pytest.approx(3.0)
    image_high = iso.render_image()
    assert image_high is not None and image_high.shape == image_low.shape
    lit_low = np.mean(image_low[..., :3].max(axis=-1) > 20)
    lit_high = np.mean(image_high[..., :3].max(axis=-1) > 20)
    assert 0.02 < lit_high < 0.85 * lit_low
    _shot(view, "map_view_high_level.png")


def test_fsc_plot_marks_the_resolution_where_the_curve_crosses(qtbot) -> None:  # type: ignore[no-untyped-def]
    assert [resolution_tick_label(v) for v in (0.0, 0.025, 0.1, 0.25, -0.01)] == ["∞", "40", "10.0", "4.0", ""]
    assert ResolutionAxis(orientation="bottom").tickStrings([0.0, 0.05, 0.2], 1.0, 0.05) == ["∞", "20", "5.0"]
    freqs = np.arange(21) / (40 * 4.0)  # box 40 of 4 Å: Nyquist 8 Å
    masked = 1.0 / (1.0 + np.exp((freqs - 0.07) / 0.008))
    unmasked = masked**1.5
    res = resolution_at(masked, freqs)
    plot = FscPlot()
    qtbot.addWidget(plot)
    plot.set_curves(freqs, masked=masked, unmasked=unmasked, resolution_A=res)
    _settle(plot, (640, 420))
    x, y = plot.curve("masked")
    np.testing.assert_allclose(x, freqs)
    np.testing.assert_allclose(y, masked)
    f_line = plot.resolution_line_frequency()
    assert f_line == pytest.approx(1.0 / res)
    assert np.interp(f_line, x, y) == pytest.approx(0.143, abs=1e-9)  # the curve crosses 0.143 there
    assert plot.threshold_line.value() == pytest.approx(0.143)
    assert f"{res:.2f} Å" in plot.resolution_label.text() and "Nyquist 8.00 Å" in plot.resolution_label.text()
    assert not plot.curves["corrected"].isVisible() and plot.curves["unmasked"].isVisible()
    assert plot.legend_names() == ["masked", "unmasked"] and "unmasked" in plot.legend_label.text()
    assert plot.resolution_line_text() == f"{res:.1f} Å"
    _shot(plot, "fsc_plot.png")
    with pytest.raises(ValueError, match="values for 21 frequencies"):
        plot.set_curves(freqs, masked=masked[:-1])


def test_angular_distribution_equal_area_and_folding(qtbot) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    ang = random_rotations(20000, rng)
    # directions from the angles: the third row of RELION's matrix
    np.testing.assert_allclose(view_directions(ang[:50, 0], ang[:50, 1]), euler_to_matrix(ang[:50])[:, 2, :],
                               atol=1e-12)
    # uniform orientations fill the equal-area bins evenly (Poisson scatter only)
    counts, rot_edges, cos_edges = angular_histogram(ang[:, 0], ang[:, 1], rot_bins=18, cos_bins=12)
    assert counts.sum() == 20000 and counts.shape == (12, 18)
    expected = 20000 / counts.size
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)
    # folding: every symmetry mate of a direction folds onto the same one
    d = view_directions(ang[:200, 0], ang[:200, 1])
    mats = symmetry_matrices("O")
    folded = fold_directions(d, "O")
    for k in (1, 7, 23):
        np.testing.assert_allclose(fold_directions(d @ mats[k].T, "O"), folded, atol=1e-9)
    # uniform directions folded into O's asymmetric unit cover about 1/24 of the sphere
    counts_f, _, _ = angular_histogram(ang[:, 0], ang[:, 1], symmetry="O")
    occupied = np.count_nonzero(counts_f) / counts_f.size
    assert 0.6 / 24 < occupied < 1.6 / 24
    # the bins drawn as the asymmetric unit: 1/24 of the sphere, holding (nearly) all the folded directions
    inside = asu_bins("O", np.linspace(-180, 180, 73), np.linspace(-1, 1, 37))
    assert inside.mean() == pytest.approx(1 / 24, rel=0.15)
    assert counts_f[inside].sum() > 0.9 * counts_f.sum()
    # the widget: particles all seen along +x (rot 0, tilt 90) -> the bin at rot 0, tilt 90; folded with O onto
    # the 4-fold along z (tilt 0, the top row)
    widget = AngularDistribution()
    qtbot.addWidget(widget)
    widget.set_angles(np.zeros(40), np.full(40, 90.0), symmetry="C1")
    _settle(widget, (600, 360))
    assert widget.counts.sum() == 40 and not widget.fold_box.isEnabled()
    i, j = np.unravel_index(np.argmax(widget.counts), widget.counts.shape)
    assert widget.counts[i, j] == 40
    assert _in_cos_bin(i, 0.0, widget.counts.shape[0]) and _in_rot_bin(j, 0.0, widget.counts.shape[1])
    widget.set_angles(np.zeros(40), np.full(40, 90.0), symmetry="O")
    assert widget.folded() and widget.counts[-1].sum() == 40  # top row: cos(tilt) near 1
    rot, tilt = direction_angles(fold_directions(view_directions([0.0], [90.0]), "O"))
    assert tilt[0] == pytest.approx(0.0, abs=1e-9)
    widget.fold_box.setChecked(False)
    assert widget.counts[i, j] == 40
    widget.set_angles(ang[:, 0], ang[:, 1], symmetry="O")
    assert "20000 particles" in widget.caption.text() and "asymmetric unit of O" in widget.caption.text()
    _shot(widget, "angdist_folded.png")


def _in_cos_bin(row: int, cos_value: float, n: int) -> bool:
    edges = np.linspace(-1, 1, n + 1)
    return bool(edges[row] <= cos_value <= edges[row + 1])


def _in_rot_bin(col: int, rot_deg: float, n: int) -> bool:
    edges = np.linspace(-180, 180, n + 1)
    return bool(edges[col] <= rot_deg <= edges[col + 1])


def test_particle_gallery_thumbnails_names_and_click(qtbot) -> None:  # type: ignore[no-untyped-def]
    im = np.zeros((16, 16), np.float32)
    im[:, :8] = 1.0  # bright left half
    u8 = thumbnail_uint8(im)
    assert u8[:, :8].min() == 255 and u8[:, 8:].max() == 0
    assert np.all(thumbnail_uint8(np.ones((4, 4))) == 128)
    stack = np.stack([im, im[:, ::-1], im.T])
    gallery = ParticleGallery(thumb_px=48)
    qtbot.addWidget(gallery)
    gallery.set_images(stack, ["a/1", "a/2", "b/3"])
    _settle(gallery, (400, 300))
    assert gallery.count() == 3 and [gallery.tooltip(i) for i in range(3)] == ["a/1", "a/2", "b/3"]
    img: QImage = gallery.thumbnail(1).toImage()
    assert img.width() == 48
    assert _pixel_value(img, 40, 24) > 200 and _pixel_value(img, 6, 24) < 50  # the mirrored one: bright right
    rect = gallery.list.visualItemRect(gallery.list.item(2))
    with qtbot.waitSignal(gallery.particle_selected) as sig:
        qtbot.mouseClick(gallery.list.viewport(), Qt.MouseButton.LeftButton, pos=QPoint(rect.center()))
    assert sig.args == [2]
    with pytest.raises(ValueError, match="3 images but 2 names"):
        gallery.set_images(stack, ["x", "y"])


def _pixel_value(img: QImage, x: int, y: int) -> int:
    return img.pixelColor(x, y).value()


# ---------------------------------------------------------------------------------------------------------------
# pages
# ---------------------------------------------------------------------------------------------------------------

def test_extract_preview_gallery_table_and_particle(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(2)
    folder = project.dir / "runs" / "extract"
    rec, df, gallery = write_particles(folder, rng)
    empty = make_preview(project, "extract_fine")  # nothing recorded: an empty page, no error
    qtbot.addWidget(empty)
    assert isinstance(empty, ExtractPreview) and empty.gallery.count() == 0 and "No results" in empty.note.text()
    _register(project, "extract", "particles", folder)
    preview = make_preview(project, "extract")
    qtbot.addWidget(preview)
    assert isinstance(preview, ExtractPreview)
    _settle(preview)
    # the table: particles and half sets per tomogram, the voxel size and the box
    t = preview.table
    got = [[t.item(r, c).text() for c in range(t.columnCount())] for r in range(t.rowCount())]
    assert got == [["TS_01", "5", "3 / 2"], ["TS_02", "3", "1 / 2"]]
    text = preview.summary.text()
    assert "8 particles" in text and "binning 6" in text and "box 24 px of 12.00 Å" in text
    # the gallery: one thumbnail per particle, named as in particles.star
    assert preview.gallery.count() == len(gallery) == 8
    assert [preview.gallery.tooltip(i) for i in range(8)] == list(df["rlnTomoParticleName"])
    # a particle chosen in the gallery: its density's and weights' central slices
    preview.gallery.select(6)
    assert preview.shown_index == 6 and "TS_02/7" in preview.particle_title.text()
    assert "(60, -30, 6) Å" in preview.particle_title.text()
    from tomoguide.compute.io.mrc import read_mrc

    data, _ = read_mrc(folder / df["rlnImageName"][6])
    np.testing.assert_array_equal(preview.data_slices.image("xy"), data[12])
    np.testing.assert_array_equal(preview.data_slices.image("xz"), data[:, 12, :])
    xz = preview.weight_slices.image("xz")  # rows kz, columns kx: empty wedge around the kz axis
    assert xz[12, 12] == 1.0 and xz[12, 0] == 1.0 and xz[12, 20] == 1.0
    assert xz[0, 12] == 0.0 and xz[22, 13] == 0.0 and xz[2, 12:].sum() < xz[12, 12:].sum()
    _shot(preview, "extract_preview.png")


def test_average_preview_map_fsc_angles_history(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(4)
    folder = project.dir / "runs" / "refine"
    rec = write_average(folder, rng)
    _register(project, "refine", "average", folder)
    preview = make_preview(project, "refine")
    qtbot.addWidget(preview)
    assert isinstance(preview, AveragePreview)
    _settle(preview, (1100, 800))
    res = rec.resolution_A
    assert res is not None and 2 * VOXEL_A < res < 40
    assert f"resolution <b>{res:.2f} Å</b>" in preview.summary.text()
    assert "symmetry O" in preview.summary.text() and "300 particles" in preview.summary.text()
    # the FSC: the record's curves; the resolution line where the masked curve crosses 0.143
    plot = preview.fsc_plot
    assert plot.resolution_A == pytest.approx(res) and f"{res:.2f} Å" in plot.resolution_label.text()
    x, y = plot.curve("masked")
    np.testing.assert_allclose(y, rec.fsc.fsc_masked)  # type: ignore[union-attr]
    f_line = plot.resolution_line_frequency()
    assert f_line == pytest.approx(1.0 / res)
    k = int(np.searchsorted(x, f_line))
    assert y[k - 1] >= 0.143 > y[k] and np.interp(f_line, x[k - 1:k + 1], y[k - 1:k + 1]) == pytest.approx(0.143)
    # the angular distribution: every particle, folded into O's asymmetric unit
    assert preview.angdist.counts.sum() == 300 and preview.angdist.folded()
    # the history: one row per iteration, the resolution plotted per iteration
    h = preview.history
    assert h.table.rowCount() == 3 and h.table.horizontalHeaderItem(1).text() == "resolution_A"
    assert h.table.item(2, 3).text() == "True"
    hx, hy = h.curve.getData()
    np.testing.assert_allclose(hx, [1, 2, 3])
    np.testing.assert_allclose(hy, [40.0, 25.0, res])
    # the map: the merged one first; half 1 from the chooser
    from tomoguide.compute.io.mrc import read_mrc

    merged, _ = read_mrc(folder / "map.mrc")
    np.testing.assert_array_equal(preview.map_view.slices.image("xy"), merged[BOX // 2])
    assert [preview.map_combo.itemText(i) for i in range(preview.map_combo.count())] == \
        ["merged map", "half map 1", "half map 2", "mask"]
    mean, sd = map_stats(merged)
    assert preview.map_view.iso.level() == pytest.approx(mean + 1.5 * sd, rel=1e-5)
    _shot(preview, "average_preview.png")
    preview.tabs.setCurrentIndex(1)
    _shot(preview, "average_preview_angdist.png")
    preview.tabs.setCurrentIndex(2)
    _shot(preview, "average_preview_history.png")
    preview.map_combo.setCurrentIndex(1)
    half1, _ = read_mrc(folder / "half1.mrc")
    np.testing.assert_array_equal(preview.map_view.slices.image("xz"), half1[:, BOX // 2, :])
    assert "half map 1" in preview.map_view.title.text()


def test_initial_model_without_halves_and_readme_figures(qtbot, project: Project, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(8)
    folder = project.dir / "runs" / "initial_model"
    full = write_average(folder, rng, n_particles=50)
    # an initial model: no half maps, no FSC, no resolution
    for name in ("half1.mrc", "half2.mrc"):
        (folder / name).unlink()
    rec = full.model_copy(update={"half1": None, "half2": None, "fsc": None, "resolution_A": None, "history": []})
    rec.save(folder)
    _register(project, "initial_model", "average", folder)
    preview = make_preview(project, "initial_model")
    qtbot.addWidget(preview)
    _settle(preview)
    assert isinstance(preview, AveragePreview)
    assert [preview.map_combo.itemText(i) for i in range(preview.map_combo.count())] == ["merged map", "mask"]
    assert "no resolution" in preview.summary.text() and "No FSC" in preview.fsc_plot.resolution_label.text()
    assert not preview.fsc_plot.curves["masked"].isVisible() and preview.angdist.counts.sum() == 50
    assert not preview.tabs.isTabEnabled(0) and preview.tabs.currentWidget() is preview.angdist  # no history
    # the README figures of a refined average
    avg = tmp_path / "avg"
    full2 = write_average(avg, rng, n_particles=80)
    paths = render_average_figures(avg, tmp_path / "figs")
    assert [p.name for p in paths] == ["fsc.png", "map3d.png"]
    fsc_img, map_img = QImage(str(paths[0])), QImage(str(paths[1]))
    assert (fsc_img.width(), fsc_img.height()) == (720, 460) and (map_img.width(), map_img.height()) == (720, 820)
    for p in paths:
        (SHOTS / f"readme_{p.name}").parent.mkdir(parents=True, exist_ok=True)
        QImage(str(p)).save(str(SHOTS / f"readme_{p.name}"))
    assert full2.resolution_A is not None


def test_2d_extraction_particle_is_shown_back_projected(qtbot, project: Project) -> None:  # type: ignore[no-untyped-def]
    """A 2D extraction (sub-tilt stacks): the page shows the particle inserted into 3D, as the step's own reader
    (``tomoguide.steps.extract.load_particles``) builds it."""
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.steps.extract import load_particles

    rng = np.random.default_rng(6)
    folder = project.dir / "runs" / "extract2d"
    rec, df, _ = write_particles(folder, rng)
    tilts = np.deg2rad([-30.0, -15.0, 0.0, 15.0, 30.0, 45.0])
    mats = np.stack([[[np.cos(t), 0, np.sin(t)], [0, 1, 0], [-np.sin(t), 0, np.cos(t)]] for t in tilts])
    used = [0, 1, 2, 3, 4]  # view 5 excluded
    for i, row in df.iterrows():
        pname = Path(row["rlnImageName"]).name.replace("_data.mrc", "")
        write_mrc(folder / "subtomos" / f"{pname}_subtilts.mrc", rng.normal(size=(5, 24, 24)).astype(np.float32),
                  12.0, is_stack=True)
        write_mrc(folder / "subtomos" / f"{pname}_weights.mrc", np.ones((5, 24, 24), np.float16), 12.0,
                  is_stack=True)
        df.loc[i, "rlnImageName"] = f"subtomos/{pname}_subtilts.mrc"
    write_particles_star(folder / "particles.star", df, {"rlnTomoTiltSeriesPixelSize": 2.0})
    rec2 = rec.model_copy(update={"dimensionality": 2, "info": {
        "view_matrices": {t: mats.tolist() for t in ("TS_01", "TS_02")},
        "views_used": {t: used for t in ("TS_01", "TS_02")}}})
    rec2.save(folder)
    _, _, data, weights = load_particles(folder)
    _register(project, "extract", "particles", folder)
    preview = make_preview(project, "extract")
    qtbot.addWidget(preview)
    _settle(preview)
    preview.gallery.select(5)
    assert preview.shown_index == 5 and "2D sub-tilt stacks" in preview.summary.text()
    np.testing.assert_allclose(preview.data_slices.image("xz"), data[5][:, 12, :], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(preview.weight_slices.image("xz"), weights[5][:, 12, :], rtol=1e-5, atol=1e-6)
    assert read_mrc(folder / df["rlnImageName"][5])[0].shape == (5, 24, 24)
