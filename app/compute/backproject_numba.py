"""Numba kernels of the tomogram reconstruction (:mod:`tomoguide.compute.reconstruct`): sampling raw views
into cosine-stretched aligned lines, back-projection and its exact adjoint (forward projection).

The frame these kernels work in (set up by :mod:`tomoguide.compute.reconstruct`):

* A **stretched view** is an array ``(H, L)`` per view: row ``r`` is the aligned-image row
  ``y' = r - r_c``; column ``k`` is the aligned-image column ``x' = cos β · (k - k_c)`` (``k_c = (L - 1) / 2``),
  i.e. the aligned line resampled with a step of ``cos β`` aligned pixels (IMOD's "cosine stretching").
* A tomogram voxel ``(iz, iy, ix)`` lands, in view ``v``, at the stretched column
  ``k = ix + ky[v] * iy + kz[v] * iz + kc[v]`` and row ``r = ry[v] * iy + rz[v] * iz + rc[v]``. The
  coefficient of ``ix`` is exactly 1, so along a tomogram row the interpolation weights between two
  stretched samples are constant and the inner loops are contiguous (vectorised by LLVM).
* Linear interpolation along ``k`` (and along ``r`` when an X-axis tilt makes ``r`` fractional).

:func:`backproject_lines` with weights ``w`` and :func:`forward_project_lines` with the same weights are exact
adjoints of each other (a test checks ``<A x, y> = <x, Aᵀ y>``).
"""

from __future__ import annotations

import math

import numba
import numpy as np
from numba import prange

__all__ = [
    "sample_stretched", "subtract_view_means", "backproject_lines", "forward_project_lines",
    "forward_project_lines_by_view", "sirt_slabs",
]


@numba.njit(parallel=True, fastmath=True, cache=True)
def sample_stretched(raw: np.ndarray, m: np.ndarray, out: np.ndarray, valid: np.ndarray) -> None:  # pragma: no cover
    """Bilinear sampling of raw views into stretched aligned views.

    ``raw`` (n, ny, nx) float32; ``m`` (n, 2, 3) float64 affine maps from (k, r) to raw pixel (u, v):
    ``u = m[0,0] k + m[0,1] r + m[0,2]``, ``v = m[1,0] k + m[1,1] r + m[1,2]``; ``out`` (n, H, L) float32 and
    ``valid`` (n, H, L) uint8 are written (samples outside the raw image: 0 and invalid).
    """
    n, ny, nx = raw.shape
    _, h, length = out.shape
    for job in prange(n * h):
        v = job // h
        r = job % h
        a00, a01, a02 = m[v, 0, 0], m[v, 0, 1], m[v, 0, 2]
        a10, a11, a12 = m[v, 1, 0], m[v, 1, 1], m[v, 1, 2]
        for k in range(length):
            u = a00 * k + a01 * r + a02
            w = a10 * k + a11 * r + a12
            if u < 0.0 or w < 0.0 or u > nx - 1 or w > ny - 1:
                out[v, r, k] = 0.0
                valid[v, r, k] = 0
                continue
            iu = min(int(u), nx - 2)
            iw = min(int(w), ny - 2)
            fu = u - iu
            fw = w - iw
            val = ((1.0 - fw) * ((1.0 - fu) * raw[v, iw, iu] + fu * raw[v, iw, iu + 1])
                   + fw * ((1.0 - fu) * raw[v, iw + 1, iu] + fu * raw[v, iw + 1, iu + 1]))
            out[v, r, k] = val
            valid[v, r, k] = 1


@numba.njit(parallel=True, cache=True)
def subtract_view_means(lines: np.ndarray, valid: np.ndarray) -> np.ndarray:  # pragma: no cover
    """In place: subtract from the valid samples of each view ``(n, H, L)`` their mean (float64 sums);
    invalid samples (0) are left at 0. Returns the (n,) means."""
    n, h, length = lines.shape
    sums = np.zeros((n, h))
    counts = np.zeros((n, h))
    for job in prange(n * h):
        v = job // h
        r = job % h
        s = 0.0
        c = 0.0
        for k in range(length):
            if valid[v, r, k]:
                s += lines[v, r, k]
                c += 1.0
        sums[v, r] = s
        counts[v, r] = c
    means = np.zeros(n)
    for v in range(n):
        c = counts[v].sum()
        if c > 0:
            means[v] = sums[v].sum() / c
    for job in prange(n * h):
        v = job // h
        r = job % h
        mv = np.float32(means[v])
        for k in range(length):
            if valid[v, r, k]:
                lines[v, r, k] -= mv
    return means


