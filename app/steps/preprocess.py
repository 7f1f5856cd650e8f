"""Steps 4 and 10, ``preprocess_for_alignment`` / ``preprocess_for_reconstruction``: binning and normalising.

Binning is Fourier cropping (:func:`tomoguide.compute.rescale.fourier_bin`: anti-aliased, any factor); the
geometry record is carried to the new binning (pixel size, image shape, shifts). Density modes: scale every
view to a common mean and standard deviation (the tutorial's mean 0, SD 1), or leave the values as they are.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np

from tomoguide.steps.base import Issue, Needs, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesEntry, SeriesSet, write_imod_alignment


def normalise_views(stack: np.ndarray, mean: float, sd: float) -> np.ndarray:
    """Scale every view (n, ny, nx) to the given mean and standard deviation (float32)."""
    out = np.asarray(stack, dtype=np.float32).copy()
    m = out.mean(axis=(1, 2), keepdims=True, dtype=np.float64)
    s = out.std(axis=(1, 2), keepdims=True, dtype=np.float64)
    s[s == 0] = 1.0
    return ((out - m) / s * sd + mean).astype(np.float32)


class BinParams(StepParams):
    binning: float = param(
        10.0, title="Binning", unit="×", hard=(1.0, 64.0), suggest=(2.0, 16.0),
        tutorial=10.0,
        help="Factor by which the pixel size grows (Fourier cropping, so nothing aliases). The tutorial bins by 10 "
             "for the alignment: patch tracking works on low-resolution features, and it is much faster.")
    density_mode: Literal["scale", "none"] = param(
        "scale", title="Densities", choices=["scale", "none"], widget="choice",
        help="'scale': every view is scaled to the same mean and standard deviation (tutorial: mean 0, SD 1), "
             "so that a darker high-tilt view does not dominate; 'none': values as they are.")
    mean: float = param(0.0, title="Mean", unit="1", hard=(-1e6, 1e6), enabled_if=[("density_mode", "=", "scale")],
                        help="Mean of every view after scaling (tutorial 0).")
    sd: float = param(1.0, title="Standard deviation", unit="1", hard=(1e-6, 1e6),
                      enabled_if=[("density_mode", "=", "scale")],
                      help="Standard deviation of every view after scaling (tutorial 1).")


def bin_unit(stack_path: Any, params: BinParams, pixel_size_A: float, out: Any) -> list[int]:
    """One tilt series binned by ``params.binning`` (a unit of :mod:`tomoguide.cluster`): reads ``stack_path``,
    writes the binned (in density mode ``scale`` also normalised) stack to ``out`` with pixel size ``pixel_size_A``
    (through a temporary file renamed into place); returns its shape [n, ny, nx]."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.rescale import fourier_bin

    stack, _ = read_mrc(stack_path)
    binned = np.stack([fourier_bin(np.asarray(stack[i], np.float32), params.binning) for i in range(stack.shape[0])])
    if params.density_mode == "scale":
        binned = normalise_views(binned, params.mean, params.sd)
    with atomic_output(out) as tmp:
        write_mrc(tmp, binned, voxel_size_A=pixel_size_A, is_stack=True)
    return [int(n) for n in binned.shape]


