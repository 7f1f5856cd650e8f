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
    "sample_stretched", "subtract_view_means", "sample_stretched_sums", "subtract_means_from_sums",
    "backproject_lines", "forward_project_lines",
    "forward_project_lines_by_view", "sirt_slabs", "backproject_lines_tiled",
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


@numba.njit(parallel=True, fastmath=True, cache=True)
def sample_stretched_sums(raw: np.ndarray, m: np.ndarray, out: np.ndarray, valid: np.ndarray, sums: np.ndarray,
                          counts: np.ndarray) -> None:  # pragma: no cover
    """:func:`sample_stretched` that also writes each line's sum of valid samples (float64, in ``sums`` (n, H))
    and their count (``counts`` (n, H)) in the same pass, for :func:`subtract_means_from_sums` (the same
    arithmetic as :func:`subtract_view_means` without its reading pass over the lines)."""
    n, ny, nx = raw.shape
    _, h, length = out.shape
    for job in prange(n * h):
        v = job // h
        r = job % h
        a00, a01, a02 = m[v, 0, 0], m[v, 0, 1], m[v, 0, 2]
        a10, a11, a12 = m[v, 1, 0], m[v, 1, 1], m[v, 1, 2]
        s = 0.0
        c = 0.0
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
            val = np.float32((1.0 - fw) * ((1.0 - fu) * raw[v, iw, iu] + fu * raw[v, iw, iu + 1])
                             + fw * ((1.0 - fu) * raw[v, iw + 1, iu] + fu * raw[v, iw + 1, iu + 1]))
            out[v, r, k] = val
            valid[v, r, k] = 1
            s += val
            c += 1.0
        sums[v, r] = s
        counts[v, r] = c


@numba.njit(parallel=True, cache=True)
def subtract_means_from_sums(lines: np.ndarray, valid: np.ndarray, sums: np.ndarray,
                             counts: np.ndarray) -> np.ndarray:  # pragma: no cover
    """In place: subtract from the valid samples of each view ``(n, H, L)`` the mean of its valid samples from the
    line sums and counts of :func:`sample_stretched_sums`; invalid samples (0) stay 0. Returns the (n,) means."""
    n, h, length = lines.shape
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
    return subtract_means_from_sums(lines, valid, sums, counts)


@numba.njit(fastmath=True, cache=True)
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


@numba.njit(fastmath=True, cache=True)
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


@numba.njit(fastmath=True, cache=True)
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


@numba.njit(fastmath=True, cache=True)
def _fma4(dst: np.ndarray, sa: np.ndarray, sb: np.ndarray, sc: np.ndarray, sd: np.ndarray, p0: np.float32,
          q0: np.float32, p1: np.float32, q1: np.float32, p2: np.float32, q2: np.float32, p3: np.float32,
          q3: np.float32) -> None:  # pragma: no cover
    # dst[j] += Σ_e p_e s_e[j] + q_e s_e[j + 1] for four line segments s_e of len(dst) + 1 samples
    for j in range(dst.shape[0]):
        dst[j] += (p0 * sa[j] + q0 * sa[j + 1] + p1 * sb[j] + q1 * sb[j + 1]
                   + p2 * sc[j] + q2 * sc[j + 1] + p3 * sd[j] + q3 * sd[j + 1])


@numba.njit(fastmath=True, cache=True)
def _fma8(dst: np.ndarray, s0: np.ndarray, s1: np.ndarray, s2: np.ndarray, s3: np.ndarray, s4: np.ndarray,
          s5: np.ndarray, s6: np.ndarray, s7: np.ndarray, pq: np.ndarray) -> None:  # pragma: no cover
    # dst[j] += Σ_e pq[2e] s_e[j] + pq[2e + 1] s_e[j + 1] for eight line segments s_e of len(dst) + 1 samples
    p0, q0, p1, q1, p2, q2, p3, q3 = pq[0], pq[1], pq[2], pq[3], pq[4], pq[5], pq[6], pq[7]
    p4, q4, p5, q5, p6, q6, p7, q7 = pq[8], pq[9], pq[10], pq[11], pq[12], pq[13], pq[14], pq[15]
    for j in range(dst.shape[0]):
        dst[j] += ((p0 * s0[j] + q0 * s0[j + 1] + p1 * s1[j] + q1 * s1[j + 1])
                   + (p2 * s2[j] + q2 * s2[j + 1] + p3 * s3[j] + q3 * s3[j + 1])
                   + (p4 * s4[j] + q4 * s4[j + 1] + p5 * s5[j] + q5 * s5[j + 1])
                   + (p6 * s6[j] + q6 * s6[j + 1] + p7 * s7[j] + q7 * s7[j + 1]))


@numba.njit(fastmath=True, cache=True)
def _fma1(dst: np.ndarray, sa: np.ndarray, p0: np.float32, q0: np.float32) -> None:  # pragma: no cover
    for j in range(dst.shape[0]):
        dst[j] += p0 * sa[j] + q0 * sa[j + 1]


