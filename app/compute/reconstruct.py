"""Tomogram reconstruction from a tilt series: weighted back-projection (WBP, IMOD-like radial filter and
"fake SIRT" filter) and SIRT with a matched forward projector.

Entry points: :func:`backproject` (WBP), :func:`sirt`, :func:`save_tomogram`; the filter
(:func:`radial_filter`), the angular weights (:func:`view_weights`) and the voxel-to-pixel map
(:func:`voxel_to_raw`) are public for tests and previews; :func:`backproject_reference` is the slow, pure-numpy
reference of :func:`backproject` (small sizes only).

Conventions (all those of :mod:`tomoguide.geometry`, which the tests check against the simulator's truth)
-------------------------------------------------------------------------------------------------------------
* **Input**: ``stack`` ``(n_views, ny, nx)``, the *raw* (unaligned) views of the geometry record, in its view
  order, at the record's binning (``geometry.image_shape_px``). The per-view transforms ``geometry.xf``
  (IMOD, raw -> aligned) are applied here by linear interpolation, once (no separately interpolated aligned
  stack is needed). Views with ``geometry.excluded`` set are skipped: they contribute nothing.
* **Output**: ``(nz, ny, nx)`` float32 tomogram, voxel = pixel of the record's binning
  (``geometry.pixel_size_binned_A``; :func:`save_tomogram` writes it to the MRC header). The **tilt axis
  is along Y** of the tomogram; Z is along the beam at 0° tilt. Voxel ``(iz, iy, ix)`` is the specimen point
  ``x = ix - (nx-1)/2 - shift_x_px - axis_offset_px``, ``y = iy - (ny-1)/2``,
  ``z = zs · (iz - (nz-1)/2 - shift_z_px)`` (px, tomogram frame of the geometry record; ``zs = -1`` when
  ``geometry.z_flip`` else ``+1``). Handedness: view ``v`` with true tilt ``β`` (``geometry.true_tilt_deg()``
  + ``tilt_offset_deg``) sees it at the aligned-image position
  ``x' = x cos β + sin β (sin α y + cos α z) + axis_offset_px``, ``y' = cos α y - sin α z``
  (``α = geometry.x_tilt_deg``): **+β moves +z towards +x**, exactly ``geometry.projection_matrices``
  (checked by :func:`voxel_to_raw` and the tests). So with default offsets, the tomogram voxel at
  ``centre + p`` holds the specimen point ``p`` of ``truth/particles.star`` (Å / pixel size): no mirror.
* **Offsets** (IMOD ``tilt``): ``shift_x_px``, ``shift_z_px`` (SHIFT: move the reconstruction by that many
  voxels towards +X / +Z of the output), ``tilt_offset_deg`` (OFFSET: added to every tilt angle),
  ``axis_offset_px`` (OFFSET's second value: the tilt axis lies ``axis_offset_px`` aligned pixels right of
  the aligned-image centre; it is reconstructed at column ``(nx-1)/2 + axis_offset_px + shift_x_px``).
* **Units / scale**: WBP is ``Σ_v Δθ_v · (H * p_v)`` with ``Δθ_v`` the angular interval of the view in
  radians and ``H`` the radial filter in cycles/pixel (``|ρ|`` below the cutoff): for line-integral
  projections over a full half-turn this is the inverse Radon transform, so the tomogram is in the stack's
  units per pixel (for a limited tilt range: the same, less the missing wedge). SIRT solves the same model
  with the forward projector ``A`` (ray sums in px, through voxels of 1 px).
* **Per-view mean**: each view's mean (over the part of the raw image that is used) is subtracted before
  reconstruction (``subtract_mean=True``); the area outside the raw image is filled with that mean (0), as
  IMOD fills with the mean.

Radial filter (IMOD ``tilt`` RADIAL / FalloffIsTrueSigma 1 / FakeSIRTiterations)
-------------------------------------------------------------------------------
Frequencies in cycles/pixel (0.5 = Nyquist), as IMOD's RADIAL values below 1: a ramp ``|ρ|`` up to
``cutoff`` (default 0.35), then the ramp's value at the cutoff times a Gaussian
``exp(-(ρ - cutoff)² / (2 falloff²))`` (falloff = the true sigma, default 0.035); zero frequency gets
0.2 / line length (Kak & Slaney's value, as IMOD). ``fake_sirt_iterations = N > 0`` replaces the ramp by
IMOD's SIRT-like filter ``|ρ| (1 - (1 - α/|ρ|)^(N' + 0.3))`` for ``|ρ| ≥ α = 0.00195`` with
``N' = N`` (N ≤ 15), ``15 + 0.8 (N - 15)`` (15 < N ≤ 30), ``27 + 0.6 (N - 30)`` (N > 30): the
closed form of N Landweber/SIRT iterations (Zeng 2012) with IMOD's empirical constants. Views are weighted
by their local tilt increment (IMOD's tilt-increment weighting): ``Δθ_v`` = the mean of the intervals to the
neighbouring included views (the one interval at either end).

Speed (the "cosine stretch" of IMOD ``tilt``)
---------------------------------------------
Each view is sampled from the raw image directly onto lines parallel to the aligned X axis with a step of
``cos β`` aligned pixels; the filter is applied to those lines (``H(ρ_s / cos β)``, which is exact); then
along a tomogram row the sampling position advances by exactly one line sample per voxel, so the
back-projection is a contiguous two-tap interpolation with constant weights, vectorised and blocked along
the tilt axis (:mod:`tomoguide.compute.backproject_numba`). SIRT works on the same lines with the exact
adjoint (forward projector) of that back-projector.

Arrays: the array module is taken from the input (:func:`tomoguide.compute.backend.xp_of`); the kernels run on
the CPU (numpy + numba), a CuPy input is copied to the host and the result returned as CuPy.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from tomoguide.compute import backproject_numba as kern
from tomoguide.compute.backend import fft_workers, is_gpu_array, to_numpy, xp_of
from tomoguide.geometry import TiltSeriesGeometry

__all__ = [
    "FAKE_SIRT_ALPHA",
    "radial_filter",
    "fake_sirt_effective_iterations",
    "view_weights",
    "voxel_to_raw",
    "backproject",
    "sirt",
    "backproject_reference",
    "save_tomogram",
    "simple_geometry",
]

FAKE_SIRT_ALPHA = 0.00195  # IMOD tilt's empirical fake-SIRT alpha (cycles/px)
_FAKE_SIRT_MATCH_ADD = 0.3  # IMOD tilt's fakeMatchAdd

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------------------
# Filter and weights
# --------------------------------------------------------------------------------------------------------


def fake_sirt_effective_iterations(n_iter: int) -> float:
    """IMOD's mapping from the requested SIRT-like iterations to the exponent used (before adding 0.3)."""
    n = float(n_iter)
    if n > 30:
        return 27.0 + 0.6 * (n - 30.0)
    if n > 15:
        return 15.0 + 0.8 * (n - 15.0)
    return n


