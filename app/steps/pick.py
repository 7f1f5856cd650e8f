"""Step 12, ``pick``: particle coordinates in the tomograms, automatically or imported.

Methods (one particle table whatever the source):

* ``template``: template matching (:func:`tomoguide.compute.pick.template_match`: local normalised cross-
  correlation) with a shell of apoferritin's size or a reference map over symmetry-reduced rotations (the template
  given the series' missing wedge; every size in Å, so it scales with the voxel), peak picking with a minimum
  distance inside the specimen slab found along z (:func:`tomoguide.compute.pick.find_specimen_slab`), and a score
  threshold: a value, or automatic from a noise model of the peak scores
  (:func:`tomoguide.compute.pick.automatic_threshold`: a Gaussian fitted to the noise peaks, the score above which
  ``expected_false_picks`` noise peaks are expected, raised into the gap below a well-separated particle
  population). The log gives, per tomogram, the region searched, the threshold and how it was chosen, the noise
  model's parameters, the number of peaks above the threshold and the highest score. A run that would end with no
  particle, or (automatic threshold) with far fewer than the peaks that rise above the noise
  (:func:`sanity_check`), fails with a message naming the threshold, the highest score and what to change.
* ``import``: a RELION 5 particles.star, a Scipion coordinates sqlite (the tutorial's), an IMOD point model (.mod)
  or a plain text file (x y z [rot tilt psi]); coordinates in voxels of the given pixel size are rescaled to the
  tomograms.
* ``surface`` (surface-model picking, as the tutorial does with Dynamo): points clicked on an object's outline (a
  vesicle, a membrane) on a few slices of the tomogram (``surface_points``: rows ``[tomogram, x_A, y_A, z_A,
  model]``), one ellipsoid per (tomogram, model) fitted by least squares (a sphere for few points or when a sphere
  fits as well, :func:`tomoguide.compute.surface.fit_ellipsoid`), particles sampled on its surface
  ``surface_spacing_A`` apart, oriented along the outward normal (RELION angles with ``A · z = normal``; the spin
  about the normal, ``rot``, random with a fixed seed or 0), within the clicked z range or on the whole surface,
  and inside the tomogram.
* ``manual``: particles clicked in the slices (``manual_points``: rows ``[tomogram, x_A, y_A, z_A]``), no angles.

Clicked points are stored in the parameters (not shown in the form; the page's preview edits them), so the
project file records them, in Å from the tomogram centre: ``x_A = (x_px − (nx − 1) / 2) · voxel_A`` (the frame of
rlnCenteredCoordinate*Angst here, :func:`centre_shapes`), nearly independent of the tomograms' binning.

Output ``particles``: ``particles.star`` (RELION 5: rlnTomoName, rlnCenteredCoordinateX/Y/ZAngst from the tomogram
centre, angles when known, rlnAutopickFigureOfMerit for template matching), and per tomogram the score histogram
and the score volume's peaks (for the page). Surface picking adds the fitted models to the metrics (``models``:
tomogram, model, kind, centre_A, axes_A, rotation, rms_A, n_points, n_particles).
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import model_validator

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesSet


METHODS = ("template", "import", "surface", "manual")
#: a surface-point row: tomogram name, x, y, z (Å from the tomogram centre), model number
SurfaceRow = tuple[str, float, float, float, int]
#: a manual pick: tomogram name, x, y, z (Å from the tomogram centre)
ManualRow = tuple[str, float, float, float]


class PickParams(StepParams):
    @model_validator(mode="before")
    @classmethod
    def _drop_obsolete(cls, values: Any) -> Any:
        """Projects written before the noise-model threshold stored ``threshold_k`` (the factor of median + k·MAD):
        it has no meaning any more and is dropped."""
        if isinstance(values, dict) and "threshold_k" in values:
            values = {k: v for k, v in values.items() if k != "threshold_k"}
        return values

    method: Literal["template", "import", "surface", "manual"] = param(
        "template", title="Method", choices=list(METHODS), widget="choice",
        help="'template': find particles automatically by template matching (the apoferritin tutorial uses a "
             "trained picker; matching a shell of apoferritin's size works as well here). 'import': read "
             "coordinates from a file (RELION .star, Scipion .sqlite, IMOD .mod, or text x y z). 'surface': click "
             "points on the outline of a vesicle or membrane on two or three slices; an ellipsoid is fitted and "
             "particles are placed on its surface, oriented along its normal (the tutorial's Dynamo picking). "
             "'manual': click on each particle in the slices.")
    template: Literal["shell", "reference"] = param(
        "shell", title="Template", choices=["shell", "reference"], widget="choice",
        enabled_if=[("method", "=", "template")],
        help="'shell': a hollow sphere of the outer/inner radius below (no rotations needed). 'reference': a map "
             "(file below) searched over rotations, reduced by its symmetry.")
    outer_radius_A: float = param(
        62.0, title="Outer radius", unit="Å", hard=(5.0, 2000.0), suggest=(20.0, 500.0),
        enabled_if=[("method", "=", "template")],
        help="Outer radius of the particle (apoferritin: about 60 Å).")
    inner_radius_A: float = param(
        40.0, title="Inner radius", unit="Å", hard=(0.0, 2000.0), suggest=(0.0, 400.0),
        enabled_if=[("method", "=", "template")],
        help="Inner radius of the shell (apoferritin is hollow: about 40 Å); 0 for a solid sphere.")
    reference_map: str = param(
        "", title="Reference map", widget="file", enabled_if=[("template", "=", "reference")],
        help="MRC map of the particle (e.g. an earlier average), used when the template is 'reference'.")
    symmetry: str = param("O", title="Symmetry", enabled_if=[("template", "=", "reference")],
                          help="Symmetry of the reference (apoferritin: O), to search only distinct rotations.")
    angular_step_deg: float = param(
        30.0, title="Angular step", unit="°", hard=(1.0, 90.0), suggest=(5.0, 45.0),
        enabled_if=[("template", "=", "reference")],
        help="Step of the rotation search. Coarse is enough for picking.")
    min_distance_A: float = param(
        96.0, title="Minimum distance", unit="Å", hard=(1.0, 5000.0), suggest=(30.0, 500.0),
        enabled_if=[("method", "=", "template")],
        help="Two picks are at least this far apart (about 0.8 × the particle's diameter).")
    lowpass_A: float | None = param(
        None, title="Low-pass", unit="Å", hard=(1.0, 1000.0), suggest=(15.0, 100.0), advanced=True,
        empty_means="none (the tomogram's resolution)", enabled_if=[("method", "=", "template")],
        help="Resolution (Å) above which the tomogram and the template are smoothed before matching. Empty: no "
             "smoothing beyond the tomogram's voxel size (best on clean tomograms); try 30-40 Å on very noisy "
             "ones.")
    threshold: float | None = param(
        None, title="Score threshold", unit="1", hard=(-1.0, 1.0), empty_means="automatic",
        enabled_if=[("method", "=", "template")],
        help="Keep peaks whose correlation score is above this. Empty: automatic, from a noise model of the peak "
             "scores inside the specimen (the step's log says the threshold and the model). Use the score histogram "
             "on this page to choose it.")
    expected_false_picks: float = param(
        1.0, title="Noise picks allowed", unit="1", hard=(0.01, 1000.0), suggest=(0.1, 20.0), advanced=True,
        enabled_if=[("method", "=", "template")],
        help="The automatic threshold is set where the noise model expects this many noise peaks above it per "
             "tomogram. More lets fainter particles (and more noise) through.")
    specimen_only: bool = param(
        True, title="Search only the specimen slab", advanced=True, enabled_if=[("method", "=", "template")],
        help="Find the specimen's slab along Z (where the tomogram has structure, not empty ice or vacuum) and "
             "pick only there, one particle radius beyond it; the noise model is fitted there too. Off: the "
             "whole tomogram.")
    coordinates_file: str = param(
        "", title="Coordinates file", widget="file", enabled_if=[("method", "=", "import")],
        help="File with the coordinates: .star (RELION 5 particles), .sqlite (Scipion), .mod (IMOD), .txt/.coords.")
    coordinates_pixel_A: float | None = param(
        None, title="Pixel size of the coordinates", unit="Å", hard=(0.1, 1000.0), empty_means="from the file",
        enabled_if=[("method", "=", "import")],
        help="Voxel size the imported coordinates refer to (the Scipion file of the tutorial is at bin 6); empty: "
             "from the file, or the tomograms' voxel size.")
    surface_points: list[SurfaceRow] = param(
        [], title="Contour points", widget="hidden", enabled_if=[("method", "=", "surface")],
        help="Points clicked on objects' outlines: rows [tomogram, x, y, z, model] with x, y, z in Å from the "
             "tomogram centre; one surface is fitted per tomogram and model number. Edited on the page.")
    surface_model: Literal["auto", "ellipsoid", "sphere"] = param(
        "auto", title="Surface model", choices=["auto", "ellipsoid", "sphere"], widget="choice",
        enabled_if=[("method", "=", "surface")],
        help="Shape fitted to each object's points. 'ellipsoid': general (centre, three axes, orientation; needs "
             "12 points or more on three slices or more). 'sphere': centre and radius (3 points on one slice are "
             "enough). 'auto': the ellipsoid only when a sphere clearly does not fit.")
    surface_spacing_A: float = param(
        100.0, title="Spacing on the surface", unit="Å", hard=(5.0, 5000.0), suggest=(20.0, 1000.0),
        enabled_if=[("method", "=", "surface")],
        help="Distance between neighbouring particles placed on the surface (at least this far apart; about a "
             "particle's diameter for a densely covered membrane).")
    surface_region: Literal["clicked z range", "whole surface"] = param(
        "clicked z range", title="Surface region", choices=["clicked z range", "whole surface"], widget="choice",
        enabled_if=[("method", "=", "surface")],
        help="'clicked z range': particles only between the lowest and highest slice clicked (the top and bottom "
             "of a vesicle are blurred by the missing wedge). 'whole surface': everywhere inside the tomogram.")
    surface_spin: Literal["random", "zero"] = param(
        "random", title="Spin about the normal", choices=["random", "zero"], widget="choice", advanced=True,
        enabled_if=[("method", "=", "surface")],
        help="The angle about the surface normal that the model cannot tell (RELION's rot when tilt and psi give "
             "the normal): random (fixed seed, reproducible; avoids a preferred in-plane angle) or 0.")
    manual_points: list[ManualRow] = param(
        [], title="Manual picks", widget="hidden", enabled_if=[("method", "=", "manual")],
        help="Particles clicked on the page: rows [tomogram, x, y, z] with x, y, z in Å from the tomogram centre. "
             "Edited on the page.")
    box_px: int | None = param(
        None, title="Box size (display)", unit="px", hard=(4, 1024), empty_means="1.2 × the particle's diameter",
        tutorial=54,
        tutorial_note="Display only, in the tutorial's tomogram voxels; empty: 1.2 × the particle's diameter "
                      "in yours.",
        help="Size of the boxes drawn around picks on the page; display only. Empty: a little larger than the "
             "particle (1.2 × twice the outer radius, in the tomogram's voxels), whatever the pixel size.")


def display_box_px(params: PickParams, voxel_A: float) -> int:
    """The display box (voxels): ``box_px`` when set, else 1.2 × the particle's diameter (``2 · outer_radius_A``)
    at ``voxel_A`` Å per voxel, at least 4."""
    if params.box_px is not None:
        return int(params.box_px)
    return max(4, int(round(2.4 * params.outer_radius_A / float(voxel_A))))


def pick_unit(tomo_path: Path, voxel_A: float, params: PickParams,
              tilt_range: Any) -> tuple[tuple[int, int, int], TomogramPicks]:
    """Template matching in one tomogram (a unit of :mod:`tomoguide.cluster`): reads it by path; returns its shape
    (nz, ny, nx) and the picks (peaks, scores, metrics: small)."""
    from tomoguide.compute.io.mrc import read_mrc

    tomo, _ = read_mrc(tomo_path)
    shape = tuple(int(n) for n in tomo.shape)
    return shape, pick_tomogram(np.asarray(tomo, np.float32), voxel_A, params, tilt_range)  # type: ignore[return-value]



def _write_models(ctx: RunContext, table: Any, shapes: dict[str, tuple[int, int, int]], voxel_A: float) -> None:
    """Per tomogram ``models/NAME.mod``: its picks as an IMOD scattered-point model on the tomogram (``3dmod
    NAME_tomogram.mrc NAME.mod``; voxel (i, j, k) at model point (i + 0.5, j + 0.5, k), pixel size in Å)."""
    from tomoguide.compute.io.imod import model_points_from_voxels, write_mod_points

    for name, (nx, ny, nz) in shapes.items():
        mine = np.asarray(table.tomo_name) == name
        pts = model_points_from_voxels(np.asarray(table.xyz_px, np.float64)[mine])
        write_mod_points(ctx.out_path(f"models/{name}.mod", mkdir=True), [(f"{name} picks", pts)],
                         image_shape_xyz=(int(nx), int(ny), int(nz)), pixel_size=voxel_A, units="angstrom")


class Pick(Step):
    id = "pick"
    title = "Picking"
    summary = ("Find the particles in the tomograms (template matching, a surface model, clicks) or import their "
               "coordinates.")
    help = (
        "<p><b>What it does.</b> Finds where the particles are. Template matching slides a model of the particle "
        "(for apoferritin a hollow sphere of 120 Å, or a map) through the tomogram and computes at every voxel how "
        "well the neighbourhood matches (a correlation between −1 and 1); the highest peaks, at least one particle "
        "apart, above a threshold are the picks. Coordinates can also be imported from RELION, Scipion (the "
        "tutorial's file), IMOD or text files. For particles on a membrane (surface picking, the tutorial's "
        "Dynamo models) click points on the outline of a vesicle on two or three slices: an ellipsoid is fitted "
        "and particles are placed on its surface at the spacing you choose, each oriented along the surface "
        "normal. Manual picking: click on each particle; click on a pick again to remove it.</p>"
        "<p><b>Why.</b> Subtomogram averaging needs the particles' positions.</p>"
        "<p><b>A good result.</b> The score histogram has a separate bump of high scores (the particles); every "
        "ring in the slices has a pick, and no pick sits on empty ice or on contamination.</p>"
        "<p><b>The automatic threshold.</b> The step first finds the specimen's slab (where the tomogram has "
        "structure, not empty ice or vacuum) and looks for peaks only there. Most peaks are noise: their scores "
        "follow a bell curve (drawn over the histogram), and the threshold is set where about one noise peak per "
        "tomogram is expected above it, or higher, in the gap below the particles when they stand clearly apart. "
        "When no peak stands out from the noise, the step stops with a message instead of finishing with no "
        "particles: look at the tomogram (a wrong tilt axis or a failed alignment blurs the particles), the "
        "template's radii, or set the threshold by hand.</p>"
        "<p><b>What to check.</b> Move the threshold if picks are missing (lower it) or fall on noise (raise it); a "
        "minimum distance smaller than the particle lets one particle be picked twice. For a surface model, the "
        "fitted outline (drawn on the slices) must follow the membrane on every slice.</p>"
    )
    Params = PickParams
    inputs = ("reconstruct",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, PickParams)
        issues = []
        if params.method in ("surface", "manual"):
            return self._check_clicks(params, ctx)
        if params.method == "import":
            if not params.coordinates_file:
                issues.append(Issue("error", "choose the coordinates file", "coordinates_file"))
            elif not Path(params.coordinates_file).expanduser().is_file():
                issues.append(Issue("error", f"{params.coordinates_file}: no such file", "coordinates_file"))
        elif params.template == "reference" and not Path(params.reference_map).expanduser().is_file():
            issues.append(Issue("error", f"{params.reference_map or '(empty)'}: reference map not found",
                                "reference_map"))
        elif params.method == "template" and params.template == "reference":
            issues.extend(reference_map_issues(Path(params.reference_map).expanduser(), _tomogram_voxel(ctx)))
        if params.method == "template" and params.inner_radius_A >= params.outer_radius_A:
            issues.append(Issue("error", "the inner radius must be smaller than the outer radius", "inner_radius_A"))
        return issues

    def _check_clicks(self, params: PickParams, ctx: RunContext) -> list[Issue]:
        from tomoguide.compute.surface import MIN_SPHERE_POINTS, fit_ellipsoid

        issues = []
        rows: list[tuple[Any, ...]]
        if params.method == "surface":
            rows = list(params.surface_points)
            field = "surface_points"
            if not rows:
                issues.append(Issue("error", "no contour points yet: click points on the outline of a vesicle or "
                                             "membrane on the page (on two or three slices)", field))
            for (name, model), pts in surface_groups(params.surface_points).items():
                if len(pts) < MIN_SPHERE_POINTS:
                    issues.append(Issue("error", f"{name}, model {model}: {len(pts)} point(s); at least "
                                                 f"{MIN_SPHERE_POINTS} are needed to fit a surface", field))
                    continue
                try:  # cheap (milliseconds): points on a line or repeated clicks fit nothing
                    fit_ellipsoid(pts, "sphere", refine=False)
                except ValueError as exc:
                    issues.append(Issue("error", f"{name}, model {model}: {exc}", field))
        else:
            rows = list(params.manual_points)
            field = "manual_points"
            if not rows:
                issues.append(Issue("error", "no particles picked yet: click on particles in the slices on the "
                                             "page", field))
        try:
            names = set(SeriesSet.load(ctx.output("reconstruct", "tomograms"))[0].names())
        except (KeyError, OSError, ValueError):
            return issues
        unknown = sorted({str(r[0]) for r in rows} - names)
        if unknown:
            issues.append(Issue("error", f"points on tomograms that do not exist (any more): {', '.join(unknown)}",
                                field))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        sset, _ = SeriesSet.load(ctx.output("reconstruct", "tomograms"))
        biggest = max(int(np.prod(s.info.get("shape_zyx", [1, 1, 1]))) for s in sset.series)
        return Needs(disk_bytes=1_000_000, memory_bytes=biggest * 4 * 12)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit
        from tomoguide.compute.io import coords

        assert isinstance(params, PickParams)
        sset, base = SeriesSet.load(ctx.output("reconstruct", "tomograms"))
        shapes: dict[str, tuple[int, int, int]] = {}
        voxel = sset.series[0].geometry.pixel_size_binned_A
        tables = []
        dead_end: str | None = None
        metrics: dict[str, Any] = {"series": {}}
        extras: dict[str, np.ndarray] = {}
        if params.method in ("surface", "manual"):
            for s in sset.series:
                nz, ny, nx = s.info["shape_zyx"]
                shapes[s.name] = (nx, ny, nz)
            if params.method == "surface":
                table = yield from _surface_particles(params, shapes, voxel, metrics, ctx)
            else:
                table = _manual_particles(params.manual_points, shapes, voxel)
                yield Progress(1.0, f"{len(table)} particles picked by hand")
            tables.append(table)
        elif params.method == "import":
            for s in sset.series:
                nz, ny, nx = s.info["shape_zyx"]
                shapes[s.name] = (nx, ny, nz)
            table = _import(Path(params.coordinates_file).expanduser(), shapes, params.coordinates_pixel_A, voxel,
                            sset.names()[0] if len(sset.series) == 1 else None)
            tables.append(table)
            yield Progress(1.0, f"imported {len(table)} particles")
        else:
            found: list[TomogramPicks] = []
            units = [Unit(s.name, (s.path("tomogram", base), voxel, params, tilt_range_deg(s.geometry)))
                     for s in sset.series]
            picked = yield from ctx.map_units(pick_unit, units, what="template matching")  # one unit per tomogram
            for s in sset.series:
                (nz, ny, nx), res = picked[s.name]
                shapes[s.name] = (nx, ny, nz)
                found.append(res)
                keep = res.keep
                extras[f"{s.name}_peak_scores"] = res.scores
                counts, edges = res.histogram()
                extras[f"{s.name}_hist_counts"] = counts
                extras[f"{s.name}_hist_edges"] = edges
                tables.append(coords.ParticleTable(tomo_name=np.array([s.name] * int(keep.sum())),
                                                   xyz_px=res.xyz_px[keep].astype(np.float64), pixel_size_A=voxel,
                                                   angles_deg=None if res.angles_deg is None else res.angles_deg[keep],
                                                   score=res.scores[keep]))
                metrics["series"][s.name] = res.metrics()
                for line in res.log_lines(s.name, voxel):
                    ctx.log(line)
            problems, warnings = sanity_check(found, sset.names(), params)
            for w in warnings:
                ctx.log(f"warning: {w}")
            metrics["warnings"] = warnings
            dead_end = " ".join(problems) or None
        table = coords.concat(tables) if len(tables) > 1 else tables[0]
        out = ctx.out_path("particles.star")
        coords.write_relion_particles(out, table, centre_shapes(shapes))
        files = {"particles": out}
        _write_models(ctx, table, shapes, voxel)
        if extras:
            files["scores"] = ctx.out_path("scores.npz")
            np.savez_compressed(files["scores"], **extras)
        metrics["n_particles"] = len(table)
        for name in table.tomograms:
            metrics["series"].setdefault(name, {})["n_particles"] = int(np.sum(table.tomo_name == name))
        metrics["box_px"] = display_box_px(params, voxel)
        # no silent dead end: the runner records a run with this message as failed, on this step's page
        return StepResult(outputs=files, metrics=metrics, summary=f"{len(table)} particles",
                          nothing_for_next=dead_end)


def tilt_range_deg(geometry: Any) -> tuple[float, float]:
    """(lowest, highest) true tilt (nominal + offset, degrees) of a series' views that are not excluded: the
    tilt range the tomogram was reconstructed from (its missing wedge)."""
    tilts = np.asarray(geometry.tilt_angles_deg, dtype=np.float64) + float(geometry.tilt_offset_deg)
    excluded = np.asarray(geometry.excluded, dtype=bool) if len(geometry.excluded) else np.zeros(len(tilts), bool)
    used = tilts[~excluded] if (~excluded).any() else tilts
    return float(used.min()), float(used.max())


@dataclass
class TomogramPicks:
    """Template matching in one tomogram (:func:`pick_tomogram`).

    * ``xyz_px`` ``(n, 3)`` and ``scores`` ``(n,)``: every peak of the score volume inside the searched region
      (the specimen slab, or the whole tomogram), at least the minimum distance apart, by decreasing score
      (voxel coordinates x, y, z; voxel i's centre at i); ``angles_deg`` ``(n, 3)`` their best rotations (RELION
      Euler angles) for a reference template searched over rotations, else None;
    * ``threshold``: the score threshold applied (``automatic``: from the noise model, else the parameter);
      ``choice``: the automatic threshold and its noise model (None when the peaks were too few to fit it,
      ``fit_error`` says why); ``slab``: the specimen region found (None when the whole tomogram was searched
      by choice).
    """

    xyz_px: np.ndarray
    scores: np.ndarray
    angles_deg: np.ndarray | None
    threshold: float
    automatic: bool
    choice: Any
    fit_error: str
    slab: Any

    @property
    def keep(self) -> np.ndarray:
        """Bool ``(n,)``: the peaks at or above the threshold (the picks)."""
        return self.scores >= self.threshold

    @property
    def highest(self) -> float:
        return float(self.scores.max()) if len(self.scores) else float("-inf")

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """Histogram of the peak scores for the page: (counts (100,), edges (101,))."""
        from tomoguide.compute import pick as pk

        if len(self.scores) == 0:
            return np.zeros(1), np.array([0.0, 1.0])
        return pk.score_histogram(self.scores, bins=100)

    def sanity_bound(self) -> float:
        """The fewest picks that are plausible here: half the peaks that rise above the noise (more than 2 SD
        above its mean, minus what noise puts there), when those are clearly more than the noise's own scatter
        (more than 10 and 5 Poisson SDs); else 0. Also 0 when the automatic threshold was raised into the gap
        below a well-separated population of particles: the peaks left below were judged look-alikes or the
        noise's own tail, and the picks are that population."""
        c = self.choice
        if c is None or c.how == "particles" or not (c.standing_out > max(10.0, 5.0 * c.standing_out_sd)):
            return 0.0
        return 0.5 * c.standing_out

    def noise_only(self) -> bool:
        """True when the automatic threshold's picks could all be noise: no more than the noise model expects
        above it (plus 3 Poisson SDs), the highest score less than one noise SD above the noise threshold (pure
        noise puts its highest peak there; real particles stand higher), and no crowd of peaks rising above the
        noise lower down (:meth:`sanity_bound` 0)."""
        c = self.choice
        if not self.automatic or c is None:
            return False
        nm = c.noise
        n = int(self.keep.sum())
        return 0 < n <= nm.expected_false + 3.0 * np.sqrt(nm.expected_false) and \
            self.highest < nm.threshold + nm.sigma and self.sanity_bound() == 0.0

    def top_scores(self, k: int) -> str:
        """'a–b': the range of the ``k`` highest peak scores (for messages)."""
        top = self.scores[:k]
        return f"{top[0]:.3f}–{top[-1]:.3f}" if len(top) > 1 else (f"{top[0]:.3f}" if len(top) else "none")

    def metrics(self) -> dict[str, Any]:
        """The per-tomogram metrics of the step."""
        keep = self.keep
        out: dict[str, Any] = {
            "n_particles": int(keep.sum()), "threshold": float(self.threshold), "n_peaks": int(len(self.scores)),
            "highest_score": self.highest if len(self.scores) else None,
            "threshold_how": ("set" if not self.automatic else (self.choice.how if self.choice is not None
                                                                else "no noise model")),
        }
        if self.choice is not None:
            nm = self.choice.noise
            out.update({"noise_mean": nm.mean, "noise_sigma": nm.sigma, "noise_n": nm.n_noise,
                        "noise_threshold": nm.threshold, "noise_expected_false": nm.expected_false,
                        "automatic_threshold": self.choice.threshold,
                        "standing_out": self.choice.standing_out})
        if self.fit_error:
            out["noise_model_error"] = self.fit_error
        if self.slab is not None:
            sl = self.slab
            out["specimen"] = {"found": bool(sl.found), "centre_z_px": float(sl.centre_z_px),
                               "slope": [float(v) for v in sl.slope], "bottom_px": float(sl.bottom_px),
                               "top_px": float(sl.top_px), "contrast": float(sl.contrast), "note": sl.note}
        return out

    def log_lines(self, name: str, voxel_A: float) -> list[str]:
        """What the step's log says about this tomogram: the region, the threshold and its noise model, the
        number of peaks above it and the highest score."""
        lines = [f"{name}: " + (self.slab.note if self.slab is not None else "the whole tomogram searched "
                                                                                "(specimen_only off)")]
        if self.choice is not None:
            lines.append(f"{name}: automatic {self.choice.describe()}")
        else:
            lines.append(f"{name}: no noise model: {self.fit_error}")
        n = int(self.keep.sum())
        how = "automatic" if self.automatic else "set by hand"
        lines.append(f"{name}: {n} particles = peaks at or above the threshold {self.threshold:.3f} ({how}) of "
                     f"{len(self.scores)} peaks; highest score {self.highest:.3f}")
        return lines


