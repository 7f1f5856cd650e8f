"""Subtomogram averaging core (tomoguide.compute.sta) on synthetic tilt series made here.

The data: a chiral reference (Gaussian blobs) projected by the simulator's independent Fourier projector
(tomoguide.compute.simulate.FourierProjector) into raw views of a geometry with a tilt axis at 85° and
per-view shifts, each particle's projection multiplied by ctf_2d at its own (height-dependent) defocus and by
the exposure filter of its view, plus Gaussian noise. With the true poses the average must match the reference,
with the right hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.fft

from synthetic_particles import blob_map

from tomoguide.compute import sta
from tomoguide.compute.ctf import ctf_2d
from tomoguide.compute.dose import dose_filter
from tomoguide.compute.euler import euler_to_matrix
from tomoguide.compute.simulate import FourierProjector
from tomoguide.compute.symmetry import symmetry_matrices
from tomoguide.geometry import TiltSeriesGeometry

PX = 5.0
BOX = 32


def _chiral_reference(box: int = BOX) -> np.ndarray:
    # a right-handed helix of blobs plus an off-axis marker: no mirror symmetry
    t = np.linspace(0, 2 * np.pi, 9)
    centres = np.stack([6 * np.cos(t), 6 * np.sin(t), 1.4 * (t - np.pi) * 2], axis=1)
    centres = np.vstack([centres, [[0, 0, 0], [3, -2, 5]]])
    return blob_map(box, centres, 1.6)


def _geometry(rng: np.random.Generator, shape: tuple[int, int] = (200, 200), n_views: int = 21) -> TiltSeriesGeometry:
    tilts = np.linspace(-60, 60, n_views)
    order = np.argsort(np.argsort(np.abs(tilts), kind="stable"), kind="stable")
    g = TiltSeriesGeometry(
        name="syn", pixel_size_A=PX, image_shape_px=shape, tilt_axis_deg=85.0, tilt_angles_deg=tilts,
        tilt_offset_deg=0.5, acquisition_order=order, prior_dose_e_A2=3.0 * order, dose_e_A2=[3.0] * n_views,
        defocus_handedness=1,
    )
    return g.with_xf_from_axis_and_shifts(85.0, rng.normal(0, 4.0, (n_views, 2)))


def _simulate(ref: np.ndarray, geom: TiltSeriesGeometry, pos_A: np.ndarray, rots: np.ndarray,
              ctf: sta.ViewCTF, noise: float, rng: np.random.Generator) -> np.ndarray:
    """Raw views: Σ_particles CTF(particle defocus) · dose filter · projection, plus white noise."""
    proj = FourierProjector(ref, PX, pad=2)
    ny, nx = geom.image_shape_px
    b = ref.shape[0]
    pm = geom.projection_matrices()
    stack = np.zeros((geom.n_views, ny + 2 * b, nx + 2 * b), np.float32)
    for v in range(geom.n_views):
        lin = pm[v, :, :3]
        df_off = geom.defocus_offset_A(pos_A / PX)[v]
        dfl = dose_filter((b, b), PX, geom.prior_dose_e_A2[v], geom.dose_e_A2[v])
        for p, r, doff in zip(pos_A / PX, rots, df_off, strict=True):
            u, vv, _ = lin @ p + pm[v, :, 3]
            iu, iv = int(math.floor(u)), int(math.floor(vv))
            patch = proj.project(lin @ r, (u - iu, vv - iv))
            c = ctf_2d((b, b), PX, ctf.defocus_u_A[v] + doff, ctf.defocus_v_A[v] + doff, ctf.astig_angle_deg[v])
            # patch centre b//2 sits at index 0 of the FFT after ifftshift
            f = scipy.fft.fft2(scipy.fft.ifftshift(patch)) * c * dfl
            patch = scipy.fft.fftshift(scipy.fft.ifft2(f).real)
            y0, x0 = iv - b // 2 + b, iu - b // 2 + b
            stack[v, y0:y0 + b, x0:x0 + b] += patch
    stack = stack[:, b:b + ny, b:b + nx]
    stack /= stack.std()
    return stack + noise * rng.normal(size=stack.shape).astype(np.float32)


def _cc(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    if mask is not None:
        a, b = a * mask, b * mask
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / math.sqrt((a * a).sum() * (b * b).sum()))


@pytest.fixture(scope="module")
def synthetic() -> dict:
    rng = np.random.default_rng(11)
    geom = _geometry(rng)
    m = 14
    pos_A = np.column_stack([rng.uniform(-320, 320, m), rng.uniform(-320, 320, m), rng.uniform(-120, 120, m)])
    angles = np.column_stack([rng.uniform(-180, 180, m), np.degrees(np.arccos(rng.uniform(-1, 1, m))),
                              rng.uniform(-180, 180, m)])
    rots = euler_to_matrix(angles)
    n = geom.n_views
    ctf = sta.ViewCTF(defocus_u_A=rng.uniform(25000, 32000, n) + 300, defocus_v_A=rng.uniform(25000, 32000, n) * 0
                      + 0, astig_angle_deg=rng.uniform(-90, 90, n))
    ctf = sta.ViewCTF(ctf.defocus_u_A, ctf.defocus_u_A - 400.0, ctf.astig_angle_deg)
    ref = _chiral_reference()
    stack = _simulate(ref, geom, pos_A, rots, ctf, noise=0.5, rng=rng)
    return {"geom": geom, "pos_A": pos_A, "rots": rots, "ctf": ctf, "ref": ref, "stack": stack,
            "angles": angles}


def test_vectorised_ctf_matches_ctf_2d() -> None:
    b, px = 24, 3.0
    f1 = scipy.fft.fftfreq(b)
    kx = np.broadcast_to(f1[None, :] / px, (b, b))
    ky = np.broadcast_to(f1[:, None] / px, (b, b))
    mean = np.array([[21000.0, 30000.0]])
    half = np.array([300.0, 150.0])
    ang = np.array([20.0, -70.0])
    got = sta._ctf_stack(kx, ky, mean, half, ang, np.zeros(2), voltage_kV=300.0, cs_mm=2.7,
                         amplitude_contrast=0.1)
    for k in range(2):
        want = ctf_2d((b, b), px, mean[0, k] + half[k], mean[0, k] - half[k], ang[k])
        np.testing.assert_allclose(got[0, k], want, atol=2e-5)


def test_extract_centres_particle_and_applies_ctf(synthetic: dict) -> None:
    geom, pos_A, ctf = synthetic["geom"], synthetic["pos_A"], synthetic["ctf"]
    # a stack with one bright point per particle: each crop must have it at the centre (B // 2) after the
    # sub-pixel shift (no CTF, no dose)
    ny, nx = geom.image_shape_px
    uvd = geom.project(pos_A / PX)  # (n, m, 3)
    yy, xx = np.mgrid[0:ny, 0:nx]
    h = BOX // 2
    c = np.arange(-5, 6)
    for i in range(3):  # one particle per stack: neighbours may overlap in some views
        stack = np.stack([np.exp(-((xx - uvd[v, i, 0]) ** 2 + (yy - uvd[v, i, 1]) ** 2) / (2 * 1.2**2))
                          for v in range(geom.n_views)]).astype(np.float32)
        st = sta.extract_subtilts(stack, geom, pos_A[i:i + 1], box_px=BOX, ctf=None, dose_weighting=False)
        assert st.images.shape == (1, geom.n_views, BOX, BOX)
        w = np.clip(st.images[:, :, h - 5:h + 6, h - 5:h + 6], 0, None)
        cy = (w.sum(axis=3) * c).sum(axis=2) / w.sum(axis=(2, 3))
        cx = (w.sum(axis=2) * c).sum(axis=2) / w.sum(axis=(2, 3))
        assert np.abs(cx).max() < 0.02 and np.abs(cy).max() < 0.02
    np.testing.assert_allclose(st.weights, 1.0 * (st.weights > 0))
    # with CTF and dose: weights = (CTF(defocus at the particle) * dose filter)^2
    st2 = sta.extract_subtilts(stack, geom, pos_A[:2], box_px=BOX, ctf=ctf, dose_weighting=True)
    v = 4
    doff = geom.defocus_offset_A(pos_A[1:2] / PX)[v, 0]
    want = (ctf_2d((BOX, BOX), PX, ctf.defocus_u_A[v] + doff, ctf.defocus_v_A[v] + doff, ctf.astig_angle_deg[v])
            * dose_filter((BOX, BOX), PX, geom.prior_dose_e_A2[v], geom.dose_e_A2[v])) ** 2
    np.testing.assert_allclose(st2.weights[1, v], want, atol=1e-4)
    np.testing.assert_allclose(st2.defocus_A[1, v], 0.5 * (ctf.defocus_u_A[v] + ctf.defocus_v_A[v]) + doff)


def test_excluded_views_are_dropped(synthetic: dict) -> None:
    geom = synthetic["geom"]
    excl = [False] * geom.n_views
    excl[0] = excl[-1] = True
    g2 = geom.model_validate({**geom.model_dump(), "excluded": excl})
    st = sta.extract_subtilts(synthetic["stack"], g2, synthetic["pos_A"][:2], box_px=16, ctf=synthetic["ctf"])
    assert st.images.shape[1] == geom.n_views - 2
    np.testing.assert_array_equal(st.views, np.arange(1, geom.n_views - 1))


def test_average_with_true_poses_matches_reference_and_hand(synthetic: dict) -> None:
    st = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], synthetic["pos_A"], box_px=BOX,
                              ctf=synthetic["ctf"])
    avg = sta.reconstruct_average(st, synthetic["rots"], symmetry="C1")
    ref = synthetic["ref"]
    mask = (np.sum((np.indices(ref.shape) - BOX // 2) ** 2, axis=0) < 13**2).astype(np.float32)
    cc = _cc(avg, ref, mask)
    cc_mirror = _cc(avg, ref[::-1], mask)
    assert avg.shape == (BOX,) * 3 and avg.dtype == np.float32
    assert cc > 0.85, cc
    assert cc_mirror < cc - 0.2, (cc, cc_mirror)
    # wrong poses (a random rotation per particle) give no match
    rng = np.random.default_rng(5)
    wrong = euler_to_matrix(rng.uniform(-180, 180, (len(st.images), 3)))
    assert _cc(sta.reconstruct_average(st, wrong), ref, mask) < 0.6
    # Euler angles are accepted as well as matrices
    np.testing.assert_allclose(sta.reconstruct_average(st, synthetic["angles"]), avg, atol=1e-4)


def test_pseudo_subtomograms_average_like_direct_insertion(synthetic: dict) -> None:
    st = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], synthetic["pos_A"], box_px=BOX,
                              ctf=synthetic["ctf"])
    data, weights = [], []
    for i in range(st.images.shape[0]):
        d, w = sta.backproject_subtomogram(st.images[i], st.weights[i], st.view_matrices)
        data.append(d)
        weights.append(w)
    # the weight volume has the missing wedge: zero along the beam-axis direction beyond ±60° + margin
    w0 = weights[0]
    h = BOX // 2
    assert w0[h + 10, h, h] == 0.0  # z axis (beam at 0° tilt is 30°+ away from any view's plane)
    assert w0[h, h, h + 10] > 0.0  # x axis lies in the 0° view's plane
    avg_vol = sta.average_from_subtomograms(data, weights, synthetic["rots"])
    avg_dir = sta.reconstruct_average(st, synthetic["rots"])
    ref = synthetic["ref"]
    assert _cc(avg_vol, avg_dir) > 0.9
    assert _cc(avg_vol, ref) > 0.8


def test_symmetry_expansion_recovers_symmetric_reference() -> None:
    rng = np.random.default_rng(3)
    geom = _geometry(rng, shape=(160, 160), n_views=13)
    sym = symmetry_matrices("O")
    seed = np.array([[6.0, 2.0, 1.0], [3.0, 7.0, -2.0]])
    centres = np.concatenate([seed @ s.T for s in sym])
    ref = blob_map(BOX, centres, sigma=1.4)
    m = 4
    pos_A = np.column_stack([rng.uniform(-200, 200, m), rng.uniform(-200, 200, m), rng.uniform(-60, 60, m)])
    rots = euler_to_matrix(rng.uniform(-180, 180, (m, 3)))
    n = geom.n_views
    ctf = sta.ViewCTF(np.full(n, 20000.0), np.full(n, 19800.0), np.zeros(n))
    stack = _simulate(ref, geom, pos_A, rots, ctf, noise=0.3, rng=rng)
    st = sta.extract_subtilts(stack, geom, pos_A, box_px=BOX, ctf=ctf)
    mask = (np.sum((np.indices(ref.shape) - BOX // 2) ** 2, axis=0) < 13**2).astype(np.float32)
    cc_c1 = _cc(sta.reconstruct_average(st, rots, symmetry="C1"), ref, mask)
    cc_o = _cc(sta.reconstruct_average(st, rots, symmetry="O"), ref, mask)
    assert cc_o > 0.85 and cc_o > cc_c1, (cc_o, cc_c1)


def test_rotate_fourier_of_a_rotated_map() -> None:
    # F_ref(q) = F_tomo(R q) brings a map rotated by R back
    ref = _chiral_reference(24)
    r = euler_to_matrix(30.0, 50.0, -20.0)
    c = np.arange(24) - 12
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    # rotated map g(x) = f(R^T x): sample the reference at R^T x (trilinear via map_coordinates)
    import scipy.ndimage

    pts = np.stack([x, y, z], -1) @ r  # (R^T x) as row vectors: x R = (R^T x)^T
    g = scipy.ndimage.map_coordinates(ref, [pts[..., 2] + 12, pts[..., 1] + 12, pts[..., 0] + 12], order=3)
    back = sta._centred_ifft(sta.rotate_fourier(sta._centred_fft(g.astype(np.float64)), r))
    assert _cc(back, ref) > 0.93
    assert _cc(g, ref) < 0.8


# --------------------------------------------------------------------------------------------------------
# The simulator's tiny preset: true geometry, true particles, tilt images summed from the movies
# --------------------------------------------------------------------------------------------------------


def _tilt_images_from_movies(dataset: Path, name: str) -> np.ndarray:
    """Views (n, ny, nx) in the geometry's (ascending tilt) order: gain-corrected frames translated by their
    true aligning shifts and summed; outlier pixels (hot pixels, X-ray hits) clipped at 5 SD."""
    import mrcfile
    import starfile

    blocks = starfile.read(dataset / "truth" / name / f"{name}_tilts.star")
    tilts, shifts = blocks["tilts"], blocks["frame_shifts"]
    with mrcfile.open(dataset / "data" / "gain.mrc", permissive=True) as m:
        gain = np.asarray(m.data, np.float32)[:, ::-1]
    views = []
    for movie in tilts["rlnMicrographMovieName"]:
        with mrcfile.open(dataset / movie, permissive=True) as m:
            frames = np.asarray(m.data, np.float32) * gain
        sh = shifts[shifts["rlnMicrographMovieName"] == movie].sort_values("rlnMicrographFrameNumber")
        ny, nx = frames.shape[1:]
        ky = scipy.fft.fftfreq(ny)[:, None]
        kx = scipy.fft.fftfreq(nx)[None, :]
        total = np.zeros((ny, nx), np.complex128)
        for fr, sx, sy in zip(frames, sh["rlnMicrographShiftX"], sh["rlnMicrographShiftY"], strict=True):
            total += scipy.fft.fft2(fr) * np.exp(-2j * np.pi * (kx * sx + ky * sy))
        v = scipy.fft.ifft2(total).real
        mu, sd = v.mean(), v.std()
        views.append(np.clip(v, mu - 5 * sd, mu + 5 * sd))
    return np.stack(views).astype(np.float32)


def test_tiny_preset_average_with_true_poses(tiny_dataset: Path) -> None:
    import mrcfile
    import starfile

    from tomoguide import truth
    from tomoguide.compute import fsc as F
    from tomoguide.compute.rescale import fourier_bin

    name, binning, box = "TS_01", 2, 64
    stack = fourier_bin(_tilt_images_from_movies(tiny_dataset, name), binning)
    geom = truth.true_geometry(tiny_dataset / "truth", name).at_binning(binning)
    geom = geom.model_validate({**geom.model_dump(), "image_shape_px": stack.shape[1:]})
    ctf = sta.ViewCTF.from_star(starfile.read(tiny_dataset / "truth" / name / f"{name}_tilts.star")["tilts"])
    parts = starfile.read(tiny_dataset / "truth" / "particles.star")["particles"]
    parts = parts[parts["rlnTomoName"] == name]
    pos = parts[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst"]]
    rots = euler_to_matrix(parts[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy())
    st = sta.extract_subtilts(stack, geom, pos.to_numpy(), box_px=box, ctf=ctf)
    voxel = st.pixel_size_A
    assert voxel == pytest.approx(4.0)
    avg = sta.reconstruct_average(st, rots, symmetry="O")
    with mrcfile.open(tiny_dataset / "truth" / "apoferritin.mrc", permissive=True) as m:
        ref = sta.rescale_map(m.data, float(m.voxel_size.x), voxel, box)
    mask = F.soft_sphere_mask(box, 75.0 / voxel, 3.0)
    cc = _cc(avg, ref, mask)
    cc_mirror = _cc(avg, ref[::-1], mask)
    freqs, curve = F.fsc(avg, ref, voxel_A=voxel, mask=mask)
    res05 = F.resolution_at(curve, freqs, 0.5)
    assert cc > 0.8, cc
    assert cc_mirror < cc - 0.1, (cc, cc_mirror)
    assert res05 < 10.0, res05  # Nyquist is 8 Å
    # the CTF matters: without it (no correction) the map is far worse
    st0 = sta.extract_subtilts(stack, geom, pos.to_numpy(), box_px=box, ctf=None)
    assert _cc(sta.reconstruct_average(st0, rots, symmetry="O"), ref, mask) < cc - 0.3


def test_rescale_map_keeps_centre_and_scales_positions() -> None:
    # blobs at the centre and 8 voxels along +x of a 40-voxel map at 2 Å -> 4 Å: at the centre and 4 voxels
    vol = blob_map(40, np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0]]), sigma=2.5)
    out = sta.rescale_map(vol, 2.0, 4.0, 30)
    assert out.shape == (30, 30, 30)
    c = 15
    prof = out[c, c, :]
    assert np.argmax(prof) in (c, c + 4)
    # centroid of each blob along x (window of ±2 voxels)
    for centre in (c, c + 4):
        w = np.clip(prof[centre - 1:centre + 2], 0, None)
        assert abs((w * np.arange(-1, 2)).sum() / w.sum()) < 0.05
    assert out.max() == pytest.approx(vol.max(), rel=0.1)  # values kept (an average, not a sum)
    np.testing.assert_allclose(sta.rescale_map(vol, 2.0, 2.0, 40), vol, atol=1e-6)
    with pytest.raises(ValueError):
        sta.rescale_map(vol, 2.0, 3.0, 30)


def test_crop_after_ctf_keeps_centre_and_gives_cropped_grid_weights(synthetic: dict) -> None:
    pos = synthetic["pos_A"][:3]
    big = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], pos, box_px=BOX, ctf=synthetic["ctf"])
    crop = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], pos, box_px=BOX, ctf=synthetic["ctf"],
                                crop_px=BOX // 2)
    small = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], pos, box_px=BOX // 2, ctf=synthetic["ctf"])
    assert crop.box == BOX // 2 and crop.images.shape == small.images.shape
    o = BOX // 2 - BOX // 4
    # the crop is the centre of the CTF-multiplied big box, exactly
    np.testing.assert_allclose(crop.images, big.images[..., o:o + BOX // 2, o:o + BOX // 2], atol=1e-5)
    # weights: CTF² · dose² at the cropped grid's frequencies (= what extracting at that box gives)
    np.testing.assert_allclose(crop.weights, small.weights, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        sta.extract_subtilts(synthetic["stack"], synthetic["geom"], pos, box_px=16, ctf=synthetic["ctf"], crop_px=20)


def test_pseudo_subtomograms_stack_backprojections(synthetic: dict) -> None:
    st = sta.extract_subtilts(synthetic["stack"], synthetic["geom"], synthetic["pos_A"][:3], box_px=16,
                              ctf=synthetic["ctf"])
    data, weights = sta.pseudo_subtomograms(st)
    assert data.shape == weights.shape == (3, 16, 16, 16) and data.dtype == weights.dtype == np.float32
    d1, w1 = sta.backproject_subtomogram(st.images[1], st.weights[1], st.view_matrices)
    np.testing.assert_array_equal(data[1], d1)
    np.testing.assert_array_equal(weights[1], w1)


def test_ssnr_wiener_term_follows_the_fsc_shell_by_shell() -> None:
    """τ(k) = ⟨W⟩_k (1 − FSC)/FSC for half maps, with FSC' = 2 FSC/(1 + FSC) for the merged map; a floor keeps
    empty voxels finite; a map divided with it recovers a shell with small weights where the halves agree."""
    p = 16
    k1 = np.arange(p) - p // 2
    r = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2)
    w = 1.0 + r  # mean weight of shell k is about 1 + k
    fsc_curve = np.full(p // 2 + 1, 0.5)
    tau = sta.ssnr_wiener_term(w, fsc_curve, p)
    shell = np.rint(r).astype(int)
    for k in (1, 3, 6):
        sel = shell == k
        assert np.allclose(tau[sel], w[sel].mean() * (1 - 0.5) / 0.5)
    merged = sta.ssnr_wiener_term(w, fsc_curve, p, merged=True)
    f2 = 2 * 0.5 / 1.5
    assert np.allclose(merged[shell == 3], w[shell == 3].mean() * (1 - f2) / f2)
    # FSC near 1 -> a small term; FSC <= 0 -> the shell is suppressed (large term)
    fsc_curve[5:] = 0.0
    tau = sta.ssnr_wiener_term(w, fsc_curve, p)
    assert tau[shell == 6].min() > 100 * tau[shell == 3].max()
    assert np.isfinite(sta.ssnr_wiener_term(np.zeros((p, p, p)), fsc_curve, p)).all()
    # division: data = W · A with tiny weights in shell 3 (a CTF zero); where the halves agree (FSC 0.99) the
    # amplitude comes back; the constant term of 1 % of the mean weight suppresses it
    w2 = np.ones((p, p, p))
    w2[shell == 3] = 0.002
    a = np.exp(1j * 0.3 * k1[None, None, :]) * np.ones((p, p, p))
    data = w2 * a
    good = np.full(p // 2 + 1, 0.99)
    ssnr = sta.fourier_to_map(data, w2, p, wiener_constant=sta.ssnr_wiener_term(w2, good, p))
    const = sta.fourier_to_map(data, w2, p)
    full = sta.fourier_to_map(a, np.ones((p, p, p)), p, wiener_constant=1e-9)
    def shell_amp(v: np.ndarray) -> float:
        f = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v)))
        return float(np.abs(f[shell == 3]).mean())
    assert abs(shell_amp(ssnr) / shell_amp(full) - 1) < 0.3 < abs(shell_amp(const) / shell_amp(full) - 1)


# --------------------------------------------------------------------------------------------------------
# Issue 19: clean reconstructions (2× oversampled grid, gridding correction, the sub-tilts before the crop)
# --------------------------------------------------------------------------------------------------------

APO_PX = 6.0
APO_BOX = 32


@pytest.fixture(scope="module")
def apo() -> dict:
    """Noise-free sub-tilts of the simulator's apoferritin map (the true map), 8 particles in random orientations,
    one defocus (4 µm) for every view: cropped to 32 px (192 Å) from 56-px extraction boxes, as the extraction
    does it (CTF premultiplied, then cropped)."""
    from synthetic_particles import random_rotations
    from synthetic_subtilts import make_subtilts

    from tomoguide.compute.specimen import apoferritin_map

    ref = apoferritin_map(APO_PX, APO_BOX).astype(np.float64)
    rots = random_rotations(8, np.random.default_rng(4))
    st = make_subtilts(ref, APO_PX, rots, ext=56, phys=112, defocus_A=40000.0)
    return {"ref": ref, "rots": rots, "st": st}


def _profile_error(vol: np.ndarray, ref: np.ndarray, lowpass_A: float = 15.0) -> tuple[float, float, float]:
    """(centre / shell of the map, of the truth, RMS difference of the scaled profiles / shell height), both maps
    low-passed to ``lowpass_A``, out to a radius of 75 Å."""
    from synthetic_subtilts import radial_profile

    from tomoguide.compute import fsc as F

    pv = radial_profile(F.lowpass(vol, lowpass_A, APO_PX))
    pr = radial_profile(F.lowpass(ref, lowpass_A, APO_PX))
    n = int(75.0 / APO_PX)
    pv, pr = pv[:n], pr[:n]
    shell = int(np.argmax(pr))
    scale = float(np.dot(pv, pr) / np.dot(pr, pr))
    return float(pv[0] / pv[shell]), float(pr[0] / pr[shell]), float(np.sqrt(np.mean((pv / scale - pr) ** 2)) / pr[shell])


def _old_cropped(st: sta.Subtilts) -> sta.Subtilts:
    """The cropped sub-tilts alone (what the averages were made from before issue 19)."""
    return sta.Subtilts(st.images, st.weights, st.view_matrices, st.views, st.pixel_size_A, st.defocus_A,
                        cropped_from_px=st.cropped_from_px)


def test_average_of_noise_free_particles_has_the_true_radial_profile(apo: dict) -> None:
    """The average with the true poses has the true map's radial profile (at 15 Å): no bright centre, no negative
    interior. The same measure finds the artefact of issue 19 in the unpadded average of the cropped sub-tilts
    (the centre as bright as the shell)."""
    ref, rots, st = apo["ref"], apo["rots"], apo["st"]
    centre, centre_true, err = _profile_error(sta.reconstruct_average(st, rots, symmetry="O"), ref)
    assert abs(centre - centre_true) < 0.06, (centre, centre_true)
    assert err < 0.03, err
    old_centre, _, old_err = _profile_error(
        sta.reconstruct_average(_old_cropped(st), rots, symmetry="O", pad=1, correct=False), ref)
    assert old_centre - centre_true > 0.5 and old_err > 0.2, (old_centre, old_err)
    # the oversampled grid without the gridding-bias correction is not enough (a fainter spot remains)
    plain, _, plain_err = _profile_error(sta.reconstruct_average(st, rots, symmetry="O", correct=False), ref)
    assert plain_err > 2 * err and plain - centre_true > 0.2, (plain, plain_err)


def _ctf_zero_shells(box: int, px: float, defocus_A: float, n: int = 2) -> list[int]:
    """Shell indices (of a ``box``-voxel map) nearest to the first ``n`` zeros of the CTF (300 kV, Cs 2.7 mm,
    amplitude contrast 0.1) at ``defocus_A``."""
    from tomoguide.compute.ctf import electron_wavelength_A

    lam = electron_wavelength_A(300.0)
    k = np.linspace(1e-4, 0.5 / px, 20000)
    chi = np.pi * lam * defocus_A * k**2 - 0.5 * np.pi * 2.7e7 * lam**3 * k**4
    c = -(np.sqrt(1 - 0.01) * np.sin(chi) + 0.1 * np.cos(chi))
    zeros = k[1:][np.diff(np.sign(c)) != 0][:n]
    return [int(round(z * box * px)) for z in zeros]


def test_no_dip_at_the_ctf_zeros_where_the_half_maps_agree(apo: dict) -> None:
    """One defocus for every particle: the shells of the CTF's first zeros carry little weight. Half maps made
    from disjoint particles agree there, and so does the reconstruction with the true map (the FSC against the
    truth does not dip); the gathered 3D pseudo-subtomograms of the refinement before issue 19 dip there."""
    from tomoguide.compute import fsc as F
    from tomoguide.compute import refine as RF

    ref, rots, st = apo["ref"], apo["rots"], apo["st"]
    mask = F.soft_sphere_mask(APO_BOX, 75.0 / APO_PX, 3.0)
    zeros = _ctf_zero_shells(APO_BOX, APO_PX, 40000.0)
    assert zeros == sorted(set(zeros)) and zeros[0] >= 4
    half = np.arange(len(rots)) % 2 == 0
    h1 = sta.reconstruct_average(st.select(half), rots[half], symmetry="O")
    h2 = sta.reconstruct_average(st.select(~half), rots[~half], symmetry="O")
    _, fsc_halves = F.fsc(h1, h2, voxel_A=APO_PX, mask=mask)
    _, fsc_truth = F.fsc(sta.reconstruct_average(st, rots, symmetry="O"), ref, voxel_A=APO_PX, mask=mask)
    for z in zeros:
        assert fsc_halves[z] > 0.95 and fsc_truth[z] > 0.97, (z, fsc_halves[z], fsc_truth[z])
    assert fsc_truth[1:int(0.9 * APO_BOX / 2)].min() > 0.97
    d, w = sta.pseudo_subtomograms(_old_cropped(st), pad=1)
    dg, wg = RF.reconstruct_grids(RF.centred_fft_stack(d), w, rots, np.zeros((len(rots), 3)), None, symmetry="O")
    _, fsc_old = F.fsc(sta.fourier_to_map(dg, wg, APO_BOX), ref, voxel_A=APO_PX, mask=mask)
    assert min(fsc_old[z] for z in zeros) < 0.9, [fsc_old[z] for z in zeros]


def test_reconstructor_uses_and_corrects_only_consistent_sub_tilts(apo: dict) -> None:
    """The sub-tilts before the crop are used when kept (their weights describe them, so the gridding bias is
    corrected by default); cropped ones alone are not corrected by default. Grid: 2 × the particle's box."""
    st = apo["st"]
    rec = sta.Reconstructor(st)
    assert rec.image_px == 56 and rec.box == APO_BOX and rec.grid_size == 2 * APO_BOX and rec.corrects_by_default
    rec_c = sta.Reconstructor(_old_cropped(st))
    assert rec_c.image_px == APO_BOX and not rec_c.corrects_by_default
    assert rec.n_particles == 8
    with pytest.raises(ValueError, match="same box"):
        sta.Reconstructor([st, sta.Subtilts(st.images[:, :, :16, :16], st.weights[:, :, :16, :16], st.view_matrices,
                                            st.views, APO_PX, st.defocus_A)])


