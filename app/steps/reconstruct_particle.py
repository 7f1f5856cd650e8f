"""Step 17, ``reconstruct_particle``: the average of the re-extracted particles from their poses, no search.

Each half set's sub-tilts (before the crop, when the extraction kept them; else its 3D pseudo-subtomograms) are
inserted in the reference frame with their poses on a 2× oversampled Fourier grid, summed with their CTF² weights,
symmetrised, corrected for the gridding bias and divided by the summed weights plus a Wiener term (``1 / SNR``), the
map divided by the interpolation kernel's transform (:func:`tomoguide.compute.refine.reconstruct_halves`,
:class:`tomoguide.compute.sta.Reconstructor`); the half maps give the FSC and the resolution. Output
``average`` (:class:`~tomoguide.steps.average_records.AverageRecord`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from tomoguide.steps.average_records import poses_to_table, table_rotations, write_average
from tomoguide.steps.base import Issue, Needs, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.initial_model import symmetry_issues
from tomoguide.steps.refine import fsc_record


class ReconstructParticleParams(StepParams):
    symmetry: str = param(
        "O", title="Symmetry",
        help="Point-group symmetry imposed on the reconstruction (apoferritin: O).")
    mask_diameter_A: float = param(
        150.0, title="Mask diameter", unit="Å", hard=(10.0, 5000.0), suggest=(50.0, 1000.0),
        help="Diameter of the soft spherical mask used for the FSC between the half maps.")
    wiener_snr: float | None = param(
        None, title="Wiener filter SNR", unit="1", hard=(1e-3, 1e6), empty_means="from the FSC",
        help="Signal-to-noise ratio per unit of CTF² weight: 1/SNR is added to the summed CTF² weights before "
             "dividing (larger = less regularisation, more noise where few particles contribute). Empty: 1 % of "
             "the mean summed weight. The merged map is then weighted by the FSC between the halves.")


class ReconstructParticle(Step):
    id = "reconstruct_particle"
    title = "Reconstruct the particle"
    summary = "Average the re-extracted particles with their refined poses (no search), with symmetry."
    help = (
        "<p><b>What it does.</b> Puts every particle back into the reference frame with the orientation found by "
        "the refinement, sums them with their CTF weights, imposes the symmetry, and divides by the summed "
        "weights (a Wiener filter keeps frequencies with little signal from blowing up). Both half sets are "
        "reconstructed and compared (FSC).</p>"
        "<p><b>Why.</b> It checks that the poses carried over to the finer extraction are right and gives the "
        "reference for the last refinement.</p>"
        "<p><b>A good result.</b> A resolution at least as good as the refinement's at the coarser binning.</p>"
        "<p><b>What to check.</b> A blurred map (poses or centring lost at re-extraction).</p>"
    )
    Params = ReconstructParticleParams
    inputs = ("extract_fine",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ReconstructParticleParams)
        return symmetry_issues(params.symmetry)

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        from tomoguide.steps.average_records import ParticleStack
        from tomoguide.steps.extract import reconstructor_bytes

        rec, _ = ParticleStack.load(ctx.output("extract_fine", "particles"))
        return Needs(disk_bytes=rec.box_px**3 * 4 * 5, memory_bytes=rec.n_particles * rec.box_px**3 * 8 * 2
                             + reconstructor_bytes(rec))

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.io.star import read_particles_star
        from tomoguide.compute.refine import Poses, reconstruct_halves
        from tomoguide.steps.average_records import ParticleStack
        from tomoguide.steps.extract import load_particles, load_reconstructor

        assert isinstance(params, ReconstructParticleParams)
        folder = ctx.output("extract_fine", "particles")
        # from the uncropped sub-tilts when the extraction kept them (the 3D data are then not needed)
        subtilts = load_reconstructor(folder)
        if subtilts is None:
            rec, star, data, weights = load_particles(folder)
        else:
            rec, base = ParticleStack.load(folder)
            star = read_particles_star(rec.path("star", base))
            data = weights = None
        df = star.particles
        if "rlnRandomSubset" not in df.columns:
            raise ValueError("the particles have no half sets (rlnRandomSubset): extract them from a refinement")
        halves = df["rlnRandomSubset"].to_numpy(np.int64)
        poses = Poses(rotations=table_rotations(df), shifts_A=np.zeros((len(df), 3)), scores=np.zeros(len(df)))

        def work(progress: Callable[[float, str], None]) -> Any:
            progress(0.0, f"reconstructing two half maps from {len(df)} particles")
            return reconstruct_halves(data, weights, poses, halves, symmetry=params.symmetry, voxel_A=rec.voxel_A,
                                      mask_diameter_A=params.mask_diameter_A,
                                      wiener_constant=None if params.wiener_snr is None else 1.0 / params.wiener_snr,
                                      subtilts=subtilts)

        res = yield from ctx.run_in_thread(work)
        table = poses_to_table(df, poses.rotations, poses.shifts_A, None, halves)
        folder = write_average(ctx.run_dir, voxel_A=rec.voxel_A, symmetry=params.symmetry, merged=res.merged,
                               half1=res.half1, half2=res.half2, mask=res.mask, fsc=fsc_record(res),
                               particles=table, optics=star.optics, info={"step": self.id})
        nyq = 2 * rec.voxel_A
        return StepResult(outputs={"average": folder},
                          metrics={"resolution_A": float(res.resolution_A), "nyquist_A": nyq,
                                   "resolution_over_nyquist": float(res.resolution_A) / nyq,
                                   "n_particles": int(len(table)), "voxel_A": rec.voxel_A},
                          summary=f"{res.resolution_A:.1f} Å (FSC 0.143; Nyquist {nyq:.1f} Å)")
