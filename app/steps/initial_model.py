"""Step 14, ``initial_model``: a reference-free 3D starting map from the pseudo-subtomograms (RELION's VDAM idea).

Mini-batches of particles are aligned to the current model (a search over all orientations of the symmetry's
asymmetric unit and over offsets), reconstructed with the poses found, and the model takes a gradient-like step
towards that reconstruction; the resolution used grows and the step shrinks over the batches
(:func:`tomoguide.compute.initial_model.initial_model`). The pseudo-subtomograms are 3D, so the hand of the model
is defined by the data (no mirror ambiguity as in single-particle 2D). Output ``average``
(:class:`~tomoguide.steps.average_records.AverageRecord`: the map and the particles' poses; no half maps).

The independent random starts are the step's units (:func:`start_unit`, one per start, on the run's executor: on
two local workers two starts at once); each runs on one CPU thread wherever it runs, so the model is the same bit
for bit inline, on local workers and on SLURM (threads would only change the order of the sums: measured on the
small demo, 21.5 s for the three starts on one thread, 24.8 s on two).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.steps.average_records import poses_to_table, prior_axes, write_average
from tomoguide.steps.base import Issue, Needs, RunContext, Step, StepParams, StepResult, StepRun, param


#: independent random starts of the initial model (the best of them is kept; see the compute module)
N_STARTS = 3


def start_unit(folder: str, start: int, axes: np.ndarray | None, options: dict[str, Any]) -> Any:
    """One random start of the initial model (a unit of :mod:`tomoguide.cluster`): reads the particles (and their
    sub-tilts) of the extraction in ``folder`` and returns
    :func:`tomoguide.compute.initial_model.initial_model_start`'s :class:`StartResult` for start ``start`` (seed
    ``options["seed"] + start``), on one CPU thread."""
    from tomoguide.compute.backend import cpu_threads
    from tomoguide.compute.initial_model import initial_model_start
    from tomoguide.steps.extract import load_particles, load_reconstructor

    rec, _, data, weights = load_particles(Path(folder))
    subtilts = load_reconstructor(Path(folder))
    with cpu_threads(1):
        return initial_model_start(data, weights, rec.voxel_A, start=int(start), prior_axes=axes,
                                   subtilts=subtilts, **options)


def particles_have_priors(ctx: RunContext, step_id: str) -> bool:
    """Whether the particles extracted by ``step_id`` (done) carry orientation priors from picking."""
    from tomoguide.compute.io.star import read_particles_star
    from tomoguide.steps.average_records import ParticleStack, prior_axes

    try:
        rec, base = ParticleStack.load(ctx.output(step_id, "particles"))
        return prior_axes(read_particles_star(rec.path("star", base)).particles) is not None
    except (KeyError, OSError, ValueError):
        return False


def prior_issues(symmetry: str, width_deg: float | None, has_priors: bool) -> list[Issue]:
    """A warning when a prior on the tilt is used with a point group whose reference z axis is not unique
    (T, O, I: the prior then favours one of several equivalent axes)."""
    if has_priors and width_deg is not None and symmetry.strip().upper()[:1] in ("T", "O", "I"):
        return [Issue("warning", f"a prior on the tilt assumes one particle axis (Cn, Dn); with {symmetry} it "
                                 "favours one of several equivalent axes: consider leaving it empty",
                      "prior_tilt_width_deg")]
    return []


def symmetry_issues(symmetry: str, field: str = "symmetry") -> list[Issue]:
    """An error when the symmetry group's name is not understood (C_n, D_n, T, O, I)."""
    from tomoguide.compute.symmetry import symmetry_matrices

    try:
        symmetry_matrices(symmetry)
    except (ValueError, KeyError) as exc:
        return [Issue("error", f"symmetry {symmetry!r}: {exc}; use C1, Cn, Dn, T, O or I", field)]
    return []


class InitialModelParams(StepParams):
    n_minibatches: int = param(
        40, title="Mini-batches", unit="1", hard=(1, 1000), suggest=(10, 200),
        tutorial=40,
        tutorial_note="40 for the tutorial's small data set, 70 for the large one.",
        help="Number of mini-batches of the stochastic gradient descent (tutorial: 40 for a small data set, 70 "
             "for a large one). More = slower, more robust.")
    regularisation: float = param(
        4.0, title="Regularisation parameter", unit="1", hard=(0.1, 100.0), suggest=(1.0, 10.0),
        tutorial=4.0,
        help="RELION's T: how much the data are trusted relative to the smoothness prior (tutorial: 4). Higher = "
             "more detail and more noise.")
    mask_diameter_A: float = param(
        150.0, title="Mask diameter", unit="Å", hard=(10.0, 5000.0), suggest=(50.0, 1000.0),
        help="Diameter of the soft spherical mask around the particle (apoferritin: 150 Å; the seed tutorial's "
             "350 Å is for its own sample).")
    symmetry: str = param(
        "O", title="Symmetry",
        help="Point-group symmetry imposed on the model: C1 (none), Cn, Dn, T, O (apoferritin: octahedral) or I.")
    prior_tilt_width_deg: float | None = param(
        10.0, title="Prior width on tilt", unit="°", hard=(0.5, 180.0), suggest=(3.0, 30.0),
        empty_means="no prior",
        tutorial=10.0,
        help="When the particles carry orientations from picking (surface models: the membrane's normal), "
             "orientations whose particle axis tilts away from it by much more than this are unlikely (RELION's "
             "prior on the tilt; tutorial 10°). Particles picked without orientations (template matching with a "
             "sphere, imports without angles) have no prior and this has no effect.")
    angular_step_deg: float = param(
        15.0, title="Coarsest angular step", unit="°", hard=(1.0, 45.0), suggest=(5.0, 30.0), advanced=True,
        help="Orientation sampling of the first mini-batches (finer later).")
    seed: int = param(0, title="Random seed", unit="1", hard=(0, 2**31 - 1), advanced=True,
                      help="Seed of the random start and the mini-batch order.")


