"""The restructured insertion and symmetrisation kernels of tomoguide.compute.sta (issue 20) against the first
versions, kept as their test oracles (:func:`sta._scatter_samples`, :func:`sta._symmetrise_points`), on random
inputs; the first versions themselves are checked against numpy and the truth in test_sta.py."""

from __future__ import annotations

import numpy as np
import pytest

from tomoguide.compute import sta
from tomoguide.compute.symmetry import symmetry_matrices

from synthetic_particles import random_rotations


def _samples(rng: np.random.Generator, n_img: int, p: int, k: int) -> dict:
    scale = p / n_img
    ku, kv, _ = sta._slice_samples(n_img, p, scale)
    n = len(ku)
    vals = (rng.normal(size=(k, n)) + 1j * rng.normal(size=(k, n))).astype(np.complex64)
    ws = rng.random((k, n)).astype(np.float32)
    return {"ku": ku, "kv": kv, "vals": vals, "ws": ws, "mats": np.ascontiguousarray(random_rotations(k, rng)),
            "shifts": rng.normal(0, 2.0, (k, 2)), "scale": scale}


@pytest.mark.parametrize(("checkerboard", "with_w", "dtype", "threads", "single"), [
    (False, True, np.complex128, 2, False), (True, False, np.complex64, 1, False),
    (False, False, np.complex128, 1, False), (True, True, np.complex128, 3, False),
    (False, True, np.complex128, 2, True)])
def test_scatter_equals_the_reference_kernel(checkerboard: bool, with_w: bool, dtype: type, threads: int,
                                             single: bool) -> None:
    """The interleaved kernel and its reduction equal the first kernel (float32 accumulators, as the
    Reconstructor's grids use, to float32 rounding)."""
    rng = np.random.default_rng(1 + int(checkerboard) + 2 * int(with_w))
    n_img, p, k = 20, 40, 7
    c = _samples(rng, n_img, p, k)
    slices = np.array([0, 2, 3, 5, 6])
    dg, wg = sta._scatter(p, c["vals"], c["ws"], c["ku"], c["kv"], c["mats"], c["shifts"], slices, c["scale"], n_img,
                          with_weights=with_w, threads=threads, complete=False, checkerboard=checkerboard, dtype=dtype,
                          single_accumulators=single)
    acc = np.zeros((2, p, p, p), np.complex128)
    aw = np.zeros((2, p, p, p) if with_w else (0, 1, 1, 1))
    sta._scatter_samples(acc, aw, c["vals"], c["ws"], c["ku"], c["kv"], c["mats"], c["shifts"], slices, c["scale"],
                         n_img, checkerboard)
    ref = acc.sum(0)
    tol = 1e-4 if dtype == np.complex64 else 1e-6 if single else 1e-9
    assert dg.dtype == dtype
    np.testing.assert_allclose(dg, ref, rtol=0, atol=tol * np.abs(ref).max())
    if with_w:
        np.testing.assert_allclose(wg, aw.sum(0), rtol=0, atol=(1e-6 if single else 1e-9) * aw.max())
    assert np.abs(ref).max() > 1.0


@pytest.mark.parametrize("with_w", [True, False])
def test_symmetrise_equals_the_reference_kernel(with_w: bool) -> None:
    rng = np.random.default_rng(7)
    p = 24
    g = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    w = rng.random((p, p, p))
    ops = np.ascontiguousarray(symmetry_matrices("O"))
    pts = sta._half_space_points(p)
    out_g = np.zeros(len(pts), np.complex128)
    out_w = np.zeros(len(pts) if with_w else 0)
    sta._symmetrise_points(g, w if with_w else np.zeros((1, 1, 1)), ops, pts, out_g, out_w)
    stride = 3 if with_w else 2
    flat = np.empty((p, p, p, stride))
    flat[..., 0], flat[..., 1] = g.real, g.imag
    if with_w:
        flat[..., 2] = w
    res = np.empty((len(pts), stride))
    sta._symmetrise_flat(flat.reshape(-1), stride, p, ops, pts, res)
    np.testing.assert_allclose(res[:, 0] + 1j * res[:, 1], out_g, atol=1e-10)
    if with_w:
        np.testing.assert_allclose(res[:, 2], out_w, atol=1e-10)
    assert np.abs(out_g).max() > 1.0


