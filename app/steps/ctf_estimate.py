"""Step 7, ``ctf_estimate``: CTFFIND-like CTF estimation on every tilt image of the (unaligned) tilt series.

The images are the full-size X-ray-erased views as they were recorded (raw: not interpolated, not filtered), with
the alignment assigned as metadata. The fit is tilt-aware: the spectra of windows across a tilted image are
rescaled to the defocus at the image centre before averaging (the defocus gradient of the tilted specimen,
:func:`tomoguide.compute.ctffit.estimate_ctf`). Optionally the search is narrowed around the nominal defocus from
the mdoc (the tutorial's tip). Output ``series``: per series the CTF STAR (rlnDefocusU/V/Angle at the raw image
centre, rlnCtfMaxResolution, rlnCtfFigureOfMerit, failure flags) and the spectra with the fitted rings.
"""

from __future__ import annotations

from typing import Any

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



class CtfEstimateParams(StepParams):
    box_px: int = param(
        512, title="FFT box", unit="px", hard=(64, 2048), suggest=(256, 1024),
        help="Size of the windows whose power spectra are averaged (tutorial 512 px).")
    res_low_A: float = param(
        50.0, title="Lowest resolution", unit="Å", hard=(5.0, 500.0), suggest=(20.0, 100.0),
        help="Lowest resolution used in the fit (tutorial 50 Å).")
    res_high_A: float = param(
        5.0, title="Highest resolution", unit="Å", hard=(1.0, 50.0), suggest=(3.0, 15.0),
        help="Highest resolution used in the fit (tutorial 5 Å); clipped at Nyquist.")
    defocus_min_A: float = param(
        10000.0, title="Minimum defocus", unit="Å", hard=(0.0, 200000.0), suggest=(2000.0, 30000.0),
        help="Smallest defocus searched (tutorial 10000 Å = 1 µm; underfocus positive).")
    defocus_max_A: float = param(
        50000.0, title="Maximum defocus", unit="Å", hard=(1000.0, 300000.0), suggest=(20000.0, 80000.0),
        help="Largest defocus searched (tutorial 50000 Å = 5 µm).")
    defocus_step_A: float = param(
        500.0, title="Defocus step", unit="Å", hard=(10.0, 5000.0), suggest=(100.0, 1000.0),
        help="Step of the exhaustive 1D search before the 2D refinement (tutorial 500 Å).")
    narrow_around_nominal: bool = param(
        False, title="Search around the nominal defocus",
        help="Search only within ± the range below around the defocus the microscope was set to (from the mdoc): "
             "the tutorial's tip for data whose Thon rings are weak.")
    narrow_A: float = param(
        10000.0, title="Range around nominal", unit="Å", hard=(500.0, 100000.0), suggest=(3000.0, 20000.0),
        enabled_if=[("narrow_around_nominal", "=", True)],
        help="Half-width of the search around the nominal defocus.")
    fit_phase: bool = param(False, title="Fit phase shift",
                            help="Also fit an additional phase shift (phase-plate data only). Tutorial: No.")


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
    )
    Params = CtfEstimateParams
    inputs = ("assign_alignment",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, CtfEstimateParams)
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
        n = sum(s.geometry.n_views for s in sset.series)
        ny, nx = sset.series[0].geometry.image_shape_px
        return Needs(disk_bytes=n * CTF_PREVIEW_PX**2 * 4 + 100_000, memory_bytes=ny * nx * 4 * (n // 2 + 8))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.ctffit import estimate_ctf
        from tomoguide.compute.io.mrc import read_mrc

        assert isinstance(params, CtfEstimateParams)
        sset, base = SeriesSet.load(ctx.output("assign_alignment", "series"))
        n_total = sum(s.geometry.n_views for s in sset.series)
        done = 0
        entries: list[SeriesEntry] = []
        metrics: dict[str, Any] = {"series": {}}
        for s in sset.series:
            g = s.geometry
            stack, _ = read_mrc(s.path("stack", base), mmap=True)
            px = g.pixel_size_binned_A
            tilts = g.true_tilt_deg()
            rows, previews, failed = [], [], []
            for i in range(g.n_views):
                ctx.check_cancel()
                kw: dict[str, Any] = dict(defocus_range_A=(params.defocus_min_A, params.defocus_max_A),
                                          defocus_step_A=params.defocus_step_A,
                                          res_range_A=(params.res_low_A, max(params.res_high_A, 2.05 * px)),
                                          fit_phase=params.fit_phase)
                if params.narrow_around_nominal and g.nominal_defocus_um:
                    kw.update(nominal_defocus_A=g.nominal_defocus_um[i] * 1e4, narrow_A=params.narrow_A)
                fit, spec = estimate_ctf(np.asarray(stack[i], np.float32), pixel_size_A=px, box=params.box_px,
                                         tilt_deg=float(tilts[i]), tilt_axis_deg=g.tilt_axis_deg,
                                         defocus_handedness=g.defocus_handedness, voltage_kV=g.optics.voltage_kV,
                                         cs_mm=g.optics.cs_mm, amplitude_contrast=g.optics.amplitude_contrast, **kw)
                rows.append(ctf_row(s.name, i, g.tilt_angles_deg[i], fit))
                failed.append(bool(fit.failed))
                previews.append(ctf_preview(spec, fit))
                if fit.failed:
                    ctx.log(f"{s.name}: tilt {g.tilt_angles_deg[i]:+.1f}°: fit failed ({fit.reason})")
                done += 1
                yield Progress(done / n_total, f"{s.name}: tilt {g.tilt_angles_deg[i]:+.1f}°: "
                               f"{fit.defocus_mean_A / 1e4:.2f} µm, {fit.fit_resolution_A:.1f} Å")
            files = dict(s.files)
            files.update(write_ctf_results(ctx.run_dir, s.name, rows, previews, g.optics, px))
            # the stack itself is not changed: link (or copy) it so the set is self-contained
            link_or_copy(s.path("stack", base), ctx.run_dir / files["stack"])
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files,
                                       flags={**s.flags, "ctf_failed": failed}, info=dict(s.info)))
            metrics["series"][s.name] = ctf_summary(rows, failed)
        out = SeriesSet(series=entries).save(ctx.run_dir)
        n_failed = sum(m["n_failed"] for m in metrics["series"].values())
        metrics["n_failed"] = n_failed
        return StepResult(outputs={"series": out}, metrics=metrics,
                          summary=f"CTF of {n_total} tilts ({n_failed} failed fits flagged)")

