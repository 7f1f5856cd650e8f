"""Step 1, ``import_movies``: read SerialEM .mdoc files and the movies they name into tilt series.

Output ``tilt_series`` (``tilt_series.json``): a list of :class:`ImportedSeries`, each with its mdoc, one
:class:`ImportedTilt` per tilt (movie file, frame count, frame shape, tilt angle, acquisition order, dose) in
*angle order* (ascending tilt, as IMOD stacks are), the optics, the gain reference with how it was found and its
orientation detected from the raw frames, and the geometry record (:class:`tomoguide.geometry.TiltSeriesGeometry`)
that every later step reads and extends.
Output ``previews`` (folder): per series an MRC stack of the raw frame sums, binned to at most 512 px, in angle
order — what the import page's tilt-series viewer shows.

Finding the data (:func:`survey`, fast: names, mdoc text and file existence, no movie is read):

* mdocs: every file under the session folder that matches the pattern (default ``**/*.mdoc``: at any depth, so
  that one folder per series, all in one folder, and SerialEM's ``Frames/`` folders all work). A tilt-series mdoc
  (``[ZValue]`` sections at several tilts) is one series. Single-tilt mdocs (SerialEM's per-movie ``[FrameSet]``
  mdocs, or a one-image ``[ZValue]`` mdoc) are assembled into series (:func:`~tomoguide.compute.io.mdoc.
  group_movie_mdocs`: folder, name ``<prefix>_<NNN>_<angle>``, acquisition time), unless a series mdoc lists
  their movie (then the series mdoc is used and they are left out). ``*_override*`` mdocs and two files
  describing the same movies are refused, naming both files.
* movies: each ``SubFramePath`` (Windows or POSIX) by its name, anywhere under the session folder and the movie
  folder, preferring the movie folder, the mdoc's folder, the folders the path names (``Frames/TS_07/``), a
  ``Frames/`` folder (:class:`~tomoguide.compute.io.mdoc.SessionFiles`); the same name with another movie
  extension is accepted.
* gain: the file typed in, else the one the mdoc names (``GainReference``; a DM4 one is used when a converted
  ``.mrc``/``.tif`` of the same name lies beside it), else a ``*gain*.mrc|.tif``, ``*.gain``, ``CountRef*`` or
  ``SuperRef*`` file in the mdoc's folder, the session folder, their ``Frames/`` folders, the movie folder or the
  movies' folders (one per series: the one named after the series, else the newest, with a warning).
* tilt axis: typed, else the mdoc's (title ``Tilt axis angle``, global ``TiltAxisAngle``, ``RotationAngle`` − 90°),
  else unknown (an error, unless the data-driven search of the alignment module is available).
* dose: typed, else ``ExposureDose``, else ``FrameDosesAndNumber`` (sum of dose × number), else an error naming
  the file, section and field.

Rule of the tutorial: an empty field means "read it from the mdoc"; a value typed in overrides the mdoc (and
``check`` warns when it contradicts the mdoc, e.g. a tilt-axis angle about 90° or 180° away).
"""

from __future__ import annotations

import json
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from tomoguide.compute.io import mdoc as mdocio
from tomoguide.compute.io.errors import FormatError
from tomoguide.geometry import Optics, TiltSeriesGeometry
from tomoguide.steps.base import Issue, Needs, Progress, RunContext, Step, StepParams, StepResult, StepRun, param

PREVIEW_MAX_PX = 512
DEFAULT_PATTERN = "**/*.mdoc"
#: typed as the gain image: no gain reference (the movies are already gain-corrected)
NO_GAIN = "none"
GAIN_SUFFIXES = (".mrc", ".tif", ".tiff", ".gain", ".dm4", ".dm3")
READABLE_GAIN_SUFFIXES = (".mrc", ".tif", ".tiff", ".gain")


SOURCES = ("movies", "tilt series")


class ImportMoviesParams(StepParams):
    source: Literal["movies", "tilt series"] = param(
        "movies", title="Start from", choices=list(SOURCES), widget="choice",
        help="'movies' (the usual start): the SerialEM .mdoc files and the raw tilt movies. 'tilt series': "
             "motion-corrected tilt series you already have (IMOD/SerialEM stacks .st, .mrc or .mrcs), each with "
             "its tilt angles (NAME.rawtlt, NAME.tlt or its mdoc NAME.st.mdoc) and optionally a per-tilt dose list "
             "(NAME.dose) and defocus (NAME.defocus from ctfplotter, NAME_ctf.txt from CTFFIND). The frame "
             "alignment step then passes the stacks on without computing; X-ray erasing is the first step that "
             "works on them.")
    files_dir: str = param(
        "", title="Files directory", widget="directory",
        help="The session folder: the SerialEM .mdoc files and the movies, in any layout SerialEM writes (movies "
             "beside the mdoc, in a Frames/ folder, one folder per tilt series). The movies are found by the file "
             "names the mdoc records (its Windows paths are not needed), anywhere inside this folder. With 'Start "
             "from: tilt series': the folder holding the stacks and their angle files (directly in it).")
    pattern: str = param(
        DEFAULT_PATTERN, title="Pattern", widget="glob",
        tutorial="*.mdoc",
        tutorial_note="The tutorial's mdocs all lie in one folder; **/*.mdoc also finds them in sub-folders "
                      "(Frames/ …).",
        enabled_if=[("source", "=", "movies")],
        help="Which .mdoc files to import, as a wildcard pattern relative to the folder. The default **/*.mdoc "
             "takes every mdoc at any depth (the tutorial's *.mdoc takes only those directly in the folder). A "
             "series mdoc ([ZValue] sections) is one tilt series; per-movie mdocs ([FrameSet], one per movie) are "
             "assembled into tilt series by name and acquisition time, and left out when a series mdoc lists "
             "their movies.")
    movies_dir: str | None = param(
        None, title="Movie folder", widget="directory", empty_means="searched in the session folder",
        enabled_if=[("source", "=", "movies")],
        help="A folder with the movies when they are not inside the session folder (or to prefer copies there). "
             "Leave empty: the movies are looked for beside the mdoc, in the folders the mdoc names (e.g. "
             "Frames/TS_07/) and anywhere in the session folder.")
    tomo5_mdoc: bool = param(
        False, title="Tomo5 mdoc", enabled_if=[("source", "=", "movies")],
        help="Tick only when the mdoc files were written by Thermo Fisher's Tomography 5 software: its tilt-axis "
             "angle is then converted to SerialEM's convention (−1 × angle − 90°). The tutorial says No.")
    voltage_kV: float = param(
        300.0, title="Microscope voltage", unit="kV", hard=(20.0, 1000.0), suggest=(100.0, 300.0),
        tutorial=300.0,
        help="Acceleration voltage of the microscope. Sets the electron wavelength used by every CTF step.")
    cs_mm: float = param(
        2.7, title="Spherical aberration", unit="mm", hard=(0.0, 20.0), suggest=(0.001, 5.0),
        tutorial=2.7,
        help="Spherical aberration Cs of the objective lens (2.7 mm on a Titan Krios; near 0 with a Cs "
             "corrector).")
    amplitude_contrast: float = param(
        0.1, title="Amplitude contrast", unit="1", hard=(0.0, 1.0), suggest=(0.04, 0.2),
        tutorial=0.1,
        help="Fraction of amplitude contrast in the CTF model (0.07-0.1 for cryo samples).")
    pixel_size_A: float | None = param(
        None, title="Pixel size", unit="Å", hard=(0.05, 100.0), suggest=(0.3, 10.0), empty_means="from mdoc",
        help="Pixel size of the movies. Leave empty to read it from the mdoc (PixelSpacing); a value typed "
             "here overrides the mdoc. Tilt series without movies: empty reads the stack's MRC header, else its mdoc "
             "(a header of exactly 1 Å, what programs write when they do not know it, gives way to the mdoc).")
    tilt_axis_deg: float | None = param(
        None, title="Tilt axis angle", unit="°", hard=(-360.0, 360.0), empty_means="from mdoc",
        tutorial=85.0,
        tutorial_note="The tutorial types its microscope's axis; empty reads each series' axis from its mdoc "
                      "(a value typed here overrides the mdocs).",
        help="In-plane angle of the tilt axis, measured from the image Y axis, counter-clockwise (SerialEM's "
             "convention). Leave empty to use the mdoc's value (its 'Tilt axis angle', else RotationAngle − 90° of "
             "per-movie mdocs). A value typed here overrides the mdoc (the tutorial types 85° for its data); a "
             "warning says when it contradicts the mdoc. Alignment refines it later.")
    initial_dose_e_A2: float = param(
        0.0, title="Initial dose", unit="e⁻/Å²", hard=(0.0, 10000.0), suggest=(0.0, 50.0),
        tutorial=0.0,
        help="Dose the specimen received before the first tilt (e.g. from tracking or focusing). Usually 0.")
    dose_per_tilt_e_A2: float | None = param(
        None, title="Dose per tilt", unit="e⁻/Å²", hard=(0.0, 1000.0), suggest=(0.5, 10.0),
        empty_means="from mdoc",
        help="Electron dose of each tilt image. Leave empty to read it from the mdoc (ExposureDose, else "
             "FrameDosesAndNumber); type it when the mdoc has none. Used for dose weighting: later tilts have "
             "lost high-resolution signal to radiation damage.")
    gain_path: str | None = param(
        None, title="Gain image", widget="file", empty_means="found automatically",
        enabled_if=[("source", "=", "movies")],
        help="Gain reference of the camera (MRC, TIFF or .gain), multiplied with every frame. Leave empty to use "
             "the one the mdoc names (GainReference) or a gain file of the session (*gain*.mrc, *.gain, "
             "CountRef*, SuperRef*); type 'none' when the movies are already gain-corrected. Its orientation "
             "(flips/transpose) is detected from the movies during the import.")
    dose_list_kind: Literal["dose", "prior"] = param(
        "dose", title="One-column dose list holds", choices=["dose", "prior"], widget="choice", advanced=True,
        enabled_if=[("source", "=", "tilt series")],
        help="What a per-tilt dose list NAME.dose with one number per line means (the file cannot say): 'dose' = "
             "the dose each tilt received (IMOD TypeOfDoseFile 1), 'prior' = the dose accumulated before each tilt "
             "(IMOD TypeOfDoseFile 2, RELION's pre-exposure, Warp's Dose). Two numbers per line are always "
             "'prior dose, dose'.")


