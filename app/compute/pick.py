"""Automatic particle picking: templates, fast local normalised cross-correlation (template matching),
peak picking with a minimum distance, a threshold suggestion, and matching picks against a known truth.

Conventions
-----------
* Volumes are arrays ``(nz, ny, nx)``; a voxel ``[z, y, x]`` has its centre at the coordinate ``(x, y, z)``
  (0-based, corner origin), the convention of :class:`tomoguide.compute.io.coords.ParticleTable`.
* A template is a cube ``(b, b, b)`` with its centre at voxel ``b // 2`` on every axis (the convention of
  maps, RELION's and ``truth/apoferritin.mrc``). Templates hold POSITIVE density (protein bright).
* Sign: in our tomograms particles are DARK (the reconstruction is the negative of the Coulomb potential,
  :func:`tomoguide.truth.tomogram_correlation`). :func:`template_match` therefore negates the tomogram when
  ``particles_dark=True`` (the default), so that templates stay positive and a particle gives a positive score.
* Orientations: RELION ZYZ Euler angles in degrees (:mod:`tomoguide.compute.euler`), ``A`` maps reference to
  specimen coordinates, ``x_specimen = A @ x_reference + t``; the template rotated by ``A`` is
  ``T_A(x) = T(A^T x)`` (about the template centre).
* Missing wedge: with the tilt axis along y and "+tilt moves +z towards +x" (:mod:`tomoguide.geometry`), the
  view at tilt ``β`` measures the Fourier plane spanned by ``k_y`` and ``(cos β, 0, sin β)`` in ``(k_x, k_z)``;
  a Fourier voxel is measured when ``atan2(k_z, k_x)`` (folded into (-90°, 90°]) lies within the tilt range.

Method
------
Fast local normalised cross-correlation (Roseman 2003, Ultramicroscopy 94:225; as in PyTom and GAPSTOP):
with a spherical mask ``M`` of ``N`` voxels and a template ``T`` normalised under the mask
(zero mean, unit variance inside ``M``, zero outside), the score at voxel ``v`` is::

    ncc(v) = Σ_u V(v + u) T(u) / (N σ_M(v)),   σ_M(v)² = (V² ⋆ M)(v) / N - ((V ⋆ M)(v) / N)²

where ``⋆`` is a cross-correlation computed by FFT; ``σ_M`` is computed once (the mask is a sphere, so it is
invariant under rotation) and each rotation costs one forward and one inverse FFT. The tomogram is padded
by half the template box with its mean so that correlations do not wrap around the edges. ``ncc`` is in
[-1, 1]: 1 for a perfect (affine) match under the mask.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage
import scipy.optimize
import scipy.spatial
from numpy.typing import ArrayLike, NDArray

from .backend import fft, to_numpy, xp_of
from .euler import euler_to_matrix, matrix_to_euler
from .rescale import fourier_bin
from .symmetry import symmetry_matrices

__all__ = [
    "shell_template", "reference_template", "spherical_mask", "missing_wedge_mask", "angle_sampling", "template_match",
    "TemplateMatchResult", "pick_peaks", "score_histogram", "suggest_threshold", "SpecimenSlab", "find_specimen_slab",
    "NoiseModel", "fit_noise_model", "ThresholdChoice", "automatic_threshold", "register_translation",
    "match_to_truth",
]


# --------------------------------------------------------------------------------------------------- templates
def _radius_grid(box: int) -> NDArray[np.float64]:
    """Distance (px) of every voxel of a ``box``³ cube from its centre ``box // 2``."""
    c = box // 2
    g = np.arange(box, dtype=np.float64) - c
    return np.sqrt(g[:, None, None] ** 2 + g[None, :, None] ** 2 + g[None, None, :] ** 2)


def shell_template(radius_outer_A: float, radius_inner_A: float, voxel_A: float, box: int) -> NDArray[np.float32]:
    """A spherical shell (``radius_inner_A`` = 0: a solid sphere) of unit density, float32 ``(box, box, box)``,
    centre at ``box // 2``, edges anti-aliased linearly over one voxel (partial-volume approximation).

    For apoferritin (outer radius ≈ 62 Å, cavity radius ≈ 40 Å) at 12 Å voxels use e.g. (62, 40, 12, 16).
    """
    if radius_outer_A <= 0 or radius_inner_A < 0 or radius_inner_A >= radius_outer_A:
        raise ValueError("need 0 <= radius_inner_A < radius_outer_A")
    r = _radius_grid(box)
    ro, ri = radius_outer_A / voxel_A, radius_inner_A / voxel_A
    outer = np.clip(ro - r + 0.5, 0.0, 1.0)
    inner = np.clip(r - ri + 0.5, 0.0, 1.0) if ri > 0 else 1.0
    return (outer * inner).astype(np.float32)


def spherical_mask(box: int, radius_px: float) -> NDArray[np.float32]:
    """Binary sphere (1 inside, radius ``radius_px`` about ``box // 2``), float32 ``(box, box, box)``."""
    return (_radius_grid(box) <= radius_px).astype(np.float32)