class InitialModel(Step):
    id = "initial_model"
    title = "Initial model"
    summary = "Build a first 3D map of the particle from the data alone (stochastic gradient descent)."
    help = (
        "<p><b>What it does.</b> Starts from a featureless blob and improves it batch by batch: each small batch "
        "of particles is aligned to the current map in all orientations, averaged, and the map moves a step "
        "towards that average. The symmetry (apoferritin: octahedral, O) is imposed.</p>"
        "<p><b>Why.</b> Refinement needs a starting reference; making it from the data avoids bias from an "
        "external model.</p>"
        "<p><b>A good result.</b> A hollow sphere (apoferritin's 24-subunit shell) with visible 4-fold and 3-fold "
        "channels, about 120 Å across.</p>"
        "<p><b>What to check.</b> A map full of spikes (regularisation too high), a map larger than the mask, a "
        "solid ball instead of a hollow shell. A smooth shell without channels is expected from few particles: "
        "the tiny demo's 16 particles give about 20 Å, where apoferritin shows no features (the refinement "
        "cannot add what the particles do not hold).</p>"
    )
    Params = InitialModelParams
    inputs = ("extract",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, InitialModelParams)
        return symmetry_issues(params.symmetry) + prior_issues(params.symmetry, params.prior_tilt_width_deg,
                                                               particles_have_priors(ctx, "extract"))

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        from tomoguide.steps.average_records import ParticleStack
        from tomoguide.steps.extract import reconstructor_bytes

        rec, _ = ParticleStack.load(ctx.output("extract", "particles"))
        return Needs(disk_bytes=rec.box_px**3 * 4 * 2, memory_bytes=rec.n_particles * rec.box_px**3 * 8 * 3
                             + reconstructor_bytes(rec))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit
        from tomoguide.compute.initial_model import best_start
        from tomoguide.compute.io.star import read_particles_star
        from tomoguide.steps.average_records import ParticleStack

        assert isinstance(params, InitialModelParams)
        folder = ctx.output("extract", "particles")
        rec, base = ParticleStack.load(folder)
        star = read_particles_star(rec.path("star", base))
        axes = None if params.prior_tilt_width_deg is None else prior_axes(star.particles)
        if params.prior_tilt_width_deg is not None and axes is None:
            ctx.log("the particles carry no orientation priors (they were picked without orientations): the prior "
                    "width on tilt has no effect; every orientation of the asymmetric unit is searched alike")
        options = {"symmetry": params.symmetry, "n_minibatches": params.n_minibatches,
                   "regularisation": params.regularisation, "mask_diameter_A": params.mask_diameter_A,
                   "angular_step_deg": params.angular_step_deg, "seed": params.seed,
                   "prior_sigma_deg": params.prior_tilt_width_deg or 10.0}
        units = [Unit(f"start {k + 1} of {N_STARTS}", (str(folder), k, axes, options)) for k in range(N_STARTS)]
        found = yield from ctx.map_units(start_unit, units, what="random starts")
        starts = [found[u.name] for u in units]
        for k, st in enumerate(starts, start=1):
            ctx.log(f"start {k}: mean score of the final alignment {st.mean_score:.4g}")
        res = best_start(starts, rec.voxel_A)
        poses = res.poses
        table = poses_to_table(star.particles, poses.rotations, poses.shifts_A, poses.scores)
        from tomoguide.compute.fsc import soft_sphere_mask

        mask = soft_sphere_mask(rec.box_px, 0.5 * params.mask_diameter_A / rec.voxel_A, 3.0)
        folder = write_average(ctx.run_dir, voxel_A=rec.voxel_A, symmetry=params.symmetry, merged=res.map,
                               particles=table, optics=star.optics, mask=mask, history=res.history,
                               info={"step": self.id})
        return StepResult(outputs={"average": folder},
                          metrics={"n_particles": int(len(table)), "voxel_A": rec.voxel_A,
                                   "box_px": rec.box_px, "n_minibatches": params.n_minibatches,
                                   "map_std": float(np.std(res.map))},
                          summary=f"initial model from {len(table)} particles ({params.symmetry})")