class _BinStep(Step):
    source: ClassVar[str]

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, BinParams)
        issues = []
        if self.source in ctx.upstream:
            sset, _ = SeriesSet.load(ctx.output(self.source, "series"))
            for s in sset.series:
                ny, nx = s.geometry.image_shape_px
                if min(ny, nx) / params.binning < 32:
                    issues.append(Issue("error", f"{s.name}: binning {params.binning:g} leaves fewer than 32 px "
                                        f"({nx}×{ny} px now)", "binning"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        assert isinstance(params, BinParams)
        sset, _ = SeriesSet.load(ctx.output(self.source, "series"))
        total = sum(s.geometry.n_views * s.geometry.image_shape_px[0] * s.geometry.image_shape_px[1] * 4
                    for s in sset.series)
        return Needs(disk_bytes=int(total / params.binning**2), memory_bytes=int(total * 3))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        assert isinstance(params, BinParams)
        from tomoguide.cluster import Unit

        sset, base = SeriesSet.load(ctx.output(self.source, "series"))
        n_total = sum(s.geometry.n_views for s in sset.series)
        entries = []
        metrics: dict[str, Any] = {"series": {}}
        binned = {s.name: s.geometry.at_binning(s.geometry.binning * params.binning) for s in sset.series}
        units = [Unit(s.name, (s.path("stack", base), params, binned[s.name].pixel_size_binned_A,
                               ctx.out_path(f"{s.name}.mrc"))) for s in sset.series]
        shapes = yield from ctx.map_units(bin_unit, units, what="binning")  # one unit per tilt series
        for s in sset.series:
            shape = shapes[s.name]
            g = binned[s.name]
            g = g.model_validate({**g.model_dump(), "image_shape_px": (int(shape[1]), int(shape[2]))})
            px = g.pixel_size_binned_A
            files = {"stack": f"{s.name}.mrc", **write_imod_alignment(ctx.run_dir, s.name, g)}
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags=dict(s.flags),
                                       info={"source_step": self.source}))
            metrics["series"][s.name] = {"pixel_size_A": px, "shape_px": list(shape)}
        path = SeriesSet(series=entries).save(ctx.run_dir)
        px_all = sorted({m["pixel_size_A"] for m in metrics["series"].values()})
        metrics["pixel_size_A"] = px_all[0] if len(px_all) == 1 else px_all
        return StepResult(outputs={"series": path}, metrics=metrics,
                          summary=f"binned {n_total} views by {params.binning:g} to {px_all[0]:.2f} Å/px")


class PreprocessForAlignment(_BinStep):
    id = "preprocess_for_alignment"
    title = "Bin and normalise for alignment"
    summary = "Bin the X-ray-erased tilt series (tutorial: by 10) and scale every view to mean 0, SD 1."
    source = "xray_erase"
    help = (
        "<p><b>What it does.</b> Makes a small copy of each tilt series: the pixel size grows by the binning factor "
        "(by cropping the Fourier transform, so fine detail that cannot be represented is removed instead of "
        "aliasing into coarse detail), and every view is scaled to the same mean and standard deviation.</p>"
        "<p><b>Why.</b> Tilt-series alignment follows features of tens of nanometres: a binned series is enough "
        "and much faster. Equal scaling keeps dark high-tilt views from being ignored or over-weighted.</p>"
        "<p><b>A good result.</b> The binned views still show the particles as dark rings or dots; the pixel size "
        "in the table is the old one times the binning.</p>"
        "<p><b>What to check.</b> Images so small that patches of 500 Å hold only a few pixels: bin less.</p>"
    )
    Params = BinParams
    inputs = ("xray_erase",)


class ReconstructionBinParams(BinParams):
    binning: float = param(
        6.0, title="Binning", unit="×", hard=(1.0, 64.0), suggest=(2.0, 16.0),
        tutorial=6.0,
        tutorial_note="The tutorial's choice for its small data set (4 for the large one).",
        help="Factor by which the pixel size grows (Fourier cropping). The tutorial bins the CTF-corrected series "
             "by 6 for the small data set (4 for the large one): tomograms for picking and the first averages do "
             "not need the full resolution, and they are 6³ = 216 times smaller.")
    density_mode: Literal["scale", "none"] = param(
        "none", title="Densities", choices=["scale", "none"], widget="choice",
        help="'none' (default here): keep the values, so that the tomogram's contrast follows the dose; "
             "'scale': every view to the same mean and SD.")


class PreprocessForReconstruction(_BinStep):
    id = "preprocess_for_reconstruction"
    title = "Bin for reconstruction"
    summary = "Bin the CTF-corrected tilt series for the tomogram (tutorial: by 6)."
    source = "ctf_correct"
    help = (
        "<p><b>What it does.</b> Bins the CTF-corrected tilt series by Fourier cropping (the same code as the "
        "binning before alignment); the alignment, exclusions and tilt angles are carried over to the new pixel "
        "size.</p>"
        "<p><b>Why.</b> A tomogram at the full pixel size would be huge and slow; for finding particles and the "
        "first averages, bin 6 is enough (the tutorial's choice for the small data set).</p>"
        "<p><b>A good result.</b> The pixel size in the table is the old one times the binning; the particles "
        "still show as rings.</p>"
        "<p><b>What to check.</b> The pixel size should stay below a third of the particle's size "
        "(apoferritin: 120 Å).</p>"
    )
    Params = ReconstructionBinParams
    inputs = ("ctf_correct",)
