"""SerialEM ``.mdoc`` files: tilt series, per-movie frame sets and montages; per-tilt records; writing.

The format (https://bio3d.colorado.edu/SerialEM/hlp/html/about_formats.htm) is lines of
``Key = value``: global keys first, title lines ``[T = ...]``, then sections opened by ``[ZValue = n]``
(one image of a stack: tilt series, montage piece), ``[FrameSet = n]`` (a movie saved on its own, with
its own ``.mdoc``) or ``[MontSection = n]`` (a montage overview). LF and CRLF line ends are both read.

Why our own line parser: ``mdocfile`` (checked on every file of the shared test data) reads all of them
into typed values, but it files the unbracketed title ``T = SerialEM: ...`` of per-movie frame-set mdocs
as a global key ``T``, does not record which kind of section each one is, and its pydantic errors name
neither the file nor the section. Errors here must say ``FILE: [ZValue = 3] TiltAngle: missing``, so
lines are tokenised here (a dozen lines) and the tests cross-check every value against ``mdocfile``.

Conventions (stated once, used by every record here)
----------------------------------------------------
* Tilt angles in degrees as SerialEM reports them (stage alpha tilt).
* Tilt-axis angle in degrees from the title line ``Tilt axis angle = 85.3`` (SerialEM: measured from
  the image Y axis, counter-clockwise positive); the global key ``TiltAxisAngle`` is accepted too.
* Defocus: SerialEM writes negative values for underfocus (µm). ``defocus_um`` and
  ``target_defocus_um`` here use the project convention **positive = underfocus** (the sign is
  flipped); the original text stays in ``raw``.
* Pixel spacing in Å (of the saved image, i.e. after binning), dose in e⁻/Å², exposure time in s.
* ``index`` is the 0-based position of a section among the sections of its kind, in file order.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from os import PathLike
from pathlib import Path, PureWindowsPath
from typing import Any, Literal, Sequence

import numpy as np

from .errors import FormatError, problem

MdocKind = Literal["tilt_series", "frameset", "montage"]

_SECTION_RE = re.compile(r"^\[\s*(ZValue|FrameSet|MontSection)\s*=\s*([-+]?\d+)\s*\]$")
_TITLE_RE = re.compile(r"^\[\s*T\s*=(.*)\]$")
_BARE_TITLE_RE = re.compile(r"^T\s*=(.*)$")
_TILT_AXIS_RE = re.compile(r"Tilt\s*axis\s*angle\s*=\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_MONTHS = {m: i + 1 for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split())}
_MONTH_NAMES = [m.capitalize() for m in _MONTHS]
MOVIE_EXTENSIONS = (".tif", ".tiff", ".mrc", ".mrcs", ".eer")


# --- records ----------------------------------------------------------------------------------------


@dataclass
class MdocSection:
    """One ``[ZValue = n]`` / ``[FrameSet = n]`` / ``[MontSection = n]`` section, typed.

    Units: degrees, Å, e⁻/Å², µm (defocus positive = underfocus), s. ``z_value`` is the section's number
    (``n`` in ``[ZValue = n]``; for other kinds the same number, with ``key`` saying which kind).
    ``sub_frame_path`` is the movie path as written (often a Windows path). ``frame_dose_e_A2`` is the
    dose per frame from ``FrameDosesAndNumber`` (frame-weighted mean when several pairs are given).
    ``raw`` holds every key of the section as text.
    """

    index: int
    z_value: int | None
    tilt_angle_deg: float | None
    pixel_spacing_A: float | None
    exposure_dose_e_A2: float | None
    target_defocus_um: float | None
    defocus_um: float | None
    rotation_angle_deg: float | None
    datetime: datetime | None
    sub_frame_path: str | None
    num_sub_frames: int | None
    frame_dose_e_A2: float | None
    exposure_time_s: float | None
    magnification: float | None
    binning: float | None
    raw: dict[str, str] = field(default_factory=dict)
    key: str = "ZValue"
    prior_record_dose_e_A2: float | None = None
    line: int = 0

    @property
    def label(self) -> str:
        """``[ZValue = 3]`` — how the section is named in messages."""
        return f"[{self.key} = {self.z_value}]"


@dataclass
class Mdoc:
    """A parsed mdoc. ``sections`` are those of the file's main kind (``ZValue`` for tilt series and
    montage pieces, ``FrameSet`` for frame sets), in file order; ``other_sections`` the rest (e.g.
    ``MontSection`` overviews, the ``ZValue`` frame ranges of a continuous-tilt frame set).
    ``global_fields`` are the global ``Key = value`` pairs as text; ``title_lines`` the text of each
    title (``[T = text]``) without brackets and without ``T =``."""

    path: Path
    kind: MdocKind
    title_lines: list[str]
    tilt_axis_deg: float | None
    global_fields: dict[str, str]
    sections: list[MdocSection]
    other_sections: list[MdocSection] = field(default_factory=list)

    @property
    def pixel_spacing_A(self) -> float | None:
        """Global ``PixelSpacing`` (Å), else that of the first section."""
        v = _to_float(self.global_fields.get("PixelSpacing"))
        if v is None and self.sections:
            v = self.sections[0].pixel_spacing_A
        return v

    @property
    def image_size(self) -> tuple[int, int] | None:
        """Global ``ImageSize`` as ``(nx, ny)`` in pixels."""
        parts = self.global_fields.get("ImageSize", "").split()
        try:
            return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else None
        except ValueError:
            return None

    @property
    def voltage_kV(self) -> float | None:
        return _to_float(self.global_fields.get("Voltage"))


@dataclass
class TiltRecord:
    """One tilt image (or one movie) of a tilt series, ready for import.

    ``index_in_mdoc`` is the section index (or the position in the list of per-movie mdocs);
    ``acquisition_order`` is 0-based, from ``DateTime`` when every section has one (ties broken by
    section order), else the section order. ``dose_e_A2`` is the dose of this tilt and
    ``prior_dose_e_A2`` the cumulative dose before it (initial dose + doses of all tilts acquired
    earlier), both e⁻/Å². ``target_defocus_um`` is positive for underfocus. ``movie_path`` is where the
    movie was found, or where it was expected (``movie_found`` False); ``None`` without ``SubFramePath``.
    """

    index_in_mdoc: int
    tilt_angle_deg: float
    acquisition_order: int
    dose_e_A2: float
    prior_dose_e_A2: float
    target_defocus_um: float | None
    pixel_spacing_A: float | None
    movie_path: Path | None
    movie_found: bool
    num_sub_frames: int | None
    datetime: datetime | None
    mdoc_path: Path | None = None


# --- parsing helpers --------------------------------------------------------------------------------


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        v = float(text.split()[0])
    except (ValueError, IndexError):
        return None
    return v


def parse_serialem_datetime(text: str) -> datetime | None:
    """``30-Nov-15  15:21:38`` or ``11-Aug-2023  17:44:56`` -> datetime (English month names, any locale)."""
    m = re.match(r"^\s*(\d{1,2})-([A-Za-z]{3})-(\d{2}|\d{4})\s+(\d{1,2}):(\d{2}):(\d{2})\s*$", text)
    if not m:
        return None
    day, mon, year, hh, mm, ss = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        return None
    y = int(year)
    if len(year) == 2:
        y += 2000 if y < 70 else 1900
    try:
        return datetime(y, month, int(day), int(hh), int(mm), int(ss))
    except ValueError:
        return None


def format_serialem_datetime(dt: datetime) -> str:
    """datetime -> ``30-Nov-15  15:21:38`` (SerialEM's layout: two spaces before the time)."""
    return f"{dt.day:02d}-{_MONTH_NAMES[dt.month - 1]}-{dt.year % 100:02d}  {dt:%H:%M:%S}"


def _tokenise(path: Path, text: str, strict: bool) -> tuple[dict[str, str], list[str], list[tuple[str, int, int, dict[str, str]]]]:
    """Lines -> (global fields, title texts, [(section key, number, line number, fields)])."""
    global_fields: dict[str, str] = {}
    titles: list[str] = []
    sections: list[tuple[str, int, int, dict[str, str]]] = []
    current: dict[str, str] = global_fields
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        m = _SECTION_RE.match(s)
        if m:
            current = {}
            sections.append((m.group(1), int(m.group(2)), lineno, current))
            continue
        t = _TITLE_RE.match(s)
        if t is None and not sections:
            t = _BARE_TITLE_RE.match(s)  # per-movie frame-set mdocs write "T = SerialEM: ..." unbracketed
        if t:
            titles.append(t.group(1).strip())
            continue
        if s.startswith("[") or "=" not in s:
            problem(strict, path, f"line {lineno}", f"cannot read {s[:60]!r} (expected 'Key = value' or '[ZValue = n]')")
            continue
        key, value = s.split("=", 1)
        current[key.strip()] = value.strip()
    return global_fields, titles, sections


def _frame_dose(text: str | None) -> float | None:
    if not text:
        return None
    parts = text.split()
    try:
        pairs = [(float(parts[i]), int(float(parts[i + 1]))) for i in range(0, len(parts) - 1, 2)]
    except ValueError:
        return None
    n = sum(k for _, k in pairs)
    if n <= 0:
        return None
    return sum(d * k for d, k in pairs) / n


def _section(
    path: Path,
    key: str,
    number: int,
    lineno: int,
    fields: dict[str, str],
    index: int,
    global_fields: dict[str, str],
    strict: bool,
    need_tilt: bool,
) -> MdocSection | None:
    label = f"[{key} = {number}]"

    def num(name: str, *, required: bool = False) -> float | None:
        text = fields.get(name)
        if text is None:
            if required:
                raise _Missing(name)
            return None
        v = _to_float(text)
        if v is None or not math.isfinite(v):
            if required:
                raise _Bad(name, text)
            problem(strict, path, f"{label} {name}", f"not a number: {text!r}")
            return None
        return v

    try:
        tilt = num("TiltAngle", required=need_tilt)
    except _Missing as e:
        problem(strict, path, f"{label} {e.name}", "missing")
        return None
    except _Bad as e:
        problem(strict, path, f"{label} {e.name}", f"not a number: {e.text!r}")
        return None
    dt = None
    if "DateTime" in fields:
        dt = parse_serialem_datetime(fields["DateTime"])
        if dt is None:
            problem(strict, path, f"{label} DateTime", f"cannot read {fields['DateTime']!r} (expected e.g. 30-Nov-15  15:21:38)")
    nsub = num("NumSubFrames")
    pixel = num("PixelSpacing")
    if pixel is None:
        pixel = _to_float(global_fields.get("PixelSpacing"))
    target = num("TargetDefocus")
    defocus = num("Defocus")
    return MdocSection(
        index=index,
        z_value=number,
        tilt_angle_deg=tilt,
        pixel_spacing_A=pixel,
        exposure_dose_e_A2=num("ExposureDose"),
        target_defocus_um=None if target is None else -target,
        defocus_um=None if defocus is None else -defocus,
        rotation_angle_deg=num("RotationAngle"),
        datetime=dt,
        sub_frame_path=fields.get("SubFramePath") or None,
        num_sub_frames=None if nsub is None else int(nsub),
        frame_dose_e_A2=_frame_dose(fields.get("FrameDosesAndNumber")),
        exposure_time_s=num("ExposureTime"),
        magnification=num("Magnification"),
        binning=num("Binning"),
        raw=dict(fields),
        key=key,
        prior_record_dose_e_A2=num("PriorRecordDose"),
        line=lineno,
    )


class _Missing(Exception):
    def __init__(self, name: str) -> None:
        self.name = name


class _Bad(Exception):
    def __init__(self, name: str, text: str) -> None:
        self.name, self.text = name, text


def tilt_axis_from_titles(title_lines: Sequence[str], global_fields: dict[str, str] | None = None) -> float | None:
    """The ``Tilt axis angle = 85.3`` of a title line (degrees), else the global ``TiltAxisAngle``."""
    for t in title_lines:
        m = _TILT_AXIS_RE.search(t)
        if m:
            return float(m.group(1))
    if global_fields:
        for k in ("TiltAxisAngle", "Tilt axis angle"):
            v = _to_float(global_fields.get(k))
            if v is not None:
                return v
    return None


# --- reading ----------------------------------------------------------------------------------------


def read_mdoc(path: str | PathLike[str], *, strict: bool = True) -> Mdoc:
    """Read a SerialEM mdoc (LF or CRLF).

    Kind: ``"montage"`` when there are ``[MontSection]`` sections or the global ``Montage = 1``,
    ``"frameset"`` when there is a ``[FrameSet]`` section, else ``"tilt_series"``. Strict mode raises
    :class:`FormatError` naming file, section and key (``TS_01.mrc.mdoc: [ZValue = 3] TiltAngle: missing``)
    for an unreadable line, a missing or non-numeric ``TiltAngle`` (tilt-series and frame-set kinds), a
    non-numeric value of a known numeric key, an unreadable ``DateTime`` or a file without sections.
    With ``strict=False`` each becomes a :class:`FormatWarning`; a section without a usable tilt angle is
    skipped, other bad values become ``None``.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(p, None, "no such file")
    text = p.read_bytes().decode("latin-1")  # SerialEM writes ASCII; latin-1 never fails
    global_fields, titles, raw_sections = _tokenise(p, text, strict)
    keys = {k for k, _, _, _ in raw_sections}
    if not raw_sections:
        problem(strict, p, None, "no [ZValue], [FrameSet] or [MontSection] section: not a SerialEM mdoc?")
    if "MontSection" in keys or global_fields.get("Montage", "0").strip() not in ("0", ""):
        kind: MdocKind = "montage"
        main_key = "ZValue"
    elif "FrameSet" in keys:
        kind, main_key = "frameset", "FrameSet"
    else:
        kind, main_key = "tilt_series", "ZValue"
    need_tilt = kind != "montage"
    sections: list[MdocSection] = []
    others: list[MdocSection] = []
    counters: dict[str, int] = {}
    for key, number, lineno, fields in raw_sections:
        is_main = key == main_key
        idx = counters.get(key, 0)
        counters[key] = idx + 1
        sec = _section(p, key, number, lineno, fields, idx, global_fields, strict, need_tilt and is_main)
        if sec is None:
            continue
        (sections if is_main else others).append(sec)
    if need_tilt:  # re-number the kept sections so that index stays 0-based and contiguous
        for i, sec in enumerate(sections):
            sec.index = i
    return Mdoc(
        path=p,
        kind=kind,
        title_lines=titles,
        tilt_axis_deg=tilt_axis_from_titles(titles, global_fields),
        global_fields=global_fields,
        sections=sections,
        other_sections=others,
    )


def acquisition_order(sections: Sequence[MdocSection]) -> tuple[np.ndarray, str]:
    """0-based acquisition rank of each section and where it came from (``"DateTime"`` or ``"section order"``).

    ``DateTime`` (1 s resolution) is used when every section has one; equal times keep section order.
    """
    n = len(sections)
    if n and all(s.datetime is not None for s in sections):
        times = np.array([s.datetime.timestamp() for s in sections])  # type: ignore[union-attr]
        order = np.lexsort((np.arange(n), times))
        source = "DateTime"
    else:
        order = np.arange(n)
        source = "section order"
    rank = np.empty(n, dtype=int)
    rank[order] = np.arange(n)
    return rank, source


def _windows_basename(sub_frame_path: str) -> str:
    return PureWindowsPath(sub_frame_path.strip()).name  # splits on both "\\" and "/"


def find_movie(sub_frame_path: str, search_dirs: Sequence[Path]) -> tuple[Path, bool]:
    """Map a ``SubFramePath`` as written (``D:\\data\\frames\\TS_01_001_-0.0.tif``) to a local file.

    Looks in each of ``search_dirs`` for the same basename, then for the same stem with any of
    ``.tif .tiff .mrc .mrcs .eer``. Returns ``(path, True)`` when found, else ``(first dir / basename, False)``.
    """
    name = _windows_basename(sub_frame_path)
    stem = name
    suffix = Path(name).suffix
    if suffix.lower() in MOVIE_EXTENSIONS:
        stem = name[: -len(suffix)]
    for d in search_dirs:
        cand = d / name
        if cand.is_file():
            return cand, True
    for d in search_dirs:
        for ext in MOVIE_EXTENSIONS:
            for e in (ext, ext.upper()):
                cand = d / (stem + e)
                if cand.is_file():
                    return cand, True
    return search_dirs[0] / name, False


def _doses(
    path: Path,
    sections: Sequence[MdocSection],
    dose_per_tilt_e_A2: float | None,
    strict: bool,
) -> list[float]:
    if dose_per_tilt_e_A2 is not None:
        if not (dose_per_tilt_e_A2 >= 0 and math.isfinite(dose_per_tilt_e_A2)):
            raise ValueError(f"dose_per_tilt_e_A2 must be a finite number >= 0, got {dose_per_tilt_e_A2}")
        return [float(dose_per_tilt_e_A2)] * len(sections)
    bad = [s for s in sections if not s.exposure_dose_e_A2]
    if bad:
        problem(
            strict,
            path,
            f"{bad[0].label} ExposureDose",
            f"missing or 0 in {len(bad)} of {len(sections)} sections; give the dose per tilt (e/A^2)",
        )
    return [float(s.exposure_dose_e_A2 or 0.0) for s in sections]


def _records(
    path: Path,
    sections: Sequence[MdocSection],
    search_dirs_for: Sequence[Sequence[Path]],
    initial_dose_e_A2: float,
    dose_per_tilt_e_A2: float | None,
    strict: bool,
    mdoc_paths: Sequence[Path],
) -> list[TiltRecord]:
    doses = _doses(path, sections, dose_per_tilt_e_A2, strict)
    rank, _ = acquisition_order(sections)
    by_order = np.argsort(rank)
    prior = np.empty(len(sections))
    prior[by_order] = initial_dose_e_A2 + np.concatenate(([0.0], np.cumsum(np.asarray(doses)[by_order])[:-1]))
    out = []
    for i, sec in enumerate(sections):
        movie: Path | None = None
        found = False
        if sec.sub_frame_path:
            movie, found = find_movie(sec.sub_frame_path, search_dirs_for[i])
        out.append(
            TiltRecord(
                index_in_mdoc=i,
                tilt_angle_deg=float(sec.tilt_angle_deg),  # type: ignore[arg-type]
                acquisition_order=int(rank[i]),
                dose_e_A2=doses[i],
                prior_dose_e_A2=float(prior[i]),
                target_defocus_um=sec.target_defocus_um,
                pixel_spacing_A=sec.pixel_spacing_A,
                movie_path=movie,
                movie_found=found,
                num_sub_frames=sec.num_sub_frames,
                datetime=sec.datetime,
                mdoc_path=mdoc_paths[i],
            )
        )
    return out


def _search_dirs(mdoc_path: Path, movie_dir: str | PathLike[str] | None) -> list[Path]:
    dirs = [Path(movie_dir)] if movie_dir is not None else []
    dirs.append(mdoc_path.parent)
    return dirs


def tilt_records(
    mdoc: Mdoc,
    *,
    movie_dir: str | PathLike[str] | None = None,
    initial_dose_e_A2: float = 0.0,
    dose_per_tilt_e_A2: float | None = None,
    strict: bool = True,
) -> list[TiltRecord]:
    """One :class:`TiltRecord` per section of ``mdoc``, in section order.

    Dose per tilt: ``dose_per_tilt_e_A2`` when given (it overrides the file), else each section's
    ``ExposureDose``; when that is missing or 0, strict mode raises :class:`FormatError` naming the first
    such section and ``ExposureDose`` (permissive: a warning and 0). Prior dose accumulates in
    acquisition order from ``initial_dose_e_A2``. Movies are looked for in ``movie_dir`` (when given)
    and then beside the mdoc, by basename and extension variants (see :func:`find_movie`).
    """
    for sec in mdoc.sections:
        if sec.tilt_angle_deg is None:
            raise FormatError(mdoc.path, f"{sec.label} TiltAngle", "missing")
    dirs = _search_dirs(mdoc.path, movie_dir)
    n = len(mdoc.sections)
    return _records(mdoc.path, mdoc.sections, [dirs] * n, initial_dose_e_A2, dose_per_tilt_e_A2, strict, [mdoc.path] * n)


def mdoc_for_frameset(path: str | PathLike[str], *, strict: bool = True) -> MdocSection:
    """The movie section of a per-movie mdoc (``[FrameSet = 0]``, or a file with a single section)."""
    md = read_mdoc(path, strict=strict)
    if md.kind == "frameset" and md.sections:
        return md.sections[0]
    if md.kind == "tilt_series" and len(md.sections) == 1:
        return md.sections[0]
    raise FormatError(md.path, None, f"expected one [FrameSet] section per movie mdoc; found a {md.kind} with {len(md.sections)} sections")


def tilt_records_from_movie_mdocs(
    paths: Sequence[str | PathLike[str]],
    *,
    movie_dir: str | PathLike[str] | None = None,
    initial_dose_e_A2: float = 0.0,
    dose_per_tilt_e_A2: float | None = None,
    strict: bool = True,
) -> list[TiltRecord]:
    """Records from a folder of per-movie mdocs (one ``[FrameSet]`` file per tilt movie), one per file.

    ``index_in_mdoc`` is the position in ``paths``; acquisition order and prior dose as in
    :func:`tilt_records`. Each movie is looked for in ``movie_dir`` and beside its own mdoc.
    """
    ps = [Path(p) for p in paths]
    if not ps:
        return []
    sections = []
    for i, p in enumerate(ps):
        sec = mdoc_for_frameset(p, strict=strict)
        sec.index = i
        sections.append(sec)
    # name the first file in a dose error: the sections' labels are all "[FrameSet = 0]"
    return _records(ps[0], sections, [_search_dirs(p, movie_dir) for p in ps], initial_dose_e_A2, dose_per_tilt_e_A2, strict, ps)


# --- writing ----------------------------------------------------------------------------------------


def format_value(value: object) -> str:
    """A Python value as SerialEM writes it: floats like C ``%g`` (6 significant digits), sequences
    space-separated, booleans 1/0, datetimes ``30-Nov-15  15:21:38``."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (float, np.floating)):
        v = float(value)
        return "NaN" if math.isnan(v) else f"{v:g}"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, datetime):
        return format_serialem_datetime(value)
    if isinstance(value, (list, tuple, np.ndarray)):
        return " ".join(format_value(v) for v in value)
    return str(value)


