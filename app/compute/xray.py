"""X-ray eraser: find and replace X-ray hits and hot pixels (IMOD ``ccderaser -find`` style, vectorised).

Method (after the automatic mode of IMOD's ccderaser, re-derived for whole-array numpy/scipy operations)
-----------------------------------------------------------------------------------------------------------
1. **Scan statistics.** Local mean ``mu`` and standard deviation ``sd`` over a square scanning region of
   ``scan_size_px`` around every pixel (box filters), made robust to the hits themselves by a second pass
   that leaves out pixels more than 4 SD from the first-pass mean (sigma clipping).
2. **Candidates.** Pixels more than ``scan_criterion`` SD above ``mu`` (a low threshold, so that no peak
   is missed), or whose *difference* from the mean of their 8 neighbours, ``D = (9/8)(v - box3(v))``,
   exceeds ``diff_criterion`` SDs of ``D`` (its clipped SD over the scanning region, which accounts for the
   pixel-to-pixel correlation of the noise). Pixels of constant areas (the fill of aligned or masked images)
   do not count in either statistic.
3. **Peak test against an annulus.** For every candidate, the mean and SD of the pixels in an annulus of
   radii ``max_radius_px`` .. ``max_radius_px + annulus_width_px`` around it (trimmed: the lowest and
   highest 10 % are left out and the SD is rescaled for the trimming, so a neighbouring hit does not
   inflate them; the SD is not allowed below half the scan SD, nor any SD below 5 % of the image's robust
   noise SD). A candidate is a **seed** if it lies more than ``peak_criterion`` annulus SDs above the annulus mean, or if it passes the difference
   criterion and lies more than ``grow_criterion`` annulus SDs above the annulus mean. In both cases it
   must also be *sharp*: stand above the mean of its 8 neighbours by at least ``min_sharpness`` times its
   height above the annulus mean (X-rays are single-pixel events; real image features are band-limited
   and never that sharp, so strong particles, gold beads and noise-free smooth images are left alone).
4. **Growing.** Pixels within ``max_radius_px`` of a seed that lie more than ``grow_criterion`` annulus SDs
   above that seed's annulus mean join it; 8-connected groups that hold a seed form the patches. A patch
   that extends further than ``max_radius_px`` from its centroid is a real feature, not an X-ray: it is
   left alone (counted in :attr:`XrayResult.n_rejected`).
5. **Replacement.** Each patch is replaced by a least-squares polynomial surface (order ``fit_order``:
   0 constant, 1 plane, 2 quadratic) fitted to the pixels in a border ``border_px`` wide around it (pixels
   of other patches excluded; fewer than three times as many border pixels as terms fall back to the
   border mean), optionally plus Gaussian noise with the SD of the fit residuals (``add_noise``).

With ``dark=True`` the same is done for dark outliers (the sign flipped). ``extra_mask`` forces pixels to be
replaced (known defects, hot pixels from :func:`find_hot_pixels`).

Conventions: images are ``(ny, nx)`` arrays (row = y, column = x, pixel units), any real dtype; the output
image is float32. Criteria are in standard deviations. Pixels of the outermost ``edge_exclusion_px``
rows/columns are never seeds (use it for the filled edges of aligned images). Hits touching the image border
are found (the annulus is mirrored at the border). Computation is on the CPU with numpy/scipy; a CuPy input
is copied to the host and the outputs are returned as CuPy arrays.

Hot pixels: on raw (unaligned) frame sums a hot pixel sits at the same place in every tilt;
:func:`find_hot_pixels` finds pixels that are outliers in at least a fraction of the images of a stack (tilt
sums or the frames of one movie), and :func:`erase_xrays_stack` can replace them in every view.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import scipy.ndimage as ndi

from tomoguide.compute.backend import is_gpu_array, to_numpy

__all__ = ["XrayPatch", "XrayResult", "erase_xrays", "erase_xrays_stack", "find_hot_pixels"]

PatchKind = Literal["bright", "dark", "forced"]

_TRIM = 0.10  # fraction trimmed at each end of the annulus values
_CLIP_SD = 4.0  # sigma clipping of the scan statistics


def _trimmed_sd_factor(trim: float) -> float:
    """1 / SD of a standard normal truncated to its central ``1 - 2 trim`` (rescales a trimmed SD)."""
    from statistics import NormalDist

    a = NormalDist().inv_cdf(1.0 - trim)
    phi = math.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    var = 1.0 - 2.0 * a * phi / (1.0 - 2.0 * trim)
    return 1.0 / math.sqrt(var)


_TRIM_SD_FACTOR = _trimmed_sd_factor(_TRIM)
_MAD_TO_SD = 1.482602218505602


@dataclass(frozen=True)
class XrayPatch:
    """One replaced patch: centroid ``(y, x)`` in px (row, column), ``radius_px`` (largest distance of one of
    its pixels from the centroid), ``n_pixels``, ``peak_sd`` (deviation of its strongest pixel from the annulus
    mean, in annulus SDs; NaN for forced patches) and ``kind`` (bright, dark or forced)."""

    y: float
    x: float
    radius_px: float
    n_pixels: int
    peak_sd: float
    kind: PatchKind


@dataclass
class XrayResult:
    """Output of :func:`erase_xrays`.

    ``image`` (ny, nx) float32: the cleaned image; ``mask`` (ny, nx) bool: the replaced pixels; ``patches``:
    one :class:`XrayPatch` per replaced patch; ``n_rejected``: peaks that grew beyond ``max_radius_px``
    (treated as real features and left alone).
    """

    image: Any
    mask: Any
    patches: list[XrayPatch] = field(default_factory=list)
    n_rejected: int = 0

    @property
    def count(self) -> int:
        """Number of replaced patches."""
        return len(self.patches)

    @property
    def n_pixels(self) -> int:
        """Number of replaced pixels."""
        return int(to_numpy(self.mask).sum())


# ----------------------------------------------------------------------------------------------------------
# statistics


def _box(a: np.ndarray, size: int) -> np.ndarray:
    return ndi.uniform_filter(a, size=size, mode="mirror")


def _upsample(c: np.ndarray, f: int, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour upsampling of a coarse (by, bx) map by ``f``, cropped to ``shape``."""
    if f == 1:
        return c[: shape[0], : shape[1]]
    return np.repeat(np.repeat(c, f, axis=0)[: shape[0]], f, axis=1)[:, : shape[1]]


