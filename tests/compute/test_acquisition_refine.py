"""Per-view shift and defocus refinement from particles (tomoguide.compute.acquisition_refine), against planted
errors: sub-tilts of a known map made by an independent projector (the simulator's FourierProjector) with the
CTF and dose filter of each view, shifted per view and with the view's defocus off by a known amount."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.fft

from tomoguide.compute import acquisition_refine as AR
from tomoguide.compute.ctf import ctf_2d
from tomoguide.compute.dose import dose_filter
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.simulate import FourierProjector

B, PX, E = 24, 4.0, 48


def _tilt(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _blob_map(rng: np.random.Generator) -> np.ndarray:
    c1 = np.arange(B) - B // 2
    z, y, x = np.meshgrid(c1, c1, c1, indexing="ij")
    vol = np.zeros((B, B, B))
    for _ in range(25):
        c = rng.normal(0, 3.5, 3)
        s = rng.uniform(0.9, 1.8)
        vol += np.exp(-((x - c[0]) ** 2 + (y - c[1]) ** 2 + (z - c[2]) ** 2) / (2 * s * s))
    return vol


def _particles(vol, rots, mats, shifts, defocus, noise, rng):
    """Raw sub-tilts (m, k, E, E): projections shifted by ``shifts`` (k, 2) px (or (m, k, 2): per particle), times
    CTF(defocus (m, k)) and the exposure filter, plus white noise of ``noise`` × the clean image's SD; and the
    filters (k, E, E)."""
    shifts = np.asarray(shifts, np.float64)
    if shifts.ndim == 2:
        shifts = np.broadcast_to(shifts[None], (len(rots), *shifts.shape))
    big = np.zeros((E, E, E))
    o = E // 2 - B // 2
    big[o:o + B, o:o + B, o:o + B] = vol
    proj = FourierProjector(big, PX, pad=2)
    m, k = len(rots), len(mats)
    imgs = np.zeros((m, k, E, E), np.float32)
    doses = np.zeros((k, E, E), np.float32)
    for v in range(k):
        doses[v] = dose_filter((E, E), PX, 3.0 * v, 3.0)
        for i in range(m):
            f = scipy.fft.fft2(scipy.fft.ifftshift(proj.project(mats[v] @ rots[i], tuple(shifts[i, v]))))
            f *= ctf_2d((E, E), PX, defocus[i, v], defocus[i, v], 0.0) * doses[v]
            im = scipy.fft.fftshift(scipy.fft.ifft2(f).real)
            imgs[i, v] = im + noise * im.std() * rng.normal(size=im.shape)
    return imgs, doses


def _scene(seed: int, tilts: tuple[float, ...], m: int) -> tuple:
    """``(rng, map, view matrices, particle rotations)`` of a small test: a blob map, views at ``tilts``, ``m``
    random orientations (tilt uniform in degrees), drawn in this order from ``default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    vol = _blob_map(rng)
    mats = np.stack([_tilt(t) for t in tilts])
    rots = euler_to_matrix(np.c_[rng.uniform(0, 360, m), rng.uniform(0, 180, m), rng.uniform(0, 360, m)])
    return rng, vol, mats, rots


