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

Checks (values, not only syntax; each a ``FILE: FIELD: problem`` error when strict, a warning and the value
left out when not): every numeric key within physical bounds (:data:`BOUNDS`: TiltAngle within ±90°,
ExposureDose 0 to 1000 e⁻/Å² per tilt, PixelSpacing positive, FrameDosesAndNumber pairs of a dose and a
positive whole number, ...; PixelSpacing 0 means "not recorded" and reads as ``None``); a key given twice in a
section or in the global part (a lost ``[ZValue = n]`` line merges two sections: the second section's keys
repeat the first's), a section key before the first section (a lost ``[ZValue = 0]`` line), two sections with
the same number, and a file cut short (it ends inside a line, or its last section lacks keys that every other
section has). ZValues that skip a number (a section removed by hand, or lost) are not an error: they are listed
in :attr:`Mdoc.notes`. Text with a UTF-8 or UTF-16 byte-order mark is decoded as such (Windows editors write it).
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime
from os import PathLike
from pathlib import Path, PureWindowsPath
from typing import Any, Callable, Literal, Sequence

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
    ``frame_dose_total_e_A2`` is the whole movie's dose from the same key (sum of dose × number over the
    pairs). ``raw`` holds every key of the section as text.
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
    frame_dose_total_e_A2: float | None = None

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
    notes: list[str] = field(default_factory=list)

    @property
    def pixel_spacing_A(self) -> float | None:
        """Global ``PixelSpacing`` (Å), else that of the first section (``None`` when neither records one)."""
        v = _to_float(self.global_fields.get("PixelSpacing"))
        if v is not None and not (math.isfinite(v) and v > 0):
            v = None
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
        v = _to_float(self.global_fields.get("Voltage"))
        return v if v is not None and math.isfinite(v) and v > 0 else None


