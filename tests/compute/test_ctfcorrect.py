"""Phase flipping in strips: the sign against the CTF model, the strip plan against its formulas, an untilted
view against a direct whole-image flip, a tilted view made with a per-pixel defocus (the geometry of
ctffit.defocus_offsets_A) restored only with the right handedness, the fast strip code against the slow
reference, orientation symmetry, and the stack / geometry wrappers."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute import ctf as ctfmod
from tomoguide.compute import ctfcorrect as cc
from tomoguide.compute import ctffit
from tomoguide.geometry import TiltSeriesGeometry

PX = 2.0
SHAPE = (448, 512)
U, V, ANG = 15500.0, 14500.0, 25.0
TILT = 60.0


def _direct_flip(img: np.ndarray, u: float, v: float, ang: float, *, keep_contrast: bool = True,
                 px: float = PX, amplitude_contrast: float = 0.1) -> np.ndarray:
    """Whole-image flip with numpy's FFT and the sign of ctf_2d (CTF(0) = −A < 0 in underfocus)."""
    c = ctfmod.ctf_2d(img.shape, px, u, v, ang, amplitude_contrast=amplitude_contrast, rfft=True,
                      dtype=np.float64)
    sign = np.where(c > 0, 1.0, -1.0)
    if keep_contrast:
        sign = -sign
    return np.fft.irfft2(np.fft.rfft2(img) * sign, s=img.shape)


def _corr(a: np.ndarray, b: np.ndarray, band: np.ndarray | None = None, margin: int = 32) -> float:
    if band is not None:
        a = np.fft.irfft2(np.fft.rfft2(a) * band, s=a.shape)
        b = np.fft.irfft2(np.fft.rfft2(b) * band, s=b.shape)
    a = a[margin:-margin, margin:-margin] - a[margin:-margin, margin:-margin].mean()
    b = b[margin:-margin, margin:-margin] - b[margin:-margin, margin:-margin].mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def tilted_view() -> dict[str, np.ndarray]:
    """A weak-phase image of a random specimen whose defocus varies per pixel across the tilt axis
    (axis 80°, tilt 60°, handedness +1): blended between CTF-filtered copies at defocus levels 40 Å apart,
    the level weights from ctffit.defocus_offsets_A. Also the ideal correction: the same blend of copies
    filtered by −|CTF| (a flip with the exact defocus at every pixel)."""
    rng = np.random.default_rng(1)
    kx, ky = ctfmod.frequency_grid(SHAPE, PX, rfft=True)
    k2 = kx * kx + ky * ky
    obj = np.fft.irfft2(np.fft.rfft2(rng.normal(size=SHAPE)) * np.exp(-10.0 * k2), s=SHAPE)
    spec = np.fft.rfft2(obj)
    yy, xx = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    off = ctffit.defocus_offsets_A(xx, yy, SHAPE, PX, TILT, 80.0, 1)
    step = 40.0
    img = np.zeros(SHAPE)
    ideal = np.zeros(SHAPE)
    for level in np.arange(off.min() - step, off.max() + 2 * step, step):
        w = np.clip(1.0 - np.abs(off - level) / step, 0.0, None)
        if not w.any():
            continue
        c = ctfmod.ctf_2d(SHAPE, PX, U + level, V + level, ANG, rfft=True, dtype=np.float64)
        img += w * np.fft.irfft2(spec * c, s=SHAPE)
        ideal += w * np.fft.irfft2(spec * -np.abs(c), s=SHAPE)
    band = (k2 > 1.0 / 40.0**2).astype(np.float64)  # where the CTF oscillates
    return {"obj": obj, "img": img, "ideal": ideal, "band": band, "offsets": off}


KW = dict(pixel_size_A=PX, defocus_u_A=U, defocus_v_A=V, astig_angle_deg=ANG, tilt_deg=TILT,
          tilt_axis_deg=80.0, defocus_tolerance_A=100.0, defocus_handedness=1)  # the fixture's hand


