"""CTF estimation from images: averaged power spectra (tilt-aware), background subtraction, defocus and
astigmatism fit, fit resolution, failure flags, a defocus grid across the image and a ring overlay.

Shared by the per-tilt CTF of the frame-alignment step (Warp-like) and the CTFFIND-like step on tilt series.
The CTF model and its conventions are those of :mod:`tomoguide.compute.ctf` (RELION / CTFFIND4):

* defocus in Å, **positive = underfocus**; ``defocus_u_A >= defocus_v_A``;
* ``astig_angle_deg``: angle of the U axis (largest defocus) from image X (array columns) towards image Y
  (array rows), in (-90°, 90°];
* ``CTF = -sin(χ + α)`` with ``χ = π λ Δf(θ) k² − ½ π Cs λ³ k⁴ + φ`` and ``α = atan(A / √(1 − A²))``, so
  ``CTF² = ½ [1 − cos(2χ + 2α)]``.

Spectra are stored in the **un-shifted rfft layout** of a ``box × box`` window: ``power[iy, ix]`` belongs to
``k_y = fftfreq(box)[iy] / pixel``, ``k_x = rfftfreq(box)[ix] / pixel`` (shape ``(box, box // 2 + 1)``),
the layout of :func:`tomoguide.compute.ctf.ctf_2d` with ``rfft=True``.

Tilted images (defocus gradient)
--------------------------------
For a view with true tilt ``β`` and tilt-axis angle ``θ`` (SerialEM convention of
:mod:`tomoguide.geometry`: from image +Y, counter-clockwise), a point of the specimen mid-plane seen at raw
pixel ``(x, y)`` lies at the distance (px)

    ``x_perp = (x − c_x) cos θ + (y − c_y) sin θ``,  ``(c_x, c_y) = ((nx − 1)/2, (ny − 1)/2)``

from the tilt axis (the aligned-image X coordinate of :class:`tomoguide.geometry.TiltSeriesGeometry`, whose
transform is ``A = R(−θ)``). Its depth (third row of ``projection_matrices``) is ``−x_perp tan β`` px, so
its defocus is

    ``Δf(x, y) = Δf_centre − h · tan β · x_perp · pixel_size_A``   (``h`` = ``defocus_handedness``),

the simulator's truth convention (``defocus + defocus_handedness · depth``). :func:`defocus_offsets_A`
gives this offset for window centres. In ``tilt_mode="rescale"`` (Warp / CTFFIND5 style) the spectrum of
each window, whose Thon rings belong to ``Δf + δ``, is resampled radially so that its rings match the
reference defocus ``Δf`` (the phase χ is kept: ``χ(k; Δf + δ) = χ(k'; Δf)``), then averaged; the fit then
gives the defocus at the image centre. :func:`estimate_ctf` does the two passes (plain average → fit →
rescale with that defocus → fit). ``tilt_mode="restrict"`` keeps only windows within ``max_offset_A`` of
the centre defocus.

Background and score
--------------------
The data are the amplitude spectrum ``√power``. For a trial defocus the smooth background is the running
mean over exactly one Thon-ring period in ``k²`` (``Δk² = 1 / (λΔf − Cs λ³ k²)``), which removes a ring
oscillation of that defocus exactly; the same filter is applied to the model ``CTF²``. The 1D search
maximises the cross-correlation (CC) of the background-subtracted radial average with the filtered model
over the resolution band; the 2D refinement maximises the CC between the background-subtracted 2D spectrum
(background from the elliptical, i.e. equal-phase, average) and ``CTF² − ½`` over (mean defocus,
astigmatism vector, optionally phase shift) with scipy's Nelder-Mead, as CTFFIND4 does. The **fit
resolution** is where the CC between data and model, in a sliding window of three ring periods along the
equal-phase average, first drops below ``fit_resolution_cc`` (CTFFIND's "spacing up to which CTF rings were
fit"). The **score** is the 2D CC in the band (RELION's ``rlnCtfFigureOfMerit``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.ndimage
import scipy.optimize

from tomoguide.compute import ctf as ctfmod
from tomoguide.compute.backend import fft as _fft
from tomoguide.compute.backend import to_numpy, xp_of

__all__ = [
    "PowerSpectrum",
    "WindowSpectra",
    "CtfFit",
    "CtfGridFit",
    "window_spectra",
    "average_spectra",
    "power_spectrum",
    "defocus_offsets_A",
    "perpendicular_distance_px",
    "subtract_background",
    "fit_ctf",
    "estimate_ctf",
    "fit_ctf_grid",
    "ctf_rings_overlay",
    "equiphase_profile",
]

TiltMode = Literal["rescale", "restrict", "none"]


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowSpectra:
    """Periodograms of the windows of one image, before averaging.

    ``spectra`` (n, box, box // 2 + 1) float32 power, un-shifted rfft layout; ``centres_px`` (n, 2) window
    centres ``(x, y)`` in raw-image pixels (0-based, x = column); ``x_perp_px`` (n,) signed distance from the
    tilt axis (see the module docstring); ``image_shape`` ``(ny, nx)``.
    """

    spectra: np.ndarray
    centres_px: np.ndarray
    x_perp_px: np.ndarray
    pixel_size_A: float
    image_shape: tuple[int, int]
    tilt_deg: float = 0.0
    tilt_axis_deg: float = 0.0
    defocus_handedness: int = 1

    @property
    def box(self) -> int:
        return int(self.spectra.shape[1])

    @property
    def offsets_A(self) -> np.ndarray:
        """(n,) defocus of each window centre minus the image-centre defocus, Å."""
        return -self.defocus_handedness * math.tan(math.radians(self.tilt_deg)) * self.x_perp_px * self.pixel_size_A


@dataclass(frozen=True)
class PowerSpectrum:
    """An averaged power spectrum ``power`` (box, box // 2 + 1) float32 in the un-shifted rfft layout.

    ``reference_defocus_A``: the defocus the windows were rescaled to (``None``: plain average);
    ``n_windows``: how many windows were averaged.
    """

    power: np.ndarray
    pixel_size_A: float
    n_windows: int = 1
    reference_defocus_A: float | None = None
    tilt_deg: float = 0.0

    @property
    def box(self) -> int:
        return int(self.power.shape[0])

    def centred(self) -> np.ndarray:
        """The full (box, box) power spectrum with k = 0 at ``(box // 2, box // 2)`` (for display)."""
        return _full_centred(self.power)


@dataclass
class CtfFit:
    """Result of :func:`fit_ctf` (units Å, degrees; conventions in the module docstring).

    ``score``: CC of the 2D fit in the band (0..1; RELION's rlnCtfFigureOfMerit). ``fit_resolution_A``:
    resolution up to which the rings match (rlnCtfMaxResolution). ``failed`` with ``reason`` when the fit is
    unreliable (the exclusion step shows these in red). ``search_defocus_A`` / ``search_cc``: the 1D search
    curve (for plots); ``ring_k_A`` / ``ring_cc``: the sliding-window CC used for the fit resolution
    (spatial frequency in Å⁻¹, CC); ``significance`` = ``score · √N`` (N pixels in the band): the score in
    units of the spread of the CC of pure noise (noise images give < 5, the failure threshold is 6).
    """

    defocus_u_A: float
    defocus_v_A: float
    astig_angle_deg: float
    phase_shift_rad: float = 0.0
    score: float = 0.0
    fit_resolution_A: float = float("inf")
    failed: bool = False
    reason: str = ""
    defocus_1d_A: float = float("nan")
    significance: float = 0.0
    search_range_A: tuple[float, float] = (0.0, 0.0)
    search_defocus_A: np.ndarray = field(default_factory=lambda: np.zeros(0))
    search_cc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ring_k_A: np.ndarray = field(default_factory=lambda: np.zeros(0))
    ring_cc: np.ndarray = field(default_factory=lambda: np.zeros(0))
    voltage_kV: float = 300.0
    cs_mm: float = 2.7
    amplitude_contrast: float = 0.1
    pixel_size_A: float = 1.0

    @property
    def defocus_mean_A(self) -> float:
        return 0.5 * (self.defocus_u_A + self.defocus_v_A)

    @property
    def astigmatism_A(self) -> float:
        """``U − V`` (≥ 0), Å."""
        return self.defocus_u_A - self.defocus_v_A

    def star_row(self) -> dict[str, float]:
        """RELION columns: rlnDefocusU/V/Angle (Å, °), rlnCtfMaxResolution (Å), rlnCtfFigureOfMerit,
        rlnPhaseShift (°)."""
        return {
            "rlnDefocusU": self.defocus_u_A,
            "rlnDefocusV": self.defocus_v_A,
            "rlnDefocusAngle": self.astig_angle_deg,
            "rlnCtfMaxResolution": self.fit_resolution_A,
            "rlnCtfFigureOfMerit": self.score,
            "rlnPhaseShift": math.degrees(self.phase_shift_rad),
        }


@dataclass
class CtfGridFit:
    """Result of :func:`fit_ctf_grid`: one fit per tile and a defocus plane across the image.

    ``tile_centres_px`` (n, 2) ``(x, y)`` raw pixels; ``tile_fits`` one :class:`CtfFit` per tile (row-major,
    ``grid = (ny_tiles, nx_tiles)``); the plane ``Δf(x, y) = defocus_centre_A + gradient_A_per_px ·
    ((x, y) − image centre)`` fitted to the tiles' mean defocus (failed tiles left out);
    ``expected_gradient_A_per_px`` = ``−h tan β (cos θ, sin θ) · pixel`` from the tilt geometry;
    ``tilt_from_plane_deg`` = ``atan(−h g_perp / pixel)`` with ``g_perp`` the plane gradient across the tilt
    axis (NaN when fewer than three tiles succeeded).
    """

    grid: tuple[int, int]
    tile_centres_px: np.ndarray
    tile_fits: list[CtfFit]
    defocus_centre_A: float
    gradient_A_per_px: np.ndarray
    expected_gradient_A_per_px: np.ndarray
    tilt_from_plane_deg: float
    global_fit: CtfFit

    def defocus_at(self, x_px: Any, y_px: Any, image_shape: tuple[int, int]) -> Any:
        """Mean defocus (Å) of the plane at raw pixels ``(x, y)`` of an image of ``image_shape = (ny, nx)``."""
        cy, cx = (image_shape[0] - 1) / 2.0, (image_shape[1] - 1) / 2.0
        g = self.gradient_A_per_px
        return self.defocus_centre_A + g[0] * (np.asarray(x_px) - cx) + g[1] * (np.asarray(y_px) - cy)


# --------------------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------------------


def perpendicular_distance_px(x_px: Any, y_px: Any, image_shape: tuple[int, int], tilt_axis_deg: float) -> Any:
    """Signed distance (px) of raw pixels ``(x, y)`` from the tilt axis through the image centre:
    ``(x − c_x) cos θ + (y − c_y) sin θ`` (the aligned-image X coordinate; θ from +Y, counter-clockwise)."""
    cy, cx = (image_shape[0] - 1) / 2.0, (image_shape[1] - 1) / 2.0
    t = math.radians(tilt_axis_deg)
    dx = np.asarray(x_px, dtype=np.float64) - cx
    dy = np.asarray(y_px, dtype=np.float64) - cy
    return dx * math.cos(t) + dy * math.sin(t)


def defocus_offsets_A(
    x_px: Any, y_px: Any, image_shape: tuple[int, int], pixel_size_A: float, tilt_deg: float,
    tilt_axis_deg: float, defocus_handedness: int = 1,
) -> Any:
    """Defocus (Å) at raw pixels ``(x, y)`` minus the image-centre defocus for a flat specimen tilted by
    ``tilt_deg``: ``−h · tan β · x_perp · pixel_size_A`` (module docstring)."""
    xp_ = perpendicular_distance_px(x_px, y_px, image_shape, tilt_axis_deg)
    return -defocus_handedness * math.tan(math.radians(tilt_deg)) * xp_ * pixel_size_A


def _window_starts(n: int, box: int, overlap: float) -> np.ndarray:
    if n <= box:
        return np.array([0])
    step = max(1.0, box * (1.0 - overlap))
    count = int(math.ceil((n - box) / step - 1e-9)) + 1
    return np.round(np.linspace(0, n - box, count)).astype(np.int64)


def _taper(box: int, width: int, xp: Any) -> Any:
    w = np.ones(box)
    if width > 0:
        r = 0.5 - 0.5 * np.cos(np.pi * (np.arange(width) + 0.5) / width)
        w[:width] = r
        w[-width:] = r[::-1]
    return xp.asarray(np.outer(w, w).astype(np.float32))


# --------------------------------------------------------------------------------------------------------
# Power spectra
# --------------------------------------------------------------------------------------------------------


def window_spectra(
    image: Any,
    *,
    pixel_size_A: float,
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = 1,
    clip_sigma: float = 6.0,
    taper_fraction: float = 0.0625,
) -> WindowSpectra:
    """Periodograms of overlapping ``box × box`` windows of ``image`` (ny, nx), any real dtype.

    Windows are spread evenly (symmetric about the centre) with the given ``overlap`` fraction; ``box`` is
    reduced to the largest even size that fits when the image is smaller. Before the FFT the image is clipped
    to ``median ± clip_sigma · σ`` (X-ray hits, hot pixels; σ from the MAD), each window has its mean
    removed and its edges tapered by a cosine over ``taper_fraction · box`` px. Works on numpy or CuPy input
    (the result is numpy).
    """
    xp = xp_of(image)
    img = xp.asarray(image, dtype=xp.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D, got shape {tuple(img.shape)}")
    ny, nx = (int(s) for s in img.shape)
    b = int(min(box, ny, nx))
    b -= b % 2
    if b < 16:
        raise ValueError(f"image {ny}x{nx} is too small for a power spectrum")
    if clip_sigma and clip_sigma > 0:
        sub = img[:: max(1, ny // 256), :: max(1, nx // 256)]
        med = float(xp.median(sub))
        mad = float(xp.median(xp.abs(sub - med)))
        sig = 1.4826 * mad if mad > 0 else float(sub.std())
        if sig > 0:
            img = xp.clip(img, med - clip_sigma * sig, med + clip_sigma * sig)
    taper = _taper(b, int(round(taper_fraction * b)), xp)
    f = _fft(xp)
    ys, xs = _window_starts(ny, b, overlap), _window_starts(nx, b, overlap)
    out = np.empty((len(ys) * len(xs), b, b // 2 + 1), dtype=np.float32)
    centres = np.empty((out.shape[0], 2))
    i = 0
    for y0 in ys:
        for x0 in xs:
            w = img[y0:y0 + b, x0:x0 + b]
            w = (w - w.mean()) * taper
            s = f.rfft2(w)
            p = (s.real * s.real + s.imag * s.imag) / float(b * b)
            out[i] = to_numpy(p).astype(np.float32, copy=False)
            centres[i] = (x0 + (b - 1) / 2.0, y0 + (b - 1) / 2.0)
            i += 1
    xperp = perpendicular_distance_px(centres[:, 0], centres[:, 1], (ny, nx), tilt_axis_deg)
    return WindowSpectra(out, centres, np.asarray(xperp), float(pixel_size_A), (ny, nx), float(tilt_deg),
                         float(tilt_axis_deg), int(defocus_handedness))


def _rescale_spectrum(
    power: np.ndarray, pixel_size_A: float, reference_defocus_A: float, offset_A: float, lam: float, cs_A: float
) -> np.ndarray:
    """Resample ``power`` (rfft layout) of a window at defocus ``ref + offset`` onto the rings of ``ref``:
    output at ``k'`` = input at ``k`` with ``χ(k; ref + offset) = χ(k'; ref)`` (same direction)."""
    b = power.shape[0]
    kx, ky = ctfmod.frequency_grid((b, b), pixel_size_A, rfft=True)
    kp2 = kx * kx + ky * ky
    c = 0.5 * math.pi * cs_A * lam**3
    a1 = math.pi * lam * (reference_defocus_A + offset_A)
    q = math.pi * lam * reference_defocus_A * kp2 - c * kp2 * kp2
    disc = np.maximum(a1 * a1 - 4.0 * c * q, 0.0)
    k2 = 2.0 * q / (a1 + np.sqrt(disc))
    with np.errstate(invalid="ignore", divide="ignore"):
        scale = np.sqrt(np.maximum(k2, 0.0) / kp2)
    scale[0, 0] = math.sqrt(max(reference_defocus_A, 1.0) / max(reference_defocus_A + offset_A, 1.0))
    iy = np.fft.fftfreq(b, 1.0 / b)[:, None]
    ix = np.arange(b // 2 + 1)[None, :]
    rows = iy * scale + b // 2
    cols = ix * scale
    shifted = np.fft.fftshift(power, axes=0)
    out = scipy.ndimage.map_coordinates(shifted, [rows, np.broadcast_to(cols, rows.shape)], order=1,
                                        mode="nearest")
    return out.astype(np.float32)


def average_spectra(
    windows: WindowSpectra,
    *,
    reference_defocus_A: float | None = None,
    tilt_mode: TiltMode = "rescale",
    max_offset_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
) -> PowerSpectrum:
    """Average the window periodograms into one :class:`PowerSpectrum`.

    ``tilt_mode="rescale"`` with a ``reference_defocus_A`` (and a non-zero tilt) resamples each window onto
    the rings of the reference defocus first; ``"restrict"`` averages only windows whose defocus offset is
    within ``max_offset_A`` (at least the window nearest the tilt axis); ``"none"`` (or no reference) is the
    plain average.
    """
    spectra = windows.spectra
    offs = windows.offsets_A
    tilted = abs(windows.tilt_deg) > 1e-6
    if tilted and tilt_mode == "restrict":
        keep = np.abs(offs) <= max_offset_A
        if not keep.any():
            keep = np.abs(offs) == np.abs(offs).min()
        return PowerSpectrum(spectra[keep].mean(axis=0), windows.pixel_size_A, int(keep.sum()), None,
                             windows.tilt_deg)
    if tilted and tilt_mode == "rescale" and reference_defocus_A is not None:
        lam = ctfmod.electron_wavelength_A(voltage_kV)
        acc = np.zeros(spectra.shape[1:], dtype=np.float64)
        # windows at the same offset (a row along the tilt axis) are summed before one resampling
        # windows whose offsets differ by < 0.25 % of the defocus share one resampling (rings move by
        # < 0.0013 k: ≤ 0.2 px at the Nyquist of a 512-px box)
        keys = np.round(offs / max(25.0, 0.0025 * float(reference_defocus_A))).astype(np.int64)
        for key in np.unique(keys):
            sel = keys == key
            mean_sp = spectra[sel].mean(axis=0)
            off = float(offs[sel].mean())
            if abs(off) < 1.0:
                acc += mean_sp * sel.sum()
            else:
                acc += _rescale_spectrum(mean_sp, windows.pixel_size_A, float(reference_defocus_A), off, lam,
                                         cs_mm * 1e7) * sel.sum()
        return PowerSpectrum((acc / len(spectra)).astype(np.float32), windows.pixel_size_A, len(spectra),
                             float(reference_defocus_A), windows.tilt_deg)
    return PowerSpectrum(spectra.mean(axis=0), windows.pixel_size_A, len(spectra), None, windows.tilt_deg)


def power_spectrum(
    image: Any,
    *,
    pixel_size_A: float,
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = 1,
    reference_defocus_A: float | None = None,
    tilt_mode: TiltMode = "rescale",
    max_offset_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
) -> PowerSpectrum:
    """Averaged periodogram of ``image`` (ny, nx) over ``box`` windows (:func:`window_spectra` then
    :func:`average_spectra`). For a tilted image give ``tilt_deg``, ``tilt_axis_deg`` and, for
    ``tilt_mode="rescale"``, the ``reference_defocus_A`` to rescale to (:func:`estimate_ctf` finds it)."""
    w = window_spectra(image, pixel_size_A=pixel_size_A, box=box, overlap=overlap, tilt_deg=tilt_deg,
                       tilt_axis_deg=tilt_axis_deg, defocus_handedness=defocus_handedness)
    return average_spectra(w, reference_defocus_A=reference_defocus_A, tilt_mode=tilt_mode,
                           max_offset_A=max_offset_A, voltage_kV=voltage_kV, cs_mm=cs_mm)


def _full_centred(half: np.ndarray) -> np.ndarray:
    """(box, box//2+1) rfft-layout real array -> (box, box) full plane, k = 0 at (box//2, box//2)."""
    b = half.shape[0]
    full = np.empty((b, b), dtype=half.dtype)
    full[:, : b // 2 + 1] = half
    # Hermitian symmetry: P(ky, kx) = P(-ky, -kx) for kx = -1 .. -(b//2 - 1)  (columns b//2+1 .. b-1)
    neg_rows = (-np.arange(b)) % b
    cols = np.arange(b // 2 + 1, b)
    full[:, cols] = half[neg_rows][:, b - cols]
    return np.fft.fftshift(full)


# --------------------------------------------------------------------------------------------------------
# Background, profiles
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Optics:
    lam: float
    cs_A: float
    alpha: float

    @classmethod
    def make(cls, voltage_kV: float, cs_mm: float, amplitude_contrast: float) -> _Optics:
        a = float(amplitude_contrast)
        return cls(ctfmod.electron_wavelength_A(voltage_kV), cs_mm * 1e7, math.atan2(a, math.sqrt(1.0 - a * a)))

    def period_k2(self, k2: np.ndarray, defocus_A: float) -> np.ndarray:
        """Ring spacing in k² (Å⁻²): Δχ = π."""
        rate = self.lam * defocus_A - self.cs_A * self.lam**3 * k2
        return 1.0 / np.maximum(rate, 0.05 * self.lam * max(defocus_A, 1.0))

    def chi_iso(self, k2: np.ndarray, defocus_A: float, phase: float = 0.0) -> np.ndarray:
        return math.pi * self.lam * defocus_A * k2 - 0.5 * math.pi * self.cs_A * self.lam**3 * k2 * k2 + phase


def _running_mean_k2(k2: np.ndarray, y: np.ndarray, period: np.ndarray, n_periods: float = 1.0) -> np.ndarray:
    """Mean of ``y`` (sampled at increasing ``k2``) over ``[k2 − n P/2, k2 + n P/2]`` (trapezoid integral,
    window clipped to the sampled range). ``y`` may be (..., n) for several curves at once."""
    dk = np.diff(k2)
    seg = 0.5 * (y[..., 1:] + y[..., :-1]) * dk
    cum = np.concatenate([np.zeros(y.shape[:-1] + (1,)), np.cumsum(seg, axis=-1)], axis=-1)
    half = 0.5 * n_periods * period
    lo = np.maximum(k2 - half, k2[0])
    hi = np.minimum(k2 + half, k2[-1])
    width = np.maximum(hi - lo, 1e-30)
    if cum.ndim == 1:
        return (np.interp(hi, k2, cum) - np.interp(lo, k2, cum)) / width
    flat = cum.reshape(-1, cum.shape[-1])
    res = np.stack([(np.interp(hi, k2, c) - np.interp(lo, k2, c)) / width for c in flat])
    return res.reshape(y.shape)


@dataclass(frozen=True)
class _Grid:
    """Frequencies of the rfft-layout spectrum: |k|² (Å⁻²), cos 2θ, sin 2θ, radius in px."""

    k2: np.ndarray
    c2: np.ndarray
    s2: np.ndarray
    r_px: np.ndarray
    box: int
    pixel_size_A: float

    @classmethod
    def make(cls, box: int, pixel_size_A: float) -> _Grid:
        kx, ky = ctfmod.frequency_grid((box, box), pixel_size_A, rfft=True)
        kx = np.broadcast_to(kx, (box, box // 2 + 1))
        ky = np.broadcast_to(ky, (box, box // 2 + 1))
        k2 = kx * kx + ky * ky
        th = np.arctan2(ky, kx)
        return cls(k2, np.cos(2 * th), np.sin(2 * th), np.sqrt(k2) * box * pixel_size_A, box, pixel_size_A)

    def equiphase_r_px(self, mean_A: float, a_A: float, b_A: float) -> np.ndarray:
        """Equivalent radius (px) on which an astigmatic CTF has the phase of the isotropic one at ``mean``."""
        df = mean_A + a_A * self.c2 + b_A * self.s2
        return self.r_px * np.sqrt(np.maximum(df, 1.0) / max(mean_A, 1.0))


def equiphase_profile(
    amplitude: np.ndarray, grid: Any, mean_A: float = 0.0, a_A: float = 0.0, b_A: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Average of ``amplitude`` (rfft layout) on 1-px rings of the equal-phase radius (plain rings when no
    astigmatism is given): returns ``(r_px, profile)`` for r = 0 .. box//2 (empty rings interpolated)."""
    g: _Grid = grid
    r = g.equiphase_r_px(mean_A, a_A, b_A) if (a_A or b_A) else g.r_px
    idx = np.rint(r).astype(np.int64).ravel()
    nb = g.box // 2 + 1
    ok = idx < nb
    cnt = np.bincount(idx[ok], minlength=nb).astype(np.float64)
    tot = np.bincount(idx[ok], weights=amplitude.ravel()[ok].astype(np.float64), minlength=nb)
    rr = np.arange(nb, dtype=np.float64)
    prof = np.zeros(nb)
    has = cnt > 0
    prof[has] = tot[has] / cnt[has]
    if not has.all():
        prof = np.interp(rr, rr[has], prof[has])
    return rr, prof


def _background_1d(r_px: np.ndarray, prof: np.ndarray, grid: _Grid, optics: _Optics, defocus_A: float,
                   r_min: float = 3.0) -> np.ndarray:
    """Smooth background of a radial profile for rings of ``defocus_A`` (running mean over one period in k²)."""
    k2 = (r_px / (grid.box * grid.pixel_size_A)) ** 2
    y = prof.copy()
    lowcut = r_px < r_min
    if lowcut.any() and (~lowcut).any():
        y[lowcut] = y[~lowcut][0]
    return _running_mean_k2(k2, y, optics.period_k2(k2, defocus_A))


def subtract_background(
    spectrum: PowerSpectrum, defocus_A: float, *, astigmatism: tuple[float, float] = (0.0, 0.0),
    voltage_kV: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
) -> np.ndarray:
    """Background-subtracted amplitude spectrum (rfft layout, float32) for rings of ``defocus_A``.

    ``astigmatism = (a, b)``: the astigmatism vector ``((U−V)/2) (cos 2φ, sin 2φ)`` in Å used for the
    equal-phase average of the background. The result is divided by its RMS beyond 3 px from the origin, so
    that its scale is about 1.
    """
    g = _Grid.make(spectrum.box, spectrum.pixel_size_A)
    opt = _Optics.make(voltage_kV, cs_mm, amplitude_contrast)
    amp = np.sqrt(np.maximum(spectrum.power.astype(np.float64), 0.0))
    return _subtract(amp, g, opt, defocus_A, *astigmatism).astype(np.float32)


def _subtract(amp: np.ndarray, g: _Grid, opt: _Optics, mean_A: float, a_A: float, b_A: float) -> np.ndarray:
    r_eq = g.equiphase_r_px(mean_A, a_A, b_A) if (a_A or b_A) else g.r_px
    rr, prof = equiphase_profile(amp, g, mean_A, a_A, b_A)
    bg = _background_1d(rr, prof, g, opt, mean_A)
    d = amp - np.interp(r_eq, rr, bg)
    sel = g.r_px > 3
    rms = float(np.sqrt(np.mean(d[sel] ** 2))) or 1.0
    return d / rms


# --------------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------------


def _search_1d(rr: np.ndarray, prof: np.ndarray, g: _Grid, opt: _Optics, band: np.ndarray,
               defoci: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """CC (len(defoci), len(phases)) of the background-subtracted radial profile with the filtered model."""
    k2 = (rr / (g.box * g.pixel_size_A)) ** 2
    y = prof.copy()
    y[rr < 3] = y[rr >= 3][0]
    out = np.full((len(defoci), len(phases)), -1.0)
    for i, df in enumerate(defoci):
        per = opt.period_k2(k2, float(df))
        d = (y - _running_mean_k2(k2, y, per))[band]
        d = d - d.mean()
        dn = math.sqrt(float(d @ d)) or 1.0
        models = np.stack([np.sin(opt.chi_iso(k2, float(df), float(ph)) + opt.alpha) ** 2 for ph in phases])
        m = (models - _running_mean_k2(k2, models, per))[:, band]
        m = m - m.mean(axis=1, keepdims=True)
        mn = np.sqrt(np.einsum("ij,ij->i", m, m))
        out[i] = (m @ d) / (np.maximum(mn, 1e-30) * dn)
    return out


class _Objective:
    """Negative 2D CC between the background-subtracted band pixels and −cos(2χ + 2α) (= 2 CTF² − 1)."""

    def __init__(self, d: np.ndarray, g: _Grid, opt: _Optics, sel: np.ndarray) -> None:
        # float32 throughout: phases stay below ~10³ rad, so the error is ~10⁻⁴ rad, and cos is ~10× faster
        dd = d[sel].astype(np.float64)
        self.d = (dd - dd.mean()).astype(np.float32)
        self.dn = math.sqrt(float(self.d @ self.d)) or 1.0
        k2 = g.k2[sel]
        lk2 = 2.0 * math.pi * opt.lam * k2
        self.lk2 = lk2.astype(np.float32)
        self.lk2c = (lk2 * g.c2[sel]).astype(np.float32)
        self.lk2s = (lk2 * g.s2[sel]).astype(np.float32)
        self.const = (2.0 * opt.alpha - math.pi * opt.cs_A * opt.lam**3 * k2 * k2).astype(np.float32)

    def cc(self, mean_A: float, a_A: float, b_A: float, phase: float = 0.0) -> float:
        two_chi = np.float32(mean_A) * self.lk2
        two_chi += np.float32(a_A) * self.lk2c
        two_chi += np.float32(b_A) * self.lk2s
        two_chi += self.const
        if phase:
            two_chi += np.float32(2.0 * phase)
        m = np.cos(two_chi, out=two_chi)
        m -= m.mean()
        # model is -cos(2χ + 2α); the sign goes into the product
        return -float(m @ self.d) / ((math.sqrt(float(m @ m)) or 1.0) * self.dn)


def _ring_cc(d: np.ndarray, g: _Grid, opt: _Optics, mean_A: float, a_A: float, b_A: float, phase: float,
             r_lo: float) -> tuple[np.ndarray, np.ndarray]:
    """Sliding-window CC (3 ring periods wide) between the equal-phase profile of ``d`` and the model."""
    rr, prof = equiphase_profile(d, g, mean_A, a_A, b_A)
    k2 = (rr / (g.box * g.pixel_size_A)) ** 2
    model = -np.cos(2.0 * (opt.chi_iso(k2, mean_A, phase) + opt.alpha))
    per = opt.period_k2(k2, mean_A)
    n = 3.0
    mu_d = _running_mean_k2(k2, prof, per, n)
    mu_m = _running_mean_k2(k2, model, per, n)
    cov = _running_mean_k2(k2, prof * model, per, n) - mu_d * mu_m
    vd = _running_mean_k2(k2, prof * prof, per, n) - mu_d**2
    vm = _running_mean_k2(k2, model * model, per, n) - mu_m**2
    cc = cov / np.sqrt(np.maximum(vd * vm, 1e-30))
    keep = rr >= r_lo
    return rr[keep] / (g.box * g.pixel_size_A), cc[keep]


def fit_ctf(
    spectrum: PowerSpectrum | np.ndarray,
    *,
    pixel_size_A: float | None = None,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    defocus_range_A: tuple[float, float] = (5000.0, 80000.0),
    defocus_step_A: float = 500.0,
    res_range_A: tuple[float, float] = (30.0, 7.0),
    astigmatism_guess_A: float = 500.0,
    max_astigmatism_A: float = 5000.0,
    fit_phase: bool = False,
    phase_range_rad: tuple[float, float] = (0.0, math.pi),
    nominal_defocus_A: float | None = None,
    narrow_A: float | None = None,
    min_score: float = 0.02,
    min_significance: float = 6.0,
    fit_resolution_cc: float = 0.3,
) -> CtfFit:
    """Fit defocus U/V, astigmatism angle (and optionally a phase shift) to an averaged power spectrum.

    ``spectrum``: a :class:`PowerSpectrum` or a (box, box//2+1) power array in the un-shifted rfft layout
    (then ``pixel_size_A`` is required). ``defocus_range_A`` / ``defocus_step_A``: the 1D exhaustive search
    of the mean defocus; with ``nominal_defocus_A`` and ``narrow_A`` the search is narrowed to
    ``nominal ± narrow`` (intersected with the range; the tutorial's tip). ``res_range_A`` = (low, high)
    resolution band of the fit in Å. ``astigmatism_guess_A``: the U − V used to seed the 2D refinement.

    The fit is flagged ``failed`` (with ``reason``) when the 2D CC ``score < min_score`` or
    ``score · √N < min_significance`` (N band pixels: the score in units of the CC of pure noise),
    the defocus lies within one step of the search range's edge, the astigmatism exceeds
    ``max_astigmatism_A``, or no ring matches in the band (fit resolution worse than the band's low limit).
    """
    if isinstance(spectrum, PowerSpectrum):
        power = np.asarray(spectrum.power, dtype=np.float64)
        px = float(spectrum.pixel_size_A)
    else:
        if pixel_size_A is None:
            raise ValueError("pixel_size_A is required when spectrum is an array")
        power = np.asarray(to_numpy(spectrum), dtype=np.float64)
        px = float(pixel_size_A)
    b = power.shape[0]
    if power.shape != (b, b // 2 + 1):
        raise ValueError(f"spectrum must have the rfft layout (box, box//2+1), got {power.shape}")
    lo_res, hi_res = float(max(res_range_A)), float(min(res_range_A))
    hi_res = max(hi_res, 2.0 * px * 1.0001)
    lo_df, hi_df = float(min(defocus_range_A)), float(max(defocus_range_A))
    if nominal_defocus_A is not None and narrow_A is not None:
        lo_df = max(lo_df, float(nominal_defocus_A) - float(narrow_A))
        hi_df = min(hi_df, float(nominal_defocus_A) + float(narrow_A))
        if hi_df < lo_df:
            raise ValueError("the narrowed defocus range lies outside defocus_range_A")
    step = float(defocus_step_A)
    opt = _Optics.make(voltage_kV, cs_mm, amplitude_contrast)
    g = _Grid.make(b, px)
    amp = np.sqrt(np.maximum(power, 0.0))
    base = CtfFit(0.0, 0.0, 0.0, voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                  pixel_size_A=px, search_range_A=(lo_df, hi_df))

    # ---- 1D exhaustive search on the radial average ------------------------------------------------------
    rr, prof = equiphase_profile(amp, g)
    r_lo, r_hi = b * px / lo_res, b * px / hi_res
    band1 = (rr >= r_lo) & (rr <= r_hi)
    if band1.sum() < 8:
        raise ValueError(f"the band {lo_res:g}-{hi_res:g} Å covers fewer than 8 rings of the {b}-px spectrum")
    n_steps = max(1, int(round((hi_df - lo_df) / step)))
    defoci = np.linspace(lo_df, hi_df, n_steps + 1)
    phases = (np.linspace(phase_range_rad[0], phase_range_rad[1], 19)[:-1] if fit_phase else np.array([0.0]))
    cc1 = _search_1d(rr, prof, g, opt, band1, defoci, phases)
    best = np.unravel_index(int(np.argmax(cc1)), cc1.shape)
    df1, ph1 = float(defoci[best[0]]), float(phases[best[1]])
    curve = cc1.max(axis=1)
    # refine the 1D optimum between the neighbouring grid points
    if len(defoci) > 2:
        res = scipy.optimize.minimize_scalar(
            lambda x: -_search_1d(rr, prof, g, opt, band1, np.array([x]), np.array([ph1]))[0, 0],
            bounds=(max(lo_df, df1 - step), min(hi_df, df1 + step)), method="bounded",
            options={"xatol": 5.0})
        df1 = float(res.x)
    base.defocus_1d_A = df1
    base.search_defocus_A = defoci
    base.search_cc = curve

    # ---- 2D refinement of mean defocus, astigmatism vector (a, b) and phase ----------------------------------
    sel = (g.r_px >= r_lo) & (g.r_px <= r_hi)
    mean, a, bb, ph = df1, 0.0, 0.0, ph1
    h = 0.5 * float(astigmatism_guess_A)
    for it in range(2):
        d = _subtract(amp, g, opt, mean, a, bb)
        obj = _Objective(d, g, opt, sel)
        starts = [(mean, a, bb)]
        if it == 0:
            for ang in (0.0, 45.0, 90.0, 135.0):
                t = math.radians(2 * ang)
                for dm in (-0.25 * step, 0.0, 0.25 * step):
                    starts.append((mean + dm, h * math.cos(t), h * math.sin(t)))
        scored = sorted(starts, key=lambda s: -obj.cc(s[0], s[1], s[2], ph))
        best_x, best_v = None, math.inf
        for s in scored[: (2 if it == 0 else 1)]:
            x0 = np.array([s[0], s[1], s[2]] + ([ph] if fit_phase else []))

            def f(x: np.ndarray) -> float:
                if x[0] < lo_df - step or x[0] > hi_df + step or math.hypot(x[1], x[2]) > 0.5 * max_astigmatism_A:
                    return 1.0
                return -obj.cc(x[0], x[1], x[2], x[3] if fit_phase else ph)

            simplex_scale = [0.25 * step, max(h, 100.0), max(h, 100.0)] + ([0.3] if fit_phase else [])
            init = np.vstack([x0] + [x0 + np.eye(len(x0))[i] * simplex_scale[i] for i in range(len(x0))])
            r = scipy.optimize.minimize(f, x0, method="Nelder-Mead",
                                        options={"initial_simplex": init, "xatol": 2.0, "fatol": 1e-6,
                                                 "maxiter": 600})
            if r.fun < best_v:
                best_x, best_v = r.x, float(r.fun)
        assert best_x is not None
        mean, a, bb = float(best_x[0]), float(best_x[1]), float(best_x[2])
        if fit_phase:
            ph = float(best_x[3]) % (2 * math.pi)
    score = -best_v
    # a CC of pure noise over N pixels scatters by ~1/√N: the score in units of that spread
    significance = score * math.sqrt(float(sel.sum()))
    base.significance = significance
    half = math.hypot(a, bb)
    u, v, ang = ctfmod.normalise_astigmatism(mean + half, mean - half, 0.5 * math.degrees(math.atan2(bb, a)))

    # ---- fit resolution ---------------------------------------------------------------------------------------
    d = _subtract(amp, g, opt, mean, a, bb)
    ring_k, ring_cc = _ring_cc(d, g, opt, mean, a, bb, ph, r_lo)
    # the first drop below the threshold after the CC has reached it (the lowest rings can be weak)
    above = np.flatnonzero(ring_cc >= fit_resolution_cc)
    if above.size == 0 or ring_k[above[0]] > 1.0 / hi_res:
        fit_res = float("inf")
    else:
        below = np.flatnonzero(ring_cc[above[0]:] < fit_resolution_cc)
        last = len(ring_cc) - 1 if below.size == 0 else above[0] + below[0] - 1
        fit_res = 1.0 / float(ring_k[last])

    reasons = []
    if score < min_score:
        reasons.append(f"score {score:.3f} < {min_score:g}")
    if significance < min_significance:
        reasons.append(f"score {score:.3f} is only {significance:.1f}× the CC of noise (< {min_significance:g})")
    if hi_df - lo_df > 2 * step and (mean < lo_df + step or mean > hi_df - step):
        reasons.append(f"defocus {mean:.0f} Å at the edge of the search range {lo_df:.0f}-{hi_df:.0f} Å")
    if 2 * half > max_astigmatism_A * 0.999:
        reasons.append(f"astigmatism {2 * half:.0f} Å at the limit {max_astigmatism_A:g} Å")
    if not fit_res <= lo_res:
        reasons.append(f"no Thon ring matches in the {lo_res:g}-{hi_res:g} Å band")
    base.defocus_u_A, base.defocus_v_A, base.astig_angle_deg = u, v, ang
    base.phase_shift_rad = ph
    base.score = score
    base.fit_resolution_A = fit_res
    base.ring_k_A, base.ring_cc = ring_k, ring_cc
    base.failed = bool(reasons)
    base.reason = "; ".join(reasons)
    return base


def estimate_ctf(
    image: Any,
    *,
    pixel_size_A: float,
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = 1,
    tilt_mode: TiltMode = "rescale",
    max_offset_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    **fit_kwargs: Any,
) -> tuple[CtfFit, PowerSpectrum]:
    """Estimate the CTF at the centre of one image (ny, nx) — the per-tilt entry point of both steps.

    Windows (:func:`window_spectra`) → average → :func:`fit_ctf`; for a tilted image in ``tilt_mode
    "rescale"`` the windows are then rescaled to the fitted defocus and fitted again (two passes).
    ``fit_kwargs`` go to :func:`fit_ctf` (defocus_range_A, defocus_step_A, res_range_A, nominal_defocus_A,
    narrow_A, fit_phase, ...). Returns the fit and the spectrum it was made on (for the overlay).
    """
    w = window_spectra(image, pixel_size_A=pixel_size_A, box=box, overlap=overlap, tilt_deg=tilt_deg,
                       tilt_axis_deg=tilt_axis_deg, defocus_handedness=defocus_handedness)
    optics = {"voltage_kV": voltage_kV, "cs_mm": cs_mm}
    mode = tilt_mode if abs(tilt_deg) > 1e-6 else "none"
    first_mode: TiltMode = "restrict" if mode == "restrict" else "none"
    spec = average_spectra(w, tilt_mode=first_mode, max_offset_A=max_offset_A, **optics)
    fit = fit_ctf(spec, amplitude_contrast=amplitude_contrast, **optics, **fit_kwargs)
    if mode == "rescale" and np.ptp(w.offsets_A) > 1.0:
        spec = average_spectra(w, reference_defocus_A=fit.defocus_mean_A, tilt_mode="rescale", **optics)
        fit = fit_ctf(spec, amplitude_contrast=amplitude_contrast, **optics, **fit_kwargs)
    return fit, spec


def fit_ctf_grid(
    image: Any,
    *,
    pixel_size_A: float,
    grid: tuple[int, int] = (2, 2),
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = 1,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    global_fit: CtfFit | None = None,
    tile_narrow_A: float | None = None,
    **fit_kwargs: Any,
) -> CtfGridFit:
    """Defocus model grid (the tutorial's 2×2×1): fit the CTF in ``grid = (ny_tiles, nx_tiles)`` tiles and a
    defocus plane across the image.

    The global fit (:func:`estimate_ctf`, or ``global_fit``) sets the astigmatism prior and the tiles'
    search range: its mean defocus ± ``tile_narrow_A`` (default: the tilt's expected defocus spread over the
    image plus 2000 Å). Each tile uses windows of ``min(box, tile side)`` px. Tiles whose fit fails are
    reported but left out of the plane.
    """
    img = np.asarray(to_numpy(image), dtype=np.float32)
    ny, nx = img.shape
    gy, gx = int(grid[0]), int(grid[1])
    optics = {"voltage_kV": voltage_kV, "cs_mm": cs_mm, "amplitude_contrast": amplitude_contrast}
    if global_fit is None:
        global_fit, _ = estimate_ctf(img, pixel_size_A=pixel_size_A, box=box, overlap=overlap, tilt_deg=tilt_deg,
                                     tilt_axis_deg=tilt_axis_deg, defocus_handedness=defocus_handedness,
                                     **optics, **fit_kwargs)
    corners = np.array([[0, 0], [nx - 1, 0], [0, ny - 1], [nx - 1, ny - 1]], dtype=np.float64)
    spread = float(np.ptp(defocus_offsets_A(corners[:, 0], corners[:, 1], (ny, nx), pixel_size_A, tilt_deg,
                                            tilt_axis_deg, defocus_handedness)))
    narrow = float(tile_narrow_A) if tile_narrow_A is not None else spread + 2000.0
    kw = dict(fit_kwargs)
    kw.pop("nominal_defocus_A", None)
    kw.pop("narrow_A", None)
    kw.setdefault("astigmatism_guess_A", max(global_fit.astigmatism_A, 100.0))
    ys = np.linspace(0, ny, gy + 1).round().astype(int)
    xs = np.linspace(0, nx, gx + 1).round().astype(int)
    fits: list[CtfFit] = []
    centres = []
    for iy in range(gy):
        for ix in range(gx):
            tile = img[ys[iy]:ys[iy + 1], xs[ix]:xs[ix + 1]]
            tb = int(min(box, tile.shape[0], tile.shape[1]))
            tb -= tb % 2
            spec = power_spectrum(tile, pixel_size_A=pixel_size_A, box=tb, overlap=overlap, tilt_mode="none")
            f = fit_ctf(spec, nominal_defocus_A=global_fit.defocus_mean_A, narrow_A=narrow, **optics, **kw)
            fits.append(f)
            centres.append(((xs[ix] + xs[ix + 1] - 1) / 2.0, (ys[iy] + ys[iy + 1] - 1) / 2.0))
    c = np.asarray(centres)
    ok = np.array([not f.failed for f in fits])
    t = math.radians(tilt_axis_deg)
    expected = -defocus_handedness * math.tan(math.radians(tilt_deg)) * pixel_size_A * np.array([math.cos(t),
                                                                                                  math.sin(t)])
    cy, cx = (ny - 1) / 2.0, (nx - 1) / 2.0
    grad = np.full(2, np.nan)
    centre_df = global_fit.defocus_mean_A
    tilt_est = float("nan")
    if ok.sum() >= 3:
        dfs = np.array([f.defocus_mean_A for f in fits])[ok]
        m = np.column_stack([np.ones(ok.sum()), c[ok, 0] - cx, c[ok, 1] - cy])
        # the tiles of one row/column along a single axis cannot fix a plane: fall back to the geometry direction
        if np.linalg.matrix_rank(m) == 3:
            coef = np.linalg.lstsq(m, dfs, rcond=None)[0]
            centre_df, grad = float(coef[0]), coef[1:]
        else:
            d = np.array([math.cos(t), math.sin(t)])
            xp_ = (c[ok] - [cx, cy]) @ d
            coef = np.polyfit(xp_, dfs, 1)
            centre_df, grad = float(coef[1]), coef[0] * d
        g_perp = float(grad[0] * math.cos(t) + grad[1] * math.sin(t))
        tilt_est = math.degrees(math.atan(-defocus_handedness * g_perp / pixel_size_A))
    return CtfGridFit((gy, gx), c, fits, centre_df, np.asarray(grad, dtype=np.float64), expected, tilt_est,
                      global_fit)


# --------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------


def ctf_rings_overlay(
    spectrum_2d: PowerSpectrum | np.ndarray, fit: CtfFit, *, pixel_size_A: float | None = None,
    display_px: int | None = None,
) -> np.ndarray:
    """Preview image (box, box) float32 in [0, 1], k = 0 at the centre: left half the background-subtracted
    amplitude spectrum (contrast-stretched), right half the fitted ``CTF²`` (same display convention as
    CTFFIND's diagnostic image). ``spectrum_2d``: a :class:`PowerSpectrum` or an rfft-layout power array.
    ``display_px``: the size the image will be shown at (after Fourier cropping); where the model's rings are
    closer than about 3 display pixels they would alias into moiré, so the model fades to grey there."""
    if isinstance(spectrum_2d, PowerSpectrum):
        spec = spectrum_2d
    else:
        spec = PowerSpectrum(np.asarray(spectrum_2d, dtype=np.float32),
                             float(pixel_size_A if pixel_size_A is not None else fit.pixel_size_A))
    b = spec.box
    half = 0.5 * (fit.defocus_u_A - fit.defocus_v_A)
    t = math.radians(2 * fit.astig_angle_deg)
    a, bb = half * math.cos(t), half * math.sin(t)
    d = subtract_background(spec, fit.defocus_mean_A, astigmatism=(a, bb), voltage_kV=fit.voltage_kV,
                            cs_mm=fit.cs_mm, amplitude_contrast=fit.amplitude_contrast).astype(np.float64)
    g = _Grid.make(b, spec.pixel_size_A)
    d = scipy.ndimage.gaussian_filter(d, 0.7)
    sel = g.r_px > 3
    lo, hi = np.percentile(d[sel], [2.0, 98.0])
    data = np.clip((d - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    data[~sel] = 0.5
    model = ctfmod.ctf_2d((b, b), spec.pixel_size_A, fit.defocus_u_A, fit.defocus_v_A, fit.astig_angle_deg,
                          voltage_kV=fit.voltage_kV, cs_mm=fit.cs_mm, amplitude_contrast=fit.amplitude_contrast,
                          phase_shift_rad=fit.phase_shift_rad, rfft=True, dtype=np.float64) ** 2
    if display_px is not None and display_px < b:
        lam = ctfmod.electron_wavelength_A(fit.voltage_kV)
        k = np.maximum(g.r_px / (b * spec.pixel_size_A), 1e-6)  # Å⁻¹
        slope = np.abs(2 * lam * fit.defocus_mean_A * k - 2 * fit.cs_mm * 1e7 * lam**3 * k**3)  # 1/Δk of CTF²
        period_px = spec.pixel_size_A * display_px / np.maximum(slope, 1e-12)
        w = np.clip((period_px - 2.5) / 1.5, 0.0, 1.0)
        model = 0.5 + (model - 0.5) * w
    full_d = _full_centred(data)
    full_m = _full_centred(model)
    out = full_d.copy()
    out[:, b // 2:] = full_m[:, b // 2:]
    return out.astype(np.float32)