@dataclass
class TiltRecord:
    """One tilt image (or one movie) of a tilt series, ready for import.

    ``index_in_mdoc`` is the section index (or the position in the list of per-movie mdocs);
    ``acquisition_order`` is 0-based, from ``DateTime`` when every section has one (ties broken by
    section order), else the section order. ``dose_e_A2`` is the dose of this tilt and
    ``prior_dose_e_A2`` the cumulative dose before it (initial dose + doses of all tilts acquired
    earlier), both e⁻/Å². ``target_defocus_um`` is positive for underfocus. ``movie_path`` is where the
    movie was found, or where it was expected (``movie_found`` False); ``None`` without ``SubFramePath``.
    ``dose_source`` says where the dose came from (``"typed"``, ``"ExposureDose"``, ``"FrameDosesAndNumber"``
    or ``""`` when none was found); ``movie_how`` how the movie was found (see :class:`Located`),
    ``movie_others`` other files of the same name that were not used, ``movie_ambiguous`` True when one
    of those was as good a match as the one used.
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
    dose_source: str = ""
    movie_how: str = ""
    movie_others: tuple[Path, ...] = ()
    movie_ambiguous: bool = False


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


#: Physical bounds of the numeric keys (inclusive; units as SerialEM writes them: degrees, e⁻/Å², Å, µm, s).
#: A value outside is refused (strict) or left out with a warning: it cannot be a real reading.
BOUNDS: dict[str, tuple[float, float, str]] = {
    "TiltAngle": (-90.0, 90.0, "°"),
    "ExposureDose": (0.0, 1000.0, " e/A^2 per tilt"),
    "PriorRecordDose": (0.0, 1e5, " e/A^2"),
    "PixelSpacing": (0.0, 1e5, " A"),
    "NumSubFrames": (0.0, 1e6, " frames"),
    "TargetDefocus": (-1000.0, 1000.0, " um"),
    "Defocus": (-1000.0, 1000.0, " um"),
    "RotationAngle": (-720.0, 720.0, "°"),
    "ExposureTime": (0.0, 1e5, " s"),
    "Magnification": (0.0, 1e8, ""),
    "Binning": (0.0, 1000.0, ""),
    "Voltage": (0.0, 3000.0, " kV"),
    "TiltAxisAngle": (-720.0, 720.0, "°"),
}
#: Keys SerialEM writes only inside a section: found before the first section, they mean a lost ``[ZValue = 0]``.
SECTION_KEYS = frozenset({"TiltAngle", "StagePosition", "StageZ", "SubFramePath", "NumSubFrames", "DateTime",
                          "ExposureDose", "TargetDefocus", "Defocus", "PriorRecordDose", "FrameDosesAndNumber",
                          "MinMaxMean", "PieceCoordinates", "ImageShift", "RotationAngle", "Intensity"})
_MAX_FRAME_DOSE_TOTAL = 1000.0  # e⁻/Å² per movie, as ExposureDose


def _decode_text(path: Path, raw: bytes, strict: bool) -> str:
    """The text of an mdoc: a UTF-8 or UTF-16 byte-order mark is honoured (a file saved by a Windows editor),
    otherwise latin-1 (SerialEM writes ASCII; latin-1 never fails). NUL bytes without a BOM are refused."""
    if raw.startswith(b"\xef\xbb\xbf"):
        return raw[3:].decode("utf-8", errors="replace")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError as exc:
            raise FormatError(path, f"byte {exc.start}", "not readable as the UTF-16 text its byte-order mark "
                                                          "announces (the file is damaged)") from None
    text = raw.decode("latin-1")
    if "\x00" in text:
        line = text.count("\n", 0, text.index("\x00")) + 1
        problem(strict, path, f"line {line}", "NUL bytes: not a text file (UTF-16 without a byte-order mark, or "
                                              "damaged)")
        text = text.replace("\x00", "")
    return text


def _tokenise(path: Path, text: str, strict: bool) -> tuple[dict[str, str], list[str], list[tuple[str, int, int, dict[str, str]]]]:
    """Lines -> (global fields, title texts, [(section key, number, line number, fields)]).

    A key given twice in a section (or in the global part) is a problem naming both lines (the first value is
    kept): a lost ``[ZValue = n]`` line merges a section into the one before it, whose keys then repeat. A
    section-only key (``TiltAngle`` ...) before the first section is a problem too (a lost ``[ZValue = 0]``)."""
    global_fields: dict[str, str] = {}
    titles: list[str] = []
    sections: list[tuple[str, int, int, dict[str, str]]] = []
    current: dict[str, str] = global_fields
    key_lines: dict[str, int] = {}
    label = ""
    for lineno, line in enumerate(text.splitlines(), start=1):
        s = line.strip()
        if not s:
            continue
        m = _SECTION_RE.match(s)
        if m:
            current = {}
            key_lines = {}
            label = f"[{m.group(1)} = {int(m.group(2))}]"
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
        key = key.strip()
        if not key:
            problem(strict, path, f"line {lineno}", f"a value without a key: {s[:60]!r}")
            continue
        if not sections and key in SECTION_KEYS:
            problem(strict, path, f"line {lineno} {key}", "a section key before the first section: a lost "
                                                          "'[ZValue = 0]' line?")
            continue
        if key in current:
            where = f"{label} {key}" if sections else f"line {lineno} {key}"
            hint = ("a lost '[ZValue = n]' line merged two sections?" if sections
                    else "a duplicated line?")
            problem(strict, path, where, f"given twice (lines {key_lines[key]} and {lineno}): {hint}")
            continue
        current[key] = value.strip()
        key_lines[key] = lineno
    return global_fields, titles, sections


def _out_of_bounds(name: str, v: float) -> str | None:
    """Why ``v`` cannot be a reading of key ``name`` (see :data:`BOUNDS`), or None."""
    if not math.isfinite(v):
        return f"not a finite number: {v}"
    b = BOUNDS.get(name)
    if b is None:
        return None
    lo, hi, unit = b
    if not (lo <= v <= hi):
        return f"{v:g}{unit} is outside the physical range {lo:g} to {hi:g}{unit}"
    if name == "Binning" and v == 0:
        return "0: must be positive"
    return None


def _frame_pairs(text: str | None) -> tuple[list[tuple[float, int]] | None, str | None]:
    """``FrameDosesAndNumber = d1 n1 d2 n2 ...`` -> ``([(dose, number), ...], None)``, or ``(None, why)`` when the
    text is not pairs of a dose (0 to 1000 e⁻/Å² per frame) and a positive whole number; ``(None, None)`` when
    the key is absent or empty."""
    if not text or not text.strip():
        return None, None
    parts = text.split()
    if len(parts) % 2:
        return None, f"{text!r}: expected pairs of a dose per frame and a number of frames"
    pairs: list[tuple[float, int]] = []
    for i in range(0, len(parts), 2):
        try:
            d, n = float(parts[i]), float(parts[i + 1])
        except ValueError:
            return None, f"{text!r}: not numbers"
        if not math.isfinite(d) or not 0.0 <= d <= MAX_DOSE_PER_FRAME:
            return None, f"dose per frame {parts[i]} is outside 0 to {MAX_DOSE_PER_FRAME:g} e/A^2"
        if not math.isfinite(n) or n != int(n) or not 1 <= n <= 1e6:
            return None, f"number of frames {parts[i + 1]} is not a whole number from 1 to 1000000"
        pairs.append((d, int(n)))
    total = sum(d * k for d, k in pairs)
    if total > _MAX_FRAME_DOSE_TOTAL:
        return None, f"a movie dose of {total:g} e/A^2 (sum of dose x number) is beyond {_MAX_FRAME_DOSE_TOTAL:g}"
    return pairs, None


MAX_DOSE_PER_FRAME = 1000.0


def _frame_dose(text: str | None) -> float | None:
    pairs, _ = _frame_pairs(text)
    if not pairs:
        return None
    n = sum(k for _, k in pairs)
    return sum(d * k for d, k in pairs) / n if n > 0 else None


def _frame_dose_total(text: str | None) -> float | None:
    """``FrameDosesAndNumber = d1 n1 d2 n2 ...`` -> the movie's dose, sum of d × n (e⁻/Å²); None if unreadable."""
    pairs, _ = _frame_pairs(text)
    if not pairs:
        return None
    return sum(d * k for d, k in pairs)


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
                raise _Bad(name, f"not a number: {text!r}")
            problem(strict, path, f"{label} {name}", f"not a number: {text!r}")
            return None
        why = _out_of_bounds(name, v)
        if why is not None:
            if required:
                raise _Bad(name, why)
            problem(strict, path, f"{label} {name}", why)
            return None
        return v

    try:
        tilt = num("TiltAngle", required=need_tilt)
    except _Missing as e:
        problem(strict, path, f"{label} {e.name}", "missing")
        return None
    except _Bad as e:
        problem(strict, path, f"{label} {e.name}", e.text)
        return None
    dt = None
    if "DateTime" in fields:
        dt = parse_serialem_datetime(fields["DateTime"])
        if dt is None:
            problem(strict, path, f"{label} DateTime", f"cannot read {fields['DateTime']!r} (expected e.g. 30-Nov-15  15:21:38)")
    nsub = num("NumSubFrames")
    if nsub is not None and nsub != int(nsub):
        problem(strict, path, f"{label} NumSubFrames", f"not a whole number: {fields['NumSubFrames']!r}")
        nsub = None
    pixel = num("PixelSpacing") or None  # 0: not recorded
    if pixel is None:
        pixel = _to_float(global_fields.get("PixelSpacing")) or None
    target = num("TargetDefocus")
    defocus = num("Defocus")
    fdn = fields.get("FrameDosesAndNumber")
    _, why = _frame_pairs(fdn)
    if why is not None:
        problem(strict, path, f"{label} FrameDosesAndNumber", why)
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
        frame_dose_e_A2=_frame_dose(fdn),
        frame_dose_total_e_A2=_frame_dose_total(fdn),
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
    """The ``Tilt axis angle = 85.3`` of a title line (degrees), else the global ``TiltAxisAngle`` (a value that is
    not finite or beyond ±720° is ignored)."""
    for t in title_lines:
        m = _TILT_AXIS_RE.search(t)
        if m:
            v = float(m.group(1))
            if _out_of_bounds("TiltAxisAngle", v) is None:
                return v
    if global_fields:
        for k in ("TiltAxisAngle", "Tilt axis angle"):
            v = _to_float(global_fields.get(k))
            if v is not None and _out_of_bounds("TiltAxisAngle", v) is None:
                return v
    return None