# ---- sign and plan ------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [0.0, 1.2])
def test_flip_sign_is_the_sign_of_the_ctf_model(phase: float) -> None:
    shape = (96, 128)
    c = ctfmod.ctf_2d(shape, 1.5, 21000.0, 19000.0, -35.0, phase_shift_rad=phase, rfft=True, dtype=np.float64)
    s = cc.flip_sign(shape, 1.5, 21000.0, 19000.0, -35.0, phase_shift_rad=phase, keep_contrast=False)
    nonzero = np.abs(c) > 1e-6
    assert s.dtype == np.float32 and s.shape == c.shape
    assert set(np.unique(s)) <= {-1.0, 1.0}
    assert np.array_equal(s[nonzero], np.sign(c[nonzero]))
    kept = cc.flip_sign(shape, 1.5, 21000.0, 19000.0, -35.0, phase_shift_rad=phase)
    # keep_contrast: multiplied by the sign at k = 0, so the transfer is sign(CTF(0)) |CTF| everywhere.
    assert kept[0, 0] == 1.0
    assert np.all((kept * c)[nonzero] * np.sign(c[0, 0]) > 0)


def test_strip_plan_follows_the_defocus_tolerance() -> None:
    tol = 300.0
    plan = cc.plan_strips((500, 700), pixel_size_A=3.0, tilt_deg=-40.0, tilt_axis_deg=85.0,
                          defocus_handedness=-1, defocus_tolerance_A=tol)
    width = tol / (3.0 * math.tan(math.radians(40.0)))
    assert plan.strip_width_px == pytest.approx(width)
    assert plan.interpolation_width_px == pytest.approx(width)  # default: blend between centre lines
    # Neighbouring centre lines differ by exactly the tolerance in defocus; offsets −h tan β x_perp pixel.
    assert np.allclose(np.abs(np.diff(plan.defocus_offsets_A)), tol)
    assert np.allclose(plan.defocus_offsets_A, 1 * math.tan(math.radians(-40.0)) * plan.centres_px * 3.0)
    assert 0.0 in plan.centres_px
    # The strips cover the image: its corners lie within half a strip of the outermost centre lines.
    corners = plan.x_perp_px(np.array([0, 699, 0, 699]), np.array([0, 0, 499, 499]))
    assert plan.centres_px.min() - width / 2 <= corners.min() and corners.max() <= plan.centres_px.max() + width / 2
    # The blending weights are a partition of unity, also outside the image.
    u = np.linspace(-900, 900, 2001)
    w = plan.weights(u)
    assert w.shape == (plan.n_strips, u.size)
    assert np.allclose(w.sum(axis=0), 1.0, atol=1e-6) and w.min() >= 0
    hard = cc.plan_strips((500, 700), pixel_size_A=3.0, tilt_deg=-40.0, tilt_axis_deg=85.0,
                          defocus_tolerance_A=tol, interpolation_width_px=0.0)
    wh = hard.weights(u)
    assert np.allclose(wh.sum(axis=0), 1.0) and set(np.unique(wh)) <= {0.0, 1.0}
    flat = cc.plan_strips((500, 700), pixel_size_A=3.0, tilt_deg=0.0)
    assert flat.n_strips == 1 and np.array_equal(flat.defocus_offsets_A, [0.0])


# ---- flat view -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("keep_contrast", [True, False])
def test_untilted_view_equals_a_direct_whole_image_flip(keep_contrast: bool) -> None:
    rng = np.random.default_rng(3)
    img = rng.normal(size=(200, 240)).astype(np.float32) + 5.0
    out = cc.phase_flip(img, pixel_size_A=PX, defocus_u_A=U, defocus_v_A=V, astig_angle_deg=ANG, tilt_deg=0.0,
                        tilt_axis_deg=85.0, keep_contrast=keep_contrast)
    ref = _direct_flip(img.astype(np.float64), U, V, ANG, keep_contrast=keep_contrast)
    assert out.dtype == np.float32 and out.shape == img.shape
    assert np.abs(out - ref).max() < 1e-4 * np.abs(ref).max()
    # keep_contrast keeps the mean (the k = 0 term), otherwise it is negated.
    assert out.mean() == pytest.approx((1 if keep_contrast else -1) * img.mean(), rel=1e-4)


# ---- tilted view -------------------------------------------------------------------------------------------


def test_tilted_view_is_restored_only_with_the_right_handedness(tilted_view: dict[str, np.ndarray]) -> None:
    obj, img, ideal, band = (tilted_view[k] for k in ("obj", "img", "ideal", "band"))
    right = cc.phase_flip(img, **KW)
    wrong = cc.phase_flip(img, **{**KW, "defocus_handedness": -1})
    single = cc.phase_flip(img, **{**KW, "tilt_deg": 0.0})  # one defocus for the whole view
    raw_c = _corr(img, -obj, band)
    c_right, c_wrong, c_single = (_corr(x, -obj, band) for x in (right, wrong, single))
    # The CTF-modulated image barely correlates with the specimen in the band; flipping makes the transfer
    # −|CTF| (keep_contrast): strongly correlated with −specimen, only when the strips follow the gradient.
    assert abs(raw_c) < 0.15
    assert c_right > 0.8
    assert c_right > c_single + 0.12
    assert c_right > c_wrong + 0.3
    # Against the per-pixel ideal flip.
    assert _corr(right, ideal, band) > 0.93
    assert _corr(single, ideal, band) < 0.8


