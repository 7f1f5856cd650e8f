"""Steps 5 and 6: ``align`` (marker-free tilt-series alignment) and ``assign_alignment``.

``align`` works on the binned, normalised series: coarse cross-correlation of neighbouring tilts with cosine
stretching, patch tracking (patches of 500 Å, 80 % overlap in the tutorial), and a least-squares projection model
(per-view shifts, the tilt-axis angle, optionally per-view rotations and magnifications, the tilt-angle offset that
makes the specimen flat) with outlier patches rejected (:func:`tomoguide.compute.align.align_tilt_series`); then,
by default, a refinement that uses the specimen's compact particles as fiducial markers
(:func:`tomoguide.compute.markers.refine_with_markers`): patch tracks of a thick specimen drift with the blend of
depths they follow, which tilts the fitted axis by up to a degree; single particles do not. The
alignment is stored as metadata in the geometry record and as IMOD .xf/.tlt ("+ali"); optionally an interpolated
aligned stack is written for viewing ("!interp").

With ``source = "files"`` the step computes nothing: it reads an existing alignment per tilt series from a folder
(IMOD ``NAME.xf`` + ``NAME.tlt`` [+ ``NAME.xtilt``], AreTomo ``NAME.aln``, the RELION 5 per-tilt-series ``NAME.star``
or a Warp/WarpTools ``NAME.xml``; :func:`read_alignment_files`), matches
the files' views to the series' views by tilt angle, and writes the same records as patch tracking does.

``assign_alignment`` carries that alignment onto the full-size X-ray-erased series (shifts rescaled to its pixel
size), after checking that the views and angles match.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param
from tomoguide.steps.records import SeriesEntry, SeriesSet, link_or_copy


SOURCES = ("patch tracking", "files")


class AlignParams(StepParams):
    source: Literal["patch tracking", "files"] = param(
        "patch tracking", title="Alignment source", choices=list(SOURCES), widget="choice",
        help="'patch tracking': find the alignment here (recommended). 'files': take an alignment you already "
             "have, made by IMOD (etomo) or AreTomo on the same tilt series, instead of computing one: choose the "
             "folder with its files below. Everything after this step works the same either way.")
    alignment_dir: str | None = param(
        None, title="Alignment files folder", widget="directory", empty_means="none chosen",
        enabled_if=[("source", "=", "files")],
        help="Folder holding, for every tilt series, either IMOD's NAME.xf (the transforms: etomo's final "
             "alignment, the file newstack uses to make NAME.ali) and NAME.tlt (the refined tilt angles), optionally "
             "NAME.xtilt, or AreTomo's NAME.aln, or RELION 5's per-tilt-series NAME.star (rlnTomoXTilt/YTilt/ZRot, "
             "rlnTomoX/YShiftAngst), or Warp's NAME.xml (AxisAngle, AxisOffsetX/Y). NAME is the tilt series' name (as shown on the import page; upper "
             "or lower case does not matter). The views are matched to the series' views by tilt angle (within "
             "0.5°); views missing from the files (AreTomo drops the views it discards) are excluded.")
    alignment_binning: float | None = param(
        None, title="Binning of the alignment files", unit="×", hard=(0.1, 64.0),
        enabled_if=[("source", "=", "files")],
        empty_means="from the files",
        help="Binning of the stack the alignment files were made on, relative to the raw movies' pixels (1 = the "
             "full-size stack, 4 = a stack binned by 4). The shifts in .xf and .aln files are in that stack's "
             "pixels; they are rescaled to the series aligned here. IMOD's .xf does not say its binning: etomo's "
             "final NAME.xf is usually at binning 1 (the raw stack), and tomoguide's IMOD export states it in its "
             "README.txt. Empty: an AreTomo .aln's RawSize gives it; otherwise the binning of the series this "
             "step aligns (the 'preprocess for alignment' output) is assumed.")
    patch_size_A: float = param(
        500.0, title="Patch side", unit="Å", hard=(50.0, 10000.0), suggest=(200.0, 2000.0),
        enabled_if=[("source", "=", "patch tracking")],
        tutorial=500.0,
        help="Side of the square patches that are followed through the series (tutorial 500 Å). Larger patches "
             "hold more signal; smaller ones give more patches and follow local distortions.")
    patch_overlap_pct: float = param(
        80.0, title="Patch overlap", unit="%", hard=(0.0, 95.0), suggest=(25.0, 90.0),
        enabled_if=[("source", "=", "patch tracking")],
        tutorial=80.0,
        help="How much neighbouring patches overlap (tutorial 80 %): more overlap = more patches.")
    solve_axis: bool = param(True, title="Refine the tilt-axis angle",
                             enabled_if=[("source", "=", "patch tracking")],
                             help="Fit the tilt-axis angle (recommended: the mdoc's value is often off by a degree).")
    check_axis: bool = param(
        True, title="Check the tilt axis against the views", enabled_if=[("solve_axis", "=", True)],
        help="Before tracking, estimate the tilt axis from the views themselves (their common lines) and compare it "
             "with the one the import gave (the mdoc's or a typed value). When they differ by more than 12°, the "
             "alignment is run from both and the one that fits better is kept; a fitted axis more than 5° from the "
             "import's is reported. The mdoc's axis can be several degrees off; the alignment itself finds it from "
             "up to about 10° away.")
    solve_rotation: bool = param(
        True, title="Per-view rotation", advanced=True,
        help="Also fit a small in-plane rotation for every view (IMOD's fine alignment solves rotations too). "
             "A goniometer turns each view by a few tenths of a degree about the beam; 0.3° moves a particle "
             "1000 px from the centre by 5 px, which limits averages at full sampling (small demo at 2 Å voxels: "
             "7.9 Å without, 5.9 Å with). Series of fewer than 15 views get one rotation for all. Untick for "
             "series with few trackable patches.")
    solve_magnification: bool = param(
        False, title="Per-view magnification", advanced=True,
        help="Also fit a magnification change for every view (rarely needed).")
    flatten: bool = param(
        False, title="Fit the tilt-angle offset", advanced=True,
        help="Set the tilt-angle offset that makes the plane through the tracked patches lie flat in the tomogram "
             "(as IMOD's tiltalign reports it): projections alone cannot tell a tilted specimen from a tilt-angle "
             "offset. Needs many patches spread over the slab; with few, the plane is poorly defined and the "
             "offset can be wildly wrong (the step then keeps 0 and warns).")
    outlier_mad: float = param(
        3.0, title="Outlier threshold", unit="MAD", hard=(1.0, 20.0), suggest=(2.0, 6.0), advanced=True,
        help="Patches whose mean residual is this many median absolute deviations above the median are "
             "rejected and the model is fitted again.")
    min_cc: float = param(
        0.25, title="Minimum correlation", unit="1", hard=(0.0, 1.0), suggest=(0.1, 0.6), advanced=True,
        help="A patch's track stops where its correlation peak falls below this.")
    refine_with_markers: bool = param(
        True, title="Refine with particles as markers",
        enabled_if=[("source", "=", "patch tracking")],
        help="After patch tracking, find compact dense particles (apoferritin, ribosomes, contamination) in a quick "
             "tomogram and follow each one through the views as a fiducial marker, then fit the projection model to "
             "them. Patches of a thick specimen hold features at several depths and their tracks drift, which "
             "biases the tilt axis; single particles do not (on the simulated apoferritin series: axis errors of "
             "up to 1.1° become ≤ 0.2°). Turn off for specimens without compact particles.")
    marker_diameter_A: float = param(
        120.0, title="Marker diameter", unit="Å", hard=(10.0, 2000.0), suggest=(60.0, 500.0), advanced=True,
        enabled_if=[("refine_with_markers", "=", True)],
        help="Typical diameter of the particles used as markers (apoferritin: 120 Å). Sets the smoothing of the "
             "detection and the box each marker is fitted in.")
    marker_depth_A: float = param(
        1000.0, title="Marker search depth", unit="Å", hard=(50.0, 10000.0), suggest=(300.0, 4000.0), advanced=True,
        enabled_if=[("refine_with_markers", "=", True)],
        help="Thickness of the quick tomogram in which markers are searched: a little more than the ice.")
    max_markers: int = param(
        150, title="Markers", unit="1", hard=(3, 5000), suggest=(30, 1000), advanced=True,
        enabled_if=[("refine_with_markers", "=", True)],
        help="At most this many of the strongest particles are used as markers.")
    min_markers: int = param(
        6, title="Fewest markers", unit="1", hard=(3, 5000), suggest=(6, 300), advanced=True,
        enabled_if=[("refine_with_markers", "=", True)],
        help="With fewer particles found in enough views, the patch-tracking alignment is kept: a handful of markers "
             "fit their own noise. (On the tiny demo, 7 views over ±30°, 9-14 particles are usually found; limited to "
             "the strongest 6-8 (4-8 left after the outlier rejection) they still put the axis within 1.1° of the truth "
             "on 12 of 12 simulated specimens, median 0.45°, where patch tracking alone was 0.1-5.8° off, more than "
             "1° on 5 of them: bench/few_markers.py.)")
    interp_binning: float | None = param(
        1.0, title="Aligned stack binning", unit="×", hard=(1.0, 16.0), empty_means="no aligned stack",
        help="Write an interpolated, aligned stack for viewing ('!interp'), binned by this factor relative to the "
             "aligned series (1 = same size). Empty: none. The alignment itself is kept as metadata ('+ali').")


AXIS_WARN_DEG = 5.0


def _axis_check_messages(name: str, res: Any, final_axis_deg: float) -> list[str]:
    """Log lines about the tilt axis, comparing the import's axis (the prior: the mdoc's or a typed value) with the
    final fitted one and with the views' own quick estimate (the common-lines search). A warning when the fitted
    axis is more than :data:`AXIS_WARN_DEG` from the prior (the mdoc or the typed value is wrong); a note when only
    the quick estimate disagreed (it is unreliable over short tilt ranges) and what the alignment did about it.
    Angles are compared modulo 180° (the tilt direction is the hand check's business)."""
    from tomoguide.compute.align import axis_difference_deg

    out = []
    prior = float(res.prior_axis_deg)
    found = None if res.axis_search is None else float(res.axis_search.axis_deg)
    off = axis_difference_deg(final_axis_deg, prior)
    started = "the views' axis" if abs(res.start_axis_deg - prior) > 1e-6 else "the import's value"
    if abs(off) > AXIS_WARN_DEG:
        line = (f"{name}: warning: the fitted tilt axis {final_axis_deg:.2f}° is {off:+.1f}° from the import's "
                f"{prior:.1f}°: the mdoc's tilt axis (or the value typed at the import) is wrong")
        if found is not None:
            line += f" (the views alone put it at {found:.1f}°; the alignment started from {started})"
        out.append(line)
    elif found is not None and abs(axis_difference_deg(found, prior)) > AXIS_WARN_DEG:
        tried = " (both were tried)" if abs(found - prior) > res.restart_deg else ""
        out.append(f"{name}: note: the views' quick estimate of the tilt axis, {found:.1f}°, differed from the "
                   f"import's {prior:.1f}° by {found - prior:+.1f}°; the alignment started from {started}{tried} and "
                   f"confirms the import's value within {abs(off):.1f}°")
    return out


# ---- an existing alignment from files (source = "files") ------------------------------------------------------

NOT_IN_FILE = "not in the imported alignment"
TILT_TOLERANCE_DEG = 0.5


class AlignmentFilesError(ValueError):
    """An alignment folder or file that cannot be used; ``str(err)`` is one line naming the file and the field."""


def alignment_folder(value: str | None) -> Path | None:
    """The folder of ``alignment_dir`` (``~`` expanded; a relative path from the working folder, as the project
    records data paths); None when empty. The project fingerprints it like every folder parameter: changed files
    make the step stale."""
    if not value or not str(value).strip():
        return None
    return Path(str(value).strip()).expanduser()


def find_alignment_files(folder: Path, name: str) -> dict[str, Path]:
    """The alignment files of series ``name`` in ``folder`` (names compared without case): ``{"xf", "tlt",
    "xtilt"}`` (IMOD; xtilt optional) or ``{"aln"}`` (AreTomo); IMOD's are preferred when both are there.
    Raises :class:`AlignmentFilesError` naming what is missing."""
    if not folder.is_dir():
        raise AlignmentFilesError(f"{folder}: alignment_dir: no such folder")
    files: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.is_file():
            files.setdefault(p.name.lower(), p)
    low = name.lower()
    found = {ext: files[f"{low}.{ext}"] for ext in ("xf", "tlt", "xtilt", "aln", "star", "xml")
             if f"{low}.{ext}" in files}
    if "xf" in found and "tlt" in found:
        return {k: v for k, v in found.items() if k in ("xf", "tlt", "xtilt")}
    if "aln" in found:
        return {"aln": found["aln"]}
    if "star" in found:
        return {"star": found["star"]}
    if "xml" in found:
        return {"xml": found["xml"]}
    if "xf" in found:
        raise AlignmentFilesError(f"{found['xf']}: tilt angles: {name}.tlt is missing beside it (IMOD's .xf needs "
                                  "the .tlt of the same alignment)")
    if "tlt" in found:
        raise AlignmentFilesError(f"{found['tlt']}: transforms: {name}.xf is missing beside it (IMOD's .tlt needs "
                                  "the .xf of the same alignment)")
    raise AlignmentFilesError(f"{folder}: {name}: no alignment files for this tilt series (expected {name}.xf and "
                              f"{name}.tlt from IMOD, {name}.aln from AreTomo, the RELION 5 per-tilt-series "
                              f"{name}.star or Warp's {name}.xml)")


def match_views_by_tilt(file_tilts: Any, nominal_deg: Any, prior_offset_deg: float, path: Path | str,
                        tolerance_deg: float = TILT_TOLERANCE_DEG) -> tuple[np.ndarray, float]:
    """Which series view each view of an alignment file is, by tilt angle.

    ``file_tilts`` (m,) are the files' true tilts, ``nominal_deg`` (n,) the series' nominal tilts (ascending). The
    files' tilts are ``nominal + offset`` with one offset for the series; every file view must land within
    ``tolerance_deg`` of a distinct series view. Of the offsets that match every file view, the one closest to
    ``prior_offset_deg`` is taken (a series whose end views were dropped also matches one tilt step off). Returns
    ``(index (m,) int, offset_deg)``, the offset the mean difference of the matched pairs; raises
    :class:`AlignmentFilesError` (``FILE: tilt angles: ...``) when the counts or angles do not fit."""
    f = np.asarray(file_tilts, np.float64).reshape(-1)
    nom = np.asarray(nominal_deg, np.float64).reshape(-1)
    m, n = f.size, nom.size
    if m > n:
        raise AlignmentFilesError(f"{path}: tilt angles: {m} views, but the tilt series has only {n}: not the same "
                                  "series (or a stack with views added)")
    best: tuple[float, np.ndarray] | None = None
    candidates = np.unique(np.round(np.concatenate([(f[:, None] - nom[None, :]).ravel(), [prior_offset_deg]]), 6))
    for off in candidates:
        d = np.abs(f[:, None] - off - nom[None, :])
        idx = np.argmin(d, axis=1)
        if d[np.arange(m), idx].max() > tolerance_deg or np.unique(idx).size != m:
            continue
        score = abs(off - prior_offset_deg)
        if best is None or score < best[0]:
            best = (score, idx)
    if best is None:
        raise AlignmentFilesError(
            f"{path}: tilt angles: the file's {m} tilts ({f.min():+.2f}° to {f.max():+.2f}°) do not match the tilt "
            f"series' {n} views ({nom.min():+.2f}° to {nom.max():+.2f}°) within {tolerance_deg:g}° after one common "
            "offset: not the same tilt series?")
    idx = best[1]
    offset = float(np.mean(f - nom[idx]))
    resid = np.abs(f - offset - nom[idx])
    if resid.max() > tolerance_deg:
        k = int(np.argmax(resid))
        raise AlignmentFilesError(f"{path}: tilt angles: view {k + 1} ({f[k]:+.2f}°) is {resid[k]:.2f}° from the "
                                  f"series' view {idx[k] + 1} after the offset {offset:+.2f}°")
    return idx.astype(np.int64), offset


def _read(reader: Any, path: Path, **kw: Any) -> Any:
    from tomoguide.compute.io.errors import FormatError

    try:
        return reader(path, **kw)
    except FormatError as exc:
        raise AlignmentFilesError(str(exc)) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AlignmentFilesError(f"{path}: cannot be read: {exc}") from None


def read_alignment_files(files: dict[str, Path], geometry: Any, binning: float | None) -> tuple[Any, dict[str, Any]]:
    """The geometry of a series (``geometry``, the record this step aligns) with the alignment of ``files``
    (:func:`find_alignment_files`) in its place, and facts for the log and metrics.

    The files' shifts are in pixels of a stack at ``binning`` (relative to the unbinned images; None: an .aln's
    RawSize against the series' full size, else the series' own binning) and are rescaled to the record's
    binning. Views the files lack are excluded; their transforms take the mean axis and the shift of the nearest
    view the files hold. The tilt offset is the files' tilts minus the nominal ones; the tilt axis the circular
    mean of the transforms' rotations; the X-axis tilt the mean of ``.xtilt``. Raises
    :class:`AlignmentFilesError` (one line: file, field, problem)."""
    from tomoguide.compute.io.aretomo import aln_to_imod, read_aln
    from tomoguide.compute.io.imod import read_tlt, read_xf, read_xtilt
    from tomoguide.geometry import rotation_2d, rotation_angle_deg, xf_rows_to_matrices

    g = geometry
    notes: list[str] = []
    x_tilt = float(g.x_tilt_deg)
    file_binning = binning
    if "aln" in files:
        path = files["aln"]
        aln = _read(read_aln, path)
        rows, tilts = aln_to_imod(aln)
        fmt = "aretomo"
        prior = float(aln.alpha_offset_deg) if aln.alpha_offset_deg is not None else float(g.tilt_offset_deg)
        if aln.local is not None:
            notes.append(f"{path.name}: its local (patch) alignment is not used, only the global one")
        if file_binning is None and aln.raw_size is not None:
            full_nx = g.image_shape_px[1] * g.binning
            ratio = full_nx / float(aln.raw_size[0])
            file_binning = float(round(ratio)) if abs(ratio - round(ratio)) < 0.02 * ratio else float(ratio)
            notes.append(f"{path.name}: RawSize {aln.raw_size[0]} x {aln.raw_size[1]} px: binning {file_binning:g} "
                         "of the raw images")
        described = str(path)
    elif "star" in files:
        path = files["star"]
        rows, tilts, x_tilt_file = _relion5_alignment(path, g)
        fmt = "relion5"
        prior = float(g.tilt_offset_deg)
        file_binning = 1.0  # the shifts are in Å: converted to unbinned pixels here
        x_tilt = float(x_tilt_file)
        described = str(path)
    elif "xml" in files:
        path = files["xml"]
        rows, tilts, warp_notes = _warp_alignment(path, g)
        notes.extend(warp_notes)
        fmt = "warp"
        prior = float(g.tilt_offset_deg)
        file_binning = 1.0  # the offsets are in Å: converted to unbinned pixels here
        described = str(path)
    else:
        path = files["xf"]
        rows = _read(read_xf, path)
        tilts = _read(read_tlt, files["tlt"])
        fmt = "imod"
        prior = float(g.tilt_offset_deg)
        if rows.shape[0] != tilts.shape[0]:
            raise AlignmentFilesError(f"{path}: transforms: {rows.shape[0]} views, but {files['tlt'].name} holds "
                                      f"{tilts.shape[0]} tilt angles (the two must come from the same alignment)")
        if "xtilt" in files:
            xt = _read(read_xtilt, files["xtilt"])
            if xt.shape[0] != rows.shape[0]:
                raise AlignmentFilesError(f"{files['xtilt']}: X-axis tilts: {xt.shape[0]} values for the "
                                          f"{rows.shape[0]} views of {path.name}")
            x_tilt = float(np.mean(xt))
            if np.ptp(xt) > 0.01:
                notes.append(f"{files['xtilt'].name}: the X-axis tilt varies between views ({xt.min():+.2f}° to "
                             f"{xt.max():+.2f}°); their mean {x_tilt:+.2f}° is used")
        described = f"{path} and {files['tlt'].name}"
    if file_binning is None:
        file_binning = float(g.binning)
    m_file = xf_rows_to_matrices(rows)
    det = np.linalg.det(m_file[:, :, :2])
    if np.any(np.abs(det) < 1e-3):
        k = int(np.argmin(np.abs(det)))
        raise AlignmentFilesError(f"{path}: view {k + 1}: the transform is not invertible (determinant {det[k]:.3g})")
    idx, offset = match_views_by_tilt(tilts, g.tilt_angles_deg, prior, path)
    m_file[:, :, 2] *= file_binning / float(g.binning)
    axis = -float(np.degrees(np.angle(np.exp(1j * np.radians(rotation_angle_deg(m_file[:, :, :2]))).mean())))
    n = g.n_views
    xf = np.zeros((n, 2, 3))
    xf[idx] = m_file
    present = np.zeros(n, bool)
    present[idx] = True
    if not present.all():
        shifts = -np.linalg.solve(m_file[:, :, :2], m_file[:, :, 2:])[..., 0]
        nom = np.asarray(g.tilt_angles_deg, np.float64)
        a = rotation_2d(-axis)
        for v in np.flatnonzero(~present):
            near = int(np.argmin(np.abs(nom[idx] - nom[v])))
            xf[v, :, :2] = a
            xf[v, :, 2] = -(a @ shifts[near])
    missing = [int(v) for v in np.flatnonzero(~present)]
    excluded = [bool(e) or not p for e, p in zip(g.excluded, present)]
    new = g.model_validate({**g.model_dump(), "xf": xf, "tilt_axis_deg": axis, "tilt_offset_deg": offset,
                            "x_tilt_deg": x_tilt, "excluded": excluded})
    shift_max = float(np.abs(new.specimen_shifts_px()[present]).max()) if present.any() else 0.0
    if shift_max > 0.4 * min(g.image_shape_px):
        notes.append(f"warning: shifts of up to {shift_max:.0f} px in {min(g.image_shape_px)} px views: is the "
                     f"binning of the alignment files ({file_binning:g}) right?")
    facts = {"format": fmt, "file": described, "files": {k: str(v) for k, v in files.items()},
             "file_binning": float(file_binning), "n_views_in_file": int(rows.shape[0]),
             "views_not_in_file": [v + 1 for v in missing], "notes": notes}
    return new, facts


def _warp_alignment(path: Path, g: Any) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """IMOD ``.xf`` rows at binning 1 and true tilts of the tilts a Warp/WarpTools tilt-series XML uses
    (``UseTilt``), from its per-tilt ``AxisAngle`` (°) and ``AxisOffsetX/Y`` (Å).

    Warp's own import of an IMOD alignment (``TiltSeries.ImportAlignments``) defines them: with the ``.xf``
    matrix ``A`` (a rotation) and shift ``d``, ``AxisAngle = −(rotation angle of A)`` (Warp's
    ``EulerFromMatrix(A).Z``) and ``AxisOffset = −Aᵀ d`` × the aligned stack's pixel size, i.e. this record's
    specimen shift ``s = −A⁻¹ d`` in Å; ``Angles`` then holds the ``.tlt`` (true) tilts. So ``A = R(−AxisAngle)``,
    ``d = −A s``. With ``AreAnglesInverted="True"`` every geometric use in Warp takes the tilt ``−Angles``
    (``Matrix3.Euler(0, Angles · −1, 0)`` after the axis rotation): a rotation by ``−t`` about the tilt axis ``u``
    is the rotation by ``t`` about ``−u``, so such a series is read with its stored (nominal) tilts and the tilt
    axis turned by 180° (``AxisAngle + 180°``): the same projections, tilts that match the stack's. Warp's
    deformation grids (``GridMovement``, ``GridAngle``, refined by M) are not used (a note says so when they are
    not zero)."""
    from tomoguide.compute.io.warp import read_warp_tilt_series_xml
    from tomoguide.geometry import rotation_2d, xf_matrices_to_rows

    w = _read(read_warp_tilt_series_xml, path)
    use = np.asarray(w.use_tilt, bool)
    if not use.any():
        raise AlignmentFilesError(f"{path}: UseTilt: no tilt is used")
    axis = np.asarray(w.axis_angle_deg, np.float64)[use] + (180.0 if w.angles_inverted else 0.0)
    s = np.asarray(w.axis_offset_A, np.float64)[use] / float(g.pixel_size_A)
    a = rotation_2d(-axis)
    m = np.concatenate([a, -(a @ s[:, :, None])], axis=2)
    notes = []
    if w.angles_inverted:
        notes.append(f"{path.name}: AreAnglesInverted: Warp's geometry negates the stored tilts; read as the same "
                     "projections with the stored tilts and the tilt axis turned by 180°")
    moved = [k for k in ("GridMovementX", "GridMovementY", "GridAngleX", "GridAngleY", "GridAngleZ")
             if k in w.grids and np.abs(w.grids[k].values).max() > 1e-6]
    if moved:
        notes.append(f"{path.name}: Warp's refined deformation grids ({', '.join(moved)}) are not used, only the "
                     "per-tilt axis angles and offsets")
    if not use.all():
        notes.append(f"{path.name}: {int((~use).sum())} tilt(s) with UseTilt False are not in the alignment")
    return xf_matrices_to_rows(m), np.asarray(w.tilt_deg, np.float64)[use], notes


def _relion5_alignment(path: Path, g: Any) -> tuple[np.ndarray, np.ndarray, float]:
    """IMOD ``.xf`` rows at binning 1 (px of the unbinned images), true tilts and the X-axis tilt of a RELION 5
    per-tilt-series STAR (``rlnTomoXTilt/YTilt/ZRot``, ``rlnTomoX/YShiftAngst``: RELION 5's projection model and
    its ``n // 2`` image centre, :meth:`tomoguide.geometry.TiltSeriesGeometry.from_relion5`), rows sorted by tilt.
    The shifts are in Å and need no binning; the image size is the full size of the series ``g`` describes."""
    import pandas as pd

    from tomoguide.compute.io.star import read_tilt_series_star
    from tomoguide.geometry import RELION5_COLUMNS, TiltSeriesGeometry

    df = _read(read_tilt_series_star, path)
    block = df.attrs.get("block", "")
    cols: dict[str, np.ndarray] = {}
    for c in RELION5_COLUMNS:
        if c not in df.columns:
            raise AlignmentFilesError(f"{path}: data_{block}/{c}: missing column (a RELION 5 per-tilt-series STAR "
                                      "with the alignment has rlnTomoXTilt/YTilt/ZRot and rlnTomoX/YShiftAngst)")
        v = pd.to_numeric(df[c], errors="coerce").to_numpy(float)
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:
            raise AlignmentFilesError(f"{path}: data_{block}/{c}: row {bad[0] + 1}: not a number")
        cols[c] = v
    if np.ptp(cols["rlnTomoXTilt"]) > 1e-6:
        raise AlignmentFilesError(f"{path}: data_{block}/rlnTomoXTilt: varies between views "
                                  f"({cols['rlnTomoXTilt'].min():g} to {cols['rlnTomoXTilt'].max():g}); one value "
                                  "expected")
    full = (int(round(g.image_shape_px[0] * g.binning)), int(round(g.image_shape_px[1] * g.binning)))
    shell = TiltSeriesGeometry.from_relion5(cols, name=g.name, pixel_size_A=g.pixel_size_A, image_shape_px=full,
                                            binning=1.0)
    rows, tlt = shell.to_imod()
    return rows, tlt, float(cols["rlnTomoXTilt"][0])


MIN_VIEWS_FOR_ROTATIONS = 15  # per-view rotations beside the tilt axis only from this many views (a 7-view test
# series on a 100 px field: axis 0.08° off with one rotation for all, 0.34° with one per view)


def align_unit(s: SeriesEntry, base: Path, params: AlignParams,
               outs: dict[str, Path]) -> tuple[SeriesEntry, dict[str, Any], list[str]]:
    """One tilt series aligned by patch tracking (and refined with particles as markers) — a unit of
    :mod:`tomoguide.cluster`: reads the stack by path, writes the .xf, .tlt, tracks, markers and interpolated stack
    to ``outs`` (role -> path in the run folder; temporary files renamed into place). Returns the series' entry
    (its stack still to be linked by the step), its metrics and its log lines."""
    from tomoguide.cluster import atomic_output
    from tomoguide.compute.align import align_tilt_series, apply_alignment, axis_difference_deg
    from tomoguide.compute.io.imod import write_tlt, write_xf
    from tomoguide.compute.io.mrc import read_mrc, write_mrc
    from tomoguide.compute.markers import refine_with_markers

    logs: list[str] = []
    stack, info = read_mrc(s.path("stack", base))
    n_used = int(s.geometry.included_views().size)
    rotations = bool(params.solve_rotation) and n_used >= MIN_VIEWS_FOR_ROTATIONS
    if params.solve_rotation and not rotations:
        logs.append(f"{s.name}: {n_used} views: too few to fit a rotation per view beside the tilt axis (from "
                    f"{MIN_VIEWS_FOR_ROTATIONS}); one rotation for all views")
    params = params.model_copy(update={"solve_rotation": rotations})
    res = align_tilt_series(np.asarray(stack, np.float32), s.geometry, patch_size_A=params.patch_size_A,
                            patch_overlap=params.patch_overlap_pct / 100.0, solve_axis=params.solve_axis,
                            flatten=params.flatten, solve_rotation=params.solve_rotation,
                            solve_magnification=params.solve_magnification, min_cc=params.min_cc,
                            outlier_mad=params.outlier_mad, check_axis=params.check_axis)
    weak = [int(i) for i in res.weak_views]
    if weak:
        logs.append(f"{s.name}: views {', '.join(str(i + 1) for i in weak)} correlate poorly with both neighbours "
                    "(dark, blank or blurred): bridged over in tracking and down-weighted in the fit")
    wide = [] if res.coarse is None else [int(i) for i in np.flatnonzero(res.coarse.widened)]
    if wide:
        logs.append(f"{s.name}: views {', '.join(str(i + 1) for i in wide)} lay beyond the first search range of "
                    "the coarse alignment (a jump of the specimen?): found with a wider search")
    g = res.geometry.model_validate({**res.geometry.model_dump(), "excluded": s.geometry.excluded})
    if params.flatten and abs(g.tilt_offset_deg - s.geometry.tilt_offset_deg) > 10.0:
        logs.append(f"{s.name}: the patches give a tilt-angle offset of {g.tilt_offset_deg:+.1f}°, which is not "
                    "plausible (too few patches to define the specimen plane); the offset is kept at "
                    f"{s.geometry.tilt_offset_deg:+.1f}°")
        res = align_tilt_series(np.asarray(stack, np.float32), s.geometry, patch_size_A=params.patch_size_A,
                                patch_overlap=params.patch_overlap_pct / 100.0, solve_axis=params.solve_axis,
                                flatten=False, solve_rotation=params.solve_rotation,
                                solve_magnification=params.solve_magnification, min_cc=params.min_cc,
                                outlier_mad=params.outlier_mad, check_axis=params.check_axis)
        g = res.geometry.model_validate({**res.geometry.model_dump(), "excluded": s.geometry.excluded})
    summary = res.summary()
    view_residuals, mean_residual = summary["view_residual_px"], summary["mean_residual_px"]
    markers = None
    if params.refine_with_markers:
        px = g.pixel_size_binned_A
        try:
            markers = refine_with_markers(
                np.asarray(stack, np.float32), g, diameter_px=params.marker_diameter_A / px,
                thickness_px=max(8, int(round(params.marker_depth_A / px))), max_count=params.max_markers,
                min_count=params.min_markers,
                solve_axis=params.solve_axis, solve_rotation=params.solve_rotation,
                solve_magnification=params.solve_magnification, outlier_mad=params.outlier_mad,
                view_weights=res.view_weights)
        except ValueError as exc:
            logs.append(f"{s.name}: no refinement with markers ({exc}); the patch-tracking alignment is kept")
        if markers is not None:
            mg = markers.geometry
            logs.append(f"{s.name}: {markers.n_markers} particles as markers moved the tilt axis from "
                        f"{summary['tilt_axis_deg']:.2f}° to {mg.tilt_axis_deg:.2f}°; mean residual "
                        f"{markers.fit.mean_residual_px:.2f} px")
            g = mg.model_validate({**mg.model_dump(), "excluded": s.geometry.excluded})
            view_residuals = [None if not np.isfinite(v) else float(v) for v in markers.fit.view_residual_px]
            mean_residual = float(markers.fit.mean_residual_px)
    axis_notes = _axis_check_messages(s.name, res, float(g.tilt_axis_deg))
    for note in axis_notes:
        logs.append(note)
    files = {"stack": s.files["stack"], "xf": f"{s.name}.xf", "tlt": f"{s.name}.tlt",
             "tracks": f"{s.name}_tracks.npz"}
    if markers is not None:
        files["markers"] = f"{s.name}_markers.npz"
        with atomic_output(outs["markers"]) as tmp:
            np.savez_compressed(tmp, positions_px=markers.positions_px,
                                residuals_px=markers.fit.residuals_px, rejected=markers.fit.rejected,
                                points_px=markers.fit.points_px, profile_r_px=markers.profile[0],
                                profile=markers.profile[1], axis_history_deg=markers.axis_history_deg,
                                patch_tilt_axis_deg=summary["tilt_axis_deg"])
    rows, tlt = g.to_imod()
    with atomic_output(outs["xf"]) as tmp:
        write_xf(tmp, rows)
    with atomic_output(outs["tlt"]) as tmp:
        write_tlt(tmp, tlt)
    with atomic_output(outs["tracks"]) as tmp:
        np.savez_compressed(tmp, positions_px=res.tracks.positions_px,
                            peak_cc=res.tracks.peak_cc, residuals_px=res.fit.residuals_px,
                            rejected=res.fit.rejected, points_px=res.fit.points_px,
                            coarse_shifts_px=res.coarse_shifts_px)
    if params.interp_binning is not None:
        ali = apply_alignment(np.asarray(stack, np.float32), g, binning=g.binning * params.interp_binning)
        files["interp"] = f"{s.name}_ali.mrc"
        with atomic_output(outs["interp"]) as tmp:
            write_mrc(tmp, np.asarray(ali, np.float32), voxel_size_A=g.pixel_size_binned_A * params.interp_binning,
                      is_stack=True)
    info_out = {**s.info, "residual_per_view_px": view_residuals, "mean_residual_px": mean_residual,
                "weak_views": weak, "widened_views": summary["widened_views"], "axis_notes": axis_notes}
    entry = SeriesEntry(name=s.name, geometry=g, files=files, flags=dict(s.flags), info=info_out)
    series_metrics = {
        "tilt_axis_deg": float(g.tilt_axis_deg), "tilt_offset_deg": float(g.tilt_offset_deg),
        "mean_residual_px": mean_residual, "n_patches": summary["n_patches"],
        "n_rejected": summary["n_rejected"], "patch_tilt_axis_deg": summary["tilt_axis_deg"],
        "patch_mean_residual_px": summary["mean_residual_px"],
        "n_markers": None if markers is None else markers.n_markers,
        "prior_tilt_axis_deg": summary["prior_axis_deg"], "searched_tilt_axis_deg": summary["searched_axis_deg"],
        "axis_search_contrast": summary["axis_search_contrast"], "start_tilt_axis_deg": summary["start_axis_deg"],
        "axis_prior_difference_deg": axis_difference_deg(float(g.tilt_axis_deg), summary["prior_axis_deg"]),
        "axis_warnings": axis_notes, "weak_views": [i + 1 for i in weak],
        "widened_views": [i + 1 for i in summary["widened_views"]]}
    logs.append(f"{s.name}: tilt axis {g.tilt_axis_deg:.2f}°, offset {g.tilt_offset_deg:+.2f}°, "
                f"mean residual {mean_residual:.2f} px, {summary['n_patches']} patches "
                f"({summary['n_rejected']} rejected)")
    return entry, series_metrics, logs


class Align(Step):
    id = "align"
    title = "Tilt-series alignment"
    summary = "Find the shifts of every view and the tilt axis by patch tracking and a projection model."
    help = (
        "<p><b>What it does.</b> Between tilts the specimen moves a little and the tilt axis is not exactly where "
        "the microscope says. This step first estimates the tilt axis from the views themselves and compares it "
        "with the import's (far apart, it tries both; it warns when the fitted axis is more than 5° from the "
        "import's). It then "
        "cross-correlates neighbouring tilts (stretching the lower tilt to the higher one's foreshortening; a view "
        "that jumped far is searched again in a wider range, and a dark or blank view is bridged over), then "
        "follows patches of 500 Å through the series, and fits a model in "
        "which every patch is a point in 3D projected at each tilt: the fit gives each view's shift, the tilt-"
        "axis angle and the tilt-angle offset. Patches that do not fit are rejected. Then it finds compact dense "
        "particles (here apoferritin) in a quick tomogram and follows each one through the views like a gold "
        "bead, and fits the same model to them: a patch of a thick specimen mixes features at several depths "
        "whose blend drifts as the tilt grows, which tilts the axis; a single particle does not.</p>"
        "<p><b>Why.</b> Back-projection only works when every view is placed exactly: a few pixels of error blur "
        "the tomogram.</p>"
        "<p><b>A good result.</b> A mean residual below 1 pixel, about the same for all views (slightly larger at "
        "high tilt); a tilt-axis angle close to the mdoc's; the aligned stack looks steady when you slide through "
        "the tilts.</p>"
        "<p><b>What to check.</b> Views with residuals far above the others (exclude them later), a jump in the "
        "aligned stack, very few patches tracked (bin less, or use larger patches).</p>"
        "<p><b>An alignment made elsewhere.</b> Set the source to 'files' to use an alignment IMOD (etomo: NAME.xf "
        "and NAME.tlt), AreTomo (NAME.aln), RELION 5 (NAME.star) or Warp (NAME.xml) made on the same tilt series: nothing is computed, the files are read, "
        "their views matched to the series' by tilt angle, and their shifts rescaled from the binning of the stack "
        "they were made on. Check the aligned stack as above.</p>"
    )
    Params = AlignParams
    inputs = ("preprocess_for_alignment",)

    @classmethod
    def origin_for(cls, params: StepParams, params_of: Any = None) -> str | None:
        return "from files" if getattr(params, "source", "patch tracking") == "files" else None

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, AlignParams)
        issues = []
        if params.source == "files":
            folder = alignment_folder(params.alignment_dir)
            if folder is None:
                return [Issue("error", "choose the folder with the alignment files (.xf and .tlt, or .aln)",
                              "alignment_dir")]
            if not folder.is_dir():
                return [Issue("error", f"{folder}: no such folder", "alignment_dir")]
            if "preprocess_for_alignment" in ctx.upstream:
                sset, _ = SeriesSet.load(ctx.output("preprocess_for_alignment", "series"))
                for s in sset.series:
                    try:
                        find_alignment_files(folder, s.name)
                    except AlignmentFilesError as exc:
                        issues.append(Issue("error", str(exc), "alignment_dir"))
            return issues
        if "preprocess_for_alignment" in ctx.upstream:
            sset, _ = SeriesSet.load(ctx.output("preprocess_for_alignment", "series"))
            for s in sset.series:
                px = s.geometry.pixel_size_binned_A
                if params.patch_size_A / px < 8:
                    issues.append(Issue("error", f"{s.name}: patches of {params.patch_size_A:g} Å are only "
                                        f"{params.patch_size_A / px:.1f} px at {px:.1f} Å/px; use larger patches or "
                                        "bin less", "patch_size_A"))
                if params.patch_size_A / px > min(s.geometry.image_shape_px):
                    issues.append(Issue("error", f"{s.name}: patches larger than the images", "patch_size_A"))
                if s.geometry.n_views < 5:
                    issues.append(Issue("error", f"{s.name}: {s.geometry.n_views} views are too few to align"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        sset, _ = SeriesSet.load(ctx.output("preprocess_for_alignment", "series"))
        total = sum(s.geometry.n_views * s.geometry.image_shape_px[0] * s.geometry.image_shape_px[1] * 4
                    for s in sset.series)
        return Needs(disk_bytes=total + 1_000_000, memory_bytes=10 * total)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.cluster import Unit

        assert isinstance(params, AlignParams)
        if params.source == "files":
            return (yield from self._run_from_files(params, ctx))
        sset, base = SeriesSet.load(ctx.output("preprocess_for_alignment", "series"))
        entries = []
        metrics: dict[str, Any] = {"source": "patch tracking", "series": {}}
        units = []
        for s in sset.series:  # one unit per tilt series (tomoguide.cluster)
            outs = {role: ctx.out_path(f"{s.name}{suffix}") for role, suffix in
                    (("xf", ".xf"), ("tlt", ".tlt"), ("tracks", "_tracks.npz"), ("markers", "_markers.npz"),
                     ("interp", "_ali.mrc"))}
            units.append(Unit(s.name, (s, base, params, outs)))
        aligned = yield from ctx.map_units(align_unit, units, what="tilt-series alignment")
        for s in sset.series:
            entry, series_metrics, logs = aligned[s.name]
            for line in logs:
                ctx.log(line)
            link_or_copy(s.path("stack", base), ctx.out_path(entry.files["stack"]))
            entries.append(entry)
            metrics["series"][s.name] = series_metrics
        path = SeriesSet(series=entries).save(ctx.run_dir)
        worst = max(m["mean_residual_px"] for m in metrics["series"].values())
        metrics["worst_mean_residual_px"] = worst
        return StepResult(outputs={"series": path}, metrics=metrics,
                          summary=f"aligned {len(entries)} series (mean residual ≤ {worst:.2f} px)")

    def _run_from_files(self, params: AlignParams, ctx: RunContext) -> StepRun:
        """``source = "files"``: every series' alignment read from the folder (:func:`read_alignment_files`);
        the same records as patch tracking writes (stack, .xf, .tlt, optional aligned stack), without tracks."""
        from tomoguide.compute.align import apply_alignment
        from tomoguide.compute.io.imod import write_tlt, write_xf
        from tomoguide.compute.io.mrc import read_mrc, write_mrc

        folder = alignment_folder(params.alignment_dir)
        if folder is None:
            raise AlignmentFilesError("alignment_dir: choose the folder with the alignment files")
        sset, base = SeriesSet.load(ctx.output("preprocess_for_alignment", "series"))
        entries = []
        metrics: dict[str, Any] = {"source": "files", "alignment_dir": str(folder), "series": {}}
        for k, s in enumerate(sset.series):
            ctx.check_cancel()
            yield Progress(k / len(sset.series), f"{s.name}: reading the alignment files")
            files_in = find_alignment_files(folder, s.name)
            g, facts = read_alignment_files(files_in, s.geometry, params.alignment_binning)
            program = {"aretomo": "AreTomo", "relion5": "RELION 5", "warp": "Warp"}.get(facts["format"], "IMOD")
            ctx.log(f"{s.name}: alignment read from {facts['file']} ({program}, shifts in px at binning "
                    f"{facts['file_binning']:g}, rescaled to binning {g.binning:g})")
            for note in facts["notes"]:
                ctx.log(f"{s.name}: {note}")
            missing = facts["views_not_in_file"]
            if missing:
                ctx.log(f"{s.name}: views {', '.join(str(v) for v in missing)} excluded: {NOT_IN_FILE}")
            files = {"stack": s.files["stack"], "xf": f"{s.name}.xf", "tlt": f"{s.name}.tlt"}
            link_or_copy(s.path("stack", base), ctx.out_path(files["stack"]))
            rows, tlt = g.to_imod()
            write_xf(ctx.out_path(files["xf"]), rows)
            write_tlt(ctx.out_path(files["tlt"]), tlt)
            if params.interp_binning is not None:
                stack, _ = read_mrc(s.path("stack", base))
                ali = apply_alignment(np.asarray(stack, np.float32), g, binning=g.binning * params.interp_binning)
                files["interp"] = f"{s.name}_ali.mrc"
                write_mrc(ctx.out_path(files["interp"]), np.asarray(ali, np.float32),
                          voxel_size_A=g.pixel_size_binned_A * params.interp_binning, is_stack=True)
            flags = dict(s.flags)
            if missing:
                flags["not_in_imported_alignment"] = [v + 1 in missing for v in range(g.n_views)]
            info_out = {**s.info, "mean_residual_px": None, "alignment_source": "files",
                        "alignment_files": facts["files"], "axis_notes": [],
                        "excluded_reasons": {str(v): NOT_IN_FILE for v in missing}}
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags=flags, info=info_out))
            metrics["series"][s.name] = {
                "source": "files", "format": facts["format"], "file": facts["file"],
                "file_binning": facts["file_binning"], "n_views_in_file": facts["n_views_in_file"],
                "views_not_in_file": missing, "tilt_axis_deg": float(g.tilt_axis_deg),
                "tilt_offset_deg": float(g.tilt_offset_deg), "x_tilt_deg": float(g.x_tilt_deg),
                "mean_residual_px": None, "axis_warnings": [], "notes": facts["notes"]}
            ctx.log(f"{s.name}: tilt axis {g.tilt_axis_deg:.2f}°, offset {g.tilt_offset_deg:+.2f}° (from the files)")
            yield Progress((k + 1) / len(sset.series), f"{s.name}: alignment read")
        path = SeriesSet(series=entries).save(ctx.run_dir)
        metrics["worst_mean_residual_px"] = None
        return StepResult(outputs={"series": path}, metrics=metrics,
                          summary=f"alignment of {len(entries)} series read from files in {folder}")


