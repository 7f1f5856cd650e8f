"""Tomogram reconstruction (tomoguide.compute.reconstruct): geometry against the record's projection matrices,
the IMOD filter formulas, the fast kernels against the pure-numpy reference and against analytic projections,
adjointness of the SIRT projector pair, excluded views, and handedness against the simulator's truth."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as ndi

from tomoguide.compute import backproject_numba as kern
from tomoguide.compute import reconstruct as rec
from tomoguide.geometry import TiltSeriesGeometry

# --------------------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------------------


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64) - np.mean(a)
    b = np.asarray(b, np.float64) - np.mean(b)
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


def _geometry(n: int = 9, shape: tuple[int, int] = (40, 48), *, axis: float = 80.0, seed: int = 1,
              max_tilt: float = 60.0, **fields: object) -> TiltSeriesGeometry:
    rng = np.random.default_rng(seed)
    g = rec.simple_geometry(np.linspace(-max_tilt, max_tilt, n), shape, tilt_axis_deg=axis,
                            shifts_px=rng.normal(0, 2.0, (n, 2)))
    if fields:
        g = g.model_validate({**g.model_dump(), **fields})
    return g


def _blobs(rng: np.random.Generator, n: int, shape: tuple[int, int, int], sigma: float,
           margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Random blob centres (specimen px from the tomogram centre, (x, y, z)) and amplitudes."""
    nz, ny, nx = shape
    half = np.array([nx, ny, nz]) / 2.0 - margin
    return rng.uniform(-half, half, (n, 3)), rng.uniform(0.5, 1.5, n)