@pytest.mark.parametrize("symmetry", ["C1", "O"])
def test_reconstructor_grids_up_to_a_shell_and_total_weight(apo: dict, symmetry: str) -> None:
    """``grids(max_shell=s)`` equals the full grids on every voxel within ``s`` shells of the box (grid radius
    ``s · P / box``) and holds nothing beyond the samples' reach; ``total_weight`` is the full weight grid's sum
    (what the initial model's regularisation is scaled by when it makes the grids up to a shell only)."""
    st, rots = apo["st"], apo["rots"]
    rec = sta.Reconstructor(st)
    sel = np.array([0, 3, 5])
    shifts = np.random.default_rng(2).normal(0, 1.0, (8, 3))
    dg, wg = rec.grids(rots, shifts, sel, symmetry=symmetry)
    shell = 6.0
    dl, wl = rec.grids(rots, shifts, sel, symmetry=symmetry, max_shell=shell)
    p = rec.grid_size
    k = np.arange(p) - p // 2
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    within = r <= shell * p / rec.box
    np.testing.assert_allclose(dl[within], dg[within], rtol=0, atol=1e-5 * np.abs(dg).max())
    np.testing.assert_allclose(wl[within], wg[within], rtol=0, atol=1e-5 * wg.max())
    beyond = r > (shell * rec.image_px / rec.box + 2.0) * rec.scale + 2.0
    assert np.all(dl[beyond] == 0) and np.all(wl[beyond] == 0)
    assert np.abs(dg[beyond]).max() > 0.01 * np.abs(dg).max()  # the full grids do hold something there
    total = rec.total_weight(sel, symmetry=symmetry)
    if symmetry == "C1":
        assert total == pytest.approx(float(wg.sum()), rel=1e-5)
    # the mean inside the sphere from it: what the grid itself gives, to 0.5 % (the weight the trilinear reach
    # puts outside the sphere, and the symmetrisation's loss at its edge, ~0.1 %)
    inside = r < p // 2 - 1
    assert total / np.count_nonzero(inside) == pytest.approx(float(wg[inside].mean()), rel=5e-3)


