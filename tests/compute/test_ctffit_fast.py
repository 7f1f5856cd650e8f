"""The faster CTF fit of issue 20 against the versions it replaces: the vectorised 1D search equals the loop over
defoci; one tilt-aware fit per tilt (1D defocus of the plain average → rescale → one full fit) agrees with the
two full fits of :func:`estimate_ctf_two_pass` and with the truth; the defocus grid on the shared windows agrees with
the grid on the tiles' own windows."""

from __future__ import annotations

import math

import numpy as np
import pytest

from tomoguide.compute import ctffit

from test_ctffit import PX, _ctf_image


@pytest.mark.parametrize("fit_phase", [False, True])
def test_search_1d_equals_the_loop_over_defoci(fit_phase: bool) -> None:
    rng = np.random.default_rng(3)
    g = ctffit._Grid.make(256, PX)
    opt = ctffit._Optics.make(300.0, 2.7, 0.07)
    rr = np.arange(129.0)
    prof = 1.0 / (1.0 + rr / 20.0) + 0.3 * np.sin(0.002 * rr**2) ** 2 + 0.05 * rng.random(129)
    band = (rr >= 17) & (rr <= 73)
    defoci = np.linspace(5000.0, 60000.0, 56)
    phases = np.linspace(0.0, math.pi, 7)[:-1] if fit_phase else np.array([0.0])
    new = ctffit._search_1d(rr, prof, g, opt, band, defoci, phases)
    ref = ctffit._search_1d_reference(rr, prof, g, opt, band, defoci, phases)
    assert new.shape == (56, len(phases))
    np.testing.assert_allclose(new, ref, rtol=0, atol=1e-12)
    assert np.ptp(ref) > 0.5  # a real curve, not a constant


def test_grid_from_cos_sin_without_trigonometry() -> None:
    from tomoguide.compute import ctf as ctfmod

    g = ctffit._Grid.make(64, 1.5)
    kx, ky = ctfmod.frequency_grid((64, 64), 1.5, rfft=True)
    th = np.arctan2(np.broadcast_to(ky, g.k2.shape), np.broadcast_to(kx, g.k2.shape))
    np.testing.assert_allclose(g.c2, np.cos(2 * th), atol=1e-14)
    np.testing.assert_allclose(g.s2, np.sin(2 * th), atol=1e-14)


def test_one_tilt_aware_fit_agrees_with_two_passes_and_truth() -> None:
    shape, tilt, axis, df = (1024, 1024), 45.0, 85.0, 30000.0
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    offs = ctffit.defocus_offsets_A(xx, yy, shape, PX, tilt, axis, -1)
    img = _ctf_image(shape, df + 200.0, df - 200.0, 20.0, noise=1.5, seed=2, offsets_A=offs)
    geo = dict(pixel_size_A=PX, tilt_deg=tilt, tilt_axis_deg=axis)
    w = ctffit.window_spectra(img, **geo)
    fit, spec = ctffit.estimate_ctf(img, windows=w, **geo)
    old, old_spec = ctffit.estimate_ctf_two_pass(img, **geo)
    assert not fit.failed, fit.reason
    assert spec.reference_defocus_A == pytest.approx(old_spec.reference_defocus_A, abs=150.0)
    assert fit.defocus_mean_A == pytest.approx(old.defocus_mean_A, abs=20.0)
    assert fit.defocus_mean_A == pytest.approx(df, abs=100.0)
    assert fit.astigmatism_A == pytest.approx(old.astigmatism_A, abs=40.0)
    assert fit.score == pytest.approx(old.score, abs=0.01)
    # without windows given the same result (they are computed inside)
    again, _ = ctffit.estimate_ctf(img, **geo)
    assert again.defocus_mean_A == pytest.approx(fit.defocus_mean_A, abs=1e-6)
    # the grid on the shared windows (with the global astigmatism as the tiles' seed) vs the tiles' own windows
    shared = ctffit.fit_ctf_grid(img, grid=(2, 2), global_fit=fit, windows=w, **geo)
    own = ctffit.fit_ctf_grid(img, grid=(2, 2), global_fit=fit, **geo)
    assert not any(f.failed for f in shared.tile_fits)
    for a, b in zip(shared.tile_fits, own.tile_fits, strict=True):
        assert a.defocus_mean_A == pytest.approx(b.defocus_mean_A, abs=60.0)
    assert shared.tilt_from_plane_deg == pytest.approx(tilt, abs=7.0)
    assert shared.tilt_from_plane_deg == pytest.approx(own.tilt_from_plane_deg, abs=2.0)


def test_tiles_take_only_windows_wholly_inside_them() -> None:
    # 768 px image, 256 px windows at half overlap: starts 0, 128, ..., 512 (5 per axis); 2×2 tiles of 384 px
    img = _ctf_image((768, 768), 20000.0, 19600.0, 0.0, noise=1.0, seed=5)
    w = ctffit.window_spectra(img, pixel_size_A=PX, box=256)
    assert w.spectra.shape[0] == 25
    starts = w.centres_px - 127.5
    inside_first = (starts[:, 0] + 256 <= 384) & (starts[:, 1] + 256 <= 384)
    assert inside_first.sum() == 4  # starts 0 and 128 along each axis
    fit, _ = ctffit.estimate_ctf(img, pixel_size_A=PX, box=256, windows=w)
    grid = ctffit.fit_ctf_grid(img, pixel_size_A=PX, grid=(2, 2), box=256, global_fit=fit, windows=w)
    for f in grid.tile_fits:
        assert not f.failed, f.reason
        assert f.defocus_mean_A == pytest.approx(19800.0, abs=150.0)
