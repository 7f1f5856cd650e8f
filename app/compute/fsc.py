"""Fourier shell correlation, resolution estimates, masks and resolution filters for 3D maps.

Conventions
    * Maps are cubes ``(B, B, B)`` (numpy order z, y, x) with the centre at voxel ``B // 2`` on every axis
      (RELION's and ``truth/apoferritin.mrc``'s), voxel size ``voxel_A`` in Å.
    * Shell ``i`` (``i = 0 .. B // 2``) holds the Fourier voxels whose radius ``|k| · B`` rounds to ``i``
      (``k`` in cycles per voxel); its spatial frequency is ``i / (B · voxel_A)`` in Å⁻¹ and its resolution
      ``B · voxel_A / i`` Å. Shell ``B // 2`` is Nyquist (``2 · voxel_A``).
    * ``FSC_i = Re Σ F1 F2* / sqrt(Σ |F1|² Σ |F2|²)`` over the shell (the full 3D transform; computed on the
      ``rfftn`` half grid with the Friedel-mate voxels counted twice, which gives the same sums).

References: Harauz & van Heel 1986 (FSC); Rosenthal & Henderson 2003 (0.143 threshold, FSC weighting
``sqrt(2 FSC / (1 + FSC))``); Chen et al. 2013 (high-resolution noise substitution: the
phase-randomisation correction of a masked FSC, as RELION's PostProcess does).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tomoguide.compute.backend import fft as _fft
from tomoguide.compute.backend import xp_of

__all__ = [
    "shell_index",
    "fsc",
    "resolution_at",
    "soft_sphere_mask",
    "fsc_to_wiener_filter",
    "apply_shell_filter",
    "lowpass",
    "phase_randomise",
    "masked_fsc_corrected",
]


def _check_cube(a: Any, name: str) -> None:
    if a.ndim != 3 or len(set(a.shape)) != 1:
        raise ValueError(f"{name} must be a cube (B, B, B), got shape {a.shape}")


def shell_index(box: int, *, rfft: bool = True, xp: Any = np) -> Any:
    """int64 shell index ``round(|k| · box)`` on the (r)fftn grid of a ``box³`` volume (un-shifted layout):
    shape ``(box, box, box // 2 + 1)`` with ``rfft`` else ``(box, box, box)``."""
    f = _fft(xp)
    k = xp.asarray(f.fftfreq(box)) * box
    kx = xp.asarray(f.rfftfreq(box)) * box if rfft else k
    r = xp.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2)
    return xp.rint(r).astype(xp.int64)