def _scatter_reference(p: int, fts: np.ndarray, weights: np.ndarray, mats: np.ndarray, scale: float
                       ) -> tuple[np.ndarray, np.ndarray]:
    """Plain numpy trilinear scatter of every sample of full centred 2D transforms (the definition)."""
    n = fts.shape[-1]
    h = p // 2
    k1 = np.arange(n) - n // 2
    kv, ku = np.meshgrid(k1, k1, indexing="ij")
    dg = np.zeros((p, p, p), complex)
    wg = np.zeros((p, p, p))
    for f, w, m in zip(fts, weights, mats, strict=True):
        q = scale * (ku.ravel()[:, None] * m[0] + kv.ravel()[:, None] * m[1])  # (n², 3) x, y, z
        ok = (ku.ravel() ** 2 + kv.ravel() ** 2) * scale**2 < (h - 1) ** 2  # |q| of the exact frequency
        q, fv, wv = q[ok] + h, f.ravel()[ok], w.ravel()[ok]
        q0 = np.floor(q).astype(int)
        fr = q - q0
        for dz in (0, 1):
            for dy in (0, 1):
                for dx in (0, 1):
                    c = ((fr[:, 0] if dx else 1 - fr[:, 0]) * (fr[:, 1] if dy else 1 - fr[:, 1])
                         * (fr[:, 2] if dz else 1 - fr[:, 2]))
                    idx = (q0[:, 2] + dz, q0[:, 1] + dy, q0[:, 0] + dx)
                    np.add.at(dg, idx, c * fv)
                    np.add.at(wg, idx, c * wv)
    return dg, wg