def _tomogram_voxel(ctx: RunContext) -> float | None:
    """The voxel size (Å) of the tomograms the step will pick in, or None before they exist."""
    try:
        sset, _ = SeriesSet.load(ctx.output("reconstruct", "tomograms"))
    except (KeyError, OSError, ValueError):
        return None
    return float(sset.series[0].geometry.pixel_size_binned_A) if sset.series else None


def reference_map_issues(path: Path, tomogram_voxel_A: float | None) -> list[Issue]:
    """What makes a reference map unusable as a template, each naming the file and the field: unreadable, not a
    cube, voxel size not recorded (0) or coarser than the tomogram's, values that are not finite or constant."""
    from tomoguide.compute.io.errors import FormatError
    from tomoguide.compute.io.mrc import read_header, read_mrc

    field = "reference_map"
    try:
        info = read_header(path)
    except (FormatError, OSError, ValueError) as exc:
        return [Issue("error", str(exc), field)]
    shape = tuple(int(n) for n in info.shape)
    if len(shape) != 3 or len(set(shape)) != 1:
        return [Issue("error", f"{path}: shape: the reference map must be a cube (n×n×n voxels), it is "
                      f"{'×'.join(str(n) for n in shape[::-1])}", field)]
    voxel = float(info.voxel_size_A[0])
    if not voxel > 0:
        return [Issue("error", f"{path}: voxel size: not recorded in the header (0); write it into the map "
                      "(e.g. IMOD's alterheader -del) before using it as a template", field)]
    if tomogram_voxel_A is not None and voxel > tomogram_voxel_A * 1.0001:
        return [Issue("error", f"{path}: voxel size: {voxel:g} Å is coarser than the tomogram's {tomogram_voxel_A:g} "
                      "Å; a template can only be binned down to the tomogram's voxels, not refined", field)]
    try:
        data, _ = read_mrc(path, mmap=True)
        values = np.asarray(data, dtype=np.float32)
    except (FormatError, OSError, ValueError) as exc:
        return [Issue("error", str(exc), field)]
    if not np.isfinite(values).all():
        return [Issue("error", f"{path}: data: the reference map holds {int((~np.isfinite(values)).sum())} values "
                      "that are not numbers (NaN or infinite)", field)]
    if float(values.std()) == 0.0:
        return [Issue("error", f"{path}: data: the reference map is constant (no structure to match)", field)]
    return []