def _blob_volume(centres: np.ndarray, amps: np.ndarray, sigma: float, shape: tuple[int, int, int]) -> np.ndarray:
    nz, ny, nx = shape
    z, y, x = np.meshgrid(np.arange(nz) - (nz - 1) / 2, np.arange(ny) - (ny - 1) / 2, np.arange(nx) - (nx - 1) / 2,
                          indexing="ij")
    vol = np.zeros(shape)
    for (cx, cy, cz), a in zip(centres, amps, strict=True):
        vol += a * np.exp(-((x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2) / (2 * sigma**2))
    return vol


def _blob_projections(g: TiltSeriesGeometry, centres: np.ndarray, amps: np.ndarray, sigma: float) -> np.ndarray:
    """Exact line integrals of isotropic Gaussian blobs in the raw views: each projects to a 2D Gaussian of
    peak ``a √(2π) σ`` at the raw pixel given by the record's own ``project`` (independent of the kernels)."""
    ny, nx = g.image_shape_px
    uv = g.project(centres)[..., :2]  # (n_views, m, 2)
    v, u = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    out = np.zeros((g.n_views, ny, nx), np.float32)
    for i in range(g.n_views):
        img = np.zeros((ny, nx))
        for (cu, cv), a in zip(uv[i], amps, strict=True):
            img += a * math.sqrt(2 * math.pi) * sigma * np.exp(-((u - cu) ** 2 + (v - cv) ** 2) / (2 * sigma**2))
        out[i] = img
    return out


# --------------------------------------------------------------------------------------------------------
# geometry, filter, weights
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fields", [{}, {"z_flip": True}, {"x_tilt_deg": 4.0}, {"tilt_offset_deg": 1.3}])
def test_voxel_to_raw_matches_the_records_projection_matrices(fields: dict) -> None:
    g = _geometry(**fields)
    shape = (10, 24, 28)
    nz, ny, nx = shape
    vox = np.array([[3, 5, 2], [20, 10, 7], [13.5, 11.5, 4.5], [0, 0, 0], [27, 23, 9]], float)
    got = rec.voxel_to_raw(g, shape, vox)
    pts = np.stack([vox[:, 0] - (nx - 1) / 2, vox[:, 1] - (ny - 1) / 2, vox[:, 2] - (nz - 1) / 2], axis=1)
    want = g.project(pts, volume_coordinates=True)[..., :2]
    np.testing.assert_allclose(got, want, atol=1e-9)


def test_offsets_follow_imod_conventions() -> None:
    g = _geometry(axis=0.0, seed=3)
    shape = (10, 24, 28)
    nz, ny, nx = shape
    base = rec.voxel_to_raw(g, shape, [[10.0, 5.0, 4.0]])
    # SHIFT: the reconstruction moves by (sx, sz) voxels: the voxel (sx, sz) further on shows the same point
    moved = rec.voxel_to_raw(g, shape, [[10.0 + 3.0, 5.0, 4.0 - 2.0]], shift_x_px=3.0, shift_z_px=-2.0)
    np.testing.assert_allclose(moved, base, atol=1e-9)
    # OFFSET angle: the same as a record whose tilt offset is larger by that much
    g2 = g.model_validate({**g.model_dump(), "tilt_offset_deg": g.tilt_offset_deg + 2.5})
    np.testing.assert_allclose(rec.voxel_to_raw(g, shape, [[3.0, 7.0, 1.0]], tilt_offset_deg=2.5),
                               rec.voxel_to_raw(g2, shape, [[3.0, 7.0, 1.0]]), atol=1e-9)
    # axis offset a: the voxel column (nx-1)/2 + a holds the tilt axis, which lies a px right of the aligned
    # centre in every view: its raw position is the aligned point (a, y') mapped back through the xf
    a = 2.5
    on_axis = rec.voxel_to_raw(g, shape, [[(nx - 1) / 2 + a, 5.0, (nz - 1) / 2]], axis_offset_px=a)
    xf = g.xf_array()
    aligned = np.einsum("nij,nj->ni", xf[:, :, :2], on_axis[:, 0] - g.image_centre_px()) + xf[:, :, 2]
    np.testing.assert_allclose(aligned[:, 0], a, atol=1e-9)
    np.testing.assert_allclose(aligned[:, 1], 5.0 - (ny - 1) / 2, atol=1e-9)


def test_radial_filter_is_imods() -> None:
    f = np.linspace(0, 0.6, 601)
    h = rec.radial_filter(f, cutoff=0.35, falloff=0.035, line_length=100)
    below = (f > 0) & (f <= 0.35)
    np.testing.assert_allclose(h[below], f[below])  # the ramp, cycles/px
    assert h[0] == pytest.approx(0.2 / 100)  # Kak & Slaney's zero-frequency value, as IMOD
    i = np.argmin(np.abs(f - (0.35 + 0.035)))  # one true sigma beyond the cutoff
    assert h[i] == pytest.approx(0.35 * math.exp(-0.5), rel=1e-9)
    assert np.all(h[f > 0.5] == 0)
    assert np.all(np.diff(h[f > 0.35]) <= 0)
    # fake SIRT: |f| (1 - (1 - α/|f|)^(N' + 0.3)) with IMOD's N' mapping
    assert rec.fake_sirt_effective_iterations(10) == 10
    assert rec.fake_sirt_effective_iterations(20) == pytest.approx(19.0)
    assert rec.fake_sirt_effective_iterations(40) == pytest.approx(33.0)
    hs = rec.radial_filter(f, cutoff=0.5, fake_sirt_iterations=20)
    j = np.argmin(np.abs(f - 0.01))
    assert hs[j] == pytest.approx(0.01 * (1 - (1 - 0.00195 / 0.01) ** 19.3), rel=1e-9)
    # fewer iterations = stronger low-pass relative to the ramp; many iterations -> the ramp
    r10 = rec.radial_filter([0.2], cutoff=0.5, fake_sirt_iterations=10)[0]
    r30 = rec.radial_filter([0.2], cutoff=0.5, fake_sirt_iterations=30)[0]
    r500 = rec.radial_filter([0.2], cutoff=0.5, fake_sirt_iterations=500)[0]
    assert r10 < r30 < r500 < 0.2
    assert r500 == pytest.approx(0.2, rel=0.05)
    with pytest.raises(ValueError):
        rec.radial_filter(f, falloff=0.0)


def test_view_weights_are_local_tilt_increments() -> None:
    w = rec.view_weights([-60, -57, -54, 0, 3, 6])
    np.testing.assert_allclose(np.degrees(w), [3, 3, 28.5, 28.5, 3, 3])
    np.testing.assert_allclose(np.degrees(rec.view_weights([-6, 0, 6], density=False)), [6, 6, 6])
    np.testing.assert_allclose(np.degrees(rec.view_weights([3, -3, 0])), [3, 3, 3])  # any order


# --------------------------------------------------------------------------------------------------------
# kernels against the reference and against exact projections
# --------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smooth_stack() -> tuple[TiltSeriesGeometry, np.ndarray]:
    g = _geometry()
    rng = np.random.default_rng(0)
    stack = ndi.gaussian_filter(rng.normal(size=(g.n_views, *g.image_shape_px)), (0, 2, 2)).astype(np.float32)
    return g, stack + 3.0


def test_plain_backprojection_matches_direct_projection_matrices(smooth_stack) -> None:
    g, stack = smooth_stack
    shape = (10, 24, 28)
    fast = rec.backproject(stack, g, shape, radial_weighting=False, subtract_mean=False)
    ref = rec.backproject_reference(stack, g, shape, radial_weighting=False, subtract_mean=False)
    assert fast.dtype == np.float32 and fast.shape == shape
    assert _cc(fast, ref) > 0.999
    assert np.sqrt(np.mean((fast - ref) ** 2)) < 0.01 * np.sqrt(np.mean(ref**2))


@pytest.mark.parametrize("kw", [{}, {"shift_x_px": 2.0, "shift_z_px": -1.5, "tilt_offset_deg": 2.0,
                                     "axis_offset_px": 1.5}, {"fake_sirt_iterations": 12}])
def test_weighted_backprojection_matches_reference(smooth_stack, kw: dict) -> None:
    g, stack = smooth_stack
    shape = (10, 24, 28)
    fast = rec.backproject(stack, g, shape, **kw)
    ref = rec.backproject_reference(stack, g, shape, **kw)
    assert _cc(fast, ref) > 0.99
    assert np.std(fast) == pytest.approx(np.std(ref), rel=0.05)


def test_wbp_recovers_blobs_at_their_density_over_a_half_turn() -> None:
    """Over ±88° in 2° steps, WBP with a plain ramp is the inverse Radon transform: exact line integrals of
    Gaussian blobs come back at their peak density (the scale is physical) and in the right places."""
    rng = np.random.default_rng(5)
    shape = (24, 16, 32)
    sigma = 2.0
    centres, amps = _blobs(rng, 5, shape, sigma, margin=5)
    g = rec.simple_geometry(np.arange(-88.0, 88.1, 2.0), (24, 40), tilt_axis_deg=7.0,
                            shifts_px=rng.normal(0, 1.0, (89, 2)))
    stack = _blob_projections(g, centres, amps, sigma)
    vol = rec.backproject(stack, g, shape, radial_cutoff=0.5, subtract_mean=False)
    truth = _blob_volume(centres, amps, sigma, shape)
    assert _cc(vol, truth) > 0.97
    nz, ny, nx = shape
    at = ndi.map_coordinates(vol, [centres[:, 2] + (nz - 1) / 2, centres[:, 1] + (ny - 1) / 2,
                                   centres[:, 0] + (nx - 1) / 2], order=1)
    want = ndi.map_coordinates(truth, [centres[:, 2] + (nz - 1) / 2, centres[:, 1] + (ny - 1) / 2,
                                       centres[:, 0] + (nx - 1) / 2], order=1)
    np.testing.assert_allclose(at, want, rtol=0.12)


def test_forward_projector_is_the_adjoint_of_the_backprojector() -> None:
    rng = np.random.default_rng(2)
    for fields in ({}, {"x_tilt_deg": 5.0}):
        g = _geometry(**fields)
        shape = (9, 20, 26)
        s = rec._setup(g, shape, shift_x_px=0.7, shift_z_px=-0.4, tilt_offset_deg=0.0, axis_offset_px=0.3)
        w = rng.uniform(0.5, 2.0, s.views.size)
        x = rng.normal(size=shape).astype(np.float32)
        y = rng.normal(size=(s.views.size, s.n_rows, s.n_cols)).astype(np.float32)
        ax = np.zeros_like(y)
        fp = kern.forward_project_lines_by_view if s.x_tilt else kern.forward_project_lines
        fp(x, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, w, ax)
        aty = np.empty(shape, np.float32)
        kern.backproject_lines(y, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, w, aty, np.empty((1, 1, 1), np.float32),
                               False)
        lhs = float(np.dot(ax.ravel().astype(np.float64), y.ravel()))
        rhs = float(np.dot(x.ravel().astype(np.float64), aty.ravel()))
        assert lhs == pytest.approx(rhs, rel=1e-4)
        if not s.x_tilt:  # the view-parallel kernel is the same operator
            ax2 = np.zeros_like(y)
            kern.forward_project_lines_by_view(x, s.ky, s.kz, s.kc, s.ry, s.rz, s.rc, w, ax2)
            np.testing.assert_allclose(ax2, ax, atol=1e-4)


def test_sirt_fits_exact_projections_better_than_wbp() -> None:
    rng = np.random.default_rng(11)
    shape = (16, 12, 32)
    sigma = 1.8
    centres, amps = _blobs(rng, 6, shape, sigma, margin=4)
    g = rec.simple_geometry(np.arange(-60.0, 60.1, 3.0), (16, 40), tilt_axis_deg=-4.0)
    stack = _blob_projections(g, centres, amps, sigma)
    truth = _blob_volume(centres, amps, sigma, shape)
    seen: list[float] = []
    x5 = rec.sirt(stack, g, shape, n_iter=5, progress=lambda f, m: seen.append(f), by_volume=False)
    x30 = rec.sirt(stack, g, shape, n_iter=30)
    wbp = rec.backproject(stack, g, shape)
    # slice by slice (no X-axis tilt): progress after each block of Y slices, ending at 1
    assert seen[-1] == pytest.approx(1.0) and np.all(np.diff(seen) > 0) and len(seen) == 12
    # the whole-volume version (the first one): progress per iteration, the same result
    seen.clear()
    x5v = rec.sirt(stack, g, shape, n_iter=5, progress=lambda f, m: seen.append(f), by_volume=True)
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(x5, x5v, atol=1e-5 * np.abs(x5v).max())
    # the default for so small a volume is the whole-volume path (faster below SIRT_SLABS_MIN_VOXELS)
    seen.clear()
    x5d = rec.sirt(stack, g, shape, n_iter=5, progress=lambda f, m: seen.append(f))
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0]) and np.array_equal(x5d, x5v)
    assert _cc(x30, truth) > _cc(x5, truth) > 0.6
    assert _cc(x30, truth) > _cc(wbp, truth)
    assert _cc(x30, truth) > 0.85
    xp = rec.sirt(stack, g, shape, n_iter=5, positivity=True, subtract_mean=False, by_volume=False)
    assert xp.min() >= 0
    xpv = rec.sirt(stack, g, shape, n_iter=5, positivity=True, subtract_mean=False, by_volume=True)
    np.testing.assert_allclose(xp, xpv, atol=1e-5 * np.abs(xpv).max())


