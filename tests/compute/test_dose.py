"""Grant & Grigorieff 2015 exposure filter against the published formula."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomoguide.compute import dose


def test_critical_exposure_formula() -> None:
    k = np.array([1 / 20, 1 / 10, 1 / 5, 1 / 3])
    expected = 0.245 * k ** (-1.665) + 2.81
    np.testing.assert_allclose(dose.critical_exposure(k), expected, rtol=1e-12)
    np.testing.assert_allclose(dose.critical_exposure(k, 200.0), 0.8 * expected, rtol=1e-12)
    assert np.isinf(dose.critical_exposure(np.array([0.0]))[0])
    np.testing.assert_allclose(dose.optimal_exposure(k), 2.51284 * expected, rtol=1e-12)
    with pytest.raises(ValueError):
        dose.critical_exposure(k, 120.0)


def test_attenuation_point_and_interval() -> None:
    k = 1 / 8.0
    ne = 0.245 * k ** (-1.665) + 2.81
    assert dose.attenuation(np.array(k), 30.0) == pytest.approx(math.exp(-30.0 / (2 * ne)))
    # interval average equals a numerical integral of exp(-N/2Ne) over [N0, N0+dN]
    n0, dn = 12.0, 3.0
    ns = np.linspace(n0, n0 + dn, 100001)
    numeric = np.trapezoid(np.exp(-ns / (2 * ne)), ns) / dn
    assert dose.attenuation(np.array(k), n0, dn) == pytest.approx(numeric, rel=1e-9)


def test_dose_filter_grid() -> None:
    shape, px = (64, 80), 2.0
    f = dose.dose_filter(shape, px, 20.0, 3.0)
    assert f.shape == shape and f[0, 0] == pytest.approx(1.0)
    ky = np.fft.fftfreq(64, d=px)[:, None]
    kx = np.fft.fftfreq(80, d=px)[None, :]
    k = np.hypot(kx, ky)
    k[0, 0] = 1.0  # placeholder; the DC term is checked separately
    ne = 0.245 * k ** (-1.665) + 2.81
    expected = 2 * ne / 3.0 * (np.exp(-20.0 / (2 * ne)) - np.exp(-23.0 / (2 * ne)))
    expected[0, 0] = 1.0
    np.testing.assert_allclose(f, expected, rtol=2e-6)
    fr = dose.dose_filter(shape, px, 20.0, 3.0, rfft=True)
    np.testing.assert_allclose(fr, f[:, :41], rtol=1e-6)
    # monotone: more prior dose, less signal
    assert np.all(dose.dose_filter(shape, px, 40.0, 3.0) <= f + 1e-7)


def test_dose_weights_normalised() -> None:
    w = dose.dose_weights((32, 32), 2.0, [0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(np.sum(w.astype(np.float64) ** 2, axis=0), 1.0, rtol=1e-5)
    assert np.all(w[0] >= w[2] - 1e-7)