def _check_globals(path: Path, global_fields: dict[str, str], titles: list[str], strict: bool) -> None:
    """Values of the global keys and the title's tilt axis within bounds; a bad value is removed (permissive)."""
    for name in ("PixelSpacing", "Voltage", "TiltAxisAngle"):
        text = global_fields.get(name)
        if text is None:
            continue
        v = _to_float(text)
        why = f"not a number: {text!r}" if v is None else _out_of_bounds(name, v)
        if why is not None:
            problem(strict, path, name, why)
            del global_fields[name]
    if "ImageSize" in global_fields:
        parts = global_fields["ImageSize"].split()
        try:
            ok = len(parts) == 2 and all(0 < int(x) <= 1_000_000 for x in parts)
        except ValueError:
            ok = False
        if not ok:
            problem(strict, path, "ImageSize", f"{global_fields['ImageSize']!r}: expected two positive whole numbers "
                                               "(nx ny, px)")
            del global_fields["ImageSize"]
    for t in titles:
        m = _TILT_AXIS_RE.search(t)
        if m:
            why = _out_of_bounds("TiltAxisAngle", float(m.group(1)))
            if why is not None:
                problem(strict, path, "Tilt axis angle", why)
            break


def _check_sections(path: Path, text: str, raw_sections: list[tuple[str, int, int, dict[str, str]]],
                    main_key: str, strict: bool, notes: list[str]) -> None:
    """The sections as a whole: numbers given twice (a problem), numbers that skip (a note), a file cut short (it
    ends inside a line of a section, or its last section lacks keys every other section has: a problem)."""
    main = [(n, ln, f) for k, n, ln, f in raw_sections if k == main_key]
    seen: dict[int, int] = {}
    for n, ln, _ in main:
        if n in seen:
            problem(strict, path, f"[{main_key} = {n}]", f"two sections with this number (lines {seen[n]} and {ln}): "
                                                         "a duplicated section, or two files joined?")
        seen.setdefault(n, ln)
    numbers = [n for n, _, _ in main]
    if numbers and len(set(numbers)) == len(numbers) and 0 <= max(numbers) < 10 * len(numbers) + 1000:
        missing = sorted(set(range(0, max(numbers) + 1)) - set(numbers))
        if missing:
            shown = ", ".join(str(m) for m in missing[:6]) + (" ..." if len(missing) > 6 else "")
            notes.append(f"[{main_key}] numbers skip {shown} ({len(numbers)} sections numbered up to "
                         f"{max(numbers)}): sections removed by hand, or views left out of the series")
    if not raw_sections:
        return
    stripped = text.rstrip(" \t")
    last_key, last_n, last_line, last_fields = raw_sections[-1]
    n_lines = len(text.splitlines())
    if stripped and not stripped.endswith(("\n", "\r")) and n_lines > last_line:
        problem(strict, path, f"line {n_lines}", f"the file ends in the middle of a line of [{last_key} = {last_n}] "
                                                 "(no line end): cut short?")
    same = [f for k, _, _, f in raw_sections[:-1] if k == last_key]
    if len(same) >= 2:
        common = set.intersection(*(set(f) for f in same))
        lacking = sorted(common - set(last_fields))
        if lacking:
            shown = ", ".join(lacking[:4]) + (f" and {len(lacking) - 4} more" if len(lacking) > 4 else "")
            problem(strict, path, f"[{last_key} = {last_n}]", f"the last section lacks {shown}, which every other "
                                                               "section has: the file is cut short?")


# --- reading ----------------------------------------------------------------------------------------


def read_mdoc(path: str | PathLike[str], *, strict: bool = True) -> Mdoc:
    """Read a SerialEM mdoc (LF or CRLF; latin-1, or UTF-8/UTF-16 with a byte-order mark).

    Kind: ``"montage"`` when there are ``[MontSection]`` sections or the global ``Montage = 1``,
    ``"frameset"`` when there is a ``[FrameSet]`` section, else ``"tilt_series"``. Strict mode raises
    :class:`FormatError` naming file, section and key (``TS_01.mrc.mdoc: [ZValue = 3] TiltAngle: missing``)
    for an unreadable line, a missing or non-numeric ``TiltAngle`` (tilt-series and frame-set kinds), a
    non-numeric value of a known numeric key or one outside its physical bounds (:data:`BOUNDS`), a key given
    twice, a section key before the first section, two sections with one number, a file cut short, an
    unreadable ``DateTime`` or a file without sections (module docstring). With ``strict=False`` each becomes a
    :class:`FormatWarning`; a section without a usable tilt angle is skipped, other bad values become ``None``.
    Facts worth a look that are not errors (ZValues that skip) are in ``notes``.
    """
    p = Path(path)
    if not p.is_file():
        raise FormatError(p, None, "no such file")
    text = _decode_text(p, p.read_bytes(), strict)
    global_fields, titles, raw_sections = _tokenise(p, text, strict)
    keys = {k for k, _, _, _ in raw_sections}
    if not raw_sections:
        problem(strict, p, "sections", "no [ZValue], [FrameSet] or [MontSection] section: not a SerialEM mdoc, or "
                                       "cut short?")
    _check_globals(p, global_fields, titles, strict)
    if "MontSection" in keys or global_fields.get("Montage", "0").strip() not in ("0", ""):
        kind: MdocKind = "montage"
        main_key = "ZValue"
    elif "FrameSet" in keys:
        kind, main_key = "frameset", "FrameSet"
    else:
        kind, main_key = "tilt_series", "ZValue"
    notes: list[str] = []
    _check_sections(p, text, raw_sections, main_key, strict, notes)
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
        notes=notes,
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


def _movie_stem(name: str) -> str:
    """``TS_01_000_0.0.tif`` -> ``TS_01_000_0.0`` (only a movie extension is removed)."""
    suffix = Path(name).suffix
    return name[: -len(suffix)] if suffix.lower() in MOVIE_EXTENSIONS else name


def _named_folders(sub_frame_path: str) -> list[str]:
    """The folders a path names, lower case, without drive or root: ``X:\\a\\Frames\\TS_07\\m.tif`` ->
    ``["a", "frames", "ts_07"]`` (Windows or POSIX separators)."""
    pw = PureWindowsPath(sub_frame_path.strip())
    parts = list(pw.parent.parts)
    if parts and pw.anchor and parts[0] == pw.anchor:
        parts = parts[1:]
    return [p.lower() for p in parts if p not in ("", ".", "..")]


def find_movie(sub_frame_path: str, search_dirs: Sequence[Path]) -> tuple[Path, bool]:
    """Map a ``SubFramePath`` as written (``D:\\data\\frames\\TS_01_001_-0.0.tif``) to a file in one of a few folders.

    Looks in each of ``search_dirs`` for the same basename, then for the same stem with any of
    ``.tif .tiff .mrc .mrcs .eer``. Returns ``(path, True)`` when found, else ``(first dir / basename, False)``.
    (The import step searches a whole session folder with :class:`SessionFiles` instead.)
    """
    name = _windows_basename(sub_frame_path)
    stem = _movie_stem(name)
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