# --------------------------------------------------------------------------------------------------------
# excluded views
# --------------------------------------------------------------------------------------------------------


def test_excluded_view_contributes_nothing(smooth_stack) -> None:
    g, stack = smooth_stack
    shape = (8, 20, 24)
    bad = 3
    spoiled = stack.copy()
    spoiled[bad] = 1e4 * np.random.default_rng(9).normal(size=spoiled[bad].shape)
    excl = [i == bad for i in range(g.n_views)]
    gx = g.model_validate({**g.model_dump(), "excluded": excl})
    keep = [i for i in range(g.n_views) if i != bad]
    d = g.model_dump()
    gk = g.model_validate({**d, "tilt_angles_deg": [d["tilt_angles_deg"][i] for i in keep],
                           "xf": [d["xf"][i] for i in keep], "excluded": []})
    for fn in (rec.backproject, lambda s_, g_, sh: rec.sirt(s_, g_, sh, n_iter=3)):
        with_excluded = fn(spoiled, gx, shape)
        without = fn(stack[keep], gk, shape)
        np.testing.assert_allclose(with_excluded, without, rtol=1e-5, atol=1e-6 * float(np.abs(without).max()))
        assert np.abs(fn(spoiled, g, shape) - without).max() > 100 * np.abs(without).max()  # it would show
    with pytest.raises(ValueError, match="excluded"):
        rec.backproject(stack, g.model_validate({**g.model_dump(), "excluded": [True] * g.n_views}), shape)


