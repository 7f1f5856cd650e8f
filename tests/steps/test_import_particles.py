"""Entry point (c) (issue 17): the extract step with ``source = "RELION 5 particles"`` reads RELION 5 / WarpTools
2D-stack particles and writes them in the extraction's own format, with their poses, needing no earlier step.

Synthetic files: the RELION 5 layout written from tomoguide's geometry in ``tests/compute/test_relion_roundtrip.py``
(always run). Real files: the 40 WarpTools ribosomes of ``../shared/data/relion5_warptools_particles`` (skipped
without them)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.io.relion_particles import read_relion_particles
from tomoguide.compute.io.star import read_particles_star
from tomoguide.compute.relion_reconstruct import reconstruct_relion_particles
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.average_records import ParticleStack, table_rotations
from tomoguide.steps.extract import RELION_SOURCE, Extract, ExtractFineParams, load_particles, load_reconstructor

HERE = Path(__file__).resolve().parent
REAL = (HERE.parents[1] / ".." / "shared" / "data" / "relion5_warptools_particles").resolve()
REAL_SET = REAL / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star"


def _roundtrip_module():
    spec = importlib.util.spec_from_file_location("relion_roundtrip", HERE.parent / "compute" /
                                                  "test_relion_roundtrip.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return _roundtrip_module().write_relion5_set(tmp_path_factory.mktemp("relion5"))


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _import(tmp: Path, particles_star: Path, **extra: object) -> Path:
    project = tmp / "p"
    with Project.create(project, params={"extract": {"source": RELION_SOURCE,
                                                     "particles_star": str(particles_star), **extra}}) as proj:
        st = run_to_end(StepRun(proj, "extract"))
        assert st.status == "done", st.error
    return project


def test_the_entry_needs_no_earlier_step(synthetic: dict, tmp_path: Path) -> None:
    with Project.create(tmp_path / "p", params={"extract": {"source": RELION_SOURCE, "particles_star":
                                                            str(synthetic["root"] / "optimisation_set.star")}}) as proj:
        assert proj.inputs_of("extract") == ()
        assert proj.upstream("extract") == []
        # without tilt series the finer re-extraction cannot run: the project is extraction + refinement, every
        # other step is not needed (not run by `tomoguide run`, greyed in the wizard)
        assert [s for s in registry.ids() if proj.is_needed(s)] == ["extract", "refine"]
        assert "extract_fine" not in registry.applicable(proj.params_of)
        assert "extract" not in registry.downstream("pick", {"extract": proj.params("extract")}.get)
        assert proj.origin("extract") == "imported"
        assert StepRun(proj, "extract").check_issues() == []
        assert not StepRun(proj, "extract").input_issues(save=False)
    assert Extract.inputs_for(ExtractFineParams()) == Extract.inputs  # the finer extraction never imports


def test_imported_particles_are_the_extraction_format(synthetic: dict, tmp_path: Path) -> None:
    project = _import(tmp_path, synthetic["root"] / "optimisation_set.star")
    with Project.open(project, readonly=True) as proj:
        folder = proj.output_path("extract", "particles")
    rec, star, data, weights = load_particles(folder)
    assert rec.n_particles == 12 and rec.box_px == 24 and rec.voxel_A == pytest.approx(10.0)
    assert data.shape == (12, 24, 24, 24) and np.all(weights >= 0)
    df = star.particles
    # the poses in tomoguide's convention: R = A_sub E, origin = A_sub origin (t = -origin), coordinates centred
    np.testing.assert_allclose(table_rotations(df), synthetic["rot"], atol=1e-5)
    origin = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    np.testing.assert_allclose(-origin, synthetic["t_px"] * 10.0, atol=1e-4)
    xyz = df[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]]
    np.testing.assert_allclose(xyz.to_numpy(float), synthetic["coords_A"], atol=1e-3)
    assert set(df["rlnRandomSubset"]) == {1, 2}
    # what the averaging steps reconstruct from it, with the table's poses, is the direct reconstruction
    rec2 = load_reconstructor(folder)
    vol = rec2.reconstruct(table_rotations(df), -origin / rec.voxel_A)
    direct = reconstruct_relion_particles(read_relion_particles(synthetic["root"] / "optimisation_set.star"))
    assert _cc(vol, direct) > 0.999  # float16 storage of the sub-tilts
    assert _cc(vol, synthetic["ref"]) > 0.9


def test_unreadable_files_are_named(synthetic: dict, tmp_path: Path) -> None:
    with Project.create(tmp_path / "p", params={"extract": {"source": RELION_SOURCE}}) as proj:
        issues = StepRun(proj, "extract").check_issues()
        assert [(i.level, i.field) for i in issues] == [("error", "particles_star")]
        proj.set_params("extract", {"source": RELION_SOURCE, "particles_star": str(synthetic["root"] /
                                                                                  "particles.star")})
        issues = StepRun(proj, "extract").check_issues()
        assert issues and "tomograms" in issues[0].message.lower() and "particles.star" in issues[0].message
        bad = tmp_path / "broken.star"
        bad.write_text("data_general\n_rlnTomoSubTomosAre2DStacks 1\n")
        proj.set_params("extract", {"source": RELION_SOURCE, "particles_star": str(bad),
                                    "tomograms_star": str(synthetic["root"] / "tomograms.star")})
        issues = StepRun(proj, "extract").check_issues()
        assert issues and "broken.star" in issues[0].message and "data_optics" in issues[0].message
        bad.write_text("data_general\n_rlnTomoSubTomosAre2DStacks 0\n")  # 3D pseudo-subtomograms, no table
        issues = StepRun(proj, "extract").check_issues()
        assert issues and "broken.star" in issues[0].message and "data_optics" in issues[0].message


@pytest.mark.skipif(not REAL_SET.is_file(), reason=f"real WarpTools particles not present at {REAL} (GPL-3.0 "
                                                      "tomodrgn test data, in ../shared/data only)")
def test_real_warptools_particles_import(tmp_path: Path) -> None:
    project = _import(tmp_path, REAL_SET)
    with Project.open(project, readonly=True) as proj:
        folder = proj.output_path("extract", "particles")
    rec, _ = ParticleStack.load(folder)
    assert rec.n_particles == 40 and rec.box_px == 32 and rec.info["poses_given"]
    assert any("binned pixels" in n for n in rec.info["reader_notes"])
    df = read_particles_star(rec.path("star", folder)).particles
    rc = load_reconstructor(folder)
    origin = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    vol = rc.reconstruct(table_rotations(df), -origin / rec.voxel_A)
    direct = reconstruct_relion_particles(read_relion_particles(REAL_SET))
    assert _cc(vol, direct) > 0.995


def test_refine_starts_from_the_imported_poses(synthetic: dict, tmp_path: Path) -> None:
    """The refine step needs no initial model for imported poses and refines locally from them."""
    project = _import(tmp_path, synthetic["root"] / "optimisation_set.star")
    with Project.open(project) as proj:
        assert proj.inputs_of("refine") == ("extract",) and not proj.is_needed("initial_model")
        proj.set_params("refine", {"symmetry": "C1", "mask_diameter_A": 200.0, "max_iterations": 3})
        st = run_to_end(StepRun(proj, "refine"))
        assert st.status == "done", st.error
        m = proj.state("refine").metrics
        folder = proj.output_path("refine", "average")
    assert m["resolution_A"] <= m["resolution_given_poses_A"] * 1.05
    from tomoguide.steps.average_records import AverageRecord

    rec, base = AverageRecord.load(folder)
    df = read_particles_star(rec.path("particles", base)).particles
    # local searches: every particle stays near its true orientation
    from tomoguide.compute.euler import rotation_angle_deg

    ang = rotation_angle_deg(table_rotations(df), synthetic["rot"])
    assert np.max(ang) < 10.0


@pytest.mark.skipif(not REAL_SET.is_file(), reason=f"real WarpTools particles not present at {REAL} (GPL-3.0 "
                                                      "tomodrgn test data, in ../shared/data only)")
def test_real_particles_refine_locally_without_getting_worse(tmp_path: Path) -> None:
    """Issue 19: the 40 WarpTools ribosomes refined locally from their poses by the refine step (its defaults but
    C1 and a 300 Å mask, for a ribosome): the half-map FSC does not get worse (measured 27.4 Å with the given
    poses, 24.0 Å = Nyquist after)."""
    project = _import(tmp_path, REAL_SET)
    with Project.open(project) as proj:
        proj.set_params("refine", {"symmetry": "C1", "mask_diameter_A": 300.0})
        st = run_to_end(StepRun(proj, "refine"))
        assert st.status == "done", st.error
        m = proj.state("refine").metrics
    assert m["resolution_A"] <= m["resolution_given_poses_A"] + 1e-6
    assert m["resolution_given_poses_A"] < 30.0


@pytest.mark.slow
def test_our_relion5_export_of_2d_particles_imports_back(tiny_project_root: Path, tmp_path: Path) -> None:
    """The tiny demo's particles extracted as 2D sub-tilt stacks, exported by ``tomoguide export --to relion5`` and
    imported into a new project at entry point (c): the same particles, poses and reconstruction. (Slow: the session's
    tiny demo run; the reader and reconstruction are covered fast by tests/compute/test_relion_roundtrip.py.)"""
    import shutil

    from tomoguide.cli import main
    from tomoguide.compute.sta import Reconstructor, Subtilts
    from tomoguide.runner import set_params_checked

    for part in ("data", "project"):
        shutil.copytree(tiny_project_root / part, tmp_path / part, symlinks=True)
    with Project.open(tmp_path / "project") as proj:
        assert proj.data.steps["exclude"].status == "done" and proj.data.steps["pick"].status == "done"
        set_params_checked(proj, {"extract": {**proj.params("extract").model_dump(), "dimensionality": "2D"}})
        st = run_to_end(StepRun(proj, "extract"))
        assert st.status == "done", st.error
        own_rec, own_folder = ParticleStack.load(proj.output_path("extract", "particles"))
        own = read_particles_star(own_rec.path("star", own_folder)).particles
    out = tmp_path / "relion5"
    assert main(["export", str(tmp_path / "project"), "--to", "relion5", str(out)]) == 0
    p = read_relion_particles(out / "optimisation_set.star")
    assert p.n_particles == len(own) and p.ctf_premultiplied and p.box == own_rec.box_px
    project = _import(tmp_path / "imported", out / "optimisation_set.star")
    with Project.open(project, readonly=True) as proj:
        folder = proj.output_path("extract", "particles")
    rec, _ = ParticleStack.load(folder)
    df = read_particles_star(rec.path("star", folder)).particles
    key = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]
    np.testing.assert_allclose(df[key].to_numpy(float), own[key].to_numpy(float), atol=1e-2)
    np.testing.assert_allclose(table_rotations(df), table_rotations(own), atol=1e-5)
    assert (df["rlnRandomSubset"].to_numpy() == own["rlnRandomSubset"].to_numpy()).all()
    # the view matrices of the import (from the exported rlnTomoXTilt/YTilt/ZRot) are the extraction's
    for name, mats in rec.info["view_matrices"].items():
        ours = np.asarray(own_rec.info["view_matrices"][name])[own_rec.info["views_used"][name]]
        np.testing.assert_allclose(np.asarray(mats), ours, atol=1e-6)
    # reconstruction: the imported particles vs the project's own cropped 2D sub-tilts with the same poses
    r_imp = load_reconstructor(folder)
    origin = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    vol_imp = r_imp.reconstruct(table_rotations(df), -origin / rec.voxel_A)
    _, star, _, _ = load_particles(own_folder)
    from tomoguide.compute.io.mrc import read_mrc

    sets = []
    for row in star.particles.itertuples(index=False):
        d, _ = read_mrc(own_folder / str(row.rlnImageName))
        w, _ = read_mrc(own_folder / str(row.rlnCtfImage))
        views = np.asarray(own_rec.info["views_used"][str(row.rlnTomoName)])
        sets.append(Subtilts(images=np.asarray(d, np.float32)[None], weights=np.asarray(w, np.float32)[None],
                             view_matrices=np.asarray(own_rec.info["view_matrices"][str(row.rlnTomoName)])[views],
                             views=views, pixel_size_A=own_rec.voxel_A, defocus_A=np.zeros((1, views.size))))
    own_origin = own[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    vol_own = Reconstructor(sets).reconstruct(table_rotations(own), -own_origin / own_rec.voxel_A)
    assert _cc(vol_imp, vol_own) > 0.97


def test_3d_pseudo_subtomograms_import(synthetic: dict, tmp_path: Path) -> None:
    """RELION 3D pseudo-subtomograms (rlnTomoSubTomosAre2DStacks 0): the data and RELION's combined CTF² and
    multiplicity weights (FFTW half layout, (2B, B, B/2+1)) become the extraction's 3D data and centred weights; the
    average from them with the given poses is the phantom."""
    import pandas as pd

    from tomoguide.compute.euler import matrix_to_euler
    from tomoguide.compute.io.mrc import write_mrc
    from tomoguide.compute.io.star import write_particles_star, write_star
    from tomoguide.compute.refine import Poses, reconstruct_halves
    from tomoguide.compute.relion_reconstruct import relion_pseudo_subtomograms, relion_subtilts

    p2 = read_relion_particles(synthetic["root"] / "optimisation_set.star")
    data, weights = relion_pseudo_subtomograms(relion_subtilts(p2))
    b = data.shape[-1]
    root = tmp_path / "r3d"
    (root / "sub").mkdir(parents=True)
    rows = []
    ang = matrix_to_euler(synthetic["rot"])
    for i in range(len(data)):
        half = np.fft.ifftshift(weights[i])[:, :, : b // 2 + 1]
        write_mrc(root / "sub" / f"{i}_data.mrc", data[i], 10.0)
        write_mrc(root / "sub" / f"{i}_weights.mrc", np.concatenate([half, np.ones_like(half)]).astype(np.float32),
                  0.1)
        rows.append({"rlnTomoName": f"TS_0{1 + i // 6}", "rlnCenteredCoordinateXAngst": 0.0,
                     "rlnCenteredCoordinateYAngst": 0.0, "rlnCenteredCoordinateZAngst": 0.0,
                     "rlnAngleRot": ang[i, 0], "rlnAngleTilt": ang[i, 1], "rlnAnglePsi": ang[i, 2],
                     "rlnOriginXAngst": -synthetic["t_px"][i, 0] * 10, "rlnOriginYAngst": -synthetic["t_px"][i, 1] * 10,
                     "rlnOriginZAngst": -synthetic["t_px"][i, 2] * 10, "rlnRandomSubset": i % 2 + 1,
                     "rlnImageName": f"sub/{i}_data.mrc", "rlnCtfImage": f"sub/{i}_weights.mrc"})
    write_particles_star(root / "particles.star", pd.DataFrame(rows),
                         {"rlnTomoTiltSeriesPixelSize": 10.0, "rlnImagePixelSize": 10.0, "rlnImageSize": b,
                          "rlnImageDimensionality": 3, "rlnCtfDataAreCtfPremultiplied": 1},
                         general={"rlnTomoSubTomosAre2DStacks": 0})
    write_star(root / "opt.star", {"": {"rlnTomoParticlesFile": "particles.star",
                                        "rlnTomoTomogramsFile": str(synthetic["root"] / "tomograms.star")}})
    project = _import(tmp_path, root / "opt.star")
    with Project.open(project, readonly=True) as proj:
        folder = proj.output_path("extract", "particles")
    rec, star, d3, w3 = load_particles(folder)
    assert rec.dimensionality == 3 and load_reconstructor(folder) is None
    np.testing.assert_allclose(d3, data, atol=1e-5)
    np.testing.assert_allclose(w3, weights, atol=2e-3 * float(weights.max()))  # float16 storage
    df = star.particles
    origin = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(float)
    res = reconstruct_halves(d3, w3, Poses(table_rotations(df), -origin, np.zeros(len(df))),
                             df["rlnRandomSubset"].to_numpy(), symmetry="C1", voxel_A=10.0, mask_diameter_A=200.0)
    assert _cc(res.merged, synthetic["ref"]) > 0.85


def test_the_particles_entry_from_the_command_line(synthetic: dict, tmp_path: Path, capsys) -> None:
    """``tomoguide new --entry particles`` then ``tomoguide run``: extraction (imported) and refinement run, every
    other step is skipped as not needed (earlier ones: the data enter later; the re-extraction and what follows:
    nothing to run them on), and the wizard's particles entry is offered (enabled)."""
    from tomoguide.cli import main
    from tomoguide.entries import particles_entry

    assert particles_entry() == (RELION_SOURCE, "particles_star")
    project = tmp_path / "p"
    assert main(["new", str(project), "--entry", "particles", "--particles",
                 str(synthetic["root"] / "optimisation_set.star")]) == 0
    assert main(["run", str(project), "--cluster", "inline"]) == 0
    err = capsys.readouterr().err
    assert "extract_fine: not needed (the project ends before it" in err
    assert "import_movies: not needed (the project enters later)" in err
    with Project.open(project, readonly=True) as proj:
        done = [s for s in registry.ids() if proj.data.steps[s].status == "done"]
        assert done == ["extract", "refine"]
        assert proj.state("refine").metrics["resolution_A"] > 0