# --- finding the files of a session -----------------------------------------------------------------


@dataclass
class Located:
    """Where a file named by an mdoc (a ``SubFramePath``, an ``ImageFile``, a ``GainReference``) was found.

    ``path`` is the file, or ``None`` when it was not found (``expected`` is then the first place looked at).
    ``how`` says in a few words where it was found (``"beside the mdoc"``, ``"in Frames/TS_07 (named by
    SubFramePath)"``, ``"in the movie folder"``, ...). ``others`` are other files of the same name that were not
    used; ``ambiguous`` is True when one of them matched as well as the one used (the first in path order is
    used); ``renamed`` when the file has the same stem but another movie extension (``.tif`` <-> ``.mrc``).
    """

    path: Path | None
    how: str
    expected: Path | None = None
    others: tuple[Path, ...] = ()
    ambiguous: bool = False
    renamed: bool = False


def _abs(p: str | PathLike[str]) -> Path:
    """Absolute path without resolving symbolic links (a linked ``Frames`` folder keeps its name)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(p))))


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A compiled, case-insensitive regular expression for a glob pattern over ``/``-separated relative paths:
    ``**`` (a whole component) matches any number of folders including none, ``*`` and ``?`` match within one
    name, ``[...]`` a character class."""
    parts = [p for p in pattern.replace("\\", "/").split("/") if p not in ("", ".")]
    out = ""
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if part == "**":
            out += ".*" if last else "(?:[^/]+/)*"
            continue
        rx = ""
        j = 0
        while j < len(part):
            c = part[j]
            if c == "*":
                rx += "[^/]*"
            elif c == "?":
                rx += "[^/]"
            elif c == "[":
                k = part.find("]", j + 1)
                if k < 0:
                    rx += re.escape(c)
                else:
                    body = part[j + 1:k]
                    if body.startswith("!"):
                        body = "^" + body[1:]
                    rx += f"[{body}]"
                    j = k
            else:
                rx += re.escape(c)
            j += 1
        out += rx + ("" if last else "/")
    return re.compile(f"^{out}$", re.IGNORECASE)


class SessionFiles:
    """Every file under one or more folders, indexed once by lower-case name (and by stem for movies).

    Folders are walked in sorted order (hidden ones, starting with ``.``, are skipped; linked folders are
    followed once), so lookups are deterministic and cost a dictionary access instead of a directory scan per
    movie. ``max_files`` bounds the walk (``truncated`` tells when it stopped early, e.g. a folder chosen too
    high up). Paths are absolute, symbolic links not resolved.
    """

    def __init__(self, roots: Sequence[str | PathLike[str]], *, max_files: int = 2_000_000) -> None:
        self.roots: list[Path] = []
        for r in roots:
            p = _abs(r)
            if p.is_dir() and not any(p == q or q in p.parents for q in self.roots):
                self.roots = [q for q in self.roots if p not in q.parents] + [p]
        self.truncated = False
        self._by_name: dict[str, list[Path]] = {}
        self._by_stem: dict[str, list[Path]] = {}
        self._in_dir: dict[Path, list[Path]] = {}
        n = 0
        seen: set[str] = set()
        for root in sorted(self.roots):
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                real = os.path.realpath(dirpath)
                if real in seen:  # a link loop or a folder reached twice
                    dirnames[:] = []
                    continue
                seen.add(real)
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                d = Path(dirpath)
                files = []
                for f in sorted(filenames):
                    if f.startswith("."):
                        continue
                    fp = d / f
                    files.append(fp)
                    self._by_name.setdefault(f.lower(), []).append(fp)
                    if Path(f).suffix.lower() in MOVIE_EXTENSIONS:
                        self._by_stem.setdefault(_movie_stem(f).lower(), []).append(fp)
                self._in_dir[d] = files
                n += len(files)
                if n >= max_files:
                    self.truncated = True
                    break
            if self.truncated:
                break

    @property
    def n_files(self) -> int:
        return sum(len(v) for v in self._in_dir.values())

    def named(self, name: str) -> list[Path]:
        """Files of this name (any case), in path order."""
        return list(self._by_name.get(name.lower(), []))

    def same_stem(self, name: str) -> list[Path]:
        """Movie files with the stem of ``name`` and any of ``MOVIE_EXTENSIONS`` (``x.tif`` finds ``x.mrc``)."""
        return list(self._by_stem.get(_movie_stem(name).lower(), []))

    def matching(self, folder: Path, pattern: str) -> list[Path]:
        """Indexed files under ``folder`` whose path relative to it matches a glob ``pattern`` (``*.mdoc``,
        ``*/*.mdoc``, ``**/*.mdoc``: ``**`` is any number of folders, none included; ``*``, ``?`` and ``[...]``
        stay within one name; case-insensitive). Unlike ``Path.glob`` it follows linked folders (once). Sorted."""
        rx = glob_regex(pattern)
        folder = _abs(folder)
        out = []
        for d, files in self._in_dir.items():
            if d != folder and folder not in d.parents:
                continue
            for f in files:
                if rx.match(f.relative_to(folder).as_posix()):
                    out.append(f)
        return sorted(out)

    def files_in(self, folder: Path) -> list[Path]:
        """The files directly in ``folder`` (indexed folders only)."""
        return list(self._in_dir.get(_abs(folder), []))

    def subfolders_named(self, folder: Path, name: str) -> list[Path]:
        """Indexed folders directly inside ``folder`` whose name is ``name`` in any case (``Frames``, ``frames``)."""
        folder = _abs(folder)
        return [d for d in self._in_dir if d.parent == folder and d.name.lower() == name.lower()]

    def locate(self, written: str, *, mdoc_dir: Path, session_dir: Path | None = None,
               movies_dir: Path | None = None) -> Located:
        """Find the file a path in an mdoc names (``X:\\Frames\\TS_07\\TS_07_000_-20.00.tif`` or POSIX).

        Candidates: every indexed file of the same basename (any case); when there is none, the same stem with
        another movie extension. They are ranked by, in this order: directly in ``movies_dir``; beside the mdoc
        (``mdoc_dir``); the number of trailing folders of the written path that the candidate's folder repeats
        (``Frames/TS_07/`` beats ``TS_07/``), at any depth; in a ``Frames`` folder (any case) beside the mdoc or in
        ``session_dir``; anywhere under ``movies_dir``; elsewhere in the indexed folders. Ties at the top are
        reported as ``ambiguous`` (the first in path order is used).
        """
        mdoc_dir = _abs(mdoc_dir)
        session = _abs(session_dir) if session_dir is not None else None
        movies = _abs(movies_dir) if movies_dir is not None else None
        name = _windows_basename(written)
        first = (movies or mdoc_dir) / name
        if not name:
            return Located(None, "no file name", expected=None)
        cands = self.named(name)
        renamed = False
        if not cands and Path(name).suffix.lower() in MOVIE_EXTENSIONS:
            cands = self.same_stem(name)
            renamed = bool(cands)
        if not cands:
            return Located(None, "not found", expected=first)
        folders = _named_folders(written)

        def trail(d: Path) -> int:
            k = 0
            for a, b in zip(reversed([p.lower() for p in d.parts]), reversed(folders)):
                if a != b:
                    break
                k += 1
            return k

        def key(c: Path) -> tuple[bool, bool, int, bool, bool]:
            d = c.parent
            in_frames = d.name.lower() == "frames" and (d.parent == mdoc_dir or d.parent == session)
            return (movies is not None and d == movies, d == mdoc_dir, trail(d), in_frames,
                    movies is not None and movies in d.parents)

        keys = {c: key(c) for c in cands}
        best = max(keys.values())
        top = sorted(c for c, k in keys.items() if k == best)
        chosen = top[0]
        d = chosen.parent

        def rel(folder: Path) -> str:
            for base in (session, mdoc_dir):
                if base is not None and (folder == base or base in folder.parents):
                    r = folder.relative_to(base).as_posix()
                    return (r + "/") if r != "." else "./"
            return str(folder)

        if best[0]:
            how = "in the movie folder"
        elif best[1]:
            how = "beside the mdoc"
        elif best[2] > 0:
            how = f"in {rel(d)} (folder named by the mdoc)"
        elif best[3]:
            how = f"in {rel(d)}"
        elif best[4]:
            how = f"in {rel(d)} (under the movie folder)"
        else:
            how = f"in {rel(d)} (same name; the mdoc names another folder)"
        if renamed:
            how += f" as {chosen.name}"
        return Located(chosen, how, expected=first, others=tuple(c for c in sorted(cands) if c != chosen),
                       ambiguous=len(top) > 1, renamed=renamed)


