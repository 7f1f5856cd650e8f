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

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft

from tomoguide.compute.ctf import electron_wavelength_A
from tomoguide.compute.dose import attenuation
from tomoguide.compute.symmetry import symmetry_matrices

__all__ = [
    "ViewCTF",
    "Subtilts",
    "extract_subtilts",
    "insert_slices",
    "backproject_subtomogram",
    "rotate_fourier",
    "reconstruct_average",
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
    """

    images: np.ndarray
    weights: np.ndarray
    view_matrices: np.ndarray
    views: np.ndarray
    pixel_size_A: float
    defocus_A: np.ndarray

    @property
    def box(self) -> int:
        return int(self.images.shape[-1])


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
    a = float(amplitude_contrast)
    return (-(math.sqrt(1.0 - a * a) * np.sin(chi) + a * np.cos(chi))).astype(np.float32)


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
    the cropped grid's frequencies; None keeps ``box_px``. Returns :class:`Subtilts` (box = the cropped size).
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
    sub = st[views].astype(np.float32)
    mu = sub.mean(axis=(1, 2), keepdims=True)
    sd = sub.std(axis=(1, 2), keepdims=True)
    sub = (sub - mu) / np.where(sd > 0, sd, 1.0)
    padded = np.zeros((k, ny + 2 * b, nx + 2 * b), np.float32)
    padded[:, b:b + ny, b:b + nx] = sub
    del sub

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
    ar = np.arange(b)
    for s in range(0, m, chunk):
        e = min(m, s + chunk)
        u = uvd[:, s:e, 0].T  # (c, k)
        v = uvd[:, s:e, 1].T
        iu, iv = np.rint(u).astype(np.int64), np.rint(v).astype(np.int64)
        fu, fv = u - iu, v - iv
        inside = (iu >= 0) & (iu < nx) & (iv >= 0) & (iv < ny)
        x0 = np.clip(iu - b // 2 + b, 0, nx + b)
        y0 = np.clip(iv - b // 2 + b, 0, ny + b)
        rows = y0[:, :, None, None] + ar[None, None, :, None]
        cols = x0[:, :, None, None] + ar[None, None, None, :]
        vv = np.broadcast_to(np.arange(k)[None, :, None, None], rows.shape)
        crops = padded[vv, rows, cols]  # (c, k, B, B)
        ft = scipy.fft.fft2(scipy.fft.ifftshift(crops, axes=(-2, -1)), workers=-1)
        # move the particle centre from B//2 + frac to B//2 exactly: shift by -frac
        ft *= np.exp(2j * np.pi * (fx[None, None] * fu[:, :, None, None] + fy[None, None] * fv[:, :, None, None]))
        if ctf is not None:
            c = _ctf_stack(kx_A, ky_A, mean_df[s:e], 0.5 * (du - dv), ang, ph,
                           voltage_kV=geometry.optics.voltage_kV, cs_mm=geometry.optics.cs_mm,
                           amplitude_contrast=geometry.optics.amplitude_contrast)
            filt = c * dfilt[None]
        else:
            filt = np.broadcast_to(dfilt[None], ft.shape)
        filt = filt * inside[:, :, None, None]
        ft *= filt
        ft[:, :, 0, 0] = 0.0
        full = scipy.fft.fftshift(scipy.fft.ifft2(ft, workers=-1).real, axes=(-2, -1))
        if bc == b:
            images[s:e] = full
            weights[s:e] = filt * filt
        else:
            images[s:e] = full[:, :, o:o + bc, o:o + bc]
            if ctf is not None:
                cc_ = _ctf_stack(kxc_A, kyc_A, mean_df[s:e], 0.5 * (du - dv), ang, ph,
                                 voltage_kV=geometry.optics.voltage_kV, cs_mm=geometry.optics.cs_mm,
                                 amplitude_contrast=geometry.optics.amplitude_contrast)
                fc = cc_ * dfilt_c[None]
            else:
                fc = np.broadcast_to(dfilt_c[None], (e - s, k, bc, bc))
            fc = fc * inside[:, :, None, None]
            weights[s:e] = fc * fc
    return Subtilts(images=images, weights=weights, view_matrices=pm[:, :, :3].copy(), views=views,
                    pixel_size_A=px, defocus_A=mean_df)


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
    ft = scipy.fft.fft2(scipy.fft.ifftshift(big, axes=(-2, -1)), workers=-1)
    return scipy.fft.fftshift(ft, axes=(-2, -1)).astype(np.complex64)


def _upsample_weights(weights: np.ndarray, pad: int) -> np.ndarray:
    """Centred 2D weights (…, P, P) from un-shifted (…, B, B) ones, nearest-neighbour in frequency."""
    w = scipy.fft.fftshift(weights, axes=(-2, -1))
    if pad == 1:
        return w.astype(np.float32)
    b = weights.shape[-1]
    p = pad * b
    idx = np.clip(np.rint((np.arange(p) - p // 2) / pad).astype(np.int64) + b // 2, 0, b - 1)
    return w[..., idx[:, None], idx[None, :]].astype(np.float32)


def insert_slices(
    data_grid: np.ndarray,
    weight_grid: np.ndarray,
    fts: np.ndarray,
    weights: np.ndarray,
    matrices: np.ndarray,
) -> None:
    """Add 2D central slices to centred 3D Fourier grids, in place, with trilinear weights.

    ``data_grid`` (P, P, P) complex128 and ``weight_grid`` (P, P, P) float64 (centred layout, z, y, x);
    ``fts`` (s, P, P) complex centred 2D transforms; ``weights`` (s, P, P) float centred 2D weights;
    ``matrices`` (s, 3, 3) take the grid's frame to the slice's ``(u, v, depth)``: the slice sample at
    integer frequency ``(k_u, k_v)`` lands at ``Mᵀ (k_u, k_v, 0)``. Samples with ``|k| >= P / 2 - 1`` are
    skipped (within Nyquist). The data carry ``fts`` as given (already weighted by the caller); the weight
    grid receives ``weights``.
    """
    p = data_grid.shape[0]
    h = p // 2
    k1 = np.arange(p) - h
    ku, kv = np.meshgrid(k1, k1)  # (P, P): ku along columns
    sel = (ku * ku + kv * kv) < (h - 1) ** 2
    ku, kv = ku[sel].astype(np.float64), kv[sel].astype(np.float64)
    n_s = ku.size
    mats = np.asarray(matrices, dtype=np.float64).reshape(-1, 3, 3)
    fts_s = np.asarray(fts).reshape(-1, p, p)[:, sel]
    w_s = np.asarray(weights, dtype=np.float32).reshape(-1, p, p)[:, sel]
    flat_d_re = np.zeros(p**3)
    flat_d_im = np.zeros(p**3)
    flat_w = np.zeros(p**3)
    per = max(1, _CHUNK_SAMPLES // max(n_s, 1))
    for s in range(0, mats.shape[0], per):
        e = min(mats.shape[0], s + per)
        mt = mats[s:e]
        # q = M^T (ku, kv, 0): components x, y, z (c, n_s)
        qx = mt[:, 0, 0, None] * ku + mt[:, 1, 0, None] * kv + h
        qy = mt[:, 0, 1, None] * ku + mt[:, 1, 1, None] * kv + h
        qz = mt[:, 0, 2, None] * ku + mt[:, 1, 2, None] * kv + h
        x0, y0, z0 = np.floor(qx), np.floor(qy), np.floor(qz)
        fx, fy, fz = qx - x0, qy - y0, qz - z0
        base = ((z0.astype(np.int64) * p + y0.astype(np.int64)) * p + x0.astype(np.int64)).ravel()
        fx, fy, fz = fx.ravel(), fy.ravel(), fz.ravel()
        d = fts_s[s:e].ravel()
        dre, dim = d.real.astype(np.float64), d.imag.astype(np.float64)
        w = w_s[s:e].ravel().astype(np.float64)
        for dz, wz in ((0, 1.0 - fz), (1, fz)):
            for dy, wy in ((0, 1.0 - fy), (1, fy)):
                wzy = wz * wy
                for dx, wx in ((0, 1.0 - fx), (1, fx)):
                    c = wzy * wx
                    idx = base + ((dz * p + dy) * p + dx)
                    flat_d_re += np.bincount(idx, weights=dre * c, minlength=p**3)
                    flat_d_im += np.bincount(idx, weights=dim * c, minlength=p**3)
                    flat_w += np.bincount(idx, weights=w * c, minlength=p**3)
    data_grid += (flat_d_re + 1j * flat_d_im).reshape(p, p, p)
    weight_grid += flat_w.reshape(p, p, p)


def backproject_subtomogram(
    images: np.ndarray, weights: np.ndarray, view_matrices: np.ndarray, *, pad: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """RELION-style 3D pseudo-subtomogram of one particle from its sub-tilts.

    ``images`` (k, B, B) CTF-premultiplied crops and ``weights`` (k, B, B) un-shifted 2D weights (one
    particle of :class:`Subtilts`), ``view_matrices`` (k, 3, 3). The 2D transforms are inserted into the
    3D transform of the tomogram-frame box (central slices, trilinear), ``pad``-fold oversampled.
    Returns ``(data, weight)``: ``data`` (B, B, B) float32 real-space pseudo-subtomogram (centre
    ``B // 2``; the inverse transform of the inserted data, cropped back to B when padded) and ``weight``
    (P, P, P) float32 centred Fourier weights (CTF² · dose², the missing wedge where 0), P = pad · B.
    """
    ims = np.asarray(images, dtype=np.float32)
    b = ims.shape[-1]
    p = pad * b
    dg = np.zeros((p, p, p), np.complex128)
    wg = np.zeros((p, p, p))
    insert_slices(dg, wg, _image_fts(ims, pad), _upsample_weights(np.asarray(weights), pad), view_matrices)
    vol = _centred_ifft(dg)
    return _crop_centre(vol, b).astype(np.float32), wg.astype(np.float32)


def _centred_ifft(grid: np.ndarray) -> np.ndarray:
    return scipy.fft.fftshift(scipy.fft.ifftn(scipy.fft.ifftshift(grid), workers=-1).real)


def _centred_fft(vol: np.ndarray) -> np.ndarray:
    return scipy.fft.fftshift(scipy.fft.fftn(scipy.fft.ifftshift(vol), workers=-1))


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
    regularisation: float = 0.01,
) -> np.ndarray:
    """CTF-corrected map from summed centred Fourier grids: ``IFT[data / (weight + τ)]`` cropped to ``box``.

    ``τ = wiener_constant`` when given (in the weights' units; ``1/SNR`` per unit weight): a number, or an array
    of the grid's shape (a per-voxel term, e.g. :func:`ssnr_wiener_term`), else ``regularisation ×
    mean(weight)`` over the voxels inside the Nyquist sphere. Returns (box, box, box) float32, centre
    ``box // 2``.
    """
    p = data_grid.shape[0]
    k1 = np.arange(p) - p // 2
    r2 = k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2
    inside = r2 < (p // 2 - 1) ** 2
    if wiener_constant is None:
        tau: Any = max(float(regularisation) * float(weight_grid[inside].mean()), 1e-12)
    elif np.ndim(wiener_constant) == 0:
        tau = max(float(wiener_constant), 1e-12)
    else:
        tau = np.maximum(np.asarray(wiener_constant, dtype=np.float64), 1e-12)
    f = np.where(inside, data_grid / (weight_grid + tau), 0)
    return _crop_centre(_centred_ifft(f), box).astype(np.float32)


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
    w = np.asarray(weight_grid, dtype=np.float64)
    p = w.shape[0]
    k1 = np.arange(p) - p // 2
    r = np.sqrt(k1[:, None, None] ** 2 + k1[None, :, None] ** 2 + k1[None, None, :] ** 2)
    shell = np.rint(r).astype(np.int64)
    n_shells = int(shell.max()) + 1
    counts = np.bincount(shell.ravel(), minlength=n_shells)
    mean_w = np.bincount(shell.ravel(), weights=w.ravel(), minlength=n_shells) / np.maximum(counts, 1)
    f = np.asarray(fsc_curve, dtype=np.float64)
    x = np.arange(n_shells) * (box / p)  # shell radius in voxels of the box-sized maps
    fk = np.interp(x, np.arange(f.size), f, right=0.0)
    if merged:
        fk = 2.0 * fk / (1.0 + np.maximum(fk, 0.0))
    fk = np.clip(fk, 1e-3, 0.999)
    tau_k = mean_w * (1.0 - fk) / fk
    inside = r < (p // 2 - 1)
    floor_abs = floor * float(w[inside].mean()) if inside.any() else 0.0
    return np.maximum(tau_k[shell], max(floor_abs, 1e-12))


def _orientations(orientations: Any, m: int) -> np.ndarray:
    r = np.asarray(orientations, dtype=np.float64)
    if r.shape == (m, 3):
        from tomoguide.compute.euler import euler_to_matrix

        r = euler_to_matrix(r)
    if r.shape != (m, 3, 3):
        raise ValueError(f"orientations must be (m, 3, 3) matrices or (m, 3) Euler angles, got {r.shape}")
    return r


def reconstruct_average(
    subtilts: Subtilts | Sequence[Subtilts],
    orientations: Any,
    *,
    symmetry: str = "C1",
    pad: int = 1,
    wiener_constant: float | None = None,
    regularisation: float = 0.01,
    return_grids: bool = False,
) -> Any:
    """CTF-corrected average of particles from their sub-tilts, inserted directly in the reference frame.

    ``subtilts``: one :class:`Subtilts` or a list (several tilt series; same box); ``orientations``:
    (m_total, 3, 3) matrices ``R`` with ``x_tomogram = R x_reference`` (or (m_total, 3) RELION Euler angles
    in degrees), in the order of the particles. Each sub-tilt slice goes to ``q_ref = (M_v R)ᵀ (k_u, k_v,
    0)``; the sums are symmetrised over ``symmetry``'s operators, then ``map = IFT[Σ data / (Σ weight +
    τ)]`` (:func:`fourier_to_map`; ``pad``-fold oversampled insertion, map cropped to B).
    Returns the (B, B, B) float32 map (centre B // 2), or ``(map, data_grid, weight_grid)`` with
    ``return_grids`` (the symmetrised centred grids, for FSC weighting or further sums).
    """
    sets = [subtilts] if isinstance(subtilts, Subtilts) else list(subtilts)
    b = sets[0].box
    p = pad * b
    m_total = sum(s.images.shape[0] for s in sets)
    rots = _orientations(orientations, m_total)
    dg = np.zeros((p, p, p), np.complex128)
    wg = np.zeros((p, p, p))
    i = 0
    for s in sets:
        m, k = s.images.shape[:2]
        if s.box != b:
            raise ValueError("all sub-tilt sets must have the same box")
        r = rots[i:i + m]
        i += m
        mats = np.einsum("kij,mjl->mkil", s.view_matrices, r)  # (m, k, 3, 3): M_v R
        step = max(1, 8 // max(1, pad * pad))
        for a in range(0, m, step):
            e = min(m, a + step)
            insert_slices(dg, wg, _image_fts(s.images[a:e], pad), _upsample_weights(s.weights[a:e], pad),
                          mats[a:e].reshape(-1, 3, 3))
    return _finish(dg, wg, b, symmetry, wiener_constant, regularisation, return_grids)


def _finish(dg: np.ndarray, wg: np.ndarray, b: int, symmetry: str, wiener_constant: float | None,
            regularisation: float, return_grids: bool) -> Any:
    sym = symmetry_matrices(symmetry)
    if sym.shape[0] > 1:
        dg = rotate_fourier(dg, sym)
        wg = rotate_fourier(wg, sym)
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

    ``data_volumes`` (m, B, B, B) real space, ``weight_volumes`` (m, P, P, P) centred Fourier weights
    (P = pad · B), ``orientations`` as in :func:`reconstruct_average`. Each particle's transform and
    weights are rotated into the reference frame (``F_ref(q) = F_tomo(R q)``, trilinear), summed and
    symmetrised, then divided (:func:`fourier_to_map`). Less exact than :func:`reconstruct_average` (one
    more interpolation) but needs only the stored volumes.
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


def pseudo_subtomograms(subtilts: Subtilts, *, pad: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """3D pseudo-subtomograms of all particles of ``subtilts`` (:func:`backproject_subtomogram` in a loop).

    Returns ``(data (m, B, B, B) float32`` real space, centre ``B // 2``, tomogram frame; ``weights (m, P, P,
    P) float32`` centred Fourier CTF² · dose² weights, P = pad · B)``: the input of
    :func:`tomoguide.compute.refine.auto_refine` and :func:`tomoguide.compute.initial_model.initial_model`
    (with ``pad`` = 1).
    """
    m, b = subtilts.images.shape[0], subtilts.box
    p = pad * b
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, p, p, p), np.float32)
    for i in range(m):
        data[i], weights[i] = backproject_subtomogram(subtilts.images[i], subtilts.weights[i],
                                                      subtilts.view_matrices, pad=pad)
    return data, weights
