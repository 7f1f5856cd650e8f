"""Steps 5-11 on the simulator's tiny data set, checked against its ground truth."""

from __future__ import annotations

import json
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide import synth, truth
from tomoguide.demo import demo_params
from tomoguide.project import Project
from tomoguide.runner import RunRefused, StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.records import SeriesSet

STEPS = registry.ids()[: registry.ids().index("reconstruct") + 1]


@pytest.fixture(scope="module")
def project(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
    params["preprocess_for_alignment"] = {"binning": 5}
    params["reconstruct"] = {"method": "WBP"}
    proj = Project.create(tmp_path_factory.mktemp("p6") / "proj", params=params)
    for step in STEPS:
        st = run_to_end(StepRun(proj, step))
        assert st.status == "done", (step, st.error)
    yield proj
    proj.close()


def test_view_rotation_errors_against_planted_rotations(tiny_dataset: Path) -> None:
    """The truth's own geometry scores 0; the same views turned by known angles (and the whole series by 2°, an axis
    error that is removed) score those angles' spread about their mean; one rotation for all views leaves the
    truth's own spread."""
    from tomoguide.compute.acquisition_refine import apply_view_corrections

    tg = truth.true_geometry(tiny_dataset / "truth", "TS_01")
    same = truth.view_rotation_errors(tg, tg)
    assert same["rms_deg"] < 1e-9 and same["truth_spread_rms_deg"] > 0.05
    turn = np.linspace(-0.4, 0.4, tg.n_views)
    xf = apply_view_corrections(tg.xf_array(), np.zeros((tg.n_views, 2)), turn + 2.0)
    moved = tg.model_validate({**tg.model_dump(), "xf": xf})
    r = truth.view_rotation_errors(moved, tg)
    assert r["rms_deg"] == pytest.approx(float(np.sqrt(np.mean((turn - turn.mean()) ** 2))), abs=1e-6)
    assert abs(r["mean_offset_deg"]) == pytest.approx(2.0, abs=1e-6)
    flat = tg.with_xf_from_axis_and_shifts(tg.tilt_axis_deg, tg.specimen_shifts_px())
    assert truth.view_rotation_errors(flat, tg)["rms_deg"] == pytest.approx(same["truth_spread_rms_deg"], abs=1e-6)


def test_alignment_against_truth(project: Project, tiny_dataset: Path) -> None:
    err = truth.alignment_errors(tiny_dataset / "truth", project.output_path("align", "series"))
    s = err["series"]["TS_01"]
    # 7 noisy views over ±30° on a 100 px field (10 Å/px): patch tracking alone pins the axis only to a degree or
    # two; the 16 particles as markers bring it within the issue's 0.3° (measured 0.08°) and the shifts to 0.1 px
    assert s["shift_rms_px"] < 0.3, err
    assert s["mean_residual_px"] < 1.0 and s["axis_error_deg"] < 0.3, err
    sset, base = SeriesSet.load(project.output_path("align", "series"))
    from tomoguide.compute.io.imod import read_tlt, read_xf

    xf = read_xf(sset.series[0].path("xf", base))
    tlt = read_tlt(sset.series[0].path("tlt", base))
    rows, angles = sset.series[0].geometry.to_imod()
    np.testing.assert_allclose(xf, rows, atol=2e-3)
    np.testing.assert_allclose(tlt, angles, atol=0.01)
    with mrcfile.open(sset.series[0].path("interp", base)) as m:
        assert m.data.shape[0] == 7


def test_align_finds_the_axis_from_a_typed_value_10_degrees_off(tiny_dataset: Path, tmp_path: Path) -> None:
    """A tilt axis typed at the import 10° from the true one (95° for 85°; the mdoc says 85°): the align step ends
    within 0.3° of the truth, with the default bin 10, and warns that the import's axis is wrong."""
    params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
    params["import_movies"] = {**params["import_movies"], "tilt_axis_deg": 95.0}
    proj = Project.create(tmp_path / "proj", params=params)
    try:
        for step in STEPS[: STEPS.index("align") + 1]:
            st = run_to_end(StepRun(proj, step))
            assert st.status == "done", (step, st.error)
        err = truth.alignment_errors(tiny_dataset / "truth", proj.output_path("align", "series"))["series"]["TS_01"]
        assert err["axis_error_deg"] < 0.3 and err["shift_rms_px"] < 0.3, err
        m = proj.data.steps["align"].metrics["series"]["TS_01"]
        assert m["prior_tilt_axis_deg"] == pytest.approx(95.0)
        assert m["axis_prior_difference_deg"] == pytest.approx(err["tilt_axis_deg"] - 95.0)
        assert any("warning: the fitted tilt axis" in w and "import's 95.0°" in w for w in m["axis_warnings"])
        sset, _ = SeriesSet.load(proj.output_path("align", "series"))
        assert sset.series[0].info["axis_notes"] == m["axis_warnings"]
    finally:
        proj.close()


def test_assign_alignment_rescales_shifts(project: Project) -> None:
    src, _ = SeriesSet.load(project.output_path("align", "series"))
    dst, _ = SeriesSet.load(project.output_path("assign_alignment", "series"))
    g_src, g_dst = src.series[0].geometry, dst.series[0].geometry
    factor = g_src.binning / g_dst.binning
    np.testing.assert_allclose(g_dst.specimen_shifts_px(), g_src.specimen_shifts_px() * factor, atol=1e-6)
    assert g_dst.tilt_axis_deg == g_src.tilt_axis_deg and g_dst.image_shape_px == (512, 512)


def test_assign_refuses_mismatched_series(project: Project, tmp_path: Path) -> None:
    """A target series with a different number of views is refused with a clear message."""
    from tomoguide.runner import upstream_outputs

    run = StepRun(project, "assign_alignment")
    ctx = run._context(tmp_path)
    sset, base = SeriesSet.load(project.output_path("xray_erase", "series"))
    from tomoguide.steps.exclude import drop_views

    g = sset.series[0].geometry
    sset.series[0].geometry = drop_views(g, np.arange(g.n_views) != 0)
    folder = tmp_path / "fake_xray"
    folder.mkdir()
    sset.save(folder)
    ctx.upstream["xray_erase"].outputs["series"] = folder / "series.json"
    issues = run.step.check(project.params("assign_alignment"), ctx)
    assert any(i.level == "error" and "7 views" in i.message and "6" in i.message for i in issues), issues
    assert upstream_outputs(project, "assign_alignment")  # the real project is untouched


def test_ctf_on_tilt_series_against_truth(project: Project, tiny_dataset: Path) -> None:
    err = truth.defocus_errors(tiny_dataset / "truth", project.output_path("ctf_estimate", "series"))
    assert err["median_abs_error_A"] < 300.0, err


def test_tomogram_matches_truth_with_the_right_hand(project: Project, tiny_dataset: Path) -> None:
    sset, base = SeriesSet.load(project.output_path("reconstruct", "tomograms"))
    with mrcfile.open(sset.series[0].path("tomogram", base)) as m:
        assert float(m.voxel_size.x) == pytest.approx(sset.series[0].geometry.pixel_size_binned_A)
        assert m.data.shape[0] == project.params("reconstruct").thickness_px
    cc = truth.tomograms_vs_true_alignment(
        tiny_dataset / "truth", project.output_path("preprocess_for_reconstruction", "series"),
        project.output_path("reconstruct", "tomograms"), project.params("reconstruct"),
        lowpass_voxels=4.0)["series"]["TS_01"]
    # with the true alignment the reconstruction lands on the truth at zero shift and with the right hand
    np.testing.assert_allclose(cc["shift_with_true_alignment_zyx_px"], 0.0, atol=0.35)
    assert cc["cc_with_true_alignment"] > 3 * abs(cc["cc_z_mirrored"]), cc
    # with the estimated alignment (7 noisy views over ±30°) it keeps most of that correlation, not mirrored; the
    # small preset's ratios are in bench/results/tilt_series_to_tomograms_small.json
    assert cc["cc"] > 0.6 * cc["cc_with_true_alignment"] and cc["cc"] > 3 * cc["cc_z_mirrored"], cc
    # the tilt-angle offset cannot be aligned (it is a turn of the specimen about the tilt axis); the same
    # reconstruction with only the offset taken from the truth is reported beside it
    assert cc["tilt_offset_deg"] == sset.series[0].geometry.tilt_offset_deg
    assert cc["true_tilt_offset_deg"] == pytest.approx(truth.true_geometry(tiny_dataset / "truth", "TS_01").tilt_offset_deg)
    assert cc["ratio_with_true_tilt_offset"] == pytest.approx(cc["cc_with_true_tilt_offset"] / cc["cc_with_true_alignment"])
    assert cc["cc_with_true_tilt_offset"] > 0.6 * cc["cc_with_true_alignment"], cc
    # the alignment's origin is arbitrary (the mean of the tracked patches): the tomogram is displaced from the
    # truth by exactly that origin, no more (no half-box or binning offsets)
    ali = truth.alignment_errors(tiny_dataset / "truth", project.output_path("align", "series"))["series"]["TS_01"]
    scale = ali["pixel_size_A"] / cc["voxel_A"]
    tx, ty, tz = (v * scale for v in ali["origin_offset_px"])
    expected_zyx = np.array([-tz, -ty, -tx])
    np.testing.assert_allclose(cc["shift_zyx_px"], expected_zyx, atol=2.0)


def test_excluded_view_contributes_nothing(project: Project) -> None:
    """Exclude a view, then replace it by noise in the reconstruction's input: the tomogram does not change."""
    project.set_params("exclude", {"views": "TS_01: 2", "apply_suggestions": False})
    for step in ("exclude", "ctf_correct", "preprocess_for_reconstruction", "reconstruct"):
        assert run_to_end(StepRun(project, step)).status == "done"
    sset, base = SeriesSet.load(project.output_path("preprocess_for_reconstruction", "series"))
    assert sset.series[0].geometry.excluded[1] and sum(sset.series[0].geometry.excluded) == 1
    tomo_set, tbase = SeriesSet.load(project.output_path("reconstruct", "tomograms"))
    with mrcfile.open(tomo_set.series[0].path("tomogram", tbase)) as m:
        before = m.data.copy()
    stack_path = sset.series[0].path("stack", base)
    with mrcfile.open(stack_path, mode="r+") as m:
        m.data[1] = np.random.default_rng(0).normal(0, 100, m.data[1].shape).astype(m.data.dtype)
    project.data.steps["reconstruct"].hash = None  # force the re-run
    assert run_to_end(StepRun(project, "reconstruct")).status == "done"
    tomo_set, tbase = SeriesSet.load(project.output_path("reconstruct", "tomograms"))
    with mrcfile.open(tomo_set.series[0].path("tomogram", tbase)) as m:
        np.testing.assert_array_equal(m.data, before)
    metrics = project.data.steps["exclude"].metrics
    assert metrics["series"]["TS_01"]["excluded_views"] == [2]


def test_bad_exclusion_list_is_refused(project: Project) -> None:
    project.set_params("exclude", {"views": "TS_09: 1"})
    with pytest.raises(RunRefused) as err:
        StepRun(project, "exclude").preflight()
    assert "TS_09" in str(err.value)
    project.set_params("exclude", {"views": "TS_01: 40"})
    with pytest.raises(RunRefused) as err:
        StepRun(project, "exclude").preflight()
    assert "7 views" in str(err.value)
    project.set_params("exclude", {"views": ""})
    assert json.loads((project.dir / "project.json").read_text())["steps"]["exclude"]["params"]["views"] == ""


def test_registration_finds_sub_voxel_shifts() -> None:
    """The tomogram-vs-truth correlation registers the arbitrary origin to a fraction of a voxel: a smooth volume
    moved by (1.3, -0.4, 2.6) voxels is found there (±0.1) and correlates at > 0.99, where the best whole-voxel
    shift leaves a visibly lower correlation."""
    import scipy.fft
    import scipy.ndimage

    rng = np.random.default_rng(4)
    ref = scipy.ndimage.gaussian_filter(rng.normal(size=(24, 32, 40)), 1.5)
    shift = np.array([1.3, -0.4, 2.6])
    k = np.meshgrid(np.fft.fftfreq(24), np.fft.fftfreq(32), np.fft.rfftfreq(40), indexing="ij")
    phase = np.exp(-2j * np.pi * sum(ki * si for ki, si in zip(k, shift, strict=True)))
    vol = scipy.fft.irfftn(scipy.fft.rfftn(ref) * phase, s=ref.shape)
    cc, found = truth.registered_correlation(vol, ref, max_shift_px=4)
    np.testing.assert_allclose(found, shift, atol=0.1)
    assert cc > 0.99
    whole = np.roll(ref, [1, 0, 3], axis=(0, 1, 2))
    cc_whole = float(np.corrcoef(vol.ravel(), whole.ravel())[0, 1])
    assert cc_whole < cc - 0.05


def test_exclusion_refuses_to_leave_too_few_views(project: Project) -> None:
    """No silent dead end: excluding (nearly) every view fails on the exclusion step itself, naming what to change;
    the earlier result stays."""
    from tomoguide.steps.exclude import MIN_VIEWS_LEFT

    before = project.data.steps["exclude"].outputs
    n_views = SeriesSet.load(project.output_path("ctf_estimate", "series"))[0].series[0].geometry.n_views
    views = ",".join(str(i) for i in range(1, n_views - MIN_VIEWS_LEFT + 2))
    project.set_params("exclude", {"views": f"TS_01: {views}"})
    from tomoguide.runner import StepFailed

    with pytest.raises(StepFailed):
        run_to_end(StepRun(project, "exclude"))
    assert project.data.steps["exclude"].status == "failed"
    err = str(project.data.steps["exclude"].error)
    assert "too few to reconstruct" in err and "Keep despite suggestions" in err
    project.set_params("exclude", {"views": ""})
    assert run_to_end(StepRun(project, "exclude")).status == "done"
    assert set(project.data.steps["exclude"].outputs) == set(before)
