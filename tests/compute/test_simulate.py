"""Simulator building blocks: tilt scheme (against real mdocs), drift, projections against atom rendering,
ice spectra, solvent contrast, series plan, one simulated view against an independent forward model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage
from scipy.spatial.transform import Rotation

from tomoguide.compute import ctf, simulate, specimen

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
SHARED = SHARED if SHARED.is_dir() else Path(__file__).resolve().parents[2] / "tests" / "data"  # bundled subset
MDOC = SHARED / "mdoc"


def _mdoc_tilts_in_file_order(path: Path) -> list[float]:
    from tomoguide.compute.io import mdoc

    md = mdoc.read_mdoc(path)
    return [float(s.tilt_angle_deg) for s in md.sections]


def test_dose_symmetric_order_matches_real_mdocs() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"shared test data not found at {SHARED}")
    ts01 = MDOC / "alisterburt__tomo_preprocessing" / "test_data" / "mdoc" / "TS_01.mrc.mdoc"
    real = np.round(_mdoc_tilts_in_file_order(ts01))
    np.testing.assert_array_equal(simulate.dose_symmetric_angles(60.0, 3.0), real)
    # SerialEM 4.1 / AreTomo3 example: groups of two from the start
    l1 = MDOC / "czimaginginstitute__AreTomo3" / "Mdoc" / "L1_ts_001.mrc.mdoc"
    real2 = np.round(_mdoc_tilts_in_file_order(l1)) + 0.0
    np.testing.assert_array_equal(simulate.dose_symmetric_angles(60.0, 3.0, first_group=2, group_size=2), real2)


def test_dose_symmetric_asymmetric_range() -> None:
    a = simulate.dose_symmetric_angles(9.0, 3.0, min_tilt_deg=-3.0)
    assert list(a) == [0.0, 3.0, -3.0, 6.0, 9.0]


def test_drift_trajectory() -> None:
    rng = np.random.default_rng(1)
    d = simulate.drift_trajectory(8, 5.0, rng)
    assert d.shape == (8, 2)
    np.testing.assert_allclose(d[0], 0.0)
    assert np.hypot(*d[-1]) == pytest.approx(5.0, rel=0.1)
    steps = np.hypot(*np.diff(d, axis=0).T)
    assert steps[0] > steps[-1] * 3  # fast in early frames
    assert np.all(np.diff(steps) < 1e-9)  # monotonically slowing down


@pytest.fixture(scope="module")
def ref4() -> tuple[np.ndarray, specimen.Atoms]:
    return specimen.apoferritin_map(4.0, 40), specimen.apoferritin_atoms()


def _lowpass_rel_err(a: np.ndarray, b: np.ndarray, f_cyc: float) -> float:
    ky = np.fft.fftfreq(a.shape[0])[:, None]
    kx = np.fft.fftfreq(a.shape[1])[None, :]
    m = np.hypot(kx, ky) < f_cyc
    la = np.fft.ifft2(np.fft.fft2(a) * m).real
    lb = np.fft.ifft2(np.fft.fft2(b) * m).real
    return float(np.abs(la - lb).max() / np.abs(lb).max())


def test_fourier_projector_matches_atom_rendering(ref4: tuple[np.ndarray, specimen.Atoms]) -> None:
    ref, atoms = ref4
    proj = simulate.FourierProjector(ref, 4.0)
    for seed in (3, 4):
        rot = Rotation.random(random_state=seed).as_matrix()
        shift = (0.3, -0.4)
        xy = (atoms.xyz_A @ rot.T)[:, :2] / 4.0 + 20 + np.array(shift)
        exact = specimen.render_projection(xy, atoms.element, atoms.b_A2, (40, 40), 4.0, names=atoms.names)
        got = proj.project(rot, shift)
        assert np.corrcoef(got.ravel(), exact.ravel())[0, 1] > 0.995
        assert _lowpass_rel_err(got, exact, 0.4) < 0.04
    # sum of the projection = integral of the map (V·Å·px² -> V·Å³ / px²), up to the ~4 % that the
    # aliases of trilinear interpolation along the beam add at k = 0
    assert got.sum() * 16.0 == pytest.approx(ref.sum() * 64.0, rel=0.06)


def test_ice_power_spectrum_and_field() -> None:
    k = np.array([0.002, 0.03, 0.1, 0.2])
    p1 = simulate.ice_power_spectrum(k, 500.0)
    p2 = simulate.ice_power_spectrum(k, 1000.0)
    np.testing.assert_allclose(p2, 2 * p1)
    pe = simulate.ice_power_spectrum(k, 500.0, ice_excess=0.4)
    assert pe[0] < 1.05 * p1[0] and pe[1] > 2 * p1[1]  # excess at medium, not at the lowest frequencies
    assert np.all(simulate.ice_power_spectrum(k, 50.0, material="carbon") > 0)
    # a Gaussian field drawn with a given PSD has that PSD
    n, px = 256, 2.0
    kx, ky = np.meshgrid(np.fft.rfftfreq(n, px), np.fft.fftfreq(n, px))
    kk = np.hypot(kx, ky)
    psd = simulate.ice_power_spectrum(kk, 800.0, ice_excess=0.4)
    rng = np.random.default_rng(0)
    meas = np.zeros_like(psd)
    for _ in range(8):
        f = simulate.gaussian_random_field((n, n), px, psd, rng)
        meas += np.abs(np.fft.rfft2(f)) ** 2 * px**2 / (n * n) / 8  # periodogram -> PSD (units^2 Å^2)
    band = (kk > 0.03) & (kk < 0.2)
    assert np.median(meas[band] / psd[band]) == pytest.approx(1.0, rel=0.05)


def test_solvent_excluded_lowers_integral(ref4: tuple[np.ndarray, specimen.Atoms]) -> None:
    ref, _ = ref4
    vol_A3 = 600000.0
    v = simulate.ice_mean_potential_V()
    assert 4.0 < v < 5.2  # mean inner potential of vitreous ice, V
    out = simulate.solvent_excluded(ref, 4.0, vol_A3, v)
    drop = (ref.sum() - out.sum()) * 4.0**3
    assert drop == pytest.approx(v * vol_A3, rel=0.02)


def test_plan_series_truth_is_consistent() -> None:
    rng = np.random.default_rng(5)
    t = simulate.plan_series(name="TS_01", shape=(128, 96), pixel_size_A=2.0, rng=rng, max_tilt_deg=9.0,
                             step_deg=3.0, n_frames=5, dose_per_tilt_e_A2=3.0, tilt_offset_deg=0.5)
    g = t.geometry
    assert g.tilt_angles_deg == sorted(g.tilt_angles_deg)
    acq = simulate.dose_symmetric_angles(9.0, 3.0)
    order = np.asarray(g.acquisition_order)
    np.testing.assert_allclose(np.asarray(g.tilt_angles_deg)[np.argsort(order)], acq)
    np.testing.assert_allclose(g.prior_dose_e_A2, order * 3.0)
    from tomoguide.geometry import rotation_angle_deg

    rot = rotation_angle_deg(g.xf_array()[:, :, :2])
    assert np.all(np.abs(rot + 85.0) < 2.0)
    assert np.all(t.defocus_u_A >= t.defocus_v_A)
    assert t.frame_shifts_px.shape == (g.n_views, 5, 2)
    np.testing.assert_allclose(t.frame_shifts_px[:, 0], 0.0)
    np.testing.assert_allclose(g.true_tilt_deg(), np.asarray(g.tilt_angles_deg) + 0.5)


def test_simulate_view_against_independent_forward_model(ref4: tuple[np.ndarray, specimen.Atoms]) -> None:
    """A nearly noise-free view (high dose, almost no ice) equals 1 + 2σ FT⁻¹[v̂ CTF E] computed from the
    atoms with specimen.render_projection at the positions geometry.py gives, with each particle's own
    depth-dependent defocus."""
    ref, atoms = ref4
    px, shape = 4.0, (128, 128)
    rng = np.random.default_rng(11)
    truth = simulate.plan_series(name="T", shape=shape, pixel_size_A=px, rng=rng, max_tilt_deg=30.0,
                                 step_deg=30.0, n_frames=2, dose_per_tilt_e_A2=400.0, drift_A=12.0,
                                 defocus_sigma_A=0.0, astigmatism_A=600.0, nominal_defocus_A=30000.0)
    view = 2  # +30°
    # at +30° these project 50 px apart, at depths of about +-750 Å (1500 Å of defocus between them)
    pos_px = np.array([[-115.0, 10.0, 150.0], [115.0, -20.0, -150.0]])
    rots = Rotation.random(2, random_state=2).as_matrix()
    proj = simulate.FourierProjector(ref, px)
    gain = np.ones(shape, np.float32)
    frames, events, _ = simulate.simulate_view(
        truth, view, [simulate.ParticleSet(proj, pos_px, rots)], gain=gain,
        hot_pixels=np.zeros((0, 2), int), rng=rng, ice_thickness_A=20.0, layer_thickness_A=40.0,
        bfactor_A2=50.0, xray_hits_per_view=0.0, max_count=65535, radiation_damage=False)
    assert frames.dtype == np.uint16
    assert events.hit_centres.shape == (0, 3)
    dose_frame = truth.frame_dose_e_A2[0] * px * px
    assert frames.mean() / dose_frame == pytest.approx(1.0, abs=0.02)
    # undo the drift with the truth's aligning shifts, average the frames, normalise
    img = np.zeros(shape)
    for f, s in zip(frames, truth.frame_shifts_px[view], strict=True):
        img += np.fft.ifft2(scipy.ndimage.fourier_shift(np.fft.fft2(f.astype(float)), (s[1], s[0]))).real
    img /= len(frames) * dose_frame
    # independent forward model from atoms
    geom = truth.geometry
    pm = geom.projection_matrices()[view]
    sigma = ctf.interaction_constant_rad_per_VA(300.0)
    kx, ky = np.meshgrid(np.fft.fftfreq(shape[1], px), np.fft.fftfreq(shape[0], px))
    env = np.exp(-50.0 * (kx**2 + ky**2) / 4.0)
    v_imgs, depths = [], []
    for t, r in zip(pos_px, rots, strict=True):
        xyz = atoms.xyz_A @ r.T / px + t  # specimen frame, px
        uvd = xyz @ pm[:, :3].T + pm[:, 3]  # raw pixel coordinates and depth (geometry.py)
        v_imgs.append(specimen.render_projection(uvd[:, :2], atoms.element, atoms.b_A2, shape, px,
                                                 names=atoms.names))
        depths.append(float((t @ pm[2, :3] + pm[2, 3]) * px))
    assert abs(depths[0] - depths[1]) > 1000.0

    def model(hand: float) -> np.ndarray:
        total = np.zeros(shape, complex)
        for v_img, depth_A in zip(v_imgs, depths, strict=True):
            c = ctf.ctf_2d(shape, px, truth.defocus_u_A[view] + hand * depth_A,
                           truth.defocus_v_A[view] + hand * depth_A, truth.astig_angle_deg[view], dtype=np.float64)
            total += np.fft.fft2(v_img) * c
        return 1.0 + 2.0 * sigma * np.fft.ifft2(total * env).real

    # compare in the band 1/30 - 1/10 Å⁻¹ (where the CTF oscillates and the defocus matters)
    m = (np.hypot(kx, ky) > 1.0 / 30.0) & (np.hypot(kx, ky) < 1.0 / 10.0)

    def lp(a: np.ndarray) -> np.ndarray:
        return np.fft.ifft2(np.fft.fft2(a - a.mean()) * m).real

    right = lp(model(float(geom.defocus_handedness)))
    # where the particles are (the rest of the field is shot noise only)
    near = scipy.ndimage.binary_dilation(np.abs(right) > 0.1 * np.abs(right).max(), iterations=6)
    cc = np.corrcoef(lp(img)[near], right[near])[0, 1]
    assert cc > 0.9, cc
    # the defocus gradient matters: one common defocus fits worse, the opposite handedness worse still
    cc_flat = np.corrcoef(lp(img)[near], lp(model(0.0))[near])[0, 1]
    cc_wrong = np.corrcoef(lp(img)[near], lp(model(-float(geom.defocus_handedness)))[near])[0, 1]
    assert cc > cc_flat + 0.01 > cc_wrong + 0.02, (cc, cc_flat, cc_wrong)


def test_specimen_volume_places_reference(ref4: tuple[np.ndarray, specimen.Atoms]) -> None:
    ref, _ = ref4
    t = np.array([3.0, -2.0, 1.5])
    vol = simulate.specimen_volume([(ref, t[None, :], np.eye(3)[None])], (48, 56, 64), 4.0, 1)
    assert vol.sum() == pytest.approx(ref.sum(), rel=0.01)
    com_ref = np.array(scipy.ndimage.center_of_mass(np.clip(ref, 0, None)))[::-1] - ref.shape[0] // 2
    com = np.array(scipy.ndimage.center_of_mass(np.clip(vol, 0, None)))[::-1] - (np.array([64, 56, 48]) - 1) / 2
    np.testing.assert_allclose(com - com_ref, t, atol=0.05)
    # binning by 2 keeps the position (in binned voxels) and the integral (x 1/8 per voxel volume)
    vb = simulate.specimen_volume([(ref, t[None, :], np.eye(3)[None])], (24, 28, 32), 4.0, 2)
    assert vb.sum() * 8 == pytest.approx(ref.sum(), rel=0.02)
    comb = np.array(scipy.ndimage.center_of_mass(np.clip(vb, 0, None)))[::-1] - (np.array([32, 28, 24]) - 1) / 2
    np.testing.assert_allclose(comb * 2, com, atol=0.3)
    assert math.isfinite(float(vb.max()))


def test_tilt_schemes_in_acquisition_order() -> None:
    from tomoguide.compute.io import mdoc

    bi = simulate.tilt_scheme_angles("bidirectional", 60.0, 3.0, start_deg=-20.0)
    assert list(bi[:3]) == [-20.0, -17.0, -14.0] and bi[26] == 58.0 and list(bi[27:29]) == [-23.0, -26.0]
    assert bi[-1] == -59.0 and len(bi) == 40 and len(set(bi)) == 40
    np.testing.assert_allclose((bi + 20.0) / 3.0, np.round((bi + 20.0) / 3.0))  # on the start's 3° grid
    uni = simulate.tilt_scheme_angles("unidirectional", 60.0, 3.0)
    np.testing.assert_array_equal(uni, np.arange(-60.0, 60.1, 3.0))
    ds = simulate.tilt_scheme_angles("dose_symmetric", 60.0, 3.0, first_group=4, group_size=4)
    np.testing.assert_array_equal(ds, simulate.dose_symmetric_angles(60.0, 3.0, first_group=4, group_size=4))
    assert list(ds[:9]) == [0.0, 3.0, 6.0, 9.0, 12.0, -3.0, -6.0, -9.0, -12.0]
    # the mdoc reader's classifier (independent code) recognises each order
    bi0 = simulate.tilt_scheme_angles("bidirectional", 60.0, 3.0)
    assert list(bi0[:2]) == [0.0, 3.0] and list(bi0[21:23]) == [-3.0, -6.0]
    assert mdoc.classify_scheme(bi0, 3.0) == "bidirectional"
    assert mdoc.classify_scheme(uni, 3.0) == "unidirectional"
    assert mdoc.classify_scheme(ds, 3.0) == "dose-symmetric"
    with pytest.raises(ValueError, match="start_tilt_deg must be 0"):
        simulate.tilt_scheme_angles("unidirectional", 60.0, 3.0, start_deg=-20.0)
    with pytest.raises(ValueError, match="outside"):
        simulate.tilt_scheme_angles("bidirectional", 60.0, 3.0, start_deg=-70.0)
    with pytest.raises(ValueError, match="tilt scheme"):
        simulate.tilt_scheme_angles("spiral", 60.0, 3.0)


def test_plan_series_dark_and_jump_views() -> None:
    """Dark and jump views change only what they claim: the same draws otherwise (same generator state)."""
    kw = dict(name="T", shape=(96, 128), pixel_size_A=2.0, max_tilt_deg=30.0, step_deg=10.0, n_frames=3,
              dose_per_tilt_e_A2=3.0, tilt_scheme="bidirectional", start_tilt_deg=-10.0)
    base = simulate.plan_series(rng=np.random.default_rng(8), **kw)
    planted = simulate.plan_series(rng=np.random.default_rng(8), dark_view_tilts_deg=[20.0],
                                   dark_view_dose_fraction=0.05, jump_view_tilts_deg=[-20.0],
                                   jump_A=(240.0, -144.0), **kw)
    g0, g1 = base.geometry, planted.geometry
    nominal = np.asarray(g1.tilt_angles_deg)
    dark, jump = int(np.flatnonzero(nominal == 20.0)[0]), int(np.flatnonzero(nominal == -20.0)[0])
    # acquisition order of the bidirectional scheme from -10: -10, 0, 10, 20, 30, -20, -30
    np.testing.assert_array_equal(g1.acquisition_order, [6, 5, 0, 1, 2, 3, 4])
    # the jump: an extra specimen shift of (120, -72) px in that view only, in the true geometry
    ds = g1.specimen_shifts_px() - g0.specimen_shifts_px()
    np.testing.assert_allclose(ds[jump], [120.0, -72.0], atol=1e-9)
    np.testing.assert_allclose(np.delete(ds, jump, axis=0), 0.0, atol=1e-9)
    # the dark view: 5 % of the dose; its frames get 5 % of the frame dose; later views' prior dose drops
    dose = np.asarray(g1.dose_e_A2)
    assert dose[dark] == pytest.approx(0.15) and np.all(np.delete(dose, dark) == 3.0)
    np.testing.assert_allclose(planted.frame_doses(dark), base.frame_doses(dark) * 0.05)
    np.testing.assert_allclose(planted.frame_doses(0), base.frame_doses(0))
    order = np.asarray(g1.acquisition_order)
    expected_prior = np.array([sum(dose[order == k][0] for k in range(order[v])) for v in range(len(order))])
    np.testing.assert_allclose(g1.prior_dose_e_A2, expected_prior)
    assert g1.prior_dose_e_A2[jump] == pytest.approx(g0.prior_dose_e_A2[jump] - 2.85)
    np.testing.assert_allclose(planted.defocus_u_A, base.defocus_u_A)
    with pytest.raises(ValueError, match="not a tilt of the series"):
        simulate.plan_series(rng=np.random.default_rng(8), dark_view_tilts_deg=[15.0], **kw)


def test_simulate_view_dark_view_counts() -> None:
    """A dark view's frames hold the stated fraction of the counts of the same view at full dose."""
    kw = dict(name="T", shape=(128, 128), pixel_size_A=2.0, max_tilt_deg=10.0, step_deg=10.0, n_frames=2,
              dose_per_tilt_e_A2=20.0)
    full = simulate.plan_series(rng=np.random.default_rng(3), **kw)
    dark = simulate.plan_series(rng=np.random.default_rng(3), dark_view_tilts_deg=[0.0],
                                dark_view_dose_fraction=0.03, **kw)
    gain = np.ones((128, 128), np.float32)
    means = []
    for t in (full, dark):
        frames, _, _ = simulate.simulate_view(t, 1, [], gain=gain, hot_pixels=np.zeros((0, 2), int),
                                              rng=np.random.default_rng(1), ice_thickness_A=100.0,
                                              xray_hits_per_view=0.0)
        means.append(frames.astype(float).mean())
    assert means[0] == pytest.approx(20.0 / 2 * 4.0, rel=0.01)  # counts per pixel per frame at full dose
    assert means[1] / means[0] == pytest.approx(0.03, rel=0.05)


