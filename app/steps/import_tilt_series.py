"""Entry point (a): tilt series without movies (the import step with ``source = "tilt series"``).

A user who already has motion-corrected tilt series — IMOD/SerialEM stacks (``.st``, ``.mrc``, ``.mrcs``) — starts
here instead of at the movies. Per stack ``NAME.st`` in the folder or in one of its sub-folders (IMOD's one folder
per series), with its companion files beside it:

* **tilt angles** (required), in the stack's section order: ``NAME.rawtlt`` (IMOD's nominal angles; one column or
  several: an acquisition-order column is recognised, :func:`tomoguide.compute.io.imod.read_tilt_table`), else
  ``NAME.tlt``, else the stack's own SerialEM mdoc ``NAME.st.mdoc`` / ``NAME.mrc.mdoc`` / ``NAME.mdoc``
  (``[ZValue = k]`` = section ``k``). A stack without any is left out with a warning (a stack of other
  content — ``NAME_rec.mrc``, ``NAME_ali.mrc`` — has none);
* **pixel size**: the typed value, else the MRC header (``cella / mx``), else the mdoc's ``PixelSpacing``; a header
  of exactly 1 Å (what programs write when they do not know it) gives way to the mdoc's value. Neither: refused;
* **tilt axis**: the typed value, else the mdoc's, else estimated from the images (common lines, as the movie
  import does for mdocs without it); SerialEM's convention (from image Y, counter-clockwise, degrees);
* **dose**: a per-tilt dose list ``NAME.dose`` / ``NAME_dose.txt`` (IMOD's TypeOfDoseFile conventions,
  :func:`tomoguide.compute.io.imod.read_dose_list`: two columns = prior dose and dose; one column = the dose of
  each tilt, or the prior dose when ``dose_list_kind = "prior"``), else the mdoc (``ExposureDose`` …), else the
  typed dose per tilt; none at all: 0 (no dose weighting, a warning);
* **acquisition order**: the angle file's order column, else the mdoc's ``DateTime``, else the prior doses of the
  dose list, else the stack's section order (an info says it was assumed);
* **per-tilt CTF** (optional): ``NAME.defocus`` (IMOD ctfplotter) or ``NAME_ctf.txt`` / ``NAME.txt`` (CTFFIND's
  output on the stack), rows in section order; read by :func:`tomoguide.steps.ctf_files.read_ctf_file`. Without
  it the frame-alignment step fits the CTF of each tilt image itself.

The views are put in ascending tilt order (the workflow's view order); ``ImportedTilt.section`` keeps each
view's section in the stack. The frame-alignment step then passes the stack through (:func:`pass_through`):
nothing is computed before X-ray erasing except, when no defocus file is given, the per-tilt CTF.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tomoguide.compute.io.errors import FormatError
from tomoguide.steps.base import Issue, Progress, RunContext, StepParams, StepResult, StepRun

STACK_SUFFIXES = (".st", ".mrc", ".mrcs")
TILT_SERIES = "tilt series"
IMPORTED = "imported"


@dataclass
class StackPlan:
    """What the import found for one stack (arrays in the stack's section order)."""

    name: str
    stack: Path
    shape: tuple[int, int, int]  # (n, ny, nx)
    tilts_deg: np.ndarray
    tilt_file: Path
    pixel_A: float | None
    pixel_source: str
    axis_deg: float | None
    axis_source: str
    order: np.ndarray
    order_source: str
    dose: np.ndarray  # (n,) e⁻/Å² of each tilt
    prior_dose: np.ndarray  # (n,) e⁻/Å² before each tilt
    dose_source: str
    target_defocus_um: list[float] | None = None
    mdoc: Path | None = None
    defocus_file: Path | None = None
    issues: list[Issue] = field(default_factory=list)


def _companion(folder_files: dict[str, Path], names: list[str]) -> Path | None:
    for n in names:
        p = folder_files.get(n.lower())
        if p is not None:
            return p
    return None


def find_stacks(folder: Path) -> tuple[list[tuple[Path, dict[str, Path]]], dict[str, Path]]:
    """The stacks (suffix ``.st``/``.mrc``/``.mrcs``) in ``folder`` and in its immediate sub-folders (IMOD's one
    folder per tilt series), each with the files of its own folder by lower-case name (where its angle, dose and
    defocus files are looked for); and the top folder's files."""
    if not folder.is_dir():
        raise FormatError(folder, "files_dir", "no such folder")
    out: list[tuple[Path, dict[str, Path]]] = []
    top: dict[str, Path] = {}
    dirs = [folder] + sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    for d in dirs:
        files = {p.name.lower(): p for p in sorted(d.iterdir()) if p.is_file()}
        if d == folder:
            top = files
        out.extend((p, files) for p in sorted(files.values()) if p.suffix.lower() in STACK_SUFFIXES)
    return out, top


def _stem(p: Path) -> str:
    return p.name[: -len(p.suffix)] if p.suffix else p.name


def plan_stack(stack: Path, files: dict[str, Path], params: Any) -> StackPlan | None:
    """Everything known about one stack (see the module docstring), or None when it has no tilt angles."""
    from tomoguide.compute.io import imod
    from tomoguide.compute.io import mdoc as mdocio
    from tomoguide.compute.io.mrc import read_header

    name = _stem(stack)
    rawtlt = _companion(files, [f"{name}.rawtlt"])
    tlt = _companion(files, [f"{name}.tlt"])
    mdoc_path = _companion(files, [f"{stack.name}.mdoc", f"{name}.mdoc"])
    if rawtlt is None and tlt is None and mdoc_path is None:
        return None
    info = read_header(stack)
    if len(info.shape) != 3:  # (a header marking it a volume is no reason: many writers mark stacks so)
        raise FormatError(stack, "header", f"data of shape {info.shape}: not a stack of tilt images")
    n, ny, nx = (int(v) for v in info.shape)
    issues: list[Issue] = []
    md = None
    if mdoc_path is not None:
        md = mdocio.read_mdoc(mdoc_path)
        if md.kind != "tilt_series":
            raise FormatError(mdoc_path, "sections", f"a {md.kind} mdoc, not the mdoc of a tilt-series stack")
        zs = [s.z_value for s in md.sections]
        if len(md.sections) != n or sorted(z for z in zs if z is not None) != list(range(n)):
            known = [z for z in zs if z is not None]
            span = f"ZValue {min(known)}..{max(known)}" if known else "no ZValue"
            raise FormatError(mdoc_path, "ZValue", f"{len(md.sections)} sections ({span}) for the {n} images of "
                              f"{stack.name}: not this stack's mdoc")
        md.sections.sort(key=lambda s: s.z_value)
    order: np.ndarray | None = None
    order_source = ""
    angle_file = rawtlt or tlt
    if angle_file is not None:
        table = imod.read_tilt_table(angle_file)
        tilts = table["tilt_deg"]
        if tilts.size != n:
            raise FormatError(angle_file, "tilt angles", f"{tilts.size} angles for the {n} images of {stack.name}")
        if "acquisition_order" in table:
            order, order_source = table["acquisition_order"], f"{angle_file.name} order column"
        tilt_file = angle_file
        if md is not None:
            md_t = np.array([s.tilt_angle_deg for s in md.sections], float)
            if np.abs(md_t - tilts).max() > 0.6:
                k = int(np.argmax(np.abs(md_t - tilts)))
                issues.append(Issue("warning", f"{name}: {angle_file.name} gives {tilts[k]:+.2f}° for image {k + 1}, "
                                    f"its mdoc {md_t[k]:+.2f}°: the angle file is used", None))
    else:
        assert md is not None and mdoc_path is not None
        tilts = np.array([s.tilt_angle_deg for s in md.sections], float)
        tilt_file = mdoc_path
    # ---- pixel size ------------------------------------------------------------------------------------
    header_px = float(info.voxel_size_A[0]) if info.voxel_size_A[0] > 0 else None
    mdoc_px = md.pixel_spacing_A if md is not None else None
    if params.pixel_size_A is not None:
        pixel, pixel_source = float(params.pixel_size_A), "typed"
    elif header_px is not None and not (abs(header_px - 1.0) < 1e-6 and mdoc_px is not None):
        pixel, pixel_source = header_px, "MRC header"
        if mdoc_px is not None and abs(mdoc_px - header_px) > 0.01 * header_px:
            issues.append(Issue("warning", f"{name}: the MRC header says {header_px:g} Å/px, the mdoc "
                                f"{mdoc_px:g} Å/px: the header's is used (type the pixel size to choose)",
                                "pixel_size_A"))
        elif abs(header_px - 1.0) < 1e-6:  # many writers leave 1 Å/px in the header when they know nothing
            issues.append(Issue("warning", f"{stack.name}: the MRC header says exactly 1 Å/px, the value many programs "
                                "write when they do not know it, and no mdoc gives another: check it, or type the "
                                "pixel size", "pixel_size_A"))
    elif mdoc_px is not None:
        pixel, pixel_source = float(mdoc_px), "mdoc PixelSpacing"
    else:
        pixel, pixel_source = None, ""  # type: ignore[assignment]
        issues.append(Issue("error", f"{stack}: pixel size: neither the MRC header (cella/mx is 0) nor an mdoc gives "
                            "it; type the pixel size", "pixel_size_A"))
    # ---- tilt axis ---------------------------------------------------------------------------------------
    if params.tilt_axis_deg is not None:
        axis, axis_source = float(params.tilt_axis_deg), "typed"
    elif md is not None:
        axis, axis_source = mdocio.tilt_axis_info([md])
    else:
        axis, axis_source = None, "unknown"
    if axis is None:
        issues.append(Issue("info", f"{name}: no tilt axis (no mdoc, none typed): estimated from the images during "
                            "the import", "tilt_axis_deg"))
    # ---- acquisition order and dose ------------------------------------------------------------------------
    if order is None and md is not None:
        rank, src = mdocio.acquisition_order(md.sections)
        if src == "DateTime":
            order, order_source = rank, "mdoc DateTime"
    dose_file = _companion(files, [f"{name}.dose", f"{name}_dose.txt", f"{name}.dose.txt"])
    prior = dose = None
    dose_source = ""
    if dose_file is not None:
        table = imod.read_dose_list(dose_file, one_column=params.dose_list_kind)
        if table.shape[0] != n:
            raise FormatError(dose_file, "dose", f"{table.shape[0]} lines for the {n} images of {stack.name}")
        prior, dose = table[:, 0], table[:, 1]
        dose_source = dose_file.name
        if order is None and np.all(np.isfinite(prior)):
            order = np.argsort(np.argsort(prior, kind="stable"), kind="stable")
            order_source = f"{dose_file.name} prior doses"
    if order is None:
        order, order_source = np.arange(n), "stack order (assumed)"
        issues.append(Issue("info", f"{name}: the acquisition order is not recorded (no mdoc DateTime, no order "
                            "column, no dose list): the stack's order is assumed", None))
    if dose is None or not np.all(np.isfinite(dose)):
        per: np.ndarray | None = None
        if params.dose_per_tilt_e_A2 is not None:
            per, src = np.full(n, float(params.dose_per_tilt_e_A2)), "typed"
        elif md is not None and all(mdocio.section_dose(s)[0] is not None for s in md.sections):
            per, src = np.array([mdocio.section_dose(s)[0] for s in md.sections], float), "mdoc ExposureDose"
        elif prior is not None and np.all(np.isfinite(prior)) and n > 1:
            seq = prior[np.argsort(order)]
            steps = np.diff(seq)
            per_acq = np.append(steps, np.median(steps))
            per = np.empty(n)
            per[np.argsort(order)] = per_acq
            src = f"{dose_file.name} (differences of the prior doses)"  # type: ignore[union-attr]
        if per is None:
            per, src = np.zeros(n), "none"
            issues.append(Issue("warning", f"{name}: no dose (no dose list, no mdoc dose, none typed): 0 e⁻/Å², so no "
                                "dose weighting", "dose_per_tilt_e_A2"))
        dose = per
        dose_source = src if not dose_source else f"{dose_source} + {src}"
    if prior is None or not np.all(np.isfinite(prior)):
        acq = np.argsort(order, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(dose[acq])[:-1]]) + float(params.initial_dose_e_A2)
        prior = np.empty(n)
        prior[acq] = cum
    targets = None
    if md is not None and all(s.target_defocus_um is not None for s in md.sections):
        targets = [float(s.target_defocus_um) for s in md.sections]  # type: ignore[arg-type]
    defocus_file = _companion(files, [f"{name}.defocus", f"{name}_ctf.txt", f"{name}.txt"])
    return StackPlan(name=name, stack=stack, shape=(n, ny, nx), tilts_deg=np.asarray(tilts, float),
                     tilt_file=tilt_file, pixel_A=pixel, pixel_source=pixel_source, axis_deg=axis,
                     axis_source=axis_source, order=np.asarray(order, int), order_source=order_source,
                     dose=np.asarray(dose, float), prior_dose=np.asarray(prior, float), dose_source=dose_source,
                     target_defocus_um=targets, mdoc=mdoc_path, defocus_file=defocus_file, issues=issues)