def pick_tomogram(tomogram: np.ndarray, voxel_A: float, params: PickParams, tilt_range: tuple[float, float] | None
                  ) -> TomogramPicks:
    """Template matching with the step's parameters in one tomogram ``(nz, ny, nx)`` of ``voxel_A`` Å voxels.

    Every size is in Å and scales with the voxel: the template box (2.7 outer radii, even), the normalisation
    mask (radius 1.35 outer radii), the minimum distance and the low-pass. The template gets the missing wedge
    of ``tilt_range`` (the series' tilt range, :func:`tilt_range_deg`; None: none), as the particles have it.
    Peaks are searched in the specimen slab (:func:`tomoguide.compute.pick.find_specimen_slab`, when
    ``specimen_only``) and the automatic threshold comes from their noise model
    (:func:`tomoguide.compute.pick.automatic_threshold`), also computed when the threshold is set by hand.
    """
    from tomoguide.compute import pick as pk
    from tomoguide.compute.io.mrc import read_mrc

    r_px = params.outer_radius_A / voxel_A
    box = int(2 * np.ceil(1.35 * r_px)) // 2 * 2 + 2
    if params.template == "shell":
        template = pk.shell_template(params.outer_radius_A, params.inner_radius_A, voxel_A, box)
        kw: dict[str, Any] = {}
    else:
        ref, info = read_mrc(Path(params.reference_map).expanduser())
        template = pk.reference_template(np.asarray(ref, np.float32), float(info.voxel_size_A[0]), voxel_A, box)
        kw = {"symmetry": params.symmetry, "angular_step_deg": params.angular_step_deg}
    res = pk.template_match(tomogram, template, voxel_A=voxel_A, mask_radius_px=1.35 * r_px,
                            tilt_range_deg=tilt_range, lowpass_A=params.lowpass_A, **kw)
    score = np.asarray(res.score)
    slab = pk.find_specimen_slab(tomogram, voxel_A, particle_radius_A=params.outer_radius_A) \
        if params.specimen_only else None
    mask = slab.mask() if slab is not None and slab.found else None
    xyz, scores = pk.pick_peaks(score, min_distance_px=params.min_distance_A / voxel_A, exclude_border_px=1,
                                mask=mask)
    choice, fit_error = None, ""
    try:
        choice = pk.automatic_threshold(scores, expected_false=params.expected_false_picks)
    except ValueError as exc:
        fit_error = str(exc)
    if params.threshold is not None:
        thr = float(params.threshold)
    else:
        thr = choice.threshold if choice is not None else float("inf")
    angles = None
    if res.angles_deg.shape[0] > 1 and len(xyz):
        ix = np.round(xyz).astype(int)
        angles = res.angles_deg[np.asarray(res.angle_index)[ix[:, 2], ix[:, 1], ix[:, 0]]]
    return TomogramPicks(xyz_px=xyz, scores=scores, angles_deg=angles, threshold=thr,
                         automatic=params.threshold is None, choice=choice, fit_error=fit_error, slab=slab)


