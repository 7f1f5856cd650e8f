"""Exposure (dose) dependent attenuation of high-resolution signal: Grant & Grigorieff 2015.

Reference: T. Grant & N. Grigorieff (2015) "Measuring the optimal exposure for single particle cryo-EM
using a 2.6 Å reconstruction of rotavirus VP6", eLife 4:e06980.

* Critical exposure (e⁻/Å²) at spatial frequency ``k`` (Å⁻¹), measured at 300 kV:
  ``Ne(k) = 0.245 · k^−1.665 + 2.81``; at 200 kV the critical exposure is 0.8 times as large
  (voltages between 200 and 300 kV are interpolated linearly; others are refused).
* The amplitude of spatial frequency ``k`` after a cumulative exposure ``N`` is ``exp(−N / (2 Ne(k)))``.
* A frame (or tilt image) that received the exposure from ``N0`` (its *prior* dose) to ``N0 + dN`` holds
  the **exposure-averaged** amplitude ``(1/dN) ∫_{N0}^{N0+dN} exp(−N/(2Ne)) dN
  = (2 Ne / dN) · [exp(−N0/(2Ne)) − exp(−(N0+dN)/(2Ne))]`` — this is what :func:`dose_filter`
  returns; for ``dN = 0`` it is ``exp(−N0/(2Ne))``.
* Optimal exposure (where the signal-to-noise ratio of a frequency stops growing):
  ``N_opt(k) = 2.51284 · Ne(k)``; :func:`dose_weights` gives the Grant-Grigorieff weights for summing
  frames: ``w_i(k) = A_i(k) / sqrt(Σ_j A_j(k)²)`` (keeps the noise power of the sum equal to that of a
  plain sum of normalised frames).

Frequencies are on the un-shifted FFT grid (``fftfreq``; ``rfftfreq`` on the last axis with
``rfft=True``), the same layout as :func:`tomoguide.compute.ctf.ctf_2d`. Doses in e⁻/Å².
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import numpy as np

from tomoguide.compute.ctf import frequency_grid

NE_A = 0.245
NE_B = -1.665
NE_C = 2.81
OPTIMAL_EXPOSURE_FACTOR = 2.51284


def _voltage_factor(voltage_kV: float) -> float:
    if not 200.0 <= voltage_kV <= 300.0:
        raise ValueError(
            f"voltage_kV={voltage_kV}: the Grant & Grigorieff critical exposure is defined at 300 kV "
            "(and scaled by 0.8 at 200 kV); other voltages are not supported"
        )
    return 0.8 + 0.2 * (voltage_kV - 200.0) / 100.0


def critical_exposure(k_A: Any, voltage_kV: float = 300.0) -> Any:
    """Critical exposure ``Ne(k)`` in e⁻/Å² at spatial frequency ``k_A`` (Å⁻¹); ``k = 0`` gives ``inf``."""
    from tomoguide.compute.backend import xp_of

    xp = xp_of(k_A)
    k = xp.asarray(k_A, dtype=xp.float64)
    with np.errstate(divide="ignore"):
        ne = NE_A * xp.power(xp.where(k > 0, k, 1.0), NE_B) + NE_C
    ne = xp.where(k > 0, ne, xp.inf)
    return ne * _voltage_factor(voltage_kV)


def optimal_exposure(k_A: Any, voltage_kV: float = 300.0) -> Any:
    """Optimal exposure ``2.51284 · Ne(k)`` in e⁻/Å²."""
    return OPTIMAL_EXPOSURE_FACTOR * critical_exposure(k_A, voltage_kV)


def attenuation(k_A: Any, prior_dose_e_A2: float, dose_e_A2: float = 0.0, voltage_kV: float = 300.0) -> Any:
    """Exposure-averaged amplitude at ``k_A`` for an exposure from ``prior_dose`` to ``prior_dose + dose``.

    See the module docstring; the value lies in (0, 1], equal to 1 at ``k = 0``.
    """
    from tomoguide.compute.backend import xp_of

    xp = xp_of(k_A)
    ne = critical_exposure(k_A, voltage_kV)
    n0 = float(prior_dose_e_A2)
    dn = float(dose_e_A2)
    if n0 < 0 or dn < 0:
        raise ValueError("doses must be non-negative")
    a0 = xp.exp(-n0 / (2.0 * ne))
    if dn == 0.0:
        return a0
    a1 = xp.exp(-(n0 + dn) / (2.0 * ne))
    finite = xp.isfinite(ne)
    ne_safe = xp.where(finite, ne, 1.0)
    avg = 2.0 * ne_safe / dn * (a0 - a1)
    return xp.where(finite, avg, 1.0)


def dose_filter(
    shape: tuple[int, int],
    pixel_size_A: float,
    prior_dose_e_A2: float,
    dose_e_A2: float = 0.0,
    *,
    voltage_kV: float = 300.0,
    rfft: bool = False,
    xp: ModuleType | None = None,
    dtype: Any = np.float32,
) -> Any:
    """Exposure filter on the un-shifted FFT grid of an image ``shape = (ny, nx)`` (``rfft``: half grid).

    The amplitude that a frame or tilt image exposed from ``prior_dose_e_A2`` to
    ``prior_dose_e_A2 + dose_e_A2`` (e⁻/Å²) keeps at each frequency (exposure-averaged, see the module
    docstring). Multiply an image's FFT by it to simulate damage; ``[0, 0] = 1``.
    """
    xp = np if xp is None else xp
    kx, ky = frequency_grid(shape, pixel_size_A, rfft=rfft, xp=xp)
    k = xp.sqrt(kx * kx + ky * ky)
    return attenuation(k, prior_dose_e_A2, dose_e_A2, voltage_kV).astype(dtype, copy=False)


def dose_weights(
    shape: tuple[int, int],
    pixel_size_A: float,
    prior_doses_e_A2: Any,
    doses_e_A2: Any,
    *,
    voltage_kV: float = 300.0,
    rfft: bool = False,
    xp: ModuleType | None = None,
    dtype: Any = np.float32,
) -> Any:
    """Grant-Grigorieff frame weights ``(n, ny, nx)``: ``A_i / sqrt(Σ_j A_j²)`` per frequency.

    ``prior_doses_e_A2[i]`` and ``doses_e_A2[i]`` describe frame ``i``'s exposure interval.
    """
    xp = np if xp is None else xp
    filters = [
        dose_filter(shape, pixel_size_A, float(p), float(d), voltage_kV=voltage_kV, rfft=rfft, xp=xp,
                    dtype=np.float64)
        for p, d in zip(np.asarray(prior_doses_e_A2).ravel(), np.asarray(doses_e_A2).ravel(), strict=True)
    ]
    a = xp.stack(filters)
    norm = xp.sqrt(xp.sum(a * a, axis=0))
    return (a / norm).astype(dtype, copy=False)
