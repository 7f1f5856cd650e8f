"""Frame alignment of a tilt movie with dose weighting (MotionCor2 / Warp-like), pure compute.

One entry point, :func:`align_movie`, takes the frames of one tilt movie and returns a
:class:`MotionResult`: the aligned, dose-weighted frame sum, the unweighted sum, optional even/odd half
sums, the frame shifts and a quality score. The pieces are public for tests and previews.

Conventions
-----------
* Frames are ``(n_frames, ny, nx)`` arrays (counts or float), ``frames[j, y, x]``; pixel size in Å.
* **Frame shifts** ``shifts_px[j] = (sx, sy)`` (input px, x = columns, y = rows) are *aligning* shifts:
  translating frame ``j`` by them (its content moves by ``+s``: ``aligned_j(p) = frame_j(p - s_j)``)
  aligns it onto the first frame, so ``shifts_px[0] = (0, 0)`` (RELION's convention). If the content of
  frame ``j`` sits at ``p + δ_j`` where frame 0 has it at ``p`` (beam-induced drift ``δ``), then
  ``s_j = -δ_j``: the simulator's truth (``rlnMicrographShiftX/Y``) uses the same convention.
  The sums are on the frame-0 grid.
* Shifts are applied in Fourier space (exact sub-pixel, periodic: content leaving one edge re-enters at
  the opposite edge, as in MotionCor2); local (patch) residuals are applied by cubic-spline
  interpolation in real space on top of the global Fourier shift.
* **Gain**: ``corrected = raw × gain`` (a ``(ny, nx)`` gain already oriented to the movie, e.g. by
  :func:`tomoguide.compute.io.movies.read_gain` with its flip/transpose options).
* **Alignment filter** on the cross-power spectrum: ``exp(B k² / 4)`` with the B-factor ``B`` in Å²
  (negative = low-pass; the tutorial's −500 Å²) times a resolution band ``res_band_A = (low, high)`` in
  Å (the tutorial's 500-10 Å; soft Gaussian high-pass at ``1/low``, hard cut at ``1/high``). The
  spectra are cropped to ``|k| ≤ 1/high`` before any inverse FFT, so the correlation maps are small.
* **Drift model**: each frame is correlated against the sum of all the other (already shifted) frames;
  the per-frame measurements are fitted by the temporal model (``grid[2]`` control points evenly spaced
  in sqrt(frame time) by default, or in frame time as Warp does, interpolated by a not-a-knot cubic
  spline: 1 = one constant shift, 2 = linear, 3 = a quadratic, ``≥ n_frames`` = free per-frame shifts;
  :func:`trajectory_basis`); the fitted shifts seed the next
  iteration, until the update is below ``tol_px``. ``grid[0] × grid[1] > 1`` adds local motion: the
  same estimator on ``grid[1]`` rows × ``grid[0]`` columns of overlapping patches of the globally
  aligned frames, residual patch shifts interpolated bilinearly across the image between patch centres.
* **Dose weighting** (Grant & Grigorieff 2015, :mod:`tomoguide.compute.dose`): frame ``j`` received the
  exposure interval ``[N0 + Σ_{i<j} d_i, N0 + Σ_{i≤j} d_i]`` (``N0`` = the tilt's prior dose,
  ``d_i`` = dose per frame, e⁻/Å²), whose exposure-averaged amplitude is ``A_j(k)``. The weights are
  ``w_j(k) = sqrt(n) · A_j(k) / sqrt(Σ_i A_i(k)²)``: at ``k = 0`` every weight is 1 (the low
  frequencies keep the plain sum's total), and the noise power of the sum is the plain sum's at every
  frequency. (A common factor ``exp(-N0/2Ne)`` cancels, so the tilt's prior dose does not change a
  movie sum; the tilt-level exposure filter is the reconstruction's business.) Even/odd sums use the
  same weights on frames 0, 2, 4, ... and 1, 3, 5, ... (0-based), so ``even + odd = sum``.
* **Physical limits and failures**: the whole-frame trajectory must stay within :data:`MAX_TOTAL_SHIFT_A` of
  the first frame and :data:`MAX_FRAME_SHIFT_A` between consecutive frames, and the frames' correlation peaks
  must stand out of their maps (median significance ≥ :data:`MIN_PEAK_Z`); otherwise the movie is returned
  unshifted with ``failed`` set and the reason (:func:`judge_alignment`): a dark, blank or featureless movie
  would otherwise follow noise peaks by hundreds of pixels.
* **Hot pixels** (stationary defects, bright in most frames) are found in the frame sum without its
  brightest frame (so single-frame X-ray hits are not taken for defects) and replaced by the frame mean in
  every frame, also in the output sums (RELION's motion correction does the same). Single-frame outliers
  (X-ray hits) stay in the sums for the X-ray eraser step: they do not correlate with the other frames,
  so they hardly affect the global alignment (the patch copies for local motion clip them).

The array module (numpy or CuPy) is taken from the frames; shifts and scores are numpy float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.fft
from scipy.interpolate import CubicSpline

from tomoguide.compute import dose as dosemod
from tomoguide.compute.backend import fft as _fft
from tomoguide.compute.backend import ndimage as _ndimage
from tomoguide.compute.backend import to_numpy, xp_of
from tomoguide.compute.rescale import fourier_bin

__all__ = [
    "MotionResult",
    "align_movie",
    "apply_gain",
    "find_hot_pixels",
    "alignment_filter",
    "trajectory_basis",
    "fit_trajectory",
    "frame_dose_weights",
    "shift_frames",
    "estimate_shifts",
    "judge_alignment",
    "MAX_TOTAL_SHIFT_A",
    "MAX_FRAME_SHIFT_A",
    "MIN_PEAK_Z",
]

#: Largest plausible whole-frame shift of any frame from the first, Å. Whole-frame trajectories of real
#: movies (stage drift of about 1-2 Å/s that SerialEM and EPU wait for before exposing, plus beam-induced
#: motion concentrated in the first frames) span a few to a few tens of Å over an exposure: see the drift
#: trajectories in Li et al. 2013 (Nat. Methods 10:584, MotionCorr) and Zheng et al. 2017 (Nat. Methods
#: 14:331, MotionCor2), and the beam-induced motion measured by Brilot et al. 2012 (J. Struct. Biol.
#: 177:630). 200 Å is several times that: a trajectory beyond it is noise followed by the alignment.
MAX_TOTAL_SHIFT_A = 200.0
#: Largest plausible shift between consecutive frames, Å (same sources: the fastest motion, in the first
#: frames, is a few Å to ~20 Å per frame even for frames of a second).
MAX_FRAME_SHIFT_A = 100.0
#: Smallest median significance of the frames' correlation peaks (peak above the map's median in robust
#: standard deviations, :func:`estimate_shifts`) for a movie to count as aligned. Pure noise reaches 3-5 (the
#: largest of the search window's samples). The simulator's movies (3 e⁻/Å² per tilt at 2 Å/px) give: tiny
#: preset (512², 4 frames) 25-29 at their dose, 8-11 at 0.3×, ≤ 4.7 at 0.1× and 0.03× (unalignable: before
#: this test their trajectories wandered by hundreds of px); small preset (1024², 6 frames) 67-79, 26-33, 9-13
#: (still aligned to 0.2 px) and 3.3-4.9 at 0.03× (a dark view).
MIN_PEAK_Z = 6.0


@dataclass
class MotionResult:
    """Result of :func:`align_movie` for one movie.

    Images are ``(ny', nx')`` float32 of the frames' array module (numpy or CuPy), Fourier-binned by
    ``binning`` (``pixel_size_A`` is theirs); everything else is numpy.

    * ``aligned_sum``: aligned, dose-weighted frame sum (the plain aligned sum when no dose is given).
    * ``unweighted_sum``: aligned plain sum of the gain-corrected frames.
    * ``even_sum`` / ``odd_sum``: aligned dose-weighted sums of frames 0, 2, ... / 1, 3, ... (0-based),
      ``None`` unless asked for; ``even_sum + odd_sum = aligned_sum``.
    * ``shifts_px``: ``(n_frames, 2)`` float64 aligning shifts ``(x, y)`` in input px, frame 0 = (0, 0)
      (the fitted trajectory; see the module docstring for the sign).
    * ``raw_shifts_px``: ``(n_frames, 2)`` the last per-frame measurements before the temporal fit (same
      convention, frame-0 value of the fit subtracted), for plots.
    * ``patch_shifts_px``: ``(gy, gx, n_frames, 2)`` total aligning shift (global + local residual) at each
      patch centre, or ``None`` for a 1×1 grid; ``patch_centres_px``: ``(gy, gx, 2)`` (x, y) centres in px.
    * ``cc_peak``: ``(n_frames,)`` normalised cross-correlation of each aligned, filtered frame with the
      sum of the others (≈ a correlation coefficient; small at cryo-ET doses); ``score`` = its mean.
    * ``hot_pixels``: ``(m, 2)`` int64 (y, x) of the replaced stationary defects.
    * ``peak_z``: ``(n_frames,)`` significance of each frame's correlation peak in the last iteration (peak
      above the map's median in robust standard deviations; pure noise gives 3-5).
    * ``failed``: the movie could not be aligned (weak peaks: a dark, blank or featureless movie; or a
      trajectory beyond the physical limits); then ``shifts_px`` are all 0 (the sums are the plain,
      unshifted sums), ``failure_reason`` says why in one line and ``rejected_shifts_px`` holds the
      trajectory the alignment had found (for plots and logs).
    """

    aligned_sum: Any
    unweighted_sum: Any
    even_sum: Any | None
    odd_sum: Any | None
    shifts_px: np.ndarray
    raw_shifts_px: np.ndarray
    cc_peak: np.ndarray
    score: float
    pixel_size_A: float
    binning: float
    n_iterations: int
    hot_pixels: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))
    patch_shifts_px: np.ndarray | None = None
    patch_centres_px: np.ndarray | None = None
    peak_z: np.ndarray = field(default_factory=lambda: np.zeros(0))
    failed: bool = False
    failure_reason: str = ""
    rejected_shifts_px: np.ndarray | None = None

    @property
    def n_frames(self) -> int:
        return int(self.shifts_px.shape[0])

    @property
    def total_drift_px(self) -> float:
        """Path length of the fitted trajectory in input px."""
        d = np.diff(self.shifts_px, axis=0)
        return float(np.sum(np.hypot(d[:, 0], d[:, 1])))


# --------------------------------------------------------------------------------------------------------
# Gain and defects
# --------------------------------------------------------------------------------------------------------


def apply_gain(frames: Any, gain: Any | None) -> Any:
    """Gain-corrected frames ``frames × gain`` as float32 ``(n, ny, nx)`` (a 2D frame is taken as one frame).

    ``gain`` ``(ny, nx)`` must already be oriented to the movie (flip/transpose applied); ``None`` only
    converts. A gain of another shape raises ``ValueError`` giving both shapes (callers that know the
    file use :func:`tomoguide.compute.io.movies.check_gain_shape` first for a message that names it).
    """
    xp = xp_of(frames)
    f = xp.asarray(frames)
    if f.ndim == 2:
        f = f[None]
    if f.ndim != 3:
        raise ValueError(f"frames must be (n_frames, ny, nx), got shape {tuple(f.shape)}")
    out = f.astype(xp.float32, copy=True)
    if gain is None:
        return out
    g = xp.asarray(gain, dtype=xp.float32)
    if tuple(g.shape) != tuple(out.shape[-2:]):
        raise ValueError(f"gain is {tuple(g.shape)} (ny, nx) but the frames are {tuple(out.shape[-2:])}")
    out *= g[None]
    return out


def _robust_stats(a: Any, max_samples: int = 65536) -> tuple[float, float]:
    """Median and robust standard deviation (1.4826 MAD, at least the Poisson sqrt of the median for
    count-like data, and > 0) of an array, from a regular subsample for speed."""
    flat = a.ravel()
    step = max(1, flat.size // max_samples)
    s = to_numpy(flat[::step]).astype(np.float64)
    med = float(np.median(s))
    sigma = float(np.median(np.abs(s - med))) * 1.4826
    if sigma <= 0.0:  # very sparse counts (most pixels equal): fall back to the plain standard deviation
        sigma = max(float(np.std(s)), 1e-12)
    return med, sigma


def find_hot_pixels(frames: Any, n_sigma: float = 10.0) -> Any:
    """Boolean ``(ny, nx)`` mask of stationary defects: pixels bright in (nearly) every frame.

    Test statistic: the frame sum without each pixel's brightest frame (a single-frame X-ray hit does not
    count), flagged when above ``median + n_sigma · σ`` (robust σ from the median absolute deviation).
    Needs at least 2 frames (otherwise nothing is flagged).
    """
    xp = xp_of(frames)
    n = frames.shape[0]
    if n < 2:
        return xp.zeros(frames.shape[-2:], dtype=bool)
    s = frames.sum(axis=0, dtype=xp.float32) - frames.max(axis=0)
    med, sigma = _robust_stats(s)
    return s > med + n_sigma * sigma


# --------------------------------------------------------------------------------------------------------
# Filters, temporal model, dose weights, shifting
# --------------------------------------------------------------------------------------------------------


def _cropped_freqs(shape: tuple[int, int], crop: tuple[int, int], xp: Any) -> tuple[Any, Any, Any, Any]:
    """Row indices (fft order) and cycles/px frequencies of a spectrum cropped to ``crop = (my, mx)``.

    Returns ``(rows, ky, kx, mxr)``: ``rows`` int indices into the full ``ny`` axis, ``ky (my, 1)``,
    ``kx (1, mx//2+1)`` in cycles per *input* px, ``mxr`` = number of kept rfft columns.
    """
    ny, nx = shape
    my, mx = crop
    F = _fft(xp)
    if my >= ny:
        rows = xp.arange(ny)
        ky = xp.asarray(F.fftfreq(ny))
    else:
        rows = xp.concatenate([xp.arange((my + 1) // 2), xp.arange(ny - my // 2, ny)])
        ky = xp.asarray(F.fftfreq(my)) * (my / ny)
    mxr = min(mx, nx) // 2 + 1
    kx = xp.asarray(F.rfftfreq(mx if mx < nx else nx)) * ((mx if mx < nx else nx) / nx)
    return rows, ky[:, None], kx[None, :mxr], mxr


def alignment_filter(
    ky: Any, kx: Any, pixel_size_A: float, bfactor_A2: float, res_band_A: tuple[float, float]
) -> Any:
    """Real filter ``h(k)`` for the alignment spectra (``ky``, ``kx`` in cycles/px, broadcastable), float32.

    ``h = exp(B k² / 8) · (1 − exp(−k² / (2 k_low²))) · [k ≤ k_high]`` with ``k`` in Å⁻¹,
    ``k_low = 1 / res_band_A[0]``, ``k_high = 1 / res_band_A[1]``; ``h(0) = 0``. Each spectrum is multiplied
    by ``h``, so their cross-power spectrum carries ``h²``: the B-factor weight ``exp(B k² / 4)``.
    """
    xp = xp_of(ky)
    lo_A, hi_A = float(res_band_A[0]), float(res_band_A[1])
    if not (lo_A > hi_A > 0):
        raise ValueError(f"res_band_A={res_band_A}: expected (low, high) resolution in Å with low > high > 0")
    k2 = (ky * ky + kx * kx) / (pixel_size_A * pixel_size_A)  # Å⁻²
    klo2 = 1.0 / (lo_A * lo_A)
    khi2 = 1.0 / (hi_A * hi_A)
    h = xp.exp(bfactor_A2 * k2 / 8.0) * (1.0 - xp.exp(-k2 / (2.0 * klo2)))  # B/8: h² carries exp(B k²/4)
    return xp.where(k2 <= khi2, h, 0.0).astype(xp.float32)


TemporalSpacing = Literal["uniform", "early"]


def trajectory_basis(n_frames: int, n_control: int, spacing: TemporalSpacing = "uniform") -> np.ndarray:
    """``(n_frames, K)`` matrix ``B`` of the temporal motion model: ``shifts = B @ control_values``.

    ``K = n_control`` control points evenly spaced over frame time ``t = j / (n − 1)`` (``spacing =
    "uniform"``, Warp's choice) or over ``sqrt(t)`` (``"early"``: denser in the first frames, where
    beam-induced motion is fastest), interpolated by a not-a-knot cubic spline (K = 1: constant, 2: linear,
    3: quadratic, more: cubic spline); ``n_control ≥ n_frames`` gives the identity (free per-frame shifts).
    """
    if n_frames < 1 or n_control < 1:
        raise ValueError("n_frames and n_control must be >= 1")
    if spacing not in ("uniform", "early"):
        raise ValueError(f"temporal spacing {spacing!r}: expected 'uniform' or 'early'")
    if n_control >= n_frames:
        return np.eye(n_frames)
    if n_control == 1:
        return np.ones((n_frames, 1))
    t = np.arange(n_frames) / max(n_frames - 1, 1)
    if spacing == "early":
        t = np.sqrt(t)
    knots = np.linspace(0.0, 1.0, n_control)
    if n_control == 2:
        return np.stack([1.0 - t, t], axis=1)
    return np.stack([CubicSpline(knots, e, bc_type="not-a-knot")(t) for e in np.eye(n_control)], axis=1)


def fit_trajectory(
    shifts_px: np.ndarray, n_control: int, weights: np.ndarray | None = None,
    spacing: TemporalSpacing = "uniform",
) -> np.ndarray:
    """Least-squares fit of per-frame shifts ``(n, 2)`` by the temporal model; returns the fitted ``(n, 2)``."""
    s = np.asarray(shifts_px, dtype=np.float64)
    b = trajectory_basis(s.shape[0], n_control, spacing)
    if b.shape[1] == s.shape[0]:
        return s.copy()
    w = np.ones(s.shape[0]) if weights is None else np.sqrt(np.clip(np.asarray(weights, float), 1e-6, None))
    coef, *_ = np.linalg.lstsq(b * w[:, None], s * w[:, None], rcond=None)
    return b @ coef


def frame_dose_weights(
    shape: tuple[int, int],
    pixel_size_A: float,
    dose_per_frame_e_A2: Any,
    n_frames: int,
    *,
    prior_dose_e_A2: float = 0.0,
    voltage_kV: float = 300.0,
    xp: Any = np,
) -> Any:
    """Dose weights ``(n_frames, ny, nx//2+1)`` float32 on the rfft grid of ``shape`` (see module docstring).

    ``dose_per_frame_e_A2``: a scalar (every frame) or ``(n_frames,)`` e⁻/Å². Frame ``j``'s prior dose is
    ``prior_dose_e_A2 + Σ_{i<j} d_i``; ``w_j = sqrt(n) A_j / sqrt(Σ_i A_i²)`` so ``w_j(0) = 1``.
    """
    d = np.asarray(dose_per_frame_e_A2, dtype=np.float64).ravel()
    if d.size not in (1, n_frames):
        raise ValueError(f"dose_per_frame_e_A2 has {d.size} values for {n_frames} frames")
    d = np.broadcast_to(d, (n_frames,)).copy()
    if np.any(d < 0) or prior_dose_e_A2 < 0:
        raise ValueError("doses must be non-negative")
    priors = prior_dose_e_A2 + np.concatenate([[0.0], np.cumsum(d)[:-1]])
    ny, nx = int(shape[0]), int(shape[1])
    # The weights depend on |k| only: evaluate the exact formula on a fine radial table (spacing 1/8 of a
    # Fourier pixel, float64) and interpolate linearly (relative error < 1e-6), instead of n full grids.
    k_nyq = math.hypot(0.5, 0.5) / pixel_size_A
    dk = 1.0 / (8.0 * max(ny, nx) * pixel_size_A)
    kt = np.arange(int(math.ceil(k_nyq / dk)) + 2) * dk
    a = np.stack([np.asarray(dosemod.attenuation(kt, float(p), float(dj), voltage_kV)) for p, dj in zip(priors, d)])
    norm = np.sqrt(np.sum(a * a, axis=0))
    safe = norm > 0
    table = np.where(safe[None], a * math.sqrt(n_frames) / np.where(safe, norm, 1.0)[None], 1.0)
    ky = np.fft.fftfreq(ny)[:, None] / pixel_size_A
    kx = np.fft.rfftfreq(nx)[None, :] / pixel_size_A
    pos = np.sqrt(ky * ky + kx * kx) / dk
    i0 = np.floor(pos).astype(np.int64)
    frac = xp.asarray((pos - i0).astype(np.float32))
    i0 = xp.asarray(i0)
    t = xp.asarray(table.astype(np.float32))
    return t[:, i0] * (1.0 - frac)[None] + t[:, i0 + 1] * frac[None]


def _phase_ramps(shifts_px: np.ndarray, ky: Any, kx: Any, xp: Any) -> Any:
    """``exp(−2πi (kx sx + ky sy))`` for every frame: ``(n, len(ky), len(kx))`` complex64 (separable)."""
    s = xp.asarray(np.asarray(shifts_px, dtype=np.float64))
    ey = xp.exp(-2j * math.pi * ky[None, :, :] * s[:, 1][:, None, None])  # (n, my, 1)
    ex = xp.exp(-2j * math.pi * kx[None, :, :] * s[:, 0][:, None, None])  # (n, 1, mx)
    return (ey.astype(xp.complex64) * ex.astype(xp.complex64))


def shift_frames(frames: Any, shifts_px: np.ndarray) -> Any:
    """Translate each frame ``(n, ny, nx)`` by ``shifts_px[j] = (sx, sy)`` px in Fourier space (periodic):
    ``out_j(p) = frames_j(p − s_j)``; float32."""
    xp = xp_of(frames)
    F = _fft(xp)
    n, ny, nx = frames.shape
    spec = F.rfft2(xp.asarray(frames, dtype=xp.float32))
    ky = xp.asarray(F.fftfreq(ny))[:, None]
    kx = xp.asarray(F.rfftfreq(nx))[None, :]
    spec *= _phase_ramps(np.asarray(shifts_px), ky, kx, xp)
    return F.irfft2(spec, s=(ny, nx)).astype(xp.float32)


# --------------------------------------------------------------------------------------------------------
# Shift estimation on band-limited spectra
# --------------------------------------------------------------------------------------------------------


def _taper(shape: tuple[int, int], frac: float, xp: Any) -> Any:
    """Separable cosine edge taper ``(ny, nx)`` float32 (``frac`` of each side rolled off)."""
    out = []
    for n in shape:
        w = np.ones(n)
        m = max(1, int(round(frac * n)))
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
        w[:m] = r
        w[n - m:] = r[::-1]
        out.append(w)
    return xp.asarray((out[0][:, None] * out[1][None, :]).astype(np.float32))


def _crop_size(n: int, kmax_cyc: float) -> int:
    m = int(math.ceil(2.0 * kmax_cyc * n)) + 2
    m = scipy.fft.next_fast_len(m + (m % 2), real=True)
    m += m % 2
    return min(m, n)


def _band_spectra(
    images: Any, pixel_size_A: float, bfactor_A2: float, res_band_A: tuple[float, float]
) -> tuple[Any, Any, Any, tuple[int, int], tuple[float, float]]:
    """Filtered, cropped rfft spectra of ``images (n, ny, nx)`` for alignment (see :func:`_band_from_spectrum`)."""
    xp = xp_of(images)
    n, ny, nx = images.shape
    return _band_from_spectrum(_fft(xp).rfft2(images), (ny, nx), pixel_size_A, bfactor_A2, res_band_A)


def _band_from_spectrum(
    spec: Any, shape: tuple[int, int], pixel_size_A: float, bfactor_A2: float, res_band_A: tuple[float, float]
) -> tuple[Any, Any, Any, tuple[int, int], tuple[float, float]]:
    """Crop full rfft spectra ``(n, ny, nx//2+1)`` to ``|k| ≤ 1/res_band_A[1]`` and apply the alignment filter.

    Returns ``(G, ky, kx, crop, scale)``: ``G (n, my, mx//2+1)`` complex64, frequencies in cycles per input
    px, the crop size ``(my, mx)`` and the input px per correlation-map px along (y, x).
    """
    xp = xp_of(spec)
    ny, nx = shape
    kmax = min(0.5, pixel_size_A / float(res_band_A[1]))
    my, mx = _crop_size(ny, kmax), _crop_size(nx, kmax)
    rows, ky, kx, mxr = _cropped_freqs((ny, nx), (my, mx), xp)
    g = spec[:, rows, :mxr] if my < ny else spec[:, :, :mxr]
    h = alignment_filter(ky, kx, pixel_size_A, bfactor_A2, res_band_A)
    g = (g * h[None]).astype(xp.complex64)
    return g, ky, kx, (my, mx), (ny / my, nx / mx)


def _hermitian_weights(mx: int, mxr: int, xp: Any) -> Any:
    """Multiplicity of rfft columns in the full spectrum (1 for DC and Nyquist, 2 otherwise)."""
    w = np.full(mxr, 2.0)
    w[0] = 1.0
    if mx % 2 == 0:
        w[-1] = 1.0
    return xp.asarray(w.astype(np.float32))


def _peak_subpixel(cc: Any, radius: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Peak positions ``(n, 2)`` (dy, dx) in map px (signed, wrapped) with parabolic refinement, and the
    peak heights ``(n,)``, searched within ``radius`` map px of zero along (y, x)."""
    xp = xp_of(cc)
    n, my, mx = cc.shape
    iy = np.fft.fftfreq(my, 1.0 / my)
    ix = np.fft.fftfreq(mx, 1.0 / mx)
    mask = (np.abs(iy)[:, None] <= radius[0]) & (np.abs(ix)[None, :] <= radius[1])
    masked = xp.where(xp.asarray(mask)[None], cc, -xp.inf)
    flat = to_numpy(xp.argmax(masked.reshape(n, -1), axis=1))
    py, px = np.divmod(flat, mx)
    ccn = to_numpy(cc)
    fr = np.arange(n)
    c0 = ccn[fr, py, px]
    out = np.zeros((n, 2))
    for axis, (p, m) in enumerate(((py, my), (px, mx))):
        if axis == 0:
            cm, cp = ccn[fr, (py - 1) % my, px], ccn[fr, (py + 1) % my, px]
        else:
            cm, cp = ccn[fr, py, (px - 1) % mx], ccn[fr, py, (px + 1) % mx]
        den = cm - 2.0 * c0 + cp
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den < 0, 0.5 * (cm - cp) / den, 0.0)
        d = np.clip(d, -0.5, 0.5)
        signed = np.where(p > m // 2, p - m, p).astype(np.float64)
        out[:, axis] = signed + d
    return out, c0


def estimate_shifts(
    spectra: Any,
    ky: Any,
    kx: Any,
    crop: tuple[int, int],
    scale: tuple[float, float],
    *,
    n_control: int,
    max_shift_px: float,
    max_iter: int = 10,
    tol_px: float = 0.01,
    initial_px: np.ndarray | None = None,
    spacing: TemporalSpacing = "uniform",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, np.ndarray]:
    """Iterative frame alignment on filtered, cropped spectra ``(n, my, mx//2+1)``.

    Each iteration shifts every spectrum by the current model shifts, correlates each frame with the sum
    of the others (cross-power spectrum → small real correlation map), refines the peak (parabola), fits
    the temporal model to ``current + measured residual`` and stops when the model moves less than
    ``tol_px``. Returns ``(model_shifts, raw_shifts, cc_peak, n_iter, peak_z)``: aligning shifts ``(n, 2)``
    (x, y) in input px (mean-free gauge: not yet referred to frame 0), the last per-frame measurements, the
    normalised peak heights ``(n,)``, and each peak's significance ``(n,)`` in the last iteration: its
    height above the median of its whole correlation map in robust standard deviations of that map
    (1.4826 × MAD). Pure noise gives the largest of many Gaussian samples, about 4-5; a frame that sees the
    specimen in the others gives tens.
    """
    xp = xp_of(spectra)
    F = _fft(xp)
    n = spectra.shape[0]
    my, mx = crop
    mxr = spectra.shape[-1]
    hw = _hermitian_weights(mx, mxr, xp)
    energy = to_numpy(xp.sum(xp.abs(spectra) ** 2 * hw, axis=(1, 2))).astype(np.float64)
    shifts = np.zeros((n, 2)) if initial_px is None else np.asarray(initial_px, dtype=np.float64).copy()
    # search radius in map px: max_shift_px, at least 2 map px, at most a quarter of the map
    radius = (min(max(2.0, max_shift_px / scale[0]), my / 4.0), min(max(2.0, max_shift_px / scale[1]), mx / 4.0))
    raw = shifts.copy()
    peaks = np.zeros(n)
    peak_z = np.zeros(n)
    it = 0
    if n < 2:
        return shifts, raw, np.ones(n), 0, np.full(n, np.inf)
    for it in range(1, max_iter + 1):
        g = spectra * _phase_ramps(shifts, ky, kx, xp)
        total = g.sum(axis=0)
        ref = total[None] - g
        cross = ref * xp.conj(g)
        cc = F.irfft2(cross, s=(my, mx))
        d_map, peak = _peak_subpixel(cc, radius)
        ref_energy = to_numpy(xp.sum(xp.abs(ref) ** 2 * hw, axis=(1, 2))).astype(np.float64)
        # irfft2 divides by my*mx; the correlation coefficient at the peak is Σ conj(G) R / sqrt(E_g E_r)
        peaks = peak * (my * mx) / np.sqrt(np.maximum(energy * ref_energy, 1e-300))
        peak_z = _peak_significance(cc, peak)
        residual = np.stack([d_map[:, 1] * scale[1], d_map[:, 0] * scale[0]], axis=1)
        raw = shifts + residual
        new = fit_trajectory(raw, n_control, spacing=spacing)
        new -= new.mean(axis=0)  # gauge: the alignment fixes shifts only up to a common translation
        step = float(np.max(np.abs(new - shifts)))
        shifts = new
        if step < tol_px:
            break
    return shifts, raw, peaks, it, peak_z


def _peak_significance(cc: Any, peak: np.ndarray) -> np.ndarray:
    """``(peak − median) / (1.4826 · MAD)`` of each correlation map ``(n, my, mx)`` (statistics from every
    second pixel in each direction); 0 for a flat map."""
    sub = to_numpy(cc[:, ::2, ::2]).reshape(cc.shape[0], -1).astype(np.float64)
    med = np.median(sub, axis=1)
    mad = np.median(np.abs(sub - med[:, None]), axis=1) * 1.4826
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(mad > 0, (np.asarray(peak, dtype=np.float64) - med) / mad, 0.0)
    return z


# --------------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------------


def _alignment_copy(frames: Any, hot: Any, n_sigma: float, taper_frac: float) -> Any:
    """Mean-free, outlier-suppressed, edge-tapered float32 copy of (patches of) frames for correlation."""
    xp = xp_of(frames)
    a = xp.array(frames, dtype=xp.float32, copy=True)
    med, sigma = _robust_stats(a)
    outl = a > med + n_sigma * sigma
    if hot is not None:
        outl |= hot[None]
    means = a.mean(axis=(1, 2), dtype=xp.float64)
    for j in range(a.shape[0]):
        a[j][outl[j]] = means[j]
    a -= a.mean(axis=(1, 2), dtype=xp.float64)[:, None, None].astype(xp.float32)
    a *= _taper(a.shape[-2:], taper_frac, xp)[None]
    return a


def _patch_layout(n: int, g: int, overlap: float) -> tuple[np.ndarray, int]:
    """Start indices of ``g`` patches along an axis of ``n`` px and their common size (even)."""
    size = int(min(n, math.ceil(n / g * (1.0 + overlap))))
    size -= size % 2
    starts = np.round(np.linspace(0, n - size, g)).astype(int) if g > 1 else np.array([(n - size) // 2])
    return starts, size


def align_movie(
    frames: Any,
    *,
    pixel_size_A: float,
    gain: Any | None = None,
    bfactor_A2: float = -500.0,
    res_band_A: tuple[float, float] = (500.0, 10.0),
    grid: tuple[int, int, int] = (1, 1, 3),
    temporal_spacing: TemporalSpacing = "early",
    prior_dose_e_A2: float = 0.0,
    dose_per_frame_e_A2: Any | None = None,
    voltage_kV: float = 300.0,
    even_odd: bool = False,
    binning: float = 1.0,
    max_total_shift_A: float = MAX_TOTAL_SHIFT_A,
    max_frame_shift_A: float = MAX_FRAME_SHIFT_A,
    min_peak_z: float = MIN_PEAK_Z,
    max_iter: int = 10,
    tol_px: float = 0.01,
    hot_pixel_sigma: float = 10.0,
    outlier_sigma: float = 8.0,
    patch_overlap: float = 0.5,
    defects: Any | None = None,
) -> MotionResult:
    """Align the frames of one tilt movie and sum them with dose weighting.

    Parameters (units in the names; conventions in the module docstring):

    * ``frames``: ``(n_frames, ny, nx)`` counts or float (numpy or CuPy).
    * ``gain``: ``(ny, nx)`` multiplicative gain oriented to the movie, or ``None``.
    * ``bfactor_A2``, ``res_band_A``: alignment filter (tutorial −500 Å², 500-10 Å).
    * ``grid``: motion model ``(X, Y, temporal)``: ``(1, 1, 3)`` = one smooth global trajectory with 3
      temporal control points; ``X × Y > 1`` adds local (patch) motion on an X-column × Y-row grid.
    * ``temporal_spacing``: control points evenly spaced in sqrt(time) (``"early"``, the default: denser in
      the first frames, where beam-induced motion is fastest) or in time (``"uniform"``, as Warp does); see
      :func:`trajectory_basis`. On the simulator's small preset (6 frames, fast early drift) 3 control
      points leave a model error of 0.14 px RMS with ``"early"`` and 0.23 px with ``"uniform"``.
    * ``prior_dose_e_A2``: the tilt's exposure before this movie; ``dose_per_frame_e_A2``: scalar or
      ``(n_frames,)`` e⁻/Å², ``None`` = no dose weighting (``aligned_sum`` is the plain aligned sum).
    * ``even_odd``: also return the even/odd half sums. ``binning``: Fourier binning (≥ 1) of the sums.
    * ``max_total_shift_A``, ``max_frame_shift_A``: physical limits of the whole-frame trajectory: no frame
      further than ``max_total_shift_A`` from the first (also the search radius of each correlation) and no
      two consecutive frames further apart than ``max_frame_shift_A`` (defaults :data:`MAX_TOTAL_SHIFT_A`,
      :data:`MAX_FRAME_SHIFT_A`, with their sources). ``min_peak_z``: smallest median significance of the
      frames' correlation peaks (:data:`MIN_PEAK_Z`). A movie that fails either test
      (:func:`judge_alignment`) keeps no shifts and is returned with ``failed`` set, and its local motion is
      not estimated. Patches of the local motion whose peaks are weak keep the global trajectory.
    * ``hot_pixel_sigma``: threshold of :func:`find_hot_pixels` (``0`` = no defect replacement);
      ``outlier_sigma``: single-pixel outliers above it (robust σ) are suppressed in the patch copies used
      for local motion (never in the sums). ``patch_overlap``: patches are ``(1 + overlap)`` times the
      image side / grid count.
    * ``defects``: ``(ny, nx)`` bool, pixels known to be defective (e.g. where the gain reference is zero or
      not finite); replaced by the frame mean in every frame, like the hot pixels found in the data (and
      listed with them in ``hot_pixels``).

    Returns a :class:`MotionResult`.
    """
    xp = xp_of(frames)
    F = _fft(xp)
    if pixel_size_A <= 0:
        raise ValueError(f"pixel_size_A must be positive, got {pixel_size_A}")
    if binning < 1:
        raise ValueError(f"binning must be >= 1, got {binning}")
    gx, gy, gt = (int(v) for v in grid)
    if min(gx, gy, gt) < 1:
        raise ValueError(f"grid={grid}: every entry must be >= 1")
    f = apply_gain(frames, gain)
    n, ny, nx = f.shape

    # stationary defects: replaced in every frame (also in the output)
    hot = find_hot_pixels(f, hot_pixel_sigma) if hot_pixel_sigma > 0 else xp.zeros((ny, nx), dtype=bool)
    if defects is not None:
        d = xp.asarray(defects, dtype=bool)
        if tuple(d.shape) != (ny, nx):
            raise ValueError(f"defects is {tuple(d.shape)} (ny, nx) but the frames are {(ny, nx)}")
        hot = hot | d
    hot_idx = np.argwhere(to_numpy(hot)).astype(np.int64)
    if hot_idx.shape[0]:
        means = f.mean(axis=(1, 2), dtype=xp.float64).astype(xp.float32)
        f[:, hot] = means[:, None]

    # ---- global alignment on the band-limited spectra (the filter removes the mean; single-frame
    # outliers such as X-ray hits do not correlate with the other frames) -------------------------------
    spec = F.rfft2(f)
    g, ky, kx, crop, scale = _band_from_spectrum(spec, (ny, nx), pixel_size_A, bfactor_A2, res_band_A)
    if max_total_shift_A <= 0 or max_frame_shift_A <= 0:
        raise ValueError(f"max_total_shift_A={max_total_shift_A}, max_frame_shift_A={max_frame_shift_A}: "
                         "the shift limits must be positive (Å)")
    model, raw, peaks, n_iter, peak_z = estimate_shifts(
        g, ky, kx, crop, scale, n_control=gt, max_shift_px=max_total_shift_A / pixel_size_A, max_iter=max_iter,
        tol_px=tol_px, spacing=temporal_spacing)
    del g
    ref0 = model[0].copy()
    shifts = model - ref0
    raw_rel = raw - ref0
    failed, reason = judge_alignment(shifts, peak_z, pixel_size_A=pixel_size_A, max_total_shift_A=max_total_shift_A,
                                     max_frame_shift_A=max_frame_shift_A, min_peak_z=min_peak_z)
    rejected = None
    if failed:
        rejected, shifts = shifts, np.zeros_like(shifts)

    kyf = xp.asarray(F.fftfreq(ny))[:, None]
    kxf = xp.asarray(F.rfftfreq(nx))[None, :]

    spec *= _phase_ramps(shifts, kyf, kxf, xp)
    patch_shifts = None
    centres = None
    if gx * gy > 1 and n > 1 and not failed:
        aligned = F.irfft2(spec, s=(ny, nx)).astype(xp.float32)
        local, centres = _local_residuals(aligned, hot, pixel_size_A, bfactor_A2, res_band_A, (gx, gy, gt),
                                          max_iter, tol_px, outlier_sigma, patch_overlap, temporal_spacing,
                                          min_peak_z)
        patch_shifts = local + shifts[None, None]
        aligned = _apply_local(aligned, local, centres)
        spec = F.rfft2(aligned)
        del aligned

    # ---- sums ----------------------------------------------------------------------------------------
    if dose_per_frame_e_A2 is not None:
        w = frame_dose_weights((ny, nx), pixel_size_A, dose_per_frame_e_A2, n, prior_dose_e_A2=prior_dose_e_A2,
                               voltage_kV=voltage_kV, xp=xp)
    else:
        w = None

    def _sum(sel: slice, weighted: bool) -> Any:
        acc = xp.zeros(spec.shape[1:], dtype=xp.complex64)
        for j in range(n)[sel]:  # frame by frame: no (n, ny, nx) temporaries
            acc += spec[j] * w[j] if (weighted and w is not None) else spec[j]
        img = F.irfft2(acc, s=(ny, nx)).astype(xp.float32)
        return fourier_bin(img, binning) if binning > 1 else img

    unweighted = _sum(slice(None), False)
    aligned_sum = _sum(slice(None), True) if w is not None else unweighted.copy()
    even = odd = None
    if even_odd:
        even = _sum(slice(0, None, 2), True)
        odd = _sum(slice(1, None, 2), True) if n > 1 else xp.zeros_like(even)
    out_px = pixel_size_A * (nx / unweighted.shape[-1])
    return MotionResult(
        aligned_sum=aligned_sum, unweighted_sum=unweighted, even_sum=even, odd_sum=odd,
        shifts_px=shifts, raw_shifts_px=raw_rel, cc_peak=peaks, score=float(np.mean(peaks)),
        pixel_size_A=float(out_px), binning=float(binning), n_iterations=int(n_iter), hot_pixels=hot_idx,
        patch_shifts_px=patch_shifts, patch_centres_px=centres, peak_z=np.asarray(peak_z, dtype=np.float64),
        failed=failed, failure_reason=reason, rejected_shifts_px=rejected,
    )


def judge_alignment(
    shifts_px: np.ndarray,
    peak_z: np.ndarray,
    *,
    pixel_size_A: float,
    max_total_shift_A: float = MAX_TOTAL_SHIFT_A,
    max_frame_shift_A: float = MAX_FRAME_SHIFT_A,
    min_peak_z: float = MIN_PEAK_Z,
) -> tuple[bool, str]:
    """Whether a movie's alignment failed, and why (one line; ``""`` when it did not).

    ``shifts_px`` ``(n, 2)`` the fitted trajectory (frame 0 = 0), ``peak_z`` ``(n,)`` the significance of the
    frames' correlation peaks (:func:`estimate_shifts`). Failed when the median peak significance is below
    ``min_peak_z`` (the frames do not see each other: a dark, blank or featureless movie), or when a frame
    lies further than ``max_total_shift_A`` from the first or two consecutive frames further apart than
    ``max_frame_shift_A`` (not a physical drift). A single frame never fails.
    """
    s = np.asarray(shifts_px, dtype=np.float64)
    z = np.asarray(peak_z, dtype=np.float64)
    if s.shape[0] < 2:
        return False, ""
    zmed = float(np.median(z))
    if not zmed >= min_peak_z:
        return True, (f"weak correlation peaks (median significance {zmed:.1f}, at least {min_peak_z:g} needed): "
                      "a dark, blank or featureless movie; no shifts applied")
    total = float(np.max(np.hypot(*(s - s[0]).T))) * pixel_size_A
    if total > max_total_shift_A:
        return True, (f"trajectory reaches {total:.0f} Å from the first frame, beyond the {max_total_shift_A:g} Å "
                      "a real movie drifts; no shifts applied")
    step = float(np.max(np.hypot(*np.diff(s, axis=0).T))) * pixel_size_A
    if step > max_frame_shift_A:
        return True, (f"{step:.0f} Å between consecutive frames, beyond the {max_frame_shift_A:g} Å a real movie "
                      "moves; no shifts applied")
    return False, ""


# --------------------------------------------------------------------------------------------------------
# Local motion
# --------------------------------------------------------------------------------------------------------


def _local_residuals(
    aligned: Any, hot: Any, pixel_size_A: float, bfactor_A2: float, res_band_A: tuple[float, float],
    grid: tuple[int, int, int], max_iter: int, tol_px: float, outlier_sigma: float, overlap: float,
    spacing: TemporalSpacing = "uniform", min_peak_z: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Residual aligning shifts ``(gy, gx, n, 2)`` (x, y) of patches of globally aligned frames, each
    referred to its own mean over frames (the global alignment fixes the common part), and the patch
    centres ``(gy, gx, 2)`` (x, y) in px. A patch whose median peak significance is below ``min_peak_z``
    (an empty or dark region) keeps no residual."""
    gx, gy, gt = grid
    n, ny, nx = aligned.shape
    ys, sy = _patch_layout(ny, gy, overlap)
    xs, sx = _patch_layout(nx, gx, overlap)
    local = np.zeros((gy, gx, n, 2))
    centres = np.zeros((gy, gx, 2))
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            patch = aligned[:, y0:y0 + sy, x0:x0 + sx]
            hp = hot[y0:y0 + sy, x0:x0 + sx] if hot is not None else None
            a = _alignment_copy(patch, hp, outlier_sigma, 0.15)
            g, ky, kx, crop, scale = _band_spectra(a, pixel_size_A, bfactor_A2, res_band_A)
            m, _, _, _, pz = estimate_shifts(g, ky, kx, crop, scale, n_control=gt,
                                             max_shift_px=max(3.0, 0.05 * min(sy, sx)), max_iter=max_iter,
                                             tol_px=tol_px, spacing=spacing)
            local[i, j] = m - m.mean(axis=0) if float(np.median(pz)) >= min_peak_z else 0.0
            centres[i, j] = (x0 + (sx - 1) / 2.0, y0 + (sy - 1) / 2.0)
    # the global alignment already removed the common translation of each frame: keep only the spatially
    # varying part, referred to frame 0 (frame 0 stays where it is, as in the global convention)
    local -= local.mean(axis=(0, 1), keepdims=True)
    local -= local[:, :, :1]
    return local, centres


def _linear_weights(n: int, centres: np.ndarray) -> np.ndarray:
    """``(n, g)`` linear-interpolation weights of pixel positions ``0..n-1`` between sorted patch ``centres``
    (constant beyond the outer ones); rows sum to 1."""
    g = centres.shape[0]
    if g == 1:
        return np.ones((n, 1))
    f = np.interp(np.arange(n, dtype=np.float64), centres, np.arange(g, dtype=np.float64))
    i0 = np.minimum(np.floor(f).astype(int), g - 2)
    t = f - i0
    w = np.zeros((n, g))
    w[np.arange(n), i0] = 1.0 - t
    w[np.arange(n), i0 + 1] += t
    return w


def _apply_local(aligned: Any, local: np.ndarray, centres: np.ndarray) -> Any:
    """Resample each globally aligned frame by its residual shift field (bilinear between patch centres,
    constant beyond the outer centres): ``out_j(p) = aligned_j(p − s_j(p))``, cubic spline, periodic."""
    xp = xp_of(aligned)
    ndi = _ndimage(xp)
    n, ny, nx = aligned.shape
    wy = _linear_weights(ny, centres[:, 0, 1])  # (ny, gy)
    wx = _linear_weights(nx, centres[0, :, 0])  # (nx, gx)
    py = np.arange(ny, dtype=np.float64)[:, None]
    px = np.arange(nx, dtype=np.float64)[None, :]
    out = xp.empty_like(aligned)
    for j in range(n):
        sxf = wy @ local[:, :, j, 0] @ wx.T  # (ny, nx) shift field, x component
        syf = wy @ local[:, :, j, 1] @ wx.T
        coords = xp.asarray(np.stack([py - syf, px - sxf]))
        out[j] = ndi.map_coordinates(aligned[j], coords, order=3, mode="grid-wrap").astype(xp.float32)
    return out