def sanity_check(found: list[TomogramPicks], names: list[str], params: PickParams) -> tuple[list[str], list[str]]:
    """``(problems, warnings)`` of a template-matching run. Problems stop the step (no silent dead end):

    * no particle at all, or (automatic threshold) only picks that noise alone would give
      (:meth:`TomogramPicks.noise_only`): for every tomogram, the threshold, the highest peak score and what to
      change;
    * with the automatic threshold, far fewer picks than the tomograms suggest: fewer in total than the sum of
      :meth:`TomogramPicks.sanity_bound` (half the peaks that rise above the noise).

    A single tomogram with no, noise-like or too few picks among others that have theirs is a warning.
    """
    what_to_change = (f"check the tomogram on this page (are the particles visible? a wrong tilt axis or a failed "
                      f"alignment blurs them; does the reconstruction's thickness hold the specimen?), the template "
                      f"(outer radius {params.outer_radius_A:g} Å, inner {params.inner_radius_A:g} Å: those of the "
                      f"particle?), or set the score threshold by hand")
    if params.threshold is not None:
        autos = [r.choice.threshold for r in found if r.choice is not None]
        what_to_change = (f"lower the score threshold (set by hand to {params.threshold:g}) below the highest peak "
                          f"scores, or empty it for the automatic threshold"
                          + (f" ({', '.join(f'{v:.3f}' for v in autos)} here)" if autos else "")
                          + "; " + what_to_change.replace(", or set the score threshold by hand", ""))
    lines, empty = [], 0
    for name, r in zip(names, found):
        n = int(r.keep.sum())
        thr_text = f"the automatic threshold {r.threshold:.3f}" if r.automatic else \
            f"the threshold {r.threshold:.3f} set by hand"
        if r.choice is not None:
            nm = r.choice.noise
            thr_text += f" (noise model of {nm.n_peaks} peak scores: {nm.mean:.3f} ± {nm.sigma:.3f})"
        elif r.automatic:
            thr_text = f"no automatic threshold ({r.fit_error})"
        if len(r.scores) == 0:
            empty += 1
            lines.append(f"{name}: no peak in the searched region")
        elif n == 0:
            empty += 1
            lines.append(f"{name}: {thr_text} is above the highest peak score {r.highest:.3f} (the 10 highest "
                         f"peaks score {r.top_scores(10)})"
                         + ("; no peak stands out from the noise" if r.automatic and r.choice is not None else ""))
        elif r.noise_only():
            empty += 1
            nm = r.choice.noise
            lines.append(f"{name}: {n} peak(s) above {thr_text}, as many as noise alone gives (about "
                         f"{nm.expected_false:g}), the highest score {r.highest:.3f} less than one noise SD above "
                         f"it (the 10 highest peaks score {r.top_scores(10)}); no peak stands out from the noise")
        elif r.automatic and n < r.sanity_bound():
            k = int(round(r.choice.standing_out))
            lines.append(f"{name}: {n} picks above {thr_text}, but about {k} peaks rise above the noise (highest "
                         f"score {r.highest:.3f}; the {k} highest peaks score {r.top_scores(k)}): the particles "
                         f"barely stand out from the noise")
    total = sum(int(r.keep.sum()) for r in found)
    if empty == len(found):
        head = "No particle picked" if total == 0 else "No particle stands out from the noise"
        return [f"{head}: " + "; ".join(lines) + f". To change: {what_to_change}."], []
    if params.threshold is None and total < sum(r.sanity_bound() for r in found):
        # a warning, not a dead end: look-alikes (other complexes, contamination) rising above the noise also
        # count towards the bound, and the picks made may well be the particles
        return [], ["Far fewer particles than the peaks rising above the noise suggest: " + "; ".join(lines)
                    + f". Check the picks; to change: {what_to_change} (the histogram on this page shows the peak "
                    "scores)."]
    return [], lines


