"""Automatic suggestions for the exclusion step: views and CTF fits a trainee should look at and may exclude.

:func:`suggest_exclusions` checks, per view (views in the geometry's order, ascending tilt; 0-based indices):

* ``dark_view`` — the image mean is far below the trend of the other tilts (a grid bar, a blocked or
  drifting beam, an ice crystal). The trend is a robust straight-line fit of ``log(mean)`` against
  ``1/cos β`` (Beer-Lambert: a slab of thickness t transmits ``exp(−t / (Λ cos β))``); a view is flagged
  when its robust z-score (residual / (1.4826 · MAD)) is below ``−z_threshold``. Needs positive means
  (raw or gain-corrected sums); skipped for a normalised stack.
* ``blank_view`` — the image standard deviation is far below the same kind of trend of ``log(SD)``
  (a featureless image: empty beam, a view over a hole, a dead read-out) or is zero.
* ``motion_failed`` — the frame alignment could not align the movie's frames (flagged by ``motion_ctf``: too
  dark or featureless for a significant correlation peak); its sum is unaligned.
* ``residual_jump`` — the per-view alignment residual jumps above the running median of its neighbours
  (``residual_window`` views) by more than ``z_threshold`` robust SDs and by at least ``residual_ratio``
  times that median and by more than ``min_residual_excess`` (an absolute floor: a residual of 0.7 px among
  0.45 px neighbours is no reason to drop a view), or exceeds ``max_residual`` (same unit as the residuals).
* ``tracking_jump`` — the view's specimen shift (from the alignment) lies far from where its neighbours in tilt
  put it: its deviation from the median shift of its ``jump_window`` nearest active views (in acquisition order
  when given, else in tilt order) is above
  ``jump_z_threshold`` robust SDs of all views' deviations (per component, ``1.4826 · MAD``, combined) and above
  ``min_jump_px``. The stage lost the area for that view (a tracking failure): the alignment may have followed it,
  but its field overlaps its neighbours' less and its record is suspect. The shifts are expected in px of the
  unbinned images and the floor likewise (the issue's "100 px or more"); view-to-view shifts of a few tens of nm
  are normal, so the statistical test carries most of the decision: a 2D Gaussian deviation exceeds the default
  4.5 σ in 1 view of 25 000. Measured on the alignments of the issue-14 scenarios (ordinary shifts 60 Å SD per
  view): the planted 280 Å jumps stand at 4.9 and 6.4 σ, the largest ordinary deviations of the other series at
  1.9-3.6 σ and once 4.0 σ (which 4 σ would have suggested). A jump of 280 Å among such shifts is a 4 σ event on
  average: only about half of them can be told from the ordinary scatter.
* ``defocus_outlier`` — the mean defocus ``(U + V)/2`` is more than ``defocus_z_threshold`` robust SDs and
  ``min_defocus_deviation_A`` away from a smooth trend against tilt. The trend is a robust low-order
  polynomial (degree ``defocus_trend_degree``) fitted with iterative rejection, rather than a running
  median: at high tilt several neighbouring fits often fail together (EMPIAR-10164 TS_01 has five wrong
  fits between −60° and −48°), which drags a running median with them.
* ``high_astigmatism`` — ``U − V`` above ``max_astigmatism_A``.
* ``ctf_failed`` — the fit is flagged as failed (the ``failed`` column: tomoguide's ``CtfFit.failed``,
  STAR ``tomoguideCtfFailed``), or its defocus is missing / not finite.
* ``poor_fit_resolution`` — (only when ``max_fit_resolution_A`` is given) the fit resolution is worse
  (larger) than that, in Å.

Each :class:`Suggestion` says whether it concerns the **view** (``target="view"``: dark, blank, residual
jump, tracking jump) or its **CTF** (``target="ctf"``), with a message for the page. Views already excluded are left out of
the trends and get no suggestion. Pure numpy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from tomoguide.compute.backend import to_numpy

__all__ = [
    "REASONS",
    "Suggestion",
    "ViewStats",
    "CtfTable",
    "view_statistics",
    "robust_sigma",
    "robust_line_fit",
    "suggest_exclusions",
    "suggested_views",
    "tracking_jumps",
]

REASONS: tuple[str, ...] = ("dark_view", "blank_view", "motion_failed", "residual_jump", "tracking_jump", "defocus_outlier",
                            "high_astigmatism", "ctf_failed", "poor_fit_resolution")
_TARGET = {"dark_view": "view", "blank_view": "view", "motion_failed": "view", "residual_jump": "view", "tracking_jump": "view",
           "defocus_outlier": "ctf",
           "high_astigmatism": "ctf", "ctf_failed": "ctf", "poor_fit_resolution": "ctf"}
_MAD_TO_SIGMA = 1.4826


@dataclass(frozen=True)
class Suggestion:
    """One suggestion: ``view`` (0-based index in view order), ``reason`` (one of :data:`REASONS`),
    ``message`` (one line for the page), ``target`` ("view" or "ctf"), ``value`` (the measured quantity:
    z-score, residual, defocus in Å, astigmatism in Å, ...), ``tilt_deg`` (NaN if unknown)."""

    view: int
    reason: str
    message: str
    target: str
    value: float = float("nan")
    tilt_deg: float = float("nan")


@dataclass(frozen=True)
class ViewStats:
    """Per-view image statistics (n,) float64: ``mean`` and ``sd`` of the central region of each view."""

    mean: np.ndarray
    sd: np.ndarray

    def __post_init__(self) -> None:
        if np.shape(self.mean) != np.shape(self.sd) or np.ndim(self.mean) != 1:
            raise ValueError("ViewStats.mean and .sd must be 1D arrays of the same length")


@dataclass(frozen=True)
class CtfTable:
    """Per-view CTF results (n,) in view order: ``defocus_u_A``, ``defocus_v_A`` (Å, underfocus positive),
    ``failed`` (bool), ``fit_resolution_A`` (Å; NaN if unknown)."""

    defocus_u_A: np.ndarray
    defocus_v_A: np.ndarray
    failed: np.ndarray
    fit_resolution_A: np.ndarray

    @property
    def n_views(self) -> int:
        return int(self.defocus_u_A.size)

    @property
    def defocus_mean_A(self) -> np.ndarray:
        return 0.5 * (self.defocus_u_A + self.defocus_v_A)

    @property
    def astigmatism_A(self) -> np.ndarray:
        return np.abs(self.defocus_u_A - self.defocus_v_A)

    @classmethod
    def from_arrays(cls, defocus_u_A: Any, defocus_v_A: Any, failed: Any = None,
                    fit_resolution_A: Any = None) -> CtfTable:
        u = np.asarray(defocus_u_A, dtype=np.float64).reshape(-1)
        v = np.asarray(defocus_v_A, dtype=np.float64).reshape(-1)
        n = u.size
        if v.size != n:
            raise ValueError(f"defocus_v_A has {v.size} entries, defocus_u_A has {n}")
        f = np.zeros(n, bool) if failed is None else np.asarray(failed).astype(bool).reshape(-1)
        r = np.full(n, np.nan) if fit_resolution_A is None else np.asarray(fit_resolution_A,
                                                                             dtype=np.float64).reshape(-1)
        if f.size != n or r.size != n:
            raise ValueError("failed and fit_resolution_A must have one entry per view")
        return cls(u, v, f, r)

    @classmethod
    def from_mapping(cls, table: Any) -> CtfTable:
        """From a dict of arrays or a pandas DataFrame with either tomoguide names (``defocus_u_A``,
        ``defocus_v_A``, ``failed``, ``fit_resolution_A``) or RELION/STAR names (``rlnDefocusU``,
        ``rlnDefocusV``, ``tomoguideCtfFailed``, ``rlnCtfMaxResolution``), rows in view order."""
        cols = {str(k): k for k in (table.columns if hasattr(table, "columns") else table.keys())}

        def pick(*names: str) -> Any:
            for name in names:
                if name in cols:
                    return np.asarray(table[cols[name]])
            return None

        u = pick("defocus_u_A", "rlnDefocusU")
        v = pick("defocus_v_A", "rlnDefocusV")
        if u is None or v is None:
            raise ValueError("CTF table needs defocus_u_A/defocus_v_A or rlnDefocusU/rlnDefocusV columns")
        return cls.from_arrays(u, v, pick("failed", "tomoguideCtfFailed", "ctf_failed"),
                               pick("fit_resolution_A", "rlnCtfMaxResolution"))

    @classmethod
    def from_fits(cls, fits: Iterable[Any]) -> CtfTable:
        """From :class:`tomoguide.compute.ctffit.CtfFit` records (one per view, in view order)."""
        fits = list(fits)
        return cls.from_arrays([f.defocus_u_A for f in fits], [f.defocus_v_A for f in fits],
                               [f.failed for f in fits], [f.fit_resolution_A for f in fits])


def _as_ctf_table(table: Any) -> CtfTable:
    if isinstance(table, CtfTable):
        return table
    if isinstance(table, Mapping) or hasattr(table, "columns"):
        return CtfTable.from_mapping(table)
    if isinstance(table, Sequence) and table and hasattr(table[0], "defocus_u_A"):
        return CtfTable.from_fits(table)
    raise TypeError(f"cannot read a CTF table from {type(table).__name__}")


# --------------------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------------------


def view_statistics(stack: Any, *, border_fraction: float = 0.1, max_pixels: int = 1 << 18) -> ViewStats:
    """Mean and SD of each view of ``stack`` (n, ny, nx), over the centre (``border_fraction`` of each side
    left out, against edge artefacts), subsampled to at most about ``max_pixels`` pixels per view.
    Use the unnormalised images (e.g. motion-corrected sums): a per-view normalised stack hides dark views."""
    arr = to_numpy(stack)
    if arr.ndim != 3:
        raise ValueError(f"stack must be (n, ny, nx), got shape {arr.shape}")
    _, ny, nx = arr.shape
    by, bx = int(ny * border_fraction), int(nx * border_fraction)
    core = arr[:, by:ny - by or None, bx:nx - bx or None]
    step = max(1, int(math.ceil(math.sqrt(core.shape[1] * core.shape[2] / max_pixels))))
    core = core[:, ::step, ::step].astype(np.float64)
    return ViewStats(core.mean(axis=(1, 2)), core.std(axis=(1, 2)))


def robust_sigma(x: Any) -> float:
    """``1.4826 · median(|x − median(x)|)`` of the finite values (NaN when none)."""
    a = np.asarray(x, dtype=np.float64)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return float("nan")
    return float(_MAD_TO_SIGMA * np.median(np.abs(a - np.median(a))))


def robust_line_fit(x: Any, y: Any, *, degree: int = 1, n_iter: int = 5, clip: float = 3.0,
                    weights_mask: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """Polynomial fit of ``y`` against ``x`` with iterative rejection of points beyond ``clip`` robust SDs.

    Returns ``(trend, inliers)``: the fitted values at every ``x`` (n,) and the mask of the points used in
    the last fit. ``weights_mask`` (n,) bool: points allowed in the fit at all. The degree is lowered when
    too few points remain (a constant, the median, with fewer than ``degree + 2``)."""
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    allowed = np.isfinite(xa) & np.isfinite(ya)
    if weights_mask is not None:
        allowed &= np.asarray(weights_mask, dtype=bool)
    use = allowed.copy()
    trend = np.full(xa.shape, np.nan)
    for _ in range(max(1, n_iter)):
        k = int(use.sum())
        if k == 0:
            return trend, use
        deg = min(degree, k - 2) if k >= 3 else 0
        if deg <= 0:
            trend = np.full(xa.shape, float(np.median(ya[use])))
        else:
            # Least-squares polynomial on centred x (well conditioned).
            xc = xa - float(np.mean(xa[use]))
            coeffs = np.polynomial.polynomial.polyfit(xc[use], ya[use], deg)
            trend = np.polynomial.polynomial.polyval(xc, coeffs)
        res = ya - trend
        sigma = robust_sigma(res[use])
        if not np.isfinite(sigma) or sigma == 0:
            break
        new = allowed & (np.abs(res) <= clip * sigma)
        if np.array_equal(new, use):
            break
        use = new
    return trend, use


def _zscores(resid: np.ndarray, inliers: np.ndarray, floor: float) -> tuple[np.ndarray, float]:
    sigma = robust_sigma(resid[inliers])
    sigma = max(sigma if np.isfinite(sigma) else 0.0, floor)
    return resid / sigma, sigma


def _running_median(values: np.ndarray, valid: np.ndarray, window: int) -> np.ndarray:
    """Median of the valid neighbours of every entry (itself excluded), ``window // 2`` on each side,
    extended to the same count near the ends."""
    n = values.size
    half = max(1, window // 2)
    idx = np.flatnonzero(valid)
    out = np.full(n, np.nan)
    for i in range(n):
        others = idx[idx != i]
        if others.size == 0:
            continue
        order = np.argsort(np.abs(others - i), kind="stable")[: 2 * half]
        out[i] = float(np.median(values[others[order]]))
    return out


def _robust_line_at(x: np.ndarray, y: np.ndarray, x0: float) -> np.ndarray:
    """Theil–Sen line through points ``(x, y)`` ((k,), (k, d)) evaluated at ``x0``: slope the median of the
    pairwise slopes, intercept the median of ``y − slope · x``; (d,). Robust to a jump among the points."""
    i, j = np.triu_indices(x.size, k=1)
    dx = x[j] - x[i]
    use = dx != 0
    if not use.any():
        return np.median(y, axis=0)
    slope = np.median((y[j][use] - y[i][use]) / dx[use, None], axis=0)
    return np.median(y - slope * x[:, None], axis=0) + slope * x0


def tracking_jumps(shifts_px: Any, active: Any = None, *, z_threshold: float = 4.5, min_jump_px: float = 100.0,
                   window: int = 6, order: Any = None) -> list[tuple[int, float, float]]:
    """Views whose shift jumps away from their neighbours': ``(view, distance_px, z)`` for each.

    ``shifts_px`` (n, 2) per-view specimen shifts in view order, any px unit; ``active`` (n,) bool views to
    consider (default all finite rows); ``order`` (n,) the rank of each view in the sequence that defines its
    neighbours — the acquisition order when known (the specimen drifts with time: in a dose-symmetric series the
    views next in tilt were taken far apart), default the view order. Each active view's deviation is its shift
    minus the component-wise median of its ``window`` nearest active views in that sequence, or minus the prediction
    of a robust straight line (Theil–Sen, per component) through them, whichever is smaller (a steady drift with
    time is no jump, also for the first and last views, whose neighbours all lie on one side); ``σ`` is the robust
    SD of the deviations (1.4826 · MAD per component, their RMS); a view is a jump when ``|deviation| >
    max(z_threshold · σ, min_jump_px)``. Needs at least ``window + 2`` active views (else none)."""
    s = np.asarray(shifts_px, dtype=np.float64).reshape(-1, 2)
    n = s.shape[0]
    ok = np.isfinite(s).all(axis=1)
    if active is not None:
        ok &= np.asarray(active, dtype=bool).reshape(-1)
    rank = np.arange(n) if order is None else np.asarray(order, dtype=np.float64).reshape(-1)
    if rank.size != n:
        raise ValueError(f"order has {rank.size} entries, shifts_px has {n}")
    idx = np.flatnonzero(ok)
    if idx.size < window + 2:
        return []
    dev = np.full((n, 2), np.nan)
    for i in idx:
        others = idx[idx != i]
        near = others[np.argsort(np.abs(rank[others] - rank[i]), kind="stable")[:window]]
        flat = s[i] - np.median(s[near], axis=0)
        line = s[i] - _robust_line_at(rank[near], s[near], float(rank[i]))
        dev[i] = flat if np.hypot(*flat) <= np.hypot(*line) else line  # a jump is explained by neither
    d = dev[idx]
    sig = _MAD_TO_SIGMA * np.median(np.abs(d - np.median(d, axis=0)), axis=0)
    sigma = max(float(np.sqrt(np.mean(sig ** 2))), 1e-9)
    dist = np.linalg.norm(d, axis=1)
    cut = max(z_threshold * sigma, float(min_jump_px))
    return [(int(i), float(r), float(r / sigma)) for i, r in zip(idx, dist) if r > cut]


# --------------------------------------------------------------------------------------------------------
# Suggestions
# --------------------------------------------------------------------------------------------------------


def suggest_exclusions(
    stack_or_stats: Any = None,
    *,
    tilt_deg: Sequence[float] | np.ndarray,
    ctf_table: Any = None,
    residuals: Sequence[float] | np.ndarray | None = None,
    excluded: Sequence[bool] | np.ndarray | None = None,
    z_threshold: float = 4.0,
    min_log_sigma: float = 0.02,
    residual_window: int = 4,
    residual_ratio: float = 1.5,
    max_residual: float | None = None,
    min_residual_excess: float = 0.0,
    shifts_px: Sequence[Sequence[float]] | np.ndarray | None = None,
    pixel_size_A: float | None = None,
    acquisition_order: Sequence[int] | np.ndarray | None = None,
    jump_z_threshold: float = 4.5,
    min_jump_px: float = 100.0,
    jump_window: int = 6,
    defocus_z_threshold: float = 4.0,
    min_defocus_deviation_A: float = 1500.0,
    defocus_trend_degree: int = 2,
    max_astigmatism_A: float = 2000.0,
    max_fit_resolution_A: float | None = None,
    motion_failed: Sequence[bool] | np.ndarray | None = None,
) -> list[Suggestion]:
    """Views and CTF fits worth excluding, sorted by view then reason (module docstring for each test).

    ``stack_or_stats``: the tilt series (n, ny, nx) (statistics from :func:`view_statistics`), a
    :class:`ViewStats`, or ``None`` to skip the image checks. ``tilt_deg`` (n,): true tilts in degrees,
    in view order. ``ctf_table``: :class:`CtfTable`, a dict / DataFrame (see :meth:`CtfTable.from_mapping`)
    or a list of ``CtfFit``; ``None`` skips the CTF checks. ``residuals`` (n,): mean alignment residual per
    view (any unit; NaN for unknown). ``shifts_px`` (n, 2): the alignment's specimen shifts (x, y) in px of the
    unbinned images (``pixel_size_A`` Å each, for the messages; NaN rows for unknown) for the ``tracking_jump``
    test, with ``acquisition_order`` (n,) (rank of each view in time) defining the neighbours when given. ``excluded`` (n,) bool: views already excluded (ignored).
    ``motion_failed`` (n,) bool: views whose frames the frame alignment could not align (too dark or featureless;
    their sums are unaligned), suggested as ``motion_failed``.
    ``min_log_sigma``: floor of the robust SD of log(mean) and log(SD) (a 2 % spread), so that a series of
    nearly identical views does not flag tiny differences. Thresholds as named (Å for defocus).
    """
    tilt = np.asarray(tilt_deg, dtype=np.float64).reshape(-1)
    n = tilt.size
    excl = np.zeros(n, bool) if excluded is None else np.asarray(excluded, dtype=bool).reshape(-1)
    if excl.size != n:
        raise ValueError(f"excluded has {excl.size} entries, tilt_deg has {n}")
    active = ~excl
    out: list[Suggestion] = []

    def add(i: int, reason: str, message: str, value: float) -> None:
        out.append(Suggestion(int(i), reason, message, _TARGET[reason], float(value), float(tilt[i])))

    # ---- image statistics ---------------------------------------------------------------------------
    if stack_or_stats is not None:
        stats = stack_or_stats if isinstance(stack_or_stats, ViewStats) else view_statistics(stack_or_stats)
        mean = np.asarray(stats.mean, dtype=np.float64)
        sd = np.asarray(stats.sd, dtype=np.float64)
        if mean.size != n:
            raise ValueError(f"image statistics have {mean.size} views, tilt_deg has {n}")
        secant = 1.0 / np.cos(np.radians(tilt))
        # Dark views need absolute intensities: a normalised stack (means around zero) skips that check.
        checks = [("SD", sd, "blank_view")]
        if np.all(mean[active] > 0):
            checks.insert(0, ("mean", mean, "dark_view"))
        for name, values, reason in checks:
            ok = active & (values > 0)
            y = np.log(np.where(values > 0, values, np.nan))
            trend, inl = robust_line_fit(secant, y, degree=1, weights_mask=ok)
            z, _ = _zscores(y - trend, inl, min_log_sigma)
            dark = {x.view for x in out if x.reason == "dark_view"}
            for i in np.flatnonzero(ok & (z < -z_threshold)):
                if reason == "blank_view" and int(i) in dark:
                    continue  # a dark view is dim everywhere: one suggestion is enough
                add(i, reason, f"image {name} far below the trend of the other "
                    f"tilts (robust z = {z[i]:.1f})", z[i])
        for i in np.flatnonzero(active & (sd <= 0)):
            add(i, "blank_view", "image SD is zero (blank view)", 0.0)

    # ---- frame alignment -----------------------------------------------------------------------------
    if motion_failed is not None:
        mf = np.asarray(motion_failed, dtype=bool).reshape(-1)
        if mf.size != n:
            raise ValueError(f"motion_failed has {mf.size} entries, tilt_deg has {n}")
        for i in np.flatnonzero(active & mf):
            add(i, "motion_failed", "its frames could not be aligned (too dark or featureless): the sum is "
                "unaligned", 1.0)

    # ---- alignment residuals ------------------------------------------------------------------------
    if residuals is not None:
        res = np.asarray(residuals, dtype=np.float64).reshape(-1)
        if res.size != n:
            raise ValueError(f"residuals have {res.size} entries, tilt_deg has {n}")
        ok = active & np.isfinite(res)
        ref = _running_median(res, ok, residual_window)
        dev = res - ref
        sigma = robust_sigma(dev[ok])
        floor = 0.05 * float(np.nanmedian(np.abs(res[ok]))) if ok.any() else 0.0
        sigma = max(sigma if np.isfinite(sigma) else 0.0, floor, 1e-12)
        for i in np.flatnonzero(ok):
            jump = (dev[i] > z_threshold * sigma and res[i] > residual_ratio * ref[i]
                    and res[i] - ref[i] > min_residual_excess)
            too_big = max_residual is not None and res[i] > max_residual
            if jump or too_big:
                why = (f"jumps above its neighbours' median {ref[i]:.3g} ({dev[i] / sigma:.1f} robust SDs)"
                       if jump else f"exceeds the limit {max_residual:.3g}")
                add(i, "residual_jump", f"alignment residual {res[i]:.3g} {why}",
                    res[i])

    # ---- tracking jumps -------------------------------------------------------------------------------
    if shifts_px is not None:
        for i, dist, z in tracking_jumps(shifts_px, active, z_threshold=jump_z_threshold, min_jump_px=min_jump_px,
                                         window=jump_window, order=acquisition_order):
            size = f"{dist:.0f} px" + (f" ({dist * pixel_size_A / 10.0:.0f} nm)" if pixel_size_A else "")
            add(i, "tracking_jump", f"the specimen jumped by {size} from where its "
                f"neighbours' shifts put it ({z:.1f} robust SDs of the view-to-view shifts)", dist)

    # ---- CTF ------------------------------------------------------------------------------------------
    if ctf_table is not None:
        table = _as_ctf_table(ctf_table)
        if table.n_views != n:
            raise ValueError(f"CTF table has {table.n_views} rows, tilt_deg has {n}")
        dmean = table.defocus_mean_A
        failed = table.failed | ~np.isfinite(dmean)
        for i in np.flatnonzero(active & failed):
            add(i, "ctf_failed", "CTF fit failed", dmean[i])
        ok = active & ~failed
        trend, inl = robust_line_fit(tilt, dmean, degree=defocus_trend_degree, weights_mask=ok)
        dev = dmean - trend
        z, sigma = _zscores(dev, inl, 1e-6)
        for i in np.flatnonzero(ok & (np.abs(z) > defocus_z_threshold) & (np.abs(dev) > min_defocus_deviation_A)):
            add(i, "defocus_outlier", f"defocus {dmean[i]:.0f} Å is {dev[i]:+.0f} Å "
                f"from the trend {trend[i]:.0f} Å ({abs(z[i]):.1f} robust SDs)", dmean[i])
        astig = table.astigmatism_A
        for i in np.flatnonzero(ok & (astig > max_astigmatism_A)):
            add(i, "high_astigmatism", f"astigmatism {astig[i]:.0f} Å above "
                f"{max_astigmatism_A:.0f} Å", astig[i])
        if max_fit_resolution_A is not None:
            fr = table.fit_resolution_A
            for i in np.flatnonzero(ok & np.isfinite(fr) & (fr > max_fit_resolution_A)):
                add(i, "poor_fit_resolution", f"CTF fitted only to {fr[i]:.1f} Å "
                    f"(limit {max_fit_resolution_A:.1f} Å)", fr[i])

    out.sort(key=lambda s: (s.view, REASONS.index(s.reason)))
    return out


def suggested_views(suggestions: Iterable[Suggestion], *, target: str | None = None) -> np.ndarray:
    """Sorted unique 0-based view indices of ``suggestions`` (only those of ``target`` "view"/"ctf" if
    given)."""
    views = {s.view for s in suggestions if target is None or s.target == target}
    return np.array(sorted(views), dtype=np.int64)