@numba.njit(fastmath=True, inline="always")
def _accumulate_line(acc: np.ndarray, line: np.ndarray, i0: int, a0: np.float32,
                     a1: np.float32) -> None:  # pragma: no cover
    # acc[ix] += a0 * line[i0 + ix] + a1 * line[i0 + ix + 1] for the ix where both samples exist
    nx = acc.shape[0]
    length = line.shape[0]
    lo = max(0, -i0)
    hi = min(nx, length - 1 - i0)
    if hi <= lo:
        return
    src = line[i0 + lo:i0 + hi + 1]
    dst = acc[lo:hi]
    for j in range(hi - lo):
        dst[j] += a0 * src[j] + a1 * src[j + 1]


@numba.njit(fastmath=True, inline="always")
def _accumulate_two(acc: np.ndarray, la: np.ndarray, ia: int, a0: np.float32, a1: np.float32, lb: np.ndarray,
                    ib: int, b0: np.float32, b1: np.float32) -> None:  # pragma: no cover
    # Two views in one pass over acc (fewer loads/stores of acc); falls back to one at a time at the edges
    nx = acc.shape[0]
    if ia >= 0 and ib >= 0 and ia + nx <= la.shape[0] - 1 and ib + nx <= lb.shape[0] - 1:
        sa = la[ia:ia + nx + 1]
        sb = lb[ib:ib + nx + 1]
        for j in range(nx):
            acc[j] += a0 * sa[j] + a1 * sa[j + 1] + b0 * sb[j] + b1 * sb[j + 1]
    else:
        _accumulate_line(acc, la, ia, a0, a1)
        _accumulate_line(acc, lb, ib, b0, b1)


@numba.njit(parallel=True, fastmath=True, cache=True)
def backproject_lines(lines: np.ndarray, ky: np.ndarray, kz: np.ndarray, kc: np.ndarray, ry: np.ndarray,
                      rz: np.ndarray, rc: np.ndarray, w: np.ndarray, out: np.ndarray, scale: np.ndarray,
                      accumulate: bool) -> None:  # pragma: no cover
    """Back-project stretched lines ``(n, H, L)`` float32 into ``out`` ``(nz, ny, nx)`` float32.

    Per voxel: ``s = Σ_v w[v] · lines[v](r, k)`` (bilinear in (r, k), zero outside). Blocked along the tilt
    axis (one tomogram Y slice per task; views taken two at a time). ``accumulate=False``: ``out = s``;
    ``True``: ``out += scale · s`` (``scale`` of ``out``'s shape; SIRT's column normalisation).
    """
    n, h, _ = lines.shape
    nz, ny, nx = out.shape
    one = np.float32(1.0)
    for iy in prange(ny):
        tmp = np.empty(nx, dtype=np.float32)
        i0s = np.empty(n, dtype=np.int64)
        r0s = np.empty(n, dtype=np.int64)
        c0 = np.empty(n, dtype=np.float32)
        c1 = np.empty(n, dtype=np.float32)
        gs = np.empty(n, dtype=np.float32)
        first = np.empty(n, dtype=np.int64)  # views whose row r0 is inside
        for iz in range(nz):
            acc = tmp if accumulate else out[iz, iy]
            acc[:] = 0.0
            m = 0
            for v in range(n):
                k = ky[v] * iy + kz[v] * iz + kc[v]
                kf = math.floor(k)
                f = np.float32(k - kf)
                r = ry[v] * iy + rz[v] * iz + rc[v]
                rf = math.floor(r)
                g = np.float32(r - rf)
                wv = np.float32(w[v])
                i0s[v] = int(kf)
                r0s[v] = int(rf)
                gs[v] = g
                c0[v] = wv * (one - f)
                c1[v] = wv * f
                if 0 <= r0s[v] <= h - 1:
                    first[m] = v
                    m += 1
            # row r0 with weight (1 - g), two views at a time
            j = 0
            while j + 1 < m:
                va = first[j]
                vb = first[j + 1]
                ga = one - gs[va]
                gb = one - gs[vb]
                _accumulate_two(acc, lines[va, r0s[va]], i0s[va], ga * c0[va], ga * c1[va],
                                lines[vb, r0s[vb]], i0s[vb], gb * c0[vb], gb * c1[vb])
                j += 2
            if j < m:
                va = first[j]
                ga = one - gs[va]
                _accumulate_line(acc, lines[va, r0s[va]], i0s[va], ga * c0[va], ga * c1[va])
            # row r0 + 1 with weight g (X-axis tilt only)
            for v in range(n):
                if gs[v] > 1e-6 and -1 <= r0s[v] and r0s[v] + 1 <= h - 1:
                    _accumulate_line(acc, lines[v, r0s[v] + 1], i0s[v], gs[v] * c0[v], gs[v] * c1[v])
            if accumulate:
                dst = out[iz, iy]
                sc = scale[iz, iy]
                for ix in range(nx):
                    dst[ix] += sc[ix] * acc[ix]