def centre_shapes(shapes: dict[str, tuple[int, int, int]]) -> dict[str, tuple[int, int, int]]:
    """Sizes to give the RELION conversions so that their centre (size / 2) is our tomograms' centre voxel
    ((n - 1) / 2, :mod:`tomoguide.geometry`): rlnCenteredCoordinate*Angst are then positions from the specimen
    origin, the frame of the alignment and of the simulator's truth."""
    return {name: (nx - 1, ny - 1, nz - 1) for name, (nx, ny, nz) in shapes.items()}


def centred_A_to_px(xyz_A: Any, shape_xyz: tuple[int, int, int], voxel_A: float) -> np.ndarray:
    """Å from the tomogram centre ``(n, 3)`` → voxel coordinates ``(n, 3)`` (x, y, z; voxel i's centre at i, the
    centre at ``(n − 1) / 2``) of a tomogram of ``shape_xyz`` = (nx, ny, nz) voxels of ``voxel_A`` Å."""
    centre = (np.asarray(shape_xyz, dtype=np.float64) - 1.0) / 2.0
    return np.asarray(xyz_A, dtype=np.float64).reshape(-1, 3) / float(voxel_A) + centre


def px_to_centred_A(xyz_px: Any, shape_xyz: tuple[int, int, int], voxel_A: float) -> np.ndarray:
    """The inverse of :func:`centred_A_to_px`: voxel coordinates ``(n, 3)`` → Å from the tomogram centre."""
    centre = (np.asarray(shape_xyz, dtype=np.float64) - 1.0) / 2.0
    return (np.asarray(xyz_px, dtype=np.float64).reshape(-1, 3) - centre) * float(voxel_A)


