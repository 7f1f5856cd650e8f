"""Automatic exclusion suggestions: synthetic stacks, residuals and CTF tables with known bad views, and the real
EMPIAR-10164 TS_01 CTFFIND table (one fit near 0.8 µm and several failed high-tilt fits) and IMOD residuals."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from tomoguide.compute import exclusion as ex
from tomoguide.compute.ctffit import CtfFit

TILTS = np.arange(-60.0, 61.0, 3.0)  # 41 views in angle order
REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "data"
SHARED = SHARED if SHARED.is_dir() else REPO / "tests" / "data"  # a fresh clone: the bundled subset
CTF_STAR = SHARED / "ctf" / "alisterburt__tomo_preprocessing" / "test_data" / "ctffind" / \
    "relion_ctf_estimation_output.star"
TA_LOG = SHARED / "imod" / "alisterburt__tomo_preprocessing" / "test_data" / "imod" / "taSolution.log"


def _pairs(suggestions: list[ex.Suggestion]) -> set[tuple[int, str]]:
    return {(s.view, s.reason) for s in suggestions}


# ---- helpers ---------------------------------------------------------------------------------------------


def test_robust_sigma_and_line_fit_ignore_outliers() -> None:
    rng = np.random.default_rng(0)
    x = np.linspace(-1, 1, 60)
    y = 3.0 + 2.0 * x + rng.normal(0, 0.1, x.size)
    y[[5, 17, 40]] += [5.0, -4.0, 8.0]
    trend, inliers = ex.robust_line_fit(x, y, degree=1)
    assert np.allclose(trend, 3.0 + 2.0 * x, atol=0.08)
    assert not inliers[[5, 17, 40]].any() and inliers.sum() >= 54
    g = rng.normal(0, 2.0, 20000)
    assert ex.robust_sigma(g) == pytest.approx(2.0, rel=0.03)
    assert math.isnan(ex.robust_sigma([np.nan]))


# ---- image statistics -------------------------------------------------------------------------------------


def _stack(dark: int, blank: int, seed: int = 0) -> np.ndarray:
    """41 views whose mean follows exp(−0.4 / cos β) (Beer-Lambert) with specimen contrast and shot noise;
    view ``dark`` is 4× darker, view ``blank`` has the normal mean but no specimen and little noise."""
    rng = np.random.default_rng(seed)
    specimen = rng.normal(size=(64, 72))
    views = []
    for i, t in enumerate(TILTS):
        mean = 100.0 * math.exp(-0.4 / math.cos(math.radians(t))) * rng.uniform(0.98, 1.02)
        img = mean * (1.0 + 0.2 * np.roll(specimen, i, axis=1)) + rng.normal(0, math.sqrt(mean), specimen.shape)
        if i == dark:
            img = img / 4.0
        if i == blank:
            img = mean + rng.normal(0, 0.3, specimen.shape)
        views.append(img)
    return np.array(views, dtype=np.float32)


def test_view_statistics_of_the_centre() -> None:
    stack = np.zeros((2, 50, 60), np.float32)
    stack[0] = 7.0
    stack[1, 5:45, 6:54] = np.arange(40 * 48).reshape(40, 48) % 2 * 2.0  # alternate 0 / 2 in the centre
    stack[1, :5] = 1e6  # border rows are left out
    st = ex.view_statistics(stack, border_fraction=0.1)
    assert np.allclose(st.mean, [7.0, 1.0]) and np.allclose(st.sd, [0.0, 1.0])


def test_dark_and_blank_views_are_suggested() -> None:
    stack = _stack(dark=7, blank=30)
    sug = ex.suggest_exclusions(stack, tilt_deg=TILTS)
    assert _pairs(sug) == {(7, "dark_view"), (30, "blank_view")}
    assert all(s.target == "view" for s in sug)
    s7 = next(s for s in sug if s.view == 7)
    assert s7.tilt_deg == TILTS[7] and s7.value < -4 and "far below the trend" in s7.message
    # The same from precomputed statistics; an already excluded view gets no suggestion.
    st = ex.view_statistics(stack)
    excluded = np.zeros(TILTS.size, bool)
    excluded[7] = True
    assert _pairs(ex.suggest_exclusions(st, tilt_deg=TILTS, excluded=excluded)) == {(30, "blank_view")}
    # A clean series: nothing (the natural darkening at high tilt is the trend, not an outlier).
    assert ex.suggest_exclusions(_stack(dark=-1, blank=-1, seed=3), tilt_deg=TILTS) == []


def test_a_zero_view_is_blank() -> None:
    stack = _stack(dark=-1, blank=-1, seed=4)
    stack[12] = 0.0
    pairs = _pairs(ex.suggest_exclusions(stack, tilt_deg=TILTS))
    assert (12, "blank_view") in pairs and all(v == 12 for v, _ in pairs)


# ---- residuals --------------------------------------------------------------------------------------------


def test_residual_jump_is_suggested() -> None:
    rng = np.random.default_rng(2)
    res = 0.3 + 0.004 * np.abs(TILTS) + rng.normal(0, 0.02, TILTS.size)
    res[12] *= 3.0
    sug = ex.suggest_exclusions(None, tilt_deg=TILTS, residuals=res)
    assert _pairs(sug) == {(12, "residual_jump")}
    assert sug[0].value == pytest.approx(res[12])
    # An absolute limit adds every view above it.
    limited = ex.suggest_exclusions(None, tilt_deg=TILTS, residuals=res, max_residual=0.5)
    assert {v for v, _ in _pairs(limited)} == set(np.flatnonzero(res > 0.5))


@pytest.mark.skipif(not TA_LOG.is_file(), reason=f"{TA_LOG} not present (../shared/data)")
def test_real_imod_residuals_with_one_injected_jump() -> None:
    rows = [ln.split() for ln in TA_LOG.read_text().splitlines() if re.match(r"\s+\d+\s+-?\d+\.\d+\s+-?\d", ln)]
    tilt = np.array([float(r[2]) for r in rows])
    resid = np.array([float(r[-1]) for r in rows])  # nm
    assert tilt.size == 40 and np.all(np.diff(tilt) > 0)
    bumped = resid.copy()
    bumped[20] = 4.0 * resid[20]
    pairs = _pairs(ex.suggest_exclusions(None, tilt_deg=tilt, residuals=bumped))
    assert pairs == {(20, "residual_jump")}


# ---- CTF ----------------------------------------------------------------------------------------------------


def _ctf_table() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(5)
    mean = 30000.0 + 20.0 * TILTS + rng.normal(0, 150.0, TILTS.size)  # focus drifts across the series
    astig = rng.uniform(100.0, 600.0, TILTS.size)
    mean[5] -= 8000.0
    mean[20] += 6000.0
    astig[25] = 3000.0
    failed = np.zeros(TILTS.size, bool)
    failed[33] = True
    u = mean + astig / 2
    v = mean - astig / 2
    u[35] = np.nan
    return {"rlnDefocusU": u, "rlnDefocusV": v, "tomoguideCtfFailed": failed.astype(int),
            "rlnCtfMaxResolution": np.where(np.arange(TILTS.size) == 38, 30.0, 8.0)}


def test_ctf_outliers_astigmatism_and_failures_are_suggested() -> None:
    table = _ctf_table()
    sug = ex.suggest_exclusions(None, tilt_deg=TILTS, ctf_table=table)
    assert _pairs(sug) == {(5, "defocus_outlier"), (20, "defocus_outlier"), (25, "high_astigmatism"),
                           (33, "ctf_failed"), (35, "ctf_failed")}
    assert all(s.target == "ctf" for s in sug)
    assert [s.view for s in sug] == sorted(s.view for s in sug)
    # Fit resolution check only when asked for.
    with_res = ex.suggest_exclusions(None, tilt_deg=TILTS, ctf_table=table, max_fit_resolution_A=20.0)
    assert _pairs(with_res) - _pairs(sug) == {(38, "poor_fit_resolution")}
    assert ex.suggested_views(with_res).tolist() == [5, 20, 25, 33, 35, 38]


def test_ctf_table_from_names_and_fits() -> None:
    t = ex.CtfTable.from_mapping({"defocus_u_A": [2e4, 3e4], "defocus_v_A": [1.9e4, 2.9e4], "failed": [0, 1]})
    assert t.n_views == 2 and t.failed.tolist() == [False, True]
    assert np.allclose(t.defocus_mean_A, [19500.0, 29500.0]) and np.allclose(t.astigmatism_A, 1000.0)
    fits = [CtfFit(20000.0 + 10 * i, 19800.0 + 10 * i, 0.0, failed=(i == 3)) for i in range(9)]
    sug = ex.suggest_exclusions(None, tilt_deg=np.arange(9.0) * 3 - 12, ctf_table=fits)
    assert _pairs(sug) == {(3, "ctf_failed")}
    with pytest.raises(ValueError):
        ex.CtfTable.from_mapping({"rlnDefocusU": [1.0]})
    with pytest.raises(ValueError):
        ex.suggest_exclusions(None, tilt_deg=TILTS, ctf_table={"rlnDefocusU": [1.0], "rlnDefocusV": [1.0]})


@pytest.mark.skipif(not CTF_STAR.is_file(), reason=f"{CTF_STAR} not present (../shared/data)")
def test_real_ctffind_table_of_empiar_10164() -> None:
    import starfile

    df = starfile.read(CTF_STAR)["micrographs"]
    tilt = np.array([float(re.search(r"TS_01_\d+_(-?\d+)_0", n).group(1)) for n in df["rlnMicrographName"]])
    order = np.argsort(tilt, kind="stable")
    df = df.iloc[order].reset_index(drop=True)
    tilt = tilt[order]
    sug = ex.suggest_exclusions(None, tilt_deg=tilt, ctf_table=df)
    flagged = {s.view for s in sug if s.reason == "defocus_outlier"}
    mean = 0.5 * (df["rlnDefocusU"].to_numpy() + df["rlnDefocusV"].to_numpy())
    low = np.abs(tilt) <= 30
    ref = float(np.median(mean[low]))
    # Facts of the data: the low tilts agree (within 2000 Å of their median, about 3.9 µm) ...
    assert np.all(np.abs(mean[low] - ref) < 2000.0) and 38000 < ref < 40000
    # ... the −60° fit is the one near 0.8 µm, and a few high-tilt fits are off by more than 1 µm.
    i60 = int(np.flatnonzero(tilt == -60)[0])
    assert mean[i60] < 9000
    far = set(np.flatnonzero(np.abs(mean - ref) > 10000.0).tolist())
    assert i60 in far and len(far) >= 4
    assert far <= flagged  # every grossly wrong fit is suggested
    assert not any(low[v] for v in flagged)  # and no consistent low-tilt fit
    assert all(s.target == "ctf" for s in sug)


def test_normalised_stack_skips_the_dark_check_but_finds_a_flat_view() -> None:
    stack = _stack(dark=7, blank=-1, seed=6).astype(np.float64)
    stack[20] = stack[20].mean() + 0.01 * (stack[20] - stack[20].mean())  # contrast almost gone
    norm = (stack - stack.mean(axis=(1, 2), keepdims=True)) / stack[19].std()  # means 0: no intensities
    pairs = _pairs(ex.suggest_exclusions(norm, tilt_deg=TILTS))
    # Without intensities the 4× darker view 7 still shows its 4× smaller SD: reported as blank.
    assert pairs == {(7, "blank_view"), (20, "blank_view")}


def _dose_symmetric_shifts(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(41, 2) shifts like the simulator's at 2 Å/px (30 px SD per view plus a walk of 7.5 px per view in time) of
    a dose-symmetric ±60° series, and its acquisition order."""
    rng = np.random.default_rng(seed)
    acq = np.empty(41, dtype=int)  # 0, +3, -3, -6, +6, +9, -9, ...
    seq = [0.0] + [t for k in range(1, 21) for t in ((3.0 * k, -3.0 * k) if k % 2 else (-3.0 * k, 3.0 * k))]
    acq[[int(np.argmin(np.abs(TILTS - t))) for t in seq]] = np.arange(41)
    return rng.normal(0, 30.0, (41, 2)) + np.cumsum(rng.normal(0, 7.5, (41, 2)), axis=0)[acq], acq


