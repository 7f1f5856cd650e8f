"""Step 11, ``reconstruct``: tomograms by weighted back-projection (WBP) or SIRT.

From the binned, CTF-corrected tilt series and its geometry record (alignment, tilt-angle offset, exclusions)
with :func:`tomoguide.compute.reconstruct.backproject` (R-weighting with IMOD's radial filter and optional
SIRT-like filter) or :func:`~tomoguide.compute.reconstruct.sirt`. The tilt axis is along Y of the output; the
volume is (nz, ny, nx) with nz = the thickness, its centre voxel ((n-1)/2 on each axis) at the tomogram centre of
the geometry record; no Z flip (+z towards the electron source as in the simulator's truth). Output ``tomograms``:
``series.json`` with one MRC volume per series (voxel size in the header) and the geometry.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from tomoguide.steps.base import (
    Issue,
    Needs,
    RunContext,
    Step,
    StepParams,
    StepResult,
    StepRun,
    param,
)
from tomoguide.steps.records import SeriesEntry, SeriesSet


class ReconstructParams(StepParams):
    method: Literal["WBP", "SIRT"] = param(
        "SIRT", title="Method", choices=["WBP", "SIRT"], widget="choice",
        tutorial="SIRT",
        help="WBP: weighted back-projection, fast and linear (for subtomogram averaging). SIRT: iterative, "
             "higher contrast at low resolution (for looking at the tomogram and template picking). The tutorial "
             "uses SIRT here.")
    thickness_px: int = param(
        300, title="Thickness", unit="px", hard=(8, 4000), suggest=(50, 1000),
        tutorial=300,
        help="Size of the tomogram along Z in voxels (tutorial 300). It must hold the whole specimen slab; the "
             "demo's ice is about 700 Å thick.")
    width_px: int | None = param(
        None, title="Width", unit="px", hard=(8, 20000), empty_means="image width", advanced=True,
        help="Size along X in voxels; empty: the width of the images.")
    shift_x_px: float = param(0.0, title="Shift X", unit="px", hard=(-10000.0, 10000.0), advanced=True,
                              help="Moves the reconstructed region along X (IMOD's SHIFT).")
    shift_z_px: float = param(0.0, title="Shift Z", unit="px", hard=(-10000.0, 10000.0), advanced=True,
                              help="Moves the reconstructed region along Z, e.g. to centre an off-centre slab.")
    tilt_offset_deg: float = param(0.0, title="Tilt-angle offset", unit="°", hard=(-30.0, 30.0), advanced=True,
                                   help="Added to every tilt angle (IMOD's OFFSET), on top of the alignment's.")
    axis_offset_px: float = param(0.0, title="Tilt-axis offset", unit="px", hard=(-1000.0, 1000.0), advanced=True,
                                  help="Moves the tilt axis along X (IMOD's XAXISOFFSET-like).")
    radial_cutoff: float = param(
        0.35, title="Radial filter cutoff", unit="1/px", hard=(0.01, 0.5), suggest=(0.2, 0.5),
        enabled_if=[("method", "=", "WBP")],
        tutorial=0.35,
        help="Frequency (cycles/pixel) where the radial filter starts to fall off (IMOD default 0.35).")
    radial_falloff: float = param(
        0.035, title="Radial filter fall-off", unit="1/px", hard=(0.0, 0.5), suggest=(0.01, 0.1),
        enabled_if=[("method", "=", "WBP")],
        tutorial=0.035,
        help="Width (sigma, cycles/pixel) of the Gaussian fall-off beyond the cutoff (IMOD default 0.035).")
    sirt_like_iterations: int = param(
        0, title="SIRT-like filter iterations", unit="1", hard=(0, 100), suggest=(0, 30),
        enabled_if=[("method", "=", "WBP")],
        help="IMOD's SIRT-like filter for WBP: a filter that mimics the look of N SIRT iterations (0 = off).")
    sirt_iterations: int = param(
        30, title="SIRT iterations", unit="1", hard=(1, 500), suggest=(5, 50), enabled_if=[("method", "=", "SIRT")],
        help="Number of SIRT iterations: more = sharper but noisier.")


def reconstruct_unit(stack_path: Any, g: Any, shape: tuple[int, int, int], params: ReconstructParams,
                     out: Any) -> None:
    """One tilt series' tomogram (a unit of :mod:`tomoguide.cluster`): reads the stack at ``stack_path``, writes
    the (nz, ny, nx) = ``shape`` volume to ``out`` (through a temporary file renamed into place)."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.reconstruct import backproject, save_tomogram, sirt

    stack, _ = read_mrc(stack_path)
    data = np.asarray(stack, np.float32)
    common = dict(shift_x_px=params.shift_x_px, shift_z_px=params.shift_z_px,
                  tilt_offset_deg=params.tilt_offset_deg, axis_offset_px=params.axis_offset_px)
    if params.method == "WBP":
        volume = backproject(data, g, shape, radial_cutoff=params.radial_cutoff, radial_falloff=params.radial_falloff,
                             fake_sirt_iterations=params.sirt_like_iterations, **common)
    else:
        volume = sirt(data, g, shape, n_iter=params.sirt_iterations, **common)
    with atomic_output(out) as tmp:
        save_tomogram(tmp, volume, g)


