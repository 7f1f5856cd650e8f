"""Marker-free tilt-series alignment (IMOD-like: ``tiltxcorr`` coarse alignment and patch tracking, then a
``tiltalign``-like least-squares projection model), and the interpolated aligned stack for viewing.

Conventions (those of :mod:`tomoguide.geometry`, stated once here)
-----------------------------------------------------------------
* A stack is a ``(n_views, ny, nx)`` float array with the views in ascending tilt order (the order of
  ``geometry.tilt_angles_deg``), in pixels at ``geometry.binning``.
* Positions in a raw view are ``(x, y)`` in px **from the raw image centre** ``((nx - 1) / 2, (ny - 1) / 2)``
  (x = column, y = row), unless a name says otherwise.
* Tilt-axis angle ``θ``: from image +Y, counter-clockwise (degrees). The aligned X axis (perpendicular to the
  tilt axis) is the raw direction ``(cos θ, sin θ)``; the tilt axis is ``(-sin θ, cos θ)``.
* Projection model (the geometry record's, with optional per-view rotation ``δ_i`` and magnification ``m_i``)::

      u_ij = s_i + m_i R(θ + δ_i) [x_j cos β_i + z_j sin β_i,  y_j]

  with ``u_ij`` the raw position (px from the centre) of specimen point ``p_j = (x_j, y_j, z_j)`` (px, tilt
  axis along y) in view ``i``, ``β_i`` = nominal tilt + tilt offset (true tilt), ``s_i`` the specimen shift
  (:meth:`TiltSeriesGeometry.specimen_shifts_px`) and ``R(a)`` the counter-clockwise rotation. The IMOD
  transform of view ``i`` is then ``A_i = R(-(θ + δ_i)) / m_i`` and ``d_i = -A_i s_i`` (``aligned = A raw + d``).
* Gauge: the mean of the fitted 3D patch positions is the tomogram centre (origin of the specimen frame);
  the mean per-view rotation ``δ`` is 0 (``θ`` is the mean tilt axis) and the mean magnification is 1.
* Cosine stretching: when a view at true tilt ``β_a`` is compared with a view at ``β_b``, ``a`` is stretched by
  ``cos β_b / cos β_a`` along the aligned X direction, about its specimen centre (coarse alignment) or the
  patch centre (tracking), so that features of a flat specimen line up.
* Cross-correlation shift convention: ``δ`` is where the features of the reference box appear in the target
  box (``target(o) ≈ reference(o - δ)``); a target view's shift is the reference's plus ``δ``.

* Tilt-angle offset: adding ``α`` to all tilts equals rotating the specimen by ``-α`` about the tilt axis, so
  it is not fitted; ``flatten=True`` sets it so that the patches' plane is level (as ``tiltalign`` reports).

Accuracy and limits (measured; see ``bench/align.py`` and the tests): on the small preset at bin 10 the shifts
are recovered to 0.08 px RMS (gauge-free) on both series and the residual mean is 0.21-0.23 px (0.10 / 0.24 px
and 0.28-0.31 px with a plain point per patch). The tilt-axis angle is the weakest quantity: a tracked patch of
a thick specimen is a blend of features at several depths, and as the tilt grows the features that dominate its
correlation change (they drift apart across the axis by parallax), so the track is not that of one 3D point.
The per-patch across-axis offsets (``across_offsets``, on by default in :func:`align_tilt_series`) take the
constant part of that mismatch off the axis (small preset: +0.19° → +0.12° and -0.89° → -0.56°), but a part
remains: a blend's *along*-axis position also drifts, coherently over many neighbouring steps and in opposite
directions on the two sides of 0° (an apparent per-view rotation growing with |tilt|, found with the true axis
and shifts in rendered blob series ±15 px deep, about ±1° at ±60°, absent for a flat specimen), and with only
a few independent patch regions that drift does not average out. Measured on six simulated specimens (the small
preset with seeds 2026, 7 and 11; ``bench/align.py --seed``): axis errors +0.09, -0.56, -0.13, +0.09, +0.07,
+1.12°; the apparent per-view rotations the tracks ask for match the simulator's per-view rotation errors to
0.07-0.16° RMS at |tilt| ≤ 45° but only to 0.10-0.59° above, and the mean axis is decided by the high tilts.
Where the microscope's axis is trusted, ``solve_axis=False`` keeps it. The align step therefore follows patch
tracking with :mod:`tomoguide.compute.markers` (single particles as fiducial markers), which brings the same six
series to +0.01, +0.07, +0.17, +0.08, -0.05, +0.08°.

Sessions recorded with other conventions (issue 14): the import's tilt axis (the mdoc's, or a typed value) is only a
prior. :func:`search_tilt_axis` finds the axis from the views alone (common lines, modulo 180°: the tilt direction
is the hand check's business); :func:`align_tilt_series` checks the prior against it, tries both when they are
more than 12° apart, and repeats tracking and fitting until the axis settles, so that a start 10° off ends where a
correct start does. :func:`coarse_align_views` widens its search for a view that jumped (the stage lost the area)
and bridges over weak views (dark, blank), which :func:`track_patches` also skips and the fits down-weight.

Filters are in cycles/px at the stack's binning, as IMOD's ``tiltxcorr`` (``FilterSigma1``,
``FilterRadius2``, ``FilterSigma2``). Image work (sampling, FFTs) uses the array module of the input
(:mod:`tomoguide.compute.backend`); the projection-model fit runs with numpy/scipy on the CPU (a few thousand
observations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import scipy.ndimage
import scipy.sparse

from tomoguide.compute.backend import fft, ndimage, to_numpy, xp_of
from tomoguide.geometry import TiltSeriesGeometry, rotation_2d

__all__ = [
    "FilterSettings",
    "PatchTracks",
    "ModelFit",
    "AlignmentResult",
    "axis_difference_deg",
    "stretch_matrix",
    "bandpass_filter",
    "taper_mask",
    "cross_correlate",
    "CoarseAlignment",
    "coarse_align_views",
    "coarse_align",
    "AxisSearch",
    "search_tilt_axis",
    "patch_centres",
    "track_patches",
    "model_positions",
    "fit_projection_model",
    "geometry_from_fit",
    "align_tilt_series",
    "apply_alignment",
]


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FilterSettings:
    """Band-pass of the correlations, cycles/px at the stack's binning (IMOD ``tiltxcorr`` names):
    high-pass ``1 - exp(-f² / 2 sigma1²)``; low-pass flat to ``radius2`` then a Gaussian fall-off ``sigma2``.
    ``taper_fraction``: width of the cosine edge taper as a fraction of each box side."""

    sigma1: float = 0.03
    radius2: float = 0.25
    sigma2: float = 0.05
    taper_fraction: float = 0.1


def stretch_matrix(tilt_axis_deg: float, factor: float) -> np.ndarray:
    """(2, 2) matrix that scales raw (x, y) vectors by ``factor`` along the aligned X direction (perpendicular
    to the tilt axis ``tilt_axis_deg``) and keeps them along the axis: ``R(θ) diag(factor, 1) R(-θ)``."""
    r = rotation_2d(tilt_axis_deg)
    return r @ np.diag([factor, 1.0]) @ r.T


def taper_mask(shape: tuple[int, int], fraction: float, xp: Any = np) -> Any:
    """(ny, nx) float32 separable cosine edge taper: 1 inside, falling to 0 over ``fraction`` of each side."""
    out = []
    for n in shape:
        w = max(1, int(round(fraction * n)))
        ramp = np.ones(n)
        t = 0.5 - 0.5 * np.cos(np.pi * (np.arange(w) + 0.5) / w)
        ramp[:w] = t
        ramp[n - w:] = np.minimum(ramp[n - w:], t[::-1])
        out.append(ramp)
    return xp.asarray(np.outer(out[0], out[1]).astype(np.float32))


def bandpass_filter(shape: tuple[int, int], settings: FilterSettings, xp: Any = np) -> Any:
    """(ny, nx // 2 + 1) float32 band-pass in the un-shifted rfft layout (see :class:`FilterSettings`)."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    f = np.sqrt(fx * fx + fy * fy)
    h = np.ones_like(f)
    if settings.sigma1 > 0:
        h *= 1.0 - np.exp(-(f * f) / (2.0 * settings.sigma1 ** 2))
    if settings.sigma2 > 0:
        h *= np.where(f > settings.radius2, np.exp(-((f - settings.radius2) ** 2) / (2.0 * settings.sigma2 ** 2)), 1.0)
    else:
        h *= f <= settings.radius2
    return xp.asarray(h.astype(np.float32))


def _prepare_boxes(boxes: Any, settings: FilterSettings) -> Any:
    """Mean-subtract and taper (..., P, Q) boxes, zero-pad to (2P, 2Q), band-pass: filtered real boxes."""
    xp = xp_of(boxes)
    F = fft(xp)
    p, q = boxes.shape[-2:]
    mask = taper_mask((p, q), settings.taper_fraction, xp)
    w = mask.sum()
    mean = (boxes * mask).sum(axis=(-2, -1), keepdims=True) / w
    b = (boxes - mean) * mask
    pad = xp.zeros(boxes.shape[:-2] + (2 * p, 2 * q), dtype=xp.float32)
    pad[..., :p, :q] = b
    h = bandpass_filter((2 * p, 2 * q), settings, xp)
    return F.irfft2(F.rfft2(pad) * h, s=(2 * p, 2 * q)).astype(xp.float32)


def cross_correlate(reference: Any, target: Any, *, max_shift_px: float,
                    settings: FilterSettings = FilterSettings()) -> tuple[np.ndarray, np.ndarray]:
    """Band-passed, tapered, zero-padded cross-correlation of boxes (..., P, Q) with sub-pixel peaks.

    Returns ``shift`` (..., 2) as (x, y) px — where the reference's features lie in the target,
    ``target(o) ≈ reference(o - shift)`` — searched within ``|shift| <= max_shift_px``, and ``peak`` (...,)
    the normalised correlation coefficient at the peak (about 1 for identical filtered boxes, near 0 for
    unrelated ones). Both as numpy arrays.
    """
    xp = xp_of(reference, target)
    F = fft(xp)
    ref = xp.asarray(reference, dtype=xp.float32)
    tgt = xp.asarray(target, dtype=xp.float32)
    a = _prepare_boxes(ref, settings)
    b = _prepare_boxes(tgt, settings)
    ny, nx = a.shape[-2:]
    cc = F.irfft2(xp.conj(F.rfft2(a)) * F.rfft2(b), s=(ny, nx))
    norm = xp.sqrt((a * a).sum(axis=(-2, -1)) * (b * b).sum(axis=(-2, -1)))
    cc = to_numpy(cc).astype(np.float64)
    norm = np.maximum(to_numpy(norm).astype(np.float64), 1e-30)
    ky = np.fft.fftfreq(ny, 1.0 / ny)
    kx = np.fft.fftfreq(nx, 1.0 / nx)
    allowed = (ky[:, None] ** 2 + kx[None, :] ** 2) <= max_shift_px ** 2
    lead = cc.shape[:-2]
    flat = cc.reshape(-1, ny, nx)
    masked = np.where(allowed[None], flat, -np.inf).reshape(flat.shape[0], -1)
    idx = np.argmax(masked, axis=1)
    iy, ix = np.unravel_index(idx, (ny, nx))
    k = np.arange(flat.shape[0])
    c0 = flat[k, iy, ix]

    def parabola(cm: np.ndarray, cp: np.ndarray) -> np.ndarray:
        den = cm - 2.0 * c0 + cp
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den < 0, 0.5 * (cm - cp) / den, 0.0)
        return np.clip(d, -0.5, 0.5)

    dx = parabola(flat[k, iy, (ix - 1) % nx], flat[k, iy, (ix + 1) % nx])
    dy = parabola(flat[k, (iy - 1) % ny, ix], flat[k, (iy + 1) % ny, ix])
    shift = np.stack([kx[ix] + dx, ky[iy] + dy], axis=-1).reshape(lead + (2,))
    peak = (c0 / norm.reshape(-1)).reshape(lead)
    return shift, peak