class AssignParams(StepParams):
    angle_tolerance_deg: float = param(
        0.05, title="Angle tolerance", unit="°", hard=(0.0, 5.0), suggest=(0.0, 0.5), advanced=True,
        help="Largest difference between the tilt angles of the source and the target series; larger differences "
             "mean the two are not the same series, and the step refuses.")


class AssignAlignment(Step):
    id = "assign_alignment"
    title = "Assign alignment"
    summary = "Carry the alignment found on the binned series onto the full-size X-ray-erased series."
    help = (
        "<p><b>What it does.</b> The alignment was found on a small, binned copy of each tilt series. This step "
        "copies it onto the full-size X-ray-erased series: the same tilt axis and tilt-angle offset, the shifts "
        "multiplied by the ratio of the pixel sizes.</p>"
        "<p><b>Why.</b> CTF estimation, CTF correction and reconstruction work on the full-size images.</p>"
        "<p><b>A good result.</b> The same number of views and angles in both series; shifts that are the binned "
        "ones × the binning.</p>"
        "<p><b>What to check.</b> The step refuses when the series differ (a view was removed in one of them): "
        "redo the alignment on the matching series.</p>"
    )
    Params = AssignParams
    inputs = ("align",)

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, AssignParams)
        if "align" not in ctx.upstream or "xray_erase" not in ctx.upstream:
            return []
        src, _ = SeriesSet.load(ctx.output("align", "series"))
        dst, _ = SeriesSet.load(ctx.output("xray_erase", "series"))
        issues = []
        targets = {s.name: s for s in dst.series}
        for s in src.series:
            t = targets.get(s.name)
            if t is None:
                issues.append(Issue("error", f"{s.name}: no X-ray-erased series of that name to assign to"))
                continue
            if t.geometry.n_views != s.geometry.n_views:
                issues.append(Issue("error", f"{s.name}: the aligned series has {s.geometry.n_views} views, the "
                                    f"target {t.geometry.n_views}"))
                continue
            diff = np.abs(np.asarray(t.geometry.tilt_angles_deg) - np.asarray(s.geometry.tilt_angles_deg)).max()
            if diff > params.angle_tolerance_deg:
                issues.append(Issue("error", f"{s.name}: tilt angles differ by up to {diff:.2f}° between the aligned "
                                    "and the target series"))
        return issues

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        assert isinstance(params, AssignParams)
        src, _ = SeriesSet.load(ctx.output("align", "series"))
        dst, dst_base = SeriesSet.load(ctx.output("xray_erase", "series"))
        targets = {s.name: s for s in dst.series}
        entries = []
        metrics: dict[str, Any] = {"series": {}}
        for k, s in enumerate(src.series):
            ctx.check_cancel()
            t = targets[s.name]
            g = s.geometry.at_binning(t.geometry.binning)
            g = g.model_validate({**g.model_dump(), "image_shape_px": t.geometry.image_shape_px,
                                  "excluded": [a or b for a, b in zip(s.geometry.excluded, t.geometry.excluded)]})
            files = {"stack": t.files["stack"]}
            link_or_copy(t.path("stack", dst_base), ctx.out_path(files["stack"]))
            entries.append(SeriesEntry(name=s.name, geometry=g, files=files, flags=dict(t.flags),
                                       info={**t.info, **{k2: v for k2, v in s.info.items() if "residual" in k2}}))
            factor = s.geometry.binning / t.geometry.binning
            metrics["series"][s.name] = {"shift_scale": factor, "pixel_size_A": g.pixel_size_binned_A}
            yield Progress((k + 1) / len(src.series), f"{s.name}: alignment assigned (shifts × {factor:g})")
        path = SeriesSet(series=entries).save(ctx.run_dir)
        return StepResult(outputs={"series": path}, metrics=metrics,
                          summary=f"alignment assigned to {len(entries)} full-size series")