class Reconstruct(Step):
    id = "reconstruct"
    title = "Tomogram reconstruction"
    summary = "Reconstruct a tomogram from every tilt series by WBP or SIRT."
    help = (
        "<p><b>What it does.</b> Smears every aligned view back through the volume along its projection direction "
        "(back-projection). Because low frequencies are over-represented by that, the views are first weighted "
        "by a radial filter (WBP); SIRT instead starts from an empty volume and repeatedly corrects it so that its "
        "projections match the views. Excluded views are left out.</p>"
        "<p><b>Why.</b> The tomogram is where the particles are found.</p>"
        "<p><b>A good result.</b> In the XY slice through the middle, the apoferritin particles are round rings "
        "(about 120 Å across); the XZ slice shows the slab of ice with the particles inside, elongated along Z "
        "by the missing wedge. SIRT looks smoother and higher in contrast; WBP noisier but faithful.</p>"
        "<p><b>What to check.</b> Particles cut at the top or bottom (increase the thickness or shift Z), doubled "
        "or smeared particles (alignment), streaks (an unexcluded bad view).</p>"
    )
    Params = ReconstructParams
    inputs = ("preprocess_for_reconstruction",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ReconstructParams)
        issues = []
        if "preprocess_for_reconstruction" in ctx.upstream:
            sset, _ = SeriesSet.load(ctx.output("preprocess_for_reconstruction", "series"))
            for s in sset.series:
                if s.geometry.xf is None:
                    issues.append(Issue("warning", f"{s.name}: not aligned: the tomogram will be blurred"))
                n_used = s.geometry.n_views - sum(s.geometry.excluded)
                if n_used < 3:
                    issues.append(Issue("error", f"{s.name}: only {n_used} views are not excluded"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        assert isinstance(params, ReconstructParams)
        sset, _ = SeriesSet.load(ctx.output("preprocess_for_reconstruction", "series"))
        total = 0
        biggest = 0
        for s in sset.series:
            ny, nx = s.geometry.image_shape_px
            vox = params.thickness_px * ny * (params.width_px or nx) * 4
            total += vox
            biggest = max(biggest, vox)
        return Needs(disk_bytes=total, memory_bytes=biggest * (4 if params.method == "SIRT" else 2))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit

        assert isinstance(params, ReconstructParams)
        sset, base = SeriesSet.load(ctx.output("preprocess_for_reconstruction", "series"))
        entries = []
        metrics: dict[str, Any] = {"series": {}}
        units = []
        for s in sset.series:  # one unit per tilt series (tomoguide.cluster): paths in, a tomogram file out
            g = s.geometry
            ny, nx = g.image_shape_px
            shape = (params.thickness_px, ny, params.width_px or nx)
            files = {"tomogram": f"{s.name}_{params.method.lower()}.mrc"}
            units.append(Unit(s.name, (s.path("stack", base), g, shape, params, ctx.out_path(files["tomogram"]))))
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags=dict(s.flags),
                                       info={"method": params.method, "shape_zyx": list(shape)}))
            metrics["series"][s.name] = {"shape_zyx": list(shape), "voxel_size_A": g.pixel_size_binned_A,
                                         "views_used": int(g.n_views - sum(g.excluded))}
        yield from ctx.map_units(reconstruct_unit, units, what=f"{params.method} tomograms")
        path = SeriesSet(series=entries).save(ctx.run_dir)
        return StepResult(outputs={"tomograms": path}, metrics=metrics,
                          summary=f"{len(entries)} tomograms by {params.method}")