def radial_filter(freq: Any, *, cutoff: float = 0.35, falloff: float = 0.035, fake_sirt_iterations: int = 0,
                  line_length: float | None = None) -> np.ndarray:
    """IMOD-like radial weighting at frequencies ``freq`` (cycles/pixel, any shape; sign ignored): float64.

    ``|ρ|`` (or the fake-SIRT filter, see the module docstring) up to ``cutoff``, then its value at the cutoff
    times ``exp(-(|ρ| - cutoff)² / (2 falloff²))``; zero above 0.5 (Nyquist). The value at ρ = 0 is
    ``0.2 / line_length`` (IMOD's; 0 when ``line_length`` is None). ``cutoff`` ≥ 0.5 means no fall-off.
    """
    if not 0.0 < cutoff:
        raise ValueError(f"radial cutoff must be > 0 cycles/px, got {cutoff}")
    if falloff <= 0:
        raise ValueError(f"radial fall-off must be > 0 cycles/px, got {falloff}")
    if fake_sirt_iterations < 0:
        raise ValueError(f"fake_sirt_iterations must be >= 0, got {fake_sirt_iterations}")
    f = np.abs(np.asarray(freq, dtype=np.float64))

    def base(r: np.ndarray) -> np.ndarray:
        out = r.copy()
        if fake_sirt_iterations > 0:
            e = fake_sirt_effective_iterations(fake_sirt_iterations) + _FAKE_SIRT_MATCH_ADD
            m = r >= FAKE_SIRT_ALPHA
            out[m] = r[m] * (1.0 - (1.0 - FAKE_SIRT_ALPHA / r[m]) ** e)
        return out

    h = base(f)
    if cutoff < 0.5:
        at_cut = float(base(np.array([cutoff]))[0])
        beyond = f > cutoff
        h[beyond] = at_cut * np.exp(-0.5 * ((f[beyond] - cutoff) / falloff) ** 2)
    h[f > 0.5 + 1e-12] = 0.0
    h[f == 0] = 0.2 / line_length if line_length else 0.0
    return h


