"""``tomoguide export PROJECT --to relion5|imod|warp DIR``: a finished (or partly finished) project as files that
RELION 5, IMOD and Warp read, with a ``README.txt`` stating every convention.

What is written (paths inside ``DIR``; every STAR path is relative to ``DIR``, so run RELION from ``DIR``):

**relion5**
    * ``tilt_series/<TS>.mrcs``: the full-size tilt series (the ``exclude`` step's stack: motion-corrected,
      views in ascending tilt order, the geometry record's binning, usually 1), hard-linked or copied;
      ``tilt_series/<TS>.star``: one row per view that is not excluded: ``rlnMicrographName`` (``k@stack``,
      k 1-based), nominal tilt and tilt axis, pre-exposure (e⁻/Å²), CTF (``rlnDefocusU/V`` Å, positive =
      underfocus, ``rlnDefocusAngle`` °, ``rlnCtfAstigmatism`` = U − V Å, max resolution, figure of merit) and the
      alignment as ``rlnTomoXTilt/YTilt/ZRot`` (°) and ``rlnTomoX/YShiftAngst`` (Å) from
      :meth:`tomoguide.geometry.TiltSeriesGeometry.to_relion5` (RELION's n // 2 image centre accounted for).
    * ``tomograms.star`` (block ``global``): optics, ``rlnTomoHand`` (the record's defocus handedness, −1 by
      default), pixel sizes, ``rlnTomoSizeX/Y/Z`` (tilt-series px), ``rlnTomoTomogramBinning`` and
      ``rlnTomoReconstructedTomogram`` (``tomograms/<TS>.mrc``) when the ``reconstruct`` step is done.
    * ``particles.star`` (blocks ``general``, ``optics``, ``particles``) and ``optimisation_set.star``: the most
      refined particles (``refine_fine``, else ``refine``, else ``extract``) with their poses; their
      pseudo-subtomograms and CTF weights linked under ``particles/``.
    * ``maps/``: ``map.mrc``, ``half1.mrc``, ``half2.mrc``, ``mask.mrc`` of the most refined average, rewritten
      with the voxel size in the header and the origin 0 (ChimeraX places them at the same spot).

**imod**
    Per tilt series ``<TS>.st`` (the same full-size stack), ``<TS>.xf`` (px of that stack), ``<TS>.tlt`` (true
    tilts), ``<TS>.rawtlt`` (nominal tilts), ``<TS>.xtilt`` (the record's X-axis tilt, 0 unless set); the binned
    stacks of the alignment and reconstruction inputs as ``<TS>_bin<B>.st`` with their own ``.xf`` (px of that
    stack), ``.tlt`` and ``.xtilt``; when the
    tomogram and the picks exist, ``<TS>_rec.mrc`` and ``<TS>.mod`` (the picks as a scattered-point model on
    it, IMOD model coordinates: voxel ``(i, j, k)`` at ``(i + 0.5, j + 0.5, k)``).

**warp**
    Per tilt series ``<TS>.xml`` (Warp's tilt-series XML: tilts, dose, UseTilt, per-tilt axis angle and offset,
    CTF grids; :func:`export_warp`) and ``<TS>.st``.

A folder holding ``.tomoguide-export.json`` was made by an earlier export: the files it lists are removed
before writing again. Any other non-empty folder is refused unless ``force`` is given. Files are never written
through: an existing name is unlinked first, so a hard link to a project file is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, Field, ValidationError

from tomoguide import __version__

FORMATS: tuple[str, ...] = ("relion5", "imod", "warp")
Format = Literal["relion5", "imod", "warp"]
MARKER = ".tomoguide-export.json"
#: averaging steps whose particles are exported (most refined first) and the extraction that made their images
PARTICLE_SOURCES: tuple[tuple[str, str], ...] = (("refine_fine", "extract_fine"), ("refine", "extract"),
                                                 ("extract", "extract"))
#: steps whose maps are exported (most refined first)
MAP_SOURCES: tuple[str, ...] = ("refine_fine", "reconstruct_particle", "refine", "initial_model")
#: steps whose tilt series can be exported (most processed first); the first is the one the particles use
SERIES_SOURCES: tuple[str, ...] = ("exclude", "ctf_estimate", "assign_alignment")


class ExportError(Exception):
    """An export that cannot be made, said in one line (nothing to export, a folder that is not ours...)."""


class ExportManifest(BaseModel):
    """``DIR/.tomoguide-export.json``: what an export wrote (``files`` relative to ``DIR``), from which steps."""

    format: Format
    tomoguide_version: str
    project: str
    created: str
    sources: dict[str, str] = Field(default_factory=dict)
    files: list[str] = Field(default_factory=list)


@dataclass
class ExportResult:
    """What :func:`export_project` did: the folder, the files written (relative to it) and notes for the user."""

    folder: Path
    format: str
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)


def default_folder(project_dir: Path, fmt: str) -> Path:
    """``PROJECT/export/FORMAT``, the folder the summary's export command lines name."""
    return Path(project_dir) / "export" / fmt


# ---------------------------------------------------------------------------------------------------------------
# the output folder
# ---------------------------------------------------------------------------------------------------------------