@pytest.mark.parametrize("n", [10, 12, 9])
def test_centred_fftn_equals_the_shifted_transforms(n: int) -> None:
    import scipy.fft

    rng = np.random.default_rng(n)
    x = rng.normal(size=(2, n, n, n)).astype(np.float32)
    ax = (1, 2, 3)
    ref = scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(x, axes=ax), axes=ax), axes=ax)
    got = sta.centred_fftn(x)
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())
    g = rng.normal(size=(n, n, n)) + 1j * rng.normal(size=(n, n, n))
    g0 = g.copy()
    ref_i = scipy.fft.fftshift(scipy.fft.ifftn(scipy.fft.ifftshift(g)))
    np.testing.assert_allclose(sta.centred_fftn(g, inverse=True), ref_i, atol=1e-14)
    np.testing.assert_allclose(sta.centred_fftn(g, inverse=True, real=True), ref_i.real, atol=1e-14)
    np.testing.assert_array_equal(g, g0)  # the input is left as it was


@pytest.mark.parametrize("group", ["O", "D4", "C4"])
def test_symmetrise_with_signed_permutations_reads_grid_points(group: str) -> None:
    rng = np.random.default_rng(9)
    p = 20
    g = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    w = rng.random((p, p, p))
    ops = np.ascontiguousarray(symmetry_matrices(group))
    assert np.all(np.abs(ops - np.round(ops)) < 1e-9)
    pts = sta._half_space_points(p)
    flat = np.empty((p, p, p, 3))
    flat[..., 0], flat[..., 1], flat[..., 2] = g.real, g.imag, w
    fast = np.empty((len(pts), 3))
    sta._symmetrise_int(flat.reshape(-1), 3, p, np.round(ops).astype(np.int64), pts.astype(np.int64), fast)
    slow = np.empty((len(pts), 3))
    sta._symmetrise_flat(flat.reshape(-1), 3, p, ops, pts, slow)
    np.testing.assert_allclose(fast, slow, atol=1e-10)
    # a non-permutation group (I) takes the interpolating kernel and still runs
    dg, wg = sta.symmetrise_grid(g, w, symmetry_matrices("I"))
    assert np.isfinite(dg).all() and wg is not None


@pytest.mark.parametrize(("p", "kind"), [(16, "complex"), (16, "real"), (16, "complex, no conjugate"),
                                         (15, "complex"), (6, "real")])
def test_hermitian_fill_equals_the_numpy_reference(p: int, kind: str) -> None:
    """The parallel pairwise fill (even P) gives the numpy expression's grid exactly, the centre voxel and the
    self-mirrored central plane included; odd P goes through the numpy reference."""
    rng = np.random.default_rng(p)
    g = rng.normal(size=(p, p, p)) + (1j * rng.normal(size=(p, p, p)) if kind != "real" else 0.0)
    conj = kind == "complex"
    want = sta._hermitian_fill_reference(g.copy(), conj)
    got = sta._hermitian_fill(g.copy(), conj)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == g.dtype


@pytest.mark.parametrize(("shape", "inverse", "real"), [((32, 32, 32), False, False), ((32, 32, 32), True, True),
                                                        ((16, 16, 16), True, False), ((10, 12, 14), False, True),
                                                        ((9, 9, 9), True, True)])
def test_centred_fftn_in_single_precision(shape: tuple[int, int, int], inverse: bool, real: bool) -> None:
    """``single=True`` (the averaging's grids) gives the double-precision transform to float32 rounding, in
    complex64 / float32."""
    rng = np.random.default_rng(sum(shape))
    x = rng.normal(size=shape) + 1j * rng.normal(size=shape)
    want = sta.centred_fftn(x, inverse=inverse, real=real)
    got = sta.centred_fftn(x, inverse=inverse, real=real, single=True)
    assert got.dtype == (np.float32 if real else np.complex64)
    assert np.abs(got - want).max() <= 1e-6 * np.abs(want).max()