def reference_template(volume: ArrayLike, map_voxel_A: float, voxel_A: float, box: int) -> NDArray[np.float32]:
    """A reference map (cube, centre at ``n // 2``, voxel ``map_voxel_A``) resampled by Fourier cropping to
    ``voxel_A`` (≥ ``map_voxel_A``) and cut or zero-padded to ``(box, box, box)`` with its centre at ``box // 2``
    (a sub-voxel Fourier shift corrects the half-voxel difference between the ``n // 2`` and ``(n - 1) / 2``
    conventions of :func:`tomoguide.compute.rescale.fourier_bin`). Density keeps the map's sign (positive)."""
    vol = np.asarray(to_numpy(volume), dtype=np.float32)
    if vol.ndim != 3 or len(set(vol.shape)) != 1:
        raise ValueError(f"reference map must be a cube, got shape {vol.shape}")
    n = vol.shape[0]
    factor = voxel_A / map_voxel_A
    if factor < 1 - 1e-6:
        raise ValueError("reference_template only downsamples (voxel_A >= map_voxel_A)")
    small = fourier_bin(vol, factor, ndim=3) if abs(factor - 1) > 1e-6 else vol
    m = small.shape[0]
    centre = (m - 1) / 2.0 + (n // 2 - (n - 1) / 2.0) / factor  # where the map centre n // 2 landed
    out = np.zeros((box, box, box), np.float32)
    # integer placement, then the fractional remainder by a Fourier shift
    offset = box // 2 - centre
    ioff = int(math.floor(offset))
    src, dst = [], []
    for _ in range(3):
        a, b = max(0, -ioff), min(m, box - ioff)
        src.append(slice(a, b))
        dst.append(slice(a + ioff, b + ioff))
    out[tuple(dst)] = small[tuple(src)]
    frac = offset - ioff
    if abs(frac) > 1e-6:
        spec = scipy.ndimage.fourier_shift(scipy.fft.fftn(out), (frac, frac, frac))
        out = np.real(scipy.fft.ifftn(spec)).astype(np.float32)
    return out


# --------------------------------------------------------------------------------------------------- rotations
def _so3_grid(step_deg: float) -> NDArray[np.float64]:
    """Roughly uniform rotations of SO(3): Fibonacci-sphere directions ~``step_deg`` apart × in-plane angles
    every ~``step_deg``; RELION Euler angles (n, 3) in degrees."""
    step = math.radians(step_deg)
    n_dir = max(1, int(math.ceil(4 * math.pi / step**2)))
    i = np.arange(n_dir) + 0.5
    tilt = np.degrees(np.arccos(1 - 2 * i / n_dir))
    rot = np.degrees(np.pi * (1 + 5**0.5) * i) % 360.0
    n_psi = max(1, int(math.ceil(360.0 / step_deg)))
    psi = np.arange(n_psi) * (360.0 / n_psi)
    ang = np.stack(np.broadcast_arrays(rot[:, None], tilt[:, None], psi[None, :]), axis=-1).reshape(-1, 3)
    return ang


def angle_sampling(angular_step_deg: float, symmetry: str = "C1") -> NDArray[np.float64]:
    """Rotations covering SO(3) modulo the point group ``symmetry`` (an asymmetric-unit sampling) at about
    ``angular_step_deg``: a greedy selection from a finer SO(3) grid that keeps a rotation only if it is at least
    ``angular_step_deg`` (geodesic angle, minimised over ``A S`` for S in the group) from every rotation kept.
    Returns RELION Euler angles (n, 3) in degrees; the first is the identity."""
    sym = symmetry_matrices(symmetry)
    cand = euler_to_matrix(_so3_grid(angular_step_deg / 1.5))
    cand = np.concatenate([np.eye(3)[None], cand])
    cos_lim = math.cos(math.radians(angular_step_deg))
    kept: list[NDArray[np.float64]] = []
    kept_sym = np.empty((0, 3, 3))  # every kept rotation times every symmetry element
    for a in cand:
        if len(kept_sym):
            # angle between a and K S: trace(a^T K S) = 1 + 2 cos(angle)
            tr = np.einsum("ij,kij->k", a, kept_sym)
            if ((tr - 1) / 2).max() > cos_lim:
                continue
        kept.append(a)
        kept_sym = np.concatenate([kept_sym, a[None] @ sym])
    return matrix_to_euler(np.stack(kept))


def _rotate_template(template: NDArray[np.float32], matrix: NDArray[np.float64]) -> NDArray[np.float32]:
    """``T_A(x) = T(A^T x)`` about the centre ``b // 2`` (trilinear), matrices in (x, y, z) order."""
    b = template.shape[0]
    c = np.full(3, b // 2, dtype=np.float64)
    inv_zyx = matrix.T[::-1, ::-1]  # A^T in (z, y, x) index order
    offset = c - inv_zyx @ c
    return scipy.ndimage.affine_transform(template, inv_zyx, offset=offset, order=1, mode="constant", cval=0.0
                                          ).astype(np.float32)


# --------------------------------------------------------------------------------------------------- filters
def _fourier_radius(shape: tuple[int, int, int], xp: Any) -> tuple[Any, Any, Any]:
    """(|k|, k_x, k_z) in cycles/voxel on an rfftn grid of ``shape`` (z, y, x)."""
    kz = xp.asarray(scipy.fft.fftfreq(shape[0]))[:, None, None]
    ky = xp.asarray(scipy.fft.fftfreq(shape[1]))[None, :, None]
    kx = xp.asarray(scipy.fft.rfftfreq(shape[2]))[None, None, :]
    return xp.sqrt(kz**2 + ky**2 + kx**2), kx, kz


def missing_wedge_mask(shape: tuple[int, int, int], tilt_range_deg: tuple[float, float], *, xp: Any = np) -> Any:
    """Boolean ``(nz, ny, nx // 2 + 1)`` mask on the rfftn grid of a volume ``shape`` (z, y, x): True where the
    tilt series measured the Fourier component. Tilt axis along y, "+tilt moves +z towards +x"
    (:mod:`tomoguide.geometry`): the view at tilt ``β`` measures the plane spanned by ``k_y`` and
    ``(k_x, k_z) ∝ (cos β, sin β)``, so a component is measured when ``atan2(k_z, k_x)``, folded into
    [-90°, 90°), lies in ``[min, max]`` of ``tilt_range_deg``; the origin and the ``k_y`` axis always are."""
    k, kx, kz = _fourier_radius(shape, xp)
    lo, hi = sorted(float(a) for a in tilt_range_deg)
    ang = xp.degrees(xp.arctan2(kz, kx + 0 * kz))
    ang = (ang + 90.0) % 180.0 - 90.0  # a direction and its opposite (Friedel mates) are the same line
    on_axis = (kx + 0 * kz == 0) & (kz + 0 * kx == 0)
    return (ang >= lo - 1e-6) & (ang <= hi + 1e-6) | xp.broadcast_to(on_axis, k.shape)


def _filter(shape: tuple[int, int, int], voxel_A: float, lowpass_A: float | None, highpass_A: float | None,
            tilt_range_deg: tuple[float, float] | None, xp: Any) -> Any | None:
    """Real rfftn-grid filter: cosine-edged band-pass (edges 1/(box) wide … in cycles/Å) × missing-wedge mask;
    ``None`` when nothing is asked."""
    if lowpass_A is None and highpass_A is None and tilt_range_deg is None:
        return None
    k, kx, kz = _fourier_radius(shape, xp)
    k_A = k / voxel_A
    w = xp.ones(k.shape, dtype=xp.float32)
    edge = 1.0 / (max(shape) * voxel_A)  # one Fourier pixel, cycles/Å
    if lowpass_A is not None:
        f = 1.0 / lowpass_A
        t = xp.clip((k_A - f) / edge + 0.5, 0.0, 1.0)
        w = w * (0.5 + 0.5 * xp.cos(np.pi * t))
    if highpass_A is not None:
        f = 1.0 / highpass_A
        t = xp.clip((f - k_A) / edge + 0.5, 0.0, 1.0)
        w = w * (0.5 + 0.5 * xp.cos(np.pi * t))
    if tilt_range_deg is not None:
        w = w * missing_wedge_mask(shape, tilt_range_deg, xp=xp).astype(xp.float32)
    return w


# --------------------------------------------------------------------------------------------------- matching
@dataclass
class TemplateMatchResult:
    """Output of :func:`template_match`.

    * ``score``: float32 ``(nz, ny, nx)``, the best local NCC over the rotations at every voxel (template centre
      on that voxel), in [-1, 1].
    * ``angle_index``: int32 ``(nz, ny, nx)``, index into ``angles_deg`` of the best rotation.
    * ``angles_deg``: float64 ``(n, 3)`` RELION Euler angles searched (one row of zeros for a sphere template).
    * ``mask_radius_px``: radius of the spherical mask used for the local normalisation.
    """

    score: Any
    angle_index: Any
    angles_deg: NDArray[np.float64]
    mask_radius_px: float


def _correlate(vol_ft: Any, kernel: Any, shape: tuple[int, int, int], xp: Any) -> Any:
    """Cross-correlation ``c[v] = Σ_u V[v + u] K[c + u]`` of a volume (given as its rfftn) with a cube ``K`` whose
    centre ``c = b // 2`` lands on ``v``; ``shape`` = padded volume shape."""
    f = fft(xp)
    b = kernel.shape[0]
    pad = xp.zeros(shape, dtype=xp.float32)
    pad[:b, :b, :b] = kernel
    pad = xp.roll(pad, (-(b // 2),) * 3, axis=(0, 1, 2))
    return f.irfftn(vol_ft * xp.conj(f.rfftn(pad)), s=shape)


def template_match(
    tomogram: Any,
    template: Any,
    *,
    angles_deg: ArrayLike | None = None,
    symmetry: str = "O",
    angular_step_deg: float | None = None,
    mask_radius_px: float | None = None,
    tilt_range_deg: tuple[float, float] | None = None,
    lowpass_A: float | None = None,
    highpass_A: float | None = None,
    voxel_A: float = 1.0,
    particles_dark: bool = True,
) -> TemplateMatchResult:
    """Template matching by fast local normalised cross-correlation (module docstring).

    * ``tomogram``: ``(nz, ny, nx)`` (numpy or cupy; the result comes back on the same module).
    * ``template``: ``(b, b, b)`` positive density, centre ``b // 2`` (:func:`shell_template`,
      :func:`reference_template`).
    * Rotations: ``angles_deg`` (n, 3) RELION ZYZ Euler angles; else, when ``angular_step_deg`` is given, an
      asymmetric-unit sampling of SO(3) modulo ``symmetry`` (:func:`angle_sampling`); else only the identity
      (right for a sphere or a spherically averaged template).
    * ``mask_radius_px``: radius of the spherical normalisation mask (default ``b // 2 - 1``); the template is
      normalised to zero mean and unit variance inside it.
    * ``tilt_range_deg``: (min, max) tilt of the series: the template is multiplied by the missing wedge in
      Fourier space (after rotation) so that it looks like the particles of the tomogram.
    * ``lowpass_A``, ``highpass_A``: cosine-edged band-pass (Å) applied to the tomogram and the template;
      ``voxel_A`` the voxel size (Å) of both.
    * ``particles_dark``: negate the tomogram first (our reconstructions show protein dark).
    """
    xp = xp_of(tomogram)
    f = fft(xp)
    tomo = xp.asarray(tomogram, dtype=xp.float32)
    if tomo.ndim != 3:
        raise ValueError(f"tomogram must be 3D, got shape {tomo.shape}")
    tmpl = np.asarray(to_numpy(template), dtype=np.float32)
    if tmpl.ndim != 3 or len(set(tmpl.shape)) != 1:
        raise ValueError(f"template must be a cube, got shape {tmpl.shape}")
    b = tmpl.shape[0]
    radius = float(mask_radius_px) if mask_radius_px is not None else b // 2 - 1
    if angles_deg is not None:
        angles = np.atleast_2d(np.asarray(angles_deg, dtype=np.float64))
    elif angular_step_deg is not None:
        angles = angle_sampling(angular_step_deg, symmetry)
    else:
        angles = np.zeros((1, 3))

    # normalise the tomogram globally (float32 precision of the local variance), negate, pad with the mean (0)
    tomo = (tomo - tomo.mean()) / (tomo.std() + 1e-30)
    if particles_dark:
        tomo = -tomo
    half = b // 2 + 1
    shape = tuple(int(scipy.fft.next_fast_len(n + 2 * half, real=True)) for n in tomo.shape)
    padded = xp.zeros(shape, dtype=xp.float32)
    nz, ny, nx = tomo.shape
    padded[half:half + nz, half:half + ny, half:half + nx] = tomo
    filt_vol = _filter(shape, voxel_A, lowpass_A, highpass_A, None, xp)
    vol_ft = f.rfftn(padded)
    if filt_vol is not None:
        vol_ft = vol_ft * filt_vol
        padded = f.irfftn(vol_ft, s=shape).astype(xp.float32)

    mask = spherical_mask(b, radius)
    n_mask = float(mask.sum())
    mask_x = xp.asarray(mask)
    mean = _correlate(vol_ft, mask_x, shape, xp) / n_mask
    mean_sq = _correlate(f.rfftn(padded * padded), mask_x, shape, xp) / n_mask
    sigma = xp.sqrt(xp.maximum(mean_sq - mean**2, 0.0))
    del mean, mean_sq
    floor = 1e-3 * float(sigma.max())
    denom = n_mask * xp.maximum(sigma, floor)

    tfilt = _filter((b, b, b), voxel_A, lowpass_A, highpass_A, tilt_range_deg, np)
    sl = (slice(half, half + nz), slice(half, half + ny), slice(half, half + nx))
    best = xp.full(tomo.shape, -xp.inf, dtype=xp.float32)
    best_idx = xp.zeros(tomo.shape, dtype=xp.int32)
    mats = euler_to_matrix(angles)
    for i, a in enumerate(mats):
        t = tmpl if np.allclose(a, np.eye(3)) else _rotate_template(tmpl, a)
        if tfilt is not None:
            t = scipy.fft.irfftn(scipy.fft.rfftn(t) * tfilt, s=t.shape).astype(np.float32)
        inside = t[mask > 0]
        sd = float(inside.std())
        if sd <= 0:
            raise ValueError("template is constant under the mask")
        tn = ((t - inside.mean()) / sd * mask).astype(np.float32)
        score = (_correlate(vol_ft, xp.asarray(tn), shape, xp) / denom)[sl].astype(xp.float32)
        better = score > best
        best = xp.where(better, score, best)
        best_idx = xp.where(better, xp.int32(i), best_idx)
    return TemplateMatchResult(score=best, angle_index=best_idx, angles_deg=angles, mask_radius_px=radius)


# --------------------------------------------------------------------------------------------------- peaks
def pick_peaks(
    score: Any,
    *,
    min_distance_px: float,
    threshold: float | None = None,
    max_peaks: int | None = None,
    exclude_border_px: int = 0,
    mask: ArrayLike | None = None,
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Local maxima of a score volume ``(nz, ny, nx)`` with non-maximum suppression.

    Candidates are voxels that are the maximum of their 3×3×3 neighbourhood, above ``threshold`` (if given), at
    least ``exclude_border_px`` voxels from every face and, when ``mask`` (bool ``(nz, ny, nx)``, e.g.
    :meth:`SpecimenSlab.mask`) is given, inside it; they are then accepted greedily by decreasing score, dropping
    any closer than ``min_distance_px`` (Euclidean) to one already accepted; at most ``max_peaks``.

    Returns ``(xyz_px, scores)``: float64 ``(n, 3)`` voxel coordinates ``(x, y, z)`` (corner origin, 0-based,
    the ParticleTable convention) and float64 ``(n,)``, by decreasing score.
    """
    s = np.asarray(to_numpy(score), dtype=np.float32)
    local_max = scipy.ndimage.maximum_filter(s, size=3, mode="nearest")
    cand = (s == local_max) & np.isfinite(s)
    if threshold is not None:
        cand &= s >= threshold
    if mask is not None:
        m = np.asarray(to_numpy(mask), dtype=bool)
        if m.shape != s.shape:
            raise ValueError(f"mask shape {m.shape} differs from the score volume's {s.shape}")
        cand &= m
    if exclude_border_px > 0:
        e = int(exclude_border_px)
        border = np.ones_like(cand)
        border[e:s.shape[0] - e, e:s.shape[1] - e, e:s.shape[2] - e] = False
        cand &= ~border
    zyx = np.argwhere(cand)
    vals = s[cand].astype(np.float64)
    order = np.argsort(-vals, kind="stable")
    zyx, vals = zyx[order], vals[order]
    xyz = zyx[:, ::-1].astype(np.float64)
    keep = np.zeros(len(xyz), bool)
    tree = scipy.spatial.cKDTree(xyz) if len(xyz) else None
    suppressed = np.zeros(len(xyz), bool)
    n_kept = 0
    for i in range(len(xyz)):
        if suppressed[i]:
            continue
        keep[i] = True
        n_kept += 1
        if max_peaks is not None and n_kept >= max_peaks:
            break
        assert tree is not None
        near = tree.query_ball_point(xyz[i], r=min_distance_px - 1e-9)
        suppressed[near] = True
    return xyz[keep], vals[keep]


# --------------------------------------------------------------------------------------------------- threshold
def score_histogram(scores: ArrayLike, *, bins: int = 100, range_: tuple[float, float] | None = None
                    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Histogram of scores for the wizard: ``(counts (bins,), edges (bins + 1,))``, float64; non-finite values
    are ignored. Pass the peak scores of :func:`pick_peaks` (without threshold) to choose a threshold."""
    v = np.asarray(to_numpy(scores), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    counts, edges = np.histogram(v, bins=bins, range=range_)
    return counts.astype(np.float64), edges


def _otsu(values: NDArray[np.float64], bins: int = 256) -> float:
    counts, edges = np.histogram(values, bins=bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    w0 = np.cumsum(counts)
    w1 = w0[-1] - w0
    m0 = np.cumsum(counts * centres)
    mu0 = m0 / np.maximum(w0, 1)
    mu1 = (m0[-1] - m0) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(edges[1:][int(np.argmax(between[:-1]))])


def suggest_threshold(scores: ArrayLike, *, method: str = "mad", k: float = 7.5) -> float:
    """A score threshold from the data.

    * ``"mad"``: ``median + k · 1.4826 · MAD`` of ``scores`` — a robust noise-level estimate, meant for the
      whole score volume (where particles are a small minority of voxels): ``k`` ≈ 6–10 keeps noise out.
    * ``"otsu"``: Otsu's threshold (maximum between-class variance of a 256-bin histogram), meant for the peak
      scores of :func:`pick_peaks` when they are bimodal (noise peaks vs particles).
    """
    v = np.asarray(to_numpy(scores), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        raise ValueError("no finite scores")
    if method == "mad":
        med = float(np.median(v))
        mad = float(np.median(np.abs(v - med)))
        return med + k * 1.4826 * mad
    if method == "otsu":
        return _otsu(v)
    raise ValueError(f"unknown method {method!r}: expected 'mad' or 'otsu'")


# --------------------------------------------------------------------------------------------------- specimen
@dataclass
class SpecimenSlab:
    """Where the specimen lies along z in a tomogram: a slab about a (possibly tilted) centre plane.

    Heights are in voxels along z. The slab's centre plane is ``z_c(x, y) = centre_z_px + slope[0] · (x − cx) +
    slope[1] · (y − cy)`` (``cx = (nx − 1) / 2``, ``cy = (ny − 1) / 2``; voxel coordinates, voxel ``i``'s
    centre at ``i``); the specimen occupies the heights ``h = z − z_c(x, y)`` in ``[bottom_px, top_px]`` (the
    detected slab widened by ``margin_px`` on each side). When no slab stands out from empty space (``found`` False: the
    tomogram is filled by the specimen, or it is too noisy to tell), the region is the whole volume.

    * ``profile`` ``(n,)``: the band-passed energy per height ``heights`` ``(n,)`` (after flattening the plane),
      the curve the slab was found on; ``background`` and ``peak`` its empty-space level (10th percentile) and
      maximum, ``contrast = peak / background``.
    * ``note``: how the region was found, in words (for the step's log).
    """

    found: bool
    shape_zyx: tuple[int, int, int]
    centre_z_px: float
    slope: tuple[float, float]
    bottom_px: float
    top_px: float
    margin_px: float
    heights: NDArray[np.float64]
    profile: NDArray[np.float64]
    background: float
    peak: float
    contrast: float
    note: str

    def plane(self) -> NDArray[np.float64]:
        """``z_c(x, y)`` of the centre plane, float64 ``(ny, nx)``."""
        _, ny, nx = self.shape_zyx
        x = np.arange(nx) - (nx - 1) / 2.0
        y = np.arange(ny) - (ny - 1) / 2.0
        return self.centre_z_px + self.slope[0] * x[None, :] + self.slope[1] * y[:, None]

    def mask(self) -> NDArray[np.bool_]:
        """Bool ``(nz, ny, nx)``: True inside the specimen region (everywhere when ``found`` is False)."""
        nz, ny, nx = self.shape_zyx
        if not self.found:
            return np.ones(self.shape_zyx, dtype=bool)
        h = np.arange(nz, dtype=np.float64)[:, None, None] - self.plane()[None]
        return (h >= self.bottom_px) & (h <= self.top_px)

    def thickness_A(self, voxel_A: float) -> float:
        """Thickness of the region (margins included) in Å along z."""
        return (self.top_px - self.bottom_px) * float(voxel_A)

    def fraction(self) -> float:
        """Fraction of the tomogram's voxels inside the region."""
        return float(self.mask().mean()) if self.found else 1.0


def _slab_run(profile: NDArray[np.float64], edge: int, level_fraction: float, max_gap: int
              ) -> tuple[int, int, float, float] | None:
    """Indices ``(lo, hi)`` of the run of ``profile`` above ``background + level_fraction · (peak − background)``
    that holds the peak (background = 10th percentile, peak = maximum, both away from ``edge`` samples at each
    end), joined with further runs less than ``max_gap`` samples away; with background and peak. None when the
    profile is too short. (The run, not every sample above the level: back-projection streaks make the empty
    space near the tomogram's faces busier than near the specimen.)"""
    n = len(profile)
    off = edge if n - 2 * edge >= 8 else 0
    inner = profile[off:n - off]
    if len(inner) < 4:
        return None
    bg = float(np.percentile(inner, 10.0))
    k = int(np.argmax(inner))
    peak = float(inner[k])
    above = inner > bg + level_fraction * (peak - bg)
    lo = hi = k
    while True:  # extend upwards to the farthest sample above the level within max_gap + 1
        ahead = np.flatnonzero(above[hi + 1:hi + 2 + max_gap])
        if len(ahead) == 0:
            break
        hi = hi + 1 + int(ahead[-1])
    while True:  # and downwards
        start = max(0, lo - max_gap - 1)
        behind = np.flatnonzero(above[start:lo])
        if len(behind) == 0:
            break
        lo = start + int(behind[0])
    return lo + off, hi + off, bg, peak


def _spread(profile: NDArray[np.float64], run: tuple[int, int, float, float], pad: int) -> float:
    """SD (samples) of the heights weighted by the profile above its background, over the run ± ``pad``."""
    lo, hi, bg, _ = run
    a, b = max(0, lo - pad), min(len(profile), hi + pad + 1)
    w = np.maximum(profile[a:b] - bg, 0.0)
    h = np.arange(a, b, dtype=np.float64)
    m = float((w * h).sum() / max(w.sum(), 1e-300))
    return math.sqrt(float((w * (h - m) ** 2).sum() / max(w.sum(), 1e-300)))


def find_specimen_slab(tomogram: Any, voxel_A: float, *, particle_radius_A: float = 62.0, margin_A: float | None = None,
                       min_contrast: float = 2.5, level_fraction: float = 0.25, tile_A: float = 600.0
                       ) -> SpecimenSlab:
    """The specimen slab of a tomogram ``(nz, ny, nx)`` (voxel ``voxel_A`` Å) from its local variance along z.

    Method: the tomogram is band-passed to the particles' scale (difference of Gaussians, σ = 0.7 and 2 particle
    radii ``particle_radius_A``: the scale where particles stand out most from reconstruction noise), squared
    (clipped at the 99.5th percentile, so that one contamination blob does not decide) and averaged over tiles
    about ``tile_A`` wide in x and y: one energy profile along z per tile, smoothed over half a radius. The
    specimen has more structure than the empty space above and below it (only reconstruction noise and
    streaks); the slab is the run of heights around the profile's maximum where it exceeds ``background +
    level_fraction · (peak − background)`` (background: 10th percentile; runs less than a radius apart are
    joined). With six tiles or more, the energy-weighted centre height of each tile gives a least-squares centre
    plane (a tilted lamella or ice layer), kept when its slopes are significant against the tiles' scatter and
    when the profile flattened onto it (every column's energy shifted by the plane's height there) is 5 %
    thinner (SD of the heights) than without it: a slab tilted by a few degrees gains less than the scatter of
    the tiles' centres and stays flat (its region is then a little thicker). The region is widened by
    ``margin_A`` (default: 1.5 particle radii) on each side. When the peak is less than ``min_contrast`` times
    the background, or the slab fills 90 % of the tomogram's thickness, ``found`` is False and the
    region is the whole volume (a tomogram cut tightly around the specimen, or too noisy to tell).
    """
    t = np.asarray(to_numpy(tomogram), dtype=np.float32)
    if t.ndim != 3:
        raise ValueError(f"tomogram must be 3D, got shape {t.shape}")
    nz, ny, nx = t.shape
    r_px = float(particle_radius_A) / float(voxel_A)
    margin_px = (float(margin_A) if margin_A is not None else 1.5 * float(particle_radius_A)) / float(voxel_A)
    t = (t - t.mean()) / (t.std() + 1e-30)
    # x and y binned by b (the profiles are along z; the band starts at 0.7 radii, several binned voxels), so that
    # big tomograms (4k cameras at 8 Å voxels) cost seconds; colx, coly: the binned columns' centres (voxels
    # from the tomogram's centre)
    b = max(1, int(r_px // 3))
    if b > 1 and min(ny, nx) >= 16 * b:
        nyb, nxb = ny // b, nx // b
        t = t[:, :nyb * b, :nxb * b].reshape(nz, nyb, b, nxb, b).mean(axis=(2, 4))
    else:
        b, nyb, nxb = 1, ny, nx
    colx = (np.arange(nxb) + 0.5) * b - 0.5 - (nx - 1) / 2.0
    coly = (np.arange(nyb) + 0.5) * b - 0.5 - (ny - 1) / 2.0
    s1, s2 = max(0.5, 0.7 * r_px), max(1.0, 2.0 * r_px)
    e = scipy.ndimage.gaussian_filter(t, (s1, s1 / b, s1 / b))  # band-pass, squared, in place (big volumes)
    e -= scipy.ndimage.gaussian_filter(t, (s2, s2 / b, s2 / b))
    del t
    e *= e
    np.minimum(e, np.percentile(e, 99.5), out=e)
    n_t = int(np.clip(round(min(nx, ny) * voxel_A / tile_A), 1, 6))
    ex = np.linspace(0, nxb, n_t + 1).round().astype(int)
    ey = np.linspace(0, nyb, n_t + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(e, ey[:-1], axis=1), ex[:-1], axis=2)  # (nz, n_t, n_t)
    counts = np.diff(ey)[:, None] * np.diff(ex)[None, :]
    tiles = scipy.ndimage.gaussian_filter1d(sums / counts[None], max(1.0, 0.5 * r_px), axis=0, mode="nearest")
    z = np.arange(nz, dtype=np.float64)
    edge = int(min(max(2, round(r_px)), nz // 6))
    whole = SpecimenSlab(False, (nz, ny, nx), (nz - 1) / 2.0, (0.0, 0.0), -(nz - 1) / 2.0, (nz - 1) / 2.0, 0.0,
                         z - (nz - 1) / 2.0, tiles.mean(axis=(1, 2)).astype(np.float64), 0.0, 0.0, 1.0, "")
    gap = max(1, int(round(r_px)))
    run = _slab_run(whole.profile, edge, level_fraction, gap)
    if run is None:
        whole.note = "the tomogram is too thin to find a specimen slab in it: the whole volume is used"
        return whole
    lo, hi, bg, peak = run
    whole.background, whole.peak = bg, peak
    whole.contrast = peak / bg if bg > 0 else math.inf
    if whole.contrast < min_contrast:
        whole.note = (f"no specimen slab stands out along z (structure {whole.contrast:.1f}× the quietest "
                      f"heights, less than {min_contrast:g}×): the whole volume is used")
        return whole
    centre, slope = (lo + hi) / 2.0, (0.0, 0.0)
    profile, heights = whole.profile, z - centre
    if n_t > 1:  # a centre plane through the tiles' energy-weighted centre heights
        level = bg + level_fraction * (peak - bg)
        win = (z >= lo - r_px) & (z <= hi + r_px)
        w = np.where(win[:, None, None], np.maximum(tiles - level, 0.0), 0.0)
        wsum = w.sum(axis=0)
        ok = wsum > 0
        if ok.sum() >= 6:
            zc = (w * z[:, None, None]).sum(axis=0)[ok] / wsum[ok]
            xc = np.array([colx[a:c].mean() for a, c in zip(ex[:-1], ex[1:])])[None, :] * np.ones((n_t, 1))
            yc = np.array([coly[a:c].mean() for a, c in zip(ey[:-1], ey[1:])])[:, None] * np.ones((1, n_t))
            a = np.stack([np.ones(ok.sum()), xc[ok], yc[ok]], axis=1)
            sw = np.sqrt(wsum[ok] / wsum[ok].mean())
            aw = a * sw[:, None]
            coef, *_ = np.linalg.lstsq(aw, zc * sw, rcond=None)
            # the tilt only when the tiles' centres determine it: slopes beyond their scatter (chi² of the two
            # slopes against their covariance from the residuals > 13.8, p = 0.001)
            resid = zc * sw - aw @ coef
            cov = float(resid @ resid) / max(len(zc) - 3, 1) * np.linalg.pinv(aw.T @ aw)
            chi2 = float(coef[1:] @ np.linalg.pinv(cov[1:, 1:]) @ coef[1:])
            if chi2 > 13.8 and np.all(np.abs(coef[1:]) <= math.tan(math.radians(45.0))):
                # flatten: every column's energy as a function of the height above the plane (whole voxels)
                c_new = float(coef[0])
                h_new = z - c_new
                off = np.rint(coef[1] * colx[None, :] + coef[2] * coly[:, None]).astype(int)  # (nyb, nxb)
                acc, cnt = np.zeros(nz), np.zeros(nz)
                for d in np.unique(off):
                    cols = off == d
                    col_sum = e[:, cols].sum(axis=1)  # (nz,) energy at z of these columns, height z - d - c
                    lo_z, hi_z = max(0, d), min(nz, nz + d)  # z = height index + d must lie in the volume
                    acc[lo_z - d:hi_z - d] += col_sum[lo_z:hi_z]
                    cnt[lo_z - d:hi_z - d] += cols.sum()
                flat = np.where(cnt > 0, acc / np.maximum(cnt, 1), 0.0)
                flat = scipy.ndimage.gaussian_filter1d(flat, max(1.0, 0.5 * r_px), mode="nearest")
                run_new = _slab_run(flat, edge, level_fraction, gap)
                # the plane only when it makes the slab clearly thinner (a tilted slab): with few particles the
                # tiles' centre heights scatter, and a slab tilted by a few degrees gains less than that scatter
                if run_new is not None and _spread(flat, run_new, 2 * gap) < 0.95 * _spread(profile, run, 2 * gap):
                    centre, slope = c_new, (float(coef[1]), float(coef[2]))
                    profile, heights = flat, h_new
    run = _slab_run(profile, edge, level_fraction, gap)
    if run is None:  # cannot happen for a profile that had a run before flattening; kept for safety
        whole.note = "no specimen slab found after flattening: the whole volume is used"
        return whole
    lo, hi, bg, peak = run
    bottom, top = heights[lo] - margin_px, heights[hi] + margin_px
    # the slab itself (margins aside) must leave some of the tomogram out, else it is the whole volume
    plane_span = abs(slope[0]) * (nx - 1) + abs(slope[1]) * (ny - 1)
    if heights[hi] - heights[lo] + plane_span >= 0.9 * nz:
        whole.note = (f"the specimen fills the tomogram's thickness ({nz} voxels, {nz * voxel_A:.0f} Å): the whole "
                      f"volume is used")
        return whole
    tilt = math.degrees(math.atan(math.hypot(*slope)))
    note = (f"specimen slab {(heights[hi] - heights[lo]) * voxel_A:.0f} Å thick (structure {peak / bg:.1f}× the "
            f"empty space), centre at z = {centre:.0f} of {nz} voxels"
            + (f", tilted {tilt:.1f}°" if n_t > 1 else "")
            + f"; searched ±{margin_px * voxel_A:.0f} Å beyond it ({(top - bottom) * voxel_A:.0f} Å)")
    return SpecimenSlab(True, (nz, ny, nx), centre, slope, float(bottom), float(top), margin_px, heights,
                        np.asarray(profile, np.float64), bg, peak, peak / bg if bg > 0 else math.inf, note)


# --------------------------------------------------------------------------------------------------- noise model
@dataclass
class NoiseModel:
    """Gaussian model of the scores of the peaks that are noise (:func:`fit_noise_model`).

    * ``mean``, ``sigma``: the noise peaks' score distribution N(mean, sigma²);
    * ``n_peaks``: the peaks the model was fitted on; ``n_noise``: how many of them it takes for noise
      (``n_peaks`` minus the peaks standing out above ``threshold``);
    * ``expected_false``: noise peaks expected above ``threshold``, which is the score with
      ``n_noise · P(score ≥ threshold) = expected_false`` (``z = (threshold − mean) / sigma``).
    """

    mean: float
    sigma: float
    n_peaks: int
    n_noise: float
    expected_false: float
    threshold: float
    z: float

    def expected_above(self, score: ArrayLike) -> NDArray[np.float64]:
        """Noise peaks expected at or above ``score`` (array or scalar)."""
        from scipy.special import ndtr

        u = (np.asarray(score, dtype=np.float64) - self.mean) / self.sigma
        return self.n_noise * ndtr(-u)

    def density(self, score: ArrayLike) -> NDArray[np.float64]:
        """Noise peaks per unit score at ``score`` (to draw over a histogram: multiply by the bin width)."""
        u = (np.asarray(score, dtype=np.float64) - self.mean) / self.sigma
        return self.n_noise * np.exp(-0.5 * u * u) / (self.sigma * math.sqrt(2 * math.pi))


def fit_noise_model(peak_scores: ArrayLike, *, expected_false: float = 1.0, max_iter: int = 50) -> NoiseModel:
    """Fit :class:`NoiseModel` to the scores of local maxima (peaks of :func:`pick_peaks` without threshold,
    inside the specimen), most of which are noise when the search covers several times the expected number of
    particles.

    The particles are the high end; the model is fitted on the noise's quantiles only: with a fraction ``p`` of
    the peaks taken for signal (all above the noise's), the noise's median and its 15.87th and 84.13th
    percentiles (one SD below and above) are the ``0.5 (1 − p)``, ``0.1587 (1 − p)`` and ``0.8413 (1 − p)``
    quantiles of all peaks; sigma is the smaller of the two one-SD distances (noise peaks are often skewed
    towards low scores, and the upper tail is the one that matters). ``p`` is then the fraction of peaks above
    the resulting threshold (minus the ``expected_false`` that noise puts there), and the fit is repeated until
    ``p`` settles. This is robust to particles being up to about half of the peaks, and needs no assumption on
    their scores.

    Raises ``ValueError`` with fewer than 20 finite scores (too few to tell noise from signal).
    """
    from scipy.special import ndtri

    v = np.sort(np.asarray(to_numpy(peak_scores), dtype=np.float64).ravel())
    v = v[np.isfinite(v)]
    n = len(v)
    if n < 20:
        raise ValueError(f"only {n} peaks: too few to model the noise (at least 20 are needed)")
    if expected_false <= 0:
        raise ValueError("expected_false must be positive")
    p = 0.0
    mean = sigma = thr = z = 0.0
    n_noise = float(n)
    for _ in range(max_iter):
        q = 1.0 - p
        mean = float(np.quantile(v, 0.5 * q))
        # one SD below and above the median; the smaller (noise peaks are often skewed to low scores, and the
        # upper one is the one that counts; particles below the threshold can only widen it)
        sigma = min(mean - float(np.quantile(v, 0.15865525 * q)), float(np.quantile(v, 0.84134475 * q)) - mean)
        if not sigma > 0:  # degenerate (many equal scores): fall back on the spread of the lower half
            sigma = float(np.std(v[: max(2, int(0.5 * q * n))])) or 1e-6
        n_noise = n * q
        z = float(-ndtri(min(expected_false / n_noise, 0.5)))
        thr = mean + z * sigma
        n_above = int(n - np.searchsorted(v, thr, side="left"))
        p_new = min(max(n_above - expected_false, 0.0) / n, 0.9)
        if abs(p_new - p) * n < 0.5:
            p = p_new
            break
        p = p_new
    n_noise = n * (1.0 - p)
    return NoiseModel(mean=mean, sigma=sigma, n_peaks=n, n_noise=n_noise, expected_false=float(expected_false),
                      threshold=thr, z=z)


@dataclass
class ThresholdChoice:
    """The automatic threshold (:func:`automatic_threshold`) and what it was chosen from.

    * ``threshold``: the score threshold; ``how``: ``"noise"`` (the noise model's threshold) or ``"particles"``
      (raised into the gap below a well-separated particle population);
    * ``noise``: the :class:`NoiseModel`; ``n_above``: peaks at or above ``threshold``; ``highest``: the highest
      peak score (−inf without peaks);
    * ``particles_median``, ``particles_sigma``: median and robust SD (1.4826 MAD) of the particles' population
      among the peaks above the noise threshold (NaN with fewer than 5 such peaks);
    * ``standing_out``: peaks above ``mean + 2 sigma`` of the noise minus the noise expected there, and
      ``standing_out_sd`` its Poisson uncertainty: about how many peaks rise above the noise, kept or not (a
      sanity bound for the number of picks).
    """

    threshold: float
    how: str
    noise: NoiseModel
    n_above: int
    highest: float
    particles_median: float
    particles_sigma: float
    standing_out: float
    standing_out_sd: float

    def describe(self) -> str:
        """One line for a log: the threshold, how it was chosen, the noise model's parameters."""
        nm = self.noise
        text = (f"threshold {self.threshold:.3f} ({'noise model' if self.how == 'noise' else 'below the particles'}"
                f"): noise peaks {nm.mean:.3f} ± {nm.sigma:.3f} (Gaussian fitted to {nm.n_peaks} "
                f"peak scores, {nm.n_noise:.0f} taken for noise), {nm.expected_false:g} noise peak expected above "
                f"{nm.threshold:.3f} (mean + {nm.z:.2f} SD)")
        if self.how == "particles":
            text += (f"; raised to {self.threshold:.3f} = the particles' median {self.particles_median:.3f} − "
                     f"{(self.particles_median - self.threshold) / self.particles_sigma:.1f} × their SD "
                     f"{self.particles_sigma:.3f}")
        return text


def _is_noise_tail(dropped: np.ndarray, population_min: float, scores: np.ndarray, threshold: float,
                   sigma: float) -> bool:
    """Whether the sorted peaks ``dropped`` (all at or above the noise ``threshold``, below a population whose
    lowest peak is ``population_min``) are the noise's own tail: joined to the peaks below the threshold (no gap
    over one noise ``sigma`` from the highest peak under the threshold up through them), narrower than the gap
    above them, and thinning out upwards (fewer in the upper half of their span than in the lower half)."""
    if len(dropped) == 0:
        return False
    under = scores[scores < threshold]
    chain = np.sort(np.concatenate([[float(under.max())] if len(under) else [], dropped]))
    if np.any(np.diff(chain) > sigma):
        return False
    span = float(dropped.max()) - threshold
    if not span < population_min - float(dropped.max()):
        return False
    mid = threshold + 0.5 * span
    return int(np.sum(dropped > mid)) < int(np.sum(dropped <= mid))


def automatic_threshold(peak_scores: ArrayLike, *, expected_false: float = 1.0, particle_margin_sd: float = 4.0,
                        max_raise_fraction: float = 0.05, tail_sd: float = 1.5) -> ThresholdChoice:
    """A score threshold for peak picking from the peaks' own score distribution.

    1. :func:`fit_noise_model` on ``peak_scores`` (the local maxima inside the specimen): the threshold above
       which ``expected_false`` noise peaks are expected. It is never above every peak when some peaks stand out
       from the noise; when none does, it is (and no particle is picked: the caller reports it).
    2. When the peaks above it form a well separated population, the threshold is raised below it, to
       ``m − particle_margin_sd · s`` (median ``m`` and robust SD ``s`` of the population), and at least into
       the middle of the gap below the population when there is one, if that lies above the noise threshold.
       When ``m − particle_margin_sd · s`` cuts into the population over a gap and that raise is not allowed
       (below), the middle of the gap is tried next (the tiny preset's weaker particles, 4.4 robust SDs under a
       tight cluster of 15, with a few tail peaks above the noise threshold).
       The population: the peaks above the widest clear gap among those above the noise threshold that leaves
       at least half of them above it (clear: wider than 2 noise SDs, or than 1 noise SD and twice the span of
       the peaks below it), else all of them. The raise is made only when it drops at most
       ``max_raise_fraction`` of the peaks above the noise threshold (isolated look-alikes: other globular
       proteins, contamination), or fewer than half of them, all within ``tail_sd`` noise SDs of the noise
       threshold or closer to it than to the population (the noise's own tail, often heavier than the
       Gaussian's, e.g. near the specimen's surfaces or with few views); never a second population of particles
       standing clear of the noise.
    3. With few views the noise's tail can outnumber the particles (the tiny preset's 7-view tomogram: 21 ghost
       peaks where the projection rays of particles at the same height cross, 0.35-0.44, below 16 particles at
       0.65-0.79, a gap of 3.4 noise SDs). When no gap leaves half of the peaks above it, the widest clear gap
       (over 2 noise SDs) with at least 5 peaks above it is still taken if what it would drop is the noise's
       tail (:func:`_is_noise_tail`): it starts at the noise threshold without a gap, is narrower than the gap
       above it, and thins out upwards (more of it in the lower half of its span than in the upper half), as a
       tail does and a population of particles, with its own mode, does not.
    """
    from scipy.special import ndtr

    v = np.asarray(to_numpy(peak_scores), dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    nm = fit_noise_model(v, expected_false=expected_false)
    thr, how = nm.threshold, "noise"
    above = np.sort(v[v >= nm.threshold])
    med = sd = float("nan")
    if len(above) >= 5:
        # the population: above the widest clear gap that leaves at least half of the peaks above the noise
        # threshold over it, else all of them. A gap is clear when wider than 2 noise SDs, or than 1 noise SD and
        # twice the span of the peaks below it (a tight cluster hugging the noise threshold)
        population = above
        n_up = len(above) - 1 - np.arange(len(above) - 1)  # peaks above each gap
        diffs = np.diff(above)
        below_span = above[:-1] - nm.threshold
        clear = (diffs > 2.0 * nm.sigma) | ((diffs > nm.sigma) & (diffs > 2.0 * below_span))
        gaps = np.where(clear & (n_up >= max(5, 0.5 * len(above))), diffs, 0.0)
        med = float(np.median(above))
        sd = 1.4826 * float(np.median(np.abs(above - med)))
        k = -1
        tail_below_gap = False  # rule 3: the peaks under gap k are the noise's tail (checked once, here)
        if len(gaps) and gaps.max() > 0:
            k = int(np.argmax(gaps))
        else:  # a tail of the noise that outnumbers the particles (docstring, 3.)
            wide = np.flatnonzero((diffs > 2.0 * nm.sigma) & (n_up >= 5))
            if len(wide):
                j = int(wide[np.argmax(diffs[wide])])
                if _is_noise_tail(above[: j + 1], float(above[j + 1]), v, nm.threshold, nm.sigma):
                    k, tail_below_gap = j, True
        candidates = [med - particle_margin_sd * sd]
        if k >= 0:  # at least the middle of the gap: below it is not the population
            population = above[k + 1:]
            med = float(np.median(population))
            sd = 1.4826 * float(np.median(np.abs(population - med)))
            middle = 0.5 * (above[k] + above[k + 1])
            candidates = [max(middle, med - particle_margin_sd * sd)]
            if candidates[0] > population[0]:
                # m - 4 s cuts into the population over the gap (a weaker particle, or a look-alike that made the
                # gap): if dropping it is not allowed, the middle of the gap is the next choice
                candidates.append(middle)
        for raised in candidates:
            if not (sd > 0 and raised > nm.threshold):
                continue
            dropped = above[above < raised]
            # a few look-alikes, or the noise's own tail hugging its threshold (tails are often heavier than
            # Gaussian) below a population far above it: within tail_sd noise SDs of the threshold, or closer to
            # it than to the population's lowest peak
            span = float(dropped.max()) - nm.threshold if len(dropped) else 0.0
            gap = float(population.min()) - float(dropped.max()) if len(dropped) else 0.0
            tail = (len(dropped) < 0.5 * len(above) and (span < tail_sd * nm.sigma or span < gap)) or (
                tail_below_gap and len(dropped) == k + 1)  # exactly the tail found under the gap
            if len(dropped) <= max_raise_fraction * len(above) or tail:
                thr, how = raised, "particles"
                break
    low = nm.mean + 2.0 * nm.sigma
    expected_low = nm.n_noise * float(ndtr(-2.0))
    standing = float(np.sum(v >= low)) - expected_low
    return ThresholdChoice(threshold=float(thr), how=how, noise=nm, n_above=int(np.sum(v >= thr)),
                           highest=float(v.max()) if len(v) else -math.inf, particles_median=med,
                           particles_sigma=sd, standing_out=standing, standing_out_sd=math.sqrt(expected_low))


# --------------------------------------------------------------------------------------------------- truth
def register_translation(picked_xyz: ArrayLike, true_xyz: ArrayLike, *, max_shift: float,
                         tolerance: float) -> NDArray[np.float64]:
    """Global translation ``t`` (same units as the inputs, e.g. Å) that best maps the picked set onto the true
    set (``picked + t ≈ true``), up to ``max_shift`` on each axis: the pairwise difference vector with the most
    other differences within ``tolerance`` (a vote), refined as the mean difference of the pairs matched by
    :func:`match_to_truth` after that shift. Returns float64 (3,); zeros when nothing can be paired."""
    p = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(true_xyz, dtype=np.float64).reshape(-1, 3)
    if len(p) == 0 or len(q) == 0:
        return np.zeros(3)
    d = (q[None, :, :] - p[:, None, :]).reshape(-1, 3)
    d = d[np.all(np.abs(d) <= max_shift, axis=1)]
    if len(d) == 0:
        return np.zeros(3)
    tree = scipy.spatial.cKDTree(d)
    votes = tree.query_ball_point(d, r=tolerance, return_length=True)
    t = d[int(np.argmax(votes))]
    for _ in range(3):
        m = match_to_truth(p + t, q, max_distance=tolerance)
        if len(m["pairs"]) == 0:
            break
        pairs = m["pairs"]
        t = t + (q[pairs[:, 1]] - (p[pairs[:, 0]] + t)).mean(axis=0)
    return t


def match_to_truth(picked_xyz: ArrayLike, true_xyz: ArrayLike, *, max_distance: float) -> dict[str, Any]:
    """One-to-one matching of picks to true positions (same units, e.g. Å) within ``max_distance``, minimising
    the summed distance (Hungarian algorithm, ``scipy.optimize.linear_sum_assignment``).

    Returns ``recall`` (matched / true), ``false_fraction`` (unmatched picks / picks), ``n_picked``, ``n_true``,
    ``n_matched``, ``pairs`` int (m, 2) = (pick index, true index), ``distances`` float64 (m,) and
    ``rms_distance`` (NaN when nothing matched).
    """
    p = np.asarray(picked_xyz, dtype=np.float64).reshape(-1, 3)
    q = np.asarray(true_xyz, dtype=np.float64).reshape(-1, 3)
    pairs = np.zeros((0, 2), dtype=np.int64)
    dist = np.zeros(0)
    if len(p) and len(q):
        cost = np.linalg.norm(p[:, None, :] - q[None, :, :], axis=-1)
        big = 1e6 * (max_distance + 1.0)
        c = np.where(cost <= max_distance, cost, big)
        rows, cols = scipy.optimize.linear_sum_assignment(c)
        ok = cost[rows, cols] <= max_distance
        pairs = np.stack([rows[ok], cols[ok]], axis=1).astype(np.int64)
        dist = cost[rows[ok], cols[ok]]
    n_m = len(pairs)
    return {
        "recall": n_m / len(q) if len(q) else float("nan"),
        "false_fraction": (len(p) - n_m) / len(p) if len(p) else 0.0,
        "n_picked": len(p), "n_true": len(q), "n_matched": n_m,
        "pairs": pairs, "distances": dist,
        "rms_distance": float(np.sqrt((dist**2).mean())) if n_m else float("nan"),
    }