class _Writer:
    """Places files inside the export folder and remembers them (relative, POSIX) for the manifest."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.files: list[str] = []

    def path(self, rel: str) -> Path:
        """``folder/rel`` ready to be written: parents made, an existing file unlinked (never written through);
        refused when a folder on the way is a symbolic link (nothing is written outside the export folder)."""
        if rel.startswith("/") or ".." in rel.split("/"):
            raise ExportError(f"{rel}: not a plain relative name")
        p = _inside(self.folder, rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        _inside(self.folder, rel)  # a link made meanwhile
        if p.is_symlink() or p.exists():
            if p.is_dir() and not p.is_symlink():
                raise ExportError(f"{p}: a folder is in the way of a file the export writes")
            p.unlink()
        if rel not in self.files:
            self.files.append(rel)
        return p

    def link(self, src: Path, rel: str) -> Path:
        """``src`` placed at ``rel``: a hard link when the file system allows one, else a copy."""
        if not Path(src).is_file():
            raise ExportError(f"{src}: missing (the step's output was deleted or moved: run the step again)")
        dst = self.path(rel)
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        return dst

    def text(self, rel: str, text: str) -> Path:
        dst = self.path(rel)
        dst.write_text(text, encoding="utf-8")
        return dst


def _inside(folder: Path, rel: str) -> Path:
    """``folder/rel`` when no folder between ``folder`` and the file is a symbolic link (the file itself may be
    one: it is unlinked, never followed), else :class:`ExportError`."""
    from tomoguide.integrity import PathRefused, guarded_path

    parts = Path(rel).parts
    try:
        if len(parts) > 1:
            guarded_path(folder, *parts[:-1])
        else:
            guarded_path(folder)
    except PathRefused as exc:
        raise ExportError(str(exc)) from None
    return folder.joinpath(*parts)


def prepare_folder(folder: Path, *, force: bool = False) -> None:
    """Make ``folder`` ready: created when absent; a previous export's files (listed in its marker) removed;
    a non-empty folder that no export made refused unless ``force`` (then files are only added or replaced)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ExportError(f"{folder}: exists and is not a folder")
    if folder.is_symlink():
        raise ExportError(f"{folder}: a symbolic link; give the real folder")
    if not folder.exists():
        folder.mkdir(parents=True)
        return
    marker = folder / MARKER
    if marker.is_file():
        try:
            old = ExportManifest.model_validate_json(marker.read_text(encoding="utf-8"))
        except (ValidationError, OSError, UnicodeDecodeError) as exc:
            if not force:
                raise ExportError(f"{marker}: not a readable export record ({type(exc).__name__}); remove the "
                                  "folder or give --force") from None
            return
        for rel in old.files:
            if ".." in Path(rel).parts or Path(rel).is_absolute():
                continue
            try:
                p = _inside(folder, rel)
            except ExportError:
                continue  # under a linked folder: not ours to delete
            if p.is_file() or p.is_symlink():
                p.unlink()
        for d in sorted((p for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()),
                        key=lambda p: len(p.parts), reverse=True):
            try:
                _inside(folder, (d.relative_to(folder) / "x").as_posix())  # no linked folder on the way
            except ExportError:
                continue
            if not any(d.iterdir()):
                d.rmdir()
        marker.unlink()
        return
    if any(folder.iterdir()) and not force:
        raise ExportError(f"{folder}: a folder that is not empty and was not made by `tomoguide export`; "
                          "give an empty or new folder, or --force to write into it anyway")


# ---------------------------------------------------------------------------------------------------------------
# reading the project
# ---------------------------------------------------------------------------------------------------------------


def _title(step_id: str) -> str:
    from tomoguide.steps import registry

    try:
        return registry.get(step_id).title
    except KeyError:
        return step_id


def _done(proj: Any, step_id: str) -> bool:
    st = proj.data.steps.get(step_id)
    return st is not None and st.status == "done" and bool(st.outputs)


def _first_done(proj: Any, steps: tuple[str, ...]) -> str | None:
    return next((s for s in steps if _done(proj, s)), None)


def _not_done(step_ids: tuple[str, ...], proj: Any, what: str) -> ExportError:
    st = proj.data.steps.get(step_ids[-1])
    status = st.status if st is not None else "missing"
    names = " or ".join(f"“{_title(s)}” ({s})" for s in step_ids)
    return ExportError(f"nothing to export: {what} needs the step {names} to be done "
                       f"(“{_title(step_ids[-1])}” is {status}); run `tomoguide run {proj.dir}` first")


def _series(proj: Any, step_id: str) -> tuple[Any, Path]:
    from tomoguide.steps.records import SeriesSet

    return SeriesSet.load(proj.output_path(step_id, "series"))


def _tomograms(proj: Any) -> dict[str, tuple[Any, Path]]:
    """Per series name its ``reconstruct`` entry and the entry's tomogram file ({} when not done)."""
    from tomoguide.steps.records import SeriesSet

    if not _done(proj, "reconstruct"):
        return {}
    sset, base = SeriesSet.load(proj.output_path("reconstruct", "tomograms"))
    out = {}
    for s in sset.series:
        try:
            out[s.name] = (s, s.path("tomogram", base))
        except KeyError:
            continue
    return out