def _positions(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """(m, k, 2) px from the image centre: each particle 150-600 px out, at the same place in all k views."""
    r, a = rng.uniform(150, 600, m), rng.uniform(0, 2 * np.pi, m)
    return np.repeat(np.c_[r * np.cos(a), r * np.sin(a)][:, None], k, axis=1)


def _planted() -> dict:
    rng = np.random.default_rng(3)
    vol = _blob_map(rng)
    tilts = np.array([0.0, -15.0, 15.0, -30.0, 30.0])
    mats = np.stack([_tilt(t) for t in tilts])
    m = 24
    rots = euler_to_matrix(np.c_[rng.uniform(0, 360, m), np.degrees(np.arccos(rng.uniform(-1, 1, m))),
                                 rng.uniform(0, 360, m)])
    true_df = 30000.0 + rng.uniform(-2000, 2000, (m, 1)) + np.zeros((1, tilts.size))
    ang = rng.uniform(0, 2 * np.pi, tilts.size)
    mag = rng.uniform(1.0, 3.0, tilts.size)
    shifts = np.c_[mag * np.cos(ang), mag * np.sin(ang)]
    df_err = rng.uniform(300, 1000, tilts.size) * rng.choice([-1.0, 1.0], tilts.size)
    imgs, doses = _particles(vol, rots, mats, shifts, true_df, 0.3, rng)
    return {"vol": vol, "mats": mats, "rots": rots, "true_df": true_df, "shifts": shifts, "df_err": df_err,
            "imgs": imgs, "doses": doses}


@pytest.fixture(scope="module")
def planted() -> dict:
    return _planted()


def _run(p, df_offset, **kw):
    m = len(p["rots"])
    return AR.refine_views(p["imgs"], p["mats"], p["rots"], [p["vol"], p["vol"]], np.arange(m) % 2,
                           p["true_df"] + df_offset[None, :], pixel_size_A=PX, reference_voxel_A=PX,
                           resolution_A=8.5, dose=p["doses"], max_shift_px=6.0, **kw)


def test_planted_shifts_and_defocus_are_recovered(planted):
    """Views off by 1-3 px and 300-1000 Å: recovered to ≤ 0.3 px RMS (here far better) and ≤ 50 Å median."""
    p = planted
    res = _run(p, p["df_err"])
    assert res.refined.all() and res.refined_defocus.all(), (res.z_score, res.z_defocus)
    shift_err = res.shift_px - p["shifts"]
    assert np.sqrt(np.mean(np.sum(shift_err**2, axis=1))) < 0.1, shift_err
    df_err = res.defocus_A + p["df_err"]  # the correction must cancel the planted error
    assert np.median(np.abs(df_err)) < 50.0, df_err
    assert np.all(res.fom_after > res.fom_before)


def test_correct_acquisition_is_left_alone():
    """Noise-free particles with their true shifts (0) and defocus: corrections within 0.02 px and 10 Å."""
    m = 12
    rng, vol, mats, rots = _scene(5, (0.0, -20.0, 20.0), m)
    df = np.full((m, 3), 25000.0)
    imgs, doses = _particles(vol, rots, mats, np.zeros((3, 2)), df, 0.0, rng)
    res = AR.refine_views(imgs, mats, rots, [vol], np.zeros(m, int), df, pixel_size_A=PX, reference_voxel_A=PX,
                          resolution_A=8.5, dose=doses)
    assert np.abs(res.shift_px).max() < 0.02, res.shift_px
    assert np.abs(res.defocus_A).max() < 10.0, res.defocus_A
    assert np.all(res.fom_before > 0.999)


def test_pure_noise_changes_nothing():
    """Particles that are only noise: no view passes the significance test, every correction stays 0."""
    m = 16
    rng, vol, mats, rots = _scene(7, (0.0, 20.0, -20.0, 40.0), m)
    imgs = rng.normal(size=(m, 4, E, E)).astype(np.float32)
    res = AR.refine_views(imgs, mats, rots, [vol], np.zeros(m, int), np.full((m, 4), 30000.0), pixel_size_A=PX,
                          reference_voxel_A=PX, resolution_A=8.5)
    assert not res.refined.any(), res.z_score
    assert np.all(res.shift_px == 0) and np.all(res.defocus_A == 0)
    assert np.abs(res.z_score).max() < 6.0


def test_slices_match_the_slow_reference_and_a_projection():
    """The vectorised trilinear slices equal the loop reference; the slice of the gridding-corrected transform is
    the projection of the map (correlation > 0.999 with the simulator's FourierProjector within the band)."""
    rng = np.random.default_rng(11)
    vol = _blob_map(rng)
    ft = AR.reference_transform(vol)
    rot = euler_to_matrix(np.array([[30.0, 70.0, -20.0], [200.0, 10.0, 45.0]]))
    ju, jv, flat = AR.band_points(E, 1.0, 10.0)
    scale = 2 * B / E
    fast = AR.sample_slices(ft, scale, rot, ju, jv)
    slow = AR.sample_slices_reference(ft, scale, rot, ju, jv)
    np.testing.assert_allclose(fast, slow, rtol=1e-4, atol=1e-3 * np.abs(slow).max())
    big = np.zeros((E, E, E))
    o = E // 2 - B // 2
    big[o:o + B, o:o + B, o:o + B] = vol
    img = FourierProjector(big, PX, pad=3).project(rot[0])
    f = scipy.fft.rfft2(scipy.fft.ifftshift(img)).reshape(-1)[flat]
    cc = np.abs(np.vdot(f, fast[0])) / np.linalg.norm(f) / np.linalg.norm(fast[0])
    assert cc > 0.999


def test_apply_shift_corrections_moves_the_projection():
    """The corrected transforms project every specimen point δ further in the raw view."""
    from tomoguide.geometry import TiltSeriesGeometry

    g = TiltSeriesGeometry(name="ts", pixel_size_A=2.0, image_shape_px=(200, 300), tilt_axis_deg=85.0,
                           tilt_angles_deg=[-30.0, 0.0, 30.0])
    g = g.with_xf_from_axis_and_shifts(85.0, [[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    d = np.array([[0.3, -1.2], [2.0, 0.5], [-1.0, 0.0]])
    g2 = g.model_validate({**g.model_dump(), "xf": AR.apply_shift_corrections(g.xf_array(), d)})
    pts = np.array([[10.0, -5.0, 20.0], [-40.0, 30.0, -10.0]])
    moved = g2.project(pts)[..., :2] - g.project(pts)[..., :2]
    np.testing.assert_allclose(moved, np.repeat(d[:, None], 2, axis=1), atol=1e-9)


def test_fast_defocus_score_equals_the_reference():
    """The O(n)-per-offset defocus score equals the direct one (CTF recomputed for every particle and offset)."""
    rng = np.random.default_rng(2)
    m, n = 7, 50
    kx, ky = rng.uniform(-0.1, 0.1, n), rng.uniform(-0.1, 0.1, n)
    mdf = rng.uniform(20000, 40000, m)
    a_re, b2, w = rng.normal(size=(m, n)), rng.uniform(0.1, 1, (m, n)), rng.choice([1.0, 2.0], n)
    opt = {"voltage_kV": 300.0, "cs_mm": 2.7}
    chi0 = AR._chi_points(kx, ky, mdf, 150.0, 30.0, 0.1, **opt)
    lam = AR.electron_wavelength_A(300.0)
    fast = AR._DefocusScorer(a_re, b2, w, chi0, kx * kx + ky * ky, lam, 0.07)
    eps = np.array([-1500.0, -20.0, 0.0, 333.0, 2000.0])
    ref = AR._defocus_score(a_re, b2, w, lambda e: AR._ctf_points(kx, ky, mdf + e, 150.0, 30.0, 0.1,
                                                                  amplitude_contrast=0.07, **opt).astype(np.float64),
                            eps)
    np.testing.assert_allclose(fast(eps), ref, rtol=1e-5)


def _rot2(deg: np.ndarray) -> np.ndarray:
    t = np.radians(np.asarray(deg, np.float64))
    return np.stack([np.stack([np.cos(t), -np.sin(t)], -1), np.stack([np.sin(t), np.cos(t)], -1)], -2)


def test_planted_view_rotations_are_recovered():
    """Views turned in-plane by 0.3-0.8° about the image centre (the simulator's per-view axis error; IMOD fits it
    as a per-view rotation), on top of 1-3 px shifts: each particle, 150-600 px from the centre, is displaced by
    δ_v + (R_θ − I) p_iv (0.8-8 px). Recovered to ≤ 0.05° and the shifts to ≤ 0.15 px RMS; without the rotation
    search the shifts alone cannot explain the data (lower figure of merit)."""
    rng = np.random.default_rng(21)
    vol = _blob_map(rng)
    tilts = np.array([0.0, -15.0, 15.0, -30.0, 30.0])
    mats = np.stack([_tilt(t) for t in tilts])
    m, k = 32, tilts.size
    rots = euler_to_matrix(np.c_[rng.uniform(0, 360, m), np.degrees(np.arccos(rng.uniform(-1, 1, m))),
                                 rng.uniform(0, 360, m)])
    pos = _positions(rng, m, k)
    theta = rng.uniform(0.3, 0.8, k) * rng.choice([-1.0, 1.0], k)
    ang = rng.uniform(0, 2 * np.pi, k)
    delta = np.c_[np.cos(ang), np.sin(ang)] * rng.uniform(1.0, 3.0, k)[:, None]
    moved = np.einsum("kab,mkb->mka", _rot2(theta), pos) - pos + delta[None]  # (m, k, 2)
    df = np.full((m, k), 30000.0)
    imgs, doses = _particles(vol, rots, mats, moved, df, 0.3, rng)
    res = AR.refine_views(imgs, mats, rots, [vol, vol], np.arange(m) % 2, df, pixel_size_A=PX,
                          reference_voxel_A=PX, resolution_A=8.5, dose=doses, max_shift_px=6.0, fit_defocus=False,
                          positions_px=pos, max_rotation_deg=1.0)
    assert res.refined.all(), res.z_score
    assert np.abs(res.rotation_deg - theta).max() < 0.05, (res.rotation_deg, theta)
    assert np.sqrt(np.mean(np.sum((res.shift_px - delta) ** 2, axis=1))) < 0.15, (res.shift_px, delta)
    plain = AR.refine_views(imgs, mats, rots, [vol, vol], np.arange(m) % 2, df, pixel_size_A=PX,
                            reference_voxel_A=PX, resolution_A=8.5, dose=doses, max_shift_px=6.0, fit_defocus=False)
    assert np.all(res.fom_after > plain.fom_after + 0.05), (res.fom_after, plain.fom_after)


def test_no_rotation_is_left_unturned():
    """Views that are not turned (shifts only) keep rotation 0: the rotation's gain is not significant."""
    m = 24
    rng, vol, mats, rots = _scene(22, (0.0, -20.0, 20.0), m)
    pos = _positions(rng, m, 3)
    delta = np.array([[1.5, -0.5], [0.0, 2.0], [-1.0, -1.0]])
    df = np.full((m, 3), 25000.0)
    imgs, doses = _particles(vol, rots, mats, delta, df, 0.3, rng)
    res = AR.refine_views(imgs, mats, rots, [vol], np.zeros(m, int), df, pixel_size_A=PX, reference_voxel_A=PX,
                          resolution_A=8.5, dose=doses, fit_defocus=False, positions_px=pos, max_rotation_deg=1.0)
    assert res.refined.all()
    assert np.abs(res.rotation_deg).max() < 0.03, (res.rotation_deg, res.z_rotation)
    assert np.sqrt(np.mean(np.sum((res.shift_px - delta) ** 2, axis=1))) < 0.1


def test_apply_view_corrections_turns_and_moves_the_projection():
    """The corrected transforms put every specimen point at C + R_θ (u − C) + δ in the raw view (u its old raw
    position, C the image centre); θ = 0 gives the shift correction."""
    from tomoguide.geometry import TiltSeriesGeometry

    g = TiltSeriesGeometry(name="ts", pixel_size_A=2.0, image_shape_px=(200, 300), tilt_axis_deg=85.0,
                           tilt_angles_deg=[-30.0, 0.0, 30.0])
    g = g.with_xf_from_axis_and_shifts(85.0, [[1.0, -2.0], [0.5, 0.0], [3.0, 1.0]])
    d = np.array([[0.3, -1.2], [2.0, 0.5], [-1.0, 0.0]])
    th = np.array([0.5, -0.8, 0.0])
    g2 = g.model_validate({**g.model_dump(), "xf": AR.apply_view_corrections(g.xf_array(), d, th)})
    pts = np.array([[10.0, -5.0, 20.0], [-40.0, 30.0, -10.0], [90.0, 60.0, 0.0]])
    c = np.asarray(g.image_centre_px())
    u = g.project(pts)[..., :2]
    want = np.einsum("kab,kmb->kma", _rot2(th), u - c) + c + d[:, None]
    np.testing.assert_allclose(g2.project(pts)[..., :2], want, atol=1e-9)
    np.testing.assert_allclose(AR.apply_view_corrections(g.xf_array(), d, np.zeros(3)),
                               AR.apply_shift_corrections(g.xf_array(), d), atol=1e-12)