def survey_stacks(params: Any) -> tuple[list[StackPlan], list[Issue]]:
    """The stacks of ``params.files_dir`` that have tilt angles, and the issues (errors refuse the import)."""
    folder = Path(str(params.files_dir)).expanduser()
    stacks, _ = find_stacks(folder)
    plans: list[StackPlan] = []
    issues: list[Issue] = []
    skipped: list[str] = []
    for stack, files in stacks:
        try:
            plan = plan_stack(stack, files, params)
        except FormatError as exc:
            issues.append(Issue("error", str(exc), "files_dir"))
            continue
        if plan is None:
            skipped.append(stack.name)
            continue
        twin = next((q for q in plans if q.name.lower() == plan.name.lower()), None)
        if twin is not None:
            issues.append(Issue("error", f"{plan.stack}: name: a second tilt series {plan.name} (the first is "
                                f"{twin.stack}); keep one of them in the folder", "files_dir"))
            continue
        plans.append(plan)
        issues.extend(plan.issues)
    if skipped:
        issues.append(Issue("warning" if plans else "error",
                            f"{len(skipped)} stack(s) without tilt angles left out ({', '.join(skipped[:4])}"
                            f"{', …' if len(skipped) > 4 else ''}): a tilt series needs NAME.rawtlt, NAME.tlt or its "
                            "mdoc NAME.st.mdoc beside it", "files_dir"))
    elif not plans:
        issues.append(Issue("error", f"{folder}: no tilt-series stack (.st, .mrc, .mrcs) in this folder", "files_dir"))
    return plans, issues


