"""Steps 15 and 18, ``refine`` and ``refine_fine``: gold-standard 3D auto-refinement with symmetry.

The particles are split into two half sets (``rlnRandomSubset``) that are aligned and reconstructed independently,
each against its own reference; the Fourier shell correlation between the two masked half maps gives the resolution
(FSC 0.143), and the next references are filtered to it, so that noise cannot be fitted consistently in both halves.
Orientations are searched in the symmetry's asymmetric unit from ``initial_angular_step_deg``, with finer local
searches once the resolution stops improving; offsets within ``offset_range_px`` (in voxels of the extraction)
(:func:`tomoguide.compute.refine.auto_refine`). Output ``average``
(:class:`~tomoguide.steps.average_records.AverageRecord`): half maps, the merged map (FSC-weighted, low-passed to
the resolution), the mask, the FSC curves, particles.star with refined poses, the history of the iterations.

``refine`` starts from the initial model with a global search; ``refine_fine`` refines the finer re-extraction
locally from the poses it carries, with the particle reconstruction as its reference. Particles imported with their
poses (``extract`` with the source "RELION 5 particles") are refined like ``refine_fine``: locally from the given
poses, against the gold-standard reconstruction from those poses; the initial model is then not needed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.steps.average_records import (
    AverageRecord,
    FSCCurve,
    poses_to_table,
    prior_axes,
    table_rotations,
    write_average,
)
from tomoguide.steps.base import Issue, Needs, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.initial_model import particles_have_priors, prior_issues, symmetry_issues


class RefineParams(StepParams):
    symmetry: str = param(
        "O", title="Symmetry",
        help="Point-group symmetry: C1 (none), Cn, Dn, T, O (apoferritin: octahedral) or I.")
    mask_diameter_A: float = param(
        150.0, title="Mask diameter", unit="Å", hard=(10.0, 5000.0), suggest=(50.0, 1000.0),
        help="Diameter of the soft spherical mask (apoferritin: 150 Å). Outside it the references are set to zero "
             "(RELION's 'mask individual particles with zeros').")
    initial_lowpass_A: float = param(
        60.0, title="Initial low-pass filter", unit="Å", hard=(2.0, 500.0), suggest=(10.0, 100.0),
        tutorial=60.0,
        help="The reference is low-passed to this resolution before the first iteration (tutorial: 60 Å), so that "
             "the refinement does not start from the reference's own noise.")
    initial_angular_step_deg: float = param(
        7.5, title="Initial angular sampling", unit="°", hard=(0.5, 30.0), suggest=(1.8, 15.0),
        tutorial=7.5,
        help="Step of the first orientation search (tutorial: 7.5°); it is halved automatically when the "
             "resolution stops improving.")
    local_searches_from_deg: float = param(
        1.8, title="Local searches from", unit="°", hard=(0.1, 30.0), suggest=(0.5, 7.5),
        tutorial=1.8,
        help="From this angular step on, orientations are searched only near each particle's current one "
             "(tutorial: 1.8°).")
    offset_range_px: float = param(
        5.0, title="Offset search range", unit="px", hard=(0.0, 50.0), suggest=(1.0, 10.0),
        tutorial=5.0,
        help="How far (in voxels of the extraction) a particle's centre may move (tutorial: 5 px).")
    offset_step_px: float = param(
        1.0, title="Offset search step", unit="px", hard=(0.1, 10.0), suggest=(0.5, 2.0),
        tutorial=1.0,
        help="Step of the offset search (tutorial: 1 px); finer steps follow automatically.")
    prior_tilt_width_deg: float | None = param(
        10.0, title="Prior width on tilt", unit="°", hard=(0.5, 180.0), suggest=(3.0, 30.0),
        empty_means="no prior",
        tutorial=10.0,
        help="With orientations from picking (surface models), orientations whose particle axis tilts away from "
             "the picked one by much more than this are unlikely (RELION's prior on the tilt; tutorial 10°). No "
             "effect for particles picked without orientations.")
    max_iterations: int = param(
        12, title="Maximum iterations", unit="1", hard=(1, 100), suggest=(4, 30), advanced=True,
        help="The refinement stops earlier when the resolution and the orientations stop changing.")
    seed: int = param(0, title="Random seed", unit="1", hard=(0, 2**31 - 1), advanced=True,
                      help="Seed of the random choices (half sets if the particles have none).")


class RefineFineParams(RefineParams):
    initial_lowpass_A: float = param(
        15.0, title="Initial low-pass filter", unit="Å", hard=(2.0, 500.0), suggest=(5.0, 60.0),
        tutorial=15.0,
        help="The reference (the particle reconstruction) is low-passed to this resolution first (15 Å here: "
             "the orientations are already good).")
    initial_angular_step_deg: float = param(
        0.9, title="Initial angular sampling", unit="°", hard=(0.1, 30.0), suggest=(0.5, 7.5),
        tutorial=7.5,
        tutorial_note="The tutorial repeats the first refinement's search; the poses carried over were refined "
                      "to 0.5-0.9° steps, so a local search at 0.9° (±1.8°, then around each new pose) is faster "
                      "and as good.",
        help="The poses carried over are already close (the first refinement ended at 0.5-0.9° steps): the "
             "search is local from the start, at this step, within ±2 steps of each pose.")
    prior_tilt_width_deg: float | None = param(
        None, title="Prior width on tilt", unit="°", hard=(0.5, 180.0), suggest=(3.0, 30.0),
        empty_means="no prior",
        tutorial=None,
        tutorial_note="The tutorial's last refinement uses no prior on the tilt.",
        help="No prior on the tilt at this stage (the tutorial's setting): the poses carried over are better "
             "than any picking orientation.")
    offset_range_px: float = param(
        3.0, title="Offset search range", unit="px", hard=(0.0, 50.0), suggest=(1.0, 10.0),
        tutorial=5.0,
        tutorial_note="The tutorial repeats the first refinement's range; the particles were re-centred when "
                      "re-extracted, so 3 px of the finer voxels is enough.",
        help="How far (in voxels of the finer extraction) a particle's centre may move.")


def fsc_record(res: Any) -> FSCCurve:
    """The FSC curves of a refinement / reconstruction result as an :class:`FSCCurve`."""
    f = np.asarray(res.freqs_per_A, np.float64)
    return FSCCurve(freq_per_A=f.tolist(), fsc_unmasked=np.asarray(res.fsc_unmasked).tolist(),
                    fsc_masked=np.asarray(res.fsc_masked).tolist(),
                    fsc_corrected=np.asarray(res.fsc_corrected).tolist(), resolution_A=float(res.resolution_A))


def history_line(h: dict[str, Any]) -> str:
    """One log line for an iteration's record: ``iteration 3: resolution 12.1 Å, angular step 1.8°, …``.

    Values that are not finite are not printed as "nan": the mean angle change of a global search (no earlier
    pose to compare with) reads "mean angle change — (global search)", other non-finite values are left out."""
    units = {"_A": " Å", "_deg": "°", "_px": " px", "_s": " s"}
    parts = []
    head = ""
    for k, v in h.items():
        if k == "iteration":
            head = f"iteration {v}" if not str(v).startswith("iteration") else str(v)
            continue
        unit = next((u for suf, u in units.items() if k.endswith(suf)), "")
        name = k
        for suf in units:
            if name.endswith(suf):
                name = name[: -len(suf)]
        if isinstance(v, float) and not math.isfinite(v):
            # a global search has no previous pose to compare with (the compute records NaN): say so
            if k == "mean_angle_change_deg":
                parts.append("mean angle change — (global search)")
            continue
        text = f"{v:.3g}" if isinstance(v, float) else str(v)
        parts.append(f"{name.replace('_', ' ')} {text}{unit}")
    return (head + ": " if head else "") + ", ".join(parts)


def load_reference(folder: Path, voxel_A: float, box: int, label: str) -> np.ndarray:
    """The map of an earlier averaging step, checked against the particles' voxel size and box."""
    from tomoguide.compute.io.mrc import read_mrc

    rec, base = AverageRecord.load(folder)
    if abs(rec.voxel_A - voxel_A) > 1e-3 * voxel_A or rec.box_px != box:
        raise ValueError(f"{base / rec.map}: the {label} is {rec.box_px}³ voxels of {rec.voxel_A:.3g} Å but the "
                         f"particles are {box}³ of {voxel_A:.3g} Å: run the {label} again on these particles")
    ref, _ = read_mrc(rec.path("map", base))
    return np.asarray(ref, np.float32)