def test_centred_fftn_of_other_dtypes_goes_through_numpy() -> None:
    """float16 input (the dtype of the extraction's files; numba has no float16) takes the numpy path, as before
    the fused passes: the same transform."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(8, 8, 8)).astype(np.float16)
    got = sta.centred_fftn(x)
    want = sta.centred_fftn(x.astype(np.float64))
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("tau_kind", ["number", "grid"])
def test_wiener_divide_equals_the_numpy_expression(tau_kind: str) -> None:
    rng = np.random.default_rng(3)
    p = 20
    d = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    w = rng.random((p, p, p))
    tau = 0.3 if tau_kind == "number" else rng.random((p, p, p)) + 0.1
    want = np.where(sta._inside_sphere(p), d / (w + tau), 0)
    got = sta.wiener_divide(d, w, tau)
    assert got.dtype == np.complex64
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())
    assert np.count_nonzero(got) == np.count_nonzero(want)
    with pytest.raises(ValueError, match="do not match"):
        sta.wiener_divide(d, w[:-1], tau)


def test_accumulator_sum_and_iteration_step_equal_numpy() -> None:
    """The parallel helpers of :meth:`sta.Reconstructor.corrected`: the per-thread accumulators' sum and
    ``2 D - A G₀`` inside the sphere (D outside)."""
    rng = np.random.default_rng(4)
    p = 12
    acc = rng.normal(size=(3, p, p, p)) + 1j * rng.normal(size=(3, p, p, p))
    np.testing.assert_allclose(sta._summed(acc), acc.sum(axis=0), rtol=1e-13, atol=1e-13)
    acc32 = acc.astype(np.complex64)
    np.testing.assert_allclose(sta._summed(acc32), acc32.sum(axis=0), rtol=1e-6, atol=1e-6)
    d = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    ag = rng.normal(size=(p, p, p)) + 1j * rng.normal(size=(p, p, p))
    want = np.where(sta._inside_sphere(p), 2.0 * d - ag, d)
    out = np.empty_like(d)
    sta._iteration_step(d, ag, out)
    np.testing.assert_allclose(out, want, rtol=1e-13, atol=1e-13)
    sta._iteration_step(d, ag, ag)  # in place
    np.testing.assert_allclose(ag, want, rtol=1e-13, atol=1e-13)


def _ssnr_wiener_term_numpy(w: np.ndarray, fsc_curve: np.ndarray, box: int, merged: bool, floor: float = 1e-4
                            ) -> np.ndarray:
    """The first, numpy version of :func:`sta.ssnr_wiener_term` (index grids and bincount): the oracle."""
    p = w.shape[0]
    k1 = np.arange(p) - p // 2
    r = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2)
    shell = np.rint(r).astype(np.int64)
    n_shells = int(shell.max()) + 1
    counts = np.bincount(shell.ravel(), minlength=n_shells)
    mean_w = np.bincount(shell.ravel(), weights=w.ravel(), minlength=n_shells) / np.maximum(counts, 1)
    fk = np.interp(np.arange(n_shells) * (box / p), np.arange(fsc_curve.size), fsc_curve, right=0.0)
    if merged:
        fk = 2.0 * fk / (1.0 + np.maximum(fk, 0.0))
    fk = np.clip(fk, 1e-3, 0.999)
    inside = r < (p // 2 - 1)
    return np.maximum((mean_w * (1.0 - fk) / fk)[shell], max(floor * float(w[inside].mean()), 1e-12))


@pytest.mark.parametrize(("p", "merged"), [(16, False), (24, True), (10, True)])
def test_ssnr_wiener_term_equals_the_numpy_version(p: int, merged: bool) -> None:
    rng = np.random.default_rng(p)
    w = rng.random((p, p, p)) ** 4
    fsc = np.linspace(1.0, -0.1, p // 3)
    want = _ssnr_wiener_term_numpy(w, fsc, p // 2, merged)
    got = sta.ssnr_wiener_term(w, fsc, p // 2, merged=merged)
    np.testing.assert_allclose(got, want, rtol=1e-12)


@pytest.mark.parametrize("with_ctf", [True, False])
def test_crop_filters_equal_the_numpy_version(with_ctf: bool) -> None:
    """The extraction's fused pass (centring ramp, CTF · dose, views outside, zero frequency, weights) against
    the numpy filters of :func:`sta._ctf_stack` on random defoci, astigmatism and sub-pixel fractions."""
    import scipy.fft

    from tomoguide.geometry import Optics

    rng = np.random.default_rng(11 + int(with_ctf))
    c, k, b, px = 3, 4, 24, 2.5
    optics = Optics(voltage_kV=300.0, cs_mm=2.7, amplitude_contrast=0.07)
    freq = scipy.fft.fftfreq(b)
    k_a = freq / px
    mean_df = rng.uniform(20000.0, 40000.0, (c, k))
    half_df = rng.uniform(0.0, 500.0, k)
    ang = rng.uniform(-90.0, 90.0, k)
    phase = rng.uniform(0.0, 0.3, k)
    dfilt = rng.uniform(0.2, 1.0, (k, b, b)).astype(np.float32)
    inside = rng.random((c, k)) > 0.2
    inside[0, 0] = False
    fu, fv = rng.uniform(-0.5, 0.5, (c, k)), rng.uniform(-0.5, 0.5, (c, k))
    ft0 = (rng.normal(size=(c, k, b, b)) + 1j * rng.normal(size=(c, k, b, b))).astype(np.complex64)
    filt = sta._filters_reference(k_a, mean_df, inside, half_df, ang, phase, dfilt, optics if with_ctf else None)
    ramp = (np.exp(2j * np.pi * freq[None, None, :, None] * fv[:, :, None, None])
            * np.exp(2j * np.pi * freq[None, None, None, :] * fu[:, :, None, None]))
    want = ft0 * ramp * filt
    want[:, :, 0, 0] = 0
    pl, cs_term, asin_a = sta._ctf_constants(optics)
    ft = ft0.copy()
    w = np.empty((c, k, b, b), np.float32)
    sta._filter_crops(ft, fu, fv, freq, k_a, mean_df, inside, half_df, np.radians(ang), phase, dfilt, pl, cs_term,
                      asin_a, with_ctf, w)
    np.testing.assert_allclose(ft, want, rtol=0, atol=2e-6 * np.abs(want).max())
    np.testing.assert_allclose(w, filt * filt, rtol=0, atol=2e-6)
    assert np.all(ft[~inside] == 0) and np.all(w[~inside] == 0)
    w2 = np.empty_like(w)
    sta._filter_weights(k_a, mean_df, inside, half_df, np.radians(ang), phase, dfilt, pl, cs_term, asin_a, with_ctf,
                        w2)
    np.testing.assert_array_equal(w2, w)


@pytest.mark.parametrize(("b", "size"), [(32, 32), (32, 24), (31, 20), (33, 21), (8, 3)])
def test_cyclic_window_copy_equals_the_shifted_crop(b: int, size: int) -> None:
    """The extraction's copy of the centred crop from an un-shifted inverse transform equals fftshift then crop."""
    import scipy.fft

    rng = np.random.default_rng(b + size)
    src = rng.normal(size=(2, 3, b, b)).astype(np.float32)
    o = b // 2 - size // 2
    dst = np.empty((2, 3, size, size), np.float32)
    sta._copy_cyclic_window(src, dst, scipy.fft.fftshift(np.arange(b))[o:o + size])
    np.testing.assert_array_equal(dst, scipy.fft.fftshift(src, axes=(-2, -1))[..., o:o + size, o:o + size])
    with pytest.raises(ValueError, match="cyclic run"):
        sta._copy_cyclic_window(src, dst[..., :3, :3], np.array([0, 2, 3]))