def test_strip_code_matches_the_slow_reference(tilted_view: dict[str, np.ndarray]) -> None:
    img, ideal, band = tilted_view["img"], tilted_view["ideal"], tilted_view["band"]
    for axis in (80.0, -170.0):  # transposed branch; direct branch with the axis pointing down
        kw = {**KW, "tilt_axis_deg": axis}
        fast = cc.phase_flip(img, **kw)
        slow = cc.phase_flip_reference(img, **kw)
        # Crops and whole-image FFTs differ only in where the sign filter's long tails wrap around.
        assert _corr(fast, slow, band) > 0.95
        if axis == 80.0:  # the simulated geometry: both as close to the ideal flip
            assert abs(_corr(fast, ideal, band) - _corr(slow, ideal, band)) < 0.01
    # At 45° a padded strip is as wide as the image: the whole-image branch is the reference exactly.
    kw = {**KW, "tilt_axis_deg": 45.0}
    fast = cc.phase_flip(img, **kw)
    slow = cc.phase_flip_reference(img, **kw)
    # (float32 signs may differ from float64 ones at a few frequencies right on a CTF zero)
    assert np.sqrt(np.mean((fast - slow) ** 2)) < 1e-3 * np.std(slow)


def test_transposed_image_with_the_mirrored_axis_gives_the_transposed_result() -> None:
    # Transposing swaps x and y: the axis angle θ (from +Y) becomes 90° − θ, the astigmatism angle
    # (from +X) becomes 90° − angle.
    rng = np.random.default_rng(5)
    img = rng.normal(size=(160, 200)).astype(np.float32)
    kw = dict(pixel_size_A=PX, defocus_u_A=U, defocus_v_A=V, tilt_deg=50.0, defocus_tolerance_A=200.0)
    a = cc.phase_flip(img, tilt_axis_deg=20.0, astig_angle_deg=ANG, **kw)
    b = cc.phase_flip(img.T, tilt_axis_deg=70.0, astig_angle_deg=90.0 - ANG, **kw)
    assert np.allclose(a, b.T, atol=1e-5)


def test_default_padding_and_strip_width() -> None:
    # Delocalisation at Nyquist: λ Δf k_N + Cs λ³ k_N³, in px.
    lam = ctfmod.electron_wavelength_A(300.0)
    kn = 0.25
    expected = (lam * 30000.0 * kn + 2.7e7 * lam**3 * kn**3) / 2.0
    assert cc.delocalisation_px(30000.0, pixel_size_A=2.0) == pytest.approx(expected)
    assert cc.DEFAULT_DEFOCUS_TOLERANCE_A == 2000.0
    plan = cc.plan_strips((1024, 1024), pixel_size_A=5.4, tilt_deg=60.0)
    assert plan.strip_width_px == pytest.approx(2000.0 / (5.4 * math.tan(math.radians(60.0))))


# ---- stacks and geometry ----------------------------------------------------------------------------------


def test_stack_flips_each_view_and_copies_skipped_ones() -> None:
    rng = np.random.default_rng(7)
    stack = rng.normal(size=(3, 96, 112)).astype(np.float32)
    tilts = np.array([-30.0, 0.0, 30.0])
    du = np.array([20000.0, 21000.0, 22000.0])
    out = cc.phase_flip_stack(stack, pixel_size_A=PX, defocus_u_A=du, defocus_v_A=du - 500, astig_angle_deg=10.0,
                              tilt_deg=tilts, tilt_axis_deg=84.0, skip=[False, True, False],
                              defocus_tolerance_A=150.0)
    assert out.dtype == np.float32 and out.shape == stack.shape
    assert np.array_equal(out[1], stack[1])
    for i in (0, 2):
        one = cc.phase_flip(stack[i], pixel_size_A=PX, defocus_u_A=du[i], defocus_v_A=du[i] - 500,
                            astig_angle_deg=10.0, tilt_deg=tilts[i], tilt_axis_deg=84.0, defocus_tolerance_A=150.0)
        assert np.array_equal(out[i], one)
    with pytest.raises(ValueError):
        cc.phase_flip_stack(stack, pixel_size_A=PX, defocus_u_A=du[:2], defocus_v_A=du[:2], astig_angle_deg=0,
                            tilt_deg=tilts)