def view_weights(tilt_deg: Any, *, density: bool = True) -> np.ndarray:
    """(n,) angular weight of each view in radians: with ``density`` the mean of the intervals to its
    neighbours (the one interval at either end; IMOD's tilt-increment weighting), else the mean interval.
    One view: π (a single projection, back-projected)."""
    t = np.radians(np.asarray(tilt_deg, dtype=np.float64).reshape(-1))
    n = t.size
    if n == 0:
        raise ValueError("no views to reconstruct (all excluded?)")
    if n == 1:
        return np.array([math.pi])
    order = np.argsort(t, kind="stable")
    ts = t[order]
    d = np.diff(ts)
    if not density:
        return np.full(n, (ts[-1] - ts[0]) / (n - 1))
    w = np.empty(n)
    w[0], w[-1] = d[0], d[-1]
    w[1:-1] = 0.5 * (d[:-1] + d[1:])
    out = np.empty(n)
    out[order] = w
    return out


# --------------------------------------------------------------------------------------------------------
# Geometry of the stretched lines
# --------------------------------------------------------------------------------------------------------


@dataclass
class _Setup:
    views: np.ndarray  # (n,) indices of the included views in the record
    beta_deg: np.ndarray  # (n,) tilt used (true + offset)
    raw_map: np.ndarray  # (n, 2, 3): (k, r) -> raw (u, v)
    ky: np.ndarray
    kz: np.ndarray
    kc: np.ndarray
    ry: np.ndarray
    rz: np.ndarray
    rc: np.ndarray
    n_rows: int  # H
    n_cols: int  # L
    x_tilt: bool
    margin: int  # free columns at each end of the lines (outside every voxel's reach)