# --- doses, tilt axis, vendors ------------------------------------------------------------------------


def section_dose(sec: MdocSection) -> tuple[float | None, str]:
    """The dose of one tilt (e⁻/Å²) and its key: ``ExposureDose`` when > 0, else the movie's
    ``FrameDosesAndNumber`` (sum of dose × number) when > 0, else ``(None, "")``."""
    v = sec.exposure_dose_e_A2
    if v is not None and math.isfinite(v) and v > 0:
        return float(v), "ExposureDose"
    t = sec.frame_dose_total_e_A2
    if t is not None and t > 0:
        return float(t), "FrameDosesAndNumber"
    return None, ""


def _doses(
    paths: Sequence[Path],
    sections: Sequence[MdocSection],
    dose_per_tilt_e_A2: float | None,
    strict: bool,
) -> tuple[list[float], list[str]]:
    """Dose and its source per section: the typed dose when given, else :func:`section_dose`. Sections without a
    dose are a problem naming the first one's file, section and field."""
    if dose_per_tilt_e_A2 is not None:
        if not (dose_per_tilt_e_A2 >= 0 and math.isfinite(dose_per_tilt_e_A2)):
            raise ValueError(f"dose_per_tilt_e_A2 must be a finite number >= 0, got {dose_per_tilt_e_A2}")
        return [float(dose_per_tilt_e_A2)] * len(sections), ["typed"] * len(sections)
    found = [section_dose(s) for s in sections]
    bad = [i for i, (v, _) in enumerate(found) if v is None]
    if bad:
        sec = sections[bad[0]]
        fdn = " and FrameDosesAndNumber gives none" if "FrameDosesAndNumber" in sec.raw else ""
        problem(
            strict,
            paths[bad[0]],
            f"{sec.label} ExposureDose",
            f"missing or 0 in {len(bad)} of {len(sections)} sections{fdn}; give the dose per tilt (e/A^2)",
        )
    return [float(v or 0.0) for v, _ in found], [src for _, src in found]


def axis_from_rotation_angle(rotation_angle_deg: float) -> float:
    """SerialEM's ``RotationAngle`` (image rotation, degrees) -> tilt-axis angle: RotationAngle − 90°, wrapped to
    (−180°, 180°]. Checked on real files: EMPIAR-10164 TS_01 (RotationAngle 175.3, title axis 85.3) and a SerialEM
    4.1 PACEtomo series (RotationAngle −176, title axis 94.0)."""
    a = (float(rotation_angle_deg) - 90.0) % 360.0
    return a - 360.0 if a > 180.0 else a


def _circular_median_deg(values: Sequence[float]) -> float:
    ref = values[0]
    d = [((v - ref + 180.0) % 360.0) - 180.0 for v in values]
    m = ref + float(np.median(d))
    m = ((m + 180.0) % 360.0) - 180.0
    return 180.0 if m == -180.0 else m


def tilt_axis_info(mdocs: Sequence[Mdoc], sections: Sequence[MdocSection] | None = None) -> tuple[float | None, str]:
    """The tilt-axis angle an mdoc (or the per-movie mdocs of one series) gives, and its source.

    In order: the title's ``Tilt axis angle = …`` (``"mdoc title"``), the global ``TiltAxisAngle`` key
    (``"mdoc TiltAxisAngle"``), the sections' ``RotationAngle`` − 90° (``"mdoc RotationAngle"``; per-movie frame
    mdocs carry only this), else ``(None, "unknown")``. Degrees, SerialEM's convention (from the image Y axis,
    counter-clockwise).
    """
    for md in mdocs:
        for t in md.title_lines:
            m = _TILT_AXIS_RE.search(t)
            if m and _out_of_bounds("TiltAxisAngle", float(m.group(1))) is None:
                return float(m.group(1)), "mdoc title"
    for md in mdocs:
        for k in ("TiltAxisAngle", "Tilt axis angle"):
            v = _to_float(md.global_fields.get(k))
            if v is not None and _out_of_bounds("TiltAxisAngle", v) is None:
                return v, "mdoc TiltAxisAngle"
    secs = list(sections) if sections is not None else [s for md in mdocs for s in md.sections]
    rot = [s.rotation_angle_deg for s in secs if s.rotation_angle_deg is not None]
    if rot:
        return round(axis_from_rotation_angle(_circular_median_deg(rot)), 4), "mdoc RotationAngle"
    return None, "unknown"