@numba.njit(fastmath=True, inline="always")
def _spread_line(line: np.ndarray, vol_row: np.ndarray, i0: int, a0: np.float32,
                 a1: np.float32) -> None:  # pragma: no cover
    # The transpose of _accumulate_line: line[i0 + j] += a0 * vol[j] + a1 * vol[j - 1] over the same ix range
    nx = vol_row.shape[0]
    length = line.shape[0]
    lo = max(0, -i0)
    hi = min(nx, length - 1 - i0)
    if hi <= lo:
        return
    dst = line[i0 + lo:i0 + hi + 1]
    src = vol_row[lo:hi]
    m = hi - lo
    dst[0] += a0 * src[0]
    for j in range(1, m):
        dst[j] += a0 * src[j] + a1 * src[j - 1]
    dst[m] += a1 * src[m - 1]


@numba.njit(parallel=True, fastmath=True, cache=True)
def forward_project_lines(vol: np.ndarray, ky: np.ndarray, kz: np.ndarray, kc: np.ndarray, ry: np.ndarray,
                          rz: np.ndarray, rc: np.ndarray, w: np.ndarray, lines: np.ndarray) -> None:  # pragma: no cover
    """Adjoint of :func:`backproject_lines` for views without X-axis tilt (``ry = 1``, ``rz = 0``, integer
    ``rc``): adds the projections of ``vol`` ``(nz, ny, nx)`` into ``lines`` ``(n, H, L)`` (zero it first).
    Parallel over tomogram Y slices: each writes its own rows."""
    n, h, _ = lines.shape
    nz, ny, nx = vol.shape
    for iy in prange(ny):
        for v in range(n):
            r0 = int(math.floor(ry[v] * iy + rc[v] + 0.5))
            if r0 < 0 or r0 > h - 1:
                continue
            line = lines[v, r0]
            for iz in range(nz):
                k = ky[v] * iy + kz[v] * iz + kc[v]
                kf = math.floor(k)
                f = np.float32(k - kf)
                wv = np.float32(w[v])
                _spread_line(line, vol[iz, iy], int(kf), wv * (np.float32(1.0) - f), wv * f)


@numba.njit(parallel=True, fastmath=True, cache=True)
def forward_project_lines_by_view(vol: np.ndarray, ky: np.ndarray, kz: np.ndarray, kc: np.ndarray,
                                  ry: np.ndarray, rz: np.ndarray, rc: np.ndarray, w: np.ndarray,
                                  lines: np.ndarray) -> None:  # pragma: no cover
    """Adjoint of :func:`backproject_lines` in general (X-axis tilt: fractional rows); parallel over views
    (slower: each view reads the whole volume). Adds into ``lines`` (zero it first)."""
    n, h, _ = lines.shape
    nz, ny, nx = vol.shape
    for v in prange(n):
        for iy in range(ny):
            for iz in range(nz):
                k = ky[v] * iy + kz[v] * iz + kc[v]
                kf = math.floor(k)
                f = np.float32(k - kf)
                r = ry[v] * iy + rz[v] * iz + rc[v]
                rf = math.floor(r)
                r0 = int(rf)
                g = np.float32(r - rf)
                wv = np.float32(w[v])
                one = np.float32(1.0)
                if r0 < -1 or r0 > h - 1:
                    continue
                if r0 >= 0:
                    wr = wv * (one - g)
                    _spread_line(lines[v, r0], vol[iz, iy], int(kf), wr * (one - f), wr * f)
                if g > 1e-6 and r0 + 1 < h:
                    wr = wv * g
                    _spread_line(lines[v, r0 + 1], vol[iz, iy], int(kf), wr * (one - f), wr * f)


