"""Gold-standard 3D auto-refine of pseudo-subtomograms (RELION-like), and reconstruction without search.

Data model (what :func:`tomoguide.compute.sta.pseudo_subtomograms` gives)
    Per particle ``i`` a real-space box ``data[i]`` (B, B, B) float32 (numpy order z, y, x; centre ``B // 2``;
    tomogram frame) and ``weights[i]`` (B, B, B) float32 ``CTF² · dose²`` on the *centred* Fourier grid
    (zero frequency at index ``B // 2``; vector ``(x, y, z)`` of integer frequencies = index - ``B // 2``).
    With ``D_i`` the centred transform of ``data[i]``:
    ``D_i(q) ≈ W_i(q) · F_ref(R_iᵀ q) · exp(-2πi q·t_i / B) + noise`` (noise variance ∝ ``W_i``), for the pose
    ``x_tomogram = R_i x_reference + t_i`` (:mod:`tomoguide.compute.euler`; ``t_i`` in px here, in Å in
    :class:`Poses`).

Scoring
    The Gaussian log-likelihood of the pose, with one free scale per particle and pose (the reference's scale
    need not match the data's): with ``X = Re Σ_q conj(A(q)) D_i(q) e^{+2πi q·t/B}`` and
    ``Y = Σ_q W_i(q) |A(q)|²``, ``A(q) = F_ref(Rᵀ q)``, the likelihood ``s X - s² Y / 2`` maximised over the
    scale ``s`` gives the score ``X |X| / (2 Y)`` (the profile likelihood; the scale ``X / Y`` is the
    least-squares one). Sums run over a half space of Fourier voxels ``1 ≤ |q| ≤ r_max`` (the current
    resolution limit). For a particle at current pose ``(R_i, t_i)`` and candidates ``R = R_i P_j``,
    ``t = t_i + R_i δ_k`` the data are first brought into the reference frame once,
    ``D'_i(p) = D_i(R_i p) e^{2πi (R_i p)·t_i / B}``, ``W'_i(p) = W_i(R_i p)`` (trilinear, numba), so that
    ``X`` for all ``P_j`` (rows) × particles and shifts ``δ_k`` (columns) is one real matrix product
    ``[Re A | Im A] @ [Re D'E | Im D'E]ᵀ`` and ``Y`` another (``A_j(p) = F_ref(P_jᵀ p)``, sampled from the
    2×-oversampled transform of the masked reference). A global search uses ``R_i = I`` and ``P_j`` on an
    asymmetric-unit grid of SO(3) (:func:`asymmetric_unit_grid`); local searches use small rotations ``P_j``
    (:func:`local_rotations`). After the rotation search the translation is refined over the whole offset
    range at the chosen rotation by an FFT cross-correlation (``Σ_q conj(A) D_i e^{2πi q·t/B}`` for every
    integer ``t``) with sub-pixel parabolic interpolation.

Reconstruction
    Each particle's transform is brought into the reference frame (gather ``D_i(R_i p) e^{2πi(R_i p)·t_i/B}``
    and ``W_i(R_i p)`` at every voxel ``p`` of the Nyquist sphere, numba, parallel over voxels), summed,
    symmetrised (:func:`tomoguide.compute.sta.rotate_fourier`) and divided with a Wiener term
    (:func:`tomoguide.compute.sta.fourier_to_map`) — the same average as
    :func:`tomoguide.compute.sta.average_from_subtomograms` (tested), faster.

Gold standard: two random half sets, each aligned to its own reference; FSC between the half maps with a
soft spherical mask (``mask_diameter_A``), corrected by phase randomisation
(:func:`tomoguide.compute.fsc.masked_fsc_corrected`), resolution at 0.143; the next references are the half
maps FSC-weighted (``sqrt(2 FSC / (1 + FSC))``), low-passed to the resolution and masked.
Reference: Scheres 2012 (RELION, J. Struct. Biol. 180:519); Zivanov et al. 2022 (RELION 4 tomography).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import scipy.fft

from tomoguide.compute.backend import fft_workers
from tomoguide.compute import fsc as F
from tomoguide.compute.euler import matrix_to_euler, rotation_angle_deg
from tomoguide.compute import sta as ST
from tomoguide.compute.sta import fourier_to_map, ssnr_wiener_term
from tomoguide.compute.symmetry import symmetry_matrices

__all__ = [
    "Poses",
    "RefineResult",
    "so3_grid",
    "asymmetric_unit_grid",
    "local_rotations",
    "centred_fft_stack",
    "auto_refine",
    "reconstruct_halves",
    "reconstruct_grids",
    "symmetrise_grids",
    "resample_map",
    "search_poses",
    "refine_shifts",
    "prepare_reference",
    "symmetry_angle_error_deg",
    "register_rotation",
    "gather_numpy",
]

Progress = Callable[[float, str], None]


# --------------------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------------------


@dataclass
class Poses:
    """Particle poses: ``rotations`` (m, 3, 3) float64 with ``x_tomogram = R x_reference + t``; ``shifts_A``
    (m, 3) float64 ``t`` in Å, tomogram frame ``(x, y, z)`` (the particle centre is at its extracted position
    + ``t``); ``scores`` (m,) float64 (the search's score, larger = better)."""

    rotations: np.ndarray
    shifts_A: np.ndarray
    scores: np.ndarray

    def euler_deg(self) -> np.ndarray:
        """RELION Euler angles (m, 3) ``(rot, tilt, psi)`` in degrees of the rotations."""
        return matrix_to_euler(self.rotations)

    @classmethod
    def identity(cls, m: int) -> Poses:
        return cls(np.repeat(np.eye(3)[None], m, axis=0), np.zeros((m, 3)), np.zeros(m))

    def copy(self) -> Poses:
        return Poses(self.rotations.copy(), self.shifts_A.copy(), self.scores.copy())


@dataclass
class RefineResult:
    """Result of :func:`auto_refine` (or of :func:`reconstruct_halves`, with ``history`` empty).

    ``poses`` the refined poses; ``half_sets`` (m,) int 1 or 2; ``half1``, ``half2`` (B, B, B) float32 the
    unfiltered half maps; ``merged`` (B, B, B) float32 the map of all particles, FSC-weighted and low-passed
    at ``resolution_A``; ``mask`` (B, B, B) float32 the soft FSC mask; ``freqs_per_A`` (B//2+1,) Å⁻¹;
    ``fsc_unmasked``, ``fsc_masked``, ``fsc_corrected`` (phase-randomisation corrected masked FSC);
    ``resolution_A`` at FSC_corrected = 0.143; ``history`` one dict per iteration (``iteration``,
    ``search`` "global"/"local", ``resolution_A``, ``search_resolution_A``, ``angular_step_deg``,
    ``n_rotations``, ``offset_range_px``, ``offset_step_px``, ``mean_angle_change_deg`` (up to the symmetry;
    NaN for global searches), ``mean_shift_change_A``, ``time_s``, ``search_s`` (the expectation step:
    rotations and shifts), ``reconstruct_fsc_s``); ``voxel_A`` the voxel size."""

    poses: Poses
    half_sets: np.ndarray
    half1: np.ndarray
    half2: np.ndarray
    merged: np.ndarray
    mask: np.ndarray
    freqs_per_A: np.ndarray
    fsc_unmasked: np.ndarray
    fsc_masked: np.ndarray
    fsc_corrected: np.ndarray
    resolution_A: float
    history: list[dict[str, Any]] = field(default_factory=list)
    voxel_A: float = 1.0


# --------------------------------------------------------------------------------------------------------
# Rotation grids
# --------------------------------------------------------------------------------------------------------


def _rodrigues(v: np.ndarray) -> np.ndarray:
    """Rotation matrices (n, 3, 3) of axis-angle vectors ``v`` (n, 3) (angle = |v| in radians)."""
    v = np.asarray(v, dtype=np.float64).reshape(-1, 3)
    th = np.linalg.norm(v, axis=1)
    safe = np.where(th > 0, th, 1.0)
    k = v / safe[:, None]
    kx = np.zeros((len(v), 3, 3))
    kx[:, 0, 1], kx[:, 0, 2], kx[:, 1, 2] = -k[:, 2], k[:, 1], -k[:, 0]
    kx[:, 1, 0], kx[:, 2, 0], kx[:, 2, 1] = k[:, 2], -k[:, 1], k[:, 0]
    s, c = np.sin(th)[:, None, None], (1.0 - np.cos(th))[:, None, None]
    return np.eye(3)[None] + s * kx + c * (kx @ kx)


def so3_grid(step_deg: float) -> np.ndarray:
    """Roughly uniform rotations (n, 3, 3) of SO(3) about ``step_deg`` apart: Fibonacci-sphere directions of
    the reference z axis (about ``4π / step²`` of them) × in-plane angles every ``step_deg`` (the Haar measure
    is uniform directions × uniform in-plane angle). About ``8π² / step³`` rotations (36 000 at 7.5°)."""
    step = math.radians(step_deg)
    n_dir = max(1, int(math.ceil(4.0 * math.pi / step**2)))
    i = np.arange(n_dir) + 0.5
    tilt = np.arccos(1.0 - 2.0 * i / n_dir)
    rot = (np.pi * (1.0 + 5.0**0.5) * i) % (2.0 * np.pi)
    n_psi = max(1, int(math.ceil(360.0 / step_deg)))
    psi = np.arange(n_psi) * (2.0 * np.pi / n_psi)
    from tomoguide.compute.euler import euler_to_matrix

    ang = np.stack(np.broadcast_arrays(rot[:, None], tilt[:, None], psi[None, :]), axis=-1).reshape(-1, 3)
    return euler_to_matrix(np.degrees(ang))


def asymmetric_unit_grid(step_deg: float, symmetry: str = "C1") -> np.ndarray:
    """Rotations (n, 3, 3) covering SO(3) modulo the point group: the rotations ``R`` of :func:`so3_grid`
    that are closer to the identity than any ``R S`` (``S`` in the group; ``x_tomo = R x_ref`` and the
    reference is symmetric, so ``R`` and ``R S`` are the same pose): the Voronoi cell of the identity,
    about ``1 / |G|`` of the grid."""
    grid = so3_grid(step_deg)
    sym = symmetry_matrices(symmetry)
    if sym.shape[0] == 1:
        return grid
    # trace(R S) = Σ_ij R_ij S_ji: larger trace = smaller rotation angle
    tr = np.einsum("nij,sji->ns", grid, sym)
    keep = np.argmax(tr, axis=1) == 0
    return grid[keep]


def local_rotations(step_deg: float, radius_steps: float = 2.0) -> np.ndarray:
    """Small rotations (n, 3, 3) about the identity for local searches: axis-angle vectors on a cubic grid of
    spacing ``step_deg`` within a ball of ``radius_steps`` steps (33 rotations for 2 steps), identity first."""
    r = int(math.floor(radius_steps))
    g = np.arange(-r, r + 1, dtype=np.float64)
    v = np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3)
    v = v[np.sum(v * v, axis=1) <= radius_steps**2 + 1e-9]
    v = v[np.argsort(np.sum(v * v, axis=1), kind="stable")]
    return _rodrigues(v * math.radians(step_deg))


def symmetry_angle_error_deg(a: np.ndarray, b: np.ndarray, symmetry: str = "C1") -> np.ndarray:
    """Angle (degrees) between poses ``a`` and ``b`` (m, 3, 3) up to the symmetry: ``min_S angle(a, b S)``."""
    sym = symmetry_matrices(symmetry)
    a = np.asarray(a, dtype=np.float64).reshape(-1, 3, 3)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 3, 3)
    bs = np.einsum("mij,sjk->msik", b, sym)
    return rotation_angle_deg(a[:, None], bs).min(axis=1)


# --------------------------------------------------------------------------------------------------------
# Fourier helpers and numba kernels
# --------------------------------------------------------------------------------------------------------