#: Thermo Fisher's Tomography 5 writes its tilt-axis angle about ±176° where SerialEM's is near ±90° or 0°/180°
TOMO5_AXIS_DEG = 176.0


def thermo_signature(md: Mdoc) -> str | None:
    """Why an mdoc looks written by Thermo Fisher's Tomography software rather than SerialEM, or ``None``.

    Signs: a title or ``Version``/``Application`` naming Tomography, Thermo, TFS or EPU; the global ``TiltAxisAngle``
    key without a SerialEM title (SerialEM writes the axis in its title); EPU's movie names (``*_Fractions.*``,
    ``*_EER.eer``)."""
    texts = [t.lower() for t in md.title_lines]
    texts += [md.global_fields.get(k, "").lower() for k in ("Version", "Application", "Software")]
    for t in texts:
        for word in ("tomography", "thermo", "tfs", "epu", "tomo5", "tomo 5"):
            if re.search(rf"\b{re.escape(word)}\b", t):
                return f"its header names {word!r}"
    serialem = any("serialem" in t for t in texts)
    if "TiltAxisAngle" in md.global_fields and not serialem:
        return "a global TiltAxisAngle key and no SerialEM title"
    for s in md.sections[:3]:
        low = (s.sub_frame_path or "").lower()
        if "_fractions." in low or low.endswith("_eer.eer"):
            return "EPU-style movie names (…_Fractions, …_EER)"
    return None


def looks_like_tomo5_axis(axis_deg: float, *, tolerance_deg: float = 1.5) -> bool:
    """Whether an axis angle lies within ``tolerance_deg`` of ±176°, the value Tomography 5 writes."""
    return abs(abs(((axis_deg + 180.0) % 360.0) - 180.0) - TOMO5_AXIS_DEG) <= tolerance_deg


# --- records ------------------------------------------------------------------------------------------

Locator = Callable[[str, Path], Located]


def _records(
    paths: Sequence[Path],
    sections: Sequence[MdocSection],
    locate: Locator,
    initial_dose_e_A2: float,
    dose_per_tilt_e_A2: float | None,
    strict: bool,
    movie_names: Sequence[str | None] | None = None,
) -> list[TiltRecord]:
    doses, sources = _doses(paths, sections, dose_per_tilt_e_A2, strict)
    rank, _ = acquisition_order(sections)
    by_order = np.argsort(rank)
    prior = np.empty(len(sections))
    prior[by_order] = initial_dose_e_A2 + np.concatenate(([0.0], np.cumsum(np.asarray(doses)[by_order])[:-1]))
    out = []
    for i, sec in enumerate(sections):
        written = movie_names[i] if movie_names is not None else sec.sub_frame_path
        loc = locate(written, paths[i].parent) if written else None
        movie = None if loc is None else (loc.path or loc.expected)
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
                movie_found=loc is not None and loc.path is not None,
                num_sub_frames=sec.num_sub_frames,
                datetime=sec.datetime,
                mdoc_path=paths[i],
                dose_source=sources[i],
                movie_how="" if loc is None else loc.how,
                movie_others=() if loc is None else loc.others,
                movie_ambiguous=False if loc is None else loc.ambiguous,
            )
        )
    return out


def _dir_locator(movie_dir: str | PathLike[str] | None) -> Locator:
    """The simple search of :func:`find_movie`: ``movie_dir`` (when given), then the mdoc's folder."""

    def locate(written: str, mdoc_dir: Path) -> Located:
        dirs = ([Path(movie_dir)] if movie_dir is not None else []) + [mdoc_dir]
        path, found = find_movie(written, dirs)
        if not found:
            return Located(None, "not found", expected=path)
        how = "in the movie folder" if movie_dir is not None and path.parent == Path(movie_dir) else "beside the mdoc"
        return Located(path, how, expected=path)

    return locate


def tilt_records(
    mdoc: Mdoc,
    *,
    movie_dir: str | PathLike[str] | None = None,
    initial_dose_e_A2: float = 0.0,
    dose_per_tilt_e_A2: float | None = None,
    strict: bool = True,
    locate: Locator | None = None,
) -> list[TiltRecord]:
    """One :class:`TiltRecord` per section of ``mdoc``, in section order.

    Dose per tilt: ``dose_per_tilt_e_A2`` when given (it overrides the file), else each section's
    ``ExposureDose``, else its ``FrameDosesAndNumber`` (sum of dose × number); when neither gives a dose, strict
    mode raises :class:`FormatError` naming the file, the first such section and ``ExposureDose`` (permissive: a
    warning and 0). Prior dose accumulates in acquisition order from ``initial_dose_e_A2``. Movies: ``locate
    (written path, mdoc folder) -> Located`` (e.g. :meth:`SessionFiles.locate`); by default they are looked for in
    ``movie_dir`` (when given) and then beside the mdoc, by basename and extension variants (:func:`find_movie`).
    """
    for sec in mdoc.sections:
        if sec.tilt_angle_deg is None:
            raise FormatError(mdoc.path, f"{sec.label} TiltAngle", "missing")
    n = len(mdoc.sections)
    return _records([mdoc.path] * n, mdoc.sections, locate or _dir_locator(movie_dir), initial_dose_e_A2,
                    dose_per_tilt_e_A2, strict)


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
    locate: Locator | None = None,
) -> list[TiltRecord]:
    """Records from a folder of per-movie mdocs (one ``[FrameSet]`` file per tilt movie), one per file.

    ``index_in_mdoc`` is the position in ``paths``; acquisition order and prior dose as in
    :func:`tilt_records`; a dose error names the file of the first movie without a dose. Each movie is looked for
    with ``locate``, by default in ``movie_dir`` and beside its own mdoc.
    """
    ps = [Path(p) for p in paths]
    if not ps:
        return []
    sections = []
    for i, p in enumerate(ps):
        sec = mdoc_for_frameset(p, strict=strict)
        sec.index = i
        sections.append(sec)
    return _records(ps, sections, locate or _dir_locator(movie_dir), initial_dose_e_A2, dose_per_tilt_e_A2, strict)


# --- per-movie mdocs assembled into tilt series ---------------------------------------------------------

