"""The simulator's faster paths (issue 20): the numba trilinear sampler of the Fourier projector bit-identical
to the numpy one, and the projector through it against a direct sum (the whole movies old vs new:
bench/simulate_speed.py)."""

from __future__ import annotations

import numpy as np

from tomoguide.compute import simulate


def test_numba_trilinear_is_bit_identical_to_the_numpy_one() -> None:
    rng = np.random.default_rng(4)
    vol = (rng.normal(size=(9, 10, 11)) + 1j * rng.normal(size=(9, 10, 11))).astype(np.complex64)
    n = 3000
    # inside, on the upper faces, outside (negative and past the end), and exact integers
    z = rng.uniform(-1.5, 9.5, n)
    y = rng.uniform(-1.5, 10.5, n)
    x = rng.uniform(-1.5, 11.5, n)
    z[:50] = np.round(z[:50])
    x[50:100] = 10.0
    new = simulate._trilinear_c64(vol, z, y, x)
    ref = simulate._trilinear(vol, z, y, x)
    assert new.dtype == ref.dtype == np.complex64
    np.testing.assert_array_equal(new, ref)
    inside = np.count_nonzero(ref)
    assert 0.3 * n < inside < n  # both inside and outside points were tested


def test_projection_matches_the_map_sum_along_the_beam() -> None:
    # the projector (through the numba sampler) against the direct sum of a smooth map along z
    b = 24
    zz, yy, xx = np.mgrid[0:b, 0:b, 0:b] - b // 2
    m = np.exp(-((xx - 2) ** 2 + (yy + 1) ** 2 + zz**2) / (2 * 2.5**2))
    proj = simulate.FourierProjector(m, 1.5).project(np.eye(3))
    want = m.sum(axis=0) * 1.5
    np.testing.assert_allclose(proj, want, atol=0.02 * want.max())
