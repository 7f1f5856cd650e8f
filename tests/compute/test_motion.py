"""Frame alignment with dose weighting: against known synthetic motion, the simulator's truth and formulas."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.fft
import scipy.ndimage

from tomoguide.compute import motion

PX_A = 2.0


def _texture(shape: tuple[int, int], rng: np.random.Generator, corr_px: float = 3.0) -> np.ndarray:
    """Band-limited random image (zero mean, unit std) with features of about ``corr_px`` px."""
    w = rng.standard_normal(shape)
    img = scipy.ndimage.gaussian_filter(w, corr_px, mode="wrap")
    return (img - img.mean()) / img.std()


def _shift(img: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """``img`` with its content moved by (+dx, +dy) px (Fourier, periodic)."""
    ny, nx = img.shape
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    ph = np.exp(-2j * math.pi * (kx * dx + ky * dy))
    return scipy.fft.irfft2(scipy.fft.rfft2(img) * ph, s=img.shape)


def _noisy_movie(drift: np.ndarray, shape: tuple[int, int], counts: float, contrast: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Poisson frames whose content sits at ``p + drift[j]``; returns (frames uint8, clean image)."""
    base = _texture(shape, rng)
    frames = np.stack([
        rng.poisson(counts * np.clip(1.0 + contrast * _shift(base, *d), 0, None)) for d in drift
    ]).astype(np.uint8)
    return frames, base


def _band_power(img: np.ndarray, low_A: float, high_A: float) -> float:
    """Power of ``img`` between the resolutions ``low_A`` and ``high_A`` (pixel size PX_A)."""
    ny, nx = img.shape
    k = np.hypot(np.fft.fftfreq(ny)[:, None], np.fft.rfftfreq(nx)[None, :]) / PX_A
    band = (k > 1.0 / low_A) & (k < 1.0 / high_A)
    return float(np.sum(np.abs(scipy.fft.rfft2(img - img.mean())[band]) ** 2))


def _rms(err: np.ndarray) -> float:
    e = err - err.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(e * e, axis=1))))


# ---------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------


