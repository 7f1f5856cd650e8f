"""Refining the acquisition from the particles: per-view shifts, in-plane rotations and defocus fitted against the
current average.

The idea of RELION 5's tomography "CTF refinement" and "frame alignment" (Zivanov et al. 2022, eLife 11:e83724;
``src/jaz/tomography/programs/{ctf_refinement,frame_alignment}``) and of M (Tegunov et al. 2021): once the
particles' poses are known, each view's misalignment and defocus error is measurable by comparing every
particle's sub-tilt with the prediction of the current reference, summed over all the particles of the view.
This module is our own implementation of that idea, per view:

Model
    For particle ``i`` (pose ``x_tomogram = R_i x_reference``, centred in its box) and view ``v`` (matrix ``M_v``,
    tomogram frame -> ``(u, v, depth)`` of the raw view), the 2D transform of the raw sub-tilt (not CTF-
    multiplied, crop centred on the *predicted* position, ``fft2(ifftshift(crop))``) is modelled as::

        F_iv(j) ≈ s_i · CTF(j; Δf_iv + ε_v) · D_v(j) · P_iv(j) · exp(-2πi j·δ_v / E) + noise

    with ``P_iv(j) = ref(scale · (M_v R_i)ᵀ (j_u, j_v, 0))`` the central slice of the reference's transform
    (trilinear from a 2× zero-padded transform), ``D_v`` the exposure filter, ``Δf_iv`` the particle's current
    defocus in the view (view defocus + height term) and ``j`` the integer frequency of the E-pixel box. The
    unknowns are the view's shift ``δ_v`` (px, raw-image x and y: the particles lie at predicted + δ), its
    in-plane rotation ``θ_v`` about the image centre (particle i, predicted at ``p_i`` from the centre, then lies
    at ``p_i + δ_v + (R_θ − I) p_i``: a goniometer turns each view by a few tenths of a degree, which moves
    particles far from the centre by pixels) and its defocus error ``ε_v`` (Å, added to every particle's
    defocus in the view).

Scores
    Over the frequencies ``r_min ≤ |j| ≤ r_max`` (``r_max`` from the reference's resolution: band-limited, as
    RELION weighs by the FSC), the summed cross-correlation
    ``X(δ, ε) = Σ_i Σ_j Re[F_iv(j) conj(CTF·D·P_iv(j)) e^{+2πi j·δ/E}]`` and the figure of merit
    ``X / sqrt(Y Z)`` (``Y = Σ |CTF D P|²``, ``Z = Σ |F|²``, a normalised cross-correlation). The shift: the
    integer maximum of ``X(δ)`` over ``|δ| ≤ max_shift_px`` from one inverse FFT of the summed cross-power, then
    the maximum of the exact ``X`` on a 1/20-px grid of ±1 px around it (matrix DFT, as upsampled cross-
    correlation), then a parabola. The rotation (when the particles' positions are given): for each θ of a 0.1°
    grid within ±``max_rotation_deg`` (then 0.02° about the best, then a parabola) each particle's cross-power is
    phase-shifted by its own displacement ``(R_θ − I) p_i`` before the sum and the shift search; it is kept only
    when its gain of ``X`` over the shift alone exceeds 4 standard deviations under noise. The defocus:
    ``X(ε)/sqrt(Y(ε))`` on a coarse grid (±``defocus_range_A``, ``defocus_step_A``), then a fine grid (1/10 of
    the step) around the best, then a parabola. Shift and defocus are alternated ``rounds`` times (2-3; the
    rotation is searched in the first, later rounds keep it).

Which views change
    A view's corrections are kept only when its particles' signal is clearly there: ``X`` at the optimum exceeds
    ``min_z`` (default 6) times its standard deviation under noise alone (``var X = Σ w² |CTF D P|² N / 2``, the
    noise power ``N`` of each sample estimated by the residual ``|F − a_i · model|²`` with each particle's
    least-squares scale ``a_i``; the maximum of pure noise over the search's ~100 positions stays below 4), the
    shift did not stop at the search's edge and the figure of merit did not fall. Otherwise the view keeps its
    values (corrections 0, ``refined`` False).
    The defocus needs more: the gain of the score ``S = X / sqrt(Y)`` from ``ε = 0`` to the optimum must exceed
    ``min_z_defocus`` (default 4) standard deviations of that difference under noise (S is linear in the data:
    ``var ΔS = Σ w² |D P|² (CTF(ε)/√Y(ε) − CTF(0)/√Y(0))² N / 2``) and ε must not sit at
    the search's edge; else the view keeps its defocus (the shift may still change). At the coarse resolutions
    of a first refinement (10-16 Å) the CTF changes little over ±1000 Å, so the defocus is often left alone.

What the particles can measure
    A common offset ε changes every particle's CTF phase by ``π λ k² ε``, a view shift δ (Å) its phase by ``2π k·δ``:
    per unit of the targets the defocus is weaker by ``≈ 2 / (λ k)`` (1000 at 10 Å, 400 at 4 Å, 300 kV), so where
    the shift is found to 0.3 Å the defocus is known to only ~300 Å at 8-10 Å resolution. On the simulated small
    demo (150 particles per series, 3 e⁻/Å² per view, maps of 16 Å then 8.4 Å) the shifts come back to 0.2 px
    and the defocus of most views stays (its test is not passed): RELION 5 and M refine the defocus from maps at
    3-4 Å. Reference: Zivanov et al. 2022; Tegunov et al. 2021 (Nat. Methods 18:186).

Conventions: images ``(m, k, E, E)`` float32 real-space crops, particle centre at pixel ``E // 2``; maps
``(B, B, B)`` numpy order (z, y, x), centre ``B // 2``; frequencies in cycles per box; defocus in Å, positive =
underfocus, astigmatism angle of U from the raw image X axis (as :mod:`tomoguide.compute.sta`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.fft

from tomoguide.compute.backend import fft_workers
from tomoguide.compute.ctf import electron_wavelength_A

__all__ = [
    "ViewCorrections",
    "reference_transform",
    "sample_slices",
    "sample_slices_reference",
    "band_points",
    "predict_view",
    "refine_view",
    "refine_views",
    "apply_shift_corrections",
    "apply_view_corrections",
]


@dataclass
class ViewCorrections:
    """Per-view corrections of one tilt series (arrays over the ``k`` views given).

    ``shift_px`` (k, 2): δ (x, y) in raw-image px at the sub-tilts' pixel size: the particles lie at the
    predicted position + δ (add δ, rescaled to the geometry's binning, to the view's specimen shift);
    ``defocus_A`` (k,): ε, Å, added to the view's defocus (U and V); ``fom_before``/``fom_after`` (k,):
    normalised cross-correlation at zero corrections and at the corrections; ``z_score`` (k,): the shift peak's
    height in standard deviations of the cross-correlation map; ``refined`` (k,) bool: whether the view's
    corrections are applied (else they are 0); ``n_particles`` the particles used; ``rounds`` per round the
    (k, 3) ``(δx, δy, ε)`` found (before the decision); ``z_defocus`` (k,) the defocus gain's significance and
    ``refined_defocus`` (k,) whether the defocus correction is applied (a view can get its shift only);
    ``rotation_deg`` (k,) θ, the view's in-plane rotation about the image centre (counter-clockwise in raw x, y:
    the particles lie at ``Rθ p + δ``; 0 where not searched or not significant) and ``z_rotation`` (k,) its
    significance.
    """

    shift_px: np.ndarray
    defocus_A: np.ndarray
    fom_before: np.ndarray
    fom_after: np.ndarray
    z_score: np.ndarray
    refined: np.ndarray
    n_particles: int
    rounds: list[np.ndarray] = field(default_factory=list)
    z_defocus: np.ndarray | None = None
    refined_defocus: np.ndarray | None = None
    rotation_deg: np.ndarray | None = None
    z_rotation: np.ndarray | None = None


# --------------------------------------------------------------------------------------------------------
# Reference slices
# --------------------------------------------------------------------------------------------------------


def reference_transform(vol: np.ndarray, mask: np.ndarray | None = None, *, pad: int = 2) -> np.ndarray:
    """Centred transform (P, P, P) complex64, P = ``pad · B``, of ``vol · mask`` (B, B, B) zero-padded about its
    centre (``B // 2`` -> ``P // 2``), divided first by the trilinear kernel's real-space transform
    (``Π sinc²(x / P)``, the gridding correction), so that trilinear samples of it at ``pad · q`` are accurate
    central slices."""
    v = np.asarray(vol, np.float64) * (1.0 if mask is None else np.asarray(mask, np.float64))
    b = v.shape[0]
    if v.shape != (b, b, b):
        raise ValueError(f"the reference must be a cube, got {v.shape}")
    p = int(pad) * b
    k1 = np.sinc((np.arange(b) - b // 2) / p) ** 2  # the trilinear kernel's transform: gridding pre-correction
    v = v / (k1[:, None, None] * k1[None, :, None] * k1[None, None, :])
    big = np.zeros((p, p, p))
    o = p // 2 - b // 2
    big[o:o + b, o:o + b, o:o + b] = v
    ft = scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(big), workers=fft_workers()))
    return ft.astype(np.complex64)


def band_points(box: int, r_min: float, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The half-plane frequencies of an ``box``-pixel image with ``r_min ≤ |j| ≤ r_max`` (cycles per box):
    ``(ju, jv)`` (n,) float64 each, and their flat index (n,) into the ``rfft2`` grid (box, box // 2 + 1).
    ``j_u ≥ 0``; the column ``j_u = 0`` holds both ``±j_v`` (weight 1 each), the others stand for their Friedel
    mates too (weight 2, :func:`_half_weights`)."""
    fy = scipy.fft.fftfreq(box) * box
    fx = np.arange(box // 2 + 1, dtype=np.float64)
    jv, ju = np.meshgrid(fy, fx, indexing="ij")
    r = np.hypot(ju, jv)
    keep = (r >= r_min) & (r <= r_max) & (ju < box / 2)
    flat = np.flatnonzero(keep.ravel())
    return ju.ravel()[flat], jv.ravel()[flat], flat


def _half_weights(ju: np.ndarray) -> np.ndarray:
    return np.where(ju > 0, 2.0, 1.0)


def _trilinear(grid: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Trilinear samples of a centred grid (P, P, P) (numpy order z, y, x) at ``c`` (..., 3) = (x, y, z) in index
    units from the centre; 0 outside."""
    p = grid.shape[0]
    h = p // 2
    x = c[..., 0] + h
    y = c[..., 1] + h
    z = c[..., 2] + h
    x0, y0, z0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64), np.floor(z).astype(np.int64)
    fx, fy, fz = (x - x0).astype(np.float32), (y - y0).astype(np.float32), (z - z0).astype(np.float32)
    inside = (x0 >= 0) & (x0 < p - 1) & (y0 >= 0) & (y0 < p - 1) & (z0 >= 0) & (z0 < p - 1)
    base = (np.where(inside, z0, 0) * p + np.where(inside, y0, 0)) * p + np.where(inside, x0, 0)
    flat = grid.reshape(-1)
    out = np.zeros(x.shape, grid.dtype)
    for dz, wz in ((0, 1.0 - fz), (1, fz)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            wzy = wz * wy
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                out += flat[base + (dz * p + dy) * p + dx] * (wzy * wx)
    return np.where(inside, out, 0)


def sample_slices(ref_ft: np.ndarray, scale: float, mats: np.ndarray, ju: np.ndarray, jv: np.ndarray) -> np.ndarray:
    """Central slices ``ref(scale · Qᵀ (j_u, j_v, 0))`` (m, n) complex64 for matrices ``Q`` (m, 3, 3) = ``M_v R_i``
    (reference frame -> view frame) and frequencies (n,) in cycles per image box; ``scale`` = reference grid
    index per image frequency index (``pad · B_ref · px_ref / (E · px_img)``). Vectorised trilinear."""
    q = np.asarray(mats, np.float64).reshape(-1, 3, 3)
    # Qᵀ (ju, jv, 0): ju · Q[0, :] + jv · Q[1, :]
    c = (ju[None, :, None] * q[:, None, 0, :] + jv[None, :, None] * q[:, None, 1, :]) * float(scale)
    return _trilinear(ref_ft, c).astype(np.complex64)


def sample_slices_reference(ref_ft: np.ndarray, scale: float, mats: np.ndarray, ju: np.ndarray,
                            jv: np.ndarray) -> np.ndarray:
    """Slow loop-over-points reference of :func:`sample_slices` (tests): the same trilinear rule written out."""
    p = ref_ft.shape[0]
    h = p // 2
    q = np.asarray(mats, np.float64).reshape(-1, 3, 3)
    out = np.zeros((len(q), len(ju)), np.complex128)
    for i in range(len(q)):
        for n in range(len(ju)):
            x, y, z = (scale * (ju[n] * q[i, 0] + jv[n] * q[i, 1])) + h
            x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
            if not (0 <= x0 < p - 1 and 0 <= y0 < p - 1 and 0 <= z0 < p - 1):
                continue
            acc = 0j
            for dz in (0, 1):
                for dy in (0, 1):
                    for dx in (0, 1):
                        w = ((x - x0) if dx else 1 - (x - x0)) * ((y - y0) if dy else 1 - (y - y0)) * (
                            (z - z0) if dz else 1 - (z - z0))
                        acc += w * complex(ref_ft[z0 + dz, y0 + dy, x0 + dx])
            out[i, n] = acc
    return out


# --------------------------------------------------------------------------------------------------------
# CTF on the band's points
# --------------------------------------------------------------------------------------------------------


def _chi_points(kx: np.ndarray, ky: np.ndarray, mean_df: np.ndarray, half_astig_A: float, angle_deg: float,
                phase_rad: float, *, voltage_kV: float, cs_mm: float) -> np.ndarray:
    """χ (m, n) float64 of :func:`_ctf_points` (radians)."""
    lam = electron_wavelength_A(voltage_kV)
    k2 = kx * kx + ky * ky
    ast = half_astig_A * np.cos(2.0 * (np.arctan2(ky, kx) - math.radians(angle_deg)))
    base = -0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2 * k2 + phase_rad + math.pi * lam * k2 * ast
    return (math.pi * lam) * k2[None, :] * np.asarray(mean_df, np.float64)[:, None] + base[None, :]


def _ctf_points(kx: np.ndarray, ky: np.ndarray, mean_df: np.ndarray, half_astig_A: float, angle_deg: float,
                phase_rad: float, *, voltage_kV: float, cs_mm: float, amplitude_contrast: float) -> np.ndarray:
    """CTF (m, n) float32 at frequencies ``kx, ky`` (n,) Å⁻¹ for mean defoci ``mean_df`` (m,) Å, the view's
    half-astigmatism and angle; ``CTF = −[√(1−A²) sin χ + A cos χ]`` (:mod:`tomoguide.compute.ctf`)."""
    lam = electron_wavelength_A(voltage_kV)
    k2 = kx * kx + ky * ky
    ast = half_astig_A * np.cos(2.0 * (np.arctan2(ky, kx) - math.radians(angle_deg)))
    base = -0.5 * math.pi * cs_mm * 1e7 * lam**3 * k2 * k2 + phase_rad + math.pi * lam * k2 * ast
    chi = (math.pi * lam) * k2[None, :] * np.asarray(mean_df, np.float64)[:, None] + base[None, :]
    a = float(amplitude_contrast)
    return (-(math.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))).astype(np.float32)


# --------------------------------------------------------------------------------------------------------
# One view
# --------------------------------------------------------------------------------------------------------


def predict_view(ref_fts: list[np.ndarray], half: np.ndarray, scale: float, view_matrix: np.ndarray,
                 rotations: np.ndarray, ju: np.ndarray, jv: np.ndarray) -> np.ndarray:
    """``P_iv`` (m, n) complex64: each particle's central slice from its own reference (``half`` (m,) index
    into ``ref_fts``) in one view (``view_matrix`` (3, 3)), at the band's frequencies."""
    q = np.asarray(view_matrix, np.float64)[None] @ np.asarray(rotations, np.float64)  # (m, 3, 3): M_v R_i
    out = np.zeros((len(q), len(ju)), np.complex64)
    for h, ft in enumerate(ref_fts):
        sel = np.flatnonzero(np.asarray(half) == h)
        if sel.size:
            out[sel] = sample_slices(ft, scale, q[sel], ju, jv)
    return out


def _shift_search(cross: np.ndarray, flat: np.ndarray, ju: np.ndarray, jv: np.ndarray, box: int,
                  max_shift_px: float) -> tuple[np.ndarray, float, bool]:
    """Maximum of ``X(δ) = Σ_j w_j Re[cross_j e^{2πi j·δ/E}]`` (cross (n,) complex on the band): integer search
    over ``|δ| ≤ max_shift_px`` by one inverse rFFT, then ±1 px at 1/20 px by the exact sum, then a parabola.
    Returns ``(δ (2,) px, at_edge)``."""
    grid = np.zeros(box * (box // 2 + 1), np.complex128)
    grid[flat] = cross
    cc = scipy.fft.irfft2(grid.reshape(box, box // 2 + 1), s=(box, box)) * box * box  # = X at integer δ
    # cc[y, x] = Σ cross e^{+2πi (jv y + ju x)/E} with the Friedel mates: X(δ = (x, y)) (circular)
    sh = np.fft.fftfreq(box) * box
    dy, dx = np.meshgrid(sh, sh, indexing="ij")
    allowed = np.hypot(dx, dy) <= max_shift_px
    vals = np.where(allowed, cc, -np.inf)
    iy, ix = np.unravel_index(int(np.argmax(vals)), vals.shape)
    peak = np.array([dx[iy, ix], dy[iy, ix]])
    at_edge = bool(np.hypot(*peak) > max_shift_px - 1.0)
    # fine: exact X on a 1/20-px grid of ±1 px about the integer peak
    w = _half_weights(ju)
    f = np.linspace(-1.0, 1.0, 41)
    ex = np.exp(2j * np.pi * np.outer(peak[0] + f, ju) / box)  # (41, n)
    ey = np.exp(2j * np.pi * np.outer(peak[1] + f, jv) / box)
    xfine = np.real((ey * (cross * w)[None]) @ ex.T)  # (41 y, 41 x)
    fy, fx = np.unravel_index(int(np.argmax(xfine)), xfine.shape)
    d = np.array([peak[0] + f[fx], peak[1] + f[fy]])
    step = f[1] - f[0]
    if 0 < fx < len(f) - 1:
        d[0] += step * _parabola(xfine[fy, fx - 1], xfine[fy, fx], xfine[fy, fx + 1])
    if 0 < fy < len(f) - 1:
        d[1] += step * _parabola(xfine[fy - 1, fx], xfine[fy, fx], xfine[fy + 1, fx])
    return d, at_edge


def _parabola(a: float, b: float, c: float) -> float:
    """Offset (in steps, within ±0.5) of the vertex of the parabola through (-1, a), (0, b), (1, c)."""
    den = a - 2.0 * b + c
    if den >= 0:
        return 0.0
    return float(np.clip(0.5 * (a - c) / den, -0.5, 0.5))


class _DefocusScorer:
    """``S(ε) = X(ε) / sqrt(Y(ε))`` in O(n) per offset: a common defocus offset ε adds the phase ``θ_j = π λ k_j² ε``
    to every particle's χ at frequency j, so ``CTF_ij(ε) = −(A_ij cos θ_j + B_ij sin θ_j)`` with
    ``A = √(1−a²) sin χ⁰ + a cos χ⁰``, ``B = √(1−a²) cos χ⁰ − a sin χ⁰`` (χ⁰ at ε = 0), and the sums over
    particles are taken once: ``X = −Σ_j w_j (XA_j cos θ_j + XB_j sin θ_j)``,
    ``Y = Σ_j w_j (YAA_j cos² θ_j + 2 YAB_j cos θ_j sin θ_j + YBB_j sin² θ_j)``. Same values as
    :func:`_defocus_score` (the reference)."""

    def __init__(self, a_re: np.ndarray, b_abs2: np.ndarray, w: np.ndarray, chi0: np.ndarray, k2: np.ndarray,
                 wavelength_A: float, amplitude_contrast: float) -> None:
        amp = float(amplitude_contrast)
        s0, c0 = np.sin(chi0), np.cos(chi0)
        ca = math.sqrt(1.0 - amp * amp)
        ma = ca * s0 + amp * c0
        mb = ca * c0 - amp * s0
        self.xa = (a_re * ma).sum(0) * w
        self.xb = (a_re * mb).sum(0) * w
        self.yaa = (b_abs2 * ma * ma).sum(0) * w
        self.yab = (b_abs2 * ma * mb).sum(0) * w
        self.ybb = (b_abs2 * mb * mb).sum(0) * w
        self.rate = math.pi * wavelength_A * k2

    def __call__(self, eps: np.ndarray) -> np.ndarray:
        th = np.outer(np.asarray(eps, np.float64), self.rate)
        c, s = np.cos(th), np.sin(th)
        x = -(c @ self.xa + s @ self.xb)
        y = (c * c) @ self.yaa + 2.0 * (c * s) @ self.yab + (s * s) @ self.ybb
        return x / np.sqrt(np.maximum(y, 1e-30))


def _defocus_score(a_re: np.ndarray, b_abs2: np.ndarray, w: np.ndarray, ctf_fn: Any,
                   eps: np.ndarray) -> np.ndarray:
    """``X(ε) / sqrt(Y(ε))`` for offsets ``eps`` (c,): ``X = Σ w · a_re · CTF(ε)``, ``Y = Σ w · b_abs2 · CTF(ε)²``."""
    out = np.empty(len(eps))
    for i, e in enumerate(eps):
        c = ctf_fn(float(e))
        x = float(np.sum((a_re * c) @ w))
        y = float(np.sum((b_abs2 * c * c) @ w))
        out[i] = x / math.sqrt(max(y, 1e-30))
    return out


def _residual_power(data: np.ndarray, model: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(m, n) ``|F − a_i · model|²``: each sample's noise power estimated by the residual of the data ``data``
    (m, n) from ``model`` (m, n) with each particle's least-squares scale ``a_i`` (over the band's weights ``w``
    (n,))."""
    a_i = np.real(np.sum(data * np.conj(model) * w, axis=1)) / np.maximum(np.sum(np.abs(model) ** 2 * w, axis=1),
                                                                           1e-30)
    return np.abs(data - a_i[:, None] * model) ** 2


def _particle_phases(pos: np.ndarray, theta_deg: float, delta: np.ndarray, ju: np.ndarray, jv: np.ndarray,
                     box: int) -> np.ndarray:
    """(m, n) complex128 ``e^{2πi j·s_i / E}`` with ``s_i = δ + (Rθ − I) p_i``: where each particle lies (px from its
    predicted position) when the view is turned by ``theta_deg`` about the image centre and shifted by ``δ``
    (separable: per-axis tables over the band's integer frequencies, one product per sample)."""
    t = math.radians(theta_deg)
    c, s = math.cos(t), math.sin(t)
    sx = delta[0] + (c - 1.0) * pos[:, 0] - s * pos[:, 1]
    sy = delta[1] + s * pos[:, 0] + (c - 1.0) * pos[:, 1]
    iu, iv = np.asarray(ju, np.int64), np.asarray(jv, np.int64)
    qu = np.arange(iu.min(initial=0), iu.max(initial=0) + 1)
    qv = np.arange(iv.min(initial=0), iv.max(initial=0) + 1)
    tu = np.exp((2j * np.pi / box) * np.outer(sx, qu))
    tv = np.exp((2j * np.pi / box) * np.outer(sy, qv))
    return tu[:, iu - qu[0]] * tv[:, iv - qv[0]]


def _rotation_search(prod: np.ndarray, pos: np.ndarray, w: np.ndarray, flat: np.ndarray, ju: np.ndarray,
                     jv: np.ndarray, box: int, max_shift_px: float, max_rotation_deg: float, at_deg: float = 0.0
                     ) -> tuple[float, np.ndarray, bool]:
    """The view's in-plane rotation θ (degrees, about the image centre, |θ| ≤ ``max_rotation_deg``) and shift δ
    maximising ``X(θ, δ) = Σ_i Σ_j w_j Re[prod_ij e^{2πi j·(δ + (Rθ − I) p_i)/E}]`` (``prod`` (m, n) the
    particles' cross-powers ``F conj(CTF D P)``, ``pos`` (m, 2) their positions from the image centre, px): for
    each θ of a grid (0.1° steps, then 0.02° about the best) the particles' cross-powers are phase-shifted by
    their own displacement ``(Rθ − I) p_i``, summed, and the best shift found (:func:`_shift_search`); a
    parabola through the best θ and its neighbours. ``max_rotation_deg`` 0: the shift at θ = ``at_deg`` only.
    Returns ``(θ, δ (2,), δ at the search's edge)``."""

    def best_at(th: float) -> tuple[float, np.ndarray, bool]:
        cross = np.sum(prod * _particle_phases(pos, th, np.zeros(2), ju, jv, box), axis=0)
        d, edge = _shift_search(cross, flat, ju, jv, box, max_shift_px)
        ph = np.exp(2j * np.pi * (ju * d[0] + jv * d[1]) / box)
        return float(np.real(cross * ph) @ w), d, edge

    if max_rotation_deg <= 0.0:
        _, d, edge = best_at(float(at_deg))
        return float(at_deg), d, edge
    coarse = np.arange(-max_rotation_deg, max_rotation_deg + 1e-9, 0.1)
    vals = [best_at(float(t)) for t in coarse]
    i = int(np.argmax([v[0] for v in vals]))
    fine = coarse[i] + np.arange(-5, 6) * 0.02
    fv = [best_at(float(t)) for t in fine]
    j = int(np.argmax([v[0] for v in fv]))
    th = float(fine[j])
    if 0 < j < len(fine) - 1:
        th += 0.02 * _parabola(fv[j - 1][0], fv[j][0], fv[j + 1][0])
    _, d, edge = best_at(th)
    return th, d, edge


def refine_view(
    data: np.ndarray, pred: np.ndarray, dose: np.ndarray | None, mean_df_A: np.ndarray, *, ju: np.ndarray,
    jv: np.ndarray, flat: np.ndarray, box: int, pixel_size_A: float, half_astig_A: float = 0.0,
    astig_angle_deg: float = 0.0, phase_rad: float = 0.0, voltage_kV: float = 300.0, cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1, max_shift_px: float = 6.0, defocus_range_A: float = 2000.0,
    defocus_step_A: float = 100.0, rounds: int = 3, fit_defocus: bool = True,
    positions_px: np.ndarray | None = None, max_rotation_deg: float = 0.0,
) -> dict[str, Any]:
    """Shift, in-plane rotation and defocus correction of one view from its particles.

    ``data`` (m, n) complex: the sub-tilts' transforms at the band's points (``flat`` into the rFFT grid of
    ``box``); ``pred`` (m, n) complex: the reference's slices ``P_iv``; ``dose`` (n,) exposure filter or None;
    ``mean_df_A`` (m,) the particles' current mean defocus in the view. With ``positions_px`` (m, 2) (each
    particle's predicted position in the raw view, px from the image centre, x and y) and ``max_rotation_deg`` >
    0, the view's in-plane rotation θ about the image centre is searched too (:func:`_rotation_search`): the
    particles then lie at ``Rθ p + δ``. Returns a dict with ``shift_px`` (2,), ``rotation_deg``, ``defocus_A``,
    ``z_score``, ``z_rotation``, ``at_edge``, ``fom_before``, ``fom_after``, ``rounds`` ((r, 3) per round).
    """
    kx = ju / (box * pixel_size_A)
    ky = jv / (box * pixel_size_A)
    w = _half_weights(ju)
    dp = pred * (1.0 if dose is None else dose[None, :].astype(np.float32))
    opt = {"voltage_kV": voltage_kV, "cs_mm": cs_mm, "amplitude_contrast": amplitude_contrast}

    def ctf_fn(eps: float) -> np.ndarray:
        return _ctf_points(kx, ky, mean_df_A + eps, half_astig_A, astig_angle_deg, phase_rad, **opt)

    lam = electron_wavelength_A(voltage_kV)
    k2 = kx * kx + ky * ky

    rotate = positions_px is not None and max_rotation_deg > 0.0
    theta = 0.0
    z_rot = 0.0
    pos = None if positions_px is None else np.asarray(positions_px, np.float64).reshape(-1, 2)

    def particle_phase(th: float, d: np.ndarray) -> np.ndarray:
        """(m, n) e^{2πi j·(δ + (Rθ − I) p_i)/E}: each particle's phase for the view's shift and rotation ((1, n)
        without positions: the shift's, common to all)."""
        if pos is None:
            return np.exp(2j * np.pi * (ju * d[0] + jv * d[1]) / box)[None]
        return _particle_phases(pos, th, d, ju, jv, box)

    z_norm = math.sqrt(max(float(np.sum((np.abs(data) ** 2) @ w)), 1e-30))

    def fom(delta: np.ndarray, eps: float, th: float = 0.0) -> float:
        c = ctf_fn(eps)
        ph = particle_phase(th, delta)
        x = float(np.sum(np.real(data * np.conj(dp) * ph) * c @ w))
        y = float(np.sum((np.abs(dp) ** 2) * c * c @ w))
        return x / math.sqrt(max(y, 1e-30)) / z_norm

    delta = np.zeros(2)
    eps = 0.0
    before = fom(delta, eps)
    chi0 = _chi_points(kx, ky, mean_df_A, half_astig_A, astig_angle_deg, phase_rad, voltage_kV=voltage_kV,
                       cs_mm=cs_mm)
    hist = []
    edge = False
    for rnd in range(max(1, int(rounds))):
        c = ctf_fn(eps)
        prod = data * np.conj(dp) * c  # (m, n)
        if rotate:
            theta, delta, edge = _rotation_search(prod, pos, w, flat, ju, jv, box, max_shift_px,
                                                  max_rotation_deg if rnd == 0 else 0.0, theta)
        else:
            delta, edge = _shift_search(prod.sum(axis=0), flat, ju, jv, box, max_shift_px)
        if fit_defocus:
            a_re = np.real(data * np.conj(dp) * particle_phase(theta, delta)).astype(np.float64)
            b2 = (np.abs(dp) ** 2).astype(np.float64)
            scorer = _DefocusScorer(a_re, b2, w, chi0, k2, lam, amplitude_contrast)
            coarse = np.arange(-defocus_range_A, defocus_range_A + 0.5 * defocus_step_A, defocus_step_A)
            sc = scorer(coarse)
            best = float(coarse[int(np.argmax(sc))])
            fine_step = defocus_step_A / 10.0
            fine = best + np.arange(-10, 11) * fine_step
            sf = scorer(fine)
            i = int(np.argmax(sf))
            eps = float(fine[i])
            if 0 < i < len(fine) - 1:
                eps += fine_step * _parabola(sf[i - 1], sf[i], sf[i + 1])
        hist.append([delta[0], delta[1], eps])
    if rotate:
        # the rotation only where its gain of X over the best shift alone stands out of the noise (as the defocus)
        c = ctf_fn(eps)
        prod = data * np.conj(dp) * c
        d0, _ = _shift_search(prod.sum(axis=0), flat, ju, jv, box, max_shift_px)
        ph_r = particle_phase(theta, delta)
        ph_0 = np.exp(2j * np.pi * (ju * d0[0] + jv * d0[1]) / box)[None]
        x_r = float(np.sum(np.real(prod * ph_r) @ w))
        x_0 = float(np.sum(np.real(prod * ph_0) @ w))
        noise_r = _residual_power(data, dp * c * np.conj(ph_r), w)
        var_r = float(np.sum((np.abs(dp * c) ** 2) * np.abs(ph_r - ph_0) ** 2 * noise_r @ (w * w))) / 2.0
        z_rot = (x_r - x_0) / math.sqrt(max(var_r, 1e-30)) if theta != 0.0 else 0.0
        if z_rot < 4.0 or abs(theta) > max_rotation_deg - 0.05:
            theta, delta = 0.0, d0  # not significant, or at the search's edge: the shift alone
    # significance: X at the optimum over its standard deviation under noise alone, var X = Σ w² |CTF D P|² N / 2,
    # the noise power N of each sample estimated by the residual |F − a_i · model|² (a_i: each particle's
    # least-squares scale; unbiased for the sum but for the fitted scales' few degrees of freedom)
    c = ctf_fn(eps)
    ph = particle_phase(theta, delta)  # (m, n)
    noise = _residual_power(data, dp * c * np.conj(ph), w)
    x = float(np.sum(np.real(data * np.conj(dp) * ph) * c @ w))
    var = float(np.sum((np.abs(dp * c) ** 2) * noise @ (w * w))) / 2.0
    z = x / math.sqrt(max(var, 1e-30))
    # the defocus: the gain of the score S = X / sqrt(Y) from ε = 0 to ε at the shift found, over its standard
    # deviation under noise alone (S is linear in the data: var ΔS = Σ w² |D P|² (c/√Y − c₀/√Y₀)² N / 2)
    c0 = ctf_fn(0.0)
    x0 = float(np.sum(np.real(data * np.conj(dp) * ph) * c0 @ w))
    y1 = math.sqrt(max(float(np.sum((np.abs(dp) ** 2) * c * c @ w)), 1e-30))
    y0 = math.sqrt(max(float(np.sum((np.abs(dp) ** 2) * c0 * c0 @ w)), 1e-30))
    var_d = float(np.sum((np.abs(dp) ** 2) * (c / y1 - c0 / y0) ** 2 * noise @ (w * w))) / 2.0
    z_df = (x / y1 - x0 / y0) / math.sqrt(max(var_d, 1e-30)) if eps != 0.0 else 0.0
    df_edge = abs(eps) > defocus_range_A - defocus_step_A
    return {"shift_px": delta, "defocus_A": eps, "z_score": z, "z_defocus": z_df, "defocus_at_edge": df_edge,
            "at_edge": edge, "fom_before": before, "rotation_deg": theta, "z_rotation": z_rot,
            "fom_after": fom(delta, eps, theta), "rounds": np.asarray(hist)}


# --------------------------------------------------------------------------------------------------------
# A tilt series
# --------------------------------------------------------------------------------------------------------


def refine_views(
    images: np.ndarray,
    view_matrices: np.ndarray,
    rotations: np.ndarray,
    references: list[np.ndarray],
    half: np.ndarray,
    mean_defocus_A: np.ndarray,
    *,
    pixel_size_A: float,
    reference_voxel_A: float,
    resolution_A: float,
    mask: np.ndarray | None = None,
    dose: np.ndarray | None = None,
    half_astig_A: np.ndarray | None = None,
    astig_angle_deg: np.ndarray | None = None,
    phase_rad: np.ndarray | None = None,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    low_A: float | None = None,
    max_shift_px: float = 6.0,
    defocus_range_A: float = 2000.0,
    defocus_step_A: float = 100.0,
    rounds: int = 3,
    fit_defocus: bool = True,
    min_z: float = 6.0,
    min_z_defocus: float = 4.0,
    pad: int = 2,
    positions_px: np.ndarray | None = None,
    max_rotation_deg: float = 0.0,
    progress: Any = None,
) -> ViewCorrections:
    """Per-view shift and defocus corrections of one tilt series from its particles (module docstring).

    ``images`` (m, k, E, E) float32: raw sub-tilts (not CTF-multiplied, not dose-filtered), particle centre at
    ``E // 2`` (:func:`tomoguide.compute.sta.extract_subtilts` with ``ctf=None``, ``dose_weighting=False``);
    ``view_matrices`` (k, 3, 3) tomogram frame -> ``(u, v, depth)``; ``rotations`` (m, 3, 3) the particles'
    ``R`` (``x_tomogram = R x_reference``; particles centred in their boxes); ``references`` maps (B, B, B) of
    voxel ``reference_voxel_A`` (gold standard: the two half maps), ``half`` (m,) index of each particle's map;
    ``mean_defocus_A`` (m, k) the particles' current mean defocus per view (Å); ``dose`` (k, E, E) exposure
    filters on the un-shifted FFT grid (None: none); ``half_astig_A``, ``astig_angle_deg``, ``phase_rad`` (k,)
    per view. ``resolution_A``: the band's high-frequency limit (the reference's resolution); ``low_A``: its
    low limit (default: the box, i.e. from 2 cycles per box); ``pad``: oversampling of the reference's
    transform. ``positions_px`` (m, k, 2): the particles' predicted positions in each raw view, px of ``images``
    from the image centre; with ``max_rotation_deg`` > 0 each view's in-plane rotation is searched within it.
    ``progress(fraction, message)`` optional.
    Returns :class:`ViewCorrections`: ``shift_px`` in px of ``images``.
    """
    img = np.asarray(images, np.float32)
    if img.ndim != 4 or img.shape[-1] != img.shape[-2]:
        raise ValueError(f"images must be (m, k, E, E), got {img.shape}")
    m, k, e, _ = img.shape
    mats = np.asarray(view_matrices, np.float64).reshape(-1, 3, 3)
    if len(mats) != k:
        raise ValueError(f"{len(mats)} view matrices for {k} views")
    rots = np.asarray(rotations, np.float64).reshape(-1, 3, 3)
    if len(rots) != m:
        raise ValueError(f"{len(rots)} rotations for {m} particles")
    half = np.asarray(half, np.int64).reshape(-1)
    if half.size != m or (m and (half.min() < 0 or half.max() >= len(references))):
        raise ValueError("half must give each particle the index of one of the references")
    mdf = np.asarray(mean_defocus_A, np.float64).reshape(m, k)
    b_ref = int(np.asarray(references[0]).shape[0])
    ref_fts = [reference_transform(r, mask, pad=pad) for r in references]
    scale = pad * b_ref * float(reference_voxel_A) / (e * float(pixel_size_A))
    r_max = min(e * pixel_size_A / float(resolution_A), e / 2.0 - 1.0, (b_ref / 2.0 - 1.0) / (scale / pad))
    r_min = 2.0 if low_A is None else max(1.0, e * pixel_size_A / float(low_A))
    ju, jv, flat = band_points(e, r_min, r_max)
    if ju.size < 8:
        raise ValueError(f"too few frequencies between {r_min:.1f} and {r_max:.1f} cycles per box to refine")
    ha = np.zeros(k) if half_astig_A is None else np.asarray(half_astig_A, np.float64)
    aa = np.zeros(k) if astig_angle_deg is None else np.asarray(astig_angle_deg, np.float64)
    ph = np.zeros(k) if phase_rad is None else np.asarray(phase_rad, np.float64)
    shift = np.zeros((k, 2))
    dfc = np.zeros(k)
    fb, fa, zs = np.zeros(k), np.zeros(k), np.zeros(k)
    refined = np.zeros(k, bool)
    refined_df = np.zeros(k, bool)
    zd = np.zeros(k)
    rot_deg, z_rot = np.zeros(k), np.zeros(k)
    pos_all = None if positions_px is None else np.asarray(positions_px, np.float64).reshape(m, k, 2)
    hist = np.zeros((max(1, int(rounds)), k, 3))
    for v in range(k):
        ft = scipy.fft.rfft2(scipy.fft.ifftshift(img[:, v], axes=(-2, -1)), workers=fft_workers())
        data = ft.reshape(m, -1)[:, flat].astype(np.complex64)
        pred = predict_view(ref_fts, half, scale, mats[v], rots, ju, jv)
        dose_v = None if dose is None else np.asarray(dose[v]).reshape(-1)[
            _full_index(flat, e)].astype(np.float32)
        r = refine_view(data, pred, dose_v, mdf[:, v], ju=ju, jv=jv, flat=flat, box=e, pixel_size_A=pixel_size_A,
                        half_astig_A=float(ha[v]), astig_angle_deg=float(aa[v]), phase_rad=float(ph[v]),
                        voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                        max_shift_px=max_shift_px, defocus_range_A=defocus_range_A,
                        defocus_step_A=defocus_step_A, rounds=rounds, fit_defocus=fit_defocus,
                        positions_px=None if pos_all is None else pos_all[:, v], max_rotation_deg=max_rotation_deg)
        hist[:, v] = r["rounds"]
        z_rot[v] = r["z_rotation"]
        zs[v], fb[v] = r["z_score"], r["fom_before"]
        ok = r["z_score"] >= min_z and not r["at_edge"] and r["fom_after"] >= r["fom_before"]
        ok_df = ok and fit_defocus and r["z_defocus"] >= min_z_defocus and not r["defocus_at_edge"]
        refined[v], refined_df[v], zd[v] = ok, ok_df, r["z_defocus"]
        if ok:
            shift[v] = r["shift_px"]
            rot_deg[v] = r["rotation_deg"]
            dfc[v] = r["defocus_A"] if ok_df else 0.0
            fa[v] = r["fom_after"]
        else:
            fa[v] = r["fom_before"]
        if progress is not None:
            progress((v + 1) / k, f"view {v + 1}/{k}: shift ({shift[v, 0]:+.2f}, {shift[v, 1]:+.2f}) px, "
                                  f"rotation {rot_deg[v]:+.2f}°, defocus {dfc[v]:+.0f} Å, z {zs[v]:.1f}")
    return ViewCorrections(shift_px=shift, defocus_A=dfc, fom_before=fb, fom_after=fa, z_score=zs,
                           refined=refined, n_particles=m, rounds=[h for h in hist], z_defocus=zd,
                           refined_defocus=refined_df, rotation_deg=rot_deg, z_rotation=z_rot)


def _full_index(flat: np.ndarray, box: int) -> np.ndarray:
    """Flat indices into the full (box, box) FFT grid of the rFFT grid's flat indices ``flat``."""
    nxh = box // 2 + 1
    return (flat // nxh) * box + flat % nxh


def apply_view_corrections(xf: np.ndarray, shift_px: np.ndarray, rotation_deg: np.ndarray | None = None
                           ) -> np.ndarray:
    """IMOD transforms (n, 2, 3) ``aligned = A raw + d`` corrected so that every specimen point's raw position
    ``u`` (image centre ``C``) becomes ``C + Rθ (u − C) + δ``: ``A' = A Rθ⁻¹``, ``d' = d − A Rθ⁻¹ δ`` (``δ``
    ``shift_px`` (n, 2) raw px at the transforms' binning, ``θ`` ``rotation_deg`` (n,) counter-clockwise in raw
    x, y; None: shifts only, :func:`apply_shift_corrections`)."""
    if rotation_deg is None:
        return apply_shift_corrections(xf, shift_px)
    m = np.array(xf, np.float64, copy=True)
    t = np.radians(np.asarray(rotation_deg, np.float64).reshape(-1))
    c, s = np.cos(t), np.sin(t)
    r_inv = np.stack([np.stack([c, s], -1), np.stack([-s, c], -1)], -2)  # (n, 2, 2) Rθ⁻¹ = Rθᵀ
    a_new = m[:, :, :2] @ r_inv
    m[:, :, :2] = a_new
    m[:, :, 2] -= np.einsum("nij,nj->ni", a_new, np.asarray(shift_px, np.float64).reshape(-1, 2))
    return m


def apply_shift_corrections(xf: np.ndarray, shift_px: np.ndarray) -> np.ndarray:
    """IMOD transforms (n, 2, 3) ``aligned = A raw + d`` with each view's specimen shift ``s = −A⁻¹ d`` moved by
    ``shift_px`` (n, 2) (raw px at the transforms' binning): ``d' = d − A δ``, so that every specimen point
    projects ``δ`` further in the raw view (:meth:`tomoguide.geometry.TiltSeriesGeometry.projection_matrices`)."""
    m = np.array(xf, np.float64, copy=True)
    d = np.asarray(shift_px, np.float64).reshape(-1, 2)
    m[:, :, 2] -= np.einsum("nij,nj->ni", m[:, :, :2], d)
    return m