def write_mdoc(
    path: str | PathLike[str],
    *,
    title_lines: list[str],
    global_fields: dict[str, object],
    sections: list[dict[str, object]],
    section_key: str = "ZValue",
    crlf: bool = False,
) -> None:
    """Write an mdoc in SerialEM's layout, atomically.

    Global ``Key = value`` lines, a blank line, each title as ``[T = text]`` followed by a blank line,
    then each section as ``[ZValue = n]`` (``n`` = the section's own ``section_key`` entry, else its
    position) with its keys, separated by blank lines. Values are formatted by :func:`format_value`;
    keys whose value is ``None`` are left out.
    ``crlf`` writes Windows line ends, as SerialEM does on Windows.
    """
    p = Path(path)
    lines: list[str] = [f"{k} = {format_value(v)}" for k, v in global_fields.items() if v is not None]
    lines.append("")
    for t in title_lines:
        lines += [f"[T = {t}]", ""]
    for i, sec in enumerate(sections):
        number = sec.get(section_key, i)
        lines.append(f"[{section_key} = {format_value(number)}]")
        lines += [f"{k} = {format_value(v)}" for k, v in sec.items() if k != section_key and v is not None]
        lines.append("")
    eol = "\r\n" if crlf else "\n"
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="latin-1", newline="") as fh:
            fh.write(eol.join(lines) + eol)
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- summary ----------------------------------------------------------------------------------------