def test_apply_gain_multiplies_and_checks_shape() -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 9, (3, 8, 10)).astype(np.uint8)
    gain = rng.uniform(0.5, 1.5, (8, 10)).astype(np.float32)
    out = motion.apply_gain(frames, gain)
    assert out.dtype == np.float32 and out.shape == (3, 8, 10)
    np.testing.assert_allclose(out, frames.astype(np.float32) * gain[None], rtol=1e-6)
    np.testing.assert_array_equal(motion.apply_gain(frames, None), frames.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(10, 8\).*\(8, 10\)"):
        motion.apply_gain(frames, gain.T)
    with pytest.raises(ValueError, match="n_frames"):
        motion.apply_gain(np.zeros((2, 3, 4, 5)), None)


def test_trajectory_basis_models() -> None:
    n = 7
    t = np.arange(n) / (n - 1)
    quad = np.stack([1.0 + 2.0 * t - 3.0 * t**2, -0.5 * t + t**2], axis=1)
    np.testing.assert_allclose(motion.fit_trajectory(quad, 3), quad, atol=1e-12)  # 3 points: exact quadratic
    lin = motion.fit_trajectory(quad, 2)
    np.testing.assert_allclose(np.diff(lin, 2, axis=0), 0.0, atol=1e-12)  # 2 points: a straight line
    const = motion.fit_trajectory(quad, 1)
    np.testing.assert_allclose(const, np.broadcast_to(quad.mean(axis=0), quad.shape), atol=1e-12)
    noisy = quad + np.random.default_rng(1).normal(0, 0.1, quad.shape)
    np.testing.assert_array_equal(motion.fit_trajectory(noisy, n), noisy)  # ≥ n control points: free
    np.testing.assert_allclose(motion.trajectory_basis(n, 3).sum(axis=1), 1.0, atol=1e-12)  # partition of unity
    # "early" spacing: control points even in sqrt(t), so a quadratic in sqrt(t) is exact
    r = np.sqrt(t)
    q2 = np.stack([2.0 * r - r**2, -r + 0.5 * r**2], axis=1)
    np.testing.assert_allclose(motion.fit_trajectory(q2, 3, spacing="early"), q2, atol=1e-12)
    assert np.abs(motion.fit_trajectory(q2, 3, spacing="uniform") - q2).max() > 1e-3
    with pytest.raises(ValueError, match="spacing"):
        motion.trajectory_basis(n, 3, "log")  # type: ignore[arg-type]


def test_alignment_filter_formula() -> None:
    k = np.array([[0.0, 0.01, 0.05, 0.19, 0.21]])  # cycles/px at 2 Å/px: 0, 1/200, 1/40, 1/10.5, 1/9.5 Å⁻¹
    h = motion.alignment_filter(np.zeros((1, 1)), k, PX_A, -500.0, (500.0, 10.0))
    kA = k / PX_A
    expected = np.exp(-500.0 * kA**2 / 8) * (1 - np.exp(-(kA**2) * 500.0**2 / 2))
    expected[kA > 0.1] = 0.0
    np.testing.assert_allclose(h, expected, rtol=1e-5, atol=1e-7)
    assert h[0, 0] == 0.0 and h[0, 4] == 0.0 and h[0, 3] > 0.0
    # the cross-power spectrum carries h²: the B-factor weight exp(B k²/4) well inside the band
    assert h[0, 2] ** 2 == pytest.approx(math.exp(-500.0 * kA[0, 2] ** 2 / 4), rel=1e-3)


def test_shift_frames_matches_roll_and_round_trips() -> None:
    rng = np.random.default_rng(2)
    img = _texture((48, 64), rng).astype(np.float32)
    out = motion.shift_frames(img[None], np.array([[3.0, -2.0]]))[0]
    np.testing.assert_allclose(out, np.roll(img, (-2, 3), axis=(0, 1)), atol=1e-4)  # content moves by +s
    s = np.array([[0.37, -1.61], [2.25, 0.5]])
    back = motion.shift_frames(motion.shift_frames(np.stack([img, img]), s), -s)
    np.testing.assert_allclose(back, np.stack([img, img]), atol=1e-3)


def test_dose_weights_against_formula() -> None:
    shape, n, d, prior = (40, 56), 5, 0.6, 21.0
    w = motion.frame_dose_weights(shape, PX_A, d, n, prior_dose_e_A2=prior, voltage_kV=300.0)
    assert w.shape == (n, 40, 29) and w.dtype == np.float32
    ky = np.fft.fftfreq(shape[0], d=PX_A)[:, None]
    kx = np.fft.rfftfreq(shape[1], d=PX_A)[None, :]
    k = np.hypot(ky, kx)
    k[0, 0] = 1.0  # placeholder; the DC term is set below
    ne = 0.245 * k ** (-1.665) + 2.81  # Grant & Grigorieff 2015, 300 kV
    a = []
    for j in range(n):
        n0, n1 = prior + j * d, prior + (j + 1) * d
        aj = 2 * ne / d * (np.exp(-n0 / (2 * ne)) - np.exp(-n1 / (2 * ne)))
        aj[0, 0] = 1.0
        a.append(aj)
    a = np.stack(a)
    expected = math.sqrt(n) * a / np.sqrt(np.sum(a * a, axis=0))
    np.testing.assert_allclose(w, expected, rtol=2e-5)
    np.testing.assert_allclose(w[:, 0, 0], 1.0, rtol=1e-6)  # DC: every frame weight 1, total kept
    np.testing.assert_allclose(np.sum(w.astype(np.float64) ** 2, axis=0), n, rtol=2e-5)  # noise power kept
    assert np.all(w[0] >= w[-1] - 1e-6)  # early frames weigh more at every frequency
    # the tilt's prior dose is a common factor that the per-frequency normalisation removes
    w0 = motion.frame_dose_weights(shape, PX_A, d, n, prior_dose_e_A2=0.0)
    np.testing.assert_allclose(w0, w, rtol=1e-4)
    # per-frame doses as an array
    np.testing.assert_allclose(motion.frame_dose_weights(shape, PX_A, np.full(n, d), n), w0, rtol=1e-6)


def test_dose_weighted_sum_keeps_low_frequencies_and_even_odd() -> None:
    rng = np.random.default_rng(3)
    img = (10.0 + _texture((64, 64), rng, 1.0)).astype(np.float32)
    frames = np.stack([img] * 4)
    r = motion.align_movie(frames, pixel_size_A=PX_A, dose_per_frame_e_A2=2.0, prior_dose_e_A2=30.0,
                           even_odd=True, hot_pixel_sigma=0)
    np.testing.assert_allclose(r.shifts_px, 0.0, atol=0.02)
    np.testing.assert_allclose(r.unweighted_sum, 4 * img, rtol=1e-3, atol=1e-2)
    assert float(r.aligned_sum.mean()) == pytest.approx(4 * float(img.mean()), rel=1e-5)
    # spectrum of the weighted sum = Σ_j w_j(k) · FT(img)
    w = motion.frame_dose_weights((64, 64), PX_A, 2.0, 4, prior_dose_e_A2=30.0)
    expected = scipy.fft.irfft2(scipy.fft.rfft2(img) * w.sum(axis=0), s=img.shape)
    np.testing.assert_allclose(r.aligned_sum, expected, atol=2e-3 * float(np.abs(expected).max()))
    assert np.std(r.aligned_sum) < np.std(r.unweighted_sum)  # high frequencies attenuated
    np.testing.assert_allclose(r.even_sum + r.odd_sum, r.aligned_sum, atol=1e-3)
    assert float(r.even_sum.mean()) == pytest.approx(2 * float(img.mean()), rel=1e-5)


def test_binning_of_the_sums() -> None:
    rng = np.random.default_rng(4)
    frames = rng.poisson(3.0, (3, 64, 96)).astype(np.uint8)
    r = motion.align_movie(frames, pixel_size_A=PX_A, binning=2.0, even_odd=True, dose_per_frame_e_A2=1.0)
    assert r.aligned_sum.shape == (32, 48) and r.even_sum.shape == (32, 48)
    assert r.pixel_size_A == pytest.approx(4.0) and r.binning == 2.0
    assert float(r.unweighted_sum.mean()) == pytest.approx(float(frames.astype(float).sum(0).mean()), rel=1e-4)


def test_hot_pixels_replaced_but_not_single_frame_hits() -> None:
    rng = np.random.default_rng(5)
    frames = rng.poisson(3.0, (5, 64, 64)).astype(np.float32)
    frames[:, 10, 20] += 25.0  # stationary defect
    frames[2, 40, 41] += 60.0  # X-ray hit, one frame
    mask = motion.find_hot_pixels(frames)
    assert mask[10, 20] and not mask[40, 41] and int(mask.sum()) == 1
    r = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, 1))
    assert r.hot_pixels.tolist() == [[10, 20]]
    s = r.unweighted_sum
    assert abs(float(s[10, 20]) - 15.0) < 10.0  # replaced by the frame means (5 × 3 counts)
    assert float(s[40, 41]) > 50.0  # the hit is left for the X-ray eraser
    # known defects (e.g. zero gain): replaced like the hot pixels and listed with them
    defects = np.zeros((64, 64), bool)
    defects[[3, 50], [7, 12]] = True
    frames[:, 3, 7] = 0.0  # a dead pixel
    r2 = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, 1), defects=defects)
    assert sorted(r2.hot_pixels.tolist()) == [[3, 7], [10, 20], [50, 12]]
    assert abs(float(r2.unweighted_sum[3, 7]) - 15.0) < 5.0
    with pytest.raises(ValueError, match="defects"):
        motion.align_movie(frames, pixel_size_A=PX_A, defects=defects[:10])


