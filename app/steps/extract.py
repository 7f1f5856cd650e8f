"""Steps 13 and 16, ``extract`` and ``extract_fine``: RELION-style pseudo-subtomograms of every particle.

For each particle and each non-excluded view of its (unflipped, motion-corrected) tilt series, the particle's
projected position is cropped from the view binned to the chosen binning (``box_px``, big enough for the CTF's
delocalisation), multiplied by its CTF at the particle's own defocus (height-aware: the defocus gradient of the
tilted specimen) and by the exposure filter of the view's dose, and cut to ``crop_px``
(:func:`tomoguide.compute.sta.extract_subtilts`). The 2D sub-tilts are either kept ("2D") or inserted as central
slices into the particle's 3D Fourier transform with their ``CTF² · dose²`` weights ("3D"; the weights show the
missing wedge). Output ``particles`` (:class:`~tomoguide.steps.average_records.ParticleStack`): the MRC files,
``particles.star`` (RELION 5), ``gallery.mrc``.

``extract`` takes the picks (``pick``); ``extract_fine`` takes the refined particles of ``refine`` (poses and
offsets; the offsets are applied to the coordinates, RELION's re-centring) at a finer binning.
Conventions: positions in Å from the tomogram centre (``rlnCenteredCoordinate*Angst``); RELION's origin offsets
``rlnOriginX/Y/ZAngst`` are *subtracted* from the coordinates (particle centre = coordinate − origin); orientations
RELION ZYZ (``x_tomogram = R x_reference + t`` with ``t = −origin``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from tomoguide.steps.average_records import ParticleStack
from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesSet

XYZ = ("rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst", "rlnCenteredCoordinateZAngst")
ORIGIN = ("rlnOriginXAngst", "rlnOriginYAngst", "rlnOriginZAngst")
ANGLES = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")


class ExtractParams(StepParams):
    binning: float = param(
        6.0, title="Binning", unit="×", hard=(1.0, 32.0), suggest=(1.0, 12.0),
        help="Binning of the tilt images the particles are cut from, relative to the full-size series (tutorial: "
             "6 for the first extraction, 2 for the finer one). Voxel size = binning × pixel size.")
    box_px: int = param(
        32, title="Box size", unit="px", hard=(8, 512), suggest=(16, 256),
        help="Size of the square cut from each tilt image before the CTF is applied. It must hold the particle "
             "plus the CTF's delocalisation (signal spread by defocus), so larger than the final box "
             "(tutorial: 128, cropped to 64).")
    crop_px: int = param(
        24, title="Cropped box size", unit="px", hard=(8, 512), suggest=(16, 256),
        help="Final box after the CTF has been applied: the particle (apoferritin: 130 Å across) with a margin. "
             "The averaging steps work in this box.")
    dimensionality: Literal["3D", "2D"] = param(
        "3D", title="Output", choices=["3D", "2D"], widget="choice",
        help="'3D': each particle's sub-tilts inserted into a 3D pseudo-subtomogram with its CTF² weight volume "
             "(what the initial model and refinement use). '2D': keep the stack of sub-tilts (RELION 5's 2D "
             "option; converted to 3D when a later step reads them).")
    dose_weighting: bool = param(
        True, title="Dose weighting",
        help="Weight every sub-tilt by the exposure filter of its accumulated dose: later tilts (more radiation "
             "damage) contribute less at high resolution.")
    ctf_premultiply: bool = param(
        True, title="Multiply by the CTF",
        help="Multiply every sub-tilt by its CTF at the particle's own defocus (RELION's way; the average divides "
             "by the summed CTF² afterwards). Off only to look at raw crops.")
    seed: int = param(0, title="Random seed (half sets)", unit="1", hard=(0, 2**31 - 1), advanced=True,
                      help="Seed of the random split of the particles into two half sets (gold standard).")


class ExtractFineParams(ExtractParams):
    binning: float = param(
        2.0, title="Binning", unit="×", hard=(1.0, 32.0), suggest=(1.0, 12.0),
        help="Binning of the finer extraction (tutorial: 2). Must be finer than the first extraction's.")
    box_px: int = param(
        96, title="Box size", unit="px", hard=(8, 512), suggest=(16, 256),
        help="Size of the square cut from each tilt image before the CTF is applied (tutorial: 256 at bin 2 of "
             "its data). It must hold the particle plus the CTF's delocalisation: about 100 Å each side at 4 µm "
             "defocus and 8 Å resolution.")
    crop_px: int = param(
        64, title="Cropped box size", unit="px", hard=(8, 512), suggest=(16, 256),
        help="Final box after the CTF has been applied (tutorial: 128): the particle with a margin.")


def _centred_positions(df: pd.DataFrame) -> np.ndarray:
    """Particle centres (m, 3) in Å from the tomogram centre: coordinates minus RELION's origin offsets."""
    pos = df[list(XYZ)].to_numpy(np.float64)
    if all(c in df.columns for c in ORIGIN):
        pos = pos - df[list(ORIGIN)].to_numpy(np.float64)
    return pos