def classify_scheme(tilts_in_acquisition_order: Sequence[float], step_deg: float | None = None) -> str:
    """``"dose-symmetric"``, ``"bidirectional"``, ``"unidirectional"``, ``"single"`` or ``"other"``.

    Dose-symmetric: starts near 0°, every new tilt on a side lies further out than the earlier ones on
    that side, and the side changes at least twice (Hagen scheme, any group size). Bidirectional: same
    outward rule, one change of side. Unidirectional: monotonic.
    """
    t = np.asarray(tilts_in_acquisition_order, dtype=float)
    if t.size < 2:
        return "single"
    d = np.diff(t)
    if not step_deg:
        gaps = np.diff(np.sort(t))
        gaps = gaps[gaps > 1e-3]
        step_deg = float(np.median(gaps)) if gaps.size else 1.0
    tol = 0.25 * step_deg
    if np.ptp(t) < tol:
        return "single"
    if np.all(d > -tol) or np.all(d < tol):
        return "unidirectional"
    start = t[0]
    if abs(start - np.median(t)) > 3 * max(tol, 1.0) and abs(start) > 3 * max(tol, 1.0):
        return "other"
    rel = t - start
    side = np.sign(np.where(np.abs(rel) < tol, 0.0, rel))
    outward = True
    far = {1.0: 0.0, -1.0: 0.0}
    for r, s in zip(np.abs(rel), side):
        if s == 0:
            continue
        if r < far[s] - tol:
            outward = False
            break
        far[s] = max(far[s], r)
    nz = side[side != 0]
    switches = int(np.count_nonzero(np.diff(nz))) if nz.size > 1 else 0
    if outward and switches >= 2:
        return "dose-symmetric"
    if outward and switches == 1:
        return "bidirectional"
    return "other"


