"""Step 8, ``exclude``: mark bad tilt images and bad CTF fits, with automatic suggestions.

Suggestions (:func:`tomoguide.compute.exclusion.suggest_exclusions`): dark or blank views, jumps in the alignment
residuals, tracking jumps (a view whose specimen shift lies far from its neighbours'), defocus outliers against the trend over tilt, high astigmatism, failed CTF fits. The trainee accepts
them and adds or removes views and fits by hand (in the wizard: space key or check box; on the command line:
IMOD-style view lists, 1-based, per series: ``"TS_01: 1-3,7; TS_02: 41"``).

Mode ``mark`` (the tutorial's "mark as excluded"): the views stay in the stack, flagged in the geometry record
(``excluded``), and every later step leaves them out — recoverable by unmarking. Mode ``restack``: a new stack
without them is written (and the geometry record loses those views). An excluded CTF fit keeps its view but
takes the defocus of the trend of the other fits (interpolated over tilt).
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pandas as pd

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy


class ExcludeParams(StepParams):
    mode: Literal["mark", "restack"] = param(
        "mark", title="How to exclude", choices=["mark", "restack"], widget="choice",
        help="'mark': keep the views in the stack, flagged as excluded; later steps leave them out and you can "
             "change your mind (the tutorial's 'mark as excluded'). 'restack': write a new stack without them.")
    apply_suggestions: bool = param(
        True, title="Apply the suggestions",
        help="Exclude what the automatic checks suggest (dark or blank views, residual jumps, tracking jumps, "
             "defocus outliers, high astigmatism, failed fits). Each suggestion is listed with its reason; the views "
             "and fits below are excluded in addition, and those in 'keep' are kept whatever the checks say.")
    views: str = param(
        "", title="Views to exclude", widget="text",
        help="Views to exclude, per tilt series, as IMOD view lists (1-based, in angle order): "
             "'TS_01: 1-3,7; TS_02: 41'. In the wizard, tick them in the viewer instead.")
    ctf_fits: str = param(
        "", title="CTF fits to exclude", widget="text",
        help="CTF fits to exclude (same format). The view stays; its defocus is taken from the trend of the other "
             "tilts.")
    keep: str = param(
        "", title="Keep despite suggestions", widget="text",
        help="Views whose suggestions you overrule (same format): they are kept, with their CTF fit.")
    min_residual_jump_px: float = param(
        0.5, title="Residual jump floor", unit="px", hard=(0.0, 100.0), suggest=(0.2, 2.0), advanced=True,
        help="A view's alignment residual must exceed its neighbours' by at least this much (and stand out "
             "statistically) to be suggested: sub-pixel differences are no reason to lose a view.")
    min_tracking_jump_px: float = param(
        100.0, title="Tracking jump floor", unit="px", hard=(0.0, 1e5), suggest=(20.0, 1000.0), advanced=True,
        help="A view whose specimen shift (found by the alignment) lies this far (in pixels of the full-size images) "
             "or more from where its neighbours' shifts put it, and stands out statistically from the ordinary "
             "view-to-view shifts, is suggested: the stage lost the area for that view.")
    max_astigmatism_A: float = param(
        2000.0, title="Astigmatism limit", unit="Å", hard=(0.0, 1e5), suggest=(500.0, 5000.0), advanced=True,
        help="CTF fits with more astigmatism (U − V) than this are suggested for exclusion.")


def parse_series_lists(text: str, names: list[str], field: str) -> dict[str, list[int]]:
    """``"TS_01: 1-3,7; TS_02: 41"`` -> ``{"TS_01": [0, 1, 2, 6], "TS_02": [40]}`` (0-based).

    A list without a series name applies to every series. Errors name the field and the bad part.
    """
    from tomoguide.compute.io.imod import parse_view_list

    out: dict[str, list[int]] = {n: [] for n in names}
    for part in filter(None, (p.strip() for p in re.split(r"[;\n]", text or ""))):
        if ":" in part:
            name, views = (x.strip() for x in part.split(":", 1))
            if name not in out:
                raise ValueError(f"{field}: unknown tilt series {name!r} (known: {', '.join(names)})")
            targets = [name]
        else:
            views, targets = part, names
        try:
            idx = [v - 1 for v in parse_view_list(views)]
        except ValueError as exc:
            raise ValueError(f"{field}: {exc}") from None
        if any(i < 0 for i in idx):
            raise ValueError(f"{field}: views are numbered from 1")
        for t in targets:
            out[t] = sorted(set(out[t]) | set(idx))
    return out


def drop_views(geometry: Any, keep: np.ndarray) -> Any:
    """The geometry record without the views where ``keep`` is False (acquisition order re-ranked)."""
    d = geometry.model_dump()
    for key in ("tilt_angles_deg", "prior_dose_e_A2", "dose_e_A2", "nominal_defocus_um", "xf", "excluded"):
        if d.get(key) is not None:
            d[key] = [v for v, k in zip(d[key], keep) if k]
    if d.get("acquisition_order") is not None:
        order = np.asarray([v for v, k in zip(d["acquisition_order"], keep) if k])
        d["acquisition_order"] = np.argsort(np.argsort(order)).tolist()
    return type(geometry).model_validate(d)


MIN_VIEWS_LEFT = 3  # fewer views cannot make a tomogram worth the name


def series_suggestions(entry: SeriesEntry, stack: Any, ctf_table: pd.DataFrame | None,
                       params: ExcludeParams) -> list[Any]:
    """The automatic checks of one series (:func:`tomoguide.compute.exclusion.suggest_exclusions`) with the step's
    thresholds: what the step applies and what its page shows before a run. ``stack`` (n, ny, nx), may be
    memory-mapped (only a subsampled centre of each view is read); ``ctf_table`` the series' CTF fits or None."""
    from tomoguide.compute.exclusion import suggest_exclusions, view_statistics

    g = entry.geometry
    shifts = g.specimen_shifts_px() * g.binning if g.xf is not None else None  # px of the unbinned images
    return suggest_exclusions(view_statistics(stack), tilt_deg=g.true_tilt_deg(), ctf_table=ctf_table,
                              residuals=entry.info.get("residual_per_view_px"), excluded=g.excluded,
                              max_astigmatism_A=params.max_astigmatism_A,
                              min_residual_excess=params.min_residual_jump_px, shifts_px=shifts,
                              pixel_size_A=g.pixel_size_A, min_jump_px=params.min_tracking_jump_px,
                              acquisition_order=g.acquisition_order, motion_failed=entry.flags.get("motion_failed"))