def _ctf_columns(entry: Any, base: Path, n_views: int, tilts: np.ndarray) -> pd.DataFrame | None:
    """The series' per-view CTF values (rows in view order), or None when it has none that fit its views."""
    from tomoguide.compute.io.star import read_ctf_star

    try:
        ctf = read_ctf_star(entry.path("ctf_star", base))
    except KeyError:
        return None
    if len(ctf) != n_views:
        return None
    if "rlnTomoNominalStageTiltAngle" in ctf.columns:
        t = pd.to_numeric(ctf["rlnTomoNominalStageTiltAngle"], errors="coerce").to_numpy(float)
        if not np.allclose(t, tilts, atol=1e-3):
            return None
    return ctf.reset_index(drop=True)


# ---------------------------------------------------------------------------------------------------------------
# RELION 5
# ---------------------------------------------------------------------------------------------------------------


def _tilt_table(g: Any, stack_rel: str, ctf: pd.DataFrame | None) -> pd.DataFrame:
    """The RELION 5 per-tilt table of geometry ``g`` (views not excluded), images ``k@stack_rel``."""
    keep = g.included_views()
    rel = g.to_relion5()
    t = np.asarray(g.tilt_angles_deg, np.float64)
    cols: dict[str, Any] = {
        "rlnMicrographName": [f"{int(i) + 1}@{stack_rel}" for i in keep],
        "rlnTomoNominalStageTiltAngle": t[keep],
        "rlnTomoNominalTiltAxisAngle": np.full(keep.size, float(g.tilt_axis_deg)),
    }
    if g.prior_dose_e_A2 is not None:
        cols["rlnMicrographPreExposure"] = np.asarray(g.prior_dose_e_A2, np.float64)[keep]
    if g.nominal_defocus_um is not None:  # SerialEM's sign as RELION's import keeps it: negative = underfocus
        cols["rlnTomoNominalDefocus"] = -np.asarray(g.nominal_defocus_um, np.float64)[keep]
    if ctf is not None:
        u = pd.to_numeric(ctf["rlnDefocusU"], errors="coerce").to_numpy(float)[keep]
        v = pd.to_numeric(ctf["rlnDefocusV"], errors="coerce").to_numpy(float)[keep]
        cols["rlnDefocusU"] = u
        cols["rlnDefocusV"] = v
        cols["rlnDefocusAngle"] = pd.to_numeric(ctf["rlnDefocusAngle"], errors="coerce").to_numpy(float)[keep]
        cols["rlnCtfAstigmatism"] = u - v
        for c in ("rlnCtfMaxResolution", "rlnCtfFigureOfMerit", "rlnPhaseShift"):
            if c in ctf.columns:
                cols[c] = pd.to_numeric(ctf[c], errors="coerce").to_numpy(float)[keep]
    for c, values in rel.items():
        cols[c] = np.asarray(values, np.float64)[keep]
    return pd.DataFrame(cols)


def _particles_source(proj: Any) -> tuple[str, str] | None:
    """(averaging or extraction step, extraction step) of the most refined particles, or None."""
    for step_id, extract_id in PARTICLE_SOURCES:
        if _done(proj, step_id) and _done(proj, extract_id):
            return step_id, extract_id
    return None


def _export_particles(proj: Any, w: _Writer, series_px: dict[str, float], result: ExportResult) -> bool:
    """``particles.star`` and the pseudo-subtomograms; False (with a note) when there are none to export."""
    from tomoguide.compute.io.star import read_particles_star, write_particles_star
    from tomoguide.steps.average_records import AverageRecord, ParticleStack
    from tomoguide.steps.records import resolve_in

    src = _particles_source(proj)
    if src is None:
        result.notes.append(f"no particles exported: the step “{_title('extract')}” (extract) is not done")
        return False
    step_id, extract_id = src
    stack, stack_dir = ParticleStack.load(proj.output_path(extract_id, "particles"))
    if step_id == extract_id:
        star_path = stack.path("star", stack_dir)
    else:
        rec, folder = AverageRecord.load(proj.output_path(step_id, "average"))
        star_path = rec.path("particles", folder)
    ps = read_particles_star(star_path)
    df = ps.particles.copy()
    unknown = sorted(set(df["rlnTomoName"]) - set(series_px))
    if unknown:
        result.notes.append(f"particles of tilt series {', '.join(unknown)} left out: those series are not exported")
        df = df[df["rlnTomoName"].isin(set(series_px))].reset_index(drop=True)
    for col in ("rlnImageName", "rlnCtfImage"):
        if col not in df.columns:
            continue
        out = []
        for name in df[col].astype(str):
            src_file = resolve_in(stack_dir, name, col)
            rel = f"particles/{name}"
            w.link(src_file, rel)
            out.append(rel)
        df[col] = out
    df = df[[c for c in df.columns if c.startswith("rln")]]
    optics = ps.optics.iloc[:1].copy() if ps.optics is not None and len(ps.optics) else pd.DataFrame(index=[0])
    ts_px = float(next(iter(series_px.values())))
    premultiplied = bool(getattr(proj.params(extract_id), "ctf_premultiply", True))
    g_opt = _optics_of(proj)
    values = {
        "rlnOpticsGroup": 1, "rlnOpticsGroupName": "opticsGroup1",
        "rlnSphericalAberration": g_opt.cs_mm, "rlnVoltage": g_opt.voltage_kV,
        "rlnAmplitudeContrast": g_opt.amplitude_contrast, "rlnTomoTiltSeriesPixelSize": ts_px,
        "rlnImagePixelSize": stack.voxel_A, "rlnImageSize": stack.box_px,
        "rlnImageDimensionality": stack.dimensionality,
        "rlnCtfDataAreCtfPremultiplied": 1 if premultiplied else 0,
        "rlnTomoSubtomogramBinning": stack.voxel_A / ts_px,
    }
    for k, v in values.items():
        optics[k] = [v]
    df["rlnOpticsGroup"] = 1
    write_particles_star(w.path("particles.star"), df, optics.reset_index(drop=True),
                         general={"rlnTomoSubTomosAre2DStacks": 1 if stack.dimensionality == 2 else 0})
    result.sources["particles"] = step_id
    result.notes.append(f"{len(df)} particles of “{_title(step_id)}” ({step_id}), {stack.box_px}³ voxels of "
                        f"{stack.voxel_A:g} Å")
    return True


