"""The picking step on the tiny simulated data: template matching against the truth, and imports that agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide import synth
from tomoguide.compute.io import coords
from tomoguide.compute.io.star import read_particles_star
from tomoguide.compute.pick import match_to_truth, register_translation
from tomoguide.demo import demo_params
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.pick import PickParams, TomogramPicks, centre_shapes, sanity_check
from tomoguide.steps.records import SeriesSet


@pytest.fixture(scope="module")
def picked(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
    proj = Project.create(tmp_path_factory.mktemp("p7") / "proj", params=params)
    ids = registry.ids()
    for step in ids[: ids.index("pick") + 1]:
        assert run_to_end(StepRun(proj, step)).status == "done", step
    yield proj
    proj.close()


def _shapes(proj: Project) -> dict[str, tuple[int, int, int]]:
    sset, _ = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
    return {s.name: tuple(reversed(s.info["shape_zyx"])) for s in sset.series}


def test_template_matching_finds_the_true_particles(picked: Project, tiny_dataset: Path) -> None:
    ours = read_particles_star(picked.output_path("pick", "particles")).particles
    truth = read_particles_star(tiny_dataset / "truth" / "particles.star").particles
    cols = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    p, t = ours[cols].to_numpy(float), truth[cols].to_numpy(float)
    shift = register_translation(p, t, max_shift=120.0, tolerance=30.0)
    assert np.abs(shift).max() < 60.0  # the alignment's arbitrary origin: a few voxels at most
    m = match_to_truth(p + shift, t, max_distance=30.0)
    assert m["recall"] >= 15 / 16 and m["false_fraction"] <= 1 / 16, m
    assert "rlnAutopickFigureOfMerit" in ours.columns or picked.data.steps["pick"].metrics["n_particles"] == len(p)


def test_template_run_logs_the_noise_model(picked: Project) -> None:
    """The log and the metrics say, per tomogram, the region searched, the threshold and how it was chosen, the
    noise model's parameters, the number of peaks above the threshold and the highest score; the threshold is
    below the highest peak and the noise model's threshold below it."""
    st = picked.data.steps["pick"]
    m = st.metrics["series"]["TS_01"]
    assert m["threshold_how"] in ("noise", "particles") and m["threshold"] == m["automatic_threshold"]
    assert m["noise_threshold"] <= m["threshold"] < m["highest_score"]
    assert 0 < m["noise_sigma"] < 0.2 and m["noise_n"] > 10 * m["n_particles"]
    assert m["specimen"]["found"] and st.metrics["warnings"] == []
    log = "\n".join(st.log)
    assert f"threshold {m['threshold']:.3f}" in log and f"{m['noise_mean']:.3f} ± {m['noise_sigma']:.3f}" in log
    assert f"highest score {m['highest_score']:.3f}" in log and "specimen slab" in log
    assert f"{m['n_particles']} particles = peaks at or above the threshold" in log
    with np.load(picked.output_path("pick", "scores")) as z:
        assert len(z["TS_01_peak_scores"]) == m["n_peaks"] and z["TS_01_hist_counts"].sum() == m["n_peaks"]


def test_a_run_without_particles_fails_with_a_message(picked: Project) -> None:
    """A threshold above every peak: the step fails (no silent 'done' with 0 particles) and its message names
    the threshold, the highest score and what to change."""
    from tomoguide.runner import StepFailed

    picked.set_params("pick", {"threshold": 0.99})
    with pytest.raises(StepFailed):
        run_to_end(StepRun(picked, "pick"))
    st = picked.data.steps["pick"]
    assert st.status == "failed"
    err = st.error or ""
    assert err.startswith("No particle picked") and "TS_01" in err
    assert "threshold 0.990 set by hand" in err and "highest peak score 0." in err
    assert "lower the score threshold" in err and "template" in err and "tomogram" in err
    assert any("0 particles = peaks at or above the threshold 0.990" in line for line in st.log)
    picked.set_params("pick", {"threshold": None})
    assert run_to_end(StepRun(picked, "pick")).status == "done"


