"""Step 7, ``ctf_estimate``: CTFFIND-like CTF estimation on every tilt image of the (unaligned) tilt series.

The images are the full-size X-ray-erased views as they were recorded (raw: not interpolated, not filtered), with
the alignment assigned as metadata. The fit is tilt-aware: the spectra of windows across a tilted image are
rescaled to the defocus at the image centre before averaging (the defocus gradient of the tilted specimen,
:func:`tomoguide.compute.ctffit.estimate_ctf`). Optionally the search is narrowed around the nominal defocus from
the mdoc (the tutorial's tip). Output ``series``: per series the CTF STAR (rlnDefocusU/V/Angle at the raw image
centre, rlnCtfMaxResolution, rlnCtfFigureOfMerit, failure flags) and the spectra with the fitted rings.

With ``source = "files"`` (entry point b) nothing is fitted: each series' per-tilt CTF is read from CTFFIND,
ctfplotter, Warp or RELION 5 files in ``ctf_dir`` (:mod:`tomoguide.steps.ctf_files`: conventions checked and
documented there), written in the same records, with the spectra showing the file's rings; the geometry passes on
unchanged (no tilt-direction check without a fit).

**Tilt direction.** The windows of every view are averaged after rescaling with the defocus gradient the geometry
predicts and with the opposite one (the tilt axis turned by 180°); on the views with |tilt| ≥ 20° the sharper
rings tell which is right (:func:`tomoguide.compute.ctffit.check_tilt_direction`, whose docstring gives the
conventions of IMOD, RELION, Warp and AreTomo3). By default (``tilt_direction = "rotate_axis"``, as AreTomo3) an
inverted series gets the tilt axis + 180° (every view's transform negated, so the specimen shifts stay where they
were in the raw images) and its CTF is fitted with the corrected gradient; ``"flip_defocus"`` keeps the axis and
flips the defocus handedness instead (Warp), ``"report"`` only says so. The verdict is in the log, the metrics,
the summary and ``info["tilt_direction"]`` of every series.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import (
    CTF_PREVIEW_PX,
    SeriesEntry,
    SeriesSet,
    ctf_preview,
    ctf_row,
    ctf_summary,
    link_or_copy,
    write_ctf_results,
)

from tomoguide.geometry import TiltSeriesGeometry

TILT_DIRECTION_ACTIONS = ("rotate_axis", "flip_defocus", "report", "off")
NOMINAL_MARGIN_A = 20000.0  # the search reaches at least this far above the mdoc's target defocus

SOURCES = ("fit", "files")


class CtfEstimateParams(StepParams):
    source: Literal["fit", "files"] = param(
        "fit", title="CTF source", choices=list(SOURCES), widget="choice",
        help="'fit': fit the CTF of every tilt image here (recommended). 'files': take a per-tilt CTF you already "
             "have, made on the same tilt series by CTFFIND (NAME_ctf.txt or NAME.txt), IMOD ctfplotter "
             "(NAME.defocus), Warp/WarpTools (NAME.xml) or RELION 5 (the per-tilt-series NAME.star), from the folder "
             "below. Defocus must be underfocus-positive (as these programs write it); the views are matched by "
             "tilt angle (or by image number of the imported stack).")
    ctf_dir: str | None = param(
        None, title="CTF files folder", widget="directory", empty_means="none chosen",
        enabled_if=[("source", "=", "files")],
        help="Folder holding one CTF file per tilt series, named after the series (upper or lower case does not "
             "matter): NAME.defocus (ctfplotter), NAME.xml (Warp), NAME.star (RELION 5 per-tilt STAR), NAME_ctf.txt "
             "or NAME.txt (CTFFIND's output on the stack; put NAME.rawtlt beside it when the stack is not the "
             "imported one, so its rows can be matched by tilt).")
    box_px: int = param(
        512, title="FFT box", unit="px", hard=(64, 2048), suggest=(256, 1024),
        enabled_if=[("source", "=", "fit")],
        tutorial=512,
        help="Size of the windows whose power spectra are averaged (tutorial 512 px).")
    res_low_A: float = param(
        50.0, title="Lowest resolution", unit="Å", hard=(5.0, 500.0), suggest=(20.0, 100.0),
        enabled_if=[("source", "=", "fit")],
        tutorial=50.0,
        help="Lowest resolution used in the fit (tutorial 50 Å).")
    res_high_A: float = param(
        5.0, title="Highest resolution", unit="Å", hard=(1.0, 50.0), suggest=(3.0, 15.0),
        enabled_if=[("source", "=", "fit")],
        tutorial=5.0,
        help="Highest resolution used in the fit (tutorial 5 Å); clipped at Nyquist.")
    defocus_min_A: float = param(
        10000.0, title="Minimum defocus", unit="Å", hard=(0.0, 200000.0), suggest=(2000.0, 30000.0),
        enabled_if=[("source", "=", "fit")],
        tutorial=10000.0,
        help="Smallest defocus searched (tutorial 10000 Å = 1 µm; underfocus positive).")
    defocus_max_A: float = param(
        50000.0, title="Maximum defocus", unit="Å", hard=(1000.0, 300000.0), suggest=(20000.0, 80000.0),
        enabled_if=[("source", "=", "fit")],
        tutorial=50000.0,
        help="Largest defocus searched (tutorial 50000 Å = 5 µm). When the mdoc's target defocus + 2 µm lies "
             "beyond it (e.g. a session recorded at 5 µm), the search goes that far, and the log says so.")
    defocus_step_A: float = param(
        500.0, title="Defocus step", unit="Å", hard=(10.0, 5000.0), suggest=(100.0, 1000.0),
        enabled_if=[("source", "=", "fit")],
        tutorial=500.0,
        help="Step of the exhaustive 1D search before the 2D refinement (tutorial 500 Å).")
    narrow_around_nominal: bool = param(
        False, title="Search around the nominal defocus",
        enabled_if=[("source", "=", "fit")],
        help="Search only within ± the range below around the defocus the microscope was set to (from the mdoc): "
             "the tutorial's tip for data whose Thon rings are weak.")
    narrow_A: float = param(
        10000.0, title="Range around nominal", unit="Å", hard=(500.0, 100000.0), suggest=(3000.0, 20000.0),
        enabled_if=[("source", "=", "fit"), ("narrow_around_nominal", "=", True)],
        help="Half-width of the search around the nominal defocus.")
    fit_phase: bool = param(False, title="Fit phase shift", enabled_if=[("source", "=", "fit")],
                            help="Also fit an additional phase shift (phase-plate data only). Tutorial: No.")
    tilt_direction: Literal["rotate_axis", "flip_defocus", "report", "off"] = param(
        "rotate_axis", title="Tilt direction check", choices=list(TILT_DIRECTION_ACTIONS), widget="choice",
        enabled_if=[("source", "=", "fit")],
        help="On a tilted image one side is further from focus than the other; which side depends on the direction "
             "of the tilt. If the Thon rings say the direction is the opposite of the geometry's (the tilt axis is "
             "180° off, e.g. typed as −95° instead of 85°), the tomogram would be the mirror image of the specimen. "
             "rotate_axis (default, as AreTomo3): turn the tilt axis by 180° when the data clearly say so. "
             "flip_defocus (as Warp): keep the axis and flip the defocus handedness instead — for a microscope whose "
             "tilt axis is known to give the right hand. report: only say so. off: no check.")
    direction_min_tilt_deg: float = param(
        20.0, title="Check tilts from", unit="°", hard=(5.0, 60.0), suggest=(15.0, 40.0), advanced=True,
        enabled_if=[("source", "=", "fit"), ("tilt_direction", "!=", "off")],
        help="Only views tilted at least this much count for the tilt-direction check (small tilts have almost no "
             "defocus gradient).")
    direction_z: float = param(
        4.0, title="Confidence needed", unit="1", hard=(1.0, 50.0), suggest=(3.0, 10.0), advanced=True,
        enabled_if=[("source", "=", "fit"), ("tilt_direction", "!=", "off")],
        help="How sure the check must be (a z score over the tilted views) before it calls the direction as given "
             "or inverted; below it the verdict is 'undecided' and nothing is changed.")


class CtfEstimate(Step):
    id = "ctf_estimate"
    title = "CTF estimation on tilt series"
    summary = "Fit defocus and astigmatism of every tilt image (CTFFIND-like, tilt-aware)."
    help = (
        "<p><b>What it does.</b> For every tilt image, averages the power spectra of many windows, removes the "
        "smooth background, and finds the defocus (and astigmatism) whose Thon rings match the spectrum best: "
        "first a search over the whole defocus range, then a 2D refinement. On a tilted image the defocus changes "
        "across the image; the windows' spectra are rescaled to the centre's defocus before averaging. It works on "
        "the images as recorded (not interpolated), as CTFFIND does.</p>"
        "<p><b>Why.</b> CTF correction (phase flipping) and subtomogram averaging need the defocus of every "
        "image.</p>"
        "<p><b>A good result.</b> Fitted rings (right half) that continue the data's rings (left half); a defocus "
        "that varies smoothly from tilt to tilt; a fit resolution of a few Å at low tilt, worse at high tilt.</p>"
        "<p><b>What to check.</b> Red tilts (failed fits, or far from the trend): exclude them in the next step. "
        "A defocus at the edge of the search range means the range is wrong; the tutorial's tip is to search "
        "around the nominal defocus.</p>"
        "<p><b>Tilt direction.</b> The step also checks, from the defocus gradient across the tilted views, that the "
        "tilt direction (the tilt axis up to 180°) is right; a wrong one gives a mirror-image tomogram. When the data "
        "clearly say it is inverted, the tilt axis is turned by 180° and the summary says so; 'undecided' changes "
        "nothing.</p>"
    )
    Params = CtfEstimateParams
    inputs = ("assign_alignment",)

    @classmethod
    def origin_for(cls, params: StepParams, params_of: Any = None) -> str | None:
        return "from files" if getattr(params, "source", "fit") == "files" else None

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, CtfEstimateParams)
        if params.source == "files":
            return _files_issues(params, ctx)
        issues = []
        if params.res_high_A >= params.res_low_A:
            issues.append(Issue("error", "the highest resolution must be finer (smaller) than the lowest",
                                "res_high_A"))
        if params.defocus_min_A >= params.defocus_max_A:
            issues.append(Issue("error", "the minimum defocus must be below the maximum", "defocus_max_A"))
        if "assign_alignment" in ctx.upstream:
            sset, _ = SeriesSet.load(ctx.output("assign_alignment", "series"))
            for s in sset.series:
                if params.box_px > min(s.geometry.image_shape_px):
                    issues.append(Issue("error", f"{s.name}: the FFT box ({params.box_px} px) is larger than the "
                                        "images", "box_px"))
                if params.narrow_around_nominal and not s.geometry.nominal_defocus_um:
                    issues.append(Issue("error", f"{s.name}: the mdoc gave no nominal defocus to search around",
                                        "narrow_around_nominal"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        sset, _ = SeriesSet.load(ctx.output("assign_alignment", "series"))
        if getattr(params, "source", "fit") == "files":  # one image at a time for the spectra shown
            ny, nx = sset.series[0].geometry.image_shape_px
            n = sum(s.geometry.n_views for s in sset.series)
            return Needs(disk_bytes=n * CTF_PREVIEW_PX**2 * 4 + 100_000, memory_bytes=ny * nx * 4 * 8)
        n = sum(s.geometry.n_views for s in sset.series)
        ny, nx = sset.series[0].geometry.image_shape_px
        return Needs(disk_bytes=n * CTF_PREVIEW_PX**2 * 4 + 100_000, memory_bytes=ny * nx * 4 * (n // 2 + 8))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit

        assert isinstance(params, CtfEstimateParams)
        if params.source == "files":
            return (yield from _run_from_files(params, ctx))
        sset, base = SeriesSet.load(ctx.output("assign_alignment", "series"))
        imported_axes = _imported_axes(ctx)
        n_total = sum(s.geometry.n_views for s in sset.series)
        entries: list[SeriesEntry] = []
        metrics: dict[str, Any] = {"series": {}}
        direction_notes: list[str] = []
        check_on = params.tilt_direction != "off"
        units = [Unit(s.name, (s.path("stack", base), s.name, s.geometry, params, imported_axes.get(s.name),
                               ctx.run_dir)) for s in sset.series]  # one unit per tilt series (tomoguide.cluster)
        fitted = yield from ctx.map_units(ctf_estimate_unit, units, what="CTF estimation")
        for s in sset.series:
            res = fitted[s.name]
            for line in res["log"]:
                ctx.log(line)
            direction, rows, failed, g_out = res["direction"], res["rows"], res["failed"], res["geometry"]
            if direction is not None:
                direction_notes.append(f"{s.name}: {direction['note']}")
            files = dict(s.files)
            files.update(res["files"])
            # the stack itself is not changed: link (or copy) it so the set is self-contained
            link_or_copy(s.path("stack", base), ctx.out_path(files["stack"]))
            info = dict(s.info)
            if direction is not None:
                info["tilt_direction"] = direction
            entries.append(SeriesEntry(name=s.name, geometry=g_out, files=files,
                                       flags={**s.flags, "ctf_failed": failed}, info=info))
            metrics["series"][s.name] = ctf_summary(rows, failed)
            if direction is not None:
                metrics["series"][s.name]["tilt_direction"] = direction
        out = SeriesSet(series=entries).save(ctx.run_dir)
        n_failed = sum(m["n_failed"] for m in metrics["series"].values())
        metrics["n_failed"] = n_failed
        summary = f"CTF of {n_total} tilts ({n_failed} failed fits flagged)"
        if check_on:
            verdicts = {name: m["tilt_direction"]["verdict"] for name, m in metrics["series"].items()}
            corrected = [name for name, m in metrics["series"].items() if m["tilt_direction"]["action"] != "none"]
            metrics["tilt_direction"] = verdicts
            metrics["n_tilt_direction_changed"] = len(corrected)
            if corrected or any(v != "as given" for v in verdicts.values()):
                summary += "; " + "; ".join(n for n in direction_notes
                                            if not n.split(": ", 1)[1].startswith("tilt direction as given"))
            else:
                summary += f"; tilt direction as given ({len(verdicts)} series)"
        return StepResult(outputs={"series": out}, metrics=metrics, summary=summary)


def ctf_estimate_unit(stack_path: Any, name: str, g: TiltSeriesGeometry, params: CtfEstimateParams,
                      imported_axis: float | None, folder: Any) -> dict[str, Any]:
    """One tilt series' CTF (a unit of :mod:`tomoguide.cluster`): fits every view of the stack at ``stack_path``
    (geometry ``g``), checks the tilt direction, fits again with the chosen gradient and writes the series' CTF
    STAR and preview stack into ``folder`` (the run folder; each written to a temporary file renamed into
    place). Returns ``files`` (roles -> names), ``rows`` (the STAR's rows), ``failed`` (per view), ``geometry``
    (the geometry passed on), ``direction`` (the check's metrics, None when off) and ``log`` (lines for the run's
    log)."""
    from tomoguide.compute.ctffit import check_tilt_direction, ctf_both_directions, fit_ctf, power_spectrum
    from tomoguide.compute.io.mrc import read_mrc

    log: list[str] = []
    check_on = params.tilt_direction != "off"
    stack, _ = read_mrc(stack_path, mmap=True)
    px = g.pixel_size_binned_A
    tilts = g.true_tilt_deg()
    optics = dict(voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm, amplitude_contrast=g.optics.amplitude_contrast)
    twos = []
    kws = []
    hi = search_maximum_A(params, g)
    if hi > params.defocus_max_A:
        log.append(f"{name}: defocus searched up to {hi / 1e4:.1f} µm (the mdoc's target defocus, up to "
                   f"{max(g.nominal_defocus_um or [0.0]):.1f} µm, + {NOMINAL_MARGIN_A / 1e4:g} µm is beyond "
                   f"Maximum defocus {params.defocus_max_A / 1e4:g} µm)")
    for i in range(g.n_views):
        kw: dict[str, Any] = dict(defocus_range_A=(params.defocus_min_A, hi), defocus_step_A=params.defocus_step_A,
                                  res_range_A=(params.res_low_A, max(params.res_high_A, 2.05 * px)),
                                  fit_phase=params.fit_phase)
        if params.narrow_around_nominal and g.nominal_defocus_um:
            kw.update(nominal_defocus_A=g.nominal_defocus_um[i] * 1e4, narrow_A=params.narrow_A)
        twos.append(ctf_both_directions(
            np.asarray(stack[i], np.float32), pixel_size_A=px, box=params.box_px, tilt_deg=float(tilts[i]),
            tilt_axis_deg=g.tilt_axis_deg, defocus_handedness=g.defocus_handedness, view=i,
            min_tilt_deg=params.direction_min_tilt_deg if check_on else float("inf"), **optics, **kw))
        kws.append(kw)

    # ---- tilt direction -----------------------------------------------------------------------------------
    g_out, use_inverted, direction = g, False, None
    if check_on:
        check = check_tilt_direction([t.evidence for t in twos], min_tilt_deg=params.direction_min_tilt_deg,
                                     z_threshold=params.direction_z)
        g_out, use_inverted, note = _apply_tilt_direction(g, check.verdict, params.tilt_direction, imported_axis)
        direction = {**check.metrics(), "action": params.tilt_direction if use_inverted else "none",
                     "tilt_axis_before_deg": g.tilt_axis_deg, "tilt_axis_after_deg": g_out.tilt_axis_deg,
                     "defocus_handedness_before": g.defocus_handedness,
                     "defocus_handedness_after": g_out.defocus_handedness,
                     "imported_tilt_axis_deg": imported_axis, "note": note}
        log.append(f"{name}: {note} ({check.reason})")

    # ---- second pass with the chosen gradient -------------------------------------------------------------
    rows, previews, failed = [], [], []
    for i, (two, kw) in enumerate(zip(twos, kws, strict=True)):
        if two.rescaled:
            # the geometry passed on gives the gradient; with it unchanged this is estimate_ctf's 2nd pass
            spec = two.spectrum_as_given if not use_inverted else power_spectrum(
                np.asarray(stack[i], np.float32), pixel_size_A=px, box=params.box_px,
                tilt_deg=float(tilts[i]), tilt_axis_deg=g_out.tilt_axis_deg,
                defocus_handedness=g_out.defocus_handedness,
                reference_defocus_A=two.first_fit.defocus_mean_A, tilt_mode="rescale",
                voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm)
            fit = fit_ctf(spec, **optics, **kw)
        else:
            spec, fit = two.plain, two.first_fit
        rows.append(ctf_row(name, i, g.tilt_angles_deg[i], fit))
        failed.append(bool(fit.failed))
        previews.append(ctf_preview(spec, fit))
        if fit.failed:
            log.append(f"{name}: tilt {g.tilt_angles_deg[i]:+.1f}°: fit failed ({fit.reason})")
    files = write_ctf_results(Path(folder), name, rows, previews, g.optics, px)
    return {"files": files, "rows": rows, "failed": failed, "geometry": g_out, "direction": direction, "log": log}


def search_maximum_A(params: CtfEstimateParams, g: TiltSeriesGeometry) -> float:
    """Largest defocus searched for a series (Å): ``defocus_max_A``, or the mdoc's largest target defocus +
    :data:`NOMINAL_MARGIN_A` when that is more (a fit at the edge of the range is flagged as failed; the
    tutorial's 1-5 µm range would fail every view of a session recorded at 5 µm). Not when searching around the
    nominal defocus, which has its own range."""
    nominal = [float(d) for d in (g.nominal_defocus_um or []) if d and np.isfinite(d) and d > 0]
    if params.narrow_around_nominal or not nominal:
        return float(params.defocus_max_A)
    return float(min(max(params.defocus_max_A, max(nominal) * 1e4 + NOMINAL_MARGIN_A), 300000.0))


def _imported_axes(ctx: RunContext) -> dict[str, float]:
    """The tilt axis of each series as imported (the mdoc's or the typed one), from the motion_ctf output when it is
    among the done steps (for the messages only)."""
    try:
        if "motion_ctf" not in ctx.upstream:
            return {}
        sset, _ = SeriesSet.load(ctx.output("motion_ctf", "series"))
        return {s.name: float(s.geometry.tilt_axis_deg) for s in sset.series}
    except Exception:  # the messages do without it
        return {}


def _wrap180(a: float) -> float:
    """Angle in (−180°, 180°]."""
    return float(-((-a + 180.0) % 360.0 - 180.0))


def rotate_tilt_axis_180(g: TiltSeriesGeometry) -> TiltSeriesGeometry:
    """The same acquisition with the tilt axis turned by 180° (the tilt direction inverted).

    Every view's transform ``aligned = A raw + d`` becomes ``aligned = (−A) raw + (−d)``: the aligned image turned
    by 180°, so the specimen shift ``s = −A⁻¹ d`` (where the aligned centre lies in the raw image) is unchanged and a
    per-view rotation or magnification refined by the alignment is kept. ``tilt_axis_deg`` + 180° (wrapped into
    (−180°, 180°]); tilts, tilt offset, X tilt and defocus handedness are kept. With the same tilt angles the
    projections are those of the point-inverted specimen (the alignment fits both equally); the predicted defocus
    gradient and the hand of the tomogram are inverted."""
    update: dict[str, Any] = {"tilt_axis_deg": _wrap180(g.tilt_axis_deg + 180.0)}
    if g.xf is not None:
        update["xf"] = -g.xf_array()
    return g.model_validate({**g.model_dump(), **update})


def _apply_tilt_direction(g: TiltSeriesGeometry, verdict: str, action: str,
                          imported_axis: float | None) -> tuple[TiltSeriesGeometry, bool, str]:
    """The geometry passed on, whether the "inverted" spectra are the right ones, and the message for one series."""
    axis = g.tilt_axis_deg
    refined = imported_axis is not None and abs(_wrap180(imported_axis - axis)) > 0.05
    src = (f"the imported axis {imported_axis:.1f}° (refined to {axis:.1f}° by the alignment)" if refined
           else f"the tilt axis {axis:.1f}°")
    if verdict == "as given":
        return g, False, f"tilt direction as given (tilt axis {axis:.1f}°)"
    if verdict == "undecided":
        return g, False, (f"tilt direction undecided: the defocus gradient of the tilted views does not clearly tell; "
                          f"{src} is kept")
    if action == "rotate_axis":
        g2 = rotate_tilt_axis_180(g)
        return g2, True, f"tilt direction inverted: {src} was off by 180°; corrected to {g2.tilt_axis_deg:.1f}°"
    if action == "flip_defocus":
        h = -int(g.defocus_handedness)
        g2 = g.model_validate({**g.model_dump(), "defocus_handedness": h})
        return g2, True, (f"defocus gradient opposite to the geometry's: defocus handedness set to {h:+d}, "
                          f"{src} kept")
    return g, False, (f"tilt direction looks inverted ({src} 180° off) but is kept ('report'): the tomogram will be "
                      "the mirror image unless the axis is turned by 180°")


# ---- an existing CTF from files (source = "files"; entry point b) ----------------------------------------------


def _ctf_folder(params: CtfEstimateParams) -> Path | None:
    value = (params.ctf_dir or "").strip()
    return Path(value).expanduser() if value else None


def _stack_sections(ctx: RunContext) -> dict[str, list[int]]:
    """Per series imported from a stack (entry point a), the stack image of each view in view order: CTF files made
    on that stack are matched by image number."""
    from tomoguide.compute.io.errors import FormatError

    try:
        if "import_movies" not in ctx.upstream:
            return {}
        from tomoguide.steps.import_movies import load_series

        out = {}
        for s in load_series(ctx.output("import_movies", "tilt_series")):
            if getattr(s, "source", "movies") == "tilt series":
                out[s.name] = [int(t.section if t.section is not None else t.mdoc_section) for t in s.tilts]
        return out
    except (FormatError, OSError, ValueError, KeyError) as exc:  # then the views are matched by tilt
        ctx.log(f"the imported stacks' image numbers could not be read ({exc}): CTF rows matched by tilt angle")
        return {}


def _values_for_series(folder: Path, s: SeriesEntry, sections: list[int] | None) -> tuple[Any, Any]:
    from tomoguide.steps.ctf_files import ctf_values_for_views, find_ctf_file, read_ctf_file

    path = find_ctf_file(folder, s.name)
    table = read_ctf_file(path)
    if sections is not None and len(sections) != s.geometry.n_views:
        sections = None
    return table, ctf_values_for_views(table, s.geometry.tilt_angles_deg, sections, path)


def _files_issues(params: CtfEstimateParams, ctx: RunContext) -> list[Issue]:
    from tomoguide.compute.io.errors import FormatError

    folder = _ctf_folder(params)
    if folder is None:
        return [Issue("error", "choose the folder with the CTF files (CTF files folder)", "ctf_dir")]
    if not folder.is_dir():
        return [Issue("error", f"{folder}: ctf_dir: no such folder", "ctf_dir")]
    issues: list[Issue] = []
    if "assign_alignment" in ctx.upstream:
        sset, _ = SeriesSet.load(ctx.output("assign_alignment", "series"))
        sections = _stack_sections(ctx)
        for s in sset.series:
            try:
                _values_for_series(folder, s, sections.get(s.name))
            except (FormatError, OSError, ValueError) as exc:
                issues.append(Issue("error", str(exc).splitlines()[0], "ctf_dir"))
    return issues


def _run_from_files(params: CtfEstimateParams, ctx: RunContext) -> StepRun:
    """``source = "files"``: each series' per-tilt CTF read from its file (:mod:`tomoguide.steps.ctf_files`), written
    as the fit writes it (CTF STAR, spectra with the file's rings); the geometry is passed on unchanged (no
    tilt-direction check: there is no fit to check it with) and ``ctf_failed`` is false for every view."""
    from tomoguide.compute.ctffit import CtfFit, power_spectrum
    from tomoguide.compute.io.mrc import read_mrc

    folder = _ctf_folder(params)
    if folder is None:
        raise ValueError("ctf_dir: choose the folder with the CTF files")
    sset, base = SeriesSet.load(ctx.output("assign_alignment", "series"))
    sections = _stack_sections(ctx)
    n_total = sum(s.geometry.n_views for s in sset.series)
    done = 0
    entries: list[SeriesEntry] = []
    metrics: dict[str, Any] = {"source": "files", "ctf_dir": str(folder), "series": {}}
    for s in sset.series:
        g = s.geometry
        table, values = _values_for_series(folder, s, sections.get(s.name))
        how = "by image number of the imported stack" if s.name in sections and table.views is not None else (
            "by tilt angle" if table.tilt_deg is not None else "in ascending tilt order (assumed)")
        ctx.log(f"{s.name}: CTF read from {table.path} ({table.kind}; views matched {how})")
        stack, _ = read_mrc(s.path("stack", base), mmap=True)
        px = g.pixel_size_binned_A
        box = min(params.box_px, *g.image_shape_px)
        optics = dict(voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm,
                      amplitude_contrast=g.optics.amplitude_contrast)
        rows, previews = [], []
        for i in range(g.n_views):
            ctx.check_cancel()
            u, v, a, r = (float(x) for x in values[i])
            fit = CtfFit(defocus_u_A=u, defocus_v_A=v, astig_angle_deg=a, score=0.0,
                         fit_resolution_A=r if np.isfinite(r) else float("inf"), pixel_size_A=px,
                         reason="from file", **optics)
            row = ctf_row(s.name, i, g.tilt_angles_deg[i], fit)
            row["tomoguideCtfReason"] = "from file"
            rows.append(row)
            spec = power_spectrum(np.asarray(stack[i], np.float32), pixel_size_A=px, box=box)
            previews.append(ctf_preview(spec, fit))
            done += 1
            yield Progress(done / max(n_total, 1), f"{s.name}: tilt {g.tilt_angles_deg[i]:+.1f}°: {u / 1e4:.2f} µm "
                           "(from file)")
        failed = [False] * g.n_views
        files = dict(s.files)
        files.update(write_ctf_results(ctx.run_dir, s.name, rows, previews, g.optics, px))
        link_or_copy(s.path("stack", base), ctx.out_path(files["stack"]))
        info = {**s.info, "ctf_source": "files", "ctf_file": str(table.path)}
        entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags={**s.flags, "ctf_failed": failed},
                                   info=info))
        metrics["series"][s.name] = {**ctf_summary(rows, failed), "source": "files", "file": str(table.path),
                                     "format": table.kind}
    out = SeriesSet(series=entries).save(ctx.run_dir)
    metrics["n_failed"] = 0
    return StepResult(outputs={"series": out}, metrics=metrics,
                      summary=f"CTF of {n_total} tilts read from files in {folder}")