def test_input_checks_and_mrc_voxel_size(tmp_path: Path, smooth_stack) -> None:
    from tomoguide.compute.io.mrc import read_mrc

    g, stack = smooth_stack
    with pytest.raises(ValueError, match="views"):
        rec.backproject(stack[:-1], g, (4, 8, 8))
    with pytest.raises(ValueError, match="at_binning"):
        rec.backproject(stack[:, :-2], g, (4, 8, 8))
    g4 = g.model_validate({**g.model_dump(), "pixel_size_A": 2.5, "binning": 4.0})
    vol = rec.backproject(stack, g4, (4, 8, 8))
    path = rec.save_tomogram(tmp_path / "t.mrc", vol, g4)
    data, info = read_mrc(path)
    assert data.shape == (4, 8, 8)
    assert info.voxel_size_A == pytest.approx((10.0, 10.0, 10.0))


# --------------------------------------------------------------------------------------------------------
# handedness against the simulator's truth
# --------------------------------------------------------------------------------------------------------


def _lowpass(v: np.ndarray, res_A: float, px_A: float) -> np.ndarray:
    f = np.fft.rfftn(v)
    kz = np.fft.fftfreq(v.shape[0])[:, None, None]
    ky = np.fft.fftfreq(v.shape[1])[None, :, None]
    kx = np.fft.rfftfreq(v.shape[2])[None, None, :]
    k = np.sqrt(kz**2 + ky**2 + kx**2) / px_A
    return np.fft.irfftn(f * (k <= 1.0 / res_A), s=v.shape, axes=(0, 1, 2))