def _block_sums(a: np.ndarray, f: int) -> np.ndarray:
    """Sums over f x f blocks (float64); the image is padded at the far edges by zeros."""
    ny, nx = a.shape
    by, bx = -(-ny // f), -(-nx // f)
    if (by * f, bx * f) != (ny, nx):
        p = np.zeros((by * f, bx * f), dtype=a.dtype)
        p[:ny, :nx] = a
        a = p
    return a.reshape(by * f, bx, f).sum(axis=2, dtype=np.float64).reshape(by, f, bx).sum(axis=1)


def _block_counts(n: int, f: int) -> np.ndarray:
    """Number of pixels in each of the ceil(n / f) blocks along one axis."""
    nb = -(-n // f)
    c = np.full(nb, float(f))
    c[-1] = n - (nb - 1) * f
    return c


def _scan_stats(a: np.ndarray, size: int, valid: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sigma-clipped local mean and SD over ``size`` x ``size`` regions, (ny, nx) float32 each, from the pixels
    where ``valid`` (bool, default all) is true.

    Computed from every second pixel (regions of 40 px and more) on a grid of f x f blocks (f about
    size / 12) with box filters of ``size / f`` blocks, then expanded back (nearest neighbour); the regions
    are so large that neither the sampling nor the block steps matter.
    """
    ny, nx = a.shape
    sub = 2 if size >= 40 else 1
    fs = max(1, int(size) // (12 * sub))
    f = fs * sub
    k = max(1, int(round(size / f)))
    s = np.ascontiguousarray(a[::sub, ::sub]) if sub > 1 else a
    base = None if valid is None else np.ascontiguousarray(valid[::sub, ::sub]).astype(np.float32)
    cnt = np.outer(_block_counts(s.shape[0], fs), _block_counts(s.shape[1], fs))

    def stats(w: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        ws = s if w is None else s * w
        n = np.maximum(_box(cnt if w is None else _block_sums(w, fs), k), 1e-9)
        m = _box(_block_sums(ws, fs), k) / n
        v = np.maximum(_box(_block_sums(ws * s, fs), k) / n - m * m, 0.0)
        return m.astype(np.float32), np.sqrt(v).astype(np.float32)

    m1, s1 = stats(base)
    w = (np.abs(s - _upsample(m1, fs, s.shape)) <= _CLIP_SD * _upsample(s1, fs, s.shape)).astype(np.float32)
    if base is not None:
        w *= base
    m, sd = stats(w)
    return _upsample(m, f, (ny, nx)), _upsample(sd, f, (ny, nx))


def _box3_mean(a: np.ndarray) -> np.ndarray:
    """Mean over the 3 x 3 neighbourhood (mirror-reflected at the edges), float32."""
    p = np.pad(a, 1, mode="reflect")
    r = p[:, :-2] + p[:, 1:-1] + p[:, 2:]
    return (r[:-2] + r[1:-1] + r[2:]) * np.float32(1.0 / 9.0)


def _robust_sd(v: np.ndarray) -> float:
    """MAD-based SD of a 1D sample (0 for an empty or constant sample)."""
    if v.size == 0:
        return 0.0
    med = np.median(v)
    return float(_MAD_TO_SD * np.median(np.abs(v - med)))


def _offsets(r_in: float, r_out: float) -> np.ndarray:
    """(k, 2) int offsets (dy, dx) with ``r_in < |d| <= r_out`` (``r_in < 0`` includes the centre)."""
    r = int(math.ceil(r_out))
    dy, dx = np.mgrid[-r : r + 1, -r : r + 1]
    d = np.hypot(dy, dx)
    sel = (d > r_in) & (d <= r_out)
    return np.stack([dy[sel], dx[sel]], axis=1).astype(np.int64)


def _trimmed_stats(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise trimmed mean and (rescaled) trimmed SD of ``values`` (k, m)."""
    s = np.sort(values, axis=1)
    m = s.shape[1]
    lo = int(math.floor(_TRIM * m))
    mid = s[:, lo : m - lo] if m - 2 * lo >= 2 else s
    mean = mid.mean(axis=1)
    sd = mid.std(axis=1) * (_TRIM_SD_FACTOR if mid is not s else 1.0)
    return mean, sd


@dataclass
class _Stats:
    mu: np.ndarray  # (ny, nx) scan mean of the values
    sd: np.ndarray  # (ny, nx) scan SD of the values, floored at sd_min
    diff: np.ndarray  # (ny, nx) D = (9/8)(v - box3 mean) = v - mean of the 8 neighbours
    sd_diff: np.ndarray  # (ny, nx) scan SD of D, floored
    sd_min: float  # floor of every SD: 5 % of the image's robust noise SD


def _image_stats(a: np.ndarray, scan_size_px: int) -> _Stats:
    ny, nx = a.shape
    size = int(max(3, min(scan_size_px, 2 * max(ny, nx))))
    diff = np.float32(9.0 / 8.0) * (a - _box3_mean(a))
    # pixels of constant areas (the fill of aligned or masked images) do not count in the statistics
    valid = diff != 0
    if nx > 1:
        valid[:, :-1] |= a[:, :-1] != a[:, 1:]
    if ny > 1:
        valid[:-1, :] |= a[:-1, :] != a[1:, :]
    mu, sd = _scan_stats(a, size, valid)
    _, sd_diff = _scan_stats(diff, size, valid)
    step = max(1, int(math.sqrt(a.size / 60_000)))  # subsample large images for the MAD
    ok = valid[::step, ::step]
    sd_v = _robust_sd((a[::step, ::step] - mu[::step, ::step])[ok])
    sd_min = 0.05 * sd_v if sd_v > 0 else 0.05 * float(np.std(a)) + 1e-12
    sd = np.maximum(sd, np.float32(sd_min))
    sd_diff = np.maximum(sd_diff, np.float32(sd_min))
    return _Stats(mu=mu, sd=sd, diff=diff, sd_diff=sd_diff, sd_min=float(sd_min))


# ----------------------------------------------------------------------------------------------------------
# detection


def _find_sign(
    a: np.ndarray,
    padded: np.ndarray,
    pad: int,
    st: _Stats,
    sign: float,
    *,
    peak_criterion: float,
    diff_criterion: float,
    grow_criterion: float,
    scan_criterion: float,
    max_radius_px: float,
    annulus_width_px: float,
    edge_exclusion_px: int,
    min_sharpness: float,
) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Patches of one sign: (labels (ny, nx) int32 with 0 = none, peak SD per label (n,), n labels, n rejected)."""
    ny, nx = a.shape
    sd_floor = st.sd
    dev = sign * (a - st.mu)
    sd_diff = st.sd_diff
    cand = (dev > scan_criterion * sd_floor) | (sign * st.diff > diff_criterion * sd_diff)
    e = int(edge_exclusion_px)
    if e > 0:
        cand[:e, :] = False
        cand[-e:, :] = False
        cand[:, :e] = False
        cand[:, -e:] = False
    cy, cx = np.nonzero(cand)
    empty = np.zeros((ny, nx), dtype=np.int32)
    if cy.size == 0:
        return empty, np.zeros(0), 0, 0

    ring = _offsets(max_radius_px, max_radius_px + annulus_width_px)
    vals = padded[cy[:, None] + pad + ring[None, :, 0], cx[:, None] + pad + ring[None, :, 1]]
    r_mean, r_sd = _trimmed_stats(sign * vals)
    r_sd = np.maximum(r_sd, 0.5 * st.sd[cy, cx])
    z = (sign * a[cy, cx] - r_mean) / r_sd
    d = sign * st.diff[cy, cx]
    dz = d / sd_diff[cy, cx]
    seed = (z > peak_criterion) | ((dz > diff_criterion) & (z > grow_criterion))
    seed &= d >= min_sharpness * (z * r_sd)
    if not seed.any():
        return empty, np.zeros(0), 0, 0
    sy, sx, s_mean, s_sd, s_z = cy[seed], cx[seed], r_mean[seed], r_sd[seed], z[seed]

    # grow: window pixels above the grow criterion of their seed's annulus
    win = _offsets(-1.0, max_radius_px)
    wy = sy[:, None] + win[None, :, 0]
    wx = sx[:, None] + win[None, :, 1]
    wv = padded[wy + pad, wx + pad]
    ok = (sign * wv - s_mean[:, None]) / s_sd[:, None] > grow_criterion
    ok &= (wy >= 0) & (wy < ny) & (wx >= 0) & (wx < nx)
    grow = np.zeros((ny, nx), dtype=bool)
    grow[wy[ok], wx[ok]] = True
    grow[sy, sx] = True
    labels, n = ndi.label(grow, structure=np.ones((3, 3), dtype=bool))
    if n == 0:
        return empty, np.zeros(0), 0, 0
    # keep components holding a seed
    peak = np.full(n + 1, -np.inf)
    np.maximum.at(peak, labels[sy, sx], s_z)
    keep = np.isfinite(peak)
    keep[0] = False
    # size test: radius about the centroid
    ly, lx = np.nonzero(labels)
    lab = labels[ly, lx]
    cnt = np.bincount(lab, minlength=n + 1).astype(np.float64)
    cyy = np.bincount(lab, ly, minlength=n + 1) / np.maximum(cnt, 1)
    cxx = np.bincount(lab, lx, minlength=n + 1) / np.maximum(cnt, 1)
    d2 = (ly - cyy[lab]) ** 2 + (lx - cxx[lab]) ** 2
    rad2 = np.zeros(n + 1)
    np.maximum.at(rad2, lab, d2)
    too_big = keep & (rad2 > max_radius_px**2)
    n_rejected = int(too_big.sum())
    keep &= ~too_big
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    out = new_id[labels]
    return out, peak[keep], int(keep.sum()), n_rejected


# ----------------------------------------------------------------------------------------------------------
# replacement


def _poly_terms(dy: np.ndarray, dx: np.ndarray, order: int) -> np.ndarray:
    cols = [np.ones_like(dy)]
    if order >= 1:
        cols += [dx, dy]
    if order >= 2:
        cols += [dx * dx, dx * dy, dy * dy]
    return np.stack(cols, axis=1)


def _replace(
    a: np.ndarray,
    labels: np.ndarray,
    n: int,
    *,
    border_px: int,
    fit_order: int,
    add_noise: bool,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fill the labelled patches; returns (image, centroid y, centroid x, radius, n pixels) per label 1..n."""
    ny, nx = a.shape
    out = a.copy()
    py, px_ = np.nonzero(labels)
    lab = labels[py, px_].astype(np.int64)
    cnt = np.bincount(lab, minlength=n + 1).astype(np.float64)
    cy = np.bincount(lab, py, minlength=n + 1) / np.maximum(cnt, 1)
    cx = np.bincount(lab, px_, minlength=n + 1) / np.maximum(cnt, 1)
    rad2 = np.zeros(n + 1)
    np.maximum.at(rad2, lab, (py - cy[lab]) ** 2 + (px_ - cx[lab]) ** 2)

    # border pixels: within border_px (chessboard) of a patch pixel, not in any patch, inside the image
    b = max(1, int(border_px))
    oy, ox = np.mgrid[-b : b + 1, -b : b + 1]
    sel = (oy != 0) | (ox != 0)
    oy, ox = oy[sel], ox[sel]
    by = (py[:, None] + oy[None, :]).ravel()
    bx = (px_[:, None] + ox[None, :]).ravel()
    bl = np.repeat(lab, oy.size)
    inside = (by >= 0) & (by < ny) & (bx >= 0) & (bx < nx)
    by, bx, bl = by[inside], bx[inside], bl[inside]
    free = labels[by, bx] == 0
    by, bx, bl = by[free], bx[free], bl[free]
    key = np.unique(bl * (ny * nx) + by * nx + bx)
    bl = key // (ny * nx)
    flat = key % (ny * nx)
    by, bx = flat // nx, flat % nx
    bv = a[by, bx].astype(np.float64)
    nb = np.bincount(bl, minlength=n + 1).astype(np.float64)

    order = int(fit_order)
    tb = _poly_terms(by - cy[bl], bx - cx[bl], order)
    nt = tb.shape[1]
    ata = np.empty((n + 1, nt, nt))
    for i in range(nt):
        for j in range(i, nt):
            s = np.bincount(bl, tb[:, i] * tb[:, j], minlength=n + 1)
            ata[:, i, j] = s
            ata[:, j, i] = s
    atb = np.stack([np.bincount(bl, tb[:, i] * bv, minlength=n + 1) for i in range(nt)], axis=1)
    scale = np.maximum(np.trace(ata, axis1=1, axis2=2), 1.0)
    ata += (1e-9 * scale)[:, None, None] * np.eye(nt)[None]
    coef = np.linalg.solve(ata, atb[..., None])[..., 0]
    mean_b = np.bincount(bl, bv, minlength=n + 1) / np.maximum(nb, 1)
    weak = nb < 3 * nt
    coef[weak] = 0.0
    coef[weak, 0] = mean_b[weak]
    nothing = nb == 0  # a patch with no free border (cannot happen inside a normal image): keep the mean
    coef[nothing, 0] = float(a.mean())

    tp = _poly_terms(py - cy[lab], px_ - cx[lab], order)
    fill = np.einsum("ij,ij->i", tp, coef[lab])
    if add_noise:
        resid = bv - np.einsum("ij,ij->i", tb, coef[bl])
        dof = np.maximum(nb - np.where(weak, 1, nt), 1)
        rsd = np.sqrt(np.bincount(bl, resid * resid, minlength=n + 1) / dof)
        fill = fill + rng.standard_normal(fill.size) * rsd[lab]
    out[py, px_] = fill.astype(out.dtype)
    return out, cy, cx, np.sqrt(rad2), cnt


# ----------------------------------------------------------------------------------------------------------
# public API


def erase_xrays(
    image: Any,
    *,
    peak_criterion: float = 10.0,
    diff_criterion: float = 8.0,
    grow_criterion: float = 4.0,
    scan_criterion: float = 3.0,
    max_radius_px: float = 4.2,
    scan_size_px: int = 100,
    annulus_width_px: float = 2.0,
    border_px: int = 2,
    edge_exclusion_px: int = 0,
    fit_order: int = 1,
    min_sharpness: float = 0.4,
    dark: bool = False,
    add_noise: bool = False,
    seed: int | None = 0,
    extra_mask: Any = None,
) -> XrayResult:
    """Find X-ray hits (bright outliers of a few pixels) in ``image`` (ny, nx) and replace them.

    See the module docstring for the method. Parameters (criteria in standard deviations, sizes in px):

    * ``peak_criterion``: a peak more than this above the mean of its annulus is replaced.
    * ``diff_criterion``: a pixel this much above the mean of its 8 neighbours (in SDs of that difference)
      is replaced if it is also ``grow_criterion`` above its annulus.
    * ``grow_criterion``: neighbours of a peak this much above the annulus mean join its patch.
    * ``scan_criterion``: pre-selection threshold against the scan-region statistics.
    * ``max_radius_px``: largest patch radius; inner radius of the annulus. Bigger peaks are left alone.
    * ``scan_size_px``: side of the scanning region for the local mean and SD.
    * ``annulus_width_px``: width of the annulus (outer radius = ``max_radius_px + annulus_width_px``).
    * ``border_px``: width of the ring of pixels around a patch that the replacement surface is fitted to.
    * ``edge_exclusion_px``: no seeds within this distance of the image edge.
    * ``fit_order``: 0 constant, 1 plane, 2 quadratic.
    * ``min_sharpness``: a seed must stand above the mean of its 8 neighbours by at least this fraction of
      its height above the annulus mean (about 1 for a one-pixel hit, 0.6 or more for the strongest pixel
      of a 2-4 px hit, below 0.35 for any band-limited feature of 3 px FWHM or more).
    * ``dark``: also replace dark outliers (same criteria, sign flipped).
    * ``add_noise``: add Gaussian noise of the fit-residual SD to the replaced pixels (``seed`` for the RNG).
    * ``extra_mask``: (ny, nx) bool, pixels replaced in any case (e.g. hot pixels).

    Returns an :class:`XrayResult` (image float32, mask, patches with centroid/radius/size).
    """
    on_gpu = is_gpu_array(image)
    a = np.asarray(to_numpy(image), dtype=np.float32)
    if a.ndim != 2:
        raise ValueError(f"erase_xrays: expected a 2D image (ny, nx), got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("erase_xrays: the image holds NaN or infinite values")
    if fit_order not in (0, 1, 2):
        raise ValueError(f"fit_order={fit_order}: expected 0, 1 or 2")
    if max_radius_px < 0.5 or annulus_width_px < 1.0:
        raise ValueError("max_radius_px must be >= 0.5 and annulus_width_px >= 1")
    ny, nx = a.shape
    st = _image_stats(a, int(scan_size_px))
    pad = int(math.ceil(max_radius_px + annulus_width_px)) + 1
    mode = "reflect" if min(ny, nx) > pad else "symmetric"
    padded = np.pad(a, pad, mode=mode)
    kw = dict(
        peak_criterion=peak_criterion, diff_criterion=diff_criterion, grow_criterion=grow_criterion,
        scan_criterion=scan_criterion, max_radius_px=max_radius_px, annulus_width_px=annulus_width_px,
        edge_exclusion_px=edge_exclusion_px, min_sharpness=min_sharpness,
    )
    labels = np.zeros((ny, nx), dtype=np.int32)
    peaks: list[float] = []
    kinds: list[PatchKind] = []
    n_rejected = 0
    for sign, kind in ((1.0, "bright"), (-1.0, "dark")):
        if sign < 0 and not dark:
            continue
        lab, pk, n, rej = _find_sign(a, padded, pad, st, sign, **kw)  # type: ignore[arg-type]
        n_rejected += rej
        if n:
            free = (lab > 0) & (labels == 0)
            labels[free] = lab[free] + len(peaks)
            peaks += [float(p) for p in pk]
            kinds += [kind] * n  # type: ignore[list-item]
    if extra_mask is not None:
        em = np.asarray(to_numpy(extra_mask), dtype=bool)
        if em.shape != a.shape:
            raise ValueError(f"extra_mask of shape {em.shape} does not match the image {a.shape}")
        em = em & (labels == 0)
        if em.any():
            lab, n = ndi.label(em, structure=np.ones((3, 3), dtype=bool))
            labels[em] = lab[em] + len(peaks)
            peaks += [float("nan")] * n
            kinds += ["forced"] * n
    n_total = len(peaks)
    # labels may have gaps if a patch was wholly covered by an earlier one: compact them
    present = np.bincount(labels.ravel(), minlength=n_total + 1) > 0
    present[0] = True
    if not present.all():
        remap = np.cumsum(present) - 1
        labels = remap[labels].astype(np.int32)
        keep = present[1:]
        peaks = [p for p, k in zip(peaks, keep, strict=True) if k]
        kinds = [k_ for k_, k in zip(kinds, keep, strict=True) if k]
        n_total = len(peaks)
    mask = labels > 0
    if n_total == 0:
        out, patches = a.copy(), []
    else:
        rng = np.random.default_rng(seed)
        out, cy, cx, rad, cnt = _replace(a, labels, n_total, border_px=border_px, fit_order=fit_order,
                                         add_noise=add_noise, rng=rng)
        patches = [
            XrayPatch(y=float(cy[i]), x=float(cx[i]), radius_px=float(rad[i]), n_pixels=int(cnt[i]),
                      peak_sd=peaks[i - 1], kind=kinds[i - 1])
            for i in range(1, n_total + 1)
        ]
    if on_gpu:
        import cupy  # type: ignore[import-not-found]

        out, mask = cupy.asarray(out), cupy.asarray(mask)
    return XrayResult(image=out, mask=mask, patches=patches, n_rejected=n_rejected)


def find_hot_pixels(stack: Any, *, criterion: float = 6.0, min_fraction: float = 0.5) -> np.ndarray:
    """Pixels that stand out in at least ``min_fraction`` of the images of ``stack`` (n, ny, nx).

    For raw (unaligned) data: the frames of one movie, or the frame sums of the tilts of a series, all in
    camera orientation. A pixel counts in an image when its difference from the mean of its 8 neighbours
    exceeds ``criterion`` robust SDs of that difference (MAD over the image). Returns (ny, nx) bool (numpy).
    A single image (2D input) is refused: hot pixels are told from X-rays by their persistence.
    """
    s = to_numpy(stack)
    if s.ndim != 3:
        raise ValueError(f"find_hot_pixels: expected a stack (n, ny, nx), got shape {s.shape}")
    n = s.shape[0]
    if n < 2:
        raise ValueError("find_hot_pixels: needs at least 2 images (hot pixels persist, X-rays do not)")
    hits = np.zeros(s.shape[1:], dtype=np.int32)
    for img in s:
        a = np.asarray(img, dtype=np.float32)
        d = np.float32(9.0 / 8.0) * (a - _box3_mean(a))
        step = max(1, int(math.sqrt(a.size / 60_000)))
        sub = d[::step, ::step].ravel()
        sd = _robust_sd(sub)
        if sd <= 0:
            sd = float(np.std(sub)) or 1.0
        hits += d > criterion * sd
    return hits >= max(2, int(math.ceil(min_fraction * n)))


def erase_xrays_stack(
    stack: Any,
    *,
    hot_pixels: bool | Any = False,
    hot_criterion: float = 6.0,
    hot_min_fraction: float = 0.5,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`erase_xrays` on every image of ``stack`` (n, ny, nx).

    ``hot_pixels``: ``True`` finds persistent outliers with :func:`find_hot_pixels` (raw, unaligned stacks
    only) and replaces them in every view; a (ny, nx) bool array gives them directly; ``False`` (default)
    relies on the per-view detection. Other keywords go to :func:`erase_xrays`.

    Returns ``(cleaned (n, ny, nx) float32, counts (n,) int64 = patches replaced per view,
    masks (n, ny, nx) bool)`` as numpy arrays.
    """
    s = to_numpy(stack)
    if s.ndim != 3:
        raise ValueError(f"erase_xrays_stack: expected a stack (n, ny, nx), got shape {s.shape}")
    extra = kwargs.pop("extra_mask", None)
    if hot_pixels is True:
        hot = find_hot_pixels(s, criterion=hot_criterion, min_fraction=hot_min_fraction)
    elif hot_pixels is False or hot_pixels is None:
        hot = None
    else:
        hot = np.asarray(to_numpy(hot_pixels), dtype=bool)
    if extra is not None:
        extra = np.asarray(to_numpy(extra), dtype=bool)
        hot = extra if hot is None else (hot | extra)
    out = np.empty(s.shape, dtype=np.float32)
    masks = np.zeros(s.shape, dtype=bool)
    counts = np.zeros(s.shape[0], dtype=np.int64)
    for i, img in enumerate(s):
        r = erase_xrays(img, extra_mask=hot, **kwargs)
        out[i], masks[i], counts[i] = r.image, r.mask, r.count
    return out, counts, masks