@pytest.mark.parametrize("scale", [1.0, 1.5])
def test_insert_slices_matches_a_plain_trilinear_scatter(scale: float) -> None:
    """The numba insertion (one half plane, Hermitian completion) equals the plain scatter of every sample of real
    images' transforms, on a grid of the images' size and on a finer one."""
    rng = np.random.default_rng(3)
    n, k = 12, 3
    images = rng.normal(size=(k, n, n)).astype(np.float32)
    fts = sta._image_fts(images, 1)
    w2 = rng.random((k, n, n))
    weights = 0.5 * (w2 + np.roll(w2[:, ::-1, ::-1], 1, axis=(1, 2)))  # even: W(k) = W(-k), as CTF² is
    mats = euler_to_matrix(rng.uniform(-180, 180, (k, 3)))
    p = int(round(scale * n))
    dg = np.zeros((p, p, p), complex)
    wg = np.zeros((p, p, p))
    sta.insert_slices(dg, wg, fts, weights, mats, scale=scale)
    ref_d, ref_w = _scatter_reference(p, fts.astype(complex), weights, mats, scale)
    np.testing.assert_allclose(dg, ref_d, atol=1e-3 * np.abs(ref_d).max())
    np.testing.assert_allclose(wg, ref_w, atol=1e-6)