def surface_groups(rows: Any) -> dict[tuple[str, int], np.ndarray]:
    """Contour points grouped by (tomogram, model), in order of first appearance: ``(n, 3)`` Å arrays."""
    groups: dict[tuple[str, int], list[list[float]]] = {}
    for name, x, y, z, model in rows:
        groups.setdefault((str(name), int(model)), []).append([float(x), float(y), float(z)])
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 3) for k, v in groups.items()}


def fit_surface_model(points_A: np.ndarray, params: PickParams, shape_xyz: tuple[int, int, int], voxel_A: float,
                      seed: int) -> tuple[Any, np.ndarray, np.ndarray]:
    """One object's surface: ``(ellipsoid, points (m, 3) Å from the tomogram centre, RELION angles (m, 3) °)``
    from its contour points ``(n, 3)`` Å, with the step's model, spacing, region and spin (``seed`` for the
    sampling and the random spin)."""
    from tomoguide.compute import surface

    ell = surface.fit_ellipsoid(points_A, params.surface_model)
    half = (np.asarray(shape_xyz, dtype=np.float64) - 1.0) / 2.0 * float(voxel_A)
    z_range = ((float(points_A[:, 2].min()), float(points_A[:, 2].max()))
               if params.surface_region == "clicked z range" else None)
    pts, normals = surface.sample_surface(ell, params.surface_spacing_A, seed=seed, z_range_A=z_range,
                                          box_A=(-half, half))
    spin = (np.random.default_rng(seed + 1_000_003).uniform(-180.0, 180.0, len(pts))
            if params.surface_spin == "random" else np.zeros(len(pts)))
    return ell, pts, surface.normals_to_euler(normals, spin)


