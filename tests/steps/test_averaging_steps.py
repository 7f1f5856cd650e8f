"""The averaging steps (extract … refine_fine) on the tiny simulated data, checked against the simulator's truth."""

from __future__ import annotations

import os
import re
from pathlib import Path

import mrcfile
import numpy as np
import pytest

from tomoguide import synth
from tomoguide.compute import sta
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.fsc import soft_sphere_mask
from tomoguide.compute.io.mrc import write_mrc
from tomoguide.compute.io.star import read_particles_star
from tomoguide.compute.pick import register_translation
from tomoguide.demo import demo_params
from tomoguide.project import Project
from tomoguide.runner import StepRun, run_to_end
from tomoguide.steps import registry
from tomoguide.steps.average_records import AverageRecord, ParticleStack
from tomoguide.steps.extract import load_particles

XYZ = ["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]


@pytest.fixture(scope="module")
def picked(tiny_dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Project:
    params = demo_params(tiny_dataset / "data", synth.PRESETS["tiny"])
    proj = Project.create(tmp_path_factory.mktemp("avg") / "proj", params=params)
    ids = registry.ids()
    for step in ids[: ids.index("pick") + 1]:
        assert run_to_end(StepRun(proj, step)).status == "done", step
    yield proj
    proj.close()


def _true_poses(proj: Project, truth_dir: Path, df) -> np.ndarray:  # noqa: ANN001
    """The TRUE rotation of every extracted particle (matched to the truth after the alignment origin's shift)."""
    truth = read_particles_star(truth_dir / "particles.star").particles
    p, t = df[XYZ].to_numpy(float), truth[XYZ].to_numpy(float)
    shift = register_translation(p, t, max_shift=120.0, tolerance=30.0)
    d = np.linalg.norm((p + shift)[:, None] - t[None], axis=-1)
    nearest = d.argmin(axis=1)
    assert np.all(d[np.arange(len(p)), nearest] < 30.0)
    return euler_to_matrix(truth[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)[nearest])


def _cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    a = (a - a.mean()) * mask
    b = (b - b.mean()) * mask
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def _band_cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray, voxel_A: float, low_A: float, high_A: float) -> float:
    """Correlation of the masked maps within the resolution band ``low_A`` … ``high_A`` (the hand of a nearly
    spherical shell shows in its finer detail, not in its overall shape)."""
    n = a.shape[0]
    f = np.fft.fftfreq(n) / voxel_A
    r = np.sqrt(f[:, None, None] ** 2 + f[None, :, None] ** 2 + f[None, None, :] ** 2)
    band = (r >= 1.0 / low_A) & (r <= 1.0 / high_A)
    fa, fb = np.fft.fftn(a * mask)[band], np.fft.fftn(b * mask)[band]
    return float(np.real(np.vdot(fa, fb)) / np.sqrt(np.vdot(fa, fa).real * np.vdot(fb, fb).real))


def test_extraction_builds_ctf_weighted_pseudo_subtomograms_that_average_to_the_truth(
        picked: Project, tiny_dataset: Path) -> None:
    picked.set_params("extract", {"binning": 2.0, "box_px": 64, "crop_px": 48, "dimensionality": "3D"})
    assert run_to_end(StepRun(picked, "extract")).status == "done"
    rec, star, data, weights = load_particles(picked.output_path("extract", "particles"))
    df = star.particles
    m = len(df)
    assert m == rec.n_particles >= 12 and data.shape == (m, 48, 48, 48) == weights.shape
    assert rec.voxel_A == pytest.approx(4.0)
    assert set(df["rlnRandomSubset"]) == {1, 2} and abs(int((df["rlnRandomSubset"] == 1).sum()) - m / 2) <= 1
    with mrcfile.open(picked.output_path("extract", "particles") / "gallery.mrc") as g:
        assert g.data.shape == (m, 48, 48) and float(g.voxel_size.x) == pytest.approx(4.0)
    # the missing wedge (tiny preset: tilts up to ±30°): no weight along the beam direction (kz axis), weight
    # in the tilt plane (kx axis)
    c = 24
    assert float(weights[:, c + 6:, c, c].max()) == 0.0
    assert float(weights[:, c, c, c + 2:c + 10].min()) > 0.0
    # with the TRUE orientations, the CTF-corrected symmetric average is apoferritin, with the right hand
    rots = _true_poses(picked, tiny_dataset / "truth", df)
    avg = sta.average_from_subtomograms(data, weights, rots, symmetry="O")
    with mrcfile.open(tiny_dataset / "truth" / "apoferritin.mrc", permissive=True) as mm:
        ref = sta.rescale_map(mm.data, float(mm.voxel_size.x), 4.0, 48)
    mask = soft_sphere_mask(48, 75.0 / 4.0, 3.0)
    cc = _cc(avg, ref, mask)
    # (16 particles in 7 views up to ±30°: detail to about 12 Å, where the mirror image differs)
    band, band_mirror = _band_cc(avg, ref, mask, 4.0, 30.0, 12.0), _band_cc(avg, ref[::-1], mask, 4.0, 30.0, 12.0)
    assert cc > 0.6 and band > 0.25 and band > band_mirror + 0.08, (cc, band, band_mirror)
    # a particle file of another size (tampered): the message names the file and the record's box
    folder = picked.output_path("extract", "particles")
    wpath = folder / str(df["rlnCtfImage"].iloc[1])
    keep, stat = wpath.read_bytes(), wpath.stat()
    try:
        write_mrc(wpath, np.zeros((40, 48, 48), np.float16), 4.0)
        with pytest.raises(ValueError, match=re.escape(wpath.name) + ".*box_px 48"):
            load_particles(folder)
    finally:
        wpath.write_bytes(keep)
        os.utime(wpath, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_2d_extraction_reads_back_as_the_same_pseudo_subtomograms(picked: Project) -> None:
    picked.set_params("extract", {"binning": 6.0, "box_px": 32, "crop_px": 24, "dimensionality": "3D"})
    assert run_to_end(StepRun(picked, "extract")).status == "done"
    _, _, d3, w3 = load_particles(picked.output_path("extract", "particles"))
    picked.set_params("extract", {"dimensionality": "2D"})
    assert run_to_end(StepRun(picked, "extract")).status == "done"
    rec2, star2, d2, w2 = load_particles(picked.output_path("extract", "particles"))
    assert rec2.dimensionality == 2
    assert int(star2.optics["rlnImageDimensionality"].iloc[0]) == 2
    np.testing.assert_allclose(d2, d3, atol=1e-4 * float(np.abs(d3).max()))
    np.testing.assert_allclose(w2, w3, atol=2e-3 * float(w3.max()))  # weights stored as float16
    picked.set_params("extract", {"dimensionality": "3D"})


def test_memory_estimates_cover_the_reconstructor_and_not_the_particle_count(picked: Project) -> None:
    """The averaging steps' estimate covers what load_reconstructor really holds (within 2×); the extraction's
    memory estimate is that of one chunk, whatever the number of particles (its disk estimate grows with it)."""
    from tomoguide.steps.average_records import ParticleStack
    from tomoguide.steps.extract import Extract, load_reconstructor, reconstructor_bytes

    picked.set_params("extract", {"binning": 6.0, "box_px": 32, "crop_px": 24, "dimensionality": "3D"})
    assert run_to_end(StepRun(picked, "extract")).status == "done"
    folder = picked.output_path("extract", "particles")
    rec, _ = ParticleStack.load(folder)
    r = load_reconstructor(folder)
    held = sum(a.nbytes for a in (r._vals, r._ws, r._views, r._particle))
    est = reconstructor_bytes(rec)
    assert held <= est <= 2.5 * held + 4 * rec.n_particles * 61 * 32**2, (held, est)
    run = StepRun(picked, "extract")
    ctx = run._context(picked.dir / "steps" / "extract" / "check")
    needs = Extract().estimate(picked.params("extract"), ctx)
    assert needs.memory_bytes < 2_100_000_000 and needs.disk_bytes >= rec.n_particles * 24**3 * 4


def test_bad_box_sizes_are_refused_with_the_field_named(picked: Project) -> None:
    from tomoguide.runner import RunRefused

    picked.set_params("extract", {"box_px": 32, "crop_px": 48})
    with pytest.raises(RunRefused) as err:
        StepRun(picked, "extract").preflight()
    assert "cropped box" in str(err.value)
    picked.set_params("extract", {"box_px": 32, "crop_px": 24})


def test_the_averaging_chain_runs_to_a_map_with_the_right_hand(picked: Project, tiny_dataset: Path) -> None:
    picked.set_params("extract", {"binning": 6.0, "box_px": 32, "crop_px": 24, "dimensionality": "3D"})
    ids = registry.ids()
    for step in ids[ids.index("extract"):]:
        assert run_to_end(StepRun(picked, step)).status == "done", step
    for step in ("initial_model", "refine", "reconstruct_particle", "refine_fine"):
        rec, base = AverageRecord.load(picked.output_path(step, "average"))
        with mrcfile.open(base / rec.map) as mm:
            assert mm.data.shape == (rec.box_px,) * 3 and float(mm.voxel_size.x) == pytest.approx(rec.voxel_A)
            assert np.isfinite(mm.data).all() and float(mm.data.std()) > 0
        table = read_particles_star(base / rec.particles).particles
        assert {"rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst"} <= set(table.columns)
        if step != "initial_model":
            assert rec.fsc is not None and rec.resolution_A is not None
            assert 2 * rec.voxel_A - 1e-6 <= rec.resolution_A < 200.0
    fine, base = AverageRecord.load(picked.output_path("refine_fine", "average"))
    # the finer extraction at full sampling: the binning nearest 2.7 Å voxels is 1 for the tiny preset's 2 Å pixels
    # (16 particles fit any memory budget: the 256 Å crop)
    assert fine.voxel_A == pytest.approx(2.0)
    stack, _ = ParticleStack.load(picked.output_path("extract_fine", "particles"))
    assert stack.binning == 1.0 and stack.box_px == 128
    with mrcfile.open(base / fine.map) as mm:
        avg = np.asarray(mm.data)
    with mrcfile.open(tiny_dataset / "truth" / "apoferritin.mrc", permissive=True) as mm:
        ref = sta.rescale_map(mm.data, float(mm.voxel_size.x), fine.voxel_A, fine.box_px)
    mask = soft_sphere_mask(fine.box_px, 75.0 / fine.voxel_A, 3.0)
    # both maps are O-symmetric about the same axes (the symmetry operators fix the frame up to a symmetry
    # rotation), so they can be compared directly; the hand must be right
    cc = _cc(avg, ref, mask)
    v = fine.voxel_A
    band, band_mirror = _band_cc(avg, ref, mask, v, 30.0, 12.0), _band_cc(avg, ref[::-1], mask, v, 30.0, 12.0)
    # (the tiny preset's 16 particles in 7 views: a weak but consistent hand signal, about 0.05 in every band
    # from 60 to 10 Å; the small preset's bench measures it properly)
    assert cc > 0.6 and band > band_mirror + 0.03, (cc, band, band_mirror)


def test_picked_orientations_become_tilt_priors_along_the_particle_axis() -> None:
    """Angles from picking (e.g. surface normals) are kept as RELION's rlnAngleTiltPrior/PsiPrior at extraction,
    and the prior direction the searches use is the picked R ẑ (rot, the spin about it, does not matter)."""
    import pandas as pd

    from tomoguide.steps.average_records import prior_axes
    from tomoguide.steps.extract import Extract, ExtractParams

    rng = np.random.default_rng(3)
    ang = np.column_stack([rng.uniform(-180, 180, 6), rng.uniform(0, 180, 6), rng.uniform(-180, 180, 6)])
    df = pd.DataFrame({"rlnTomoName": ["TS_01"] * 6, **{c: rng.normal(size=6) for c in XYZ},
                       "rlnAngleRot": ang[:, 0], "rlnAngleTilt": ang[:, 1], "rlnAnglePsi": ang[:, 2]})
    out = Extract()._prepare(df, ExtractParams())
    np.testing.assert_allclose(out["rlnAngleTiltPrior"], ang[:, 1])
    axes = prior_axes(out)
    np.testing.assert_allclose(axes, euler_to_matrix(ang)[:, :, 2], atol=1e-12)
    assert prior_axes(df.drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"])) is None
    assert "rlnAngleTiltPrior" not in Extract()._prepare(df[["rlnTomoName", *XYZ]], ExtractParams()).columns