def test_symmetrise_grid_matches_rotate_fourier() -> None:
    rng = np.random.default_rng(9)
    v = rng.normal(size=(20, 20, 20))
    g = sta._centred_fft(v)
    w = np.abs(sta._centred_fft(rng.normal(size=(20, 20, 20)))) ** 2
    ops = symmetry_matrices("O")
    dg, wg = sta.symmetrise_grid(g, w, ops)
    inside = sta._inside_sphere(20)
    # one voxel in from the sphere's edge: rotate_fourier drops samples with a corner outside its grid
    k1 = np.arange(20) - 10
    inner = (k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2) < 7**2
    np.testing.assert_allclose(dg[inner], sta.rotate_fourier(g, ops)[inner], atol=1e-6 * np.abs(g).max())
    np.testing.assert_allclose(wg[inner], sta.rotate_fourier(w, ops)[inner], atol=1e-6 * w.max())
    assert np.all(dg[~inside] == 0) and np.all(wg[~inside] == 0)


def test_pseudo_subtomogram_data_and_weights_agree_better_on_the_oversampled_grid(apo: dict) -> None:
    """``D ≈ W · F`` (the refinement's model of a pseudo-subtomogram) holds more closely when data and weights
    are made alike on the 2× grid, gridding-corrected and cut to the box, than on the box's grid."""
    from synthetic_particles import cft, random_rotations, rotate_shift
    from synthetic_subtilts import make_subtilts

    ref = apo["ref"]
    rots = random_rotations(2, np.random.default_rng(5))
    st = make_subtilts(ref, APO_PX, rots, ext=APO_BOX, phys=96, defocus_A=20000.0)
    k1 = np.arange(APO_BOX) - APO_BOX // 2
    r = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2)
    sel = (r > 0.5) & (r < 0.8 * APO_BOX / 2)
    errs = {}
    for pad in (1, 2):
        e = []
        for i in range(2):
            d, w = sta.backproject_subtomogram(st.images[i], st.weights[i], st.view_matrices, pad=pad)
            assert d.shape == w.shape == (APO_BOX,) * 3 and w.min() >= 0
            model = w[sel] * cft(rotate_shift(ref, rots[i], np.zeros(3)))[sel]
            data = cft(d.astype(np.float64))[sel]
            s = np.vdot(model, data).real / np.vdot(model, model).real
            e.append(np.sum(np.abs(data - s * model) ** 2) / np.sum(np.abs(s * model) ** 2))
        errs[pad] = float(np.mean(e))
    assert errs[2] < 0.006 and errs[2] < 0.75 * errs[1], errs


