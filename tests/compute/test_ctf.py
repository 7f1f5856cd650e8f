"""CTF model: wavelength, interaction constant, zeros against the closed form, astigmatism orientation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomoguide.compute import ctf


def test_wavelength_300kV() -> None:
    assert ctf.electron_wavelength_A(300.0) == pytest.approx(0.019687, abs=2e-6)
    assert ctf.electron_wavelength_A(200.0) == pytest.approx(0.025079, abs=2e-6)
    # non-relativistic limit at low voltage: lambda = h / sqrt(2 m e V)
    v = 10.0
    lam_nr = 6.62607015e-34 / math.sqrt(2 * 9.1093837015e-31 * 1.602176634e-19 * v) * 1e10
    assert ctf.electron_wavelength_A(v * 1e-3) == pytest.approx(lam_nr, rel=1e-5)


def test_interaction_constant_300kV() -> None:
    assert ctf.interaction_constant_rad_per_VA(300.0) == pytest.approx(0.000653, abs=2e-6)


@pytest.mark.parametrize("defocus_A", [10000.0, 25000.0, 40000.0])
def test_zeros_closed_form(defocus_A: float) -> None:
    lam = ctf.electron_wavelength_A(300.0)
    cs_A = 2.7e7
    a = 0.1
    n = np.arange(1, 8)
    k = ctf.ctf_zeros_A(n, defocus_A, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=a)
    # the CTF vanishes there
    assert np.all(np.abs(ctf.ctf_1d(k, defocus_A, amplitude_contrast=a)) < 1e-9)
    # chi + alpha = n pi (independent closed form)
    chi_k = math.pi * lam * defocus_A * k**2 - 0.5 * math.pi * cs_A * lam**3 * k**4
    np.testing.assert_allclose(chi_k + math.asin(a), n * math.pi, rtol=0, atol=1e-9)
    # no sign change between consecutive zeros (they are consecutive), sign change across each
    grid = np.linspace(1e-4, k[-1] * 1.0001, 200001)
    c = ctf.ctf_1d(grid, defocus_A, amplitude_contrast=a)
    changes = np.count_nonzero(np.diff(np.sign(c)) != 0)
    assert changes == len(n)
    # pure phase contrast, Cs = 0: k_n = sqrt(n / (lambda df))
    k0 = ctf.ctf_zeros_A(3, defocus_A, cs_mm=0.0, amplitude_contrast=0.0)
    assert k0 == pytest.approx(math.sqrt(3 / (lam * defocus_A)), rel=1e-12)


def test_zero_past_turning_point_is_nan() -> None:
    assert math.isnan(ctf.ctf_zeros_A(10_000, 5000.0))


def test_ctf_2d_layout_and_dc() -> None:
    shape = (64, 96)
    c = ctf.ctf_2d(shape, 2.0, 20000.0, 20000.0, 0.0, voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.1)
    assert c.shape == shape and c.dtype == np.float32
    assert c[0, 0] == pytest.approx(-0.1, abs=1e-7)
    cr = ctf.ctf_2d(shape, 2.0, 20000.0, 20000.0, 0.0, rfft=True)
    assert cr.shape == (64, 49)
    np.testing.assert_allclose(cr, c[:, :49], atol=1e-6)
    # x frequency along columns: value at (0, ix) equals the 1D CTF at fftfreq(nx)[ix] / pixel
    kx = np.fft.fftfreq(96, d=2.0)
    np.testing.assert_allclose(c[0, :], ctf.ctf_1d(kx, 20000.0), atol=1e-6)


def test_astigmatism_angle_orientation() -> None:
    # U = 30000 Å along 30° from X (counter-clockwise towards +Y), V = 20000 Å.
    n, px = 512, 2.0
    du, dv, ang = 30000.0, 20000.0, 30.0
    c = ctf.ctf_2d((n, n), px, du, dv, ang, amplitude_contrast=0.0)
    lam = ctf.electron_wavelength_A(300.0)
    k1_u = ctf.ctf_zeros_A(1, du, amplitude_contrast=0.0)
    k1_v = ctf.ctf_zeros_A(1, dv, amplitude_contrast=0.0)
    # evaluate chi directly along the U direction (kx, ky) = k (cos 30°, sin 30°): first zero at k1_u
    t = math.radians(ang)
    chi_u = ctf.chi(k1_u * math.cos(t), k1_u * math.sin(t), du, dv, ang, 2.7, lam)
    chi_v = ctf.chi(-k1_v * math.sin(t), k1_v * math.cos(t), du, dv, ang, 2.7, lam)
    assert chi_u == pytest.approx(math.pi, abs=1e-9)
    assert chi_v == pytest.approx(math.pi, abs=1e-9)
    # on the 2D grid: the first zero ring is closer to the centre along U (larger underfocus)
    # sample the grid along the two directions by nearest pixels
    r = np.arange(1, n // 2)
    ks = r / (n * px)

    def first_sign_change(theta: float) -> float:
        ix = np.round(r * math.cos(theta)).astype(int) % n
        iy = np.round(r * math.sin(theta)).astype(int) % n
        vals = c[iy, ix]
        i = int(np.argmax(np.sign(vals[1:]) != np.sign(vals[:-1])))
        return float(ks[i])

    step = 1.5 / (n * px)  # one and a half grid steps
    assert first_sign_change(t) == pytest.approx(k1_u, abs=step)
    assert first_sign_change(t + math.pi / 2) == pytest.approx(k1_v, abs=step)
    # and the mirrored angle gives a different pattern (orientation matters): -30° puts U elsewhere
    assert first_sign_change(-t) != pytest.approx(k1_u, abs=step)


def test_normalise_astigmatism() -> None:
    u, v, a = ctf.normalise_astigmatism(20000.0, 30000.0, 10.0)
    assert (u, v, a) == (30000.0, 20000.0, 100.0 - 180.0)
    c1 = ctf.ctf_2d((64, 64), 2.0, 20000.0, 30000.0, 10.0)
    c2 = ctf.ctf_2d((64, 64), 2.0, u, v, a)
    np.testing.assert_allclose(c1, c2, atol=1e-5)
