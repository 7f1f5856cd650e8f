"""Fourier shell correlation, resolution, masks and filters (tomoguide.compute.fsc) against formulas."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from tomoguide.compute import fsc as F

BOX = 48
VOXEL = 2.5


def _bandlimited_noise(rng: np.random.Generator, box: int, cutoff_shell: float) -> np.ndarray:
    """Real white noise with every Fourier component at radius > cutoff_shell removed."""
    ft = scipy.fft.rfftn(rng.normal(size=(box,) * 3))
    ft[F.shell_index(box) > cutoff_shell] = 0
    return scipy.fft.irfftn(ft, s=(box,) * 3)


def test_shells_and_frequencies() -> None:
    freqs, c = F.fsc(np.ones((BOX,) * 3) + np.random.default_rng(0).normal(size=(BOX,) * 3),
                     np.ones((BOX,) * 3), voxel_A=VOXEL)
    assert freqs.shape == c.shape == (BOX // 2 + 1,)
    np.testing.assert_allclose(freqs, np.arange(BOX // 2 + 1) / (BOX * VOXEL))
    assert freqs[-1] == pytest.approx(1 / (2 * VOXEL))  # Nyquist
    idx = F.shell_index(8, rfft=False)
    assert idx[0, 0, 0] == 0 and idx[0, 0, 3] == 3 and idx[1, 1, 1] == 2  # round(sqrt 3)


def test_identical_maps_give_one_and_independent_noise_zero() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(size=(BOX,) * 3)
    _, same = F.fsc(a, 3.0 * a)
    np.testing.assert_allclose(same[1:], 1.0, atol=1e-12)
    _, noise = F.fsc(a, rng.normal(size=(BOX,) * 3))
    # a shell of N independent complex voxels has an FSC standard deviation ~ 1/sqrt(N)
    n_vox = np.bincount(F.shell_index(BOX, rfft=False).ravel())[: BOX // 2 + 1]
    assert np.all(np.abs(noise[3:]) < 5 / np.sqrt(n_vox[3:] / 2))
    _, neg = F.fsc(a, -a)
    np.testing.assert_allclose(neg[1:], -1.0, atol=1e-12)


def test_signal_plus_noise_follows_snr_formula_and_band_limit() -> None:
    # two maps = common signal S (band-limited to shell 12) + independent noise of the same power:
    # FSC = SNR / (1 + SNR) = 0.5 below the cut, 0 above
    rng = np.random.default_rng(2)
    s = _bandlimited_noise(rng, BOX, 12)
    n1 = _bandlimited_noise(rng, BOX, 12)
    n2 = _bandlimited_noise(rng, BOX, 12)
    # plus faint independent full-band noise: beyond the band the maps are independent
    e1, e2 = 1e-3 * rng.normal(size=(BOX,) * 3), 1e-3 * rng.normal(size=(BOX,) * 3)
    freqs, c = F.fsc(s + n1 + e1, s + n2 + e2, voxel_A=VOXEL)
    assert np.all(np.abs(c[4:12] - 0.5) < 0.12)
    n_vox = np.bincount(F.shell_index(BOX, rfft=False).ravel())[: BOX // 2 + 1]
    assert np.all(np.abs(c[13:]) < 5 / np.sqrt(n_vox[13:] / 2))
    # the 0.143 crossing lies between shells 12 and 13, linearly interpolated
    res = F.resolution_at(c, freqs, 0.143)
    t = (c[12] - 0.143) / (c[12] - c[13])
    assert res == pytest.approx(BOX * VOXEL / (12 + t))


def test_resolution_interpolation() -> None:
    freqs = np.arange(6) / 60.0
    curve = np.array([1.0, 0.9, 0.6, 0.3, 0.1, 0.0])
    # 0.5 crossed between 0.6 (f = 2/60) and 0.3 (3/60): one third of the way
    assert F.resolution_at(curve, freqs, 0.5) == pytest.approx(1.0 / ((2 + 1 / 3) / 60.0))
    assert F.resolution_at(curve, freqs, 0.143) == pytest.approx(1.0 / ((3 + 0.157 / 0.2) / 60.0))
    # never crosses: Nyquist
    assert F.resolution_at(np.ones(6), freqs) == pytest.approx(12.0)


def test_soft_sphere_mask() -> None:
    m = F.soft_sphere_mask(32, 8.0, 4.0)
    c = 16
    assert m.shape == (32, 32, 32) and m.dtype == np.float32
    assert m[c, c, c] == 1.0 and m[c, c, c + 8] == 1.0
    assert m[c, c, c + 10] == pytest.approx(0.5)  # half-way through the raised cosine
    assert m[c, c, c + 12] == 0.0 and m[0, 0, 0] == 0.0
    hard = F.soft_sphere_mask(32, 8.0, 0.0)
    assert set(np.unique(hard)) == {0.0, 1.0}
    assert hard.sum() == pytest.approx(4 / 3 * np.pi * 8**3, rel=0.05)


def test_lowpass_and_shell_filter() -> None:
    rng = np.random.default_rng(3)
    a = rng.normal(size=(BOX,) * 3).astype(np.float32)
    res_A = BOX * VOXEL / 10  # shell 10
    lp = F.lowpass(a, res_A, VOXEL, edge_shells=0)
    ft = scipy.fft.rfftn(lp)
    idx = F.shell_index(BOX)
    assert np.abs(ft[idx > 10]).max() < 1e-3 * np.abs(ft[idx <= 10]).max()
    np.testing.assert_allclose(ft[idx <= 9], scipy.fft.rfftn(a)[idx <= 9], rtol=1e-3, atol=1e-2)
    # a per-shell filter multiplies each shell's amplitudes
    filt = np.linspace(1.0, 0.0, BOX // 2 + 1)
    out = F.apply_shell_filter(a, filt)
    fo, fa = scipy.fft.rfftn(out), scipy.fft.rfftn(a)
    sel = idx == 6
    np.testing.assert_allclose(np.abs(fo[sel]), filt[6] * np.abs(fa[sel]), rtol=1e-3, atol=1e-3)


def test_fsc_weighting_formula() -> None:
    c = np.array([1.0, 0.5, 0.143, 0.0, -0.2])
    w = F.fsc_to_wiener_filter(c)
    np.testing.assert_allclose(w, np.sqrt(np.clip(2 * c / (1 + c), 0, None)))
    np.testing.assert_allclose(F.fsc_to_wiener_filter(c, half_maps=False), np.sqrt(np.clip(c, 0, 1)))


def test_phase_randomised_masked_fsc_removes_mask_correlation() -> None:
    # independent noise maps: a tight mask makes their masked FSC positive at low/medium resolution (the
    # mask's own transform correlates neighbouring shells); the corrected FSC goes back to ~0
    rng = np.random.default_rng(4)
    box = 40
    a = rng.normal(size=(box,) * 3)
    b = rng.normal(size=(box,) * 3)
    common = _bandlimited_noise(rng, box, 5) * 4
    mask = F.soft_sphere_mask(box, 6.0, 3.0)
    out = F.masked_fsc_corrected(a + common, b + common, mask, voxel_A=VOXEL, rng=np.random.default_rng(0))
    start = out["randomise_from_shell"]
    assert 1 <= start <= 8
    assert np.all(out["fsc_random"][start:] > -0.5)
    # the corrected curve is near 0 beyond the signal's band
    assert out["fsc_masked"][7:10].mean() > 0.15  # the mask spreads the signal's correlation outwards
    tail = slice(10, None)
    assert abs(out["fsc_true"][tail].mean()) < 0.1
    np.testing.assert_allclose(out["fsc_true"][:start], out["fsc_masked"][:start])
    # randomised phases keep the amplitudes
    r = F.phase_randomise(a, 5, rng=np.random.default_rng(1))
    np.testing.assert_allclose(np.abs(scipy.fft.rfftn(r)), np.abs(scipy.fft.rfftn(a)), rtol=1e-3, atol=1e-3)