def test_extraction_in_chunks_with_shared_padded_views(synthetic: dict) -> None:
    """The views normalised once (:func:`sta.padded_views`) and reused over chunks of particles give what one call
    gives; a padded stack of another box is refused."""
    stack, geom, pos_A, ctf = synthetic["stack"], synthetic["geom"], synthetic["pos_A"], synthetic["ctf"]
    whole = sta.extract_subtilts(stack, geom, pos_A, box_px=BOX, crop_px=BOX - 8, ctf=ctf, keep_uncropped=True)
    pv = sta.padded_views(stack, geom, BOX)
    parts = [sta.extract_subtilts(stack, geom, pos_A[a:a + 5], box_px=BOX, crop_px=BOX - 8, ctf=ctf,
                                  keep_uncropped=True, padded=pv) for a in range(0, len(pos_A), 5)]
    np.testing.assert_array_equal(np.concatenate([p.images for p in parts]), whole.images)
    np.testing.assert_array_equal(np.concatenate([p.weights for p in parts]), whole.weights)
    np.testing.assert_array_equal(np.concatenate([p.uncropped.images for p in parts]), whole.uncropped.images)
    with pytest.raises(ValueError, match="padded views"):
        sta.extract_subtilts(stack, geom, pos_A[:2], box_px=BOX + 2, ctf=ctf, padded=pv)