def centred_fft_stack(data: np.ndarray) -> np.ndarray:
    """Centred 3D transforms (m, B, B, B) complex64 of real boxes (m, B, B, B) with centre ``B // 2``."""
    return ST.centred_fftn(np.asarray(data, dtype=np.float32)).astype(np.complex64, copy=False)


def _centred_fft(vol: np.ndarray) -> np.ndarray:
    return ST.centred_fftn(vol)


def _centred_ifft_real(grid: np.ndarray) -> np.ndarray:
    return ST.centred_fftn(grid, inverse=True, real=True)


def _points(box: int, r_max: float, *, half: bool, r_min: float = 1.0) -> np.ndarray:
    """Integer frequency vectors (n, 3) float64 ``(x, y, z)`` with ``r_min ≤ |p| ≤ r_max`` (``< B/2``);
    with ``half`` only one of each Friedel pair (x > 0, or x = 0 and y > 0, or x = y = 0 and z > 0)."""
    r = int(math.ceil(r_max))
    k = np.arange(-r, r + 1, dtype=np.float64)
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    rr = x * x + y * y + z * z
    sel = (rr <= r_max * r_max) & (rr >= r_min * r_min) & (rr < (box / 2.0) ** 2)
    if half:
        sel &= (x > 0) | ((x == 0) & (y > 0)) | ((x == 0) & (y == 0) & (z > 0))
    return np.stack([x[sel], y[sel], z[sel]], axis=1)


@numba.njit(cache=True, fastmath=True, inline="always")
def _tri(g: Any, gi: int, x: float, y: float, z: float, p: int) -> Any:
    """Trilinear sample of grid ``g[gi]`` (complex or real; numba compiles one version per dtype) at index
    coordinates (x, y, z); neighbours outside the grid count as 0."""
    x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
    fx, fy, fz = x - x0, y - y0, z - z0
    acc = g[gi, 0, 0, 0] * 0.0
    for dz in range(2):
        zz = z0 + dz
        if zz < 0 or zz >= p:
            continue
        wz = fz if dz else 1.0 - fz
        for dy in range(2):
            yy = y0 + dy
            if yy < 0 or yy >= p:
                continue
            wy = fy if dy else 1.0 - fy
            for dx in range(2):
                xx = x0 + dx
                if xx < 0 or xx >= p:
                    continue
                wx = fx if dx else 1.0 - fx
                acc += g[gi, zz, yy, xx] * (wz * wy * wx)
    return acc


@numba.njit(cache=True, fastmath=True)
def _phase_tables(r: Any, s: Any, kmax: int) -> tuple[Any, Any, Any]:
    """``exp(2πi k u_a)`` for k = -kmax..kmax and ``u = Rᵀ s`` (a = x, y, z): the phase ``exp(2πi (R p)·s)``
    of an integer point ``p`` is the product of three table entries (no sin/cos per sample)."""
    n = 2 * kmax + 1
    ex = np.empty(n, np.complex128)
    ey = np.empty(n, np.complex128)
    ez = np.empty(n, np.complex128)
    ux = r[0, 0] * s[0] + r[1, 0] * s[1] + r[2, 0] * s[2]
    uy = r[0, 1] * s[0] + r[1, 1] * s[1] + r[2, 1] * s[2]
    uz = r[0, 2] * s[0] + r[1, 2] * s[1] + r[2, 2] * s[2]
    for k in range(n):
        kk = 2.0 * math.pi * (k - kmax)
        ex[k] = complex(math.cos(kk * ux), math.sin(kk * ux))
        ey[k] = complex(math.cos(kk * uy), math.sin(kk * uy))
        ez[k] = complex(math.cos(kk * uz), math.sin(kk * uz))
    return ex, ey, ez


@numba.njit(parallel=True, cache=True, fastmath=True)
def _gather_c(grids: Any, which: Any, scale: float, rots: Any, shifts: Any, pts: Any, out: Any) -> None:
    """out[i, n] = grids[which[i]](scale · R_i p_n) · exp(2πi (R_i p_n)·s_i) (trilinear, centred grids;
    ``s_i`` = shift in px / B: cycles per frequency unit; ``pts`` integer-valued)."""
    p = grids.shape[1]
    h = p // 2
    kmax = 0
    for n in range(pts.shape[0]):
        for a in range(3):
            kmax = max(kmax, int(abs(pts[n, a])))
    for i in numba.prange(rots.shape[0]):
        r = rots[i]
        gi = which[i]
        ex, ey, ez = _phase_tables(r, shifts[i], kmax)
        for n in range(pts.shape[0]):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            qx = r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz
            qy = r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz
            qz = r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz
            v = _tri(grids, gi, scale * qx + h, scale * qy + h, scale * qz + h, p)
            out[i, n] = v * (ex[int(px) + kmax] * ey[int(py) + kmax] * ez[int(pz) + kmax])


@numba.njit(parallel=True, cache=True, fastmath=True)
def _gather_r(grids: Any, which: Any, scale: float, rots: Any, pts: Any, out: Any) -> None:
    """out[i, n] = grids[which[i]](scale · R_i p_n) (trilinear, centred real grids)."""
    p = grids.shape[1]
    h = p // 2
    for i in numba.prange(rots.shape[0]):
        r = rots[i]
        gi = which[i]
        for n in range(pts.shape[0]):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            qx = r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz
            qy = r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz
            qz = r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz
            out[i, n] = _tri(grids, gi, scale * qx + h, scale * qy + h, scale * qz + h, p)