@numba.njit(parallel=True, fastmath=True, cache=True)
def backproject_lines_tiled(lines: np.ndarray, ky: np.ndarray, kz: np.ndarray, kc: np.ndarray, ry: np.ndarray,
                            rz: np.ndarray, rc: np.ndarray, w: np.ndarray, out: np.ndarray, scale: np.ndarray,
                            accumulate: bool, z_block: int = 1 << 20,
                            x_block: int = 1 << 20) -> None:  # pragma: no cover
    """:func:`backproject_lines` (same arguments, same result to float32 rounding) with fewer passes.

    One task per tomogram Y slice; in it, per view and per Z row, the interpolation entries (line row,
    first column, the two linear weights ``w (1 - g)(1 - f)``, ``w (1 - g) f``; a second entry with weight ``g``
    for the next row under an X-axis tilt) are computed once. Each output row is then accumulated from eight
    entries per pass (the reference takes two), so the row is loaded and stored about n_views / 8 times instead
    of n_views / 2. The slice can be walked in tiles of ``z_block × x_block`` voxels (each view's samples a
    tile reads then stay in L1); on the 2-core Xeon this was measured on, tiles gave nothing over whole rows
    (the defaults: no tiling). Entries whose samples run past a line's end are clipped like the reference.
    """
    n, h, length = lines.shape
    nz, ny, nx = out.shape
    flat = lines.reshape(n * h * length)
    one = np.float32(1.0)
    n_ent_max = 2 * n
    for iy in prange(ny):
        e_base = np.empty((nz, n_ent_max), dtype=np.int64)  # flat index of (row, first column) of each entry
        e_i0 = np.empty((nz, n_ent_max), dtype=np.int64)  # first column
        e_row = np.empty((nz, n_ent_max), dtype=np.int64)
        e_p = np.empty((nz, n_ent_max), dtype=np.float32)
        e_q = np.empty((nz, n_ent_max), dtype=np.float32)
        n_ent = np.zeros(nz, dtype=np.int64)
        for iz in range(nz):
            m_e = 0
            for v in range(n):
                k = ky[v] * iy + kz[v] * iz + kc[v]
                kf = math.floor(k)
                f = np.float32(k - kf)
                r = ry[v] * iy + rz[v] * iz + rc[v]
                rf = math.floor(r)
                g = np.float32(r - rf)
                r0 = int(rf)
                wv = np.float32(w[v])
                c0 = wv * (one - f)
                c1 = wv * f
                if 0 <= r0 <= h - 1:
                    e_row[iz, m_e] = v * h + r0
                    e_i0[iz, m_e] = int(kf)
                    e_p[iz, m_e] = (one - g) * c0
                    e_q[iz, m_e] = (one - g) * c1
                    m_e += 1
                if g > 1e-6 and -1 <= r0 and r0 + 1 <= h - 1:
                    e_row[iz, m_e] = v * h + r0 + 1
                    e_i0[iz, m_e] = int(kf)
                    e_p[iz, m_e] = g * c0
                    e_q[iz, m_e] = g * c1
                    m_e += 1
            n_ent[iz] = m_e
            for e in range(m_e):
                e_base[iz, e] = e_row[iz, e] * length + e_i0[iz, e]
        fast = np.empty(n_ent_max, dtype=np.int64)
        tile = np.empty(min(x_block, nx), dtype=np.float32)
        b8 = np.empty(8, dtype=np.int64)
        pq = np.empty(16, dtype=np.float32)
        for z0 in range(0, nz, z_block):
            z1 = min(nz, z0 + z_block)
            for x0 in range(0, nx, x_block):
                x1 = min(nx, x0 + x_block)
                m = x1 - x0
                for iz in range(z0, z1):
                    if accumulate:
                        acc = tile
                        o = 0
                    else:
                        acc = out[iz, iy]
                        o = x0
                    for j in range(m):
                        acc[o + j] = 0.0
                    n_fast = 0
                    for e in range(n_ent[iz]):
                        i0 = e_i0[iz, e] + x0
                        if i0 >= 0 and i0 + m <= length - 1:
                            fast[n_fast] = e
                            n_fast += 1
                        else:  # clipped at a line's end
                            _accumulate_line(acc[o:o + m], flat[e_row[iz, e] * length:(e_row[iz, e] + 1) * length],
                                             i0, e_p[iz, e], e_q[iz, e])
                    dst = acc[o:o + m]
                    j4 = 0
                    while j4 + 7 < n_fast:
                        for t in range(8):
                            et = fast[j4 + t]
                            b8[t] = e_base[iz, et] + x0
                            pq[2 * t] = e_p[iz, et]
                            pq[2 * t + 1] = e_q[iz, et]
                        _fma8(dst, flat[b8[0]:b8[0] + m + 1], flat[b8[1]:b8[1] + m + 1], flat[b8[2]:b8[2] + m + 1],
                              flat[b8[3]:b8[3] + m + 1], flat[b8[4]:b8[4] + m + 1], flat[b8[5]:b8[5] + m + 1],
                              flat[b8[6]:b8[6] + m + 1], flat[b8[7]:b8[7] + m + 1], pq)
                        j4 += 8
                    while j4 + 3 < n_fast:
                        ea, eb, ec, ed = fast[j4], fast[j4 + 1], fast[j4 + 2], fast[j4 + 3]
                        ba = e_base[iz, ea] + x0
                        bb = e_base[iz, eb] + x0
                        bc = e_base[iz, ec] + x0
                        bd = e_base[iz, ed] + x0
                        _fma4(dst, flat[ba:ba + m + 1], flat[bb:bb + m + 1], flat[bc:bc + m + 1],
                              flat[bd:bd + m + 1], e_p[iz, ea], e_q[iz, ea], e_p[iz, eb], e_q[iz, eb],
                              e_p[iz, ec], e_q[iz, ec], e_p[iz, ed], e_q[iz, ed])
                        j4 += 4
                    while j4 < n_fast:
                        ea = fast[j4]
                        ba = e_base[iz, ea] + x0
                        _fma1(dst, flat[ba:ba + m + 1], e_p[iz, ea], e_q[iz, ea])
                        j4 += 1
                    if accumulate:
                        dst = out[iz, iy]
                        sc = scale[iz, iy]
                        for j in range(m):
                            dst[x0 + j] += sc[x0 + j] * tile[j]