@pytest.mark.gui
def test_the_page_shows_the_failure(qtbot, picked: Project) -> None:  # type: ignore[no-untyped-def]
    from tomoguide.pages.preview_pick import PickPreview
    from tomoguide.pages.previews import make_preview
    from tomoguide.runner import StepFailed

    picked.set_params("pick", {"threshold": 0.99})
    with pytest.raises(StepFailed):
        run_to_end(StepRun(picked, "pick"))
    preview = make_preview(picked, "pick")
    qtbot.addWidget(preview)
    assert isinstance(preview, PickPreview)
    err = picked.data.steps["pick"].error or ""
    assert preview.note.text() == f"The last run failed: {err}"
    assert "the last run failed" in preview.count_label.text() and "highest peak score" in preview.note.text()
    picked.set_params("pick", {"threshold": None})
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    preview.refresh()
    assert "failed" not in preview.count_label.text() and "noise model" in preview.threshold_label.text()
    x, y = preview.noise_model_curve()  # type: ignore[misc]
    m = picked.data.steps["pick"].metrics["series"]["TS_01"]
    assert x[int(np.argmax(y))] == pytest.approx(m["noise_mean"], abs=2 * (x[1] - x[0]))


def test_defaults_only_on_the_tiny_preset(tiny_dataset: Path, tmp_path: Path) -> None:
    """Only the import's parameters (the reconstruction's default thickness, 300 voxels: mostly empty space around
    the 600 Å slab): the specimen slab is found and the automatic threshold picks the true particles."""
    from tomoguide.demo import demo_import_params

    with Project.create(tmp_path / "p", params={"import_movies": demo_import_params(tiny_dataset / "data")}) as proj:
        ids = registry.ids()
        for step in ids[: ids.index("pick") + 1]:
            assert run_to_end(StepRun(proj, step)).status == "done", step
        assert proj.params("reconstruct").thickness_px == 300
        m = proj.data.steps["pick"].metrics["series"]["TS_01"]
        assert m["specimen"]["found"] and m["specimen"]["top_px"] - m["specimen"]["bottom_px"] < 150
        assert proj.data.steps["pick"].metrics["box_px"] == round(2.4 * 62.0 / 12.0)  # display box: 1.2 diameters
        ours = read_particles_star(proj.output_path("pick", "particles")).particles
        truth = read_particles_star(tiny_dataset / "truth" / "particles.star").particles
        cols = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
        p, t = ours[cols].to_numpy(float), truth[cols].to_numpy(float)
        shift = register_translation(p, t, max_shift=120.0, tolerance=30.0)
        mt = match_to_truth(p + shift, t, max_distance=30.0)
        assert mt["recall"] >= 15 / 16 and mt["false_fraction"] <= 1 / 16, (mt, m)


# ---------------------------------------------------------------------------------------------------------------
# the sanity bound: no silent dead end (score volumes made here: noise fields with or without planted peaks)
# ---------------------------------------------------------------------------------------------------------------