def _optics_of(proj: Any) -> Any:
    src = _first_done(proj, SERIES_SOURCES)
    sset, _ = _series(proj, src)  # type: ignore[arg-type]
    return sset.series[0].geometry.optics


def _export_maps(proj: Any, w: _Writer, result: ExportResult) -> list[str]:
    """The most refined average's maps under ``maps/`` (voxel size in the header, origin 0)."""
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.steps.average_records import AverageRecord

    step_id = _first_done(proj, MAP_SOURCES)
    if step_id is None:
        result.notes.append(f"no maps exported: no averaging step is done ({', '.join(MAP_SOURCES)})")
        return []
    rec, folder = AverageRecord.load(proj.output_path(step_id, "average"))
    written = []
    for role in ("map", "half1", "half2", "mask"):
        try:
            p = rec.path(role, folder)
        except KeyError:
            continue
        if not p.is_file():
            continue
        data, _ = read_mrc(p)
        write_mrc(w.path(f"maps/{role}.mrc"), np.asarray(data), rec.voxel_A)
        written.append(f"maps/{role}.mrc")
    result.sources["maps"] = step_id
    res = f"{rec.resolution_A:.2f} Å" if rec.resolution_A else "no resolution"
    result.notes.append(f"maps of “{_title(step_id)}” ({step_id}): {', '.join(written)}; {rec.voxel_A:g} Å voxels, "
                        f"{res}, symmetry {rec.symmetry}")
    return written


def export_relion5(proj: Any, w: _Writer, result: ExportResult) -> None:
    """Write the RELION 5 files (module docstring) into ``w.folder``."""
    from tomoguide.compute.io.mrc import read_header
    from tomoguide.compute.io.star import write_star, write_tilt_series_star, write_tomograms_star

    if not _done(proj, "exclude"):
        raise _not_done(("exclude",), proj, "the RELION 5 export (tilt series with alignment and CTF)")
    # the finer extraction's alignment and CTF when it refined them from the particles (refine_acquisition)
    src = "extract_fine" if _done(proj, "extract_fine") and "series" in proj.data.steps["extract_fine"].outputs \
        else "exclude"
    sset, base = _series(proj, src)
    result.sources["tilt_series"] = src
    tomos = _tomograms(proj)
    rows = []
    series_px: dict[str, float] = {}
    for s in sset.series:
        g = s.geometry
        stack = s.path("stack", base)
        stack_rel = f"tilt_series/{s.name}.mrcs"
        w.link(stack, stack_rel)
        ctf = _ctf_columns(s, base, g.n_views, np.asarray(g.tilt_angles_deg))
        if ctf is None:
            result.notes.append(f"{s.name}: no CTF values written (no per-view CTF table that fits the views)")
        table = _tilt_table(g, stack_rel, ctf)
        ts_star = f"tilt_series/{s.name}.star"
        write_tilt_series_star(w.path(ts_star), table, tomo_name=s.name)
        px = float(g.pixel_size_binned_A)
        series_px[s.name] = px
        ny, nx = g.image_shape_px
        row: dict[str, Any] = {
            "rlnTomoName": s.name, "rlnTomoTiltSeriesStarFile": ts_star,
            "rlnVoltage": g.optics.voltage_kV, "rlnSphericalAberration": g.optics.cs_mm,
            "rlnAmplitudeContrast": g.optics.amplitude_contrast, "rlnMicrographOriginalPixelSize": g.pixel_size_A,
            "rlnTomoHand": int(g.defocus_handedness), "rlnTomoTiltSeriesPixelSize": px,
        }
        if s.name in tomos:
            entry, tomo_file = tomos[s.name]
            bin_t = float(entry.geometry.pixel_size_binned_A) / px
            nz_t, ny_t, nx_t = entry.info.get("shape_zyx") or read_header(tomo_file).shape[-3:]
            row.update({"rlnTomoSizeX": int(round(nx_t * bin_t)), "rlnTomoSizeY": int(round(ny_t * bin_t)),
                        "rlnTomoSizeZ": int(round(nz_t * bin_t)), "rlnTomoTomogramBinning": bin_t,
                        "rlnTomoReconstructedTomogram": f"tomograms/{s.name}.mrc"})
            w.link(tomo_file, f"tomograms/{s.name}.mrc")
        else:
            thick = getattr(proj.params("reconstruct"), "thickness_px", None)
            rb = getattr(proj.params("preprocess_for_reconstruction"), "binning", None)
            row.update({"rlnTomoSizeX": int(nx), "rlnTomoSizeY": int(ny)})
            if isinstance(thick, (int, float)) and isinstance(rb, (int, float)):
                row["rlnTomoSizeZ"] = int(round(thick * rb / g.binning))
        rows.append(row)
    tomo_df = pd.DataFrame(rows)
    for c in ("rlnTomoSizeZ", "rlnTomoTomogramBinning", "rlnTomoReconstructedTomogram"):
        if c in tomo_df.columns and tomo_df[c].isna().any():
            tomo_df = tomo_df.drop(columns=[c])
    write_tomograms_star(w.path("tomograms.star"), tomo_df)
    if _export_particles(proj, w, series_px, result):
        write_star(w.path("optimisation_set.star"),
                   {"": {"rlnTomoParticlesFile": "particles.star", "rlnTomoTomogramsFile": "tomograms.star"}})
    _export_maps(proj, w, result)
    hands = sorted({int(s.geometry.defocus_handedness) for s in sset.series})
    w.text("README.txt", _relion_readme(proj, sset, hands, result))