def test_tracking_jump_is_suggested() -> None:
    """Ten dose-symmetric series with the simulator's ordinary view-to-view shifts: none gets a tracking-jump
    suggestion; with one view put 250 px away by the stage, that view and only it is suggested in every one, with
    its distance in px and nm. (A 140 px jump, the scenarios' 280 Å at 2 Å/px, stands only 2.5-6 robust SDs out
    among such shifts: it is suggested when above 4.5, in 2 of these 10.)"""
    caught = 0
    for seed in range(14, 24):
        shifts, acq = _dose_symmetric_shifts(seed)
        none = ex.suggest_exclusions(None, tilt_deg=TILTS, shifts_px=shifts, acquisition_order=acq)
        assert not [s for s in none if s.reason == "tracking_jump"], seed
        jumped = shifts.copy()
        jumped[27] += [214.0, -128.0]  # 250 px
        found = [s for s in ex.suggest_exclusions(None, tilt_deg=TILTS, shifts_px=jumped, pixel_size_A=2.0,
                                                  acquisition_order=acq) if s.reason == "tracking_jump"]
        assert [s.view for s in found] == [27], seed
        assert found[0].target == "view" and 170.0 < found[0].value < 330.0
        assert "jumped by" in found[0].message and "nm)" in found[0].message
        small = shifts.copy()
        small[27] += [120.0, -72.0]
        caught += bool(ex.tracking_jumps(small, order=acq))
    assert caught == 2
    shifts, acq = _dose_symmetric_shifts(14)
    jumped = shifts.copy()
    jumped[27] += [214.0, -128.0]
    # an already excluded view is not suggested again; below the floor (in px) nothing is suggested
    assert not [s for s in ex.suggest_exclusions(None, tilt_deg=TILTS, shifts_px=jumped, acquisition_order=acq,
                                                 excluded=np.arange(41) == 27) if s.reason == "tracking_jump"]
    assert not ex.tracking_jumps(jumped, order=acq, min_jump_px=400.0)
    (view, dist, z), = ex.tracking_jumps(jumped, order=acq)
    assert view == 27 and z > 4.5 and 170.0 < dist < 330.0


