"""Subtomogram averaging core: sub-tilt extraction, Fourier-space insertion, CTF-corrected averages.

The RELION 5 way (pseudo-subtomograms): every particle is cropped from each non-excluded **raw** tilt image
at its projected position, its Fourier transform is multiplied by the CTF at the particle's own defocus and
by the exposure (dose) filter, and the 2D transforms are inserted as central slices into a 3D transform
with their ``CTF² · dose²`` weights; the average is ``Σ data / (Σ weights + wiener)``, which corrects the
CTF and fills the missing wedge from particles in other orientations.

Conventions (shared with :mod:`tomoguide.geometry`, :mod:`tomoguide.compute.euler`)
    * **Positions** ``positions_A`` (m, 3): tomogram frame ``(x, y, z)`` in Å from the tomogram centre
      (RELION 5's ``rlnCenteredCoordinateX/Y/ZAngst``); divided by the geometry's binned pixel size and
      projected by :meth:`TiltSeriesGeometry.projection_matrices` into raw-image pixels ``(u, v)``.
    * **Crops** ``(B, B)`` hold the particle centre at pixel ``B // 2`` (row and column) exactly: the
      integer part of ``(u, v)`` chooses the crop, the fraction is removed by a Fourier phase shift. Their
      transforms are taken about that centre (``fft2(ifftshift(crop))``, un-shifted ``fftfreq`` layout).
    * **View matrices** ``M_v`` (3, 3) = the linear part of the view's projection matrix: they take a
      tomogram-frame vector ``(x, y, z)`` to ``(u, v, depth)`` of the raw view (a rotation for rigid
      alignments). By the central-slice theorem the 2D frequency ``(k_u, k_v)`` of the crop is the 3D
      frequency ``M_vᵀ (k_u, k_v, 0)`` of the tomogram-frame particle.
    * **Orientations** ``R`` (m, 3, 3): ``x_tomogram = R @ x_reference + t`` (RELION ZYZ Euler angles via
      :func:`tomoguide.compute.euler.euler_to_matrix`), so the frequency ``q_ref = (M_v R)ᵀ (k_u, k_v, 0)``.
    * **Volumes** are ``(B, B, B)`` numpy order ``(z, y, x)`` with the centre at voxel ``B // 2``; Fourier
      grids of this module (data and weights) are *centred* (``fftshift`` layout: zero frequency at index
      ``B // 2``, vector ``(x, y, z)`` of integer frequencies = index - B // 2).
    * **CTF** (:mod:`tomoguide.compute.ctf`): defocus positive = underfocus, in Å; each view's
      ``defocus_u/v_A`` is its defocus at depth 0 (the tomogram centre's plane, what the CTF STAR's
      rlnDefocusU/V give), and a particle's defocus adds :meth:`TiltSeriesGeometry.defocus_offset_A`
      (``defocus_handedness · depth``). The astigmatism angle is in the raw image, as the crops are.
    * **Dose**: the exposure filter of :func:`tomoguide.compute.dose.dose_filter` for the view's prior dose
      and dose (Grant & Grigorieff 2015); the data carry ``CTF · D`` and the weights ``CTF² · D²``.
    * Images are normalised per view (mean 0, standard deviation 1 over the whole view) before cropping.

Speed: extraction is vectorised over views and chunks of particles; insertion scatters trilinear
weights with ``numpy.bincount`` (one call per chunk of slices). Reference: Zivanov et al. 2022, eLife 11:e83724
(RELION 4/5 tomography: pseudo-subtomograms and their CTF² weights).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numba
import numpy as np
import scipy.fft

from tomoguide.compute.backend import fft_workers, map_threads
from tomoguide.compute.ctf import electron_wavelength_A
from tomoguide.compute.dose import attenuation
from tomoguide.compute.float16 import to_float32
from tomoguide.compute.symmetry import symmetry_matrices

__all__ = [
    "ViewCTF",
    "Subtilts",
    "extract_subtilts",
    "insert_slices",
    "backproject_subtomogram",
    "rotate_fourier",
    "reconstruct_average",
    "Reconstructor",
    "symmetrise_grid",
    "kernel_transform",
    "wiener_term",
    "average_from_subtomograms",
    "fourier_to_map",
    "ssnr_wiener_term",
    "rescale_map",
    "pseudo_subtomograms",
]

_CHUNK_SAMPLES = 2_000_000  # 2D samples per insertion batch (~200 bytes of temporaries each)


@dataclass(frozen=True)
class ViewCTF:
    """Per-view CTF parameters of one tilt series, in the geometry's view order (all views, excluded too).

    ``defocus_u_A``, ``defocus_v_A`` (n,) Å, positive = underfocus, at depth 0 (tomogram centre plane);
    ``astig_angle_deg`` (n,) angle of U from the raw image X axis, counter-clockwise;
    ``phase_shift_rad`` (n,) or None.
    """

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    astig_angle_deg: np.ndarray
    phase_shift_rad: np.ndarray | None = None

    @classmethod
    def from_star(cls, table: Any) -> ViewCTF:
        """From a tilt STAR table (pandas DataFrame or mapping) with ``rlnDefocusU``, ``rlnDefocusV``,
        ``rlnDefocusAngle`` (and optional ``rlnPhaseShift`` in degrees), rows in view order."""
        u = np.asarray(table["rlnDefocusU"], dtype=np.float64)
        v = np.asarray(table["rlnDefocusV"], dtype=np.float64)
        a = np.asarray(table["rlnDefocusAngle"], dtype=np.float64)
        ph = None
        if "rlnPhaseShift" in table:
            ph = np.radians(np.asarray(table["rlnPhaseShift"], dtype=np.float64))
        return cls(u, v, a, ph)

    @property
    def n_views(self) -> int:
        return int(np.asarray(self.defocus_u_A).size)


@dataclass
class Subtilts:
    """Sub-tilt images of ``m`` particles in ``k`` views (the geometry's non-excluded views).

    ``images`` (m, k, B, B) float32: crops centred on the particle (centre pixel ``B // 2``), CTF-
    premultiplied and dose-filtered (real space). ``weights`` (m, k, B, B) float32: ``CTF² · D²`` on the
    un-shifted 2D FFT grid of the crops (0 for a view where the particle projects outside the image).
    ``view_matrices`` (k, 3, 3): tomogram frame -> ``(u, v, depth)`` of each used view. ``views`` (k,)
    int64 indices of the used views in the geometry. ``pixel_size_A``: crop pixel size, Å.
    ``defocus_A`` (m, k): mean defocus used at each particle, Å.

    Uncropped sub-tilts (RELION's box before the crop): with ``crop_px`` set, ``images`` and ``weights`` are the
    CTF-premultiplied sub-tilts at the extraction box E (m, k, E, E) and ``crop_px`` is the particle's box (of
    the maps and pseudo-subtomograms): the CTF's delocalised signal is still in the images, so reconstructions
    that crop only after dividing by the weights are consistent with them (:class:`Reconstructor`).
    ``uncropped``: the uncropped sub-tilts of the same particles, when :func:`extract_subtilts` kept them.
    ``cropped_from_px``: the box these images were cut from after the CTF premultiplication (None: not cut).
    """

    images: np.ndarray
    weights: np.ndarray
    view_matrices: np.ndarray
    views: np.ndarray
    pixel_size_A: float
    defocus_A: np.ndarray
    crop_px: int | None = None
    uncropped: Subtilts | None = None
    cropped_from_px: int | None = None

    @property
    def box(self) -> int:
        """The particle's box (px): ``crop_px`` when set, else the images' size."""
        return int(self.crop_px) if self.crop_px else int(self.images.shape[-1])

    @property
    def image_px(self) -> int:
        """The size (px) of the stored sub-tilt images."""
        return int(self.images.shape[-1])

    def select(self, particles: Any) -> Subtilts:
        """The sub-tilts of some particles (indices or a boolean mask), with their uncropped ones."""
        idx = np.asarray(particles)
        return Subtilts(images=self.images[idx], weights=self.weights[idx], view_matrices=self.view_matrices,
                        views=self.views, pixel_size_A=self.pixel_size_A, defocus_A=self.defocus_A[idx],
                        crop_px=self.crop_px, uncropped=None if self.uncropped is None else self.uncropped.select(idx),
                        cropped_from_px=self.cropped_from_px)


# --------------------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------------------


def _ctf_stack(
    kx: np.ndarray, ky: np.ndarray, mean_df: np.ndarray, half_df: np.ndarray, angle_deg: np.ndarray,
    phase: np.ndarray, *, voltage_kV: float, cs_mm: float, amplitude_contrast: float,
) -> np.ndarray:
    """CTF (m, k, B, B) float32 for defocus means ``mean_df`` (m, k), half-astigmatism ``half_df`` (k,),
    angles (k,) and phase shifts (k,) on the 2D grid ``kx``, ``ky`` (B, B) in Å⁻¹."""
    lam = electron_wavelength_A(voltage_kV)
    k2 = (kx * kx + ky * ky)[None]
    theta = np.arctan2(ky, kx)[None]
    ast = half_df[:, None, None] * np.cos(2.0 * (theta - np.radians(angle_deg)[:, None, None]))  # (k, B, B)
    base = (-0.5 * math.pi * cs_mm * 1e7 * lam**3) * k2 * k2 + phase[:, None, None]  # (k, B, B)
    chi = (math.pi * lam) * k2 * (mean_df[:, :, None, None] + ast[None]) + base[None]
    # -(√(1 - a²) sin χ + a cos χ) = -sin(χ + asin a): one sine per sample instead of a sine and a cosine
    chi += math.asin(float(amplitude_contrast))
    return (-np.sin(chi)).astype(np.float32)


@numba.njit(cache=True, inline="always")
def _ctf_at(kx: float, ky: float, mdf: float, hd: float, c2a: float, s2a: float, ph: float, pl: float, cs_term: float,
            asin_a: float) -> float:
    """:func:`_ctf_stack`'s value at one frequency (Å⁻¹): ``-sin χ`` with ``χ = π λ k² (Δf + h cos 2(θ - α))
    - ½ π Cs λ³ k⁴ + φ + asin a``, ``cos 2(θ - α)`` from the components (no ``atan2``); ``pl`` = π λ,
    ``cs_term`` = -½ π Cs λ³ (Cs in Å), ``c2a``, ``s2a`` = cos 2α, sin 2α."""
    k2 = kx * kx + ky * ky
    cos2 = ((kx * kx - ky * ky) * c2a + 2.0 * kx * ky * s2a) / k2 if k2 > 0.0 else c2a
    chi = pl * k2 * (mdf + hd * cos2) + cs_term * k2 * k2 + ph + asin_a
    return -math.sin(chi)


@numba.njit(cache=True, inline="always")
def _filter_at(dfilt: Any, vi: int, y: int, x: int, k_A: Any, mdf: float, hd: float, c2a: float, s2a: float,
               ph: float, pl: float, cs_term: float, asin_a: float, has_ctf: bool) -> Any:
    """The extraction's filter ``CTF · D`` (float32) of view ``vi`` at pixel (y, x) of the un-shifted 2D grid
    (``k_A`` (B,) its frequencies in Å⁻¹; :func:`_ctf_at` when ``has_ctf``, else ``D`` alone)."""
    f = dfilt[vi, y, x]
    if has_ctf:
        f = np.float32(_ctf_at(k_A[x], k_A[y], mdf, hd, c2a, s2a, ph, pl, cs_term, asin_a)) * f
    return f


@numba.njit(cache=True, parallel=True)
def _filter_crops(ft: Any, fu: Any, fv: Any, freq: Any, k_A: Any, mean_df: Any, inside: Any, half_df: Any,
                  ang_rad: Any, phase: Any, dfilt: Any, pl: float, cs_term: float, asin_a: float, has_ctf: bool,
                  w_out: Any) -> None:
    """What :func:`extract_subtilts` does to the crops' 2D transforms ``ft`` (c, k, B, B) complex64 (un-shifted
    layout), in place, in one pass: the sub-pixel centring ramp ``e^{2πi (f_y v + f_x u)}`` (``freq`` (B,) the
    FFT frequencies in cycles/px, ``fu``, ``fv`` (c, k) the fractions), times the filter ``CTF · D`` (``D``
    ``dfilt`` (k, B, B), the CTF of :func:`_ctf_at` at ``k_A`` (B,) Å⁻¹ when ``has_ctf``), 0 for crops not
    ``inside`` and at the zero frequency; ``w_out`` (c, k, B, B) gets the filter squared (empty: not kept).
    Parallel over the crops; the numpy version (:func:`_filters_reference`) is the test oracle."""
    c, k, b = ft.shape[0], ft.shape[1], ft.shape[2]
    keep_w = w_out.shape[0] > 0
    for idx in numba.prange(c * k):
        ci = idx // k
        vi = idx - ci * k
        if not inside[ci, vi]:
            for y in range(b):
                for x in range(b):
                    ft[ci, vi, y, x] = 0
                    if keep_w:
                        w_out[ci, vi, y, x] = 0.0
            continue
        eu = np.empty(b, np.complex128)
        ev = np.empty(b, np.complex128)
        for i in range(b):
            a = 2.0 * math.pi * freq[i] * fu[ci, vi]
            eu[i] = complex(math.cos(a), math.sin(a))
            a = 2.0 * math.pi * freq[i] * fv[ci, vi]
            ev[i] = complex(math.cos(a), math.sin(a))
        mdf = mean_df[ci, vi]
        hd = half_df[vi]
        c2a, s2a = math.cos(2.0 * ang_rad[vi]), math.sin(2.0 * ang_rad[vi])
        ph = phase[vi]
        for y in range(b):
            for x in range(b):
                f = _filter_at(dfilt, vi, y, x, k_A, mdf, hd, c2a, s2a, ph, pl, cs_term, asin_a, has_ctf)
                ft[ci, vi, y, x] = ft[ci, vi, y, x] * (ev[y] * eu[x]) * f
                if keep_w:
                    w_out[ci, vi, y, x] = f * f
        ft[ci, vi, 0, 0] = 0


@numba.njit(cache=True, parallel=True)
def _filter_weights(k_A: Any, mean_df: Any, inside: Any, half_df: Any, ang_rad: Any, phase: Any, dfilt: Any,
                    pl: float, cs_term: float, asin_a: float, has_ctf: bool, w_out: Any) -> None:
    """The squared filter of :func:`_filter_crops` alone (the cropped box's weights): ``w_out`` (c, k, B, B)."""
    c, k, b = w_out.shape[0], w_out.shape[1], w_out.shape[2]
    for idx in numba.prange(c * k):
        ci = idx // k
        vi = idx - ci * k
        mdf = mean_df[ci, vi]
        hd = half_df[vi]
        c2a, s2a = math.cos(2.0 * ang_rad[vi]), math.sin(2.0 * ang_rad[vi])
        ph = phase[vi]
        ins = inside[ci, vi]
        for y in range(b):
            for x in range(b):
                f = _filter_at(dfilt, vi, y, x, k_A, mdf, hd, c2a, s2a, ph, pl, cs_term, asin_a, has_ctf) if ins \
                    else np.float32(0.0)
                w_out[ci, vi, y, x] = f * f


def _filters_reference(k_A: np.ndarray, mean_df: np.ndarray, inside: np.ndarray, half_df: np.ndarray,
                       ang_deg: np.ndarray, phase: np.ndarray, dfilt: np.ndarray, optics: Any | None) -> np.ndarray:
    """The filters ``CTF · D · inside`` (c, k, B, B) float32 in numpy (:func:`_ctf_stack`; no CTF when ``optics``
    is None): the oracle of :func:`_filter_crops` and :func:`_filter_weights`."""
    if optics is None:
        filt = np.broadcast_to(dfilt[None], (len(mean_df), *dfilt.shape))
    else:
        n = k_A.size
        kx, ky = np.broadcast_to(k_A[None, :], (n, n)), np.broadcast_to(k_A[:, None], (n, n))
        filt = _ctf_stack(kx, ky, mean_df, half_df, ang_deg, phase, voltage_kV=optics.voltage_kV, cs_mm=optics.cs_mm,
                          amplitude_contrast=optics.amplitude_contrast) * dfilt[None]
    return filt * inside[:, :, None, None]


def _ctf_constants(optics: Any) -> tuple[float, float, float]:
    """``(π λ, -½ π Cs λ³, asin a)`` of :func:`_ctf_at` for optics (``voltage_kV``, ``cs_mm``,
    ``amplitude_contrast``)."""
    lam = electron_wavelength_A(optics.voltage_kV)
    return math.pi * lam, -0.5 * math.pi * optics.cs_mm * 1e7 * lam**3, math.asin(float(optics.amplitude_contrast))


def padded_views(stack: np.ndarray, geometry: Any, box_px: int) -> np.ndarray:
    """The views :func:`extract_subtilts` crops from: the geometry's included views of ``stack`` (n, ny, nx),
    each normalised to mean 0 and standard deviation 1, in a margin of ``box_px`` zeros (the mean):
    (k, ny + 2 B, nx + 2 B) float32."""
    st = np.asarray(stack)
    b = int(box_px)
    ny, nx = st.shape[1:]
    views = np.asarray(geometry.included_views(), dtype=np.int64)
    padded = np.zeros((views.size, ny + 2 * b, nx + 2 * b), np.float32)
    for i, v in enumerate(views):  # one view at a time: no stack-sized temporaries
        sub = np.asarray(st[v], np.float32)
        mu, sd = sub.mean(), sub.std()
        padded[i, b:b + ny, b:b + nx] = (sub - mu) / (sd if sd > 0 else 1.0)
    return padded


def _copy_cyclic_window(src: np.ndarray, dst: np.ndarray, index: np.ndarray) -> None:
    """``dst[..., i, j] = src[..., index[i], index[j]]`` for ``index`` a cyclic run of consecutive indices (e.g.
    part of ``fftshift(arange(B))``): at most two contiguous runs per axis, so four slice copies instead of a
    fancy-indexed gather."""
    idx = np.asarray(index, np.int64)
    brk = np.flatnonzero(np.diff(idx) != 1)
    cut = int(brk[0]) + 1 if brk.size else idx.size
    if brk.size > 1 or (cut < idx.size and idx[cut] != 0):  # one wrap, to index 0
        raise ValueError("index is not a cyclic run of consecutive indices")
    runs = [(0, int(idx[0]), cut)] + ([(cut, int(idx[cut]), idx.size - cut)] if cut < idx.size else [])
    for oy, sy, ny in runs:
        for ox, sx, nx in runs:
            dst[..., oy:oy + ny, ox:ox + nx] = src[..., sy:sy + ny, sx:sx + nx]


def extract_subtilts(
    stack: np.ndarray,
    geometry: Any,
    positions_A: np.ndarray,
    *,
    box_px: int,
    ctf: ViewCTF | None,
    dose_weighting: bool = True,
    chunk: int = 32,
    crop_px: int | None = None,
    keep_uncropped: bool = False,
    padded: np.ndarray | None = None,
) -> Subtilts:
    """Crop every particle from every non-excluded view, CTF-premultiply and dose-weight it.

    ``stack`` (n, ny, nx): raw (unaligned, not phase-flipped) views at the geometry's binning, in the
    geometry's view order; ``geometry`` a :class:`~tomoguide.geometry.TiltSeriesGeometry` (its binning is
    the stack's); ``positions_A`` (m, 3) tomogram-frame Å from the tomogram centre; ``box_px`` crop size;
    ``ctf`` per-view defocus (None: no CTF, weights = D²); ``dose_weighting`` multiplies by the exposure
    filter of each view (needs ``prior_dose_e_A2`` in the geometry; doses of views with unknown ``dose_e_A2``
    count as 0). Particles are processed ``chunk`` at a time. ``crop_px`` (RELION's cropped box): the
    crops are extracted and CTF-multiplied at ``box_px`` (room for the CTF's delocalisation), then their
    real-space centre ``crop_px`` is kept (centre ``crop_px // 2``) and the weights are the ``CTF² · D²`` of
    the cropped grid's frequencies; None keeps ``box_px``. ``keep_uncropped`` (with ``crop_px`` < ``box_px``):
    the sub-tilts before the crop are kept too, as ``.uncropped`` (images (m, k, box, box), their ``CTF² · D²``
    on the box's grid, ``crop_px`` set): reconstructions from them lose none of the CTF's delocalised signal.
    ``padded``: :func:`padded_views` of the same stack, geometry and ``box_px`` (computed here when None; pass
    it to extract the particles of one tilt series in several calls without redoing it).
    Returns :class:`Subtilts` (box = the cropped size).
    """
    st = np.asarray(stack)
    if st.ndim != 3:
        raise ValueError(f"stack must be (n, ny, nx), got {st.shape}")
    n, ny, nx = st.shape
    if n != geometry.n_views:
        raise ValueError(f"stack has {n} views, geometry {geometry.n_views}")
    if tuple(geometry.image_shape_px) != (ny, nx):
        raise ValueError(f"stack views are {(ny, nx)} px, geometry says {tuple(geometry.image_shape_px)}")
    if ctf is not None and ctf.n_views != n:
        raise ValueError(f"ctf has {ctf.n_views} views, geometry {n}")
    b = int(box_px)
    if b < 4:
        raise ValueError("box_px must be >= 4")
    bc = b if crop_px is None else int(crop_px)
    if bc < 4 or bc > b:
        raise ValueError(f"crop_px must be in [4, box_px], got {crop_px}")
    pos = np.asarray(positions_A, dtype=np.float64).reshape(-1, 3)
    m = pos.shape[0]
    px = float(geometry.pixel_size_binned_A)
    views = np.asarray(geometry.included_views(), dtype=np.int64)
    k = views.size
    pts = pos / px
    pm = geometry.projection_matrices()[views]  # (k, 3, 4)
    uvd = np.einsum("kij,mj->kmi", pm[:, :, :3], pts) + pm[:, None, :, 3]  # (k, m, 3)
    df_off = geometry.defocus_offset_A(pts)[views].T if m else np.zeros((0, k))  # (m, k)

    # normalised, padded views (the pad is 0 = the mean)
    if padded is None:
        padded = padded_views(st, geometry, b)
    elif padded.shape != (k, ny + 2 * b, nx + 2 * b):
        raise ValueError(f"padded views are {padded.shape}, expected {(k, ny + 2 * b, nx + 2 * b)} (padded_views "
                         f"of this stack, geometry and box)")

    # 2D frequency grids (cycles/px and Å⁻¹), un-shifted layout
    f1 = scipy.fft.fftfreq(b)
    fy, fx = f1[:, None], f1[None, :]
    kx_A, ky_A = np.broadcast_to(fx / px, (b, b)), np.broadcast_to(fy / px, (b, b))

    # per-view filters
    if dose_weighting and geometry.prior_dose_e_A2 is not None:
        prior = np.asarray(geometry.prior_dose_e_A2)[views]
        dose = np.asarray(geometry.dose_e_A2)[views] if geometry.dose_e_A2 is not None else np.zeros(k)
        kk = np.sqrt(kx_A**2 + ky_A**2)
        dfilt = np.stack([attenuation(kk, float(p), float(d), geometry.optics.voltage_kV)
                          for p, d in zip(prior, dose, strict=True)]).astype(np.float32)
    else:
        dfilt = np.ones((k, b, b), np.float32)
    if ctf is not None:
        du = np.asarray(ctf.defocus_u_A, np.float64)[views]
        dv = np.asarray(ctf.defocus_v_A, np.float64)[views]
        ang = np.asarray(ctf.astig_angle_deg, np.float64)[views]
        ph = (np.zeros(k) if ctf.phase_shift_rad is None
              else np.asarray(ctf.phase_shift_rad, np.float64)[views])
        mean_df = 0.5 * (du + dv)[None, :] + df_off  # (m, k)
    else:
        mean_df = np.zeros((m, k))

    if bc != b:
        f1c = scipy.fft.fftfreq(bc)
        kxc_A = np.broadcast_to(f1c[None, :] / px, (bc, bc))
        kyc_A = np.broadcast_to(f1c[:, None] / px, (bc, bc))
        if dose_weighting and geometry.prior_dose_e_A2 is not None:
            kkc = np.sqrt(kxc_A**2 + kyc_A**2)
            dfilt_c = np.stack([attenuation(kkc, float(p), float(d), geometry.optics.voltage_kV)
                                for p, d in zip(prior, dose, strict=True)]).astype(np.float32)
        else:
            dfilt_c = np.ones((k, bc, bc), np.float32)
    o = b // 2 - bc // 2
    images = np.empty((m, k, bc, bc), np.float32)
    weights = np.empty((m, k, bc, bc), np.float32)
    keep = bool(keep_uncropped) and bc != b
    full_images = np.empty((m, k, b, b), np.float32) if keep else None
    full_weights = np.empty((m, k, b, b), np.float32) if keep else None
    ar_i = scipy.fft.ifftshift(np.arange(b))  # crop pixel of each ifftshifted position
    ar_f = scipy.fft.fftshift(np.arange(b))  # and the inverse
    has_ctf = ctf is not None
    if has_ctf:
        half_df, ang_rad = 0.5 * (du - dv), np.radians(ang)
    else:
        half_df = ang_rad = ph = np.zeros(k)
    pl, cs_term, asin_a = _ctf_constants(geometry.optics)
    k1_A = np.ascontiguousarray(f1 / px)
    kc_A = np.ascontiguousarray(scipy.fft.fftfreq(bc) / px)
    dfilt = np.ascontiguousarray(dfilt, np.float32)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        u = uvd[:, s:e, 0].T  # (c, k)
        v = uvd[:, s:e, 1].T
        iu, iv = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
        fu, fv = u - iu, v - iv
        inside = (iu >= 0) & (iu < nx) & (iv >= 0) & (iv < ny)
        x0 = np.clip(iu - b // 2 + b, 0, nx + b)
        y0 = np.clip(iv - b // 2 + b, 0, ny + b)
        # the crops gathered in ifftshift order (the centre B//2 at pixel 0): no shifted copy
        rows = y0[:, :, None, None] + ar_i[None, None, :, None]
        cols = x0[:, :, None, None] + ar_i[None, None, None, :]
        vv = np.broadcast_to(np.arange(k)[None, :, None, None], rows.shape)
        crops = padded[vv, rows, cols]  # (c, k, B, B)
        ft = np.ascontiguousarray(scipy.fft.fft2(crops, workers=fft_workers()), np.complex64)
        mdf = np.ascontiguousarray(mean_df[s:e], np.float64)
        # in one pass: move the particle centre from B//2 + frac to B//2 exactly (shift by -frac: a ramp along x
        # times one along y), multiply by CTF · dose (0 outside the view), and the weights CTF² · dose²
        w_full = np.empty((e - s, k, b, b), np.float32) if bc == b or keep else np.empty((0, 0, 0, 0), np.float32)
        _filter_crops(ft, np.ascontiguousarray(fu, np.float64), np.ascontiguousarray(fv, np.float64), f1, k1_A, mdf,
                      inside, half_df, ang_rad, ph, dfilt, pl, cs_term, asin_a, has_ctf, w_full)
        real = scipy.fft.ifft2(ft, workers=fft_workers(), overwrite_x=True).real  # a view
        # copied in fftshift order (centre back at B//2), the crop's rows and columns only
        if bc == b:
            _copy_cyclic_window(real, images[s:e], ar_f)
            weights[s:e] = w_full
        else:
            _copy_cyclic_window(real, images[s:e], ar_f[o:o + bc])
            if keep:
                _copy_cyclic_window(real, full_images[s:e], ar_f)
                full_weights[s:e] = w_full
            _filter_weights(kc_A, mdf, inside, half_df, ang_rad, ph, np.ascontiguousarray(dfilt_c, np.float32), pl,
                            cs_term, asin_a, has_ctf, weights[s:e])
    uncropped = None
    if keep:
        uncropped = Subtilts(images=full_images, weights=full_weights, view_matrices=pm[:, :, :3].copy(),
                             views=views, pixel_size_A=px, defocus_A=mean_df, crop_px=bc)
    return Subtilts(images=images, weights=weights, view_matrices=pm[:, :, :3].copy(), views=views,
                    pixel_size_A=px, defocus_A=mean_df, uncropped=uncropped, cropped_from_px=None if bc == b else b)


# --------------------------------------------------------------------------------------------------------
# Fourier-space insertion and rotation
# --------------------------------------------------------------------------------------------------------


def _image_fts(images: np.ndarray, pad: int) -> np.ndarray:
    """Centred 2D transforms (…, P, P) complex64 of centred crops (…, B, B), zero-padded to P = pad·B."""
    b = images.shape[-1]
    p = pad * b
    if pad > 1:
        big = np.zeros(images.shape[:-2] + (p, p), np.float32)
        o = p // 2 - b // 2
        big[..., o:o + b, o:o + b] = images
    else:
        big = images.astype(np.float32, copy=False)
    ft = scipy.fft.fft2(scipy.fft.ifftshift(big, axes=(-2, -1)), workers=fft_workers())
    return scipy.fft.fftshift(ft, axes=(-2, -1)).astype(np.complex64)


# numba kernels of the insertion. Samples are the half plane of a slice (one of each Friedel pair; the origin
# with half its value and weight): the grids are completed by Hermitian symmetry afterwards (_hermitian_fill).


@numba.njit(cache=True, fastmath=True, parallel=True)
def _scatter_samples(acc: Any, acc_w: Any, vals: Any, ws: Any, ku: Any, kv: Any, mats: Any,
                     shifts: Any, slices: Any, scale: float, n_img: int, checkerboard: bool) -> None:
    """Trilinear scatter of slice samples into per-thread accumulators ``acc`` (T, P, P, P) complex128 and
    ``acc_w`` (T, P, P, P) float64.

    ``vals`` (S, n) complex64 and ``ws`` (S, n) float32: value and weight of sample j (integer 2D frequency
    ``(ku[j], kv[j])`` of an ``n_img``-pixel image) of slice s; ``mats`` (S, 3, 3) take the grid frame to the
    slice's (u, v, depth): the sample lands at ``scale · Mᵀ (ku, kv, 0)`` (grid index + P // 2); ``shifts``
    (S, 2) image-plane shift (px) applied as the phase ``e^{+2πi (ku su + kv sv) / n_img}``; ``slices`` the
    slices to insert. ``acc_w`` receives the weights (skipped when its first dimension is 0). ``checkerboard``:
    the data are multiplied by ``(-1)^(ix + iy + iz)`` of the grid index they land on (the centring
    modulation of :func:`_real_centre_from_half`)."""
    nt = acc.shape[0]
    p = acc.shape[1]
    h = p // 2
    n = ku.shape[0]
    kmax = n_img // 2 + 1
    with_w = acc_w.shape[0] > 0
    for t in numba.prange(nt):
        eu = np.empty(2 * kmax + 1, np.complex128)
        ev = np.empty(2 * kmax + 1, np.complex128)
        for si in range(t, slices.shape[0], nt):
            s = slices[si]
            m = mats[s]
            su, sv = shifts[s, 0], shifts[s, 1]
            for k in range(2 * kmax + 1):
                a = 2.0 * math.pi * (k - kmax) / n_img
                eu[k] = complex(math.cos(a * su), math.sin(a * su))
                ev[k] = complex(math.cos(a * sv), math.sin(a * sv))
            for j in range(n):
                w = ws[s, j]
                a, b = ku[j], kv[j]
                x = scale * (m[0, 0] * a + m[1, 0] * b) + h
                y = scale * (m[0, 1] * a + m[1, 1] * b) + h
                z = scale * (m[0, 2] * a + m[1, 2] * b) + h
                x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                v = vals[s, j] * (eu[int(a) + kmax] * ev[int(b) + kmax])
                for dz in range(2):
                    wz = fz if dz else 1.0 - fz
                    for dy in range(2):
                        wzy = wz * (fy if dy else 1.0 - fy)
                        for dx in range(2):
                            c = wzy * (fx if dx else 1.0 - fx)
                            if checkerboard and (z0 + dz + y0 + dy + x0 + dx) & 1:
                                acc[t, z0 + dz, y0 + dy, x0 + dx] -= c * v
                            else:
                                acc[t, z0 + dz, y0 + dy, x0 + dx] += c * v
                            if with_w:
                                acc_w[t, z0 + dz, y0 + dy, x0 + dx] += c * w


@numba.njit(cache=True, fastmath=True, parallel=True)
def _scatter_flat(acc: Any, stride: int, p: int, vals: Any, ws: Any, ku: Any, kv: Any, mats: Any, shifts: Any,
                  slices: Any, scale: float, n_img: int, checkerboard: bool, r2_max: float = np.inf) -> None:
    """What :func:`_scatter_samples` computes, into interleaved accumulators: ``acc`` (T, P³ · stride) float32 or
    float64, voxel ``(z, y, x)`` at ``stride · ((z P + y) P + x)`` holding the real part, the imaginary part and
    (``stride`` 3) the weight. A sample's eight corners are four runs of two x-neighbours, each run one or two
    cache lines (instead of eight scattered complex and eight scattered real updates); flat unsigned offsets
    (no index wraparound tests); the checkerboard sign is that of the first corner, flipped per step. Samples
    with ``ku² + kv² > r2_max`` (image frequencies, px⁻¹ of the ``n_img``-pixel images) are left out."""
    nt = acc.shape[0]
    h = p // 2
    n = ku.shape[0]
    kmax = n_img // 2 + 1
    st = np.uint64(stride)
    sy = np.uint64(stride * p)
    sz = np.uint64(stride * p * p)
    with_w = stride == 3
    for t in numba.prange(nt):
        a = acc[t]
        eu = np.empty(2 * kmax + 1, np.complex128)
        ev = np.empty(2 * kmax + 1, np.complex128)
        for si in range(t, slices.shape[0], nt):
            s = slices[si]
            m = mats[s]
            su, sv = shifts[s, 0], shifts[s, 1]
            for k in range(2 * kmax + 1):
                ang = 2.0 * math.pi * (k - kmax) / n_img
                eu[k] = complex(math.cos(ang * su), math.sin(ang * su))
                ev[k] = complex(math.cos(ang * sv), math.sin(ang * sv))
            mx0, mx1 = scale * m[0, 0], scale * m[1, 0]
            my0, my1 = scale * m[0, 1], scale * m[1, 1]
            mz0, mz1 = scale * m[0, 2], scale * m[1, 2]
            for j in range(n):
                ua, vb = ku[j], kv[j]
                if ua * ua + vb * vb > r2_max:
                    continue
                w = ws[s, j]
                x = mx0 * ua + mx1 * vb + h
                y = my0 * ua + my1 * vb + h
                z = mz0 * ua + mz1 * vb + h
                x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                v = vals[s, j] * (eu[int(ua) + kmax] * ev[int(vb) + kmax])
                vr, vi = v.real, v.imag
                if checkerboard and (x0 + y0 + z0) & 1:
                    vr, vi = -vr, -vi
                o = np.uint64(stride * ((z0 * p + y0) * p + x0))
                for q in range(4):
                    dz = q >> 1
                    dy = q & 1
                    wzy = (fz if dz else gz) * (fy if dy else gy)
                    sg = -1.0 if (checkerboard and (dz + dy) & 1) else 1.0
                    c0 = wzy * gx
                    c1 = wzy * fx
                    b0 = o + (sz if dz else np.uint64(0)) + (sy if dy else np.uint64(0))
                    b1 = b0 + st
                    s0 = sg * c0
                    s1 = -sg * c1 if checkerboard else sg * c1
                    a[b0] += s0 * vr
                    a[b0 + np.uint64(1)] += s0 * vi
                    a[b1] += s1 * vr
                    a[b1 + np.uint64(1)] += s1 * vi
                    if with_w:
                        a[b0 + np.uint64(2)] += c0 * w
                        a[b1 + np.uint64(2)] += c1 * w


@numba.njit(cache=True, fastmath=True, parallel=True)
def _resample_samples(acc: Any, g: Any, ws: Any, ku: Any, kv: Any, mats: Any, slices: Any, scale: float) -> None:
    """The insertion applied to a model: for every sample, ``W_j · G(q_j)`` (trilinear gather from the centred
    grid ``g`` (complex128) at the sample's position) scattered back with the same trilinear weights into
    ``acc`` (T, P, P, P) complex128. The grid frame is the model's: no shift phases."""
    nt = acc.shape[0]
    p = acc.shape[1]
    h = p // 2
    n = ku.shape[0]
    for t in numba.prange(nt):
        for si in range(t, slices.shape[0], nt):
            s = slices[si]
            m = mats[s]
            for j in range(n):
                w = ws[s, j]
                if w == 0.0:
                    continue
                a, b = ku[j], kv[j]
                x = scale * (m[0, 0] * a + m[1, 0] * b) + h
                y = scale * (m[0, 1] * a + m[1, 1] * b) + h
                z = scale * (m[0, 2] * a + m[1, 2] * b) + h
                x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                v = 0j
                for dz in range(2):
                    wz = fz if dz else 1.0 - fz
                    for dy in range(2):
                        wzy = wz * (fy if dy else 1.0 - fy)
                        for dx in range(2):
                            v += (wzy * (fx if dx else 1.0 - fx)) * g[z0 + dz, y0 + dy, x0 + dx]
                v *= w
                for dz in range(2):
                    wz = fz if dz else 1.0 - fz
                    for dy in range(2):
                        wzy = wz * (fy if dy else 1.0 - fy)
                        for dx in range(2):
                            acc[t, z0 + dz, y0 + dy, x0 + dx] += (wzy * (fx if dx else 1.0 - fx)) * v


@numba.njit(cache=True, fastmath=True, parallel=True)
def _symmetrise_points(g: Any, w: Any, ops: Any, pts: Any, out_g: Any, out_w: Any) -> None:
    """``out[n] = Σ_S grid(S p_n)`` (trilinear, centred grids; neighbours outside count as 0) for the complex
    grid ``g`` and, when ``out_w`` is not empty, the real grid ``w``. Parallel over points."""
    p = g.shape[0]
    h = p // 2
    with_w = out_w.shape[0] > 0
    for n in numba.prange(pts.shape[0]):
        px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
        acc = 0j
        accw = 0.0
        for k in range(ops.shape[0]):
            s = ops[k]
            x = s[0, 0] * px + s[0, 1] * py + s[0, 2] * pz + h
            y = s[1, 0] * px + s[1, 1] * py + s[1, 2] * pz + h
            z = s[2, 0] * px + s[2, 1] * py + s[2, 2] * pz + h
            x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
            fx, fy, fz = x - x0, y - y0, z - z0
            for dz in range(2):
                zz = z0 + dz
                if zz < 0 or zz >= p:
                    continue
                wz = fz if dz else 1.0 - fz
                for dy in range(2):
                    yy = y0 + dy
                    if yy < 0 or yy >= p:
                        continue
                    wzy = wz * (fy if dy else 1.0 - fy)
                    for dx in range(2):
                        xx = x0 + dx
                        if xx < 0 or xx >= p:
                            continue
                        c = wzy * (fx if dx else 1.0 - fx)
                        acc += c * g[zz, yy, xx]
                        if with_w:
                            accw += c * w[zz, yy, xx]
        out_g[n] = acc
        if with_w:
            out_w[n] = accw


@numba.njit(cache=True, fastmath=True, parallel=True)
def _symmetrise_flat(g: Any, stride: int, p: int, ops: Any, pts: Any, out: Any) -> None:
    """What :func:`_symmetrise_points` computes, from an interleaved grid ``g`` (P³ · stride) float64 (real part,
    imaginary part and, with ``stride`` 3, the weight of voxel ``(z, y, x)`` at ``stride · ((z P + y) P + x)``):
    ``out[n, :] = Σ_S grid(S p_n)`` (``out`` (n, stride)). The points must lie inside ``|p| < P/2 - 1`` (those
    of :func:`_half_space_points`): every rotated sample's corners are inside the grid, no bounds tests. Blocks
    of 256 points per task."""
    h = p // 2
    st = np.uint64(stride)
    sy = np.uint64(stride * p)
    sz = np.uint64(stride * p * p)
    n_p = pts.shape[0]
    n_ops = ops.shape[0]
    blk = 256
    for bi in numba.prange((n_p + blk - 1) // blk):
        for n in range(bi * blk, min(n_p, (bi + 1) * blk)):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            ar = 0.0
            ai = 0.0
            aw = 0.0
            for k in range(n_ops):
                sm = ops[k]
                x = sm[0, 0] * px + sm[0, 1] * py + sm[0, 2] * pz + h
                y = sm[1, 0] * px + sm[1, 1] * py + sm[1, 2] * pz + h
                z = sm[2, 0] * px + sm[2, 1] * py + sm[2, 2] * pz + h
                x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                o = np.uint64(stride * ((z0 * p + y0) * p + x0))
                for q in range(4):
                    dz = q >> 1
                    dy = q & 1
                    wzy = (fz if dz else gz) * (fy if dy else gy)
                    c0 = wzy * gx
                    c1 = wzy * fx
                    b0 = o + (sz if dz else np.uint64(0)) + (sy if dy else np.uint64(0))
                    b1 = b0 + st
                    ar += c0 * g[b0] + c1 * g[b1]
                    ai += c0 * g[b0 + np.uint64(1)] + c1 * g[b1 + np.uint64(1)]
                    if stride == 3:
                        aw += c0 * g[b0 + np.uint64(2)] + c1 * g[b1 + np.uint64(2)]
            out[n, 0] = ar
            out[n, 1] = ai
            if stride == 3:
                out[n, 2] = aw


@numba.njit(cache=True, fastmath=True, parallel=True)
def _symmetrise_int(g: Any, stride: int, p: int, ops: Any, pts: Any, out: Any) -> None:
    """:func:`_symmetrise_flat` for operators that map integer points to integer points (signed permutation
    matrices: the groups O, D4, C4, D2, C2, …): ``S p`` is a grid point, where trilinear sampling is the grid's
    value, so each operator costs one read per component. ``ops`` (s, 3, 3) int64, ``pts`` (n, 3) int64."""
    h = p // 2
    n_p = pts.shape[0]
    n_ops = ops.shape[0]
    blk = 512
    for bi in numba.prange((n_p + blk - 1) // blk):
        for n in range(bi * blk, min(n_p, (bi + 1) * blk)):
            px, py, pz = pts[n, 0], pts[n, 1], pts[n, 2]
            ar = 0.0
            ai = 0.0
            aw = 0.0
            for k in range(n_ops):
                sm = ops[k]
                x = sm[0, 0] * px + sm[0, 1] * py + sm[0, 2] * pz + h
                y = sm[1, 0] * px + sm[1, 1] * py + sm[1, 2] * pz + h
                z = sm[2, 0] * px + sm[2, 1] * py + sm[2, 2] * pz + h
                o = np.uint64(stride * ((z * p + y) * p + x))
                ar += g[o]
                ai += g[o + np.uint64(1)]
                if stride == 3:
                    aw += g[o + np.uint64(2)]
            out[n, 0] = ar
            out[n, 1] = ai
            if stride == 3:
                out[n, 2] = aw


@numba.njit(cache=True, parallel=True)
def _split_accumulators(acc: Any, stride: int, dg: Any, wg: Any) -> None:
    """The sum over the per-thread accumulators ``acc`` (T, N · stride) of :func:`_scatter_flat`, split into
    ``dg`` (N,) complex (real and imaginary parts) and, with ``stride`` 3, ``wg`` (N,) float: one parallel pass
    (instead of a summed copy and two strided copies, each single-threaded)."""
    nt = acc.shape[0]
    n = dg.shape[0]
    blk = 1 << 16
    for bi in numba.prange((n + blk - 1) // blk):
        for i in range(bi * blk, min(n, (bi + 1) * blk)):
            o = stride * i
            re = acc[0, o]
            im = acc[0, o + 1]
            for t in range(1, nt):
                re += acc[t, o]
                im += acc[t, o + 1]
            dg[i] = complex(re, im)
            if stride == 3:
                w = acc[0, o + 2]
                for t in range(1, nt):
                    w += acc[t, o + 2]
                wg[i] = w


def _summed(acc: np.ndarray) -> np.ndarray:
    """``acc.sum(axis=0)`` of per-thread complex accumulators (T, P, P, P) in parallel: a complex array is its
    (real, imaginary) pairs, the layout :func:`_split_accumulators` reduces."""
    t = acc.shape[0]
    out = np.empty(acc.shape[1:], acc.dtype)
    _split_accumulators(acc.reshape(t, -1).view(acc.real.dtype), 2, out.reshape(-1), np.empty(0))
    return out


@numba.njit(cache=True, parallel=True)
def _iteration_step(d: Any, ag: Any, out: Any) -> None:
    """``out = 2 D - ag`` inside ``|q| < P/2 - 1`` and ``D`` outside (:meth:`Reconstructor.corrected`; ``out``
    may be ``ag``)."""
    p = d.shape[0]
    h = p // 2
    r2 = (h - 1) * (h - 1)
    for z in numba.prange(p):
        for y in range(p):
            for x in range(p):
                if (z - h) ** 2 + (y - h) ** 2 + (x - h) ** 2 < r2:
                    out[z, y, x] = 2.0 * d[z, y, x] - ag[z, y, x]
                else:
                    out[z, y, x] = d[z, y, x]


def _n_accumulators(p: int, n_grids: int) -> int:
    """Per-thread accumulators for a scatter into ``n_grids`` float64 (P, P, P) grids: one per numba thread,
    as many as fit in about 1.5 GB."""
    per = max(1, p**3 * 8 * n_grids)
    return int(max(1, min(numba.get_num_threads(), 1_500_000_000 // per)))


def _hermitian_fill(grid: np.ndarray, conjugate: bool) -> np.ndarray:
    """``G(q) + conj(G(-q))`` (or ``W(q) + W(-q)``) of a centred grid filled from one half space, in place; index
    0 (frequency -P/2) has no partner and is left as it is (inserted samples stay inside |q| < P/2 - 1). Even
    P (every grid of this module): one parallel pass over the pairs (:func:`_hermitian_pairs`); otherwise
    :func:`_hermitian_fill_reference`."""
    g = grid
    if g.ndim == 3 and g.shape[0] == g.shape[1] == g.shape[2] and g.shape[0] % 2 == 0 and g.flags.c_contiguous:
        _hermitian_pairs(g, bool(conjugate and np.iscomplexobj(g)))
        return g
    return _hermitian_fill_reference(g, conjugate)


def _hermitian_fill_reference(grid: np.ndarray, conjugate: bool) -> np.ndarray:
    """:func:`_hermitian_fill` in numpy (the test oracle; any grid)."""
    g = grid
    part = g[1:, 1:, 1:][::-1, ::-1, ::-1]
    g[1:, 1:, 1:] += np.conj(part) if conjugate else part.copy()
    return g


@numba.njit(cache=True, parallel=True)
def _hermitian_pairs(g: Any, conjugate: bool) -> None:
    """In place, for every voxel ``i = (z, y, x)`` with all indices ≥ 1 and its mirror ``j = (P - z, P - y,
    P - x)`` of an even-sized (P, P, P) grid: ``g[i], g[j] = g[i] + c(g[j]), g[j] + c(g[i])`` (``c`` the complex
    conjugate when ``conjugate``). Plane z is done with its mirror plane P - z (z ≤ P/2; the plane P/2 with
    itself, each pair once), so the threads never share a voxel."""
    p = g.shape[0]
    h = p // 2
    for z in numba.prange(1, h + 1):
        zm = p - z
        for y in range(1, p):
            ym = p - y
            for x in range(1, p):
                xm = p - x
                if z == zm and (y > ym or (y == ym and x > xm)):
                    continue  # the central plane: this pair is done from its other voxel
                a = g[z, y, x]
                b = g[zm, ym, xm]
                if conjugate:
                    g[z, y, x] = a + b.conjugate()
                    if z != zm or y != ym or x != xm:
                        g[zm, ym, xm] = b + a.conjugate()
                else:
                    g[z, y, x] = a + b
                    if z != zm or y != ym or x != xm:
                        g[zm, ym, xm] = b + a


def _half_space_points(p: int) -> np.ndarray:
    """Integer frequency vectors (n, 3) ``(x, y, z)`` with ``|q| < P/2 - 1`` in one half space (x > 0, or x = 0
    and y > 0, or x = y = 0 and z >= 0), float64."""
    r = p // 2 - 1
    k = np.arange(-r, r + 1, dtype=np.float64)
    z, y, x = np.meshgrid(k, k, k, indexing="ij")
    sel = (x * x + y * y + z * z < r * r) & ((x > 0) | ((x == 0) & (y > 0)) | ((x == 0) & (y == 0) & (z >= 0)))
    return np.stack([x[sel], y[sel], z[sel]], axis=1)


@functools.lru_cache(maxsize=2)
def _half_space_tiles(p: int) -> np.ndarray:
    """The points of :func:`_half_space_points` (n, 3) int64, ordered by 8³ tiles of the grid (then z, y, x):
    a signed permutation maps a tile onto a tile, so the symmetrisation's reads for a block of points stay in a
    few cache lines per operator (1.7× faster at P = 256 than row order). Cached (the averaging symmetrises the
    same grid size every iteration); read-only."""
    pts = _half_space_points(p).astype(np.int64)
    t = (pts + p) // 8
    order = np.lexsort((pts[:, 0], pts[:, 1], pts[:, 2], t[:, 0], t[:, 1], t[:, 2]))
    out = np.ascontiguousarray(pts[order])
    out.flags.writeable = False
    return out


@numba.njit(cache=True, parallel=True)
def _interleave(dg: Any, wg: Any, out: Any) -> None:
    """``out[z, y, x] = (Re dg, Im dg[, wg])`` (``out`` (P, P, P, stride); ``wg`` empty when stride is 2)."""
    p = dg.shape[0]
    with_w = out.shape[3] == 3
    for z in numba.prange(p):
        for y in range(p):
            for x in range(p):
                v = dg[z, y, x]
                out[z, y, x, 0] = v.real
                out[z, y, x, 1] = v.imag
                if with_w:
                    out[z, y, x, 2] = wg[z, y, x]


@numba.njit(cache=True, parallel=True)
def _place(res: Any, pts: Any, dg: Any, wg: Any) -> None:
    """``dg[q] = res[n, 0] + i res[n, 1]`` (and ``wg[q] = res[n, 2]``) at the points ``q = pts[n] + P/2``
    (distinct points: blocks in parallel)."""
    p = dg.shape[0]
    h = p // 2
    n_p = pts.shape[0]
    with_w = res.shape[1] == 3
    blk = 4096
    for bi in numba.prange((n_p + blk - 1) // blk):
        for n in range(bi * blk, min(n_p, (bi + 1) * blk)):
            x, y, z = pts[n, 0] + h, pts[n, 1] + h, pts[n, 2] + h
            dg[z, y, x] = complex(res[n, 0], res[n, 1])
            if with_w:
                wg[z, y, x] = res[n, 2]


def symmetrise_grid(data_grid: np.ndarray, weight_grid: np.ndarray | None, operators: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """``Σ_S grid(S q)`` of a centred Hermitian data grid (P, P, P) (and of a real even weight grid) over the
    rotations ``operators`` (s, 3, 3), inside the sphere ``|q| < P/2 - 1`` (trilinear; numba, one half space
    computed and the other filled by Hermitian symmetry). The grids are read as float32 (half the memory
    traffic of this memory-bound gather; sums in float64: relative differences ~1e-7). Returns (complex128,
    float64 or None) grids."""
    p = data_grid.shape[0]
    pts = _half_space_tiles(p)
    ops = np.ascontiguousarray(operators, np.float64).reshape(-1, 3, 3)
    with_w = weight_grid is not None
    stride = 3 if with_w else 2
    g = np.empty((p, p, p, stride), np.float32)
    _interleave(np.ascontiguousarray(data_grid), np.ascontiguousarray(weight_grid) if with_w else np.empty((0, 0, 0)),
                g)
    res = np.empty((len(pts), stride))
    if np.all(np.abs(ops - np.round(ops)) < 1e-9):
        # signed permutations (O, D4, C4, …): the rotated points are grid points, no interpolation
        _symmetrise_int(g.reshape(-1), stride, p, np.round(ops).astype(np.int64), pts, res)
    else:
        _symmetrise_flat(g.reshape(-1), stride, p, ops, pts.astype(np.float64), res)
    del g
    origin = p // 2
    dg = np.zeros((p, p, p), np.complex128)
    wg = np.zeros((p, p, p)) if with_w else None
    _place(res, pts, dg, wg if with_w else np.empty((0, 0, 0)))
    dg[origin, origin, origin] *= 0.5  # the fill below adds the origin's own conjugate
    dg = _hermitian_fill(dg, True)
    if wg is not None:
        wg[origin, origin, origin] *= 0.5
        wg = _hermitian_fill(wg, False)
    return dg, wg


def kernel_transform(p: int, box: int | None = None) -> np.ndarray:
    """Real-space transform of the trilinear interpolation kernel of a centred Fourier grid of P points:
    ``Π_axes sinc²(x / P)`` at the central ``box`` (default P) voxels, ``x`` = index - box // 2 (float64). A map
    made from trilinearly gridded Fourier samples is this times the true one (the gridding correction divides
    by it)."""
    b = p if box is None else int(box)
    k = np.sinc((np.arange(b) - b // 2) / p) ** 2
    return k[:, None, None] * k[None, :, None] * k[None, None, :]


def insert_slices(
    data_grid: np.ndarray,
    weight_grid: np.ndarray,
    fts: np.ndarray,
    weights: np.ndarray,
    matrices: np.ndarray,
    *,
    scale: float = 1.0,
) -> None:
    """Add 2D central slices to centred 3D Fourier grids, in place, with trilinear weights (numba).

    ``data_grid`` (P, P, P) complex128 and ``weight_grid`` (P, P, P) float64 (centred layout, z, y, x);
    ``fts`` (s, n, n) complex centred 2D transforms; ``weights`` (s, n, n) float centred 2D weights;
    ``matrices`` (s, 3, 3) take the grid's frame to the slice's ``(u, v, depth)``: the slice sample at
    integer frequency ``(k_u, k_v)`` lands at ``scale · Mᵀ (k_u, k_v, 0)`` (``scale = P / n`` when an
    ``n``-pixel image's transform goes into a P-point grid of the same pixel size). Samples landing at
    ``|q| >= P / 2 - 1`` are skipped (within Nyquist). The data carry ``fts`` as given (already weighted by the
    caller); the weight grid receives ``weights``.
    """
    p = data_grid.shape[0]
    fts = np.asarray(fts).reshape(-1, *np.shape(fts)[-2:])
    n = fts.shape[-1]
    ku, kv, sel = _slice_samples(n, p, scale)
    vals = np.ascontiguousarray(fts.reshape(len(fts), -1)[:, sel], np.complex64)
    ws = np.ascontiguousarray(np.asarray(weights, np.float32).reshape(len(fts), -1)[:, sel])
    _halve_origin(vals, ws, ku, kv)
    mats = np.ascontiguousarray(np.asarray(matrices, np.float64).reshape(-1, 3, 3))
    dg, wg = _scatter(p, vals, ws, ku, kv, mats, np.zeros((len(mats), 2)), np.arange(len(mats)), scale, n,
                      with_weights=True)
    data_grid += dg
    weight_grid += wg


def _slice_samples(n: int, p: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The half-plane samples of an ``n``-point centred 2D transform that land inside ``|q| < P/2 - 1`` of the
    grid at ``scale``: ``(ku, kv)`` float64 integer frequencies and the flat selection (n·n,) bool."""
    k1 = np.arange(n) - n // 2
    kv, ku = np.meshgrid(k1, k1, indexing="ij")  # ku along columns
    half = (ku > 0) | ((ku == 0) & (kv >= 0))
    r_lim = (p // 2 - 1) / scale
    sel = (half & ((ku * ku + kv * kv) < r_lim * r_lim)).ravel()
    return ku.ravel()[sel].astype(np.float64), kv.ravel()[sel].astype(np.float64), sel


def _halve_origin(vals: np.ndarray, ws: np.ndarray, ku: np.ndarray, kv: np.ndarray) -> None:
    i0 = np.flatnonzero((ku == 0) & (kv == 0))
    vals[:, i0] *= 0.5
    ws[:, i0] *= 0.5


def _scatter(p: int, vals: np.ndarray, ws: np.ndarray, ku: np.ndarray, kv: np.ndarray, mats: np.ndarray,
             shifts: np.ndarray, slices: np.ndarray, scale: float, n_img: int, *, with_weights: bool,
             threads: int | None = None, complete: bool = True, checkerboard: bool = False,
             dtype: Any = np.complex128, single_accumulators: bool = False,
             r_max_px: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Scatter the chosen slices' half-plane samples (those within ``r_max_px`` of the image's centre, in
    frequency px of the ``n_img``-pixel images, when given); returns (data, weight) grids, Hermitian-complete unless
    ``complete`` is False (the weight grid is zeros without ``with_weights``). ``threads``: accumulators
    (default: one per numba thread); ``checkerboard``: see :func:`_scatter_samples`; ``dtype`` of the data
    grid (complex64 for one particle's few slices: float32 accumulators); ``single_accumulators``: float32
    accumulators for a complex128 grid too (half the memory traffic of this scattered, memory-bound insertion:
    1.4× faster on two threads for the averaging's 256³ grids; relative differences ~5e-7)."""
    nt = _n_accumulators(p, 3 if with_weights else 2) if threads is None else max(1, int(threads))
    stride = 3 if with_weights else 2
    real = np.float32 if np.dtype(dtype) == np.complex64 or single_accumulators else np.float64
    acc = np.zeros((nt, p * p * p * stride), real)
    if len(slices):
        _scatter_flat(acc, stride, p, vals, ws, ku, kv, mats, np.ascontiguousarray(shifts, np.float64),
                      np.ascontiguousarray(slices, np.int64), float(scale), int(n_img), bool(checkerboard),
                      np.inf if r_max_px is None else float(r_max_px) ** 2)
    if nt == 1 and stride == 2 and np.dtype(dtype) == np.result_type(real, np.complex64):
        # one accumulator of (real, imaginary) pairs is the complex grid itself: no copy
        dg = acc[0].view(dtype).reshape(p, p, p)
        return (_hermitian_fill(dg, True) if complete else dg), np.zeros((p, p, p))
    dg = np.empty((p, p, p), dtype)
    wg = np.empty((p, p, p)) if with_weights else np.zeros((p, p, p))
    _split_accumulators(acc, stride, dg.reshape(-1), wg.reshape(-1) if with_weights else np.empty(0))
    del acc
    if complete:
        dg = _hermitian_fill(dg, True)
        if with_weights:
            wg = _hermitian_fill(wg, False)
    return dg, wg


def _real_centre_from_half(grid: np.ndarray, b: int) -> np.ndarray:
    """The central ``b³`` voxels (centre ``b // 2``) of the real inverse transform of a centred (P, P, P)
    grid filled in one half space only and multiplied by the checkerboard ``(-1)^(i+j+k)`` (P a multiple of
    4): with ``G_full = G + conj(G(-q))`` the volume is ``2 Re IFT(G)``, and for centred input and output
    ``f_c[n] = (-1)^n IFT(F_c (-1)^i)[n]`` along each axis. The inverse transform runs axis by axis and keeps
    only the rows of the central box (a pruned transform). Overwrites ``grid``."""
    return 2.0 * _centre_of_inverse(grid, b).real


def _centre_of_inverse(grid: np.ndarray, b: int) -> np.ndarray:
    """The central ``b³`` voxels of the inverse transform of a centred (P, P, P) grid multiplied by the
    checkerboard (P a multiple of 4; complex, pruned axis by axis: see :func:`_real_centre_from_half`).
    Overwrites ``grid``."""
    p = grid.shape[0]
    if p % 4:
        raise ValueError(f"grid size {p} is not a multiple of 4")
    lo = p // 2 - b // 2
    # the contiguous axis first (on the whole grid: 15 % faster than z first for 192³ complex64)
    t = scipy.fft.ifft(grid, axis=2, workers=fft_workers(), overwrite_x=True)[:, :, lo:lo + b]
    t = scipy.fft.ifft(t, axis=1, workers=fft_workers(), overwrite_x=True)[:, lo:lo + b]
    t = scipy.fft.ifft(t, axis=0, workers=fft_workers(), overwrite_x=True)[lo:lo + b]
    sign = 1.0 - 2.0 * ((np.arange(lo, lo + b)) % 2)
    return t * (sign[:, None, None] * sign[None, :, None] * sign[None, None, :]).astype(np.float32)


@numba.njit(cache=True, fastmath=True)
def _scatter_pair_hermitian(acc: Any, p: int, vals: Any, ws: Any, ku: Any, kv: Any, mats: Any, scale: float) -> None:
    """``G_d + conj G_d(-q) + i (G_w + G_w(-q))`` of :func:`_pair_grid_reference` in one pass (one thread): every
    half-plane sample (value ``v``, weight ``w``, slices ``mats`` (k, 3, 3), no shifts) scattered trilinearly at
    its position q (``v + i w``) and at -q (``conj v + i w``) into ``acc`` (2 P³,) float32, the (real, imaginary)
    pairs of a centred (P, P, P) complex grid (P even), with the centring checkerboard ``(-1)^(i+j+k)`` of each
    corner written. The inverse transform of that grid is ``2 Re IFT(G_d) + 2 i Re IFT(G_w)``. No full-grid
    pass: the Hermitian completion of two half-space grids (:func:`_two_hermitian_grids`, a third of the
    extraction's time per particle) and the weights' own grid are not needed."""
    h = p // 2
    n = ku.shape[0]
    st = np.uint64(2)
    sy = np.uint64(2 * p)
    sz = np.uint64(2 * p * p)
    one = np.uint64(1)
    for s in range(vals.shape[0]):
        m = mats[s]
        mx0, mx1 = scale * m[0, 0], scale * m[1, 0]
        my0, my1 = scale * m[0, 1], scale * m[1, 1]
        mz0, mz1 = scale * m[0, 2], scale * m[1, 2]
        for j in range(n):
            v = vals[s, j]
            w = ws[s, j]
            ua, vb = ku[j], kv[j]
            qx = mx0 * ua + mx1 * vb
            qy = my0 * ua + my1 * vb
            qz = mz0 * ua + mz1 * vb
            for mirror in range(2):
                if mirror == 0:
                    x, y, z = h + qx, h + qy, h + qz
                    vr, vi = v.real, v.imag + w
                else:
                    x, y, z = h - qx, h - qy, h - qz
                    vr, vi = v.real, w - v.imag
                x0, y0, z0 = int(math.floor(x)), int(math.floor(y)), int(math.floor(z))
                fx, fy, fz = x - x0, y - y0, z - z0
                gx, gy, gz = 1.0 - fx, 1.0 - fy, 1.0 - fz
                if (x0 + y0 + z0) & 1:
                    vr, vi = -vr, -vi
                o = np.uint64(2 * ((z0 * p + y0) * p + x0))
                for q in range(4):
                    dz = q >> 1
                    dy = q & 1
                    wzy = (fz if dz else gz) * (fy if dy else gy)
                    c0 = wzy * gx
                    c1 = -wzy * fx
                    if (dz + dy) & 1:
                        c0, c1 = -c0, -c1
                    b0 = o + (sz if dz else np.uint64(0)) + (sy if dy else np.uint64(0))
                    b1 = b0 + st
                    acc[b0] += c0 * vr
                    acc[b0 + one] += c0 * vi
                    acc[b1] += c1 * vr
                    acc[b1 + one] += c1 * vi


def _pair_grid_reference(p: int, vals: np.ndarray, ws: np.ndarray, ku: np.ndarray, kv: np.ndarray,
                         mats: np.ndarray, scale: float) -> np.ndarray:
    """The grid of :func:`_scatter_pair_hermitian` as it was first made (its test oracle): the data and the weights
    scattered into two half-space grids (checkerboard, complex64) and completed by :func:`_two_hermitian_grids`."""
    k = len(mats)
    n_img = int(round(p / scale))
    gd, gw = (_scatter(p, v, ws, ku, kv, mats, np.zeros((k, 2)), np.arange(k), scale, n_img, with_weights=False,
                       threads=1, complete=False, checkerboard=True, dtype=np.complex64)[0]
              for v in (vals, ws.astype(np.complex64)))
    both = np.empty((p, p, p), np.complex64)
    _two_hermitian_grids(gd, gw, both)
    return both


@numba.njit(cache=True, parallel=True)
def _two_hermitian_grids(gd: Any, gw: Any, out: Any) -> None:
    """``out = (G_d + conj G_d(-q)) + i (G_w + conj G_w(-q))`` of two centred (P, P, P) grids filled in one half
    space (P even; indices 0, without a partner, as they are): the inverse transform of ``out`` is ``2 Re
    IFT(G_d) + 2 i Re IFT(G_w)``, two real volumes from one transform."""
    p = gd.shape[0]
    for z in numba.prange(p):
        zm = p - z
        for y in range(p):
            ym = p - y
            for x in range(p):
                a = gd[z, y, x]
                w = gw[z, y, x]
                if z > 0 and y > 0 and x > 0:
                    a = a + gd[zm, ym, p - x].conjugate()
                    w = w + gw[zm, ym, p - x].conjugate()
                out[z, y, x] = a + 1j * w


def backproject_subtomogram(
    images: np.ndarray, weights: np.ndarray, view_matrices: np.ndarray, *, pad: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """RELION-style 3D pseudo-subtomogram of one particle from its sub-tilts.

    ``images`` (k, B, B) CTF-premultiplied crops and ``weights`` (k, B, B) un-shifted 2D weights (one
    particle of :class:`Subtilts`), ``view_matrices`` (k, 3, 3). The 2D transforms are inserted into the 3D
    transform of the tomogram-frame box (central slices, trilinear) on a ``pad``-fold oversampled grid of
    P = pad · B points, transformed back, divided by the interpolation kernel's transform (gridding correction)
    and cropped to B: the box-sized back-projection of the crops (in the units of a B-point grid). The weights
    go through the same steps (inserted, their real-space transform gridding-corrected and cut to the box, then
    transformed to the box's grid; negative values of the box's ringing set to 0, and every voxel no slice of
    non-zero weight passes within one voxel of, the missing wedge, set to 0), so that ``data ≈ weight · F``
    holds voxel by voxel, as the refinement's scoring assumes (weights made on the box's grid by trilinear
    insertion while the data come from the oversampled grid made the refinement measurably worse).
    ``pad`` = 1: both inserted on the B-point grid. Returns ``(data, weight)``: ``data`` (B, B, B) float32 real
    space (centre ``B // 2``) and ``weight`` (B, B, B) float32 centred Fourier weights (CTF² · dose², the missing
    wedge where 0).
    """
    ims = np.asarray(images, dtype=np.float32)
    k, b = ims.shape[0], ims.shape[-1]
    p = max(1, int(pad)) * b
    mats = np.ascontiguousarray(np.asarray(view_matrices, np.float64).reshape(-1, 3, 3))
    ku, kv, sel = _slice_samples(b, p, p / b)
    vals = np.ascontiguousarray(_image_fts(ims, 1).reshape(k, -1)[:, sel])
    ws = np.ascontiguousarray(scipy.fft.fftshift(np.asarray(weights, np.float32), axes=(-2, -1)).reshape(k, -1)[:, sel])
    _halve_origin(vals, ws, ku, kv)
    if p == b:
        dg, wg = _scatter(p, vals, ws, ku, kv, mats, np.zeros((k, 2)), np.arange(k), 1.0, b, with_weights=True,
                          threads=1)
        return _centred_ifft(dg).astype(np.float32), wg.astype(np.float32)
    if p % 4:
        raise ValueError(f"the oversampled grid ({p} points) must be a multiple of 4: use an even box")
    # data and weights alike: half-plane samples scattered with the centring checkerboard, a pruned inverse
    # transform of the central box (_real_centre_from_half), the gridding correction
    corr = ((p / b) ** 3 / kernel_transform(p, b)).astype(np.float32)
    acc = np.zeros(2 * p * p * p, np.float32)
    # data + i weights, each sample at q and -q: one pruned inverse transform for both
    _scatter_pair_hermitian(acc, p, vals, ws, ku, kv, mats, p / b)
    t = _centre_of_inverse(acc.view(np.complex64).reshape(p, p, p), b) * corr
    del acc
    data, psf = t.real, t.imag
    w = np.maximum(centred_fftn(np.ascontiguousarray(psf), single=True, real=True), 0.0)  # float32: as stored
    # where no slice passes within a voxel of the box's grid (the missing wedge), the box's ringing is set to 0
    ku1, kv1, sel1 = _slice_samples(b, b, 1.0)
    w1 = np.ascontiguousarray(scipy.fft.fftshift(np.asarray(weights, np.float32), axes=(-2, -1)).reshape(k, -1)[:, sel1])
    w1 = (w1 > 0).astype(np.float32)
    _halve_origin(np.zeros(w1.shape, np.complex64), w1, ku1, kv1)
    _, reach = _scatter(b, np.zeros(w1.shape, np.complex64), w1, ku1, kv1, mats, np.zeros((k, 2)), np.arange(k), 1.0,
                        b, with_weights=True, threads=1)
    w[reach <= 0] = 0.0
    return data.astype(np.float32), w.astype(np.float32)


def _checkerboard(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """``(-1)^(i + j + …)`` over ``shape`` (one factor per axis), of ``dtype``."""
    out = np.ones((), dtype)
    for n in shape:
        c = (1 - 2 * (np.arange(n) % 2)).astype(dtype)
        out = np.multiply.outer(out, c)
    return out


def centred_fftn(x: np.ndarray, ndim: int = 3, *, inverse: bool = False, real: bool = False,
                 single: bool = False) -> np.ndarray:
    """``fftshift(fftn(ifftshift(x)))`` (``ifftn`` when ``inverse``) over the last ``ndim`` axes (centre ``N // 2``),
    without the shifts' copies when every size is even: the input and the output multiplied by the checkerboard
    ``(-1)^(i + j + k)`` (and the sign ``(-1)^(Σ N/2)``), the same transform to float rounding. ``real``: the real
    part of the result (float). Single precision stays single; ``single``: computed in single precision whatever
    the input (complex64 / float32 out: half the memory traffic, 2-3× faster for the averaging's 256³ grids;
    relative error ~1e-7, below what the float32 maps keep). A cube or a stack of cubes of even size takes one
    parallel pass in and one out (:func:`_checker_in`, :func:`_checker_out`, :func:`_checker_out_real`; no
    temporary copies); the numpy version stays for other shapes."""
    x = np.asarray(x)
    axes = tuple(range(x.ndim - ndim, x.ndim))
    shape = x.shape[-ndim:]
    fn = scipy.fft.ifftn if inverse else scipy.fft.fftn
    single = single or x.dtype in (np.float32, np.complex64)
    if (ndim == 3 and x.ndim in (3, 4) and not any(n % 2 for n in shape)
            and x.dtype in (np.float32, np.float64, np.complex64, np.complex128)):
        # a stack (m, N0, N1, N2) read as (m N0, N1, N2): the parity of m N0 + z is that of z (N0 even)
        rows = (-1, shape[1], shape[2])
        buf = np.empty(x.shape, np.complex64 if single else np.complex128)
        _checker_in(np.ascontiguousarray(x).reshape(rows), buf.reshape(rows))
        buf = fn(buf, axes=axes, workers=fft_workers(), overwrite_x=True)
        sign = -1.0 if sum(n // 2 for n in shape) % 2 else 1.0
        if real:
            out = np.empty(x.shape, np.float32 if single else np.float64)
            _checker_out_real(buf.reshape(rows), out.reshape(rows), sign)
            return out
        _checker_out(buf.reshape(rows), buf.reshape(rows), sign)
        return buf
    if single and x.dtype not in (np.float32, np.complex64):
        x = x.astype(np.float32 if x.dtype.kind == "f" else np.complex64)
    if any(n % 2 for n in shape):
        out = scipy.fft.fftshift(fn(scipy.fft.ifftshift(x, axes=axes), axes=axes, workers=fft_workers()), axes=axes)
        return out.real if real else out
    cb = _checkerboard(shape, np.float32 if single else np.float64)
    out = fn(x * cb, axes=axes, workers=fft_workers(), overwrite_x=True)
    if sum(n // 2 for n in shape) % 2:
        cb = -cb
    if real:
        res = out.real
        res *= cb
        return res
    out *= cb
    return out


@numba.njit(cache=True, parallel=True)
def _checker_in(x: Any, out: Any) -> None:
    """``out = x · (-1)^(z + y + x)`` of a 3D array into the complex ``out`` (parallel over z)."""
    n0, n1, n2 = x.shape
    for z in numba.prange(n0):
        for y in range(n1):
            sg = 1.0 - 2.0 * ((z + y) & 1)
            for i in range(n2):
                out[z, y, i] = x[z, y, i] * (sg if i % 2 == 0 else -sg)


@numba.njit(cache=True, parallel=True)
def _checker_out(x: Any, out: Any, sign: float) -> None:
    """``out = sign · x · (-1)^(z + y + x)`` of a complex 3D array into complex ``out`` (may be ``x``; parallel
    over z)."""
    n0, n1, n2 = x.shape
    for z in numba.prange(n0):
        for y in range(n1):
            sg = sign * (1.0 - 2.0 * ((z + y) & 1))
            for i in range(n2):
                out[z, y, i] = x[z, y, i] * (sg if i % 2 == 0 else -sg)


@numba.njit(cache=True, parallel=True)
def _checker_out_real(x: Any, out: Any, sign: float) -> None:
    """The real part of :func:`_checker_out` into float ``out``."""
    n0, n1, n2 = x.shape
    for z in numba.prange(n0):
        for y in range(n1):
            sg = sign * (1.0 - 2.0 * ((z + y) & 1))
            for i in range(n2):
                out[z, y, i] = x[z, y, i].real * (sg if i % 2 == 0 else -sg)


def _centred_ifft(grid: np.ndarray) -> np.ndarray:
    return centred_fftn(grid, inverse=True, real=True)


def _centred_fft(vol: np.ndarray) -> np.ndarray:
    return centred_fftn(vol)


def _crop_centre(vol: np.ndarray, b: int) -> np.ndarray:
    p = vol.shape[0]
    if p == b:
        return vol
    o = p // 2 - b // 2
    return vol[o:o + b, o:o + b, o:o + b]


def _pad_centre(vol: np.ndarray, p: int) -> np.ndarray:
    b = vol.shape[0]
    if p == b:
        return vol
    out = np.zeros((p, p, p), vol.dtype)
    o = p // 2 - b // 2
    out[o:o + b, o:o + b, o:o + b] = vol
    return out


def _trilinear_centred(grid: np.ndarray, qx: np.ndarray, qy: np.ndarray, qz: np.ndarray) -> np.ndarray:
    """Trilinear samples of a centred grid at frequency coordinates (index units from the centre); 0
    outside."""
    p = grid.shape[0]
    h = p // 2
    x, y, z = qx + h, qy + h, qz + h
    x0, y0, z0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64), np.floor(z).astype(np.int64)
    fx, fy, fz = x - x0, y - y0, z - z0
    inside = (x0 >= 0) & (x0 < p - 1) & (y0 >= 0) & (y0 < p - 1) & (z0 >= 0) & (z0 < p - 1)
    x0, y0, z0 = np.where(inside, x0, 0), np.where(inside, y0, 0), np.where(inside, z0, 0)
    flat = grid.reshape(-1)
    base = (z0 * p + y0) * p + x0
    out = np.zeros(x.shape, grid.dtype)
    for dz, wz in ((0, 1.0 - fz), (1, fz)):
        for dy, wy in ((0, 1.0 - fy), (1, fy)):
            for dx, wx in ((0, 1.0 - fx), (1, fx)):
                out += flat[base + (dz * p + dy) * p + dx] * (wz * wy * wx)
    return np.where(inside, out, 0)


def rotate_fourier(grid: np.ndarray, rotations: np.ndarray) -> np.ndarray:
    """``Σ_s grid(S_s q)`` for a centred Fourier grid (P, P, P) and rotations ``S`` (s, 3, 3) (or (3, 3)).

    For ``grid`` = FT of a map ``f``, ``grid(S q)`` is the FT of ``x -> f(S x)``: with ``S = R`` of
    ``x_tomogram = R x_reference`` it brings a tomogram-frame subtomogram into the reference frame; with the
    symmetry operators it symmetrises (a sum, not a mean). Trilinear interpolation; the result is computed
    inside the sphere ``|q| < P / 2`` only (0 in the corners).
    """
    g = np.asarray(grid)
    p = g.shape[0]
    k1 = (np.arange(p) - p // 2).astype(np.float64)
    z, y, x = np.meshgrid(k1, k1, k1, indexing="ij")
    # only the sphere |q| < P/2 (what a map uses; the corners have no rotated partner inside the grid)
    inside = (x * x + y * y + z * z) < (p // 2) ** 2
    x, y, z = x[inside], y[inside], z[inside]
    acc = np.zeros(x.shape, g.dtype)
    for s in np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3):
        qx = s[0, 0] * x + s[0, 1] * y + s[0, 2] * z
        qy = s[1, 0] * x + s[1, 1] * y + s[1, 2] * z
        qz = s[2, 0] * x + s[2, 1] * y + s[2, 2] * z
        acc += _trilinear_centred(g, qx, qy, qz)
    out = np.zeros(g.shape, g.dtype)
    out[inside] = acc
    return out


# --------------------------------------------------------------------------------------------------------
# Averages
# --------------------------------------------------------------------------------------------------------


def fourier_to_map(
    data_grid: np.ndarray, weight_grid: np.ndarray, box: int, *, wiener_constant: Any = None,
    regularisation: float = 0.01, kernel_correction: bool | None = None,
) -> np.ndarray:
    """CTF-corrected map from summed centred Fourier grids: ``IFT[data / (weight + τ)]`` cropped to ``box``.

    ``τ = wiener_constant`` when given (in the weights' units; ``1/SNR`` per unit weight): a number, or an array
    of the grid's shape (a per-voxel term, e.g. :func:`ssnr_wiener_term`), else ``regularisation ×
    mean(weight)`` over the voxels inside the Nyquist sphere. ``kernel_correction`` (default: when the grid is
    larger than ``box``, i.e. oversampled by trilinear insertion): the real-space result is divided by the
    trilinear kernel's transform (:func:`kernel_transform`, the gridding correction). Returns (box, box, box)
    float32, centre ``box // 2``.
    """
    p = data_grid.shape[0]
    if wiener_constant is None:
        tau: Any = max(float(regularisation) * float(weight_grid[_inside_sphere(p)].mean()), 1e-12)
    elif np.ndim(wiener_constant) == 0:
        tau = max(float(wiener_constant), 1e-12)
    else:
        tau = np.maximum(np.asarray(wiener_constant, dtype=np.float64), 1e-12)
    vol = _crop_centre(centred_fftn(wiener_divide(data_grid, weight_grid, tau), inverse=True, real=True,
                                    single=True), box)
    if kernel_correction if kernel_correction is not None else p > box:
        vol = vol / kernel_transform(p, box)
    return vol.astype(np.float32)


def wiener_divide(data_grid: np.ndarray, weight_grid: np.ndarray, tau: Any) -> np.ndarray:
    """``D / (W + τ)`` inside ``|q| < P/2 - 1`` and 0 outside (:func:`_inside_sphere`), complex64 (P, P, P), for
    centred grids ``data_grid`` (complex) and ``weight_grid`` (real) and ``τ`` a number or a (P, P, P) grid: one
    parallel pass (:func:`_wiener_divide`); the numpy expression is the test oracle."""
    d = np.ascontiguousarray(data_grid)
    w = np.ascontiguousarray(weight_grid)
    t = np.ascontiguousarray(tau, np.float64) if np.ndim(tau) else np.full((1, 1, 1), float(tau))
    if d.ndim != 3 or w.shape != d.shape or (t.shape != d.shape and t.shape != (1, 1, 1)):
        raise ValueError(f"wiener_divide: grids {d.shape}, {w.shape} and tau {np.shape(tau)} do not match")
    out = np.empty(d.shape, np.complex64)
    _wiener_divide(d, w, t, out)
    return out


@numba.njit(cache=True, parallel=True)
def _wiener_divide(d: Any, w: Any, t: Any, out: Any) -> None:
    p = d.shape[0]
    h = p // 2
    r2 = (h - 1) * (h - 1)
    scalar = t.shape[0] == 1
    for z in numba.prange(p):
        for y in range(p):
            for x in range(p):
                if (z - h) ** 2 + (y - h) ** 2 + (x - h) ** 2 < r2:
                    tau = t[0, 0, 0] if scalar else t[z, y, x]
                    out[z, y, x] = d[z, y, x] / (w[z, y, x] + tau)
                else:
                    out[z, y, x] = 0


def _inside_sphere(p: int) -> np.ndarray:
    """(P, P, P) bool: the voxels of a centred grid with ``|q| < P/2 - 1``."""
    k1 = np.arange(p) - p // 2
    r2 = k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2
    return r2 < (p // 2 - 1) ** 2


def ssnr_wiener_term(weight_grid: np.ndarray, fsc_curve: Any, box: int, *, merged: bool = False,
                     floor: float = 1e-4) -> np.ndarray:
    """Per-voxel Wiener term ``τ(k) = ⟨W⟩_k / SSNR(k)`` of a centred weight grid (P, P, P) from an FSC curve.

    RELION's regularisation: in a shell where the two half maps agree (FSC near 1) the signal is well
    measured, so the summed CTF² weights are divided out almost exactly, even near the CTF zeros where the
    weights are small; where the FSC falls, τ grows and the shell is suppressed. ``fsc_curve``: FSC per shell
    of the ``box``-sized maps (index = shell radius in voxels of ``box``); for a half map ``SSNR = FSC / (1 −
    FSC)``, for the ``merged`` map of both halves ``FSC' = 2 FSC / (1 + FSC)`` replaces the FSC. ``⟨W⟩_k``
    is the mean weight of shell k of the grid (P may be an oversampled ``pad · box``). A floor of ``floor ×
    mean(weight)`` keeps empty voxels finite. Returns float64 (P, P, P).
    """
    w = np.ascontiguousarray(weight_grid, dtype=np.float64)
    p = w.shape[0]
    h = p // 2
    n_shells = int(np.rint(math.sqrt(3.0) * h)) + 1  # the corner voxel's shell, and below
    sums, counts, in_sum, in_count = _shell_sums(w, n_shells)
    mean_w = sums / np.maximum(counts, 1)
    f = np.asarray(fsc_curve, dtype=np.float64)
    x = np.arange(n_shells) * (box / p)  # shell radius in voxels of the box-sized maps
    fk = np.interp(x, np.arange(f.size), f, right=0.0)
    if merged:
        fk = 2.0 * fk / (1.0 + np.maximum(fk, 0.0))
    fk = np.clip(fk, 1e-3, 0.999)
    tau_k = mean_w * (1.0 - fk) / fk
    floor_abs = floor * in_sum / in_count if in_count else 0.0
    out = np.empty((p, p, p))
    _fill_shells(np.maximum(tau_k, max(floor_abs, 1e-12)), out)
    return out


@numba.njit(cache=True)
def _shell_sums(w: Any, n_shells: int) -> tuple[Any, Any, float, int]:
    """Per shell ``rint(|q|)`` of a centred (P, P, P) grid: the sum of ``w`` and the voxel count; and the sum
    and count inside ``|q| < P/2 - 1`` (:func:`ssnr_wiener_term`; one pass, no index grids)."""
    p = w.shape[0]
    h = p // 2
    sums = np.zeros(n_shells)
    counts = np.zeros(n_shells, np.int64)
    in_sum = 0.0
    in_count = 0
    lim = float(h - 1)
    for z in range(p):
        for y in range(p):
            r2zy = float((z - h) ** 2 + (y - h) ** 2)
            for x in range(p):
                r = math.sqrt(r2zy + (x - h) ** 2)
                k = int(np.rint(r))
                sums[k] += w[z, y, x]
                counts[k] += 1
                if r < lim:
                    in_sum += w[z, y, x]
                    in_count += 1
    return sums, counts, in_sum, in_count


@numba.njit(cache=True, parallel=True)
def _fill_shells(values: Any, out: Any) -> None:
    """``out[q] = values[rint(|q|)]`` over a centred (P, P, P) grid (parallel over z)."""
    p = out.shape[0]
    h = p // 2
    for z in numba.prange(p):
        for y in range(p):
            r2zy = float((z - h) ** 2 + (y - h) ** 2)
            for x in range(p):
                out[z, y, x] = values[int(np.rint(math.sqrt(r2zy + (x - h) ** 2)))]


def _orientations(orientations: Any, m: int) -> np.ndarray:
    r = np.asarray(orientations, dtype=np.float64)
    if r.shape == (m, 3):
        from tomoguide.compute.euler import euler_to_matrix

        r = euler_to_matrix(r)
    if r.shape != (m, 3, 3):
        raise ValueError(f"orientations must be (m, 3, 3) matrices or (m, 3) Euler angles, got {r.shape}")
    return r


class Reconstructor:
    """Sub-tilts of many particles ready for repeated reconstructions in the reference frame, on an oversampled
    Fourier grid (RELION 5's reconstruction from 2D sub-tilt stacks, with a gridding correction).

    ``subtilts``: one :class:`Subtilts` or a list (several tilt series; same particle box and image size); the
    particles are numbered in the order of the list. Their uncropped sub-tilts (``.uncropped``, the images
    at the extraction box E before the crop) are used when present: the crop after the CTF premultiplication
    cuts off part of the CTF's delocalised signal (most at the CTF's zeros, where the local half of ``CTF²·F``
    survives the crop but the weight says 0), so the weights no longer describe cropped data; the
    reconstruction crops only the final, CTF-corrected map. Grid: ``P = pad · box`` points (at least E), the
    E-pixel images' transforms inserted at ``P / E`` times their integer frequencies.

    Each sub-tilt's 2D transform is computed once: the samples of one half plane (Hermitian symmetry gives the
    other) inside ``|q| < P/2 - 1`` are kept with their ``CTF² · dose²`` weights. :meth:`grids` scatters them
    (trilinear, numba) for given poses; :meth:`corrected` removes the bias of trilinear gridding where the
    weights change fast (the CTF's rise at low frequency and its zeros: the ``Σ c W F / Σ c W`` of a voxel is
    the weighted mean of F over samples pulled towards the larger weights) by one step of iterative
    reconstruction: with ``G₀`` the current estimate (divided by the kernel's transform squared and limited
    to the box of the images, so that trilinear sampling of it is exact), ``A G₀`` the same insertion applied
    to ``G₀`` sampled at every sample's position, the data grid becomes ``2 D - A G₀`` (``A G₀ = D`` when
    the gridding is exact); :meth:`reconstruct` chains them with :func:`fourier_to_map` (gridding correction).

    Memory: 12 bytes per kept sample, about ``0.4 E²`` samples per sub-tilt (the images are not kept).
    """

    def __init__(self, subtilts: Subtilts | Sequence[Subtilts], *, pad: int = 2, chunk: int = 64) -> None:
        sets = [subtilts] if isinstance(subtilts, Subtilts) else list(subtilts)
        if not sets:
            raise ValueError("no sub-tilts to reconstruct from")
        use = [st.uncropped if st.uncropped is not None else st for st in sets]
        box = sets[0].box
        e = use[0].image_px
        for st, u in zip(sets, use, strict=True):
            if st.box != box or u.image_px != e:
                raise ValueError(f"all sub-tilt sets must have the same box ({st.box} vs {box}) and image size "
                                 f"({u.image_px} vs {e})")
        p = max(1, int(pad)) * box
        if p < e:
            p = e + (e % 2)
        self.box, self.image_px, self.grid_size = int(box), int(e), int(p)
        self.pad = max(1, int(pad))
        # the data are what the weights describe unless they were cropped after the CTF premultiplication
        self.consistent = all(u.cropped_from_px is None for u in use)
        self.scale = p / e
        self.pixel_size_A = float(sets[0].pixel_size_A)
        self._ku, self._kv, _ = _slice_samples(e, p, self.scale)
        rows = self._kv.astype(np.int64) % e
        cols = self._ku.astype(np.int64)
        at_rfft = rows * (e // 2 + 1) + cols  # the samples in the un-shifted half spectrum of rfft2
        at_full = rows * e + cols  # and in the un-shifted (E, E) weights
        n_slices = sum(u.images.shape[0] * u.images.shape[1] for u in use)
        n = self._ku.size
        self._vals = np.empty((n_slices, n), np.complex64)
        self._ws = np.empty((n_slices, n), np.float32)
        self._views = np.empty((n_slices, 3, 3))
        self._particle = np.empty(n_slices, np.int64)
        self._weight_sums: np.ndarray | None = None
        jobs = []  # (set, first particle in the set, particles, first slice, first particle overall)
        s0 = 0
        i0 = 0
        for u in use:
            m, k = u.images.shape[:2]
            for a in range(0, m, chunk):
                c = min(m, a + chunk) - a
                jobs.append((u, a, c, s0, i0 + a))
                s0 += c * k
            i0 += m
        self.n_particles = i0

        def prepare(job: tuple[Subtilts, int, int, int, int]) -> None:
            u, a, c, s, i = job
            k = u.images.shape[1]
            ims = to_float32(u.images[a:a + c]).reshape(c * k, e, e)  # float16 files: a table, not numpy's loop
            fts = scipy.fft.rfft2(scipy.fft.ifftshift(ims, axes=(-2, -1)), workers=fft_workers()).reshape(c * k, -1)
            self._vals[s:s + c * k] = fts[:, at_rfft]
            self._ws[s:s + c * k] = to_float32(u.weights[a:a + c]).reshape(c * k, -1)[:, at_full]
            self._views[s:s + c * k] = np.tile(np.asarray(u.view_matrices, np.float64), (c, 1, 1))
            self._particle[s:s + c * k] = np.repeat(np.arange(i, i + c), k)

        # chunks on the thread budget's threads (each its own slices; the FFTs, casts and gathers free the GIL)
        map_threads(prepare, jobs)
        _halve_origin(self._vals, self._ws, self._ku, self._kv)

    @property
    def corrects_by_default(self) -> bool:
        """Whether :meth:`reconstruct` applies :meth:`corrected` by default: oversampled grid and sub-tilts not
        cropped after the CTF premultiplication."""
        return self.grid_size > self.box and self.consistent

    def _slices(self, select: Any) -> np.ndarray:
        if select is None:
            return np.arange(len(self._particle))
        sel = np.asarray(select)
        mask = np.zeros(self.n_particles, bool)
        mask[np.flatnonzero(sel) if sel.dtype == bool else sel.astype(np.int64)] = True
        return np.flatnonzero(mask[self._particle])

    def _matrices(self, rotations: Any) -> np.ndarray:
        rot = _orientations(rotations, self.n_particles)
        return np.ascontiguousarray(np.einsum("sij,sjl->sil", self._views, rot[self._particle]))

    def grids(self, rotations: Any, shifts_px: np.ndarray | None = None, select: Any = None, *,
              symmetry: str = "C1", max_shell: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Summed centred Fourier grids (P, P, P) ``(data complex128, weights float64)`` of the particles
        ``select`` (indices or a boolean mask over all particles; None: all) in the reference frame.

        ``rotations`` (m, 3, 3) ``R`` of ``x_tomogram = R x_reference + t`` (or (m, 3) RELION Euler angles) and
        ``shifts_px`` (m, 3) ``t`` in px of the sub-tilts (tomogram frame; None: 0) for all m particles;
        symmetrised over ``symmetry``'s operators (a sum). ``max_shell``: only the samples that reach the
        voxels within this many shells of the box's grid (frequency ``max_shell / (box · pixel)``; the grid is
        then exact within it, and partial or zero beyond): for a map that is low-passed there anyway."""
        slices = self._slices(select)
        mats = self._matrices(rotations)
        if shifts_px is None:
            sh2 = np.zeros((len(mats), 2))
        else:
            t = np.asarray(shifts_px, np.float64).reshape(self.n_particles, 3)
            sh2 = np.einsum("sij,sj->si", self._views, t[self._particle])[:, :2]
        r_px = None
        if max_shell is not None:
            # a sample reaches the grid points within √3 grid spacings of its position (trilinear)
            r_px = float(max_shell) * self.image_px / self.box + math.sqrt(3.0) / self.scale
        dg, wg = _scatter(self.grid_size, self._vals, self._ws, self._ku, self._kv, mats, sh2, slices, self.scale,
                          self.image_px, with_weights=True, single_accumulators=True, r_max_px=r_px)
        ops = symmetry_matrices(symmetry)
        if ops.shape[0] > 1:
            dg, wg = symmetrise_grid(dg, wg, ops)
        return dg, wg

    def total_weight(self, select: Any = None, *, symmetry: str = "C1") -> float:
        """The sum of the weight grid that :meth:`grids` makes of the particles ``select`` (every sample, whatever
        ``max_shell``): each half-plane sample's weight twice (itself and its Friedel mate; trilinear insertion
        keeps the sum), once per symmetry operator (the symmetrisation drops what lands at the grid's edge:
        ~0.1 % more than the grid holds for O)."""
        if self._weight_sums is None:
            self._weight_sums = self._ws.sum(axis=1, dtype=np.float64)
        n_ops = symmetry_matrices(symmetry).shape[0]
        return 2.0 * n_ops * float(self._weight_sums[self._slices(select)].sum())

    def corrected(self, data_grid: np.ndarray, weight_grid: np.ndarray, tau: Any, rotations: Any, select: Any = None,
                  *, symmetry: str = "C1") -> np.ndarray:
        """The data grid of :meth:`grids` with the bias of trilinear gridding removed (one step of iterative
        reconstruction, see the class docstring): ``2 D - A G₀`` with ``G₀`` from ``D / (W + tau)`` (``tau``
        the Wiener term, a number or a grid). Same particles, poses and symmetry as the grids."""
        p = self.grid_size
        est = centred_fftn(wiener_divide(data_grid, weight_grid, tau), inverse=True, real=True, single=True)
        sup = min(self.image_px, (3 * p) // 4)
        sup -= sup % 2
        g0 = centred_fftn(_pad_centre(_crop_centre(est, sup) / kernel_transform(p, sup) ** 2, p), single=True)
        nt = _n_accumulators(p, 2)
        acc = np.zeros((nt, p, p, p), np.complex64)  # single precision: half the memory traffic
        slices = self._slices(select)
        if len(slices):
            _resample_samples(acc, g0, self._ws, self._ku, self._kv, self._matrices(rotations), slices, self.scale)
        ag = _hermitian_fill(acc[0] if nt == 1 else _summed(acc), True)
        del acc
        ops = symmetry_matrices(symmetry)
        if ops.shape[0] > 1:
            ag, _ = symmetrise_grid(ag, None, ops)
        out = np.empty((p, p, p), np.complex128)
        _iteration_step(np.asarray(data_grid, np.complex128), ag, out)
        return out

    def reconstruct(self, rotations: Any, shifts_px: np.ndarray | None = None, select: Any = None, *,
                    symmetry: str = "C1", wiener_constant: Any = None, regularisation: float = 0.01,
                    correct: bool | None = None, return_grids: bool = False) -> Any:
        """CTF-corrected (box, box, box) float32 map of the particles ``select`` (see :meth:`grids`):
        ``IFT[D / (W + τ)]`` divided by the kernel's transform and cropped, ``τ`` as in :func:`fourier_to_map`;
        ``correct`` (default: on an oversampled grid, from sub-tilts not cropped after the CTF premultiplication,
        whose weights describe them: cropped ones are better left uncorrected) applies :meth:`corrected` first.
        With ``return_grids``:
        ``(map, data_grid, weight_grid)`` (the data grid corrected)."""
        dg, wg = self.grids(rotations, shifts_px, select, symmetry=symmetry)
        tau = wiener_term(wg, wiener_constant, regularisation)
        if correct if correct is not None else self.corrects_by_default:
            dg = self.corrected(dg, wg, tau, rotations, select, symmetry=symmetry)
        vol = fourier_to_map(dg, wg, self.box, wiener_constant=tau)
        return (vol, dg, wg) if return_grids else vol


def wiener_term(weight_grid: np.ndarray, wiener_constant: Any = None, regularisation: float = 0.01) -> Any:
    """The ``τ`` of :func:`fourier_to_map`: ``wiener_constant`` (a number or a grid), else ``regularisation ×
    mean(weight)`` inside the Nyquist sphere."""
    if wiener_constant is None:
        inside = _inside_sphere(weight_grid.shape[0])
        return max(float(regularisation) * float(weight_grid[inside].mean()), 1e-12)
    if np.ndim(wiener_constant) == 0:
        return max(float(wiener_constant), 1e-12)
    return np.maximum(np.asarray(wiener_constant, dtype=np.float64), 1e-12)


def reconstruct_average(
    subtilts: Subtilts | Sequence[Subtilts],
    orientations: Any,
    *,
    symmetry: str = "C1",
    pad: int = 2,
    wiener_constant: float | None = None,
    regularisation: float = 0.01,
    return_grids: bool = False,
    shifts_px: np.ndarray | None = None,
    correct: bool | None = None,
) -> Any:
    """CTF-corrected average of particles from their sub-tilts, inserted directly in the reference frame.

    ``subtilts``: one :class:`Subtilts` or a list (several tilt series; same box); ``orientations``:
    (m_total, 3, 3) matrices ``R`` with ``x_tomogram = R x_reference`` (or (m_total, 3) RELION Euler angles
    in degrees), in the order of the particles; ``shifts_px`` (m_total, 3) ``t`` in px (None: 0). Each sub-tilt
    slice goes to ``q_ref = (M_v R)ᵀ (k_u, k_v, 0)`` on a ``pad``-fold oversampled grid (the uncropped
    sub-tilts when kept); the sums are symmetrised over ``symmetry``'s operators, corrected for the gridding
    bias (``correct``, default when oversampled) and divided: ``map = IFT[Σ data / (Σ weight + τ)]`` divided by
    the kernel's transform and cropped to the box (:class:`Reconstructor`, :func:`fourier_to_map`).
    Returns the (B, B, B) float32 map (centre B // 2), or ``(map, data_grid, weight_grid)`` with
    ``return_grids`` (the symmetrised centred (P, P, P) grids, for FSC weighting or further sums).
    """
    rec = Reconstructor(subtilts, pad=pad)
    return rec.reconstruct(orientations, shifts_px, None, symmetry=symmetry, wiener_constant=wiener_constant,
                           regularisation=regularisation, correct=correct, return_grids=return_grids)


def _finish(dg: np.ndarray, wg: np.ndarray, b: int, symmetry: str, wiener_constant: float | None,
            regularisation: float, return_grids: bool) -> Any:
    sym = symmetry_matrices(symmetry)
    if sym.shape[0] > 1:
        dg, wg = symmetrise_grid(dg, wg, sym)
    vol = fourier_to_map(dg, wg, b, wiener_constant=wiener_constant, regularisation=regularisation)
    return (vol, dg, wg) if return_grids else vol


def average_from_subtomograms(
    data_volumes: Sequence[np.ndarray] | np.ndarray,
    weight_volumes: Sequence[np.ndarray] | np.ndarray,
    orientations: Any,
    *,
    symmetry: str = "C1",
    wiener_constant: float | None = None,
    regularisation: float = 0.01,
    return_grids: bool = False,
) -> Any:
    """CTF-corrected average from 3D pseudo-subtomograms (:func:`backproject_subtomogram`'s output).

    ``data_volumes`` (m, B, B, B) real space, ``weight_volumes`` (m, B, B, B) centred Fourier weights,
    ``orientations`` as in :func:`reconstruct_average`. Each particle's transform and weights are rotated into
    the reference frame (``F_ref(q) = F_tomo(R q)``, trilinear on the box's grid), summed and symmetrised, then
    divided (:func:`fourier_to_map`). Less exact than :func:`reconstruct_average` (one more interpolation, on
    the box's grid) but needs only the stored volumes.
    """
    m = len(data_volumes)
    rots = _orientations(orientations, m)
    b = np.asarray(data_volumes[0]).shape[0]
    p = np.asarray(weight_volumes[0]).shape[0]
    dg = np.zeros((p, p, p), np.complex128)
    wg = np.zeros((p, p, p))
    for d, w, r in zip(data_volumes, weight_volumes, rots, strict=True):
        ft = _centred_fft(_pad_centre(np.asarray(d, np.float64), p))
        dg += rotate_fourier(ft, r)
        wg += rotate_fourier(np.asarray(w, np.float64), r)
    return _finish(dg, wg, b, symmetry, wiener_constant, regularisation, return_grids)


def rescale_map(vol: np.ndarray, voxel_in_A: float, voxel_out_A: float, box: int) -> np.ndarray:
    """A cubic map (centre ``n // 2``) resampled from ``voxel_in_A`` to ``voxel_out_A`` by Fourier cropping
    (an integer ratio ``voxel_out / voxel_in`` ≥ 1), then cut or zero-padded to ``box`` with its centre at
    ``box // 2``. The map is first padded about its centre to a multiple of the ratio so that the pixel size
    ratio is exact. Values are kept (a local average, not a sum). Returns float32 (box, box, box).
    """
    v = np.asarray(vol, dtype=np.float64)
    ratio = float(voxel_out_A) / float(voxel_in_A)
    f = int(round(ratio))
    if f < 1 or abs(ratio - f) > 1e-6:
        raise ValueError(f"voxel ratio {ratio:g} must be an integer >= 1")
    n = v.shape[0]
    n2 = -(-n // f) * f
    if n2 != n:
        big = np.zeros((n2,) * 3)
        o = n2 // 2 - n // 2
        big[o:o + n, o:o + n, o:o + n] = v
        v = big
    mm = n2 // f
    if f > 1:
        ft = _centred_fft(v)
        c = n2 // 2
        sl = slice(c - mm // 2, c - mm // 2 + mm)
        v = _centred_ifft(ft[sl, sl, sl]) / f**3
    out = np.zeros((box,) * 3, np.float32)
    c_in, c_out = mm // 2, box // 2
    lo, hi = max(0, c_in - c_out), min(mm, c_in - c_out + box)
    d0 = lo - (c_in - c_out)
    out[d0:d0 + hi - lo, d0:d0 + hi - lo, d0:d0 + hi - lo] = v[lo:hi, lo:hi, lo:hi]
    return out


def pseudo_subtomograms(subtilts: Subtilts, *, pad: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """3D pseudo-subtomograms of all particles of ``subtilts`` (:func:`backproject_subtomogram` in a loop).

    Returns ``(data (m, B, B, B) float32`` real space, centre ``B // 2``, tomogram frame; ``weights (m, B, B,
    B) float32`` centred Fourier CTF² · dose² weights)``: the input of
    :func:`tomoguide.compute.refine.auto_refine` and :func:`tomoguide.compute.initial_model.initial_model`.
    """
    m, b = subtilts.images.shape[0], subtilts.box
    if subtilts.crop_px and subtilts.crop_px != subtilts.image_px:
        raise ValueError("pseudo-subtomograms are made from cropped sub-tilts")
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    for i in range(m):
        data[i], weights[i] = backproject_subtomogram(subtilts.images[i], subtilts.weights[i],
                                                      subtilts.view_matrices, pad=pad)
    return data, weights