@numba.njit(parallel=True, fastmath=True, cache=True)
def sirt_slabs(b: np.ndarray, valid: np.ndarray, ky: np.ndarray, kz: np.ndarray, kc: np.ndarray, w: np.ndarray,
               x: np.ndarray, iy0: int, iy1: int, n_iter: int, relaxation: float,
               positivity: bool) -> None:  # pragma: no cover
    """SIRT of the tomogram Y slices ``iy0 ≤ iy < iy1``, each slice entirely in cache: for views without X-axis
    tilt (``ry = 1``, ``rz = 0``, ``rc = 0``: slice ``iy`` is seen only by row ``iy`` of every stretched view, so
    every slice is its own 2D problem). Per slice (one task each): the row sums ``A 1`` and column sums ``Aᵀ R⁰``
    of :func:`tomoguide.compute.reconstruct.sirt` for this slice's rays and voxels, then ``n_iter`` iterations of
    ``x ← x + λ C Aᵀ R (b − A x)`` (projector :func:`forward_project_lines`, back-projector
    :func:`backproject_lines`, the same arithmetic), on a (nz, nx) copy of the slice and (n, L) rows, written to
    ``x`` (nz, ny, nx) float32 at the end. ``b`` (n, H, L) float32 stretched views, ``valid`` (n, H, L) uint8."""
    n, _, length = b.shape
    nz, _, nx = x.shape
    one = np.float32(1.0)
    for iy in prange(iy0, iy1):
        i0s = np.empty((n, nz), dtype=np.int64)
        c0 = np.empty((n, nz), dtype=np.float32)
        c1 = np.empty((n, nz), dtype=np.float32)
        for v in range(n):
            wv = np.float32(w[v])
            for iz in range(nz):
                k = ky[v] * iy + kz[v] * iz + kc[v]
                kf = math.floor(k)
                f = np.float32(k - kf)
                i0s[v, iz] = int(kf)
                c0[v, iz] = wv * (one - f)
                c1[v, iz] = wv * f
        xs = np.zeros((nz, nx), dtype=np.float32)
        proj = np.zeros((n, length), dtype=np.float32)
        # row sums A 1 and the rays that count (inside the raw image, at least 1 px long)
        ones = np.ones(nx, dtype=np.float32)
        for v in range(n):
            for iz in range(nz):
                _spread_line(proj[v], ones, i0s[v, iz], c0[v, iz], c1[v, iz])
        rweight = np.zeros((n, length), dtype=np.float32)
        okf = np.zeros((n, length), dtype=np.float32)
        for v in range(n):
            for j in range(length):
                if valid[v, iy, j] and proj[v, j] >= 1.0:
                    rweight[v, j] = one / proj[v, j]
                    okf[v, j] = one
        # column sums Aᵀ R⁰ → the scale C λ
        cscale = np.zeros((nz, nx), dtype=np.float32)
        acc = np.empty(nx, dtype=np.float32)
        relax = np.float32(relaxation)
        for iz in range(nz):
            acc[:] = 0.0
            v = 0
            while v + 1 < n:
                _accumulate_two(acc, okf[v], i0s[v, iz], c0[v, iz], c1[v, iz], okf[v + 1], i0s[v + 1, iz],
                                c0[v + 1, iz], c1[v + 1, iz])
                v += 2
            if v < n:
                _accumulate_line(acc, okf[v], i0s[v, iz], c0[v, iz], c1[v, iz])
            for ix in range(nx):
                if acc[ix] > 1e-6:
                    cscale[iz, ix] = relax / acc[ix]
        for _ in range(n_iter):
            proj[:, :] = 0.0
            for v in range(n):
                for iz in range(nz):
                    _spread_line(proj[v], xs[iz], i0s[v, iz], c0[v, iz], c1[v, iz])
            for v in range(n):
                for j in range(length):
                    proj[v, j] = (b[v, iy, j] - proj[v, j]) * rweight[v, j]
            for iz in range(nz):
                acc[:] = 0.0
                v = 0
                while v + 1 < n:
                    _accumulate_two(acc, proj[v], i0s[v, iz], c0[v, iz], c1[v, iz], proj[v + 1], i0s[v + 1, iz],
                                    c0[v + 1, iz], c1[v + 1, iz])
                    v += 2
                if v < n:
                    _accumulate_line(acc, proj[v], i0s[v, iz], c0[v, iz], c1[v, iz])
                row = xs[iz]
                sc = cscale[iz]
                for ix in range(nx):
                    row[ix] += sc[ix] * acc[ix]
                if positivity:
                    for ix in range(nx):
                        if row[ix] < 0.0:
                            row[ix] = 0.0
        for iz in range(nz):
            x[iz, iy, :] = xs[iz]