class ImportedTilt(BaseModel):
    """One tilt image: its movie and acquisition metadata (angles in degrees, doses in e⁻/Å²).

    ``mdoc_section`` is the section's index in its mdoc (for per-movie mdocs: the position in the series, and
    ``mdoc`` is the tilt's own mdoc)."""

    movie: str  # relative to the record's folder on disk; absolute once loaded (load_series)
    n_frames: int
    frame_shape_px: tuple[Annotated[int, Field(ge=1, le=100_000)], Annotated[int, Field(ge=1, le=100_000)]]  # (ny, nx)
    tilt_deg: float
    acquisition_order: int
    dose_e_A2: float
    prior_dose_e_A2: float
    target_defocus_um: float | None = None
    datetime: str | None = None
    mdoc_section: int
    mdoc: str | None = None
    #: imported tilt series (``source = "tilt series"``): the image of this tilt in the stack ``movie`` (0-based)
    section: int | None = None


class GainOrientationRecord(BaseModel):
    """The gain's orientation detected from the raw frames (:func:`tomoguide.compute.gain.detect_orientation`):
    the operations that turn the *stored* gain into the camera's orientation (transpose first, then the flips),
    the score, the confidence (margin over the runner-up in standard errors) and whether it decided."""

    transpose: bool
    flip_x: bool
    flip_y: bool
    score: float
    confidence: float
    decided: bool
    name: str = ""
    second: str = ""


class ImportedSeries(BaseModel):
    """A tilt series as imported: tilts in angle order, with optics and the geometry record.

    ``mdoc`` is the series mdoc (per-movie mdocs: the first tilt's, ``mdoc_kind`` ``"per_movie"``). ``gain`` is the
    gain reference (absolute path) or None, ``gain_source`` how it was found (``"typed"``, ``"named by the mdoc
    (GainReference)"``, ``"found in Frames/"``, ...), ``gain_orientation`` its orientation detected from the data
    (None without gain or when the detection could not run). ``tilt_axis_source``: ``"typed"``, ``"mdoc title"``,
    ``"mdoc TiltAxisAngle"``, ``"mdoc RotationAngle"`` (with `` (Tomo5 conversion)`` when converted) or
    ``"data"``; ``pixel_size_source``: ``"typed"`` or ``"mdoc PixelSpacing"``; ``dose_source``: ``"typed"`` or
    the mdoc keys used."""

    name: str
    mdoc: str
    tilts: list[ImportedTilt]
    geometry: TiltSeriesGeometry  # includes the optics
    gain: str | None = None
    tilt_axis_source: str
    pixel_size_source: str
    mdoc_kind: str = "series"
    dose_source: str = ""
    gain_source: str | None = None
    gain_orientation: GainOrientationRecord | None = None
    #: "movies", or "tilt series" (entry point a: each tilt's ``movie`` is the stack, ``section`` its image)
    source: Literal["movies", "tilt series"] = "movies"
    #: the per-tilt defocus file given with an imported stack (as ``mdoc``: relative to the record's folder)
    defocus_file: str | None = None

    @model_validator(mode="after")
    def _same_frames(self) -> ImportedSeries:
        """Every tilt's frames have the geometry's image size (the import refuses movies of other sizes)."""
        shape = tuple(self.geometry.image_shape_px)
        for i, t in enumerate(self.tilts):
            if tuple(t.frame_shape_px) != shape:
                raise ValueError(f"tilts.{i}.frame_shape_px {list(t.frame_shape_px)} differs from "
                                 f"geometry.image_shape_px {list(shape)}")
        return self


def load_series(path: Path) -> list[ImportedSeries]:
    """Read and validate an import step's ``tilt_series.json`` (:func:`tomoguide.steps.records.load_tilt_series`):
    the data paths (movies, mdocs, gain), stored relative to the record's folder so that a project moved together
    with its data still finds them, come back absolute."""
    from tomoguide.steps.records import load_tilt_series

    return load_tilt_series(path)


def _data_path(path: Path | str, run_dir: Path) -> str:
    """A data file's path as the record stores it: relative to the run folder (``../../../data/TS_01/a.mrc``)
    when both lie on the same drive, else absolute."""
    p = Path(path).resolve()
    try:
        return os.path.relpath(p, Path(run_dir).resolve())
    except ValueError:  # another drive (Windows)
        return str(p)