def fill_excluded_fits(table: pd.DataFrame, excluded: np.ndarray) -> pd.DataFrame:
    """Replace the defocus of excluded fits by a linear interpolation over tilt of the others (flagged)."""
    out = table.copy()
    out["tomoguideCtfExcluded"] = excluded.astype(int)
    good = ~excluded & (out.get("tomoguideCtfFailed", 0) == 0).to_numpy()
    if good.sum() >= 1 and excluded.any():
        tilt = out["rlnTomoNominalStageTiltAngle"].to_numpy(float)
        order = np.argsort(tilt[good])
        for col in ("rlnDefocusU", "rlnDefocusV"):
            values = out[col].to_numpy(float, copy=True)
            values[excluded] = np.interp(tilt[excluded], tilt[good][order], values[good][order])
            out[col] = values
    return out


class Exclude(Step):
    id = "exclude"
    title = "Exclude bad views and CTF fits"
    summary = "Mark dark, blank or jumping views and wrong CTF fits so that later steps leave them out."
    help = (
        "<p><b>What it does.</b> Lists the tilt images and their CTF fits with automatic suggestions: views much "
        "darker or emptier than their neighbours (an obstacle in the beam, the grid bar at high tilt), views whose "
        "alignment residual jumps, views the stage put far from where their neighbours are (a tracking jump), defocus values far from the trend over tilt, very high astigmatism, fits that "
        "failed. You decide: accept the suggestions, exclude more, or keep a view despite a suggestion.</p>"
        "<p><b>Why.</b> One bad view adds streaks to the whole tomogram; a wrong defocus flips the contrast of "
        "the wrong frequencies during CTF correction.</p>"
        "<p><b>A good result.</b> Only a few views excluded, mostly at the highest tilts; the defocus plot of the "
        "remaining fits is smooth.</p>"
        "<p><b>What to check.</b> Do not exclude too many: every view fills part of Fourier space. With 'mark' "
        "the excluded views stay in the stack and can be recovered by unmarking them here.</p>"
    )
    Params = ExcludeParams
    inputs = ("ctf_estimate",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ExcludeParams)
        if "ctf_estimate" not in ctx.upstream:
            return []
        sset, _ = SeriesSet.load(ctx.output("ctf_estimate", "series"))
        names = sset.names()
        issues = []
        for field in ("views", "ctf_fits", "keep"):
            try:
                lists = parse_series_lists(getattr(params, field), names, field)
            except ValueError as exc:
                issues.append(Issue("error", str(exc), field))
                continue
            for s in sset.series:
                too_big = [i + 1 for i in lists[s.name] if i >= s.geometry.n_views]
                if too_big:
                    issues.append(Issue("error", f"{field}: {s.name} has {s.geometry.n_views} views, not "
                                        f"{max(too_big)}", field))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        sset, _ = SeriesSet.load(ctx.output("ctf_estimate", "series"))
        total = sum(s.geometry.n_views * s.geometry.image_shape_px[0] * s.geometry.image_shape_px[1] * 4
                    for s in sset.series)
        return Needs(disk_bytes=total if getattr(params, "mode", "mark") == "restack" else 1_000_000,
                     memory_bytes=total)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.io.mrc import read_mrc, write_mrc
        from tomoguide.compute.io.star import read_ctf_star, write_ctf_star

        assert isinstance(params, ExcludeParams)
        sset, base = SeriesSet.load(ctx.output("ctf_estimate", "series"))
        names = sset.names()
        manual = parse_series_lists(params.views, names, "views")
        manual_ctf = parse_series_lists(params.ctf_fits, names, "ctf_fits")
        keep = parse_series_lists(params.keep, names, "keep")
        entries = []
        metrics: dict[str, Any] = {"series": {}}
        for k, s in enumerate(sset.series):
            ctx.check_cancel()
            g = s.geometry
            stack, info = read_mrc(s.path("stack", base), mmap=True)
            table = read_ctf_star(s.path("ctf_star", base))
            suggestions = series_suggestions(s, np.asarray(stack), table, params)
            bad_view = np.array(g.excluded, bool)
            bad_fit = np.zeros(g.n_views, bool)
            for i in manual[s.name]:
                bad_view[i] = True
            for i in manual_ctf[s.name]:
                bad_fit[i] = True
            if params.apply_suggestions:
                for sug in suggestions:
                    if sug.view in keep[s.name]:
                        continue
                    (bad_view if sug.target == "view" else bad_fit)[sug.view] = True
            for i in keep[s.name]:
                bad_view[i] = False
            if int((~bad_view).sum()) < MIN_VIEWS_LEFT:
                raise ValueError(
                    f"{s.name}: only {int((~bad_view).sum())} of {g.n_views} views would be left, too few to "
                    f"reconstruct (at least {MIN_VIEWS_LEFT}); keep views with “Keep despite suggestions”, exclude fewer in "
                    "“Views to exclude”, or untick “Apply the suggestions”")
            for sug in suggestions:
                ctx.log(f"{s.name}: view {sug.view + 1} ({sug.tilt_deg:+.1f}°): {sug.message}"
                        + (" — kept" if sug.view in keep[s.name] else ""))
            table = fill_excluded_fits(table, bad_fit & ~bad_view)
            files = dict(s.files)
            geo = g.model_validate({**g.model_dump(), "excluded": bad_view.tolist()})
            flags = {key: list(v) for key, v in s.flags.items()}
            flags["ctf_excluded"] = (bad_fit & ~bad_view).tolist()
            if params.mode == "restack" and bad_view.any():
                keep_mask = ~bad_view
                write_mrc(ctx.out_path(files["stack"]), np.asarray(stack)[keep_mask], voxel_size_A=info.voxel_size_A[0],
                          is_stack=True)
                geo = drop_views(g.model_validate({**g.model_dump(), "excluded": [False] * g.n_views}), keep_mask)
                table = table[keep_mask].reset_index(drop=True)
                flags = {key: [v for v, m in zip(val, keep_mask) if m] for key, val in flags.items()}
            else:
                link_or_copy(s.path("stack", base), ctx.out_path(files["stack"]))
            write_ctf_star(ctx.out_path(files["ctf_star"]), table)
            if "ctf_preview" in files:
                link_or_copy(s.path("ctf_preview", base), ctx.out_path(files["ctf_preview"]))
            entries.append(SeriesEntry(name=s.name, geometry=geo, files=files, flags=flags,
                                       info={**s.info, "suggestions": [
                                           {"view": x.view, "reason": x.reason, "message": x.message,
                                            "target": x.target} for x in suggestions]}))
            metrics["series"][s.name] = {"excluded_views": [int(i) + 1 for i in np.flatnonzero(bad_view)],
                                         "excluded_ctf_fits": [int(i) + 1 for i in np.flatnonzero(bad_fit & ~bad_view)],
                                         "n_suggestions": len(suggestions), "mode": params.mode}
            yield Progress((k + 1) / len(sset.series), f"{s.name}: {int(bad_view.sum())} views excluded")
        out = SeriesSet(series=entries).save(ctx.run_dir)
        n_views = sum(len(m["excluded_views"]) for m in metrics["series"].values())
        metrics["n_excluded_views"] = n_views
        return StepResult(outputs={"series": out}, metrics=metrics,
                          summary=f"{n_views} views excluded ({params.mode})")
