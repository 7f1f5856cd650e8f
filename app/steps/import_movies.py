"""Step 1, ``import_movies``: read SerialEM .mdoc files and the movies beside them into tilt series.

Output ``tilt_series`` (``tilt_series.json``): a list of :class:`ImportedSeries`, each with its mdoc, one
:class:`ImportedTilt` per tilt (movie file, frame count, frame shape, tilt angle, acquisition order, dose) in
*angle order* (ascending tilt, as IMOD stacks are), the optics, and the geometry record
(:class:`tomoguide.geometry.TiltSeriesGeometry`) that every later step reads and extends.
Output ``previews`` (folder): per series an MRC stack of the raw frame sums, binned to at most 512 px, in angle
order — what the import page's tilt-series viewer shows.

Rule of the tutorial: an empty field means "read it from the mdoc"; a value typed in overrides the mdoc (and
``check`` warns when it contradicts the mdoc, e.g. a tilt-axis angle about 90° or 180° away).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel

from tomoguide.compute.io.errors import FormatError
from tomoguide.geometry import Optics, TiltSeriesGeometry
from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param

PREVIEW_MAX_PX = 512


class ImportMoviesParams(StepParams):
    files_dir: str = param(
        "", title="Files directory", widget="directory",
        help="Folder with the SerialEM .mdoc files and the movies. The movies must be in the same folder as "
             "their .mdoc (SerialEM records Windows paths; tomoguide looks for the file names beside the mdoc).")
    pattern: str = param(
        "*.mdoc", title="Pattern", widget="glob",
        help="Which files to import, as a wildcard pattern relative to the folder. The tutorial imports every "
             "mdoc: *.mdoc (use */*.mdoc when each tilt series has its own sub-folder). One mdoc per tilt "
             "series ([ZValue] sections).")
    tomo5_mdoc: bool = param(
        False, title="Tomo5 mdoc",
        help="Tick only when the mdoc files were written by Thermo Fisher's Tomography 5 software: its tilt-axis "
             "angle is then converted to SerialEM's convention (−1 × angle − 90°). The tutorial says No.")
    voltage_kV: float = param(
        300.0, title="Microscope voltage", unit="kV", hard=(20.0, 1000.0), suggest=(100.0, 300.0),
        help="Acceleration voltage of the microscope. Sets the electron wavelength used by every CTF step.")
    cs_mm: float = param(
        2.7, title="Spherical aberration", unit="mm", hard=(0.0, 20.0), suggest=(0.001, 5.0),
        help="Spherical aberration Cs of the objective lens (2.7 mm on a Titan Krios; near 0 with a Cs "
             "corrector).")
    amplitude_contrast: float = param(
        0.1, title="Amplitude contrast", unit="1", hard=(0.0, 1.0), suggest=(0.04, 0.2),
        help="Fraction of amplitude contrast in the CTF model (0.07-0.1 for cryo samples).")
    pixel_size_A: float | None = param(
        None, title="Pixel size", unit="Å", hard=(0.05, 100.0), suggest=(0.3, 10.0), empty_means="from mdoc",
        help="Pixel size of the movies. Leave empty to read it from the mdoc (PixelSpacing); a value typed "
             "here overrides the mdoc.")
    tilt_axis_deg: float | None = param(
        85.0, title="Tilt axis angle", unit="°", hard=(-360.0, 360.0), empty_means="from mdoc",
        help="In-plane angle of the tilt axis, measured from the image Y axis, counter-clockwise (SerialEM's "
             "convention). The tutorial enters 85°; a value entered overrides the mdoc's 'Tilt axis angle'. "
             "Leave empty to use the mdoc's value. Alignment refines it later.")
    initial_dose_e_A2: float = param(
        0.0, title="Initial dose", unit="e⁻/Å²", hard=(0.0, 10000.0), suggest=(0.0, 50.0),
        help="Dose the specimen received before the first tilt (e.g. from tracking or focusing). Usually 0.")
    dose_per_tilt_e_A2: float | None = param(
        None, title="Dose per tilt", unit="e⁻/Å²", hard=(0.0, 1000.0), suggest=(0.5, 10.0),
        empty_means="from mdoc",
        help="Electron dose of each tilt image. Leave empty to read it from the mdoc (ExposureDose). Used for "
             "dose weighting: later tilts have lost high-resolution signal to radiation damage.")
    gain_path: str | None = param(
        None, title="Gain image", widget="file", empty_means="no gain reference",
        help="Gain reference of the camera (MRC or TIFF), multiplied with every frame. Its orientation "
             "(flip/transpose) is set in the frame-alignment step. Leave empty when the movies are already "
             "gain-corrected.")


class ImportedTilt(BaseModel):
    """One tilt image: its movie and acquisition metadata (angles in degrees, doses in e⁻/Å²)."""

    movie: str  # absolute path
    n_frames: int
    frame_shape_px: tuple[int, int]  # (ny, nx)
    tilt_deg: float
    acquisition_order: int
    dose_e_A2: float
    prior_dose_e_A2: float
    target_defocus_um: float | None = None
    datetime: str | None = None
    mdoc_section: int


class ImportedSeries(BaseModel):
    """A tilt series as imported: tilts in angle order, with optics and the geometry record."""

    name: str
    mdoc: str
    tilts: list[ImportedTilt]
    geometry: TiltSeriesGeometry  # includes the optics
    gain: str | None = None
    tilt_axis_source: str  # "typed" or "mdoc"
    pixel_size_source: str


def load_series(path: Path) -> list[ImportedSeries]:
    """Read an import step's ``tilt_series.json``."""
    raw = json.loads(Path(path).read_text())
    return [ImportedSeries.model_validate(s) for s in raw["series"]]