def test_two_hermitian_grids_give_both_real_volumes_from_one_transform() -> None:
    """Two half-space grids combined as ``fill(G_d) + i fill(G_w)``: one pruned inverse transform gives both
    volumes that :func:`sta._real_centre_from_half` gives one at a time."""
    rng = np.random.default_rng(21)
    p, b = 24, 12
    half = sta._half_space_points(p).astype(np.int64) + p // 2
    gd = np.zeros((p, p, p), np.complex64)
    gw = np.zeros((p, p, p), np.complex64)
    gd[half[:, 2], half[:, 1], half[:, 0]] = rng.normal(size=len(half)) + 1j * rng.normal(size=len(half))
    gw[half[:, 2], half[:, 1], half[:, 0]] = rng.random(len(half))
    want_d = sta._real_centre_from_half(gd.copy(), b)
    want_w = sta._real_centre_from_half(gw.copy(), b)
    both = np.empty_like(gd)
    sta._two_hermitian_grids(gd, gw, both)
    t = sta._centre_of_inverse(both, b)
    np.testing.assert_allclose(t.real, want_d, atol=1e-6 * np.abs(want_d).max())
    np.testing.assert_allclose(t.imag, want_w, atol=1e-6 * np.abs(want_w).max())


def test_pair_scatter_equals_two_scatters_and_the_hermitian_completion() -> None:
    """:func:`sta._scatter_pair_hermitian` (each sample at q and -q, data + i weights, one grid) against the two
    half-space scatters completed by :func:`sta._two_hermitian_grids`, on random slices of random samples (the
    origin halved as the extraction does), and a sub-tomogram from it against the same from the reference."""
    from synthetic_particles import random_rotations

    rng = np.random.default_rng(31)
    b, p, k = 16, 32, 7
    ku, kv, sel = sta._slice_samples(b, p, p / b)
    vals = (rng.normal(size=(k, ku.size)) + 1j * rng.normal(size=(k, ku.size))).astype(np.complex64)
    ws = rng.random((k, ku.size)).astype(np.float32)
    sta._halve_origin(vals, ws, ku, kv)
    mats = np.ascontiguousarray(random_rotations(k, rng))
    want = sta._pair_grid_reference(p, vals, ws, ku, kv, mats, p / b)
    acc = np.zeros(2 * p ** 3, np.float32)
    sta._scatter_pair_hermitian(acc, p, vals, ws, ku, kv, mats, p / b)
    got = acc.view(np.complex64).reshape(p, p, p)
    assert np.abs(want).max() > 1.0 and np.count_nonzero(want) > 0.05 * want.size
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
    np.testing.assert_allclose(sta._centre_of_inverse(got.copy(), b), sta._centre_of_inverse(want.copy(), b),
                               rtol=0, atol=5e-6 * np.abs(sta._centre_of_inverse(want.copy(), b)).max())