def survey_text(params: Any) -> str:
    """What the import found, as text (the command line's ``new`` and the import page)."""
    try:
        plans, issues = survey_stacks(params)
    except FormatError as exc:
        return str(exc)
    lines = []
    for p in plans:
        lines.append(f"{p.name}: {p.stack.name}, {p.shape[0]} images {p.shape[2]}×{p.shape[1]} px, tilts "
                     f"{p.tilts_deg.min():+.1f}° to {p.tilts_deg.max():+.1f}° ({p.tilt_file.name}); pixel "
                     + (f"{p.pixel_A:g} Å ({p.pixel_source})" if p.pixel_A else "unknown")
                     + f"; axis {'unknown' if p.axis_deg is None else f'{p.axis_deg:g}°'} ({p.axis_source}); dose "
                     f"{np.median(p.dose):.2f} e⁻/Å² per tilt ({p.dose_source}); order: {p.order_source}"
                     + (f"; CTF from {p.defocus_file.name}" if p.defocus_file else ""))
    lines += [f"{i.level}: {i.message}" for i in issues]
    return "\n".join(lines)


def check_tilt_series(params: Any) -> list[Issue]:
    if not params.files_dir:
        return [Issue("error", "choose the folder with the tilt-series stacks and their angle files", "files_dir")]
    try:
        _, issues = survey_stacks(params)
    except FormatError as exc:
        return [Issue("error", str(exc), "files_dir")]
    rank = {"error": 0, "warning": 1, "info": 2}
    return sorted(issues, key=lambda i: rank[i.level])


