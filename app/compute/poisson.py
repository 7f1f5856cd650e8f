"""Detector counts: Poisson draws clipped at the camera's largest count, by inversion of the distribution function.

A counting camera's frame holds ``min(Poisson(λ), max_count)`` electrons per pixel, with λ of the order of one
(e⁻/px/frame). numpy's ``Generator.poisson`` draws these by its multiplication method, several uniforms per count
(about 45 ns a pixel here), one pixel after another. Here each pixel takes **one** uniform ``u`` in [0, 1) and
its count is the smallest ``k`` with ``F(k) > u``, ``F`` the Poisson distribution function of its own λ, summed
term by term (``p(k) = p(k-1) λ / k``) in float64; the search stops at ``max_count``, which is therefore
drawn with probability ``1 - F(max_count - 1)``, exactly the clipped distribution. The uniforms come from the
caller's ``numpy.random.Generator`` (one ``random`` call per frame), so the counts are deterministic for a
seed.

Means of ``LARGE_MEAN`` and more (hot pixels of a long exposure, the high-dose views of tests) are drawn by
numpy's ``Generator.poisson`` after the uniforms, in C order of their pixels: the term recursion would start from
an ``exp(-λ)`` that underflows past λ ≈ 745 and take λ steps. λ = 0 gives 0; λ that is negative, not a number or
infinite is an error.

Arrays: ``lam`` (...) float32/float64, e⁻/px; the result has ``lam``'s shape, uint8 for ``max_count`` ≤ 255,
else uint16.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["poisson_clipped", "poisson_clipped_reference", "counts_dtype"]

MAX_SUPPORTED_COUNT = 65535
LARGE_MEAN = 100.0  # from here numpy's sampler (exp(-100) = 4e-44: the recursion below is exact to float64)


def counts_dtype(max_count: int) -> type[np.unsignedinteger]:
    """uint8 when every count fits (``max_count`` ≤ 255), else uint16."""
    return np.uint8 if max_count <= 255 else np.uint16


def _check(lam: np.ndarray, max_count: int) -> None:
    if not 0 <= int(max_count) <= MAX_SUPPORTED_COUNT:
        raise ValueError(f"max_count must be in 0..{MAX_SUPPORTED_COUNT}, got {max_count}")
    if lam.size and not (float(np.min(lam)) >= 0.0 and math.isfinite(float(np.max(lam)))):  # NaN fails too
        raise ValueError("Poisson means must be finite and not negative (got a negative value, NaN or infinity)")


def _inverse_counts(max_count: int) -> np.ndarray:
    """``1 / k`` for k = 0..max_count (index 0 unused): the term recursion multiplies by ``λ · (1/k)``."""
    inv = np.zeros(int(max_count) + 1)
    inv[1:] = 1.0 / np.arange(1, int(max_count) + 1)
    return inv


def poisson_clipped_reference(lam: np.ndarray, u: np.ndarray, max_count: int) -> np.ndarray:
    """The numpy version of :func:`_inverse_cdf` (the test oracle): every pixel's search advanced together,
    one count at a time, with the same float64 arithmetic. ``u`` has ``lam``'s shape, float64 in [0, 1)."""
    lam64 = np.asarray(lam, dtype=np.float64)
    _check(lam64, max_count)
    if lam64.size and float(lam64.max()) >= LARGE_MEAN:
        raise ValueError(f"the inversion is for means below {LARGE_MEAN:g}")
    u64 = np.asarray(u, dtype=np.float64)
    inv = _inverse_counts(max_count)
    p = np.exp(-lam64)
    cdf = p.copy()
    k = np.zeros(lam64.shape, dtype=np.int64)
    active = u64 >= cdf
    for n in range(1, int(max_count) + 1):
        if not active.any():
            break
        k[active] = n
        p = p * (lam64 * inv[n])
        cdf = cdf + p
        active &= u64 >= cdf
    return k.astype(counts_dtype(max_count))


_BLOCK = 512  # pixels advanced together (fits in L1 with its four work arrays)
_FIRST_TERMS = 8  # counts tried for every pixel of a block without a branch; P(X ≥ 8 | λ = 2) = 0.1 %


@numba.njit(cache=True, nogil=True)
def _inverse_cdf(lam: np.ndarray, u: np.ndarray, max_count: int, inv: np.ndarray,
                 out: np.ndarray) -> int:  # pragma: no cover
    """out[i] = smallest k ≤ max_count with F_λ(k) > u[i] (else max_count), for flat arrays; pixels with
    λ ≥ ``LARGE_MEAN`` are left at 0 and counted (the return value) for the caller to draw.

    Per block of pixels the first ``_FIRST_TERMS`` terms are summed for all of them in branch-free loops (the
    count is the number of partial sums ≤ u, since they increase); the few pixels past them continue one by
    one. The arithmetic per pixel is that of :func:`poisson_clipped_reference`."""
    n = lam.shape[0]
    nk = min(_FIRST_TERMS, max_count)
    p = np.empty(_BLOCK)
    c = np.empty(_BLOCK)
    m = np.empty(_BLOCK)
    cnt = np.empty(_BLOCK)  # float: the compare-and-add loop vectorises
    n_large = 0
    for s in range(0, n, _BLOCK):
        nb = min(n, s + _BLOCK) - s
        for j in range(nb):
            m[j] = min(np.float64(lam[s + j]), LARGE_MEAN)  # a large mean: any finite start, redone below
            p[j] = math.exp(-m[j])
            c[j] = p[j]
            cnt[j] = 0
        for k in range(1, nk + 1):
            ik = inv[k]
            for j in range(nb):
                cnt[j] += 1.0 if u[s + j] >= c[j] else 0.0
                p[j] = p[j] * (m[j] * ik)
                c[j] += p[j]
        for j in range(nb):
            if m[j] >= LARGE_MEAN:
                out[s + j] = 0
                n_large += 1
                continue
            k = int(cnt[j])
            if k == nk:  # u ≥ F(nk - 1): go on from p = p(nk), c = F(nk)
                pj, cj, mj, uj = p[j], c[j], m[j], u[s + j]
                while uj >= cj and k < max_count:
                    k += 1
                    pj = pj * (mj * inv[k])
                    cj += pj
            out[s + j] = k
    return n_large


def poisson_clipped(lam: np.ndarray, rng: np.random.Generator, max_count: int) -> np.ndarray:
    """``min(Poisson(lam), max_count)`` per element, from one uniform of ``rng`` each (C order).

    Same distribution as ``np.minimum(rng.poisson(lam), max_count)`` (another stream of draws); about 3×
    faster on λ ≈ 2, and it releases the GIL, so views can be simulated in parallel threads.
    """
    lam = np.ascontiguousarray(lam)
    if lam.dtype not in (np.float32, np.float64):
        lam = lam.astype(np.float64)
    _check(lam, max_count)
    u = rng.random(lam.size)
    out = np.empty(lam.size, dtype=counts_dtype(max_count))
    flat = lam.reshape(-1)
    if _inverse_cdf(flat, u, int(max_count), _inverse_counts(max_count), out):
        big = np.flatnonzero(flat >= LARGE_MEAN)
        out[big] = np.minimum(rng.poisson(flat[big].astype(np.float64)), max_count)
    return out.reshape(lam.shape)
