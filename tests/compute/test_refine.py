"""Gold-standard auto-refine core (tomoguide.compute.refine) on synthetic pseudo-subtomograms made here.

The data: a small known map (a chiral helix of Gaussian blobs, or an O-symmetric arrangement of blobs) rotated
and shifted in real space by cubic-spline interpolation (scipy.ndimage, independent of the module's Fourier
samplers), transformed, multiplied by a CTF-like weight ``W`` with a ±60° missing wedge, plus complex Gaussian
noise of variance ∝ ``W`` — the model ``D = W · F_ref(Rᵀ q) e^{-2πi q·t} + noise`` of the module docstring.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomoguide.compute import refine as RF
from tomoguide.compute import sta
from tomoguide.compute.euler import rotation_angle_deg
from tomoguide.compute.symmetry import symmetry_matrices

from synthetic_particles import cc as _cc
from synthetic_particles import chiral_map, make_particles, o_map, random_rotations
from synthetic_particles import cft as _cft
from synthetic_particles import icft as _icft

VOXEL = 5.0


@pytest.fixture(scope="module")
def o_data() -> dict:
    rng = np.random.default_rng(1)
    ref = o_map()
    data, weights, rots, shifts = make_particles(ref, 40, rng, noise=2.0)
    return {"ref": ref, "data": data, "weights": weights, "rots": rots, "shifts": shifts}


@pytest.fixture(scope="module")
def chiral_data() -> dict:
    rng = np.random.default_rng(2)
    ref = chiral_map()
    data, weights, rots, shifts = make_particles(ref, 16, rng, noise=0.5)
    return {"ref": ref, "data": data, "weights": weights, "rots": rots, "shifts": shifts}


# ------------------------------------------------------------------------------------------------ kernels


def test_numba_gathers_match_numpy_reference() -> None:
    rng = np.random.default_rng(0)
    grid = (rng.normal(size=(2, 20, 20, 20)) + 1j * rng.normal(size=(2, 20, 20, 20))).astype(np.complex64)
    wgrid = rng.random((2, 20, 20, 20)).astype(np.float32)
    pts = RF._points(20, 9.0, half=True)
    rots = random_rotations(3, rng)
    shifts = rng.normal(0, 0.05, (3, 3))
    which = np.array([1, 0, 1])
    out = np.empty((3, len(pts)), np.complex64)
    RF._gather_c(grid, which, 1.0, rots, shifts, pts, out)
    outw = np.empty((3, len(pts)), np.float32)
    RF._gather_r(wgrid, which, 1.0, rots, pts, outw)
    for i in range(3):
        ref = RF.gather_numpy(grid[which[i]], 1.0, rots[i], shifts[i], pts)
        np.testing.assert_allclose(out[i], ref, rtol=0, atol=1e-4 * np.abs(ref).max())
        refw = RF.gather_numpy(wgrid[which[i]], 1.0, rots[i], np.zeros(3), pts)
        np.testing.assert_allclose(outw[i], refw, rtol=0, atol=1e-5)
    # sums over particles, as reconstructions use them
    acc_d = np.zeros(len(pts), np.complex128)
    acc_w = np.zeros(len(pts))
    RF._gather_sum(grid, wgrid, which, rots, shifts, pts, acc_d, acc_w)
    np.testing.assert_allclose(acc_d, out.astype(np.complex128).sum(0), atol=1e-3)
    np.testing.assert_allclose(acc_w, outw.sum(0), atol=1e-4)


def test_local_score_kernel_matches_numpy(chiral_data: dict) -> None:
    # X = Re Σ conj(A) D e^{2πi p·t/B}, Y = Σ W |A|² with A(p) = ref(2 (R P)ᵀ p), for per-particle R
    d, w = chiral_data["data"][:2], chiral_data["weights"][:2]
    b = d.shape[-1]
    dft = RF.centred_fft_stack(d)
    ref_ft = RF.prepare_reference(chiral_data["ref"], None)
    pts = RF._points(b, 7.0, half=True)
    rng = np.random.default_rng(8)
    rots = random_rotations(2, rng)
    pert = RF.local_rotations(3.0, 1.0)
    shifts = rng.normal(0, 1.0, (2, 3))
    deltas = RF._shift_set(0.5, 7)
    x = np.empty((2, len(pert), len(deltas)))
    y = np.empty((2, len(pert)))
    RF._local_scores(RF.reference_ri(ref_ft), 2.0, dft, w, np.arange(2), rots[:, None] @ pert[None], shifts / b,
                     pts, RF._point_rows(pts), deltas / b, x, y)
    ii = pts.astype(np.int64) + b // 2
    for c in range(2):
        dv = dft[c][ii[:, 2], ii[:, 1], ii[:, 0]].astype(np.complex128)
        wv = w[c][ii[:, 2], ii[:, 1], ii[:, 0]]
        for j in (0, 3, len(pert) - 1):
            a = RF.gather_numpy(ref_ft[0], 2.0, (rots[c] @ pert[j]).T, np.zeros(3), pts)
            assert y[c, j] == pytest.approx(float(np.sum(wv * np.abs(a) ** 2)), rel=1e-4)
            for k in (0, 4):
                ph = np.exp(2j * np.pi * pts @ (shifts[c] + deltas[k]) / b)
                assert x[c, j, k] == pytest.approx(float(np.real(np.sum(np.conj(a) * dv * ph))), rel=1e-4, abs=1e-3)


def test_symmetrise_matches_sta_rotate_fourier() -> None:
    rng = np.random.default_rng(3)
    g = rng.normal(size=(16, 16, 16)) + 1j * rng.normal(size=(16, 16, 16))
    w = rng.random((16, 16, 16))
    sym = symmetry_matrices("O")
    dg, wg = RF.symmetrise_grids(g, w, sym)
    k = np.arange(16) - 8
    # one voxel in from Nyquist: rotate_fourier drops samples with any trilinear corner outside the grid
    inside = (k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2) < 7**2
    # single-precision inputs, double accumulation: agreement to float32 rounding of 24 terms of size ~1
    np.testing.assert_allclose(dg[inside], sta.rotate_fourier(g, sym)[inside], atol=1e-5)
    np.testing.assert_allclose(wg[inside], sta.rotate_fourier(w, sym)[inside], atol=1e-5)


def test_reconstruction_matches_sta_average_and_truth(chiral_data: dict) -> None:
    d, w, rots, shifts = chiral_data["data"], chiral_data["weights"], chiral_data["rots"], chiral_data["shifts"]
    dft = RF.centred_fft_stack(d)
    dg, wg = RF.reconstruct_grids(dft, w, rots, shifts, None, symmetry="C1")
    mine = sta.fourier_to_map(dg, wg, d.shape[-1])
    # sta's average of the shifted-back volumes (shifts undone in real space by a Fourier phase)
    b = d.shape[-1]
    k = np.arange(b) - b // 2
    qz, qy, qx = np.meshgrid(k, k, k, indexing="ij")
    unshifted = [_icft(_cft(d[i]) * np.exp(2j * np.pi * (qx * s[0] + qy * s[1] + qz * s[2]) / b))
                 for i, s in enumerate(shifts)]
    theirs = sta.average_from_subtomograms(unshifted, w, rots)
    assert _cc(mine, theirs) > 0.995
    ref = chiral_data["ref"]
    assert _cc(mine, ref) > 0.9
    assert _cc(mine, ref[::-1]) < _cc(mine, ref) - 0.3


# ------------------------------------------------------------------------------------------------ grids


def test_rotation_grids() -> None:
    full = RF.so3_grid(15.0)
    au = RF.asymmetric_unit_grid(15.0, "O")
    assert abs(len(au) - len(full) / 24) < 0.05 * len(full) / 24
    # every random rotation is within ~ the step of a grid rotation, up to the symmetry
    rng = np.random.default_rng(0)
    q = random_rotations(100, rng)
    err = np.min([RF.symmetry_angle_error_deg(q, np.repeat(g[None], 100, 0), "O") for g in au], axis=0)
    assert err.max() < 15.0
    loc = RF.local_rotations(2.0, 2.0)
    assert len(loc) == 33
    np.testing.assert_allclose(loc[0], np.eye(3))
    ang = rotation_angle_deg(loc, np.eye(3)[None])
    assert ang.max() == pytest.approx(4.0, abs=1e-6)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", loc, loc), np.repeat(np.eye(3)[None], 33, 0), atol=1e-12)


# ------------------------------------------------------------------------------------------------ searches


def test_global_then_local_search_recovers_poses_up_to_symmetry(o_data: dict) -> None:
    d, w, rots, shifts = o_data["data"][:20], o_data["weights"][:20], o_data["rots"][:20], o_data["shifts"][:20]
    m = len(d)
    dft = RF.centred_fft_stack(d)
    ref_ft = RF.prepare_reference(o_data["ref"], None)
    ident = np.repeat(np.eye(3)[None], m, 0)
    sel = np.arange(m)
    r_max = 24 * VOXEL / 15.0
    r, t, _ = RF.search_poses(dft, w, ref_ft, sel, ident, np.zeros((m, 3)), RF.asymmetric_unit_grid(7.5, "O"),
                              r_max)
    t = RF.refine_shifts(dft, ref_ft, sel, r, t, np.zeros((m, 3)), r_max, 5.0)
    err = RF.symmetry_angle_error_deg(r, rots, "O")
    assert np.median(err) < 5.0 and err.max() < 8.0, err
    assert np.median(np.linalg.norm(t - shifts, axis=1)) < 0.5
    # local searches converge
    for step in (2.0, 1.0, 0.5):
        r, t, _ = RF.search_poses(dft, w, ref_ft, sel, r, t, RF.local_rotations(step), r_max)
        t = RF.refine_shifts(dft, ref_ft, sel, r, t, np.zeros((m, 3)), r_max, 5.0)
    err2 = RF.symmetry_angle_error_deg(r, rots, "O")
    assert np.median(err2) < 1.5 and np.median(err2) < np.median(err), (err, err2)
    assert np.median(np.linalg.norm(t - shifts, axis=1)) < 0.25


def test_local_search_coarse_to_fine_finds_the_full_search_poses(chiral_data: dict, monkeypatch) -> None:
    # the coarse pass (all 33 candidates on the inner eighth of the points) and the completion of the best 10 give
    # the poses of the search over every candidate on every point, and the winners' scores are their full scores
    d, w, rots, shifts = chiral_data["data"], chiral_data["weights"], chiral_data["rots"], chiral_data["shifts"]
    m = len(d)
    dft = RF.centred_fft_stack(d)
    ref_ft = RF.prepare_reference(chiral_data["ref"], None)
    rng = np.random.default_rng(12)
    # start 1-2° away from the truth: the search must move
    start = np.einsum("mij,mjk->mik", rots, RF._rodrigues(rng.normal(0, math.radians(1.2), (m, 3))))
    pert = RF.local_rotations(1.0, 2.0)
    r_max = 24 * VOXEL / 12.0
    calls: list[int] = []
    kernel = RF._local_scores

    def counted(*args: object) -> None:
        calls.append(args[5].shape[1])  # candidates per particle
        kernel(*args)

    monkeypatch.setattr(RF, "_local_scores", counted)
    full = RF.search_poses(dft, w, ref_ft, np.arange(m), start, shifts, pert, r_max, coarse_keep=0)
    assert calls == [33]
    calls.clear()
    # too few inner points (box 24) to rank the candidates: one stage, the same poses
    small = RF.search_poses(dft, w, ref_ft, np.arange(m), start, shifts, pert, r_max)
    assert calls == [33]
    np.testing.assert_array_equal(small[0], full[0])
    calls.clear()
    monkeypatch.setattr(RF, "COARSE_MIN_POINTS", 0)
    two = RF.search_poses(dft, w, ref_ft, np.arange(m), start, shifts, pert, r_max)
    assert calls == [33, 10]
    np.testing.assert_allclose(two[0], full[0], atol=1e-12)
    np.testing.assert_allclose(two[1], full[1], atol=1e-12)
    np.testing.assert_allclose(two[2], full[2], rtol=1e-5)
    err0 = RF.symmetry_angle_error_deg(start, rots, "C1")
    err = RF.symmetry_angle_error_deg(two[0], rots, "C1")
    assert np.median(err) < 0.6 * np.median(err0), (err0, err)


def test_global_search_asymmetric_map_and_scale_invariance(chiral_data: dict) -> None:
    d, w, rots, shifts = chiral_data["data"], chiral_data["weights"], chiral_data["rots"], chiral_data["shifts"]
    m = len(d)
    dft = RF.centred_fft_stack(d)
    ident = np.repeat(np.eye(3)[None], m, 0)
    grid = RF.asymmetric_unit_grid(10.0, "C1")
    out = []
    for scale in (1.0, 37.0):  # the reference's scale does not matter (per-particle scale in the score)
        ref_ft = RF.prepare_reference(scale * chiral_data["ref"], None)
        r, _, _ = RF.search_poses(dft, w, ref_ft, np.arange(m), ident, shifts, grid, 24 * VOXEL / 12.0, n_shifts=1)
        out.append(r)
    err = RF.symmetry_angle_error_deg(out[0], rots, "C1")
    assert np.median(err) < 7.0 and np.mean(err < 12.0) >= 0.9, err
    np.testing.assert_allclose(out[0], out[1], atol=1e-9)


# ------------------------------------------------------------------------------------------------ refine


def test_reconstruct_halves_with_true_poses_reaches_expected_resolution(o_data: dict) -> None:
    d, w, rots, shifts = o_data["data"], o_data["weights"], o_data["rots"], o_data["shifts"]
    poses = RF.Poses(rots, shifts * VOXEL, np.zeros(len(d)))
    res = RF.reconstruct_halves(d, w, poses, None, symmetry="O", voxel_A=VOXEL, mask_diameter_A=100.0)
    assert set(np.unique(res.half_sets)) == {1, 2}
    assert res.resolution_A < 2.6 * VOXEL  # the blobs (σ 1.4 voxels) carry signal almost to Nyquist
    assert res.fsc_corrected[1] > 0.99
    assert _cc(res.merged, o_data["ref"]) > 0.9
    # wrong poses give a worse resolution (not much worse at low resolution: O-symmetrised random poses still
    # give two similar spherical blobs)
    bad = RF.Poses(random_rotations(len(d), np.random.default_rng(9)), shifts * VOXEL, np.zeros(len(d)))
    assert RF.reconstruct_halves(d, w, bad, res.half_sets, symmetry="O", voxel_A=VOXEL,
                                 mask_diameter_A=100.0).resolution_A > 1.25 * res.resolution_A


def test_auto_refine_gold_standard_from_global_search(o_data: dict) -> None:
    d, w, rots, shifts = o_data["data"], o_data["weights"], o_data["rots"], o_data["shifts"]
    calls: list[tuple[float, str]] = []
    res = RF.auto_refine(d, w, VOXEL, o_data["ref"], symmetry="O", mask_diameter_A=100.0, initial_lowpass_A=30.0,
                         max_iterations=6, progress=lambda f, msg: calls.append((f, msg)))
    err = RF.symmetry_angle_error_deg(res.poses.rotations, rots, "O")
    assert np.median(err) < 1.5 and np.percentile(err, 90) < 3.0, err
    assert np.median(np.linalg.norm(res.poses.shifts_A / VOXEL - shifts, axis=1)) < 0.3
    truth = RF.reconstruct_halves(d, w, RF.Poses(rots, shifts * VOXEL, np.zeros(len(d))), res.half_sets,
                                  symmetry="O", voxel_A=VOXEL, mask_diameter_A=100.0)
    assert res.resolution_A < 1.1 * truth.resolution_A
    assert res.history[0]["search"] == "global" and res.history[-1]["search"] == "local"
    assert {"resolution_A", "angular_step_deg", "offset_range_px", "mean_angle_change_deg", "mean_shift_change_A",
            "time_s"} <= set(res.history[0])
    assert res.history[-1]["angular_step_deg"] < 7.5
    assert res.merged.shape == res.half1.shape == res.mask.shape == (24,) * 3
    assert res.poses.euler_deg().shape == (len(d), 3)
    assert len(calls) >= 5 and calls[-1][0] == 1.0
    assert _cc(res.merged, o_data["ref"]) > 0.9


def test_auto_refine_local_from_given_poses_and_cancel(chiral_data: dict) -> None:
    d, w, rots, shifts = chiral_data["data"], chiral_data["weights"], chiral_data["rots"], chiral_data["shifts"]
    m = len(d)
    rng = np.random.default_rng(4)
    start = rots @ RF._rodrigues(rng.normal(size=(m, 3)) * math.radians(3.0))
    poses = RF.Poses(start, np.zeros((m, 3)), np.zeros(m))
    res = RF.auto_refine(d, w, VOXEL, chiral_data["ref"], symmetry="C1", mask_diameter_A=110.0,
                         initial_lowpass_A=15.0, initial_poses=poses, max_iterations=3)
    assert all(h["search"] == "local" for h in res.history)
    err0 = RF.symmetry_angle_error_deg(start, rots, "C1")
    err = RF.symmetry_angle_error_deg(res.poses.rotations, rots, "C1")
    assert np.median(err) < np.median(err0)
    # shifts start at 0 (true ones up to ±2 px per axis); this small object aligns to ~0.5 px at ~14 Å
    d0 = np.median(np.linalg.norm(shifts, axis=1))
    assert np.median(np.linalg.norm(res.poses.shifts_A / VOXEL - shifts, axis=1)) < min(0.8, 0.5 * d0)
    # the map has the data's hand
    assert _cc(res.merged, chiral_data["ref"]) > _cc(res.merged, chiral_data["ref"][::-1]) + 0.3

    class Cancelled(Exception):
        pass

    def cancel(frac: float, msg: str) -> None:
        if frac > 0.1:
            raise Cancelled(msg)

    with pytest.raises(Cancelled):
        RF.auto_refine(d, w, VOXEL, chiral_data["ref"], symmetry="C1", initial_poses=poses, progress=cancel)


def test_tilt_prior_pulls_the_reference_z_axis_towards_the_prior_direction() -> None:
    """RELION's prior on the tilt: −½ (θ/σ)² for the angle θ between R ẑ and the particle's prior direction;
    with data that carry no orientation signal the searches (global and local) follow the prior."""
    rng = np.random.default_rng(5)
    z = np.array([[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]])
    lp = RF.tilt_log_prior(z, np.array([[0.0, 0.0, 1.0]]), 10.0)
    assert np.allclose(lp, [[0.0, -0.5 * 9.0**2]])
    assert np.allclose(RF.tilt_log_prior(z, np.full((1, 3), np.nan), 10.0), 0.0)
    m, b = 10, 24
    ref = chiral_map(b)
    data = (rng.normal(size=(m, b, b, b)) * 1e-6).astype(np.float32)  # no signal: the prior decides
    weights = np.ones((m, b, b, b), np.float32)
    dft = RF.centred_fft_stack(data)
    ref_ft = RF.prepare_reference(ref, None)
    axes = rng.normal(size=(m, 3))
    axes /= np.linalg.norm(axes, axis=1, keepdims=True)
    ident = np.repeat(np.eye(3)[None], m, axis=0)
    grid = RF.asymmetric_unit_grid(15.0, "C1")

    def angles(r: np.ndarray) -> np.ndarray:
        return np.degrees(np.arccos(np.clip(np.einsum("ma,ma->m", r[:, :, 2], axes), -1, 1)))

    r0, _, _ = RF.search_poses(dft, weights, ref_ft, np.arange(m), ident, np.zeros((m, 3)), grid, 6.0, n_shifts=1)
    r1, _, _ = RF.search_poses(dft, weights, ref_ft, np.arange(m), ident, np.zeros((m, 3)), grid, 6.0, n_shifts=1,
                               prior_axes=axes, prior_sigma_deg=5.0)
    assert angles(r1).max() < 12.0 < np.median(angles(r0))
    # local search from the global result: stays within the prior's reach and gets closer
    r2, _, _ = RF.search_poses(dft, weights, ref_ft, np.arange(m), r1, np.zeros((m, 3)),
                               RF.local_rotations(3.0, 2.0), 6.0, n_shifts=1, prior_axes=axes, prior_sigma_deg=5.0)
    assert angles(r2).max() <= angles(r1).max() + 1e-6 and np.median(angles(r2)) < 4.0