def _surface_particles(params: PickParams, shapes: dict[str, tuple[int, int, int]], voxel_A: float,
                       metrics: dict[str, Any], ctx: RunContext) -> Generator[Progress, None, Any]:
    """Particles on the fitted surfaces of every (tomogram, model) group; fills ``metrics["models"]``."""
    from tomoguide.compute.io import coords

    groups = surface_groups(params.surface_points)
    unknown = sorted({name for name, _ in groups} - set(shapes))
    if unknown:
        raise ValueError(f"surface_points: tomograms {', '.join(unknown)} do not exist (any more)")
    tables = []
    models = []
    for k, ((name, model), pts_A) in enumerate(groups.items()):
        ctx.check_cancel()
        ell, pts, angles = fit_surface_model(pts_A, params, shapes[name], voxel_A, seed=k)
        tables.append(coords.ParticleTable(tomo_name=np.full(len(pts), name),
                                           xyz_px=centred_A_to_px(pts, shapes[name], voxel_A),
                                           pixel_size_A=voxel_A, angles_deg=angles))
        models.append({"tomogram": name, "model": model, "kind": ell.kind,
                       "centre_A": [round(float(v), 3) for v in ell.centre],
                       "axes_A": [round(float(v), 3) for v in ell.axes],
                       "rotation": [[round(float(v), 9) for v in row] for row in ell.rotation],
                       "rms_A": round(float(ell.rms_A), 3), "n_points": len(pts_A), "n_particles": len(pts)})
        axes = " × ".join(f"{2 * a:.0f}" for a in ell.axes)
        ctx.log(f"{name}, model {model}: {ell.kind} fitted to {len(pts_A)} points (diameters {axes} Å, "
                f"RMS distance of the points {ell.rms_A:.1f} Å); {len(pts)} particles "
                f"{params.surface_spacing_A:g} Å apart")
        yield Progress((k + 1) / len(groups), f"{name}, model {model}: {len(pts)} particles")
    metrics["models"] = models
    table = coords.concat(tables)
    if len(table) == 0:
        raise ValueError("no particle on the fitted surfaces: the clicked z range is too thin or the surface lies "
                         "outside the tomogram; click on more slices or choose 'whole surface'")
    return table