@pytest.fixture(scope="module")
def tiny_truth_series(tiny_dataset: Path):
    """The tiny preset's views as the motion step would make them (gain-corrected frame sums with the true
    frame shifts), binned 2 like the truth volume, with the TRUE geometry (truth/<TS>_geometry.json)."""
    from tomoguide.compute.io.movies import read_gain, read_movie
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_star
    from tomoguide.compute.rescale import fourier_bin

    truth = tiny_dataset / "truth"
    name = "TS_01"
    g = TiltSeriesGeometry.model_validate_json((truth / name / f"{name}_geometry.json").read_text())
    blocks = read_star(truth / name / f"{name}_tilts.star")
    tilts = blocks["tilts"].sort_values("rlnTomoNominalStageTiltAngle")
    np.testing.assert_allclose(tilts["rlnTomoNominalStageTiltAngle"], g.tilt_angles_deg)
    shifts = blocks["frame_shifts"]
    gain = read_gain(tiny_dataset / "data" / "gain.mrc", flip_x=True)  # summary.json: stored flipped in X
    views = []
    for movie in tilts["rlnMicrographMovieName"]:
        frames = read_movie(tiny_dataset / movie).astype(np.float64) * gain
        sh = shifts[shifts["rlnMicrographMovieName"] == movie].sort_values("rlnMicrographFrameNumber")
        acc = np.zeros(frames.shape[1:], complex)
        for frame, sx, sy in zip(frames, sh["rlnMicrographShiftX"], sh["rlnMicrographShiftY"], strict=True):
            acc += ndi.fourier_shift(np.fft.fft2(frame), (sy, sx))  # content moves by +s: aligned onto frame 1
        views.append(np.fft.ifft2(acc).real)
    b = int(round(float(__import__("json").loads((truth / "summary.json").read_text())["conventions"]
                        ["true_volume_binning"])))
    stack = -np.asarray(fourier_bin(np.stack(views).astype(np.float32), b))  # inverted: protein bright
    vol, info = read_mrc(truth / name / f"{name}_specimen_bin{b}.mrc")
    import starfile

    parts = starfile.read(truth / "particles.star")["particles"]
    parts = parts[parts["rlnTomoName"] == name]
    xyz_A = parts[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                   "rlnCenteredCoordinateZAngst"]].to_numpy(float)
    return g.at_binning(b), stack, np.asarray(vol, np.float32), float(info.voxel_size_A[0]), xyz_A


