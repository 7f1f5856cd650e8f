"""Noise-free (or noisy) sub-tilts of a known map for the averaging tests (test_sta.py, test_refine.py,
test_initial_model.py), made as a microscope and the extraction make them, independently of the module's insertion:

* physics: the map's projection in every view (:class:`tomoguide.compute.simulate.FourierProjector`, its own
  gridding-corrected Fourier slices) on a field of ``phys`` pixels, multiplied by the CTF (``ctf_2d``) and the
  exposure filter (``dose_filter``) of the view, plus white noise;
* extraction (as :func:`tomoguide.compute.sta.extract_subtilts` does it): the ``ext``-pixel box around the particle
  multiplied by the CTF and the exposure filter again (RELION's premultiplication), its zero frequency removed,
  then cropped to the particle's ``box``; weights ``(CTF · D)²`` on the cropped grid, and on the box grid for the
  sub-tilts before the crop (``.uncropped``).

Views: tilts about the y axis (``M_v = R_y(θ)``), dose-symmetric order; one defocus for every view and particle
unless ``defocus_spread_A``.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.fft

from tomoguide.compute import sta
from tomoguide.compute.ctf import ctf_2d
from tomoguide.compute.dose import dose_filter
from tomoguide.compute.simulate import FourierProjector


def tilt_matrix(deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def make_subtilts(ref: np.ndarray, px: float, rots: np.ndarray, *, ext: int, phys: int,
                  tilts: np.ndarray | None = None, defocus_A: float = 40000.0, dose_e_A2: float = 3.0,
                  defocus_spread_A: float = 0.0, noise: float = 0.0, rng: np.random.Generator | None = None,
                  shifts_px: np.ndarray | None = None) -> sta.Subtilts:
    """Sub-tilts (m, k, B, B) of ``ref`` (B, B, B), voxel ``px`` Å, in the poses ``rots`` (m, 3, 3) and
    ``shifts_px`` (m, 3) (``x_tomogram = R x_reference + t``, px; default 0: the particle at the box centre),
    cropped from ``ext``-pixel extraction boxes, with ``.uncropped`` (m, k, ext, ext). ``noise``: standard
    deviation of the white noise added per pixel of the physics' field, relative to the standard deviation of the
    noise-free view over the central ``ext`` pixels."""
    b = ref.shape[0]
    rng = np.random.default_rng(0) if rng is None else rng
    tilts = np.arange(-60.0, 61.0, 3.0) if tilts is None else np.asarray(tilts, np.float64)
    k, m = tilts.size, len(rots)
    order = np.argsort(np.argsort(np.abs(tilts), kind="stable"), kind="stable")
    big = np.zeros((phys,) * 3)
    o = phys // 2 - b // 2
    big[o:o + b, o:o + b, o:o + b] = ref
    proj = FourierProjector(big, px, pad=2)
    mats = np.stack([tilt_matrix(t) for t in tilts])
    dfs = np.full((m, k), float(defocus_A))
    if defocus_spread_A:
        dfs += rng.uniform(-defocus_spread_A, defocus_spread_A, (m, 1))
    images = np.zeros((m, k, b, b), np.float32)
    weights = np.zeros((m, k, b, b), np.float32)
    full_images = np.zeros((m, k, ext, ext), np.float32)
    full_weights = np.zeros((m, k, ext, ext), np.float32)
    oe, oc = phys // 2 - ext // 2, ext // 2 - b // 2
    for v in range(k):
        prior = dose_e_A2 * order[v]
        d_phys = dose_filter((phys, phys), px, prior, dose_e_A2)
        d_ext = dose_filter((ext, ext), px, prior, dose_e_A2)
        d_box = dose_filter((b, b), px, prior, dose_e_A2)
        for i in range(m):
            t = np.zeros(3) if shifts_px is None else mats[v] @ np.asarray(shifts_px[i], np.float64)
            f = scipy.fft.fft2(scipy.fft.ifftshift(proj.project(mats[v] @ rots[i], (t[0], t[1]))))
            f *= ctf_2d((phys, phys), px, dfs[i, v], dfs[i, v], 0.0) * d_phys
            if noise:
                clean = scipy.fft.fftshift(scipy.fft.ifft2(f).real)[oe:oe + ext, oe:oe + ext]
                f += noise * float(clean.std()) * scipy.fft.fft2(rng.normal(size=(phys, phys)))
            img = scipy.fft.fftshift(scipy.fft.ifft2(f).real)[oe:oe + ext, oe:oe + ext]
            filt = ctf_2d((ext, ext), px, dfs[i, v], dfs[i, v], 0.0) * d_ext
            g = scipy.fft.fft2(scipy.fft.ifftshift(img)) * filt
            g[0, 0] = 0.0
            full = scipy.fft.fftshift(scipy.fft.ifft2(g).real)
            full_images[i, v] = full
            full_weights[i, v] = filt * filt
            images[i, v] = full[oc:oc + b, oc:oc + b]
            weights[i, v] = (ctf_2d((b, b), px, dfs[i, v], dfs[i, v], 0.0) * d_box) ** 2
    uncropped = sta.Subtilts(images=full_images, weights=full_weights, view_matrices=mats, views=np.arange(k),
                             pixel_size_A=px, defocus_A=dfs, crop_px=b)
    return sta.Subtilts(images=images, weights=weights, view_matrices=mats, views=np.arange(k), pixel_size_A=px,
                        defocus_A=dfs, uncropped=uncropped, cropped_from_px=ext if ext != b else None)


def radial_profile(vol: np.ndarray) -> np.ndarray:
    """Mean of a cubic map (centre ``n // 2``) over shells of integer radius (voxels) about its centre."""
    n = vol.shape[0]
    c = np.arange(n) - n // 2
    r = np.rint(np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)).astype(np.int64)
    return np.bincount(r.ravel(), vol.ravel()) / np.maximum(np.bincount(r.ravel()), 1)
