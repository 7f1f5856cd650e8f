"""Electron scattering factors (Peng et al. 1996) and the potentials derived from them."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, special

from tomoguide.compute import formfactors as ff


def test_constant_is_2pi_a0_e() -> None:
    # h²/(2π m0 e) = 2π a0 (e/4πε0) with a0 = 0.529177 Å and e/(4πε0) = 14.39964 V·Å
    assert ff.POTENTIAL_CONSTANT_V_A2 == pytest.approx(2 * np.pi * 0.52917721 * 14.3996454, rel=1e-6)


@pytest.mark.parametrize("element,f0", [("H", 0.5288), ("C", 2.5088), ("O", 1.9834), ("Fe", 7.1637)])
def test_forward_scattering_is_sum_of_a(element: str, f0: float) -> None:
    assert ff.scattering_factor(element, 0.0) == pytest.approx(f0, abs=1e-4)
    # monotonic decrease over the fit range, B-factor only lowers it
    s = np.linspace(0, 2, 50)
    f = ff.scattering_factor(element, s)
    assert np.all(np.diff(f) < 0)
    assert np.all(ff.scattering_factor(element, s, b_A2=20.0) <= f + 1e-15)


def test_element_names_are_normalised_and_unknown_raises() -> None:
    assert ff.normalise_element("FE") == "Fe" and ff.normalise_element(" c") == "C"
    with pytest.raises(ValueError, match="Xx"):
        ff.peng_coefficients("Xx")


@pytest.mark.parametrize("element", ["H", "C", "N", "O", "S", "P", "Fe"])
@pytest.mark.parametrize("b_A2", [0.0, 30.0])
def test_projected_potential_integral_and_hankel_pair(element: str, b_A2: float) -> None:
    """∫ v_z d²r = C f_e(0) and v_z(r) is the 2D inverse (Hankel) transform of v̂_z(k)."""
    c_f0 = ff.POTENTIAL_CONSTANT_V_A2 * ff.scattering_factor(element, 0.0)
    integral, _ = integrate.quad(lambda r: 2 * np.pi * r * ff.projected_potential(element, r, b_A2), 0, 30,
                                 points=[0.01, 0.1, 1.0], limit=200)
    assert integral == pytest.approx(c_f0, rel=1e-6)
    assert ff.projected_potential_ft(element, 0.0, b_A2) == pytest.approx(c_f0, rel=1e-12)
    for r in (0.0, 0.3, 1.0):
        hankel, _ = integrate.quad(
            lambda k: 2 * np.pi * k * ff.projected_potential_ft(element, k * k, b_A2) * special.j0(2 * np.pi * k * r),
            0, 40, limit=400)
        assert ff.projected_potential(element, r, b_A2) == pytest.approx(hankel, rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("element", ["C", "O"])
def test_3d_potential_integrates_and_projects(element: str) -> None:
    c_f0 = ff.POTENTIAL_CONSTANT_V_A2 * ff.scattering_factor(element, 0.0)
    vol, _ = integrate.quad(lambda r: 4 * np.pi * r * r * ff.potential(element, r), 0, 30, points=[0.1, 1], limit=200)
    assert vol == pytest.approx(c_f0, rel=1e-6)
    # ∫ V(sqrt(r² + z²)) dz = v_z(r)
    for r in (0.2, 0.8):
        proj, _ = integrate.quad(lambda z: ff.potential(element, np.hypot(r, z)), -30, 30, points=[0], limit=200)
        assert proj == pytest.approx(ff.projected_potential(element, r), rel=1e-6)
    k2 = np.array([0.0, 0.5, 2.0])
    np.testing.assert_array_equal(ff.potential_ft(element, k2), ff.projected_potential_ft(element, k2))


def test_mean_inner_potential_of_water() -> None:
    """Neutral-atom MIP of water at 0.0334 molecules/Å³: ≈ 4.5-5 V (literature: 4.8-4.9 V for neutral atoms)."""
    v0 = ff.mean_inner_potential({"O": 0.0334, "H": 2 * 0.0334})
    assert 4.5 < v0 < 5.0


def test_carbon_projected_potential_magnitude() -> None:
    """Order of magnitude of Kirkland's carbon projected potential (his Fig. 5.x, log scale): a few hundred V·Å
    near the nucleus, tens of V·Å at 0.5 Å, a few V·Å at 1 Å; heavier atoms project more."""
    v = ff.projected_potential("C", np.array([0.1, 0.5, 1.0]))
    assert 100 < v[0] < 500
    assert 10 < v[1] < 100
    assert 1 < v[2] < 20
    assert ff.projected_potential("Fe", 0.5) > ff.projected_potential("C", 0.5) > ff.projected_potential("H", 0.5)