def _picks(seed: int, plants: int, height: float, params: PickParams) -> TomogramPicks:
    """TomogramPicks of a smooth noise score volume (voxel SD 0.06) with ``plants`` peaks of ``height``."""
    import scipy.ndimage

    from tomoguide.compute import pick as pk

    rng = np.random.default_rng(seed)
    shape = (48, 128, 128)
    f = scipy.ndimage.gaussian_filter(rng.normal(size=shape), 1.5, mode="wrap")
    score = (f / f.std() * 0.06).astype(np.float32)
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    for k in range(plants):
        x, y, z = 6 + (k * 37) % 116, 6 + (k * 53 // 7) % 116, 6 + (k * 11) % 36
        score += (height * np.exp(-((xx - x) ** 2 + (yy - y) ** 2 + (zz - z) ** 2) / 4.5)).astype(np.float32)
    xyz, scores = pk.pick_peaks(score, min_distance_px=8.0, exclude_border_px=1)
    return _picks_of(xyz, scores, params)


def _picks_of(xyz: np.ndarray, scores: np.ndarray, params: PickParams) -> TomogramPicks:
    from tomoguide.compute import pick as pk

    order = np.argsort(-scores)
    xyz, scores = xyz[order], scores[order]
    choice = pk.automatic_threshold(scores, expected_false=params.expected_false_picks)
    thr = choice.threshold if params.threshold is None else params.threshold
    return TomogramPicks(xyz_px=xyz, scores=scores, angles_deg=None, threshold=thr,
                         automatic=params.threshold is None, choice=choice, fit_error="", slab=None)


def test_sanity_check_refuses_noise_and_empty_runs() -> None:
    auto = PickParams()
    # pure noise: no or noise-like picks, and a failure naming the threshold, the highest score, what to change
    for seed in range(3):
        noise = _picks(seed, 0, 0.0, auto)
        assert int(noise.keep.sum()) <= 4
        problems, warnings = sanity_check([noise], ["TS_01"], auto)
        assert len(problems) == 1 and warnings == []
        msg = problems[0]
        assert msg.startswith(("No particle picked", "No particle stands out from the noise")), msg
        assert f"the automatic threshold {noise.threshold:.3f}" in msg
        assert f"{noise.highest:.3f}" in msg and "no peak stands out from the noise" in msg
        assert "template (outer radius 62 Å, inner 40 Å" in msg and "set the score threshold by hand" in msg
    # clear particles: no problem, the picks are the plants
    good = _picks(5, 40, 0.6, auto)
    assert 40 <= int(good.keep.sum()) <= 42 and sanity_check([good], ["TS_01"], auto) == ([], [])
    # one good tomogram and one of noise: a warning for the second, the run goes on
    problems, warnings = sanity_check([good, _picks(1, 0, 0.0, auto)], ["TS_01", "TS_02"], auto)
    assert problems == [] and len(warnings) == 1 and warnings[0].startswith("TS_02")
    # a threshold set by hand above every peak: "lower it", with the automatic value
    hand = PickParams(threshold=0.95)
    high = _picks(5, 40, 0.6, hand)
    problems, _ = sanity_check([high], ["TS_01"], hand)
    assert problems and problems[0].startswith("No particle picked")
    assert "the threshold 0.950 set by hand" in problems[0] and "lower the score threshold" in problems[0]
    assert f"({high.choice.threshold:.3f} here)" in problems[0]
    # particles that barely stand out (2.5 noise SDs): far fewer picks than peaks above the noise
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.normal(0.15, 0.05, 2000), rng.normal(0.27, 0.02, 150)])  # 2.4 noise SDs up
    faint = _picks_of(np.zeros((len(scores), 3)), scores, auto)
    assert faint.sanity_bound() > 2 * int(faint.keep.sum())
    # (a warning, not a dead end: look-alike peaks above the noise count towards the bound too)
    problems, warnings = sanity_check([faint], ["TS_01"], auto)
    assert problems == [] and len(warnings) == 1, (problems, warnings)
    assert warnings[0].startswith("Far fewer particles than the peaks rising above the noise suggest"), warnings
    assert "barely stand out from the noise" in warnings[0] and "set the score threshold by hand" in warnings[0]


def test_imports_from_star_text_and_sqlite_give_the_same_table(picked: Project, tmp_path: Path) -> None:
    shapes = _shapes(picked)
    voxel = SeriesSet.load(picked.output_path("reconstruct", "tomograms"))[0].series[0].geometry.pixel_size_binned_A
    reference = coords.read_relion_particles(picked.output_path("pick", "particles"), centre_shapes(shapes), voxel)
    files = {"star": picked.output_path("pick", "particles"), "txt": tmp_path / "picks.txt",
             "sqlite": tmp_path / "picks.sqlite"}
    coords.write_text_coords(files["txt"], reference)
    coords.write_scipion_sqlite(files["sqlite"], reference, tomo_shapes=shapes, origin="center")
    tables = {}
    for kind, path in files.items():
        picked.set_params("pick", {"method": "import", "coordinates_file": str(path)})
        assert run_to_end(StepRun(picked, "pick")).status == "done", kind
        tables[kind] = coords.read_relion_particles(picked.output_path("pick", "particles"), centre_shapes(shapes),
                                                    voxel)
    for kind, table in tables.items():
        assert len(table) == len(reference) > 10, kind
        np.testing.assert_allclose(table.xyz_px, reference.xyz_px, atol=1e-3, err_msg=kind)
        assert list(table.tomo_name) == list(reference.tomo_name)
    picked.set_params("pick", {"method": "template", "coordinates_file": ""})