def _relion_readme(proj: Any, sset: Any, hands: list[int], result: ExportResult) -> str:
    lines = [
        f"RELION 5 export of the tomoguide project {proj.dir}",
        f"written by tomoguide {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "",
        "Run RELION from this folder: every path in the STAR files is relative to it.",
        "",
        "Files",
        "  tomograms.star            one row per tilt series (block global)",
        "  tilt_series/TS.star       per view: image (k@tilt_series/TS.mrcs, k from 1), tilts, dose, CTF, alignment",
        "  tilt_series/TS.mrcs       the full-size motion-corrected tilt series (views in ascending tilt order;",
        "                            excluded views stay in the stack but have no row in TS.star)",
        "  tomograms/TS.mrc          tomoguide's reconstruction (when done), binned by rlnTomoTomogramBinning",
        "  particles.star            particles with their poses (blocks general, optics, particles)",
        "  particles/subtomos/       their pseudo-subtomograms (*_data.mrc) and CTF^2 weights (*_weights.mrc)",
        "  optimisation_set.star     particles.star + tomograms.star, for RELION 5's tomography jobs",
        "  maps/                     map.mrc (merged, filtered), half1.mrc, half2.mrc (unfiltered), mask.mrc:",
        "                            voxel size in the header, origin 0 (open them together in ChimeraX)",
        "",
        "Sources",
    ]
    lines += [f"  {k}: step {v} ({_title(v)})" for k, v in result.sources.items()]
    lines += [f"  {n}" for n in result.notes]
    lines += [
        "",
        "Conventions",
        f"  rlnTomoHand = {', '.join(f'{h:+d}' for h in hands)}: tomoguide's defocus handedness (-1 by default, as",
        "    RELION's import default and IMOD's ctfphaseflip: at a positive tilt the aligned +X side of a view is",
        "    lower in the microscope and more underfocused). The CTF step's tilt-direction check tests the tilt",
        "    direction against the Thon rings of the tilted views (see its page).",
        "  Defocus: rlnDefocusU/V in Å, positive = underfocus; rlnDefocusAngle in degrees, the U axis from X,",
        "    counter-clockwise; rlnCtfAstigmatism = rlnDefocusU - rlnDefocusV (Å).",
        "    rlnTomoNominalDefocus (µm) is SerialEM's target with SerialEM's sign (negative = underfocus).",
        "  Alignment: image = shift + centre + Rz(rlnTomoZRot) Ry(rlnTomoYTilt) Rx(rlnTomoXTilt) (p - centre), RELION",
        "    5's projection model, with the image centre at n // 2 (RELION's); rlnTomoYTilt is the true tilt",
        "    (nominal + tilt offset), rlnTomoZRot the in-plane rotation that puts the tilt axis on Y, and",
        "    rlnTomoX/YShiftAngst the shifts in Å. A magnification or stretch in tomoguide's transforms has no",
        "    RELION column and is dropped.",
        "  rlnTomoNominalTiltAxisAngle: SerialEM's tilt-axis angle, from the image +Y axis, counter-clockwise.",
        "  Particles: rlnCenteredCoordinateX/Y/ZAngst in Å from the tomogram centre; orientations are RELION ZYZ",
        "    Euler angles (rlnAngleRot/Tilt/Psi, degrees); rlnOriginX/Y/ZAngst in Å (the particle centre is the",
        "    coordinate minus the origin, RELION's rule); rlnRandomSubset the half sets of the gold-standard FSC.",
        "  Pseudo-subtomograms: 3D (rlnTomoSubTomosAre2DStacks 0) unless general says otherwise; the data are",
        "    CTF-premultiplied when rlnCtfDataAreCtfPremultiplied is 1; the weights (float16) are CTF^2 x dose",
        "    weights on the full Fourier grid with the zero frequency at the box centre (B // 2).",
        "    RELION's own \"Extract subtomos\" job can make them again from tomograms.star and particles.star.",
        "  Tomograms: volume centre at voxel (n - 1) / 2 (tomoguide), RELION's is n / 2: at most half a voxel apart.",
        "  Images are in the MRC frame (IMOD's, origin at the bottom left). Pixel sizes in Å, doses in e-/Å^2.",
    ]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------------
# IMOD
# ---------------------------------------------------------------------------------------------------------------