def run_tilt_series(params: Any, ctx: RunContext) -> StepRun:
    """The import step's run for ``source = "tilt series"``: ``tilt_series.json`` (one
    :class:`~tomoguide.steps.import_movies.ImportedSeries` per stack, ``source = "tilt series"``, each tilt's
    ``movie`` the stack and ``section`` its image there) and a preview stack per series."""
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.rescale import bin_to_at_most
    from tomoguide.geometry import Optics, TiltSeriesGeometry
    from tomoguide.steps.import_movies import (
        PREVIEW_MAX_PX,
        ImportedSeries,
        ImportedTilt,
        _axis_from_data,
        _data_path,
        _ranks,
    )

    plans, issues = survey_stacks(params)
    errors = [i for i in issues if i.level == "error"]
    if errors:
        raise FormatError(params.files_dir, None, errors[0].message)
    optics = Optics(voltage_kV=params.voltage_kV, cs_mm=params.cs_mm, amplitude_contrast=params.amplitude_contrast)
    ctx.mkdir("previews")
    all_series = []
    for k, p in enumerate(plans):
        ctx.check_cancel()
        yield Progress(k / len(plans), f"{p.name}: reading {p.stack.name}")
        data, _ = read_mrc(p.stack, mmap=True)
        by_angle = np.argsort(p.tilts_deg, kind="stable")
        previews = np.stack([bin_to_at_most(np.asarray(data[i], np.float32), PREVIEW_MAX_PX) for i in by_angle])
        axis, axis_source = p.axis_deg, p.axis_source
        tilts_sorted = [float(p.tilts_deg[i]) for i in by_angle]
        if axis is None:
            axis, axis_source = round(_axis_from_data(previews, tilts_sorted), 2), "data"
            ctx.log(f"{p.name}: tilt axis estimated from the images by common lines: {axis:.1f}° (a line: the tilt "
                    "direction, ±180°, is decided later)")
        assert p.pixel_A is not None
        n, ny, nx = p.shape
        tilts = [ImportedTilt(movie=_data_path(p.stack, ctx.run_dir), n_frames=1, frame_shape_px=(ny, nx),
                              tilt_deg=float(p.tilts_deg[i]), acquisition_order=int(p.order[i]),
                              dose_e_A2=float(p.dose[i]), prior_dose_e_A2=float(p.prior_dose[i]),
                              target_defocus_um=None if p.target_defocus_um is None else p.target_defocus_um[i],
                              mdoc_section=int(i), section=int(i))
                 for i in by_angle]
        targets = None if p.target_defocus_um is None else [p.target_defocus_um[i] for i in by_angle]
        geometry = TiltSeriesGeometry(
            name=p.name, pixel_size_A=p.pixel_A, binning=1.0, image_shape_px=(ny, nx), optics=optics,
            tilt_axis_deg=float(axis), tilt_angles_deg=tilts_sorted,
            acquisition_order=_ranks([t.acquisition_order for t in tilts]),
            dose_e_A2=[t.dose_e_A2 for t in tilts], prior_dose_e_A2=[t.prior_dose_e_A2 for t in tilts],
            nominal_defocus_um=targets)
        write_mrc(ctx.out_path("previews", f"{p.name}_framesums.mrc"), previews,
                  voxel_size_A=p.pixel_A * nx / previews.shape[2], is_stack=True)
        all_series.append(ImportedSeries(
            name=p.name, mdoc=_data_path(p.tilt_file, ctx.run_dir), tilts=tilts, geometry=geometry, gain=None,
            tilt_axis_source=axis_source, pixel_size_source=p.pixel_source, mdoc_kind="stack",
            dose_source=p.dose_source, source=TILT_SERIES,
            defocus_file=None if p.defocus_file is None else _data_path(p.defocus_file, ctx.run_dir)))
        ctx.log(f"{p.name}: tilt series {p.stack.name}: {n} images from {min(tilts_sorted):+.1f}° to "
                f"{max(tilts_sorted):+.1f}° ({p.tilt_file.name}), {p.pixel_A:g} Å/px ({p.pixel_source}), tilt axis "
                f"{axis:g}° ({axis_source}), dose {np.median(p.dose):.2f} e⁻/Å² per tilt ({p.dose_source}), "
                f"acquisition order: {p.order_source}"
                + (f", CTF from {p.defocus_file.name}" if p.defocus_file else ""))
        yield Progress((k + 1) / len(plans), f"{p.name}: {n} images")
    out = ctx.write_text("tilt_series.json",
                         json.dumps({"series": [s.model_dump(mode="json") for s in all_series]}, indent=1))
    metrics: dict[str, Any] = {
        "source": "files", "n_series": len(all_series), "n_tilts": sum(len(s.tilts) for s in all_series),
        "series": {s.name: {"n_tilts": len(s.tilts), "tilt_min_deg": min(t.tilt_deg for t in s.tilts),
                            "tilt_max_deg": max(t.tilt_deg for t in s.tilts),
                            "pixel_size_A": s.geometry.pixel_size_A,
                            "dose_per_tilt_e_A2": float(np.median([t.dose_e_A2 for t in s.tilts])),
                            "tilt_axis_deg": s.geometry.tilt_axis_deg, "tilt_axis_source": s.tilt_axis_source,
                            "stack": Path(s.tilts[0].movie).name,
                            "defocus_file": None if s.defocus_file is None else Path(s.defocus_file).name}
                   for s in all_series}}
    return StepResult(outputs={"tilt_series": out, "previews": ctx.run_dir / "previews"}, metrics=metrics,
                      summary=f"imported {metrics['n_series']} tilt series ({metrics['n_tilts']} images), no movies")