def _geometry(xf: np.ndarray | None, hand: int = 1) -> TiltSeriesGeometry:
    return TiltSeriesGeometry(name="TS", pixel_size_A=1.0, binning=2.0, image_shape_px=(96, 112),
                              tilt_axis_deg=80.0, tilt_angles_deg=[-40.0, 0.0, 40.0], tilt_offset_deg=2.0,
                              xf=xf, excluded=[False, False, True], defocus_handedness=hand)


def test_series_wrapper_moves_the_defocus_to_the_aligned_centre() -> None:
    rng = np.random.default_rng(9)
    stack = rng.normal(size=(3, 96, 112)).astype(np.float32)
    a = np.array([[math.cos(math.radians(-80.0)), -math.sin(math.radians(-80.0))],
                  [math.sin(math.radians(-80.0)), math.cos(math.radians(-80.0))]])
    d = np.array([[6.0, -3.0], [0.0, 0.0], [-4.0, 2.0]])
    xf = np.concatenate([np.broadcast_to(a, (3, 2, 2)), d[:, :, None]], axis=2)
    geom = _geometry(xf, hand=-1)
    du = np.array([20000.0, 20500.0, 21000.0])
    dv = du - 400.0
    ang = np.array([30.0, 35.0, 40.0])
    out = cc.phase_flip_series(stack, geom, defocus_u_A=du, defocus_v_A=dv, astig_angle_deg=ang, aligned=True,
                               defocus_tolerance_A=150.0)
    beta = -40.0 + 2.0
    # Raw centre = aligned point d: Δf(aligned centre) = Δf(raw centre) + h tan β pixel d_x (h = −1, pixel 2 Å).
    shift = -1 * math.tan(math.radians(beta)) * 2.0 * 6.0
    exp0 = cc.phase_flip(stack[0], pixel_size_A=2.0, defocus_u_A=du[0] + shift, defocus_v_A=dv[0] + shift,
                         astig_angle_deg=30.0 - 80.0, tilt_deg=beta, tilt_axis_deg=0.0, defocus_handedness=-1,
                         defocus_tolerance_A=150.0)
    assert np.allclose(out[0], exp0, atol=1e-5)
    assert np.array_equal(out[2], stack[2])  # excluded view copied
    # Raw frame, defocus given at the tomogram centre: moved to the raw centre (−shift), axis from the xf.
    raw = cc.phase_flip_series(stack, geom, defocus_u_A=du, defocus_v_A=dv, astig_angle_deg=ang, aligned=False,
                               defocus_at="tomogram_centre", defocus_tolerance_A=150.0)
    exp_raw = cc.phase_flip(stack[0], pixel_size_A=2.0, defocus_u_A=du[0] - shift, defocus_v_A=dv[0] - shift,
                            astig_angle_deg=30.0, tilt_deg=beta, tilt_axis_deg=80.0, defocus_handedness=-1,
                            defocus_tolerance_A=150.0)
    assert np.allclose(raw[0], exp_raw, atol=1e-5)
    # Consistency with the geometry record: the defocus offset of the raw centre's specimen point.
    ctr = np.array([[0.0, 0.0, 0.0]])
    assert geom.defocus_offset_A(ctr)[0, 0] == pytest.approx(0.0)


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        cc.phase_flip(np.zeros((4, 8, 8)), pixel_size_A=1.0, defocus_u_A=1e4, defocus_v_A=1e4, astig_angle_deg=0,
                      tilt_deg=0)
    with pytest.raises(ValueError):
        cc.plan_strips((8, 8), pixel_size_A=1.0, tilt_deg=10.0, defocus_handedness=0)


# ---- the simulator's tiny data set ---------------------------------------------------------------------------