def pick_model_points(xyz_centred_A: Any, shape_zyx: tuple[int, int, int], voxel_A: float) -> np.ndarray:
    """IMOD model coordinates (n, 3) of particles at ``xyz_centred_A`` (Å from the tomogram centre, tomoguide's
    convention: the centre at voxel ``(n - 1) / 2``) in a tomogram of ``shape_zyx`` voxels of ``voxel_A`` Å:
    voxel ``(i, j, k)`` is at ``(i + 0.5, j + 0.5, k)`` in IMOD (x, y from the pixel edges, z the section)."""
    nz, ny, nx = shape_zyx
    from tomoguide.compute.io.imod import model_points_from_voxels

    centre = (np.array([nx, ny, nz], np.float64) - 1.0) / 2.0
    vox = np.asarray(xyz_centred_A, np.float64).reshape(-1, 3) / float(voxel_A) + centre
    return model_points_from_voxels(vox)


#: steps whose binned stacks the IMOD export writes beside the full-size one, each with its own .xf
BINNED_SOURCES: tuple[str, ...] = ("preprocess_for_alignment", "preprocess_for_reconstruction")


def _binned_stacks(proj: Any, sset: Any) -> dict[str, dict[str, tuple[Any, Path]]]:
    """Per series name: the binned stacks (entry, file) of :data:`BINNED_SOURCES` that are done, have the series'
    views and a binning other than its own (a different binning each)."""
    from tomoguide.steps.records import SeriesSet

    views = {s.name: (s.geometry.n_views, float(s.geometry.binning)) for s in sset.series}
    out: dict[str, dict[str, tuple[Any, Path]]] = {}
    for step_id in BINNED_SOURCES:
        if not _done(proj, step_id):
            continue
        bset, bbase = SeriesSet.load(proj.output_path(step_id, "series"))
        for e in bset.series:
            n, b0 = views.get(e.name, (None, None))
            b = float(e.geometry.binning)
            have = {float(x.geometry.binning) for x, _ in out.get(e.name, {}).values()}
            if n != e.geometry.n_views or b == b0 or b in have:
                continue
            out.setdefault(e.name, {})[step_id] = (e, e.path("stack", bbase))
    return out