_DATE_SUFFIX_RE = re.compile(r"_[A-Za-z]{3}\d{1,2}_\d{1,2}\.\d{2}\.\d{2}$")  # SerialEM: _Oct08_07.39.05
_NUM_ANGLE_RE = re.compile(r"^(?P<prefix>.+?)_(?P<num>\d+)_(?P<angle>[-+]?\d+\.\d+)$")
_ANGLE_NUM_RE = re.compile(r"^(?P<prefix>.+?)_(?P<angle>[-+]?\d+\.\d+)_(?P<num>\d+)$")
_NUM_RE = re.compile(r"^(?P<prefix>.+?)_(?P<num>\d+)$")
_ANGLE_RE = re.compile(r"^(?P<prefix>.+?)_(?P<angle>[-+]?\d+\.\d+)$")
_BRACKET_RE = re.compile(r"^(?P<prefix>.+?)_(?P<num>\d+)\[(?P<angle>[-+]?\d+(?:\.\d+)?)\](?:_.*)?$")  # Tomo5/EPU


def strip_mdoc_name(name: str) -> str:
    """``TS_07_000_-20.00.tif.mdoc`` -> ``TS_07_000_-20.00``: ``.mdoc`` and one image/movie extension removed."""
    if name.lower().endswith(".mdoc"):
        name = name[:-5]
    for suffix in (*MOVIE_EXTENSIONS, ".st", ".ali"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def frame_name_parts(name: str) -> tuple[str | None, int | None, float | None]:
    """Series prefix, acquisition number and tilt angle in a movie or per-movie mdoc name, where present.

    Recognised (after removing ``.mdoc``, the movie extension and SerialEM's date suffix ``_Oct08_07.39.05``):
    ``<prefix>_<NNN>_<angle>`` (SerialEM's and PACEtomo's frame names, ``TS_07_000_-20.00``,
    ``s_mmm_00993_33.0``), ``<prefix>_<angle>_<NNN>``, ``<prefix>_<NNN>[<angle>]`` (Tomography 5),
    ``<prefix>_<NNN>`` (``test_000``) and ``<prefix>_<angle>``. The angle must have a decimal point. Else
    ``(None, None, None)``.
    """
    base = _DATE_SUFFIX_RE.sub("", strip_mdoc_name(name))
    for rx in (_BRACKET_RE, _NUM_ANGLE_RE, _ANGLE_NUM_RE, _NUM_RE, _ANGLE_RE):
        m = rx.match(base)
        if m:
            g = m.groupdict()
            prefix = g["prefix"]  # the shortest prefix that leaves a number and an angle
            num = int(g["num"]) if g.get("num") is not None else None
            angle = float(g["angle"]) if g.get("angle") is not None else None
            return prefix, num, angle
    return None, None, None


@dataclass
class MovieMdoc:
    """One single-tilt mdoc, ready to be grouped: a per-movie ``[FrameSet]`` mdoc, or a ``[ZValue]`` mdoc whose
    sections are all at one tilt (one image stack, e.g. a STEM multi-frame record).

    ``section`` is the tilt's section (for a ZValue file: the first one, with the doses of all its sections
    added up and ``NumSubFrames`` the number of sections when not recorded). ``movie_name`` is the movie as
    written (``SubFramePath``, else the file's ``ImageFile``, else for a frame mdoc its own name less ``.mdoc``);
    ``key`` the movie's identity (lower-case stem)
    used to find duplicates and the movies a series mdoc lists; ``prefix``/``number`` from the name."""

    path: Path
    mdoc: Mdoc
    section: MdocSection
    movie_name: str | None
    key: str
    prefix: str | None
    number: int | None


def single_tilt(md: Mdoc, *, tolerance_deg: float = 0.05) -> MovieMdoc | None:
    """The :class:`MovieMdoc` of an mdoc that describes one tilt, else ``None`` (a tilt series, a montage, or
    one file holding several movies at one tilt)."""
    if md.kind == "montage" or not md.sections:
        return None
    if md.kind == "frameset":
        sec = md.sections[0]
        # SerialEM names a frame mdoc <movie>.mdoc: without SubFramePath, the global ImageFile, else that name
        own = md.path.name[:-5] if md.path.name.lower().endswith(".mdoc") else ""
        movie = sec.sub_frame_path or md.global_fields.get("ImageFile") or (
            own if Path(own).suffix.lower() in MOVIE_EXTENSIONS else None)
    else:
        tilts = [s.tilt_angle_deg for s in md.sections]
        if any(t is None for t in tilts) or max(tilts) - min(tilts) > tolerance_deg:  # type: ignore[type-var,operator]
            return None
        sfp = {s.sub_frame_path for s in md.sections if s.sub_frame_path}
        if len(sfp) > 1:
            return None
        first = md.sections[0]
        doses = [s.exposure_dose_e_A2 or 0.0 for s in md.sections]
        nsub = first.num_sub_frames if first.num_sub_frames is not None else (
            len(md.sections) if not sfp else None)
        sec = replace(first, exposure_dose_e_A2=float(sum(doses)), num_sub_frames=nsub)
        movie = next(iter(sfp)) if sfp else (md.global_fields.get("ImageFile") or None)
    name = md.path.name
    prefix, number, _ = frame_name_parts(name)
    if prefix is None and movie:
        prefix, number, _ = frame_name_parts(_windows_basename(movie))
    key = _movie_stem(_windows_basename(movie)).lower() if movie else strip_mdoc_name(name).lower()
    return MovieMdoc(md.path, md, sec, movie, key, prefix, number)


def group_movie_mdocs(items: Sequence[MovieMdoc], *, max_gap_s: float = 1800.0) -> list[list[MovieMdoc]]:
    """Group single-tilt mdocs into tilt series, each in acquisition order.

    Grouped by folder and name prefix (:func:`frame_name_parts`; files without a recognised name form one group
    per folder). Within a group, files are ordered by ``DateTime`` when all have one, else by their number, else
    by name; a new series starts where the sequence is inconsistent with one tilt series: a tilt angle already in
    the series (within 0.05°) with a number that does not increase (or no number: a re-taken tilt keeps counting
    up, the next series restarts), or a pause longer than ``max_gap_s`` and ten times the median interval. (File
    numbers alone do not split: real sessions number files out of acquisition order.) Without times, a number
    that occurs k times in a group means k series. Groups are sorted by folder, prefix and first path.
    """
    buckets: dict[tuple[Path, str], list[MovieMdoc]] = {}
    for it in items:
        buckets.setdefault((it.path.parent, (it.prefix or "").lower()), []).append(it)
    groups: list[list[MovieMdoc]] = []
    parts: list[list[MovieMdoc]] = []
    for bucket in buckets.values():
        if all(it.section.datetime is not None for it in bucket):
            parts.append(bucket)
            continue
        # no times: a number that occurs k times means k series (the k-th file of each number, by name, in the k-th)
        occurrence: Counter[int] = Counter()
        split: dict[int, list[MovieMdoc]] = {}
        for it in sorted(bucket, key=lambda it: (it.number if it.number is not None else -1, it.path.name)):
            k = occurrence[it.number] if it.number is not None else 0
            if it.number is not None:
                occurrence[it.number] += 1
            split.setdefault(k, []).append(it)
        parts.extend(split.values())
    for bucket in parts:
        timed = all(it.section.datetime is not None for it in bucket)
        if timed:
            bucket = sorted(bucket, key=lambda it: (it.section.datetime, it.number if it.number is not None else -1,
                                                    it.path.name))
        else:
            bucket = sorted(bucket, key=lambda it: (it.number if it.number is not None else -1, it.path.name))
        gaps = []
        if timed:
            ts = [it.section.datetime.timestamp() for it in bucket]  # type: ignore[union-attr]
            gaps = [b - a for a, b in zip(ts, ts[1:]) if b > a]
        limit = max(max_gap_s, 10.0 * float(np.median(gaps))) if gaps else math.inf
        run: list[MovieMdoc] = []
        for it in bucket:
            if run:
                prev = run[-1]
                angle = it.section.tilt_angle_deg
                repeated = any(abs((r.section.tilt_angle_deg or 0.0) - (angle or 0.0)) < 0.05 for r in run)
                rising = prev.number is not None and it.number is not None and it.number > prev.number
                gap = timed and (it.section.datetime.timestamp()  # type: ignore[union-attr]
                                 - prev.section.datetime.timestamp()) > limit  # type: ignore[union-attr]
                if (repeated and not rising) or gap:
                    groups.append(run)
                    run = []
            run.append(it)
        if run:
            groups.append(run)
    return sorted(groups, key=lambda g: (str(g[0].path.parent), (g[0].prefix or ""), str(g[0].path)))


def movie_group_records(
    group: Sequence[MovieMdoc],
    *,
    locate: Locator,
    initial_dose_e_A2: float = 0.0,
    dose_per_tilt_e_A2: float | None = None,
    strict: bool = True,
) -> list[TiltRecord]:
    """Records of a group from :func:`group_movie_mdocs` (in its order; ``index_in_mdoc`` = position); doses as in
    :func:`tilt_records`, a dose error naming the first file without one; ``mdoc_path`` each tilt's own mdoc."""
    sections = []
    for i, it in enumerate(group):
        sec = replace(it.section, index=i)
        sections.append(sec)
    return _records([it.path for it in group], sections, locate, initial_dose_e_A2, dose_per_tilt_e_A2, strict,
                    movie_names=[it.movie_name for it in group])


def movie_keys(md: Mdoc) -> set[str]:
    """The movies a tilt-series mdoc lists, as lower-case stems of its ``SubFramePath`` basenames."""
    return {_movie_stem(_windows_basename(s.sub_frame_path)).lower() for s in md.sections if s.sub_frame_path}


def gain_reference_name(md: Mdoc) -> str | None:
    """The basename of the gain reference an mdoc names (``GainReference``, global or in a section), or None."""
    text = md.global_fields.get("GainReference")
    if not text:
        text = next((s.raw["GainReference"] for s in md.sections if s.raw.get("GainReference")), None)
    return _windows_basename(text) if text else None


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
    outward rule from the first tilt, one change of side; it may start anywhere (e.g. at −20°: up to +60°,
    then from −23° down to −60°). Unidirectional: monotonic.
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
    # a bidirectional series may start anywhere (SerialEM's "start at -20°, go up, come back, go down"); a
    # dose-symmetric one starts near 0° or the middle of the range
    centred = not (abs(start - np.median(t)) > 3 * max(tol, 1.0) and abs(start) > 3 * max(tol, 1.0))
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
    if outward and switches >= 2 and centred:
        return "dose-symmetric"
    if outward and switches == 1:
        return "bidirectional"
    return "other"


def unlisted_movies(md: Mdoc, records: Sequence[TiltRecord]) -> list[Path]:
    """Movies in the folders of a series' found movies, named like them (same series prefix,
    :func:`frame_name_parts`), that no section of the mdoc lists: a section lost from the mdoc (or cut off its
    end), or the movies of retaken tilts. Sorted paths; empty when the movies are not found or not named so."""
    found = [r.movie_path for r in records if r.movie_found and r.movie_path is not None]
    prefixes = {(frame_name_parts(q.name)[0] or "").lower() for q in found}
    if not found and md.kind == "tilt_series":  # no movie found: those named after the mdoc (TS_01.mrc.mdoc)
        prefixes = {strip_mdoc_name(md.path.name).lower()}
    prefixes.discard("")
    if not prefixes:
        return []
    listed = {q.name.lower() for q in found} | {_movie_stem(_windows_basename(s.sub_frame_path)).lower()
                                                for s in md.sections if s.sub_frame_path}
    out = []
    for folder in sorted({q.parent for q in found} or {md.path.parent}):
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            continue
        for n in names:
            if Path(n).suffix.lower() not in MOVIE_EXTENSIONS or n.lower() in listed or \
                    _movie_stem(n).lower() in listed:
                continue
            if (frame_name_parts(n)[0] or "").lower() in prefixes:
                out.append(folder / n)
    return out


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
            n_no_dose = sum(1 for s in md.sections if section_dose(s)[0] is None)
            dose = dose_per_tilt_e_A2
            if dose is None and n_no_dose:
                # a fact about the file, not a format problem: the dose must then be typed in at import
                fdn = " (FrameDosesAndNumber gives none either)" if any(
                    "FrameDosesAndNumber" in s.raw for s in md.sections) else ""
                notes.append(f"ExposureDose is 0 or missing in {n_no_dose} of {len(md.sections)} sections{fdn}: "
                             "give the dose per tilt when importing")
                dose = 0.0
            records = tilt_records(md, movie_dir=movie_dir, initial_dose_e_A2=initial_dose_e_A2,
                                   dose_per_tilt_e_A2=dose, strict=False)
    notes.extend(md.notes)
    unlisted = unlisted_movies(md, records)
    if unlisted:
        shown = ", ".join(q.name for q in unlisted[:4]) + (f" and {len(unlisted) - 4} more" if len(unlisted) > 4 else "")
        notes.append(f"{len(unlisted)} movie(s) named like this series' movies are in {unlisted[0].parent} but not in "
                     f"the mdoc ({shown}): a lost section, or movies of retaken tilts?")
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