# ---- the frame-alignment step's pass-through -------------------------------------------------------------------


def is_imported(series: list[Any]) -> bool:
    """Whether the import step's series are tilt series without movies (entry point a)."""
    return any(getattr(s, "source", "movies") == TILT_SERIES for s in series)


def imported_issues(params: Any, series: list[Any]) -> list[Issue]:
    """The frame-alignment step's checks for imported tilt series (its frame parameters do not apply)."""
    issues = [Issue("info", "tilt series imported without movies: the frames are not aligned again; the stacks "
                            "are passed on as they are" + (", with the CTF of each tilt fitted here" if
                                                           params.estimate_ctf else ""))]
    for s in series:
        ny, nx = s.tilts[0].frame_shape_px
        if params.estimate_ctf and s.defocus_file is None and params.ctf_window_px > min(ny, nx) / params.binning:
            issues.append(Issue("error", f"{s.name}: the CTF window ({params.ctf_window_px} px) is larger than the "
                                "images", "ctf_window_px"))
        px = s.geometry.pixel_size_A * params.binning
        if params.estimate_ctf and s.defocus_file is None and params.ctf_res_high_A < 2 * px:
            issues.append(Issue("error", f"{s.name}: the CTF's highest resolution {params.ctf_res_high_A:g} Å is "
                                f"beyond Nyquist ({2 * px:.2f} Å at {px:.2f} Å/px)", "ctf_res_high_A"))
    return issues