def test_import_of_a_missing_file_is_refused(picked: Project) -> None:
    from tomoguide.runner import RunRefused

    picked.set_params("pick", {"method": "import", "coordinates_file": "/nonexistent/picks.star"})
    with pytest.raises(RunRefused) as err:
        StepRun(picked, "pick").preflight()
    assert "picks.star" in str(err.value)
    picked.set_params("pick", {"method": "template", "coordinates_file": ""})


# ---------------------------------------------------------------------------------------------------------------
# surface-model and manual picking (points generated here: the simulator has no vesicle)
# ---------------------------------------------------------------------------------------------------------------


def _tomogram(proj: Project) -> tuple[str, tuple[int, int, int], float]:
    sset, _ = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
    s = sset.series[0]
    return s.name, tuple(int(n) for n in reversed(s.info["shape_zyx"])), float(s.geometry.pixel_size_binned_A)


def _clicks_on_sphere(name: str, centre: np.ndarray, radius: float, zs: list[float], per_slice: int, model: int,
                      noise_A: float, seed: int) -> list[list]:
    """Contour points a trainee would click: on the sphere's circle in each slice z, with some hand jitter."""
    rng = np.random.default_rng(seed)
    rows = []
    for z in zs:
        r = np.sqrt(radius**2 - (z - centre[2]) ** 2)
        t = rng.uniform(0, 2 * np.pi, per_slice)
        x, y = centre[0] + r * np.cos(t), centre[1] + r * np.sin(t)
        x, y = x + rng.normal(0, noise_A, per_slice), y + rng.normal(0, noise_A, per_slice)
        rows += [[name, float(a), float(b), float(z), model] for a, b in zip(x, y)]
    return rows