def _centre(shape: tuple[int, ...]) -> np.ndarray:
    """(x, y) centre ((nx - 1) / 2, (ny - 1) / 2) of an image of shape (..., ny, nx)."""
    return np.array([(shape[-1] - 1) / 2.0, (shape[-2] - 1) / 2.0])


def _sample(image: Any, xy: np.ndarray, order: int = 1) -> Any:
    """Values of a 2D image at absolute pixel coordinates ``xy`` (..., 2) as (x, y); mirror outside."""
    xp = xp_of(image)
    ndi = ndimage(xp)
    coords = xp.asarray(np.stack([xy[..., 1], xy[..., 0]], axis=0))
    return ndi.map_coordinates(image, coords, order=order, mode="mirror")


def _box_offsets(size: int) -> np.ndarray:
    """(size, size, 2) offsets (x, y) of a box's pixels from its centre."""
    o = np.arange(size) - (size - 1) / 2.0
    return np.stack(np.meshgrid(o, o, indexing="xy"), axis=-1)


def _true_tilts(geometry: TiltSeriesGeometry) -> np.ndarray:
    return geometry.true_tilt_deg()


def _reference_view(geometry: TiltSeriesGeometry, views: np.ndarray, weak: np.ndarray | None = None) -> int:
    """The view the chains and tracks start from: the lowest-|tilt| one of ``views`` that is not ``weak`` (a dark
    or blank 0° view, or the bad first take of a retaken one, would start every chain from noise); the
    lowest-|tilt| view when all are weak."""
    t = np.abs(np.asarray(geometry.tilt_angles_deg))[views]
    if weak is not None:
        ok = ~np.asarray(weak, dtype=bool)[views]
        if ok.any():
            t = np.where(ok, t, np.inf)
    return int(views[int(np.argmin(t))])


def _outward_pairs(views: np.ndarray, ref: int) -> list[tuple[int, int]]:
    """(from, to) neighbour pairs among ``views`` (sorted) walking outwards from ``ref``."""
    pos = int(np.flatnonzero(views == ref)[0])
    pairs = [(int(views[k]), int(views[k + 1])) for k in range(pos, len(views) - 1)]
    pairs += [(int(views[k]), int(views[k - 1])) for k in range(pos, 0, -1)]
    return pairs