def _check_shape(shape: tuple[int, int, int]) -> tuple[int, int, int]:
    if len(shape) != 3 or any(int(s) < 1 for s in shape):
        raise ValueError(f"tomogram shape must be (nz, ny, nx) positive, got {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _setup(geometry: TiltSeriesGeometry, shape: tuple[int, int, int], *, shift_x_px: float, shift_z_px: float,
           tilt_offset_deg: float, axis_offset_px: float, views: np.ndarray | None = None) -> _Setup:
    nz, ny, nx = _check_shape(shape)
    idx = geometry.included_views() if views is None else np.asarray(views, dtype=np.int64)
    if idx.size == 0:
        raise ValueError(f"{geometry.name}: every view is excluded; nothing to reconstruct")
    beta = geometry.true_tilt_deg()[idx] + tilt_offset_deg
    if np.any(np.abs(beta) >= 89.0):
        raise ValueError(f"tilt angles must be within ±89° (got {beta.min():.1f}..{beta.max():.1f})")
    b = np.radians(beta)
    cb, tb = np.cos(b), np.tan(b)
    al = math.radians(geometry.x_tilt_deg)
    ca, sa = math.cos(al), math.sin(al)
    zs = -1.0 if geometry.z_flip else 1.0
    cx, cy, cz = (nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0
    a = float(axis_offset_px)
    # k - k_c = ix + ky iy + kz iz + k0 ; r - r_c = ry iy + rz iz + r0
    ky = tb * sa
    kz = tb * ca * zs
    k0 = -cx - shift_x_px - a - tb * sa * cy - tb * ca * zs * (cz + shift_z_px) + a / cb
    ry = np.full(idx.size, ca)
    rz = np.full(idx.size, -sa * zs)
    r0 = np.full(idx.size, -ca * cy + sa * zs * (cz + shift_z_px))
    x_tilt = abs(sa) > 1e-9
    corners = np.array([(iz, iy, ix) for iz in (0, nz - 1) for iy in (0, ny - 1) for ix in (0, nx - 1)], float)
    kk = corners[:, 2][None, :] + ky[:, None] * corners[:, 1] + kz[:, None] * corners[:, 0] + k0[:, None]
    rr = ry[:, None] * corners[:, 1] + rz[:, None] * corners[:, 0] + r0[:, None]
    half = float(np.max(np.abs(kk))) + 2.0
    pad = max(16, int(0.05 * 2 * half))
    n_cols = int(scipy.fft.next_fast_len(int(math.ceil(2 * half)) + 2 * pad, real=True))
    k_c = (n_cols - 1) / 2.0
    if x_tilt:
        r_c = -math.floor(float(rr.min()))
        n_rows = int(math.ceil(float(rr.max()) + r_c)) + 2
    else:
        r_c = cy  # r = iy exactly
        n_rows = ny
    kc = k0 + k_c
    rc = r0 + r_c
    if not x_tilt:
        rc = np.round(rc)
    # raw pixel of (k, r): x' = cos β (k - k_c), y' = r - r_c, raw = C + A⁻¹ ((x', y') - d)
    m = geometry.xf_array()[idx]
    ainv = np.linalg.inv(m[:, :, :2])
    d = m[:, :, 2]
    centre = geometry.image_centre_px()
    raw_map = np.zeros((idx.size, 2, 3))
    raw_map[:, :, 0] = ainv[:, :, 0] * cb[:, None]
    raw_map[:, :, 1] = ainv[:, :, 1]
    off = np.stack([-cb * k_c - d[:, 0], np.full(idx.size, -r_c) - d[:, 1]], axis=1)
    raw_map[:, :, 2] = centre[None, :] + np.einsum("nij,nj->ni", ainv, off)
    k_lo = float((kk + k_c).min())
    k_hi = float((kk + k_c).max())
    margin = max(0, min(int(math.floor(k_lo)) - 1, n_cols - 3 - int(math.ceil(k_hi))))
    return _Setup(views=idx, beta_deg=beta, raw_map=raw_map, ky=ky, kz=kz, kc=kc, ry=ry, rz=rz, rc=rc,
                  n_rows=n_rows, n_cols=n_cols, x_tilt=x_tilt, margin=margin)


def voxel_to_raw(geometry: TiltSeriesGeometry, shape: tuple[int, int, int], voxels: Any, *,
                 shift_x_px: float = 0.0, shift_z_px: float = 0.0, tilt_offset_deg: float = 0.0,
                 axis_offset_px: float = 0.0) -> np.ndarray:
    """Raw-image pixel ``(u, v)`` (x = column, y = row) at which each included view samples the tomogram
    voxels ``voxels`` ((m, 3) as ``(ix, iy, iz)``, float): (n_included, m, 2), the same chain the kernels
    use (voxel -> stretched line -> raw). With zero offsets this equals ``geometry.project(...)`` of the
    specimen points of those voxels (tested)."""
    s = _setup(geometry, shape, shift_x_px=shift_x_px, shift_z_px=shift_z_px, tilt_offset_deg=tilt_offset_deg,
               axis_offset_px=axis_offset_px)
    p = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
    k = p[None, :, 0] + s.ky[:, None] * p[None, :, 1] + s.kz[:, None] * p[None, :, 2] + s.kc[:, None]
    r = s.ry[:, None] * p[None, :, 1] + s.rz[:, None] * p[None, :, 2] + s.rc[:, None]
    m = s.raw_map
    u = m[:, 0, 0, None] * k + m[:, 0, 1, None] * r + m[:, 0, 2, None]
    v = m[:, 1, 0, None] * k + m[:, 1, 1, None] * r + m[:, 1, 2, None]
    return np.stack([u, v], axis=-1)


def _as_stack(stack: Any, geometry: TiltSeriesGeometry) -> np.ndarray:
    a = np.ascontiguousarray(to_numpy(stack), dtype=np.float32)
    if a.ndim != 3:
        raise ValueError(f"stack must be (n_views, ny, nx), got shape {a.shape}")
    if a.shape[0] != geometry.n_views:
        raise ValueError(f"stack has {a.shape[0]} views, the geometry {geometry.n_views}")
    if tuple(a.shape[1:]) != tuple(geometry.image_shape_px):
        raise ValueError(f"stack views are {a.shape[1:]} px, the geometry says {tuple(geometry.image_shape_px)} "
                         f"(binning {geometry.binning}); bring the geometry to the stack's binning (at_binning)")
    if a.shape[1] < 2 or a.shape[2] < 2:
        raise ValueError("views must be at least 2 x 2 px")
    return a


def _sample_lines(stack: np.ndarray, s: _Setup, subtract_mean: bool) -> tuple[np.ndarray, np.ndarray]:
    if s.views.size == stack.shape[0] and np.array_equal(s.views, np.arange(stack.shape[0])):
        raw = stack  # already C-contiguous float32 (_as_stack): no copy
    else:
        raw = np.ascontiguousarray(stack[s.views])
    lines = np.empty((s.views.size, s.n_rows, s.n_cols), dtype=np.float32)
    valid = np.empty(lines.shape, dtype=np.uint8)
    sums = np.empty((s.views.size, s.n_rows))
    counts = np.empty((s.views.size, s.n_rows))
    kern.sample_stretched_sums(raw, np.ascontiguousarray(s.raw_map), lines, valid, sums, counts)
    if subtract_mean:
        kern.subtract_means_from_sums(lines, valid, sums, counts)
    return lines, valid


def _taper_ends(lines: np.ndarray, width: int) -> None:
    """Cosine taper over ``width`` samples at both ends of every line (against FFT wrap-around)."""
    n = lines.shape[-1]
    width = min(width, n // 4)
    if width < 2:
        return
    ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)).astype(np.float32)
    lines[..., :width] *= ramp
    lines[..., n - width:] *= ramp[::-1]