def test_tiny_dataset_centre_defocus_and_flip_against_truth(tiny_dataset) -> None:
    """On the simulator's tiny preset (raw gain-corrected sums, tilts ±30°, defocus ~4 µm, 2 Å/px):
    (1) the tomogram-centre → raw-image-centre defocus shift agrees with the truth's own image-centre columns;
    (2) beyond the first CTF zero (25-10 Å) the raw views do not correlate with the true projected potential,
    the views flipped with the true defocus do (negatively: dark particles kept), and flipping with a defocus
    8000 Å off does not."""
    import mrcfile
    import starfile

    from tomoguide.compute import rescale
    from tomoguide.compute.io.movies import read_gain, read_movie

    root = Path(tiny_dataset)
    name = "TS_01"
    geom = TiltSeriesGeometry.model_validate_json((root / "truth" / name / f"{name}_geometry.json").read_text())
    tilts = starfile.read(root / "truth" / name / f"{name}_tilts.star", always_dict=True)["tilts"]
    du, dv = tilts["rlnDefocusU"].to_numpy(), tilts["rlnDefocusV"].to_numpy()
    ang = tilts["rlnDefocusAngle"].to_numpy()
    shift = cc.centre_defocus_shift_A(geom, aligned=False, defocus_at="tomogram_centre")
    truth_shift = tilts["tomoguideDefocusUAtImageCentre"].to_numpy() - du
    assert np.abs(truth_shift).max() > 10.0  # the check is not vacuous
    assert np.abs(shift - truth_shift).max() < 2.5  # the rest: the slab's own 2-3° tilt

    gain = read_gain(root / "data" / "gain.mrc", flip_x=True)
    stack = np.array([read_movie(root / m).sum(0).astype(np.float32) * gain
                      for m in tilts["rlnMicrographMovieName"]])
    flipped = cc.phase_flip_series(stack, geom, defocus_u_A=du, defocus_v_A=dv, astig_angle_deg=ang,
                                   aligned=False, defocus_at="tomogram_centre")
    off = cc.phase_flip_series(stack, geom, defocus_u_A=du - 8000, defocus_v_A=dv - 8000, astig_angle_deg=ang,
                               aligned=False, defocus_at="tomogram_centre")

    # True projections of the specimen volume (bin 2) into each raw view at bin 2, by bilinear splatting.
    vol = mrcfile.read(root / "truth" / name / f"{name}_specimen_bin2.mrc").astype(np.float64)
    g2 = geom.at_binning(2.0)
    nz, ny, nx = vol.shape
    keep = np.abs(vol) > 1e-2 * np.abs(vol).max()
    zz, yy, xx = np.nonzero(keep)
    pts = np.stack([xx - (nx - 1) / 2, yy - (ny - 1) / 2, zz - (nz - 1) / 2], axis=1)
    val = vol[keep]
    shape2 = g2.image_shape_px
    pm = g2.projection_matrices(volume_coordinates=True)
    k = np.hypot(*np.meshgrid(np.fft.rfftfreq(shape2[1], 4.0), np.fft.fftfreq(shape2[0], 4.0)))
    band = ((k > 1 / 25.0) & (k < 1 / 10.0)).astype(np.float64)

    def project(p: np.ndarray) -> np.ndarray:
        uv = pts @ p[:2, :3].T + p[:2, 3]
        u0, v0 = np.floor(uv[:, 0]).astype(np.int64), np.floor(uv[:, 1]).astype(np.int64)
        fu, fv = uv[:, 0] - u0, uv[:, 1] - v0
        out = np.zeros(shape2[0] * shape2[1])
        for du_, dv_, w in ((0, 0, (1 - fu) * (1 - fv)), (1, 0, fu * (1 - fv)), (0, 1, (1 - fu) * fv),
                            (1, 1, fu * fv)):
            uu, vv = u0 + du_, v0 + dv_
            ok = (uu >= 0) & (uu < shape2[1]) & (vv >= 0) & (vv < shape2[0])
            out += np.bincount(vv[ok] * shape2[1] + uu[ok], weights=(w * val)[ok], minlength=out.size)
        return out.reshape(shape2)

    c_raw, c_flip, c_off = [], [], []
    for i in range(geom.n_views):
        proj = -project(pm[i])
        c_raw.append(_corr(rescale.fourier_bin(stack[i], 2.0), proj, band, margin=16))
        c_flip.append(_corr(rescale.fourier_bin(flipped[i], 2.0), proj, band, margin=16))
        c_off.append(_corr(rescale.fourier_bin(off[i], 2.0), proj, band, margin=16))
    c_raw, c_flip, c_off = np.array(c_raw), np.array(c_flip), np.array(c_off)
    assert np.all(c_flip > 0.005)
    assert np.all(c_flip > c_raw) and np.sum(c_flip > c_off) >= geom.n_views - 2
    assert c_flip.mean() > c_raw.mean() + 0.02 and c_flip.mean() > c_off.mean() + 0.015
    assert abs(c_raw.mean()) < 0.015
