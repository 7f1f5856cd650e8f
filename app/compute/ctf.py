"""Contrast transfer function (CTF) of a transmission electron microscope, shared by the simulator, CTF
fitting and CTF correction.

Conventions (those of RELION and CTFFIND4):

* **Defocus** in Å, **positive = underfocus**. ``defocus_u_A >= defocus_v_A`` by convention (a caller
  that passes them the other way round gets the same CTF: the formula is symmetric under swapping U/V
  together with a 90° turn of the angle; :func:`normalise_astigmatism` puts a triple in canonical form).
* **Astigmatism angle** ``astig_angle_deg``: angle of the U axis (the direction of largest defocus),
  measured from the image X axis (array columns) towards the image Y axis (array rows),
  counter-clockwise when the image is displayed with Y upwards. Defocus in direction θ of the spatial
  frequency is ``Δf(θ) = ½[(Δf_u + Δf_v) + (Δf_u − Δf_v) cos 2(θ − θ_ast)]``.
* **Phase**: ``χ(k) = π λ Δf(θ) k² − ½ π Cs λ³ k⁴ + φ`` (``φ`` = additional phase shift, e.g. a phase
  plate, in radians), with ``k`` the spatial frequency in Å⁻¹, ``λ`` the relativistic electron
  wavelength in Å and ``Cs`` in Å (converted from mm).
* **CTF** ``= −[√(1 − A²) sin χ + A cos χ]`` with amplitude contrast ``A``. With this sign a weak-phase
  image ``I = 1 + 2·FT⁻¹[σ V̂ · CTF]`` of a positive projected potential ``V`` is dark at low frequency in
  underfocus (particles dark on a bright background, as in real cryo-EM images).
* **Frequencies** come from the backend's FFT (``fftfreq`` / ``rfftfreq``) in the layout of an
  un-shifted FFT: for ``shape = (ny, nx)`` the array ``ctf[iy, ix]`` belongs to ``k_y = fftfreq(ny)[iy]``,
  ``k_x = fftfreq(nx)[ix]`` (divided by the pixel size); with ``rfft=True`` the last axis has
  ``nx // 2 + 1`` entries (``rfftfreq``), matching ``rfft2``.

The array module is numpy unless ``xp`` (``numpy`` or ``cupy``) is given; the arithmetic is float64 for
the frequencies and the returned dtype is ``float32`` unless ``dtype`` says otherwise.

References: Mindell & Grigorieff 2003 (CTFFIND3); Rohou & Grigorieff 2015 (CTFFIND4), J. Struct. Biol.
192:216; RELION's ``CTF::getCTF``.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from tomoguide.compute.backend import fft as _fft

# Physical constants (CODATA 2018).
_H = 6.62607015e-34  # J s
_M0 = 9.1093837015e-31  # kg
_E = 1.602176634e-19  # C
_C = 299792458.0  # m/s


def electron_wavelength_A(voltage_kV: float) -> float:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV.

    ``λ = h / sqrt(2 m0 e V (1 + e V / (2 m0 c²)))``; 300 kV → 0.019687 Å, 200 kV → 0.025079 Å.
    """
    v = float(voltage_kV) * 1e3
    if v <= 0:
        raise ValueError(f"voltage_kV must be positive, got {voltage_kV}")
    lam_m = _H / math.sqrt(2.0 * _M0 * _E * v * (1.0 + _E * v / (2.0 * _M0 * _C**2)))
    return lam_m * 1e10


def interaction_constant_rad_per_VA(voltage_kV: float) -> float:
    """Interaction constant σ in rad/(V·Å): phase shift per unit projected potential.

    ``σ = 2π m e λ / h²`` with the relativistic mass ``m = m0 + eV/c²`` (Kirkland, "Advanced Computing in
    Electron Microscopy", eq. 5.6). 300 kV → 0.000653 rad/(V·Å).
    """
    v = float(voltage_kV) * 1e3
    lam_m = electron_wavelength_A(voltage_kV) * 1e-10
    m = _M0 + _E * v / _C**2
    sigma_per_Vm = 2.0 * math.pi * m * _E * lam_m / _H**2
    return sigma_per_Vm * 1e-10


def normalise_astigmatism(
    defocus_u_A: float, defocus_v_A: float, astig_angle_deg: float
) -> tuple[float, float, float]:
    """Canonical (U, V, angle) with ``U >= V`` and the angle in (-90°, 90°]; the same CTF."""
    u, v, a = float(defocus_u_A), float(defocus_v_A), float(astig_angle_deg)
    if u < v:
        u, v, a = v, u, a + 90.0
    a = (a + 90.0) % 180.0 - 90.0
    if a == -90.0:
        a = 90.0
    return u, v, a


def defocus_at_angle(
    theta_rad: Any, defocus_u_A: float, defocus_v_A: float, astig_angle_deg: float, xp: ModuleType = np
) -> Any:
    """Defocus in Å in the frequency direction ``theta_rad`` (from image X, counter-clockwise)."""
    mean = 0.5 * (defocus_u_A + defocus_v_A)
    half = 0.5 * (defocus_u_A - defocus_v_A)
    return mean + half * xp.cos(2.0 * (theta_rad - math.radians(astig_angle_deg)))


