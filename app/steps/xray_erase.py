"""Step 3, ``xray_erase``: find X-ray hits and hot pixels in the aligned tilt images and replace them.

IMOD ccderaser-like (:func:`tomoguide.compute.xray.erase_xrays_stack`): pixels far above their neighbourhood
(peak criterion) or their neighbours (difference criterion), grown to adjacent bright pixels, replaced by a
fit to the surrounding annulus. Output ``series``: per series the cleaned stack and a mask stack of the
replaced pixels (uint8, for the before/after preview), with the geometry passed on unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tomoguide.steps.base import Needs, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy


class XrayEraseParams(StepParams):
    peak_criterion: float = param(
        10.0, title="Peak criterion", unit="SD", hard=(2.0, 100.0), suggest=(6.0, 20.0),
        help="A pixel is a candidate X-ray hit when it stands this many standard deviations above the mean of "
             "its surroundings (IMOD's default 10). Lower finds weaker hits but risks touching real features.")
    diff_criterion: float = param(
        8.0, title="Difference criterion", unit="SD", hard=(2.0, 100.0), suggest=(5.0, 20.0),
        help="A pixel is also a candidate when it differs from the mean of its 8 neighbours by this many "
             "standard deviations (IMOD's default 8).")
    grow_criterion: float = param(
        4.0, title="Grow criterion", unit="SD", hard=(1.0, 50.0), suggest=(2.0, 8.0),
        help="Neighbours of a hit brighter than this many SDs are added to the patch that is replaced "
             "(IMOD's default 4): X-ray hits often spread over 2-4 pixels.")
    max_radius_px: float = param(
        4.2, title="Maximum radius", unit="px", hard=(1.0, 20.0), suggest=(2.0, 8.0),
        help="A patch that grows beyond this radius is a real feature (gold bead, dense particle), not an "
             "X-ray hit, and is left alone.")
    scan_size_px: int = param(
        100, title="Scan region size", unit="px", hard=(16, 1000), suggest=(50, 300), advanced=True,
        help="Side of the regions in which the local mean and SD are measured.")
    annulus_width_px: float = param(
        2.0, title="Annulus width", unit="px", hard=(1.0, 10.0), suggest=(1.0, 4.0), advanced=True,
        help="Width of the ring of pixels around a patch that the replacement is fitted to.")
    add_noise: bool = param(
        False, title="Add noise to replaced pixels", advanced=True,
        help="Fill replaced pixels with the fit plus noise of the local SD, so that they do not look flat.")


def xray_erase_unit(stack_path: Any, kw: dict[str, Any], out: Any, mask_out: Any) -> tuple[list[int], int]:
    """One tilt series' X-rays erased view by view (a unit of :mod:`tomoguide.cluster`; view ``i``'s fill noise
    seeded by ``i``, so the result does not depend on the process): reads ``stack_path``, writes the cleaned stack
    to ``out`` and the replaced-pixel masks to ``mask_out`` (temporary files renamed into place); returns the
    patches per view and the number of replaced pixels."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.xray import erase_xrays

    stack, info = read_mrc(stack_path)
    cleaned = np.empty(stack.shape, np.float32)
    masks = np.zeros(stack.shape, np.uint8)
    counts = []
    for i in range(stack.shape[0]):
        res = erase_xrays(np.asarray(stack[i], np.float32), seed=i, **kw)
        cleaned[i] = res.image
        masks[i] = res.mask
        counts.append(int(res.count))
    with atomic_output(out) as tmp:
        write_mrc(tmp, cleaned, voxel_size_A=info.voxel_size_A[0], is_stack=True)
    with atomic_output(mask_out) as tmp:
        write_mrc(tmp, masks, voxel_size_A=info.voxel_size_A[0], is_stack=True)
    return counts, int(masks.sum())


class XrayErase(Step):
    id = "xray_erase"
    title = "X-ray eraser"
    summary = "Replace X-ray hits and hot pixels by values interpolated from their surroundings."
    help = (
        "<p><b>What it does.</b> Stray X-rays and cosmic rays hitting the camera, and hot pixels of the detector, "
        "leave single very bright pixels or tiny spots. This step finds pixels that stand far above their "
        "neighbourhood (the peak and difference criteria, in standard deviations), grows each into a small patch, "
        "and replaces the patch by a smooth fit to the pixels around it, as IMOD's ccderaser does.</p>"
        "<p><b>Why.</b> A single extreme pixel has a flat, strong spectrum: it disturbs cross-correlation during "
        "alignment and becomes a streak in the tomogram.</p>"
        "<p><b>A good result.</b> A few patches per tilt (the count per tilt is shown), each one or a few pixels; "
        "in the before/after view the bright dots are gone and nothing else changed.</p>"
        "<p><b>What to check.</b> Hundreds of patches per tilt, or patches on particles or gold beads: raise the "
        "criteria. Visible remaining bright dots: lower them.</p>"
    )
    Params = XrayEraseParams
    inputs = ("motion_ctf",)

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        from tomoguide.compute.io.mrc import read_header

        sset, base = SeriesSet.load(ctx.output("motion_ctf", "series"))
        total = 0
        for s in sset.series:
            info = read_header(s.path("stack", base))
            total += int(np.prod(info.shape)) * 5  # float32 stack + uint8 mask
        return Needs(disk_bytes=total, memory_bytes=total * 4)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit

        assert isinstance(params, XrayEraseParams)
        sset, base = SeriesSet.load(ctx.output("motion_ctf", "series"))
        n_total = sum(s.geometry.n_views for s in sset.series)
        entries: list[SeriesEntry] = []
        metrics: dict[str, Any] = {"series": {}}
        kw = dict(peak_criterion=params.peak_criterion, diff_criterion=params.diff_criterion,
                  grow_criterion=params.grow_criterion, max_radius_px=params.max_radius_px,
                  scan_size_px=params.scan_size_px, annulus_width_px=params.annulus_width_px,
                  add_noise=params.add_noise)
        units = [Unit(s.name, (s.path("stack", base), kw, ctx.out_path(f"{s.name}.mrc"),
                               ctx.out_path(f"{s.name}_replaced.mrc"))) for s in sset.series]
        found = yield from ctx.map_units(xray_erase_unit, units, what="X-ray erasing")  # one unit per tilt series
        for s in sset.series:
            counts, n_replaced = found[s.name]
            files = {"stack": f"{s.name}.mrc", "mask": f"{s.name}_replaced.mrc"}
            for role in ("ctf_star", "ctf_preview"):  # the CTF found on these images stays valid: carry it on
                if role in s.files:
                    link_or_copy(s.path(role, base), ctx.out_path(s.files[role]))
                    files[role] = s.files[role]
            entries.append(SeriesEntry(name=s.name, geometry=s.geometry, files=files, flags=dict(s.flags),
                                       info={**s.info, "replaced_per_view": counts}))
            metrics["series"][s.name] = {"patches_per_view": counts, "total_patches": int(sum(counts)),
                                         "replaced_pixels": n_replaced}
            ctx.log(f"{s.name}: {sum(counts)} patches replaced ({min(counts)}-{max(counts)} per view)")
        out = SeriesSet(series=entries).save(ctx.run_dir)
        total = sum(m["total_patches"] for m in metrics["series"].values())
        metrics["total_patches"] = total
        return StepResult(outputs={"series": out}, metrics=metrics,
                          summary=f"replaced {total} X-ray/hot-pixel patches in {n_total} views")
