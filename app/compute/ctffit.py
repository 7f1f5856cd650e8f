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
    "CtfProfile",
    "ctf_profile_1d",
    "equiphase_profile",
    "TiltDirectionEvidence",
    "TiltDirectionCheck",
    "TwoWayCtf",
    "ctf_both_directions",
    "check_tilt_direction",
    "check_tilt_direction_images",
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
    defocus_handedness: int = -1

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
    tilt_axis_deg: float, defocus_handedness: int = -1,
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
    defocus_handedness: int = -1,
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
    defocus_handedness: int = -1,
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
        # cos 2θ, sin 2θ of θ = atan2(ky, kx) without trigonometry (θ = 0 at the origin)
        inv = np.divide(1.0, k2, out=np.zeros_like(k2), where=k2 > 0)
        c2 = np.where(k2 > 0, (kx * kx - ky * ky) * inv, 1.0)
        s2 = 2.0 * kx * ky * inv
        return cls(k2, c2, s2, np.sqrt(k2) * box * pixel_size_A, box, pixel_size_A)

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


def _interp_at(cum: np.ndarray, fidx: np.ndarray) -> np.ndarray:
    """Linear interpolation of ``cum`` (..., n) at fractional sample indices ``fidx`` (broadcastable to
    ``cum``'s leading shape + (m,)), per row: ``np.interp`` for many rows sharing one abscissa."""
    n = cum.shape[-1]
    i0 = np.clip(np.floor(fidx).astype(np.int64), 0, max(n - 2, 0))
    f = fidx - i0
    shape = np.broadcast_shapes(cum.shape[:-1] + (1,), fidx.shape)
    c = np.broadcast_to(cum, shape[:-1] + (n,))
    i0 = np.broadcast_to(i0, shape)
    f = np.broadcast_to(f, shape)
    lo = np.take_along_axis(c, i0, axis=-1)
    hi = np.take_along_axis(c, np.minimum(i0 + 1, n - 1), axis=-1)
    return lo + f * (hi - lo)


