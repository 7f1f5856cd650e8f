"""CTF correction by phase flipping in strips parallel to the tilt axis (IMOD ``ctfphaseflip``-like).

A tilted specimen has a defocus gradient across the tilt axis: every point at the signed distance ``x_perp``
(px) from the tilt axis is seen at the defocus

    ``Δf(x, y) = Δf_centre − h · tan β · x_perp · pixel_size_A``,
    ``x_perp = (x − c_x) cos θ + (y − c_y) sin θ``,  ``(c_x, c_y) = ((nx − 1)/2, (ny − 1)/2)``

(β the true tilt, θ the tilt-axis angle from image +Y counter-clockwise, ``h`` = ``defocus_handedness``;
the convention of :mod:`tomoguide.geometry` and :mod:`tomoguide.compute.ctffit`; positive defocus =
underfocus, Å). The image is cut into **strips** parallel to the tilt axis whose centre lines are
``strip_width_px`` apart, by default ``defocus_tolerance_A / (pixel · |tan β|)``: neighbouring centre lines
differ by ``defocus_tolerance_A`` in defocus (default 2000 Å, the number of IMOD's ``DefocusTol`` default,
200 nm). Each strip is corrected with the CTF at the defocus of its centre line: a padded region around the
strip (the strip, its blending ramps and ``pad_px`` of context on each side, the full image length along
the axis) is Fourier transformed, multiplied by the sign of the CTF and transformed back. The corrected
strips are blended with weights that form a partition of unity: 1 in the strip core and linear ramps
``interpolation_width_px`` wide across each seam; the default (``= strip_width_px``) interpolates linearly
between neighbouring centre lines, so a pixel between two lines gets the mix of the two corrections.

Relation to IMOD's ctfphaseflip: IMOD puts its strip centre lines ``InterpolationWidth`` pixels apart
(typically 15-20 px) and interpolates linearly between them, while ``DefocusTol`` sets how wide a region around
each centre line is transformed. Here the spacing of the centre lines follows the tolerance (fewer strips,
far faster); ``strip_width_px=20`` gives IMOD-like spacing, and a smaller ``defocus_tolerance_A`` gives
a finer correction (the phase error of a defocus error δ is ``π λ δ k²``: 1000 Å at 16 Å resolution is
0.24 rad at 300 kV).

Which image
    The functions work on **any** image whose tilt axis is at ``tilt_axis_deg`` in it: a raw view
    (``tilt_axis_deg`` = the geometry's axis angle; strips are then rotated bands) or an aligned view
    (``tilt_axis_deg = 0``: the axis is the image Y axis, strips are column bands, as IMOD's ctfphaseflip
    on an aligned stack). ``defocus_*`` are the defocus at **the centre of the given image**; the astigmatism
    angle is measured in the given image (from its X axis towards Y). :func:`phase_flip_series` takes a
    :class:`~tomoguide.geometry.TiltSeriesGeometry` and converts a per-view defocus table to either frame.

Contrast
    The CTF of :mod:`tomoguide.compute.ctf` is negative at low frequency in underfocus (dark particles).
    With ``keep_contrast=True`` (default: the corrected view keeps the look of the input) the image is multiplied by
    ``sign(CTF(k)) · sign(CTF(0))``: the corrected image has the transfer ``−|CTF|`` (for zero phase shift):
    dark particles stay dark and the image mean is kept. ``keep_contrast=False`` multiplies by ``sign(CTF)``
    (transfer ``+|CTF|``: particles bright, the mean negated). ``sign(−sin(χ + α))`` is evaluated from the
    parity of ``floor((χ + α)/π)`` (``sin`` = 0 counts as positive, so the sign is never 0).

Padding
    ``pad_px`` (default: the CTF's delocalisation at Nyquist for the largest defocus in the image,
    ``(λ Δf k_N + Cs λ³ k_N³) / pixel``, plus 8 px) keeps the wrap-around of each strip's FFT away from the
    part of it that is kept. When a padded strip region would be as wide as the image (large tilt-axis
    angles away from the image axes, or few strips), the whole image is transformed once and each strip's
    correction is an inverse FFT of the whole image.

Array module: taken from the input (numpy; cupy through :mod:`tomoguide.compute.backend`). Arithmetic in
float32/complex64 for images, float64 for the geometry; output float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import scipy.fft

from tomoguide.compute import ctf as ctfmod
from tomoguide.compute.backend import fft as _fft
from tomoguide.compute.backend import xp_of

__all__ = [
    "DEFAULT_DEFOCUS_TOLERANCE_A",
    "StripPlan",
    "plan_strips",
    "flip_sign",
    "phase_flip",
    "phase_flip_reference",
    "phase_flip_stack",
    "phase_flip_series",
    "centre_defocus_shift_A",
    "delocalisation_px",
]

#: Default defocus step between strip centre lines (Å): the number of IMOD's ``DefocusTol`` default (200 nm).
DEFAULT_DEFOCUS_TOLERANCE_A = 2000.0
#: Elements per batch of padded strips (float32): bounds the memory of one FFT batch (~64 MB complex).
_BATCH_ELEMENTS = 1 << 23
#: Narrowest blend at a seam (px): ``interpolation_width_px = 0`` means hard seams up to this.
_MIN_RAMP_PX = 1e-3


# --------------------------------------------------------------------------------------------------------
# Strip plan
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StripPlan:
    """Where the strips of one view lie and which defocus each gets.

    ``centres_px`` (n,) float64: the strips' centre lines as signed distances ``x_perp`` (px) from the tilt
    axis through the image centre (0 is a strip centre; spacing ``strip_width_px``); ``defocus_offsets_A``
    (n,): defocus of each centre line minus the image-centre defocus (``−h tan β x_perp pixel``);
    ``interpolation_width_px``: width of the linear blend across each seam (≤ ``strip_width_px``).
    One strip (``n = 1``, ``strip_width_px = inf``) for an untilted view.
    """

    centres_px: np.ndarray
    defocus_offsets_A: np.ndarray
    strip_width_px: float
    interpolation_width_px: float
    image_shape: tuple[int, int]
    tilt_axis_deg: float

    @property
    def n_strips(self) -> int:
        return int(self.centres_px.size)

    def x_perp_px(self, x_px: Any, y_px: Any) -> Any:
        """Signed distance (px) of pixels ``(x, y)`` from the tilt axis through the image centre."""
        cy, cx = (self.image_shape[0] - 1) / 2.0, (self.image_shape[1] - 1) / 2.0
        t = math.radians(self.tilt_axis_deg)
        return (x_px - cx) * math.cos(t) + (y_px - cy) * math.sin(t)

    def weights(self, x_perp_px: Any, xp: ModuleType = np) -> Any:
        """Blending weights ``(n, *x_perp.shape)`` (float32) of every strip at distances ``x_perp_px``;
        they sum to 1 everywhere (the outermost strips extend to the image edges)."""
        u = xp.asarray(x_perp_px, dtype=xp.float64)
        centres = xp.asarray(self.centres_px, dtype=xp.float64)
        shape = (-1,) + (1,) * u.ndim
        return _strip_weights(u[None], centres.reshape(shape), float(centres[0]), float(centres[-1]),
                              self.strip_width_px, self.interpolation_width_px, xp)


def _strip_weights(u: Any, centre: Any, first: float, last: float, width: float, ramp: float,
                   xp: ModuleType) -> Any:
    """Partition-of-unity weight of the strip at ``centre`` (broadcasts) at distances ``u`` (px)."""
    if not math.isfinite(width):
        return xp.ones(xp.broadcast_shapes(u.shape, centre.shape), dtype=xp.float32)
    ramp = max(ramp, _MIN_RAMP_PX)  # "hard" seams: a 0.001 px blend, so a point on a seam gets ½ + ½
    uc = xp.clip(u, first, last)
    half = 0.5 * width + 0.5 * ramp
    d = xp.abs(uc - centre)
    return xp.clip((half - d) / ramp, 0.0, 1.0).astype(xp.float32)


def _weights_inplace(d: Any, first: Sequence[bool], last: Sequence[bool], width: float, ramp: float,
                     xp: ModuleType) -> Any:
    """Weights from ``d = x_perp − centre`` (m, ...) float32, overwriting ``d``; the first strip extends to
    −∞ and the last to +∞ (``first``/``last`` per entry of the batch)."""
    for j in range(d.shape[0]):
        if first[j]:
            xp.maximum(d[j], 0.0, out=d[j])
        if last[j]:
            xp.minimum(d[j], 0.0, out=d[j])
    xp.abs(d, out=d)
    ramp = max(ramp, _MIN_RAMP_PX)
    half = 0.5 * width + 0.5 * ramp
    xp.subtract(xp.float32(half), d, out=d)
    d *= xp.float32(1.0 / ramp)
    return xp.clip(d, 0.0, 1.0, out=d)


def plan_strips(
    image_shape: tuple[int, int],
    *,
    pixel_size_A: float,
    tilt_deg: float,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = -1,
    defocus_tolerance_A: float = DEFAULT_DEFOCUS_TOLERANCE_A,
    strip_width_px: float | None = None,
    interpolation_width_px: float | None = None,
    min_strip_width_px: float = 4.0,
) -> StripPlan:
    """The strips of a view of ``image_shape = (ny, nx)`` tilted by ``tilt_deg`` (true tilt, degrees).

    ``strip_width_px`` (default ``defocus_tolerance_A / (pixel_size_A · |tan β|)``, at least
    ``min_strip_width_px``) is the spacing of the centre lines; ``interpolation_width_px`` (default =
    ``strip_width_px``) the width of the blend at each seam, clipped to ``[0, strip_width_px]``.
    """
    ny, nx = int(image_shape[0]), int(image_shape[1])
    if pixel_size_A <= 0:
        raise ValueError(f"pixel_size_A must be > 0, got {pixel_size_A}")
    if defocus_handedness not in (1, -1):
        raise ValueError(f"defocus_handedness must be +1 or -1, got {defocus_handedness}")
    slope_A_per_px = -defocus_handedness * math.tan(math.radians(tilt_deg)) * pixel_size_A
    if strip_width_px is None:
        if defocus_tolerance_A <= 0:
            raise ValueError(f"defocus_tolerance_A must be > 0, got {defocus_tolerance_A}")
        width = defocus_tolerance_A / abs(slope_A_per_px) if slope_A_per_px != 0 else math.inf
        width = max(width, float(min_strip_width_px))
    else:
        if strip_width_px <= 0:
            raise ValueError(f"strip_width_px must be > 0, got {strip_width_px}")
        width = float(strip_width_px)
    # Largest |x_perp| over the image corners.
    t = math.radians(tilt_axis_deg)
    hx, hy = (nx - 1) / 2.0, (ny - 1) / 2.0
    reach = abs(hx * math.cos(t)) + abs(hy * math.sin(t))
    m = int(math.ceil((reach - 0.5 * width) / width)) if math.isfinite(width) and reach > 0.5 * width else 0
    if m == 0:
        width = math.inf
    centres = np.arange(-m, m + 1, dtype=np.float64) * (width if m else 0.0)
    ramp = width if interpolation_width_px is None else float(interpolation_width_px)
    ramp = 0.0 if not math.isfinite(width) else min(max(ramp, 0.0), width)
    return StripPlan(centres_px=centres, defocus_offsets_A=slope_A_per_px * centres, strip_width_px=width,
                     interpolation_width_px=ramp, image_shape=(ny, nx), tilt_axis_deg=float(tilt_axis_deg))


def delocalisation_px(defocus_A: float, *, pixel_size_A: float, voltage_kV: float = 300.0,
                      cs_mm: float = 2.7) -> float:
    """Delocalisation (px) of the CTF at Nyquist: ``(λ |Δf| k_N + Cs λ³ k_N³) / pixel``, ``k_N = 1/(2 pixel)``
    (the distance over which one Fourier component's phase error moves image detail)."""
    lam = ctfmod.electron_wavelength_A(voltage_kV)
    kn = 0.5 / pixel_size_A
    return (lam * abs(defocus_A) * kn + cs_mm * 1e7 * lam**3 * kn**3) / pixel_size_A


# --------------------------------------------------------------------------------------------------------
# Sign of the CTF
# --------------------------------------------------------------------------------------------------------


def _phase_terms(shape: tuple[int, int], pixel_size_A: float, defocus_u_A: float, defocus_v_A: float,
                 astig_angle_deg: float, voltage_kV: float, cs_mm: float, amplitude_contrast: float,
                 phase_shift_rad: float, xp: ModuleType) -> tuple[Any, Any, bool]:
    """``q0 = (χ + α)/π`` at the centre defocus and ``qd = λ k²`` (dq per Å of defocus) on the rfft grid,
    float32 (ny, nx//2+1), and the parity of the k = 0 term (True: CTF(0) > 0)."""
    kx, ky = ctfmod.frequency_grid(shape, pixel_size_A, rfft=True, xp=xp)
    lam = ctfmod.electron_wavelength_A(voltage_kV)
    a = float(amplitude_contrast)
    alpha = math.atan2(a, math.sqrt(1.0 - a * a))
    c = ctfmod.chi(kx, ky, defocus_u_A, defocus_v_A, astig_angle_deg, cs_mm, lam, phase_shift_rad)
    q0 = ((c + alpha) / math.pi).astype(xp.float32)
    qd = (lam * (kx * kx + ky * ky)).astype(xp.float32)  # d(χ/π)/dΔf = λ k²
    odd0 = bool(math.floor((phase_shift_rad + alpha) / math.pi) % 2)
    return q0, qd, odd0


def _signs(q0: Any, qd: Any, offsets_A: Any, odd0: bool, keep_contrast: bool, xp: ModuleType) -> Any:
    """(m, ny, nx//2+1) float32 multipliers for the defocus offsets ``offsets_A`` (m,)."""
    off = xp.asarray(offsets_A, dtype=xp.float32).reshape(-1, 1, 1)
    odd = (xp.floor(q0[None] + off * qd[None]).astype(xp.int64) & 1).astype(bool)
    if keep_contrast:
        return xp.where(odd == odd0, xp.float32(1.0), xp.float32(-1.0))
    # sign(CTF) = sign(-sin(χ + α)): negative where floor((χ+α)/π) is even.
    return xp.where(odd, xp.float32(1.0), xp.float32(-1.0))


def flip_sign(
    shape: tuple[int, int],
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    astig_angle_deg: float,
    *,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
    keep_contrast: bool = True,
    xp: ModuleType | None = None,
) -> Any:
    """The phase-flip multiplier (±1, float32) on the rfft grid ``(ny, nx//2+1)`` of an image of ``shape``:
    ``sign(CTF) · sign(CTF(0))`` with ``keep_contrast`` (default), else ``sign(CTF)``."""
    xp = np if xp is None else xp
    q0, qd, odd0 = _phase_terms(shape, pixel_size_A, defocus_u_A, defocus_v_A, astig_angle_deg, voltage_kV,
                                cs_mm, amplitude_contrast, phase_shift_rad, xp)
    return _signs(q0, qd, [0.0], odd0, keep_contrast, xp)[0]


# --------------------------------------------------------------------------------------------------------
# Phase flipping
# --------------------------------------------------------------------------------------------------------


def phase_flip(
    image: Any,
    *,
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    astig_angle_deg: float,
    tilt_deg: float,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = -1,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
    defocus_tolerance_A: float = DEFAULT_DEFOCUS_TOLERANCE_A,
    strip_width_px: float | None = None,
    interpolation_width_px: float | None = None,
    pad_px: int | None = None,
    keep_contrast: bool = True,
) -> Any:
    """Phase-flip one view ``image`` (ny, nx) in strips parallel to its tilt axis; returns float32 (ny, nx).

    ``pixel_size_A``: pixel size of ``image`` (Å). ``defocus_u_A >= defocus_v_A`` (Å, underfocus positive)
    and ``astig_angle_deg`` (U axis from image X towards Y): the CTF at the **image centre**.
    ``tilt_deg``: true tilt β (nominal + offset, degrees); ``tilt_axis_deg``: the tilt axis in this image
    (from +Y, counter-clockwise; 0 for an aligned image); ``defocus_handedness`` (+1/−1): the sign of the
    defocus gradient (module docstring). ``voltage_kV``, ``cs_mm``, ``amplitude_contrast``,
    ``phase_shift_rad``: optics. Strip layout: :func:`plan_strips`; ``pad_px``: context on each side of a
    strip region (default from :func:`delocalisation_px`). ``keep_contrast``: see the module docstring.
    """
    xp = xp_of(image)
    img = xp.asarray(image, dtype=xp.float32)
    if img.ndim != 2:
        raise ValueError(f"image must be 2D (ny, nx), got shape {tuple(img.shape)}")
    ny, nx = int(img.shape[0]), int(img.shape[1])
    plan = plan_strips((ny, nx), pixel_size_A=pixel_size_A, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg,
                       defocus_handedness=defocus_handedness, defocus_tolerance_A=defocus_tolerance_A,
                       strip_width_px=strip_width_px, interpolation_width_px=interpolation_width_px)
    optics = dict(voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                  phase_shift_rad=phase_shift_rad)
    f = _fft(xp)
    if plan.n_strips == 1:
        sign = flip_sign((ny, nx), pixel_size_A, defocus_u_A, defocus_v_A, astig_angle_deg,
                         keep_contrast=keep_contrast, xp=xp, **optics)
        return f.irfft2(f.rfft2(img) * sign, s=(ny, nx)).astype(xp.float32, copy=False)

    if pad_px is None:
        worst = max(abs(defocus_u_A), abs(defocus_v_A)) + float(np.max(np.abs(plan.defocus_offsets_A)))
        pad_px = int(math.ceil(delocalisation_px(worst, pixel_size_A=pixel_size_A, voltage_kV=voltage_kV,
                                                 cs_mm=cs_mm))) + 8
    # Work with the strips crossing the columns: transpose when the axis is closer to image X.
    t = math.radians(tilt_axis_deg)
    c, s = math.cos(t), math.sin(t)
    transpose = abs(c) < abs(s)
    astig = astig_angle_deg
    if transpose:
        img = img.T
        c, s = s, c
        astig = 90.0 - astig_angle_deg
    out = _flip_strips(img, plan, c, s, int(pad_px), pixel_size_A, defocus_u_A, defocus_v_A, astig,
                       keep_contrast, optics, xp)
    return out.T if transpose else out


def _flip_strips(img: Any, plan: StripPlan, c: float, s: float, pad_px: int, pixel_size_A: float,
                 defocus_u_A: float, defocus_v_A: float, astig_deg: float, keep_contrast: bool,
                 optics: dict[str, float], xp: ModuleType) -> Any:
    """Strips crossing the columns of ``img`` (h, w): ``x_perp = (x − c_x) c + (y − c_y) s``, ``|c| ≥ |s|``."""
    f = _fft(xp)
    h, w = int(img.shape[0]), int(img.shape[1])
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    centres = plan.centres_px
    half = 0.5 * plan.strip_width_px + 0.5 * plan.interpolation_width_px
    support_cols = 2.0 * half / abs(c) + (h - 1) * abs(s / c)
    need = int(math.ceil(support_cols)) + 2 * pad_px + 2
    width = scipy.fft.next_fast_len(need, real=True)
    yy = xp.arange(h, dtype=xp.float64)[:, None]
    out = xp.zeros((h, w), dtype=xp.float32)

    if width >= w:
        # One transform of the whole image; one inverse transform per strip.
        q0, qd, odd0 = _phase_terms((h, w), pixel_size_A, defocus_u_A, defocus_v_A, astig_deg,
                                    optics["voltage_kV"], optics["cs_mm"], optics["amplitude_contrast"],
                                    optics["phase_shift_rad"], xp)
        spec = f.rfft2(img)
        u = ((xp.arange(w, dtype=xp.float64)[None, :] - cx) * c + (yy - cy) * s).astype(xp.float32)
        batch = max(1, _BATCH_ELEMENTS // (h * w))
        for b0 in range(0, plan.n_strips, batch):
            sel = slice(b0, b0 + batch)
            signs = _signs(q0, qd, plan.defocus_offsets_A[sel], odd0, keep_contrast, xp)
            res = f.irfft2(spec[None] * signs, s=(h, w)).astype(xp.float32, copy=False)
            ids = range(b0, min(b0 + batch, plan.n_strips))
            d = u[None] - xp.asarray(centres[sel], dtype=xp.float32).reshape(-1, 1, 1)
            wts = _weights_inplace(d, [i == 0 for i in ids], [i == plan.n_strips - 1 for i in ids],
                                   plan.strip_width_px, plan.interpolation_width_px, xp)
            res *= wts
            out += res.sum(axis=0)
        return out

    # Column range of every strip's support (over all rows), centred crops of ``width`` columns.
    ends = np.stack([cx + (centres + sgn * half - (yv - cy) * s) / c
                     for sgn in (-1.0, 1.0) for yv in (0.0, h - 1.0)], axis=1)
    mid = 0.5 * (ends.min(axis=1) + ends.max(axis=1))
    x0 = np.clip(np.round(mid - 0.5 * width).astype(np.int64), 0, w - width)
    q0, qd, odd0 = _phase_terms((h, width), pixel_size_A, defocus_u_A, defocus_v_A, astig_deg,
                                optics["voltage_kV"], optics["cs_mm"], optics["amplitude_contrast"],
                                optics["phase_shift_rad"], xp)
    cols = xp.arange(width, dtype=xp.float32)[None, None, :]
    rows = ((xp.arange(h, dtype=xp.float32) - xp.float32(cy)) * xp.float32(s))[None, :, None]
    batch = max(1, _BATCH_ELEMENTS // (h * width))
    for b0 in range(0, plan.n_strips, batch):
        idx = range(b0, min(b0 + batch, plan.n_strips))
        crops = xp.stack([img[:, int(x0[i]):int(x0[i]) + width] for i in idx])
        signs = _signs(q0, qd, plan.defocus_offsets_A[b0:b0 + len(idx)], odd0, keep_contrast, xp)
        res = f.irfft2(f.rfft2(crops) * signs, s=(h, width)).astype(xp.float32, copy=False)
        # x_perp − centre of every crop pixel, then the weight, in place (float32).
        rel = xp.asarray(x0[b0:b0 + len(idx)] - cx - centres[b0:b0 + len(idx)] / c,
                         dtype=xp.float32).reshape(-1, 1, 1)
        d = (cols + rel) * xp.float32(c) + rows
        wts = _weights_inplace(d, [i == 0 for i in idx], [i == plan.n_strips - 1 for i in idx],
                               plan.strip_width_px, plan.interpolation_width_px, xp)
        res *= wts
        for j, i in enumerate(idx):
            out[:, int(x0[i]):int(x0[i]) + width] += res[j]
    return out


def phase_flip_reference(
    image: np.ndarray,
    *,
    pixel_size_A: float,
    defocus_u_A: float,
    defocus_v_A: float,
    astig_angle_deg: float,
    tilt_deg: float,
    tilt_axis_deg: float = 0.0,
    defocus_handedness: int = -1,
    voltage_kV: float = 300.0,
    cs_mm: float = 2.7,
    amplitude_contrast: float = 0.1,
    phase_shift_rad: float = 0.0,
    defocus_tolerance_A: float = DEFAULT_DEFOCUS_TOLERANCE_A,
    strip_width_px: float | None = None,
    interpolation_width_px: float | None = None,
    keep_contrast: bool = True,
) -> np.ndarray:
    """Slow reference of :func:`phase_flip` (numpy, float64): for every strip the whole image is filtered
    with ``sign(CTF)`` from :func:`tomoguide.compute.ctf.ctf_2d` at the strip's defocus and the results are
    blended with the strip weights. Same arguments; no padding question (whole-image FFTs)."""
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    plan = plan_strips((ny, nx), pixel_size_A=pixel_size_A, tilt_deg=tilt_deg, tilt_axis_deg=tilt_axis_deg,
                       defocus_handedness=defocus_handedness, defocus_tolerance_A=defocus_tolerance_A,
                       strip_width_px=strip_width_px, interpolation_width_px=interpolation_width_px)
    spec = np.fft.rfft2(img)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float64)
    wts = plan.weights(plan.x_perp_px(xx, yy))
    c0 = ctfmod.ctf_2d((1, 1), pixel_size_A, defocus_u_A, defocus_v_A, astig_angle_deg, voltage_kV=voltage_kV,
                       cs_mm=cs_mm, amplitude_contrast=amplitude_contrast, phase_shift_rad=phase_shift_rad,
                       dtype=np.float64)[0, 0]
    s0 = -1.0 if c0 < 0 or (c0 == 0) else 1.0
    out = np.zeros((ny, nx))
    for i, off in enumerate(plan.defocus_offsets_A):
        ctf = ctfmod.ctf_2d((ny, nx), pixel_size_A, defocus_u_A + off, defocus_v_A + off, astig_angle_deg,
                            voltage_kV=voltage_kV, cs_mm=cs_mm, amplitude_contrast=amplitude_contrast,
                            phase_shift_rad=phase_shift_rad, rfft=True, dtype=np.float64)
        sign = np.where(ctf > 0, 1.0, -1.0)
        if keep_contrast:
            sign = sign * s0
        out += wts[i] * np.fft.irfft2(spec * sign, s=(ny, nx))
    return out


# --------------------------------------------------------------------------------------------------------
# Stacks
# --------------------------------------------------------------------------------------------------------


def _per_view(value: Any, n: int, name: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    if arr.size == 1:
        return np.full(n, float(arr[0]))
    if arr.size != n:
        raise ValueError(f"{name} has {arr.size} entries, the stack has {n} views")
    return arr


def phase_flip_stack(
    stack: Any,
    *,
    pixel_size_A: float,
    defocus_u_A: Sequence[float] | np.ndarray,
    defocus_v_A: Sequence[float] | np.ndarray,
    astig_angle_deg: Sequence[float] | np.ndarray,
    tilt_deg: Sequence[float] | np.ndarray,
    tilt_axis_deg: float | Sequence[float] | np.ndarray = 0.0,
    defocus_handedness: int = -1,
    skip: Sequence[bool] | np.ndarray | None = None,
    **kwargs: Any,
) -> Any:
    """Phase-flip every view of ``stack`` (n, ny, nx); returns float32 (n, ny, nx).

    Per-view arrays (n,): ``defocus_u_A``, ``defocus_v_A``, ``astig_angle_deg`` (at each view's image
    centre), ``tilt_deg`` (true tilts); ``tilt_axis_deg`` a scalar or (n,). ``skip`` (n,) bool: views copied
    unchanged (e.g. excluded views, or failed CTF fits). Other keywords go to :func:`phase_flip`.
    """
    xp = xp_of(stack)
    data = xp.asarray(stack)
    if data.ndim != 3:
        raise ValueError(f"stack must be 3D (n, ny, nx), got shape {tuple(data.shape)}")
    n = int(data.shape[0])
    du = _per_view(defocus_u_A, n, "defocus_u_A")
    dv = _per_view(defocus_v_A, n, "defocus_v_A")
    ang = _per_view(astig_angle_deg, n, "astig_angle_deg")
    tilt = _per_view(tilt_deg, n, "tilt_deg")
    axis = _per_view(tilt_axis_deg, n, "tilt_axis_deg")
    skip_arr = np.zeros(n, bool) if skip is None else np.asarray(skip, dtype=bool).reshape(-1)
    if skip_arr.size != n:
        raise ValueError(f"skip has {skip_arr.size} entries, the stack has {n} views")
    out = xp.empty(data.shape, dtype=xp.float32)
    for i in range(n):
        if skip_arr[i]:
            out[i] = data[i]
            continue
        out[i] = phase_flip(data[i], pixel_size_A=pixel_size_A, defocus_u_A=float(du[i]),
                            defocus_v_A=float(dv[i]), astig_angle_deg=float(ang[i]), tilt_deg=float(tilt[i]),
                            tilt_axis_deg=float(axis[i]), defocus_handedness=defocus_handedness, **kwargs)
    return out


def centre_defocus_shift_A(
    geometry: Any,
    *,
    aligned: bool,
    defocus_at: Literal["image_centre", "tomogram_centre"] = "image_centre",
) -> np.ndarray:
    """(n,) Å to add to a per-view defocus table given at ``defocus_at`` to get the defocus at the centre
    of the images to be flipped (raw views, or views aligned by the geometry's xf).

    The specimen mid-plane (z = 0 of the tomogram frame) is assumed: the raw image centre lies at aligned
    ``x = d_x`` (the xf shift, px at the record's binning) from the aligned centre, where the tomogram
    centre projects, so ``Δf(raw centre) = Δf(tomogram centre) − h tan β d_x pixel`` and the aligned
    centre has the tomogram-centre defocus. (A slab tilted against that plane moves the raw-centre value
    by a few Å more; the simulator's truth includes it.)
    """
    m = geometry.xf_array()
    scale = np.sqrt(np.abs(np.linalg.det(m[:, :, :2])))  # magnification of the xf, 1 for a rotation
    dx = m[:, 0, 2] / scale
    grad = geometry.defocus_handedness * np.tan(np.radians(geometry.true_tilt_deg())) \
        * geometry.pixel_size_binned_A * dx  # Δf(aligned centre) − Δf(raw centre)
    n = geometry.n_views
    if defocus_at == "image_centre":
        return grad if aligned else np.zeros(n)
    if defocus_at == "tomogram_centre":
        return np.zeros(n) if aligned else -grad
    raise ValueError(f"defocus_at must be 'image_centre' or 'tomogram_centre', got {defocus_at!r}")


def phase_flip_series(
    stack: Any,
    geometry: Any,
    *,
    defocus_u_A: Sequence[float] | np.ndarray,
    defocus_v_A: Sequence[float] | np.ndarray,
    astig_angle_deg: Sequence[float] | np.ndarray,
    aligned: bool,
    defocus_at: Literal["image_centre", "tomogram_centre"] = "image_centre",
    skip_excluded: bool = True,
    **kwargs: Any,
) -> Any:
    """Phase-flip a tilt series described by a :class:`~tomoguide.geometry.TiltSeriesGeometry`.

    ``stack`` (n, ny, nx): the views in the geometry's order at the geometry's binning (pixel size
    ``geometry.pixel_size_binned_A``), either raw (``aligned=False``: the tilt axis of each view is the
    rotation of its xf, or ``tilt_axis_deg`` when not aligned) or aligned by the geometry's xf
    (``aligned=True``: axis along image Y; astigmatism angles turned by the xf rotation).
    The defocus table (n,) is given at the **raw image centre** (``defocus_at="image_centre"``, what
    CTFFIND-like fits of raw views give) or at the **tomogram centre** (``"tomogram_centre"``, RELION's
    per-tilt defocus, the simulator's truth); it is moved along the tilted specimen plane to the centre of
    the images being flipped using the xf shift ``d``: the raw centre lies at aligned ``x = d_x`` from the
    aligned centre, so ``Δf_aligned_centre = Δf_raw_centre + h tan β d_x pixel``. Optics, true tilts and
    handedness come from the geometry. Excluded views are copied unchanged when ``skip_excluded``.
    Other keywords go to :func:`phase_flip`.
    """
    from tomoguide.geometry import rotation_angle_deg

    n = geometry.n_views
    rot = rotation_angle_deg(geometry.xf_array()[:, :, :2])  # = −tilt axis for A = R(−θ)
    tilt = geometry.true_tilt_deg()
    pix = geometry.pixel_size_binned_A
    h = int(geometry.defocus_handedness)
    du = _per_view(defocus_u_A, n, "defocus_u_A")
    dv = _per_view(defocus_v_A, n, "defocus_v_A")
    ang = _per_view(astig_angle_deg, n, "astig_angle_deg")
    to_target = centre_defocus_shift_A(geometry, aligned=aligned, defocus_at=defocus_at)
    axis = np.zeros(n) if aligned else -rot
    astig = ang + rot if aligned else ang
    o = geometry.optics
    kwargs.setdefault("voltage_kV", o.voltage_kV)
    kwargs.setdefault("cs_mm", o.cs_mm)
    kwargs.setdefault("amplitude_contrast", o.amplitude_contrast)
    skip = np.asarray(geometry.excluded, dtype=bool) if skip_excluded else None
    return phase_flip_stack(stack, pixel_size_A=pix, defocus_u_A=du + to_target, defocus_v_A=dv + to_target,
                            astig_angle_deg=astig, tilt_deg=tilt, tilt_axis_deg=axis, defocus_handedness=h,
                            skip=skip, **kwargs)
