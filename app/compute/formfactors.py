"""Electron scattering factors of neutral atoms and the atomic potentials derived from them.

Scattering factors
------------------
Elastic electron scattering factors of neutral atoms as sums of five Gaussians,

    f_e(s) = Σ_{i=1..5} a_i · exp(-b_i · s²)          [Å],    s = sin(θ)/λ = q/2  [Å⁻¹],

with the coefficients of Peng, Ren, Dudarev & Whelan (1996), Acta Cryst. A52, 257-276, Table 1 (fit range
0 ≤ s ≤ 2 Å⁻¹), as reprinted in International Tables for Crystallography Vol. C (2006), Table 4.3.2.2.
``q`` = |k| is the spatial frequency in Å⁻¹ (the FFT frequency, ``numpy.fft.fftfreq(n, d=pixel_size_A)``), so
``s² = k²/4``. An isotropic Debye-Waller (B) factor multiplies f_e by exp(-B s²) (B in Å², the
crystallographic convention, ⟨u²⟩ = B / 8π²).

Potentials (Kirkland, *Advanced Computing in Electron Microscopy*, 2nd ed., 2010, §5.4)
------------------------------------------------------------------------------------
With the scattering factor defined by f_e(q) = (2π m₀ e / h²) ∫ V(r) exp(2πi q·r) d³r, the Fourier transform
of one atom's potential is

    V̂(k) = ∫ V(r) e^{-2πi k·r} d³r = C · f_e(|k|/2)                  [V·Å³],
    C = h² / (2π m₀ e) = 2π a₀ e = 47.878 V·Å²  (a₀ Bohr radius, e = 14.40 V·Å in Gaussian units),

and the Fourier transform of the projected potential v_z(x, y) = ∫ V dz (in V·Å) over the plane is the
central section of V̂:

    v̂_z(kx, ky) = ∫ v_z(x, y) e^{-2πi (kx x + ky y)} dx dy = C · f_e(|k|/2)   [V·Å · Å² = V·Å³].

In real space (r in Å):

    V(r)   = C · Σ a_i (4π / b_i)^{3/2} · exp(-4π² r² / b_i)      [V]
    v_z(r) = C · Σ a_i (4π / b_i)       · exp(-4π² r² / b_i)      [V·Å]

with b_i replaced by b_i + B for a B-factor. The integral of v_z over the plane (and of V over space) is
C · f_e(0) [V·Å³]; the mean inner potential of a material with number densities n_j (Å⁻³) is
Σ_j n_j · C · f_e,j(0) [V] (neutral atoms; bonding lowers it by a few per cent).

All functions accept numpy (or CuPy) arrays and return arrays of the same module, float64 unless the input
is float32.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from tomoguide.compute.backend import xp_of

__all__ = [
    "POTENTIAL_CONSTANT_V_A2",
    "ELEMENTS",
    "peng_coefficients",
    "scattering_factor",
    "potential_ft",
    "projected_potential_ft",
    "potential",
    "projected_potential",
    "mean_inner_potential",
    "normalise_element",
]

# h² / (2π m₀ e) from CODATA 2018 exact/recommended constants, converted to V·Å².
_H = 6.62607015e-34
_M0 = 9.1093837015e-31
_E = 1.602176634e-19
POTENTIAL_CONSTANT_V_A2: float = _H**2 / (2.0 * np.pi * _M0 * _E) * 1e20  # = 47.878 V·Å²

# Peng et al. 1996, Table 1 (elastic, neutral atoms, 0 <= s <= 2 Å⁻¹): a1..a5 [Å], b1..b5 [Å²].
_PENG: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "H": ((0.0349, 0.1201, 0.1970, 0.0573, 0.1195), (0.5347, 3.5867, 12.3471, 18.9525, 38.6269)),
    "C": ((0.0893, 0.2563, 0.7570, 1.0487, 0.3575), (0.2465, 1.7100, 6.4094, 18.6113, 50.2523)),
    "N": ((0.1022, 0.3219, 0.7982, 0.8197, 0.1715), (0.2451, 1.7481, 6.1925, 17.3894, 48.1431)),
    "O": ((0.0974, 0.2921, 0.6910, 0.6990, 0.2039), (0.2067, 1.3815, 4.6943, 12.7105, 32.4726)),
    "Na": ((0.2142, 0.6853, 0.7692, 1.6589, 1.4482), (0.3334, 2.3446, 10.0830, 48.3037, 138.2700)),
    "Mg": ((0.2314, 0.6866, 0.9677, 2.1882, 1.1339), (0.3278, 2.2720, 10.9241, 39.2898, 101.9748)),
    "Si": ((0.2519, 0.6372, 1.3795, 2.5082, 1.0500), (0.3075, 2.0174, 9.6746, 29.3744, 80.4732)),
    "P": ((0.2548, 0.6106, 1.4541, 2.3204, 0.8477), (0.2908, 1.8740, 8.5176, 24.3434, 63.2996)),
    "S": ((0.2497, 0.5628, 1.3899, 2.1865, 0.7715), (0.2681, 1.6711, 7.0267, 19.5377, 50.3888)),
    "Cl": ((0.2443, 0.5397, 1.3919, 2.0197, 0.6621), (0.2468, 1.5242, 6.1537, 16.6687, 42.3086)),
    "K": ((0.4115, 1.4031, 2.2784, 2.6742, 2.2162), (0.3703, 3.3874, 13.1029, 68.9592, 194.4329)),
    "Ca": ((0.4054, 1.3880, 2.1602, 3.7532, 2.2063), (0.3499, 3.0991, 11.9608, 53.9353, 142.3892)),
    "Mn": ((0.3796, 1.2094, 1.7815, 2.5420, 1.5937), (0.2699, 2.0455, 7.4726, 31.0604, 91.5622)),
    "Fe": ((0.3946, 1.2725, 1.7031, 2.3140, 1.4795), (0.2717, 2.0443, 7.6007, 29.9714, 86.2265)),
    "Cu": ((0.4314, 1.3208, 1.5236, 1.4671, 0.8562), (0.2694, 1.9223, 7.3474, 28.9892, 90.6246)),
    "Zn": ((0.4288, 1.2646, 1.4472, 1.8294, 1.0934), (0.2593, 1.7998, 6.7500, 25.5860, 73.5284)),
    "Se": ((0.4477, 1.1678, 1.5843, 2.8087, 1.1956), (0.2405, 1.5442, 6.3231, 19.4610, 52.0233)),
    "Au": ((0.9674, 1.8916, 3.3993, 3.0524, 1.2607), (0.2358, 1.4712, 5.6758, 18.7119, 61.5286)),
}
ELEMENTS: tuple[str, ...] = tuple(_PENG)


def normalise_element(element: str) -> str:
    """Element symbol in standard capitalisation (``"FE"`` → ``"Fe"``); ``ValueError`` if not tabulated."""
    e = str(element).strip()
    e = e[:1].upper() + e[1:].lower()
    if e == "D":  # deuterium scatters like hydrogen
        e = "H"
    if e not in _PENG:
        raise ValueError(f"no electron scattering factor tabulated for element {element!r} "
                         f"(known: {', '.join(ELEMENTS)})")
    return e


def peng_coefficients(element: str) -> tuple[np.ndarray, np.ndarray]:
    """The five (a [Å], b [Å²]) Gaussian coefficients of ``element`` (float64 arrays of shape (5,))."""
    a, b = _PENG[normalise_element(element)]
    return np.array(a), np.array(b)


def _float_like(x: Any, xp: ModuleType) -> Any:
    x = xp.asarray(x)
    return x if x.dtype in (xp.float32, xp.float64) else x.astype(xp.float64)


def scattering_factor(element: str, s_inv_A: Any, b_A2: float = 0.0) -> Any:
    """f_e(s) in Å at s = sin(θ)/λ (Å⁻¹, any array shape), times exp(-B s²) for a B-factor ``b_A2`` (Å²)."""
    xp = xp_of(s_inv_A)
    s2 = _float_like(s_inv_A, xp) ** 2
    a, b = peng_coefficients(element)
    out = xp.zeros_like(s2)
    for ai, bi in zip(a, b):
        out += ai * xp.exp(-(bi + b_A2) * s2)
    return out


def potential_ft(element: str, k2_inv_A2: Any, b_A2: float = 0.0) -> Any:
    """Fourier transform of one atom's 3D potential, V̂(k) = C f_e(k/2) exp(-B k²/4), in V·Å³.

    ``k2_inv_A2``: |k|² (Å⁻²) with k the spatial frequency (FFT frequency in 1/Å), any shape.
    Convention: V̂(k) = ∫ V(r) exp(-2πi k·r) d³r, so a grid of voxel volume p³ Å³ holding the atom's potential
    has DFT ≈ V̂(k) / p³.
    """
    xp = xp_of(k2_inv_A2)
    k2 = _float_like(k2_inv_A2, xp)
    a, b = peng_coefficients(element)
    out = xp.zeros_like(k2)
    for ai, bi in zip(a, b):
        out += ai * xp.exp(-0.25 * (bi + b_A2) * k2)
    return out * POTENTIAL_CONSTANT_V_A2


def projected_potential_ft(element: str, k2_inv_A2: Any, b_A2: float = 0.0) -> Any:
    """Fourier transform of one atom's projected potential, v̂_z(k) = C f_e(k/2) exp(-B k²/4), in V·Å·Å².

    ``k2_inv_A2`` = kx² + ky² (Å⁻²). Convention: v̂_z(k) = ∫ v_z(x, y) exp(-2πi k·r) d²r; numerically equal to
    :func:`potential_ft` at kz = 0 (the central-section theorem). A grid of pixel area p² Å² holding the projected
    potential (V·Å) has DFT ≈ v̂_z(k) / p².
    """
    return potential_ft(element, k2_inv_A2, b_A2)


def potential(element: str, r_A: Any, b_A2: float = 0.0) -> Any:
    """Real-space 3D potential V(r) in V of one atom at distance ``r_A`` (Å), B-factor ``b_A2`` (Å²)."""
    xp = xp_of(r_A)
    r2 = _float_like(r_A, xp) ** 2
    a, b = peng_coefficients(element)
    out = xp.zeros_like(r2)
    for ai, bi in zip(a, b):
        bb = bi + b_A2
        out += ai * (4.0 * np.pi / bb) ** 1.5 * xp.exp(-4.0 * np.pi**2 * r2 / bb)
    return out * POTENTIAL_CONSTANT_V_A2


def projected_potential(element: str, r_A: Any, b_A2: float = 0.0) -> Any:
    """Real-space projected potential v_z(r) in V·Å of one atom at in-plane distance ``r_A`` (Å)."""
    xp = xp_of(r_A)
    r2 = _float_like(r_A, xp) ** 2
    a, b = peng_coefficients(element)
    out = xp.zeros_like(r2)
    for ai, bi in zip(a, b):
        bb = bi + b_A2
        out += ai * (4.0 * np.pi / bb) * xp.exp(-4.0 * np.pi**2 * r2 / bb)
    return out * POTENTIAL_CONSTANT_V_A2


def mean_inner_potential(number_density_per_A3: dict[str, float]) -> float:
    """Mean inner potential (V) of a material given atom number densities per element (atoms/Å³).

    V₀ = Σ_j n_j · C · f_e,j(0); e.g. water at 0.0334 molecules/Å³: ``{"O": 0.0334, "H": 0.0668}`` → ≈ 4.9 V
    (neutral-atom value; measured values for amorphous ice are 3.5-4.5 V because bonding moves charge).
    """
    total = 0.0
    for element, n in number_density_per_A3.items():
        a, _ = peng_coefficients(element)
        total += float(n) * POTENTIAL_CONSTANT_V_A2 * float(a.sum())
    return total