def _filter_lines(lines: np.ndarray, s: _Setup, weights: np.ndarray, *, cutoff: float, falloff: float,
                  fake_sirt_iterations: int) -> None:
    """In place: each view's lines filtered by ``weights[v] · H(ρ_s / cos β_v)`` (ρ_s per stretched sample)."""
    n_cols = lines.shape[-1]
    rho_s = np.fft.rfftfreq(n_cols)
    cb = np.cos(np.radians(s.beta_deg))
    _taper_ends(lines, s.margin)
    for v in range(lines.shape[0]):
        h = weights[v] * radial_filter(rho_s / cb[v], cutoff=cutoff, falloff=falloff,
                                       fake_sirt_iterations=fake_sirt_iterations, line_length=n_cols * cb[v])
        spec = scipy.fft.rfft(lines[v], axis=-1, workers=fft_workers())
        spec *= h.astype(np.complex64)
        lines[v] = scipy.fft.irfft(spec, n=n_cols, axis=-1, workers=fft_workers())


def _return_like(vol: np.ndarray, like: Any) -> Any:
    if is_gpu_array(like):
        return xp_of(like).asarray(vol)
    return vol


# --------------------------------------------------------------------------------------------------------
# Weighted back-projection
# --------------------------------------------------------------------------------------------------------


def backproject(stack: Any, geometry: TiltSeriesGeometry, shape: tuple[int, int, int], *,
                shift_x_px: float = 0.0, shift_z_px: float = 0.0, tilt_offset_deg: float = 0.0,
                axis_offset_px: float = 0.0, radial_cutoff: float = 0.35, radial_falloff: float = 0.035,
                fake_sirt_iterations: int = 0, radial_weighting: bool = True, density_weighting: bool = True,
                subtract_mean: bool = True) -> Any:
    """Weighted back-projection of a tilt series into a tomogram ``(nz, ny, nx)`` float32.

    ``stack`` (n_views, ny_img, nx_img): raw views at the record's binning (see the module docstring for
    every convention); ``geometry``: the series' :class:`~tomoguide.geometry.TiltSeriesGeometry` (transforms,
    true tilts, X-axis tilt, ``z_flip``, ``excluded``); ``shape``: tomogram ``(nz, ny, nx)`` in voxels of the
    record's pixel (IMOD THICKNESS = nz, width = nx). Offsets as IMOD ``tilt`` SHIFT / OFFSET (px, degrees).
    ``radial_cutoff`` / ``radial_falloff`` (cycles/px) and ``fake_sirt_iterations``: the IMOD filter;
    ``radial_weighting=False``: plain (unfiltered) back-projection, each view weighted by its angular
    interval. Excluded views are skipped.
    """
    a = _as_stack(stack, geometry)
    s = _setup(geometry, shape, shift_x_px=shift_x_px, shift_z_px=shift_z_px, tilt_offset_deg=tilt_offset_deg,
               axis_offset_px=axis_offset_px)
    lines, _ = _sample_lines(a, s, subtract_mean)
    w = view_weights(s.beta_deg, density=density_weighting)
    if radial_weighting:
        _filter_lines(lines, s, w, cutoff=radial_cutoff, falloff=radial_falloff,
                      fake_sirt_iterations=fake_sirt_iterations)
        bw = np.ones(s.views.size)
    else:
        bw = w.astype(np.float64)
    out = np.empty(_check_shape(shape), dtype=np.float32)
    kern.backproject_lines_tiled(lines, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, bw, out,
                                 np.empty((1, 1, 1), np.float32), False)
    return _return_like(out, stack)