def test_default_handedness_is_real_instruments_and_the_tilt_direction_check_agrees() -> None:
    """The simulator's default defocus handedness is -1 (real SerialEM data in IMOD's frame: IMOD ctfphaseflip,
    RELION 5's rlnTomoHand default; geometry.py), and the tilt-direction check of the ctf_estimate step, reading
    the handedness from the true geometry, calls the simulated views "as given" (with +1 it says "inverted")."""
    from tomoguide.compute import ctffit
    from tomoguide.synth import SimParams

    assert SimParams().defocus_handedness == -1
    px, shape = 2.0, (768, 768)
    rng = np.random.default_rng(21)
    truth = simulate.plan_series(name="TS_01", shape=shape, pixel_size_A=px, rng=rng, max_tilt_deg=48.0,
                                 step_deg=12.0, tilt_axis_deg=85.0, axis_error_deg=0.2, shift_sigma_A=10.0,
                                 shift_walk_A=2.0, dose_per_tilt_e_A2=60.0, n_frames=1, nominal_defocus_A=30000.0,
                                 defocus_sigma_A=800.0, astigmatism_A=300.0, drift_A=0.0)
    geom = truth.geometry
    assert geom.defocus_handedness == -1
    tilts = geom.true_tilt_deg()
    views = []
    for v in range(geom.n_views):
        frames, _, _ = simulate.simulate_view(
            truth, v, [], gain=np.ones(shape, np.float32), hot_pixels=np.zeros((0, 2), int), rng=rng,
            ice_thickness_A=300.0, ice_sublayers=2, ice_excess=0.4, bfactor_A2=60.0, xray_hits_per_view=0.0,
            max_count=65535, radiation_damage=False)
        views.append(frames.sum(0).astype(np.float32))
    views_arr = np.stack(views)

    def check(hand: int) -> ctffit.TiltDirectionCheck:
        return ctffit.check_tilt_direction_images(views_arr, tilts, pixel_size_A=px, tilt_axis_deg=geom.tilt_axis_deg,
                                                  defocus_handedness=hand, box=256, res_range_A=(40.0, 6.0),
                                                  defocus_range_A=(10000.0, 50000.0))

    given = check(geom.defocus_handedness)
    assert given.verdict == "as given" and given.n_views == 6, given.reason
    assert check(-geom.defocus_handedness).verdict == "inverted"