def expectation_unit(folder: str, rows: np.ndarray, ref_path: str, rotations: np.ndarray, shifts_px: np.ndarray,
                     centres_px: np.ndarray, perturbations: np.ndarray, r_max: float, prior: np.ndarray | None,
                     options: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One particle batch of the refinement's expectation step (a unit of :mod:`tomoguide.cluster`): reads the
    particles ``rows`` (0-based rows of ``particles.star``) of the extraction in ``folder`` and the prepared
    reference (``.npy``, :func:`tomoguide.compute.refine.prepare_reference`) at ``ref_path``; ``rotations``
    (k, 3, 3), ``shifts_px`` (k, 3), ``centres_px`` (k, 3) and ``prior`` (k, 3) or None are the batch's rows;
    returns :func:`tomoguide.compute.refine.expectation`'s ``(rotations, shifts_px, scores)`` for the batch."""
    from tomoguide.compute.refine import centred_fft_stack, expectation
    from tomoguide.steps.extract import load_particles

    _, _, data, weights = load_particles(Path(folder), rows)
    return expectation(centred_fft_stack(np.asarray(data, np.float32)), np.ascontiguousarray(weights, np.float32),
                       np.load(ref_path), np.arange(len(rows)), rotations, shifts_px, centres_px, perturbations,
                       r_max, prior_axes=prior, **options)


#: peak memory of one expectation unit per particle and per voxel of its box (bytes), measured on the full preset: a
#: batch of 597 particles of box 36 peaked at 3.46 GB on a SLURM worker (the search keeps each particle's data at
#: every candidate shift), and Dask's nanny restarted that worker at 95 % of its 3.54 GiB
UNIT_BYTES_PER_PARTICLE_VOXEL = 124


def expectation_batch_size(n_particles: int, batches: int, box_px: int, memory_limits: list[int]) -> int:
    """Particles per expectation unit: ``n_particles`` (a half set) in ``batches`` units, in multiples of
    :data:`~tomoguide.compute.refine.EXPECTATION_BATCH`, and no more than half the smallest worker memory limit
    holds (:data:`UNIT_BYTES_PER_PARTICLE_VOXEL`; more units are then queued)."""
    from tomoguide.compute.refine import EXPECTATION_BATCH

    size = EXPECTATION_BATCH * max(1, math.ceil(n_particles / max(1, batches) / EXPECTATION_BATCH))
    if memory_limits:
        fits = int(0.5 * min(memory_limits) / (UNIT_BYTES_PER_PARTICLE_VOXEL * box_px ** 3))
        size = min(size, max(EXPECTATION_BATCH, fits // EXPECTATION_BATCH * EXPECTATION_BATCH))
    return size


def executor_search(ctx: RunContext, folder: Path) -> Callable[..., Any] | None:
    """The ``search`` of :func:`tomoguide.compute.refine.auto_refine` that sends the half sets' expectation step
    to the run's executor in batches (:func:`expectation_unit`): per half set as many as half the workers, each a
    multiple of :data:`~tomoguide.compute.refine.EXPECTATION_BATCH` particles (a global search samples the
    reference at every rotation once per batch: more batches than workers would only repeat that work). The
    references are written to ``units/`` in the run folder for the workers (removed after the step).

    Only where the workers bring more cores than this process has (a SLURM cluster, or more local worker threads
    than :func:`tomoguide.cluster.usable_cores`): on one machine the search kernels already spread over its cores
    with threads, and the units would only add their reading and Fourier transforms of the particles in every
    iteration (small demo, 2 cores: 33.5 s in place, 46.7 s on 2 single-threaded local workers). None then: the
    search runs in place, with the same results (the batches' sizes keep every particle's computation as in one
    call; single-threaded workers may differ from the threaded main process in the scores' last bits)."""
    from tomoguide.cluster import Unit, atomic_output, usable_cores

    executor = ctx.executor
    kind = getattr(executor, "kind", "inline")
    if kind == "local":
        if sum(w.threads for w in executor.workers()) <= usable_cores():
            return None
    elif kind != "slurm":
        return None
    calls = [0]

    def search(jobs: list[tuple[int, np.ndarray, np.ndarray, float]], rotations: np.ndarray, shifts_px: np.ndarray,
               centres_px: np.ndarray, perturbations: np.ndarray, r_max: float, *,
               progress: Callable[[int], None] | None = None, prior_axes: np.ndarray | None = None,
               **options: Any) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        calls[0] += 1
        units, spans, refs = [], {}, []
        for h, ref_ft, select, far_px in jobs:  # both half sets' batches at once: every worker busy
            ref_path = ctx.out_path("units", f"reference_{calls[0]:03d}_half{h}.npy", mkdir=True)
            with atomic_output(ref_path) as tmp:
                np.save(tmp, np.ascontiguousarray(ref_ft))
            refs.append(ref_path)
            sel = np.asarray(select, np.int64)
            # as few batches as keep every worker busy: a batch samples the reference at every rotation once, so
            # each extra batch repeats that part of the work (a multiple of EXPECTATION_BATCH particles)
            workers = executor.workers()
            per_half = max(1, (len(workers) or usable_cores()) // len(jobs))
            limits = [int(w.memory_limit_bytes) for w in workers if w.memory_limit_bytes]
            size = expectation_batch_size(len(sel), per_half, int(np.shape(ref_ft)[-1]) // 2, limits)
            for i, b0 in enumerate(range(0, len(sel), size)):
                rows = sel[b0:b0 + size]
                name = f"half set {h}, batch {i + 1} ({rows.size} particles)"
                spans[name] = (len(refs) - 1, b0, b0 + rows.size)
                units.append(Unit(name, (str(folder), rows, str(ref_path), np.asarray(rotations)[rows],
                                         np.asarray(shifts_px)[rows], np.asarray(centres_px)[rows], perturbations,
                                         float(r_max), None if prior_axes is None else np.asarray(prior_axes)[rows],
                                         {**options, "far_px": far_px})))
        out = [(np.empty((len(sel), 3, 3)), np.empty((len(sel), 3)), np.empty(len(sel)))
               for sel in (job[2] for job in jobs)]
        done = 0
        try:
            for name, found in executor.map_units(expectation_unit, units, cancel_event=ctx.cancel_event):
                k, a, b = spans[name]
                for dst, src in zip(out[k], found, strict=True):
                    dst[a:b] = src
                done += b - a
                if progress is not None:
                    progress(done)
        finally:
            for ref_path in refs:
                ref_path.unlink(missing_ok=True)
        return out

    return search


class Refine(Step):
    id = "refine"
    title = "3D auto-refine"
    summary = "Refine every particle's orientation and offset against two independent half maps (gold standard)."
    help = (
        "<p><b>What it does.</b> Splits the particles into two halves and refines each half on its own: every "
        "particle is compared with its half's reference in many orientations and positions, the best pose is "
        "kept, and the half maps are rebuilt. The agreement of the two half maps (the Fourier shell correlation, "
        "FSC) says up to which resolution the map is trustworthy; the resolution is where the FSC drops to "
        "0.143. The angular step is refined automatically as the resolution improves.</p>"
        "<p><b>Why.</b> Independent halves make the resolution honest: noise cannot agree between them.</p>"
        "<p><b>A good result.</b> The FSC stays near 1 at low resolution and drops close to the Nyquist limit "
        "(twice the voxel size); the map shows apoferritin's shell with its channels; the orientations cover "
        "the sphere.</p>"
        "<p><b>What to check.</b> A resolution that does not improve over the iterations (bad initial model), "
        "an FSC that never drops (the halves are not independent). How much detail to expect depends on the "
        "number of particles: a few dozen particles give about 20 Å, where apoferritin is a smooth, featureless "
        "hollow ball — that is the tiny demo's correct result (16 particles), not a wrong symmetry; its channels "
        "show from about 12 Å, helices from about 9 Å (a few hundred particles). A wrong symmetry shows as a map "
        "that looks smeared or doubled <i>at</i> a resolution that should show features.</p>"
    )
    Params = RefineParams
    inputs: tuple[str, ...] = ("extract", "initial_model")
    particles_step = "extract"
    reference_step = "initial_model"
    reference_label = "initial model"
    global_first = True

    @classmethod
    def inputs_for(cls, params: StepParams, params_of: Any = None) -> tuple[str, ...]:
        """Without the initial model when the particles were imported with their poses (extract's source)."""
        if cls.reference_step == "initial_model" and params_of is not None:
            ex = params_of(cls.particles_step)
            if getattr(ex, "source", "tilt series") == "RELION 5 particles":
                return tuple(s for s in cls.inputs if s != "initial_model")
        return cls.inputs

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, RefineParams)
        issues = symmetry_issues(params.symmetry) + prior_issues(
            params.symmetry, params.prior_tilt_width_deg, particles_have_priors(ctx, self.particles_step))
        if self.global_first and params.local_searches_from_deg > params.initial_angular_step_deg:
            issues.append(Issue("warning", "local searches start at a coarser step than the initial sampling: the "
                                           "whole refinement will be local", "local_searches_from_deg"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        from tomoguide.steps.average_records import ParticleStack
        from tomoguide.steps.extract import reconstructor_bytes

        rec, _ = ParticleStack.load(ctx.output(self.particles_step, "particles"))
        return Needs(disk_bytes=rec.box_px**3 * 4 * 5, memory_bytes=rec.n_particles * rec.box_px**3 * 8 * 3
                             + reconstructor_bytes(rec))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.refine import Poses, auto_refine
        from tomoguide.steps.extract import load_particles, load_reconstructor

        assert isinstance(params, RefineParams)
        rec, star, data, weights = load_particles(ctx.output(self.particles_step, "particles"))
        # the maps from the uncropped sub-tilts (2× oversampled, gridding-corrected) when the extraction kept them
        subtilts = load_reconstructor(ctx.output(self.particles_step, "particles"))
        df = star.particles
        halves = (df["rlnRandomSubset"].to_numpy(np.int64) if "rlnRandomSubset" in df.columns else None)
        start = None
        extra: dict[str, Any] = {}
        if not self.global_first:
            start = Poses(rotations=table_rotations(df), shifts_A=np.zeros((len(df), 3)), scores=np.zeros(len(df)))
        if self.global_first and rec.info.get("poses_given"):
            # imported with their poses: local refinement from them, the reference reconstructed from them
            from tomoguide.compute.refine import reconstruct_halves

            origin = df[["rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst"]].to_numpy(np.float64)
            start = Poses(rotations=table_rotations(df), shifts_A=-origin, scores=np.zeros(len(df)))
            given = reconstruct_halves(data, weights, start, halves, symmetry=params.symmetry, voxel_A=rec.voxel_A,
                                       mask_diameter_A=params.mask_diameter_A, seed=params.seed, subtilts=subtilts)
            ref = given.merged
            extra = {"resolution_given_poses_A": float(given.resolution_A),
                     "fsc_corrected_given_poses": [float(v) for v in given.fsc_corrected]}
            ctx.log(f"particles imported with their poses: local searches from them; reference reconstructed from "
                    f"them ({given.resolution_A:.1f} Å at FSC 0.143 with the given poses)")
        else:
            ref = load_reference(ctx.output(self.reference_step, "average"), rec.voxel_A, rec.box_px,
                                 self.reference_label)

        axes = None if params.prior_tilt_width_deg is None else prior_axes(df)
        if params.prior_tilt_width_deg is not None and axes is None:
            ctx.log("the particles carry no orientation priors (they were picked without orientations): the prior "
                    "width on tilt has no effect; every orientation of the asymmetric unit is searched alike")

        def work(progress: Callable[[float, str], None]) -> Any:
            return auto_refine(data, weights, rec.voxel_A, ref, symmetry=params.symmetry,
                               mask_diameter_A=params.mask_diameter_A, initial_lowpass_A=params.initial_lowpass_A,
                               initial_angular_step_deg=params.initial_angular_step_deg,
                               local_searches_from_deg=params.local_searches_from_deg,
                               offset_range_px=params.offset_range_px, offset_step_px=params.offset_step_px,
                               initial_poses=start, half_sets=halves, max_iterations=params.max_iterations,
                               seed=params.seed, progress=progress, prior_axes=axes,
                               prior_sigma_deg=params.prior_tilt_width_deg or 10.0, subtilts=subtilts,
                               search=search)

        # the expectation step in particle batches on the executor's workers (in place when inline)
        search = executor_search(ctx, ctx.output(self.particles_step, "particles"))
        try:
            res = yield from ctx.run_in_thread(work)
        finally:
            if (ctx.run_dir / "units").is_dir():
                import shutil

                shutil.rmtree(ctx.run_dir / "units", ignore_errors=True)
        table = poses_to_table(df, res.poses.rotations, res.poses.shifts_A, res.poses.scores, res.half_sets)
        fsc = fsc_record(res)
        folder = write_average(ctx.run_dir, voxel_A=rec.voxel_A, symmetry=params.symmetry, merged=res.merged,
                               half1=res.half1, half2=res.half2, mask=res.mask, fsc=fsc, particles=table,
                               optics=star.optics, history=res.history, info={"step": self.id})
        nyq = 2 * rec.voxel_A
        for h in res.history:
            ctx.log(history_line(h))
        return StepResult(outputs={"average": folder},
                          metrics={"resolution_A": float(res.resolution_A), "nyquist_A": nyq,
                                   "resolution_over_nyquist": float(res.resolution_A) / nyq,
                                   "iterations": len(res.history), "n_particles": int(len(table)),
                                   "voxel_A": rec.voxel_A, **extra},
                          summary=f"{res.resolution_A:.1f} Å (FSC 0.143; Nyquist {nyq:.1f} Å) from {len(table)} "
                                  "particles")


class RefineFine(Refine):
    id = "refine_fine"
    title = "Refine at the finer binning"
    summary = "A second gold-standard refinement on the finer re-extraction, starting from its poses."
    help = (
        "<p><b>What it does.</b> The same gold-standard refinement as before, on the particles re-extracted with "
        "smaller voxels, starting from their refined poses with local searches and the particle reconstruction "
        "as the reference (low-passed to 15 Å).</p>"
        "<p><b>Why.</b> With finer voxels the Nyquist limit is lower: the orientations can be refined further and "
        "the map can show finer detail.</p>"
        "<p><b>A good result.</b> The resolution approaches the new Nyquist limit (twice the voxel size); "
        "secondary structure (apoferritin's α-helices) starts to show.</p>"
        "<p><b>What to check.</b> A resolution worse than the earlier refinement (poses lost: check the "
        "re-extraction's centring).</p>"
    )
    Params = RefineFineParams
    inputs = ("extract_fine", "reconstruct_particle")
    particles_step = "extract_fine"
    reference_step = "reconstruct_particle"
    reference_label = "particle reconstruction"
    global_first = False
