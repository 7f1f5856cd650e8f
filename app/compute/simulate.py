"""Synthetic tilt-series acquisition with ground truth (pure compute: arrays in, arrays out, no files).

What is simulated, per view (tilt) of a series
----------------------------------------------
1. **Geometry** from :class:`tomoguide.geometry.TiltSeriesGeometry` (the project's one convention):
   specimen points (tomogram frame, px, centre origin, tilt axis along y) reach raw-image pixel
   coordinates through ``projection_matrices()``; its third row (``depth``, px along the beam after
   tilting) sets each point's defocus: ``defocus = view defocus + defocus_handedness · depth · pixel``.
   The true transforms ``xf`` (raw → aligned, IMOD) are rotations by ``-(tilt_axis + error)`` with a
   specimen shift; they must be pure rotations (no magnification) so the projection is rigid.
2. **Specimen potential**: every particle's projection is a central slice of the 3D Fourier transform of
   its reference map (:class:`FourierProjector`: 2× oversampled transform, trilinear interpolation with
   gridding correction), rotated by (view rotation) @ (particle rotation), shifted to its sub-pixel
   position and added to the height **layer** (depth slab of ``layer_thickness_A``) it belongs to
   (linear weights between the two nearest layers). Independent of any reconstruction code.
3. **Amorphous ice** (and an optional carbon film): a Gaussian random projected potential with the power
   spectrum ``t_beam · n · |V̂_molecule(k)|² · S(k)`` (``t_beam`` = thickness along the beam =
   thickness / |cos|, number density n, Peng form factors, a model structure factor S(k) of amorphous
   water that is small at low k and peaks at 1/3.7 Å⁻¹); split into ``ice_sublayers`` independent
   sub-slabs at their own depths across the tilted slab. Mean potentials are dropped (a constant phase
   has no contrast).
4. **Image formation** (weak phase object): ``I = 1 + 2·FT⁻¹[σ · Σ_layers V̂_layer · CTF_layer · E]``
   with σ the interaction constant (0.000653 rad/(V·Å) at 300 kV), the CTF of :mod:`tomoguide.compute.ctf`
   at each layer's defocus (astigmatism shared), an envelope ``E = exp(-B k²/4)`` (``bfactor_A2``) and,
   for the specimen only, the Grant-Grigorieff exposure filter of each frame's exposure interval
   (:func:`tomoguide.compute.dose.dose_filter`). Ice is not dose-filtered. The k = 0 term is dropped, so
   the mean intensity is 1 and counts average to the stated exposure (no inelastic loss is modelled).
5. **Movie frames**: frame ``j`` of a view received the dose interval
   ``[prior + j·dose/F, prior + (j+1)·dose/F]`` and is displaced by the beam-induced drift ``δ_j``
   (smooth, fast in early frames, ``δ_0 = 0``): the content of frame ``j`` sits at ``p + δ_j`` where the
   drift-free image has it at ``p``. **Frame shifts** reported are the *aligning* shifts ``-δ_j`` (px,
   (x, y)): translating frame ``j`` by them aligns it onto frame 0 (RELION's convention of a zero first
   frame). The truth ``xf`` describes the aligned (frame-0) image.
6. **Detector**: counts ``= Poisson(dose_per_frame · pixel² · I / gain)`` (so ``raw × gain`` is the
   corrected image), plus hot pixels (a fixed set with an extra rate in every frame) and X-ray hits
   (1-4 connected pixels in a single frame with tens of counts). Counts are clipped to ``max_count``.

Tilt schemes (:func:`tilt_scheme_angles`): dose-symmetric (:func:`dose_symmetric_angles`, the EMPIAR-10164 /
TS_01 variant 0, +3, −3, −6, +6, +9, −9, −12, ... by default; grouped), bidirectional from a start angle, and
unidirectional. Planted problems (:func:`plan_series`): dark views (a fraction of the dose) and tracking jumps
(an extra specimen shift of one view, part of the true xf).

Everything is deterministic for a ``numpy.random.Generator``. Arrays are numpy float32 (images) and
float64 (geometry).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numba
import numpy as np
import scipy.fft
import scipy.ndimage

from tomoguide.compute import backend
from tomoguide.compute import ctf as ctfmod
from tomoguide.compute import dose as dosemod
from tomoguide.compute import formfactors, poisson
from tomoguide.geometry import TiltSeriesGeometry, rotation_2d

__all__ = [
    "dose_symmetric_angles",
    "tilt_scheme_angles",
    "TILT_SCHEMES",
    "match_tilts",
    "drift_trajectory",
    "FourierProjector",
    "ice_power_spectrum",
    "gaussian_random_field",
    "make_gain_reference",
    "choose_hot_pixels",
    "ParticleSet",
    "SeriesTruth",
    "ViewEvents",
    "plan_series",
    "simulate_view",
    "specimen_volume",
]

AVOGADRO = 6.02214076e23


# --------------------------------------------------------------------------------------------------------
# Tilt scheme and drift
# --------------------------------------------------------------------------------------------------------


def dose_symmetric_angles(
    max_tilt_deg: float = 60.0,
    step_deg: float = 3.0,
    *,
    min_tilt_deg: float | None = None,
    start_deg: float = 0.0,
    first_group: int = 1,
    group_size: int = 2,
) -> np.ndarray:
    """Nominal tilt angles (degrees) in **acquisition order** for a dose-symmetric (Hagen) scheme.

    The series starts at ``start_deg``, then takes ``first_group`` tilts on the positive side, then
    alternates blocks of ``group_size`` tilts on the negative and positive sides, each side moving
    outwards by ``step_deg`` until ``max_tilt_deg`` / ``min_tilt_deg`` (default ``-max_tilt_deg``); when one
    side is exhausted the other continues. Defaults give the EMPIAR-10164 (TS_01) order
    ``0, 3, -3, -6, 6, 9, -9, -12, 12, ...``; ``first_group=2, group_size=2`` gives
    ``0, 3, 6, -3, -6, 9, 12, ...`` (Hagen et al. 2017 with groups of two).
    """
    lo = -max_tilt_deg if min_tilt_deg is None else min_tilt_deg
    eps = 1e-6 * step_deg
    pos = list(np.arange(start_deg + step_deg, max_tilt_deg + eps, step_deg))
    neg = list(np.arange(start_deg - step_deg, lo - eps, -step_deg))
    order = [start_deg]
    side, take = +1, first_group
    while pos or neg:
        src = pos if side > 0 else neg
        if not src:
            src = neg if side > 0 else pos
        for _ in range(take):
            if not src:
                break
            order.append(float(src.pop(0)))
        side, take = -side, group_size
    return np.round(np.asarray(order, dtype=np.float64), 6)


TILT_SCHEMES = ("dose_symmetric", "bidirectional", "unidirectional")


def tilt_scheme_angles(
    scheme: str = "dose_symmetric",
    max_tilt_deg: float = 60.0,
    step_deg: float = 3.0,
    *,
    start_deg: float = 0.0,
    first_group: int = 1,
    group_size: int = 2,
) -> np.ndarray:
    """Nominal tilt angles (degrees) in **acquisition order** for the three schemes SerialEM records.

    * ``"dose_symmetric"``: :func:`dose_symmetric_angles` from ``start_deg`` (grouped when
      ``group_size > 1``; ``first_group`` tilts on the + side first).
    * ``"bidirectional"``: from ``start_deg`` up to ``+max_tilt_deg`` in steps of ``step_deg``, then from
      ``start_deg - step_deg`` down to ``-max_tilt_deg`` (e.g. -20, -17, ..., +58, then -23, ..., -59).
    * ``"unidirectional"``: from ``-max_tilt_deg`` up to ``+max_tilt_deg`` (``start_deg`` must be 0).

    Every angle lies on the grid ``start_deg + k · step_deg`` within ``[-max, +max]`` (a tolerance of 1e-6 step).
    Raises ``ValueError`` for an unknown scheme or a start outside the range.
    """
    if scheme not in TILT_SCHEMES:
        raise ValueError(f"tilt scheme must be one of {', '.join(TILT_SCHEMES)}, got {scheme!r}")
    eps = 1e-6 * step_deg
    if abs(start_deg) > max_tilt_deg + eps:
        raise ValueError(f"start tilt {start_deg}° lies outside ±{max_tilt_deg}°")
    if scheme == "dose_symmetric":
        return dose_symmetric_angles(max_tilt_deg, step_deg, start_deg=start_deg, first_group=first_group,
                                     group_size=group_size)
    if scheme == "unidirectional":
        if start_deg != 0.0:
            raise ValueError("a unidirectional series runs from -max to +max; start_tilt_deg must be 0")
        n = int(math.floor(2.0 * max_tilt_deg / step_deg + 1e-6)) + 1
        return np.round(-max_tilt_deg + step_deg * np.arange(n, dtype=np.float64), 6)
    up = np.arange(start_deg, max_tilt_deg + eps, step_deg)
    down = np.arange(start_deg - step_deg, -max_tilt_deg - eps, -step_deg)
    return np.round(np.concatenate([up, down]).astype(np.float64), 6)


def drift_trajectory(
    n_frames: int, total_px: float, rng: np.random.Generator, *, decay_frames: float = 1.5,
    curvature: float = 0.3,
) -> np.ndarray:
    """(n_frames, 2) smooth beam-induced displacement ``δ_j`` (px, (x, y)) with ``δ_0 = 0``.

    A random direction, a magnitude growing as ``1 - exp(-j / decay_frames)`` (fast in early frames) and
    a perpendicular bend of relative size ``curvature``; ``|δ_last| ≈ total_px``.
    """
    if n_frames < 1:
        raise ValueError("n_frames must be >= 1")
    j = np.arange(n_frames, dtype=np.float64)
    last = max(n_frames - 1, 1)
    s = (1.0 - np.exp(-j / decay_frames)) / (1.0 - np.exp(-last / decay_frames))
    a = rng.uniform(0.0, 2.0 * math.pi)
    u = np.array([math.cos(a), math.sin(a)])
    v = np.array([-u[1], u[0]])
    bend = curvature * rng.uniform(-1.0, 1.0) * s * (1.0 - s) * 4.0
    return total_px * (s[:, None] * u[None, :] + bend[:, None] * v[None, :])


# --------------------------------------------------------------------------------------------------------
# Projection of a reference map (Fourier slice)
# --------------------------------------------------------------------------------------------------------


def _trilinear(vol: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of ``vol`` (z, y, x) at fractional indices; 0 outside (any dtype)."""
    n0, n1, n2 = vol.shape
    z0, y0, x0 = np.floor(z).astype(np.int64), np.floor(y).astype(np.int64), np.floor(x).astype(np.int64)
    fz, fy, fx = (z - z0).astype(np.float32), (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    inside = (z0 >= 0) & (z0 < n0 - 1) & (y0 >= 0) & (y0 < n1 - 1) & (x0 >= 0) & (x0 < n2 - 1)
    z0, y0, x0 = np.where(inside, z0, 0), np.where(inside, y0, 0), np.where(inside, x0, 0)
    flat = vol.reshape(-1)
    base = (z0 * n1 + y0) * n2 + x0
    out = np.zeros(z.shape, dtype=vol.dtype)
    for dz, wz in ((0, 1.0 - fz), (1, fz)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            wzy = wz * wy
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                out += flat[base + (dz * n1 + dy) * n2 + dx] * (wzy * wx)
    return np.where(inside, out, 0)


@numba.njit(cache=True, nogil=True)
def _trilinear_c64(vol: np.ndarray, z: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:  # pragma: no cover
    """:func:`_trilinear` for a complex64 ``vol`` and 1D float64 indices, one pass per point: the same float32
    weights and the same order of the eight complex64 additions (no fastmath: the result is bit-identical; tested)."""
    n0, n1, n2 = vol.shape
    m = z.shape[0]
    out = np.zeros(m, dtype=np.complex64)
    one = np.float32(1.0)
    for i in range(m):
        fz0 = math.floor(z[i])
        fy0 = math.floor(y[i])
        fx0 = math.floor(x[i])
        z0, y0, x0 = int(fz0), int(fy0), int(fx0)
        if not (0 <= z0 < n0 - 1 and 0 <= y0 < n1 - 1 and 0 <= x0 < n2 - 1):
            continue
        fz = np.float32(z[i] - fz0)
        fy = np.float32(y[i] - fy0)
        fx = np.float32(x[i] - fx0)
        wzs = (one - fz, fz)
        wys = (one - fy, fy)
        wxs = (one - fx, fx)
        re = np.float32(0.0)
        im = np.float32(0.0)
        for dz in range(2):
            for dy in range(2):
                wzy = wzs[dz] * wys[dy]
                for dx in range(2):
                    w = wzy * wxs[dx]
                    c = vol[z0 + dz, y0 + dy, x0 + dx]
                    re += c.real * w
                    im += c.imag * w
        out[i] = complex(re, im)
    return out


class FourierProjector:
    """Projections of a cubic reference map in any orientation, by central slices of its 3D transform.

    ``ref_map`` (B, B, B) float (numpy order z, y, x; centre at index ``B // 2``), potential in V at
    ``pixel_size_A``. The map is zero-padded ``pad``-fold (default 3: projections within ~2 % of the exact
    atom projection below 0.4 cycles/px) and divided by the trilinear gridding kernel
    ``sinc²`` per axis before the transform, so trilinear interpolation of the slice is accurate.
    :meth:`project` returns a (B, B) projected potential in V·Å whose centre ``B // 2`` holds the map centre
    displaced by a sub-pixel ``shift_px``.
    """

    def __init__(self, ref_map: np.ndarray, pixel_size_A: float, *, pad: int = 3) -> None:
        m = np.asarray(ref_map, dtype=np.float64)
        if m.ndim != 3 or len(set(m.shape)) != 1:
            raise ValueError(f"ref_map must be a cube, got {m.shape}")
        b = m.shape[0]
        npad = pad * b
        self.box = b
        self.npad = npad
        self.pad = pad
        self.pixel_size_A = float(pixel_size_A)
        self.source_map = m.astype(np.float32)
        r = (np.arange(b) - b // 2) / npad
        k1 = np.sinc(r) ** 2
        corrected = m / (k1[:, None, None] * k1[None, :, None] * k1[None, None, :])
        big = np.zeros((npad,) * 3)
        o = npad // 2 - b // 2
        big[o:o + b, o:o + b, o:o + b] = corrected
        f = scipy.fft.fftn(scipy.fft.ifftshift(big), workers=-1)
        self._ft = scipy.fft.fftshift(f).astype(np.complex64)
        # 2D frequency grid of the output box (integers, cycles per box), shifted layout
        k = np.arange(b) - b // 2
        self._kx, self._ky = np.meshgrid(k, k)  # (B, B): x along columns

    def project(self, rotation: np.ndarray, shift_px: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """(B, B) float32 projection (V·Å) along the third axis of ``rotation @ x_ref``.

        ``rotation`` (3, 3) takes reference-map coordinates (x, y, z) to the view frame (column, row,
        beam); the output's column/row are the first two. ``shift_px = (sx, sy)`` moves the content.
        """
        rot = np.asarray(rotation, dtype=np.float64)
        b, npad = self.box, self.npad
        # view-frame frequency (kx, ky, 0) in cycles/px -> reference frame q = R^T k
        kxv = self._kx.ravel() / b
        kyv = self._ky.ravel() / b
        q = rot.T[:, :2] @ np.stack([kxv, kyv])  # (3, B*B), (x, y, z) cycles/px
        vals = _trilinear_c64(self._ft, q[2] * npad + npad // 2, q[1] * npad + npad // 2, q[0] * npad + npad // 2)
        sx, sy = float(shift_px[0]), float(shift_px[1])
        phase = np.exp(-2j * math.pi * (kxv * sx + kyv * sy))
        g = (vals * phase).reshape(b, b)
        img = scipy.fft.fftshift(scipy.fft.ifft2(scipy.fft.ifftshift(g), workers=backend.fft_workers())).real
        # ifft of the slice sampled at 1/B: the sum over the (padded) beam axis, in voxel units
        return (img * self.pixel_size_A).astype(np.float32)


def solvent_excluded(
    potential_V: np.ndarray, pixel_size_A: float, volume_A3: float, solvent_potential_V: float,
    *, edge_A: float = 1.5,
) -> np.ndarray:
    """``potential - solvent_potential · envelope``: the contrast of an object embedded in ice.

    The envelope is the ``volume_A3`` largest voxels of the map smoothed by a Gaussian of ``2 edge_A``,
    softened by a Gaussian of ``edge_A``; float32 like the input. With the mean inner potential of ice
    (≈ 4.6 V) this lowers the low-resolution contrast of a protein to the ≈ 40 % seen in vitreous ice.
    """
    m = np.asarray(potential_V, dtype=np.float32)
    n_vox = int(round(volume_A3 / pixel_size_A**3))
    if n_vox <= 0 or solvent_potential_V == 0:
        return m.copy()
    sm = scipy.ndimage.gaussian_filter(m, 2.0 * edge_A / pixel_size_A)
    n_vox = min(n_vox, sm.size)
    thr = np.partition(sm.ravel(), sm.size - n_vox)[sm.size - n_vox]
    env = scipy.ndimage.gaussian_filter((sm >= thr).astype(np.float32), edge_A / pixel_size_A)
    return (m - solvent_potential_V * env).astype(np.float32)


def ice_mean_potential_V() -> float:
    """Mean inner potential (V) of amorphous ice (0.94 g/cm³, neutral O and H, Peng form factors)."""
    n = 0.94 / 18.015 * AVOGADRO * 1e-24
    return float(formfactors.mean_inner_potential({"O": n, "H": 2.0 * n}))


# --------------------------------------------------------------------------------------------------------
# Amorphous ice, carbon, detector
# --------------------------------------------------------------------------------------------------------


def _water_structure_factor(k: np.ndarray, excess: float = 0.0) -> np.ndarray:
    """Model structure factor of amorphous water/ice vs k (Å⁻¹): ``S(0) = 0.06`` (equilibrium water,
    from its compressibility), a rise towards the first diffraction peak at 1/3.7 Å⁻¹ (height ≈ 2),
    → 1 at high k; plus ``excess · (k/k1)² / (1 + (k/k1)²)`` with k1 = 1/40 Å⁻¹: extra medium-frequency
    fluctuations of real specimens that vanish at the lowest frequencies (ice stays flat at large scale)."""
    kp = 1.0 / 3.7
    k1 = 1.0 / 40.0
    rise = (k / kp) ** 4 / (1.0 + (k / kp) ** 4)
    peak = 1.2 * np.exp(-0.5 * ((k - kp) / 0.035) ** 2)
    extra = excess * (k / k1) ** 2 / (1.0 + (k / k1) ** 2) * (1.0 - rise)
    return 0.06 + 0.94 * rise + peak + extra


def ice_power_spectrum(
    k_A: np.ndarray, thickness_A: float, *, material: str = "ice", ice_excess: float = 0.0
) -> np.ndarray:
    """Power spectral density (V·Å)²·Å² of the projected potential fluctuations of a layer.

    ``thickness_A``: path length along the beam. ``material``: ``"ice"`` (amorphous water, 0.94 g/cm³,
    molecule = O + 2 H; ``ice_excess`` = extra medium-frequency level of its structure factor over ideal
    water, for the density fluctuations of real vitreous specimens: buffer, solutes, thickness
    variations; see ``_water_structure_factor``) or ``"carbon"`` (amorphous carbon, 2.0 g/cm³, structure factor rising to 1 by
    1/5 Å⁻¹). ``PSD = t · n · |V̂(k)|² · S(k)`` (Kirkland's potential form factors via
    :mod:`tomoguide.compute.formfactors`).
    """
    k = np.asarray(k_A, dtype=np.float64)
    k2 = k * k
    if material == "ice":
        n = 0.94 / 18.015 * AVOGADRO * 1e-24
        vhat = formfactors.potential_ft("O", k2) + 2.0 * formfactors.potential_ft("H", k2)
        s = _water_structure_factor(k, ice_excess)
    elif material == "carbon":
        n = 2.0 / 12.011 * AVOGADRO * 1e-24
        vhat = formfactors.potential_ft("C", k2)
        kc = 1.0 / 5.0
        s = 0.1 + 0.9 * (k / kc) ** 2 / (1.0 + (k / kc) ** 2)
    else:
        raise ValueError(f"unknown material {material!r}")
    return float(thickness_A) * n * np.abs(vhat) ** 2 * s


def gaussian_random_field(
    shape: tuple[int, int], pixel_size_A: float, psd: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """(ny, nx) float32 stationary Gaussian field whose power spectral density is ``psd`` (on the rfft2
    grid, units value²·Å²): DFT of white noise times ``sqrt(psd) / pixel``; the mean (k = 0) is removed."""
    w = rng.standard_normal(shape, dtype=np.float32)
    f = scipy.fft.rfft2(w, workers=backend.fft_workers())
    amp = np.sqrt(psd) / pixel_size_A
    amp[0, 0] = 0.0
    return scipy.fft.irfft2(f * amp, s=shape, workers=backend.fft_workers()).astype(np.float32)


def make_gain_reference(
    shape: tuple[int, int], rng: np.random.Generator, *, pixel_sigma: float = 0.03,
    column_sigma: float = 0.02, smooth_amplitude: float = 0.05,
) -> np.ndarray:
    """(ny, nx) float32 multiplicative gain (mean ≈ 1): ``raw = Poisson(dose · I / gain)``,
    ``corrected = raw × gain``. Per-pixel log-normal scatter, column stripes and a smooth large-scale
    variation (as a counting camera's reference shows). Returned in the detector's orientation (not flipped)."""
    ny, nx = shape
    g = np.exp(pixel_sigma * rng.standard_normal(shape))
    g *= 1.0 + column_sigma * rng.standard_normal(nx)[None, :]
    yy, xx = np.mgrid[0:ny, 0:nx]
    phase = rng.uniform(0, 2 * math.pi, 2)
    g *= 1.0 + smooth_amplitude * np.sin(2 * math.pi * xx / nx + phase[0]) * np.cos(
        math.pi * yy / ny + phase[1])
    g /= g.mean()
    return g.astype(np.float32)


def choose_hot_pixels(shape: tuple[int, int], n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 2) int64 (y, x) positions of hot pixels, at least 3 px from the border, distinct."""
    ny, nx = shape
    flat = rng.choice((ny - 6) * (nx - 6), size=n, replace=False)
    return np.stack([flat // (nx - 6) + 3, flat % (nx - 6) + 3], axis=1).astype(np.int64)


# --------------------------------------------------------------------------------------------------------
# Series plan (truth) and views
# --------------------------------------------------------------------------------------------------------


@dataclass
class ParticleSet:
    """Copies of one reference: ``positions_px`` (m, 3) specimen frame (px, tomogram-centre origin,
    x, y, z), ``rotations`` (m, 3, 3) with ``x_specimen = R @ x_ref + t``; ``projector`` of the reference."""

    projector: FourierProjector
    positions_px: np.ndarray
    rotations: np.ndarray


@dataclass
class SeriesTruth:
    """Ground truth of one tilt series; per-view arrays in **angle order** (ascending nominal tilt).

    ``geometry``: the true :class:`TiltSeriesGeometry` (xf raw → aligned for the frame-0-aligned image,
    tilt offset, acquisition order, doses, nominal defocus). ``defocus_u_A``/``defocus_v_A``/
    ``astig_angle_deg`` (n,): CTF at the tomogram centre (depth 0) in the raw-image frame (RELION/CTFFIND
    conventions). ``frame_shifts_px`` (n, F, 2): aligning (x, y) shift per frame (frame 0 = 0).
    ``tilt_error_deg`` (n,): per-view deviation of the true tilt from nominal + offset (0 by default).
    """

    geometry: TiltSeriesGeometry
    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    astig_angle_deg: np.ndarray
    frame_shifts_px: np.ndarray
    nominal_defocus_A: float
    n_frames: int
    frame_dose_e_A2: np.ndarray = field(default_factory=lambda: np.zeros(0))
    view_dose_scale: np.ndarray | None = None

    @property
    def n_views(self) -> int:
        return self.geometry.n_views

    def frame_doses(self, view: int) -> np.ndarray:
        """(F,) e⁻/Å² of each frame of ``view`` (angle order): ``frame_dose_e_A2`` times the view's dose
        scale (< 1 for a dark view)."""
        if self.view_dose_scale is None or float(self.view_dose_scale[view]) == 1.0:
            return self.frame_dose_e_A2
        return self.frame_dose_e_A2 * float(self.view_dose_scale[view])


@dataclass
class ViewEvents:
    """Detector events of one view: ``xray_pixels`` (p, 4) int64 rows (frame, y, x, counts added) for every
    pixel of every X-ray hit (frame 0-based; counts before saturation at ``max_count``); ``hit_centres``
    (h, 3) int64 (frame, y, x) of each hit's first pixel."""

    xray_pixels: np.ndarray  # (p, 4) int64: frame, y, x, counts
    hit_centres: np.ndarray  # (h, 3) int64: frame, y, x


def plan_series(
    *,
    name: str,
    shape: tuple[int, int],
    pixel_size_A: float,
    rng: np.random.Generator,
    max_tilt_deg: float = 60.0,
    step_deg: float = 3.0,
    first_group: int = 1,
    group_size: int = 2,
    tilt_axis_deg: float = 85.0,
    tilt_offset_deg: float = 0.0,
    axis_error_deg: float = 0.3,
    shift_sigma_A: float = 40.0,
    shift_walk_A: float = 10.0,
    dose_per_tilt_e_A2: float = 3.0,
    n_frames: int = 8,
    nominal_defocus_A: float = 40000.0,
    defocus_sigma_A: float = 1500.0,
    astigmatism_A: float = 400.0,
    astig_sigma_deg: float = 10.0,
    drift_A: float = 8.0,
    defocus_handedness: int = -1,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    tilt_scheme: str = "dose_symmetric",
    start_tilt_deg: float = 0.0,
    dark_view_tilts_deg: Sequence[float] = (),
    dark_view_dose_fraction: float = 0.03,
    jump_view_tilts_deg: Sequence[float] = (),
    jump_A: tuple[float, float] = (0.0, 0.0),
) -> SeriesTruth:
    """Draw the hidden quantities of one tilt series (nothing rendered).

    Tilt angles and their acquisition order from :func:`tilt_scheme_angles` (``tilt_scheme``,
    ``start_tilt_deg``, ``first_group``, ``group_size``); prior dose accumulates in acquisition order.
    **Dark views** (nominal tilts ``dark_view_tilts_deg``) receive ``dark_view_dose_fraction`` of the dose
    (``view_dose_scale``; the geometry's ``dose_e_A2`` and the later views' prior dose say so).
    **Jump views** (``jump_view_tilts_deg``) get an extra specimen shift ``jump_A`` (x, y) Å on top of the
    random one (a tracking jump): it is part of the true xf, so ``geometry.specimen_shifts_px()`` holds it.
    Each listed tilt must be one of the scheme's nominal tilts (:func:`match_tilts`).

    Specimen shift per view: a slow random walk (``shift_walk_A`` per view) plus a random offset
    (``shift_sigma_A``); in-plane rotation error per view ``N(0, axis_error_deg)`` so the true xf rotation
    is ``-(tilt_axis_deg + error)``. Defocus per view: nominal + ``N(0, defocus_sigma_A)`` (a smooth walk
    in acquisition order), astigmatism ``|U - V| ≈ astigmatism_A`` at an angle wandering around a
    series value. Drift per view: :func:`drift_trajectory` with ``|δ| ≈ drift_A`` (larger for early
    views of the series, as the stage settles).
    """
    acq_angles = tilt_scheme_angles(tilt_scheme, max_tilt_deg, step_deg, start_deg=start_tilt_deg,
                                    first_group=first_group, group_size=group_size)
    n = acq_angles.size
    order_by_angle = np.argsort(acq_angles, kind="stable")
    nominal = acq_angles[order_by_angle]
    acq_rank = order_by_angle.astype(np.int64)  # acquisition index (0 = first) of each view in angle order
    dark = match_tilts(nominal, dark_view_tilts_deg, what="dark view")
    jump = match_tilts(nominal, jump_view_tilts_deg, what="jump view")
    if not 0.0 < dark_view_dose_fraction <= 1.0:
        raise ValueError(f"dark_view_dose_fraction must be in (0, 1], got {dark_view_dose_fraction}")
    dose_scale = np.ones(n)
    dose_scale[dark] = dark_view_dose_fraction
    if len(dark):
        dose_views = dose_per_tilt_e_A2 * dose_scale  # angle order
        by_acq = np.argsort(acq_rank)  # view index of each acquisition
        before = np.concatenate(([0.0], np.cumsum(dose_views[by_acq])[:-1]))
        prior = np.empty(n)
        prior[by_acq] = before
    else:
        dose_views = np.full(n, dose_per_tilt_e_A2)
        prior = acq_rank * dose_per_tilt_e_A2

    # per-view errors drawn in acquisition order (a walk in time), stored in angle order
    walk = np.cumsum(rng.normal(0.0, shift_walk_A, (n, 2)), axis=0)
    shifts_acq = walk - walk[0] + rng.normal(0.0, shift_sigma_A, (n, 2))
    axis_err_acq = rng.normal(0.0, axis_error_deg, n)
    df_walk = np.cumsum(rng.normal(0.0, 1.0, n))
    df_walk = (df_walk - df_walk.mean()) / max(df_walk.std(), 1e-9)
    df_acq = nominal_defocus_A + defocus_sigma_A * (0.6 * df_walk + 0.8 * rng.normal(0.0, 1.0, n))
    astig_base = rng.uniform(-90.0, 90.0)
    astig_acq = astig_base + rng.normal(0.0, astig_sigma_deg, n)
    dastig_acq = np.abs(astigmatism_A * (1.0 + 0.3 * rng.normal(0.0, 1.0, n)))
    drift_scale = 1.0 + 1.0 * np.exp(-np.arange(n) / 3.0)
    drift_acq = np.stack([
        drift_trajectory(n_frames, drift_A / pixel_size_A * drift_scale[i] * rng.uniform(0.6, 1.2), rng)
        for i in range(n)
    ])

    def to_angle(a: np.ndarray) -> np.ndarray:
        return a[order_by_angle]

    shifts_px = to_angle(shifts_acq) / pixel_size_A
    if len(jump):
        shifts_px[jump] += np.asarray(jump_A, dtype=np.float64) / pixel_size_A
    axis_err = to_angle(axis_err_acq)
    df = to_angle(df_acq)
    dastig = to_angle(dastig_acq)
    u = df + 0.5 * dastig
    v = df - 0.5 * dastig
    ang = (to_angle(astig_acq) + 90.0) % 180.0 - 90.0
    a = rotation_2d(-(tilt_axis_deg + axis_err))  # (n, 2, 2)
    xf = np.zeros((n, 2, 3))
    xf[:, :, :2] = a
    xf[:, :, 2] = -np.einsum("nij,nj->ni", a, shifts_px)
    geom = TiltSeriesGeometry(
        name=name, pixel_size_A=pixel_size_A, binning=1.0, image_shape_px=tuple(shape),
        optics={"voltage_kV": voltage_kV, "cs_mm": cs_mm, "amplitude_contrast": amplitude_contrast},
        tilt_axis_deg=tilt_axis_deg, tilt_angles_deg=nominal, tilt_offset_deg=tilt_offset_deg,
        acquisition_order=acq_rank, prior_dose_e_A2=prior, dose_e_A2=dose_views,
        nominal_defocus_um=np.full(n, nominal_defocus_A / 1e4), xf=xf, defocus_handedness=defocus_handedness,
    )
    return SeriesTruth(
        geometry=geom, defocus_u_A=u, defocus_v_A=v, astig_angle_deg=ang,
        frame_shifts_px=-to_angle(drift_acq), nominal_defocus_A=nominal_defocus_A, n_frames=n_frames,
        frame_dose_e_A2=np.full(n_frames, dose_per_tilt_e_A2 / n_frames),
        view_dose_scale=dose_scale if len(dark) else None,
    )


def match_tilts(nominal_deg: Any, wanted_deg: Sequence[float], *, what: str = "tilt",
                tol_deg: float = 1e-3) -> np.ndarray:
    """Indices into ``nominal_deg`` (n,) of each angle of ``wanted_deg`` (within ``tol_deg``), int64.

    Raises ``ValueError`` naming the nearest nominal tilt when one is not in the series, or when one is
    listed twice."""
    nom = np.asarray(nominal_deg, dtype=np.float64)
    out = []
    for w in wanted_deg:
        d = np.abs(nom - float(w))
        i = int(np.argmin(d))
        if d[i] > tol_deg:
            raise ValueError(f"{what} at {float(w):g}° is not a tilt of the series (nearest: {nom[i]:g}°)")
        if i in out:
            raise ValueError(f"{what} at {float(w):g}° is listed twice")
        out.append(i)
    return np.asarray(out, dtype=np.int64)


def _rfft_k(shape: tuple[int, int], pixel_size_A: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kx, ky = ctfmod.frequency_grid(shape, pixel_size_A, rfft=True)
    return kx, ky, np.sqrt(kx * kx + ky * ky)


def mid_plane_depth_px(p: np.ndarray, normal: Any, uv_px: Any) -> np.ndarray:
    """Depth (px, third row of the projection matrix ``p`` (3, 4)) of the slab mid-plane ``normal · x = 0``
    seen at raw pixel positions ``uv_px`` (m, 2) (x = column, y = row)."""
    n = np.asarray(normal, dtype=np.float64)
    m = np.vstack([p[:2, :3], n[None, :]])
    uv = np.atleast_2d(np.asarray(uv_px, dtype=np.float64))
    rhs = np.concatenate([uv - p[:2, 3], np.zeros((uv.shape[0], 1))], axis=1)
    x = np.linalg.solve(m, rhs.T).T
    return x @ p[2, :3] + p[2, 3]


def _slab_depth_field(p: np.ndarray, normal: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, float]:
    """Depth (px) of the slab mid-plane ``normal · x = 0`` seen at each raw pixel, and |cos| between the
    beam and the slab normal. ``p`` (3, 4) projection matrix of the view."""
    ny, nx = shape
    lin = p[:2, :3]
    m = np.vstack([lin, normal[None, :]])  # (3, 3): [u - t_u, v - t_v, 0] = m @ x
    minv = np.linalg.inv(m)
    # x = minv @ [u - t0, v - t1, 0]; depth = p[2, :3] @ x  -> linear in (u, v)
    cu = p[2, :3] @ minv[:, 0]
    cv = p[2, :3] @ minv[:, 1]
    c0 = -(cu * p[0, 3] + cv * p[1, 3])
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    depth = (c0 + cu * xx + cv * yy).astype(np.float32)
    beam = np.cross(lin[0], lin[1])
    beam /= np.linalg.norm(beam)
    cos = abs(float(beam @ normal) / float(np.linalg.norm(normal)))
    return depth, cos


def _add_patch(dst: np.ndarray, patch: np.ndarray, y0: int, x0: int, weight: float) -> None:
    """dst[y0:y0+h, x0:x0+w] += weight * patch, clipped to dst."""
    h, w = patch.shape
    ny, nx = dst.shape
    ya, xa = max(y0, 0), max(x0, 0)
    yb, xb = min(y0 + h, ny), min(x0 + w, nx)
    if ya >= yb or xa >= xb:
        return
    dst[ya:yb, xa:xb] += weight * patch[ya - y0:yb - y0, xa - x0:xb - x0]


def simulate_view(
    truth: SeriesTruth,
    view: int,
    particle_sets: list[ParticleSet],
    *,
    gain: np.ndarray,
    hot_pixels: np.ndarray,
    rng: np.random.Generator,
    ice_thickness_A: float = 800.0,
    slab_normal: tuple[float, float, float] = (0.0, 0.0, 1.0),
    carbon_thickness_A: float = 0.0,
    ice_sublayers: int = 3,
    layer_thickness_A: float = 150.0,
    bfactor_A2: float = 150.0,
    ice_excess: float = 0.0,
    hot_pixel_rate: float = 20.0,
    xray_hits_per_view: float = 2.0,
    xray_counts: tuple[float, float] = (40.0, 110.0),
    max_count: int = 127,
    radiation_damage: bool = True,
) -> tuple[np.ndarray, ViewEvents, dict[str, Any]]:
    """Simulate the movie of one view (index in angle order) of ``truth``.

    Returns ``frames`` (F, ny, nx) counts (uint8 when ``max_count`` ≤ 255, else uint16), the detector
    events, and a dict of diagnostics (``n_layers``, ``ice_path_A``, ``mean_intensity``). See the module
    docstring for the model. ``radiation_damage=False`` skips the exposure filter (for tests of the image
    formation at very high dose).
    ``slab_normal`` (specimen frame) orients the ice slab centred on the tomogram centre; the carbon film
    (if any) lies on its top (+normal side).
    """
    geom = truth.geometry
    px = geom.pixel_size_A
    shape = tuple(geom.image_shape_px)
    ny, nx = shape
    opt = geom.optics
    p = geom.projection_matrices()[view]
    lin = p[:, :3]
    if not np.allclose(lin @ lin.T, np.eye(3), atol=1e-6):
        raise ValueError("the view's transform is not a pure rotation; the simulator needs rigid views")
    hand = float(geom.defocus_handedness)
    normal = np.asarray(slab_normal, dtype=np.float64)
    normal = normal / np.linalg.norm(normal)

    # ---- depth layers -------------------------------------------------------------------------------
    depth_mid, cosb = _slab_depth_field(p, normal, shape)
    path_A = ice_thickness_A / max(cosb, 0.05)
    half_px = 0.5 * path_A / px
    lay_px = layer_thickness_A / px
    dmin = float(depth_mid.min()) - half_px - lay_px
    dmax = float(depth_mid.max()) + half_px + lay_px
    positions = [ps.positions_px for ps in particle_sets if len(ps.positions_px)]
    if positions:
        allpos = np.concatenate(positions)
        d_part = allpos @ lin[2] + p[2, 3]
        dmin = min(dmin, float(d_part.min()) - lay_px)
        dmax = max(dmax, float(d_part.max()) + lay_px)
    n_layers = int(math.ceil((dmax - dmin) / lay_px)) + 1
    centres = dmin + lay_px * np.arange(n_layers)
    spec_layers: dict[int, np.ndarray] = {}
    ice_layers: dict[int, np.ndarray] = {}

    def layer(store: dict[int, np.ndarray], j: int) -> np.ndarray:
        if j not in store:
            store[j] = np.zeros(shape, dtype=np.float32)
        return store[j]

    # ---- particles ----------------------------------------------------------------------------------
    for ps in particle_sets:
        b = ps.projector.box
        for t, r in zip(np.asarray(ps.positions_px), np.asarray(ps.rotations), strict=True):
            uvd = p[:, :3] @ t + p[:, 3]
            u, v, d = uvd
            if u < -b or u > nx + b or v < -b or v > ny + b:
                continue
            iu, iv = int(math.floor(u)), int(math.floor(v))
            patch = ps.projector.project(lin @ r, (u - iu, v - iv))
            f = (d - dmin) / lay_px
            j0 = int(math.floor(f))
            w1 = f - j0
            x0, y0 = iu - b // 2, iv - b // 2
            _add_patch(layer(spec_layers, j0), patch, y0, x0, 1.0 - w1)
            if w1 > 0:
                _add_patch(layer(spec_layers, j0 + 1), patch, y0, x0, w1)

    # ---- ice (and carbon) -----------------------------------------------------------------------------
    kx, ky, k = _rfft_k(shape, px)

    unit_psd: dict[str, np.ndarray] = {}

    def add_field(material: str, path: float, depth_field: np.ndarray) -> None:
        if material not in unit_psd:
            unit_psd[material] = ice_power_spectrum(k, 1.0, material=material, ice_excess=ice_excess)
        fld = gaussian_random_field(shape, px, unit_psd[material] * path, rng).ravel()
        f = ((depth_field - dmin) / lay_px).ravel()
        j0 = np.floor(f).astype(np.int64)
        w1 = (f - j0).astype(np.float32)
        lower = fld * (1.0 - w1)  # the same float32 products as per pixel
        upper = fld * w1
        for j in range(int(j0.min()), int(j0.max()) + 1):  # few layers: a mask each (no sort of the pixels)
            sel = j0 == j
            if not sel.any():
                continue
            lo = layer(ice_layers, j).reshape(-1)
            np.add(lo, lower, out=lo, where=sel)
            hi = layer(ice_layers, j + 1).reshape(-1)
            np.add(hi, upper, out=hi, where=sel)

    nsub = max(1, int(ice_sublayers))
    for i in range(nsub):
        off = ((i + 0.5) / nsub - 0.5) * 2.0 * half_px
        add_field("ice", path_A / nsub, depth_mid + off)
    if carbon_thickness_A > 0:
        top = -half_px if hand > 0 else half_px  # film on the slab surface nearer the source
        add_field("carbon", carbon_thickness_A / max(cosb, 0.05), depth_mid + top)

    # ---- CTF per layer ---------------------------------------------------------------------------------
    du, dv, da = truth.defocus_u_A[view], truth.defocus_v_A[view], truth.astig_angle_deg[view]
    s_spec = np.zeros((ny, nx // 2 + 1), dtype=np.complex64)
    s_ice = np.zeros_like(s_spec)
    lam = ctfmod.electron_wavelength_A(opt.voltage_kV)
    theta = np.arctan2(ky, kx)
    k2 = k * k
    astig_term = 0.5 * (du - dv) * np.cos(2.0 * (theta - math.radians(da)))
    alpha = math.asin(opt.amplitude_contrast)  # -(sqrt(1-A^2) sin chi + A cos chi) = -sin(chi + alpha)
    base = (math.pi * lam * astig_term * k2 - 0.5 * math.pi * opt.cs_mm * 1e7 * lam**3 * k2 * k2
            + alpha).astype(np.float32)
    lam_k2 = (math.pi * lam * k2).astype(np.float32)
    for j in sorted(set(spec_layers) | set(ice_layers)):
        dfj = 0.5 * (du + dv) + hand * centres[j] * px
        c = -np.sin(base + np.float32(dfj) * lam_k2)
        if j in spec_layers:
            s_spec += scipy.fft.rfft2(spec_layers[j], workers=backend.fft_workers()) * c
        if j in ice_layers:
            s_ice += scipy.fft.rfft2(ice_layers[j], workers=backend.fft_workers()) * c
    sigma = ctfmod.interaction_constant_rad_per_VA(opt.voltage_kV)
    env = (np.exp(-bfactor_A2 * k2 / 4.0) * 2.0 * sigma).astype(np.float32)
    s_spec *= env
    s_ice *= env
    s_spec[0, 0] = 0.0  # the mean intensity is 1: counts average to the stated exposure
    s_ice[0, 0] = 0.0

    # ---- frames --------------------------------------------------------------------------------------
    nf = truth.n_frames
    prior = geom.prior_dose_e_A2[view]
    fd = truth.frame_doses(view)
    drift = -truth.frame_shifts_px[view]  # content displacement delta_j
    gain_inv = (1.0 / gain).astype(np.float32)
    frames = np.empty((nf, ny, nx), dtype=poisson.counts_dtype(max_count))
    mean_i = 0.0
    hot = np.zeros(shape, dtype=np.float32)
    hot[hot_pixels[:, 0], hot_pixels[:, 1]] = hot_pixel_rate
    n_before = 0.0
    # dose.attenuation's arithmetic with Ne(k) and its derived arrays computed once per view (same values)
    ne = dosemod.critical_exposure(k, opt.voltage_kV)
    two_ne = 2.0 * ne
    ne_finite = np.isfinite(ne)
    two_ne_safe = 2.0 * np.where(ne_finite, ne, 1.0)
    # the drift phase ramp is separable: exp(-2πi px kx dx) (columns) times exp(-2πi px ky dy) (rows)
    kx_row = kx[0, :]
    ky_col = ky[:, 0]
    fw = backend.fft_workers()
    a1_prev: np.ndarray | None = None
    for j in range(nf):
        n0 = prior + n_before
        dn = float(fd[j])
        if radiation_damage:
            # the exposure filter's end value of frame j - 1 is its start value of frame j
            a0 = a1_prev if a1_prev is not None else np.exp(-n0 / two_ne)
            a1_prev = np.exp(-(n0 + dn) / two_ne)
            if dn == 0.0:
                att = a0.astype(np.float32)
            else:
                att = np.where(ne_finite, two_ne_safe / dn * (a0 - a1_prev), 1.0).astype(np.float32)
        else:
            att = np.float32(1.0)
        n_before += dn
        ph = (np.exp(-2j * math.pi * px * (kx_row * drift[j, 0]))[None, :]
              * np.exp(-2j * math.pi * px * (ky_col * drift[j, 1]))[:, None]).astype(np.complex64)
        spec = (s_spec * att + s_ice) * ph
        img = scipy.fft.irfft2(spec, s=shape, workers=fw)
        img += 1.0
        np.maximum(img, 0.0, out=img)
        mean_i += float(img.mean()) / nf
        img *= np.float32(dn * px * px)
        img *= gain_inv
        img += hot
        frames[j] = poisson.poisson_clipped(img, rng, max_count)  # counts = min(Poisson(λ), max_count)

    # ---- X-ray hits --------------------------------------------------------------------------------
    n_hits = int(rng.poisson(xray_hits_per_view))
    pix: list[tuple[int, int, int, int]] = []
    centres_hit: list[tuple[int, int, int]] = []
    steps = [(0, 1), (1, 0), (0, -1), (-1, 0)]
    for _ in range(n_hits):
        fr = int(rng.integers(nf))
        y, x = int(rng.integers(4, ny - 4)), int(rng.integers(4, nx - 4))
        size = int(rng.integers(1, 5))
        cells = [(y, x)]
        while len(cells) < size:
            cy, cx = cells[int(rng.integers(len(cells)))]
            dy, dx = steps[int(rng.integers(4))]
            if (cy + dy, cx + dx) not in cells:
                cells.append((cy + dy, cx + dx))
        centres_hit.append((fr, y, x))
        for cy, cx in cells:
            add = int(rng.uniform(*xray_counts))
            frames[fr, cy, cx] = min(int(frames[fr, cy, cx]) + add, max_count)
            pix.append((fr, cy, cx, add))
    events = ViewEvents(
        xray_pixels=np.asarray(pix, dtype=np.int64).reshape(-1, 4),
        hit_centres=np.asarray(centres_hit, dtype=np.int64).reshape(-1, 3),
    )
    diag = {"n_layers": len(spec_layers) + len(ice_layers), "ice_path_A": path_A, "mean_intensity": mean_i}
    return frames, events, diag


# --------------------------------------------------------------------------------------------------------
# The true specimen volume
# --------------------------------------------------------------------------------------------------------


def _fourier_bin(vol: np.ndarray, factor: int) -> np.ndarray:
    """Down-sample a cube by an integer factor by cropping its Fourier transform (band-limited)."""
    if factor == 1:
        return vol.astype(np.float32)
    n = vol.shape[0]
    m = n // factor
    f = scipy.fft.fftshift(scipy.fft.fftn(vol, workers=-1))
    o = n // 2 - m // 2
    g = f[o:o + m, o:o + m, o:o + m]
    out = scipy.fft.ifftn(scipy.fft.ifftshift(g), workers=-1).real / factor**3
    return out.astype(np.float32)


def specimen_volume(
    particle_sets: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    shape_zyx: tuple[int, int, int],
    pixel_size_A: float,
    binning: int,
) -> np.ndarray:
    """True specimen potential (V) on a grid binned by ``binning``: (nz, ny, nx) float32, tomogram frame,
    centre at ``(n - 1) / 2`` of each axis (the geometry's image-centre convention), voxel
    ``pixel_size_A * binning`` Å.

    ``particle_sets``: (ref_map (B,B,B) at ``pixel_size_A``, positions_px (m, 3) at unbinned px from the
    tomogram centre, rotations (m, 3, 3) with x = R x_ref + t). Each reference is Fourier-binned, then
    rotated and placed by cubic-spline resampling (independent of the project's reconstruction code).
    """
    vol = np.zeros(shape_zyx, dtype=np.float32)
    nz, ny, nx = shape_zyx
    centre = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0, (nz - 1) / 2.0])
    for ref, pos, rots in particle_sets:
        small = _fourier_bin(np.asarray(ref, dtype=np.float64), binning)
        b = small.shape[0]
        c_ref = b // 2
        half = int(math.ceil(b * 0.9))  # rotated box half-diagonal fits
        grid = np.arange(-half // 2 - 1, half // 2 + 2)
        gz, gy, gx = np.meshgrid(grid, grid, grid, indexing="ij")
        for t, r in zip(np.asarray(pos), np.asarray(rots), strict=True):
            tb = np.asarray(t, dtype=np.float64) / binning + centre  # (x, y, z) voxel index
            base = np.floor(tb).astype(int)
            frac = tb - base
            rel = np.stack([gx - frac[0], gy - frac[1], gz - frac[2]])  # (3, ...) x, y, z offsets
            ref_xyz = np.einsum("ij,j...->i...", np.asarray(r).T, rel) + c_ref
            vals = scipy.ndimage.map_coordinates(
                small, [ref_xyz[2], ref_xyz[1], ref_xyz[0]], order=3, mode="constant", cval=0.0)
            zs, ys, xs = base[2] + gz, base[1] + gy, base[0] + gx
            ok = (zs >= 0) & (zs < nz) & (ys >= 0) & (ys < ny) & (xs >= 0) & (xs < nx)
            np.add.at(vol, (zs[ok], ys[ok], xs[ok]), vals[ok].astype(np.float32))
    return vol
