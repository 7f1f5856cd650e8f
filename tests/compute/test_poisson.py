"""Clipped Poisson counts by inversion of the distribution function (the simulator's detector): the numba kernel
against its numpy reference (same uniforms, same counts), and the distribution against the Poisson formula."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from tomoguide.compute import poisson


def _kernel(lam: np.ndarray, u: np.ndarray, max_count: int) -> np.ndarray:
    out = np.empty(lam.size, dtype=poisson.counts_dtype(max_count))
    poisson._inverse_cdf(np.ascontiguousarray(lam).reshape(-1), np.ascontiguousarray(u).reshape(-1), max_count,
                         poisson._inverse_counts(max_count), out)
    return out.reshape(lam.shape)


@pytest.mark.parametrize("max_count", [1, 5, 127, 300])
def test_kernel_equals_numpy_reference(max_count: int) -> None:
    rng = np.random.default_rng(3)
    lam = rng.gamma(1.5, 2.0, size=(70, 53)).astype(np.float32)  # mostly small, a tail to ~20
    lam.flat[:40] = [0.0, 1e-9, 7.9, 8.0, 25.0, 60.0, 99.0, 99.99, 12.0, 40.0] * 4  # past the first 8 terms
    u = rng.random(lam.shape)
    u.flat[:4] = [0.0, 1.0 - 2**-53, 0.5, 0.999999]
    ref = poisson.poisson_clipped_reference(lam, u, max_count)
    got = _kernel(lam, u, max_count)
    assert got.dtype == ref.dtype == (np.uint8 if max_count <= 255 else np.uint16)
    np.testing.assert_array_equal(got, ref)
    assert got.max() <= max_count
    assert got.flat[0] == 0  # λ = 0
    if max_count >= 127:
        assert 60 < got.flat[6] < 140  # λ = 99
    with pytest.raises(ValueError, match="below 100"):
        poisson.poisson_clipped_reference(np.array([100.0]), np.array([0.5]), max_count)


@pytest.mark.parametrize("lam", [0.3, 2.0, 6.5, 30.0, 99.5, 150.0, 3000.0])
def test_counts_follow_the_poisson_distribution(lam: float) -> None:
    # below LARGE_MEAN (100) by inversion, from it by numpy's sampler
    rng = np.random.default_rng(11)
    n = 200_000
    max_count = int(lam + 12 * np.sqrt(lam) + 20)  # no clipping to speak of: mean and variance are λ
    k = poisson.poisson_clipped(np.full((400, 500), lam, dtype=np.float32), rng, max_count).ravel()
    obs = np.bincount(k, minlength=max_count + 1).astype(np.float64)
    pmf = scipy.stats.poisson.pmf(np.arange(max_count + 1), lam)
    pmf[-1] = scipy.stats.poisson.sf(max_count - 1, lam)  # the clipped tail
    exp = pmf * n
    # pool the sparse bins (expected < 5) into their neighbours for the chi-square test
    keep = exp >= 5
    o = np.append(obs[keep], obs[~keep].sum())
    e = np.append(exp[keep], exp[~keep].sum())
    if e[-1] < 5:
        o, e = o[:-1].copy(), e[:-1].copy()
        o[-1] += obs[~keep].sum()
        e[-1] += exp[~keep].sum()
    chi2 = float(((o - e) ** 2 / e).sum())
    dof = len(o) - 1
    assert scipy.stats.chi2.sf(chi2, dof) > 1e-3, (chi2, dof)
    assert k.mean() == pytest.approx(lam, rel=4 * np.sqrt(lam / n) / lam)
    assert k.var() == pytest.approx(lam, rel=0.02)


def test_clipping_and_per_pixel_means() -> None:
    rng = np.random.default_rng(5)
    lam = np.array([[0.0, 1.0], [300.0, 126.9]], dtype=np.float64)
    draws = np.stack([poisson.poisson_clipped(lam, rng, 127) for _ in range(4000)])
    assert (draws[:, 0, 0] == 0).all()
    assert (draws[:, 1, 0] == 127).all()  # P(X < 127 | λ = 300) ~ 1e-30
    assert draws[:, 0, 1].mean() == pytest.approx(1.0, abs=0.06)
    # λ at the clip: the mean of min(X, 127) from the formula
    ks = np.arange(128)
    pmf = scipy.stats.poisson.pmf(ks, 126.9)
    want = (ks[:-1] * pmf[:-1]).sum() + 127 * scipy.stats.poisson.sf(126, 126.9)
    assert draws[:, 1, 1].mean() == pytest.approx(want, abs=4 * np.sqrt(126.9 / 4000))


def test_same_seed_same_counts_and_bad_input_named() -> None:
    lam = np.full((30, 40), 2.0, dtype=np.float32)
    a = poisson.poisson_clipped(lam, np.random.default_rng(9), 127)
    b = poisson.poisson_clipped(lam, np.random.default_rng(9), 127)
    np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="negative value, NaN"):
        poisson.poisson_clipped(np.array([1.0, np.nan]), np.random.default_rng(0), 127)
    with pytest.raises(ValueError, match="negative value, NaN"):
        poisson.poisson_clipped(np.array([1.0, -0.1]), np.random.default_rng(0), 127)
    with pytest.raises(ValueError, match="infinity"):
        poisson.poisson_clipped(np.array([1.0, np.inf]), np.random.default_rng(0), 127)
    with pytest.raises(ValueError, match="max_count"):
        poisson.poisson_clipped(lam, np.random.default_rng(0), 70000)