@numba.njit(parallel=True, cache=True, fastmath=True)
def _gather_sum(data: Any, weights: Any, which: Any, rots: Any, shifts: Any, pts: Any,
                out_d: Any, out_w: Any) -> None:
    """out_d[n] += Σ_i data[which[i]](R_i p_n) e^{2πi (R_i p_n)·s_i}; out_w[n] += Σ_i weights[which[i]](R_i p_n)
    (parallel over blocks of points: no write conflicts; particles, then points inside a block, so that
    consecutive samples are neighbours in the particle's grid)."""
    p = data.shape[1]
    h = p // 2
    n_p = pts.shape[0]
    blk = 2048
    n_blk = (n_p + blk - 1) // blk
    kmax = 0
    for n in range(n_p):
        for a in range(3):
            kmax = max(kmax, int(abs(pts[n, a])))
    for bi in numba.prange(n_blk):
        n0 = bi * blk
        n1 = min(n_p, n0 + blk)
        acc_re = np.zeros(n1 - n0)
        acc_im = np.zeros(n1 - n0)
        accw = np.zeros(n1 - n0)
        for i in range(rots.shape[0]):
            r = rots[i]
            gi = which[i]
            ex, ey, ez = _phase_tables(r, shifts[i], kmax)
            for n in range(n0, n1):
                px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
                qx = r[0, 0] * px + r[0, 1] * py + r[0, 2] * pz
                qy = r[1, 0] * px + r[1, 1] * py + r[1, 2] * pz
                qz = r[2, 0] * px + r[2, 1] * py + r[2, 2] * pz
                v = _tri(data, gi, qx + h, qy + h, qz + h, p)
                e = ex[int(px) + kmax] * ey[int(py) + kmax] * ez[int(pz) + kmax]
                acc_re[n - n0] += v.real * e.real - v.imag * e.imag
                acc_im[n - n0] += v.real * e.imag + v.imag * e.real
                accw[n - n0] += _tri(weights, gi, qx + h, qy + h, qz + h, p)
        for n in range(n0, n1):
            out_d[n] += complex(acc_re[n - n0], acc_im[n - n0])
            out_w[n] += accw[n - n0]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _gather_ref(ref_ri: Any, scale: float, rots: Any, pts: Any, rows: Any, out: Any) -> None:
    """``out[i, 0, n] + 1j out[i, 1, n] = ref(scale · R_i p_n)`` (trilinear) for a reference ``ref_ri`` (P, P, P, 2)
    float32 (:func:`reference_ri`), rotations ``rots`` (m, 3, 3), integer points ``pts`` (n, 3) ``(x, y, z)`` in
    runs along x ``rows`` (:func:`_point_rows`); ``out`` (m, 2, n) float32 (real parts, then imaginary parts: the
    layout the global search multiplies). Every sample must lie inside the grid (``scale · |p| < P/2 - 1``; the
    caller checks): what :func:`_gather_c` computes with zero shifts, in float32 arithmetic, one rotation per
    thread, coordinates stepped along each run."""
    p_ref = ref_ri.shape[0]
    hf = np.float32(p_ref // 2)
    flat = ref_ri.reshape(-1)
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    sy = np.uint64(2 * p_ref)
    sz = np.uint64(2 * p_ref * p_ref)
    for i in numba.prange(rots.shape[0]):
        r = rots[i]
        m0, m1, m2 = np.float32(scale * r[0, 0]), np.float32(scale * r[0, 1]), np.float32(scale * r[0, 2])
        m3, m4, m5 = np.float32(scale * r[1, 0]), np.float32(scale * r[1, 1]), np.float32(scale * r[1, 2])
        m6, m7, m8 = np.float32(scale * r[2, 0]), np.float32(scale * r[2, 1]), np.float32(scale * r[2, 2])
        for rr in range(rows.shape[0]):
            s0 = rows[rr, 0]
            py, pz = np.float32(pts[s0, 1]), np.float32(pts[s0, 2])
            x_first = np.float32(pts[s0, 0])
            bx = m1 * py + m2 * pz + hf
            by = m4 * py + m5 * pz + hf
            bz = m7 * py + m8 * pz + hf
            for j in range(rows[rr, 1]):
                px = x_first + np.float32(j)
                x = m0 * px + bx
                y = m3 * px + by
                z = m6 * px + bz
                x0, y0, z0 = int(x), int(y), int(z)
                fx, fy, fz = x - np.float32(x0), y - np.float32(y0), z - np.float32(z0)
                o = np.uint64(2 * ((z0 * p_ref + y0) * p_ref + x0))
                o01 = o + sy
                o10 = o + sz
                o11 = o10 + sy
                v00 = flat[o]
                v01 = flat[o01]
                v10 = flat[o10]
                v11 = flat[o11]
                c00 = v00 + fx * (flat[o + two] - v00)
                c01 = v01 + fx * (flat[o01 + two] - v01)
                c10 = v10 + fx * (flat[o10 + two] - v10)
                c11 = v11 + fx * (flat[o11 + two] - v11)
                u00 = flat[o + one]
                u01 = flat[o01 + one]
                u10 = flat[o10 + one]
                u11 = flat[o11 + one]
                d00 = u00 + fx * (flat[o + three] - u00)
                d01 = u01 + fx * (flat[o01 + three] - u01)
                d10 = u10 + fx * (flat[o10 + three] - u10)
                d11 = u11 + fx * (flat[o11 + three] - u11)
                c0 = c00 + fy * (c01 - c00)
                c1 = c10 + fy * (c11 - c10)
                d0 = d00 + fy * (d01 - d00)
                d1 = d10 + fy * (d11 - d10)
                out[i, 0, s0 + j] = c0 + fz * (c1 - c0)
                out[i, 1, s0 + j] = d0 + fz * (d1 - d0)


def _inside_reference(pts: np.ndarray, scale: float, p_ref: int) -> bool:
    """Whether every ``scale · R p`` (any rotation) lies at least one voxel inside a P-point centred grid."""
    if len(pts) == 0:
        return True
    r = float(np.sqrt((np.asarray(pts, np.float64) ** 2).sum(axis=1).max()))
    return scale * r + 1e-3 < p_ref // 2 - 1.0


def sample_reference(ref_ft: np.ndarray, scale: float, rotations: np.ndarray, pts: np.ndarray,
                     ref_ri: np.ndarray | None = None, rows: np.ndarray | None = None,
                     buffer: np.ndarray | None = None) -> np.ndarray:
    """``ref(scale · R_i p_n)`` (trilinear, 0 outside) of a prepared reference ``ref_ft`` (1, P, P, P) complex64 at
    rotations (m, 3, 3) and integer points ``pts`` (n, 3) of :func:`_points`: (m, 2, n) float32, real parts then
    imaginary parts. ``ref_ri`` / ``rows``: :func:`reference_ri` / :func:`_point_rows` when the caller has them;
    ``buffer``: a float32 array of at least ``m · 2 · n`` values to write into (the result is a view of it: a
    caller sampling chunk after chunk reuses its pages instead of faulting in a fresh 100-MB array per chunk).
    The fast kernel :func:`_gather_ref` when every sample lies inside the grid, else :func:`_gather_c`."""
    rot = np.ascontiguousarray(rotations, np.float64).reshape(-1, 3, 3)
    p_ref = ref_ft.shape[-1]
    size = len(rot) * 2 * len(pts)
    if buffer is not None and buffer.dtype == np.float32 and buffer.size >= size and buffer.flags.c_contiguous:
        out = buffer.reshape(-1)[:size].reshape(len(rot), 2, len(pts))
    else:
        out = np.empty((len(rot), 2, len(pts)), np.float32)
    if _inside_reference(pts, scale, p_ref):
        _gather_ref(reference_ri(ref_ft) if ref_ri is None else ref_ri, float(scale), rot, pts,
                    _point_rows(pts) if rows is None else rows, out)
    else:
        a = np.empty((len(rot), len(pts)), np.complex64)
        _gather_c(ref_ft, np.zeros(len(rot), np.int64), float(scale), rot, np.zeros((len(rot), 3)), pts, a)
        out[:, 0] = a.real
        out[:, 1] = a.imag
    return out


def gather_numpy(grid: np.ndarray, scale: float, rot: np.ndarray, shift: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Pure-numpy reference of the numba gathers for one grid: ``grid(scale · R p) e^{2πi (R p)·s}``
    (trilinear, 0 outside), ``pts`` (n, 3) ``(x, y, z)``. Returns (n,) of the grid's dtype (complex128 for a
    complex grid)."""
    g = np.asarray(grid)
    p = g.shape[0]
    h = p // 2
    q = pts @ np.asarray(rot, dtype=np.float64).T
    c = scale * q + h
    x0 = np.floor(c).astype(np.int64)
    f = c - x0
    out = np.zeros(len(pts), np.result_type(g.dtype, np.float64))
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                ix, iy, iz = x0[:, 0] + dx, x0[:, 1] + dy, x0[:, 2] + dz
                ok = (ix >= 0) & (ix < p) & (iy >= 0) & (iy < p) & (iz >= 0) & (iz < p)
                w = ((f[:, 0] if dx else 1 - f[:, 0]) * (f[:, 1] if dy else 1 - f[:, 1])
                     * (f[:, 2] if dz else 1 - f[:, 2]))
                v = np.zeros(len(pts), out.dtype)
                v[ok] = g[iz[ok], iy[ok], ix[ok]]
                out += v * w
    if np.iscomplexobj(g):
        out = out * np.exp(2j * np.pi * (q @ np.asarray(shift, dtype=np.float64)))
    return out


# --------------------------------------------------------------------------------------------------------
# Reconstruction
# --------------------------------------------------------------------------------------------------------


def reconstruct_grids(
    data_ft: np.ndarray, weights: np.ndarray, rotations: np.ndarray, shifts_px: np.ndarray,
    select: np.ndarray | None = None, *, symmetry: str = "C1",
) -> tuple[np.ndarray, np.ndarray]:
    """Summed centred Fourier grids of particles brought into the reference frame, symmetrised.

    ``data_ft`` (m, B, B, B) complex64 centred transforms (:func:`centred_fft_stack`), ``weights`` (m, B, B, B)
    float32 centred, ``rotations`` (m, 3, 3), ``shifts_px`` (m, 3) ``t`` in px (tomogram frame);
    ``select`` indices (or a boolean mask) of the particles to use (None: all). Returns ``(data_grid
    complex128, weight_grid float64)`` (B, B, B), non-zero inside the Nyquist sphere ``|p| < B/2``.
    """
    m, b = data_ft.shape[0], data_ft.shape[-1]
    idx = np.arange(m) if select is None else np.flatnonzero(np.asarray(select)) if np.asarray(select).dtype == bool \
        else np.asarray(select, dtype=np.int64)
    pts = _points(b, b / 2.0 - 1e-6, half=False, r_min=0.0)
    out_d = np.zeros(len(pts), np.complex128)
    out_w = np.zeros(len(pts), np.float64)
    if len(idx):
        _gather_sum(data_ft, weights, idx.astype(np.int64), np.ascontiguousarray(rotations[idx], np.float64),
                    np.ascontiguousarray(shifts_px[idx] / b, np.float64), pts, out_d, out_w)
    h = b // 2
    ii = pts.astype(np.int64) + h
    dg = np.zeros((b, b, b), np.complex128)
    wg = np.zeros((b, b, b), np.float64)
    dg[ii[:, 2], ii[:, 1], ii[:, 0]] = out_d
    wg[ii[:, 2], ii[:, 1], ii[:, 0]] = out_w
    sym = symmetry_matrices(symmetry)
    if sym.shape[0] > 1:
        dg, wg = symmetrise_grids(dg, wg, sym)
    return dg, wg


def symmetrise_grids(data_grid: np.ndarray, weight_grid: np.ndarray, operators: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``Σ_S grid(S p)`` of a centred complex data grid and real weight grid (B, B, B) over the rotations
    ``operators`` (s, 3, 3), inside the Nyquist sphere (numba; the same as
    :func:`tomoguide.compute.sta.rotate_fourier` with trilinear interpolation). Returns (complex128,
    float64) grids."""
    b = data_grid.shape[0]
    pts = _points(b, b / 2.0 - 1e-6, half=False, r_min=0.0)
    ops = np.ascontiguousarray(operators, np.float64).reshape(-1, 3, 3)
    out_d = np.zeros(len(pts), np.complex128)
    out_w = np.zeros(len(pts), np.float64)
    # single-precision inputs (the kernel accumulates in double): one compiled kernel for both uses
    _gather_sum(np.ascontiguousarray(data_grid, np.complex64)[None],
                np.ascontiguousarray(weight_grid, np.float32)[None],
                np.zeros(len(ops), np.int64), ops, np.zeros((len(ops), 3)), pts, out_d, out_w)
    ii = pts.astype(np.int64) + b // 2
    dg = np.zeros((b, b, b), np.complex128)
    wg = np.zeros((b, b, b), np.float64)
    dg[ii[:, 2], ii[:, 1], ii[:, 0]] = out_d
    wg[ii[:, 2], ii[:, 1], ii[:, 0]] = out_w
    return dg, wg


def _merged_map(half1: np.ndarray, half2: np.ndarray, grids: list[tuple[np.ndarray, np.ndarray]], box: int,
                fsc_curve: np.ndarray, resolution_A: float, voxel_A: float, wiener_constant: float | None,
                regularisation: float) -> np.ndarray:
    wg = grids[0][1] + grids[1][1]
    tau = ssnr_wiener_term(wg, fsc_curve, box, merged=True) if wiener_constant is None else wiener_constant
    full = fourier_to_map(grids[0][0] + grids[1][0], wg, box, wiener_constant=tau, regularisation=regularisation)
    filt = F.fsc_to_wiener_filter(fsc_curve, half_maps=True)
    return F.lowpass(F.apply_shell_filter(full, filt), resolution_A, voxel_A)


Corrector = Callable[[int, np.ndarray, np.ndarray, Any], np.ndarray]


def _half_maps(grids: list[tuple[np.ndarray, np.ndarray]], box: int, mask: np.ndarray, voxel_A: float,
               wiener_constant: float | None, regularisation: float, corrector: Corrector | None = None
               ) -> tuple[list[np.ndarray], dict[str, Any], list[tuple[np.ndarray, np.ndarray]]]:
    """The two half maps, their FSC statistics and the grids they come from. Without a fixed ``wiener_constant``
    the halves are made twice: first with ``regularisation × mean(weight)``, then with the FSC-based term of
    :func:`ssnr_wiener_term` (RELION's), which divides out the CTF² weights fully where the halves agree (near the
    CTF zeros too). ``corrector(half_index, data_grid, weight_grid, tau)`` (:meth:`sta.Reconstructor.corrected`)
    replaces each data grid before the final division (with the FSC-based τ); the returned grids carry it."""
    halves = [fourier_to_map(g[0], g[1], box, wiener_constant=wiener_constant, regularisation=regularisation)
              for g in grids]
    stats = _fsc_stats(halves[0], halves[1], mask, voxel_A)
    if wiener_constant is None or corrector is not None:
        taus = ([ssnr_wiener_term(g[1], stats["fsc_true"], box) for g in grids] if wiener_constant is None
                else [ST.wiener_term(g[1], wiener_constant, regularisation) for g in grids])
        if corrector is not None:
            grids = [(corrector(i, g[0], g[1], tau), g[1]) for i, (g, tau) in enumerate(zip(grids, taus, strict=True))]
        halves = [fourier_to_map(g[0], g[1], box, wiener_constant=tau) for g, tau in zip(grids, taus, strict=True)]
        stats = _fsc_stats(halves[0], halves[1], mask, voxel_A)
    return halves, stats, grids


def _fsc_stats(half1: np.ndarray, half2: np.ndarray, mask: np.ndarray, voxel_A: float) -> dict[str, Any]:
    c = F.masked_fsc_corrected(half1, half2, mask, voxel_A=voxel_A)
    c["resolution_A"] = F.resolution_at(c["fsc_true"], c["freqs_A"], 0.143)
    return c


def _mask(box: int, voxel_A: float, mask_diameter_A: float) -> np.ndarray:
    edge = max(2.0, 0.06 * box)
    radius = min(mask_diameter_A / (2.0 * voxel_A), box / 2.0 - edge - 1.0)
    return F.soft_sphere_mask(box, radius, edge)


def _split(m: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.permutation(m) % 2 + 1).astype(np.int64)


class _Averager:
    """The half-set reconstructions of a refinement: from the sub-tilts when given (:class:`sta.Reconstructor`: 2D
    slices on a 2× oversampled grid, gridding-corrected, the final maps corrected for the gridding bias), else by
    gathering the 3D pseudo-subtomograms' transforms on the box's grid (:func:`reconstruct_grids`)."""

    def __init__(self, data_ft: np.ndarray | None, weights: np.ndarray | None, subtilts: Any, m: int, box: int,
                 symmetry: str) -> None:
        self.dft, self.w, self.symmetry = data_ft, weights, symmetry
        self.rec: ST.Reconstructor | None = None
        if subtilts is not None:
            self.rec = subtilts if isinstance(subtilts, ST.Reconstructor) else ST.Reconstructor(subtilts)
            if self.rec.n_particles != m or self.rec.box != box:
                raise ValueError(f"the sub-tilts hold {self.rec.n_particles} particles of box {self.rec.box}, the "
                                 f"pseudo-subtomograms {m} of box {box}")
        elif data_ft is None or weights is None:
            raise ValueError("reconstructions need the pseudo-subtomograms or the sub-tilts")

    def grids(self, rot: np.ndarray, t_px: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.rec is not None:
            return self.rec.grids(rot, t_px, select, symmetry=self.symmetry)
        return reconstruct_grids(self.dft, self.w, rot, t_px, select, symmetry=self.symmetry)

    def corrector(self, rot: np.ndarray, half_sets: np.ndarray) -> Corrector | None:
        rec = self.rec
        if rec is None or not rec.corrects_by_default:
            return None

        def correct(i: int, dg: np.ndarray, wg: np.ndarray, tau: Any) -> np.ndarray:
            return rec.corrected(dg, wg, tau, rot, half_sets == i + 1, symmetry=self.symmetry)

        return correct


def reconstruct_halves(
    data: np.ndarray | None,
    weights: np.ndarray | None,
    poses: Poses,
    half_sets: np.ndarray | None,
    *,
    symmetry: str = "C1",
    voxel_A: float,
    mask_diameter_A: float = 150.0,
    wiener_constant: float | None = None,
    regularisation: float = 0.01,
    seed: int = 0,
    data_ft: np.ndarray | None = None,
    subtilts: Any = None,
) -> RefineResult:
    """Gold-standard half maps, FSC and merged map from known poses (no search).

    ``data`` (m, B, B, B) float32 real-space pseudo-subtomograms, ``weights`` (m, B, B, B) float32 centred
    Fourier weights, ``poses`` (shifts in Å, tomogram frame), ``half_sets`` (m,) 1/2 (None: a random split
    with ``seed``); ``voxel_A`` voxel size in Å; ``mask_diameter_A`` soft FSC mask; Wiener term
    ``wiener_constant`` (weight units) or ``regularisation × mean(weight)``. ``subtilts``: the particles'
    sub-tilts (:class:`sta.Subtilts`, a list of them in the particles' order, or a :class:`sta.Reconstructor`):
    the maps are then reconstructed from them (2× oversampled, gridding-corrected; ``data`` and ``weights`` may
    be None). Returns a :class:`RefineResult` (empty history).
    """
    if data is not None:
        m, b = np.shape(data)[0], np.shape(data)[-1]
    elif subtilts is not None:
        rec = subtilts if isinstance(subtilts, ST.Reconstructor) else ST.Reconstructor(subtilts)
        subtilts, m, b = rec, rec.n_particles, rec.box
    else:
        raise ValueError("reconstructions need the pseudo-subtomograms or the sub-tilts")
    hs = _split(m, seed) if half_sets is None else np.asarray(half_sets, dtype=np.int64)
    dft = w = None
    if subtilts is None:
        dft = centred_fft_stack(np.asarray(data)) if data_ft is None else data_ft
        w = np.ascontiguousarray(weights, dtype=np.float32)
    av = _Averager(dft, w, subtilts, m, b, symmetry)
    t_px = np.asarray(poses.shifts_A, np.float64) / voxel_A
    grids = [av.grids(poses.rotations, t_px, hs == h) for h in (1, 2)]
    mask = _mask(b, voxel_A, mask_diameter_A)
    halves, st, grids = _half_maps(grids, b, mask, voxel_A, wiener_constant, regularisation,
                                   av.corrector(np.asarray(poses.rotations, np.float64), hs))
    merged = _merged_map(halves[0], halves[1], grids, b, st["fsc_true"], st["resolution_A"], voxel_A,
                         wiener_constant, regularisation)
    return RefineResult(poses=poses, half_sets=hs, half1=halves[0], half2=halves[1], merged=merged, mask=mask,
                        freqs_per_A=st["freqs_A"], fsc_unmasked=st["fsc_unmasked"], fsc_masked=st["fsc_masked"],
                        fsc_corrected=st["fsc_true"], resolution_A=float(st["resolution_A"]), history=[],
                        voxel_A=float(voxel_A))


# --------------------------------------------------------------------------------------------------------
# Searches
# --------------------------------------------------------------------------------------------------------


def prepare_reference(vol: np.ndarray, mask: np.ndarray | None, *, pad: int = 2) -> np.ndarray:
    """Centred transform (1, P, P, P) complex64 (P = pad · B) of a reference map multiplied by ``mask``,
    zero-padded about its centre for accurate trilinear sampling (sample at ``pad · q``)."""
    v = np.asarray(vol, np.float64) * (1.0 if mask is None else np.asarray(mask, np.float64))
    b = v.shape[0]
    p = pad * b
    big = np.zeros((p, p, p))
    o = p // 2 - b // 2
    big[o:o + b, o:o + b, o:o + b] = v
    return ST.centred_fftn(big, single=True)[None]


def _shift_set(step_px: float, n: int) -> np.ndarray:
    """Shift candidates (k, 3) px: 0 and ±step along each axis (n = 7), or the 3×3×3 cube (n = 27), or 0."""
    if n <= 1:
        return np.zeros((1, 3))
    if n <= 7:
        e = np.eye(3)
        return np.concatenate([np.zeros((1, 3)), e, -e]) * step_px
    g = np.array([-1.0, 0.0, 1.0])
    return np.stack(np.meshgrid(g, g, g, indexing="ij"), axis=-1).reshape(-1, 3) * step_px


@numba.njit(parallel=True, cache=True, fastmath=True)
def _local_scores_reference(ref_re: Any, ref_im: Any, scale: float, data_ft: Any, weights: Any, idx: Any, rots: Any,
                            shifts: Any, pert: Any, pts: Any, deltas: Any, out_x: Any, out_y: Any) -> None:
    """The first version of :func:`_local_scores` (kept as its test oracle and for ``bench/kernels_speed.py``):
    the same sums, points outer and candidate rotations inner, real and imaginary parts in two grids.

    For particle c (data ``idx[c]``) and candidates ``R = rots[c] @ pert[j]``, ``t = shifts[c] + deltas[k]``
    (shifts in px / B): ``out_x[c, j, k] = Re Σ_n conj(A(p_n)) D(p_n) e^{2πi p_n·t}``, ``out_y[c, j] =
    Σ_n W(p_n) |A(p_n)|²`` with ``A(p) = ref(scale · Rᵀ p)`` (trilinear; ``ref_re``, ``ref_im`` the real and
    imaginary parts of the centred reference grid) over the integer points ``pts``."""
    p_ref = ref_re.shape[0]
    h_ref = p_ref // 2
    lim = p_ref - 1.0001
    b = data_ft.shape[1]
    h = b // 2
    n_p = pts.shape[0]
    n_k = deltas.shape[0]
    n_j = pert.shape[0]
    for c in numba.prange(idx.shape[0]):
        gi = idx[c]
        de_re = np.empty((n_p, n_k), np.float32)
        de_im = np.empty((n_p, n_k), np.float32)
        wv = np.empty(n_p, np.float32)
        for n in range(n_p):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            iz, iy, ix = int(pz) + h, int(py) + h, int(px) + h
            v = data_ft[gi, iz, iy, ix]
            wv[n] = weights[gi, iz, iy, ix]
            for k in range(n_k):
                ph = 2.0 * math.pi * (px * (shifts[c, 0] + deltas[k, 0]) + py * (shifts[c, 1] + deltas[k, 1])
                                      + pz * (shifts[c, 2] + deltas[k, 2]))
                cs, sn = math.cos(ph), math.sin(ph)
                de_re[n, k] = v.real * cs - v.imag * sn
                de_im[n, k] = v.real * sn + v.imag * cs
        r = rots[c]
        mt = np.empty((n_j, 9))
        for j in range(n_j):
            pj = pert[j]
            for a in range(3):
                for e in range(3):
                    # mt[j, 3 e + a] = (r @ pj)[a, e]: sampled at q = (r pj)^T p
                    mt[j, 3 * e + a] = r[a, 0] * pj[0, e] + r[a, 1] * pj[1, e] + r[a, 2] * pj[2, e]
        xs = np.zeros((n_j, n_k))
        ys = np.zeros(n_j)
        # points outer, candidate rotations inner: the n_j samples of one point are neighbours in the grid
        for n in range(n_p):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            wn = wv[n]
            for j in range(n_j):
                x = min(max(scale * (mt[j, 0] * px + mt[j, 1] * py + mt[j, 2] * pz) + h_ref, 0.0), lim)
                y = min(max(scale * (mt[j, 3] * px + mt[j, 4] * py + mt[j, 5] * pz) + h_ref, 0.0), lim)
                z = min(max(scale * (mt[j, 6] * px + mt[j, 7] * py + mt[j, 8] * pz) + h_ref, 0.0), lim)
                x0, y0, z0 = int(x), int(y), int(z)
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                w00, w01, w10, w11 = gz * gy, gz * fy, fz * gy, fz * fy
                ar = (w00 * (gx * ref_re[z0, y0, x0] + fx * ref_re[z0, y0, x0 + 1])
                      + w01 * (gx * ref_re[z0, y0 + 1, x0] + fx * ref_re[z0, y0 + 1, x0 + 1])
                      + w10 * (gx * ref_re[z0 + 1, y0, x0] + fx * ref_re[z0 + 1, y0, x0 + 1])
                      + w11 * (gx * ref_re[z0 + 1, y0 + 1, x0] + fx * ref_re[z0 + 1, y0 + 1, x0 + 1]))
                ai = (w00 * (gx * ref_im[z0, y0, x0] + fx * ref_im[z0, y0, x0 + 1])
                      + w01 * (gx * ref_im[z0, y0 + 1, x0] + fx * ref_im[z0, y0 + 1, x0 + 1])
                      + w10 * (gx * ref_im[z0 + 1, y0, x0] + fx * ref_im[z0 + 1, y0, x0 + 1])
                      + w11 * (gx * ref_im[z0 + 1, y0 + 1, x0] + fx * ref_im[z0 + 1, y0 + 1, x0 + 1]))
                ys[j] += wn * (ar * ar + ai * ai)
                for k in range(n_k):
                    xs[j, k] += ar * de_re[n, k] + ai * de_im[n, k]
        for j in range(n_j):
            for k in range(n_k):
                out_x[c, j, k] = xs[j, k]
            out_y[c, j] = ys[j]


@numba.njit(parallel=True, cache=True, fastmath=True)
def _local_scores(ref_ri: Any, scale: float, data_ft: Any, weights: Any, idx: Any, cand: Any, shifts: Any,
                  pts: Any, rows: Any, deltas: Any, out_x: Any, out_y: Any) -> None:
    """For particle c (data ``idx[c]``) and candidates ``R = cand[c, j]`` ((c, n_j, 3, 3): each particle's own
    candidate rotations, e.g. ``rots[c] @ pert[j]``), ``t = shifts[c] + deltas[k]``
    (shifts in px / B): ``out_x[c, j, k] = Re Σ_n conj(A(p_n)) D(p_n) e^{2πi p_n·t}``, ``out_y[c, j] =
    Σ_n W(p_n) |A(p_n)|²`` with ``A(p) = ref(scale · Rᵀ p)`` (trilinear, coordinates clamped to the grid) over the
    integer points ``pts`` (n, 3) ``(x, y, z)`` of :func:`_points`; ``rows`` (r, 2) int64 their runs along x
    (:func:`_point_rows`: first point, count; x increases by 1 inside a run).

    ``ref_ri`` (P, P, P, 2) float32: the centred reference grid, real and imaginary parts side by side (both
    parts of two x-neighbours in one cache line). Per particle (one thread each) the points go in blocks of about
    1024 (a few rows of the data grid); inside a block each candidate rotation in turn samples the reference
    along the block's rows (coordinates stepped along x, float32 arithmetic, no clamping where every sample lies
    inside the grid) into a (candidates × block) buffer, then the block's sums are contiguous dot products with
    the phase-shifted data (``e^{2πi p·t}`` from three per-axis tables), which LLVM vectorises. The same sums as
    :func:`_local_scores_reference` up to float32 rounding (relative 1e-5)."""
    p_ref = ref_ri.shape[0]
    h_ref = p_ref // 2
    lim = p_ref - 1.0001
    b = data_ft.shape[1]
    h = b // 2
    n_p = pts.shape[0]
    n_k = deltas.shape[0]
    n_j = cand.shape[1]
    n_rows = rows.shape[0]
    kmax = 0
    r2max = 0.0
    for n in range(n_p):
        r2max = max(r2max, pts[n, 0] ** 2 + pts[n, 1] ** 2 + pts[n, 2] ** 2)
        for a in range(3):
            kmax = max(kmax, int(abs(pts[n, a])))
    # every sample inside [0, P - 1): no clamping needed (the usual case: |p| < B/2 and P = scale · B)
    clamp = scale * math.sqrt(r2max) + 1e-3 >= h_ref - 1.0
    nt = 2 * kmax + 1
    flat = ref_ri.reshape(-1)
    # unsigned offsets: numba skips the negative-index wraparound test for them
    one, two, three = np.uint64(1), np.uint64(2), np.uint64(3)
    sy = np.uint64(2 * p_ref)
    sz = np.uint64(2 * p_ref * p_ref)
    hf = np.float32(h_ref)
    limf = np.float32(lim)
    zf = np.float32(0.0)
    # blocks of whole rows, about 1024 points each
    blk_start = np.empty(n_rows + 1, np.int64)
    n_blk = 0
    acc_n = 1 << 30
    for r in range(n_rows):
        if acc_n >= 1024:
            blk_start[n_blk] = r
            n_blk += 1
            acc_n = 0
        acc_n += rows[r, 1]
    blk_start[n_blk] = n_rows
    max_blk = 0
    for bi in range(n_blk):
        cnt = 0
        for r in range(blk_start[bi], blk_start[bi + 1]):
            cnt += rows[r, 1]
        max_blk = max(max_blk, cnt)
    for c in numba.prange(idx.shape[0]):
        gi = idx[c]
        # per-axis phase tables of every shift candidate: e^{2πi q u} for q = -kmax..kmax
        tab = np.empty((n_k, 3, nt), np.complex128)
        for k in range(n_k):
            for a in range(3):
                u = shifts[c, a] + deltas[k, a]
                for q in range(nt):
                    ang = 2.0 * math.pi * (q - kmax) * u
                    tab[k, a, q] = complex(math.cos(ang), math.sin(ang))
        de_re = np.empty((n_k, n_p), np.float32)
        de_im = np.empty((n_k, n_p), np.float32)
        wv = np.empty(n_p, np.float32)
        for n in range(n_p):
            ix, iy, iz = int(pts[n, 0]), int(pts[n, 1]), int(pts[n, 2])
            v = data_ft[gi, iz + h, iy + h, ix + h]
            wv[n] = weights[gi, iz + h, iy + h, ix + h]
            vr, vi = v.real, v.imag
            for k in range(n_k):
                e = tab[k, 0, ix + kmax] * tab[k, 1, iy + kmax] * tab[k, 2, iz + kmax]
                de_re[k, n] = vr * e.real - vi * e.imag
                de_im[k, n] = vr * e.imag + vi * e.real
        mt = np.empty((n_j, 9), np.float32)
        for j in range(n_j):
            for a in range(3):
                for e in range(3):
                    # mt[j, 3 e + a] = scale R[a, e]: sampled at q = scale R^T p
                    mt[j, 3 * e + a] = scale * cand[c, j, a, e]
        xs = np.zeros((n_j, n_k))
        ys = np.zeros(n_j)
        a_re = np.empty((n_j, max_blk), np.float32)
        a_im = np.empty((n_j, max_blk), np.float32)
        for bi in range(n_blk):
            r0, r1 = blk_start[bi], blk_start[bi + 1]
            n0 = rows[r0, 0]
            nb = rows[r1 - 1, 0] + rows[r1 - 1, 1] - n0
            # 1. the block's reference samples for every candidate rotation (trilinear)
            for j in range(n_j):
                m0, m1, m2 = mt[j, 0], mt[j, 1], mt[j, 2]
                m3, m4, m5 = mt[j, 3], mt[j, 4], mt[j, 5]
                m6, m7, m8 = mt[j, 6], mt[j, 7], mt[j, 8]
                for rr in range(r0, r1):
                    s0 = rows[rr, 0]
                    cnt = rows[rr, 1]
                    py, pz = np.float32(pts[s0, 1]), np.float32(pts[s0, 2])
                    x_first = np.float32(pts[s0, 0])
                    bx = m1 * py + m2 * pz + hf
                    by = m4 * py + m5 * pz + hf
                    bz = m7 * py + m8 * pz + hf
                    i_out = s0 - n0
                    for i in range(cnt):
                        px = x_first + np.float32(i)
                        x = m0 * px + bx
                        y = m3 * px + by
                        z = m6 * px + bz
                        if clamp:
                            x = min(max(x, zf), limf)
                            y = min(max(y, zf), limf)
                            z = min(max(z, zf), limf)
                        x0, y0, z0 = int(x), int(y), int(z)
                        fx, fy, fz = x - np.float32(x0), y - np.float32(y0), z - np.float32(z0)
                        o = np.uint64(2 * ((z0 * p_ref + y0) * p_ref + x0))
                        o01 = o + sy
                        o10 = o + sz
                        o11 = o10 + sy
                        v00 = flat[o]
                        v01 = flat[o01]
                        v10 = flat[o10]
                        v11 = flat[o11]
                        c00 = v00 + fx * (flat[o + two] - v00)
                        c01 = v01 + fx * (flat[o01 + two] - v01)
                        c10 = v10 + fx * (flat[o10 + two] - v10)
                        c11 = v11 + fx * (flat[o11 + two] - v11)
                        u00 = flat[o + one]
                        u01 = flat[o01 + one]
                        u10 = flat[o10 + one]
                        u11 = flat[o11 + one]
                        d00 = u00 + fx * (flat[o + three] - u00)
                        d01 = u01 + fx * (flat[o01 + three] - u01)
                        d10 = u10 + fx * (flat[o10 + three] - u10)
                        d11 = u11 + fx * (flat[o11 + three] - u11)
                        c0 = c00 + fy * (c01 - c00)
                        c1 = c10 + fy * (c11 - c10)
                        d0 = d00 + fy * (d01 - d00)
                        d1 = d10 + fy * (d11 - d10)
                        a_re[j, i_out + i] = c0 + fz * (c1 - c0)
                        a_im[j, i_out + i] = d0 + fz * (d1 - d0)
            # 2. the block's sums: contiguous dot products
            for j in range(n_j):
                yj = 0.0
                for i in range(nb):
                    ar = np.float64(a_re[j, i])
                    ai = np.float64(a_im[j, i])
                    yj += np.float64(wv[n0 + i]) * (ar * ar + ai * ai)
                ys[j] += yj
                for k in range(n_k):
                    acc = 0.0
                    for i in range(nb):
                        acc += (np.float64(a_re[j, i]) * np.float64(de_re[k, n0 + i])
                                + np.float64(a_im[j, i]) * np.float64(de_im[k, n0 + i]))
                    xs[j, k] += acc
        for j in range(n_j):
            for k in range(n_k):
                out_x[c, j, k] = xs[j, k]
            out_y[c, j] = ys[j]


def _point_rows(pts: np.ndarray) -> np.ndarray:
    """Runs of consecutive points along x in ``pts`` (n, 3) ``(x, y, z)`` (as :func:`_points` orders them):
    (r, 2) int64 ``(first index, count)``; inside a run y and z are equal and x increases by 1."""
    p = np.asarray(pts, np.float64)
    if len(p) == 0:
        return np.zeros((0, 2), np.int64)
    brk = np.ones(len(p), bool)
    brk[1:] = (p[1:, 1] != p[:-1, 1]) | (p[1:, 2] != p[:-1, 2]) | (p[1:, 0] != p[:-1, 0] + 1.0)
    starts = np.flatnonzero(brk)
    counts = np.diff(np.append(starts, len(p)))
    return np.stack([starts, counts], axis=1).astype(np.int64)


def reference_ri(ref_ft: np.ndarray) -> np.ndarray:
    """The (P, P, P, 2) float32 layout of a prepared reference (1, P, P, P) complex that :func:`_local_scores`
    samples (real and imaginary parts side by side)."""
    g = np.asarray(ref_ft)[0]
    return np.ascontiguousarray(np.stack([g.real, g.imag], axis=-1), np.float32)


def tilt_log_prior(z_axes: np.ndarray, prior_axes: np.ndarray, sigma_deg: float) -> np.ndarray:
    """Gaussian log-prior ``−½ (θ / σ)²`` of the angle θ between candidate reference z axes ``z_axes`` (c, n, 3)
    (``R ẑ`` in the tomogram frame) and each particle's prior direction ``prior_axes`` (c, 3) (unit vectors;
    a row of NaN = no prior, 0). Returns (c, n) float64."""
    n = np.asarray(prior_axes, np.float64)
    cosang = np.einsum("cja,ca->cj", np.asarray(z_axes, np.float64), np.nan_to_num(n))
    theta = np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))
    out = -0.5 * (theta / float(sigma_deg)) ** 2
    out[~np.isfinite(n).all(axis=1)] = 0.0
    return out