def test_handedness_against_the_simulators_truth(tiny_truth_series, tmp_path: Path) -> None:
    g, stack, truth, voxel_A, xyz_A = tiny_truth_series
    assert g.pixel_size_binned_A == pytest.approx(voxel_A)
    shape = truth.shape
    nz, ny, nx = shape
    wbp = rec.backproject(stack, g, shape)
    srt = rec.sirt(stack, g, shape, n_iter=10)
    res_A = 40.0  # below the first CTF zero (~28 Å at 4 µm): no CTF correction here
    t = _lowpass(truth, res_A, voxel_A)
    for vol, floor in ((wbp, 0.2), (srt, 0.25)):
        v = _lowpass(vol, res_A, voxel_A)
        cc = _cc(v, t)
        assert cc > floor
        assert cc > 3 * _cc(v, t[::-1])  # z mirrored truth: clearly worse
        assert cc > 3 * abs(_cc(v, t[:, :, ::-1]))  # x mirrored
    # particles fall on densities: z-scores (40 Å low-pass) at the true positions, above the mirrored ones
    # (z -> -z) and above positions shifted sideways by 120 Å in the same slab
    v = _lowpass(wbp, res_A, voxel_A)
    v = (v - v.mean()) / v.std()
    pos = xyz_A / voxel_A + np.array([(nx - 1) / 2, (ny - 1) / 2, (nz - 1) / 2])

    def at(p: np.ndarray) -> np.ndarray:
        return ndi.map_coordinates(v, [p[:, 2], p[:, 1], p[:, 0]], order=1)

    mirrored = pos * [1, 1, -1] + [0, 0, nz - 1]
    sideways = pos + [30.0 * 4.0 / voxel_A, 30.0 * 4.0 / voxel_A, 0.0]
    assert np.median(at(pos)) > 1.5
    assert at(pos).mean() > at(mirrored).mean() + 0.5
    assert at(pos).mean() > at(sideways).mean() + 1.5
    # no offset: the particle average peaks at its centre (within 1 voxel in x, y; 2 in z, the missing wedge)
    r = 6
    boxes = [v[int(round(p[2])) - r:int(round(p[2])) + r + 1, int(round(p[1])) - r:int(round(p[1])) + r + 1,
               int(round(p[0])) - r:int(round(p[0])) + r + 1] for p in pos
             if all(r <= round(c) < n - r for c, n in zip(p[::-1], shape, strict=True))]
    assert len(boxes) >= 8
    avg = np.mean(boxes, axis=0)
    peak = np.array(np.unravel_index(np.argmax(avg), avg.shape)) - r
    assert abs(peak[1]) <= 1 and abs(peak[2]) <= 1 and abs(peak[0]) <= 2
    # the MRC carries the voxel size of the binning
    from tomoguide.compute.io.mrc import read_header

    assert read_header(rec.save_tomogram(tmp_path / "rec.mrc", wbp, g)).voxel_size_A[0] == pytest.approx(voxel_A)
