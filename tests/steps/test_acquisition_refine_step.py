"""``extract_fine.refine_acquisition`` on the tiny simulated project: a planted misalignment is brought back
(against the simulator's true alignment), the step writes and uses the corrected records, and the RELION 5 export
carries them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from tomoguide import truth
from tomoguide.compute.io.mrc import read_mrc
from tomoguide.compute.io.star import read_ctf_star, read_particles_star, read_star
from tomoguide.compute.rescale import fourier_bin
from tomoguide.project import Project
from tomoguide.steps import acquisition_refine as SA
from tomoguide.steps.average_records import AverageRecord, ParticleStack
from tomoguide.steps.extract import ANGLES, ExtractFine, ExtractFineParams, _centred_positions
from tomoguide.steps.records import SeriesSet


@pytest.fixture(scope="module")
def project_copy(tiny_project_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("acq") / "root"
    shutil.copytree(tiny_project_root, root, symlinks=True)
    with Project.open(root / "project", readonly=True) as proj:
        assert proj.is_up_to_date("refine")
    return root


def _gauge_free_rms(g, s_ref: np.ndarray, views: np.ndarray) -> float:
    return truth.origin_removed_shift_rms(g.specimen_shifts_px()[views], s_ref, g.tilt_axis_deg,
                                          g.true_tilt_deg()[views])[0]


def test_planted_misalignment_is_brought_back(project_copy: Path, tiny_dataset: Path) -> None:
    """Views moved by 1-3 px (full-size px) are brought back to ≤ 0.3 px RMS of the simulator's true alignment
    (the 3D origin, which no alignment fixes, removed), no worse than the project's own alignment; views whose
    defocus the coarse map cannot measure keep their (perturbed) defocus rather than move at random."""
    with Project.open(project_copy / "project", readonly=True) as proj:
        sset, base = SeriesSet.load(proj.output_path("exclude", "series"))
        rec, rbase = AverageRecord.load(proj.output_path("refine", "average"))
        fine, _ = ParticleStack.load(proj.output_path("extract_fine", "particles"))
    s = sset.series[0]
    g0 = s.geometry
    table = read_ctf_star(s.path("ctf_star", base))
    df = ExtractFine()._prepare(read_particles_star(rec.path("particles", rbase)).particles, ExtractFineParams())
    df = df[df["rlnTomoName"].astype(str) == s.name]
    halves = [np.asarray(read_mrc(rec.path(h, rbase))[0], np.float32) for h in ("half1", "half2")]
    mask = np.asarray(read_mrc(rec.path("mask", rbase))[0], np.float32)
    b = fine.binning
    st = fourier_bin(np.asarray(read_mrc(s.path("stack", base))[0], np.float32), b / g0.binning)

    rng = np.random.default_rng(1)
    views = g0.included_views()
    ang, mag = rng.uniform(0, 2 * np.pi, views.size), rng.uniform(1.0, 3.0, views.size)
    planted = np.c_[mag * np.cos(ang), mag * np.sin(ang)]
    d_df = rng.uniform(300, 1000, views.size) * rng.choice([-1.0, 1.0], views.size)
    gp = SA.corrected_geometry(g0, views, planted, g0.binning)
    tp = SA.corrected_ctf_table(table, views, d_df)
    gb = gp.at_binning(b)
    gb = gb.model_validate({**gb.model_dump(), "image_shape_px": list(st.shape[1:])})
    res = SA.refine_series(st, gb, tp, _centred_positions(df), df[list(ANGLES)].to_numpy(float),
                           df["rlnRandomSubset"].to_numpy(int) - 1, halves, mask, rec.voxel_A, rec.resolution_A,
                           box_px=int(fine.info["box_before_crop_px"]))
    assert res.refined.all(), res.z_score
    g_ref = SA.corrected_geometry(gp, res.views, res.shift_px, b)

    tdir = tiny_dataset / "truth"
    tg = truth.true_geometry(tdir, s.name)
    tv = [int(np.argmin(np.abs(np.asarray(tg.tilt_angles_deg) - t))) for t in np.asarray(g0.tilt_angles_deg)[views]]
    s_true = tg.at_binning(g0.binning).specimen_shifts_px()[tv]
    before = _gauge_free_rms(gp, s_true, views)
    after = _gauge_free_rms(g_ref, s_true, views)
    records = _gauge_free_rms(g0, s_true, views)
    assert before > 1.5
    assert after <= 0.3, (before, after, records)
    assert after <= records + 0.05, (after, records)
    # the defocus: changed only where significant (tiny: a 21 Å map cannot see 1000 Å), never at random
    changed = np.asarray(res.refined_defocus, bool)
    assert np.all(res.defocus_A[~changed] == 0)
    if changed.any():
        err = np.abs(res.defocus_A[changed] + d_df[changed])
        assert np.median(err) < 150.0, err


def test_step_writes_uses_and_exports_the_corrected_records(project_copy: Path, tmp_path: Path) -> None:
    """extract_fine with refine_acquisition: output ``series`` (corrected geometry and CTF), metrics per view, the
    particles' view matrices from the corrected geometry, the RELION 5 export's per-tilt shifts from it."""
    from tomoguide.cli import run_steps
    from tomoguide.export import export_project

    proj_dir = project_copy / "project"
    rc = run_steps(proj_dir, only="extract_fine", sets={"extract_fine": {"refine_acquisition": True}}, quiet=True)
    assert rc == 0
    with Project.open(proj_dir, readonly=True) as proj:
        st = proj.data.steps["extract_fine"]
        assert st.status == "done", st.error
        acq = st.metrics["acquisition"]
        corrected, cbase = SeriesSet.load(proj.output_path("extract_fine", "series"))
        original, obase = SeriesSet.load(proj.output_path("exclude", "series"))
        stack, sdir = ParticleStack.load(proj.output_path("extract_fine", "particles"))
    name = corrected.series[0].name
    m = acq["series"][name]
    assert m["n_particles"] > 0 and m["views_refined"] == m["views"]
    g_new, g_old = corrected.series[0].geometry, original.series[0].geometry
    views = g_old.included_views()
    moved_A = (g_new.specimen_shifts_px() - g_old.specimen_shifts_px())[views] * g_old.pixel_size_binned_A
    np.testing.assert_allclose(moved_A, np.asarray(m["shift_A"]), atol=0.02)
    assert np.abs(moved_A).max() < 3.0  # a correct acquisition moves little (tiny: ~0.5 Å RMS, towards the truth)
    t_new = read_ctf_star(corrected.series[0].path("ctf_star", cbase))
    t_old = read_ctf_star(original.series[0].path("ctf_star", obase))
    change = t_new["rlnDefocusU"].to_numpy(float)[views] - t_old["rlnDefocusU"].to_numpy(float)[views]
    np.testing.assert_allclose(change, m["defocus_change_A"], atol=0.1)
    gb = g_new.at_binning(stack.binning)
    np.testing.assert_allclose(np.asarray(stack.info["view_matrices"][name]), gb.projection_matrices()[:, :, :3],
                               atol=1e-9)
    out = tmp_path / "relion"
    export_project(proj_dir, "relion5", out)
    tab = read_star(out / "tilt_series" / f"{name}.star")
    tab = next(v for v in tab.values() if hasattr(v, "columns"))
    expect = g_new.to_relion5()["rlnTomoXShiftAngst"][views]
    np.testing.assert_allclose(tab["rlnTomoXShiftAngst"].to_numpy(float), expect, atol=1e-3)
    assert not np.allclose(expect, g_old.to_relion5()["rlnTomoXShiftAngst"][views], atol=1e-3)