def test_surface_picking_puts_oriented_particles_on_the_fitted_sphere(picked: Project) -> None:
    from scipy.spatial import cKDTree

    from tomoguide.compute.euler import euler_to_matrix

    name, shape, voxel = _tomogram(picked)
    half = (np.asarray(shape) - 1) / 2 * voxel  # the tomogram spans ±half Å about its centre
    # two vesicles: their z slices at whole voxels (clicks are on slices), radius about a quarter of the width
    radius = 0.22 * 2 * half[0]
    spheres = {0: np.array([-0.4 * half[0], -0.3 * half[1], 0.0]), 1: np.array([0.45 * half[0], 0.4 * half[1], 0.0])}
    zs = [v * voxel for v in (-6.0, 0.0, 5.0)]
    rows = []
    for model, c in spheres.items():
        rows += _clicks_on_sphere(name, c, radius, zs, 6, model, noise_A=0.3 * voxel, seed=model)
    spacing = 0.35 * radius
    picked.set_params("pick", {"method": "surface", "surface_points": rows, "surface_spacing_A": spacing,
                               "surface_region": "clicked z range", "surface_model": "auto"})
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    df = read_particles_star(picked.output_path("pick", "particles")).particles
    xyz = df[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
             ].to_numpy(float)
    angles = df[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    metrics = picked.data.steps["pick"].metrics
    models = metrics["models"]
    assert [m["model"] for m in models] == [0, 1] and all(m["kind"] == "sphere" for m in models)
    assert sum(m["n_particles"] for m in models) == len(df) == metrics["n_particles"] > 10
    for m, c in zip(models, spheres.values()):
        np.testing.assert_allclose(m["centre_A"], c, atol=1.0 * voxel)
        np.testing.assert_allclose(m["axes_A"], radius, rtol=0.03)
    # every particle on one of the spheres, in the clicked z range, inside the tomogram
    d = np.stack([np.linalg.norm(xyz - c, axis=1) for c in spheres.values()])
    which = np.argmin(np.abs(d - radius), axis=0)
    np.testing.assert_allclose(d[which, np.arange(len(xyz))], radius, rtol=0.03)
    assert np.all((xyz[:, 2] >= min(zs) - 1e-3) & (xyz[:, 2] <= max(zs) + 1e-3))
    assert np.all(np.abs(xyz) <= half + 1e-3)
    # oriented along the outward normal: the particle's z axis A · (0, 0, 1) points away from its sphere's centre
    centres = np.stack([spheres[k] for k in which])
    outward = (xyz - centres) / np.linalg.norm(xyz - centres, axis=1, keepdims=True)
    axis = euler_to_matrix(angles)[:, :, 2]
    assert np.degrees(np.arccos(np.clip(np.sum(axis * outward, axis=1), -1, 1))).max() < 5.0
    assert np.std(angles[:, 0]) > 30.0  # a random spin about the normal (rot)
    # spaced as asked on each sphere: never closer, about that far apart
    for k in spheres:
        own = xyz[which == k]
        nn = cKDTree(own).query(own, k=2)[0][:, 1]
        assert nn.min() >= spacing * 0.999 and np.median(nn) <= 1.35 * spacing
    # the points are in the project file: a reopened project has them
    again = Project.open(picked.dir, readonly=True)
    assert again.params("pick").surface_points == picked.params("pick").surface_points
    assert [list(r) for r in again.params("pick").surface_points] == rows
    # the whole surface: more particles (the spheres reach above and below the clicked slices)
    picked.set_params("pick", {"surface_region": "whole surface", "surface_spin": "zero"})
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    whole = read_particles_star(picked.output_path("pick", "particles")).particles
    assert len(whole) > len(df) and np.all(whole["rlnAngleRot"].abs() < 1e-6)
    picked.set_params("pick", {"method": "template", "surface_points": [], "surface_region": "clicked z range",
                               "surface_spin": "random"})


def test_manual_picking_writes_the_clicked_positions(picked: Project) -> None:
    name, shape, voxel = _tomogram(picked)
    rows = [[name, -40.0, 24.0, 8.0], [name, 100.0, -60.5, -16.0], [name, 0.0, 0.0, 0.0]]
    picked.set_params("pick", {"method": "manual", "manual_points": rows})
    assert run_to_end(StepRun(picked, "pick")).status == "done"
    df = read_particles_star(picked.output_path("pick", "particles")).particles
    cols = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    np.testing.assert_allclose(df[cols].to_numpy(float), [r[1:] for r in rows], atol=1e-3)
    assert list(df["rlnTomoName"]) == [name] * 3 and "rlnAngleRot" not in df.columns
    # in voxels: Å / voxel from the centre voxel (n - 1) / 2
    table = coords.read_relion_particles(picked.output_path("pick", "particles"), centre_shapes({name: shape}), voxel)
    np.testing.assert_allclose(table.xyz_px[2], (np.asarray(shape) - 1) / 2, atol=1e-6)
    np.testing.assert_allclose(table.xyz_px[0] - table.xyz_px[2], np.array(rows[0][1:]) / voxel, atol=1e-6)
    assert picked.data.steps["pick"].metrics["n_particles"] == 3
    picked.set_params("pick", {"method": "template", "manual_points": []})


def test_clicks_that_cannot_make_particles_are_refused(picked: Project) -> None:
    from tomoguide.runner import RunRefused

    name, _, _ = _tomogram(picked)
    cases = [({"method": "surface", "surface_points": []}, "no contour points"),
             ({"method": "surface", "surface_points": [[name, 0.0, 0.0, 0.0, 0], [name, 10.0, 0.0, 0.0, 0]]},
              "at least 3"),
             ({"method": "surface", "surface_points": [["TS_99", 0.0, 0.0, 0.0, 0]] * 4}, "TS_99"),
             ({"method": "surface", "surface_points": [[name, 10.0 * k, 5.0 * k, 0.0, 2] for k in range(5)]},
              "lie on a line"),
             ({"method": "manual", "manual_points": []}, "no particles picked"),
             ({"method": "manual", "manual_points": [["TS_99", 0.0, 0.0, 0.0]]}, "TS_99")]
    for values, message in cases:
        picked.set_params("pick", values)
        with pytest.raises(RunRefused) as err:
            StepRun(picked, "pick").preflight()
        assert message in str(err.value), (values, str(err.value))
    picked.set_params("pick", {"method": "template", "surface_points": [], "manual_points": []})