def test_bad_parameters() -> None:
    frames = np.zeros((2, 32, 32), np.float32)
    with pytest.raises(ValueError, match="res_band_A"):
        motion.align_movie(frames, pixel_size_A=PX_A, res_band_A=(10.0, 500.0))
    with pytest.raises(ValueError, match="binning"):
        motion.align_movie(frames, pixel_size_A=PX_A, binning=0.5)
    with pytest.raises(ValueError, match="grid"):
        motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, 0))
    with pytest.raises(ValueError, match="gain"):
        motion.align_movie(frames, pixel_size_A=PX_A, gain=np.ones((16, 32)))
    with pytest.raises(ValueError, match="3 values for 2 frames"):
        motion.align_movie(frames, pixel_size_A=PX_A, dose_per_frame_e_A2=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="pixel_size_A"):
        motion.align_movie(frames, pixel_size_A=0.0)


# ---------------------------------------------------------------------------------------------------------
# Alignment against known motion
# ---------------------------------------------------------------------------------------------------------


def test_subpixel_shifts_at_low_dose() -> None:
    """Known sub-pixel drift, 1.5 counts/px per frame, 20 % contrast (per-pixel SNR ≈ 0.2 per frame):
    per-frame shifts within 0.15 px RMS."""
    rng = np.random.default_rng(6)
    n = 8
    drift = np.cumsum(rng.uniform(-1.3, 1.3, (n, 2)), axis=0)
    drift -= drift[0]
    frames, _ = _noisy_movie(drift, (256, 256), 1.5, 0.20, rng)
    r = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, n))
    truth = -drift  # aligning shifts, frame 0 = 0
    assert np.all(r.shifts_px[0] == 0.0)
    assert _rms(r.shifts_px - truth) < 0.15
    assert np.max(np.abs(r.shifts_px - truth)) < 0.4  # same sign convention as the simulator
    assert 0.0 < r.score < 1.0 and r.cc_peak.shape == (n,)
    # the smooth model (3 temporal control points) on a smooth drift
    t = np.arange(n) / (n - 1)
    smooth = np.stack([4.0 * t - 1.5 * t**2, -2.5 * t + 0.8 * t**2], axis=1)
    frames2, _ = _noisy_movie(smooth, (256, 256), 1.5, 0.20, rng)
    r2 = motion.align_movie(frames2, pixel_size_A=PX_A, grid=(1, 1, 3), temporal_spacing="uniform")
    assert _rms(r2.shifts_px + smooth) < 0.1
    np.testing.assert_allclose(np.diff(r2.shifts_px, 3, axis=0), 0.0, atol=1e-9)  # a quadratic in time