def _manual_particles(rows: Any, shapes: dict[str, tuple[int, int, int]], voxel_A: float) -> Any:
    """The hand-picked particles as a ParticleTable (no angles), in the order clicked."""
    from tomoguide.compute.io import coords

    names = [str(r[0]) for r in rows]
    unknown = sorted(set(names) - set(shapes))
    if unknown:
        raise ValueError(f"manual_points: tomograms {', '.join(unknown)} do not exist (any more)")
    xyz_A = np.asarray([[float(v) for v in r[1:4]] for r in rows], dtype=np.float64).reshape(-1, 3)
    xyz_px = np.concatenate([centred_A_to_px(a[None], shapes[n], voxel_A) for n, a in zip(names, xyz_A)]) \
        if names else np.zeros((0, 3))
    return coords.ParticleTable(tomo_name=np.asarray(names, dtype=str), xyz_px=xyz_px, pixel_size_A=voxel_A)


def _import(path: Path, shapes: dict[str, tuple[int, int, int]], pixel_A: float | None, voxel_A: float,
            single_name: str | None) -> Any:
    """Read coordinates from any supported file into a ParticleTable at the tomograms' voxel size."""
    from tomoguide.compute.io import coords
    from tomoguide.compute.io.errors import FormatError

    ext = path.suffix.lower()
    if ext == ".star":
        table = coords.read_relion_particles(path, centre_shapes(shapes), voxel_A)
    elif ext in (".sqlite", ".db"):
        px = pixel_A or voxel_A
        scale = voxel_A / px
        shapes_at = {n: tuple(v * scale for v in s) for n, s in shapes.items()}
        table = coords.read_scipion_sqlite(path, tomo_shapes=shapes_at, pixel_size_A=px)
    elif ext == ".mod":
        from tomoguide.compute.io.imod import read_mod_points

        if single_name is None:
            raise FormatError(path, None, "an IMOD model holds one tomogram's points; pick one tilt series")
        pts = read_mod_points(path)
        # IMOD model coordinates put x and y from the image's edges (voxel i's centre at i + 0.5) and z at the
        # section number: 0-based voxel indices are (x − 0.5, y − 0.5, z) (as write_mod_points writes them)
        xyz = np.asarray(pts.xyz, np.float64) - np.array([0.5, 0.5, 0.0])
        table = coords.ParticleTable.from_points(single_name, xyz, pixel_A or voxel_A)
    else:
        if single_name is None:
            raise FormatError(path, None, "a text file holds one tomogram's points; pick one tilt series")
        table = coords.read_text_coords(path, tomo_name=single_name, pixel_size_A=pixel_A or voxel_A)
    if table.pixel_size_A is not None and abs(table.pixel_size_A - voxel_A) > 1e-6:
        table = table.rescaled(voxel_A)
    unknown = sorted(set(table.tomograms) - set(shapes))
    if unknown:
        raise FormatError(path, "tomogram", f"{', '.join(unknown)} not among the tomograms ({', '.join(shapes)})")
    return table