def test_a_steady_drift_is_no_tracking_jump_at_the_ends_of_the_sequence() -> None:
    """A dose-symmetric series whose specimen drifts 40 px per view in acquisition order (and one that settles
    quadratically): the first and last views, whose neighbours in time all lie on one side, are not suggested
    (a median of the neighbours called them jumps at z 4.9-6.7); a 250 px jump of the first view across the
    drift still is."""
    shifts, acq = _dose_symmetric_shifts(14)
    rank = np.asarray(acq, dtype=np.float64)
    settling = np.stack([0.4 * (rank - 40.0) ** 2, 0.2 * (rank - 40.0) ** 2], axis=1)
    assert ex.tracking_jumps(shifts + settling, order=acq) == []
    drift = np.stack([40.0 * rank, -25.0 * rank], axis=1)
    assert ex.tracking_jumps(shifts + drift, order=acq) == []
    first = int(np.argmin(rank))
    jumped = shifts + drift
    jumped[first] += [-128.0, -214.0]  # 250 px, across the drift
    assert [v for v, _, _ in ex.tracking_jumps(jumped, order=acq)] == [first]


def test_views_the_frame_alignment_could_not_align_are_suggested() -> None:
    """motion_ctf flags movies it cannot align (dark, blank); the exclusion suggests those views, not others."""
    stack = _stack(dark=-1, blank=-1)  # no dark or blank view
    flags = np.zeros(len(TILTS), bool)
    flags[[3, 12]] = True
    sug = ex.suggest_exclusions(stack, tilt_deg=TILTS, motion_failed=flags)
    assert _pairs(sug) == {(3, "motion_failed"), (12, "motion_failed")}
    assert all(s.target == "view" for s in sug)
    excluded = np.zeros(len(TILTS), bool)
    excluded[3] = True
    assert _pairs(ex.suggest_exclusions(stack, tilt_deg=TILTS, motion_failed=flags, excluded=excluded)) == \
        {(12, "motion_failed")}
    with pytest.raises(ValueError, match="motion_failed"):
        ex.suggest_exclusions(stack, tilt_deg=TILTS, motion_failed=flags[:-1])