def find_mdocs(params: ImportMoviesParams) -> list[Path]:
    folder = Path(params.files_dir).expanduser()
    if not params.files_dir or not folder.is_dir():
        raise FormatError(folder, "files_dir", "no such folder")
    # the pattern is matched relative to the folder, so "*.mdoc" and "*/*.mdoc" (one folder per series) work
    return sorted(p for p in folder.glob(params.pattern) if p.is_file())


def _series_name(mdoc_path: Path) -> str:
    name = mdoc_path.name
    for suffix in (".mdoc", ".mrc", ".st", ".tif", ".tiff", ".mrcs"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


@dataclass
class _Parsed:
    mdoc: Any
    records: list[Any]
    tilt_axis_mdoc: float | None


def _parse(mdoc_path: Path, params: ImportMoviesParams) -> _Parsed:
    from tomoguide.compute.io import mdoc as mdocio

    md = mdocio.read_mdoc(mdoc_path)
    records = mdocio.tilt_records(md, initial_dose_e_A2=params.initial_dose_e_A2,
                                  dose_per_tilt_e_A2=params.dose_per_tilt_e_A2)
    axis = md.tilt_axis_deg
    if axis is not None and params.tomo5_mdoc:
        axis = -1.0 * axis - 90.0
    return _Parsed(md, records, axis)


def _ranks(values: list[int]) -> list[int]:
    """0-based ranks of the values (acquisition order as a permutation, even if the mdoc skipped numbers)."""
    order = np.argsort(np.asarray(values), kind="stable")
    ranks = np.empty(len(values), dtype=int)
    ranks[order] = np.arange(len(values))
    return ranks.tolist()


def _angle_difference(a: float, b: float) -> float:
    """Smallest absolute difference between two axis angles, in degrees (0-180)."""
    d = (a - b + 180.0) % 360.0 - 180.0
    return abs(d)


class ImportMovies(Step):
    id = "import_movies"
    title = "Import tilt-series movies"
    summary = "Read the SerialEM .mdoc files and the movies beside them."
    help = (
        "<p><b>What it does.</b> Reads every SerialEM .mdoc file that matches the pattern, finds the movie of each "
        "tilt beside it, and groups the tilts into tilt series with their acquisition metadata: tilt angle, the "
        "order in which the tilts were taken (dose-symmetric schemes go 0°, +3°, −3°, −6°, +6°, …), the dose "
        "each one received, the target defocus and the pixel size.</p>"
        "<p><b>Why.</b> Every later step needs this: dose weighting needs the order and the dose, CTF needs the "
        "optics, alignment and reconstruction need the tilt angles and the tilt-axis angle.</p>"
        "<p><b>A good result.</b> The table lists each tilt series with the expected number of tilts (41 for "
        "−60° to +60° in 3° steps), a tilt range, the pixel size and a dose per tilt of a few e⁻/Å². In the "
        "viewer, the frame sums look alike from tilt to tilt and get darker towards high tilts.</p>"
        "<p><b>What to check.</b> Missing movies (the step refuses to run and names them), a pixel size or tilt "
        "axis that contradicts the mdoc (a warning), a tilt series with far fewer tilts than the others.</p>"
    )
    Params = ImportMoviesParams
    inputs = ()

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ImportMoviesParams)
        issues: list[Issue] = []
        if not params.files_dir:
            return [Issue("error", "choose the folder with the .mdoc files and movies", "files_dir")]
        try:
            mdocs = find_mdocs(params)
        except FormatError as exc:
            return [Issue("error", str(exc), "files_dir")]
        if not mdocs:
            return [Issue("error", f"no file in {params.files_dir} matches {params.pattern!r}", "pattern")]
        if params.gain_path and not Path(params.gain_path).expanduser().is_file():
            issues.append(Issue("error", f"{params.gain_path}: gain image not found", "gain_path"))
        for path in mdocs:
            try:
                parsed = _parse(path, params)
            except FormatError as exc:
                issues.append(Issue("error", str(exc), "files_dir"))
                continue
            missing = [r for r in parsed.records if not r.movie_found]
            if missing:
                names = ", ".join(Path(str(r.movie_path or "?")).name for r in missing[:5])
                more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
                issues.append(Issue("error", f"{path.name}: {len(missing)} movie file(s) missing: {names}{more}",
                                    "files_dir"))
            if params.tilt_axis_deg is not None and parsed.tilt_axis_mdoc is not None:
                diff = _angle_difference(params.tilt_axis_deg, parsed.tilt_axis_mdoc)
                if diff > 10.0:
                    issues.append(Issue(
                        "warning",
                        f"{path.name}: the tilt-axis angle typed here ({params.tilt_axis_deg:g}°) is {diff:.0f}° "
                        f"away from the mdoc's ({parsed.tilt_axis_mdoc:g}°)"
                        + (" — about 90° away: is this a Tomo5 mdoc, or X and Y swapped?" if 75 < diff < 105
                           else " — about 180° away: this flips the tilt direction" if diff > 165 else "")
                        + "; the typed value will be used", "tilt_axis_deg"))
            if params.tilt_axis_deg is None and parsed.tilt_axis_mdoc is None:
                issues.append(Issue("error", f"{path.name}: the mdoc gives no tilt-axis angle; type one in",
                                    "tilt_axis_deg"))
            spacings = {round(r.pixel_spacing_A, 4) for r in parsed.records if r.pixel_spacing_A}
            if params.pixel_size_A is None and not spacings:
                issues.append(Issue("error", f"{path.name}: PixelSpacing missing; type the pixel size in",
                                    "pixel_size_A"))
            elif params.pixel_size_A is not None and spacings:
                mdoc_px = sorted(spacings)[0]
                if abs(params.pixel_size_A - mdoc_px) / mdoc_px > 0.02:
                    issues.append(Issue(
                        "warning", f"{path.name}: the pixel size typed here ({params.pixel_size_A:g} Å) differs from "
                        f"the mdoc's PixelSpacing ({mdoc_px:g} Å); the typed value will be used", "pixel_size_A"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        # previews: at most 512² float32 per tilt
        return Needs(disk_bytes=50 * 512 * 512 * 4, memory_bytes=512 * 1024**2)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.io import movies as movio
        from tomoguide.compute.io.mrc import write_mrc
        from tomoguide.compute.rescale import bin_to_at_most

        assert isinstance(params, ImportMoviesParams)
        mdocs = find_mdocs(params)
        optics = Optics(voltage_kV=params.voltage_kV, cs_mm=params.cs_mm,
                        amplitude_contrast=params.amplitude_contrast)
        preview_dir = ctx.run_dir / "previews"
        preview_dir.mkdir()
        all_series: list[ImportedSeries] = []
        n_total = 0
        parsed_all = []
        for path in mdocs:
            parsed = _parse(path, params)
            parsed_all.append((path, parsed))
            n_total += len(parsed.records)
        done = 0
        gain = str(Path(params.gain_path).expanduser().resolve()) if params.gain_path else None
        for path, parsed in parsed_all:
            name = _series_name(path)
            recs = sorted(parsed.records, key=lambda r: r.tilt_angle_deg)
            tilts: list[ImportedTilt] = []
            sums: list[np.ndarray] = []
            shape0: tuple[int, int] | None = None
            for r in recs:
                ctx.check_cancel()
                if not r.movie_found or r.movie_path is None:
                    raise FormatError(path, "SubFramePath", f"movie for tilt {r.tilt_angle_deg:g}° not found")
                n_frames, ny, nx, _ = movio.read_movie_header(r.movie_path)
                if shape0 is None:
                    shape0 = (ny, nx)
                elif (ny, nx) != shape0:
                    raise FormatError(r.movie_path, "frame size",
                                      f"{nx}×{ny} px differs from the other movies of {name} ({shape0[1]}×{shape0[0]})")
                frames = movio.read_movie(r.movie_path)
                frame_sum = np.asarray(frames, dtype=np.float32).sum(axis=0)
                sums.append(bin_to_at_most(frame_sum, PREVIEW_MAX_PX))
                tilts.append(ImportedTilt(
                    movie=str(Path(r.movie_path).resolve()), n_frames=n_frames, frame_shape_px=(ny, nx),
                    tilt_deg=float(r.tilt_angle_deg), acquisition_order=int(r.acquisition_order),
                    dose_e_A2=float(r.dose_e_A2), prior_dose_e_A2=float(r.prior_dose_e_A2),
                    target_defocus_um=None if r.target_defocus_um is None else float(r.target_defocus_um),
                    datetime=None if r.datetime is None else r.datetime.isoformat(),
                    mdoc_section=int(r.index_in_mdoc)))
                done += 1
                yield Progress(done / max(n_total, 1), f"{name}: tilt {r.tilt_angle_deg:+.1f}° ({done}/{n_total})")
            if not tilts:
                raise FormatError(path, "sections", "no tilt images in this mdoc")
            assert shape0 is not None
            if params.pixel_size_A is not None:
                pixel, px_source = params.pixel_size_A, "typed"
            else:
                spacing = [r.pixel_spacing_A for r in recs if r.pixel_spacing_A]
                pixel, px_source = float(np.median(spacing)), "mdoc"
            if params.tilt_axis_deg is not None:
                axis, axis_source = params.tilt_axis_deg, "typed"
            else:
                assert parsed.tilt_axis_mdoc is not None
                axis, axis_source = float(parsed.tilt_axis_mdoc), "mdoc"
            targets = [t.target_defocus_um for t in tilts]
            geometry = TiltSeriesGeometry(
                name=name, pixel_size_A=pixel, binning=1.0, image_shape_px=shape0, optics=optics,
                tilt_axis_deg=axis, tilt_angles_deg=[t.tilt_deg for t in tilts],
                acquisition_order=_ranks([t.acquisition_order for t in tilts]),
                dose_e_A2=[t.dose_e_A2 for t in tilts], prior_dose_e_A2=[t.prior_dose_e_A2 for t in tilts],
                # the mdoc reader already turned SerialEM's negative TargetDefocus into positive = underfocus (µm)
                nominal_defocus_um=None if any(t is None for t in targets) else [float(t) for t in targets])
            binning = shape0[1] / sums[0].shape[1]
            write_mrc(preview_dir / f"{name}_framesums.mrc", np.stack(sums).astype(np.float32),
                      voxel_size_A=pixel * binning, is_stack=True)
            all_series.append(ImportedSeries(
                name=name, mdoc=str(path.resolve()), tilts=tilts, geometry=geometry, gain=gain,
                tilt_axis_source=axis_source, pixel_size_source=px_source))
            ctx.log(f"{name}: {len(tilts)} tilts from {min(t.tilt_deg for t in tilts):+.1f}° to "
                    f"{max(t.tilt_deg for t in tilts):+.1f}°, {pixel:g} Å/px, tilt axis {axis:g}° ({axis_source})")
        out = ctx.run_dir / "tilt_series.json"
        out.write_text(json.dumps({"series": [s.model_dump(mode="json") for s in all_series]}, indent=1))
        metrics: dict[str, Any] = {
            "n_series": len(all_series),
            "n_tilts": sum(len(s.tilts) for s in all_series),
            "series": {s.name: {"n_tilts": len(s.tilts),
                                "tilt_min_deg": min(t.tilt_deg for t in s.tilts),
                                "tilt_max_deg": max(t.tilt_deg for t in s.tilts),
                                "pixel_size_A": s.geometry.pixel_size_A,
                                "dose_per_tilt_e_A2": float(np.median([t.dose_e_A2 for t in s.tilts])),
                                "tilt_axis_deg": s.geometry.tilt_axis_deg,
                                "frames_per_movie": int(np.median([t.n_frames for t in s.tilts]))}
                       for s in all_series},
        }
        return StepResult(outputs={"tilt_series": out, "previews": preview_dir}, metrics=metrics,
                          summary=f"imported {metrics['n_series']} tilt series, {metrics['n_tilts']} tilts")