def find_mdocs(params: ImportMoviesParams, files: mdocio.SessionFiles | None = None) -> list[Path]:
    """The mdoc files under the session folder whose relative path matches the pattern (``**/*.mdoc``: any depth;
    ``*.mdoc``: the folder itself; ``*/*.mdoc``: one level down; case-insensitive; linked folders followed once,
    hidden ones skipped), sorted, absolute (links not resolved). ``files``: an index of the folder already built."""
    folder = mdocio._abs(params.files_dir) if params.files_dir else Path(params.files_dir)
    if not params.files_dir or not folder.is_dir():
        raise FormatError(folder, "files_dir", "no such folder")
    if files is None:
        files = mdocio.SessionFiles([folder])
    return files.matching(folder, params.pattern or DEFAULT_PATTERN)


def _series_name(mdoc_path: Path) -> str:
    name = mdoc_path.name
    for suffix in (".mdoc", ".mrc", ".st", ".tif", ".tiff", ".mrcs"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def _why_no_series(mdocs: list[Path]) -> str:
    """Why these mdocs make no tilt series, file by file (the first few): how many images each describes."""
    parts = []
    for path in mdocs[:4]:
        try:
            md = mdocio.read_mdoc(path, strict=False)
        except (FormatError, OSError, ValueError) as exc:
            parts.append(f"{path.name}: unreadable ({exc})")
            continue
        n = len(md.sections)
        parts.append(f"{path.name}: {n} image section{'s' if n != 1 else ''}"
                     + (" (a tilt series needs two or more: is the file cut short?)" if n < 2 else ""))
    more = f"; and {len(mdocs) - 4} more" if len(mdocs) > 4 else ""
    return "; ".join(parts) + more


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


# ---------------------------------------------------------------------------------------------------------------
# the survey: what is found before any run
# ---------------------------------------------------------------------------------------------------------------


@dataclass
class GainFinding:
    """The gain reference of a series: ``path`` (None: none), ``how`` it was found, the other ``candidates``."""

    path: Path | None
    how: str
    candidates: list[Path] = field(default_factory=list)


@dataclass
class SeriesPlan:
    """One tilt series as found before the run (see :func:`survey`).

    ``kind``: ``"series"`` (one mdoc with [ZValue] sections) or ``"per_movie"`` (single-tilt mdocs assembled);
    ``mdocs``: the series mdoc, or the per-movie mdocs in acquisition order; ``records`` one per tilt in
    acquisition-file order (:class:`tomoguide.compute.io.mdoc.TiltRecord`). Tilt axis, pixel size (Å) and dose
    (e⁻/Å², median per tilt) with their sources; ``axis_deg`` None when unknown. ``issues`` name the series."""

    name: str
    kind: Literal["series", "per_movie"]
    mdocs: list[Path]
    records: list[mdocio.TiltRecord]
    axis_deg: float | None
    axis_source: str
    mdoc_axis_deg: float | None
    pixel_A: float | None
    pixel_source: str
    dose_e_A2: float | None
    dose_source: str
    gain: GainFinding
    absorbed: int = 0
    scheme: str = ""
    issues: list[Issue] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How messages name the series: its mdoc's file name, or ``NAME (per-movie mdocs)``."""
        return self.mdocs[0].name if self.kind == "series" else f"{self.name} (per-movie mdocs)"

    @property
    def missing(self) -> list[mdocio.TiltRecord]:
        return [r for r in self.records if not r.movie_found]


@dataclass
class Survey:
    """What :func:`survey` found in a session folder: the series, and the problems that concern files rather
    than a series (refused or skipped mdocs). ``issues()`` gives every issue, errors first."""

    files_dir: Path
    pattern: str
    mdocs: list[Path]
    series: list[SeriesPlan]
    session_issues: list[Issue] = field(default_factory=list)
    n_files_indexed: int = 0
    data_axis_available: bool = False

    def issues(self) -> list[Issue]:
        out: list[Issue] = []
        seen: set[tuple[str, str]] = set()
        for i in self.session_issues + [i for s in self.series for i in s.issues]:
            if (i.level, i.message) not in seen:
                seen.add((i.level, i.message))
                out.append(i)
        rank = {"error": 0, "warning": 1, "info": 2}
        return sorted(out, key=lambda i: rank[i.level])

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues() if i.level == "error"]


def _data_axis_search() -> Any:
    """The alignment module's data-driven tilt-axis search, when it exists (``search_tilt_axis``), else None."""
    try:
        from tomoguide.compute import align
    except ImportError:  # pragma: no cover - align is part of the package
        return None
    return getattr(align, "search_tilt_axis", None)


def _is_gain_name(name: str) -> bool:
    low = name.lower()
    suffix = Path(low).suffix
    if suffix == ".gain":
        return True
    if suffix not in GAIN_SUFFIXES:
        return False
    return "gain" in low or low.startswith("countref") or low.startswith("superref")


def _dm4_message(p: Path) -> str:
    return (f"{p}: gain: DM4 gain references are not read; convert it with IMOD (dm2mrc {p.name} {p.stem}.mrc, in "
            f"the same folder: the .mrc is then found), choose an MRC/TIFF gain, or type '{NO_GAIN}' as the gain "
            f"image when the movies are already gain-corrected")


def _rel(p: Path, base: Path) -> str:
    try:
        r = p.relative_to(base).as_posix()
    except ValueError:
        return str(p)
    return "./" if r == "." else r


def _where(folder: Path, session: Path) -> str:
    """``"the session folder"``, ``"Frames/"`` or an absolute path: where a file lies, for messages."""
    r = _rel(folder, session)
    return "the session folder" if r == "./" else (r + "/" if not os.path.isabs(r) else r)