def _half_grid_multiplicity(box: int, xp: Any) -> Any:
    """Weights (1 or 2) of the rfftn half-grid voxels: planes kx = 0 (and Nyquist for even box) once."""
    w = xp.full(box // 2 + 1, 2.0)
    w[0] = 1.0
    if box % 2 == 0:
        w[-1] = 1.0
    return w


def fsc(map1: Any, map2: Any, *, voxel_A: float = 1.0, mask: Any | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fourier shell correlation of two cubic maps.

    ``map1``, ``map2``: (B, B, B) real arrays; ``mask`` (B, B, B) (soft, 0-1) multiplies both first.
    Returns ``(freqs_A, fsc)``: float64 arrays of length ``B // 2 + 1``, the spatial frequency of each
    shell in Å⁻¹ (``i / (B · voxel_A)``) and the correlation (shell 0 included: the mean terms).
    Empty shells (none for a cube) give 0.
    """
    xp = xp_of(map1, map2)
    a = xp.asarray(map1, dtype=xp.float64)
    b = xp.asarray(map2, dtype=xp.float64)
    _check_cube(a, "map1")
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {a.shape} vs {b.shape}")
    if mask is not None:
        m = xp.asarray(mask, dtype=xp.float64)
        a, b = a * m, b * m
    box = a.shape[0]
    f = _fft(xp)
    fa, fb = f.rfftn(a), f.rfftn(b)
    idx = shell_index(box, xp=xp).ravel()
    w = xp.broadcast_to(_half_grid_multiplicity(box, xp)[None, None, :], fa.shape).ravel()
    n = box // 2 + 1
    keep = idx < n
    idx, w = idx[keep], w[keep]
    num = xp.bincount(idx, weights=(w * (fa * xp.conj(fb)).real.ravel()[keep]), minlength=n)
    pa = xp.bincount(idx, weights=(w * (xp.abs(fa) ** 2).ravel()[keep]), minlength=n)
    pb = xp.bincount(idx, weights=(w * (xp.abs(fb) ** 2).ravel()[keep]), minlength=n)
    den = xp.sqrt(pa * pb)
    out = xp.where(den > 0, num / xp.where(den > 0, den, 1.0), 0.0)
    freqs = np.arange(n) / (box * float(voxel_A))
    return freqs, np.asarray(out.get() if hasattr(out, "get") else out, dtype=np.float64)


def resolution_at(fsc_curve: Any, freqs: Any, threshold: float = 0.143) -> float:
    """Resolution in Å where the FSC first drops below ``threshold`` (searched from shell 1 on), with
    linear interpolation of the FSC between the two shells around the crossing (in frequency).

    ``freqs`` in Å⁻¹ (as from :func:`fsc`). If the curve never crosses, the resolution of the last shell
    (Nyquist) is returned; if it is already below at shell 1, that shell's resolution.
    """
    c = np.asarray(fsc_curve, dtype=np.float64)
    f = np.asarray(freqs, dtype=np.float64)
    if c.shape != f.shape or c.size < 2:
        raise ValueError("fsc_curve and freqs must be 1D arrays of the same length >= 2")
    below = np.nonzero(c[1:] < threshold)[0]
    if below.size == 0:
        return float(1.0 / f[-1])
    i = int(below[0]) + 1
    if i == 1:
        return float(1.0 / f[1])
    c0, c1 = c[i - 1], c[i]
    t = (c0 - threshold) / (c0 - c1) if c0 != c1 else 0.0
    fr = f[i - 1] + t * (f[i] - f[i - 1])
    return float(1.0 / fr)


def soft_sphere_mask(box: int, radius_px: float, edge_px: float = 0.0, *, dtype: Any = np.float32) -> np.ndarray:
    """(box, box, box) mask: 1 inside ``radius_px`` of the centre voxel ``box // 2``, a raised-cosine fall
    to 0 over ``edge_px`` beyond it, 0 outside."""
    c = np.arange(box) - box // 2
    r = np.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    if edge_px <= 0:
        return (r <= radius_px).astype(dtype)
    t = np.clip((r - radius_px) / edge_px, 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(dtype)


def fsc_to_wiener_filter(fsc_curve: Any, *, half_maps: bool = True) -> np.ndarray:
    """Per-shell amplitude filter from an FSC curve (Rosenthal & Henderson 2003).

    With ``half_maps`` (the FSC of two half maps, filtering their average) the FSC of the full map is
    ``2 FSC / (1 + FSC)`` and the filter is ``sqrt(FSC_full)``; otherwise ``sqrt(FSC)``. Negative values
    give 0. Returns float64 of the curve's length.
    """
    c = np.clip(np.asarray(fsc_curve, dtype=np.float64), 0.0, 1.0)
    full = 2.0 * c / (1.0 + c) if half_maps else c
    return np.sqrt(full)


def apply_shell_filter(vol: Any, filt: Any) -> Any:
    """Multiply the transform of a cubic map by a per-shell filter (length ≥ ``B // 2 + 1``; shells past its
    end, the corners beyond Nyquist, get 0). Returns float32 of the input's array module."""
    xp = xp_of(vol)
    v = xp.asarray(vol, dtype=xp.float32)
    _check_cube(v, "vol")
    box = v.shape[0]
    f = _fft(xp)
    g = xp.asarray(np.asarray(filt, dtype=np.float64))
    idx = shell_index(box, xp=xp)
    ext = xp.concatenate([g, xp.zeros(int(idx.max()) + 1, dtype=g.dtype)])
    ft = f.rfftn(v) * ext[idx]
    return f.irfftn(ft, s=v.shape).astype(xp.float32)


def lowpass(vol: Any, resolution_A: float, voxel_A: float, *, edge_shells: float = 2.0) -> Any:
    """Low-pass a cubic map to ``resolution_A``: the shells up to ``1 / resolution_A`` are kept, then a
    raised-cosine fall to 0 over ``edge_shells`` shells. Returns float32."""
    xp = xp_of(vol)
    v = xp.asarray(vol, dtype=xp.float32)
    _check_cube(v, "vol")
    box = v.shape[0]
    f = _fft(xp)
    kz = xp.asarray(f.fftfreq(box))[:, None, None]
    kx = xp.asarray(f.rfftfreq(box))[None, None, :]
    r = xp.sqrt(kz**2 + xp.swapaxes(kz, 0, 1) ** 2 + kx**2) * box
    r0 = box * voxel_A / resolution_A
    if edge_shells > 0:
        t = xp.clip((r - r0) / edge_shells, 0.0, 1.0)
        filt = 0.5 * (1.0 + xp.cos(np.pi * t))
    else:
        filt = (r <= r0).astype(xp.float64)
    return f.irfftn(f.rfftn(v) * filt, s=v.shape).astype(xp.float32)


def phase_randomise(vol: Any, from_shell: int, *, rng: np.random.Generator | None = None) -> np.ndarray:
    """A copy of a cubic map whose Fourier phases at shells ``>= from_shell`` are replaced by random ones
    (amplitudes kept; the random phases are those of the transform of real white noise, so the result stays
    real and keeps every amplitude). float32."""
    rng = np.random.default_rng() if rng is None else rng
    v = np.asarray(vol, dtype=np.float64)
    _check_cube(v, "vol")
    box = v.shape[0]
    f = _fft(np)
    ft = f.rfftn(v)
    sel = shell_index(box) >= from_shell
    # phases of the transform of real white noise: uniform and Hermitian-consistent on the kx = 0 and
    # Nyquist planes of the half grid, so amplitudes survive the inverse real transform
    noise = f.rfftn(rng.normal(size=v.shape))
    phases = noise[sel] / np.maximum(np.abs(noise[sel]), 1e-300)
    ft[sel] = np.abs(ft[sel]) * phases
    return f.irfftn(ft, s=v.shape).astype(np.float32)


def masked_fsc_corrected(
    map1: Any,
    map2: Any,
    mask: Any,
    *,
    voxel_A: float = 1.0,
    randomise_below_fsc: float = 0.8,
    rng: np.random.Generator | None = None,
) -> dict[str, Any]:
    """Masked FSC corrected for the correlation the mask itself introduces (RELION PostProcess style).

    The phases of both (unmasked) maps are randomised from the first shell where their unmasked FSC drops
    below ``randomise_below_fsc``; the masked FSC of the randomised maps (``fsc_random``) measures the
    mask-induced correlation, and from that shell on
    ``fsc_true = (fsc_masked - fsc_random) / (1 - fsc_random)`` (before it, ``fsc_masked``).
    Returns a dict of float64 arrays ``freqs_A``, ``fsc_unmasked``, ``fsc_masked``, ``fsc_random``,
    ``fsc_true`` and ``randomise_from_shell`` (int).
    """
    freqs, unmasked = fsc(map1, map2, voxel_A=voxel_A)
    _, masked = fsc(map1, map2, voxel_A=voxel_A, mask=mask)
    below = np.nonzero(unmasked[1:] < randomise_below_fsc)[0]
    start = int(below[0]) + 1 if below.size else len(freqs)
    rng = np.random.default_rng(0) if rng is None else rng
    if start < len(freqs):
        r1 = phase_randomise(map1, start, rng=rng)
        r2 = phase_randomise(map2, start, rng=rng)
        _, rand = fsc(r1, r2, voxel_A=voxel_A, mask=mask)
    else:
        rand = np.zeros_like(masked)
    true = masked.copy()
    tail = slice(start, None)
    denom = 1.0 - rand[tail]
    true[tail] = np.where(denom > 1e-6, (masked[tail] - rand[tail]) / np.where(denom > 1e-6, denom, 1.0), 0.0)
    return {"freqs_A": freqs, "fsc_unmasked": unmasked, "fsc_masked": masked, "fsc_random": rand,
            "fsc_true": true, "randomise_from_shell": start}
