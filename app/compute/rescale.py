"""Binning by Fourier cropping (anti-aliased), shared by every step that bins images or volumes.

Fourier cropping keeps the frequencies below the new Nyquist frequency unchanged and discards the rest, so
nothing above the new Nyquist aliases back (unlike block averaging, whose sinc response lets it through).
The mean of the image is kept. Works on numpy and CuPy arrays (backend from the input).

Conventions: images are (..., ny, nx) arrays; a binning factor ``b`` turns a pixel size ``p`` into ``p * b``;
the output size is ``floor(n / b)`` rounded down to an even number (so that the cropped spectrum is
symmetric), at least 2. :func:`fourier_bin` keeps the image centre of :mod:`tomoguide.geometry` and the exact
pixel size: output pixel ``j`` samples the input at ``(n - 1) / 2 + b (j - (m - 1) / 2)``, so a position ``s`` px
from the centre becomes ``s / b`` px — what :meth:`TiltSeriesGeometry.at_binning` assumes for shifts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tomoguide.compute.backend import fft, xp_of


def binned_size(n: int, factor: float) -> int:
    """Output length for an axis of ``n`` px binned by ``factor`` (even, ≥ 2)."""
    if factor < 1:
        raise ValueError(f"binning factor {factor} < 1")
    m = int(np.floor(n / factor))
    m -= m % 2
    return max(m, 2)


def _crop_axis_full(spec: Any, axis: int, m: int) -> Any:
    """Keep the m lowest frequencies of a full, fft-ordered axis: [0 .. ceil(m/2)-1] and [-floor(m/2) .. -1]."""
    xp = xp_of(spec)
    n = spec.shape[axis]
    if m >= n:
        return spec
    pos, neg = (m + 1) // 2, m // 2
    idx = xp.concatenate([xp.arange(pos), xp.arange(n - neg, n)])
    return xp.take(spec, idx, axis=axis)


def fourier_crop(data: Any, out_shape: tuple[int, ...], shift_px: tuple[float, ...] | None = None) -> Any:
    """Fourier-crop the last ``len(out_shape)`` axes of ``data`` to ``out_shape`` (each ≤ the input), float32.

    The mean is kept; the result is real. The highest kept frequency on an even axis (the new Nyquist) is
    zeroed, since its sign is ambiguous after cropping. ``shift_px`` (per cropped axis, input px): the input is
    first moved so that output sample 0 lies at input position ``shift_px`` (default 0: sample ``j`` at
    ``j * n / m``).
    """
    xp = xp_of(data)
    F = fft(xp)
    nd = len(out_shape)
    axes = tuple(range(data.ndim - nd, data.ndim))
    in_shape = tuple(data.shape[a] for a in axes)
    if any(o > i for o, i in zip(out_shape, in_shape)):
        raise ValueError(f"fourier_crop: output {out_shape} larger than input {in_shape}")
    if tuple(out_shape) == in_shape:
        return xp.asarray(data, dtype=xp.float32)
    spec = F.rfftn(xp.asarray(data, dtype=xp.float32), axes=axes)
    if shift_px is not None and any(abs(o) > 1e-9 for o in shift_px):
        for a, n, o in zip(axes, in_shape, shift_px):
            k = F.rfftfreq(n) if a == axes[-1] else F.fftfreq(n)
            shape = [1] * spec.ndim
            shape[a] = k.shape[0]
            ramp = xp.exp(2j * np.pi * xp.asarray(k) * o).reshape(shape)  # g(x) = f(x + o)
            spec = spec * ramp.astype(spec.dtype)
    for a, m in zip(axes[:-1], out_shape[:-1]):
        spec = _crop_axis_full(spec, a, m)
        if m % 2 == 0:  # zero the new Nyquist row (index m/2 after cropping holds -m/2)
            sl = [slice(None)] * spec.ndim
            sl[a] = slice(m // 2, m // 2 + 1)
            spec[tuple(sl)] = 0
    m_last = out_shape[-1]
    spec = spec[..., : m_last // 2 + 1]
    if m_last % 2 == 0:
        spec[..., m_last // 2] = 0
    out = F.irfftn(spec, s=out_shape, axes=axes)
    scale = float(np.prod(out_shape)) / float(np.prod(in_shape))
    return (out * scale).astype(xp.float32)


def fourier_bin(data: Any, factor: float, ndim: int = 2) -> Any:
    """Bin the last ``ndim`` axes of ``data`` by ``factor`` (≥ 1) keeping the geometry's image centre.

    Fourier cropping resamples a whole period of ``n`` px into ``m`` samples, i.e. with a spacing of ``n / m`` px,
    which is the factor only when ``n`` is a multiple of ``m``. So each axis is first cut, about its centre, to
    ``n' = round(m * factor)`` px (at most ``2 * factor`` px are lost at the edges), then cropped in Fourier space
    with a sub-pixel shift that puts the output centre ``(m - 1) / 2`` on the input centre ``(n - 1) / 2``: the
    pixel size becomes exactly ``factor`` times larger (for integer factors; otherwise to within
    ``|n' - m factor| / n'``) and a position ``s`` px from the centre becomes ``s / factor`` px.
    """
    shape = tuple(binned_size(n, factor) for n in data.shape[-ndim:])
    region = [slice(None)] * data.ndim
    shifts = []
    for ax, (n, m) in enumerate(zip(data.shape[-ndim:], shape)):
        n_cut = min(n, int(round(m * factor)))
        start = (n - n_cut) // 2
        delta = (n - n_cut) / 2.0 - start  # 0 or 0.5: the cut's centre lies delta px before the input centre
        region[data.ndim - ndim + ax] = slice(start, start + n_cut)
        shifts.append((n_cut - 1) / 2.0 + delta - (n_cut / m) * (m - 1) / 2.0)
    return fourier_crop(data[tuple(region)], shape, shift_px=tuple(shifts))


def bin_to_at_most(image: Any, max_px: int) -> Any:
    """Bin a 2D image by the smallest integer factor that makes both sides ≤ ``max_px`` (factor 1: unchanged)."""
    ny, nx = image.shape[-2:]
    factor = max(1, int(np.ceil(max(ny, nx) / max_px)))
    if factor == 1:
        return image.astype(np.float32) if hasattr(image, "astype") else image
    return fourier_bin(image, factor, ndim=2)
