"""The restructured averaging kernels (issue 20) against the versions they replace, kept as test oracles.

Random inputs (random grids, rotations, shifts, point sets with gaps), the new kernel and the reference kernel on
the same data: equal to float32 rounding. The reference kernels themselves are checked against pure numpy in
test_refine.py / test_sta.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute import refine as RF

from synthetic_particles import random_rotations


def _random_case(rng: np.random.Generator, b: int, c: int, pad: int = 2) -> dict:
    p = pad * b
    ref = (rng.normal(size=(1, p, p, p)) + 1j * rng.normal(size=(1, p, p, p))).astype(np.complex64)
    dft = (rng.normal(size=(c + 1, b, b, b)) + 1j * rng.normal(size=(c + 1, b, b, b))).astype(np.complex64)
    w = rng.random((c + 1, b, b, b)).astype(np.float32)
    return {"ref": ref, "dft": dft, "w": w, "rots": random_rotations(c, rng), "shifts": rng.normal(0, 1.5, (c, 3)) / b}


@pytest.mark.parametrize(("b", "r_max", "scale", "r_min"), [(16, 7.0, 2.0, 1.0), (20, 9.0, 2.0, 3.0),
                                                             (16, 7.0, 2.3, 1.0)])
def test_local_scores_equal_the_reference_kernel(b: int, r_max: float, scale: float, r_min: float) -> None:
    # scale 2.3: samples beyond the grid's edge (the clamped path); r_min 3: rows interrupted by the hole
    rng = np.random.default_rng(int(10 * scale) + b)
    case = _random_case(rng, b, 3)
    pts = RF._points(b, r_max, half=True, r_min=r_min)
    pert = RF.local_rotations(3.0, 2.0)
    deltas = RF._shift_set(1.0, 7) / b
    idx = np.array([2, 0, 3])  # particles' data in another order than their poses
    x0 = np.empty((3, len(pert), len(deltas)))
    y0 = np.empty((3, len(pert)))
    x1, y1 = np.empty_like(x0), np.empty_like(y0)
    ref = case["ref"]
    RF._local_scores_reference(np.ascontiguousarray(ref[0].real), np.ascontiguousarray(ref[0].imag), scale,
                               case["dft"], case["w"], idx, case["rots"], case["shifts"], pert, pts, deltas, x0, y0)
    cand = case["rots"][:, None] @ pert[None]  # (3, n, 3, 3): each particle's candidates
    RF._local_scores(RF.reference_ri(ref), scale, case["dft"], case["w"], idx, cand, case["shifts"], pts,
                     RF._point_rows(pts), deltas, x1, y1)
    np.testing.assert_allclose(y1, y0, rtol=2e-5)
    np.testing.assert_allclose(x1, x0, rtol=0, atol=2e-5 * np.abs(x0).max())
    assert np.abs(x0).max() > 1.0  # not trivially zero


def test_point_rows_cover_the_points_in_runs_along_x() -> None:
    pts = RF._points(20, 9.0, half=True, r_min=2.0)
    rows = RF._point_rows(pts)
    assert rows[:, 1].sum() == len(pts)
    assert np.array_equal(rows[1:, 0], np.cumsum(rows[:, 1])[:-1])
    for s0, n in rows:
        run = pts[s0:s0 + n]
        assert np.all(run[:, 1] == run[0, 1]) and np.all(run[:, 2] == run[0, 2])
        assert np.array_equal(run[:, 0], run[0, 0] + np.arange(n))


@pytest.mark.parametrize("scale", [2.0, 2.6])
def test_sample_reference_equals_the_complex_gather(scale: float) -> None:
    # scale 2.6: samples beyond the grid: the fallback to _gather_c (0 outside)
    rng = np.random.default_rng(4)
    b = 18
    case = _random_case(rng, b, 5)
    pts = RF._points(b, b / 2.0 - 1.0, half=True)
    ref = case["ref"]
    out = RF.sample_reference(ref, scale, case["rots"], pts)
    a = np.empty((5, len(pts)), np.complex64)
    RF._gather_c(ref, np.zeros(5, np.int64), scale, case["rots"], np.zeros((5, 3)), pts, a)
    assert RF._inside_reference(pts, scale, 2 * b) == (scale == 2.0)
    np.testing.assert_allclose(out[:, 0] + 1j * out[:, 1], a, rtol=0, atol=2e-5 * np.abs(a).max())


def test_refine_shifts_equals_the_reference_version() -> None:
    from synthetic_particles import chiral_map, make_particles

    rng = np.random.default_rng(6)
    ref = chiral_map()
    data, _, rots, shifts = make_particles(ref, 6, rng, noise=0.5)
    b = data.shape[-1]
    dft = RF.centred_fft_stack(data)
    ref_ft = RF.prepare_reference(ref, None)
    centres = rng.normal(0, 0.7, (6, 3))
    sel = np.array([4, 1, 5, 0])
    for r_max, offset in ((b / 2.0 - 1.0, 4.0), (5.0, 2.5)):
        new = RF.refine_shifts(dft, ref_ft, sel, rots, shifts, centres, r_max, offset)
        old = RF.refine_shifts_reference(dft, ref_ft, sel, rots, shifts, centres, r_max, offset)
        np.testing.assert_allclose(new, old, atol=1e-4)
    # and they find the true shifts (the data were shifted by them)
    np.testing.assert_allclose(new, shifts[sel], atol=0.35)