def test_local_motion_on_a_patch_grid() -> None:
    """A shift field varying linearly across the image: per-patch shifts recovered, sharper sum."""
    rng = np.random.default_rng(7)
    n, ny, nx = 4, 256, 256
    base = _texture((ny, nx), rng, 2.0)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)

    def field(j: int, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Content displacement (dx, dy) of frame j at (x, y): a global drift plus a shear."""
        u = (x - (nx - 1) / 2) / nx
        v = (y - (ny - 1) / 2) / ny
        return 0.8 * j + 1.0 * j * v, -0.5 * j + 0.8 * j * u

    frames = []
    for j in range(n):
        dx, dy = field(j, xx, yy)
        img = scipy.ndimage.map_coordinates(base, [yy - dy, xx - dx], order=3, mode="grid-wrap")
        frames.append(rng.poisson(20.0 * np.clip(1.0 + 0.3 * img, 0, None)))
    frames = np.asarray(frames, dtype=np.float32)
    glob = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, n), hot_pixel_sigma=0)
    loc = motion.align_movie(frames, pixel_size_A=PX_A, grid=(3, 3, n), hot_pixel_sigma=0)
    assert loc.patch_shifts_px.shape == (3, 3, n, 2) and loc.patch_centres_px.shape == (3, 3, 2)
    errs = []
    for i in range(3):
        for k in range(3):
            cx, cy = loc.patch_centres_px[i, k]
            truth = -np.array([field(j, np.array(cx), np.array(cy)) for j in range(n)])
            errs.append(loc.patch_shifts_px[i, k] - truth)
    errs = np.concatenate(errs)
    assert float(np.sqrt(np.mean(np.sum(errs**2, axis=1)))) < 0.35
    # the locally corrected sum matches the frame-0 image better than the global one
    ref = base - base.mean()

    def corr(img: np.ndarray) -> float:
        c = img - img.mean()
        return float(np.sum(c * ref) / np.sqrt(np.sum(c * c) * np.sum(ref * ref)))

    assert corr(loc.unweighted_sum) > corr(glob.unweighted_sum) + 0.02


# ---------------------------------------------------------------------------------------------------------
# The simulator's tiny preset
# ---------------------------------------------------------------------------------------------------------


def _truth_tables(root: Path) -> tuple[Any, Any]:
    import starfile

    tables = starfile.read(next((root / "truth").glob("*/*_tilts.star")))
    return tables["tilts"], tables["frame_shifts"]


def test_gain_orientation_flattens_the_tiny_preset(tiny_dataset: Path) -> None:
    from tomoguide.compute.io import movies

    tilts, _ = _truth_tables(tiny_dataset)
    raw = sum(movies.read_movie(tiny_dataset / m).astype(np.float64).sum(axis=0)
              for m in tilts["rlnMicrographMovieName"])
    right = movies.read_gain(tiny_dataset / "data" / "gain.mrc", flip_x=True)
    wrong = movies.read_gain(tiny_dataset / "data" / "gain.mrc")

    def stripes(img: np.ndarray) -> float:
        """Relative spread of the column means (the gain's column stripes and smooth variation)."""
        c = img.mean(axis=0)
        return float(c.std() / c.mean())

    s_raw = stripes(raw)
    s_right = stripes(motion.apply_gain(raw[None], right)[0])
    s_wrong = stripes(motion.apply_gain(raw[None], wrong)[0])
    assert s_right < 0.5 * s_raw
    assert s_right < 0.5 * s_wrong


def test_tiny_preset_frame_shifts(tiny_dataset: Path) -> None:
    from tomoguide.compute.io import movies

    tilts, fs = _truth_tables(tiny_dataset)
    gain = movies.read_gain(tiny_dataset / "data" / "gain.mrc", flip_x=True)
    errs_model, errs_free = [], []
    for _, row in tilts.iterrows():
        name = row["rlnMicrographMovieName"]
        frames = movies.read_movie(tiny_dataset / name)
        sel = fs[fs["rlnMicrographMovieName"] == name].sort_values("rlnMicrographFrameNumber")
        truth = sel[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)
        n = frames.shape[0]
        r = motion.align_movie(frames, pixel_size_A=PX_A, gain=gain, dose_per_frame_e_A2=3.0 / n,
                               prior_dose_e_A2=float(row["rlnMicrographPreExposure"]))
        assert not r.failed and r.failure_reason == "" and r.rejected_shifts_px is None
        assert np.median(r.peak_z) > 3 * motion.MIN_PEAK_Z  # far above the failure threshold
        assert r.aligned_sum.shape == frames.shape[1:] and np.isfinite(r.aligned_sum).all()
        assert len(r.hot_pixels) >= 1
        if np.abs(truth).max() > 2.0:  # visible drift: the aligned sum keeps more mid-frequency power
            plain = motion.apply_gain(frames, gain).sum(axis=0)
            assert _band_power(r.unweighted_sum, 40.0, 8.0) > 1.05 * _band_power(plain, 40.0, 8.0)
        errs_model.append(r.shifts_px - truth)
        free = motion.align_movie(frames, pixel_size_A=PX_A, gain=gain, grid=(1, 1, n))
        errs_free.append(free.shifts_px - truth)
    # per movie, the arbitrary common offset removed (the truth refers to frame 0 exactly)
    rms_model = math.sqrt(np.mean([_rms(e) ** 2 for e in errs_model]))
    rms_free = math.sqrt(np.mean([_rms(e) ** 2 for e in errs_free]))
    assert rms_model < 0.25
    assert rms_free < 0.2


# ---------------------------------------------------------------------------------------------------------
# Physical limits and failed movies
# ---------------------------------------------------------------------------------------------------------


def test_dark_movies_are_flagged_and_get_no_shifts(tiny_dataset: Path) -> None:
    """The tiny preset's movies at 3 % of their dose (binomial thinning of the counts = Poisson at 0.03 × the
    dose: the issue's dark view) cannot be aligned: flagged, no shifts (before the limits they wandered by
    hundreds of px); the same movies at full dose are aligned within 0.25 px of the truth."""
    from tomoguide.compute.io import movies

    tilts, fs = _truth_tables(tiny_dataset)
    gain = movies.read_gain(tiny_dataset / "data" / "gain.mrc", flip_x=True)
    rng = np.random.default_rng(12)
    errs = []
    for name in list(tilts["rlnMicrographMovieName"])[:4]:
        frames = movies.read_movie(tiny_dataset / name)
        n = frames.shape[0]
        sel = fs[fs["rlnMicrographMovieName"] == name].sort_values("rlnMicrographFrameNumber")
        truth = sel[["rlnMicrographShiftX", "rlnMicrographShiftY"]].to_numpy(dtype=np.float64)
        dark = rng.binomial(frames, 0.03).astype(np.uint8)
        r = motion.align_movie(dark, pixel_size_A=PX_A, gain=gain, dose_per_frame_e_A2=0.03 * 3.0 / n)
        assert r.failed and "weak correlation peaks" in r.failure_reason, r.failure_reason
        np.testing.assert_array_equal(r.shifts_px, 0.0)  # within any limit
        assert np.median(r.peak_z) < motion.MIN_PEAK_Z and r.rejected_shifts_px is not None
        plain = motion.apply_gain(dark, gain).sum(axis=0)  # the sum is the plain, unshifted sum
        keep = np.ones(plain.shape, bool)
        keep[tuple(r.hot_pixels.T)] = False  # (apart from the replaced defects)
        np.testing.assert_allclose(r.unweighted_sum[keep], plain[keep], atol=1e-3 * float(np.abs(plain).max()))
        ok = motion.align_movie(frames, pixel_size_A=PX_A, gain=gain, dose_per_frame_e_A2=3.0 / n)
        assert not ok.failed
        errs.append(_rms(ok.shifts_px - truth))
    assert max(errs) < 0.25


def test_judge_alignment_limits() -> None:
    z = np.full(4, 20.0)
    s = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 5.0], [30.0, 5.0]])  # px at 2 Å/px: 61 Å in all
    assert motion.judge_alignment(s, z, pixel_size_A=PX_A) == (False, "")
    failed, why = motion.judge_alignment(s, z, pixel_size_A=PX_A, max_total_shift_A=50.0)
    assert failed and "61 Å from the first frame" in why and "50 Å" in why
    failed, why = motion.judge_alignment(s, z, pixel_size_A=PX_A, max_frame_shift_A=15.0)
    assert failed and "between consecutive frames" in why and "22 Å" in why  # (10, 0) → (20, 5): 11.2 px
    failed, why = motion.judge_alignment(s, np.array([20.0, 3.0, 4.0, 5.0]), pixel_size_A=PX_A)
    assert failed and "median significance 4.5" in why
    assert motion.judge_alignment(s[:1], z[:1], pixel_size_A=PX_A) == (False, "")  # one frame: nothing to judge


def test_large_real_drift_is_followed_and_an_implausible_one_flagged() -> None:
    """A steady 60 Å drift (30 px over 6 frames at 2 Å/px, within the limits) is aligned; the same movie with
    a 50 Å total limit is flagged and left unshifted."""
    rng = np.random.default_rng(13)
    n = 6
    drift = np.stack([np.linspace(0, 24.0, n), np.linspace(0, -18.0, n)], axis=1)
    frames, _ = _noisy_movie(drift, (256, 256), 4.0, 0.3, rng)
    r = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, n), hot_pixel_sigma=0)
    assert not r.failed, r.failure_reason
    assert _rms(r.shifts_px + drift) < 0.15
    tight = motion.align_movie(frames, pixel_size_A=PX_A, grid=(1, 1, n), hot_pixel_sigma=0,
                               max_total_shift_A=50.0)
    assert tight.failed and "first frame" in tight.failure_reason
    np.testing.assert_array_equal(tight.shifts_px, 0.0)
    with pytest.raises(ValueError, match="limits must be positive"):
        motion.align_movie(frames, pixel_size_A=PX_A, max_frame_shift_A=0.0)