def _find_gain(files: mdocio.SessionFiles, params: ImportMoviesParams, name: str, mdocs: list[mdocio.Mdoc],
               records: list[mdocio.TiltRecord], session: Path, movies_dir: Path | None,
               issues: list[Issue], label: str) -> GainFinding:
    """The gain reference of one series (see the module docstring); problems are appended to ``issues``."""
    typed = (params.gain_path or "").strip()
    if typed.lower() == NO_GAIN:
        return GainFinding(None, f"none (typed '{NO_GAIN}')")
    if typed:
        # a relative name is looked for in the session folder (and the movie folder) first, then from the
        # working folder
        rel = Path(os.path.expanduser(typed))
        bases = [] if rel.is_absolute() else [b for b in (session, movies_dir) if b is not None]
        p = next((mdocio._abs(b / rel) for b in bases if (b / rel).is_file()), mdocio._abs(typed))
        if not p.is_file():
            where = f" (looked in {', '.join(str(b) for b in bases)} and the working folder)" if bases else ""
            issues.append(Issue("error", f"{typed}: gain image not found{where}", "gain_path"))
            return GainFinding(None, "typed, not found")
        if p.suffix.lower() in (".dm4", ".dm3"):
            issues.append(Issue("error", _dm4_message(p), "gain_path"))
        return GainFinding(p, "typed")
    mdoc_dir = mdocs[0].path.parent
    named = next((n for n in (mdocio.gain_reference_name(m) for m in mdocs) if n), None)
    if named:
        loc = files.locate(named, mdoc_dir=mdoc_dir, session_dir=session, movies_dir=movies_dir)
        converted = [c for c in files.named(Path(named).stem + ".mrc") + files.named(Path(named).stem + ".tif")
                     + files.named(Path(named).stem + ".tiff")]
        if loc.path is not None and loc.path.suffix.lower() in READABLE_GAIN_SUFFIXES:
            return GainFinding(loc.path, "named by the mdoc (GainReference)", list(loc.others))
        if converted:
            near = sorted(converted, key=lambda c: (loc.path is None or c.parent != loc.path.parent, str(c)))
            return GainFinding(near[0], f"converted copy of the mdoc's GainReference {named}", near[1:])
        if loc.path is not None:  # a DM4 file and no converted copy
            issues.append(Issue("error", _dm4_message(loc.path), "gain_path"))
            return GainFinding(None, f"the mdoc's GainReference {named} is a DM4 file")
        issues.append(Issue("info", f"{label}: the mdoc names the gain reference {named}, not found in the session "
                                    "folder; looking for other gain files", "gain_path"))
    dirs: list[Path] = []
    for d in [mdoc_dir, *files.subfolders_named(mdoc_dir, "frames"), session, *files.subfolders_named(session, "frames"),
              *([movies_dir] if movies_dir else []),
              *sorted({r.movie_path.parent for r in records if r.movie_found and r.movie_path is not None})]:
        if d not in dirs:
            dirs.append(d)
    movies = {r.movie_path for r in records if r.movie_path is not None}
    cands = [f for d in dirs for f in files.files_in(d) if _is_gain_name(f.name) and f not in movies]
    readable = [c for c in cands if c.suffix.lower() in READABLE_GAIN_SUFFIXES]
    stems = {(c.parent, c.stem.lower()) for c in readable}
    dm = [c for c in cands if c.suffix.lower() in (".dm4", ".dm3") and (c.parent, c.stem.lower()) not in stems]
    if not readable:
        if dm:
            issues.append(Issue("error", _dm4_message(dm[0]), "gain_path"))
            return GainFinding(None, f"only a DM4 gain reference ({dm[0].name})", dm)
        return GainFinding(None, "none found")
    if len(readable) == 1:
        return GainFinding(readable[0], f"found in {_where(readable[0].parent, session)}", dm)
    mine = [c for c in readable if name.lower() in c.name.lower()]
    if len(mine) == 1:
        return GainFinding(mine[0], f"found in {_where(mine[0].parent, session)}, named after the series",
                           [c for c in readable if c != mine[0]])
    pool = mine or readable
    chosen = max(pool, key=lambda c: (c.stat().st_mtime, str(c)))
    others = [c for c in readable if c != chosen]
    issues.append(Issue("warning", f"{len(readable)} gain references found ("
                        + ", ".join(_rel(c, session) for c in readable) + f"); using the newest, {_rel(chosen, session)}"
                        " — choose one as the gain image if that is wrong", "gain_path"))
    return GainFinding(chosen, f"found in {_where(chosen.parent, session)}, the newest of {len(readable)}", others)