# --------------------------------------------------------------------------------------------------------
# SIRT
# --------------------------------------------------------------------------------------------------------


#: volumes from this many voxels are solved slice by slice by :func:`sirt` (smaller ones by volume: faster)
SIRT_SLABS_MIN_VOXELS = 16_000_000


def sirt(stack: Any, geometry: TiltSeriesGeometry, shape: tuple[int, int, int], n_iter: int = 30, *,
         shift_x_px: float = 0.0, shift_z_px: float = 0.0, tilt_offset_deg: float = 0.0,
         axis_offset_px: float = 0.0, relaxation: float = 1.0, positivity: bool = False,
         subtract_mean: bool = True, progress: Progress | None = None, by_volume: bool | None = None) -> Any:
    """SIRT reconstruction ``(nz, ny, nx)`` float32: ``x ← x + λ C Aᵀ R (b − A x)`` from ``x = 0``.

    ``A`` is the forward projector matched to the back-projector of :func:`backproject` (its exact adjoint:
    ray sums in px through the tomogram box, linear interpolation, in the cosine-stretched line frame; the
    ray length through a voxel, ``1 / cos β``, is included), ``b`` the views sampled from the raw images
    (mean subtracted), ``R = 1 / (A 1)`` (row sums; rays outside the raw image or shorter than 1 px get 0)
    and ``C = 1 / (Aᵀ R⁰)`` (column sums over the valid rays). ``relaxation`` λ, ``positivity`` clips
    negative values after each iteration (off by default: cryo-ET contrast is relative). Same geometry
    arguments and conventions as :func:`backproject`.

    Without an X-axis tilt every tomogram Y slice is seen by one row of each view only, so the slices are solved
    one by one, all iterations of a slice in cache (:func:`backproject_numba.sirt_slabs`; memory: the output and
    the views), ``progress(fraction, message)`` after each of 16 blocks of slices; with an X-axis tilt (or
    ``by_volume``, the first version) each iteration is one forward and one back projection of the whole volume
    (memory: the output and one more volume), ``progress`` after each iteration. ``by_volume`` None (default):
    by volume below ``SIRT_SLABS_MIN_VOXELS`` voxels, where the whole-volume kernels are faster (300×170×170,
    the demo's tomograms: 1.4-1.5× faster on two threads; from 300×256×256 on the slices are faster, the whole
    volume taking 1.0-1.4× their time there and 1.4× at 300×400×400 and 300×512×512; ``bench/sirt_paths.py``),
    else by slices. The two give the same volume to float rounding.
    """
    if n_iter < 0:
        raise ValueError(f"n_iter must be >= 0, got {n_iter}")
    a = _as_stack(stack, geometry)
    s = _setup(geometry, shape, shift_x_px=shift_x_px, shift_z_px=shift_z_px, tilt_offset_deg=tilt_offset_deg,
               axis_offset_px=axis_offset_px)
    b, valid = _sample_lines(a, s, subtract_mean)
    w = 1.0 / np.cos(np.radians(s.beta_deg))
    vol_shape = _check_shape(shape)
    if by_volume is None:
        by_volume = int(np.prod(vol_shape)) < SIRT_SLABS_MIN_VOXELS
    if not s.x_tilt and not by_volume:
        # every tomogram Y slice is its own 2D problem: all iterations of a block of slices in cache
        x = np.empty(vol_shape, dtype=np.float32)
        ny = vol_shape[1]
        step = max(1, -(-ny // 16))
        for iy0 in range(0, ny, step):
            iy1 = min(ny, iy0 + step)
            kern.sirt_slabs(b, valid, s.ky, s.kz, s.kc, w, x, iy0, iy1, int(n_iter), float(relaxation),
                            bool(positivity))
            if progress is not None:
                progress(iy1 / ny, f"SIRT ({n_iter} iterations): Y slices {iy1}/{ny}")
        return _return_like(x, stack)
    fp = kern.forward_project_lines_by_view if s.x_tilt else kern.forward_project_lines
    args = (s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, w)
    x = np.ones(vol_shape, dtype=np.float32)
    proj = np.zeros_like(b)
    fp(x, *args, proj)  # row sums A 1
    ok = (valid > 0) & (proj >= 1.0)
    rweight = np.zeros_like(b)
    np.divide(1.0, proj, out=rweight, where=ok)
    del proj
    # column sums, then their inverse in place (two volumes at most: x and the scale)
    cscale = np.empty(vol_shape, dtype=np.float32)
    kern.backproject_lines_tiled(ok.astype(np.float32), *args, cscale, np.empty((1, 1, 1), np.float32), False)
    small = cscale <= 1e-6
    np.divide(np.float32(relaxation), cscale, out=cscale, where=~small)
    cscale[small] = 0.0
    del small
    x[...] = 0.0
    proj = np.empty_like(b)
    for it in range(n_iter):
        proj[...] = 0.0
        fp(x, *args, proj)
        np.subtract(b, proj, out=proj)
        proj *= rweight
        kern.backproject_lines_tiled(proj, *args, x, cscale, True)
        if positivity:
            np.maximum(x, 0.0, out=x)
        if progress is not None:
            progress((it + 1) / n_iter, f"SIRT iteration {it + 1}/{n_iter}")
    return _return_like(x, stack)


# --------------------------------------------------------------------------------------------------------
# Pure-numpy reference (slow; small sizes, tests)
# --------------------------------------------------------------------------------------------------------


def backproject_reference(stack: Any, geometry: TiltSeriesGeometry, shape: tuple[int, int, int], *,
                          shift_x_px: float = 0.0, shift_z_px: float = 0.0, tilt_offset_deg: float = 0.0,
                          axis_offset_px: float = 0.0, radial_cutoff: float = 0.35, radial_falloff: float = 0.035,
                          fake_sirt_iterations: int = 0, radial_weighting: bool = True,
                          density_weighting: bool = True, subtract_mean: bool = True) -> np.ndarray:
    """The same reconstruction as :func:`backproject`, written directly (numpy + scipy.ndimage, slow).

    Without the stretched lines: each view is interpolated into an aligned image on a unit grid
    (``raw = C + A⁻¹((x', y') − d)``, the xf of the record), filtered along its rows with
    :func:`radial_filter` at the aligned pixel's frequencies, then every voxel is mapped to the aligned
    image with ``geometry.aligned_projection_matrices()`` (tilt offset added) and sampled bilinearly.
    With ``radial_weighting=False`` and zero offsets, each voxel is instead mapped straight to the raw image
    with ``geometry.projection_matrices(volume_coordinates=True)`` (no aligned image at all). The mean
    subtracted per view is the mean of the whole raw view.
    """
    a = _as_stack(stack, geometry)
    nz, ny, nx = _check_shape(shape)
    idx = geometry.included_views()
    g = geometry.model_validate({**geometry.model_dump(), "tilt_offset_deg": geometry.tilt_offset_deg
                                 + tilt_offset_deg})
    beta = g.true_tilt_deg()[idx]
    w = view_weights(beta, density=density_weighting)
    iz, iy, ix = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    zs = -1.0 if g.z_flip else 1.0
    x = ix - (nx - 1) / 2.0 - shift_x_px - axis_offset_px
    y = iy - (ny - 1) / 2.0
    z = zs * (iz - (nz - 1) / 2.0 - shift_z_px)
    pts = np.stack([x.ravel(), y.ravel(), z.ravel(), np.ones(x.size)], axis=0)
    out = np.zeros(nz * ny * nx)
    if not radial_weighting and shift_x_px == 0 and shift_z_px == 0 and axis_offset_px == 0:
        pm = g.projection_matrices()
        for j, v in enumerate(idx):
            img = a[v].astype(np.float64)
            if subtract_mean:
                img = img - img.mean()
            uvd = pm[v] @ pts
            out += w[j] * scipy.ndimage.map_coordinates(img, [uvd[1], uvd[0]], order=1, mode="constant", cval=0.0)
        return out.reshape(nz, ny, nx).astype(np.float32)
    am = g.aligned_projection_matrices()
    xf = g.xf_array()
    centre = g.image_centre_px()
    for j, v in enumerate(idx):
        ali = am[v] @ pts  # aligned (x', y') from the aligned centre
        xa = ali[0] + axis_offset_px
        ya = ali[1]
        half_w = int(np.ceil(np.abs(xa).max())) + 2
        half_h = int(np.ceil(np.abs(ya).max())) + 2
        width = max(2 * half_w + 1, 8)
        pad = width
        gx = np.arange(-half_w - pad, half_w + pad + 1, dtype=np.float64)
        gy = np.arange(-half_h, half_h + 1, dtype=np.float64)
        ainv = np.linalg.inv(xf[v, :, :2])
        d = xf[v, :, 2]
        X, Y = np.meshgrid(gx, gy)
        raw_u = centre[0] + ainv[0, 0] * (X - d[0]) + ainv[0, 1] * (Y - d[1])
        raw_v = centre[1] + ainv[1, 0] * (X - d[0]) + ainv[1, 1] * (Y - d[1])
        ny_i, nx_i = a.shape[1:]
        inside = (raw_u >= 0) & (raw_u <= nx_i - 1) & (raw_v >= 0) & (raw_v <= ny_i - 1)
        img = scipy.ndimage.map_coordinates(a[v].astype(np.float64), [raw_v, raw_u], order=1, mode="nearest")
        if subtract_mean:
            img = img - a[v].astype(np.float64).mean()
        img[~inside] = 0.0
        if radial_weighting:
            n = img.shape[1]
            h = radial_filter(np.fft.rfftfreq(n), cutoff=radial_cutoff, falloff=radial_falloff,
                              fake_sirt_iterations=fake_sirt_iterations, line_length=n)
            img = np.fft.irfft(np.fft.rfft(img, axis=1) * h, n=n, axis=1) * w[j]
        else:
            img = img * w[j]
        cols = xa - gx[0]
        rows = ya - gy[0]
        out += scipy.ndimage.map_coordinates(img, [rows, cols], order=1, mode="constant", cval=0.0)
    return out.reshape(nz, ny, nx).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------


def simple_geometry(tilt_angles_deg: Any, image_shape_px: tuple[int, int], *, tilt_axis_deg: float = 0.0,
                    shifts_px: Any = None, pixel_size_A: float = 1.0, name: str = "series",
                    excluded: Any = None) -> TiltSeriesGeometry:
    """A geometry record from explicit tilt angles (true, ascending, degrees), tilt-axis angle (degrees
    from image +Y, counter-clockwise) and specimen shifts ``(n, 2)`` px (where the aligned centre lies in each
    raw image, from its centre; see :meth:`TiltSeriesGeometry.with_xf_from_axis_and_shifts`)."""
    t = np.asarray(tilt_angles_deg, dtype=np.float64).reshape(-1)
    g = TiltSeriesGeometry(name=name, pixel_size_A=pixel_size_A, image_shape_px=tuple(image_shape_px),
                           tilt_axis_deg=tilt_axis_deg, tilt_angles_deg=t,
                           excluded=excluded if excluded is not None else [])
    s = np.zeros((t.size, 2)) if shifts_px is None else shifts_px
    return g.with_xf_from_axis_and_shifts(tilt_axis_deg, s)


def save_tomogram(path: str | Path, volume: Any, geometry: TiltSeriesGeometry) -> Path:
    """Write a tomogram ``(nz, ny, nx)`` as an MRC volume with the voxel size of the record's binning
    (``geometry.pixel_size_binned_A``, Å); returns the path."""
    from tomoguide.compute.io.mrc import write_mrc

    p = Path(path)
    write_mrc(p, np.asarray(to_numpy(volume), dtype=np.float32), geometry.pixel_size_binned_A)
    return p
