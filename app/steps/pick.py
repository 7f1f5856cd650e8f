"""Step 12, ``pick``: particle coordinates in the tomograms, automatically or imported.

Methods (one particle table whatever the source):

* ``template``: template matching (:func:`tomoguide.compute.pick.template_match`: local normalised cross-
  correlation) with a shell of apoferritin's size or a reference map over symmetry-reduced rotations, peak picking
  with a minimum distance, and a score threshold (automatic: median + k·MAD of the score volume, or a value).
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
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesSet


METHODS = ("template", "import", "surface", "manual")
#: a surface-point row: tomogram name, x, y, z (Å from the tomogram centre), model number
SurfaceRow = tuple[str, float, float, float, int]
#: a manual pick: tomogram name, x, y, z (Å from the tomogram centre)
ManualRow = tuple[str, float, float, float]


class PickParams(StepParams):
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
    threshold: float | None = param(
        None, title="Score threshold", unit="1", hard=(-1.0, 1.0), empty_means="automatic",
        enabled_if=[("method", "=", "template")],
        help="Keep peaks whose correlation score is above this. Empty: automatic (median + k × MAD of the score "
             "volume). Use the score histogram on this page to choose it.")
    threshold_k: float = param(
        7.5, title="Automatic threshold factor", unit="1", hard=(1.0, 50.0), suggest=(4.0, 12.0), advanced=True,
        enabled_if=[("method", "=", "template")],
        help="k of the automatic threshold median + k·1.4826·MAD of the score volume.")
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
    box_px: int = param(54, title="Box size (display)", unit="px", hard=(4, 1024),
                        help="Size of the boxes drawn around picks on the page (tutorial 54 px); display only.")


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
        from tomoguide.compute.io import coords
        from tomoguide.compute.io.mrc import read_mrc

        assert isinstance(params, PickParams)
        sset, base = SeriesSet.load(ctx.output("reconstruct", "tomograms"))
        shapes: dict[str, tuple[int, int, int]] = {}
        voxel = sset.series[0].geometry.pixel_size_binned_A
        tables = []
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
            from tomoguide.compute import pick as pk

            for k, s in enumerate(sset.series):
                ctx.check_cancel()
                tomo, _ = read_mrc(s.path("tomogram", base))
                nz, ny, nx = tomo.shape
                shapes[s.name] = (nx, ny, nz)
                box = int(2 * np.ceil(1.35 * params.outer_radius_A / voxel)) // 2 * 2 + 2
                if params.template == "shell":
                    template = pk.shell_template(params.outer_radius_A, params.inner_radius_A, voxel, box)
                    kw: dict[str, Any] = {}
                else:
                    ref, info = read_mrc(Path(params.reference_map).expanduser())
                    template = pk.reference_template(np.asarray(ref, np.float32), float(info.voxel_size_A[0]),
                                                     voxel, box)
                    kw = {"symmetry": params.symmetry, "angular_step_deg": params.angular_step_deg}
                yield Progress((k + 0.2) / len(sset.series), f"{s.name}: template matching")
                res = pk.template_match(np.asarray(tomo, np.float32), template, voxel_A=voxel,
                                        mask_radius_px=1.35 * params.outer_radius_A / voxel, **kw)
                ctx.check_cancel()
                score = np.asarray(res.score)
                thr = (params.threshold if params.threshold is not None
                       else pk.suggest_threshold(score, method="mad", k=params.threshold_k))
                xyz, scores = pk.pick_peaks(score, min_distance_px=params.min_distance_A / voxel, threshold=None,
                                            exclude_border_px=1)
                keep = scores >= thr
                counts, edges = pk.score_histogram(scores)
                extras[f"{s.name}_peak_scores"] = scores
                extras[f"{s.name}_hist_counts"] = counts
                extras[f"{s.name}_hist_edges"] = edges
                angles = None
                if res.angles_deg.shape[0] > 1:
                    ix = np.round(xyz[keep]).astype(int)
                    angles = res.angles_deg[np.asarray(res.angle_index)[ix[:, 2], ix[:, 1], ix[:, 0]]]
                tables.append(coords.ParticleTable(tomo_name=np.array([s.name] * int(keep.sum())),
                                                   xyz_px=xyz[keep].astype(np.float64), pixel_size_A=voxel,
                                                   angles_deg=angles, score=scores[keep]))
                metrics["series"][s.name] = {"n_particles": int(keep.sum()), "threshold": float(thr),
                                             "n_peaks": int(len(scores))}
                ctx.log(f"{s.name}: {int(keep.sum())} particles above the threshold {thr:.3f} "
                        f"({len(scores)} peaks)")
                yield Progress((k + 1) / len(sset.series), f"{s.name}: {int(keep.sum())} particles")
        table = coords.concat(tables) if len(tables) > 1 else tables[0]
        out = ctx.run_dir / "particles.star"
        coords.write_relion_particles(out, table, centre_shapes(shapes))
        files = {"particles": out}
        if extras:
            np.savez_compressed(ctx.run_dir / "scores.npz", **extras)
            files["scores"] = ctx.run_dir / "scores.npz"
        metrics["n_particles"] = len(table)
        for name in table.tomograms:
            metrics["series"].setdefault(name, {})["n_particles"] = int(np.sum(table.tomo_name == name))
        metrics["box_px"] = params.box_px
        return StepResult(outputs=files, metrics=metrics, summary=f"{len(table)} particles")


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
        table = coords.ParticleTable.from_points(single_name, pts.xyz, pixel_A or voxel_A)
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