#: the fewest points inside the coarse radius for a coarse-to-fine local search (:func:`search_poses`): fewer do not
#: rank the candidates (small demo at 8 Å voxels, box 36, 16 Å: 1.3k inner points put the full search's best
#: beyond the coarse best 10 for 16 of 150 particles, and the bin-4 refinement's median angle error rose from 1.75
#: to 2.25°; at 2 Å voxels, box 96, 6 Å: 10k inner points, all 150 within the best 10). Searches with so few
#: points are cheap anyway.
COARSE_MIN_POINTS = 8000


def search_poses(
    data_ft: np.ndarray,
    weights: np.ndarray,
    ref_ft: np.ndarray,
    select: np.ndarray,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    perturbations: np.ndarray,
    r_max: float,
    *,
    shift_step_px: float = 1.0,
    n_shifts: int = 7,
    ref_pad: int = 2,
    chunk: int = 48,
    progress: Callable[[int], None] | None = None,
    prior_axes: np.ndarray | None = None,
    prior_sigma_deg: float = 10.0,
    coarse_radius: float = 0.5,
    coarse_keep: int = 10,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Best rotation and shift of the particles ``select`` against one reference (see the module docstring).

    ``data_ft`` (m, B, B, B) complex64, ``weights`` (m, B, B, B) float32 (centred), ``ref_ft``
    (1, P, P, P) complex64 (:func:`prepare_reference`), ``rotations`` (m, 3, 3) and ``shifts_px`` (m, 3) the
    current poses (all particles; only ``select`` are searched), ``perturbations`` (n, 3, 3) candidate
    ``P_j`` (new ``R = R_i P_j``), ``r_max`` the resolution limit in frequency units (shells), shifts
    ``t_i + δ`` (tomogram frame) for ``δ`` in a small set (0 and ±``shift_step_px`` along each axis for
    ``n_shifts`` = 7; 1: none). The data are never interpolated: when every selected particle's current
    rotation is the identity (a global search) the scores are two matrix products shared by all particles
    (``A_j`` sampled once); otherwise a numba kernel samples the reference at ``(R_i P_j)ᵀ q`` for each
    particle. ``prior_axes`` (m, 3) unit vectors (tomogram frame; NaN rows: no prior) add RELION's prior on
    the tilt: ``−½ (∠(R ẑ, n_i) / prior_sigma_deg)²`` to the log-likelihood of a candidate ``R`` whose
    reference z axis ``R ẑ`` is at an angle from the particle's prior direction ``n_i`` (e.g. a membrane's
    normal from surface picking). A local search with more than ``2 coarse_keep`` candidate rotations goes from
    coarse to fine (the idea of RELION's adaptive oversampling) when at least :data:`COARSE_MIN_POINTS` points lie
    inside the coarse radius: all candidates (with every shift) are scored on
    the points within ``coarse_radius`` of the largest frequency searched (an eighth of the points for 0.5), and
    each particle's ``coarse_keep`` best of them (best over the shifts) are completed with the points outside;
    the best completed candidate wins (``coarse_keep = 0``: every candidate on every point). On the small demo's
    particles at 2 Å voxels (33 candidates at 0.9-1.8°, 6 Å, around the refined poses), the full scores' best was
    among the coarse scores' best 10 for all 150 particles of a half set.
    Returns ``(rotations (k, 3, 3), shifts_px (k, 3), scores (k,))`` for the selected particles, in their order.
    """
    b = data_ft.shape[-1]
    pts = _points(b, min(r_max, b / 2.0 - 1.0), half=True)
    n_p = len(pts)
    pert = np.ascontiguousarray(perturbations, np.float64)
    n_rot = len(pert)
    deltas = _shift_set(shift_step_px, n_shifts)  # tomogram-frame shifts, px
    k = len(deltas)
    sel = np.asarray(select, dtype=np.int64)
    rot_all = np.asarray(rotations, np.float64)
    out_r = np.empty((len(sel), 3, 3))
    out_t = np.empty((len(sel), 3))
    out_s = np.empty(len(sel))
    shared = bool(np.allclose(rot_all[sel], np.eye(3)[None], atol=1e-12)) if len(sel) else True
    if shared:
        # global search: A_j sampled once per chunk of rotations, scores by two matrix products per chunk
        best_s = np.full(len(sel), -np.inf)
        best_j = np.zeros(len(sel), np.int64)
        best_k = np.zeros(len(sel), np.int64)
        e = np.exp(2j * np.pi * (pts @ deltas.T) / b).T.astype(np.complex64)  # (k, n_p)
        ii = pts.astype(np.int64) + b // 2
        rot_chunk = max(64, int(2e7 // max(n_p, 1)))
        n_done = 0
        ref_ri = reference_ri(ref_ft)
        rows = _point_rows(pts)
        # the particles' data at the points, phase-shifted by every candidate shift: once, not per rotation chunk
        d_all, w_all = [], []
        for s0 in range(0, len(sel), chunk):
            idx = sel[s0:s0 + chunk]
            c = len(idx)
            sc = np.asarray(shifts_px[idx], np.float64)
            ph = np.exp(2j * np.pi * (sc @ pts.T) / b)  # (c, n_p): current shifts
            dp = (data_ft[idx[:, None], ii[None, :, 2], ii[None, :, 1], ii[None, :, 0]] * ph).astype(np.complex64)
            w_all.append(weights[idx[:, None], ii[None, :, 2], ii[None, :, 1], ii[None, :, 0]])
            de = (dp[:, None, :] * e[None]).reshape(c * k, n_p)
            d_all.append(np.concatenate([de.real, de.imag], axis=1))  # (c k, 2 n_p)
        buf = np.empty(min(rot_chunk, n_rot) * 2 * n_p, np.float32)  # reused by every chunk
        for j0 in range(0, n_rot, rot_chunk):
            pj = pert[j0:j0 + rot_chunk]
            nj = len(pj)
            a3 = sample_reference(ref_ft, float(ref_pad), pj.transpose(0, 2, 1), pts, ref_ri, rows, buf)
            a2 = a3[:, 0] ** 2 + a3[:, 1] ** 2  # (nj, n_p) float32
            a_ri = a3.reshape(nj, 2 * n_p)  # (nj, 2 n_p): real parts, then imaginary parts
            del a3
            for ci, s0 in enumerate(range(0, len(sel), chunk)):
                idx = sel[s0:s0 + chunk]
                c = len(idx)
                d_ri = d_all[ci]
                wp = w_all[ci]
                x = (a_ri @ d_ri.T).reshape(nj, c, k).transpose(1, 0, 2)  # (c, nj, k)
                y = (a2 @ wp.T).T[:, :, None]  # (c, nj, 1)
                sc3 = x * np.abs(x) / (2.0 * np.maximum(y, 1e-30))  # (c, nj, k)
                if prior_axes is not None:
                    sc3 = sc3 + tilt_log_prior(np.broadcast_to(pj[None, :, :, 2], (c, nj, 3)),
                                               np.asarray(prior_axes, np.float64)[idx], prior_sigma_deg)[:, :, None]
                flat = sc3.reshape(c, nj * k)
                bi = np.argmax(flat, axis=1)
                bs = flat[np.arange(c), bi]
                better = bs > best_s[s0:s0 + c]
                best_s[s0:s0 + c][better] = bs[better]
                best_j[s0:s0 + c][better] = j0 + bi[better] // k
                best_k[s0:s0 + c][better] = bi[better] % k
                n_done += c
                if progress is not None:
                    progress(int(n_done * nj / max(n_rot, 1)))
        out_r[:] = rot_all[sel] @ pert[best_j]
        out_t[:] = np.asarray(shifts_px, np.float64)[sel] + deltas[best_k]
        out_s[:] = best_s
        return out_r, out_t, out_s
    ref_ri = reference_ri(ref_ft)
    # coarse to fine: every candidate scored on the points inside coarse_radius × r_max, then only the best
    # coarse_keep of each particle on the points outside (their sums added): a fraction of the samples
    r_pts = np.sqrt(np.sum(pts * pts, axis=1))
    inner = r_pts <= coarse_radius * float(r_pts.max(initial=0.0))
    two_stage = (coarse_keep > 0 and n_rot > 2 * coarse_keep and 0.0 < coarse_radius < 1.0
                 and int(inner.sum()) >= COARSE_MIN_POINTS)
    if two_stage:
        parts = [(pts[inner], _point_rows(pts[inner])), (pts[~inner], _point_rows(pts[~inner]))]
    else:
        parts = [(pts, _point_rows(pts))]
    scale = float(ref_pad)
    for s0 in range(0, len(sel), chunk):
        idx = sel[s0:s0 + chunk]
        c = len(idx)
        rc = np.ascontiguousarray(rot_all[idx])
        sc = np.ascontiguousarray(shifts_px[idx], np.float64)
        cand = np.ascontiguousarray(rc[:, None] @ pert[None])  # (c, n_rot, 3, 3): R_i P_j
        prior = None
        if prior_axes is not None:  # (c, n_rot, 1): of R_i P_j ẑ
            prior = tilt_log_prior(cand[:, :, :, 2], np.asarray(prior_axes, np.float64)[idx],
                                   prior_sigma_deg)[:, :, None]
        x = np.empty((c, n_rot, k))
        y = np.empty((c, n_rot))
        p0, rows0 = parts[0]
        _local_scores(ref_ri, scale, data_ft, weights, idx, cand, sc / b, p0, rows0, deltas / b, x, y)
        if two_stage:
            # the coarse scores' best candidates (any shift) of each particle, completed with the outer points
            coarse = _pose_scores(x, y, prior).max(axis=2)
            keep = np.argpartition(-coarse, coarse_keep - 1, axis=1)[:, :coarse_keep]  # (c, keep)
            rows_c = np.arange(c)[:, None]
            cand = np.ascontiguousarray(cand[rows_c, keep])
            x2 = np.empty((c, coarse_keep, k))
            y2 = np.empty((c, coarse_keep))
            p1, rows1 = parts[1]
            _local_scores(ref_ri, scale, data_ft, weights, idx, cand, sc / b, p1, rows1, deltas / b, x2, y2)
            x, y = x[rows_c, keep] + x2, y[rows_c, keep] + y2
            prior = None if prior is None else prior[rows_c, keep]
        score = _pose_scores(x, y, prior)
        n_c = score.shape[1]
        flat = score.reshape(c, n_c * k)
        best = np.argmax(flat, axis=1)
        j, kk = best // k, best % k
        out_r[s0:s0 + c] = cand[np.arange(c), j]
        out_t[s0:s0 + c] = sc + deltas[kk]
        out_s[s0:s0 + c] = flat[np.arange(c), best]
        if progress is not None:
            progress(s0 + c)
    return out_r, out_t, out_s


def _pose_scores(x: np.ndarray, y: np.ndarray, prior: np.ndarray | None) -> np.ndarray:
    """The search's score of candidates (c, n, k) from their sums ``x`` (c, n, k) and ``y`` (c, n): ``x |x| /
    (2 y)`` (the log-likelihood of the best-fitting scale, sign kept), plus the log-prior (c, n, 1) if any."""
    score = x * np.abs(x) / (2.0 * np.maximum(y[:, :, None], 1e-30))
    return score if prior is None else score + prior


def refine_shifts(
    data_ft: np.ndarray,
    ref_ft: np.ndarray,
    select: np.ndarray,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    centres_px: np.ndarray,
    r_max: float,
    max_offset_px: float,
    *,
    ref_pad: int = 2,
    chunk: int = 32,
    far_px: float | None = None,
) -> np.ndarray:
    """Translations (k, 3) px of the particles ``select`` at their rotations: the maximum of the FFT
    cross-correlation ``Σ_q conj(A(q)) D_i(q) e^{2πi q·t/B}`` (``A(q) = F_ref(R_iᵀ q)``, ``|q| ≤ r_max``)
    over integer ``t`` with ``|t - centres_px[i]| ≤ max_offset_px``, refined to sub-pixel by a parabola on
    each axis (at most ±0.5 px). ``shifts_px`` are returned unchanged where no candidate lies in range.
    ``far_px``: the largest ``|centre|`` component that sizes the cube of translations examined (default: the
    selection's); batches of one selection pass the selection's, so that their results equal one call's."""
    b = data_ft.shape[-1]
    h = b // 2
    # one of each Friedel pair (x ≥ 0; the x = 0 plane keeps both halves): the product conj(A) D of two Hermitian
    # transforms is Hermitian, so the cross-correlation is real: Re[Σ_{x=0} + 2 Σ_{x>0}] / B³
    pts = _points(b, min(r_max, b / 2.0 - 1.0), half=False)
    pts = pts[pts[:, 0] >= 0]
    ii = pts.astype(np.int64) + h
    sel = np.asarray(select, dtype=np.int64)
    out = np.asarray(shifts_px, np.float64)[sel].copy()
    # only the translations within reach are examined: a cube of ±(max offset + centre + 2) voxels
    far = float(np.abs(np.asarray(centres_px, np.float64)[sel]).max(initial=0.0)) if far_px is None else far_px
    reach = int(min(h - 1, math.ceil(max_offset_px + far) + 2))
    lo, hi = h - reach, h + reach + 1
    k1 = np.arange(lo, hi) - h
    tz, ty, tx = np.meshgrid(k1, k1, k1, indexing="ij")
    # the inverse transform at those translations only: three small DFT matrices over the frequencies' cube
    r = int(np.abs(pts).max(initial=0.0))
    kq = np.arange(-r, r + 1)
    e_zy = np.exp(2j * np.pi * np.outer(k1, kq) / b).astype(np.complex64)  # (n_t, 2r + 1)
    e_x = np.exp(2j * np.pi * np.outer(k1, np.arange(r + 1)) / b).astype(np.complex64)  # (n_t, r + 1)
    qi = pts.astype(np.int64) + np.array([0, r, r])  # cube index (x, y + r, z + r)
    twice = np.where(pts[:, 0] > 0, 2.0, 1.0).astype(np.float32)
    ref_ri = reference_ri(ref_ft)
    rows = _point_rows(pts)
    for s0 in range(0, len(sel), chunk):
        idx = sel[s0:s0 + chunk]
        c = len(idx)
        rt = np.ascontiguousarray(rotations[idx].transpose(0, 2, 1), np.float64)
        a3 = sample_reference(ref_ft, float(ref_pad), rt, pts, ref_ri, rows)
        cube = np.zeros((c, 2 * r + 1, 2 * r + 1, r + 1), np.complex64)
        cube[:, qi[:, 2], qi[:, 1], qi[:, 0]] = ((a3[:, 0] - 1j * a3[:, 1]) * twice
                                                 * data_ft[idx[:, None], ii[None, :, 2], ii[None, :, 1], ii[None, :, 0]])
        n_t, n_q = len(k1), 2 * r + 1
        part = cube.reshape(-1, r + 1) @ e_x.T  # x: (c z y, t_x)
        part = np.matmul(e_zy, part.reshape(c * n_q, n_q, n_t))  # y: (c z, t_y, t_x)
        part = np.matmul(e_zy, part.reshape(c, n_q, n_t * n_t))  # z: (c, t_z, t_y t_x)
        cc = part.real.reshape(c, n_t, n_t, n_t) / float(b) ** 3  # cc[:, z, y, x] at t = index + lo - h
        n_c = hi - lo
        for j in range(c):
            cx, cy, cz = centres_px[idx[j]]
            ok = (tx - cx) ** 2 + (ty - cy) ** 2 + (tz - cz) ** 2 <= max_offset_px**2 + 1e-9
            if not ok.any():
                continue
            v = np.where(ok, cc[j], -np.inf)
            iz, iy, ix = np.unravel_index(int(np.argmax(v)), v.shape)
            t = np.array([ix + lo - h, iy + lo - h, iz + lo - h], np.float64)
            for ax, (di, pos) in enumerate(((2, ix), (1, iy), (0, iz))):
                if 0 < pos < n_c - 1:
                    sl = [iz, iy, ix]
                    sl[di] = pos - 1
                    v_lo = cc[j][tuple(sl)]
                    sl[di] = pos + 1
                    v_hi = cc[j][tuple(sl)]
                    mid = cc[j][iz, iy, ix]
                    den = v_lo - 2 * mid + v_hi
                    if den < 0:
                        t[ax] += float(np.clip(0.5 * (v_lo - v_hi) / den, -0.5, 0.5))
            out[s0 + j] = t
    return out


def refine_shifts_reference(
    data_ft: np.ndarray,
    ref_ft: np.ndarray,
    select: np.ndarray,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    centres_px: np.ndarray,
    r_max: float,
    max_offset_px: float,
    *,
    ref_pad: int = 2,
    chunk: int = 32,
) -> np.ndarray:
    """Translations (k, 3) px of the particles ``select`` at their rotations: the maximum of the FFT
    cross-correlation ``Σ_q conj(A(q)) D_i(q) e^{2πi q·t/B}`` (``A(q) = F_ref(R_iᵀ q)``, ``|q| ≤ r_max``)
    over integer ``t`` with ``|t - centres_px[i]| ≤ max_offset_px``, refined to sub-pixel by a parabola on
    each axis (at most ±0.5 px). ``shifts_px`` are returned unchanged where no candidate lies in range.

    The first version of :func:`refine_shifts` (complex inverse transforms of whole centred volumes), kept as its
    test oracle and for ``bench/kernels_speed.py``."""
    b = data_ft.shape[-1]
    h = b // 2
    pts = _points(b, min(r_max, b / 2.0 - 1.0), half=False)
    ii = pts.astype(np.int64) + h
    sel = np.asarray(select, dtype=np.int64)
    out = np.asarray(shifts_px, np.float64)[sel].copy()
    # only the translations within reach are examined: a cube of ±(max offset + centre + 2) voxels
    far = float(np.abs(np.asarray(centres_px, np.float64)[sel]).max(initial=0.0))
    reach = int(min(h - 1, math.ceil(max_offset_px + far) + 2))
    lo, hi = h - reach, h + reach + 1
    k1 = np.arange(lo, hi) - h
    tz, ty, tx = np.meshgrid(k1, k1, k1, indexing="ij")
    for s0 in range(0, len(sel), chunk):
        idx = sel[s0:s0 + chunk]
        c = len(idx)
        rt = np.ascontiguousarray(rotations[idx].transpose(0, 2, 1), np.float64)
        a = np.empty((c, len(pts)), np.complex64)
        _gather_c(ref_ft, np.zeros(c, np.int64), float(ref_pad), rt, np.zeros((c, 3)), pts, a)
        prod = np.zeros((c, b, b, b), np.complex64)
        prod[:, ii[:, 2], ii[:, 1], ii[:, 0]] = np.conj(a) * data_ft[idx][:, ii[:, 2], ii[:, 1], ii[:, 0]]
        cc = scipy.fft.fftshift(
            scipy.fft.ifftn(scipy.fft.ifftshift(prod, axes=(1, 2, 3)), axes=(1, 2, 3), workers=fft_workers()).real,
            axes=(1, 2, 3))[:, lo:hi, lo:hi, lo:hi]  # cc[:, z, y, x] at t = index + lo - h
        n_c = hi - lo
        for j in range(c):
            cx, cy, cz = centres_px[idx[j]]
            ok = (tx - cx) ** 2 + (ty - cy) ** 2 + (tz - cz) ** 2 <= max_offset_px**2 + 1e-9
            if not ok.any():
                continue
            v = np.where(ok, cc[j], -np.inf)
            iz, iy, ix = np.unravel_index(int(np.argmax(v)), v.shape)
            t = np.array([ix + lo - h, iy + lo - h, iz + lo - h], np.float64)
            for ax, (di, pos) in enumerate(((2, ix), (1, iy), (0, iz))):
                if 0 < pos < n_c - 1:
                    sl = [iz, iy, ix]
                    sl[di] = pos - 1
                    v_lo = cc[j][tuple(sl)]
                    sl[di] = pos + 1
                    v_hi = cc[j][tuple(sl)]
                    mid = cc[j][iz, iy, ix]
                    den = v_lo - 2 * mid + v_hi
                    if den < 0:
                        t[ax] += float(np.clip(0.5 * (v_lo - v_hi) / den, -0.5, 0.5))
            out[s0 + j] = t
    return out


# --------------------------------------------------------------------------------------------------------
# Auto-refine
# --------------------------------------------------------------------------------------------------------


#: particles per batch of the expectation step run as units (a multiple of the chunks of :func:`search_poses` (48)
#: and :func:`refine_shifts` (32), so that a batch's results equal those of one call over the whole half set)
EXPECTATION_BATCH = 96


def expectation(
    data_ft: np.ndarray,
    weights: np.ndarray,
    ref_ft: np.ndarray,
    select: np.ndarray,
    rotations: np.ndarray,
    shifts_px: np.ndarray,
    centres_px: np.ndarray,
    perturbations: np.ndarray,
    r_max: float,
    *,
    shift_step_px: float,
    n_shifts: int,
    fft_shifts: bool,
    offset_range_px: float,
    far_px: float | None = None,
    prior_axes: np.ndarray | None = None,
    prior_sigma_deg: float = 10.0,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The expectation step of :func:`auto_refine` for the particles ``select`` against one reference: the best
    rotations and ±``shift_step_px`` shifts (:func:`search_poses`, arguments as there; ``rotations`` are the
    identity for a global search), then with ``fft_shifts`` the offsets over the whole ``offset_range_px`` around
    ``centres_px`` (:func:`refine_shifts`, ``far_px`` as there), else the shifts that left that range put back.
    Returns ``(rotations (k, 3, 3), shifts_px (k, 3), scores (k,))`` of the selected particles, in their order;
    each particle's result depends only on its own data and the arguments (batches of a selection whose sizes are
    multiples of :data:`EXPECTATION_BATCH` give one call's results)."""
    sel = np.asarray(select, dtype=np.int64)
    r_h, t_h, s_h = search_poses(data_ft, weights, ref_ft, sel, rotations, shifts_px, perturbations, r_max,
                                 shift_step_px=shift_step_px, n_shifts=n_shifts, progress=progress,
                                 prior_axes=prior_axes, prior_sigma_deg=prior_sigma_deg)
    if fft_shifts:
        t_h = refine_shifts(data_ft, ref_ft, sel, _scatter(rotations, sel, r_h), _scatter(shifts_px, sel, t_h),
                            centres_px, r_max, offset_range_px, far_px=far_px)
    else:
        out_of_range = np.linalg.norm(t_h - centres_px[sel], axis=1) > offset_range_px
        t_h[out_of_range] = np.asarray(shifts_px)[sel][out_of_range]
    return r_h, t_h, s_h


def _angle_change(a: np.ndarray, b: np.ndarray, symmetry: str) -> float:
    if len(a) == 0:
        return 0.0
    return float(np.mean(symmetry_angle_error_deg(a, b, symmetry)))


def _references(halves: list[np.ndarray], fsc_curve: np.ndarray, resolution_A: float, voxel_A: float,
                mask: np.ndarray) -> list[np.ndarray]:
    filt = F.fsc_to_wiener_filter(fsc_curve, half_maps=True)
    filt[0] = 1.0
    return [prepare_reference(F.lowpass(F.apply_shell_filter(hm, filt), resolution_A, voxel_A), mask)
            for hm in halves]


def auto_refine(
    data: np.ndarray,
    weights: np.ndarray,
    voxel_A: float,
    reference: np.ndarray,
    *,
    symmetry: str = "O",
    mask_diameter_A: float = 150.0,
    initial_lowpass_A: float = 60.0,
    initial_angular_step_deg: float = 7.5,
    local_searches_from_deg: float = 1.8,
    final_angular_step_deg: float | None = None,
    offset_range_px: float = 5.0,
    offset_step_px: float = 1.0,
    initial_poses: Poses | None = None,
    half_sets: np.ndarray | None = None,
    max_iterations: int = 10,
    wiener_constant: float | None = None,
    regularisation: float = 0.01,
    seed: int = 0,
    progress: Progress | None = None,
    prior_axes: np.ndarray | None = None,
    prior_sigma_deg: float = 10.0,
    subtilts: Any = None,
    search: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None,
) -> RefineResult:
    """Gold-standard 3D auto-refine of pseudo-subtomograms against ``reference`` (module docstring).

    ``data`` (m, B, B, B) float32 real space, ``weights`` (m, B, B, B) float32 centred CTF² weights, voxel
    ``voxel_A`` Å; ``reference`` (B, B, B) any scale, centre ``B // 2``, same voxel size, in the frame of the
    poses to find (low-passed to ``initial_lowpass_A``; masked by a soft sphere of ``mask_diameter_A``).

    Angular sampling. Without ``initial_poses``: global searches on the ``symmetry``-reduced SO(3) grid
    (:func:`asymmetric_unit_grid`) at ``initial_angular_step_deg`` — a second time after the first
    (initial low-pass) iteration, and while the resolution improves (twice per step at most) — then at half
    the step, until the step reaches ``local_searches_from_deg`` (×1.05); from there (or from the given
    poses, starting at ``min(initial_angular_step_deg, local_searches_from_deg)``) local searches
    (:func:`local_rotations`, ±2 steps around each pose) whose step halves while above
    ``local_searches_from_deg`` and then whenever the resolution stops improving, down to
    ``final_angular_step_deg`` (default ``local_searches_from_deg / 2``). The run stops when, at that step,
    the resolution no longer improves (by 1 %) and the angles change by less than 1.5 steps (or twice
    without improvement), or after ``max_iterations``.
    Offsets: translations within ``offset_range_px`` (voxels) of the initial shifts: the FFT search over the
    whole range in the first iteration and in every global one, and the ±``offset_step_px`` candidates of the
    rotation search (0 and ± one step per axis; the step halves with the angular step, down to 0.125 px).
    Search resolution: the current FSC 0.143 resolution + 2 shells (first iteration ``initial_lowpass_A``).
    Prior on the tilt: with ``prior_axes`` (m, 3) (each particle's expected direction of the reference z axis,
    e.g. a membrane normal; NaN rows: none) every search adds :func:`tilt_log_prior` of width
    ``prior_sigma_deg`` (RELION's "prior width on tilt").
    Half sets: ``half_sets`` (m,) 1/2, or a random split with ``seed``; each half is aligned to its own
    reference (the same one in the first iteration). Reconstructions use the Wiener term
    ``wiener_constant`` (weight units) or ``regularisation × mean(weight)``; with ``subtilts`` (the particles'
    :class:`sta.Subtilts`, a list of them in the particles' order, or a :class:`sta.Reconstructor`) they are made
    from the 2D sub-tilts on a 2× oversampled grid with the gridding correction (the final half maps also
    corrected for the gridding bias, :meth:`sta.Reconstructor.corrected`), else from the 3D data.
    ``progress(fraction, message)`` is called often (it may raise to cancel). ``search``: runs the expectation
    step of both half sets elsewhere (on the executor's workers, :mod:`tomoguide.cluster`): called as
    ``search(jobs, rotations, shifts_px, centres_px, perturbations, r_max, progress=…, **options)`` with ``jobs``
    ``[(h, ref_ft, select, far_px)]`` for h = 1, 2 and the other arguments of :func:`expectation` (``rotations``
    of all particles, the identity in a global search; ``progress(n)``: particles done), returning
    :func:`expectation`'s result for each job; None: :func:`expectation` here on each whole half set.
    Returns :class:`RefineResult`.
    """
    t_start = time.perf_counter()
    d = np.asarray(data, np.float32)
    m, b = d.shape[0], d.shape[-1]
    w = np.ascontiguousarray(weights, dtype=np.float32)
    if w.shape != d.shape:
        raise ValueError(f"weights {w.shape} must have the data's shape {d.shape}")
    if np.asarray(reference).shape != (b, b, b):
        raise ValueError(f"reference must be {(b, b, b)}, got {np.asarray(reference).shape}")
    hs = _split(m, seed) if half_sets is None else np.asarray(half_sets, dtype=np.int64)
    final_step = local_searches_from_deg / 2.0 if final_angular_step_deg is None else final_angular_step_deg
    max_iterations = max(1, int(max_iterations))

    def report(frac: float, msg: str) -> None:
        if progress is not None:
            progress(float(min(max(frac, 0.0), 1.0)), msg)

    report(0.0, "Fourier transforms of the particles")
    dft = centred_fft_stack(d)
    av = _Averager(dft, w, subtilts, m, b, symmetry)
    mask = _mask(b, voxel_A, mask_diameter_A)
    ref0 = F.lowpass(np.asarray(reference, np.float32), initial_lowpass_A, voxel_A)
    refs = [prepare_reference(ref0, mask)] * 2
    if initial_poses is None:
        poses = Poses.identity(m)
        phase_global = True
        step = float(initial_angular_step_deg)
    else:
        poses = initial_poses.copy()
        phase_global = False
        step = float(min(initial_angular_step_deg, local_searches_from_deg))
    rot = np.asarray(poses.rotations, np.float64).copy()
    t_px = np.asarray(poses.shifts_A, np.float64) / voxel_A
    centres = t_px.copy()
    scores = np.asarray(poses.scores, np.float64).copy()
    res_search = float(initial_lowpass_A)
    best_res = np.inf
    history: list[dict[str, Any]] = []
    shift_step = float(offset_step_px)
    n_stalled = 0
    n_at_step = 0
    ident = np.repeat(np.eye(3)[None], m, axis=0)
    stats: dict[str, Any] = {}
    halves: list[np.ndarray] = []
    grids: list[tuple[np.ndarray, np.ndarray]] = []
    for it in range(max_iterations):
        t0 = time.perf_counter()
        is_global = phase_global
        if is_global:
            pert = asymmetric_unit_grid(step, symmetry)
        else:
            pert = local_rotations(step, 2.0)
        r_max = b * voxel_A / res_search + (0.0 if it == 0 else 2.0)
        new_rot, new_t, new_s = rot.copy(), t_px.copy(), scores.copy()
        msg = f"iteration {it + 1}: {'global' if is_global else 'local'} search at {step:.2f}°, {res_search:.1f} Å"

        def prog(n: int, it: int = it, msg: str = msg) -> None:
            report((it + 0.8 * n / max(m, 1)) / max_iterations, msg)

        ta = time.perf_counter()
        # each half set against its own reference; a global search ignores the current orientations (exact shared
        # sampling of the grid); the whole offset range once (FFT) in the first and every global iteration, later
        # the ±step candidates
        jobs = [(h, refs[h - 1], sel, float(np.abs(centres[sel]).max(initial=0.0)))
                for h, sel in ((h, np.flatnonzero(hs == h)) for h in (1, 2))]
        options = dict(shift_step_px=shift_step, n_shifts=1 if is_global and it > 0 else 7,
                       fft_shifts=it == 0 or is_global, offset_range_px=offset_range_px, prior_axes=prior_axes,
                       prior_sigma_deg=prior_sigma_deg)
        rot_in = ident if is_global else rot
        if search is None:
            found = []
            for _, ref_h, sel, far in jobs:
                base = sum(len(j[2]) for j in jobs[:len(found)])
                found.append(expectation(dft, w, ref_h, sel, rot_in, t_px, centres, pert, r_max, far_px=far,
                                         progress=lambda n, base=base: prog(base + n), **options))
        else:
            found = search(jobs, rot_in, t_px, centres, pert, r_max, progress=prog, **options)
        for (_, _, sel, _), (r_h, t_h, s_h) in zip(jobs, found, strict=True):
            new_rot[sel], new_t[sel], new_s[sel] = r_h, t_h, s_h
        t_search = time.perf_counter() - ta
        d_ang = _angle_change(new_rot, rot, symmetry) if not is_global else float("nan")
        d_shift = float(np.mean(np.linalg.norm(new_t - t_px, axis=1))) * voxel_A
        rot, t_px, scores = new_rot, new_t, new_s
        report((it + 0.85) / max_iterations, f"iteration {it + 1}: reconstructing the half maps")
        tc = time.perf_counter()
        grids = [av.grids(rot, t_px, hs == h) for h in (1, 2)]
        halves, stats, grids = _half_maps(grids, b, mask, voxel_A, wiener_constant, regularisation)
        res = float(stats["resolution_A"])
        t_rec = time.perf_counter() - tc
        history.append({"iteration": it + 1, "search": "global" if is_global else "local",
                        "resolution_A": res, "search_resolution_A": res_search, "angular_step_deg": step,
                        "offset_range_px": float(offset_range_px), "offset_step_px": shift_step,
                        "n_rotations": int(len(pert)), "mean_angle_change_deg": d_ang,
                        "mean_shift_change_A": d_shift, "time_s": time.perf_counter() - t0,
                        "search_s": t_search, "reconstruct_fsc_s": t_rec})
        report((it + 1) / max_iterations, f"iteration {it + 1}: {res:.1f} Å")
        improved = res < best_res * 0.99
        best_res = min(best_res, res)
        refs = _references(halves, stats["fsc_true"], res, voxel_A, mask)
        res_search = res
        n_at_step += 1
        if is_global:
            # global searches at this step again after the first (initial low-pass) iteration and while the
            # resolution improves (twice at most), then at half the step; local below local_searches_from_deg
            if it == 0 or (improved and n_at_step < 2):
                continue
            step /= 2.0
            shift_step = max(0.125, shift_step / 2.0)
            n_at_step = 0
            if step <= local_searches_from_deg * 1.05:
                phase_global = False
            continue
        if step > local_searches_from_deg * 1.05:
            step /= 2.0
            shift_step = max(0.125, shift_step / 2.0)
        elif not improved:
            if step <= final_step * 1.01:
                n_stalled += 1
                # converged: the resolution no longer improves and the angles move by less than the
                # sampling (or twice without improvement at the finest step: the moves are noise)
                if d_ang < 1.5 * step or n_stalled >= 2:
                    break
            else:
                step /= 2.0
                shift_step = max(0.125, shift_step / 2.0)
    corrector = av.corrector(rot, hs)
    if corrector is not None:
        # the final half maps corrected for the gridding bias (one step of iterative reconstruction)
        report(0.99, "correcting the final half maps")
        halves, stats, grids = _half_maps(grids, b, mask, voxel_A, wiener_constant, regularisation, corrector)
    merged = _merged_map(halves[0], halves[1], grids, b, stats["fsc_true"], float(stats["resolution_A"]), voxel_A,
                         wiener_constant, regularisation)
    report(1.0, f"done: {stats['resolution_A']:.1f} Å in {time.perf_counter() - t_start:.0f} s")
    final = Poses(rot, t_px * voxel_A, scores)
    return RefineResult(poses=final, half_sets=hs, half1=halves[0], half2=halves[1], merged=merged, mask=mask,
                        freqs_per_A=stats["freqs_A"], fsc_unmasked=stats["fsc_unmasked"],
                        fsc_masked=stats["fsc_masked"], fsc_corrected=stats["fsc_true"],
                        resolution_A=float(stats["resolution_A"]), history=history, voxel_A=float(voxel_A))


def _scatter(full: np.ndarray, sel: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = np.array(full, copy=True)
    out[sel] = values
    return out


# --------------------------------------------------------------------------------------------------------
# Map registration (for comparisons with a truth or between runs)
# --------------------------------------------------------------------------------------------------------


def register_rotation(
    moving: np.ndarray, fixed: np.ndarray, *, voxel_A: float, resolution_A: float, symmetry: str = "C1",
    step_deg: float = 10.0, mask_diameter_A: float | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    """Pose of ``moving`` in ``fixed``: ``fixed(x) ≈ moving(Rᵀ (x - t))`` (both (B, B, B), centre ``B // 2``),
    found by the refine scoring with ``fixed`` as a particle of weight 1: a global search on the
    ``symmetry``-reduced grid at ``step_deg`` then local searches down to 0.5°, translations by FFT
    (±B/4). Returns ``(R (3, 3), t_px (3,) (x, y, z), score)``."""
    b = fixed.shape[0]
    mask = None if mask_diameter_A is None else _mask(b, voxel_A, mask_diameter_A)
    ref = prepare_reference(F.lowpass(np.asarray(moving, np.float32), resolution_A, voxel_A), mask)
    fx = np.asarray(fixed, np.float32) * (1.0 if mask is None else mask)
    dft = centred_fft_stack(fx[None])
    w = np.ones((1, b, b, b), np.float32)
    r_max = b * voxel_A / resolution_A
    rot, t = np.eye(3)[None], np.zeros((1, 3))
    sel = np.array([0])
    t = refine_shifts(dft, ref, sel, rot, t, np.zeros((1, 3)), r_max, b / 4.0)
    r, t, s = search_poses(dft, w, ref, sel, rot, t, asymmetric_unit_grid(step_deg, symmetry), r_max, n_shifts=1)
    st = step_deg / 2.0
    while st >= 0.5:
        for _ in range(2):
            t = refine_shifts(dft, ref, sel, r, t, np.zeros((1, 3)), r_max, b / 4.0)
            r, t, s = search_poses(dft, w, ref, sel, r, t, local_rotations(st, 2.0), r_max, n_shifts=1)
        st /= 2.0
    t = refine_shifts(dft, ref, sel, r, t, np.zeros((1, 3)), r_max, b / 4.0)
    return r[0], t[0], float(s[0])


def resample_map(vol: np.ndarray, voxel_in_A: float, voxel_out_A: float, box: int) -> np.ndarray:
    """A cubic map (centre ``n // 2``) resampled to voxels of ``voxel_out_A`` in a ``box³`` cube (centre
    ``box // 2``) by cubic-spline interpolation (any ratio; low-pass a map first when shrinking it much).
    Returns float32."""
    import scipy.ndimage

    v = np.asarray(vol, np.float64)
    n = v.shape[0]
    c = (np.arange(box) - box // 2) * (voxel_out_A / voxel_in_A) + n // 2
    z, y, x = np.meshgrid(c, c, c, indexing="ij")
    return scipy.ndimage.map_coordinates(v, np.stack([z, y, x]), order=3, mode="constant").astype(np.float32)