def describe(
    path: str | PathLike[str],
    *,
    movie_dir: str | PathLike[str] | None = None,
    dose_per_tilt_e_A2: float | None = None,
    initial_dose_e_A2: float = 0.0,
    read_movie_headers: bool = False,
) -> dict[str, Any]:
    """Plain-JSON facts about an mdoc for ``tomoguide inspect`` (permissive; problems are listed).

    Keys: ``path, kind, n_tilts, tilt_range_deg`` [min, max], ``tilt_step_deg`` (median step between
    sorted distinct tilts), ``pixel_size_A, tilt_axis_deg, dose_per_tilt_e_A2`` (median; ``None`` when
    the file has none and none was given), ``total_dose_e_A2`` (initial + all tilts), ``acquisition``
    {``order_source, scheme, first_tilt_deg, tilts_in_order``}, ``movies`` {``referenced, found,
    missing, missing_names``}, ``num_sub_frames`` (per tilt, from the mdoc), ``movie_frames`` (per tilt,
    read from the movie headers when ``read_movie_headers`` and found), ``notes`` (facts worth a look
    that are not errors, e.g. no dose recorded), ``problems`` (what a strict read would refuse).
    """
    notes: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        md = read_mdoc(path, strict=False)
        records: list[TiltRecord] = []
        if md.sections and md.kind != "montage":
            n_no_dose = sum(1 for s in md.sections if not s.exposure_dose_e_A2)
            dose = dose_per_tilt_e_A2
            if dose is None and n_no_dose:
                # a fact about the file, not a format problem: the dose must then be typed in at import
                notes.append(f"ExposureDose is 0 or missing in {n_no_dose} of {len(md.sections)} sections: "
                             "give the dose per tilt when importing")
                dose = 0.0
            records = tilt_records(md, movie_dir=movie_dir, initial_dose_e_A2=initial_dose_e_A2,
                                   dose_per_tilt_e_A2=dose, strict=False)
    tilts = np.array([r.tilt_angle_deg for r in records], dtype=float)
    out: dict[str, Any] = {
        "path": str(md.path),
        "kind": md.kind,
        "n_sections": len(md.sections),
        "n_tilts": len(records),
        "tilt_axis_deg": md.tilt_axis_deg,
        "pixel_size_A": md.pixel_spacing_A,
        "image_size": list(md.image_size) if md.image_size else None,
        "voltage_kV": md.voltage_kV,
    }
    if records:
        distinct = np.unique(np.round(tilts, 2))
        step = float(np.round(np.median(np.diff(distinct)), 3)) if distinct.size > 1 else None
        doses = np.array([r.dose_e_A2 for r in records])
        order = np.argsort([r.acquisition_order for r in records])
        _, source = acquisition_order(md.sections)
        in_order = tilts[order]
        missing = [r.movie_path.name for r in records if r.movie_path is not None and not r.movie_found]
        out.update(
            tilt_range_deg=[float(tilts.min()), float(tilts.max())],
            tilt_step_deg=step,
            dose_per_tilt_e_A2=float(np.median(doses)) if np.any(doses > 0) else None,
            total_dose_e_A2=float(initial_dose_e_A2 + doses.sum()) if np.any(doses > 0) else None,
            acquisition={
                "order_source": source,
                "scheme": classify_scheme(in_order, step),
                "first_tilt_deg": float(in_order[0]),
                "tilts_in_order": [round(float(t), 2) for t in in_order],
            },
            movies={
                "referenced": sum(r.movie_path is not None for r in records),
                "found": sum(r.movie_found for r in records),
                "missing": len(missing),
                "missing_names": missing,
            },
            num_sub_frames=[r.num_sub_frames for r in records],
        )
        if read_movie_headers:
            from .movies import read_movie_header

            frames: list[int | None] = []
            for r in records:
                n = None
                if r.movie_found and r.movie_path is not None:
                    try:
                        n = read_movie_header(r.movie_path)[0]
                    except FormatError as exc:
                        out.setdefault("problems_movies", []).append(str(exc))
                frames.append(n)
            out["movie_frames"] = frames
    out["notes"] = notes
    out["problems"] = [str(w.message) for w in caught]
    return out