def export_imod(proj: Any, w: _Writer, result: ExportResult) -> None:
    """Write the IMOD files (module docstring) into ``w.folder``."""
    from tomoguide.compute.io.imod import format_view_list, write_mod_points, write_tlt, write_xf, write_xtilt
    from tomoguide.compute.io.star import read_particles_star

    src = _first_done(proj, SERIES_SOURCES)
    if src is None:
        raise _not_done(tuple(reversed(SERIES_SOURCES)), proj, "the IMOD export (an aligned tilt series)")
    sset, base = _series(proj, src)
    result.sources["tilt_series"] = src
    tomos = _tomograms(proj)
    picks = read_particles_star(proj.output_path("pick", "particles")).particles if _done(proj, "pick") else None
    if picks is None:
        result.notes.append(f"no model of the picks: the step “{_title('pick')}” (pick) is not done")
    else:
        result.sources["picks"] = "pick"
    binned = _binned_stacks(proj, sset)
    per_series = []
    for s in sset.series:
        g = s.geometry
        w.link(s.path("stack", base), f"{s.name}.st")
        rows, tlt = g.to_imod()
        write_xf(w.path(f"{s.name}.xf"), rows)
        write_tlt(w.path(f"{s.name}.tlt"), tlt, fmt="%9.4f")
        write_tlt(w.path(f"{s.name}.rawtlt"), np.asarray(g.tilt_angles_deg), fmt="%9.4f")
        write_xtilt(w.path(f"{s.name}.xtilt"), np.full(g.n_views, float(g.x_tilt_deg)), fmt="%9.4f")
        ny, nx = g.image_shape_px
        text = (f"  {s.name}.st: {nx} x {ny} px, {g.n_views} views, {g.pixel_size_binned_A:g} Å/px (binning "
                f"{g.binning:g} of the {g.pixel_size_A:g} Å/px images); .xf shifts in these pixels; tilt axis "
                f"{g.tilt_axis_deg:.2f}°, tilt offset {g.tilt_offset_deg:+.2f}°")
        excl = g.excluded_view_list()
        text += f"; excluded views (EXCLUDELIST): {format_view_list(excl)}" if excl else "; no excluded views"
        for step_id, (entry_b, stack_b) in binned.get(s.name, {}).items():
            b = float(entry_b.geometry.binning)
            gb = g.at_binning(b)
            stem = f"{s.name}_bin{b:g}"
            w.link(stack_b, f"{stem}.st")
            write_xf(w.path(f"{stem}.xf"), gb.to_imod()[0])
            write_tlt(w.path(f"{stem}.tlt"), tlt, fmt="%9.4f")
            write_xtilt(w.path(f"{stem}.xtilt"), np.full(g.n_views, float(g.x_tilt_deg)), fmt="%9.4f")
            text += (f"\n  {stem}.st (+ .xf, .tlt, .xtilt): the stack of “{_title(step_id)}” ({step_id}), binning "
                     f"{b:g}, {gb.pixel_size_binned_A:g} Å/px; the same alignment in its pixels")
        if s.name in tomos:
            entry, tomo_file = tomos[s.name]
            w.link(tomo_file, f"{s.name}_rec.mrc")
            nz_t, ny_t, nx_t = entry.info.get("shape_zyx")
            vox = float(entry.geometry.pixel_size_binned_A)
            text += (f"\n  {s.name}_rec.mrc: tomoguide's tomogram, {nx_t} x {ny_t} x {nz_t} voxels of {vox:g} Å "
                     f"(binning {vox / g.pixel_size_binned_A:g} of the stack), stored as (x, y, z) with z the beam "
                     "direction (not IMOD's default rotated layout)")
            if picks is not None:
                mine = picks[picks["rlnTomoName"].astype(str) == s.name]
                xyz = mine[["rlnCenteredCoordinateXAngst", "rlnCenteredCoordinateYAngst",
                            "rlnCenteredCoordinateZAngst"]].to_numpy(np.float64)
                pts = pick_model_points(xyz, (nz_t, ny_t, nx_t), vox)
                write_mod_points(w.path(f"{s.name}.mod"), [(f"{s.name} picks", pts)],
                                 image_shape_xyz=(nx_t, ny_t, nz_t), pixel_size=vox, units="angstrom")
                text += f"\n  {s.name}.mod: {len(pts)} picks on {s.name}_rec.mrc (3dmod {s.name}_rec.mrc {s.name}.mod)"
        per_series.append(text)
    hands = ", ".join(f"{h:+d}" for h in sorted({int(s.geometry.defocus_handedness) for s in sset.series}))
    readme = [
        f"IMOD export of the tomoguide project {proj.dir}",
        f"written by tomoguide {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"tilt series of the step “{_title(src)}” ({src}): the full-size motion-corrected stacks",
        "",
        *per_series,
        *(f"  {n}" for n in result.notes),
        "",
        "Conventions",
        "  .xf: A11 A12 A21 A22 DX DY per view, raw image -> aligned image (tilt axis along Y), coordinates from the",
        "    image centre, DX DY in pixels of the .st stack beside it. newstack -xform TS.xf TS.st TS.ali aligns it.",
        "  .tlt: true tilt angles (nominal + tilt offset), degrees, in stack order (ascending tilt);",
        "    .rawtlt: nominal stage tilts; .xtilt: X-axis tilt per view (0 unless tomoguide's record sets one;",
        "    a non-zero value's sign relative to IMOD's XAXISTILT has not been checked).",
        f"  Defocus handedness {hands}: tomoguide's record (-1 by default, as ctfphaseflip assumes: at a positive",
        "    tilt the right side of an aligned image is lower in the scope and more underfocused; +1 is the mirror).",
        "  .mod: binary IMOD model, one scattered-point object; voxel (i, j, k) of the tomogram (0-based, numpy",
        "    [k, j, i]) is the model point (i + 0.5, j + 0.5, k); model pixel size in Å.",
    ]
    w.text("README.txt", "\n".join(readme) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# Warp / WarpTools
# ---------------------------------------------------------------------------------------------------------------


def export_warp(proj: Any, w: _Writer, result: ExportResult) -> None:
    """Write per tilt series ``<TS>.xml`` (Warp's tilt-series XML) and ``<TS>.st`` into ``w.folder``.

    The alignment follows Warp's own import of an IMOD alignment (``TiltSeries.ImportAlignments``, the inverse
    of what :func:`tomoguide.steps.align._warp_alignment` reads): ``Angles`` = true tilts (nominal + offset,
    ``AreAnglesInverted="False"``), ``AxisAngle`` = −(rotation angle of the ``.xf`` matrix), ``AxisOffsetX/Y`` =
    the specimen shift ``s = −A⁻¹ d`` in Å; ``UseTilt`` False for excluded views; ``Dose`` the dose before each
    tilt; the per-tilt CTF as ``1 × 1 × n`` grids (µm)."""
    from tomoguide.compute.io.warp import write_warp_tilt_series_xml
    from tomoguide.geometry import rotation_angle_deg

    src = _first_done(proj, SERIES_SOURCES)
    if src is None:
        raise _not_done(tuple(reversed(SERIES_SOURCES)), proj, "the Warp export (an aligned tilt series)")
    sset, base = _series(proj, src)
    result.sources["tilt_series"] = src
    per_series = []
    for s in sset.series:
        g = s.geometry
        w.link(s.path("stack", base), f"{s.name}.st")
        m = g.xf_array()
        px = float(g.pixel_size_binned_A)
        ctf = _ctf_columns(s, base, g.n_views, np.asarray(g.tilt_angles_deg))
        use = np.zeros(g.n_views, bool)
        use[g.included_views()] = True
        prior = (np.zeros(g.n_views) if g.prior_dose_e_A2 is None
                 else np.asarray(g.prior_dose_e_A2, np.float64))
        cols = {} if ctf is None else {
            "defocus_u_A": pd.to_numeric(ctf["rlnDefocusU"], errors="coerce").to_numpy(float),
            "defocus_v_A": pd.to_numeric(ctf["rlnDefocusV"], errors="coerce").to_numpy(float),
            "defocus_angle_deg": pd.to_numeric(ctf["rlnDefocusAngle"], errors="coerce").to_numpy(float)}
        if ctf is None:
            result.notes.append(f"{s.name}: no CTF grids written (no per-view CTF table that fits the views)")
        write_warp_tilt_series_xml(
            w.path(f"{s.name}.xml"), tilt_deg=g.true_tilt_deg(), dose_prior_e_per_A2=prior,
            axis_angle_deg=-rotation_angle_deg(m[:, :, :2]), axis_offset_A=g.specimen_shifts_px() * px,
            pixel_size_A=px, voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm,
            amplitude_contrast=g.optics.amplitude_contrast, use_tilt=use,
            movie_paths=[f"{s.name}_{k + 1:03d}_{t:.1f}.mrc" for k, t in enumerate(g.tilt_angles_deg)], **cols)
        per_series.append(f"  {s.name}.xml, {s.name}.st: {g.n_views} views ({int((~use).sum())} with UseTilt False), "
                          f"{px:g} Å/px, tilt axis {g.tilt_axis_deg:.2f}°")
    hands = ", ".join(f"{h:+d}" for h in sorted({int(s.geometry.defocus_handedness) for s in sset.series}))
    readme = [
        f"Warp / WarpTools export of the tomoguide project {proj.dir}",
        f"written by tomoguide {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        f"tilt series of the step “{_title(src)}” ({src}): the full-size motion-corrected stacks",
        "",
        *per_series,
        *(f"  {n}" for n in result.notes),
        "",
        "Conventions (as Warp's own import of an IMOD alignment writes them)",
        "  Angles: true tilts in stack order (ascending tilt), degrees; AreAnglesInverted False.",
        "  AxisAngle: -(rotation angle of IMOD's .xf matrix), degrees; AxisOffsetX/Y: the specimen shift",
        "    s = -A^-1 d of the .xf row (A, d), in Å.",
        "  Dose: e-/Å² received before each tilt. UseTilt False: views excluded in tomoguide.",
        "  GridCTF / GridCTFDefocusDelta / GridCTFDefocusAngle (1 x 1 x n): mean defocus and U - V in µm (positive =",
        "    underfocus) and the astigmatism angle in degrees, per tilt.",
        f"  Defocus handedness of tomoguide's record: {hands} (-1 by default; Warp flips it with its own setting).",
        "  MoviePath names the tilts (NAME_<k>_<tilt>.mrc); the movies themselves are not exported.",
    ]
    w.text("README.txt", "\n".join(readme) + "\n")


# ---------------------------------------------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------------------------------------------

_EXPORTERS: dict[str, Callable[[Any, _Writer, ExportResult], None]] = {"relion5": export_relion5,
                                                                          "imod": export_imod,
                                                                          "warp": export_warp}


def export_project(project_dir: str | os.PathLike[str], fmt: str, folder: str | os.PathLike[str] | None = None,
                   *, force: bool = False) -> ExportResult:
    """Export the project at ``project_dir`` as ``fmt`` ("relion5" or "imod") into ``folder`` (default
    ``PROJECT/export/FORMAT``). The project is opened read-only (no lock taken, nothing in it changed).

    Raises :class:`ExportError` (one line) when nothing can be exported (a step not done, named), when a record
    is damaged (``FILE: field: problem``) or when ``folder`` is not empty and not an earlier export's."""
    from tomoguide.compute.io.errors import FormatError
    from tomoguide.project import Project, ProjectError

    if fmt not in _EXPORTERS:
        raise ExportError(f"unknown format {fmt!r}; the formats are: {', '.join(FORMATS)}")
    try:
        proj = Project.open(project_dir, readonly=True)
    except ProjectError as exc:
        raise ExportError(str(exc)) from None
    try:
        out = Path(folder) if folder is not None else default_folder(proj.dir, fmt)
        out = out.absolute()
        if out.resolve().is_relative_to((proj.dir / "steps").resolve()):
            raise ExportError(f"{out}: inside the project's steps/ folder; choose another folder")
        # the checks that need no writing first: a project with nothing to export leaves no folder behind
        if fmt == "relion5" and not _done(proj, "exclude"):
            raise _not_done(("exclude",), proj, "the RELION 5 export (tilt series with alignment and CTF)")
        if fmt in ("imod", "warp") and _first_done(proj, SERIES_SOURCES) is None:
            raise _not_done(tuple(reversed(SERIES_SOURCES)), proj,
                            f"the {'IMOD' if fmt == 'imod' else 'Warp'} export (an aligned tilt series)")
        prepare_folder(out, force=force)
        result = ExportResult(folder=out, format=fmt)
        w = _Writer(out)
        try:
            _EXPORTERS[fmt](proj, w, result)
        except (FormatError, KeyError, OSError, ValueError) as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"export to {out} stopped: {msg}") from None
        finally:
            manifest = ExportManifest(format=fmt, tomoguide_version=__version__, project=str(proj.dir),
                                      created=time.strftime("%Y-%m-%dT%H:%M:%S"), sources=result.sources,
                                      files=sorted(w.files))
            (out / MARKER).write_text(manifest.model_dump_json(indent=1), encoding="utf-8")
        result.files = sorted(w.files)
        return result
    finally:
        proj.close()


def summary_lines(result: ExportResult) -> list[str]:
    """What the command line prints after an export."""
    lines = [f"exported {len(result.files)} files as {result.format} to {result.folder}"]
    lines += [f"  {n}" for n in result.notes]
    lines.append(f"  conventions and file list: {result.folder / 'README.txt'}")
    return lines


def manifest_of(folder: Path) -> ExportManifest:
    """The marker of an export folder (for tests and tools)."""
    return ExportManifest.model_validate(json.loads((Path(folder) / MARKER).read_text(encoding="utf-8")))
