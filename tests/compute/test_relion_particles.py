"""RELION 5 2D-stack particles (issue 17): the reader (tomoguide.compute.io.relion_particles) and the reconstruction
from the STAR poses (tomoguide.compute.relion_reconstruct).

Real data: ``../shared/data/relion5_warptools_particles`` (40 WarpTools ribosomes, 4 tilt series of 37 tilts, 32 px at
12 Å, CTF-premultiplied, per-tilt rlnTomoProjX/Y/Z/W) and the map shipped with them as "RELION's reconstruction".
What the tests below establish (numbers in bench/results/relion_particles.json):

* The map made with RELION 5's model of these files (exp_model.cpp, ml_optimiser.cpp, backprojector.cpp; WarpTools'
  export follows the same model) is the z-mirror of the shipped map: gold-standard merged map 0.88 against its
  mirror image inside a 300 Å sphere, 0.61 as it is.
* The shipped map is not a reconstruction of these 40 particles: its voxel (12.0024 Å = 128 × 3.0006 Å / 32) is
  that of a 128-px map at 1.8 × 1.667 Å rescaled, not the stacks' 12.0 Å, and it does not carry their noise: its
  FSC with each 20-particle half map is √FSC(half, half) in every shell, what a noise-free map gives.
* So the issue's targets (correlation ≥ 0.9, FSC ≥ 0.5 to 30 Å) are capped by the 40 particles' own noise: measured
  0.88 and FSC ≥ 0.5 to 34.9 Å (0.49 at 32 Å, 0.46 at 29.5 Å); the tests hold the measured values with a margin.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.fsc import fsc, lowpass, soft_sphere_mask
from tomoguide.compute.io.errors import FormatError
from tomoguide.compute.io.mrc import read_mrc
from tomoguide.compute.io.relion_particles import read_relion_particles
from tomoguide.compute.relion_reconstruct import (
    reconstruct_relion_particles,
    relion_half_maps,
    relion_poses,
    relion_rotations,
    relion_shifts_px,
    relion_subtilts,
)
from tomoguide.compute.sta import Reconstructor, Subtilts

DATA = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "relion5_warptools_particles").resolve()
OPT_SET = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_optimisation_set.star"
PARTICLES = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12.star"
TOMOGRAMS = "warptools_test_4-tomos_10-ptcls_box-32_angpix-12_tomograms.star"
REF = "warptools_test_box-32_angpix-12_reconstruct.mrc"
RADIUS_PX = 150.0 / 12.0  # 300 Å diameter


def _data() -> Path:
    if not (DATA / OPT_SET).is_file():
        pytest.skip(f"real RELION 5 particles not present: GPL-3.0 (tomodrgn), not redistributable here "
                    f"(licence), so not in tests/data; the data is in ../shared/data "
                    f"(relion5_warptools_particles, expected at {DATA})")
    return DATA


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    c = np.arange(a.shape[0]) - a.shape[0] // 2
    m = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2) < RADIUS_PX
    x, y = np.asarray(a, float)[m], np.asarray(b, float)[m]
    x, y = x - x.mean(), y - y.mean()
    return float((x * y).sum() / np.sqrt((x * x).sum() * (y * y).sum()))


def _mirror_z(v: np.ndarray) -> np.ndarray:
    return np.roll(v[::-1], 1, axis=0)


@pytest.fixture(scope="module")
def particles():
    return read_relion_particles(_data() / OPT_SET)


@pytest.fixture(scope="module")
def maps(particles):
    ref, _ = read_mrc(DATA / REF)
    return reconstruct_relion_particles(particles), np.asarray(ref, np.float64)


def test_reader_real_files(particles):
    p = particles
    assert p.n_particles == 40 and len(p.tomograms) == 4
    assert p.box == 32 and p.pixel_size_A == pytest.approx(12.0) and p.ctf_premultiplied
    assert (p.voltage_kV, p.cs_mm, p.amplitude_contrast) == pytest.approx((300.0, 2.7, 0.07))
    assert [g.name for g in p.tomograms] == ["Unt_083.tomostar", "Unt_050.tomostar", "Unt_076.tomostar",
                                             "Unt_088.tomostar"]
    g = p.tomograms[0]
    assert g.images.shape == (10, 37, 32, 32) and g.view_matrices.shape == (37, 3, 3)
    # the per-tilt matrices are rotations (rlnTomoProjX/Y/Z rows), first row of the first tilt as in the file
    np.testing.assert_allclose(g.view_matrices[0, 0], [0.10915412, -0.99366254, 0.026835253])
    for t in p.tomograms:
        np.testing.assert_allclose(np.einsum("fij,fkj->fik", t.view_matrices, t.view_matrices),
                                   np.broadcast_to(np.eye(3), t.view_matrices.shape), atol=1e-5)
        np.testing.assert_allclose(np.linalg.det(t.view_matrices), 1.0, atol=1e-5)
    # Unt_083: tilts 0, 5 and 35 not visible, blank in WarpTools' stacks (one image per tilt)
    assert np.flatnonzero(~g.visible[0]).tolist() == [0, 5, 35]
    raw, _ = read_mrc(DATA / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12" / "Unt_083" / "Unt_083_12.00A_000001.mrcs")
    raw = np.asarray(raw, np.float32)
    # WarpTools 2.0: one image per tilt, those of the unused tilts (rlnCtfScalefactor 0.0001) nearly blank
    assert raw.shape[0] == 37 and np.abs(raw[[0, 5, 35]]).max() < 1e-3 < raw[1].std()
    np.testing.assert_array_equal(g.images[0][g.visible[0]], raw[g.visible[0]])
    assert not g.images[:, ~g.visible[0]].any()
    assert np.all(g.images[:, g.visible[0]].std(axis=(-2, -1)) > 0.1)
    assert sum(int(t.visible.all(axis=1).sum()) for t in p.tomograms) == 20
    assert g.defocus_u_A[0] == pytest.approx(33350.7) and g.ctf_scale[0] == 0.0 and g.handedness == -1.0
    np.testing.assert_allclose(g.angles_deg[0], [53.913, 104.840, -78.580])
    # rlnCoordinateX/Y/Z: WarpTools' binned pixels (all particles fit in the tomograms shrunk by the binning)
    np.testing.assert_allclose(g.positions_px[0], np.array([494.521, 564.065, 28.146]) * 7.19856 - [2200, 3000, 700])
    assert "binned pixels" in p.notes[0]
    relion = read_relion_particles(_data() / OPT_SET, pixel_coordinates="relion", load_images=False)
    np.testing.assert_allclose(relion.tomograms[0].positions_px[0], [494.521 - 2200, 564.065 - 3000, 28.146 - 700])


def test_relion_convention_recovers_a_phantom():
    """Sub-tilts simulated with RELION's projection model (image point = P_f A_sub E r, RELION's Projector:
    slice k samples the reference at (P_f A_sub E)ᵀ (k, 0)) are reconstructed by tomoguide with R = A_sub E and the
    view matrices P_f: the phantom comes back, not its mirror; E A_sub (the other order) does not."""
    from scipy.ndimage import map_coordinates
    from scipy.spatial.transform import Rotation

    b, c = 24, 12
    g = np.arange(b) - c
    zz, yy, xx = np.meshgrid(g, g, g, indexing="ij")
    blobs = [((5, 0, 0), 1.0), ((0, 3, 0), 0.7), ((0, 0, -6), 0.5), ((3, 4, 2), 0.9)]
    ref = sum(a * np.exp(-((xx - p[0]) ** 2 + (yy - p[1]) ** 2 + (zz - p[2]) ** 2) / 4.0) for p, a in blobs)
    rng = np.random.default_rng(3)
    m, f = 24, 4
    views = Rotation.random(f, random_state=4).as_matrix()
    ang = rng.uniform([0, 0, 0], [360, 180, 360], (m, 3))
    sub = rng.uniform([0, 0, 0], [360, 180, 360], (m, 3))
    rot = relion_rotations(ang, sub)
    np.testing.assert_allclose(rot, euler_to_matrix(sub) @ euler_to_matrix(ang))
    vv, uu, ww = np.meshgrid(g, g, g, indexing="ij")
    pts = np.stack([uu.ravel(), vv.ravel(), ww.ravel()])
    images = np.zeros((m, f, b, b), np.float32)
    for i in range(m):
        for k in range(f):
            r = (views[k] @ rot[i]).T @ pts
            images[i, k] = map_coordinates(ref, [r[2] + c, r[1] + c, r[0] + c], order=1).reshape(b, b, b).sum(2)
    st = Subtilts(images=images, weights=np.ones_like(images), view_matrices=views, views=np.arange(f),
                  pixel_size_A=1.0, defocus_A=np.zeros((m, f)))
    rec = Reconstructor([st], pad=2)
    good = rec.reconstruct(rot, None)
    other = rec.reconstruct(euler_to_matrix(ang) @ euler_to_matrix(sub), None)

    def cc(a, b_):
        a, b_ = a - a.mean(), b_ - b_.mean()
        return float((a * b_).sum() / np.sqrt((a * a).sum() * (b_ * b_).sum()))

    assert cc(good, ref) > 0.99
    assert cc(np.roll(good[::-1], 1, axis=0), ref) < 0.8
    assert cc(other, ref) < 0.5
    # origin: x_tomogram = R x_ref + t with t = -A_sub origin / pixel
    np.testing.assert_allclose(relion_shifts_px(np.array([[12.0, 0, 0]]), np.array([[90.0, 0, 0]]), 12.0),
                               -(euler_to_matrix(90.0, 0.0, 0.0) @ [1.0, 0, 0])[None])


def test_reconstruction_against_relion_map(particles, maps):
    """Measured: correlation 0.878 with the file's mirror image (0.61 as it is), FSC ≥ 0.5 to 34.9 Å (0.49 at 32 Å,
    0.46 at 29.5 Å): the targets 0.9 / 30 Å are not reached, see the next test for why."""
    vol, ref = maps
    assert vol.shape == (32, 32, 32) and np.isfinite(vol).all()
    res = relion_half_maps(particles, np.arange(particles.n_particles) % 2 + 1)
    merged = res.merged
    direct, mirrored = _cc(merged, ref), _cc(_mirror_z(merged), ref)
    assert mirrored > 0.85 and direct < 0.65 and mirrored > direct + 0.2
    assert _cc(_mirror_z(vol), ref) > 0.75  # the unfiltered map too (measured 0.80)
    for m in (merged, vol):  # a shift after the mirror does not help: same centre (B // 2)
        assert _cc(_mirror_z(m), ref) >= max(_cc(np.roll(_mirror_z(m), s, axis=a), ref) for s in (-1, 1)
                                                for a in range(3))
    freqs, curve = fsc(_mirror_z(merged), ref, voxel_A=12.0, mask=soft_sphere_mask(32, RADIUS_PX, 2.0))
    assert np.all(curve[1:12] > 0.5)  # to 34.9 Å (shell 11)
    assert 0.4 < curve[12] < 0.55 and 0.38 < curve[13] < 0.5  # 32 Å: measured 0.49, 29.5 Å: 0.46
    _, direct_curve = fsc(merged, ref, voxel_A=12.0, mask=soft_sphere_mask(32, RADIUS_PX, 2.0))
    assert np.all(direct_curve[4:9] < 0.5)  # the map as it is disagrees from 96 Å on


def test_reference_map_is_not_made_from_these_particles(particles, maps):
    """A map made from these 40 particles would share their noise: its FSC with either 20-particle half map would
    stay ≥ 0.7 where the halves share no signal. The file's FSC with each half is √FSC(half1, half2) in every shell
    (what an independent, noise-free map gives), and its voxel size is that of a rescaled 128-px map."""
    _, ref = maps
    info = read_mrc(DATA / REF)[1]
    vox = float(info.voxel_size_A[0])
    assert vox == pytest.approx(128 * 3.0006 / 32, abs=2e-4) and vox != pytest.approx(12.0, abs=1e-3)
    res = relion_half_maps(particles, np.arange(particles.n_particles) % 2 + 1)
    mask = soft_sphere_mask(32, RADIUS_PX, 2.0)
    _, hh = fsc(res.half1, res.half2, voxel_A=12.0, mask=mask)
    _, r1 = fsc(_mirror_z(res.half1), ref, voxel_A=12.0, mask=mask)
    _, r2 = fsc(_mirror_z(res.half2), ref, voxel_A=12.0, mask=mask)
    pred = np.sqrt(np.clip(hh[1:14], 1e-3, 1.0))
    ratio = 0.5 * (r1[1:14] + r2[1:14]) / pred
    assert np.all(ratio > 0.65) and np.all(ratio < 1.1)  # measured 0.74-1.00
    quiet = np.flatnonzero(hh[1:] < 0.15) + 1  # shells where the halves share little signal
    assert quiet.size >= 3 and np.all(0.5 * (r1[quiet] + r2[quiet]) < 0.45)  # far from the ≥ 0.7 of shared noise


# ---- reader errors on broken files made here ----------------------------------------------------------------------


def _copy_set(tmp_path: Path) -> tuple[Path, Path]:
    src = _data()
    part = tmp_path / PARTICLES
    tomo = tmp_path / TOMOGRAMS
    part.write_text((src / PARTICLES).read_text())
    tomo.write_text((src / TOMOGRAMS).read_text())
    (tmp_path / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12").symlink_to(
        src / "warptools_test_4-tomos_10-ptcls_box-32_angpix-12")
    return part, tomo


def _drop_column(text: str, label: str) -> str:
    """Remove a loop column (its label line and the matching value of every row of that loop)."""
    lines = text.splitlines()
    out, labels, col = [], [], None
    for line in lines:
        s = line.strip()
        if s.startswith("_"):
            if s.split()[0] == label:
                col = len(labels)
            labels.append(s.split()[0])
            if s.split()[0] != label:
                out.append(line)
            continue
        if s.startswith("data_") or s == "loop_":
            labels, col = [], col if s == "loop_" else None
            out.append(line)
            continue
        if col is not None and s and len(labels) > col:
            toks = s.split()
            if len(toks) == len(labels):
                del toks[col]
                line = "  ".join(toks)
        out.append(line)
    return "\n".join(out) + "\n"


def test_reader_names_file_and_missing_column(tmp_path):
    part, tomo = _copy_set(tmp_path)
    part.write_text(_drop_column(part.read_text(), "_rlnTomoVisibleFrames"))
    with pytest.raises(FormatError) as err:
        read_relion_particles(part, tomo)
    assert PARTICLES in str(err.value) and "data_particles/rlnTomoVisibleFrames" in str(err.value)


def test_reader_missing_projection(tmp_path):
    part, tomo = _copy_set(tmp_path)
    text = tomo.read_text()
    for lab in ("_rlnTomoProjX", "_rlnTomoProjY", "_rlnTomoProjZ", "_rlnTomoProjW"):
        text = _drop_column(text, lab)
    tomo.write_text(text)
    with pytest.raises(FormatError) as err:
        read_relion_particles(part, tomo, load_images=False)
    assert TOMOGRAMS in str(err.value) and "rlnTomoProjX" in str(err.value) and "Unt_083" in str(err.value)


def test_reader_truncated_star_and_3d_subtomograms(tmp_path):
    part, tomo = _copy_set(tmp_path)
    full = part.read_text()
    lines = full.splitlines()
    cut = next(i for i, ln in enumerate(lines) if ln.strip().startswith("Unt_050.tomostar   3"))
    part.write_text("\n".join(lines[:cut]) + "\n" + lines[cut][:60] + "\n")  # the file ends inside a row
    with pytest.raises(FormatError) as err:
        read_relion_particles(part, tomo)
    assert PARTICLES in str(err.value)
    part.write_text(full.replace("_rlnTomoSubTomosAre2DStacks   1", "_rlnTomoSubTomosAre2DStacks   0"))
    with pytest.raises(FormatError, match="rlnTomoSubTomosAre2DStacks.*3D pseudo-subtomograms are not supported"):
        read_relion_particles(part, tomo)
    part.write_text(full.replace("_rlnTomoSubTomosAre2DStacks   1", ""))
    with pytest.raises(FormatError, match="data_general/rlnTomoSubTomosAre2DStacks"):
        read_relion_particles(part, tomo)


def test_reader_wrong_stack_size(tmp_path):
    import mrcfile

    part, tomo = _copy_set(tmp_path)
    stack = tmp_path / "short.mrcs"
    with mrcfile.new(stack) as m:
        m.set_data(np.zeros((5, 32, 32), np.float32))
    text = part.read_text().replace("warptools_test_4-tomos_10-ptcls_box-32_angpix-12/Unt_083/Unt_083_12.00A_000001.mrcs",
                                    "short.mrcs", 1)
    part.write_text(text)
    with pytest.raises(FormatError, match="short.mrcs: nz: 5 images: expected 37 .* or 34"):
        read_relion_particles(part, tomo)


def test_reader_relion5_tilt_series_star(tmp_path):
    """RELION 5 layout: tomograms.star names a per-tilt STAR (rlnTomoTiltSeriesStarFile) with rlnTomoXTilt/YTilt/ZRot
    (no matrices): the views are Rz(ZRot) Ry(YTilt) Rx(XTilt), right-handed (Tomogram::setProjectionMatrix); centred
    Å coordinates; one stack image per visible tilt."""
    import mrcfile
    import pandas as pd

    from tomoguide.compute.io.star import write_star

    ts = pd.DataFrame({"rlnMicrographName": ["a.mrc", "b.mrc", "c.mrc"], "rlnTomoXTilt": [0.0, 2.0, 0.0],
                       "rlnTomoYTilt": [-30.0, 0.0, 30.0], "rlnTomoZRot": [85.0, 85.0, 85.0],
                       "rlnTomoXShiftAngst": [0.0] * 3, "rlnTomoYShiftAngst": [0.0] * 3,
                       "rlnDefocusU": [30000.0] * 3, "rlnDefocusV": [29000.0] * 3, "rlnDefocusAngle": [10.0] * 3,
                       "rlnMicrographPreExposure": [3.0, 0.0, 6.0]})
    (tmp_path / "tilt_series").mkdir()
    write_star(tmp_path / "tilt_series" / "TS_1.star", {"TS_1": ts})
    glob = pd.DataFrame({"rlnTomoName": ["TS_1"], "rlnTomoTiltSeriesStarFile": ["tilt_series/TS_1.star"],
                         "rlnVoltage": [300.0], "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1],
                         "rlnTomoTiltSeriesPixelSize": [2.0], "rlnTomoHand": [-1.0], "rlnTomoSizeX": [1000],
                         "rlnTomoSizeY": [1000], "rlnTomoSizeZ": [400]})
    write_star(tmp_path / "tomograms.star", {"global": glob})
    with mrcfile.new(tmp_path / "p1.mrcs") as m:
        m.set_data(np.arange(2 * 8 * 8, dtype=np.float32).reshape(2, 8, 8))
    optics = pd.DataFrame({"rlnOpticsGroup": [1], "rlnOpticsGroupName": ["g1"], "rlnImagePixelSize": [4.0],
                           "rlnImageSize": [8], "rlnCtfDataAreCtfPremultiplied": [0], "rlnImageDimensionality": [2],
                           "rlnTomoTiltSeriesPixelSize": [2.0], "rlnVoltage": [300.0],
                           "rlnSphericalAberration": [2.7], "rlnAmplitudeContrast": [0.1]})
    parts = pd.DataFrame({"rlnTomoName": ["TS_1"], "rlnImageName": ["p1.mrcs"], "rlnTomoVisibleFrames": ["[1,0,1]"],
                          "rlnOpticsGroup": [1], "rlnAngleRot": [10.0], "rlnAngleTilt": [20.0], "rlnAnglePsi": [30.0],
                          "rlnCenteredCoordinateXAngst": [100.0], "rlnCenteredCoordinateYAngst": [0.0],
                          "rlnCenteredCoordinateZAngst": [-40.0]})
    write_star(tmp_path / "particles.star", {"general": {"rlnTomoSubTomosAre2DStacks": 1}, "optics": optics,
                                             "particles": parts})
    write_star(tmp_path / "opt.star", {"": {"rlnTomoParticlesFile": "particles.star",
                                            "rlnTomoTomogramsFile": "tomograms.star"}})
    p = read_relion_particles(tmp_path / "opt.star")
    g = p.tomograms[0]
    assert not p.ctf_premultiplied and p.box == 8 and not p.notes
    a = np.radians(85.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    b = np.radians(30.0)
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    np.testing.assert_allclose(g.view_matrices[2], rz @ ry, atol=1e-12)
    c = np.radians(2.0)
    rx = np.array([[1, 0, 0], [0, np.cos(c), -np.sin(c)], [0, np.sin(c), np.cos(c)]])
    np.testing.assert_allclose(g.view_matrices[1], rz @ rx, atol=1e-12)
    np.testing.assert_allclose(g.positions_px[0], [50.0, 0.0, -20.0])
    assert g.visible[0].tolist() == [True, False, True]
    assert g.images[0, 1].max() == 0 and g.images[0, 2, 0, 0] == 64.0  # stack image 1 -> visible tilt 2
    # not premultiplied: relion_subtilts multiplies by the CTF; weights are its square, 0 at the invisible tilt
    st = relion_subtilts(p)[0]
    assert st.weights[0, 1].max() == 0 and st.weights[0, 0].max() > 0
    assert np.isfinite(reconstruct_relion_particles(p, pad=2)).all()


def test_coordinates_read_as_binned_pixels(particles, maps):
    """WarpTools writes rlnCoordinateX/Y/Z in the exported (binned) pixels (ReconstructParticleSeries:
    position / BinnedPixelSizeMean); RELION 5 reads tilt-series pixels. The reader recognises WarpTools' files
    (default "auto"). Read as binned pixels the CTF depths are consistent: the two half sets agree better (measured
    correlation 0.52 against 0.34 for the unfiltered maps)."""
    relion = read_relion_particles(_data() / OPT_SET, pixel_coordinates="relion")
    g0, g1 = relion.tomograms[0], particles.tomograms[0]
    np.testing.assert_allclose(g1.positions_px + g1.centre_px, (g0.positions_px + g0.centre_px) * 7.19856)

    def rho(p):
        rots, shifts = relion_poses(p)
        rec = Reconstructor(relion_subtilts(p), pad=2)
        half = np.arange(p.n_particles) % 2 == 0
        return _cc(rec.reconstruct(rots, shifts, half), rec.reconstruct(rots, shifts, ~half))

    assert rho(particles) > rho(relion) + 0.1
    with pytest.raises(ValueError, match="pixel_coordinates"):
        read_relion_particles(_data() / OPT_SET, pixel_coordinates="angstrom")