def pass_through(params: Any, ctx: RunContext, series: list[Any], record: Path) -> StepRun:
    """The frame-alignment step for tilt series imported without movies: each stack passed on in ascending tilt
    order (hard-linked when it already is, at binning 1 and in float32; else rewritten), ``motion_failed`` all
    false, and the per-tilt CTF read from the series' defocus file (:func:`tomoguide.steps.ctf_files.read_ctf_file`)
    or, without one and with ``estimate_ctf``, fitted on each image with the step's own fit
    (:func:`tomoguide.compute.ctffit.estimate_ctf`). ``info["source"] = "imported"`` marks every series."""
    from tomoguide.compute.ctffit import CtfFit, estimate_ctf, power_spectrum
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.rescale import fourier_bin
    from tomoguide.steps.ctf_files import ctf_values_for_views, read_ctf_file
    from tomoguide.steps.records import (
        SeriesEntry,
        SeriesSet,
        ctf_preview,
        ctf_row,
        ctf_summary,
        link_or_copy,
        write_ctf_results,
    )

    entries = []
    metrics: dict[str, Any] = {"source": IMPORTED, "series": {}}
    n_total = sum(len(s.tilts) for s in series)
    done = 0
    for s in series:
        g = s.geometry
        stack_path = Path(s.tilts[0].movie)
        sections = [int(t.section if t.section is not None else t.mdoc_section) for t in s.tilts]
        data, info = read_mrc(stack_path, mmap=True)
        px_out = g.pixel_size_A * params.binning
        files: dict[str, str] = {"stack": f"{s.name}.mrc"}
        if sections == list(range(data.shape[0])) and params.binning == 1 and data.dtype == np.float32 \
                and info.byte_order == "<" and not info.nsymbt:
            link_or_copy(stack_path, ctx.out_path(files["stack"]))
            stack = data
            ctx.log(f"{s.name}: {stack_path.name} passed on unchanged (imported tilt series: no frames to align)")
        else:
            views = [np.asarray(data[k], np.float32) for k in sections]
            if params.binning != 1:
                views = [np.asarray(fourier_bin(v, params.binning), np.float32) for v in views]
            stack = np.stack(views)
            write_mrc(ctx.out_path(files["stack"]), stack, voxel_size_A=px_out, is_stack=True)
            ctx.log(f"{s.name}: {stack_path.name} passed on in ascending tilt order"
                    + (f", binned {params.binning:g}×" if params.binning != 1 else ""))
        flags: dict[str, list[bool]] = {"motion_failed": [False] * len(s.tilts)}
        series_metrics: dict[str, Any] = {"n_tilts": len(s.tilts), "n_motion_failed": 0, "source": IMPORTED}
        rows, previews, failed = [], [], []
        optics = dict(voltage_kV=g.optics.voltage_kV, cs_mm=g.optics.cs_mm,
                      amplitude_contrast=g.optics.amplitude_contrast)
        true_tilts = g.true_tilt_deg()
        box = min(params.ctf_window_px, *stack.shape[1:])
        if s.defocus_file is not None:
            defocus_path = Path(s.defocus_file)
            if not defocus_path.is_absolute():
                defocus_path = (record.parent / defocus_path).resolve()
            table = read_ctf_file(defocus_path, n_stack_views=len(s.tilts))
            values = ctf_values_for_views(table, [float(t.tilt_deg) for t in s.tilts], sections, defocus_path)
            ctx.log(f"{s.name}: per-tilt CTF read from {defocus_path.name} ({table.kind})")
            for i in range(len(s.tilts)):
                ctx.check_cancel()
                u, v, a, r = (float(x) for x in values[i])
                fit = CtfFit(defocus_u_A=u, defocus_v_A=v, astig_angle_deg=a, score=0.0,
                             fit_resolution_A=r if math.isfinite(r) else float("inf"), pixel_size_A=px_out,
                             reason="from file", **optics)
                spec = power_spectrum(np.asarray(stack[i], np.float32), pixel_size_A=px_out, box=box)
                rows.append({**ctf_row(s.name, i, s.tilts[i].tilt_deg, fit), "tomoguideCtfReason": "from file"})
                previews.append(ctf_preview(spec, fit))
                failed.append(False)
                done += 1
                yield Progress(done / max(n_total, 1), f"{s.name}: tilt {s.tilts[i].tilt_deg:+.1f}°: CTF from file")
            series_metrics["ctf_source"] = str(defocus_path)
        elif params.estimate_ctf:
            kw = dict(defocus_range_A=(params.defocus_min_um * 1e4, params.defocus_max_um * 1e4),
                      res_range_A=(params.ctf_res_low_A, params.ctf_res_high_A), fit_phase=params.fit_phase)
            for i in range(len(s.tilts)):
                ctx.check_cancel()
                fit, spec = estimate_ctf(np.asarray(stack[i], np.float32), pixel_size_A=px_out, box=box,
                                         tilt_deg=float(true_tilts[i]), tilt_axis_deg=g.tilt_axis_deg,
                                         defocus_handedness=g.defocus_handedness, **optics, **kw)
                rows.append(ctf_row(s.name, i, s.tilts[i].tilt_deg, fit))
                previews.append(ctf_preview(spec, fit))
                failed.append(bool(fit.failed))
                if fit.failed:
                    ctx.log(f"{s.name}: tilt {s.tilts[i].tilt_deg:+.1f}°: CTF fit failed ({fit.reason}); flagged for "
                            "the exclusion step")
                done += 1
                yield Progress(done / max(n_total, 1), f"{s.name}: tilt {s.tilts[i].tilt_deg:+.1f}°: defocus "
                               f"{fit.defocus_mean_A / 1e4:.2f} µm")
            series_metrics["ctf_source"] = "fitted"
        if rows:
            files.update(write_ctf_results(ctx.run_dir, s.name, rows, previews, g.optics, px_out))
            flags["ctf_failed"] = failed
            summary = ctf_summary(rows, failed)
            series_metrics.update({"n_ctf_failed": summary.pop("n_failed"), **summary})
        geo_out = g.at_binning(g.binning * params.binning)
        geo_out = geo_out.model_validate({**geo_out.model_dump(), "image_shape_px": tuple(stack.shape[1:])})
        entries.append(SeriesEntry(name=s.name, geometry=geo_out, files=files, flags=flags,
                                   info={"pixel_size_A": px_out, "source": IMPORTED, "stack": str(stack_path)}))
        metrics["series"][s.name] = series_metrics
    out = SeriesSet(series=entries).save(ctx.run_dir)
    metrics["n_ctf_failed"] = int(sum(m.get("n_ctf_failed", 0) for m in metrics["series"].values()))
    metrics["n_motion_failed"] = 0
    return StepResult(outputs={"series": out}, metrics=metrics,
                      summary=f"{len(entries)} imported tilt series passed on ({n_total} images, no frames to align)"
                      + (f"; CTF of every tilt ({metrics['n_ctf_failed']} failed fits flagged)" if any(
                          "ctf_star" in e.files for e in entries) else ""))