def chi(
    k_x: Any,
    k_y: Any,
    defocus_u_A: float,
    defocus_v_A: float,
    astig_angle_deg: float,
    cs_mm: float,
    wavelength_A: float,
    phase_shift_rad: float = 0.0,
) -> Any:
    """Phase aberration χ (radians) at spatial frequencies ``(k_x, k_y)`` in Å⁻¹ (arrays that broadcast).

    ``χ = π λ Δf(θ) k² − ½ π Cs λ³ k⁴ + phase_shift`` with θ = atan2(k_y, k_x); see the module docstring.
    """
    from tomoguide.compute.backend import xp_of

    xp = xp_of(k_x, k_y)
    k2 = k_x * k_x + k_y * k_y
    theta = xp.arctan2(k_y, k_x)
    df = defocus_at_angle(theta, defocus_u_A, defocus_v_A, astig_angle_deg, xp)
    cs_A = cs_mm * 1e7
    lam = wavelength_A
    return math.pi * lam * df * k2 - 0.5 * math.pi * cs_A * lam**3 * k2 * k2 + phase_shift_rad


def frequency_grid(
    shape: tuple[int, int], pixel_size_A: float, *, rfft: bool = False, xp: ModuleType = np
) -> tuple[Any, Any]:
    """``(k_x, k_y)`` in Å⁻¹ for an un-shifted 2D FFT of ``shape = (ny, nx)`` (broadcastable, float64).

    ``k_y`` has shape ``(ny, 1)``, ``k_x`` shape ``(1, nx)`` (or ``(1, nx//2+1)`` with ``rfft=True``).
    """
    ny, nx = int(shape[0]), int(shape[1])
    f = _fft(xp)
    ky = xp.asarray(f.fftfreq(ny, d=pixel_size_A))[:, None]
    kx = xp.asarray(f.rfftfreq(nx, d=pixel_size_A) if rfft else f.fftfreq(nx, d=pixel_size_A))[None, :]
    return kx, ky


def ctf_2d(
    shape: tuple[int, int],
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    astig_angle_deg: float,
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
    rfft: bool = False,
    xp: ModuleType | None = None,
    dtype: Any = np.float32,
) -> Any:
    """The CTF on the un-shifted FFT grid of an image of ``shape = (ny, nx)`` pixels.

    Returns an array ``(ny, nx)`` (or ``(ny, nx//2+1)`` with ``rfft=True``) of ``dtype`` on module ``xp``
    (default numpy), with ``CTF = −[√(1−A²) sin χ + A cos χ]``; ``CTF[0, 0] = −A``.
    """
    xp = np if xp is None else xp
    kx, ky = frequency_grid(shape, pixel_size_A, rfft=rfft, xp=xp)
    c = chi(kx, ky, defocus_u_A, defocus_v_A, astig_angle_deg, cs_mm,
            electron_wavelength_A(voltage_kV), phase_shift_rad)
    a = float(amplitude_contrast)
    out = -(math.sqrt(1.0 - a * a) * xp.sin(c) + a * xp.cos(c))
    return out.astype(dtype, copy=False)


def ctf_1d(
    k_A: Any,
    defocus_A: float,
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
) -> Any:
    """Rotationally symmetric CTF at spatial frequencies ``k_A`` (Å⁻¹) for defocus ``defocus_A``."""
    k = np.asarray(k_A, dtype=np.float64)
    c = chi(k, np.zeros_like(k), defocus_A, defocus_A, 0.0, cs_mm,
            electron_wavelength_A(voltage_kV), phase_shift_rad)
    a = float(amplitude_contrast)
    return -(math.sqrt(1.0 - a * a) * np.sin(c) + a * np.cos(c))


def ctf_zeros_A(
    n: Any,
    defocus_A: float,
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
) -> Any:
    """Spatial frequency (Å⁻¹) of the ``n``-th zero (n = 1, 2, ...) of the rotationally symmetric CTF.

    The CTF vanishes where ``χ + α = m π`` with ``α = atan(A / √(1−A²))`` (integer m). With χ increasing
    from ``phase_shift`` at k = 0 (underfocus, below the Scherzer turning point), the n-th zero is the
    n-th root ``m = n + floor((φ + α)/π)``; the quadratic in ``k²``
    ``½ π Cs λ³ k⁴ − π λ Δf k² + (m π − φ − α) = 0`` gives
    ``k² = [Δf − √(Δf² − 2 Cs λ (m − (φ+α)/π))] / (Cs λ²)``. Returns NaN where the zero does not exist
    (past the turning point of χ). Accepts an integer or an integer array ``n``.
    """
    lam = electron_wavelength_A(voltage_kV)
    cs_A = cs_mm * 1e7
    a = float(amplitude_contrast)
    alpha = math.atan2(a, math.sqrt(1.0 - a * a))
    offset = (phase_shift_rad + alpha) / math.pi
    n_arr = np.asarray(n, dtype=np.float64)
    m = n_arr + np.floor(offset)
    disc = defocus_A**2 - 2.0 * cs_A * lam * (m - offset)
    with np.errstate(invalid="ignore"):
        if cs_A == 0:
            k2 = (m - offset) / (lam * defocus_A)
        else:
            k2 = (defocus_A - np.sqrt(disc)) / (cs_A * lam**2)
        k = np.sqrt(k2)
    k = np.where(disc >= 0, k, np.nan)
    return k if np.ndim(n) else float(k)