def _search_1d(rr: np.ndarray, prof: np.ndarray, g: _Grid, opt: _Optics, band: np.ndarray,
               defoci: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """CC (len(defoci), len(phases)) of the background-subtracted radial profile with the filtered model.

    All defoci and phases at once: the running means over one ring period (:func:`_running_mean_k2`) of the
    profile and of every model are read from cumulative integrals at fractional sample indices shared by the
    rows (the same sums as :func:`_search_1d_reference`, one array pass instead of a loop per defocus)."""
    k2 = (rr / (g.box * g.pixel_size_A)) ** 2
    n = len(k2)
    y = prof.copy()
    y[rr < 3] = y[rr >= 3][0]
    df = np.asarray(defoci, np.float64)[:, None]  # (D, 1)
    rate = opt.lam * df - opt.cs_A * opt.lam**3 * k2[None, :]
    per = 1.0 / np.maximum(rate, 0.05 * opt.lam * np.maximum(df, 1.0))  # (D, n): Δk² of one ring period
    lo = np.maximum(k2 - 0.5 * per, k2[0])
    hi = np.minimum(k2 + 0.5 * per, k2[-1])
    width = np.maximum(hi - lo, 1e-30)
    idx = np.arange(n, dtype=np.float64)
    f_lo = np.interp(lo, k2, idx)
    f_hi = np.interp(hi, k2, idx)
    dk = np.diff(k2)
    cum_y = np.concatenate([[0.0], np.cumsum(0.5 * (y[1:] + y[:-1]) * dk)])
    mean_y = (np.interp(hi, k2, cum_y) - np.interp(lo, k2, cum_y)) / width
    d = (y[None, :] - mean_y)[:, band]  # (D, nb)
    d = d - d.mean(axis=1, keepdims=True)
    dn = np.sqrt(np.einsum("dn,dn->d", d, d))
    dn[dn == 0] = 1.0
    ph = np.asarray(phases, np.float64)
    chi = math.pi * opt.lam * df * k2[None, :] - 0.5 * math.pi * opt.cs_A * opt.lam**3 * (k2 * k2)[None, :]
    models = np.sin(chi[:, None, :] + ph[None, :, None] + opt.alpha) ** 2  # (D, P, n)
    cum_m = np.concatenate([np.zeros(models.shape[:-1] + (1,)),
                            np.cumsum(0.5 * (models[..., 1:] + models[..., :-1]) * dk, axis=-1)], axis=-1)
    mean_m = (_interp_at(cum_m, f_hi[:, None, :]) - _interp_at(cum_m, f_lo[:, None, :])) / width[:, None, :]
    m = (models - mean_m)[..., band]  # (D, P, nb)
    m = m - m.mean(axis=-1, keepdims=True)
    mn = np.sqrt(np.einsum("dpn,dpn->dp", m, m))
    return np.einsum("dpn,dn->dp", m, d) / (np.maximum(mn, 1e-30) * dn[:, None])


def _search_1d_reference(rr: np.ndarray, prof: np.ndarray, g: _Grid, opt: _Optics, band: np.ndarray,
               defoci: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """The first version of :func:`_search_1d` (one defocus at a time), kept as its test oracle."""
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


def _power_and_pixel(spectrum: Any, pixel_size_A: float | None) -> tuple[np.ndarray, float]:
    """``(power (box, box//2+1) float64, pixel Å)`` of a :class:`PowerSpectrum`, or of an rfft-layout power array
    with ``pixel_size_A``; ValueError for anything else."""
    if isinstance(spectrum, PowerSpectrum):
        power = np.asarray(spectrum.power, dtype=np.float64)
        px = float(spectrum.pixel_size_A)
    else:
        if pixel_size_A is None:
            raise ValueError("pixel_size_A is required when spectrum is an array")
        power = np.asarray(to_numpy(spectrum), dtype=np.float64)
        px = float(pixel_size_A)
    b = power.shape[0]
    if power.ndim != 2 or power.shape != (b, b // 2 + 1):
        raise ValueError(f"spectrum must have the rfft layout (box, box//2+1), got {power.shape}")
    return power, px


def _ranges(px: float, res_range_A: tuple[float, float], defocus_range_A: tuple[float, float],
            nominal_defocus_A: float | None, narrow_A: float | None) -> tuple[float, float, float, float]:
    """(low, high) resolution of the band (Å; high not beyond Nyquist) and (low, high) defocus searched (Å)."""
    lo_res, hi_res = float(max(res_range_A)), float(min(res_range_A))
    hi_res = max(hi_res, 2.0 * px * 1.0001)
    lo_df, hi_df = float(min(defocus_range_A)), float(max(defocus_range_A))
    if nominal_defocus_A is not None and narrow_A is not None:
        lo_df = max(lo_df, float(nominal_defocus_A) - float(narrow_A))
        hi_df = min(hi_df, float(nominal_defocus_A) + float(narrow_A))
        if hi_df < lo_df:
            raise ValueError("the narrowed defocus range lies outside defocus_range_A")
    return lo_res, hi_res, lo_df, hi_df


def defocus_1d(
    spectrum: PowerSpectrum, *, voltage_kV: float = 300.0, cs_mm: float = 2.7, amplitude_contrast: float = 0.1,
    defocus_range_A: tuple[float, float] = (5000.0, 80000.0), defocus_step_A: float = 500.0,
    res_range_A: tuple[float, float] = (30.0, 7.0), fit_phase: bool = False,
    phase_range_rad: tuple[float, float] = (0.0, math.pi), nominal_defocus_A: float | None = None,
    narrow_A: float | None = None, **_unused: Any,
) -> float:
    """The mean defocus (Å) of :func:`fit_ctf`'s 1D search alone (radial average, no 2D refinement): what
    :func:`estimate_ctf` rescales a tilted view's windows to. Arguments as :func:`fit_ctf` (others ignored)."""
    power, px = _power_and_pixel(spectrum, None)
    b = power.shape[0]
    lo_res, hi_res, lo_df, hi_df = _ranges(px, res_range_A, defocus_range_A, nominal_defocus_A, narrow_A)
    opt = _Optics.make(voltage_kV, cs_mm, amplitude_contrast)
    amp = np.sqrt(np.maximum(power, 0.0))
    return _fit_1d(amp, _Grid.make(b, px), opt, b * px / lo_res, b * px / hi_res, lo_df, hi_df,
                   float(defocus_step_A), fit_phase, phase_range_rad, (lo_res, hi_res))[0]


def _fit_1d(amp: np.ndarray, g: _Grid, opt: _Optics, r_lo: float, r_hi: float, lo_df: float, hi_df: float,
            step: float, fit_phase: bool, phase_range_rad: tuple[float, float], band_A: tuple[float, float]
            ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """The 1D exhaustive search of :func:`fit_ctf` on the radial average of ``amp`` (rfft layout) over the ring
    band ``r_lo..r_hi`` px: every defocus of the grid (``step`` Å) and phase at once, then the optimum refined
    between its neighbours. Returns ``(defocus Å, phase rad, grid defoci, best CC per defocus)``."""
    rr, prof = equiphase_profile(amp, g)
    band1 = (rr >= r_lo) & (rr <= r_hi)
    if band1.sum() < 8:
        raise ValueError(f"the band {band_A[0]:g}-{band_A[1]:g} Å covers fewer than 8 rings of the {g.box}-px "
                         "spectrum")
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
    return df1, ph1, defoci, curve


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
    seed_astigmatism: tuple[float, float] | None = None,
) -> CtfFit:
    """Fit defocus U/V, astigmatism angle (and optionally a phase shift) to an averaged power spectrum.

    ``spectrum``: a :class:`PowerSpectrum` or a (box, box//2+1) power array in the un-shifted rfft layout
    (then ``pixel_size_A`` is required). ``defocus_range_A`` / ``defocus_step_A``: the 1D exhaustive search
    of the mean defocus; with ``nominal_defocus_A`` and ``narrow_A`` the search is narrowed to
    ``nominal ± narrow`` (intersected with the range; the tutorial's tip). ``res_range_A`` = (low, high)
    resolution band of the fit in Å. ``astigmatism_guess_A``: the U − V used to seed the 2D refinement.
    ``seed_astigmatism``: a known astigmatism vector ``(a, b)`` Å (``((U−V)/2)(cos 2φ, sin 2φ)`` of a fit of the
    whole image, for its tiles): the background is subtracted with it, and one simplex started from it (or from
    none) refines once, instead of the 13 starts around the circle of ``astigmatism_guess_A`` and two passes.

    The fit is flagged ``failed`` (with ``reason``) when the 2D CC ``score < min_score`` or
    ``score · √N < min_significance`` (N band pixels: the score in units of the CC of pure noise),
    the defocus lies within one step of the search range's edge, the astigmatism exceeds
    ``max_astigmatism_A``, or no ring matches in the band (fit resolution worse than the band's low limit).
    """
    power, px = _power_and_pixel(spectrum, pixel_size_A)
    b = power.shape[0]
    lo_res, hi_res, lo_df, hi_df = _ranges(px, res_range_A, defocus_range_A, nominal_defocus_A, narrow_A)
    step = float(defocus_step_A)
    opt = _Optics.make(voltage_kV, cs_mm, amplitude_contrast)
    g = _Grid.make(b, px)
    amp = np.sqrt(np.maximum(power, 0.0))
    base = CtfFit(0.0, 0.0, 0.0, voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                  pixel_size_A=px, search_range_A=(lo_df, hi_df))

    # ---- 1D exhaustive search on the radial average ------------------------------------------------------
    r_lo, r_hi = b * px / lo_res, b * px / hi_res
    df1, ph1, defoci, curve = _fit_1d(amp, g, opt, r_lo, r_hi, lo_df, hi_df, step, fit_phase, phase_range_rad,
                                      (lo_res, hi_res))
    base.defocus_1d_A = df1
    base.search_defocus_A = defoci
    base.search_cc = curve

    # ---- 2D refinement of mean defocus, astigmatism vector (a, b) and phase ----------------------------------
    sel = (g.r_px >= r_lo) & (g.r_px <= r_hi)
    mean, a, bb, ph = df1, 0.0, 0.0, ph1
    h = 0.5 * float(astigmatism_guess_A)
    n_iter = 2
    if seed_astigmatism is not None:
        n_iter = 1  # the background of the only pass uses the known astigmatism
    for it in range(n_iter):
        bg = (float(seed_astigmatism[0]), float(seed_astigmatism[1])) if seed_astigmatism is not None else (a, bb)
        d = _subtract(amp, g, opt, mean, *bg)
        obj = _Objective(d, g, opt, sel)
        starts = [(mean, a, bb)]
        n_simplex = 1
        if it == 0 and seed_astigmatism is not None:
            sa, sb = float(seed_astigmatism[0]), float(seed_astigmatism[1])
            starts += [(mean + dm, sa, sb) for dm in (-0.25 * step, 0.0, 0.25 * step)]
        elif it == 0:
            n_simplex = 2
            for ang in (0.0, 45.0, 90.0, 135.0):
                t = math.radians(2 * ang)
                for dm in (-0.25 * step, 0.0, 0.25 * step):
                    starts.append((mean + dm, h * math.cos(t), h * math.sin(t)))
        scored = sorted(starts, key=lambda s: -obj.cc(s[0], s[1], s[2], ph))
        best_x, best_v = None, math.inf
        for s in scored[:n_simplex]:
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
    defocus_handedness: int = -1,
    tilt_mode: TiltMode = "rescale",
    max_offset_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    windows: WindowSpectra | None = None,
    **fit_kwargs: Any,
) -> tuple[CtfFit, PowerSpectrum]:
    """Estimate the CTF at the centre of one image (ny, nx) — the per-tilt entry point of both steps.

    Windows (:func:`window_spectra`, or the given ``windows`` of this image) → average → :func:`fit_ctf`. For a
    tilted image in ``tilt_mode "rescale"`` the plain average's 1D search (:func:`defocus_1d`, no 2D
    refinement) gives the defocus the windows are rescaled to, and the rescaled average gets the one full fit.
    ``fit_kwargs`` go to :func:`fit_ctf` (defocus_range_A, defocus_step_A, res_range_A, nominal_defocus_A,
    narrow_A, fit_phase, ...). Returns the fit and the spectrum it was made on (for the overlay).
    """
    w = windows if windows is not None else window_spectra(
        image, pixel_size_A=pixel_size_A, box=box, overlap=overlap, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg,
        defocus_handedness=defocus_handedness)
    optics = {"voltage_kV": voltage_kV, "cs_mm": cs_mm}
    mode = tilt_mode if abs(tilt_deg) > 1e-6 else "none"
    first_mode: TiltMode = "restrict" if mode == "restrict" else "none"
    spec = average_spectra(w, tilt_mode=first_mode, max_offset_A=max_offset_A, **optics)
    if mode == "rescale" and np.ptp(w.offsets_A) > 1.0:
        df0 = defocus_1d(spec, amplitude_contrast=amplitude_contrast, **optics, **fit_kwargs)
        spec = average_spectra(w, reference_defocus_A=df0, tilt_mode="rescale", **optics)
    fit = fit_ctf(spec, amplitude_contrast=amplitude_contrast, **optics, **fit_kwargs)
    return fit, spec


def estimate_ctf_two_pass(
    image: Any,
    *,
    pixel_size_A: float,
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = -1,
    tilt_mode: TiltMode = "rescale",
    max_offset_A: float = 500.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    **fit_kwargs: Any,
) -> tuple[CtfFit, PowerSpectrum]:
    """The first version of :func:`estimate_ctf` (a full fit of the plain average, rescaling to its defocus, a
    second full fit), kept as the reference of ``bench/ctffit.py --compare`` and of the tests."""
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
    defocus_handedness: int = -1,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    global_fit: CtfFit | None = None,
    tile_narrow_A: float | None = None,
    windows: WindowSpectra | None = None,
    **fit_kwargs: Any,
) -> CtfGridFit:
    """Defocus model grid (the tutorial's 2×2×1): fit the CTF in ``grid = (ny_tiles, nx_tiles)`` tiles and a
    defocus plane across the image.

    The global fit (:func:`estimate_ctf`, or ``global_fit``) sets the astigmatism prior and the tiles'
    search range: its mean defocus ± ``tile_narrow_A`` (default: the tilt's expected defocus spread over the
    image plus 2000 Å). Each tile uses windows of ``min(box, tile side)`` px. Tiles whose fit fails are
    reported but left out of the plane.

    ``windows``: this image's :func:`window_spectra` (as :func:`estimate_ctf` used them): a tile's spectrum is
    then the average of those windows that lie wholly inside it (no new transforms; a tile holding none gets its
    own windows). With a global fit that did not fail, each tile's 2D refinement starts from the global
    astigmatism (``seed_astigmatism`` of :func:`fit_ctf`).
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
    if not global_fit.failed and "seed_astigmatism" not in kw:
        half = 0.5 * global_fit.astigmatism_A
        two_phi = math.radians(2.0 * global_fit.astig_angle_deg)
        kw["seed_astigmatism"] = (half * math.cos(two_phi), half * math.sin(two_phi))
    ys = np.linspace(0, ny, gy + 1).round().astype(int)
    xs = np.linspace(0, nx, gx + 1).round().astype(int)
    fits: list[CtfFit] = []
    centres = []
    for iy in range(gy):
        for ix in range(gx):
            tile = img[ys[iy]:ys[iy + 1], xs[ix]:xs[ix + 1]]
            tb = int(min(box, tile.shape[0], tile.shape[1]))
            tb -= tb % 2
            spec = None
            if windows is not None and windows.box == tb and tuple(windows.image_shape) == (ny, nx):
                # windows wholly inside the tile (their first pixel from the centre: centre - (box - 1) / 2)
                x0w = windows.centres_px[:, 0] - (tb - 1) / 2.0
                y0w = windows.centres_px[:, 1] - (tb - 1) / 2.0
                inside = ((x0w >= xs[ix] - 0.01) & (x0w + tb <= xs[ix + 1] + 0.01)
                          & (y0w >= ys[iy] - 0.01) & (y0w + tb <= ys[iy + 1] + 0.01))
                if inside.any():
                    spec = PowerSpectrum(windows.spectra[inside].mean(axis=0), float(windows.pixel_size_A),
                                         int(inside.sum()), None, windows.tilt_deg)
            if spec is None:
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
# Tilt direction (hand) from the defocus gradient of tilted views
# --------------------------------------------------------------------------------------------------------

TiltDirectionVerdict = Literal["as given", "inverted", "undecided"]


@dataclass(frozen=True)
class TiltDirectionEvidence:
    """What one view says about the tilt direction (see :func:`check_tilt_direction`).

    ``cc_as_given`` / ``cc_inverted``: the CC of the view's windows with the CTF model (in the band of the fit)
    after rescaling them onto the centre defocus with the defocus gradient the geometry predicts, and with the
    opposite gradient (the axis turned by 180°); each at its best mean defocus near the first-pass fit.
    ``cc_flat``: the plain average (no gradient). ``spread_A``: the predicted defocus range over the window
    centres (Å). ``evidence = cc_as_given − cc_inverted`` (> 0:
    the data agree with the geometry). ``noise``: its spread from the noise of the data, the RMS of the same
    difference between ``n_null`` pairs of equally right patterns of the ``n_cells`` cells of windows (in every
    strip across the axis one half rescaled each way; NaN with fewer than two). The scores are those of
    equal-phase radial profiles (:class:`_DirectionProfiles`). ``used`` is False (with ``reason``) for views that
    cannot tell.
    """

    view: int
    tilt_deg: float
    cc_as_given: float = float("nan")
    cc_inverted: float = float("nan")
    cc_flat: float = float("nan")
    defocus_A: float = float("nan")
    spread_A: float = 0.0
    used: bool = False
    reason: str = ""
    noise: float = float("nan")
    n_cells: int = 0
    n_null: int = 0

    @property
    def evidence(self) -> float:
        return self.cc_as_given - self.cc_inverted


@dataclass
class TiltDirectionCheck:
    """Verdict of :func:`check_tilt_direction` for one tilt series.

    ``verdict``: "as given" (the defocus gradient across the tilted views has the sign the geometry
    predicts), "inverted" (the opposite sign: the tilt axis is 180° off, i.e. the tilt direction is
    inverted, or the camera's defocus handedness is the other one) or "undecided". ``z``: the combined z score of
    the per-view evidence over the ``n_views`` views used (> 0 supports "as given"; :func:`check_tilt_direction`);
    ``n_as_given`` / ``n_inverted``: how many of them lean each way; ``views``: every view's evidence.
    """

    verdict: TiltDirectionVerdict
    z: float
    n_views: int
    n_as_given: int
    n_inverted: int
    min_tilt_deg: float
    reason: str
    views: list[TiltDirectionEvidence] = field(default_factory=list)

    def metrics(self) -> dict[str, Any]:
        """JSON-friendly summary (for step metrics): verdict, z, counts and the per-view evidence."""
        def num(v: float) -> float | None:
            return round(float(v), 5) if math.isfinite(v) else None

        return {
            "verdict": self.verdict, "z": num(self.z), "n_views": self.n_views, "n_as_given": self.n_as_given,
            "n_inverted": self.n_inverted, "min_tilt_deg": self.min_tilt_deg, "reason": self.reason,
            "views": [{"view": e.view, "tilt_deg": round(e.tilt_deg, 2), "used": e.used,
                       "cc_as_given": num(e.cc_as_given), "cc_inverted": num(e.cc_inverted),
                       "cc_flat": num(e.cc_flat), "noise": num(e.noise), "spread_A": round(e.spread_A, 1),
                       "reason": e.reason}
                      for e in self.views],
        }


@dataclass
class TwoWayCtf:
    """One view's CTF spectra for both tilt directions (:func:`ctf_both_directions`).

    ``first_fit``: the fit on the plain average of the windows (the first pass of :func:`estimate_ctf`);
    ``spectrum_as_given``: the windows rescaled onto that fit's defocus with the geometry's defocus gradient (the
    plain average when the view is untilted or has a single window: ``rescaled`` False); ``evidence``: the view's
    :class:`TiltDirectionEvidence`. The spectrum with the opposite gradient, needed only when a series turns out
    inverted, is :func:`power_spectrum` with the corrected geometry and ``reference_defocus_A`` =
    ``first_fit.defocus_mean_A``.
    """

    first_fit: CtfFit
    plain: PowerSpectrum
    spectrum_as_given: PowerSpectrum
    rescaled: bool
    evidence: TiltDirectionEvidence


def _check_box(shape: tuple[int, int], box: int) -> int:
    """Window size for the direction check: at most ``box``, and small enough that the image holds at least
    three half-overlapping windows across (so windows at different defocus exist)."""
    b = int(min(box, min(shape) // 2))
    return max(64, b - b % 2)


class _DirectionProfiles:
    """Equal-phase radial profiles of cells of windows, rescaled onto one defocus with either gradient sign.

    The windows (:class:`WindowSpectra`) are grouped into cells of about the same predicted defocus offset (the
    rounding of :func:`average_spectra`) and the same half of the image along the tilt axis. Each cell's mean
    amplitude spectrum is averaged on rings of the equal-phase radius of the fit's astigmatism (¼-px steps);
    a hypothesis gives every cell a sign ``s_c`` (+1: the offset the geometry predicts, −1: the opposite one) and
    the cells' profiles, each resampled radially onto the rings of the reference defocus (``χ(k; ref + s_c o_c) =
    χ(k'; ref)``, the 1D form of :func:`_rescale_spectrum`), are averaged. Its score is the CC of the
    background-subtracted profile with the filtered model ``sin²(χ + α)`` (as the 1D search of :func:`fit_ctf`) in
    the band, at the best mean defocus of a small grid. The band stops where the rings of ``CTF²`` come closer
    than 3 px in the spectrum (beyond, a box this small cannot tell the two gradients apart).
    """

    STEP = 0.25

    def __init__(self, w: WindowSpectra, fit: CtfFit, *, res_range_A: tuple[float, float], voltage_kV: float,
                 cs_mm: float, amplitude_contrast: float, search_A: float) -> None:
        b, px = w.box, w.pixel_size_A
        g = _Grid.make(b, px)
        self.opt = _Optics.make(voltage_kV, cs_mm, amplitude_contrast)
        self.ref = ref = max(fit.defocus_mean_A, 1000.0)
        half = 0.5 * (fit.defocus_u_A - fit.defocus_v_A)
        t = math.radians(2.0 * fit.astig_angle_deg)
        a_, b_ = half * math.cos(t), half * math.sin(t)
        r_eq = g.equiphase_r_px(ref, a_, b_) if half else g.r_px
        nb = int(round((b // 2) / self.STEP)) + 1
        idx = np.rint(r_eq / self.STEP).astype(np.int64).ravel()
        ok = idx < nb
        cnt = np.bincount(idx[ok], minlength=nb).astype(np.float64)
        self.r = np.arange(nb) * self.STEP  # px of the box
        self.k2 = (self.r / (b * px)) ** 2
        has = cnt > 0
        # cells: the rounding of average_spectra × two halves along the axis
        offs = w.offsets_A
        keys = np.round(offs / max(25.0, 0.0025 * ref)).astype(np.int64)
        th = math.radians(w.tilt_axis_deg)
        cy, cx = (w.image_shape[0] - 1) / 2.0, (w.image_shape[1] - 1) / 2.0
        along = -(w.centres_px[:, 0] - cx) * math.sin(th) + (w.centres_px[:, 1] - cy) * math.cos(th)
        half_along = (along > 0.5 * (along.min() + along.max())).astype(np.int64)
        cell_ids = np.unique(np.stack([keys, half_along], 1), axis=0)
        profiles, cell_offs, counts, halves = [], [], [], []
        for key, hk in cell_ids:
            sel = (keys == key) & (half_along == hk)
            halves.append(int(hk))
            amp = np.sqrt(np.maximum(w.spectra[sel].mean(axis=0).astype(np.float64), 0.0)).ravel()
            tot = np.bincount(idx[ok], weights=amp[ok], minlength=nb)
            prof = np.zeros(nb)
            prof[has] = tot[has] / cnt[has]
            profiles.append(np.interp(self.r, self.r[has], prof[has]))
            cell_offs.append(float(offs[sel].mean()))
            counts.append(int(sel.sum()))
        self.profiles = np.asarray(profiles)
        self.offsets = np.asarray(cell_offs)
        self.weights = np.asarray(counts, dtype=np.float64) / float(sum(counts))
        self.halves = np.asarray(halves, dtype=np.int64)
        # strips across the axis (up to 8, by offset) for the null patterns
        n_strips = int(min(8, len(np.unique(keys))))
        edges = np.quantile(offs, np.linspace(0.0, 1.0, n_strips + 1)[1:-1]) if n_strips > 1 else np.zeros(0)
        self.strips = np.searchsorted(edges, self.offsets, side="right")
        # each cell's profile resampled for +offset and −offset (rows: cells)
        self.plus = np.stack([self._resampled(p, o) for p, o in zip(self.profiles, self.offsets, strict=True)])
        self.minus = np.stack([self._resampled(p, -o) for p, o in zip(self.profiles, self.offsets, strict=True)])
        lo_res = float(max(res_range_A))
        k_max = b * px / (6.0 * self.opt.lam * ref)
        self.hi_res_A = max(float(min(res_range_A)), 2.0 * px * 1.0001, 1.0 / k_max)
        self.band = (self.r >= b * px / lo_res) & (self.r <= b * px / self.hi_res_A) & (self.r >= 3.0)
        self.phase = fit.phase_shift_rad
        self.models = []
        for m in ref + np.linspace(-search_A, search_A, 9):
            per = self.opt.period_k2(self.k2, float(m))
            model = np.sin(self.opt.chi_iso(self.k2, float(m), self.phase) + self.opt.alpha) ** 2
            mm = (model - _running_mean_k2(self.k2, model, per))[self.band]
            mm = mm - mm.mean()
            self.models.append((per, mm / (np.sqrt(mm @ mm) or 1.0)))

    @property
    def n_cells(self) -> int:
        return len(self.offsets)

    def _resampled(self, prof: np.ndarray, offset_A: float) -> np.ndarray:
        if abs(offset_A) < 1.0:
            return prof
        c = 0.5 * math.pi * self.opt.cs_A * self.opt.lam**3
        a1 = math.pi * self.opt.lam * (self.ref + offset_A)
        q = math.pi * self.opt.lam * self.ref * self.k2 - c * self.k2 * self.k2
        k2 = 2.0 * q / (a1 + np.sqrt(np.maximum(a1 * a1 - 4.0 * c * q, 0.0)))
        r_src = np.sqrt(np.maximum(k2, 0.0)) / np.sqrt(np.maximum(self.k2, 1e-30)) * self.r
        r_src[0] = 0.0
        return np.interp(r_src, self.r, prof)

    def score(self, profile: np.ndarray) -> float:
        y = profile.copy()
        y[self.r < 3.0] = y[self.r >= 3.0][0]
        best = -1.0
        for per, mm in self.models:
            d = (y - _running_mean_k2(self.k2, y, per))[self.band]
            d = d - d.mean()
            best = max(best, float(mm @ d) / (math.sqrt(float(d @ d)) or 1.0))
        return best

    def combined(self, signs: np.ndarray) -> np.ndarray:
        """The cells' profiles rescaled with offset × ``signs`` (n_cells,) and averaged."""
        pick = np.where(np.asarray(signs)[:, None] > 0, self.plus, self.minus)
        return self.weights @ pick

    def flat(self) -> np.ndarray:
        return self.weights @ self.profiles

    def null_patterns(self, n: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Up to ``n`` distinct sign patterns with, in every strip across the axis, one half (along the axis)
        rescaled the geometry's way and the other half the opposite way: both a pattern and its complement hold
        as much of the true gradient, so their score difference is noise only. Empty when the cells do not span
        both halves of at least two strips."""
        strips = np.unique(self.strips)
        both = [q for q in strips if len(np.unique(self.halves[self.strips == q])) == 2]
        if len(both) < 2:
            return []
        n_distinct = 2 ** (len(strips) - 1)
        seen: set[tuple[int, ...]] = set()
        out = []
        for _ in range(8 * n):
            bits = rng.integers(0, 2, len(strips))
            bits = bits if bits[0] == 0 else 1 - bits  # a pattern and its complement give ± the same difference
            key = tuple(int(b) for b in bits)
            if key in seen:
                continue
            seen.add(key)
            bit_of = dict(zip(strips.tolist(), bits.tolist(), strict=True))
            out.append(np.array([1.0 if h == bit_of[q] else -1.0 for q, h in zip(self.strips, self.halves,
                                                                                 strict=True)]))
            if len(out) >= min(n, n_distinct):
                break
        return out


def ctf_both_directions(
    image: Any,
    *,
    pixel_size_A: float,
    box: int = 512,
    overlap: float = 0.5,
    tilt_deg: float = 0.0,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = -1,
    view: int = 0,
    min_tilt_deg: float = 20.0,
    check_box: int | None = None,
    n_null: int = 24,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    **fit_kwargs: Any,
) -> TwoWayCtf:
    """The first pass of :func:`estimate_ctf` on one view (ny, nx), its windows rescaled with the geometry's
    gradient, and the view's evidence on the tilt direction.

    ``fit_kwargs`` go to :func:`fit_ctf` (defocus_range_A, res_range_A, ...). The second pass is
    ``fit_ctf(result.spectrum_as_given, ...)`` once the series' direction is known to be as given: exactly
    :func:`estimate_ctf`'s. The evidence (views with ``|tilt_deg| ≥ min_tilt_deg`` and a first fit that did not
    fail) uses windows of ``check_box`` px (default: ``box``, reduced so that at least three half-overlapping
    windows fit across the image), the band ``fit_kwargs["res_range_A"]`` and ``n_null`` pairs of equally right
    sign patterns for its noise.
    """
    optics = {"voltage_kV": voltage_kV, "cs_mm": cs_mm}
    h = int(defocus_handedness)
    w = window_spectra(image, pixel_size_A=pixel_size_A, box=box, overlap=overlap, tilt_deg=tilt_deg,
                       tilt_axis_deg=tilt_axis_deg, defocus_handedness=h)
    plain = average_spectra(w, tilt_mode="none")
    first = fit_ctf(plain, amplitude_contrast=amplitude_contrast, **optics, **fit_kwargs)
    tilted = abs(tilt_deg) > 1e-6
    rescaled = tilted and float(np.ptp(w.offsets_A)) > 1.0
    given = (average_spectra(w, reference_defocus_A=first.defocus_mean_A, tilt_mode="rescale", **optics)
             if rescaled else plain)
    ev = TiltDirectionEvidence(view=int(view), tilt_deg=float(tilt_deg), defocus_A=first.defocus_mean_A)
    if abs(tilt_deg) < min_tilt_deg:
        ev = _replace_ev(ev, reason=f"|tilt| < {min_tilt_deg:g}°")
    elif first.failed:
        ev = _replace_ev(ev, reason=f"CTF fit failed ({first.reason})")
    else:
        img = np.asarray(to_numpy(image))
        cb = _check_box(img.shape[-2:], box if check_box is None else check_box)
        wc = w if cb == w.box else window_spectra(img, pixel_size_A=pixel_size_A, box=cb, overlap=overlap,
                                                  tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg,
                                                  defocus_handedness=h)
        spread = float(np.ptp(wc.offsets_A))
        if spread <= 1.0:
            ev = _replace_ev(ev, reason="a single window: no defocus gradient to measure")
        else:
            prof = _DirectionProfiles(wc, first, res_range_A=fit_kwargs.get("res_range_A", (30.0, 7.0)),
                                      voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                                      search_A=max(200.0, 0.25 * spread))
            ones = np.ones(prof.n_cells)
            cg, ci, cf = prof.score(prof.combined(ones)), prof.score(prof.combined(-ones)), prof.score(prof.flat())
            # the evidence's noise: the same difference between patterns that are equally right (in every strip
            # across the axis one half rescaled each way), i.e. from the noise of the data alone
            null = [prof.score(prof.combined(p_)) - prof.score(prof.combined(-p_))
                    for p_ in prof.null_patterns(n_null, np.random.default_rng(int(view) + 1))]
            noise = float(np.sqrt(np.mean(np.square(null)))) if len(null) >= 2 else float("nan")
            ev = _replace_ev(ev, cc_as_given=cg, cc_inverted=ci, cc_flat=cf, spread_A=spread, used=True,
                             noise=noise, n_cells=prof.n_cells, n_null=len(null))
    return TwoWayCtf(first, plain, given, rescaled, ev)


def _replace_ev(ev: TiltDirectionEvidence, **changes: Any) -> TiltDirectionEvidence:
    from dataclasses import replace

    return replace(ev, **changes)


def check_tilt_direction(
    evidence: Any,
    *,
    min_tilt_deg: float = 20.0,
    z_threshold: float = 4.0,
    min_views: int = 4,
    min_agreement: float = 0.75,
) -> TiltDirectionCheck:
    """Is the tilt direction of a series as its geometry says? The verdict from the views' evidence.

    ``evidence``: the :class:`TiltDirectionEvidence` of the views (:func:`ctf_both_directions`); views with
    ``used`` set and ``|tilt| ≥ min_tilt_deg`` count. Each view's evidence ``e_i = cc_as_given − cc_inverted`` is
    divided by its noise ``σ_i`` (the view's own ``noise`` from equally right sign patterns, shrunk towards the
    median over the views: ``σ_i² = (ν s_i² + 4 s₀²) / (ν + 4)`` with ``ν = n_null``; views without one use
    ``s₀``), clipped to ±10 so that no single view decides, and combined as
    Stouffer's
    ``z = Σ z_i / √n``; with fewer than two noise estimates ``z`` is the t statistic ``mean(e) / (sd(e) / √n)``.
    The verdict is "as given" when ``z ≥ z_threshold`` and at least ``min_agreement`` of the views have
    ``e_i > 0``, "inverted" when ``z ≤ −z_threshold`` and as many have ``e_i < 0``, and "undecided" otherwise or
    with fewer than ``min_views`` views.

    **Why the defocus gradient tells the direction.** A view with true tilt β, read with tilt axis θ, puts a
    specimen mid-plane point at the distance ``x⊥ = (x − c_x) cos θ + (y − c_y) sin θ`` (px) from the axis at the
    depth ``−x⊥ tan β``, so its defocus is ``Δf − h tan β x⊥ · pixel`` (module docstring; ``h`` the record's
    ``defocus_handedness``). The axis θ + 180° with the same tilts projects the point-inverted specimen equally well
    (alignment cannot tell them apart; the tomogram is the mirror image), but predicts the opposite gradient;
    the Thon rings of the tilted views measure the true one. Rescaling the windows with the right gradient makes
    the rings sharper than with the wrong one (which doubles the smear of a plain average): ``cc_as_given >
    cc_inverted`` (AreTomo3's test, ``FindCtf/CRefineCtfMain.cpp::mFindHandedness``, scores both handednesses
    the same way, on 2D spectra).

    **Conventions of real instruments and programs** (what "inverted" means for real data). The data fix only
    the product of the axis direction and the defocus handedness ``h``, i.e. which side of a view is more
    underfocused at positive tilt; which ``h`` goes with the correctly handed geometry depends on whether the
    image, as read, is a mirror image of the specimen seen along the beam (a camera read-out flip, or TIFF rows read
    top-down where IMOD reads them bottom-up), so programs differ. tomoguide reads every format in IMOD's frame
    (MRC rows as stored, TIFF and EER rows flipped in Y: :mod:`tomoguide.compute.io.movies`), the frame SerialEM's
    mdoc axis refers to, and defaults to ``h = −1`` (record and simulator), as IMOD and RELION:

    * **IMOD** (ctfphaseflip.cpp: strip defocus ``= defocus − (nx/2 − x) · pixel · tan β``, "the right side of an
      aligned image is both lower in the scope and at a higher underfocus"; ctfplotter/ctfphaseflip option
      ``InvertTiltAngles``: "to compensate for a left-handed coordinate system in the microscope … when the sign of
      the tilt angles and the tilt axis rotation angle are such that reconstructions are generated with inverted
      handedness") expects, for correctly handed SerialEM data, the aligned image's +X side more underfocused at
      positive tilt: ``h = −1`` here. So does **RELION 5** (``Tomogram::getCtf``: ``Δf += rlnTomoHand · pixel ·
      depth`` with the projection model of geometry.py; its import defaults to ``rlnTomoHand = −1``,
      ``pipeline_jobs.cpp``: "the same as the tutorial dataset: EMPIAR-10164" (MRC frames, mdoc axis 85.3°);
      ``import_tomograms``: "In our experiments, it has always been −1"), and WarpTools' export (``GetRelionHand``:
      −1 unless ``AreAnglesInverted``; both real RELION 5 STAR files in ``shared/data`` have −1).
    * **AreTomo3** (``FindCtf/CTiltInducedZ.cpp``: ``Δz = −x_rot tan α``, the same depth as here;
      ``CGenAvgSpectrum.cpp``: tile defocus ``= centre + Δz · pixel · hand``) keeps ``hand = +1`` ("z points to the
      electron source … positive tilt makes the particle with positive Δx less defocused", ``CAreTomoMain.cpp``) and,
      since 2.0.5/2.0.6, turns the tilt axis by 180° when the CTF says −1. Its axis is IMOD's (its ``.xf`` writer,
      ``ImodUtil/CSaveXF.cpp``, puts ``A = R(−ROT)``), so on the same stack AreTomo3 and IMOD disagree on ``h``.
    * **Warp/WarpTools** (``ts_defocus_hand``) correlates the 2×2-grid defocus gradients with the geometry's and,
      when negative, flips only the sign used for defocus (``AreAnglesInverted``), keeping the geometry: "SerialEM is
      usually calibrated to produce the correct map handedness in IMOD's 3D reconstructions, [but] the defocus
      convention has about a 50:50 chance of being wrong across labs". Warp reads TIFF movies flipped in Y "to adhere
      to MRC convention" (``TiffNative.cpp``, ``flipy = true``) but EER movies unflipped, like RELION. Its tutorial
      on EMPIAR-10491 (TIFF movies, mdoc axis −93.5°, ``gain_ref.mrc`` with ``--gain_flip_y``) imports with
      ``--dont_invert``, gives AreTomo ``--initial_axis -85.6`` and the check says "no flip"; −85.6° is close to
      180° − (−93.5°) − 360° = −86.5°, the axis a Y mirror of the mdoc's frame would show, but since Warp's TIFF
      frame is IMOD's, the sources do not explain that difference (frames saved in the camera's native orientation,
      or Warp's own tilt-angle convention, would), so it is no evidence for either ``h``.
    * **CTFFIND5** (``CTFTilt``: defocus ``= Δf + y_rot · tan(tilt)`` searched over tilt axes 0-360° and tilts
      0-80°) measures the direction of the gradient of one image without any tilt-series geometry, so it has no
      handedness convention to compare.

    So "inverted" means: the data disagree with the record's axis *and* ``h``. Turning the axis by 180° (the
    default of the ctf_estimate step, as AreTomo3) is right when ``h`` is right for the way the images were read;
    where the SerialEM geometry is known to give the right hand, flipping ``h`` instead (Warp) is the right fix.
    """
    views = list(evidence)
    used = [e for e in views if e.used and abs(e.tilt_deg) >= min_tilt_deg and math.isfinite(e.evidence)]
    n = len(used)
    e = np.array([u.evidence for u in used], dtype=np.float64)
    n_pos, n_neg = int((e > 0).sum()), int((e < 0).sum())
    if n < max(2, min_views):
        return TiltDirectionCheck("undecided", float("nan"), n, n_pos, n_neg, min_tilt_deg,
                                  f"only {n} tilted view(s) with |tilt| ≥ {min_tilt_deg:g}° and a CTF fit "
                                  f"(at least {max(2, min_views)} needed)", views)
    noise = np.array([u.noise for u in used], dtype=np.float64)
    has = np.isfinite(noise) & (noise > 0)
    if has.sum() >= 2:
        s0 = float(np.sqrt(np.median(noise[has] ** 2)))
        nu = np.array([u.n_null for u in used], dtype=np.float64)
        var = np.where(has, (nu * np.where(has, noise, 0.0) ** 2 + 4.0 * s0**2) / (nu + 4.0), s0**2)
        z = float(np.clip(e / np.sqrt(var), -10.0, 10.0).sum() / math.sqrt(n))
    else:
        mean, sd = float(e.mean()), float(e.std(ddof=1))
        z = mean / (sd / math.sqrt(n)) if sd > 0 else math.copysign(math.inf, mean) if mean else 0.0
    need = math.ceil(min_agreement * n - 1e-9)
    counts = f"{n_pos} of {n} views with |tilt| ≥ {min_tilt_deg:g}° agree with the geometry, {n_neg} with the " \
             f"axis turned by 180° (z = {z:+.1f})"
    if z >= z_threshold and n_pos >= need:
        verdict: TiltDirectionVerdict = "as given"
    elif z <= -z_threshold and n_neg >= need:
        verdict = "inverted"
    else:
        verdict = "undecided"
    return TiltDirectionCheck(verdict, z, n, n_pos, n_neg, min_tilt_deg, counts, views)


def check_tilt_direction_images(
    images: Any,
    tilts_deg: Any,
    *,
    pixel_size_A: float,
    tilt_axis_deg: float,
    defocus_handedness: int = -1,
    box: int = 512,
    min_tilt_deg: float = 20.0,
    z_threshold: float = 4.0,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    **fit_kwargs: Any,
) -> TiltDirectionCheck:
    """:func:`check_tilt_direction` on a stack of views (n, ny, nx) with their true tilts (n,) degrees: each view
    with ``|tilt| ≥ min_tilt_deg`` is fitted (first pass) and scored both ways by :func:`ctf_both_directions`."""
    t = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    ev = []
    for i, tilt in enumerate(t):
        if abs(tilt) < min_tilt_deg:
            ev.append(TiltDirectionEvidence(view=i, tilt_deg=float(tilt), reason=f"|tilt| < {min_tilt_deg:g}°"))
            continue
        two = ctf_both_directions(images[i], pixel_size_A=pixel_size_A, box=box, tilt_deg=float(tilt),
                                  tilt_axis_deg=tilt_axis_deg, defocus_handedness=defocus_handedness, view=i,
                                  min_tilt_deg=min_tilt_deg, voltage_kV=voltage_kV, cs_mm=cs_mm,
                                  amplitude_contrast=amplitude_contrast, **fit_kwargs)
        ev.append(two.evidence)
    return check_tilt_direction(ev, min_tilt_deg=min_tilt_deg, z_threshold=z_threshold)


# --------------------------------------------------------------------------------------------------------
# Display
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CtfProfile:
    """CTFFIND's 1D diagnostic of one fit (its "rotational average" plot), all (n,) float64 over ``k_per_A``:

    ``k_per_A`` spatial frequency (Å⁻¹, ring r of the box at ``r / (box · pixel)``, 0 … Nyquist); ``measured``
    the background-subtracted amplitude spectrum averaged on rings of equal CTF phase (the astigmatism taken out,
    as CTFFIND's equiphase average), given the model's mean and spread over the fitted band; ``model`` the
    fitted ``CTF²`` on those rings (0 … 1); ``ring_cc`` the fit quality per ring: the CC between data and model
    in a sliding window of three ring periods (NaN below the band's low limit), the curve whose drop below 0.3
    sets the fit resolution. ``band_per_A`` (low, high) the fitted band; ``fit_resolution_A`` from the fit.
    """

    k_per_A: np.ndarray
    measured: np.ndarray
    model: np.ndarray
    ring_cc: np.ndarray
    band_per_A: tuple[float, float]
    fit_resolution_A: float

    def correlation(self, k_range_per_A: tuple[float, float] | None = None) -> float:
        """Pearson CC of ``measured`` and ``model`` over ``k_range_per_A`` (default: the band)."""
        lo, hi = k_range_per_A or self.band_per_A
        sel = (self.k_per_A >= lo) & (self.k_per_A <= hi)
        if sel.sum() < 3:
            return float("nan")
        return float(np.corrcoef(self.measured[sel], self.model[sel])[0, 1])


def ctf_profile_1d(spectrum: PowerSpectrum | np.ndarray, fit: CtfFit, *, pixel_size_A: float | None = None,
                   res_range_A: tuple[float, float] = (30.0, 7.0)) -> CtfProfile:
    """The 1D profile of an averaged power spectrum against its fitted CTF, with the fit quality per ring.

    ``spectrum``: the :class:`PowerSpectrum` the fit was made on (or an rfft-layout power array with
    ``pixel_size_A``); ``fit``: its :class:`CtfFit` (defocus, astigmatism, phase shift and optics are read from
    it); ``res_range_A``: the fitted band (low, high) in Å, over which the measured profile gets the model's
    mean and standard deviation (its sign is kept: data out of phase with the model stay so).
    The background is the one the fit used (a running mean over one ring period, on rings of equal phase), so
    the profile oscillates about zero before scaling. See :class:`CtfProfile`."""
    power, px = _power_and_pixel(spectrum, pixel_size_A)
    b = power.shape[0]
    g = _Grid.make(b, px)
    opt = _Optics.make(fit.voltage_kV, fit.cs_mm, fit.amplitude_contrast)
    half = 0.5 * (fit.defocus_u_A - fit.defocus_v_A)
    t = math.radians(2.0 * fit.astig_angle_deg)
    a, bb = half * math.cos(t), half * math.sin(t)
    mean = fit.defocus_mean_A
    amp = np.sqrt(np.maximum(power, 0.0))
    d = _subtract(amp, g, opt, mean, a, bb)
    rr, prof = equiphase_profile(d, g, mean, a, bb)
    k = rr / (b * px)
    model = np.sin(opt.chi_iso(k * k, mean, fit.phase_shift_rad) + opt.alpha) ** 2
    lo_res, hi_res = float(max(res_range_A)), float(min(res_range_A))
    band = (1.0 / lo_res, 1.0 / max(hi_res, 2.0 * px))
    r_lo = b * px / lo_res
    ring_k, ring_cc = _ring_cc(d, g, opt, mean, a, bb, fit.phase_shift_rad, r_lo)
    cc = np.full(k.shape, np.nan)
    cc[rr >= r_lo] = ring_cc[: int((rr >= r_lo).sum())]
    sel = (k >= band[0]) & (k <= band[1])
    measured = prof.copy()
    if sel.sum() >= 3 and float(np.std(prof[sel])) > 0:
        # the same mean and spread as the model over the band (a least-squares fit would shrink noisy data by
        # their CC and hide them); the sign is never flipped, so a failed fit shows as data out of phase
        measured = float(model[sel].mean()) + (prof - float(prof[sel].mean())) * (
            float(model[sel].std()) / float(prof[sel].std()))
    return CtfProfile(k_per_A=k, measured=measured, model=model, ring_cc=cc, band_per_A=band,
                      fit_resolution_A=float(fit.fit_resolution_A))



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
