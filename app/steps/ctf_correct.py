"""Step 9, ``ctf_correct``: phase flipping of every view in strips parallel to the tilt axis (IMOD ctfphaseflip).

Each strip is corrected with the CTF sign at its own defocus: on a tilted specimen the defocus changes with the
distance from the tilt axis (:func:`tomoguide.compute.ctfcorrect.phase_flip_series`). The defocus table is the
CTF estimation's (with excluded fits replaced by the trend); excluded views are copied unchanged (no later step
uses them). Output ``series``: the flipped stack with the geometry passed on.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tomoguide.steps.base import Needs, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.exclude import drop_views
from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy, write_imod_alignment


class CtfCorrectParams(StepParams):
    defocus_tolerance_A: float = param(
        2000.0, title="Defocus tolerance", unit="Å", hard=(10.0, 50000.0), suggest=(200.0, 5000.0),
        help="Largest defocus change allowed within one strip (IMOD's DefocusTol, 200 nm = 2000 Å). Smaller = "
             "narrower strips, more exact at high tilt, slower.")
    strip_width_px: int | None = param(
        None, title="Strip spacing", unit="px", hard=(4, 4096), empty_means="from the tolerance", advanced=True,
        help="Distance between strip centres. Empty: derived from the tolerance and the tilt (IMOD-like spacing: "
             "about 20 px).")


def ctf_correct_unit(stack_path: Any, star_path: Any, g: Any, kw: dict[str, Any], out: Any) -> None:
    """One tilt series phase-flipped view by view (a unit of :mod:`tomoguide.cluster`): reads the stack and its
    defocus table by path, writes the flipped stack to ``out`` (temporary file renamed into place); excluded views
    are copied unchanged."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.ctfcorrect import phase_flip_series
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.io.star import read_ctf_star

    stack, info = read_mrc(stack_path)
    table = read_ctf_star(star_path)
    flipped = np.empty(stack.shape, np.float32)
    for i in range(g.n_views):
        one = drop_views(g, np.arange(g.n_views) == i)  # a one-view record
        flipped[i] = phase_flip_series(stack[i:i + 1], one, defocus_u_A=table["rlnDefocusU"].to_numpy()[i:i + 1],
                                       defocus_v_A=table["rlnDefocusV"].to_numpy()[i:i + 1],
                                       astig_angle_deg=table["rlnDefocusAngle"].to_numpy()[i:i + 1],
                                       aligned=False, defocus_at="image_centre", skip_excluded=True, **kw)[0]
    with atomic_output(out) as tmp:
        write_mrc(tmp, flipped, voxel_size_A=info.voxel_size_A[0], is_stack=True)


class CtfCorrect(Step):
    id = "ctf_correct"
    title = "CTF correction"
    summary = "Flip the phases of every view in strips, each at its own defocus (IMOD ctfphaseflip-like)."
    help = (
        "<p><b>What it does.</b> The microscope's CTF inverts the contrast of some spatial frequencies. Phase "
        "flipping multiplies the Fourier transform of each image by the sign of its CTF, so that every frequency "
        "contributes with the right sign. On a tilted specimen the defocus changes across the image, so each view "
        "is cut into strips parallel to the tilt axis, and each strip is flipped with the defocus at its "
        "height.</p>"
        "<p><b>Why.</b> Without it, details finer than the first CTF zero (about 20-30 Å at 4 µm defocus) would "
        "cancel out in the reconstruction and the average.</p>"
        "<p><b>A good result.</b> The views look much like before (phase flipping changes fine detail), with "
        "slightly crisper particles.</p>"
        "<p><b>What to check.</b> Nothing usually; if the defocus table was wrong, the tomogram's fine detail will "
        "be wrong too: go back to the CTF steps.</p>"
    )
    Params = CtfCorrectParams
    inputs = ("exclude",)

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        sset, _ = SeriesSet.load(ctx.output("exclude", "series"))
        total = sum(s.geometry.n_views * s.geometry.image_shape_px[0] * s.geometry.image_shape_px[1] * 4
                    for s in sset.series)
        return Needs(disk_bytes=total, memory_bytes=3 * total)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit

        assert isinstance(params, CtfCorrectParams)
        sset, base = SeriesSet.load(ctx.output("exclude", "series"))
        n_total = sum(s.geometry.n_views for s in sset.series)
        entries = []
        metrics: dict[str, Any] = {"series": {}}
        kw: dict[str, Any] = {"defocus_tolerance_A": params.defocus_tolerance_A}
        if params.strip_width_px is not None:
            kw["strip_width_px"] = params.strip_width_px
        units = [Unit(s.name, (s.path("stack", base), s.path("ctf_star", base), s.geometry, kw,
                               ctx.out_path(f"{s.name}.mrc"))) for s in sset.series]
        yield from ctx.map_units(ctf_correct_unit, units, what="phase flipping")  # one unit per tilt series
        for s in sset.series:
            g = s.geometry
            files = {"stack": f"{s.name}.mrc", "ctf_star": s.files["ctf_star"],
                     **write_imod_alignment(ctx.run_dir, s.name, g)}
            link_or_copy(s.path("ctf_star", base), ctx.out_path(files["ctf_star"]))
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags=dict(s.flags), info=dict(s.info)))
            metrics["series"][s.name] = {"n_flipped": int(g.n_views - sum(g.excluded))}
        path = SeriesSet(series=entries).save(ctx.run_dir)
        return StepResult(outputs={"series": path}, metrics=metrics, summary=f"phase-flipped {n_total} views")