def _records(make: Any, issues: list[Issue]) -> list[mdocio.TiltRecord]:
    """``make(strict)`` -> records; a missing dose becomes an error issue (the message names file, section and
    field) and the records are made again permissively (dose 0) so that the rest can still be reported."""
    try:
        return make(True)
    except FormatError as exc:
        if "ExposureDose" not in (exc.field or ""):
            raise
        issues.append(Issue("error", f"{exc}: type it in 'Dose per tilt'", "dose_per_tilt_e_A2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make(False)


def _wrap_deg(a: float) -> float:
    w = (a + 180.0) % 360.0 - 180.0
    return 180.0 if w == -180.0 else w


def _stack_to_movie_scale(mdocs: list[mdocio.Mdoc], records: list[mdocio.TiltRecord]
                          ) -> tuple[float, str] | None:
    """The factor from a series mdoc's ``PixelSpacing`` to the movies' pixel size, when the mdoc describes a
    binned stack: SerialEM writes ``PixelSpacing`` (Å) of the image it saved (``ImageSize``, after ``Binning``;
    e.g. EMPIAR-10164: 5.4 Å at ``ImageSize = 924 958``, ``Binning = 4``, for movies of 3708 × 3838 px at 1.35 Å),
    while the frames are recorded unbinned (or super-resolution). ``(ImageSize nx / movie nx, text)`` when the
    first found movie's frames differ from ``ImageSize`` by the same factor in x and y (either orientation, 1 %),
    else None (no ``ImageSize``, no movie header readable, or equal sizes). Per-movie [FrameSet] mdocs describe
    the movie itself: None."""
    from tomoguide.compute.io import movies as movio

    size = next((m.image_size for m in mdocs if m.image_size), None)
    first = next((r.movie_path for r in records if r.movie_found and r.movie_path is not None), None)
    if size is None or first is None:
        return None
    try:
        _, ny, nx, _ = movio.read_movie_header(first)
    except (OSError, ValueError):
        return None  # the run reports an unreadable movie
    sx, sy = size
    for mx, my in ((nx, ny), (ny, nx)):
        fx, fy = sx / mx, sy / my
        if abs(fx - fy) <= 0.01 * max(fx, fy):
            f = (fx + fy) / 2.0
            if abs(f - 1.0) <= 0.01:
                return None
            return f, f"ImageSize {sx}×{sy} px; movies {nx}×{ny} px"
    return None


def _plan(name: str, kind: Literal["series", "per_movie"], mdocs: list[mdocio.Mdoc],
          sections: list[mdocio.MdocSection], records: list[mdocio.TiltRecord], issues: list[Issue],
          params: ImportMoviesParams, files: mdocio.SessionFiles, session: Path, movies_dir: Path | None,
          data_axis: bool, mdoc_paths: list[Path]) -> SeriesPlan:
    plan = SeriesPlan(name=name, kind=kind, mdocs=mdoc_paths, records=records, axis_deg=None, axis_source="unknown",
                      mdoc_axis_deg=None, pixel_A=None, pixel_source="", dose_e_A2=None, dose_source="",
                      gain=GainFinding(None, ""), issues=issues)
    label = plan.label
    # movies
    no_path = [r for r in records if r.movie_path is None]
    if no_path:
        r = no_path[0]
        issues.append(Issue("error", f"{r.mdoc_path}: [{'ZValue' if kind == 'series' else 'FrameSet'} = "
                                     f"{r.index_in_mdoc}] SubFramePath: missing: the mdoc names no movie for tilt "
                                     f"{r.tilt_angle_deg:g}° ({len(no_path)} of {len(records)} tilts)", "files_dir"))
    missing = [r for r in records if r.movie_path is not None and not r.movie_found]
    if missing:
        names = ", ".join(Path(str(r.movie_path)).name for r in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        issues.append(Issue("error", f"{label}: {len(missing)} movie file(s) missing: {names}{more} (looked for "
                                     f"anywhere in {session}" + (f" and {movies_dir}" if movies_dir else "")
                                     + "; set 'Movie folder' if they are elsewhere)", "movies_dir"))
    amb = [r for r in records if r.movie_ambiguous]
    if amb:
        r = amb[0]
        issues.append(Issue("warning", f"{label}: {len(amb)} movie(s) exist in several folders that match equally "
                                       f"well (e.g. {r.movie_path}, also {r.movie_others[0]}); the first is used — "
                                       "set 'Movie folder' to choose", "movies_dir"))
    # tilt axis
    axis, src = mdocio.tilt_axis_info(mdocs, sections)
    if axis is not None and params.tomo5_mdoc:
        axis, src = _wrap_deg(-1.0 * axis - 90.0), src + " (Tomo5 conversion)"
    plan.mdoc_axis_deg = axis
    sig = mdocio.thermo_signature(mdocs[0])
    if axis is not None and not params.tomo5_mdoc and mdocio.looks_like_tomo5_axis(axis, tolerance_deg=4.0 if sig else 1.5):
        why = f"; the file looks written by Thermo Fisher's Tomography software ({sig})" if sig else ""
        issues.append(Issue("warning", f"{label}: the mdoc's tilt axis ({axis:g}°) is near ±176°, the value Thermo "
                                       f"Fisher's Tomography 5 writes in another convention{why}: if Tomography 5 "
                                       f"wrote this mdoc, tick 'Tomo5 mdoc' (the axis becomes "
                                       f"{_wrap_deg(-axis - 90.0):g}°)", "tomo5_mdoc"))
    if params.tilt_axis_deg is not None:
        plan.axis_deg, plan.axis_source = float(params.tilt_axis_deg), "typed"
        if axis is not None:
            diff = _angle_difference(params.tilt_axis_deg, axis)
            if diff > 10.0:
                issues.append(Issue(
                    "warning",
                    f"{label}: the tilt-axis angle typed here ({params.tilt_axis_deg:g}°) is {diff:.0f}° away from the "
                    f"mdoc's ({axis:g}°, {src})"
                    + (" — about 90° away: is this a Tomo5 mdoc, or X and Y swapped?" if 75 < diff < 105
                       else " — about 180° away: this flips the tilt direction" if diff > 165 else "")
                    + "; the typed value will be used (leave the field empty to use the mdoc's)", "tilt_axis_deg"))
    elif axis is not None:
        plan.axis_deg, plan.axis_source = axis, src
    elif data_axis:
        plan.axis_source = "data"
        issues.append(Issue("info", f"{label}: the mdoc gives no tilt-axis angle; it will be estimated from the frame "
                                    "sums (type one in if you know it)", "tilt_axis_deg"))
    else:
        issues.append(Issue("error", f"{label}: the mdoc gives no tilt-axis angle (no 'Tilt axis angle' title, "
                                     "TiltAxisAngle or RotationAngle); type one in", "tilt_axis_deg"))
    # pixel size
    spacings = [r.pixel_spacing_A for r in records if r.pixel_spacing_A]
    if params.pixel_size_A is not None:
        plan.pixel_A, plan.pixel_source = float(params.pixel_size_A), "typed"
        if spacings:
            mdoc_px = float(np.median(spacings))
            if abs(params.pixel_size_A - mdoc_px) / mdoc_px > 0.02:
                issues.append(Issue(
                    "warning", f"{label}: the pixel size typed here ({params.pixel_size_A:g} Å) differs from the "
                    f"mdoc's PixelSpacing ({mdoc_px:g} Å); the typed value will be used", "pixel_size_A"))
    elif spacings:
        plan.pixel_A, plan.pixel_source = float(np.median(spacings)), "mdoc PixelSpacing"
        scale = _stack_to_movie_scale(mdocs, records) if kind == "series" else None
        if scale is not None:
            factor, sizes = scale
            mdoc_px = plan.pixel_A
            plan.pixel_A, plan.pixel_source = mdoc_px * factor, "mdoc PixelSpacing scaled to the movies"
            issues.append(Issue(
                "warning", f"{label}: the mdoc's PixelSpacing {mdoc_px:g} Å is that of its saved stack ({sizes}); "
                f"the movies' pixel size is {plan.pixel_A:.4g} Å (× {factor:g}); type the pixel size in if that is "
                "wrong", "pixel_size_A"))
    else:
        issues.append(Issue("error", f"{label}: PixelSpacing missing; type the pixel size in", "pixel_size_A"))
    # dose
    srcs = Counter(r.dose_source for r in records if r.dose_source)
    if records and all(r.dose_source for r in records):
        plan.dose_e_A2 = float(np.median([r.dose_e_A2 for r in records]))
        plan.dose_source = "typed" if "typed" in srcs else "mdoc " + " and ".join(sorted(srcs, reverse=True))
    # acquisition scheme, size
    if records:
        in_order = [r.tilt_angle_deg for r in sorted(records, key=lambda r: r.acquisition_order)]
        plan.scheme = mdocio.classify_scheme(in_order)
    if len(records) < 3:
        issues.append(Issue("warning", f"{label}: only {len(records)} tilt(s)", "files_dir"))
    plan.gain = _find_gain(files, params, name, mdocs, records, session, movies_dir, issues, label)
    return plan


def survey(params: ImportMoviesParams) -> Survey:
    """Find the tilt series of a session before any run: mdocs, movies (by name, see the module docstring), gain,
    tilt axis, pixel size and dose with their sources, and every problem as an :class:`Issue`.

    Fast: reads the mdoc files and lists the folders once (:class:`~tomoguide.compute.io.mdoc.SessionFiles`); no
    movie or gain file is opened. Raises :class:`FormatError` (field ``files_dir``) when the folder does not exist.
    """
    if not params.files_dir or not mdocio._abs(params.files_dir).is_dir():
        raise FormatError(mdocio._abs(params.files_dir or "."), "files_dir", "no such folder")
    session = mdocio._abs(params.files_dir)
    movies_dir = mdocio._abs(params.movies_dir) if params.movies_dir else None
    session_issues: list[Issue] = []
    if movies_dir is not None and not movies_dir.is_dir():
        session_issues.append(Issue("error", f"{movies_dir}: movie folder: no such folder", "movies_dir"))
        movies_dir = None
    files = mdocio.SessionFiles([session, *([movies_dir] if movies_dir else [])])
    mdoc_paths = find_mdocs(params, files)
    if files.truncated:
        session_issues.append(Issue("warning", f"{session}: more than {files.n_files} files under the session "
                                               "folder: the search for movies stopped there; choose the session "
                                               "folder itself", "files_dir"))
    data_axis = _data_axis_search() is not None
    series_md: list[mdocio.Mdoc] = []
    singles: list[mdocio.MovieMdoc] = []
    by_name = {(p.parent, p.name.lower()): p for p in mdoc_paths}

    def read_one(p: Path) -> None:
        low = p.name.lower()
        if "_override" in low:
            base = by_name.get((p.parent, low.replace("_override", "")))
            if base is not None:
                msg = (f"{p} and {base}: {p.name} is an '_override' mdoc beside the mdoc it changes; tomoguide does "
                       "not pair them: remove or rename one of them, or narrow the Pattern")
            else:
                msg = (f"{p}: an '_override' mdoc; tomoguide does not pair override files with the mdoc they "
                       "change: remove or rename it, or narrow the Pattern")
            session_issues.append(Issue("error", msg, "pattern"))
            return
        try:
            md = mdocio.read_mdoc(p)
        except FormatError as exc:
            session_issues.append(Issue("error", str(exc), "files_dir"))
            return
        if md.kind == "montage":
            session_issues.append(Issue("info", f"{p}: a montage, not a tilt series: not imported", "pattern"))
            return
        one = mdocio.single_tilt(md)
        if one is not None:
            singles.append(one)
            return
        tilts = [s.tilt_angle_deg for s in md.sections if s.tilt_angle_deg is not None]
        if md.kind == "tilt_series" and len(tilts) > 1 and max(tilts) - min(tilts) <= 0.05:
            session_issues.append(Issue("warning", f"{p}: {len(tilts)} movies at one tilt angle ({tilts[0]:g}°): "
                                                   "not a tilt series, not imported", "pattern"))
            return
        series_md.append(md)

    # SerialEM names a movie's own mdoc <movie>.mdoc: those are read last, and not at all when a series mdoc
    # lists their movie (a session of 20 series keeps its 1220 frame mdocs unread)
    def movie_key(p: Path) -> str | None:
        stem = p.name[:-5] if p.name.lower().endswith(".mdoc") else p.name
        return mdocio._movie_stem(stem).lower() if Path(stem).suffix.lower() in mdocio.MOVIE_EXTENSIONS else None

    deferred = [p for p in mdoc_paths if movie_key(p) is not None and "_override" not in p.name.lower()]
    deferred_set = set(deferred)
    for p in mdoc_paths:
        if p not in deferred_set:
            read_one(p)
    pre_keys = [mdocio.movie_keys(md) for md in series_md]
    pre_absorbed: Counter[int] = Counter()
    # SerialEM's series mdoc is also named <stack>.mrc.mdoc: it may come among the deferred ones. A deferred
    # mdoc that cannot be read (a cut-short frame mdoc of an aborted session) is reported only when no series
    # mdoc read in the end lists its movie
    pending: list[tuple[str, Issue]] = []
    for p in deferred:
        key = movie_key(p)
        owner = next((i for i, k in enumerate(pre_keys) if key in k), None)
        if owner is not None:
            pre_absorbed[owner] += 1
            continue
        n_issues, n_series = len(session_issues), len(series_md)
        read_one(p)
        pending += [(key or "", i) for i in session_issues[n_issues:] if i.level == "error"]
        session_issues[n_issues:] = [i for i in session_issues[n_issues:] if i.level != "error"]
        pre_keys += [mdocio.movie_keys(md) for md in series_md[n_series:]]
    session_issues += [i for key, i in pending if not any(key in k for k in pre_keys)]
    # two series mdocs for the same movies (a copy, a renamed file): refused, naming both
    keys = [mdocio.movie_keys(md) for md in series_md]
    sigs = [tuple((round(s.tilt_angle_deg or 0.0, 2), s.raw.get("DateTime", "")) for s in md.sections) for md in series_md]
    dup: set[int] = set()
    for i in range(len(series_md)):
        for j in range(i + 1, len(series_md)):
            shared = keys[i] & keys[j]
            if shared or (not keys[i] and not keys[j] and len(sigs[i]) > 1 and sigs[i] == sigs[j]):
                what = f"{len(shared)} of the same movies" if shared else "the same tilts at the same times"
                session_issues.append(Issue("error", f"{series_md[i].path} and {series_md[j].path} describe {what}: "
                                                     "duplicate mdocs are not imported; remove one or narrow the "
                                                     "Pattern", "pattern"))
                dup |= {i, j}
    absorbed: Counter[int] = Counter(pre_absorbed)
    left: list[mdocio.MovieMdoc] = []
    first_of: dict[str, mdocio.MovieMdoc] = {}
    for it in singles:
        owner = next((i for i, k in enumerate(keys) if it.key in k), None)
        if owner is not None:
            absorbed[owner] += 1
            continue
        if it.key in first_of:
            session_issues.append(Issue("error", f"{first_of[it.key].path} and {it.path} describe the same movie "
                                                 f"({it.movie_name or it.key}): duplicate mdocs are not imported; "
                                                 "remove one or narrow the Pattern", "pattern"))
            continue
        first_of[it.key] = it
        left.append(it)
    plans: list[SeriesPlan] = []

    def locate(written: str, mdoc_dir: Path) -> mdocio.Located:
        return files.locate(written, mdoc_dir=mdoc_dir, session_dir=session, movies_dir=movies_dir)

    for i, md in enumerate(series_md):
        if i in dup:
            continue
        issues: list[Issue] = []
        recs = _records(lambda strict, md=md: mdocio.tilt_records(
            md, initial_dose_e_A2=params.initial_dose_e_A2, dose_per_tilt_e_A2=params.dose_per_tilt_e_A2,
            strict=strict, locate=locate), issues)
        plan = _plan(_series_name(md.path), "series", [md], md.sections, recs, issues, params, files, session,
                     movies_dir, data_axis, [md.path])
        plan.absorbed = absorbed[i]
        plans.append(plan)
    for group in mdocio.group_movie_mdocs(left):
        if len(group) == 1:
            it = group[0]
            level = "warning" if it.section.sub_frame_path else "info"
            session_issues.append(Issue(level, f"{it.path}: one image at {it.section.tilt_angle_deg:.1f}° that belongs "
                                               "to no tilt series (a tracking or preview image?): not imported",
                                        "pattern"))
            continue
        angles = [it.section.tilt_angle_deg or 0.0 for it in group]
        if max(angles) - min(angles) <= 0.05:
            session_issues.append(Issue("warning", f"{group[0].path.parent}: {len(group)} per-movie mdocs at one tilt "
                                                   f"angle ({angles[0]:g}°: {group[0].path.name}, ...): not a tilt "
                                                   "series, not imported", "pattern"))
            continue
        issues = []
        recs = _records(lambda strict, group=group: mdocio.movie_group_records(
            group, locate=locate, initial_dose_e_A2=params.initial_dose_e_A2,
            dose_per_tilt_e_A2=params.dose_per_tilt_e_A2, strict=strict), issues)
        name = group[0].prefix or group[0].path.parent.name
        plans.append(_plan(name, "per_movie", [it.mdoc for it in group], [it.section for it in group], recs, issues,
                           params, files, session, movies_dir, data_axis, [it.path for it in group]))
    # unique names: series of the same name in different folders get the folder's name in front
    counts = Counter(p.name for p in plans)
    for p in plans:
        if counts[p.name] > 1:
            p.name = f"{p.mdocs[0].parent.name}_{p.name}"
    counts = Counter(p.name for p in plans)
    seen: Counter[str] = Counter()
    for p in plans:
        if counts[p.name] > 1:
            seen[p.name] += 1
            p.name = f"{p.name}_{seen[p.name]}"
    plans.sort(key=lambda p: p.name)
    return Survey(files_dir=session, pattern=params.pattern, mdocs=mdoc_paths, series=plans,
                  session_issues=session_issues, n_files_indexed=files.n_files, data_axis_available=data_axis)


def _folders_text(records: list[mdocio.TiltRecord]) -> str:
    where = Counter(r.movie_how for r in records if r.movie_found)
    return "; ".join(f"{n} {how}" for how, n in where.most_common())


def format_survey(sv: Survey, *, max_names: int = 8) -> str:
    """The survey as text for ``tomoguide new`` and the import page: per series the mdoc(s), tilts and range,
    movies found (and where) or missing (named), gain (path, how found), tilt axis, pixel size and dose with
    their sources; then every problem."""
    base = sv.files_dir
    lines = [f"Session folder {base} (pattern {sv.pattern}): {len(sv.mdocs)} mdoc file(s), "
             f"{len(sv.series)} tilt series"]
    for s in sv.series:
        if s.kind == "series":
            src = f"mdoc {_rel(s.mdocs[0], base)}"
            if s.absorbed:
                src += f" (its {s.absorbed} per-movie mdocs left out)"
        else:
            folders = sorted({_rel(p.parent, base) for p in s.mdocs})
            src = f"{len(s.mdocs)} per-movie mdocs in {', '.join(folders)}"
        lines.append(f"{s.name}: {src}")
        if s.records:
            t = [r.tilt_angle_deg for r in s.records]
            first = min(s.records, key=lambda r: r.acquisition_order).tilt_angle_deg
            lines.append(f"  tilts: {len(t)}, {min(t):+.1f}° to {max(t):+.1f}°, {s.scheme or 'order unknown'} "
                         f"from {first:+.1f}°")
        found = sum(r.movie_found for r in s.records)
        text = f"  movies: {found} of {len(s.records)} found"
        if found:
            text += f" ({_folders_text(s.records)})"
        lines.append(text)
        missing = s.missing
        if missing:
            names = [Path(str(r.movie_path)).name if r.movie_path else f"(no SubFramePath, tilt {r.tilt_angle_deg:g}°)"
                     for r in missing]
            more = f" and {len(names) - max_names} more" if len(names) > max_names else ""
            lines.append(f"  MISSING: {', '.join(names[:max_names])}{more}")
        g = s.gain
        lines.append(f"  gain: {_rel(g.path, base)} ({g.how})" if g.path else f"  gain: {g.how}")
        if s.axis_deg is not None:
            extra = ""
            if s.axis_source == "typed" and s.mdoc_axis_deg is not None:
                extra = f"; the mdoc says {s.mdoc_axis_deg:g}°"
            lines.append(f"  tilt axis: {s.axis_deg:g}° ({s.axis_source}{extra})")
        else:
            lines.append("  tilt axis: unknown" + (" (estimated from the data during the import)"
                                                   if s.axis_source == "data" else ""))
        px = f"{s.pixel_A:g} Å ({s.pixel_source})" if s.pixel_A is not None else "unknown"
        dose = (f"{s.dose_e_A2:g} e⁻/Å² per tilt ({s.dose_source})" if s.dose_e_A2 is not None
                else "unknown (type the dose per tilt)")
        lines.append(f"  pixel size: {px}; dose: {dose}")
    issues = sv.issues()
    if issues:
        lines.append("Problems:" if any(i.level != "info" for i in issues) else "Notes:")
        lines += [f"  {i.level}: {i.message}" for i in issues]
    return "\n".join(lines)


def _gain_orientation(raw_sum: np.ndarray, gain: Path, name: str, ctx: RunContext) -> GainOrientationRecord:
    """Detect the stored gain's orientation from a series' raw frame sum (:func:`tomoguide.compute.gain.
    detect_orientation`); a gain whose shape fits no orientation of the frames is an error naming the file."""
    from tomoguide.compute.gain import detect_orientation
    from tomoguide.compute.io import movies as movio

    stored = movio.read_gain(gain, keep_bad=True)
    try:
        res = detect_orientation(raw_sum, stored)
    except ValueError as exc:
        raise FormatError(gain, "shape", f"does not fit the movies of {name}: {exc}") from None
    ctx.log(f"{name}: gain {gain.name}: orientation {res.describe()}")
    return GainOrientationRecord(transpose=bool(res.transpose), flip_x=bool(res.flip_x), flip_y=bool(res.flip_y),
                                 score=float(res.score), confidence=float(res.confidence), decided=bool(res.decided),
                                 name=res.name, second=res.second)


def _axis_from_data(stack: np.ndarray, tilts_deg: list[float]) -> float:
    """The tilt axis (°) from the frame sums by the alignment module's search (only called when it exists)."""
    search = _data_axis_search()
    res = search(np.asarray(stack, dtype=np.float32), np.asarray(tilts_deg, dtype=float), around_deg=None)
    for attr in ("tilt_axis_deg", "axis_deg"):
        if hasattr(res, attr):
            return float(getattr(res, attr))
    if isinstance(res, tuple):
        return float(res[0])
    return float(res)


class ImportMovies(Step):
    id = "import_movies"
    title = "Import tilt-series movies"
    summary = "Read the SerialEM .mdoc files and find their movies and gain reference."
    help = (
        "<p><b>What it does.</b> Reads every SerialEM .mdoc file that matches the pattern, finds the movie of each "
        "tilt by its file name (beside the mdoc, in the folders it names such as Frames/TS_07/, anywhere in the "
        "session folder) and groups the tilts into tilt series with their acquisition metadata: tilt angle, the "
        "order in which the tilts were taken (dose-symmetric schemes go 0°, +3°, −3°, −6°, +6°, …), the dose "
        "each one received, the target defocus and the pixel size. Per-movie mdocs (one per tilt) are assembled "
        "into their tilt series. It also finds the gain reference and detects its orientation from the movies.</p>"
        "<p><b>Why.</b> Every later step needs this: dose weighting needs the order and the dose, CTF needs the "
        "optics, alignment and reconstruction need the tilt angles and the tilt-axis angle.</p>"
        "<p><b>A good result.</b> Before the run, the page lists what was found: each tilt series with the "
        "expected number of tilts (41 for −60° to +60° in 3° steps), every movie found, the gain, the tilt axis "
        "from the mdoc. After the run the table gives the tilt range, the pixel size and a dose per tilt of a few "
        "e⁻/Å², and the gain orientation with its confidence; in the viewer, the frame sums look alike from tilt "
        "to tilt and get darker towards high tilts.</p>"
        "<p><b>What to check.</b> Missing movies (the step refuses to run and names them: set the movie folder), a "
        "pixel size or tilt axis that contradicts the mdoc (a warning), a tilt series with far fewer tilts than "
        "the others, a gain orientation with a low confidence.</p>"
    )
    Params = ImportMoviesParams
    inputs = ()

    @classmethod
    def origin_for(cls, params: StepParams, params_of: Any = None) -> str | None:
        return "tilt series" if getattr(params, "source", "movies") == "tilt series" else None

    def check(self, params: StepParams, ctx: RunContext) -> list[Issue]:
        assert isinstance(params, ImportMoviesParams)
        if params.source == "tilt series":
            from tomoguide.steps.import_tilt_series import check_tilt_series

            return check_tilt_series(params)
        if not params.files_dir:
            return [Issue("error", "choose the folder with the .mdoc files and movies", "files_dir")]
        try:
            sv = survey(params)
        except FormatError as exc:
            return [Issue("error", str(exc), "files_dir")]
        if not sv.mdocs:
            return [Issue("error", f"no file in {params.files_dir} matches {params.pattern!r}", "pattern")]
        issues = sv.issues()
        if not sv.series and not any(i.level == "error" for i in issues):
            issues.insert(0, Issue("error", f"no tilt series among the {len(sv.mdocs)} mdoc file(s) in "
                                            f"{params.files_dir}: {_why_no_series(sv.mdocs)}", "pattern"))
        return issues

    def estimate(self, params: StepParams, ctx: RunContext) -> Needs:
        # previews: at most 512² float32 per tilt; for the gain's orientation one full-size float64 frame sum per
        # series and about ten full-size work arrays (float64) of the detection
        assert isinstance(params, ImportMoviesParams)
        from tomoguide.compute.io import movies as movio

        if params.source == "tilt series":  # previews only; the stacks are read one at a time
            return Needs(disk_bytes=50 * 512 * 512 * 4, memory_bytes=512 * 1024**2)
        frame_px = 4096 * 4096
        try:
            first = next(r.movie_path for plan in survey(params).series for r in plan.records
                         if r.movie_found and r.movie_path is not None)
            _, ny, nx, _ = movio.read_movie_header(first)
            frame_px = ny * nx
        except (StopIteration, OSError, ValueError):
            pass  # the check reports what is missing; the estimate assumes a 4k camera
        return Needs(disk_bytes=50 * 512 * 512 * 4, memory_bytes=512 * 1024**2 + 12 * frame_px * 8)

    def run(self, params: StepParams, ctx: RunContext) -> StepRun:
        from tomoguide.compute.io import movies as movio
        from tomoguide.compute.io.mrc import write_mrc
        from tomoguide.compute.rescale import bin_to_at_most

        assert isinstance(params, ImportMoviesParams)
        if params.source == "tilt series":
            from tomoguide.steps.import_tilt_series import run_tilt_series

            return (yield from run_tilt_series(params, ctx))
        sv = survey(params)
        errors = sv.errors
        if errors:
            raise FormatError(params.files_dir, None, errors[0].message)
        optics = Optics(voltage_kV=params.voltage_kV, cs_mm=params.cs_mm,
                        amplitude_contrast=params.amplitude_contrast)
        preview_dir = ctx.mkdir("previews")
        all_series: list[ImportedSeries] = []
        n_total = sum(len(s.records) for s in sv.series)
        done = 0
        for plan in sv.series:
            name = plan.name
            ctx.log(f"{name}: {plan.label}; movies {_folders_text(plan.records)}; gain: "
                    + (f"{plan.gain.path} ({plan.gain.how})" if plan.gain.path else plan.gain.how))
            recs = sorted(plan.records, key=lambda r: r.tilt_angle_deg)
            tilts: list[ImportedTilt] = []
            sums: list[np.ndarray] = []
            shape0: tuple[int, int] | None = None
            raw_sum: np.ndarray | None = None
            for r in recs:
                ctx.check_cancel()
                assert r.movie_path is not None and r.movie_found
                n_frames, ny, nx, _ = movio.read_movie_header(r.movie_path)
                if shape0 is None:
                    shape0 = (ny, nx)
                elif (ny, nx) != shape0:
                    raise FormatError(r.movie_path, "frame size",
                                      f"{nx}×{ny} px differs from the other movies of {name} ({shape0[1]}×{shape0[0]})")
                frame_sum = movio.read_movie_sum(r.movie_path)
                if plan.gain.path is not None:
                    raw_sum = frame_sum.copy() if raw_sum is None else raw_sum + frame_sum
                sums.append(bin_to_at_most(frame_sum.astype(np.float32), PREVIEW_MAX_PX))
                tilts.append(ImportedTilt(
                    movie=_data_path(r.movie_path, ctx.run_dir), n_frames=n_frames, frame_shape_px=(ny, nx),
                    tilt_deg=float(r.tilt_angle_deg), acquisition_order=int(r.acquisition_order),
                    dose_e_A2=float(r.dose_e_A2), prior_dose_e_A2=float(r.prior_dose_e_A2),
                    target_defocus_um=None if r.target_defocus_um is None else float(r.target_defocus_um),
                    datetime=None if r.datetime is None else r.datetime.isoformat(),
                    mdoc_section=int(r.index_in_mdoc),
                    mdoc=None if plan.kind == "series" or r.mdoc_path is None else _data_path(r.mdoc_path,
                                                                                               ctx.run_dir)))
                done += 1
                yield Progress(done / max(n_total, 1), f"{name}: tilt {r.tilt_angle_deg:+.1f}° ({done}/{n_total})")
            if not tilts:
                raise FormatError(plan.mdocs[0], "sections", "no tilt images in this mdoc")
            assert shape0 is not None and plan.pixel_A is not None
            pixel = plan.pixel_A
            stack = np.stack(sums).astype(np.float32)
            axis, axis_source = plan.axis_deg, plan.axis_source
            if axis is None:
                axis, axis_source = round(_axis_from_data(stack, [t.tilt_deg for t in tilts]), 2), "data"
                ctx.log(f"{name}: no tilt axis in the mdoc; estimated from the frame sums by common lines: "
                        f"{axis:.1f}° (a line: the tilt direction, ±180°, is decided later)")
            orientation = None
            if plan.gain.path is not None and raw_sum is not None:
                yield Progress(done / max(n_total, 1), f"{name}: gain orientation")
                orientation = _gain_orientation(raw_sum, plan.gain.path, name, ctx)
            targets = [t.target_defocus_um for t in tilts]
            geometry = TiltSeriesGeometry(
                name=name, pixel_size_A=pixel, binning=1.0, image_shape_px=shape0, optics=optics,
                tilt_axis_deg=axis, tilt_angles_deg=[t.tilt_deg for t in tilts],
                acquisition_order=_ranks([t.acquisition_order for t in tilts]),
                dose_e_A2=[t.dose_e_A2 for t in tilts], prior_dose_e_A2=[t.prior_dose_e_A2 for t in tilts],
                # the mdoc reader already turned SerialEM's negative TargetDefocus into positive = underfocus (µm)
                nominal_defocus_um=None if any(t is None for t in targets) else [float(t) for t in targets])
            binning = shape0[1] / sums[0].shape[1]
            write_mrc(ctx.out_path("previews", f"{name}_framesums.mrc"), stack, voxel_size_A=pixel * binning, is_stack=True)
            all_series.append(ImportedSeries(
                name=name, mdoc=_data_path(plan.mdocs[0], ctx.run_dir), tilts=tilts, geometry=geometry,
                gain=None if plan.gain.path is None else _data_path(plan.gain.path, ctx.run_dir),
                tilt_axis_source=axis_source, pixel_size_source=plan.pixel_source, mdoc_kind=plan.kind,
                dose_source=plan.dose_source, gain_source=plan.gain.how if plan.gain.path is not None else None,
                gain_orientation=orientation))
            ctx.log(f"{name}: {len(tilts)} tilts from {min(t.tilt_deg for t in tilts):+.1f}° to "
                    f"{max(t.tilt_deg for t in tilts):+.1f}°, {pixel:g} Å/px, tilt axis {axis:g}° ({axis_source})")
        out = ctx.write_text("tilt_series.json",
                             json.dumps({"series": [s.model_dump(mode="json") for s in all_series]}, indent=1))
        metrics: dict[str, Any] = {
            "n_series": len(all_series),
            "n_tilts": sum(len(s.tilts) for s in all_series),
            "series": {s.name: {"n_tilts": len(s.tilts),
                                "tilt_min_deg": min(t.tilt_deg for t in s.tilts),
                                "tilt_max_deg": max(t.tilt_deg for t in s.tilts),
                                "pixel_size_A": s.geometry.pixel_size_A,
                                "dose_per_tilt_e_A2": float(np.median([t.dose_e_A2 for t in s.tilts])),
                                "tilt_axis_deg": s.geometry.tilt_axis_deg,
                                "tilt_axis_source": s.tilt_axis_source,
                                "frames_per_movie": int(np.median([t.n_frames for t in s.tilts])),
                                "gain": None if s.gain is None else Path(s.gain).name,
                                "gain_orientation": (None if s.gain_orientation is None
                                                     else s.gain_orientation.name if s.gain_orientation.decided
                                                     else f"undecided ({s.gain_orientation.name})"),
                                "gain_confidence": (None if s.gain_orientation is None
                                                    else round(s.gain_orientation.confidence, 2))}
                       for s in all_series},
        }
        return StepResult(outputs={"tilt_series": out, "previews": preview_dir}, metrics=metrics,
                          summary=f"imported {metrics['n_series']} tilt series, {metrics['n_tilts']} tilts")