def _interpolate_missing(values: np.ndarray, tilts: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Fill rows of ``values`` (n, k) not in ``known`` by linear interpolation in tilt (constant outside)."""
    out = values.copy()
    if known.all() or not known.any():
        return out
    for c in range(values.shape[1]):
        out[~known, c] = np.interp(tilts[~known], tilts[known], values[known, c])
    return out


# --------------------------------------------------------------------------------------------------------
# Coarse alignment (tiltxcorr)
# --------------------------------------------------------------------------------------------------------


@dataclass
class CoarseAlignment:
    """Result of :func:`coarse_align_views` (px at the stack's binning).

    ``shifts_px`` (n, 2): specimen shifts (x, y) from the image centre, 0 for ``reference_view`` (the lowest
    tilt); ``peak_cc`` (n,): normalised correlation peak of the pair that placed each view (1 for the
    reference, NaN for excluded views); ``weak`` (n,) bool: views whose correlation with both neighbours fell
    below ``weak_fraction`` of the local typical peak (dark, blank or blurred views): they were not used as
    references for the next view, the chain bridging over them, and were placed against their neighbour
    towards the reference; ``widened`` (n,) bool: views whose shift lay at the edge of (or whose peak was weak
    within) the first search radius and were found with the wider one (a jump of the specimen)."""

    shifts_px: np.ndarray
    peak_cc: np.ndarray
    weak: np.ndarray
    widened: np.ndarray
    reference_view: int


def coarse_align_views(stack: Any, geometry: TiltSeriesGeometry, *, max_shift_fraction: float = 0.2,
                       wide_shift_fraction: float = 0.45, weak_fraction: float = 0.4,
                       settings: FilterSettings = FilterSettings(), stretch: bool = True,
                       weak: Any = None) -> CoarseAlignment:
    """Coarse specimen shifts by cross-correlating neighbouring views, from the lowest tilt outwards (IMOD's
    ``tiltxcorr``), with an adaptive search range and weak views kept out of the chain.

    ``stack`` (n, ny, nx) in view order; ``geometry`` gives the (nominal + offset) tilts and the tilt-axis
    angle; excluded views are skipped (their shifts are interpolated in tilt). For each neighbour pair the
    lower-tilt view is stretched by ``cos β_high / cos β_low`` perpendicular to the axis about its current
    specimen centre, both are tapered and band-passed, and the correlation peak is added to the lower view's
    shift.

    Search range: first within ``max_shift_fraction`` of the smaller image side; when the peak lies at the
    edge of that disc (the true one may be beyond) or is weak (below ``weak_fraction`` of the typical peak of
    the neighbouring pairs), the pair is correlated again within ``wide_shift_fraction`` and the wider peak
    is taken when it is clearly higher (× 1.25) — a view the stage put 10-40 % of the field away is followed.

    Weak views: a view whose pairs with both neighbours peak below ``weak_fraction`` of the median peak of the
    nearby pairs (a dark or blank view: mostly noise; a blurred view) would break the chain — every view
    beyond it is placed through it. The chain is then computed again bridging over it (the next view is
    correlated with the last good one) and the weak view is placed against its good neighbour towards the
    reference. ``weak`` (n,) bool forces views to be treated so (then no detection). Returns
    :class:`CoarseAlignment`; :func:`coarse_align` returns only the shifts.
    """
    xp = xp_of(stack)
    n, ny, nx = stack.shape
    if n != geometry.n_views:
        raise ValueError(f"stack has {n} views, geometry {geometry.n_views}")
    views = geometry.included_views()
    ref = _reference_view(geometry, views)
    beta = np.radians(_true_tilts(geometry))
    c = _centre(stack.shape)
    ox = np.arange(nx) - (nx - 1) / 2.0
    oy = np.arange(ny) - (ny - 1) / 2.0
    grid = np.stack(np.meshgrid(ox, oy, indexing="xy"), axis=-1)  # (ny, nx, 2) offsets from the centre
    side = min(ny, nx)
    r1, r2 = max_shift_fraction * side, max(wide_shift_fraction, max_shift_fraction) * side

    def pair(a: int, b: int, shift_a: np.ndarray, typical: float | None) -> tuple[np.ndarray, float, bool]:
        ratio = math.cos(beta[b]) / math.cos(beta[a]) if stretch else 1.0
        minv = np.linalg.inv(stretch_matrix(geometry.tilt_axis_deg, ratio))
        q = c + shift_a
        img_a = _sample(xp.asarray(stack[a], dtype=xp.float32), q + (grid + c - q) @ minv.T, order=1)
        img_b = xp.asarray(stack[b], dtype=xp.float32)
        d, pk = cross_correlate(img_a, img_b, max_shift_px=r1, settings=settings)
        at_edge = float(np.hypot(*d)) >= r1 - 1.5
        faint = typical is not None and float(pk) < weak_fraction * typical
        if r2 > r1 + 1.0 and (at_edge or faint):
            d2, pk2 = cross_correlate(img_a, img_b, max_shift_px=r2, settings=settings)
            if float(pk2) > 1.25 * float(pk) and float(np.hypot(*(d2 - d))) > 1.5:
                return d2, float(pk2), True
        return d, float(pk), False

    def chain(skip: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[int, float]]:
        shifts = np.zeros((n, 2))
        peak = np.full(n, np.nan)
        wide = np.zeros(n, dtype=bool)
        peak[ref] = 1.0
        pair_peak: dict[int, float] = {}  # view b -> peak of its pair with the previous view towards the reference
        good = views[~skip[views]]
        for direction in (1, -1):
            side_views = good[good > ref] if direction > 0 else good[good < ref][::-1]
            last, recent = ref, []
            for b in side_views:
                typical = float(np.median(recent[-4:])) if len(recent) >= 2 else None
                d, pk, w = pair(last, int(b), shifts[last], typical)
                shifts[b], peak[b], wide[b] = shifts[last] + d, pk, w
                pair_peak[int(b)] = pk
                recent.append(pk)
                last = int(b)
        tilts = np.asarray(geometry.tilt_angles_deg, dtype=np.float64)
        known = np.zeros(n, dtype=bool)
        known[good] = True
        between = _interpolate_missing(shifts, tilts, known)
        for b in views[skip[views]]:  # weak views: against the nearest good view towards the reference
            towards = good[(good < b)] if b > ref else good[(good > b)]
            a = int(towards.max() if b > ref else towards.min()) if towards.size else ref
            d, pk, w = pair(a, int(b), shifts[a], None)
            shifts[b], peak[b], wide[b] = shifts[a] + d, pk, w
            if float(np.hypot(*(shifts[b] - between[b]))) > max(3.0, 0.06 * side):
                shifts[b], wide[b] = between[b], False  # a peak of noise: the neighbours' shifts interpolated
        return shifts, peak, wide, pair_peak

    forced = weak is not None
    skip = np.zeros(n, dtype=bool) if weak is None else np.asarray(weak, dtype=bool).copy()
    ref = _reference_view(geometry, views, skip)
    skip[ref] = False
    shifts, peak, wide, pair_peak = chain(skip)
    if not forced and views.size >= 4:
        # pair k: (views[k], views[k+1]) in tilt order; its peak is stored with the view further from the reference
        pk = np.array([pair_peak[int(views[k + 1])] if views[k + 1] > ref else pair_peak[int(views[k])]
                       for k in range(views.size - 1)])
        low = np.zeros(pk.size, dtype=bool)
        for k in range(pk.size):
            nb = [j for j in range(max(0, k - 4), min(pk.size, k + 5)) if abs(j - k) > 1]
            low[k] = pk[k] < weak_fraction * float(np.median(pk[nb])) if nb else False
        last = views.size - 1
        for k in range(1, last):  # inner views: weak when the pairs on both sides are
            skip[views[k]] = bool(low[k - 1] and low[k])
        # an end view has one pair: weak when it is low and not explained by its neighbour being weak
        skip[views[0]] = bool(low[0] and not skip[views[1]])
        skip[views[last]] = bool(low[last - 1] and not skip[views[last - 1]])
        if skip[ref]:  # the reference itself is weak (both its pairs low): start from the nearest good view
            ref = _reference_view(geometry, views, skip)
        skip[ref] = False
        if skip.any():
            shifts, peak, wide, pair2 = chain(skip)
            # an end view next to weak views (the grid bar over the last few tilts) was chained from the last good
            # view: weak too when that pair peaks low against the good pairs nearby
            redo = False
            for end, nb in ((int(views[0]), int(views[1])), (int(views[last]), int(views[last - 1]))):
                if not skip[nb] or skip[end] or end == ref or end not in pair2:
                    continue
                same_side = [pair2[int(v)] for v in views if not skip[v] and int(v) in pair2 and int(v) != end
                             and (v > ref) == (end > ref)]
                nearby = same_side[-4:] if end > ref else same_side[:4]
                if nearby and pair2[end] < weak_fraction * float(np.median(nearby)):
                    skip[end], redo = True, True
            if redo:
                shifts, peak, wide, _ = chain(skip)
    done = np.zeros(n, dtype=bool)
    done[views] = True
    return CoarseAlignment(shifts_px=_interpolate_missing(shifts, np.asarray(geometry.tilt_angles_deg), done),
                           peak_cc=peak, weak=skip, widened=wide, reference_view=ref)


def coarse_align(stack: Any, geometry: TiltSeriesGeometry, *, max_shift_fraction: float = 0.2,
                 settings: FilterSettings = FilterSettings(), stretch: bool = True) -> np.ndarray:
    """(n, 2) float64 coarse specimen shifts ``s`` (x, y) in px at the stack's binning (where the specimen
    centre lies in each raw view, from the image centre; ``s = 0`` for the lowest-tilt view): the
    ``shifts_px`` of :func:`coarse_align_views` (which see)."""
    return coarse_align_views(stack, geometry, max_shift_fraction=max_shift_fraction, settings=settings,
                              stretch=stretch).shifts_px


# --------------------------------------------------------------------------------------------------------
# Tilt-axis search (common lines)
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AxisSearch:
    """Result of :func:`search_tilt_axis`.

    ``axis_deg``: the tilt-axis angle (degrees from image +Y, counter-clockwise) that makes the views' common
    lines agree best, **modulo 180°** (θ and θ + 180° give the same lines: that choice is the tilt direction, a
    hand question the views cannot answer); it is reported as the representative nearest ``around_deg`` when one
    was given, otherwise in [-90°, 90°). ``score``: the mean peak correlation of the views' profiles there
    (1 = identical); ``angles_deg`` (k,) and ``scores`` (k,): every angle scanned (coarse and fine) with its score;
    ``contrast``: (best − median score) / robust spread of the scores over the coarse scan (a diagnostic of the
    score curve; it depends on the specimen); ``halves_deg``: how far apart the axes found from each half of the
    view pairs (alternate pairs) lie — the search's own reproducibility (small preset and the scenarios: below
    1°; 7 views over ±30°: several degrees, and the search is then not to be trusted); ``reduction``: the factor
    the views were binned by first; ``n_pairs``: view pairs compared."""

    axis_deg: float
    score: float
    angles_deg: np.ndarray
    scores: np.ndarray
    contrast: float
    reduction: int
    n_pairs: int
    halves_deg: float = float("nan")


def _reduce_views(stack: Any, max_size_px: int) -> tuple[np.ndarray, int]:
    """(n, ny', nx') float32 views binned by block means to at most ``max_size_px`` per side, clipped of extreme
    pixels (outside the 0.05-99.95 percentiles of each view: hot pixels, X-rays) and smoothed by a 1-px Gaussian;
    each view with mean 0 and SD 1. Returns them and the integer binning factor."""
    arr = np.asarray(to_numpy(stack), dtype=np.float32)
    n, ny, nx = arr.shape
    factor = max(1, int(math.ceil(max(ny, nx) / float(max_size_px))))
    out = []
    for i in range(n):
        img = arr[i]
        step = max(1, int(math.sqrt(img.size / 65536.0)))
        lo, hi = np.percentile(img[::step, ::step], [0.05, 99.95])
        img = np.clip(img, lo, hi)
        if factor > 1:
            my, mx = ny // factor, nx // factor
            img = img[:my * factor, :mx * factor].reshape(my, factor, mx, factor).mean(axis=(1, 3))
        img = scipy.ndimage.gaussian_filter(img.astype(np.float64), 1.0)
        sd = float(img.std())
        out.append(((img - img.mean()) / sd if sd > 0 else img * 0.0).astype(np.float32))
    return np.stack(out), factor


def _axis_profiles(views: np.ndarray, tilts_deg: np.ndarray, angles_deg: np.ndarray, *,
                   half_fraction: float = 0.325, centres_px: np.ndarray | None = None) -> np.ndarray:
    """(n, k, L) band-passed, tapered, unit-norm profiles along the candidate axes ``angles_deg`` (k,).

    For view ``i`` at tilt ``β_i`` and a candidate axis θ, every pixel of the strip ``|u| ≤ h cos β_i`` across the
    axis (``h = half_fraction`` × the smaller side; the same strip of a flat specimen in every view) is added,
    weighted by ``cos²(π u / (2 h cos β_i))``, to the 1-px bin of its position ``v`` along the axis (``|v| ≤ h``).
    Binning whole pixels, rather than interpolating the view at points along lines, keeps the profiles' noise
    the same for every θ: with interpolation the noise is smoothed more at some angles than at others (least at
    0° and 90°, where the points fall on the pixel grid), and in noisy views that pulled the highest correlation
    towards the smoothest angles (by 3-15° on blob series with noise). ``centres_px`` (n, 2): where the specimen
    centre lies in each view (x, y px from the image centre; default 0): each view's strip is centred there, so
    that it covers the same piece of the specimen whatever the specimen shifts."""
    n, ny, nx = views.shape
    c = np.array([(nx - 1) / 2.0, (ny - 1) / 2.0])
    h = half_fraction * min(nx, ny)
    rv = int(math.floor(h))
    length = 2 * rv + 1
    th = np.radians(np.asarray(angles_deg, dtype=np.float64))
    k = th.size
    yy, xx = np.mgrid[0:ny, 0:nx]
    offset = (np.arange(k) * length)[:, None]
    centres = np.zeros((n, 2)) if centres_px is None else np.asarray(centres_px, dtype=np.float64)
    out = np.empty((n, k, length))
    for i in range(n):
        ci = c + centres[i]
        dx, dy = (xx - ci[0]).ravel(), (yy - ci[1]).ravel()
        disc = dx * dx + dy * dy <= (h * math.sqrt(2.0) + 1.0) ** 2
        dx, dy = dx[disc], dy[disc]
        u = np.cos(th)[:, None] * dx[None] + np.sin(th)[:, None] * dy[None]  # (k, p) across the axis
        v = -np.sin(th)[:, None] * dx[None] + np.cos(th)[:, None] * dy[None] + rv  # (k, p) along, from bin 0
        v0 = np.floor(v).astype(np.int64)
        frac = v - v0
        parts = []  # each pixel split between its two nearest bins (linear), pixels beyond the ends dropped
        for b, share in ((v0, 1.0 - frac), (v0 + 1, frac)):
            ok = (b >= 0) & (b < length)
            parts.append(((np.clip(b, 0, length - 1) + offset).ravel(), np.where(ok, share, 0.0)))
        half = h * max(abs(math.cos(math.radians(float(tilts_deg[i])))), 0.05)
        edge = 0.3 * half  # flat top, cosine edges over the outer 30 %
        au = np.abs(u)
        w = np.where(au < half - edge, 1.0,
                     np.where(au < half, 0.5 + 0.5 * np.cos(np.pi * (au - half + edge) / edge), 0.0))
        vals = views[i].ravel()[disc][None]
        total = np.zeros(k * length)
        weight = np.zeros(k * length)
        for idx, share in parts:
            ws = (w * share).ravel()
            total += np.bincount(idx, weights=ws * np.broadcast_to(vals, w.shape).ravel(), minlength=k * length)
            weight += np.bincount(idx, weights=ws, minlength=k * length)
        out[i] = (total / np.maximum(weight, 1e-9)).reshape(k, length)
    # high-pass (gradients of the ice thickness), taper, unit norm
    out -= scipy.ndimage.gaussian_filter1d(out, max(1.0, length / 10.0), axis=-1, mode="nearest")
    m = max(2, length // 10)
    ramp = 0.5 - 0.5 * np.cos(np.pi * (np.arange(m) + 0.5) / m)
    taper = np.ones(length)
    taper[:m], taper[-m:] = ramp, ramp[::-1]
    out = (out - out.mean(axis=-1, keepdims=True)) * taper
    out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return out


def _profile_scores(profiles: np.ndarray, pairs: np.ndarray, max_lag: int) -> np.ndarray:
    """(p, k) peak correlation of the profiles of each view pair of ``pairs`` (p, 2) (within ``max_lag`` px: the
    along-axis shift between the views) at each candidate angle."""
    n, k, length = profiles.shape
    spec = np.fft.rfft(profiles, n=2 * length, axis=-1)
    lags = np.r_[0:max_lag + 1, 2 * length - max_lag:2 * length]
    out = np.empty((pairs.shape[0], k))
    for start in range(0, pairs.shape[0], 64):
        p = pairs[start:start + 64]
        cc = np.fft.irfft(np.conj(spec[p[:, 0]]) * spec[p[:, 1]], n=2 * length, axis=-1)
        out[start:start + 64] = cc[..., lags].max(axis=-1)
    return out


def _parabola_peak(x: np.ndarray, y: np.ndarray) -> float:
    """The abscissa of the maximum of ``y`` (k,) sampled at ``x`` (k,): the vertex of the least-squares parabola
    through all samples (the score curve is smooth and nearly parabolic over a few degrees, and a fit to all of
    them is less noisy than one through the top three), kept within the sampled range; the best sample when the
    parabola opens upwards."""
    c2, c1, _ = np.polyfit(x - x.mean(), y, 2)
    if c2 >= 0:
        return float(x[int(np.argmax(y))])
    return float(np.clip(-c1 / (2.0 * c2) + x.mean(), x.min(), x.max()))


def search_tilt_axis(stack: Any, tilts_deg: Any, *, around_deg: float | None = None, range_deg: float = 20.0,
                     step_deg: float | None = None, max_size_px: int = 128, min_pair_deg: float = 15.0,
                     max_pairs: int = 300, use: Any = None) -> AxisSearch:
    """The tilt-axis angle from the views alone, by common lines (no alignment needed).

    Summing a view across the tilt axis gives a 1D profile along the axis that is the same for every tilt (the
    specimen's density summed over x and z at each y), up to a shift along the axis; summed along any other
    direction the profiles of different tilts differ (foreshortening shears them). For each candidate axis θ,
    every view ``i`` at tilt ``β_i`` is summed across θ over a strip ``|u| ≤ h cos β_i`` (the same piece of a flat
    specimen in every view; flat top, cosine edges; whole pixels binned, see :func:`_axis_profiles`), the
    profiles are high-passed and normalised, and pairs of views at least ``min_pair_deg`` apart in tilt (the axis
    shows in their differences; at most ``max_pairs``) are correlated with a free shift (up to a quarter of the
    profile); the axis is the θ of the highest mean peak, refined on a grid 4 times finer by a least-squares
    parabola.

    ``stack`` (n, ny, nx) any intensities (frame sums, gain-corrected or not, or a normalised stack; hot pixels
    are clipped), ``tilts_deg`` (n,) tilt angles (nominal is fine; any order); ``use`` (n,) bool: views to use
    (default all; leave out dark or blank ones). ``around_deg`` None: the whole half-turn [-90°, 90°) at
    ``step_deg`` (default 3°); otherwise ``around_deg ± range_deg`` (default step 1°). Views are binned to at most
    ``max_size_px`` px per side first (the common lines need only low resolution).

    Accuracy (measured against the simulator's truth, bin 10 stacks): 0.1-0.4° on the small preset's two series
    and two scenarios with dark and jump views, up to 1.1°; 5° on the tiny preset (7 views over ±30°, where the
    strips barely differ); 0.7-5° on blob series (dense 1.6 px blobs, ±8 px deep, shifted 1.5 px per view,
    noisy), whose profiles change little with the axis. It is a start and a check for :func:`align_tilt_series`,
    whose fit converges from 10° off. About 1 s for 41 views of 512² px on one core. Needs two views at least
    ``min_pair_deg`` apart."""
    tilts = np.asarray(tilts_deg, dtype=np.float64).reshape(-1)
    arr = to_numpy(stack)
    if arr.ndim != 3 or arr.shape[0] != tilts.size:
        raise ValueError(f"stack of shape {arr.shape} does not match {tilts.size} tilt angles")
    keep = np.ones(tilts.size, bool) if use is None else np.asarray(use, dtype=bool).reshape(-1)
    idx = np.flatnonzero(keep)
    idx = idx[np.argsort(tilts[idx], kind="stable")]  # ascending tilt
    tl = tilts[idx]
    pairs = np.array([(a, b) for a in range(idx.size) for b in range(a + 1, idx.size)
                      if abs(tl[a] - tl[b]) >= min_pair_deg], dtype=np.int64).reshape(-1, 2)
    if pairs.shape[0] == 0:
        raise ValueError(f"no two views are {min_pair_deg:g}° apart in tilt: the tilt axis cannot be searched")
    if pairs.shape[0] > max_pairs:
        pairs = pairs[np.linspace(0, pairs.shape[0] - 1, max_pairs).round().astype(np.int64)]
    views, factor = _reduce_views(arr[idx], max_size_px)
    ny, nx = views.shape[1:]
    max_lag = 2 * int(math.floor(0.325 * min(nx, ny))) // 4 + 1

    if around_deg is None:
        step = 3.0 if step_deg is None else float(step_deg)
        angles = np.arange(-90.0, 90.0 - 1e-9, step)
    else:
        step = 1.0 if step_deg is None else float(step_deg)
        angles = np.arange(around_deg - range_deg, around_deg + range_deg + 1e-9, step)
    scores = _profile_scores(_axis_profiles(views, tl, angles), pairs, max_lag).mean(axis=0)
    fine = float(angles[int(np.argmax(scores))]) + step * np.linspace(-1.5, 1.5, 13)
    per_pair = _profile_scores(_axis_profiles(views, tl, fine), pairs, max_lag)
    fine_scores = per_pair.mean(axis=0)
    axis = _parabola_peak(fine, fine_scores)
    # the same from each half of the pairs (alternate ones): how far two halves of the data disagree
    halves = [np.arange(h, pairs.shape[0], 2) for h in (0, 1)]
    if all(h.size for h in halves):
        a, b = (_parabola_peak(fine, per_pair[h].mean(axis=0)) for h in halves)
        half_spread = abs(axis_difference_deg(a, b))
    else:
        half_spread = float("nan")
    ref = 0.0 if around_deg is None else float(around_deg)
    axis = ref + ((axis - ref + 90.0) % 180.0 - 90.0)
    med = float(np.median(scores))
    spread = 1.4826 * float(np.median(np.abs(scores - med)))
    contrast = (float(scores.max()) - med) / max(spread, 1e-6)
    return AxisSearch(axis_deg=axis, score=float(fine_scores.max()), angles_deg=np.r_[angles, fine],
                      scores=np.r_[scores, fine_scores], contrast=contrast, reduction=factor,
                      n_pairs=int(pairs.shape[0]), halves_deg=half_spread)



# --------------------------------------------------------------------------------------------------------
# Patch tracking
# --------------------------------------------------------------------------------------------------------


@dataclass
class PatchTracks:
    """Patch positions tracked through a series.

    ``positions_px`` (n_views, n_patches, 2) float64: (x, y) px from the raw image centre, NaN where the
    patch is not tracked; ``peak_cc`` (n_views, n_patches): normalised CC peak of the step that found the
    position (1 at the reference view, NaN where untracked); ``patch_size_px`` the box side;
    ``reference_view`` the view the patches were placed on (lowest tilt).
    """

    positions_px: np.ndarray
    peak_cc: np.ndarray
    patch_size_px: int
    reference_view: int

    @property
    def n_patches(self) -> int:
        return int(self.positions_px.shape[1])

    def observed(self) -> np.ndarray:
        """(n_views, n_patches) bool: where a position exists."""
        return np.isfinite(self.positions_px[..., 0])

    def track_lengths(self) -> np.ndarray:
        """(n_patches,) number of views in each track."""
        return self.observed().sum(axis=0)


def patch_centres(shape: tuple[int, int], patch_size_px: int, overlap: float) -> np.ndarray:
    """(m, 2) patch centres (x, y) px from the image centre on a regular grid with the given fractional
    overlap (step ``patch_size_px * (1 - overlap)``, at least 1 px), every box inside the image."""
    ny, nx = shape
    if patch_size_px > min(ny, nx):
        raise ValueError(f"patch of {patch_size_px} px larger than the image {shape}")
    step = max(1.0, patch_size_px * (1.0 - overlap))
    out = []
    for n in (nx, ny):
        span = n - patch_size_px  # range of box starts
        k = int(math.floor(span / step)) + 1
        starts = (span - (k - 1) * step) / 2.0 + step * np.arange(k)
        out.append(starts + (patch_size_px - 1) / 2.0 - (n - 1) / 2.0)
    gx, gy = np.meshgrid(out[0], out[1], indexing="xy")
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def track_patches(stack: Any, geometry: TiltSeriesGeometry, shifts_px: np.ndarray, *, patch_size_px: int,
                  overlap: float = 0.8, min_cc: float = 0.25, max_shift_fraction: float = 0.25,
                  empty_fraction: float = 0.35, settings: FilterSettings = FilterSettings(),
                  stretch: bool = True, weak: Any = None) -> PatchTracks:
    """Place patches on the lowest-tilt view and track them view by view outwards by cross-correlation.

    ``shifts_px`` (n, 2): the current specimen shifts (from :func:`coarse_align`) used to predict each
    patch's position in the next view: ``s_b + S (u_a - s_a)`` with ``S`` the stretch by
    ``cos β_b / cos β_a`` perpendicular to the tilt axis. The box of view ``a`` around the patch is stretched
    likewise about the patch centre and correlated with the box of view ``b`` at the prediction (peak
    searched within ``max_shift_fraction * patch_size_px``, sub-pixel). A track stops where the normalised
    peak falls below ``min_cc`` or the box would leave the image. Patches whose band-passed standard
    deviation on the reference view is below ``empty_fraction`` times the median (empty areas) are not
    placed. ``weak`` (n,) bool: views not to track *through* (dark, blank: see :func:`coarse_align_views`); the
    tracks bridge over them (the next view is correlated with the last good one) and each weak view is reached
    only from its good neighbour towards the reference, as a dead end, so that its poor correlations neither
    stop nor mislead the tracks beyond it. Returns :class:`PatchTracks`.
    """
    xp = xp_of(stack)
    n, ny, nx = stack.shape
    p = int(patch_size_px)
    if p < 8:
        raise ValueError(f"patch size {p} px is too small to track (need >= 8 px)")
    views = geometry.included_views()
    ref = _reference_view(geometry, views, weak)
    beta = np.radians(_true_tilts(geometry))
    c = _centre(stack.shape)
    offs = _box_offsets(p)
    half = (p - 1) / 2.0
    centres = patch_centres((ny, nx), p, overlap)
    # content check on the reference view (band-passed std), skip empty patches
    ref_img = xp.asarray(stack[ref], dtype=xp.float32)
    boxes = _sample(ref_img, c + centres[:, None, None, :] + offs[None], order=1)
    filt = to_numpy(_prepare_boxes(boxes, settings))
    sd = filt.reshape(filt.shape[0], -1).std(axis=1)
    keep = sd >= empty_fraction * np.median(sd)
    centres = centres[keep]
    m = centres.shape[0]
    pos = np.full((n, m, 2), np.nan)
    cc = np.full((n, m), np.nan)
    pos[ref] = centres + 0.0
    cc[ref] = 1.0
    max_shift = max_shift_fraction * p
    limit = np.array([(nx - 1) / 2.0 - half, (ny - 1) / 2.0 - half])
    skip = np.zeros(n, dtype=bool) if weak is None else np.asarray(weak, dtype=bool).copy()
    skip[ref] = False
    good = views[~skip[views]]
    steps = _outward_pairs(good, ref)
    for b in views[skip[views]]:  # dead ends from the nearest good view towards the reference
        towards = good[good < b] if b > ref else good[good > b]
        if towards.size:
            steps.append((int(towards.max() if b > ref else towards.min()), int(b)))
    for a, b in steps:
        alive = np.flatnonzero(np.isfinite(pos[a, :, 0]))
        if alive.size == 0:
            continue
        ratio = math.cos(beta[b]) / math.cos(beta[a]) if stretch else 1.0
        smat = stretch_matrix(geometry.tilt_axis_deg, ratio)
        ua = pos[a, alive]
        pred = shifts_px[b] + (ua - shifts_px[a]) @ smat.T
        inside = np.all(np.abs(pred) <= limit - 1.0, axis=1)
        alive, ua, pred = alive[inside], ua[inside], pred[inside]
        if alive.size == 0:
            continue
        src = c + ua[:, None, None, :] + offs[None] @ np.linalg.inv(smat).T
        box_a = _sample(xp.asarray(stack[a], dtype=xp.float32), src, order=1)
        box_b = _sample(xp.asarray(stack[b], dtype=xp.float32), c + pred[:, None, None, :] + offs[None], order=1)
        d, pk = cross_correlate(box_a, box_b, max_shift_px=max_shift, settings=settings)
        ok = (pk >= min_cc) & np.all(np.abs(pred + d) <= limit, axis=1)
        pos[b, alive[ok]] = pred[ok] + d[ok]
        cc[b, alive[ok]] = pk[ok]
    return PatchTracks(positions_px=pos, peak_cc=cc, patch_size_px=p, reference_view=ref)


# --------------------------------------------------------------------------------------------------------
# Projection model (tiltalign)
# --------------------------------------------------------------------------------------------------------


def model_positions(points_px: np.ndarray, shifts_px: np.ndarray, tilt_axis_deg: float, tilts_deg: np.ndarray,
                    rotations_deg: np.ndarray | None = None, magnifications: np.ndarray | None = None) -> np.ndarray:
    """The projection model: raw positions (n_views, n_points, 2) px from the image centre of specimen points
    ``points_px`` (m, 3) for views with true tilts ``tilts_deg`` (n,), specimen shifts ``shifts_px`` (n, 2),
    tilt axis ``tilt_axis_deg`` plus per-view ``rotations_deg`` (n,) and ``magnifications`` (n,)."""
    pts = np.asarray(points_px, dtype=np.float64).reshape(-1, 3)
    b = np.radians(np.asarray(tilts_deg, dtype=np.float64))
    n = b.shape[0]
    rot = np.zeros(n) if rotations_deg is None else np.asarray(rotations_deg, dtype=np.float64)
    mag = np.ones(n) if magnifications is None else np.asarray(magnifications, dtype=np.float64)
    qx = pts[None, :, 0] * np.cos(b)[:, None] + pts[None, :, 2] * np.sin(b)[:, None]
    qy = np.broadcast_to(pts[None, :, 1], qx.shape)
    r = rotation_2d(tilt_axis_deg + rot) * mag[:, None, None]  # (n, 2, 2)
    q = np.stack([qx, qy], axis=-1)
    return np.asarray(shifts_px, dtype=np.float64)[:, None, :] + np.einsum("nij,nmj->nmi", r, q)


@dataclass
class ModelFit:
    """Result of :func:`fit_projection_model` (px at the stack's binning, degrees).

    ``tilt_axis_deg`` (mean axis), ``tilt_offset_deg`` (total: the input offset, plus the flattening angle
    when asked), ``specimen_slope_deg`` the x-z slope of the plane through the points (about 0 after
    flattening; with across offsets the plane is through ``x + c``), ``shifts_px`` (n, 2) specimen shifts,
    ``rotations_deg`` (n,) per-view rotation about the mean axis (0 if not solved), ``magnifications`` (n,)
    (1 if not solved), ``points_px`` (m, 3) patch positions (x, y, z) in the specimen frame (mean 0),
    ``residuals_px`` (n, m, 2) model minus observation (NaN where not observed or rejected),
    ``view_residual_px`` (n,) and ``patch_residual_px`` (m,) mean residual lengths (NaN where none),
    ``mean_residual_px`` the mean residual length over all used observations (IMOD's "residual error mean"),
    ``rejected`` (m,) patches dropped as outliers or for too few views, ``n_rounds`` fits done,
    ``across_offsets_px`` (m,) the per-patch across-axis offsets ``c_j`` (zeros when not solved, NaN for
    rejected patches; see :func:`fit_projection_model`).
    """

    tilt_axis_deg: float
    tilt_offset_deg: float
    shifts_px: np.ndarray
    rotations_deg: np.ndarray
    magnifications: np.ndarray
    points_px: np.ndarray
    residuals_px: np.ndarray
    view_residual_px: np.ndarray
    patch_residual_px: np.ndarray
    mean_residual_px: float
    rejected: np.ndarray
    n_rounds: int
    specimen_slope_deg: float = 0.0
    across_offsets_px: np.ndarray | None = None
    solved: dict[str, bool] = field(default_factory=dict)


class _Model:
    """Parameter packing, residuals and the analytic sparse Jacobian of the projection model."""

    def __init__(self, obs_view: np.ndarray, obs_patch: np.ndarray, obs_uv: np.ndarray, n: int, m: int,
                 tilts_rad: np.ndarray, views: np.ndarray, solve_rotation: bool, solve_magnification: bool,
                 combine: scipy.sparse.csr_matrix | None = None, fixed_axis_rad: float | None = None,
                 across_offsets: bool = False, offset_prior: float = 0.0) -> None:
        self.iv, self.jp, self.uv = obs_view, obs_patch, obs_uv
        self.n, self.m = n, m
        self.beta = tilts_rad
        self.views = views  # views with observations (gauge rows only over these)
        self.sr, self.sm = solve_rotation, solve_magnification
        self.combine = combine  # (q, 2k) rows fitted instead of the 2k position residuals (tracking steps)
        self.fixed_axis = fixed_axis_rad  # a stiff extra residual holds the axis there
        self.co = across_offsets  # per-patch across-axis offsets c_j (mean 0) after the 3D points
        self.c_prior = float(offset_prior)  # weight of the rows ``offset_prior * c_j`` pulling each c_j to 0
        self.i_p = 0
        self.i_c = 3 * m
        self.i_s = self.i_c + (m if across_offsets else 0)
        self.i_t = self.i_s + 2 * n
        k = self.i_t + 1
        self.i_r = k
        k += n if solve_rotation else 0
        self.i_m = k
        k += n if solve_magnification else 0
        self.size = k

    def pack(self, p: np.ndarray, s: np.ndarray, theta: float, rot: np.ndarray, mag: np.ndarray,
             c: np.ndarray | None = None) -> np.ndarray:
        x = np.zeros(self.size)
        x[: 3 * self.m] = p.ravel()
        if self.co and c is not None:
            x[self.i_c: self.i_s] = c
        x[self.i_s: self.i_t] = s.ravel()
        x[self.i_t] = theta
        if self.sr:
            x[self.i_r: self.i_r + self.n] = rot
        if self.sm:
            x[self.i_m: self.i_m + self.n] = mag
        return x

    def unpack(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray, np.ndarray]:
        p = x[: 3 * self.m].reshape(self.m, 3)
        s = x[self.i_s: self.i_t].reshape(self.n, 2)
        theta = float(x[self.i_t])
        rot = x[self.i_r: self.i_r + self.n] if self.sr else np.zeros(self.n)
        mag = x[self.i_m: self.i_m + self.n] if self.sm else np.ones(self.n)
        return p, s, theta, rot, mag

    def offsets(self, x: np.ndarray) -> np.ndarray:
        """(m,) per-patch across-axis offsets c_j (zeros when not solved)."""
        return x[self.i_c: self.i_s].copy() if self.co else np.zeros(self.m)

    def _parts(self, x: np.ndarray) -> tuple[Any, ...]:
        p, s, theta, rot, mag = self.unpack(x)
        iv, jp = self.iv, self.jp
        b = self.beta[iv]
        cb, sb = np.cos(b), np.sin(b)
        phi = theta + rot[iv]
        cp, sp = np.cos(phi), np.sin(phi)
        mg = mag[iv]
        px, py, pz = p[jp, 0], p[jp, 1], p[jp, 2]
        qx = px * cb + pz * sb
        if self.co:
            qx = qx + x[self.i_c + jp]
        qy = py
        return p, s, rot, mag, iv, jp, cb, sb, cp, sp, mg, px, pz, qx, qy

    def position_residuals(self, x: np.ndarray) -> np.ndarray:
        """(k, 2) model minus observed position of every observation."""
        p, s, rot, mag, iv, jp, cb, sb, cp, sp, mg, px, pz, qx, qy = self._parts(x)
        ux = s[iv, 0] + mg * (cp * qx - sp * qy)
        uy = s[iv, 1] + mg * (sp * qx + cp * qy)
        return np.stack([ux - self.uv[:, 0], uy - self.uv[:, 1]], axis=1)

    def residuals(self, x: np.ndarray) -> np.ndarray:
        p, s, theta, rot, mag = self.unpack(x)
        r = self.position_residuals(x).ravel()
        if self.combine is not None:
            r = self.combine @ r
        gauge = [p.mean(axis=0)]
        if self.co:
            gauge.append(np.array([x[self.i_c: self.i_s].mean()]))
            if self.c_prior > 0:
                gauge.append(self.c_prior * x[self.i_c: self.i_s])
        if self.fixed_axis is not None:
            gauge.append(np.array([theta - self.fixed_axis]))
        if self.sr:
            gauge.append(np.array([rot[self.views].mean()]))
        if self.sm:
            gauge.append(np.array([mag[self.views].mean() - 1.0]))
        return np.concatenate([r] + gauge)

    def jacobian(self, x: np.ndarray) -> scipy.sparse.csr_matrix:
        p, s, rot, mag, iv, jp, cb, sb, cp, sp, mg, px, pz, qx, qy = self._parts(x)
        k = iv.shape[0]
        rows_x = 2 * np.arange(k)
        rows_y = rows_x + 1
        R, C, V = [], [], []

        def add(col: np.ndarray, dx: np.ndarray, dy: np.ndarray) -> None:
            R.extend([rows_x, rows_y])
            C.extend([col, col])
            V.extend([dx, dy])

        # d/dp: m R (cb, 0), m R (0, 1), m R (sb, 0); R = [[cp, -sp], [sp, cp]]
        add(3 * jp, mg * cp * cb, mg * sp * cb)
        add(3 * jp + 1, -mg * sp, mg * cp)
        add(3 * jp + 2, mg * cp * sb, mg * sp * sb)
        if self.co:
            add(self.i_c + jp, mg * cp, mg * sp)
        one = np.ones(k)
        zero = np.zeros(k)
        add(self.i_s + 2 * iv, one, zero)
        add(self.i_s + 2 * iv + 1, zero, one)
        # d/dphi: m R' q, R' = [[-sp, -cp], [cp, -sp]]
        dphx = mg * (-sp * qx - cp * qy)
        dphy = mg * (cp * qx - sp * qy)
        add(np.full(k, self.i_t), dphx, dphy)
        if self.sr:
            add(self.i_r + iv, dphx, dphy)
        if self.sm:
            add(self.i_m + iv, cp * qx - sp * qy, sp * qx + cp * qy)
        jac = scipy.sparse.csr_matrix((np.concatenate(V), (np.concatenate(R), np.concatenate(C))),
                                      shape=(2 * k, self.size))
        if self.combine is not None:
            jac = (self.combine @ jac).tocsr()
        # gauge rows
        g = 0
        gr = [np.repeat(g + np.arange(3), self.m)]
        gc = [np.concatenate([3 * np.arange(self.m) + a for a in range(3)])]
        gv = [np.full(3 * self.m, 1.0 / self.m)]
        g += 3
        if self.co:
            gr.append(np.full(self.m, g))
            gc.append(self.i_c + np.arange(self.m))
            gv.append(np.full(self.m, 1.0 / self.m))
            g += 1
            if self.c_prior > 0:
                gr.append(g + np.arange(self.m))
                gc.append(self.i_c + np.arange(self.m))
                gv.append(np.full(self.m, self.c_prior))
                g += self.m
        if self.fixed_axis is not None:  # the data no longer move the axis; one row holds it in place
            jac = jac.tolil()
            jac[:, self.i_t] = 0.0
            jac = jac.tocsr()
            gr.append(np.array([g]))
            gc.append(np.array([self.i_t]))
            gv.append(np.array([1.0]))
            g += 1
        nv = len(self.views)
        if self.sr:
            gr.append(np.full(nv, g))
            gc.append(self.i_r + self.views)
            gv.append(np.full(nv, 1.0 / nv))
            g += 1
        if self.sm:
            gr.append(np.full(nv, g))
            gc.append(self.i_m + self.views)
            gv.append(np.full(nv, 1.0 / nv))
            g += 1
        gauge = scipy.sparse.csr_matrix((np.concatenate(gv), (np.concatenate(gr), np.concatenate(gc))),
                                        shape=(g, self.size))
        return scipy.sparse.vstack([jac, gauge], format="csr")


def _levenberg_marquardt(model: _Model, x0: np.ndarray, *, max_iter: int = 100,
                         tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Minimise ``|model.residuals(x)|²`` by Levenberg-Marquardt with exact sparse solves of the normal
    equations (the problem is nearly linear: a few iterations). Returns the solution and its residuals."""
    import scipy.sparse.linalg

    x = x0.astype(np.float64).copy()
    r = model.residuals(x)
    cost = float(r @ r)
    lam = 1e-6
    for _ in range(max_iter):
        jac = model.jacobian(x)
        a = (jac.T @ jac).tocsc()
        g = jac.T @ r
        diag = a.diagonal()
        damp = np.maximum(diag, 1e-12 * max(float(diag.max()), 1e-30))
        improved = False
        for _ in range(20):
            step = scipy.sparse.linalg.spsolve(a + scipy.sparse.diags(lam * damp, format="csc"), -g)
            x_new = x + step
            r_new = model.residuals(x_new)
            cost_new = float(r_new @ r_new)
            if np.isfinite(cost_new) and cost_new <= cost:
                improved = True
                break
            lam *= 10.0
        if not improved:
            break
        decrease = cost - cost_new
        x, r, cost = x_new, r_new, cost_new
        lam = max(lam / 10.0, 1e-12)
        if decrease <= tol * max(cost, 1e-30) or float(np.abs(step).max()) < 1e-10:
            break
    return x, r


def _axis_frame_weights(iv: np.ndarray, phi_rad: np.ndarray, w_across: float) -> scipy.sparse.csr_matrix:
    """(2k, 2k) block-diagonal operator taking each observation's (x, y) residual to (w_across * across-axis,
    along-axis) components in the frame of its view's tilt axis ``phi_rad`` (n,) (radians)."""
    k = iv.shape[0]
    c, s = np.cos(phi_rad[iv]), np.sin(phi_rad[iv])
    # R(-phi) = [[c, s], [-s, c]]: first row across the axis (aligned x), second along it (aligned y)
    blocks = np.stack([np.stack([w_across * c, w_across * s], -1), np.stack([-s, c], -1)], -2)  # (k, 2, 2)
    rows = np.repeat(np.arange(2 * k).reshape(k, 2), 2, axis=1).ravel()
    cols = np.tile(np.arange(2 * k).reshape(k, 2), (1, 2)).ravel()
    return scipy.sparse.csr_matrix((blocks.ravel(), (rows, cols)), shape=(2 * k, 2 * k))


def fit_projection_model(positions_px: np.ndarray, tilt_angles_deg: np.ndarray, tilt_axis_deg: float, *,
                         tilt_offset_deg: float = 0.0, initial_shifts_px: np.ndarray | None = None,
                         flatten: bool = False, solve_rotation: bool = False,
                         solve_magnification: bool = False, outlier_mad: float = 3.0,
                         min_outlier_px: float = 0.5, min_views: int = 3, max_rounds: int = 6,
                         weighting: Literal["axis", "isotropic"] = "axis", across_weight: float | None = None,
                         solve_axis: bool = True, across_offsets: bool = False,
                         offset_prior: float = 0.0, view_weights: np.ndarray | None = None) -> ModelFit:
    """Least-squares fit of the projection model (module docstring) to tracked positions, like ``tiltalign``.

    ``positions_px`` (n_views, n_patches, 2): observed (x, y) px from the raw image centre, NaN where a patch
    is not seen. ``tilt_angles_deg`` (n,) nominal tilts; true tilts are these plus ``tilt_offset_deg``.
    Unknowns: per-patch (x, y, z), per-view shifts, the tilt-axis angle (global; kept at ``tilt_axis_deg``
    when ``solve_axis`` is false), optionally per-view
    rotations (mean 0) and magnifications (mean 1); solved by Levenberg-Marquardt with the analytic sparse
    Jacobian and exact sparse normal-equation solves, starting from z = 0 and the given shifts (default: the
    positions' mean displacement from the reference view).

    Tilt-angle offset: adding ``α`` to every tilt is *exactly* the same as rotating all points by ``-α`` about
    the tilt axis, so projections alone cannot determine it (``tiltalign`` likewise reports the offset that
    makes the specimen flat). With ``flatten`` the offset is changed by ``α = -atan(a)``, ``a`` the x-slope of
    the least-squares plane ``z = a x + b y + c`` through the patches, and the points are rotated by ``-α``
    (projections, shifts and residuals are unchanged); otherwise ``tilt_offset_deg`` is kept.
    :attr:`ModelFit.specimen_slope_deg` reports ``atan(a)`` of the final points either way.

    Tomogram centre: projections cannot fix the origin of the specimen frame (a 3D translation of all points
    is absorbed by the shifts); the mean position of the used patches is taken as the origin (x, y, z = 0).

    Weighting: a patch of a thick specimen holds features at different depths, which separate *across* the tilt
    axis as the tilt grows (parallax), so tracked positions are much noisier across the axis than along it.
    With ``weighting="axis"`` the first fit is unweighted and later ones weight each residual's across-axis
    component by ``rms_along / rms_across`` of the previous fit (in each view's axis frame); unweighted
    fits of such tracks bias the tilt-axis angle (by about 1° for blobs spread ±8 px in depth in the tests).
    ``across_weight`` replaces the estimated ratio by a fixed one.
    Reported residuals are always the plain position differences (px).

    Across-axis patch offsets (``across_offsets=True``): each patch gets one more unknown, a constant offset
    ``c_j`` (px, mean 0 over the patches) added to its across-axis model coordinate,
    ``u_ij = s_i + m_i R(θ + δ_i) [x_j cos β_i + z_j sin β_i + c_j, y_j]``. A tracked patch of a thick
    specimen is a blend of features at several depths, and the features that dominate its correlation change
    as they drift across the axis with the tilt, so its across-axis track is not that of one 3D point; a
    constant part of that mismatch looks like ``c_j (1 - cos β)`` against a point model, which is the
    across-axis signature of a tilt-axis error for a patch at ``y_j = -c_j / δ``, so unmodelled offsets that
    correlate with ``y`` over the field bias the axis. With ``c_j`` free, the axis is set by the along-axis
    positions (no parallax across the axis there; see the module docstring for what remains) and the
    across-axis ``cos β`` / ``sin β`` terms; the shifts and the points' ``y``, ``z`` keep their meaning.
    ``c_j`` is reported in :attr:`ModelFit.across_offsets_px`; their level is a gauge (a constant added to all
    ``c_j`` and taken from every view's across-axis shift predicts the same positions), set so that the median
    ``c_j`` is 0: a few patches with large offsets would otherwise move the fitted tilt axis across the
    tomogram (measured on the small preset with other seeds: the mean-zero gauge left 2.6-3.5 px constant
    across-axis shift errors at bin 10 on 2 of 6 series, the median 0.6 px RMS, at most 0.9 px). Where a track's across-axis motion is even in
    the tilt (a blend moving outwards on both sides), the data ask for a large ``c_j`` and an ``x_j`` that
    compensates it (the patch's 0° position is ``x_j + c_j``), so single points' ``x`` can be far from the
    patch (tens of px); the plane of ``flatten`` is therefore fitted through
    ``(x_j + c_j, y_j, z_j)``. ``offset_prior`` > 0 adds rows ``offset_prior * c_j`` that pull the offsets to
    0 (measured on TS_02 of the small preset: even 0.01 keeps them small but worsens the shifts of the
    high-tilt views, 0.08 → 0.28 px RMS, so the default is 0).

    ``view_weights`` (n,): the residuals of view ``i`` are multiplied by ``view_weights[i]`` (default 1) —
    e.g. 0.2 for a dark view, whose positions are noisy and should not pull the axis; reported residuals are
    unweighted.

    Outliers: after each fit, patches whose mean residual exceeds ``median + outlier_mad * 1.4826 * MAD`` of
    the patch residuals (and ``min_outlier_px``) are rejected and the fit repeated (at most ``max_rounds``
    fits). Patches seen in fewer than ``min_views`` views are not used. Views without observations get
    shifts interpolated in tilt, rotation 0 and magnification 1. Returns :class:`ModelFit`.
    """
    pos = np.asarray(positions_px, dtype=np.float64)
    n, m = pos.shape[:2]
    tilts = np.asarray(tilt_angles_deg, dtype=np.float64)
    if tilts.shape[0] != n:
        raise ValueError(f"{n} views of positions but {tilts.shape[0]} tilt angles")
    seen = np.isfinite(pos[..., 0]) & np.isfinite(pos[..., 1])
    vw = None
    if view_weights is not None:
        vw = np.asarray(view_weights, dtype=np.float64).reshape(-1)
        if vw.shape[0] != n or not np.all(np.isfinite(vw)) or np.any(vw < 0):
            raise ValueError(f"view_weights must be {n} finite values >= 0")
        seen &= (vw > 0)[:, None]
    rejected = seen.sum(axis=0) < min_views
    if (~rejected).sum() < 2:
        raise ValueError("fewer than 2 patches tracked through enough views to fit the projection model")
    ref = int(np.argmin(np.abs(tilts)))
    theta = math.radians(tilt_axis_deg)
    if initial_shifts_px is None:
        s0 = np.zeros((n, 2))
        base = pos[ref] if seen[ref].any() else pos[np.argmax(seen.sum(axis=1))]
        for i in range(n):
            both = seen[i] & np.isfinite(base[:, 0])
            if both.any():
                s0[i] = (pos[i, both] - base[both]).mean(axis=0)
    else:
        s0 = np.asarray(initial_shifts_px, dtype=np.float64).reshape(n, 2).copy()
    rot = np.zeros(n)
    mag = np.ones(n)
    # initial 3D points: first observation (closest to the reference view) back-projected with z = 0
    p0 = np.zeros((m, 3))
    b_all = np.radians(tilts + tilt_offset_deg)
    for j in range(m):
        iv = np.flatnonzero(seen[:, j])
        if iv.size == 0:
            continue
        i = iv[np.argmin(np.abs(iv - ref))]
        a = rotation_2d(-tilt_axis_deg) @ (pos[i, j] - s0[i])
        p0[j] = [a[0] / max(math.cos(b_all[i]), 0.2), a[1], 0.0]
    p0[~rejected] -= p0[~rejected].mean(axis=0)
    c0 = np.zeros(m)
    n_rounds = 0
    w_across = 1.0
    reweight = False
    while True:
        n_rounds += 1
        use = ~rejected
        jidx = np.flatnonzero(use)
        remap = np.full(m, -1)
        remap[jidx] = np.arange(jidx.size)
        obs = seen & use[None, :]
        iv, jp = np.nonzero(obs)
        views = np.unique(iv)
        combine = _axis_frame_weights(iv, theta + rot, w_across) if w_across < 1.0 else None
        if vw is not None:
            scale = scipy.sparse.diags(np.repeat(vw[iv], 2), format="csr")
            combine = scale if combine is None else (combine @ scale).tocsr()
        model = _Model(iv, remap[jp], pos[iv, jp], n, jidx.size, b_all, views, solve_rotation,
                       solve_magnification, combine, None if solve_axis else math.radians(tilt_axis_deg),
                       across_offsets, offset_prior)
        x0 = model.pack(p0[jidx], s0, theta, rot, mag, c0[jidx] - c0[jidx].mean())
        xsol, _ = _levenberg_marquardt(model, x0)
        p_fit, s_fit, theta, rot_fit, mag_fit = model.unpack(xsol)
        s0, rot, mag = s_fit.copy(), rot_fit.copy(), mag_fit.copy()
        p0[jidx] = p_fit
        c0[jidx] = model.offsets(xsol)
        res = np.full((n, m, 2), np.nan)
        r = model.position_residuals(xsol)
        res[iv, jp] = r
        if weighting == "axis":
            frame = np.stack([np.cos(theta + rot[iv]), np.sin(theta + rot[iv])], -1)
            across = np.einsum("ki,ki->k", r, frame)
            along = np.einsum("ki,ki->k", r, frame[:, ::-1] * [-1.0, 1.0])
            rms_across, rms_along = float(np.sqrt(np.mean(across ** 2))), float(np.sqrt(np.mean(along ** 2)))
            new_w = float(np.clip(rms_along / max(rms_across, 1e-12), 0.02, 1.0))
            if across_weight is not None:
                new_w = float(across_weight)
            reweight = abs(new_w - w_across) > 0.05 * w_across
            w_across = new_w
        length = np.linalg.norm(res, axis=-1)
        patch_err = np.zeros(m)
        cnt = obs.sum(axis=0)
        patch_err[cnt > 0] = np.where(obs, np.nan_to_num(length), 0.0).sum(axis=0)[cnt > 0] / cnt[cnt > 0]
        e = patch_err[use]
        med = float(np.median(e))
        mad = 1.4826 * float(np.median(np.abs(e - med)))
        cut = max(med + outlier_mad * mad, min_outlier_px)
        new = use & (patch_err > cut)
        if n_rounds >= max_rounds or (use & ~new).sum() < 2 or not (new.any() or reweight):
            break
        if new.any():
            rejected = rejected | new
    if across_offsets and (~rejected).any():
        # The offsets' level is a gauge: a constant κ added to every c_j and removed from every view's shift
        # across the axis (s_i -= m_i R(θ + δ_i) [κ, 0]) predicts the same positions. The fit's gauge row
        # keeps their mean at 0; a few patches whose blend drifts far pull that mean, and a constant across-axis
        # shift of all views is a tilt axis displaced in the tomogram. Most patches are close to one 3D point,
        # so the typical (median) patch is given c = 0.
        kappa = float(np.median(c0[~rejected]))
        c0[~rejected] -= kappa
        s0 = s0 + kappa * mag[:, None] * np.stack([np.cos(theta + rot), np.sin(theta + rot)], axis=-1)
    obs = seen & ~rejected[None, :]
    res = np.where(obs[..., None], res, np.nan)
    length = np.linalg.norm(res, axis=-1)
    has_v = obs.any(axis=1)
    has_p = obs.any(axis=0)
    view_err = np.full(n, np.nan)
    view_err[has_v] = np.nanmean(np.where(obs[has_v], length[has_v], np.nan), axis=1)
    patch_err = np.full(m, np.nan)
    patch_err[has_p] = np.nanmean(np.where(obs[:, has_p], length[:, has_p], np.nan), axis=0)
    shifts = _interpolate_missing(s0, tilts, has_v)
    rot = np.where(has_v, rot, 0.0)
    mag = np.where(has_v, mag, 1.0)
    points = np.where(rejected[:, None], np.nan, p0)

    def plane_slope(pts: np.ndarray) -> float:
        good = pts[~rejected] + np.c_[c0[~rejected], np.zeros((int((~rejected).sum()), 2))]
        design = np.c_[good[:, 0], good[:, 1], np.ones(good.shape[0])]
        return float(np.linalg.lstsq(design, good[:, 2], rcond=None)[0][0])

    slope = plane_slope(points)
    offset = tilt_offset_deg
    if flatten:
        alpha = -math.atan(slope)
        ca, sa = math.cos(alpha), math.sin(alpha)
        x, z = points[:, 0].copy(), points[:, 2].copy()
        points[:, 0], points[:, 2] = x * ca - z * sa, x * sa + z * ca  # Ry(-alpha)
        offset = tilt_offset_deg + math.degrees(alpha)
        slope = plane_slope(points)
    return ModelFit(
        tilt_axis_deg=math.degrees(theta), tilt_offset_deg=offset, shifts_px=shifts,
        rotations_deg=np.degrees(rot), magnifications=mag, points_px=points, residuals_px=res,
        view_residual_px=view_err, patch_residual_px=patch_err, mean_residual_px=float(np.nanmean(length[obs])),
        rejected=rejected, n_rounds=n_rounds, specimen_slope_deg=math.degrees(math.atan(slope)),
        solved={"axis": solve_axis, "flatten": flatten, "rotation": solve_rotation,
                "magnification": solve_magnification, "across_offsets": across_offsets},
        across_offsets_px=np.where(rejected, np.nan, c0),
    )


# --------------------------------------------------------------------------------------------------------
# The whole alignment
# --------------------------------------------------------------------------------------------------------


@dataclass
class AlignmentResult:
    """Output of :func:`align_tilt_series`: the aligned ``geometry`` (xf, tilt axis, tilt offset, at the
    stack's binning), ``coarse_shifts_px`` (n, 2) and ``coarse`` (:class:`CoarseAlignment`: weak and widened
    views), the last ``tracks`` and ``fit``; the axis bookkeeping: ``prior_axis_deg`` (the geometry's axis on
    input, e.g. the mdoc's), ``axis_search`` (:class:`AxisSearch` of the views, None when not run),
    ``start_axis_deg`` (where the kept alignment started: the prior, or the search's axis when the two were
    more than ``restart_deg`` apart and that start fitted better), ``axis_history_deg`` (the start, then the
    fitted axis after each round), ``restart_deg`` (the disagreement above which both starts were tried) and
    ``view_weights`` (n,) used in the fits (weak views down-weighted)."""

    geometry: TiltSeriesGeometry
    coarse_shifts_px: np.ndarray
    tracks: PatchTracks
    fit: ModelFit
    coarse: CoarseAlignment | None = None
    prior_axis_deg: float = float("nan")
    axis_search: AxisSearch | None = None
    start_axis_deg: float = float("nan")
    axis_history_deg: list[float] = field(default_factory=list)
    view_weights: np.ndarray | None = None
    restart_deg: float = 12.0

    @property
    def weak_views(self) -> np.ndarray:
        """0-based indices of the views the coarse alignment found weak (dark, blank, blurred)."""
        return np.flatnonzero(self.coarse.weak) if self.coarse is not None else np.zeros(0, dtype=np.int64)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly numbers for reports: residual mean, per-view residuals, axis, offset, counts, and
        the axis bookkeeping (prior, the views' own estimate, start, rounds) and the weak / widened views."""
        f = self.fit
        s = self.axis_search
        return {
            "tilt_axis_deg": f.tilt_axis_deg,
            "tilt_offset_deg": f.tilt_offset_deg,
            "mean_residual_px": f.mean_residual_px,
            "view_residual_px": [None if not np.isfinite(v) else float(v) for v in f.view_residual_px],
            "n_patches": int(self.tracks.n_patches),
            "n_rejected": int(f.rejected.sum()),
            "patch_size_px": int(self.tracks.patch_size_px),
            "n_rounds": int(f.n_rounds),
            "prior_axis_deg": float(self.prior_axis_deg),
            "searched_axis_deg": None if s is None else float(s.axis_deg),
            "axis_search_contrast": None if s is None else float(s.contrast),
            "start_axis_deg": float(self.start_axis_deg),
            "axis_history_deg": [float(a) for a in self.axis_history_deg],
            "weak_views": [int(i) for i in self.weak_views],
            "widened_views": [] if self.coarse is None else [int(i) for i in np.flatnonzero(self.coarse.widened)],
        }


def axis_difference_deg(a_deg: float, b_deg: float) -> float:
    """``a - b`` modulo 180° in [-90°, 90°): the difference of two tilt-axis angles as the views see them (an
    axis and the same axis + 180° differ only in the tilt direction)."""
    return float((a_deg - b_deg + 90.0) % 180.0 - 90.0)


def geometry_from_fit(geometry: TiltSeriesGeometry, fit: ModelFit) -> TiltSeriesGeometry:
    """A copy of ``geometry`` with the fitted transforms ``A_i = R(-(θ + δ_i)) / m_i``, ``d_i = -A_i s_i``
    (px at the geometry's binning), ``tilt_axis_deg`` and ``tilt_offset_deg``."""
    a = rotation_2d(-(fit.tilt_axis_deg + fit.rotations_deg)) / fit.magnifications[:, None, None]
    mats = np.zeros((geometry.n_views, 2, 3))
    mats[:, :, :2] = a
    mats[:, :, 2] = -np.einsum("nij,nj->ni", a, fit.shifts_px)
    return geometry.model_validate({**geometry.model_dump(), "xf": mats, "tilt_axis_deg": float(fit.tilt_axis_deg),
                                    "tilt_offset_deg": float(fit.tilt_offset_deg)})


def align_tilt_series(stack: Any, geometry: TiltSeriesGeometry, *, patch_size_A: float = 500.0,
                      patch_overlap: float = 0.8, solve_axis: bool = True, flatten: bool = False,
                      solve_rotation: bool = False, solve_magnification: bool = False, min_cc: float = 0.25,
                      outlier_mad: float = 3.0,
                      settings: FilterSettings = FilterSettings(), iterations: int = 4,
                      across_offsets: bool = True, check_axis: bool = True, restart_deg: float = 12.0,
                      axis_tolerance_deg: float = 0.1, weak_view_weight: float = 0.2) -> AlignmentResult:
    """Marker-free alignment of one tilt series (IMOD's coarse alignment, patch tracking and tiltalign).

    ``stack`` (n, ny, nx) float in view order at ``geometry.binning`` (pixel ``geometry.pixel_size_binned_A``),
    ``geometry`` its record (tilt axis and offset are starting values; any ``xf`` is ignored; excluded views
    are skipped and get interpolated shifts). Patches of ``patch_size_A`` Å (at least 8 px) with fractional
    ``patch_overlap``. ``solve_axis``, ``flatten``, ``solve_rotation``, ``solve_magnification``, ``outlier_mad``,
    ``across_offsets`` (per-patch across-axis offsets, on by default: they take the depth-blend mismatch of
    thick-specimen patches off the tilt-axis angle): see :func:`fit_projection_model`; ``min_cc``: see
    :func:`track_patches`.

    The prior axis (the geometry's, e.g. the mdoc's) may be several degrees off. With ``check_axis`` (and
    ``solve_axis``) the views' own axis is found first (:func:`search_tilt_axis`, over the whole half-turn,
    taken modulo 180° nearest the prior); when the two differ by more than ``restart_deg`` the alignment is run
    from both and the one that fits its tracks better (lower mean residual) is kept: the prior was wrong, or the
    search was (it is unreliable over a short tilt range: ±30° in 7 views put it up to 12° off). Then rounds of tracking and fitting, each
    round tracking with the previous fit's shifts and axis as predictions (the stretch of the boxes is
    perpendicular to the current axis, so a better axis tracks better), until the axis moves by less than
    ``axis_tolerance_deg`` (at least 2 rounds, at most ``iterations``) or moves more than in the round before
    (not converging: that round is dropped and the one before kept; ``axis_history_deg`` lists every round); measured on the small preset's
    series, starts 10° off on either side end within 0.4° of the truth after patch tracking (and 0.06° after
    the marker refinement of :mod:`tomoguide.compute.markers`).

    Views that the coarse alignment finds weak (:func:`coarse_align_views`: dark, blank) are bridged over by
    the coarse chain and the patch tracks and weigh ``weak_view_weight`` in the fits. Returns
    :class:`AlignmentResult` whose ``geometry`` carries the xf, tilt axis and tilt offset.
    """
    n, ny, nx = stack.shape
    if n != geometry.n_views:
        raise ValueError(f"stack has {n} views, geometry {geometry.n_views}")
    patch_px = int(round(patch_size_A / geometry.pixel_size_binned_A))
    patch_px = max(8, min(patch_px, min(ny, nx)))
    tilts = np.asarray(geometry.tilt_angles_deg, dtype=np.float64)
    prior = float(geometry.tilt_axis_deg)
    search = None
    start = prior
    if check_axis and solve_axis:
        included = np.zeros(n, dtype=bool)
        included[geometry.included_views()] = True
        try:
            search = search_tilt_axis(stack, geometry.true_tilt_deg(), use=included)
        except ValueError:  # too few or too close tilts to search: the prior stands
            search = None
        if search is not None:
            found = prior + axis_difference_deg(search.axis_deg, prior)
            search = replace(search, axis_deg=found)
            if abs(found - prior) > restart_deg:
                start = found

    def from_start(axis: float) -> tuple[TiltSeriesGeometry, ModelFit, PatchTracks, CoarseAlignment, np.ndarray,
                                         list[float]]:
        work = geometry.model_validate({**geometry.model_dump(), "tilt_axis_deg": axis, "xf": None})
        coarse = coarse_align_views(stack, work, settings=settings)
        weights = np.where(coarse.weak, float(weak_view_weight), 1.0)
        shifts = coarse.shifts_px
        history = [axis]
        fit = tracks = None
        last_move = math.inf
        for k in range(max(1, iterations)):
            new_tracks = track_patches(stack, work, shifts, patch_size_px=patch_px, overlap=patch_overlap,
                                       min_cc=min_cc, settings=settings, weak=coarse.weak)
            new_fit = fit_projection_model(new_tracks.positions_px, tilts, work.tilt_axis_deg,
                                           tilt_offset_deg=work.tilt_offset_deg, initial_shifts_px=shifts,
                                           solve_axis=solve_axis, flatten=flatten, solve_rotation=solve_rotation,
                                           solve_magnification=solve_magnification, outlier_mad=outlier_mad,
                                           across_offsets=across_offsets, view_weights=weights)
            moved = abs(new_fit.tilt_axis_deg - work.tilt_axis_deg)
            history.append(float(new_fit.tilt_axis_deg))
            if k >= 1 and moved > max(last_move, axis_tolerance_deg):
                # not converging (the axis moved more than in the round before: few or short tracks, e.g. 7 noisy
                # views over ±30°): the previous round's alignment is kept
                break
            fit, tracks = new_fit, new_tracks
            work = geometry_from_fit(geometry, fit)
            shifts = fit.shifts_px
            if k >= 1 and moved < axis_tolerance_deg:
                break
            last_move = moved
        assert fit is not None and tracks is not None
        return work, fit, tracks, coarse, weights, history

    work, fit, tracks, coarse, weights, history = from_start(start)
    if abs(start - prior) > 1e-9:
        # the views and the prior disagree: the prior is tried as well, and the start whose alignment fits the
        # tracks better is kept (a short tilt range can make the search itself wrong)
        other = from_start(prior)
        if other[1].mean_residual_px < fit.mean_residual_px:
            work, fit, tracks, coarse, weights, history = other
            start = prior
    assert fit is not None and tracks is not None
    return AlignmentResult(geometry=work, coarse_shifts_px=coarse.shifts_px, tracks=tracks, fit=fit, coarse=coarse,
                           prior_axis_deg=prior, axis_search=search, start_axis_deg=start,
                           axis_history_deg=history, view_weights=weights, restart_deg=restart_deg)


# --------------------------------------------------------------------------------------------------------
# Interpolated aligned stack ("!interp")
# --------------------------------------------------------------------------------------------------------


def apply_alignment(stack: Any, geometry: TiltSeriesGeometry, binning: float | None = None, *,
                    order: int = 1) -> Any:
    """Interpolated aligned stack for viewing (IMOD ``newstack -xform``).

    ``stack`` (n, ny, nx) in view order at ``geometry.binning``; ``binning`` (relative to the unbinned images,
    as :meth:`TiltSeriesGeometry.at_binning`; default the geometry's) bins the stack by Fourier cropping first
    and scales the shifts. Output (n, ny', nx') float32 of the input's array module: view ``i`` resampled so
    that ``out(a) = raw(A_i⁻¹ (a - d_i))`` (positions from the image centres; spline ``order``), i.e. the tilt
    axis along Y and the specimen centre at the image centre. Outside the raw view the view's mean is used.
    """
    xp = xp_of(stack)
    ndi = ndimage(xp)
    geo = geometry
    data = stack
    if binning is not None and abs(binning - geometry.binning) > 1e-9:
        if binning < geometry.binning:
            raise ValueError(f"binning {binning} is finer than the stack's {geometry.binning}")
        from tomoguide.compute.rescale import fourier_bin

        data = fourier_bin(xp.asarray(stack, dtype=xp.float32), binning / geometry.binning)
        geo = geometry.at_binning(binning)
    m = geo.xf_array()
    c = _centre(data.shape)
    swap = np.array([[0.0, 1.0], [1.0, 0.0]])
    out = xp.empty(data.shape, dtype=xp.float32)
    for i in range(data.shape[0]):
        ainv = np.linalg.inv(m[i, :, :2])
        off_xy = c - ainv @ m[i, :, 2] - ainv @ c
        img = xp.asarray(data[i], dtype=xp.float32)
        out[i] = ndi.affine_transform(img, xp.asarray(swap @ ainv @ swap), offset=tuple(swap @ off_xy),
                                      order=order, mode="constant", cval=float(img.mean()))
    return out