def _gallery(data: np.ndarray) -> np.ndarray:
    """(m, B, B) thumbnails: each pseudo-subtomogram averaged over its central quarter-box slab along z."""
    b = data.shape[-1]
    q = max(1, b // 4)
    return data[:, b // 2 - q:b // 2 + q].mean(axis=1).astype(np.float32)


def load_particles(folder: Path) -> tuple[ParticleStack, Any, np.ndarray, np.ndarray]:
    """Read an extraction's output: ``(record, star, data (m, B, B, B), weights (m, B, B, B))``.

    ``star`` a :class:`~tomoguide.compute.io.star.ParticlesStar` (``.particles`` table, ``.optics``).

    ``data`` real-space pseudo-subtomograms (float32, centre B // 2), ``weights`` centred Fourier CTF² weights.
    A 2D extraction's sub-tilts are inserted into 3D here (same result as a 3D extraction).
    """
    from tomoguide.compute import sta
    from tomoguide.compute.io.mrc import read_mrc
    from tomoguide.compute.io.star import read_particles_star

    rec, base = ParticleStack.load(folder)
    ps = read_particles_star(base / rec.star)
    df = ps.particles
    m, b = len(df), rec.box_px
    data = np.empty((m, b, b, b), np.float32)
    weights = np.empty((m, b, b, b), np.float32)
    mats = {k: np.asarray(v, np.float64) for k, v in rec.info.get("view_matrices", {}).items()}
    for i, row in enumerate(df.itertuples(index=False)):
        d, _ = read_mrc(base / str(row.rlnImageName))
        w, _ = read_mrc(base / str(row.rlnCtfImage))
        if rec.dimensionality == 2:
            vm = mats[str(row.rlnTomoName)][np.asarray(rec.info["views_used"][str(row.rlnTomoName)])]
            d3, w3 = sta.backproject_subtomogram(np.asarray(d, np.float32), np.asarray(w, np.float32), vm)
            data[i], weights[i] = d3, w3
        else:
            data[i], weights[i] = d, w
    return rec, ps, data, weights


class Extract(Step):
    id = "extract"
    title = "Extract pseudo-subtomograms"
    summary = "Cut every particle from every tilt image, multiply by its CTF, and build its pseudo-subtomogram."
    help = (
        "<p><b>What it does.</b> For every particle, the small square around its projected position is cut from "
        "each tilt image (not from the tomogram: the tilt images are sharper), multiplied by the CTF at the "
        "particle's own height in the specimen and weighted by the dose the view had received. These sub-tilts "
        "are then assembled in Fourier space into a 3D <i>pseudo-subtomogram</i>, together with a weight volume "
        "that records how much signal every 3D frequency got (zero in the missing wedge).</p>"
        "<p><b>Why.</b> Averaging needs each particle's data together with its CTF and missing wedge, so that the "
        "average can divide by the summed weights and fill the wedge from particles in other orientations.</p>"
        "<p><b>A good result.</b> The gallery shows ring-like particles (apoferritin's shell) at the centre of "
        "every box; the weight volume's XZ slice shows the double cone of the missing wedge.</p>"
        "<p><b>What to check.</b> Empty or off-centre boxes (wrong picks or a wrong binning), particles cut by the "
        "box (increase the cropped box).</p>"
    )
    Params = ExtractParams
    inputs: tuple[str, ...] = ("exclude", "pick")
    particles_from: tuple[str, str] = ("pick", "particles")

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ExtractParams)
        issues = []
        if params.crop_px > params.box_px:
            issues.append(Issue("error", "the cropped box must not be larger than the box", "crop_px"))
        if params.crop_px % 2 or params.box_px % 2:
            issues.append(Issue("error", "box sizes must be even", "crop_px" if params.crop_px % 2 else "box_px"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        assert isinstance(params, ExtractParams)
        try:
            n = len(self._particles(ctx))
        except (KeyError, OSError):
            n = 1000
        per = params.crop_px**3 * 8
        return Needs(disk_bytes=n * per, memory_bytes=n * per + 2_000_000_000)

    def _particles(self, ctx: RunContext) -> pd.DataFrame:
        from tomoguide.compute.io.star import read_particles_star

        step, name = self.particles_from
        return read_particles_star(ctx.output(step, name)).particles

    def _prepare(self, df: pd.DataFrame, params: ExtractParams) -> pd.DataFrame:
        """The particles to extract, with ``rlnRandomSubset`` (1/2) assigned at random when absent."""
        out = df.reset_index(drop=True).copy()
        if "rlnRandomSubset" not in out.columns:
            rng = np.random.default_rng(params.seed)
            subset = np.ones(len(out), np.int64)
            subset[rng.permutation(len(out))[len(out) // 2:]] = 2
            out["rlnRandomSubset"] = subset
        for c in ORIGIN:
            if c not in out.columns:
                out[c] = 0.0
        # orientations from picking (surface normals, template matching) become RELION's priors on tilt and psi
        if all(c in out.columns for c in ANGLES) and "rlnAngleTiltPrior" not in out.columns:
            out["rlnAngleTiltPrior"] = out["rlnAngleTilt"]
            out["rlnAnglePsiPrior"] = out["rlnAnglePsi"]
        return out

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute import sta
        from tomoguide.compute.io.mrc import read_mrc, write_mrc
        from tomoguide.compute.io.star import read_ctf_star, write_particles_star
        from tomoguide.compute.rescale import fourier_bin

        assert isinstance(params, ExtractParams)
        sset, base = SeriesSet.load(ctx.output("exclude", "series"))
        df = self._prepare(self._particles(ctx), params)
        known = set(sset.names())
        unknown = sorted(set(df["rlnTomoName"].astype(str)) - known)
        if unknown:
            raise ValueError(f"particles of unknown tilt series {', '.join(unknown)} (series: {', '.join(known)})")
        (ctx.run_dir / "subtomos").mkdir(parents=True, exist_ok=True)
        m_total = len(df)
        b = params.crop_px
        gallery = np.zeros((m_total, b, b), np.float32)
        image_names = [""] * m_total
        ctf_names = [""] * m_total
        particle_names = [""] * m_total
        view_mats: dict[str, list[Any]] = {}
        views_used: dict[str, list[int]] = {}
        metrics: dict[str, Any] = {"series": {}}
        voxel = None
        done = 0
        for s in sset.series:
            rows = np.flatnonzero(df["rlnTomoName"].astype(str).to_numpy() == s.name)
            if rows.size == 0:
                continue
            ctx.check_cancel()
            yield Progress(done / max(m_total, 1), f"{s.name}: binning the tilt images by {params.binning:g}")
            stack, _ = read_mrc(s.path("stack", base))
            g0 = s.geometry
            factor = params.binning / g0.binning
            if factor < 1 - 1e-6:
                raise ValueError(f"{s.name}: the series is already binned by {g0.binning:g}; cannot extract at "
                                 f"binning {params.binning:g}")
            st = np.asarray(stack, np.float32)
            if abs(factor - 1) > 1e-6:
                st = fourier_bin(st, factor)
            g = g0.at_binning(params.binning)
            if tuple(g.image_shape_px) != st.shape[1:]:
                g = g.model_validate({**g.model_dump(), "image_shape_px": list(st.shape[1:])})
            voxel = float(g.pixel_size_binned_A)
            ctf = None
            if params.ctf_premultiply:
                ctf = sta.ViewCTF.from_star(read_ctf_star(s.path("ctf_star", base)))
            pos = _centred_positions(df.iloc[rows])
            view_mats[s.name] = g.projection_matrices()[:, :, :3].tolist()
            chunk = 16
            for a in range(0, rows.size, chunk):
                ctx.check_cancel()
                idx = rows[a:a + chunk]
                sub = sta.extract_subtilts(st, g, pos[a:a + chunk], box_px=params.box_px, crop_px=params.crop_px,
                                           ctf=ctf, dose_weighting=params.dose_weighting)
                views_used[s.name] = [int(v) for v in sub.views]
                for j, i in enumerate(idx):
                    pname = f"{s.name}_{i + 1:06d}"
                    particle_names[i] = f"{s.name}/{i + 1}"
                    d3, w3 = sta.backproject_subtomogram(sub.images[j], sub.weights[j], sub.view_matrices)
                    gallery[i] = _gallery(d3[None])[0]
                    three_d = params.dimensionality == "3D"
                    image_names[i] = f"subtomos/{pname}_{'data' if three_d else 'subtilts'}.mrc"
                    ctf_names[i] = f"subtomos/{pname}_weights.mrc"
                    write_mrc(ctx.run_dir / image_names[i], d3 if three_d else sub.images[j], voxel,
                              is_stack=not three_d)
                    write_mrc(ctx.run_dir / ctf_names[i], (w3 if three_d else sub.weights[j]).astype(np.float16),
                              voxel, is_stack=not three_d)
                done += idx.size
                yield Progress(done / m_total, f"{s.name}: {done}/{m_total} particles extracted")
            metrics["series"][s.name] = {"n_particles": int(rows.size), "views_used": len(views_used[s.name])}
            del st, stack
        if voxel is None:
            raise ValueError("no particle belongs to any of the tilt series")
        out = df.copy()
        out["rlnTomoParticleName"] = particle_names
        out["rlnImageName"] = image_names
        out["rlnCtfImage"] = ctf_names
        g_any = sset.series[0].geometry
        optics = {"rlnTomoTiltSeriesPixelSize": g_any.pixel_size_A, "rlnImagePixelSize": voxel,
                  "rlnImageSize": b, "rlnImageDimensionality": 3 if params.dimensionality == "3D" else 2,
                  "rlnVoltage": g_any.optics.voltage_kV, "rlnSphericalAberration": g_any.optics.cs_mm,
                  "rlnAmplitudeContrast": g_any.optics.amplitude_contrast}
        write_particles_star(ctx.run_dir / "particles.star", out, optics)
        write_mrc(ctx.run_dir / "gallery.mrc", gallery, voxel, is_stack=True)
        rec = ParticleStack(voxel_A=voxel, box_px=b, binning=params.binning, n_particles=m_total,
                            tomo_names=[n for n in sset.names() if n in views_used],
                            dimensionality=3 if params.dimensionality == "3D" else 2,
                            info={"view_matrices": view_mats, "views_used": views_used,
                                  "box_before_crop_px": params.box_px})
        path = rec.save(ctx.run_dir)
        metrics.update({"n_particles": m_total, "voxel_A": voxel, "box_px": b,
                        "half_sets": [int((out["rlnRandomSubset"] == k).sum()) for k in (1, 2)]})
        return StepResult(outputs={"particles": path.parent}, metrics=metrics,
                          summary=f"{m_total} particles, {b}³ voxels of {voxel:.3g} Å")


class ExtractFine(Extract):
    id = "extract_fine"
    title = "Re-extract at a finer binning"
    summary = "Extract the refined particles again from less binned tilt images, keeping their poses."
    help = (
        "<p><b>What it does.</b> The same extraction as before, at a finer binning (smaller voxels), from the "
        "refined particles: their positions are corrected by the refined offsets (re-centred) and their "
        "orientations and half sets are kept.</p>"
        "<p><b>Why.</b> The resolution of an average cannot go beyond twice its voxel size (Nyquist). Once the "
        "orientations are known from the fast, binned data, finer voxels let the refinement go further.</p>"
        "<p><b>A good result.</b> The gallery shows sharper, centred particles.</p>"
        "<p><b>What to check.</b> Particles off-centre (the earlier refinement did not converge).</p>"
    )
    Params = ExtractFineParams
    inputs = ("exclude", "refine")
    particles_from = ("refine", "average")

    def _particles(self, ctx: RunContext) -> pd.DataFrame:
        from tomoguide.compute.io.star import read_particles_star
        from tomoguide.steps.average_records import AverageRecord

        rec, base = AverageRecord.load(ctx.output("refine", "average"))
        return read_particles_star(base / rec.particles).particles

    def _prepare(self, df: pd.DataFrame, params: ExtractParams) -> pd.DataFrame:
        """Re-centre: coordinates minus the refined origin offsets, offsets set to 0; poses and halves kept."""
        out = df.reset_index(drop=True).copy()
        pos = _centred_positions(out)
        for k, c in enumerate(XYZ):
            out[c] = pos[:, k]
        for c in ORIGIN:
            out[c] = 0.0
        keep = [c for c in out.columns if c not in ("rlnImageName", "rlnCtfImage", "rlnTomoParticleName")]
        return super()._prepare(out[keep], params)
